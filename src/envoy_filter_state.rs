//! The arguments of Envoy's Wasm foreign function `set_envoy_filter_state`,
//! which publishes a typed filter-state object that Envoy's own filters read
//! (RBAC's `filter_state` matcher, access logs' `%FILTER_STATE(...)%`).
//!
//! They are the protobuf message
//! `envoy.source.extensions.common.wasm.SetEnvoyFilterStateArguments`:
//! `string path = 1` (the object factory's name, which is also the key),
//! `string value = 2`, `LifeSpan span = 3`. Three fields need no protobuf
//! library.

/// The foreign function's name.
pub const SET_ENVOY_FILTER_STATE: &str = "set_envoy_filter_state";

/// Envoy's typed IP address object (`Network::IPAddressObject`), matched by
/// RBAC's `filter_state` `address_match`.
pub const IP_OBJECT: &str = "envoy.network.ip";

/// `LifeSpan.DownstreamRequest`: the object lives as long as the request.
const SPAN_REQUEST: u8 = 1;

/// The encoded arguments that publish `value` under `path` for the request.
pub fn request_object(path: &str, value: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(path.len() + value.len() + 8);
    length_delimited(&mut out, 1, path.as_bytes());
    length_delimited(&mut out, 2, value);
    out.push(3 << 3);
    out.push(SPAN_REQUEST);
    out
}

fn length_delimited(out: &mut Vec<u8>, field: u8, bytes: &[u8]) {
    out.push(field << 3 | 2);
    let mut len = bytes.len();
    loop {
        let low = (len & 0x7f) as u8;
        len >>= 7;
        if len == 0 {
            out.push(low);
            break;
        }
        out.push(low | 0x80);
    }
    out.extend_from_slice(bytes);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodes_path_value_and_span() {
        assert_eq!(
            request_object(IP_OBJECT, b"198.51.100.7"),
            [
                &[0x0a, 16][..],
                b"envoy.network.ip",
                &[0x12, 12],
                b"198.51.100.7",
                &[0x18, 1]
            ]
            .concat()
        );
    }

    #[test]
    fn long_values_take_a_varint_length() {
        let value = vec![b'a'; 300];
        let encoded = request_object("p", &value);
        assert_eq!(encoded.get(3..6), Some(&[0x12, 0xac, 0x02][..]));
        assert_eq!(encoded.len(), 3 + 3 + 300 + 2);
    }
}
