//! Whom the filter believes when they speak of someone else: the trust
//! policy the resolution rules apply, and the limits that bound its work.

use std::net::IpAddr;

use ipnet::IpNet;

use crate::identity::TrustedIdentities;
use crate::ranges::AddressSet;

/// The most entries of the client source looked at per request, counted
/// from the right. It caps the work of the trusted walk and bounds
/// `trusted_hops`.
pub const MAX_FORWARDED_ENTRIES: usize = 32;

/// The most entries `trusted_proxies` may hold: CDN and cloud load-balancer
/// ranges run to hundreds, and a lookup costs a binary search whatever the
/// length.
pub const MAX_TRUSTED_PROXIES: usize = 4096;

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TrustPolicy {
    /// Peers (and entries of the client source) whose forwarding headers are
    /// believed.
    trusted_proxies: AddressSet,
    /// Proxies in front of this one that are trusted whatever their address.
    pub trusted_hops: usize,
    /// Peers whose forwarding headers are believed by their mTLS identity,
    /// whatever their address.
    pub trusted_identities: TrustedIdentities,
}

impl TrustPolicy {
    /// `trusted_proxies` must already be normalised as clients are
    /// (IPv4-mapped ranges written as IPv4).
    pub fn new(
        trusted_proxies: &[IpNet],
        trusted_hops: usize,
        trusted_identities: TrustedIdentities,
    ) -> TrustPolicy {
        TrustPolicy {
            trusted_proxies: AddressSet::new(trusted_proxies),
            trusted_hops,
            trusted_identities,
        }
    }

    /// Whether `trusted_proxies` holds the address.
    pub fn is_trusted(&self, ip: IpAddr) -> bool {
        self.trusted_proxies.contains(ip)
    }

    pub fn has_trusted_proxies(&self) -> bool {
        !self.trusted_proxies.is_empty()
    }
}
