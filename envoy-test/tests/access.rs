//! Access control on the resolved client in real Envoy: denied clients are
//! answered by the filter and never reach the application, whatever headers
//! they write; allow lists fail closed; the dry run only counts.

use envoy_test::{Envoy, Listener, Request};

const UPSTREAM_REQUESTS: &str = "cluster.app.upstream_rq_total";

fn denied(envoy: &Envoy, request: Request, listener: &str) {
    let response = request.send(envoy.listener(listener));
    assert_eq!(response.status, 403, "{}", response.body);
    assert_eq!(response.body, "client address not allowed\n");
}

#[test]
fn a_denied_client_never_reaches_the_application() {
    let envoy = Envoy::start(&[Listener::sidecar(
        "sidecar",
        r#"{"deny_clients":["127.0.0.66","10.6.0.0/16"],"publish_filter_state":true}"#,
    )]);
    // Whatever it writes: addresses that are not denied, in every header the
    // filter reads or writes.
    for forged in [
        Request::get("/ip").from("127.0.0.66"),
        Request::get("/ip")
            .from("127.0.0.66")
            .header("X-Forwarded-For", "127.0.0.1")
            .header("X-Real-IP", "127.0.0.1")
            .header("Forwarded", "for=127.0.0.1"),
    ] {
        denied(&envoy, forged, "sidecar");
    }
    assert_eq!(envoy.counter_reaching("wasmcustom.client_ip.denied", 2), 2);
    assert_eq!(envoy.stat(UPSTREAM_REQUESTS), 0);
    // Everyone else is served, and not counted as allowed by a list.
    let served = Request::get("/ip")
        .from("127.0.0.67")
        .send(envoy.listener("sidecar"));
    assert_eq!(served.received().one("x-real-ip"), "127.0.0.67");
    assert_eq!(envoy.counter_reaching(UPSTREAM_REQUESTS, 1), 1);
    assert_eq!(envoy.stat("wasmcustom.client_ip.allowed_by_list"), 0);
    // The access log shows who was denied, and why.
    let log = envoy.access_log("sidecar");
    let denial = log
        .iter()
        .find(|entry| entry["response_code"] == 403)
        .unwrap_or_else(|| panic!("no 403 in {log:?}"));
    assert_eq!(denial["client_ip"], "127.0.0.66");
    // The client header too, though the request went no further.
    assert_eq!(denial["x_real_ip"], "127.0.0.66");
    assert_eq!(denial["response_code_details"], "client_ip_denied");
    envoy.assert_no_vm_crash();
}

#[test]
fn an_allow_list_admits_only_its_own_and_fails_closed() {
    let json = r#"{"allow_clients":["127.0.0.70/31","::1"],"deny_clients":["127.0.0.71"],"deny_status":451}"#;
    let envoy = Envoy::start(&[
        Listener::sidecar("sidecar", json),
        // Without the peer filter a sidecar cannot know the peer of a request
        // that carries X-Forwarded-For: the client is unknown.
        Listener::sidecar("http_root_only", json).without_peer_filter(),
    ]);
    let sidecar = envoy.listener("sidecar");
    let admitted = Request::get("/ip")
        .from("127.0.0.70")
        .send(sidecar)
        .received();
    assert_eq!(admitted.one("x-real-ip"), "127.0.0.70");
    // Deny wins over allow.
    let refused = Request::get("/ip").from("127.0.0.71").send(sidecar);
    assert_eq!(refused.status, 451);
    // A client outside the list cannot write its way in.
    for request in [
        Request::get("/ip").from("127.0.0.72"),
        Request::get("/ip")
            .from("127.0.0.72")
            .header("X-Forwarded-For", "127.0.0.70")
            .header("X-Real-IP", "127.0.0.70"),
    ] {
        assert_eq!(request.send(sidecar).status, 451);
    }
    // Unknown client with an allow list: denied.
    let unknown = Request::get("/ip")
        .from("127.0.0.70")
        .header("X-Forwarded-For", "127.0.0.70")
        .send(envoy.listener("http_root_only"));
    assert_eq!(unknown.status, 451);
    assert_eq!(envoy.counter_reaching("wasmcustom.client_ip.denied", 4), 4);
    assert_eq!(
        envoy.counter_reaching("wasmcustom.client_ip.allowed_by_list", 1),
        1
    );
    assert_eq!(envoy.stat(UPSTREAM_REQUESTS), 1);
    envoy.assert_no_vm_crash();
}

#[test]
fn the_client_behind_a_trusted_proxy_is_the_one_judged() {
    let envoy = Envoy::start(&[Listener::sidecar(
        "sidecar",
        r#"{"trusted_proxies":["127.0.0.100"],"deny_clients":["203.0.113.66"]}"#,
    )]);
    let sidecar = envoy.listener("sidecar");
    let through_gateway = |xff: &str| {
        Request::get("/ip")
            .from("127.0.0.100")
            .header("X-Forwarded-For", xff)
            .send(sidecar)
    };
    assert_eq!(through_gateway("203.0.113.66").status, 403);
    // Entries a client writes left of its own do not rescue it, nor does one
    // that names a denied address harm anyone else.
    assert_eq!(through_gateway("198.51.100.1, 203.0.113.66").status, 403);
    assert_eq!(through_gateway("203.0.113.66, 198.51.100.1").status, 200);
    envoy.assert_no_vm_crash();
}

#[test]
fn the_dry_run_only_counts() {
    let envoy = Envoy::start(&[Listener::sidecar(
        "sidecar",
        r#"{"allow_clients":["127.0.0.80"],"deny_clients":["127.0.0.66"],"access_dry_run":true}"#,
    )]);
    let sidecar = envoy.listener("sidecar");
    for client in ["127.0.0.66", "127.0.0.81", "127.0.0.80"] {
        let received = Request::get("/ip").from(client).send(sidecar).received();
        assert_eq!(received.one("x-real-ip"), client);
    }
    assert_eq!(
        envoy.counter_reaching("wasmcustom.client_ip.dry_run_denied", 2),
        2
    );
    assert_eq!(
        envoy.counter_reaching("wasmcustom.client_ip.allowed_by_list", 1),
        1
    );
    assert_eq!(envoy.stat("wasmcustom.client_ip.denied"), 0);
    assert_eq!(envoy.counter_reaching(UPSTREAM_REQUESTS, 3), 3);
    envoy.assert_no_vm_crash();
}
