//! The `set_envoy_filter_state` arguments: any bytes decode without a panic
//! and whatever decodes encodes back to the same message; any address the
//! filter accepts is published under `envoy.network.ip` as the text it
//! writes in the client header.
#![no_main]

use client_ip::address::{parse_forwarded_entry, IpText};
use client_ip::envoy_filter_state::{
    client_arguments, decode, encode_arguments, LifeSpan, IP_OBJECT,
};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut out = Vec::new();
    if let Ok(args) = decode(data) {
        let span = match args.span {
            0 => Some(LifeSpan::FilterChain),
            1 => Some(LifeSpan::DownstreamRequest),
            2 => Some(LifeSpan::DownstreamConnection),
            _ => None,
        };
        if let (Ok(path), Ok(value), Some(span)) = (
            std::str::from_utf8(args.path),
            std::str::from_utf8(args.value),
            span,
        ) {
            encode_arguments(path, value, span, &mut out);
            assert_eq!(decode(&out), Ok(args));
        }
    }
    if let Some(ip) = parse_forwarded_entry(data) {
        let text = IpText::new(ip);
        client_arguments(text.as_str(), &mut out);
        let args = decode(&out).expect("client arguments decode");
        assert_eq!(args.path, IP_OBJECT.as_bytes());
        assert_eq!(args.value, text.as_bytes());
        assert_eq!(args.span, 0);
    }
});
