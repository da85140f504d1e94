//! Property tests: whatever bytes arrive, resolution never panics, and the
//! client it yields is always a valid address that the rules allow.
#![cfg(not(target_arch = "wasm32"))]

use std::net::IpAddr;

use client_ip::address::{parse_forwarded_entry, parse_host_port, parse_socket_peer, IpText};
use client_ip::config::{FilterConfig, TrustPolicy, XffMode};
use client_ip::resolve::{resolve_client, ClientOrigin};
use client_ip::rewrite::{forwarded_for_edit, HeaderEdit};
use proptest::prelude::*;

fn any_policy() -> impl Strategy<Value = TrustPolicy> {
    (
        prop::collection::vec((any::<[u8; 4]>(), 0u8..=32), 0..4),
        0usize..=4,
    )
        .prop_map(|(nets, trusted_hops)| TrustPolicy {
            trusted_proxies: nets
                .into_iter()
                .map(|(octets, prefix)| {
                    ipnet::Ipv4Net::new(octets.into(), prefix)
                        .unwrap()
                        .trunc()
                        .into()
                })
                .collect(),
            trusted_hops,
        })
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

    #[test]
    fn config_parser_takes_any_bytes(raw in prop::collection::vec(any::<u8>(), 0..120)) {
        let _ = FilterConfig::from_json(&raw);
    }

    #[test]
    fn resolution_is_total_and_sound(
        policy in any_policy(),
        peer in prop::option::of(any::<[u8; 4]>().prop_map(IpAddr::from)),
        xff in prop::option::of(any_forwarded_for()),
    ) {
        let resolution = resolve_client(&policy, peer, xff.as_deref());
        match resolution.origin {
            ClientOrigin::Peer => prop_assert_eq!(resolution.client, peer),
            ClientOrigin::Unknown => prop_assert!(resolution.client.is_none() && peer.is_none()),
            ClientOrigin::TrustedHops => prop_assert!(policy.trusted_hops > 0 && resolution.client.is_some()),
            ClientOrigin::TrustedProxies => {
                // Only a trusted peer opens the chain.
                prop_assert!(policy.trusted_hops == 0);
                prop_assert!(peer.is_some_and(|peer| policy.is_trusted(peer)));
            }
        }
        if let Some(client) = resolution.client {
            prop_assert_eq!(parse_forwarded_entry(IpText::new(client).as_bytes()), Some(client));
        }
        // An untrusted peer is always the client, whatever it sent.
        if let Some(peer) = peer {
            if policy.trusted_hops == 0 && !policy.is_trusted(peer) {
                prop_assert_eq!(resolution.client, Some(peer));
            }
        }
    }

    #[test]
    fn rewrite_never_loses_the_peer(
        xff in prop::option::of(any_forwarded_for()),
        peer in any::<[u8; 4]>().prop_map(IpAddr::from),
    ) {
        let mut scratch = Vec::new();
        let edit = forwarded_for_edit(XffMode::Append, xff.as_deref(), false, Some(peer), Some(&IpText::new(peer)), &mut scratch);
        let HeaderEdit::Set(value) = edit else { panic!("append with a known peer must set the header") };
        let last = value.rsplit(|&b| b == b',').next().unwrap();
        prop_assert_eq!(parse_forwarded_entry(last), Some(peer));
    }
}
