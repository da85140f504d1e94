//! The resolution rules as a table of cases, plus the config and rewrite
//! behaviour that depends on them.
//!
//! The same file runs on the host (`cargo test`) and compiled to wasm32 under
//! Node with wasm-bindgen-test (`make test-wasm`), where `#[test]` below is
//! wasm-bindgen-test's attribute: the logic is proven on the target word size.

#[cfg(target_arch = "wasm32")]
use wasm_bindgen_test::wasm_bindgen_test as test;

use std::net::IpAddr;

use client_ip::address::IpText;
use client_ip::config::ClientIpSource;
use client_ip::config::{FilterConfig, ForwardedMode, XffMode};
use client_ip::identity::{IdentityPattern, TrustedIdentities};
use client_ip::resolve::{resolve_client, resolve_client_from, ClientOrigin, Resolution};
use client_ip::rewrite::{forwarded_edit, forwarded_for_edit, HeaderEdit};
use client_ip::trust::{TrustPolicy, MAX_FORWARDED_ENTRIES};

struct Case {
    name: &'static str,
    trusted_proxies: &'static [&'static str],
    trusted_hops: usize,
    trusted_identities: &'static [&'static str],
    peer: Option<&'static str>,
    /// The URI SAN of the peer's certificate.
    identity: Option<&'static str>,
    /// `client_ip_source`; `xff` is that header's value.
    source: &'static str,
    xff: Option<&'static str>,
    client: Option<&'static str>,
    origin: ClientOrigin,
    invalid_entries: u32,
    peer_trusted_by_identity: bool,
    source_missing: bool,
}

const fn case(name: &'static str) -> Case {
    Case {
        name,
        trusted_proxies: &[],
        trusted_hops: 0,
        trusted_identities: &[],
        peer: Some("127.0.0.5"),
        identity: None,
        source: "x-forwarded-for",
        xff: None,
        client: Some("127.0.0.5"),
        origin: ClientOrigin::Peer,
        invalid_entries: 0,
        peer_trusted_by_identity: false,
        source_missing: false,
    }
}

use ClientOrigin::{TrustedHops, TrustedProxies, Unknown};

const TRUST_LOOPBACK: &[&str] = &["127.0.0.0/8", "::1"];
const GATEWAY_PRINCIPAL: &[&str] =
    &["cluster.local/ns/istio-system/sa/istio-ingressgateway-service-account"];
const GATEWAY_SAN: Option<&str> =
    Some("spiffe://cluster.local/ns/istio-system/sa/istio-ingressgateway-service-account");

const CASES: &[Case] = &[
    // Rule 4: an untrusted peer is the client; nothing it sent is believed.
    Case {
        xff: Some("6.6.6.6"),
        ..case("untrusted peer, forged XFF ignored")
    },
    Case {
        xff: Some("1.1.1.1, 2.2.2.2"),
        ..case("untrusted peer, forged chain ignored")
    },
    Case {
        trusted_proxies: &["10.0.0.0/8"],
        xff: Some("10.0.0.1"),
        ..case("peer outside trusted_proxies")
    },
    Case {
        peer: Some("::1"),
        client: Some("::1"),
        xff: Some("6.6.6.6"),
        ..case("IPv6 peer")
    },
    Case {
        peer: None,
        xff: Some("6.6.6.6"),
        client: None,
        origin: Unknown,
        ..case("unknown peer, no trust")
    },
    // Rule 2: trusted hops.
    Case {
        trusted_hops: 1,
        xff: Some("1.1.1.1, 2.2.2.2"),
        client: Some("2.2.2.2"),
        origin: TrustedHops,
        ..case("hops 1 takes the rightmost")
    },
    Case {
        trusted_hops: 2,
        xff: Some("1.1.1.1, 2.2.2.2"),
        client: Some("1.1.1.1"),
        origin: TrustedHops,
        ..case("hops 2 takes the second from the right")
    },
    Case {
        trusted_hops: 2,
        xff: Some("0.0.0.1,1.1.1.1 , 2.2.2.2"),
        client: Some("1.1.1.1"),
        origin: TrustedHops,
        ..case("hops ignore entries further left")
    },
    Case {
        trusted_hops: 3,
        xff: Some("1.1.1.1, 2.2.2.2"),
        ..case("hops beyond the chain fall back to the peer")
    },
    Case {
        trusted_hops: 1,
        source_missing: true,
        ..case("hops without XFF fall back to the peer")
    },
    Case {
        trusted_hops: 1,
        xff: Some("  "),
        source_missing: true,
        ..case("hops with blank XFF fall back to the peer")
    },
    Case {
        trusted_hops: 2,
        xff: Some("1.1.1.1, unknown, 2.2.2.2"),
        invalid_entries: 1,
        ..case("hops landing on junk fall back to the peer")
    },
    Case {
        trusted_hops: 1,
        xff: Some("1.1.1.1, "),
        invalid_entries: 1,
        ..case("hops landing on an empty entry fall back to the peer")
    },
    Case {
        trusted_hops: 1,
        xff: Some("[2001:db8::7]:443"),
        client: Some("2001:db8::7"),
        origin: TrustedHops,
        ..case("hops accept bracketed IPv6 with port")
    },
    Case {
        trusted_hops: 1,
        xff: Some("1.2.3.4:5678"),
        client: Some("1.2.3.4"),
        origin: TrustedHops,
        ..case("hops accept IPv4 with port")
    },
    Case {
        trusted_hops: 1,
        peer: None,
        xff: Some("1.1.1.1"),
        client: Some("1.1.1.1"),
        origin: TrustedHops,
        ..case("hops need no peer")
    },
    Case {
        trusted_hops: 1,
        trusted_proxies: TRUST_LOOPBACK,
        xff: Some("1.1.1.1, 2.2.2.2"),
        client: Some("2.2.2.2"),
        origin: TrustedHops,
        ..case("hops take precedence over trusted_proxies")
    },
    // Rule 3: walk through trusted proxies.
    Case {
        trusted_proxies: TRUST_LOOPBACK,
        xff: Some("9.9.9.9"),
        client: Some("9.9.9.9"),
        origin: TrustedProxies,
        ..case("trusted peer names the client")
    },
    Case {
        trusted_proxies: TRUST_LOOPBACK,
        xff: Some("9.9.9.9, 8.8.8.8"),
        client: Some("8.8.8.8"),
        origin: TrustedProxies,
        ..case("first untrusted from the right wins")
    },
    Case {
        trusted_proxies: &["127.0.0.0/8", "10.0.0.0/8"],
        xff: Some("9.9.9.9, 10.1.1.1, 10.2.2.2"),
        client: Some("9.9.9.9"),
        origin: TrustedProxies,
        ..case("trusted hops in the chain are skipped")
    },
    Case {
        trusted_proxies: &["127.0.0.0/8", "10.0.0.0/8"],
        xff: Some("10.3.3.3,10.1.1.1"),
        client: Some("10.3.3.3"),
        origin: TrustedProxies,
        ..case("all trusted: the leftmost")
    },
    Case {
        trusted_proxies: &["127.0.0.0/8", "10.0.0.0/8"],
        xff: Some("9.9.9.9, garbage, 10.1.1.1"),
        client: Some("10.1.1.1"),
        origin: TrustedProxies,
        invalid_entries: 1,
        ..case("junk ends the walk at the nearest verified")
    },
    Case {
        trusted_proxies: TRUST_LOOPBACK,
        xff: Some("9.9.9.9, unknown"),
        invalid_entries: 1,
        ..case("junk at the right end leaves the peer")
    },
    Case {
        trusted_proxies: TRUST_LOOPBACK,
        xff: Some("9.9.9.9,"),
        invalid_entries: 1,
        ..case("trailing comma is an invalid entry")
    },
    Case {
        trusted_proxies: TRUST_LOOPBACK,
        xff: Some(" 9.9.9.9 ,\t8.8.8.8 "),
        client: Some("8.8.8.8"),
        origin: TrustedProxies,
        ..case("entries are trimmed")
    },
    Case {
        trusted_proxies: TRUST_LOOPBACK,
        xff: Some("fe80::1%eth0"),
        invalid_entries: 1,
        ..case("zone ids are invalid")
    },
    Case {
        trusted_proxies: TRUST_LOOPBACK,
        xff: Some("_gw1"),
        invalid_entries: 1,
        ..case("obfuscated identifiers are invalid")
    },
    Case {
        trusted_proxies: TRUST_LOOPBACK,
        xff: Some("::ffff:9.9.9.9"),
        client: Some("9.9.9.9"),
        origin: TrustedProxies,
        ..case("mapped IPv6 becomes IPv4")
    },
    Case {
        trusted_proxies: TRUST_LOOPBACK,
        peer: Some("::1"),
        xff: Some("2001:db8::1"),
        client: Some("2001:db8::1"),
        origin: TrustedProxies,
        ..case("IPv6 trusted peer")
    },
    Case {
        trusted_proxies: &["::ffff:127.0.0.0/104"],
        xff: Some("9.9.9.9"),
        client: Some("9.9.9.9"),
        origin: TrustedProxies,
        ..case("mapped trusted range matches IPv4 peer")
    },
    Case {
        trusted_proxies: TRUST_LOOPBACK,
        xff: Some(""),
        source_missing: true,
        ..case("empty XFF from a trusted peer")
    },
    Case {
        trusted_proxies: TRUST_LOOPBACK,
        source_missing: true,
        ..case("no XFF from a trusted peer")
    },
    Case {
        trusted_proxies: TRUST_LOOPBACK,
        peer: None,
        xff: Some("9.9.9.9"),
        client: None,
        origin: Unknown,
        ..case("unknown peer is never trusted")
    },
    // Rule 3 by identity: the peer's mTLS identity, whatever its address.
    Case {
        trusted_identities: GATEWAY_PRINCIPAL,
        identity: GATEWAY_SAN,
        xff: Some("6.6.6.6, 9.9.9.9"),
        client: Some("9.9.9.9"),
        origin: TrustedProxies,
        peer_trusted_by_identity: true,
        ..case("trusted identity names the client")
    },
    Case {
        trusted_identities: &["spiffe://cluster.local/ns/istio-system/*"],
        identity: GATEWAY_SAN,
        xff: Some("9.9.9.9"),
        client: Some("9.9.9.9"),
        origin: TrustedProxies,
        peer_trusted_by_identity: true,
        ..case("trusted namespace, spiffe form")
    },
    Case {
        trusted_identities: GATEWAY_PRINCIPAL,
        identity: Some("spiffe://cluster.local/ns/default/sa/rogue"),
        xff: Some("6.6.6.6"),
        ..case("another identity is not trusted")
    },
    Case {
        trusted_identities: GATEWAY_PRINCIPAL,
        xff: Some("6.6.6.6"),
        ..case("no client certificate, no identity")
    },
    Case {
        trusted_identities: GATEWAY_PRINCIPAL,
        identity: Some("cluster.local/ns/istio-system/sa/istio-ingressgateway-service-account"),
        xff: Some("6.6.6.6"),
        ..case("a URI that is not spiffe:// is no identity")
    },
    Case {
        trusted_identities: GATEWAY_PRINCIPAL,
        trusted_proxies: &["10.0.0.0/8"],
        identity: GATEWAY_SAN,
        xff: Some("9.9.9.9, 10.1.1.1"),
        client: Some("9.9.9.9"),
        origin: TrustedProxies,
        peer_trusted_by_identity: true,
        ..case("entries left of an identity are judged by address")
    },
    Case {
        trusted_identities: GATEWAY_PRINCIPAL,
        identity: GATEWAY_SAN,
        xff: Some("10.1.1.1"),
        client: Some("10.1.1.1"),
        origin: TrustedProxies,
        peer_trusted_by_identity: true,
        ..case("an identity vouches for its peer alone")
    },
    Case {
        trusted_identities: GATEWAY_PRINCIPAL,
        identity: GATEWAY_SAN,
        xff: Some("9.9.9.9, unknown"),
        invalid_entries: 1,
        peer_trusted_by_identity: true,
        ..case("junk from a trusted identity leaves the peer")
    },
    Case {
        trusted_identities: GATEWAY_PRINCIPAL,
        trusted_proxies: TRUST_LOOPBACK,
        identity: GATEWAY_SAN,
        xff: Some("9.9.9.9"),
        client: Some("9.9.9.9"),
        origin: TrustedProxies,
        ..case("an address that decides leaves the identity unread")
    },
    Case {
        trusted_identities: GATEWAY_PRINCIPAL,
        identity: GATEWAY_SAN,
        peer: None,
        xff: Some("9.9.9.9"),
        client: Some("9.9.9.9"),
        origin: TrustedProxies,
        peer_trusted_by_identity: true,
        ..case("identity trusts a peer whose address is unknown")
    },
    // Other sources: RFC 7239 Forwarded, walked like X-Forwarded-For.
    Case {
        source: "forwarded",
        trusted_proxies: &["127.0.0.0/8", "10.0.0.0/8"],
        xff: Some(r#"for=6.6.6.6, For="[2001:db8::7]:4711";proto=https, for=10.1.1.1"#),
        client: Some("2001:db8::7"),
        origin: TrustedProxies,
        ..case("Forwarded: the first untrusted for= from the right")
    },
    Case {
        source: "forwarded",
        trusted_proxies: TRUST_LOOPBACK,
        xff: Some("for=9.9.9.9, for=_hidden"),
        invalid_entries: 1,
        ..case("Forwarded: an obfuscated node ends the walk")
    },
    Case {
        source: "forwarded",
        trusted_proxies: TRUST_LOOPBACK,
        xff: Some("for=9.9.9.9, for=unknown"),
        invalid_entries: 1,
        ..case("Forwarded: unknown ends the walk")
    },
    Case {
        source: "forwarded",
        xff: Some("for=6.6.6.6"),
        ..case("Forwarded from an untrusted peer is never read")
    },
    Case {
        source: "forwarded",
        trusted_hops: 2,
        xff: Some("for=1.1.1.1;proto=http, for=2.2.2.2"),
        client: Some("1.1.1.1"),
        origin: TrustedHops,
        ..case("Forwarded: hops count for= elements")
    },
    Case {
        source: "forwarded",
        trusted_proxies: TRUST_LOOPBACK,
        source_missing: true,
        ..case("Forwarded missing from a trusted peer")
    },
    // A header with one address, from a trusted peer (a CDN, say).
    Case {
        source: "cf-connecting-ip",
        trusted_proxies: TRUST_LOOPBACK,
        xff: Some("198.51.100.7"),
        client: Some("198.51.100.7"),
        origin: TrustedProxies,
        ..case("single header from a trusted peer")
    },
    Case {
        source: "cf-connecting-ip",
        trusted_proxies: TRUST_LOOPBACK,
        xff: Some("[2001:db8::9]:443"),
        client: Some("2001:db8::9"),
        origin: TrustedProxies,
        ..case("single header, bracketed IPv6 with port")
    },
    Case {
        source: "cf-connecting-ip",
        trusted_proxies: TRUST_LOOPBACK,
        xff: Some("198.51.100.7, 6.6.6.6"),
        invalid_entries: 1,
        ..case("single header with two addresses is invalid")
    },
    Case {
        source: "cf-connecting-ip",
        trusted_proxies: TRUST_LOOPBACK,
        xff: Some("unknown"),
        invalid_entries: 1,
        ..case("single header that is no address")
    },
    Case {
        source: "cf-connecting-ip",
        trusted_proxies: TRUST_LOOPBACK,
        source_missing: true,
        ..case("single header missing from a trusted peer")
    },
    Case {
        source: "cf-connecting-ip",
        trusted_proxies: &["10.0.0.0/8"],
        xff: Some("198.51.100.7"),
        ..case("single header from an untrusted peer is never read")
    },
    Case {
        source: "x-real-ip",
        trusted_identities: GATEWAY_PRINCIPAL,
        identity: GATEWAY_SAN,
        xff: Some("198.51.100.8"),
        client: Some("198.51.100.8"),
        origin: TrustedProxies,
        peer_trusted_by_identity: true,
        ..case("single header from a trusted identity")
    },
];

fn policy(case: &Case) -> TrustPolicy {
    // Through the config parser, so ranges are normalised as in the filter.
    let nets = case
        .trusted_proxies
        .iter()
        .map(|text| {
            let json = format!("{{\"trusted_proxies\":[\"{text}\"]}}");
            FilterConfig::from_json(json.as_bytes())
                .unwrap()
                .trusted_proxies[0]
        })
        .collect::<Vec<_>>();
    TrustPolicy::new(
        &nets,
        case.trusted_hops,
        TrustedIdentities::new(
            case.trusted_identities
                .iter()
                .map(|entry| IdentityPattern::parse(entry).unwrap())
                .collect(),
        ),
    )
}

fn source(case: &Case) -> ClientIpSource {
    let json = format!("{{\"client_ip_source\":\"{}\"}}", case.source);
    FilterConfig::from_json(json.as_bytes()).unwrap().source
}

fn no_identity() -> Option<&'static str> {
    None
}

fn ip(text: &str) -> IpAddr {
    text.parse().unwrap()
}

#[test]
fn resolution_rules() {
    for case in CASES {
        let policy = policy(case);
        let mut identity_reads = 0;
        let source = source(case);
        let got = resolve_client_from(
            &policy,
            case.peer.map(ip),
            || {
                identity_reads += 1;
                case.identity
            },
            &source,
            || case.xff.map(str::as_bytes),
        );
        let want = Resolution {
            client: case.client.map(ip),
            origin: case.origin,
            invalid_entries: case.invalid_entries,
            peer_trusted_by_identity: case.peer_trusted_by_identity,
            source_missing: case.source_missing,
        };
        assert_eq!(got, want, "case: {}", case.name);
        // The identity costs a host call: read only when it can decide.
        let address_decides = case
            .peer
            .map(ip)
            .is_some_and(|peer| policy.is_trusted(peer));
        let may_read =
            !policy.trusted_identities.is_empty() && policy.trusted_hops == 0 && !address_decides;
        assert_eq!(identity_reads, usize::from(may_read), "case: {}", case.name);
    }
}

#[test]
fn repeated_headers_as_envoy_joins_them() {
    // Envoy joins repeated X-Forwarded-For headers with "," before filters run.
    let policy = policy(&Case {
        trusted_proxies: TRUST_LOOPBACK,
        ..case("")
    });
    let joined = "9.9.9.9, 10.0.0.1,127.0.0.9";
    let got = resolve_client(
        &policy,
        Some(ip("127.0.0.5")),
        no_identity,
        Some(joined.as_bytes()),
    );
    assert_eq!(got.client, Some(ip("10.0.0.1")));
}

#[test]
fn the_walk_is_capped() {
    let policy = policy(&Case {
        trusted_proxies: TRUST_LOOPBACK,
        ..case("")
    });
    let chain = vec!["127.0.0.1"; MAX_FORWARDED_ENTRIES + 5].join(",");
    let xff = format!("9.9.9.9,{chain}");
    let got = resolve_client(
        &policy,
        Some(ip("127.0.0.5")),
        no_identity,
        Some(xff.as_bytes()),
    );
    assert_eq!(got.client, Some(ip("127.0.0.1")));
    assert_eq!(got.origin, TrustedProxies);
}

#[test]
fn rewrites_per_mode() {
    let received = Some(b"6.6.6.6".as_slice());
    let peer = Some(ip("127.0.0.5"));
    let client_text = peer.map(IpText::new);
    let client = client_text.as_ref();
    assert_eq!(
        forwarded_for_edit(XffMode::Append, received, false, peer, client),
        HeaderEdit::Set(b"6.6.6.6,127.0.0.5".to_vec())
    );
    assert_eq!(
        forwarded_for_edit(XffMode::Overwrite, received, false, peer, client),
        HeaderEdit::Set(b"127.0.0.5".to_vec())
    );
    assert_eq!(
        forwarded_for_edit(XffMode::Preserve, received, false, peer, client),
        HeaderEdit::Keep
    );
    assert_eq!(
        forwarded_edit(ForwardedMode::Overwrite, client),
        HeaderEdit::Set(b"for=127.0.0.5".to_vec())
    );
    assert_eq!(
        forwarded_edit(ForwardedMode::Overwrite, Some(&IpText::new(ip("::1")))),
        HeaderEdit::Set(b"for=\"[::1]\"".to_vec())
    );
}

#[test]
fn config_errors_name_field_and_value() {
    let error = FilterConfig::from_json(br#"{"trusted_hops":4294967295}"#).unwrap_err();
    assert_eq!(error.field, "trusted_hops");
    assert!(error.problem.contains("4294967295"), "{error}");
    let error = FilterConfig::from_json(br#"{"trusted_hops":4294967296}"#).unwrap_err();
    assert_eq!(error.field, "trusted_hops");
    assert!(error.problem.contains("4294967296"), "{error}");
}
