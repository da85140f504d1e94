//! The plugin JSON parser: every field read, every refusal naming its field
//! and value.
use client_ip::config::*;
use client_ip::identity::MAX_TRUSTED_IDENTITIES;

fn refused(json: &str) -> ConfigError {
    FilterConfig::from_json(json.as_bytes()).unwrap_err()
}

#[test]
fn empty_means_defaults() {
    for json in ["", "  \n", "{}"] {
        assert_eq!(
            FilterConfig::from_json(json.as_bytes()).unwrap(),
            FilterConfig::default()
        );
    }
}

#[test]
fn reads_every_field() {
    let config = FilterConfig::from_json(
        br#"{"xff_mode":"overwrite","forwarded_mode":"overwrite","client_ip_header":"X-Client-IP",
             "trusted_proxies":["10.0.0.0/8","192.168.1.7","2001:db8::/32","::ffff:172.16.0.0/108","10.1.2.3/8"],
             "trusted_hops":0,"trusted_identities":["spiffe://cluster.local/ns/istio-system/sa/gw"]}"#,
    )
    .unwrap();
    assert!(config
        .trust
        .trusted_identities
        .trust(b"spiffe://cluster.local/ns/istio-system/sa/gw"));
    assert_eq!(config.xff_mode, XffMode::Overwrite);
    assert_eq!(config.forwarded_mode, ForwardedMode::Overwrite);
    assert_eq!(config.client_ip_header.as_deref(), Some("x-client-ip"));
    assert!(
        !config.publish_filter_state
            && !config.count_forged_headers
            && !config.publish_ip_filter_state
    );
    let opted_in = FilterConfig::from_json(
        br#"{"publish_filter_state":true,"count_forged_headers":true,"publish_ip_filter_state":true}"#,
    )
    .unwrap();
    assert!(
        opted_in.publish_filter_state
            && opted_in.count_forged_headers
            && opted_in.publish_ip_filter_state
    );
    let nets: Vec<String> = config
        .trusted_proxies
        .iter()
        .map(|n| n.to_string())
        .collect();
    assert_eq!(
        nets,
        [
            "10.0.0.0/8",
            "192.168.1.7/32",
            "2001:db8::/32",
            "172.16.0.0/12",
            "10.0.0.0/8"
        ]
    );
}

#[test]
fn empty_header_name_turns_the_header_off() {
    let config = FilterConfig::from_json(br#"{"client_ip_header":""}"#).unwrap();
    assert_eq!(config.client_ip_header, None);
}

#[test]
fn errors_name_the_field_and_the_value() {
    let cases = [
        (r#"{"xff_mode":"bogus"}"#, "xff_mode", "bogus"),
        (r#"{"xff_mode":3}"#, "xff_mode", "3 is refused"),
        (r#"{"forwarded_mode":"append"}"#, "forwarded_mode", "append"),
        (r#"{"trusted_hops":-1}"#, "trusted_hops", "-1"),
        (r#"{"trusted_hops":"2"}"#, "trusted_hops", "\"2\""),
        (r#"{"trusted_hops":33}"#, "trusted_hops", "33"),
        (
            r#"{"trusted_proxies":["10.0.0.1","10.0.0/8"]}"#,
            "trusted_proxies[1]",
            "10.0.0/8",
        ),
        (
            r#"{"trusted_proxies":"10.0.0.0/8"}"#,
            "trusted_proxies",
            "10.0.0.0/8",
        ),
        (
            r#"{"client_ip_header":"x real ip"}"#,
            "client_ip_header",
            "x real ip",
        ),
        (
            r#"{"client_ip_header":"X-Forwarded-For"}"#,
            "client_ip_header",
            "X-Forwarded-For",
        ),
        (r#"{"trusted_hop":1}"#, "trusted_hop", "unknown field"),
        (
            r#"{"allow_clients":["10.0.0.0/8","10.0.0.0/33"]}"#,
            "allow_clients[1]",
            "10.0.0.0/33",
        ),
        (r#"{"deny_clients":[""]}"#, "deny_clients[0]", "\"\""),
        (r#"{"deny_clients":"6.6.6.6"}"#, "deny_clients", "6.6.6.6"),
        (r#"{"deny_status":199}"#, "deny_status", "199"),
        (r#"{"deny_status":600}"#, "deny_status", "600"),
        (r#"{"deny_status":70000}"#, "deny_status", "70000"),
        (
            r#"{"publish_ip_filter_state":"yes"}"#,
            "publish_ip_filter_state",
            "yes",
        ),
        (r#"{"access_dry_run":"yes"}"#, "access_dry_run", "yes"),
        (
            r#"{"publish_filter_state":1}"#,
            "publish_filter_state",
            "integer `1`",
        ),
        (
            r#"{"count_forged_headers":"true"}"#,
            "count_forged_headers",
            "true",
        ),
        (r#"{"client_ip_source":""}"#, "client_ip_source", "\"\""),
        (
            r#"{"client_ip_source":"cf connecting ip"}"#,
            "client_ip_source",
            "cf connecting ip",
        ),
        (r#"{"client_ip_source":"Host"}"#, "client_ip_source", "Host"),
        (
            r#"{"client_ip_source":"cf-connecting-ip","trusted_hops":1}"#,
            "trusted_hops",
            "\"cf-connecting-ip\"",
        ),
        (
            r#"{"trusted_identities":["cluster.local/ns/a/sa/b",""]}"#,
            "trusted_identities[1]",
            "\"\" is empty",
        ),
        (
            r#"{"trusted_identities":["cluster.local/ns/*/sa/b"]}"#,
            "trusted_identities[0]",
            "cluster.local/ns/*/sa/b",
        ),
        (
            r#"{"trusted_identities":"cluster.local/ns/a/sa/b"}"#,
            "trusted_identities",
            "cluster.local/ns/a/sa/b",
        ),
        (
            r#"{"trusted_identities":["cluster.local/ns/a/sa/b"],"trusted_hops":1}"#,
            "trusted_hops",
            "1 cannot be combined with trusted_identities",
        ),
        ("xff_mode=append", ".", "xff_mode=append"),
        (r#"{"xff_mode":"append"} trailing"#, ".", "trailing"),
        (r#"{"xff_mode":"append""#, ".", "xff_mode"),
    ];
    for (json, field, value) in cases {
        let error = refused(json);
        assert_eq!(error.field, field, "{json}: {error}");
        assert!(error.problem.contains(value), "{json}: {error}");
    }
}

/// Found by the plugin_config fuzz target.
#[test]
fn an_empty_key_is_named() {
    let error = refused(r#" {"":1}"#);
    assert_eq!(error.field, "\"\"");
    assert!(error.problem.contains("unknown field"), "{error}");
}

#[test]
fn too_many_trusted_proxies_are_refused() {
    let list: Vec<String> = (0..=MAX_TRUSTED_PROXIES)
        .map(|i| format!("\"10.{}.{}.0/24\"", i / 256, i % 256))
        .collect();
    let error = refused(&format!("{{\"trusted_proxies\":[{}]}}", list.join(",")));
    assert_eq!(error.field, "trusted_proxies");
}

#[test]
fn reads_the_client_source() {
    let source = |json: &str| FilterConfig::from_json(json.as_bytes()).unwrap().source;
    assert_eq!(source("{}"), ClientIpSource::XForwardedFor);
    assert_eq!(
        source(r#"{"client_ip_source":"X-Forwarded-For"}"#),
        ClientIpSource::XForwardedFor
    );
    assert_eq!(
        source(r#"{"client_ip_source":"Forwarded"}"#),
        ClientIpSource::Forwarded
    );
    assert_eq!(
        source(r#"{"client_ip_source":"CF-Connecting-IP"}"#),
        ClientIpSource::Header("cf-connecting-ip".to_owned())
    );
    // The source may be the header the filter then writes: a trusted
    // proxy's X-Real-IP is read, then replaced with the resolved client.
    assert_eq!(
        source(r#"{"client_ip_source":"x-real-ip"}"#),
        ClientIpSource::Header("x-real-ip".to_owned())
    );
    let hops =
        FilterConfig::from_json(br#"{"client_ip_source":"forwarded","trusted_hops":2}"#).unwrap();
    assert_eq!(hops.trust.trusted_hops, 2);
}

#[test]
fn reads_the_access_lists() {
    let config = FilterConfig::from_json(
        br#"{"allow_clients":["10.0.0.0/8","2001:db8::1"],"deny_clients":["10.6.6.6","::ffff:10.7.0.0/112"],
             "access_dry_run":true,"deny_status":429}"#,
    )
    .unwrap();
    let access = &config.access;
    assert!(access.allow.contains("10.1.2.3".parse().unwrap()));
    assert!(access.allow.contains("2001:db8::1".parse().unwrap()));
    assert!(access.deny.contains("10.7.1.1".parse().unwrap()));
    assert!(access.dry_run);
    assert_eq!(access.deny_status, 429);
    assert_eq!(FilterConfig::default().access.deny_status, 403);
    let list: Vec<String> = (0..=client_ip::access::MAX_ACCESS_ENTRIES)
        .map(|i| format!("\"10.{}.{}.0/24\"", i / 256, i % 256))
        .collect();
    let error = refused(&format!("{{\"deny_clients\":[{}]}}", list.join(",")));
    assert_eq!(error.field, "deny_clients");
    assert!(error.problem.contains("4097 entries"), "{error}");
}

#[test]
fn too_many_trusted_identities_are_refused() {
    let list: Vec<String> = (0..=MAX_TRUSTED_IDENTITIES)
        .map(|i| format!("\"cluster.local/ns/default/sa/gw{i}\""))
        .collect();
    let error = refused(&format!("{{\"trusted_identities\":[{}]}}", list.join(",")));
    assert_eq!(error.field, "trusted_identities");
    assert!(error.problem.contains("65 entries"), "{error}");
    let at_cap = format!(
        "{{\"trusted_identities\":[{}]}}",
        list.get(1..).unwrap().join(",")
    );
    let config = FilterConfig::from_json(at_cap.as_bytes()).unwrap();
    assert_eq!(
        config.trust.trusted_identities.len(),
        MAX_TRUSTED_IDENTITIES
    );
}

#[test]
fn peer_config_takes_nothing() {
    assert!(check_peer_config(b"").is_ok());
    assert!(check_peer_config(b"{}").is_ok());
    let error = check_peer_config(br#"{"xff_mode":"append"}"#).unwrap_err();
    assert!(error.problem.contains("xff_mode"), "{error}");
}
