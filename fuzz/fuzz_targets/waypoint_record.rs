//! What an ambient waypoint records of its HBONE peer, as arbitrary bytes:
//! the address text, the port bytes and the principal. No panic; a peer is
//! named only with a real port and an address that parses on its own; port 0
//! is always a forgery; a principal is trusted only as `trusted_identities`
//! trusts a certificate's URI SAN.
#![no_main]

use client_ip::address::parse_forwarded_entry;
use client_ip::identity::{IdentityPattern, TrustedIdentities};
use client_ip::peer::{from_waypoint, WaypointPeer};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|input: (Option<&[u8]>, Option<&[u8]>, &[u8], Vec<&str>)| {
    let (ip, port, principal, entries) = input;
    match from_waypoint(ip, port) {
        WaypointPeer::Peer(peer) => {
            assert_eq!(ip.and_then(parse_forwarded_entry), Some(peer));
            let port = i64::from_le_bytes(port.unwrap().try_into().unwrap());
            assert!((1..=65535).contains(&port));
        }
        WaypointPeer::ForgedOnConnect => assert_eq!(port, Some(&[0u8; 8][..])),
        WaypointPeer::Unknown => {}
    }
    let patterns: Vec<IdentityPattern> = entries.iter().filter_map(|e| IdentityPattern::parse(e).ok()).collect();
    let trusted = TrustedIdentities::new(patterns);
    if trusted.trust(principal) {
        assert!(principal.get(..9).is_some_and(|s| s.eq_ignore_ascii_case(b"spiffe://")));
    }
});
