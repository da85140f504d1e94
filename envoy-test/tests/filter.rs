//! The filter in real Envoy: every rule, every mode, IPv4 and IPv6 clients,
//! spoofing attempts, repeated, oversized and garbage headers, and the
//! counters and filter state it publishes.

use envoy_test::{wait_until, Envoy, Listener, Request};

fn gateway(name: &str, plugin_json: &str) -> Listener {
    Listener {
        use_remote_address: true,
        ..Listener::sidecar(name, plugin_json)
    }
}

fn http_root_only(name: &str, plugin_json: &str) -> Listener {
    Listener {
        peer_filter: false,
        ..Listener::sidecar(name, plugin_json)
    }
}

#[test]
fn untrusted_clients_are_who_their_socket_says() {
    let envoy = Envoy::start(&[Listener::sidecar(
        "sidecar",
        r#"{"count_forged_headers":true}"#,
    )]);
    let sidecar = envoy.listener("sidecar");
    for n in 11..=15 {
        let client = format!("127.0.0.{n}");
        // No headers: the peer, and XFF set to it.
        let plain = Request::get("/ip").from(&client).send(sidecar).received();
        assert_eq!(plain.one("x-real-ip"), client);
        assert_eq!(plain.one("x-forwarded-for"), client);

        // Forged XFF and X-Real-IP (in any case) change nothing about the client.
        let forged = Request::get("/ip")
            .from(&client)
            .header("X-Forwarded-For", "6.6.6.6")
            .header("X-Real-IP", "6.6.6.6")
            .header("x-real-ip", "7.7.7.7")
            .send(sidecar)
            .received();
        assert_eq!(forged.one("x-real-ip"), client);
        assert_eq!(forged.one("x-forwarded-for"), format!("6.6.6.6,{client}"));
    }
    assert_eq!(
        envoy.counter_reaching("wasmcustom.client_ip.requests", 10),
        10
    );
    assert_eq!(
        envoy.counter_reaching("wasmcustom.client_ip.forged_header_replaced", 5),
        5
    );
    assert_eq!(envoy.stat("wasmcustom.client_ip.client_from_trusted"), 0);
    assert_eq!(envoy.stat("wasmcustom.client_ip.peer_unknown"), 0);
    envoy.assert_no_vm_crash();
}

#[test]
fn ipv6_clients() {
    let envoy = Envoy::start(&[Listener::sidecar("sidecar6", "{}").on("::1")]);
    let sidecar = envoy.listener("sidecar6");
    let received = Request::get("/ip")
        .from("::1")
        .header("x-forwarded-for", "2001:db8::66")
        .header("x-real-ip", "2001:db8::66")
        .send(sidecar)
        .received();
    assert_eq!(received.one("x-real-ip"), "::1");
    assert_eq!(received.one("x-forwarded-for"), "2001:db8::66,::1");
}

#[test]
fn trusted_proxies_name_the_client() {
    let config = r#"{"trusted_proxies":["127.0.0.10","10.0.0.0/8"]}"#;
    let envoy = Envoy::start(&[Listener::sidecar("sidecar", config)]);
    let sidecar = envoy.listener("sidecar");
    let via = |peer: &str, xff: &str| {
        let received = Request::get("/ip")
            .from(peer)
            .header("x-forwarded-for", xff)
            .header("x-real-ip", "6.6.6.6")
            .send(sidecar)
            .received();
        assert_eq!(
            received.one("x-forwarded-for"),
            format!("{xff},{peer}"),
            "append keeps the chain"
        );
        received.one("x-real-ip").to_owned()
    };
    // The trusted gateway names the client.
    assert_eq!(via("127.0.0.10", "203.0.113.7"), "203.0.113.7");
    // Trusted hops in the chain are skipped; what lies left of the client is not believed.
    assert_eq!(
        via("127.0.0.10", "6.6.6.6, 203.0.113.7, 10.1.2.3"),
        "203.0.113.7"
    );
    // Every entry trusted: the leftmost.
    assert_eq!(via("127.0.0.10", "10.9.9.9, 10.1.2.3"), "10.9.9.9");
    // Junk ends the walk at the nearest verified address.
    assert_eq!(via("127.0.0.10", "203.0.113.7, junk, 10.1.2.3"), "10.1.2.3");
    assert_eq!(via("127.0.0.10", "203.0.113.7, unknown"), "127.0.0.10");
    // An untrusted peer cannot borrow the gateway's trust.
    assert_eq!(via("127.0.0.20", "203.0.113.7"), "127.0.0.20");
    assert_eq!(via("127.0.0.20", "203.0.113.7, 127.0.0.10"), "127.0.0.20");

    assert_eq!(
        envoy.counter_reaching("wasmcustom.client_ip.client_from_trusted", 4),
        4
    );
    assert_eq!(
        envoy.counter_reaching("wasmcustom.client_ip.invalid_xff_entries", 2),
        2
    );
}

#[test]
fn repeated_forwarded_for_headers_are_one_chain() {
    let config = r#"{"trusted_proxies":["127.0.0.10","10.0.0.0/8"]}"#;
    let envoy = Envoy::start(&[Listener::sidecar("sidecar", config)]);
    let received = Request::get("/ip")
        .from("127.0.0.10")
        .header("x-forwarded-for", "203.0.113.7")
        .header("x-forwarded-for", "10.1.2.3")
        .send(envoy.listener("sidecar"))
        .received();
    // Envoy joined the two headers before the filter ran.
    assert_eq!(
        received.one("x-forwarded-for"),
        "203.0.113.7,10.1.2.3,127.0.0.10"
    );
    assert_eq!(received.one("x-real-ip"), "203.0.113.7");
}

#[test]
fn trusted_hops_count_from_the_right() {
    let envoy = Envoy::start(&[Listener::sidecar("hops", r#"{"trusted_hops":2}"#)]);
    let hops = envoy.listener("hops");
    let client_for = |xff: Option<&str>| {
        let mut request = Request::get("/ip").from("127.0.0.30");
        if let Some(xff) = xff {
            request = request.header("x-forwarded-for", xff);
        }
        request.send(hops).received().one("x-real-ip").to_owned()
    };
    assert_eq!(client_for(Some("9.9.9.9, 1.1.1.1, 2.2.2.2")), "1.1.1.1");
    assert_eq!(client_for(Some("1.1.1.1, 2.2.2.2")), "1.1.1.1");
    assert_eq!(client_for(Some("2.2.2.2")), "127.0.0.30");
    assert_eq!(client_for(Some("junk, 2.2.2.2")), "127.0.0.30");
    assert_eq!(client_for(None), "127.0.0.30");
}

#[test]
fn forwarded_for_modes() {
    let envoy = Envoy::start(&[
        Listener::sidecar("overwrite", r#"{"xff_mode":"overwrite"}"#),
        Listener::sidecar("preserve", r#"{"xff_mode":"preserve"}"#),
        Listener::sidecar(
            "overwrite_trusted",
            r#"{"xff_mode":"overwrite","trusted_proxies":["127.0.0.10"]}"#,
        ),
    ]);
    let forged = |listener: &str, peer: &str| {
        Request::get("/ip")
            .from(peer)
            .header("x-forwarded-for", "6.6.6.6, 203.0.113.7")
            .send(envoy.listener(listener))
            .received()
    };
    assert_eq!(
        forged("overwrite", "127.0.0.31").one("x-forwarded-for"),
        "127.0.0.31"
    );
    assert_eq!(
        forged("overwrite_trusted", "127.0.0.10").one("x-forwarded-for"),
        "203.0.113.7"
    );
    let preserved = forged("preserve", "127.0.0.32");
    assert_eq!(preserved.one("x-forwarded-for"), "6.6.6.6, 203.0.113.7");
    assert_eq!(preserved.one("x-real-ip"), "127.0.0.32");
    let plain = Request::get("/ip")
        .from("127.0.0.32")
        .send(envoy.listener("preserve"))
        .received();
    assert!(plain.all("x-forwarded-for").is_empty());
}

#[test]
fn forwarded_header_modes() {
    let envoy = Envoy::start(&[
        Listener::sidecar("preserve", "{}"),
        Listener::sidecar(
            "overwrite",
            r#"{"forwarded_mode":"overwrite","trusted_proxies":["127.0.0.10"]}"#,
        ),
        Listener::sidecar("remove", r#"{"forwarded_mode":"remove"}"#),
        Listener::sidecar("overwrite6", r#"{"forwarded_mode":"overwrite"}"#).on("::1"),
    ]);
    let forged = |listener: &str, peer: &str| {
        Request::get("/ip")
            .from(peer)
            .header("forwarded", "for=6.6.6.6;proto=https")
            .header("x-forwarded-for", "203.0.113.7")
            .send(envoy.listener(listener))
            .received()
    };
    assert_eq!(
        forged("preserve", "127.0.0.33").one("forwarded"),
        "for=6.6.6.6;proto=https"
    );
    assert_eq!(
        forged("overwrite", "127.0.0.33").one("forwarded"),
        "for=127.0.0.33"
    );
    assert_eq!(
        forged("overwrite", "127.0.0.10").one("forwarded"),
        "for=203.0.113.7"
    );
    let ipv6 = Request::get("/ip")
        .from("::1")
        .header("forwarded", "for=6.6.6.6")
        .send(envoy.listener("overwrite6"))
        .received();
    assert_eq!(ipv6.one("forwarded"), "for=\"[::1]\"");
    assert!(forged("remove", "127.0.0.34").all("forwarded").is_empty());
}

#[test]
fn client_ip_header_is_configurable_or_off() {
    let envoy = Envoy::start(&[
        Listener::sidecar("custom", r#"{"client_ip_header":"X-Client-IP"}"#),
        Listener::sidecar("off", r#"{"client_ip_header":""}"#),
    ]);
    let forged = |listener: &str| {
        Request::get("/ip")
            .from("127.0.0.40")
            .header("x-real-ip", "6.6.6.6")
            .header("x-client-ip", "6.6.6.6")
            .send(envoy.listener(listener))
            .received()
    };
    let custom = forged("custom");
    assert_eq!(custom.one("x-client-ip"), "127.0.0.40");
    // Headers the filter does not own pass as they came.
    assert_eq!(custom.one("x-real-ip"), "6.6.6.6");
    let off = forged("off");
    assert_eq!(off.one("x-real-ip"), "6.6.6.6");
    assert_eq!(off.one("x-forwarded-for"), "127.0.0.40");
}

#[test]
fn oversized_and_garbage_forwarded_for() {
    let config = r#"{"trusted_proxies":["127.0.0.10"]}"#;
    let envoy = Envoy::start(&[Listener::sidecar("sidecar", config)]);
    let sidecar = envoy.listener("sidecar");
    let client_for = |peer: &str, xff: &[u8]| {
        let received = Request::get("/ip")
            .from(peer)
            .header("x-forwarded-for", xff)
            .send(sidecar)
            .received();
        received.one("x-real-ip").to_owned()
    };
    // 40 KiB of junk from an untrusted peer: the peer, and the request goes through.
    let junk = "x".repeat(40 * 1024);
    assert_eq!(client_for("127.0.0.50", junk.as_bytes()), "127.0.0.50");
    // The same from the trusted peer: junk ends the walk at once.
    assert_eq!(client_for("127.0.0.10", junk.as_bytes()), "127.0.0.10");
    // Thousands of trusted entries: the walk stops at its cap (32 entries),
    // at the last one verified, and never reaches the far-left entry.
    let chain = format!("203.0.113.7{}", ", 127.0.0.10".repeat(2000));
    assert_eq!(client_for("127.0.0.10", chain.as_bytes()), "127.0.0.10");
    // Bytes that are not text, empty entries, brackets and ports.
    assert_eq!(
        client_for("127.0.0.10", b"203.0.113.7, \x80\xff\xfe"),
        "127.0.0.10"
    );
    assert_eq!(client_for("127.0.0.10", b",,,,"), "127.0.0.10");
    assert_eq!(
        client_for("127.0.0.10", b"[2001:db8::9]:1234"),
        "2001:db8::9"
    );
    assert_eq!(client_for("127.0.0.10", b"203.0.113.9:80"), "203.0.113.9");
    assert_eq!(client_for("127.0.0.10", b"fe80::1%eth0"), "127.0.0.10");
    envoy.assert_no_vm_crash();
}

#[test]
fn without_the_network_filter() {
    let envoy = Envoy::start(&[
        http_root_only("sidecar_http_only", "{}"),
        gateway("gateway_http_only", r#"{"trusted_hops":1}"#).without_peer_filter(),
    ]);
    // No XFF: Envoy's source.address is the socket's, so the peer is known.
    let plain = Request::get("/ip")
        .from("127.0.0.60")
        .send(envoy.listener("sidecar_http_only"))
        .received();
    assert_eq!(plain.one("x-real-ip"), "127.0.0.60");
    // With use_remote_address: false and an XFF, Envoy's source.address is the
    // header's rightmost entry: the filter cannot vouch for anyone, so the
    // client header is removed rather than trusted.
    let forged = Request::get("/ip")
        .from("127.0.0.60")
        .header("x-forwarded-for", "6.6.6.6")
        .header("x-real-ip", "6.6.6.6")
        .send(envoy.listener("sidecar_http_only"))
        .received();
    assert!(forged.all("x-real-ip").is_empty(), "{:?}", forged.headers);
    assert_eq!(forged.one("x-forwarded-for"), "6.6.6.6");
    assert_eq!(
        envoy.counter_reaching("wasmcustom.client_ip.peer_unknown", 1),
        1
    );

    // At a gateway (use_remote_address: true) the HTTP filter alone sees the
    // true peer, and Envoy's own append is neither repeated nor counted as a hop.
    let via_gateway = Request::get("/ip")
        .from("127.0.0.61")
        .header("x-forwarded-for", "6.6.6.6, 203.0.113.7")
        .send(envoy.listener("gateway_http_only"))
        .received();
    assert_eq!(via_gateway.one("x-real-ip"), "203.0.113.7");
    assert_eq!(
        via_gateway.one("x-forwarded-for"),
        "6.6.6.6, 203.0.113.7,127.0.0.61"
    );
}

#[test]
fn trust_settings_on_a_sidecar_without_the_network_filter() {
    let envoy = Envoy::start(&[
        http_root_only("proxies", r#"{"trusted_proxies":["127.0.0.10"]}"#),
        http_root_only("hops", r#"{"trusted_hops":2}"#),
    ]);
    let client_header = |listener: &str, peer: &str, xff: Option<&str>| {
        let mut request = Request::get("/ip")
            .from(peer)
            .header("x-real-ip", "6.6.6.6");
        if let Some(xff) = xff {
            request = request.header("x-forwarded-for", xff);
        }
        let received = request.send(envoy.listener(listener)).received();
        received.all("x-real-ip").first().map(|ip| ip.to_string())
    };
    // trusted_proxies: with an XFF the peer is hidden, so even the trusted
    // gateway's chain is not believed and the header is removed.
    assert_eq!(
        client_header("proxies", "127.0.0.10", Some("203.0.113.7")),
        None
    );
    assert_eq!(
        client_header("proxies", "127.0.0.10", None).as_deref(),
        Some("127.0.0.10")
    );
    // trusted_hops does not need the peer: the entry names the client, from any
    // peer, which is why it suits only listeners every path reaches through
    // the N proxies.
    assert_eq!(
        client_header("hops", "127.0.0.63", Some("203.0.113.9, 10.0.0.1")).as_deref(),
        Some("203.0.113.9")
    );
    // A missing entry falls back to the peer, which is unknown here.
    assert_eq!(
        client_header("hops", "127.0.0.63", Some("203.0.113.9")),
        None
    );
    // Envoy keeps the socket's address when the rightmost entry is not an
    // address, so then the peer is known again.
    assert_eq!(
        client_header("hops", "127.0.0.63", Some("junk")).as_deref(),
        Some("127.0.0.63")
    );
    assert_eq!(
        client_header("hops", "127.0.0.63", None).as_deref(),
        Some("127.0.0.63")
    );
}

#[test]
fn a_trusted_range_that_clients_send_from_lets_them_choose() {
    // The operator's duty docs/trust-model.md names: a client inside a trusted range
    // is believed like a proxy.
    let envoy = Envoy::start(&[Listener::sidecar(
        "too_broad",
        r#"{"trusted_proxies":["127.0.0.0/8"]}"#,
    )]);
    let received = Request::get("/ip")
        .from("127.0.0.64")
        .header("x-forwarded-for", "6.6.6.6")
        .send(envoy.listener("too_broad"))
        .received();
    assert_eq!(received.one("x-real-ip"), "6.6.6.6");
}

#[test]
fn gateway_with_both_roots() {
    let envoy = Envoy::start(&[gateway("gateway", r#"{"trusted_proxies":["127.0.0.10"]}"#)]);
    let gateway = envoy.listener("gateway");
    let received = Request::get("/ip")
        .from("127.0.0.10")
        .header("x-forwarded-for", "6.6.6.6, 203.0.113.7")
        .send(gateway)
        .received();
    assert_eq!(received.one("x-real-ip"), "203.0.113.7");
    assert_eq!(
        received.one("x-forwarded-for"),
        "6.6.6.6, 203.0.113.7,127.0.0.10"
    );
    let direct = Request::get("/ip")
        .from("127.0.0.62")
        .header("x-forwarded-for", "203.0.113.7")
        .send(gateway)
        .received();
    assert_eq!(direct.one("x-real-ip"), "127.0.0.62");
}

#[test]
fn client_ip_reaches_access_logs_through_filter_state() {
    let envoy = Envoy::start(&[
        Listener::sidecar(
            "sidecar",
            r#"{"trusted_proxies":["127.0.0.10"],"publish_filter_state":true}"#,
        ),
        Listener::sidecar("default", r#"{"trusted_proxies":["127.0.0.10"]}"#),
    ]);
    Request::get("/logged")
        .from("127.0.0.10")
        .header("x-forwarded-for", "203.0.113.7")
        .send(envoy.listener("sidecar"))
        .received();
    let entry = wait_for_log_entry(&envoy, "sidecar", "/logged");
    assert_eq!(entry["client_ip"], "203.0.113.7");
    assert_eq!(entry["client_ip_peer"], "127.0.0.10");
    // The client header as the filter wrote it, in every configuration.
    assert_eq!(entry["x_real_ip"], "203.0.113.7");
    // What Envoy itself believes with use_remote_address: false.
    assert_eq!(entry["downstream_remote_address"], "203.0.113.7:0");
    assert_eq!(entry["x_forwarded_for"], "203.0.113.7,127.0.0.10");
}

#[test]
fn many_connections_and_streams_keep_the_vm_alive() {
    // Both roots share one VM per worker: every connection makes a stream
    // context of the peer filter and every request an HTTP context of the
    // other. A root that answered with the wrong context type would abort the
    // VM ("invalid context_id") and fail every later request.
    let envoy = Envoy::start(&[
        Listener::sidecar("a", "{}"),
        Listener::sidecar("b", r#"{"trusted_hops":1}"#),
    ]);
    for round in 0..100 {
        let client = format!("127.0.1.{}", round % 50 + 1);
        for name in ["a", "b"] {
            let received = Request::get("/ip")
                .from(&client)
                .send(envoy.listener(name))
                .received();
            assert_eq!(received.one("x-real-ip"), client);
        }
    }
    envoy.assert_no_vm_crash();
}

fn wait_for_log_entry(envoy: &Envoy, listener: &str, path: &str) -> serde_json::Value {
    wait_until(
        std::time::Duration::from_secs(10),
        format!("an access log entry for {path}"),
        || {
            envoy
                .access_log(listener)
                .into_iter()
                .find(|entry| entry["path"] == path)
        },
    )
}
