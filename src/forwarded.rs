//! The RFC 7239 `Forwarded` header as a client source: the `for=` node of
//! each element, walked from the right like X-Forwarded-For entries.
//!
//! `Forwarded: for=192.0.2.60;proto=http;by=203.0.113.43, For="[2001:db8:cafe::17]:4711"`
//! holds two elements, separated by commas; each has parameters separated by
//! semicolons, with case-insensitive names and values that are tokens or
//! quoted strings (which may hold commas and semicolons). Envoy hands repeated
//! headers over joined by commas, which RFC 7239 makes the same thing.
//!
//! An element is a valid entry when it has exactly one `for=` parameter
//! whose node is an IP address (`192.0.2.43`, `"192.0.2.43:80"`,
//! `"[2001:db8::1]"`, `"[2001:db8::1]:4711"`; an obfuscated port such as
//! `:_p1` is allowed). Everything else is an invalid entry and ends the walk:
//! `for=unknown`, obfuscated identifiers (`for=_hidden`), an element without
//! `for=` or with two, bad quoting, unbracketed IPv6, and a port or brackets
//! outside quotes (`for=[2001:db8::1]`, `for=192.0.2.1:80`): `:` and `[` are
//! not token characters, so RFC 7239 requires the quotes.
//!
//! No allocation: one scan from the left records where the last elements
//! start, in a fixed ring, and they are then read from the right.

use std::net::IpAddr;

use crate::address::{split_host_port, Host};
use crate::trust::MAX_FORWARDED_ENTRIES;

/// The `for=` addresses of a `Forwarded` value, rightmost element first,
/// at most [`MAX_FORWARDED_ENTRIES`]; `None` for an invalid element.
pub fn for_nodes_from_right(value: &[u8]) -> ForNodes<'_> {
    ForNodes {
        bounds: ElementBounds::scan(value),
        value,
        next_from_right: 0,
    }
}

/// The iterator [`for_nodes_from_right`] returns.
pub struct ForNodes<'a> {
    bounds: ElementBounds,
    value: &'a [u8],
    next_from_right: usize,
}

impl Iterator for ForNodes<'_> {
    type Item = Option<IpAddr>;

    fn next(&mut self) -> Option<Option<IpAddr>> {
        if self.next_from_right >= self.bounds.count {
            return None;
        }
        let element = self.bounds.element(self.value, self.next_from_right);
        self.next_from_right = self.next_from_right.saturating_add(1);
        Some(element.and_then(for_node_of_element))
    }
}

/// Where the last elements of a value start, in a ring of fixed size.
struct ElementBounds {
    /// Start offsets, as a ring indexed by element number.
    starts: [usize; MAX_FORWARDED_ENTRIES],
    /// How many elements the value has in all.
    total: usize,
    /// How many of them, from the right, are read: at most the ring's size.
    count: usize,
}

impl ElementBounds {
    fn scan(value: &[u8]) -> ElementBounds {
        let mut bounds = ElementBounds {
            starts: [0; MAX_FORWARDED_ENTRIES],
            total: 0,
            count: 0,
        };
        if value.trim_ascii().is_empty() {
            return bounds;
        }
        bounds.push(0);
        let mut quoted = false;
        let mut escaped = false;
        for (index, &byte) in value.iter().enumerate() {
            match byte {
                _ if escaped => escaped = false,
                b'\\' if quoted => escaped = true,
                b'"' => quoted = !quoted,
                b',' if !quoted => bounds.push(index.saturating_add(1)),
                _ => {}
            }
        }
        bounds.count = bounds.total.min(MAX_FORWARDED_ENTRIES);
        bounds
    }

    fn push(&mut self, start: usize) {
        if let Some(slot) = self.starts.get_mut(self.total % MAX_FORWARDED_ENTRIES) {
            *slot = start;
        }
        self.total = self.total.saturating_add(1);
    }

    /// The element `from_right` places from the right, without its comma.
    fn element<'v>(&self, value: &'v [u8], from_right: usize) -> Option<&'v [u8]> {
        let number = self.total.checked_sub(from_right.checked_add(1)?)?;
        let start = *self.starts.get(number % MAX_FORWARDED_ENTRIES)?;
        let end = match number.checked_add(1) {
            Some(next) if next < self.total => self
                .starts
                .get(next % MAX_FORWARDED_ENTRIES)?
                .checked_sub(1)?,
            _ => value.len(),
        };
        value.get(start..end)
    }
}

/// The address of the element's one `for=` parameter.
fn for_node_of_element(element: &[u8]) -> Option<IpAddr> {
    let mut node = None;
    for pair in split_unquoted(element, b';') {
        let pair = pair.trim_ascii();
        if pair.is_empty() {
            continue;
        }
        let equals = pair.iter().position(|&b| b == b'=')?;
        let (name, value) = (pair.get(..equals)?, pair.get(equals.checked_add(1)?..)?);
        if name.trim_ascii().eq_ignore_ascii_case(b"for") {
            if node.is_some() {
                return None;
            }
            node = Some(value.trim_ascii());
        }
    }
    parse_node(unquote(node?)?)
}

/// Splits at `separator` outside quoted strings.
fn split_unquoted(text: &[u8], separator: u8) -> impl Iterator<Item = &[u8]> {
    let mut quoted = false;
    let mut escaped = false;
    text.split(move |&byte| {
        match byte {
            _ if escaped => escaped = false,
            b'\\' if quoted => escaped = true,
            b'"' => quoted = !quoted,
            _ => return byte == separator && !quoted,
        }
        false
    })
}

/// A token as it is, a quoted string without its quotes. An address never
/// needs escaping, so a backslash makes the value invalid; a token holds only
/// token characters (RFC 7230 `tchar`), so an unquoted port or bracket does too.
fn unquote(value: &[u8]) -> Option<&[u8]> {
    let inner = match value.strip_prefix(b"\"") {
        Some(rest) => rest.strip_suffix(b"\"")?,
        None if value.iter().all(|&b| is_token_byte(b)) => value,
        None => return None,
    };
    (!inner.is_empty() && !inner.iter().any(|&b| b == b'"' || b == b'\\')).then_some(inner)
}

fn is_token_byte(byte: u8) -> bool {
    byte.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&byte)
}

/// `nodename [":" node-port]` where the name is an address: IPv4, or IPv6 in
/// brackets. `unknown` and obfuscated names are not addresses.
fn parse_node(node: &[u8]) -> Option<IpAddr> {
    let text = std::str::from_utf8(node).ok()?;
    let (host, port) = split_host_port(text)?;
    // IPv6 is always bracketed here, with or without a port.
    if matches!(host, Host::Plain(name) if name.contains(':')) {
        return None;
    }
    match port {
        Some(port) if !is_node_port(port) => None,
        _ => host.ip(port.is_some() || matches!(host, Host::Plain(_))),
    }
}

/// A port number, or an obfuscated port (`_` then letters, digits, `.`,
/// `_` or `-`).
fn is_node_port(port: &str) -> bool {
    match port.strip_prefix('_') {
        Some(obfuscated) => {
            !obfuscated.is_empty()
                && obfuscated
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
        }
        None => port.parse::<u16>().is_ok() && port.bytes().all(|b| b.is_ascii_digit()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nodes(value: &str) -> Vec<Option<String>> {
        for_nodes_from_right(value.as_bytes())
            .map(|ip| ip.map(|ip| ip.to_string()))
            .collect()
    }

    fn some(ips: &[&str]) -> Vec<Option<String>> {
        ips.iter().map(|ip| Some(ip.to_string())).collect()
    }

    #[test]
    fn every_form_rfc_7239_allows() {
        assert_eq!(nodes("for=192.0.2.60"), some(&["192.0.2.60"]));
        assert_eq!(
            nodes(r#"For="[2001:db8:cafe::17]:4711""#),
            some(&["2001:db8:cafe::17"])
        );
        assert_eq!(nodes(r#"for="[2001:db8::1]""#), some(&["2001:db8::1"]));
        assert_eq!(nodes(r#"for="192.0.2.43:47011""#), some(&["192.0.2.43"]));
        assert_eq!(nodes(r#"FOR="192.0.2.43:_gazonk""#), some(&["192.0.2.43"]));
        assert_eq!(
            nodes("for=192.0.2.60;proto=http;by=203.0.113.43, for=198.51.100.17"),
            some(&["198.51.100.17", "192.0.2.60"])
        );
        assert_eq!(
            nodes(r#"proto=https; for="[::ffff:192.0.2.1]" ;host="a,b;c""#),
            some(&["192.0.2.1"])
        );
        // Repeated headers, as Envoy joins them.
        assert_eq!(
            nodes("for=192.0.2.1,for=192.0.2.2"),
            some(&["192.0.2.2", "192.0.2.1"])
        );
    }

    #[test]
    fn what_is_no_address_is_an_invalid_entry() {
        for value in [
            "for=unknown",
            "for=_hidden",
            r#"for="_hidden:80""#,
            "proto=https",
            "for=192.0.2.1;for=192.0.2.2",
            "for=2001:db8::1",
            r#"for="[2001:db8::1"]"#,
            r#"for="192.0.2.1"#,
            r#"for=\"192.0.2.1\""#,
            "for=192.0.2.1:99999",
            "for=192.0.2.1:",
            "for=192.0.2.1:_",
            "for=",
            "for=010.0.0.1",
            "=192.0.2.1",
            "192.0.2.1",
            "for=[2001:db8::1]",
            "for=[2001:db8::1]:4711",
            "for=192.0.2.1:80",
            "for=0.0.0.0",
            r#"for="[::]""#,
        ] {
            assert_eq!(nodes(value), vec![None], "{value}");
        }
        assert_eq!(
            nodes("for=192.0.2.1, , for=192.0.2.3"),
            vec![Some("192.0.2.3".into()), None, Some("192.0.2.1".into())]
        );
        assert!(nodes("").is_empty() && nodes("  ").is_empty());
    }

    #[test]
    fn quoted_commas_do_not_split_elements() {
        assert_eq!(
            nodes(r#"for=192.0.2.1;host="x,for=6.6.6.6", for=192.0.2.2"#),
            some(&["192.0.2.2", "192.0.2.1"])
        );
        // An unterminated quote swallows the rest into one invalid element.
        assert_eq!(
            nodes(r#"for=192.0.2.1, host="x, for=192.0.2.2"#),
            vec![None, Some("192.0.2.1".into())]
        );
    }

    #[test]
    fn only_the_last_elements_are_read() {
        let mut value = String::from("for=6.6.6.6");
        for n in 0..MAX_FORWARDED_ENTRIES {
            value.push_str(&format!(", for=10.0.0.{n}"));
        }
        let read = nodes(&value);
        assert_eq!(read.len(), MAX_FORWARDED_ENTRIES);
        assert_eq!(
            read.first(),
            Some(&Some(format!("10.0.0.{}", MAX_FORWARDED_ENTRIES - 1)))
        );
        assert_eq!(read.last(), Some(&Some("10.0.0.0".to_owned())));
    }
}
