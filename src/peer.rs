//! Where the true downstream peer comes from, read from what Envoy reports.
//!
//! The glue reads these in order and stops at the first that knows:
//! 1. the peer filter's record (`wasm.client_ip_peer`): the socket's peer,
//!    written when the connection opened, before any header could touch it
//!    (sidecars, gateways);
//! 2. an ambient waypoint's record of its HBONE peer, the filter state
//!    `envoy.filters.listener.original_dst.remote_ip` that istiod's
//!    `connect_terminate` listener writes: its `ip` as text and its `port` as
//!    an int64. Port 0 means the CONNECT itself carried X-Forwarded-For and
//!    Envoy took that address: forged, so no peer, and nothing further is
//!    read;
//! 3. Envoy's `source.address`, when it has a real port: the socket's peer.
//!    With `use_remote_address: false` and an X-Forwarded-For present, it is
//!    that header's rightmost entry with port 0 instead, which the client
//!    controls, so it is no peer.
//!
//! Only one of the records exists on a listener (the peer filter runs on
//! sidecars and gateways, the waypoint's record only behind
//! `connect_terminate`), and where the waypoint's record and
//! `source.address` both name a peer they name the same one. The order
//! costs the documented deployments the fewest reads: one on a sidecar or a
//! gateway, three behind a waypoint.

use std::net::IpAddr;

use crate::address::{parse_forwarded_entry, parse_socket_peer};

/// The peer filter's record: the address as it wrote it.
pub fn from_peer_filter(record: &[u8]) -> Option<IpAddr> {
    parse_forwarded_entry(record)
}

/// Envoy's `source.address` (`ip:port`, `[v6]:port`): the peer only when it
/// has a real port.
pub fn from_source_address(raw: &[u8]) -> Option<IpAddr> {
    parse_socket_peer(raw)
}

/// What a waypoint's record of its HBONE peer says.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WaypointPeer {
    /// A real TCP peer: the calling pod (through its ztunnel) or a gateway.
    Peer(IpAddr),
    /// Port 0: the address came from X-Forwarded-For on the CONNECT.
    ForgedOnConnect,
    /// Absent, or not an address and a port: no waypoint here, or a record
    /// this filter cannot read.
    Unknown,
}

/// Reads the waypoint's record: `ip` as text (`10.0.0.1`, `2001:db8::1`)
/// and `port` as Envoy's int64, eight little-endian bytes.
pub fn from_waypoint(ip: Option<&[u8]>, port: Option<&[u8]>) -> WaypointPeer {
    let port = port
        .and_then(|bytes| <[u8; 8]>::try_from(bytes).ok())
        .map(i64::from_le_bytes);
    match port {
        Some(0) => WaypointPeer::ForgedOnConnect,
        Some(1..=65535) => match ip.and_then(parse_forwarded_entry) {
            Some(ip) => WaypointPeer::Peer(ip),
            None => WaypointPeer::Unknown,
        },
        _ => WaypointPeer::Unknown,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn port(n: i64) -> [u8; 8] {
        n.to_le_bytes()
    }

    #[test]
    fn a_waypoint_record_with_a_real_port_is_the_peer() {
        let ip: IpAddr = "10.244.1.7".parse().unwrap();
        assert_eq!(
            from_waypoint(Some(b"10.244.1.7"), Some(&port(43512))),
            WaypointPeer::Peer(ip)
        );
        assert_eq!(
            from_waypoint(Some(b"2001:db8::7"), Some(&port(1))),
            WaypointPeer::Peer("2001:db8::7".parse().unwrap())
        );
    }

    #[test]
    fn port_zero_is_a_forgery_on_the_connect() {
        assert_eq!(
            from_waypoint(Some(b"6.6.6.6"), Some(&port(0))),
            WaypointPeer::ForgedOnConnect
        );
        assert_eq!(
            from_waypoint(None, Some(&port(0))),
            WaypointPeer::ForgedOnConnect
        );
    }

    #[test]
    fn anything_else_is_unknown() {
        for (ip, port_bytes) in [
            (None, None),
            (Some(&b"10.0.0.1"[..]), None),
            (None, Some(&port(4000)[..])),
            (Some(&b"10.0.0.1"[..]), Some(&port(65536)[..])),
            (Some(&b"10.0.0.1"[..]), Some(&port(-1)[..])),
            (Some(&b"10.0.0.1"[..]), Some(&b"4000"[..])),
            (Some(&b"10.0.0.1:4000"[..]), Some(&[1, 0, 0, 0][..])),
            (Some(&b"junk"[..]), Some(&port(4000)[..])),
            (Some(&b"0.0.0.0"[..]), Some(&port(4000)[..])),
        ] {
            assert_eq!(
                from_waypoint(ip, port_bytes),
                WaypointPeer::Unknown,
                "{ip:?} {port_bytes:?}"
            );
        }
    }

    #[test]
    fn source_address_needs_a_real_port() {
        assert_eq!(
            from_source_address(b"127.0.0.5:4000"),
            Some("127.0.0.5".parse().unwrap())
        );
        assert_eq!(from_source_address(b"6.6.6.6:0"), None);
    }
}
