//! Who the client really is, from the downstream peer (its address and, on
//! mutual TLS, its identity) and the X-Forwarded-For the request arrived with.
//!
//! The rules, in order:
//! 1. `trusted_hops` = N > 0: the client is the Nth entry from the right of
//!    X-Forwarded-For; if that entry is missing or invalid, it is the peer.
//! 2. Else, if the peer is a trusted proxy, by its address (`trusted_proxies`)
//!    or by its identity (`trusted_identities`): walk X-Forwarded-For from the
//!    right, skipping addresses in `trusted_proxies`; the first other valid
//!    address is the client. An invalid entry ends the walk and the client is
//!    the nearest address already verified. If every entry is trusted, the
//!    client is the leftmost one. An identity speaks only for the peer that
//!    holds it, so entries further left are judged by address alone.
//! 3. Else the client is the peer: nothing the client sent is believed.
//!
//! At most [`MAX_FORWARDED_ENTRIES`] entries are looked at, counted from the
//! right; the walk stops there as it would at an invalid entry.

use std::net::IpAddr;

use crate::address::parse_forwarded_entry;
use crate::config::ClientIpSource;
use crate::forwarded::{for_nodes_from_right, ForNodes};
use crate::trust::TrustPolicy;
pub use crate::trust::MAX_FORWARDED_ENTRIES;

/// Where the client address came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ClientOrigin {
    /// The downstream peer itself.
    Peer,
    /// An entry of the client source chosen by `trusted_hops`.
    TrustedHops,
    /// An entry of the client source reached by walking through trusted
    /// proxies (or the one address a single-address source holds).
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
    /// Invalid entries of the client source met on the way.
    pub invalid_entries: u32,
    /// The peer was trusted by its identity (its address was not trusted).
    pub peer_trusted_by_identity: bool,
    /// The source was needed (a trusted peer, or `trusted_hops`) but the
    /// request did not carry it.
    pub source_missing: bool,
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
            peer_trusted_by_identity: false,
            source_missing: false,
        }
    }

    fn named(client: IpAddr, origin: ClientOrigin) -> Self {
        Resolution {
            client: Some(client),
            origin,
            invalid_entries: 0,
            peer_trusted_by_identity: false,
            source_missing: false,
        }
    }
}

/// The entries of the client source, rightmost first, at most
/// [`MAX_FORWARDED_ENTRIES`]: an address, or `None` for an invalid entry.
/// One enum rather than three iterator types keeps one copy of the walk. It
/// lives on the stack for one request; boxing the large variant would
/// allocate.
#[allow(clippy::large_enum_variant)]
enum Entries<'a> {
    /// X-Forwarded-For, split at commas. Envoy joins repeated headers into
    /// one comma-separated value before filters run.
    Chain(XffEntries<'a>),
    /// The `for=` nodes of a `Forwarded` value.
    Forwarded(ForNodes<'a>),
    /// A header that holds one address.
    Single(Option<&'a [u8]>),
}

/// X-Forwarded-For's entries from the right, at most
/// [`MAX_FORWARDED_ENTRIES`], as `rsplit(',')` yields them. Written out
/// because a nameable `RSplit` needs a function pointer, called once per
/// byte of the header.
struct XffEntries<'a> {
    /// What is left to split, `None` once the leftmost entry is out.
    rest: Option<&'a [u8]>,
    /// Entries still to yield.
    left: usize,
}

impl<'a> Iterator for XffEntries<'a> {
    type Item = &'a [u8];

    fn next(&mut self) -> Option<&'a [u8]> {
        self.left = self.left.checked_sub(1)?;
        let rest = self.rest?;
        match rest.iter().rposition(|&b| b == b',') {
            Some(comma) => {
                self.rest = rest.get(..comma);
                rest.get(comma.checked_add(1)?..)
            }
            None => {
                self.rest = None;
                Some(rest)
            }
        }
    }
}

impl<'a> Entries<'a> {
    /// `None` when the request does not carry the source (or it is blank).
    fn of(source: &ClientIpSource, value: Option<&'a [u8]>) -> Option<Entries<'a>> {
        let value = value.filter(|value| !value.trim_ascii().is_empty())?;
        Some(match source {
            ClientIpSource::XForwardedFor => Entries::Chain(XffEntries {
                rest: Some(value),
                left: MAX_FORWARDED_ENTRIES,
            }),
            ClientIpSource::Forwarded => Entries::Forwarded(for_nodes_from_right(value)),
            ClientIpSource::Header(_) => Entries::Single(Some(value)),
        })
    }
}

impl Iterator for Entries<'_> {
    type Item = Option<IpAddr>;

    fn next(&mut self) -> Option<Option<IpAddr>> {
        match self {
            Entries::Chain(entries) => entries.next().map(parse_forwarded_entry),
            Entries::Forwarded(nodes) => nodes.next(),
            Entries::Single(value) => value.take().map(parse_forwarded_entry),
        }
    }
}

/// Resolves the client from X-Forwarded-For: [`resolve_client_from`] with
/// the default source.
pub fn resolve_client<Identity: AsRef<[u8]>>(
    policy: &TrustPolicy,
    peer: Option<IpAddr>,
    peer_identity: impl FnOnce() -> Option<Identity>,
    forwarded_for: Option<&[u8]>,
) -> Resolution {
    resolve_client_from(
        policy,
        peer,
        peer_identity,
        &ClientIpSource::XForwardedFor,
        || forwarded_for,
    )
}

/// One step of the resolution, for those who want to watch it
/// ([`resolve_client_observed`]); the filter does not.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Step {
    /// `trusted_hops` is set: the entry that many places from the right is
    /// the client, whoever the peer is.
    TrustedHops(usize),
    /// The peer's address is in `trusted_proxies`.
    PeerTrustedByAddress,
    /// The peer's identity matched `trusted_identities`.
    PeerTrustedByIdentity,
    /// The peer is trusted neither by address nor by identity: its headers
    /// are not read.
    PeerUntrusted {
        /// Its identity was read (and matched no entry).
        identity_read: bool,
    },
    /// The source header was needed but is absent or blank.
    SourceMissing,
    /// An entry of the source, `position` places from the right (1 is the
    /// rightmost): an address, or `None` when it is not one. `trusted`:
    /// `trusted_proxies` holds it, so the walk goes on past it.
    Entry {
        position: usize,
        address: Option<IpAddr>,
        trusted: bool,
    },
    /// `trusted_hops` reached past the last entry (of at most
    /// [`MAX_FORWARDED_ENTRIES`] looked at).
    HopsBeyondEntries { entries: usize },
}

/// Resolves the client. `peer` is the true downstream peer, already
/// normalised, or `None` when it cannot be known. `peer_identity` reads the
/// URI SAN of the peer's certificate (`None` without one); it is called at
/// most once, and only when `trusted_identities` is set and the peer's
/// address has not already decided, so it costs nothing otherwise. `value`
/// reads the request's `source` header; it too is called at most once, and
/// only for a trusted peer or `trusted_hops`: an untrusted peer's headers are
/// never read.
pub fn resolve_client_from<Identity: AsRef<[u8]>, Value: AsRef<[u8]>>(
    policy: &TrustPolicy,
    peer: Option<IpAddr>,
    peer_identity: impl FnOnce() -> Option<Identity>,
    source: &ClientIpSource,
    value: impl FnOnce() -> Option<Value>,
) -> Resolution {
    resolve_client_observed(policy, peer, peer_identity, source, value, &mut |_| {})
}

/// [`resolve_client_from`], telling `observe` each step as it is taken. The
/// filter observes nothing (an empty closure the compiler removes); `client-ip
/// resolve` shows the steps.
pub fn resolve_client_observed<Identity: AsRef<[u8]>, Value: AsRef<[u8]>>(
    policy: &TrustPolicy,
    peer: Option<IpAddr>,
    peer_identity: impl FnOnce() -> Option<Identity>,
    source: &ClientIpSource,
    value: impl FnOnce() -> Option<Value>,
    observe: &mut impl FnMut(Step),
) -> Resolution {
    if policy.trusted_hops > 0 {
        observe(Step::TrustedHops(policy.trusted_hops));
        let value = value();
        let entries = Entries::of(source, value.as_ref().map(AsRef::as_ref));
        return by_trusted_hops(policy.trusted_hops, peer, entries, observe);
    }
    let trusted_by_address = peer.is_some_and(|peer| policy.is_trusted(peer));
    let identity_read = !trusted_by_address && !policy.trusted_identities.is_empty();
    let trusted_by_identity = identity_read
        && peer_identity().is_some_and(|san| policy.trusted_identities.trust(san.as_ref()));
    if !trusted_by_address && !trusted_by_identity {
        observe(Step::PeerUntrusted { identity_read });
        return Resolution::from_peer(peer, 0);
    }
    observe(match trusted_by_address {
        true => Step::PeerTrustedByAddress,
        false => Step::PeerTrustedByIdentity,
    });
    let value = value();
    let entries = Entries::of(source, value.as_ref().map(AsRef::as_ref));
    Resolution {
        peer_trusted_by_identity: trusted_by_identity,
        ..by_trusted_walk(policy, peer, entries, observe)
    }
}

fn missing(peer: Option<IpAddr>, observe: &mut impl FnMut(Step)) -> Resolution {
    observe(Step::SourceMissing);
    Resolution {
        source_missing: true,
        ..Resolution::from_peer(peer, 0)
    }
}

fn by_trusted_hops(
    hops: usize,
    peer: Option<IpAddr>,
    entries: Option<Entries>,
    observe: &mut impl FnMut(Step),
) -> Resolution {
    let Some(mut entries) = entries else {
        return missing(peer, observe);
    };
    let mut seen = 0;
    let chosen = entries.find(|_| {
        seen += 1;
        seen == hops
    });
    match chosen {
        None => {
            observe(Step::HopsBeyondEntries { entries: seen });
            Resolution::from_peer(peer, 0)
        }
        Some(address) => {
            observe(Step::Entry {
                position: hops,
                address,
                trusted: false,
            });
            match address {
                Some(client) => Resolution::named(client, ClientOrigin::TrustedHops),
                None => Resolution::from_peer(peer, 1),
            }
        }
    }
}

/// The walk from a trusted peer. The peer's address may be unknown when it is
/// trusted by identity; then only what it forwarded can name a client.
// A counter rather than enumerate(): the module comes out smaller.
#[allow(clippy::explicit_counter_loop)]
fn by_trusted_walk(
    policy: &TrustPolicy,
    peer: Option<IpAddr>,
    entries: Option<Entries>,
    observe: &mut impl FnMut(Step),
) -> Resolution {
    let Some(entries) = entries else {
        return missing(peer, observe);
    };
    let mut verified = Resolution::from_peer(peer, 0);
    let mut position = 0;
    for entry in entries {
        position += 1;
        let Some(address) = entry else {
            observe(Step::Entry {
                position,
                address: None,
                trusted: false,
            });
            verified.invalid_entries = 1;
            return verified;
        };
        verified = Resolution::named(address, ClientOrigin::TrustedProxies);
        let trusted = policy.is_trusted(address);
        observe(Step::Entry {
            position,
            address: Some(address),
            trusted,
        });
        if !trusted {
            return verified;
        }
    }
    verified
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::{IdentityPattern, TrustedIdentities};

    fn no_identity() -> Option<&'static [u8]> {
        None
    }

    fn trusting(nets: &[&str]) -> TrustPolicy {
        let nets: Vec<_> = nets.iter().map(|n| n.parse().unwrap()).collect();
        TrustPolicy::new(&nets, 0, TrustedIdentities::default())
    }

    #[test]
    fn entries_split_as_rsplit_does() {
        for value in [
            &b"1.1.1.1, 2.2.2.2"[..],
            b"1.1.1.1",
            b",",
            b",,1.1.1.1,",
            b" , ",
            b"a,b,c,d,e,f,g,h,i,j,k,l,m,n,o,p,q,r,s,t,u,v,w,x,y,z,0,1,2,3,4,5,6,7,8,9",
        ] {
            let split: Vec<&[u8]> = XffEntries {
                rest: Some(value),
                left: MAX_FORWARDED_ENTRIES,
            }
            .collect();
            let want: Vec<&[u8]> = value
                .rsplit(|&b| b == b',')
                .take(MAX_FORWARDED_ENTRIES)
                .collect();
            assert_eq!(split, want, "{:?}", String::from_utf8_lossy(value));
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
        let resolution = resolve_client(&policy, peer, no_identity, Some(xff.as_bytes()));
        assert_eq!(resolution.client, Some("10.9.9.9".parse().unwrap()));
        assert_eq!(resolution.origin, ClientOrigin::TrustedProxies);
    }

    #[test]
    fn hops_beyond_the_entries_fall_back_to_the_peer() {
        let policy = TrustPolicy::new(&[], 3, TrustedIdentities::default());
        let peer = Some("127.0.0.9".parse().unwrap());
        let resolution = resolve_client(&policy, peer, no_identity, Some(b"1.1.1.1, 2.2.2.2"));
        assert_eq!(resolution, Resolution::from_peer(peer, 0));
    }

    fn identity_policy(nets: &[&str]) -> TrustPolicy {
        let identities = ["cluster.local/ns/istio-system/sa/gateway"]
            .iter()
            .map(|e| IdentityPattern::parse(e).unwrap())
            .collect();
        let nets: Vec<_> = nets.iter().map(|n| n.parse().unwrap()).collect();
        TrustPolicy::new(&nets, 0, TrustedIdentities::new(identities))
    }

    const GATEWAY_SAN: &[u8] = b"spiffe://cluster.local/ns/istio-system/sa/gateway";

    #[test]
    fn the_identity_is_read_only_when_the_address_does_not_decide() {
        let reads = std::cell::Cell::new(0);
        let read = || {
            reads.set(reads.get() + 1);
            Some(GATEWAY_SAN)
        };
        let peer = Some("10.0.0.1".parse().unwrap());
        // No trusted_identities: never read.
        resolve_client(&trusting(&[]), peer, read, Some(b"1.1.1.1"));
        assert_eq!(reads.get(), 0);
        // Trusted by address: never read.
        let by_address = resolve_client(
            &identity_policy(&["10.0.0.0/8"]),
            peer,
            read,
            Some(b"1.1.1.1"),
        );
        assert_eq!(reads.get(), 0);
        assert!(!by_address.peer_trusted_by_identity);
        // Otherwise read once.
        let by_identity = resolve_client(&identity_policy(&[]), peer, read, Some(b"1.1.1.1"));
        assert_eq!(reads.get(), 1);
        assert!(by_identity.peer_trusted_by_identity);
        assert_eq!(by_identity.client, Some("1.1.1.1".parse().unwrap()));
    }

    #[test]
    fn a_trusted_identity_with_an_unknown_address_still_names_the_client() {
        let policy = identity_policy(&[]);
        let named = resolve_client(
            &policy,
            None,
            || Some(GATEWAY_SAN),
            Some(b"6.6.6.6, 1.1.1.1"),
        );
        assert_eq!(named.client, Some("1.1.1.1".parse().unwrap()));
        assert_eq!(named.origin, ClientOrigin::TrustedProxies);
        let junk = resolve_client(&policy, None, || Some(GATEWAY_SAN), Some(b"junk"));
        assert_eq!(junk.client, None);
        assert_eq!(junk.origin, ClientOrigin::Unknown);
        assert_eq!(junk.invalid_entries, 1);
    }
}
