//! A bad plugin configuration never runs: Envoy refuses it, and the log names
//! the field and the value in one line.

use envoy_test::{envoy_config, scratch_dir, Envoy, Listener, StartFailure, Upstream};
use serde_json::json;

fn refused(listener: Listener) -> StartFailure {
    match Envoy::try_start(&[listener]) {
        Ok(envoy) => panic!("Envoy accepted the configuration:\n{}", envoy.log()),
        Err(failure) => failure,
    }
}

/// The module's own error lines (Envoy prefixes them with `wasm log`).
fn plugin_errors(failure: &StartFailure) -> Vec<&str> {
    failure
        .log
        .lines()
        .filter(|line| line.contains("[error][wasm]") && line.contains("wasm log"))
        .collect()
}

#[test]
fn each_kind_of_bad_plugin_json_is_refused_with_field_and_value() {
    let cases = [
        (
            "not JSON",
            "xff_mode=append",
            "field `.`",
            "xff_mode=append",
        ),
        (
            "unknown field",
            r#"{"trusted_hop":1}"#,
            "field `trusted_hop`",
            "unknown field",
        ),
        (
            "bad enum value",
            r#"{"xff_mode":"bogus"}"#,
            "field `xff_mode`",
            "\"bogus\"",
        ),
        (
            "bad Forwarded mode",
            r#"{"forwarded_mode":"append"}"#,
            "field `forwarded_mode`",
            "\"append\"",
        ),
        (
            "bad CIDR",
            r#"{"trusted_proxies":["10.0.0.0/8","10.0.0/8"]}"#,
            "field `trusted_proxies[1]`",
            "\"10.0.0/8\"",
        ),
        (
            "negative hops",
            r#"{"trusted_hops":-1}"#,
            "field `trusted_hops`",
            "-1",
        ),
        (
            "hops above the cap",
            r#"{"trusted_hops":33}"#,
            "field `trusted_hops`",
            "33",
        ),
        (
            "star inside an identity",
            r#"{"trusted_identities":["cluster.local/ns/*/sa/gateway"]}"#,
            "field `trusted_identities[0]`",
            "\"cluster.local/ns/*/sa/gateway\"",
        ),
        (
            "identities beside hops",
            r#"{"trusted_identities":["cluster.local/ns/istio-system/sa/gw"],"trusted_hops":1}"#,
            "field `trusted_hops`",
            "cannot be combined with trusted_identities",
        ),
        (
            "hops beside a single-address source",
            r#"{"client_ip_source":"true-client-ip","trusted_hops":1}"#,
            "field `trusted_hops`",
            "\"true-client-ip\"",
        ),
        (
            "a source that holds no address",
            r#"{"client_ip_source":"content-length"}"#,
            "field `client_ip_source`",
            "\"content-length\"",
        ),
        (
            "invalid header name",
            r#"{"client_ip_header":"x real ip"}"#,
            "field `client_ip_header`",
            "\"x real ip\"",
        ),
    ];
    for (kind, plugin_json, field, value) in cases {
        let failure = refused(Listener::sidecar("sidecar", plugin_json));
        assert_eq!(failure.exit_code, Some(1), "{kind}");
        let errors = plugin_errors(&failure);
        assert_eq!(errors.len(), 1, "{kind}: one error line, got {errors:#?}");
        assert!(
            errors[0].contains(field) && errors[0].contains(value),
            "{kind}: {}",
            errors[0]
        );
        assert!(
            failure
                .log
                .contains("Unable to create Wasm plugin client_ip"),
            "{kind}: Envoy must refuse the listener"
        );
    }
}

#[test]
fn the_network_root_takes_no_settings() {
    let upstream = Upstream::start();
    let dir = scratch_dir("bad-peer");
    let mut config = envoy_config(&[Listener::sidecar("sidecar", "{}")], upstream.port, &dir);
    let peer = config
        .pointer_mut("/static_resources/listeners/0/filter_chains/0/filters/0/typed_config/config")
        .unwrap();
    peer["configuration"] = json!({
        "@type": "type.googleapis.com/google.protobuf.StringValue",
        "value": r#"{"xff_mode":"append"}"#
    });
    let failure = match Envoy::try_start_with(config, dir, 2) {
        Ok(envoy) => panic!("Envoy accepted the configuration:\n{}", envoy.log()),
        Err(failure) => failure,
    };
    let errors = plugin_errors(&failure);
    assert_eq!(errors.len(), 1, "{errors:#?}");
    assert!(errors[0].contains("field `xff_mode`"), "{}", errors[0]);
}

#[test]
fn an_unknown_root_id_is_refused() {
    let listener = Listener {
        http_root_id: "client-ip".to_owned(),
        ..Listener::sidecar("sidecar", "{}")
    };
    let failure = refused(listener);
    let errors = plugin_errors(&failure);
    assert_eq!(errors.len(), 1, "{errors:#?}");
    assert!(
        errors[0].contains("field `root_id`") && errors[0].contains("\"client-ip\""),
        "{}",
        errors[0]
    );
}

#[test]
fn fail_open_does_not_let_a_bad_configuration_through() {
    let upstream = Upstream::start();
    let dir = scratch_dir("fail-open");
    let listener = Listener::sidecar("sidecar", r#"{"xff_mode":"bogus"}"#);
    let mut config = envoy_config(&[listener], upstream.port, &dir);
    let plugin = config
        .pointer_mut("/static_resources/listeners/0/filter_chains/0/filters/1/typed_config/http_filters/0/typed_config/config")
        .unwrap();
    plugin["failure_policy"] = json!("FAIL_OPEN");
    let failure = match Envoy::try_start_with(config, dir, 2) {
        Ok(envoy) => panic!("Envoy accepted the configuration:\n{}", envoy.log()),
        Err(failure) => failure,
    };
    assert_eq!(failure.exit_code, Some(1));
    assert_eq!(plugin_errors(&failure).len(), 1);
}
