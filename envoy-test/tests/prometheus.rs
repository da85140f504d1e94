//! The counters as Istio users meet them: Prometheus names from
//! `/stats/prometheus`, under the stats inclusion list Istio's proxies
//! start with.

use envoy_test::{envoy_config, scratch_dir, Envoy, Listener, Request, Upstream};
use serde_json::json;

/// The prefixes of Istio's default `stats_matcher` inclusion list
/// (`tools/packaging/common/envoy_bootstrap.json`): only matching stats exist.
const ISTIO_INCLUDED_PREFIXES: [&str; 7] = [
    "reporter=",
    "cluster_manager",
    "listener_manager",
    "server",
    "cluster.xds-grpc",
    "wasm",
    "component",
];

#[test]
fn counters_reach_prometheus_under_istios_stats_inclusion() {
    let upstream = Upstream::start();
    let dir = scratch_dir("prometheus");
    let listener = Listener::sidecar(
        "sidecar",
        r#"{"deny_clients":["127.0.0.66"],"count_forged_headers":true}"#,
    );
    let mut config = envoy_config(&[listener], upstream.port, &dir);
    let patterns: Vec<_> = ISTIO_INCLUDED_PREFIXES
        .iter()
        .map(|prefix| json!({"prefix": prefix}))
        .collect();
    config["stats_config"] = json!({"stats_matcher": {"inclusion_list": {"patterns": patterns}}});
    let envoy = Envoy::try_start_with(config, dir, 2).unwrap_or_else(|f| panic!("{}", f.log));
    let sidecar = envoy.listener("sidecar");
    Request::get("/ip")
        .from("127.0.0.65")
        .header("X-Real-IP", "6.6.6.6")
        .send(sidecar)
        .received();
    assert_eq!(
        Request::get("/ip").from("127.0.0.66").send(sidecar).status,
        403
    );
    assert_eq!(
        envoy.counter_reaching("wasmcustom.client_ip.requests", 2),
        2
    );
    assert_eq!(envoy.counter_reaching("wasmcustom.client_ip.denied", 1), 1);

    let exposition = envoy.admin_get("/stats/prometheus").expect("admin").body;
    let value = |name: &str| -> Option<u64> {
        exposition
            .lines()
            .find(|line| line.split(['{', ' ']).next() == Some(name))
            .and_then(|line| line.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
    };
    for (name, expected) in [
        ("client_ip_requests", 2),
        ("client_ip_denied", 1),
        ("client_ip_forged_header_replaced", 1),
        ("client_ip_peer_trusted_by_identity", 0),
    ] {
        assert_eq!(value(name), Some(expected), "{name} in:\n{exposition}");
    }
    let gauge = value("client_ip_vm_memory_bytes");
    assert!(gauge.is_some_and(|bytes| bytes > 0), "{exposition}");
    // Envoy strips its `wasmcustom` namespace and adds no `envoy_` prefix.
    assert!(!exposition.contains("wasmcustom"), "{exposition}");
    // Stats outside the inclusion list are not there, as in Istio's proxies.
    assert!(
        !exposition.contains("envoy_cluster_upstream_rq_total"),
        "{exposition}"
    );
}
