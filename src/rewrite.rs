//! What the request carries on to the application once the client is known.

use std::net::IpAddr;

use crate::address::{parse_forwarded_entry, IpText};
use crate::config::{ForwardedMode, XffMode};

/// A change to one request header.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HeaderEdit {
    Keep,
    /// Replace every instance with this one value.
    Set(Vec<u8>),
    Remove,
}

/// With `use_remote_address: true` Envoy appends the peer to X-Forwarded-For
/// before any filter runs. Given the value the filter sees and the peer,
/// returns the value as it arrived on the wire, or `None` when the rightmost
/// entry is not the peer. A peer that names itself there says nothing the
/// rules do not already know, so dropping that entry is harmless whoever
/// wrote it.
pub fn strip_envoy_append(forwarded_for: &[u8], peer: IpAddr) -> Option<&[u8]> {
    let (received, last) = match forwarded_for.iter().rposition(|&b| b == b',') {
        Some(comma) => (
            forwarded_for.get(..comma)?,
            forwarded_for.get(comma.checked_add(1)?..)?,
        ),
        None => (&[][..], forwarded_for),
    };
    (parse_forwarded_entry(last) == Some(peer)).then_some(received)
}

/// The X-Forwarded-For that leaves the filter.
///
/// - `append`: the received value followed by the peer, or the peer alone,
///   as Envoy's `use_remote_address: true` appends the peer (for a loopback
///   peer Envoy appends its own local address instead; the filter always
///   appends the peer). Kept as it is when Envoy has appended the peer
///   already, or when the peer is unknown.
/// - `overwrite`: the resolved client alone; removed if there is no client.
/// - `preserve`: kept as received.
///
/// The client comes already written out: the filter writes the same text to
/// several places.
pub fn forwarded_for_edit(
    mode: XffMode,
    received: Option<&[u8]>,
    envoy_appended: bool,
    peer: Option<IpAddr>,
    client: Option<&IpText>,
) -> HeaderEdit {
    match mode {
        XffMode::Preserve => HeaderEdit::Keep,
        XffMode::Append => {
            let Some(peer) = peer.filter(|_| !envoy_appended) else {
                return HeaderEdit::Keep;
            };
            let received = received.map(<[u8]>::trim_ascii).unwrap_or_default();
            // The client is most often the peer itself, already written out.
            let written;
            let peer = match client {
                Some(client) if client.ip() == peer => client,
                _ => {
                    written = IpText::new(peer);
                    &written
                }
            };
            let mut value = Vec::with_capacity(received.len() + 1 + peer.as_bytes().len());
            if !received.is_empty() {
                value.extend_from_slice(received);
                // Envoy joins with a bare comma when it appends.
                value.push(b',');
            }
            value.extend_from_slice(peer.as_bytes());
            HeaderEdit::Set(value)
        }
        XffMode::Overwrite => match client {
            Some(client) => HeaderEdit::Set(client.as_bytes().to_vec()),
            None => HeaderEdit::Remove,
        },
    }
}

/// The `Forwarded` header that leaves the filter.
///
/// - `overwrite`: `for=` the resolved client alone (RFC 7239; an IPv6 address
///   is bracketed and quoted: `for="[2001:db8::1]"`); removed if there is no
///   client.
/// - `remove`: removed.
/// - `preserve`: kept as received.
pub fn forwarded_edit(mode: ForwardedMode, client: Option<&IpText>) -> HeaderEdit {
    match (mode, client) {
        (ForwardedMode::Preserve, _) => HeaderEdit::Keep,
        (ForwardedMode::Remove, _) | (ForwardedMode::Overwrite, None) => HeaderEdit::Remove,
        (ForwardedMode::Overwrite, Some(client)) => {
            let (open, close): (&[u8], &[u8]) = match client.ip() {
                IpAddr::V4(_) => (b"for=", b""),
                IpAddr::V6(_) => (b"for=\"[", b"]\""),
            };
            HeaderEdit::Set([open, client.as_bytes(), close].concat())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> Option<IpAddr> {
        Some(s.parse().unwrap())
    }

    fn text(s: &str) -> Option<IpText> {
        ip(s).map(IpText::new)
    }

    #[test]
    fn append_adds_the_peer_like_envoy() {
        let edit = forwarded_for_edit(
            XffMode::Append,
            Some(b"1.1.1.1, 2.2.2.2 "),
            false,
            ip("127.0.0.5"),
            text("1.1.1.1").as_ref(),
        );
        assert_eq!(
            edit,
            HeaderEdit::Set(b"1.1.1.1, 2.2.2.2,127.0.0.5".to_vec())
        );
        let edit = forwarded_for_edit(
            XffMode::Append,
            None,
            false,
            ip("::1"),
            text("::1").as_ref(),
        );
        assert_eq!(edit, HeaderEdit::Set(b"::1".to_vec()));
        let edit = forwarded_for_edit(
            XffMode::Append,
            Some(b"  "),
            false,
            ip("127.0.0.5"),
            text("127.0.0.5").as_ref(),
        );
        assert_eq!(edit, HeaderEdit::Set(b"127.0.0.5".to_vec()));
        let edit = forwarded_for_edit(XffMode::Append, Some(b"1.1.1.1"), false, None, None);
        assert_eq!(edit, HeaderEdit::Keep);
    }

    #[test]
    fn overwrite_leaves_the_client_alone() {
        let edit = forwarded_for_edit(
            XffMode::Overwrite,
            Some(b"6.6.6.6"),
            false,
            ip("127.0.0.5"),
            text("127.0.0.5").as_ref(),
        );
        assert_eq!(edit, HeaderEdit::Set(b"127.0.0.5".to_vec()));
        let edit = forwarded_for_edit(XffMode::Overwrite, Some(b"6.6.6.6"), false, None, None);
        assert_eq!(edit, HeaderEdit::Remove);
    }

    #[test]
    fn envoy_append_is_recognised_and_not_repeated() {
        assert_eq!(
            strip_envoy_append(b"6.6.6.6, 127.0.0.5", ip("127.0.0.5").unwrap()),
            Some(&b"6.6.6.6"[..])
        );
        assert_eq!(
            strip_envoy_append(b"127.0.0.5", ip("127.0.0.5").unwrap()),
            Some(&b""[..])
        );
        assert_eq!(
            strip_envoy_append(b"127.0.0.5, 6.6.6.6", ip("127.0.0.5").unwrap()),
            None
        );
        assert_eq!(strip_envoy_append(b"", ip("127.0.0.5").unwrap()), None);
        let edit = forwarded_for_edit(
            XffMode::Append,
            Some(b"6.6.6.6"),
            true,
            ip("127.0.0.5"),
            text("127.0.0.5").as_ref(),
        );
        assert_eq!(edit, HeaderEdit::Keep);
    }

    #[test]
    fn preserve_keeps_what_came() {
        let edit = forwarded_for_edit(
            XffMode::Preserve,
            Some(b"6.6.6.6"),
            false,
            ip("127.0.0.5"),
            text("127.0.0.5").as_ref(),
        );
        assert_eq!(edit, HeaderEdit::Keep);
    }

    #[test]
    fn forwarded_names_the_client_per_rfc_7239() {
        assert_eq!(
            forwarded_edit(ForwardedMode::Overwrite, text("203.0.113.7").as_ref()),
            HeaderEdit::Set(b"for=203.0.113.7".to_vec())
        );
        assert_eq!(
            forwarded_edit(ForwardedMode::Overwrite, text("2001:db8::1").as_ref()),
            HeaderEdit::Set(b"for=\"[2001:db8::1]\"".to_vec())
        );
        assert_eq!(
            forwarded_edit(ForwardedMode::Overwrite, None),
            HeaderEdit::Remove
        );
        assert_eq!(
            forwarded_edit(ForwardedMode::Remove, text("203.0.113.7").as_ref()),
            HeaderEdit::Remove
        );
        assert_eq!(
            forwarded_edit(ForwardedMode::Preserve, text("203.0.113.7").as_ref()),
            HeaderEdit::Keep
        );
    }
}
