//! Whole resolution from arbitrary configuration, peer, peer identity and
//! X-Forwarded-For: no panic, the client is always a valid address, a peer
//! trusted neither by address nor by identity is always its own client, the
//! identity is read only when it can decide, and every rewrite ends as the
//! modes promise.
#![no_main]

use client_ip::address::{parse_forwarded_entry, IpText};
use client_ip::config::{ClientIpSource, FilterConfig, ForwardedMode, XffMode};
use client_ip::resolve::{resolve_client, resolve_client_from};
use client_ip::rewrite::{forwarded_edit, forwarded_for_edit, strip_envoy_append, HeaderEdit};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|input: (&[u8], &[u8], &[u8], Option<&[u8]>, u8)| {
    let (config, peer, forwarded_for, peer_identity, source) = input;
    let config = FilterConfig::from_json(config).unwrap_or_default();
    let peer = parse_forwarded_entry(peer);
    let seen = (!forwarded_for.is_empty()).then_some(forwarded_for);
    let stripped = match (seen, peer) {
        (Some(seen), Some(peer)) => strip_envoy_append(seen, peer),
        _ => None,
    };
    let received = stripped.or(seen);
    // The same bytes as another source: the other parsers must keep the rules.
    let other_source = match source % 3 {
        0 => ClientIpSource::Forwarded,
        1 => ClientIpSource::Header("cf-connecting-ip".to_owned()),
        _ => ClientIpSource::XForwardedFor,
    };
    let mut trust = config.trust.clone();
    if !other_source.is_chain() {
        trust.trusted_hops = 0;
    }
    let other = resolve_client_from(&trust, peer, || peer_identity, &other_source, || seen);
    if let Some(client) = other.client {
        assert_eq!(parse_forwarded_entry(IpText::new(client).as_bytes()), Some(client));
    }
    if trust.trusted_hops == 0
        && !peer.is_some_and(|p| trust.is_trusted(p))
        && !peer_identity.is_some_and(|san| trust.trusted_identities.trust(san))
    {
        assert_eq!(other.client, peer);
    }

    let mut identity_reads = 0;
    let resolution = resolve_client(&config.trust, peer, || { identity_reads += 1; peer_identity }, received);
    let trusted_by_address = peer.is_some_and(|peer| config.trust.is_trusted(peer));
    let trusted_by_identity = peer_identity.is_some_and(|san| config.trust.trusted_identities.trust(san));
    assert!(identity_reads <= 1);
    if config.trust.trusted_identities.is_empty() || trusted_by_address {
        assert_eq!(identity_reads, 0);
    }
    assert_eq!(resolution.peer_trusted_by_identity, !trusted_by_address && trusted_by_identity);
    if let Some(client) = resolution.client {
        assert_eq!(parse_forwarded_entry(IpText::new(client).as_bytes()), Some(client));
    }
    if config.trust.trusted_hops == 0 && !trusted_by_address && !trusted_by_identity {
        assert_eq!(resolution.client, peer);
    }
    let client_text = resolution.client.map(IpText::new);
    for mode in [XffMode::Append, XffMode::Overwrite, XffMode::Preserve] {
        let edit = forwarded_for_edit(mode, received, stripped.is_some(), peer, client_text.as_ref());
        if let (XffMode::Overwrite, HeaderEdit::Set(value)) = (mode, edit) {
            assert_eq!(parse_forwarded_entry(&value), resolution.client);
        }
    }
    // Forwarded names exactly the client, in RFC 7239's form, or nobody.
    match forwarded_edit(ForwardedMode::Overwrite, client_text.as_ref()) {
        HeaderEdit::Set(value) => {
            let node = value.as_slice().strip_prefix(b"for=").expect("for= parameter");
            let node = node.strip_prefix(b"\"").and_then(|n| n.strip_suffix(b"\"")).unwrap_or(node);
            assert_eq!(parse_forwarded_entry(node), resolution.client);
        }
        edit => assert!(resolution.client.is_none() && edit == HeaderEdit::Remove),
    }
});
