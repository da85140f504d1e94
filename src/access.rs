//! Access control on the resolved client: `allow_clients`, `deny_clients`,
//! a dry run, and the status a denied request is answered with.
//!
//! The lists are [`AddressSet`]s, so a lookup is a binary search whatever
//! their length, and a policy with no list costs one branch per request.

use std::net::IpAddr;

use crate::ranges::AddressSet;

/// The most entries `allow_clients` or `deny_clients` may hold, each.
pub const MAX_ACCESS_ENTRIES: usize = 4096;

pub const DEFAULT_DENY_STATUS: u16 = 403;

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
    use ipnet::IpNet;

    fn set(nets: &[&str]) -> AddressSet {
        let nets: Vec<IpNet> = nets.iter().map(|n| n.parse().unwrap()).collect();
        AddressSet::new(&nets)
    }

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
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
