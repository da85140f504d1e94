//! Where the client comes from, in real Envoy: RFC 7239 `Forwarded`, and a
//! header with one address as CDNs and load balancers send it.

use envoy_test::{Envoy, Listener, Request};

#[test]
fn forwarded_is_walked_like_x_forwarded_for() {
    let config =
        r#"{"client_ip_source":"forwarded","trusted_proxies":["127.0.0.10","10.0.0.0/8"]}"#;
    let envoy = Envoy::start(&[Listener::sidecar("sidecar", config)]);
    let sidecar = envoy.listener("sidecar");
    let from_proxy = |headers: &[&str]| {
        let mut request = Request::get("/ip")
            .from("127.0.0.10")
            .header("X-Forwarded-For", "6.6.6.6");
        for value in headers {
            request = request.header("Forwarded", value);
        }
        request.send(sidecar).received()
    };
    let received =
        from_proxy(&[r#"for=6.6.6.6, For="[2001:db8::7]:4711";proto=https, for=10.1.1.1"#]);
    assert_eq!(received.one("x-real-ip"), "2001:db8::7");
    // X-Forwarded-For is not the source here: append adds the peer to it, as
    // always, and believes nothing in it.
    assert_eq!(received.one("x-forwarded-for"), "6.6.6.6,127.0.0.10");
    // Repeated headers form one list: the proxy's, on the right, counts.
    let repeated = from_proxy(&["for=6.6.6.6", "for=203.0.113.7"]);
    assert_eq!(repeated.one("x-real-ip"), "203.0.113.7");
    // unknown and obfuscated nodes end the walk at the nearest verified.
    for value in [
        "for=203.0.113.8, for=unknown",
        "for=203.0.113.8, for=_hidden",
    ] {
        assert_eq!(
            from_proxy(&[value]).one("x-real-ip"),
            "127.0.0.10",
            "{value}"
        );
    }
    // From anyone else, Forwarded is never read.
    let direct = Request::get("/ip")
        .from("127.0.0.11")
        .header("Forwarded", "for=6.6.6.6")
        .send(sidecar)
        .received();
    assert_eq!(direct.one("x-real-ip"), "127.0.0.11");
    assert_eq!(
        envoy.counter_reaching("wasmcustom.client_ip.invalid_xff_entries", 2),
        2
    );
    envoy.assert_no_vm_crash();
}

#[test]
fn a_cdn_header_is_believed_from_the_cdn_only() {
    // The CDN's edge addresses are trusted; it sends the client in one header.
    let config = r#"{"client_ip_source":"cf-connecting-ip","trusted_proxies":["127.0.0.20/31"],"xff_mode":"overwrite"}"#;
    let envoy = Envoy::start(&[Listener::sidecar("edge", config)]);
    let edge = envoy.listener("edge");
    let via_cdn = Request::get("/ip")
        .from("127.0.0.21")
        .header("CF-Connecting-IP", "198.51.100.7")
        .header("X-Forwarded-For", "6.6.6.6")
        .send(edge)
        .received();
    assert_eq!(via_cdn.one("x-real-ip"), "198.51.100.7");
    assert_eq!(via_cdn.one("x-forwarded-for"), "198.51.100.7");
    // A client that goes around the CDN and writes the header gets nowhere.
    let around = Request::get("/ip")
        .from("127.0.0.22")
        .header("CF-Connecting-IP", "198.51.100.7")
        .header("X-Real-IP", "198.51.100.7")
        .send(edge)
        .received();
    assert_eq!(around.one("x-real-ip"), "127.0.0.22");
    // From the CDN without the header, or with no address in it: the peer.
    let missing = Request::get("/ip").from("127.0.0.20").send(edge).received();
    assert_eq!(missing.one("x-real-ip"), "127.0.0.20");
    for junk in ["198.51.100.7, 6.6.6.6", "unknown"] {
        let invalid = Request::get("/ip")
            .from("127.0.0.20")
            .header("cf-connecting-ip", junk)
            .send(edge)
            .received();
        assert_eq!(invalid.one("x-real-ip"), "127.0.0.20", "{junk}");
    }
    // A repeated header is ambiguous (which line did the CDN write?): no
    // address, so the peer, whichever line comes first.
    let repeated = Request::get("/ip")
        .from("127.0.0.20")
        .header("cf-connecting-ip", "6.6.6.6")
        .header("cf-connecting-ip", "198.51.100.9")
        .send(edge)
        .received();
    assert_eq!(repeated.one("x-real-ip"), "127.0.0.20");
    assert_eq!(
        envoy.counter_reaching("wasmcustom.client_ip.source_missing", 1),
        1
    );
    assert_eq!(
        envoy.counter_reaching("wasmcustom.client_ip.invalid_xff_entries", 3),
        3
    );
    assert_eq!(
        envoy.counter_reaching("wasmcustom.client_ip.client_from_trusted", 1),
        1
    );
    envoy.assert_no_vm_crash();
}
