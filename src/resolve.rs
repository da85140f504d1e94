//! Who the client really is, from the downstream peer and the
//! X-Forwarded-For the request arrived with.
//!
//! The rules, in order:
//! 1. `trusted_hops` = N > 0: the client is the Nth entry from the right of
//!    X-Forwarded-For; if that entry is missing or invalid, it is the peer.
//! 2. Else, if the peer is a trusted proxy: walk X-Forwarded-For from the
//!    right, skipping trusted addresses; the first untrusted valid address is
//!    the client. An invalid entry ends the walk and the client is the nearest
//!    address already verified. If every entry is trusted, the client is the
//!    leftmost one.
//! 3. Else the client is the peer: nothing the client sent is believed.
//!
//! At most [`MAX_FORWARDED_ENTRIES`] entries are looked at, counted from the
//! right; the walk stops there as it would at an invalid entry.

use std::net::IpAddr;

use crate::address::parse_forwarded_entry;
use crate::config::TrustPolicy;
pub use crate::config::MAX_FORWARDED_ENTRIES;

/// Where the client address came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ClientOrigin {
    /// The downstream peer itself.
    Peer,
    /// An X-Forwarded-For entry chosen by `trusted_hops`.
    TrustedHops,
    /// An X-Forwarded-For entry reached by walking through trusted proxies.
    TrustedProxies,
    /// No address could be vouched for: the peer is unknown and no trusted
    /// hop named anyone.
    Unknown,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Resolution {
    /// The resolved client, `None` only when the origin is `Unknown`.
    pub client: Option<IpAddr>,
    pub origin: ClientOrigin,
    /// Invalid X-Forwarded-For entries met on the way.
    pub invalid_entries: u32,
}

impl Resolution {
    fn from_peer(peer: Option<IpAddr>, invalid_entries: u32) -> Self {
        Resolution {
            client: peer,
            origin: match peer {
                Some(_) => ClientOrigin::Peer,
                None => ClientOrigin::Unknown,
            },
            invalid_entries,
        }
    }
}

/// Entries of an X-Forwarded-For value, rightmost first. Envoy joins repeated
/// headers into one comma-separated value before filters run.
fn entries_from_right(forwarded_for: &[u8]) -> impl Iterator<Item = &[u8]> {
    let present = !forwarded_for.trim_ascii().is_empty();
    forwarded_for
        .rsplit(|&b| b == b',')
        .take(if present { MAX_FORWARDED_ENTRIES } else { 0 })
}

/// Resolves the client. `peer` is the true downstream peer, already
/// normalised, or `None` when it cannot be known.
pub fn resolve_client(
    policy: &TrustPolicy,
    peer: Option<IpAddr>,
    forwarded_for: Option<&[u8]>,
) -> Resolution {
    let forwarded_for = forwarded_for.unwrap_or_default();
    if policy.trusted_hops > 0 {
        return by_trusted_hops(policy.trusted_hops, peer, forwarded_for);
    }
    match peer {
        Some(peer) if policy.is_trusted(peer) => by_trusted_walk(policy, peer, forwarded_for),
        _ => Resolution::from_peer(peer, 0),
    }
}

fn by_trusted_hops(hops: usize, peer: Option<IpAddr>, forwarded_for: &[u8]) -> Resolution {
    let Some(entry) = entries_from_right(forwarded_for).nth(hops.saturating_sub(1)) else {
        return Resolution::from_peer(peer, 0);
    };
    match parse_forwarded_entry(entry) {
        Some(client) => Resolution {
            client: Some(client),
            origin: ClientOrigin::TrustedHops,
            invalid_entries: 0,
        },
        None => Resolution::from_peer(peer, 1),
    }
}

fn by_trusted_walk(policy: &TrustPolicy, peer: IpAddr, forwarded_for: &[u8]) -> Resolution {
    let mut verified = Resolution::from_peer(Some(peer), 0);
    for entry in entries_from_right(forwarded_for) {
        let Some(address) = parse_forwarded_entry(entry) else {
            verified.invalid_entries = 1;
            return verified;
        };
        verified = Resolution {
            client: Some(address),
            origin: ClientOrigin::TrustedProxies,
            invalid_entries: 0,
        };
        if !policy.is_trusted(address) {
            return verified;
        }
    }
    verified
}

#[cfg(test)]
mod tests {
    use super::*;

    fn trusting(nets: &[&str]) -> TrustPolicy {
        TrustPolicy {
            trusted_proxies: nets.iter().map(|n| n.parse().unwrap()).collect(),
            trusted_hops: 0,
        }
    }

    #[test]
    fn the_walk_never_looks_past_the_cap() {
        let policy = trusting(&["10.0.0.0/8"]);
        let peer = Some("10.0.0.1".parse().unwrap());
        // 1.1.1.1 is the untrusted client, but it stands beyond the cap.
        let mut xff = String::from("1.1.1.1");
        for _ in 0..MAX_FORWARDED_ENTRIES {
            xff.push_str(", 10.9.9.9");
        }
        let resolution = resolve_client(&policy, peer, Some(xff.as_bytes()));
        assert_eq!(resolution.client, Some("10.9.9.9".parse().unwrap()));
        assert_eq!(resolution.origin, ClientOrigin::TrustedProxies);
    }

    #[test]
    fn hops_beyond_the_entries_fall_back_to_the_peer() {
        let policy = TrustPolicy {
            trusted_proxies: vec![],
            trusted_hops: 3,
        };
        let peer = Some("127.0.0.9".parse().unwrap());
        let resolution = resolve_client(&policy, peer, Some(b"1.1.1.1, 2.2.2.2"));
        assert_eq!(resolution, Resolution::from_peer(peer, 0));
    }
}
