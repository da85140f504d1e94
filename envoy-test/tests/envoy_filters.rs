//! The resolved client in Envoy's own filters, in real Envoy: client-ip
//! publishes it as the typed filter state `envoy.network.ip`
//! (`publish_ip_filter_state`), Envoy's RBAC matches it with `filter_state`
//! `address_match` rules, Envoy's local rate limit keeps a bucket per client
//! header value, and the access log shows it. Whatever a client writes in
//! `X-Forwarded-For` or `X-Real-IP`, RBAC and the rate limit see the client
//! client-ip resolved.

use std::thread;
use std::time::{Duration, Instant};

use envoy_test::{envoy_config, scratch_dir, Envoy, Listener, Request, Response, Upstream};
use serde_json::{json, Value};

/// The trusted proxy in front (an ingress gateway's pod, say).
const GATEWAY: &str = "127.0.0.100";
const UPSTREAM_REQUESTS: &str = "cluster.app.upstream_rq_total";
const UNPUBLISHED: &str = "wasmcustom.client_ip.ip_filter_state_unpublished";

/// Envoy with `listener` and `filters` placed right after client-ip's HTTP
/// filter, before the router, and an access log that also shows the filter
/// state and RBAC's dynamic metadata.
fn start(listener: Listener, filters: Vec<Value>) -> Envoy {
    let upstream = Upstream::start();
    let dir = scratch_dir("envoy-filters");
    let mut config = envoy_config(&[listener], upstream.port, &dir);
    let hcm = config["static_resources"]["listeners"][0]["filter_chains"][0]["filters"]
        .as_array_mut()
        .and_then(|filters| filters.last_mut())
        .map(|hcm| &mut hcm["typed_config"])
        .expect("the HTTP connection manager");
    let http_filters = hcm["http_filters"].as_array_mut().expect("http_filters");
    assert_eq!(http_filters[0]["name"], "envoy.filters.http.wasm");
    for (at, filter) in filters.into_iter().enumerate() {
        http_filters.insert(1 + at, filter);
    }
    let format = &mut hcm["access_log"][0]["typed_config"]["log_format"]["json_format"];
    format["envoy_network_ip"] = json!("%FILTER_STATE(envoy.network.ip:PLAIN)%");
    format["rbac"] = json!("%DYNAMIC_METADATA(envoy.filters.http.rbac)%");
    Envoy::try_start_with(config, dir, 2)
        .unwrap_or_else(|failure| {
            panic!(
                "Envoy did not start (exit {:?}):\n{}",
                failure.exit_code, failure.log
            )
        })
        .owning(upstream)
}

/// A sidecar listener (both roots) that trusts the gateway and publishes the
/// client as `envoy.network.ip`.
fn sidecar() -> Listener {
    Listener::sidecar(
        "sidecar",
        &format!(r#"{{"trusted_proxies":["{GATEWAY}"],"publish_ip_filter_state":true}}"#),
    )
}

/// A `filter_state` principal on `envoy.network.ip` for these CIDRs.
fn client_in(cidrs: &[&str]) -> Value {
    let ranges: Vec<Value> = cidrs
        .iter()
        .map(|cidr| {
            let (address, length) = cidr.split_once('/').expect("a CIDR");
            json!({"address_prefix": address, "prefix_len": length.parse::<u32>().unwrap()})
        })
        .collect();
    json!({"filter_state": {"key": "envoy.network.ip", "address_match": {"ranges": ranges}}})
}

fn rbac(config: Value) -> Value {
    let mut typed_config = config;
    typed_config["@type"] = json!("type.googleapis.com/envoy.extensions.filters.http.rbac.v3.RBAC");
    json!({"name": "envoy.filters.http.rbac", "typed_config": typed_config})
}

/// One policy: any request from a client in `cidrs`.
fn policy(cidrs: &[&str]) -> Value {
    json!({"permissions": [{"any": true}], "principals": [client_in(cidrs)]})
}

/// A request the gateway forwards: it appended the client it saw to
/// whatever `X-Forwarded-For` the client sent.
fn through_gateway(path: &str, xff: &str) -> Request {
    Request::get(path)
        .from(GATEWAY)
        .header("X-Forwarded-For", xff)
}

fn assert_denied(response: &Response, what: &str) {
    assert_eq!(
        (response.status, response.body.as_str()),
        (403, "RBAC: access denied"),
        "{what}"
    );
}

/// The access log entry for `path`, once Envoy has flushed it.
fn log_entry(envoy: &Envoy, path: &str) -> Value {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(entry) = envoy
            .access_log("sidecar")
            .into_iter()
            .find(|entry| entry["path"] == path)
        {
            return entry;
        }
        assert!(Instant::now() < deadline, "no access log entry for {path}");
        thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn rbac_denies_the_resolved_client_and_forged_headers_do_not_turn_a_denial_into_an_allow() {
    let envoy = start(
        sidecar(),
        vec![rbac(json!({"rules": {"action": "DENY", "policies": {
            "deny-listed-clients": policy(&["198.51.100.0/24", "2001:db8::/32", "127.0.0.66/32"])
        }}}))],
    );
    let sidecar = envoy.listener("sidecar");

    // A denied client behind the trusted gateway never reaches the app.
    assert_denied(
        &through_gateway("/denied", "198.51.100.7").send(sidecar),
        "a denied client through the gateway",
    );
    assert_denied(
        &through_gateway("/denied-v6", "2001:db8::7").send(sidecar),
        "a denied IPv6 client through the gateway",
    );
    // Entries it writes left of its own, and an X-Real-IP of its choice,
    // change nothing: the gateway's entry names it.
    assert_denied(
        &through_gateway("/forged", "192.0.2.1, 198.51.100.7")
            .header("X-Real-IP", "192.0.2.1")
            .send(sidecar),
        "a denied client forging X-Forwarded-For and X-Real-IP",
    );
    // A denied client that connects directly is judged by its socket,
    // whatever it writes.
    assert_denied(
        &Request::get("/direct")
            .from("127.0.0.66")
            .header("X-Forwarded-For", "192.0.2.1")
            .header("X-Real-IP", "192.0.2.1")
            .send(sidecar),
        "a denied direct client forging both headers",
    );
    assert_eq!(envoy.stat(UPSTREAM_REQUESTS), 0);

    // Everyone else is served, and nobody can get another client denied by
    // naming it.
    let allowed = through_gateway("/allowed", "192.0.2.1")
        .send(sidecar)
        .received();
    assert_eq!(allowed.one("x-real-ip"), "192.0.2.1");
    let framer = Request::get("/framer")
        .from("127.0.0.67")
        .header("X-Forwarded-For", "198.51.100.7")
        .header("X-Real-IP", "198.51.100.7")
        .send(sidecar)
        .received();
    assert_eq!(framer.one("x-real-ip"), "127.0.0.67");

    assert_eq!(envoy.counter_reaching(UPSTREAM_REQUESTS, 2), 2);
    assert_eq!(envoy.stat("http.sidecar.rbac.denied"), 4);
    assert_eq!(envoy.stat("http.sidecar.rbac.allowed"), 2);
    // The denial's log line names the client RBAC judged, beside the header.
    let denial = log_entry(&envoy, "/forged");
    assert_eq!(denial["response_code"], 403);
    assert_eq!(
        denial["response_code_details"],
        "rbac_access_denied_matched_policy[deny-listed-clients]"
    );
    assert_eq!(denial["envoy_network_ip"], "198.51.100.7:0");
    assert_eq!(denial["x_real_ip"], "198.51.100.7");
    assert_eq!(envoy.stat(UNPUBLISHED), 0);
    envoy.assert_no_vm_crash();
}

#[test]
fn an_allow_policy_fails_closed_when_the_client_is_unknown() {
    // Without the network filter a sidecar cannot know the peer of a request
    // that carries X-Forwarded-For: client-ip publishes nothing, and RBAC's
    // ALLOW matches nothing.
    let envoy = start(
        Listener::sidecar("sidecar", r#"{"publish_ip_filter_state":true}"#).without_peer_filter(),
        vec![rbac(json!({"rules": {"action": "ALLOW", "policies": {
            "loopback-clients": policy(&["127.0.0.0/8"])
        }}}))],
    );
    let sidecar = envoy.listener("sidecar");
    let known = Request::get("/known")
        .from("127.0.0.7")
        .send(sidecar)
        .received();
    assert_eq!(known.one("x-real-ip"), "127.0.0.7");
    let unknown = Request::get("/unknown")
        .from("127.0.0.7")
        .header("X-Forwarded-For", "127.0.0.7")
        .send(sidecar);
    assert_denied(&unknown, "an unknown client under an ALLOW policy");
    assert_eq!(envoy.counter_reaching(UNPUBLISHED, 1), 1);
    assert_eq!(envoy.stat(UPSTREAM_REQUESTS), 1);
    assert_eq!(
        log_entry(&envoy, "/unknown")["envoy_network_ip"],
        Value::Null
    );
    envoy.assert_no_vm_crash();
}

#[test]
fn shadow_rules_show_what_would_be_denied() {
    let envoy = start(
        sidecar(),
        vec![rbac(
            json!({"shadow_rules": {"action": "DENY", "policies": {
                "would-deny": policy(&["198.51.100.0/24"])
            }}}),
        )],
    );
    let sidecar = envoy.listener("sidecar");
    for request in [
        through_gateway("/would-deny", "198.51.100.7"),
        through_gateway("/fine", "192.0.2.1"),
        // A direct client naming a listed address is not the one it names.
        Request::get("/framer")
            .from("127.0.0.67")
            .header("X-Forwarded-For", "198.51.100.7")
            .header("X-Real-IP", "198.51.100.7"),
    ] {
        request.send(sidecar).received();
    }
    assert_eq!(envoy.counter_reaching(UPSTREAM_REQUESTS, 3), 3);
    assert_eq!(envoy.stat("http.sidecar.rbac.shadow_denied"), 1);
    assert_eq!(envoy.stat("http.sidecar.rbac.shadow_allowed"), 2);
    assert_eq!(envoy.stat("http.sidecar.rbac.denied"), 0);
    // RBAC's dynamic metadata names the policy, in the access log.
    let would_deny = log_entry(&envoy, "/would-deny");
    assert_eq!(would_deny["rbac"]["shadow_engine_result"], "denied");
    assert_eq!(
        would_deny["rbac"]["shadow_effective_policy_id"],
        "would-deny"
    );
    assert_eq!(would_deny["envoy_network_ip"], "198.51.100.7:0");
    for path in ["/fine", "/framer"] {
        assert_eq!(
            log_entry(&envoy, path)["rbac"]["shadow_engine_result"],
            "allowed",
            "{path}"
        );
    }
    envoy.assert_no_vm_crash();
}

/// Envoy's local rate limit with a bucket per value of the client header
/// (X-Real-IP, which client-ip replaces): `per_client` requests per client
/// an hour, and a default bucket large enough never to matter.
fn local_rate_limit_per_client(per_client: u32) -> Value {
    let percent = json!({"default_value": {"numerator": 100, "denominator": "HUNDRED"}});
    json!({
        "name": "envoy.filters.http.local_ratelimit",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.local_ratelimit.v3.LocalRateLimit",
            "stat_prefix": "per_client",
            "token_bucket": {"max_tokens": 1000000, "tokens_per_fill": 1000000, "fill_interval": "1s"},
            "filter_enabled": percent,
            "filter_enforced": percent,
            "always_consume_default_token_bucket": false,
            "max_dynamic_descriptors": 10000,
            "rate_limits": [{"actions": [{"request_headers": {
                "header_name": "x-real-ip", "descriptor_key": "client"
            }}]}],
            "descriptors": [{
                "entries": [{"key": "client"}],
                "token_bucket": {"max_tokens": per_client, "tokens_per_fill": per_client, "fill_interval": "3600s"}
            }]
        }
    })
}

#[test]
fn local_rate_limit_keeps_one_bucket_per_client_that_forged_headers_cannot_escape() {
    let envoy = start(sidecar(), vec![local_rate_limit_per_client(3)]);
    let sidecar = envoy.listener("sidecar");
    let status = |request: Request| request.send(sidecar).status;
    let client_a = || through_gateway("/a", "198.51.100.7");
    let client_b = || through_gateway("/b", "192.0.2.1");

    // A spends its three while B spends two of its own; then A is limited
    // and B, at the same moment, is not.
    for _ in 0..2 {
        assert_eq!(status(client_a()), 200);
        assert_eq!(status(client_b()), 200);
    }
    assert_eq!(status(client_a()), 200);
    assert_eq!(status(client_a()), 429);
    let b = client_b().send(sidecar).received();
    assert_eq!(b.one("x-real-ip"), "192.0.2.1");
    // A cannot escape its bucket by writing another client in either header.
    for forged in [
        through_gateway("/a-forged", "192.0.2.99, 198.51.100.7"),
        through_gateway("/a-forged", "198.51.100.7").header("X-Real-IP", "192.0.2.99"),
        through_gateway("/a-forged", "192.0.2.99, 198.51.100.7").header("X-Real-IP", "192.0.2.99"),
    ] {
        assert_eq!(status(forged), 429);
    }
    // Nor can a direct client: it is its socket's address.
    let direct = || Request::get("/direct").from("127.0.0.8");
    for _ in 0..3 {
        assert_eq!(status(direct()), 200);
    }
    for forged in [
        direct().header("X-Real-IP", "127.0.0.9"),
        direct().header("X-Forwarded-For", "127.0.0.9"),
        direct()
            .header("X-Forwarded-For", "127.0.0.9")
            .header("X-Real-IP", "127.0.0.9"),
    ] {
        assert_eq!(status(forged), 429);
    }
    // B's own bucket ran out on its own count.
    assert_eq!(status(client_b()), 429);
    assert_eq!(
        envoy.stat("per_client.http_local_rate_limit.rate_limited"),
        8
    );
    assert_eq!(envoy.counter_reaching(UPSTREAM_REQUESTS, 9), 9);
    envoy.assert_no_vm_crash();
}

#[test]
fn local_rate_limit_limits_one_client_while_another_is_served_at_the_same_time() {
    let envoy = start(sidecar(), vec![local_rate_limit_per_client(20)]);
    let sidecar = envoy.listener("sidecar");
    // Two clients send 40 requests each, from two threads at once.
    let statuses: Vec<Vec<u16>> = ["198.51.100.7", "192.0.2.1"]
        .map(|client| {
            thread::spawn(move || {
                (0..40)
                    .map(|_| through_gateway("/", client).send(sidecar).status)
                    .collect()
            })
        })
        .into_iter()
        .map(|worker| worker.join().expect("client thread"))
        .collect();
    for statuses in &statuses {
        // Each has its own 20: served first, limited after.
        assert_eq!(statuses.iter().filter(|s| **s == 200).count(), 20);
        assert!(statuses[..20].iter().all(|s| *s == 200), "{statuses:?}");
        assert!(statuses[20..].iter().all(|s| *s == 429), "{statuses:?}");
    }
    envoy.assert_no_vm_crash();
}

#[test]
fn the_access_log_shows_the_filter_state_beside_the_client_header() {
    // client-ip's own deny list too: a request it denies is published, so
    // its log line names the client.
    let envoy = start(
        Listener::sidecar(
            "sidecar",
            &format!(
                r#"{{"trusted_proxies":["{GATEWAY}"],"publish_ip_filter_state":true,"deny_clients":["127.0.0.66"]}}"#
            ),
        ),
        Vec::new(),
    );
    let sidecar = envoy.listener("sidecar");
    through_gateway("/v4", "192.0.2.1").send(sidecar).received();
    through_gateway("/v6", "2001:db8::1")
        .send(sidecar)
        .received();
    Request::get("/direct")
        .from("127.0.0.7")
        .header("X-Real-IP", "192.0.2.66")
        .send(sidecar)
        .received();
    let denied = Request::get("/denied").from("127.0.0.66").send(sidecar);
    assert_eq!(denied.status, 403);
    for (path, filter_state, header) in [
        ("/v4", "192.0.2.1:0", "192.0.2.1"),
        ("/v6", "[2001:db8::1]:0", "2001:db8::1"),
        ("/direct", "127.0.0.7:0", "127.0.0.7"),
        ("/denied", "127.0.0.66:0", "127.0.0.66"),
    ] {
        let entry = log_entry(&envoy, path);
        assert_eq!(entry["envoy_network_ip"], filter_state, "{path}");
        assert_eq!(entry["x_real_ip"], header, "{path}");
    }
    assert_eq!(
        log_entry(&envoy, "/denied")["response_code_details"],
        "client_ip_denied"
    );
    envoy.assert_no_vm_crash();
}

#[test]
fn without_the_setting_nothing_is_published() {
    let envoy = start(
        Listener::sidecar(
            "sidecar",
            &format!(r#"{{"trusted_proxies":["{GATEWAY}"]}}"#),
        ),
        Vec::new(),
    );
    let sidecar = envoy.listener("sidecar");
    through_gateway("/off", "192.0.2.1")
        .send(sidecar)
        .received();
    let entry = log_entry(&envoy, "/off");
    assert_eq!(entry["envoy_network_ip"], Value::Null);
    assert_eq!(entry["x_real_ip"], "192.0.2.1");
    assert_eq!(envoy.stat(UNPUBLISHED), 0);
}

#[test]
fn a_setting_that_is_not_a_boolean_is_refused_with_one_line() {
    let failure = Envoy::try_start(&[Listener::sidecar(
        "sidecar",
        r#"{"publish_ip_filter_state":"yes"}"#,
    )])
    .err()
    .expect("Envoy refuses the configuration");
    let lines: Vec<&str> = failure
        .log
        .lines()
        .filter(|line| line.contains("invalid plugin configuration"))
        .collect();
    assert!(!lines.is_empty(), "{}", failure.log);
    assert!(
        lines.iter().all(
            |line| line.contains("field `publish_ip_filter_state`") && line.contains("\"yes\"")
        ),
        "{lines:?}"
    );
}
