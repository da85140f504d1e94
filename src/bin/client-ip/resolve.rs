//! `client-ip resolve`: one request through [`client_ip::decide`], the
//! function the filter runs, with the request's headers held as Envoy holds
//! them when the filter sees them.

use std::net::IpAddr;

use client_ip::access::Decision;
use client_ip::address::parse_host_port;
use client_ip::config::{FilterConfig, DEFAULT_CLIENT_IP_HEADER};
use client_ip::decide::{decide_observed, RequestFacts, Verdict};
use client_ip::resolve::{ClientOrigin, Step};
use client_ip::rewrite::HeaderEdit;
use serde_json::{json, Value};

const X_FORWARDED_FOR: &str = "x-forwarded-for";
const FORWARDED: &str = "forwarded";

/// A request's headers in order, names lower-cased, as the filter finds
/// them in Envoy: repeated X-Forwarded-For lines are one, joined by `,`
/// where the first stood (Envoy's codec does this before any filter runs).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Headers(pub Vec<(String, String)>);

impl Headers {
    /// Parses `Name: value` lines.
    pub fn parse(lines: &[String]) -> Result<Headers, String> {
        let mut headers = Headers::default();
        for line in lines {
            let (name, value) = line.split_once(':').ok_or_else(|| {
                format!("-H {line:?}: a header is written `Name: value`, and this one has no colon")
            })?;
            let name = name.trim();
            let is_token_byte =
                |b: u8| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b);
            if name.is_empty() || !name.bytes().all(is_token_byte) {
                return Err(format!(
                    "-H {line:?}: {name:?} is not a valid HTTP header name"
                ));
            }
            if value.bytes().any(|b| b == b'\r' || b == b'\n' || b == 0) {
                return Err(format!(
                    "-H {line:?}: a header value cannot hold CR, LF or NUL"
                ));
            }
            headers.add(&name.to_ascii_lowercase(), value.trim());
        }
        Ok(headers)
    }

    fn add(&mut self, name: &str, value: &str) {
        if name == X_FORWARDED_FOR {
            if let Some((_, joined)) = self.0.iter_mut().find(|(n, _)| n == name) {
                joined.push(',');
                joined.push_str(value);
                return;
            }
        }
        self.0.push((name.to_owned(), value.to_owned()));
    }

    /// The first line of a header, as a header read returns it.
    pub fn first(&self, name: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    /// Every line of a header joined by `,`, as the `request.headers`
    /// attribute returns it.
    pub fn joined(&self, name: &str) -> Option<String> {
        let values: Vec<&str> = self
            .0
            .iter()
            .filter(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
            .collect();
        (!values.is_empty()).then(|| values.join(","))
    }

    /// Applies an edit as Envoy's header map does: a set removes every line
    /// and adds the new one last; a remove removes every line.
    fn apply(&mut self, name: &str, edit: &HeaderEdit) {
        match edit {
            HeaderEdit::Keep => {}
            HeaderEdit::Remove => self.0.retain(|(n, _)| n != name),
            HeaderEdit::Set(value) => {
                self.0.retain(|(n, _)| n != name);
                self.0
                    .push((name.to_owned(), String::from_utf8_lossy(value).into_owned()));
            }
        }
    }
}

/// The facts of one request, from the command line.
struct Facts<'a> {
    config: &'a FilterConfig,
    headers: &'a Headers,
    identity: Option<&'a str>,
}

impl RequestFacts for Facts<'_> {
    fn peer_identity(&mut self) -> Option<Vec<u8>> {
        self.identity.map(|id| id.as_bytes().to_vec())
    }
    fn forwarded_for(&mut self) -> Option<Vec<u8>> {
        self.headers
            .first(X_FORWARDED_FOR)
            .map(|v| v.as_bytes().to_vec())
    }
    fn source_header(&mut self) -> Option<Vec<u8>> {
        self.headers
            .joined(self.config.source.header_name())
            .map(String::into_bytes)
    }
    fn client_header(&mut self) -> Option<Vec<u8>> {
        let name = self.config.client_ip_header.as_deref()?;
        self.headers.first(name).map(|v| v.as_bytes().to_vec())
    }
}

/// `ADDR`, `ADDR:PORT`, `[V6]:PORT`, or `unknown`.
pub fn parse_peer(text: &str) -> Result<Option<IpAddr>, String> {
    if text.eq_ignore_ascii_case("unknown") {
        return Ok(None);
    }
    parse_host_port(text.as_bytes())
        .map(|host| Some(host.ip))
        .ok_or_else(|| {
            format!("--peer {text:?} is not an address (ADDR, ADDR:PORT, [V6]:PORT or unknown)")
        })
}

/// An identity as Envoy reports the peer's URI SAN; Istio's principal form
/// (`cluster.local/ns/NS/sa/SA`) gets its `spiffe://`.
pub fn identity_uri(text: &str) -> String {
    match text.contains("://") {
        true => text.to_owned(),
        false => format!("spiffe://{text}"),
    }
}

/// The whole answer for one request.
pub struct Outcome {
    pub verdict: Verdict,
    pub steps: Vec<Step>,
    pub headers: Headers,
    pub status: Option<u16>,
}

pub fn run(
    config: &FilterConfig,
    peer: Option<IpAddr>,
    identity: Option<&str>,
    headers: &Headers,
) -> Outcome {
    let mut steps = Vec::new();
    let mut facts = Facts {
        config,
        headers,
        identity,
    };
    let verdict = decide_observed(config, peer, &mut facts, &mut |step| steps.push(step));
    let mut after = headers.clone();
    let client_header = config
        .client_ip_header
        .as_deref()
        .unwrap_or(DEFAULT_CLIENT_IP_HEADER);
    after.apply(client_header, &verdict.edits.client_header);
    after.apply(X_FORWARDED_FOR, &verdict.edits.forwarded_for);
    after.apply(FORWARDED, &verdict.edits.forwarded);
    let status = verdict.is_denied().then_some(config.access.deny_status);
    Outcome {
        verdict,
        steps,
        headers: after,
        status,
    }
}

fn source_name(config: &FilterConfig) -> &str {
    config.source.header_name()
}

/// One step in words.
pub fn describe_step(step: &Step, config: &FilterConfig) -> String {
    let source = source_name(config);
    match step {
        Step::TrustedHops(n) => format!(
            "trusted_hops is {n}: the entry {n} from the right of {source} is the client, whoever the peer is"
        ),
        Step::PeerTrustedByAddress => "the peer is in trusted_proxies: its headers are believed".to_owned(),
        Step::PeerTrustedByIdentity => {
            "the peer's identity is in trusted_identities: its headers are believed".to_owned()
        }
        Step::PeerUntrusted { identity_read: true } => {
            "the peer is not in trusted_proxies and has no identity trusted_identities lists: the peer is the client, its headers are not read".to_owned()
        }
        Step::PeerUntrusted { identity_read: false } => {
            "the peer is not trusted: the peer is the client, its headers are not read".to_owned()
        }
        Step::SourceMissing => format!("the request carries no {source}: the peer is the client"),
        Step::Entry {
            position,
            address: None,
            ..
        } => format!(
            "{source} entry {position} from the right is not an address: the walk stops at the nearest address already verified"
        ),
        Step::Entry {
            position,
            address: Some(address),
            trusted: true,
        } => format!(
            "{source} entry {position} from the right, {address}, is in trusted_proxies: go on to its left"
        ),
        Step::Entry {
            position,
            address: Some(address),
            trusted: false,
        } => format!("{source} entry {position} from the right, {address}, is the client"),
        Step::HopsBeyondEntries { entries } => format!(
            "{source} has {entries} entr{} (or more than the {} looked at): fewer than trusted_hops, so the peer is the client",
            if *entries == 1 { "y" } else { "ies" },
            client_ip::resolve::MAX_FORWARDED_ENTRIES
        ),
    }
}

fn step_json(step: &Step) -> Value {
    match step {
        Step::TrustedHops(n) => json!({"step": "trusted_hops", "hops": n}),
        Step::PeerTrustedByAddress => json!({"step": "peer_trusted_by_address"}),
        Step::PeerTrustedByIdentity => json!({"step": "peer_trusted_by_identity"}),
        Step::PeerUntrusted { identity_read } => {
            json!({"step": "peer_untrusted", "identity_read": identity_read})
        }
        Step::SourceMissing => json!({"step": "source_missing"}),
        Step::Entry {
            position,
            address,
            trusted,
        } => json!({
            "step": "entry",
            "position": position,
            "address": address.map(|a| a.to_string()),
            "trusted": trusted,
        }),
        Step::HopsBeyondEntries { entries } => {
            json!({"step": "hops_beyond_entries", "entries": entries})
        }
    }
}

pub fn origin_str(origin: ClientOrigin) -> &'static str {
    match origin {
        ClientOrigin::Peer => "peer",
        ClientOrigin::TrustedHops => "trusted_hops",
        ClientOrigin::TrustedProxies => "trusted_proxies",
        ClientOrigin::Unknown => "unknown",
    }
}

pub fn decision_str(access: Decision) -> &'static str {
    match access {
        Decision::Allowed | Decision::AllowedByList => "allow",
        Decision::Denied(_) => "deny",
        Decision::WouldDeny(_) => "dry_run_deny",
    }
}

fn access_words(access: Decision, status: Option<u16>) -> String {
    match access {
        Decision::Allowed => "allowed (no access list applies)".to_owned(),
        Decision::AllowedByList => "allowed: allow_clients lists the client".to_owned(),
        Decision::Denied(reason) => format!(
            "denied ({}): answered {} by the filter, never reaching the application",
            reason.as_str(),
            status.unwrap_or_default()
        ),
        Decision::WouldDeny(reason) => format!(
            "would be denied ({}), but access_dry_run is on: served, and counted in client_ip.dry_run_denied",
            reason.as_str()
        ),
    }
}

pub fn text(outcome: &Outcome, config: &FilterConfig, peer: Option<IpAddr>) -> String {
    let mut out = String::new();
    let peer_text = peer.map_or("unknown".to_owned(), |p| p.to_string());
    out.push_str(&format!("peer: {peer_text}\n"));
    out.push_str("walk:\n");
    for (n, step) in outcome.steps.iter().enumerate() {
        out.push_str(&format!("  {}. {}\n", n + 1, describe_step(step, config)));
    }
    let verdict = &outcome.verdict;
    let client = verdict.client.as_ref().map_or("unknown", |c| c.as_str());
    let origin = match verdict.resolution.origin {
        ClientOrigin::Peer => "the peer itself".to_owned(),
        ClientOrigin::TrustedHops => format!("{} by trusted_hops", source_name(config)),
        ClientOrigin::TrustedProxies => format!("{} through trusted peers", source_name(config)),
        ClientOrigin::Unknown => "no peer and no trusted entry".to_owned(),
    };
    out.push_str(&format!("client: {client} (from {origin})\n"));
    out.push_str(&format!(
        "access: {}\n",
        access_words(verdict.access, outcome.status)
    ));
    out.push_str(match verdict.is_denied() {
        true => "request headers as the filter leaves them (the request goes no further):\n",
        false => "request headers as the filter leaves them:\n",
    });
    for (name, value) in &outcome.headers.0 {
        out.push_str(&format!("  {name}: {value}\n"));
    }
    out
}

pub fn json(outcome: &Outcome, peer: Option<IpAddr>) -> Value {
    let verdict = &outcome.verdict;
    let reason = match verdict.access {
        Decision::Denied(reason) | Decision::WouldDeny(reason) => Some(reason.as_str()),
        _ => None,
    };
    json!({
        "peer": peer.map(|p| p.to_string()),
        "steps": outcome.steps.iter().map(step_json).collect::<Vec<_>>(),
        "client": verdict.client.as_ref().map(|c| c.as_str()),
        "origin": origin_str(verdict.resolution.origin),
        "decision": decision_str(verdict.access),
        "reason": reason,
        "status": outcome.status,
        "headers": outcome.headers.0.iter().map(|(n, v)| json!([n, v])).collect::<Vec<_>>(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines(items: &[&str]) -> Vec<String> {
        items.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn headers_are_held_as_envoy_holds_them() {
        let headers = Headers::parse(&lines(&[
            "X-Forwarded-For: 1.1.1.1",
            "X-Real-IP: 6.6.6.6",
            "x-forwarded-for:2.2.2.2 ",
            "x-real-ip: 7.7.7.7",
        ]))
        .unwrap();
        assert_eq!(headers.first("x-forwarded-for"), Some("1.1.1.1,2.2.2.2"));
        assert_eq!(headers.first("x-real-ip"), Some("6.6.6.6"));
        assert_eq!(
            headers.joined("x-real-ip").as_deref(),
            Some("6.6.6.6,7.7.7.7")
        );
        assert_eq!(headers.0.len(), 3);
        assert!(Headers::parse(&lines(&["no colon"]))
            .unwrap_err()
            .contains("no colon"));
        assert!(Headers::parse(&lines(&[": empty"])).is_err());
        assert!(Headers::parse(&lines(&["bad name: v"])).is_err());
    }

    #[test]
    fn peers_in_every_form() {
        let v4 = Some("10.0.0.1".parse().unwrap());
        assert_eq!(parse_peer("10.0.0.1"), Ok(v4));
        assert_eq!(parse_peer("10.0.0.1:8080"), Ok(v4));
        assert_eq!(parse_peer("::ffff:10.0.0.1"), Ok(v4));
        assert_eq!(
            parse_peer("[2001:db8::1]:443"),
            Ok(Some("2001:db8::1".parse().unwrap()))
        );
        assert_eq!(parse_peer("unknown"), Ok(None));
        assert!(parse_peer("gateway").is_err());
    }
}
