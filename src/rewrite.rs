//! What the request carries on to the application once the client is known.

use std::net::IpAddr;

use crate::address::IpText;
use crate::config::XffMode;

/// A change to one request header.
#[derive(Debug, PartialEq, Eq)]
pub enum HeaderEdit<'a> {
    Keep,
    /// Replace every instance with this one value.
    Set(&'a [u8]),
    Remove,
}

/// The X-Forwarded-For that leaves the filter. The new value is built in
/// `scratch`, a buffer the caller reuses so that requests do not allocate.
///
/// - `append`: the received value followed by the peer, or the peer alone
///   (Envoy's `use_remote_address: true` behaviour). An unknown peer cannot
///   be appended, so the header is kept.
/// - `overwrite`: the resolved client alone; removed if there is no client.
/// - `preserve`: kept as received.
pub fn forwarded_for_edit<'a>(
    mode: XffMode,
    received: Option<&[u8]>,
    peer: Option<IpAddr>,
    client: Option<IpAddr>,
    scratch: &'a mut Vec<u8>,
) -> HeaderEdit<'a> {
    scratch.clear();
    match mode {
        XffMode::Preserve => HeaderEdit::Keep,
        XffMode::Append => {
            let Some(peer) = peer else {
                return HeaderEdit::Keep;
            };
            let received = received.map(<[u8]>::trim_ascii).unwrap_or_default();
            if !received.is_empty() {
                scratch.extend_from_slice(received);
                scratch.extend_from_slice(b", ");
            }
            scratch.extend_from_slice(IpText::new(peer).as_bytes());
            HeaderEdit::Set(scratch)
        }
        XffMode::Overwrite => match client {
            Some(client) => {
                scratch.extend_from_slice(IpText::new(client).as_bytes());
                HeaderEdit::Set(scratch)
            }
            None => HeaderEdit::Remove,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> Option<IpAddr> {
        Some(s.parse().unwrap())
    }

    #[test]
    fn append_adds_the_peer_like_envoy() {
        let mut scratch = Vec::new();
        let edit = forwarded_for_edit(
            XffMode::Append,
            Some(b"1.1.1.1, 2.2.2.2 "),
            ip("127.0.0.5"),
            ip("1.1.1.1"),
            &mut scratch,
        );
        assert_eq!(edit, HeaderEdit::Set(b"1.1.1.1, 2.2.2.2, 127.0.0.5"));
        let edit = forwarded_for_edit(XffMode::Append, None, ip("::1"), ip("::1"), &mut scratch);
        assert_eq!(edit, HeaderEdit::Set(b"::1"));
        let edit = forwarded_for_edit(
            XffMode::Append,
            Some(b"  "),
            ip("127.0.0.5"),
            ip("127.0.0.5"),
            &mut scratch,
        );
        assert_eq!(edit, HeaderEdit::Set(b"127.0.0.5"));
        let edit = forwarded_for_edit(XffMode::Append, Some(b"1.1.1.1"), None, None, &mut scratch);
        assert_eq!(edit, HeaderEdit::Keep);
    }

    #[test]
    fn overwrite_leaves_the_client_alone() {
        let mut scratch = Vec::new();
        let edit = forwarded_for_edit(
            XffMode::Overwrite,
            Some(b"6.6.6.6"),
            ip("127.0.0.5"),
            ip("127.0.0.5"),
            &mut scratch,
        );
        assert_eq!(edit, HeaderEdit::Set(b"127.0.0.5"));
        let edit = forwarded_for_edit(
            XffMode::Overwrite,
            Some(b"6.6.6.6"),
            None,
            None,
            &mut scratch,
        );
        assert_eq!(edit, HeaderEdit::Remove);
    }

    #[test]
    fn preserve_keeps_what_came() {
        let mut scratch = Vec::new();
        let edit = forwarded_for_edit(
            XffMode::Preserve,
            Some(b"6.6.6.6"),
            ip("127.0.0.5"),
            ip("127.0.0.5"),
            &mut scratch,
        );
        assert_eq!(edit, HeaderEdit::Keep);
    }
}
