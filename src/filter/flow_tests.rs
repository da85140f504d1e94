//! The whole filter against a host that behaves like Envoy: roots configured
//! as Envoy configures them, requests served through the SDK's contexts, and
//! for each configuration the headers that result, the decision, and the
//! exact host calls, so that no change can add one unnoticed.

use proxy_wasm::traits::RootContext;
use proxy_wasm::types::{Action, LogLevel, Status};

use super::host::path;
use super::mock::{Call, CallMatcher, MockHost};
use super::root::PluginRoot;

const GATEWAY: &str = "cluster.local/ns/istio-system/sa/gw";
const GATEWAY_SAN: &[u8] = b"spiffe://cluster.local/ns/istio-system/sa/gw";

fn get_property(path: &[&str]) -> Call {
    Call::GetProperty(path.join("."))
}

fn get_header(name: &str) -> Call {
    Call::GetHeader(name.to_owned())
}

fn set_header(name: &str, value: &str) -> Call {
    Call::SetHeader(name.to_owned(), value.to_owned())
}

/// An HTTP root configured with `json` on `host`.
fn configured(host: MockHost, json: &str) -> PluginRoot<MockHost> {
    let host = host.with_root_id("client_ip").with_configuration(json);
    let mut root = PluginRoot::new(host.clone());
    assert!(root.on_configure(json.len()), "{json}");
    host.take_calls();
    root
}

fn http_filter(json: &str) -> (PluginRoot<MockHost>, MockHost) {
    let host = MockHost::default();
    (configured(host.clone(), json), host)
}

/// A request with these header lines, served on a new stream of the root:
/// what the filter answered and the host calls it made.
fn serve(
    root: &PluginRoot<MockHost>,
    host: &MockHost,
    headers: &[(&str, &str)],
) -> (Action, Vec<Call>) {
    host.new_request();
    for (name, value) in headers {
        host.clone().with_header(name, value.as_bytes());
    }
    let mut stream = root.create_http_context(2).unwrap();
    host.take_calls();
    let action = stream.on_http_request_headers(headers.len(), false);
    (action, host.take_calls())
}

/// The peer filter's record of the peer, as it leaves it.
fn with_peer(host: MockHost, peer: &str) -> MockHost {
    host.with_property(path::PEER_RECORD, peer.as_bytes())
}

/// The job's four calls and no more: read the peer, read X-Forwarded-For,
/// write the client header, write X-Forwarded-For.
#[test]
fn the_default_deployment_makes_the_jobs_four_host_calls() {
    let (root, host) = http_filter("{}");
    let host = with_peer(host, "127.0.0.9");
    let (action, calls) = serve(
        &root,
        &host,
        &[("x-forwarded-for", "6.6.6.6"), ("x-real-ip", "6.6.6.6")],
    );
    assert_eq!(action, Action::Continue);
    assert_eq!(
        calls,
        [
            get_property(path::PEER_RECORD),
            get_header("x-forwarded-for"),
            set_header("x-real-ip", "127.0.0.9"),
            set_header("x-forwarded-for", "6.6.6.6,127.0.0.9"),
        ]
    );
    assert_eq!(host.header("x-real-ip").as_deref(), Some("127.0.0.9"));
    assert_eq!(
        host.header("x-forwarded-for").as_deref(),
        Some("6.6.6.6,127.0.0.9")
    );
}

#[test]
fn repeated_x_forwarded_for_lines_are_one_chain() {
    let (root, host) = http_filter(r#"{"trusted_proxies":["127.0.0.0/8"]}"#);
    let host = with_peer(host, "127.0.0.9");
    serve(
        &root,
        &host,
        &[
            ("x-forwarded-for", "203.0.113.7"),
            ("x-forwarded-for", "127.0.0.2"),
        ],
    );
    assert_eq!(host.header("x-real-ip").as_deref(), Some("203.0.113.7"));
    assert_eq!(
        host.header("x-forwarded-for").as_deref(),
        Some("203.0.113.7,127.0.0.2,127.0.0.9")
    );
}

#[test]
fn the_opt_ins_cost_one_call_each() {
    let (mut root, host) = http_filter(
        r#"{"publish_filter_state":true,"count_forged_headers":true,"publish_ip_filter_state":true}"#,
    );
    let host = with_peer(host, "127.0.0.9");
    let (_, calls) = serve(&root, &host, &[("x-real-ip", "6.6.6.6")]);
    assert_eq!(
        calls,
        [
            get_property(path::PEER_RECORD),
            get_header("x-forwarded-for"),
            get_header("x-real-ip"),
            set_header("x-real-ip", "127.0.0.9"),
            set_header("x-forwarded-for", "127.0.0.9"),
            Call::SetProperty("client_ip".to_owned(), "127.0.0.9".to_owned()),
            Call::ForeignFunction("set_envoy_filter_state".to_owned()),
        ]
    );
    assert_eq!(
        host.property(&["filter_state", "envoy.network.ip"])
            .as_deref(),
        Some("127.0.0.9")
    );
    assert_eq!(
        host.property(&["filter_state", "wasm.client_ip"])
            .as_deref(),
        Some("127.0.0.9")
    );
    root.on_tick();
    assert_eq!(host.metric("client_ip.forged_header_replaced"), 1);
    assert_eq!(host.metric("client_ip.requests"), 1);
}

#[test]
fn without_the_peer_filter_the_socket_peer_costs_two_more_reads() {
    let (root, host) = http_filter("{}");
    let host = host.with_property(path::SOURCE_ADDRESS, b"127.0.0.9:4711");
    let (_, calls) = serve(&root, &host, &[]);
    assert_eq!(calls.len(), 6, "{calls:#?}");
    assert_eq!(
        calls.get(..3),
        Some(
            &[
                get_property(path::PEER_RECORD),
                get_property(path::WAYPOINT_PEER_PORT),
                get_property(path::SOURCE_ADDRESS)
            ][..]
        )
    );
    assert_eq!(host.header("x-real-ip").as_deref(), Some("127.0.0.9"));
}

/// `source.address` taken from X-Forwarded-For (port 0) is no peer; with no
/// waypoint record either, the client is unknown and the forged header goes.
#[test]
fn an_unknown_peer_writes_no_client() {
    let (mut root, host) = http_filter("{}");
    let host = host.with_property(path::SOURCE_ADDRESS, b"6.6.6.6:0");
    let (action, calls) = serve(
        &root,
        &host,
        &[("x-forwarded-for", "6.6.6.6"), ("x-real-ip", "6.6.6.6")],
    );
    assert_eq!(action, Action::Continue);
    assert_eq!(
        calls.get(..3),
        Some(
            &[
                get_property(path::PEER_RECORD),
                get_property(path::WAYPOINT_PEER_PORT),
                get_property(path::SOURCE_ADDRESS),
            ][..]
        )
    );
    assert_eq!(host.header("x-real-ip"), None);
    assert_eq!(host.header("x-forwarded-for").as_deref(), Some("6.6.6.6"));
    root.on_tick();
    assert_eq!(host.metric("client_ip.peer_unknown"), 1);
}

/// Behind an ambient waypoint: no peer filter, `source.address` from
/// X-Forwarded-For, and the waypoint's record of the HBONE peer.
fn waypoint(port: i64) -> MockHost {
    MockHost::default()
        .with_property(path::SOURCE_ADDRESS, b"6.6.6.6:0")
        .with_property(path::WAYPOINT_PEER_IP, b"10.244.1.7")
        .with_property(path::WAYPOINT_PEER_PORT, &port.to_le_bytes())
}

#[test]
fn behind_a_waypoint_the_hbone_peer_is_the_peer() {
    let host = waypoint(43512);
    let root = configured(host.clone(), r#"{"xff_mode":"overwrite"}"#);
    let (_, calls) = serve(
        &root,
        &host,
        &[("x-forwarded-for", "6.6.6.6"), ("x-real-ip", "6.6.6.6")],
    );
    // The peer filter's record (absent), then the waypoint's port and
    // address; source.address, a forgery here, is never read.
    assert_eq!(calls.len(), 6, "{calls:#?}");
    assert!(!calls.contains(&get_property(path::SOURCE_ADDRESS)));
    assert_eq!(host.header("x-real-ip").as_deref(), Some("10.244.1.7"));
    assert_eq!(
        host.header("x-forwarded-for").as_deref(),
        Some("10.244.1.7")
    );
}

#[test]
fn a_waypoint_peer_forged_on_the_connect_is_unknown_and_counted() {
    let host = waypoint(0);
    let mut root = configured(host.clone(), "{}");
    let (_, calls) = serve(&root, &host, &[("x-real-ip", "6.6.6.6")]);
    // The forged address is never read, nor source.address after it.
    assert!(!calls.contains(&get_property(path::WAYPOINT_PEER_IP)));
    assert!(!calls.contains(&get_property(path::SOURCE_ADDRESS)));
    assert_eq!(host.header("x-real-ip"), None);
    root.on_tick();
    assert_eq!(host.metric("client_ip.peer_forged_on_connect"), 1);
    assert_eq!(host.metric("client_ip.peer_unknown"), 1);
}

/// A waypoint record this filter cannot read (an address that is none)
/// decides nothing: the socket's peer, when Envoy has it, still does.
#[test]
fn an_unreadable_waypoint_record_leaves_the_socket_peer() {
    let host = MockHost::default()
        .with_property(path::SOURCE_ADDRESS, b"127.0.0.9:4711")
        .with_property(path::WAYPOINT_PEER_IP, b"not-an-address")
        .with_property(path::WAYPOINT_PEER_PORT, &43512_i64.to_le_bytes());
    let root = configured(host.clone(), "{}");
    let (_, calls) = serve(&root, &host, &[]);
    assert!(calls.contains(&get_property(path::WAYPOINT_PEER_IP)));
    assert_eq!(host.header("x-real-ip").as_deref(), Some("127.0.0.9"));
}

#[test]
fn behind_a_waypoint_the_principal_is_the_identity() {
    let host = waypoint(43512).with_property(path::WAYPOINT_PEER_PRINCIPAL, GATEWAY_SAN);
    let mut root = configured(
        host.clone(),
        &format!(r#"{{"trusted_identities":["{GATEWAY}"]}}"#),
    );
    let (_, calls) = serve(&root, &host, &[("x-forwarded-for", "203.0.113.7")]);
    assert!(calls.contains(&get_property(path::PEER_URI_SAN)));
    assert_eq!(host.header("x-real-ip").as_deref(), Some("203.0.113.7"));
    root.on_tick();
    assert_eq!(host.metric("client_ip.peer_trusted_by_identity"), 1);
    // A certificate, where there is one, decides over the record.
    let rogue = waypoint(43512)
        .with_property(path::WAYPOINT_PEER_PRINCIPAL, GATEWAY_SAN)
        .with_property(path::PEER_URI_SAN, b"spiffe://cluster.local/ns/x/sa/rogue");
    let root = configured(
        rogue.clone(),
        &format!(r#"{{"trusted_identities":["{GATEWAY}"]}}"#),
    );
    serve(&root, &rogue, &[("x-forwarded-for", "203.0.113.7")]);
    assert_eq!(rogue.header("x-real-ip").as_deref(), Some("10.244.1.7"));
}

/// Host calls per request under each configuration, with the peer filter's
/// record present and a request carrying X-Forwarded-For.
#[test]
fn host_calls_per_request_by_configuration() {
    let cases: &[(&str, &str, Option<&[u8]>, usize)] = &[
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
            "typed IP filter state",
            r#"{"publish_ip_filter_state":true}"#,
            None,
            5,
        ),
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
            Some(GATEWAY_SAN),
            4,
        ),
        // The identity is read only when the address does not decide.
        (
            "identity read",
            r#"{"trusted_identities":["cluster.local/ns/istio-system/sa/gw"]}"#,
            Some(GATEWAY_SAN),
            5,
        ),
        // Without a certificate, the waypoint's principal is looked for.
        (
            "identity absent",
            r#"{"trusted_identities":["cluster.local/ns/istio-system/sa/gw"]}"#,
            None,
            6,
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
        let mut host = with_peer(MockHost::default(), "127.0.0.9");
        if let Some(san) = identity {
            host = host.with_property(path::PEER_URI_SAN, san);
        }
        let root = configured(host.clone(), json);
        let (action, calls) = serve(
            &root,
            &host,
            &[
                ("x-forwarded-for", "6.6.6.6"),
                ("forwarded", "for=203.0.113.9"),
            ],
        );
        assert_eq!(action, Action::Continue, "{name}");
        assert_eq!(calls.len(), *expected, "{name}: {calls:#?}");
    }
}

#[test]
fn a_trusted_forwarded_source_is_parsed_from_every_line() {
    let (root, host) = http_filter(
        r#"{"client_ip_source":"forwarded","trusted_proxies":["127.0.0.0/8"],"xff_mode":"overwrite"}"#,
    );
    let host = with_peer(host, "127.0.0.9");
    // A single header read would see the client's own first line only.
    serve(
        &root,
        &host,
        &[
            ("forwarded", "for=6.6.6.6"),
            ("forwarded", "for=203.0.113.9;proto=https"),
        ],
    );
    assert_eq!(host.header("x-real-ip").as_deref(), Some("203.0.113.9"));
    assert_eq!(
        host.header("x-forwarded-for").as_deref(),
        Some("203.0.113.9")
    );
}

#[test]
fn a_repeated_single_address_source_is_one_invalid_value() {
    let (mut root, host) =
        http_filter(r#"{"client_ip_source":"cf-connecting-ip","trusted_proxies":["127.0.0.0/8"]}"#);
    let host = with_peer(host, "127.0.0.9");
    serve(
        &root,
        &host,
        &[
            ("cf-connecting-ip", "6.6.6.6"),
            ("cf-connecting-ip", "203.0.113.9"),
        ],
    );
    assert_eq!(host.header("x-real-ip").as_deref(), Some("127.0.0.9"));
    root.on_tick();
    assert_eq!(host.metric("client_ip.invalid_xff_entries"), 1);
}

#[test]
fn a_trusted_identity_names_the_client() {
    let host =
        with_peer(MockHost::default(), "10.1.2.3").with_property(path::PEER_URI_SAN, GATEWAY_SAN);
    let root = configured(
        host.clone(),
        &format!(
            r#"{{"trusted_identities":["{GATEWAY}"],"xff_mode":"overwrite","publish_filter_state":true}}"#
        ),
    );
    serve(
        &root,
        &host,
        &[
            ("x-forwarded-for", "6.6.6.6, 203.0.113.7"),
            ("x-real-ip", "6.6.6.6"),
        ],
    );
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
    let (mut root, host) = http_filter(r#"{"deny_clients":["127.0.0.66"],"deny_status":451}"#);
    let host = with_peer(host, "127.0.0.66");
    let (action, calls) = serve(
        &root,
        &host,
        &[("x-real-ip", "127.0.0.1"), ("x-forwarded-for", "127.0.0.1")],
    );
    assert_eq!(action, Action::Pause);
    // The client header is set for the access log; nothing else is written.
    assert_eq!(
        calls,
        [
            get_property(path::PEER_RECORD),
            get_header("x-forwarded-for"),
            set_header("x-real-ip", "127.0.0.66"),
            Call::LocalResponse(451, "client_ip_denied".to_owned()),
        ]
    );
    assert_eq!(host.header("x-forwarded-for").as_deref(), Some("127.0.0.1"));
    let (status, _, body) = host.local_reply().unwrap();
    assert_eq!(
        (status, body.as_slice()),
        (451, &b"client address not allowed\n"[..])
    );
    root.on_tick();
    assert_eq!(host.metric("client_ip.denied"), 1);
}

#[test]
fn the_dry_run_serves_and_writes_as_usual() {
    let (mut root, host) = http_filter(r#"{"deny_clients":["127.0.0.66"],"access_dry_run":true}"#);
    let host = with_peer(host, "127.0.0.66");
    let (action, calls) = serve(&root, &host, &[]);
    assert_eq!(action, Action::Continue);
    assert!(!calls.iter().any(|c| matches!(c, Call::LocalResponse(..))));
    assert_eq!(host.header("x-real-ip").as_deref(), Some("127.0.0.66"));
    root.on_tick();
    assert_eq!(host.metric("client_ip.dry_run_denied"), 1);
    assert_eq!(host.metric("client_ip.denied"), 0);
}

#[test]
fn counters_reach_the_host_once_per_tick_not_per_request() {
    let (mut root, host) = http_filter("{}");
    let host = with_peer(host, "127.0.0.9");
    for _ in 0..5 {
        let (_, calls) = serve(&root, &host, &[]);
        assert!(!calls.iter().any(|c| matches!(c, Call::IncrementMetric(..))));
    }
    assert_eq!(host.metric("client_ip.requests"), 0);
    root.on_tick();
    assert_eq!(host.metric("client_ip.requests"), 5);
    root.on_tick();
    assert_eq!(host.metric("client_ip.requests"), 5);
}

// ------------------------------------------------------------ failures

/// A failed write of the client header never lets the client's own through:
/// the request is answered with an error, logged and counted.
#[test]
fn a_failed_header_write_answers_an_error_and_forwards_nothing() {
    fn client_header_set(call: &Call) -> bool {
        matches!(call, Call::SetHeader(name, _) if name == "x-real-ip")
    }
    fn client_header_removed(call: &Call) -> bool {
        matches!(call, Call::RemoveHeader(name) if name == "x-real-ip")
    }
    fn xff_set(call: &Call) -> bool {
        matches!(call, Call::SetHeader(name, _) if name == "x-forwarded-for")
    }
    fn forwarded_removed(call: &Call) -> bool {
        matches!(call, Call::RemoveHeader(name) if name == "forwarded")
    }
    let cases: [(CallMatcher, &str, Option<&str>); 4] = [
        (client_header_set, "{}", Some("127.0.0.9")),
        // The peer is unknown, so the client header is removed.
        (client_header_removed, "{}", None),
        (xff_set, "{}", Some("127.0.0.9")),
        (
            forwarded_removed,
            r#"{"forwarded_mode":"remove"}"#,
            Some("127.0.0.9"),
        ),
    ];
    for (failing, json, peer) in cases {
        let mut host = MockHost::default().failing(failing, Status::InternalFailure);
        if let Some(peer) = peer {
            host = with_peer(host, peer);
        }
        let mut root = configured(host.clone(), json);
        let (action, _) = serve(
            &root,
            &host,
            &[("x-real-ip", "6.6.6.6"), ("forwarded", "for=6.6.6.6")],
        );
        assert_eq!(action, Action::Pause, "{json}");
        let (status, details, _) = host.local_reply().unwrap();
        assert_eq!((status, details.as_str()), (500, "client_ip_write_failed"));
        root.on_tick();
        assert_eq!(host.metric("client_ip.write_failed"), 1, "{json}");
    }
}

#[test]
fn a_failed_ip_filter_state_publish_answers_an_error() {
    fn publish(call: &Call) -> bool {
        matches!(call, Call::ForeignFunction(_))
    }
    let host = with_peer(MockHost::default(), "127.0.0.9");
    let root = configured(host.clone(), r#"{"publish_ip_filter_state":true}"#);
    let host = host.failing(publish, Status::InternalFailure);
    let (action, _) = serve(&root, &host, &[]);
    assert_eq!(action, Action::Pause);
    assert_eq!(host.local_reply().unwrap().0, 500);
}

#[test]
fn an_unknown_client_publishes_no_ip_filter_state_and_is_counted() {
    let host = MockHost::default();
    let mut root = configured(host.clone(), r#"{"publish_ip_filter_state":true}"#);
    let (action, calls) = serve(&root, &host, &[]);
    assert_eq!(action, Action::Continue);
    assert!(!calls.iter().any(|c| matches!(c, Call::ForeignFunction(_))));
    root.on_tick();
    assert_eq!(host.metric("client_ip.ip_filter_state_unpublished"), 1);
}

#[test]
fn an_envoy_without_the_ip_object_refuses_publish_ip_filter_state() {
    let host = MockHost::default()
        .without_ip_object()
        .with_root_id("client_ip")
        .with_configuration(r#"{"publish_ip_filter_state":true}"#);
    let mut root = PluginRoot::new(host.clone());
    assert!(!root.on_configure(0));
    // Unset, nothing is asked of the host.
    let host = MockHost::default().without_ip_object();
    configured(host.clone(), "{}");
}

#[test]
fn a_refused_local_reply_holds_the_request() {
    fn reply(call: &Call) -> bool {
        matches!(call, Call::LocalResponse(..))
    }
    let host = with_peer(MockHost::default(), "127.0.0.66").failing(reply, Status::BadArgument);
    let root = configured(host.clone(), r#"{"deny_clients":["127.0.0.66"]}"#);
    let (action, _) = serve(&root, &host, &[]);
    assert_eq!(action, Action::Pause);
    assert_eq!(host.local_reply(), None);
}

#[test]
fn a_failed_configuration_read_refuses_the_plugin() {
    fn configuration(call: &Call) -> bool {
        matches!(call, Call::PluginConfiguration)
    }
    let host = MockHost::default()
        .with_root_id("client_ip")
        .with_configuration("{}")
        .failing(configuration, Status::InternalFailure);
    let mut root = PluginRoot::new(host);
    assert!(!root.on_configure(2));
}

#[test]
fn a_failed_metric_definition_still_serves_requests() {
    fn define(call: &Call) -> bool {
        matches!(call, Call::DefineMetric(_))
    }
    let host = with_peer(MockHost::default(), "127.0.0.9").failing(define, Status::InternalFailure);
    let mut root = configured(host.clone(), "{}");
    let (action, _) = serve(&root, &host, &[]);
    assert_eq!(action, Action::Continue);
    assert_eq!(host.header("x-real-ip").as_deref(), Some("127.0.0.9"));
    root.on_tick();
    assert!(!host
        .take_calls()
        .iter()
        .any(|c| matches!(c, Call::IncrementMetric(..))));
}

#[test]
fn a_failed_read_is_a_missing_fact() {
    fn peer_read(call: &Call) -> bool {
        matches!(call, Call::GetProperty(path) if path == "client_ip_peer")
    }
    let host = MockHost::default()
        .with_property(path::SOURCE_ADDRESS, b"127.0.0.9:4000")
        .failing(peer_read, Status::InternalFailure);
    let root = configured(host.clone(), "{}");
    let (action, _) = serve(&root, &host, &[("x-real-ip", "6.6.6.6")]);
    assert_eq!(action, Action::Continue);
    assert_eq!(host.header("x-real-ip").as_deref(), Some("127.0.0.9"));
}

// ------------------------------------------------------------ roots

#[test]
fn the_module_follows_envoys_log_level() {
    let host = MockHost::default().with_log_level(LogLevel::Debug);
    let root = configured(host.clone(), "{}");
    root.flush_stats();
    let host = host.clone();
    let mut root = root;
    root.on_tick();
    assert!(host
        .take_calls()
        .contains(&Call::FollowLogLevel(LogLevel::Debug)));
}

#[test]
fn the_peer_filter_records_the_socket_peer() {
    let host = MockHost::default()
        .with_root_id("client_ip_peer")
        .with_property(path::SOURCE_ADDRESS, b"[::ffff:127.0.0.7]:5000");
    let mut root = PluginRoot::new(host.clone());
    assert!(root.on_configure(0));
    let mut connection = root.create_stream_context(3).unwrap();
    assert_eq!(
        connection.on_new_connection(),
        proxy_wasm::types::Action::Continue
    );
    assert_eq!(
        host.property(path::PEER_RECORD).as_deref(),
        Some("127.0.0.7")
    );
    let refused = MockHost::default()
        .with_root_id("client_ip_peer")
        .with_configuration(r#"{"xff_mode":"append"}"#);
    assert!(!PluginRoot::new(refused).on_configure(0));
}

#[test]
fn an_unconfigured_stream_never_passes_a_forged_client_header() {
    let host = MockHost::default().with_root_id("client_ip");
    let root = PluginRoot::new(host.clone());
    let (action, _) = serve(&root, &host, &[("x-real-ip", "6.6.6.6")]);
    assert_eq!(action, Action::Continue);
    assert_eq!(host.header("x-real-ip"), None);
}

#[test]
fn a_bad_configuration_is_refused_and_an_unknown_root_id_too() {
    let host = MockHost::default()
        .with_root_id("client_ip")
        .with_configuration(r#"{"xff_mode":"bogus"}"#);
    assert!(!PluginRoot::new(host).on_configure(20));
    let unknown = MockHost::default().with_root_id("client-ip");
    assert!(!PluginRoot::new(unknown).on_configure(0));
}
