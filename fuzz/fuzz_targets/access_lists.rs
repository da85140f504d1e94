//! Access lists from arbitrary networks and clients: the merged, searched
//! ranges agree with a plain scan of the networks, deny always wins, and a
//! non-empty allow list never admits a client it does not list.
#![no_main]

use std::net::IpAddr;

use client_ip::access::{AccessPolicy, Decision};
use client_ip::ranges::AddressSet;
use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use libfuzzer_sys::fuzz_target;

fn nets(raw: &[([u8; 16], u8, bool)]) -> Vec<IpNet> {
    raw.iter()
        .filter_map(|&(bytes, prefix, v4)| {
            if v4 {
                let octets = [bytes[0], bytes[1], bytes[2], bytes[3]];
                Ipv4Net::new(octets.into(), prefix % 33).ok().map(|n| IpNet::V4(n.trunc()))
            } else {
                Ipv6Net::new(bytes.into(), prefix % 129).ok().map(|n| IpNet::V6(n.trunc()))
            }
        })
        .collect()
}

fuzz_target!(|input: (Vec<([u8; 16], u8, bool)>, Vec<([u8; 16], u8, bool)>, Option<([u8; 16], bool)>, bool)| {
    let (allow, deny, client, dry_run) = input;
    let (allow, deny) = (nets(&allow), nets(&deny));
    let client = client.map(|(bytes, v4)| {
        if v4 { IpAddr::from([bytes[0], bytes[1], bytes[2], bytes[3]]) } else { IpAddr::from(bytes) }
    });
    let in_list = |list: &[IpNet]| client.is_some_and(|c| list.iter().any(|n| n.contains(&c)));
    let policy = AccessPolicy { allow: AddressSet::new(&allow), deny: AddressSet::new(&deny), dry_run, ..AccessPolicy::default() };
    if let Some(c) = client {
        assert_eq!(policy.allow.contains(c), in_list(&allow));
        assert_eq!(policy.deny.contains(c), in_list(&deny));
    }
    let refused = in_list(&deny) || (!allow.is_empty() && !in_list(&allow));
    match policy.decide(client) {
        Decision::Denied(_) => assert!(refused && !dry_run),
        Decision::WouldDeny(_) => assert!(refused && dry_run),
        Decision::AllowedByList => assert!(!refused && in_list(&allow)),
        Decision::Allowed => assert!(!refused && allow.is_empty()),
    }
});
