//! The whole filter against a recording host: contexts created as Envoy
//! creates them, requests served, and the exact host calls each
//! configuration makes per request, so that no change can add one unnoticed.

use super::contexts::Contexts;
use super::host::path;
use super::mock::{Call, MockHost};
use super::Action;

const ROOT: u32 = 1;
const STREAM: u32 = 2;

fn get_property(path: &[u8]) -> Call {
    Call::GetProperty(String::from_utf8_lossy(path).replace('\0', "."))
}

fn get_header(name: &str) -> Call {
    Call::GetHeader(name.to_owned())
}

fn set_header(name: &str, value: &str) -> Call {
    Call::SetHeader(name.to_owned(), value.to_owned())
}

/// An HTTP root configured with `json`, and one stream under it.
fn http_filter(json: &str) -> (Contexts, MockHost) {
    let host = MockHost {
        configuration: json.as_bytes().to_vec(),
        ..MockHost::default()
    }
    .with_property(path::PLUGIN_ROOT_ID, "client_ip");
    let mut contexts = Contexts::default();
    contexts.create(&host, ROOT, 0);
    assert!(contexts.configure(&host, ROOT, json.len()), "{json}");
    contexts.create(&host, STREAM, ROOT);
    host.take_calls();
    (contexts, host)
}

/// Serves one request on the stream and returns the host calls it made.
fn serve(contexts: &Contexts, host: &MockHost) -> (Action, Vec<Call>) {
    let action = contexts.request_headers(host, STREAM);
    (action, host.take_calls())
}

/// The companion's record of the peer, as the network root leaves it.
fn with_peer(host: MockHost, peer: &str) -> MockHost {
    host.with_property(path::CLIENT_IP_PEER, peer)
}

/// The job's four calls and no more: read the peer, read X-Forwarded-For,
/// write the client header, write X-Forwarded-For.
#[test]
fn the_default_deployment_makes_the_jobs_four_host_calls() {
    let (contexts, host) = http_filter("{}");
    let host = with_peer(host, "127.0.0.9").with_header("x-forwarded-for", "6.6.6.6");
    let (action, calls) = serve(&contexts, &host);
    assert_eq!(action, Action::Continue);
    assert_eq!(
        calls,
        [
            get_property(path::CLIENT_IP_PEER),
            get_header("x-forwarded-for"),
            set_header("x-real-ip", "127.0.0.9"),
            set_header("x-forwarded-for", "6.6.6.6,127.0.0.9"),
        ]
    );
}

#[test]
fn the_opt_ins_cost_one_call_each() {
    let (contexts, host) =
        http_filter(r#"{"publish_filter_state":true,"count_forged_headers":true}"#);
    let host = with_peer(host, "127.0.0.9").with_header("x-real-ip", "6.6.6.6");
    let (_, calls) = serve(&contexts, &host);
    assert_eq!(
        calls,
        [
            get_property(path::CLIENT_IP_PEER),
            get_header("x-forwarded-for"),
            get_header("x-real-ip"),
            set_header("x-real-ip", "127.0.0.9"),
            set_header("x-forwarded-for", "127.0.0.9"),
            Call::SetProperty("client_ip".to_owned(), "127.0.0.9".to_owned()),
        ]
    );
    contexts.tick(&host, ROOT);
    // forged_header_replaced is the third counter defined.
    assert!(host.take_calls().contains(&Call::IncrementMetric(3, 1)));
}

#[test]
fn without_the_companion_the_peer_costs_one_more_read() {
    let (contexts, host) = http_filter("{}");
    let host = host.with_property(path::SOURCE_ADDRESS, "127.0.0.9:4711");
    let (_, calls) = serve(&contexts, &host);
    assert_eq!(calls.len(), 5, "{calls:#?}");
    assert_eq!(
        calls.get(..2),
        Some(
            &[
                get_property(path::CLIENT_IP_PEER),
                get_property(path::SOURCE_ADDRESS)
            ][..]
        )
    );
    assert_eq!(host.header("x-real-ip").as_deref(), Some("127.0.0.9"));
}

/// Host calls per request under each configuration, with the companion's
/// record present and a request carrying X-Forwarded-For.
#[test]
fn host_calls_per_request_by_configuration() {
    let gateway_san = "spiffe://cluster.local/ns/istio-system/sa/gw";
    let cases: &[(&str, &str, Option<&str>, usize)] = &[
        ("defaults", "{}", None, 4),
        ("overwrite", r#"{"xff_mode":"overwrite"}"#, None, 4),
        ("preserve", r#"{"xff_mode":"preserve"}"#, None, 3),
        (
            "no client header",
            r#"{"client_ip_header":"","xff_mode":"preserve"}"#,
            None,
            2,
        ),
        (
            "Forwarded overwritten",
            r#"{"forwarded_mode":"overwrite"}"#,
            None,
            5,
        ),
        ("filter state", r#"{"publish_filter_state":true}"#, None, 5),
        (
            "forged headers counted",
            r#"{"count_forged_headers":true}"#,
            None,
            5,
        ),
        // Features that are not triggered cost nothing.
        (
            "access lists",
            r#"{"allow_clients":["0.0.0.0/0"],"deny_clients":["192.0.2.0/24"]}"#,
            None,
            4,
        ),
        (
            "trusted by address",
            r#"{"trusted_proxies":["127.0.0.0/8"],"trusted_identities":["cluster.local/ns/istio-system/sa/gw"]}"#,
            Some(gateway_san),
            4,
        ),
        // The identity is read only when the address does not decide.
        (
            "identity read",
            r#"{"trusted_identities":["cluster.local/ns/istio-system/sa/gw"]}"#,
            Some(gateway_san),
            5,
        ),
        (
            "identity absent",
            r#"{"trusted_identities":["cluster.local/ns/istio-system/sa/gw"]}"#,
            None,
            5,
        ),
        // Another source is read only from a trusted peer.
        (
            "Forwarded source, untrusted",
            r#"{"client_ip_source":"forwarded"}"#,
            None,
            4,
        ),
        (
            "Forwarded source, overwrite, untrusted",
            r#"{"client_ip_source":"forwarded","xff_mode":"overwrite"}"#,
            None,
            3,
        ),
        (
            "Forwarded source, trusted",
            r#"{"client_ip_source":"forwarded","trusted_proxies":["127.0.0.0/8"]}"#,
            None,
            5,
        ),
    ];
    for (name, json, identity, expected) in cases {
        let (contexts, host) = http_filter(json);
        let mut host = with_peer(host, "127.0.0.9").with_header("x-forwarded-for", "6.6.6.6");
        if let Some(san) = identity {
            host = host.with_property(path::PEER_URI_SAN, san);
        }
        let (action, calls) = serve(&contexts, &host);
        assert_eq!(action, Action::Continue, "{name}");
        assert_eq!(calls.len(), *expected, "{name}: {calls:#?}");
    }
}

#[test]
fn a_trusted_identity_names_the_client() {
    let (contexts, host) = http_filter(
        r#"{"trusted_identities":["cluster.local/ns/istio-system/sa/gw"],"xff_mode":"overwrite","publish_filter_state":true}"#,
    );
    let host = with_peer(host, "10.1.2.3")
        .with_property(
            path::PEER_URI_SAN,
            "spiffe://cluster.local/ns/istio-system/sa/gw",
        )
        .with_header("x-forwarded-for", "6.6.6.6, 203.0.113.7")
        .with_header("x-real-ip", "6.6.6.6");
    serve(&contexts, &host);
    assert_eq!(host.header("x-real-ip").as_deref(), Some("203.0.113.7"));
    assert_eq!(
        host.header("x-forwarded-for").as_deref(),
        Some("203.0.113.7")
    );
    assert_eq!(
        host.property(path::CLIENT_IP).as_deref(),
        Some("203.0.113.7")
    );
}

#[test]
fn a_denied_client_is_answered_and_its_log_line_shows_it() {
    let (contexts, host) = http_filter(r#"{"deny_clients":["127.0.0.66"],"deny_status":451}"#);
    let host = with_peer(host, "127.0.0.66")
        .with_header("x-real-ip", "127.0.0.1")
        .with_header("x-forwarded-for", "127.0.0.1");
    let (action, calls) = serve(&contexts, &host);
    assert_eq!(action, Action::Pause);
    // The client header is set for the access log; nothing else is written.
    assert_eq!(
        calls,
        [
            get_property(path::CLIENT_IP_PEER),
            get_header("x-forwarded-for"),
            set_header("x-real-ip", "127.0.0.66"),
            Call::LocalResponse(451),
        ]
    );
    assert_eq!(host.header("x-forwarded-for").as_deref(), Some("127.0.0.1"));
}

#[test]
fn the_dry_run_serves_and_writes_as_usual() {
    let (contexts, host) = http_filter(r#"{"deny_clients":["127.0.0.66"],"access_dry_run":true}"#);
    let host = with_peer(host, "127.0.0.66");
    let (action, calls) = serve(&contexts, &host);
    assert_eq!(action, Action::Continue);
    assert!(!calls.iter().any(|c| matches!(c, Call::LocalResponse(_))));
    assert_eq!(host.header("x-real-ip").as_deref(), Some("127.0.0.66"));
}

#[test]
fn counters_reach_the_host_once_per_tick_not_per_request() {
    let (mut contexts, host) = http_filter("{}");
    let host = with_peer(host, "127.0.0.9");
    for stream in 10..15 {
        contexts.create(&host, stream, ROOT);
        contexts.request_headers(&host, stream);
        contexts.delete(stream);
    }
    let during = host.take_calls();
    assert!(!during
        .iter()
        .any(|c| matches!(c, Call::IncrementMetric(..))));
    contexts.tick(&host, ROOT);
    let flushed = host.take_calls();
    // requests is the first counter defined (id 1): five requests at once.
    assert!(
        flushed.contains(&Call::IncrementMetric(1, 5)),
        "{flushed:#?}"
    );
}

#[test]
fn contexts_come_and_go_as_envoy_creates_and_deletes_them() {
    let (mut contexts, host) = http_filter("{}");
    assert_eq!(contexts.live(), (1, 1));
    contexts.delete(STREAM);
    assert_eq!(contexts.live(), (1, 0));
    // A network root and its connections keep no per-connection state.
    let peer_host = MockHost::default()
        .with_property(path::PLUGIN_ROOT_ID, "client_ip_peer")
        .with_property(path::SOURCE_ADDRESS, "[::ffff:127.0.0.7]:5000");
    contexts.create(&peer_host, 20, 0);
    assert!(contexts.configure(&peer_host, 20, 0));
    contexts.create(&peer_host, 21, 20);
    assert_eq!(contexts.live(), (2, 0));
    assert_eq!(contexts.new_connection(&peer_host), Action::Continue);
    assert_eq!(
        peer_host.property(path::CLIENT_IP_PEER).as_deref(),
        Some("127.0.0.7")
    );
    contexts.delete(21);
    contexts.delete(20);
    contexts.delete(ROOT);
    assert_eq!(contexts.live(), (0, 0));
    // A stream Envoy never announced, or one under a root whose
    // configuration failed, still never passes a forged client header.
    let stray = MockHost::default().with_header("x-real-ip", "6.6.6.6");
    assert_eq!(contexts.request_headers(&stray, 99), Action::Continue);
    assert_eq!(stray.header("x-real-ip"), None);
    let _ = host;
}

#[test]
fn a_bad_configuration_is_refused_and_an_unknown_root_id_too() {
    let host = MockHost {
        configuration: br#"{"xff_mode":"bogus"}"#.to_vec(),
        ..MockHost::default()
    }
    .with_property(path::PLUGIN_ROOT_ID, "client_ip");
    let mut contexts = Contexts::default();
    contexts.create(&host, ROOT, 0);
    assert!(!contexts.configure(&host, ROOT, 20));
    let unknown = MockHost::default().with_property(path::PLUGIN_ROOT_ID, "client-ip");
    contexts.create(&unknown, 5, 0);
    assert!(!contexts.configure(&unknown, 5, 0));
}
