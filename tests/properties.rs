//! Property tests: whatever bytes arrive, resolution never panics, and the
//! client it yields is always a valid address that the rules allow.
#![cfg(not(target_arch = "wasm32"))]

use std::net::IpAddr;

use client_ip::access::{AccessPolicy, Decision};
use client_ip::address::{parse_forwarded_entry, parse_host_port, parse_socket_peer, IpText};
use client_ip::config::ClientIpSource;
use client_ip::config::{FilterConfig, XffMode};
use client_ip::decide::{decide, RequestFacts};
use client_ip::identity::{IdentityPattern, TrustedIdentities};
use client_ip::peer::{from_waypoint, WaypointPeer};
use client_ip::ranges::AddressSet;
use client_ip::resolve::{resolve_client, resolve_client_observed, ClientOrigin, Step};
use client_ip::rewrite::{forwarded_for_edit, HeaderEdit};
use client_ip::trust::TrustPolicy;
use proptest::prelude::*;

const IDENTITY_ENTRIES: &[&str] = &[
    "cluster.local/ns/istio-system/sa/gateway",
    "spiffe://cluster.local/ns/istio-system/*",
    "*/sa/sleep",
];

/// Certificate URI SANs: mesh identities near and far from the entries, and junk.
fn any_peer_identity() -> impl Strategy<Value = Option<Vec<u8>>> {
    prop::option::of(prop_oneof![
        Just(b"spiffe://cluster.local/ns/istio-system/sa/gateway".to_vec()),
        Just(b"spiffe://cluster.local/ns/default/sa/sleep".to_vec()),
        Just(b"spiffe://cluster.local/ns/default/sa/rogue".to_vec()),
        Just(b"cluster.local/ns/istio-system/sa/gateway".to_vec()),
        Just(b"spiffe://".to_vec()),
        prop::collection::vec(any::<u8>(), 0..48),
        prop::collection::vec(any::<u8>(), 0..32).prop_map(|tail| [
            &b"spiffe://cluster.local/ns/"[..],
            &tail
        ]
        .concat()),
    ])
}

fn any_policy() -> impl Strategy<Value = TrustPolicy> {
    (
        prop::collection::vec((any::<[u8; 4]>(), 0u8..=32), 0..4),
        0usize..=4,
        prop::sample::subsequence(IDENTITY_ENTRIES, 0..=IDENTITY_ENTRIES.len()),
    )
        .prop_map(|(nets, trusted_hops, identities)| {
            let nets: Vec<ipnet::IpNet> = nets
                .into_iter()
                .map(|(octets, prefix)| {
                    ipnet::Ipv4Net::new(octets.into(), prefix)
                        .unwrap()
                        .trunc()
                        .into()
                })
                .collect();
            // The configuration refuses hops beside identities.
            let trusted_hops = if identities.is_empty() {
                trusted_hops
            } else {
                0
            };
            let identities = TrustedIdentities::new(
                identities
                    .iter()
                    .map(|e| IdentityPattern::parse(e).unwrap())
                    .collect(),
            );
            TrustPolicy::new(&nets, trusted_hops, identities)
        })
}

/// A peer as the filter reads it: never the unspecified address.
fn any_peer() -> impl Strategy<Value = IpAddr> {
    any::<[u8; 4]>()
        .prop_map(IpAddr::from)
        .prop_filter("no peer is 0.0.0.0", |ip| !ip.is_unspecified())
}

/// X-Forwarded-For values: mostly address-like entries with junk mixed in.
fn any_forwarded_for() -> impl Strategy<Value = Vec<u8>> {
    let entry = prop_oneof![
        any::<[u8; 4]>().prop_map(|o| IpAddr::from(o).to_string().into_bytes()),
        any::<[u16; 8]>().prop_map(|s| format!("[{}]:443", IpAddr::from(s)).into_bytes()),
        Just(b"unknown".to_vec()),
        Just(b" 127.0.0.1 ".to_vec()),
        prop::collection::vec(any::<u8>(), 0..24),
    ];
    prop::collection::vec(entry, 0..40).prop_map(|entries| entries.join(&b","[..]))
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(4000))]

    #[test]
    fn parsers_take_any_bytes(raw in prop::collection::vec(any::<u8>(), 0..80)) {
        let entry = parse_forwarded_entry(&raw);
        if let Some(ip) = entry {
            // A parsed address writes back to text that parses to itself.
            prop_assert_eq!(parse_forwarded_entry(IpText::new(ip).as_bytes()), Some(ip));
        }
        let _ = parse_host_port(&raw);
        let _ = parse_socket_peer(&raw);
    }

    /// What `client-ip resolve` shows is the walk the filter takes: the
    /// observed resolution is the filter's, and its last step names the
    /// client it yields.
    #[test]
    fn the_observed_walk_is_the_filters(
        policy in any_policy(),
        peer in prop::option::of(any_peer()),
        identity in any_peer_identity(),
        xff in prop::option::of(any_forwarded_for()),
    ) {
        let plain = resolve_client(&policy, peer, || identity.as_deref(), xff.as_deref());
        let mut steps = Vec::new();
        let observed = resolve_client_observed(
            &policy,
            peer,
            || identity.as_deref(),
            &ClientIpSource::XForwardedFor,
            || xff.as_deref(),
            &mut |step| steps.push(step),
        );
        prop_assert_eq!(observed, plain);
        prop_assert!(!steps.is_empty());
        match steps.last() {
            Some(Step::Entry { address: Some(address), trusted, .. }) if plain.origin != ClientOrigin::Peer => {
                prop_assert_eq!(plain.client, Some(*address));
                // The last entry is trusted only when every entry was.
                if *trusted {
                    let untrusted = steps.iter().any(|s| matches!(s, Step::Entry { trusted: false, .. }));
                    prop_assert!(!untrusted);
                }
            }
            Some(Step::PeerUntrusted { .. }) | Some(Step::SourceMissing) | Some(Step::HopsBeyondEntries { .. }) => {
                prop_assert_eq!(plain.client, peer);
            }
            _ => {}
        }
    }

    #[test]
    fn dotted_quads_read_as_the_standard_parser_reads_them(text in "[ ]?[0-9.]{0,17}[ ]?") {
        // Digits and dots alone: the fast path's ground, where the answer
        // must be `Ipv4Addr`'s, less the unspecified address.
        let want = text.trim().parse::<std::net::Ipv4Addr>().ok()
            .filter(|ip| !ip.is_unspecified())
            .map(IpAddr::V4);
        prop_assert_eq!(parse_forwarded_entry(text.as_bytes()), want);
    }

    #[test]
    fn ipv4_text_is_the_standard_display(bits in any::<u32>()) {
        let ip = IpAddr::V4(std::net::Ipv4Addr::from(bits));
        let text = IpText::new(ip);
        prop_assert_eq!(text.as_str(), ip.to_string());
    }

    #[test]
    fn config_parser_takes_any_bytes(raw in prop::collection::vec(any::<u8>(), 0..120)) {
        let _ = FilterConfig::from_json(&raw);
    }

    #[test]
    fn resolution_is_total_and_sound(
        policy in any_policy(),
        peer in prop::option::of(any_peer()),
        identity in any_peer_identity(),
        xff in prop::option::of(any_forwarded_for()),
    ) {
        let mut identity_reads = 0;
        let resolution = resolve_client(&policy, peer, || { identity_reads += 1; identity.as_deref() }, xff.as_deref());
        let trusted_by_address = peer.is_some_and(|peer| policy.is_trusted(peer));
        let trusted_by_identity = identity.as_deref().is_some_and(|san| policy.trusted_identities.trust(san));
        match resolution.origin {
            ClientOrigin::Peer => prop_assert_eq!(resolution.client, peer),
            ClientOrigin::Unknown => prop_assert!(resolution.client.is_none() && peer.is_none()),
            ClientOrigin::TrustedHops => prop_assert!(policy.trusted_hops > 0 && resolution.client.is_some()),
            ClientOrigin::TrustedProxies => {
                // Only a trusted peer opens the chain.
                prop_assert!(policy.trusted_hops == 0);
                prop_assert!(trusted_by_address || trusted_by_identity);
            }
        }
        // The identity is read at most once, and only when it can decide.
        prop_assert!(identity_reads <= 1);
        if policy.trusted_identities.is_empty() || policy.trusted_hops > 0 || trusted_by_address {
            prop_assert_eq!(identity_reads, 0);
        }
        prop_assert_eq!(resolution.peer_trusted_by_identity, !trusted_by_address && trusted_by_identity && policy.trusted_hops == 0);
        if let Some(client) = resolution.client {
            prop_assert_eq!(parse_forwarded_entry(IpText::new(client).as_bytes()), Some(client));
        }
        // An untrusted peer is always the client, whatever it sent.
        if policy.trusted_hops == 0 && !trusted_by_address && !trusted_by_identity {
            prop_assert_eq!(resolution.client, peer);
        }
    }

    #[test]
    fn identity_entries_take_any_text(entry in ".{0,40}", san in prop::collection::vec(any::<u8>(), 0..60)) {
        if let Ok(pattern) = IdentityPattern::parse(&entry) {
            let trusted = TrustedIdentities::new(vec![pattern]);
            // Only a spiffe:// URI is an identity.
            if !san.get(..9).is_some_and(|s| s.eq_ignore_ascii_case(b"spiffe://")) {
                prop_assert!(!trusted.trust(&san));
            }
            // An entry without a star trusts exactly its own identity.
            if !entry.contains('*') {
                let body = entry.strip_prefix("spiffe://").unwrap_or(&entry);
                let own = format!("spiffe://{body}");
                prop_assert!(trusted.trust(own.as_bytes()));
                prop_assert_eq!(trusted.trust(&san), san == own.as_bytes() || san.get(9..) == Some(body.as_bytes()));
            }
        }
    }

    #[test]
    fn rewrite_never_loses_the_peer(
        xff in prop::option::of(any_forwarded_for()),
        peer in any_peer(),
    ) {
        let edit = forwarded_for_edit(XffMode::Append, xff.as_deref(), false, Some(peer), Some(&IpText::new(peer)));
        let HeaderEdit::Set(value) = edit else { panic!("append with a known peer must set the header") };
        let last = value.rsplit(|&b| b == b',').next().unwrap();
        prop_assert_eq!(parse_forwarded_entry(last), Some(peer));
    }

    #[test]
    fn access_lists_agree_with_a_plain_scan(
        allow in prop::collection::vec((any::<[u8; 4]>(), 0u8..=32), 0..6),
        deny in prop::collection::vec((any::<[u8; 4]>(), 0u8..=32), 0..6),
        client in prop::option::of(any::<[u8; 4]>().prop_map(IpAddr::from)),
        dry_run in any::<bool>(),
    ) {
        let nets = |raw: &[([u8; 4], u8)]| -> Vec<ipnet::IpNet> {
            raw.iter().map(|&(o, p)| ipnet::Ipv4Net::new(o.into(), p).unwrap().trunc().into()).collect()
        };
        let (allow, deny) = (nets(&allow), nets(&deny));
        let in_list = |list: &[ipnet::IpNet]| client.is_some_and(|c| list.iter().any(|n| n.contains(&c)));
        let policy = AccessPolicy { allow: AddressSet::new(&allow), deny: AddressSet::new(&deny), dry_run, ..AccessPolicy::default() };
        let refused = in_list(&deny) || (!allow.is_empty() && !in_list(&allow));
        let decision = policy.decide(client);
        match decision {
            Decision::Denied(_) => prop_assert!(refused && !dry_run),
            Decision::WouldDeny(_) => prop_assert!(refused && dry_run),
            Decision::AllowedByList => prop_assert!(!refused && in_list(&allow)),
            Decision::Allowed => prop_assert!(!refused && allow.is_empty()),
        }
    }

    /// The trust guarantee: whatever the configuration and the request, the
    /// client header leaves the filter as the resolved client or not at all.
    #[test]
    fn no_forged_client_header_survives(
        policy in any_policy(),
        peer in prop::option::of(any_peer()),
        identity in any_peer_identity(),
        xff in prop::option::of(any_forwarded_for()),
        received in prop::option::of(prop::collection::vec(any::<u8>(), 0..20)),
        mode in prop::sample::select(vec!["append", "overwrite", "preserve"]),
        deny in prop::option::of(any_peer()),
    ) {
        let json = format!(
            r#"{{"xff_mode":"{mode}","count_forged_headers":true{}}}"#,
            deny.map(|ip| format!(r#","deny_clients":["{ip}"]"#)).unwrap_or_default()
        );
        let mut config = FilterConfig::from_json(json.as_bytes()).unwrap();
        config.trust = policy;
        let mut facts = Facts { identity, xff, received };
        let verdict = decide(&config, peer, &mut facts);
        match (&verdict.client, &verdict.edits.client_header) {
            (Some(client), HeaderEdit::Set(value)) => prop_assert_eq!(value.as_slice(), client.as_bytes()),
            (None, HeaderEdit::Remove) => {}
            (client, edit) => prop_assert!(false, "client {:?} but edit {:?}", client, edit),
        }
        prop_assert_eq!(verdict.is_denied(), deny.is_some() && verdict.resolution.client == deny);
    }

    #[test]
    fn a_waypoint_record_takes_any_bytes(
        ip in prop::option::of(prop::collection::vec(any::<u8>(), 0..50)),
        port in prop::option::of(prop::collection::vec(any::<u8>(), 0..10)),
    ) {
        match from_waypoint(ip.as_deref(), port.as_deref()) {
            WaypointPeer::Peer(peer) => {
                prop_assert_eq!(parse_forwarded_entry(ip.as_deref().unwrap()), Some(peer));
                let port = i64::from_le_bytes(port.unwrap().try_into().unwrap());
                prop_assert!((1..=65535).contains(&port));
            }
            WaypointPeer::ForgedOnConnect => prop_assert_eq!(port, Some(vec![0; 8])),
            WaypointPeer::Unknown => {}
        }
    }
}

struct Facts {
    identity: Option<Vec<u8>>,
    xff: Option<Vec<u8>>,
    received: Option<Vec<u8>>,
}

impl RequestFacts for Facts {
    fn peer_identity(&mut self) -> Option<Vec<u8>> {
        self.identity.clone()
    }
    fn forwarded_for(&mut self) -> Option<Vec<u8>> {
        self.xff.clone()
    }
    fn source_header(&mut self) -> Option<Vec<u8>> {
        None
    }
    fn client_header(&mut self) -> Option<Vec<u8>> {
        self.received.clone()
    }
}
