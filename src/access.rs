//! Access control on the resolved client: `allow_clients`, `deny_clients`,
//! a dry run, and the status a denied request is answered with.
//!
//! The lists are kept as sorted, merged address ranges, so a lookup is a
//! binary search whatever their length, and a policy with no list costs one
//! branch per request.

use std::net::IpAddr;

use ipnet::IpNet;

/// The most entries `allow_clients` or `deny_clients` may hold, each.
pub const MAX_ACCESS_ENTRIES: usize = 4096;

pub const DEFAULT_DENY_STATUS: u16 = 403;

/// A set of addresses: IPv4 and IPv6 ranges, sorted and merged. Both
/// families are kept as 128-bit numbers, which keeps one copy of the code.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AddressSet {
    v4: Vec<(u128, u128)>,
    v6: Vec<(u128, u128)>,
}

impl AddressSet {
    /// The set of addresses the networks cover. IPv4-mapped IPv6 networks
    /// must already be written as IPv4, as clients are.
    pub fn new(nets: &[IpNet]) -> AddressSet {
        let mut v4 = Vec::new();
        let mut v6 = Vec::new();
        for net in nets {
            match net {
                IpNet::V4(net) => v4.push((
                    u128::from(u32::from(net.network())),
                    u128::from(u32::from(net.broadcast())),
                )),
                IpNet::V6(net) => v6.push((u128::from(net.network()), u128::from(net.broadcast()))),
            }
        }
        AddressSet {
            v4: merged(v4),
            v6: merged(v6),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.v4.is_empty() && self.v6.is_empty()
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        match ip {
            IpAddr::V4(ip) => in_ranges(&self.v4, u128::from(u32::from(ip))),
            IpAddr::V6(ip) => in_ranges(&self.v6, u128::from(ip)),
        }
    }
}

/// Sorts ranges and merges those that overlap or touch.
fn merged(mut ranges: Vec<(u128, u128)>) -> Vec<(u128, u128)> {
    heap_sort(&mut ranges);
    let mut out: Vec<(u128, u128)> = Vec::with_capacity(ranges.len());
    for (start, end) in ranges {
        match out.last_mut() {
            Some(last) if last.1.checked_add(1).map_or(true, |next| start <= next) => {
                last.1 = last.1.max(end);
            }
            _ => out.push((start, end)),
        }
    }
    out.shrink_to_fit();
    out
}

/// An in-place heap sort: the standard library's sorts would add several
/// KiB of code to the module for this one use at configuration time.
fn heap_sort(items: &mut [(u128, u128)]) {
    fn sift_down(items: &mut [(u128, u128)], mut root: usize, end: usize) {
        loop {
            let mut child = root.saturating_mul(2).saturating_add(1);
            if child >= end {
                return;
            }
            let right = child.saturating_add(1);
            if right < end && items.get(child) < items.get(right) {
                child = right;
            }
            if items.get(root) >= items.get(child) {
                return;
            }
            items.swap(root, child);
            root = child;
        }
    }
    let len = items.len();
    for root in (0..len / 2).rev() {
        sift_down(items, root, len);
    }
    for end in (1..len).rev() {
        items.swap(0, end);
        sift_down(items, 0, end);
    }
}

fn in_ranges(ranges: &[(u128, u128)], ip: u128) -> bool {
    // The last range starting at or before the address is the only candidate.
    let after = ranges.partition_point(|&(start, _)| start <= ip);
    after
        .checked_sub(1)
        .and_then(|index| ranges.get(index))
        .is_some_and(|&(_, end)| ip <= end)
}

/// What happens to a request, by its resolved client.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Decision {
    /// No list applies: served as usual.
    Allowed,
    /// Served because `allow_clients` lists the client.
    AllowedByList,
    /// Answered with the deny status; it never reaches the application.
    Denied(DenyReason),
    /// Would have been denied, but the policy is a dry run: served.
    WouldDeny(DenyReason),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DenyReason {
    /// `deny_clients` lists the client.
    Listed,
    /// `allow_clients` is set and does not list the client.
    NotAllowed,
    /// `allow_clients` is set and the client could not be known.
    Unknown,
}

impl DenyReason {
    pub fn as_str(self) -> &'static str {
        match self {
            DenyReason::Listed => "listed in deny_clients",
            DenyReason::NotAllowed => "not in allow_clients",
            DenyReason::Unknown => "unknown, and allow_clients is set",
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AccessPolicy {
    pub allow: AddressSet,
    pub deny: AddressSet,
    /// Count and log denials, but serve the request.
    pub dry_run: bool,
    /// The status of the local reply to a denied request.
    pub deny_status: u16,
}

impl Default for AccessPolicy {
    fn default() -> Self {
        AccessPolicy {
            allow: AddressSet::default(),
            deny: AddressSet::default(),
            dry_run: false,
            deny_status: DEFAULT_DENY_STATUS,
        }
    }
}

impl AccessPolicy {
    /// Whether any list is set: without one, nothing is decided per request.
    pub fn is_active(&self) -> bool {
        !self.allow.is_empty() || !self.deny.is_empty()
    }

    /// Deny wins over allow; a non-empty allow list lets in only what it
    /// lists, and never an unknown client (fail closed). With only a deny
    /// list an unknown client matches nothing and is served.
    pub fn decide(&self, client: Option<IpAddr>) -> Decision {
        if !self.is_active() {
            return Decision::Allowed;
        }
        let refusal = match client {
            Some(client) if self.deny.contains(client) => Some(DenyReason::Listed),
            Some(client) if self.allow.contains(client) => return Decision::AllowedByList,
            Some(_) if !self.allow.is_empty() => Some(DenyReason::NotAllowed),
            None if !self.allow.is_empty() => Some(DenyReason::Unknown),
            _ => None,
        };
        match refusal {
            None => Decision::Allowed,
            Some(reason) if self.dry_run => Decision::WouldDeny(reason),
            Some(reason) => Decision::Denied(reason),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(nets: &[&str]) -> AddressSet {
        let nets: Vec<IpNet> = nets.iter().map(|n| n.parse().unwrap()).collect();
        AddressSet::new(&nets)
    }

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    #[test]
    fn ranges_merge_and_match_at_their_edges() {
        let nets = set(&[
            "10.0.0.0/8",
            "10.1.0.0/16",
            "11.0.0.0/8",
            "192.168.1.7/32",
            "0.0.0.0/32",
            "255.255.255.255/32",
        ]);
        assert_eq!(nets.v4.len(), 4, "{nets:?}");
        for inside in [
            "10.0.0.0",
            "11.255.255.255",
            "10.200.1.1",
            "192.168.1.7",
            "0.0.0.0",
            "255.255.255.255",
        ] {
            assert!(nets.contains(ip(inside)), "{inside}");
        }
        for outside in [
            "9.255.255.255",
            "12.0.0.0",
            "192.168.1.6",
            "192.168.1.8",
            "::1",
        ] {
            assert!(!nets.contains(ip(outside)), "{outside}");
        }
        let v6 = set(&[
            "2001:db8::/32",
            "::/128",
            "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff/128",
        ]);
        assert!(v6.contains(ip("2001:db8:ffff::1")));
        assert!(v6.contains(ip("::")));
        assert!(v6.contains(ip("ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff")));
        assert!(!v6.contains(ip("2001:db9::")));
        assert!(!v6.contains(ip("10.0.0.1")));
        let everything = set(&["0.0.0.0/0", "::/0"]);
        assert!(everything.contains(ip("203.0.113.9")) && everything.contains(ip("2001:db8::1")));
    }

    fn policy(allow: &[&str], deny: &[&str], dry_run: bool) -> AccessPolicy {
        AccessPolicy {
            allow: set(allow),
            deny: set(deny),
            dry_run,
            ..AccessPolicy::default()
        }
    }

    #[test]
    fn the_heap_sort_sorts() {
        let mut items: Vec<(u128, u128)> = (0..200u128).map(|i| ((i * 7919) % 211, i)).collect();
        let mut expected = items.clone();
        expected.sort_unstable();
        heap_sort(&mut items);
        assert_eq!(items, expected);
        heap_sort(&mut []);
    }

    #[test]
    fn deny_wins_allow_admits_only_its_own_and_unknown_fails_closed() {
        use DenyReason::*;
        let both = policy(&["10.0.0.0/8"], &["10.6.6.0/24"], false);
        assert_eq!(both.decide(Some(ip("10.1.1.1"))), Decision::AllowedByList);
        assert_eq!(both.decide(Some(ip("10.6.6.6"))), Decision::Denied(Listed));
        assert_eq!(
            both.decide(Some(ip("192.0.2.1"))),
            Decision::Denied(NotAllowed)
        );
        assert_eq!(both.decide(None), Decision::Denied(Unknown));
        let deny_only = policy(&[], &["10.6.6.0/24"], false);
        assert_eq!(deny_only.decide(Some(ip("10.1.1.1"))), Decision::Allowed);
        assert_eq!(deny_only.decide(None), Decision::Allowed);
        let dry = policy(&["10.0.0.0/8"], &["10.6.6.0/24"], true);
        assert_eq!(
            dry.decide(Some(ip("10.6.6.6"))),
            Decision::WouldDeny(Listed)
        );
        assert_eq!(dry.decide(None), Decision::WouldDeny(Unknown));
        assert_eq!(dry.decide(Some(ip("10.1.1.1"))), Decision::AllowedByList);
        assert!(!AccessPolicy::default().is_active());
        assert_eq!(AccessPolicy::default().decide(None), Decision::Allowed);
    }
}
