//! The address parsers on any bytes: no panic, and whatever parses writes
//! back to text that parses to the same address.
#![no_main]

use client_ip::address::{parse_forwarded_entry, parse_host_port, parse_socket_peer, IpText};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Some(ip) = parse_forwarded_entry(data) {
        assert_eq!(parse_forwarded_entry(IpText::new(ip).as_bytes()), Some(ip));
    }
    let _ = parse_host_port(data);
    if let Some(ip) = parse_socket_peer(data) {
        assert_eq!(parse_forwarded_entry(IpText::new(ip).as_bytes()), Some(ip));
    }
});
