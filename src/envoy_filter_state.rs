//! The client as Envoy's typed filter state `envoy.network.ip`, through the
//! Wasm foreign function `set_envoy_filter_state`.
//!
//! Envoy's RBAC (`filter_state` principals with `address_match`), its
//! matchers and access logs (`%FILTER_STATE(envoy.network.ip:PLAIN)%`) read an
//! IP address object stored under `envoy.network.ip`. A Wasm module creates
//! one by calling the foreign function `set_envoy_filter_state` with a
//! serialised `envoy.source.extensions.common.wasm.SetEnvoyFilterStateArguments`
//! (Envoy's `source/extensions/common/wasm/ext/set_envoy_filter_state.proto`):
//!
//! | field | number | type |
//! |---|---|---|
//! | `path` | 1 | string: the filter state key, which is also the name of the object factory |
//! | `value` | 2 | string: the factory's input, here the client's address text |
//! | `span` | 3 | enum `LifeSpan`: `FilterChain` (0), `DownstreamRequest` (1), `DownstreamConnection` (2) |
//!
//! Three fields do not need a protobuf crate: this module writes them by
//! hand, in canonical proto3 form (fields in number order, a zero `span`
//! left out). [`decode`] reads them back, for the tests and the fuzzer.
//!
//! What Envoy answers (`source/extensions/common/wasm/foreign.cc` and
//! `Context::setEnvoyFilterState` in `context.cc`, Envoy 1.40):
//! - arguments that do not parse as the message: `BadArgument`;
//! - no object factory named by `path`: `NotFound`;
//! - the factory refuses `value` (`envoy.network.ip` takes an IPv4 or IPv6
//!   address, without port or brackets): `BadArgument`;
//! - no request stream to store it in (the root context, in
//!   `on_configure`): `NotFound`, checked after the two above;
//! - otherwise `Ok`: the object is stored, mutable, for `span`.
//!
//! A host without the foreign function answers the call itself with
//! `NotFound` (proxy-wasm's `call_foreign_function`). So two calls from the
//! root context, when the plugin is configured, tell whether a host can
//! publish the client, without a request: [`function_probe`] and
//! [`factory_probe`], judged by [`judge_probes`].

use std::fmt;

/// The foreign function's name.
pub const FUNCTION: &str = "set_envoy_filter_state";

/// Envoy's IP address object factory, and the key the object is stored under.
pub const IP_OBJECT: &str = "envoy.network.ip";

/// The proxy-wasm statuses the probes meet.
pub mod status {
    pub const OK: u32 = 0;
    pub const NOT_FOUND: u32 = 1;
    pub const BAD_ARGUMENT: u32 = 2;
}

/// How long Envoy keeps the object (`LifeSpan` in Envoy's
/// `declare_property.proto`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LifeSpan {
    /// The HTTP filter chain of one request: what RBAC, the rate limit
    /// filters and the access log of that request see.
    FilterChain = 0,
    DownstreamRequest = 1,
    DownstreamConnection = 2,
}

const PATH_FIELD: u64 = 1;
const VALUE_FIELD: u64 = 2;
const SPAN_FIELD: u64 = 3;

const WIRE_VARINT: u64 = 0;
const WIRE_FIXED64: u64 = 1;
const WIRE_LEN: u64 = 2;
const WIRE_FIXED32: u64 = 5;

/// The arguments of one call: `path` and `value` as length-delimited fields,
/// `span` as a varint unless it is zero. Written into `out`, which is
/// cleared first, so a caller can reuse one buffer.
pub fn encode_arguments(path: &str, value: &str, span: LifeSpan, out: &mut Vec<u8>) {
    out.clear();
    put_bytes(out, PATH_FIELD, path.as_bytes());
    put_bytes(out, VALUE_FIELD, value.as_bytes());
    if span != LifeSpan::FilterChain {
        put_varint(out, key(SPAN_FIELD, WIRE_VARINT));
        put_varint(out, span as u64);
    }
}

/// The arguments that publish `client` (an address as text, such as
/// `203.0.113.7` or `2001:db8::1`) as `envoy.network.ip` for the request's
/// filter chain.
pub fn client_arguments(client: &str, out: &mut Vec<u8>) {
    encode_arguments(IP_OBJECT, client, LifeSpan::FilterChain, out);
}

/// Start-up probe for the function: bytes that do not parse as the message
/// (a `path` that says it is 5 bytes long and has none). Envoy's function
/// answers `BadArgument`; a host without it, `NotFound`.
pub fn function_probe() -> &'static [u8] {
    &[0x0a, 0x05]
}

/// Start-up probe for the factory: `envoy.network.ip` with a value no IP
/// factory accepts. With the factory, `BadArgument` (the factory refuses the
/// value before Envoy looks for a stream); without it, `NotFound`.
pub fn factory_probe() -> Vec<u8> {
    let mut out = Vec::new();
    encode_arguments(
        IP_OBJECT,
        "client-ip-probe",
        LifeSpan::FilterChain,
        &mut out,
    );
    out
}

/// What the two start-up probes say about a host.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Support {
    /// The function and the factory are both there.
    Ready,
    /// The host has no foreign function `set_envoy_filter_state`.
    FunctionMissing,
    /// The function is there, but the host has no `envoy.network.ip` factory
    /// (Envoy before it was added).
    FactoryMissing,
    /// A status the probes do not expect: which probe, and the status.
    Unexpected { probe: &'static str, status: u32 },
}

/// Judges the statuses of [`function_probe`] and [`factory_probe`], called
/// in that order from the root context.
pub fn judge_probes(function_status: u32, factory_status: u32) -> Support {
    match (function_status, factory_status) {
        (status::BAD_ARGUMENT, status::BAD_ARGUMENT) => Support::Ready,
        (status::NOT_FOUND, _) => Support::FunctionMissing,
        (status::BAD_ARGUMENT, status::NOT_FOUND) => Support::FactoryMissing,
        (status::BAD_ARGUMENT, status) => Support::Unexpected {
            probe: IP_OBJECT,
            status,
        },
        (status, _) => Support::Unexpected {
            probe: FUNCTION,
            status,
        },
    }
}

impl fmt::Display for Support {
    /// The reason a configuration with `publish_ip_filter_state` is refused.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Support::Ready => write!(f, "this host can publish {IP_OBJECT}"),
            Support::FunctionMissing => write!(
                f,
                "this host has no Wasm foreign function `{FUNCTION}`: Envoy's own Wasm filter has it, another proxy-wasm host may not"
            ),
            Support::FactoryMissing => write!(
                f,
                "this host has no filter state object factory `{IP_OBJECT}`: Envoy 1.36 and later have it (Istio 1.28 and later)"
            ),
            Support::Unexpected { probe, status } => write!(
                f,
                "probing `{probe}` returned host status {status}, which this module does not know"
            ),
        }
    }
}

/// A message as [`decode`] reads it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Arguments<'a> {
    pub path: &'a [u8],
    pub value: &'a [u8],
    /// The raw enum number; 0 when absent.
    pub span: u64,
}

/// Why bytes are not a message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DecodeError {
    /// A varint runs past the end or past ten bytes.
    BadVarint,
    /// A length-delimited field runs past the end.
    Truncated,
    /// Field number 0, a group, or a wire type protobuf does not define.
    BadKey,
    /// A known field with the wrong wire type.
    WrongWireType,
}

/// Reads the message as protobuf would: fields in any order, the last one of
/// a repeated field wins, unknown fields are skipped. No panics, no
/// allocation.
pub fn decode(mut bytes: &[u8]) -> Result<Arguments<'_>, DecodeError> {
    let mut args = Arguments {
        path: &[],
        value: &[],
        span: 0,
    };
    while !bytes.is_empty() {
        let tag = take_varint(&mut bytes)?;
        let (field, wire) = (tag >> 3, tag & 7);
        if field == 0 {
            return Err(DecodeError::BadKey);
        }
        match wire {
            WIRE_VARINT => {
                let value = take_varint(&mut bytes)?;
                match field {
                    SPAN_FIELD => args.span = value,
                    PATH_FIELD | VALUE_FIELD => return Err(DecodeError::WrongWireType),
                    _ => {}
                }
            }
            WIRE_LEN => {
                let length = take_varint(&mut bytes)?;
                let length = usize::try_from(length).map_err(|_| DecodeError::Truncated)?;
                if length > bytes.len() {
                    return Err(DecodeError::Truncated);
                }
                let (field_bytes, rest) = bytes.split_at(length);
                bytes = rest;
                match field {
                    PATH_FIELD => args.path = field_bytes,
                    VALUE_FIELD => args.value = field_bytes,
                    SPAN_FIELD => return Err(DecodeError::WrongWireType),
                    _ => {}
                }
            }
            WIRE_FIXED64 | WIRE_FIXED32 => {
                let width = if wire == WIRE_FIXED64 { 8 } else { 4 };
                if matches!(field, PATH_FIELD | VALUE_FIELD | SPAN_FIELD) {
                    return Err(DecodeError::WrongWireType);
                }
                if width > bytes.len() {
                    return Err(DecodeError::Truncated);
                }
                bytes = bytes.get(width..).unwrap_or_default();
            }
            _ => return Err(DecodeError::BadKey),
        }
    }
    Ok(args)
}

fn key(field: u64, wire: u64) -> u64 {
    (field << 3) | wire
}

fn put_varint(out: &mut Vec<u8>, mut value: u64) {
    while value >= 0x80 {
        out.push((value as u8) | 0x80);
        value >>= 7;
    }
    out.push(value as u8);
}

fn put_bytes(out: &mut Vec<u8>, field: u64, bytes: &[u8]) {
    put_varint(out, key(field, WIRE_LEN));
    put_varint(out, bytes.len() as u64);
    out.extend_from_slice(bytes);
}

fn take_varint(bytes: &mut &[u8]) -> Result<u64, DecodeError> {
    let mut value: u64 = 0;
    for (index, byte) in bytes.iter().enumerate().take(10) {
        let low = u64::from(byte & 0x7f);
        // The tenth byte may carry only the top bit of a u64.
        if index == 9 && low > 1 {
            return Err(DecodeError::BadVarint);
        }
        value |= low << (7 * index);
        if byte & 0x80 == 0 {
            *bytes = bytes.get(index + 1..).unwrap_or_default();
            return Ok(value);
        }
    }
    Err(DecodeError::BadVarint)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn encoded(path: &str, value: &str, span: LifeSpan) -> Vec<u8> {
        let mut out = vec![0xff; 3];
        encode_arguments(path, value, span, &mut out);
        out
    }

    #[test]
    fn the_client_message_byte_by_byte() {
        let mut out = Vec::new();
        client_arguments("198.51.100.7", &mut out);
        let mut expected = vec![0x0a, 16];
        expected.extend_from_slice(b"envoy.network.ip");
        expected.extend_from_slice(&[0x12, 12]);
        expected.extend_from_slice(b"198.51.100.7");
        assert_eq!(out, expected);
    }

    #[test]
    fn an_ipv6_client_and_a_reused_buffer() {
        let mut out = b"left over from the last request".to_vec();
        client_arguments("2001:db8::1", &mut out);
        assert_eq!(
            decode(&out),
            Ok(Arguments {
                path: b"envoy.network.ip",
                value: b"2001:db8::1",
                span: 0
            })
        );
        assert_eq!(out.len(), 2 + 16 + 2 + 11);
    }

    #[test]
    fn a_span_other_than_the_filter_chain_is_written_last() {
        let out = encoded("k", "v", LifeSpan::DownstreamConnection);
        assert_eq!(out, [0x0a, 1, b'k', 0x12, 1, b'v', 0x18, 2]);
        let out = encoded("k", "v", LifeSpan::DownstreamRequest);
        assert_eq!(out.get(6..), Some([0x18, 1].as_slice()));
    }

    #[test]
    fn long_fields_get_multi_byte_lengths() {
        let value = "a".repeat(300);
        let out = encoded("p", &value, LifeSpan::FilterChain);
        // 300 = 0b10_0101100: 0xac 0x02.
        assert_eq!(out.get(3..6), Some([0x12, 0xac, 0x02].as_slice()));
        assert_eq!(decode(&out).map(|a| a.value.len()), Ok(300));
    }

    #[test]
    fn empty_strings_are_still_written() {
        assert_eq!(encoded("", "", LifeSpan::FilterChain), [0x0a, 0, 0x12, 0]);
    }

    #[test]
    fn the_function_probe_does_not_parse() {
        assert_eq!(decode(function_probe()), Err(DecodeError::Truncated));
    }

    #[test]
    fn the_factory_probe_names_the_factory_with_a_value_that_is_no_address() {
        let probe = factory_probe();
        let args = decode(&probe).unwrap();
        assert_eq!(args.path, IP_OBJECT.as_bytes());
        let value = std::str::from_utf8(args.value).unwrap();
        assert!(value.parse::<std::net::IpAddr>().is_err());
        assert_eq!(args.span, 0);
    }

    #[test]
    fn probe_statuses() {
        use status::*;
        assert_eq!(judge_probes(BAD_ARGUMENT, BAD_ARGUMENT), Support::Ready);
        assert_eq!(judge_probes(NOT_FOUND, NOT_FOUND), Support::FunctionMissing);
        assert_eq!(
            judge_probes(BAD_ARGUMENT, NOT_FOUND),
            Support::FactoryMissing
        );
        assert_eq!(
            judge_probes(BAD_ARGUMENT, OK),
            Support::Unexpected {
                probe: IP_OBJECT,
                status: OK
            }
        );
        assert_eq!(
            judge_probes(10, BAD_ARGUMENT),
            Support::Unexpected {
                probe: FUNCTION,
                status: 10
            }
        );
        // Each refusal is one line that names what is missing.
        for support in [
            Support::FunctionMissing,
            Support::FactoryMissing,
            judge_probes(OK, OK),
        ] {
            let line = support.to_string();
            assert!(!line.contains('\n'), "{line}");
        }
        assert!(Support::FactoryMissing.to_string().contains(IP_OBJECT));
        assert!(Support::FunctionMissing.to_string().contains(FUNCTION));
    }

    #[test]
    fn decode_reads_fields_as_protobuf_does() {
        // Out of order, repeated (the last wins), with unknown fields of
        // every wire type between them.
        let bytes = [
            0x18, 1, // span = 1
            0x12, 1, b'x', // value = "x"
            0x20, 0x96, 0x01, // field 4, varint
            0x29, 1, 2, 3, 4, 5, 6, 7, 8, // field 5, fixed64
            0x35, 1, 2, 3, 4, // field 6, fixed32
            0x3a, 2, b'?', b'?', // field 7, bytes
            0x0a, 1, b'p', // path = "p"
            0x12, 1, b'y', // value = "y"
        ];
        assert_eq!(
            decode(&bytes),
            Ok(Arguments {
                path: b"p",
                value: b"y",
                span: 1
            })
        );
        assert_eq!(
            decode(&[]),
            Ok(Arguments {
                path: b"",
                value: b"",
                span: 0
            })
        );
    }

    #[test]
    fn decode_refuses_what_protobuf_refuses() {
        for (bytes, error) in [
            (&[0x0a][..], DecodeError::BadVarint),
            (&[0x0a, 0x80][..], DecodeError::BadVarint),
            (&[0x0a, 3, b'a'][..], DecodeError::Truncated),
            (&[0x02, 0][..], DecodeError::BadKey),
            (&[0x0b][..], DecodeError::BadKey),
            (&[0x0f][..], DecodeError::BadKey),
            (&[0x08, 1][..], DecodeError::WrongWireType),
            (&[0x1a, 0][..], DecodeError::WrongWireType),
            (&[0x0d, 0, 0, 0, 0][..], DecodeError::WrongWireType),
            (&[0x2d, 0, 0][..], DecodeError::Truncated),
            (
                &[
                    0x20, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x02,
                ][..],
                DecodeError::BadVarint,
            ),
        ] {
            assert_eq!(decode(bytes), Err(error), "{bytes:02x?}");
        }
        // The largest varint there is still reads.
        let max = [
            0x20, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01,
        ];
        assert!(decode(&max).is_ok());
    }
}

#[cfg(all(test, not(target_arch = "wasm32")))]
mod properties {
    use super::*;
    use proptest::prelude::*;
    use std::net::IpAddr;

    fn span() -> impl Strategy<Value = LifeSpan> {
        prop_oneof![
            Just(LifeSpan::FilterChain),
            Just(LifeSpan::DownstreamRequest),
            Just(LifeSpan::DownstreamConnection),
        ]
    }

    proptest! {
        #[test]
        fn every_message_reads_back_as_written(path in ".{0,200}", value in ".{0,400}", span in span()) {
            let mut out = Vec::new();
            encode_arguments(&path, &value, span, &mut out);
            prop_assert_eq!(
                decode(&out),
                Ok(Arguments { path: path.as_bytes(), value: value.as_bytes(), span: span as u64 })
            );
        }

        #[test]
        fn every_client_reads_back_under_the_ip_factory(ip in any::<IpAddr>()) {
            let text = ip.to_string();
            let mut out = Vec::new();
            client_arguments(&text, &mut out);
            let args = decode(&out).unwrap();
            prop_assert_eq!(args.path, IP_OBJECT.as_bytes());
            prop_assert_eq!(args.value, text.as_bytes());
            // Canonical and small: two short length prefixes, no span.
            prop_assert_eq!(out.len(), 4 + IP_OBJECT.len() + text.len());
        }

        #[test]
        fn decode_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
            let _ = decode(&bytes);
        }

        #[test]
        fn a_decoded_message_encodes_back_to_what_decode_reads(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
            if let Ok(args) = decode(&bytes) {
                if let (Ok(path), Ok(value), Some(span)) = (
                    std::str::from_utf8(args.path),
                    std::str::from_utf8(args.value),
                    match args.span { 0 => Some(LifeSpan::FilterChain), 1 => Some(LifeSpan::DownstreamRequest), 2 => Some(LifeSpan::DownstreamConnection), _ => None },
                ) {
                    let mut out = Vec::new();
                    encode_arguments(path, value, span, &mut out);
                    prop_assert_eq!(decode(&out), Ok(args));
                }
            }
        }
    }
}
