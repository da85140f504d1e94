//! Bytes that are not text (HTTP's obs-text, 0x80 to 0xFF) in every request
//! header the filter reads, in real Envoy: X-Forwarded-For, `Forwarded`, a
//! one-address source header, and the client header (read by
//! `count_forged_headers`). HTTP/1.1 lets them through (RFC 9110's obs-text)
//! and Envoy hands them to the filter as they came. Each such entry is
//! invalid, as docs/how-it-works.md's rules say: the request is served, the walk ends
//! at the nearest verified address, and the same VM (one Envoy worker) goes
//! on resolving the next request as before.

use envoy_test::{Envoy, Listener, Received, Request};

/// The trusted proxy every request comes from, unless it says otherwise.
const PROXY: &str = "127.0.0.10";
/// Not text at all, then a valid address with one byte more.
const NOT_TEXT: &[u8] = b"\xff\xfe1.2.3.4";
const TRAILING_BYTE: &[u8] = b"198.51.100.7\xe9";
/// How the echo upstream shows the bytes it could not read as text.
const NOT_TEXT_SEEN: &str = "\u{fffd}\u{fffd}1.2.3.4";

fn listeners() -> [Listener; 3] {
    [
        // X-Forwarded-For, the default source; xff_mode append reads it from
        // any peer.
        Listener::sidecar(
            "xff",
            r#"{"trusted_proxies":["127.0.0.10"],"count_forged_headers":true}"#,
        ),
        Listener::sidecar(
            "forwarded",
            r#"{"client_ip_source":"forwarded","forwarded_mode":"overwrite","xff_mode":"overwrite","trusted_proxies":["127.0.0.10"],"count_forged_headers":true}"#,
        ),
        Listener::sidecar(
            "cdn",
            r#"{"client_ip_source":"cf-connecting-ip","xff_mode":"overwrite","trusted_proxies":["127.0.0.10"],"count_forged_headers":true}"#,
        ),
    ]
}

/// Sends a request from `from` with these headers, and returns what the
/// application received: the request must be answered by it.
fn send(envoy: &Envoy, listener: &str, from: &str, headers: &[(&str, &[u8])]) -> Received {
    let mut request = Request::get("/headers").from(from);
    for (name, value) in headers {
        request = request.header(name, value);
    }
    let response = request.send(envoy.listener(listener));
    assert!(
        response.status < 500,
        "{listener} answered {headers:?} with {}: {}",
        response.status,
        response.body
    );
    response.received()
}

/// `prefix` then `bytes` then `suffix`, as one header value.
fn around(prefix: &str, bytes: &[u8], suffix: &str) -> Vec<u8> {
    [prefix.as_bytes(), bytes, suffix.as_bytes()].concat()
}

#[test]
fn bytes_that_are_not_text_are_invalid_entries_and_the_vm_goes_on() {
    // One worker: one VM serves every request, the hostile ones and those
    // after them.
    let envoy = Envoy::start_with(&listeners(), 1, &[]);
    let mut forged = 0;
    let mut requests = 0;

    // X-Forwarded-For from the trusted proxy: an invalid entry ends the
    // walk, and the client is the nearest verified address, the proxy.
    for xff in [
        NOT_TEXT.to_vec(),
        TRAILING_BYTE.to_vec(),
        around("203.0.113.9, ", NOT_TEXT, ""),
    ] {
        let received = send(
            &envoy,
            "xff",
            PROXY,
            &[("X-Forwarded-For", &xff), ("X-Real-IP", NOT_TEXT)],
        );
        assert_eq!(received.one("x-real-ip"), PROXY, "{xff:?}");
        // append: the chain as it came, then the peer.
        assert_eq!(
            received.one("x-forwarded-for"),
            format!("{},127.0.0.10", String::from_utf8_lossy(&xff))
        );
        forged += 1;
        requests += 1;
    }
    // Left of the client, a bad entry is never reached.
    let received = send(
        &envoy,
        "xff",
        PROXY,
        &[
            ("X-Forwarded-For", &around("", NOT_TEXT, ", 203.0.113.9")),
            ("X-Real-IP", TRAILING_BYTE),
        ],
    );
    assert_eq!(received.one("x-real-ip"), "203.0.113.9");
    assert_eq!(
        received.one("x-forwarded-for"),
        format!("{NOT_TEXT_SEEN}, 203.0.113.9,127.0.0.10")
    );
    forged += 1;
    requests += 1;
    // From an untrusted peer nothing is believed; append still copies the
    // chain it received, bytes and all.
    let received = send(
        &envoy,
        "xff",
        "127.0.0.11",
        &[("X-Forwarded-For", NOT_TEXT), ("X-Real-IP", TRAILING_BYTE)],
    );
    assert_eq!(received.one("x-real-ip"), "127.0.0.11");
    assert_eq!(
        received.one("x-forwarded-for"),
        format!("{NOT_TEXT_SEEN},127.0.0.11")
    );
    forged += 1;
    requests += 1;

    // Forwarded, read through Envoy's request.headers attribute.
    for (forwarded, client) in [
        (around("for=", NOT_TEXT, ""), PROXY),
        (around("for=\"", TRAILING_BYTE, "\""), PROXY),
        (around("for=203.0.113.8, for=", NOT_TEXT, ""), PROXY),
        (around("for=", NOT_TEXT, ", for=203.0.113.8"), "203.0.113.8"),
    ] {
        let received = send(
            &envoy,
            "forwarded",
            PROXY,
            &[
                ("Forwarded", &forwarded),
                ("X-Forwarded-For", NOT_TEXT),
                ("X-Real-IP", NOT_TEXT),
            ],
        );
        assert_eq!(received.one("x-real-ip"), client, "{forwarded:?}");
        // overwrite: only the client goes on, in both headers.
        assert_eq!(received.one("forwarded"), format!("for={client}"));
        assert_eq!(received.one("x-forwarded-for"), client);
        forged += 1;
        requests += 1;
    }

    // A header that carries one address: no address in it, so the peer.
    for value in [NOT_TEXT, TRAILING_BYTE] {
        let received = send(
            &envoy,
            "cdn",
            PROXY,
            &[("CF-Connecting-IP", value), ("X-Real-IP", TRAILING_BYTE)],
        );
        assert_eq!(received.one("x-real-ip"), PROXY, "{value:?}");
        assert_eq!(received.one("x-forwarded-for"), PROXY);
        forged += 1;
        requests += 1;
    }

    // The same VM, afterwards: ordinary requests resolve as before.
    let normal = |listener: &str, from: &str, header: &str, value: &str| {
        let received = send(&envoy, listener, from, &[(header, value.as_bytes())]);
        received.one("x-real-ip").to_owned()
    };
    assert_eq!(
        normal("xff", PROXY, "X-Forwarded-For", "6.6.6.6, 203.0.113.50"),
        "203.0.113.50"
    );
    assert_eq!(
        normal("forwarded", PROXY, "Forwarded", "for=203.0.113.51"),
        "203.0.113.51"
    );
    assert_eq!(
        normal("cdn", PROXY, "CF-Connecting-IP", "203.0.113.52"),
        "203.0.113.52"
    );
    assert_eq!(
        normal("xff", "127.0.0.12", "X-Forwarded-For", "6.6.6.6"),
        "127.0.0.12"
    );
    requests += 4;

    // Every request went through the filter; each bad entry it met was
    // counted (three in X-Forwarded-For, three in Forwarded, two in
    // CF-Connecting-IP), and each client header it read was replaced.
    assert_eq!(
        envoy.counter_reaching("wasmcustom.client_ip.requests", requests),
        requests
    );
    assert_eq!(
        envoy.counter_reaching("wasmcustom.client_ip.invalid_xff_entries", 8),
        8
    );
    assert_eq!(
        envoy.counter_reaching("wasmcustom.client_ip.forged_header_replaced", forged),
        forged
    );
    envoy.assert_no_vm_crash();
}
