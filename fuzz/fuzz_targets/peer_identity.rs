//! `trusted_identities` entries and peer certificate URI SANs as arbitrary
//! text: no panic; only a `spiffe://` URI is ever trusted; an entry without a
//! star trusts exactly its own identity; a list trusts what one of its
//! entries trusts, and nothing else.
#![no_main]

use client_ip::identity::{IdentityPattern, TrustedIdentities};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|input: (Vec<&str>, &[u8])| {
    let (entries, san) = input;
    let patterns: Vec<IdentityPattern> = entries.iter().filter_map(|e| IdentityPattern::parse(e).ok()).collect();
    let list = TrustedIdentities::new(patterns.clone());
    let is_spiffe = san.get(..9).is_some_and(|s| s.eq_ignore_ascii_case(b"spiffe://"));
    if list.trust(san) {
        assert!(is_spiffe && san.len() > 9);
    }
    let by_one = patterns.iter().any(|p| TrustedIdentities::new(vec![p.clone()]).trust(san));
    assert_eq!(list.trust(san), by_one);
    for (entry, pattern) in entries.iter().filter_map(|e| IdentityPattern::parse(e).ok().map(|p| (e, p))) {
        if let IdentityPattern::Exact(body) = &pattern {
            assert!(!entry.contains('*'));
            let own = format!("spiffe://{body}");
            assert!(TrustedIdentities::new(vec![pattern.clone()]).trust(own.as_bytes()));
        }
    }
});
