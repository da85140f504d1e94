//! The RFC 7239 `Forwarded` parser on any bytes: no panic, never more than
//! the cap of entries, every address it yields writes back to itself, and a
//! header built from addresses yields them back, rightmost first (the
//! unspecified addresses as invalid entries).
#![no_main]

use std::net::IpAddr;

use client_ip::address::{parse_forwarded_entry, IpText};
use client_ip::trust::MAX_FORWARDED_ENTRIES;
use client_ip::forwarded::for_nodes_from_right;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|input: (&[u8], Vec<[u8; 16]>)| {
    let (raw, addresses) = input;
    let nodes: Vec<Option<IpAddr>> = for_nodes_from_right(raw).collect();
    assert!(nodes.len() <= MAX_FORWARDED_ENTRIES);
    for ip in nodes.iter().flatten() {
        assert_eq!(parse_forwarded_entry(IpText::new(*ip).as_bytes()), Some(*ip));
    }
    let ips: Vec<IpAddr> = addresses
        .iter()
        .take(MAX_FORWARDED_ENTRIES)
        .map(|bytes| client_ip::address::normalize(IpAddr::from(*bytes)))
        .collect();
    let value = ips
        .iter()
        .map(|ip| match ip {
            IpAddr::V4(v4) => format!("for={v4};proto=https"),
            IpAddr::V6(v6) => format!("For=\"[{v6}]:443\""),
        })
        .collect::<Vec<_>>()
        .join(", ");
    let back: Vec<Option<IpAddr>> = for_nodes_from_right(value.as_bytes()).collect();
    // 0.0.0.0 and :: are never a client: invalid entries, like junk.
    let expected: Vec<Option<IpAddr>> = ips.iter().rev().map(|ip| (!ip.is_unspecified()).then_some(*ip)).collect();
    assert_eq!(back, expected);
});
