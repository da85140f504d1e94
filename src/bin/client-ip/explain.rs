//! `client-ip explain`: who can choose the client under a configuration,
//! what the application receives, and what is counted, in plain words.

use client_ip::config::{ClientIpSource, FilterConfig, ForwardedMode, XffMode};
use client_ip::identity::IdentityPattern;
use client_ip::COUNTERS;
use serde_json::Value;

use crate::check::{is_broad, spans_namespaces};
use crate::load::{Deployment, Plugin};

fn strings<'a>(raw: &'a Value, field: &str) -> Vec<&'a str> {
    raw.get(field)
        .and_then(Value::as_array)
        .map(|items| items.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default()
}

/// What each counter counts, by its stat name.
pub fn counter_meaning(name: &str, config: &FilterConfig) -> Option<String> {
    let source = config.source.header_name();
    let header = config.client_ip_header.as_deref().unwrap_or("x-real-ip");
    let trusts = config.trust.has_trusted_proxies()
        || !config.trust.trusted_identities.is_empty()
        || config.trust.trusted_hops > 0;
    let off = |what: &str| format!("stays 0 here: {what}");
    Some(match name {
        "client_ip.requests" => "every request the filter sees".to_owned(),
        "client_ip.client_from_trusted" => match trusts {
            true => format!("requests whose client came from {source} through trust"),
            false => off("nothing is trusted"),
        },
        "client_ip.forged_header_replaced" => match (config.count_forged_headers, &config.client_ip_header) {
            (true, Some(_)) => format!("requests that arrived with a {header} other than the client"),
            _ => off("count_forged_headers is off (or the client header is)"),
        },
        "client_ip.invalid_xff_entries" => match trusts {
            true => format!("requests whose {source} held an entry that is not an address where the walk met it"),
            false => off("no header is read"),
        },
        "client_ip.peer_unknown" => "requests whose true peer could not be known (no peer filter record, no socket address, no waypoint record)".to_owned(),
        "client_ip.peer_forged_on_connect" => "requests through a waypoint whose HBONE CONNECT carried X-Forwarded-For (its peer is then unknown)".to_owned(),
        "client_ip.peer_trusted_by_identity" => match config.trust.trusted_identities.is_empty() {
            false => "requests whose peer was trusted by its mTLS identity".to_owned(),
            true => off("trusted_identities is empty"),
        },
        "client_ip.allowed_by_list" => match config.access.allow.is_empty() {
            false => "requests served because allow_clients lists their client".to_owned(),
            true => off("allow_clients is empty"),
        },
        "client_ip.denied" => match (config.access.is_active(), config.access.dry_run) {
            (true, false) => format!("requests refused by the access lists (answered {})", config.access.deny_status),
            (true, true) => off("access_dry_run is on (see dry_run_denied)"),
            (false, _) => off("no access list"),
        },
        "client_ip.dry_run_denied" => match (config.access.is_active(), config.access.dry_run) {
            (true, true) => "requests the access lists would refuse, served because access_dry_run is on".to_owned(),
            _ => off("access_dry_run is off"),
        },
        "client_ip.source_missing" => match trusts {
            true => format!("requests from a trusted peer (or under trusted_hops) that carried no {source}"),
            false => off("nothing is trusted"),
        },
        "client_ip.write_failed" => "requests answered 500 because a header write (or envoy.network.ip) failed".to_owned(),
        "client_ip.ip_filter_state_unpublished" => match config.publish_ip_filter_state {
            true => "requests whose client was unknown, so envoy.network.ip was not published".to_owned(),
            false => off("publish_ip_filter_state is off"),
        },
        _ => return None,
    })
}

pub fn explain(plugin: &Plugin, config: &FilterConfig) -> String {
    let raw: Value = serde_json::from_slice(&plugin.json).unwrap_or(Value::Null);
    let mut out = String::new();
    let mut line = |text: String| {
        out.push_str(&text);
        out.push('\n');
    };
    let place = match (plugin.deployment, &plugin.deployment_reason) {
        (Some(d), Some(reason)) => format!("on a {} ({reason})", d.as_str()),
        _ => "where it runs is not said (--deployment)".to_owned(),
    };
    line(format!("{} (client_ip, {place})", plugin.label()));
    line(String::new());

    let source = config.source.header_name();
    let hops = config.trust.trusted_hops;
    line("Who can choose the client".to_owned());
    line(match &config.source {
        ClientIpSource::XForwardedFor => "  Source: x-forwarded-for, read from the right (the entry each proxy appends last comes first); at most 32 entries are looked at.".to_owned(),
        ClientIpSource::Forwarded => "  Source: forwarded (RFC 7239), its for= nodes read from the right; at most 32 are looked at.".to_owned(),
        ClientIpSource::Header(name) => format!("  Source: {name}, one address written by the proxy in front; every line of it is joined, so a client's own line cannot hide the proxy's, and more than one address there names no client."),
    });
    if hops > 0 {
        line(format!(
            "  - trusted_hops {hops}: whoever writes the entry {hops} from the right of {source} chooses the client, whatever the peer. A proxy in front that appends the address it saw makes that its own; a caller that reaches this proxy directly writes it itself."
        ));
        if config.trust.has_trusted_proxies() {
            line("  - trusted_proxies: not used, trusted_hops decides.".to_owned());
        }
    } else {
        for net in &config.trusted_proxies {
            let breadth = match (net.prefix_len(), is_broad(net)) {
                (0, _) => " That is every address: any client chooses its own.".to_owned(),
                (_, true) => " A whole network: any workload in it can do this.".to_owned(),
                _ => String::new(),
            };
            line(format!(
                "  - trusted proxy {net}: a peer in {net} chooses the client by what it writes in {source}; an entry in {net} inside {source} passes the choice to the entry on its left.{breadth}"
            ));
        }
        for entry in strings(&raw, "trusted_identities") {
            let reach = match IdentityPattern::parse(entry) {
                Ok(IdentityPattern::Exact(_)) => {
                    "the peer whose certificate names exactly this identity".to_owned()
                }
                Ok(pattern) if spans_namespaces(&pattern) => {
                    "any peer whose identity matches, in any namespace".to_owned()
                }
                Ok(IdentityPattern::Prefix(_)) => "any peer whose identity starts so".to_owned(),
                Ok(IdentityPattern::Suffix(_)) => "any peer whose identity ends so".to_owned(),
                Err(_) => "no peer".to_owned(),
            };
            line(format!(
                "  - trusted identity {entry}: {reach} chooses the client by what it writes in {source}, whatever its address; entries further left are believed only when trusted_proxies lists them. A plaintext request has no identity."
            ));
        }
        let anyone_trusted =
            config.trust.has_trusted_proxies() || !config.trust.trusted_identities.is_empty();
        line(match anyone_trusted {
            true => format!("  - every other peer: is its own client; what it writes in {source} is never read."),
            false => format!("  - nobody is trusted: every peer is its own client, and {source} is never read. Behind a gateway or another proxy, the client is that proxy."),
        });
    }
    line("  - an unknown peer (no peer record, no socket address): the client is unknown unless a trusted hop names one.".to_owned());
    line(String::new());

    line("What the application receives".to_owned());
    match &config.client_ip_header {
        Some(header) => line(format!(
            "  - {header}: the client, always replaced (every line the request came with is dropped); removed when the client is unknown. The one header to read."
        )),
        None => line("  - client_ip_header is \"\": no client header is written; whatever the request carried under x-real-ip passes.".to_owned()),
    }
    line(match config.xff_mode {
        XffMode::Append => "  - x-forwarded-for (append): as received with the peer appended, as Envoy's use_remote_address does. Everything left of the peer is what the caller wrote: read it only from the right, past the proxies you trust.".to_owned(),
        XffMode::Overwrite => "  - x-forwarded-for (overwrite): the client alone; removed when the client is unknown.".to_owned(),
        XffMode::Preserve => "  - x-forwarded-for (preserve): as received, which the caller wrote: the application must not believe it.".to_owned(),
    });
    line(match config.forwarded_mode {
        ForwardedMode::Preserve => "  - forwarded (preserve): as received, which the caller wrote; an application that reads Forwarded before X-Forwarded-For believes it: set forwarded_mode to overwrite or remove.".to_owned(),
        ForwardedMode::Overwrite => "  - forwarded (overwrite): for= the client alone; removed when the client is unknown.".to_owned(),
        ForwardedMode::Remove => "  - forwarded (remove): removed.".to_owned(),
    });
    if config.access.is_active() {
        let allow = strings(&raw, "allow_clients");
        let deny = strings(&raw, "deny_clients");
        let mut rule = Vec::new();
        if !deny.is_empty() {
            rule.push(format!("clients in {} are refused", deny.join(", ")));
        }
        if !allow.is_empty() {
            rule.push(format!(
                "only clients in {} are served (an unknown client is refused)",
                allow.join(", ")
            ));
        }
        let outcome = match config.access.dry_run {
            true => "access_dry_run: refusals are only counted, every request is served".to_owned(),
            false => format!(
                "a refused request is answered {} and never reaches the application",
                config.access.deny_status
            ),
        };
        line(format!("  - access: {}; {outcome}.", rule.join("; ")));
    }
    if config.publish_filter_state {
        line("  - filter state wasm.client_ip: the client, for access logs.".to_owned());
    }
    if config.publish_ip_filter_state {
        line(
            "  - filter state envoy.network.ip: the client, for Envoy's RBAC and other filters."
                .to_owned(),
        );
    }
    line(String::new());

    line("What is counted (Envoy's stats, as wasmcustom.<name>)".to_owned());
    for name in COUNTERS {
        let meaning = counter_meaning(name, config).unwrap_or_default();
        line(format!("  - {name}: {meaning}"));
    }
    line(format!(
        "  - {}: the VM's memory, a gauge",
        client_ip::MEMORY_GAUGE
    ));
    if matches!(
        plugin.deployment,
        Some(Deployment::Sidecar) | Some(Deployment::Gateway)
    ) {
        line(String::new());
        line("Deploy it beside the peer filter (pluginName client_ip_peer): without it, a request that carries X-Forwarded-For hides its peer where use_remote_address is false.".to_owned());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_counter_is_explained() {
        let config = FilterConfig::default();
        for name in COUNTERS {
            assert!(counter_meaning(name, &config).is_some(), "{name}");
        }
    }
}
