//! The plugin-config parsers on any bytes: no panic, and an accepted
//! configuration always keeps the limits the request path relies on.
#![no_main]

use client_ip::config::{check_peer_config, FilterConfig, MAX_FORWARDED_ENTRIES, MAX_TRUSTED_PROXIES};
use client_ip::identity::MAX_TRUSTED_IDENTITIES;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = check_peer_config(data);
    match FilterConfig::from_json(data) {
        Ok(config) => {
            assert!(config.trust.trusted_hops <= MAX_FORWARDED_ENTRIES);
            assert!(config.trusted_proxies.len() <= MAX_TRUSTED_PROXIES);
            assert!(config.trust.trusted_identities.len() <= MAX_TRUSTED_IDENTITIES);
            assert!(config.trust.trusted_hops == 0 || config.trust.trusted_identities.is_empty());
            if let Some(header) = &config.client_ip_header {
                assert!(!header.is_empty() && !header.bytes().any(|b| b.is_ascii_uppercase()));
            }
        }
        Err(error) => assert!(!error.field.is_empty()),
    }
});
