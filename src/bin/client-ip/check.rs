//! `client-ip check`: the filter's own parser over each configuration, and
//! warnings about trust that lets the wrong party choose the client.

use std::net::{Ipv4Addr, Ipv6Addr};

use client_ip::config::{check_peer_config, FilterConfig};
use client_ip::identity::IdentityPattern;
use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use serde_json::{json, Value};

use crate::load::{Deployment, Found, Plugin, Root};

/// One risk found in a configuration that the filter accepts.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Warning {
    /// A stable name for CI filters.
    pub code: &'static str,
    pub message: String,
}

fn warning(code: &'static str, message: String) -> Warning {
    Warning { code, message }
}

/// The verdict on one configuration.
pub enum Outcome {
    Ok(Vec<Warning>),
    /// The line Envoy logs after "invalid plugin configuration: ".
    Refused(String),
}

/// Runs the filter's parser, then looks for risky trust.
pub fn check_plugin(plugin: &Plugin) -> Outcome {
    match plugin.root {
        Root::Peer => match check_peer_config(&plugin.json) {
            Ok(()) => Outcome::Ok(Vec::new()),
            Err(error) => Outcome::Refused(error.to_string()),
        },
        Root::Http => match FilterConfig::from_json(&plugin.json) {
            Ok(config) => {
                let raw: Value = serde_json::from_slice(&plugin.json).unwrap_or(Value::Null);
                Outcome::Ok(warnings(&config, &raw, plugin.deployment))
            }
            Err(error) => Outcome::Refused(error.to_string()),
        },
    }
}

/// The private ranges too broad to trust on a sidecar or waypoint, where the
/// peers are the mesh's own workloads.
fn broad_private_ranges() -> [IpNet; 4] {
    [
        IpNet::V4(Ipv4Net::new(Ipv4Addr::new(10, 0, 0, 0), 8).unwrap_or_default()),
        IpNet::V4(Ipv4Net::new(Ipv4Addr::new(172, 16, 0, 0), 12).unwrap_or_default()),
        IpNet::V4(Ipv4Net::new(Ipv4Addr::new(192, 168, 0, 0), 16).unwrap_or_default()),
        IpNet::V6(Ipv6Net::new(Ipv6Addr::new(0xfc00, 0, 0, 0, 0, 0, 0, 0), 7).unwrap_or_default()),
    ]
}

/// A range that holds a whole network of workloads: any prefix shorter than
/// /16 (IPv4) or /48 (IPv6), or one of the private ranges.
pub fn is_broad(net: &IpNet) -> bool {
    let short = match net {
        IpNet::V4(v4) => v4.prefix_len() < 16,
        IpNet::V6(v6) => v6.prefix_len() < 48,
    };
    short || broad_private_ranges().contains(net)
}

/// Whether an identity pattern's `*` can stand for a namespace: a prefix or
/// suffix that does not pin `/ns/<name>/`.
pub fn spans_namespaces(pattern: &IdentityPattern) -> bool {
    let pins_namespace = |text: &str| {
        text.match_indices("/ns/").any(|(at, _)| {
            let rest = &text[at + 4..];
            matches!(rest.find('/'), Some(end) if end > 0)
        })
    };
    match pattern {
        IdentityPattern::Exact(_) => false,
        IdentityPattern::Prefix(text) | IdentityPattern::Suffix(text) => !pins_namespace(text),
    }
}

fn strings<'a>(raw: &'a Value, field: &str) -> Vec<&'a str> {
    raw.get(field)
        .and_then(Value::as_array)
        .map(|items| items.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default()
}

/// Risky trust in a configuration the filter accepts. `deployment` `None`
/// means unknown: the sidecar rules apply, and say so.
pub fn warnings(
    config: &FilterConfig,
    raw: &Value,
    deployment: Option<Deployment>,
) -> Vec<Warning> {
    let mut found = Vec::new();
    let unknown = deployment.is_none();
    let inside_mesh = matches!(
        deployment,
        None | Some(Deployment::Sidecar) | Some(Deployment::Waypoint)
    );
    let place = match deployment {
        Some(d) => format!("on a {}", d.as_str()),
        None => "if this runs on a sidecar or waypoint (say where with --deployment)".to_owned(),
    };
    let hops = config.trust.trusted_hops;
    for net in &config.trusted_proxies {
        if net.prefix_len() == 0 {
            found.push(warning(
                "trusts-everyone",
                format!(
                    "trusted_proxies holds {net}: every peer is trusted, so any client chooses its own address by writing {}",
                    config.source.header_name()
                ),
            ));
        } else if inside_mesh && hops == 0 && is_broad(net) {
            found.push(warning(
                "broad-trust",
                format!(
                    "trusted_proxies holds {net}, a whole network of workloads: {place}, any pod in it (not only your gateway) chooses the client by writing {}; trust the gateway by its identity (trusted_identities) or by its own addresses",
                    config.source.header_name()
                ),
            ));
        }
    }
    if hops > 0 && (deployment == Some(Deployment::Sidecar) || unknown) {
        found.push(warning(
            "hops-on-sidecar",
            format!(
                "trusted_hops is {hops} {place}: the {hops}th entry from the right of {} is the client whoever connects, and any pod that calls the workload directly writes that entry itself; trust the gateway by its identity (trusted_identities) instead",
                config.source.header_name()
            ),
        ));
    }
    if config.ignores_trusted_proxies() {
        found.push(warning(
            "proxies-ignored",
            "trusted_hops is set, so trusted_proxies is not used; remove one of them".to_owned(),
        ));
    }
    for entry in strings(raw, "trusted_identities") {
        if let Ok(pattern) = IdentityPattern::parse(entry) {
            if spans_namespaces(&pattern) {
                found.push(warning(
                    "identity-spans-namespaces",
                    format!(
                        "trusted_identities entry {entry:?} matches service accounts in any namespace: whoever can create a namespace or a service account of that name chooses the client; pin the namespace (cluster.local/ns/<namespace>/sa/<account>)"
                    ),
                ));
            }
        }
    }
    let trusts_nobody = !config.trust.has_trusted_proxies()
        && config.trust.trusted_identities.is_empty()
        && hops == 0;
    if config.access.is_active() && trusts_nobody && inside_mesh {
        found.push(warning(
            "access-without-trust",
            format!(
                "allow_clients/deny_clients are set but nothing is trusted: {place}, the client is the peer, so behind a gateway or any other proxy the lists judge the nearest proxy, not the client; trust that proxy (trusted_identities or trusted_proxies)"
            ),
        ));
    }
    found
}

/// What `check` says about one input, as text and as JSON.
pub struct Report {
    pub lines: Vec<String>,
    pub json: Value,
    pub errors: usize,
    pub warnings: usize,
}

pub fn report(found: &[Found]) -> Report {
    // Where the peer filters attach, to pair each sidecar's HTTP filter with one.
    let peer_filters: Vec<&(String, String)> = found
        .iter()
        .filter_map(|item| match item {
            Found::Plugin(plugin) if plugin.root == Root::Peer => plugin.attachment.as_ref(),
            _ => None,
        })
        .collect();
    let mut lines = Vec::new();
    let mut results = Vec::new();
    let (mut errors, mut warnings, mut checked) = (0, 0, 0);
    for item in found {
        match item {
            Found::Error { file, error } => {
                errors += 1;
                lines.push(format!("{file}: error: {error}"));
                results
                    .push(json!({"file": file, "status": "error", "error": error, "warnings": []}));
            }
            Found::Skipped { file, why } => {
                lines.push(format!("{file}: skipped: {why}"));
                results.push(json!({"file": file, "status": "skipped", "why": why}));
            }
            Found::Plugin(plugin) => {
                checked += 1;
                let label = plugin.label();
                let place = plugin
                    .deployment
                    .map(|d| format!(" on a {}", d.as_str()))
                    .unwrap_or_default();
                let head = format!("{label} ({}{place})", plugin.root.name());
                let base = json!({
                    "file": plugin.file,
                    "manifest": plugin.manifest,
                    "root": plugin.root.name(),
                    "deployment": plugin.deployment.map(Deployment::as_str),
                    "deployment_reason": plugin.deployment_reason,
                });
                let mut entry = base;
                let mut outcome = check_plugin(plugin);
                if let (Outcome::Ok(found), Some(attachment), Some(Deployment::Sidecar)) =
                    (&mut outcome, &plugin.attachment, plugin.deployment)
                {
                    if plugin.root == Root::Http && !peer_filters.contains(&attachment) {
                        found.push(warning(
                            "no-peer-filter",
                            "no client_ip_peer WasmPlugin with the same namespace and selector among the files checked: on a sidecar (use_remote_address: false) a request that carries X-Forwarded-For then hides its peer, which leaves the client unknown unless a trusted identity names one; deploy the pair".to_owned(),
                        ));
                    }
                }
                match outcome {
                    Outcome::Refused(error) => {
                        errors += 1;
                        lines.push(format!("{head}: error: {error}"));
                        entry["status"] = json!("error");
                        entry["error"] = json!(error);
                        entry["warnings"] = json!([]);
                    }
                    Outcome::Ok(found) if found.is_empty() => {
                        lines.push(format!("{head}: ok"));
                        entry["status"] = json!("ok");
                        entry["warnings"] = json!([]);
                    }
                    Outcome::Ok(found) => {
                        warnings += found.len();
                        for w in &found {
                            lines.push(format!("{head}: warning [{}]: {}", w.code, w.message));
                        }
                        entry["status"] = json!("warning");
                        entry["warnings"] = found
                            .iter()
                            .map(|w| json!({"code": w.code, "message": w.message}))
                            .collect();
                    }
                }
                results.push(entry);
            }
        }
    }
    lines.push(format!(
        "{checked} configuration{} checked: {errors} error{}, {warnings} warning{}",
        plural(checked),
        plural(errors),
        plural(warnings)
    ));
    Report {
        lines,
        json: json!({"results": results, "checked": checked, "errors": errors, "warnings": warnings}),
        errors,
        warnings,
    }
}

fn plural(n: usize) -> &'static str {
    if n == 1 {
        ""
    } else {
        "s"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn codes(json: &str, deployment: Option<Deployment>) -> Vec<&'static str> {
        let config = FilterConfig::from_json(json.as_bytes()).unwrap();
        let raw = serde_json::from_str(json).unwrap();
        warnings(&config, &raw, deployment)
            .into_iter()
            .map(|w| w.code)
            .collect()
    }

    #[test]
    fn risky_trust_is_named() {
        let sidecar = Some(Deployment::Sidecar);
        let gateway = Some(Deployment::Gateway);
        let waypoint = Some(Deployment::Waypoint);
        assert_eq!(
            codes(r#"{"trusted_proxies":["0.0.0.0/0"]}"#, gateway),
            ["trusts-everyone"]
        );
        assert_eq!(
            codes(r#"{"trusted_proxies":["::/0"]}"#, gateway),
            ["trusts-everyone"]
        );
        assert_eq!(
            codes(r#"{"trusted_proxies":["10.0.0.0/8"]}"#, sidecar),
            ["broad-trust"]
        );
        assert_eq!(
            codes(r#"{"trusted_proxies":["192.168.0.0/16"]}"#, waypoint),
            ["broad-trust"]
        );
        assert_eq!(
            codes(r#"{"trusted_proxies":["fd00::/8"]}"#, sidecar),
            ["broad-trust"]
        );
        assert!(codes(r#"{"trusted_proxies":["10.0.0.0/8"]}"#, gateway).is_empty());
        assert!(codes(r#"{"trusted_proxies":["10.8.0.0/16","10.1.2.3"]}"#, sidecar).is_empty());
        assert!(codes(r#"{"trusted_proxies":["2001:db8:1::/48"]}"#, sidecar).is_empty());
        assert_eq!(codes(r#"{"trusted_hops":1}"#, sidecar), ["hops-on-sidecar"]);
        assert!(codes(r#"{"trusted_hops":1}"#, gateway).is_empty());
        assert_eq!(
            codes(r#"{"trusted_identities":["*/sa/gateway"]}"#, sidecar),
            ["identity-spans-namespaces"]
        );
        assert_eq!(
            codes(r#"{"trusted_identities":["cluster.local/*"]}"#, sidecar),
            ["identity-spans-namespaces"]
        );
        assert_eq!(
            codes(
                r#"{"trusted_identities":["cluster.local/ns/istio-*"]}"#,
                sidecar
            ),
            ["identity-spans-namespaces"]
        );
        assert!(codes(
            r#"{"trusted_identities":["cluster.local/ns/istio-system/*","*/ns/istio-system/sa/gw"]}"#,
            sidecar
        )
        .is_empty());
        assert_eq!(
            codes(r#"{"allow_clients":["203.0.113.0/24"]}"#, sidecar),
            ["access-without-trust"]
        );
        assert!(codes(r#"{"allow_clients":["203.0.113.0/24"]}"#, gateway).is_empty());
        assert!(codes(
            r#"{"deny_clients":["203.0.113.0/24"],"trusted_identities":["cluster.local/ns/istio-system/sa/gw"]}"#,
            sidecar
        )
        .is_empty());
        assert_eq!(
            codes(
                r#"{"trusted_hops":1,"trusted_proxies":["10.1.2.3"]}"#,
                gateway
            ),
            ["proxies-ignored"]
        );
    }
}
