//! Address lists as sorted, merged ranges: `trusted_proxies`,
//! `allow_clients` and `deny_clients` alike. A lookup is a binary search, so
//! its cost grows with the log of the list, never with its length.

use std::net::IpAddr;

use ipnet::IpNet;

/// A set of addresses: IPv4 and IPv6 ranges, sorted and merged, each family
/// as numbers of its own width. IPv4 stays 32-bit: a 128-bit comparison is
/// several instructions in Wasm, and the trusted walk makes up to 33
/// lookups per request.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AddressSet {
    v4: Vec<(u32, u32)>,
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
                IpNet::V4(net) => v4.push((u32::from(net.network()), u32::from(net.broadcast()))),
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
            IpAddr::V4(ip) => in_ranges(&self.v4, u32::from(ip)),
            IpAddr::V6(ip) => in_ranges(&self.v6, u128::from(ip)),
        }
    }
}

/// An address as a number, IPv4's or IPv6's.
trait Bits: Copy + Ord {
    /// The next address, `None` past the last.
    fn next(self) -> Option<Self>;
}

impl Bits for u32 {
    fn next(self) -> Option<Self> {
        self.checked_add(1)
    }
}

impl Bits for u128 {
    fn next(self) -> Option<Self> {
        self.checked_add(1)
    }
}

/// Sorts ranges and merges those that overlap or touch.
fn merged<T: Bits>(mut ranges: Vec<(T, T)>) -> Vec<(T, T)> {
    heap_sort(&mut ranges);
    let mut out: Vec<(T, T)> = Vec::with_capacity(ranges.len());
    for (start, end) in ranges {
        match out.last_mut() {
            Some(last) if last.1.next().map_or(true, |next| start <= next) => {
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
fn heap_sort<T: Ord>(items: &mut [T]) {
    fn sift_down<T: Ord>(items: &mut [T], mut root: usize, end: usize) {
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

fn in_ranges<T: Bits>(ranges: &[(T, T)], ip: T) -> bool {
    // The last range starting at or before the address is the only candidate.
    let after = ranges.partition_point(|&(start, _)| start <= ip);
    after
        .checked_sub(1)
        .and_then(|index| ranges.get(index))
        .is_some_and(|&(_, end)| ip <= end)
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

    #[test]
    fn the_heap_sort_sorts() {
        let mut items: Vec<(u128, u128)> = (0..200u128).map(|i| ((i * 7919) % 211, i)).collect();
        let mut expected = items.clone();
        expected.sort_unstable();
        heap_sort(&mut items);
        assert_eq!(items, expected);
        heap_sort::<(u32, u32)>(&mut []);
    }
}
