//! Parsing and normalising the addresses the filter meets: the downstream peer
//! as Envoy reports it, and the entries of X-Forwarded-For.
//!
//! Every input is treated as hostile bytes: parsing never allocates and never
//! panics, it only accepts or rejects.

use std::fmt::{self, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// An IPv4-mapped IPv6 address (`::ffff:a.b.c.d`) becomes plain IPv4, so that
/// one client has one spelling and matches IPv4 trusted ranges.
pub fn normalize(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => ip,
        },
        IpAddr::V4(_) => ip,
    }
}

/// An address with the port it was given with, if any.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HostPort {
    pub ip: IpAddr,
    pub port: Option<u16>,
}

/// Splits `host`, `host:port`, `[v6]` or `[v6]:port` into the host (without
/// brackets) and the port text, if any. Only brackets let an IPv6 address
/// carry a port; a bracketed host must be IPv6. The one splitter for every
/// address the filter reads (X-Forwarded-For entries, `Forwarded` nodes, the
/// peer), so the forms cannot drift apart.
pub fn split_host_port(text: &str) -> Option<(Host<'_>, Option<&str>)> {
    if let Some(rest) = text.strip_prefix('[') {
        let (inside, after) = rest.split_once(']')?;
        let port = match after {
            "" => None,
            _ => Some(after.strip_prefix(':')?),
        };
        return Some((Host::Bracketed(inside), port));
    }
    // More than one colon is an IPv6 address without brackets, never a port.
    match text.split_once(':') {
        Some((host, port)) if !port.contains(':') => Some((Host::Plain(host), Some(port))),
        _ => Some((Host::Plain(text), None)),
    }
}

/// The host part of [`split_host_port`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Host<'a> {
    /// Written inside brackets: must be IPv6.
    Bracketed(&'a str),
    /// Written bare: IPv4, or IPv6 when no port was split off.
    Plain(&'a str),
}

impl Host<'_> {
    /// The address, normalised; `None` for a name, junk, a zone id, leading-zero
    /// octets, or an address that is never a client (`0.0.0.0`, `::`).
    pub fn ip(self, has_port: bool) -> Option<IpAddr> {
        let ip = match self {
            Host::Bracketed(inside) => IpAddr::V6(inside.parse::<Ipv6Addr>().ok()?),
            Host::Plain(text) if has_port => IpAddr::V4(text.parse::<Ipv4Addr>().ok()?),
            Host::Plain(text) => text.parse::<IpAddr>().ok()?,
        };
        let ip = normalize(ip);
        (!ip.is_unspecified()).then_some(ip)
    }
}

/// Parses `ip`, `[v6]`, `v4:port` or `[v6]:port`, after trimming surrounding
/// whitespace. Anything else is rejected: names, `unknown`, obfuscated
/// identifiers, zone ids (`fe80::1%eth0`), leading-zero octets, junk, and the
/// unspecified addresses `0.0.0.0` and `::`, which no client has.
pub fn parse_host_port(raw: &[u8]) -> Option<HostPort> {
    let raw = raw.trim_ascii();
    if let Some(ip) = dotted_quad(raw) {
        // The general path below rejects `0.0.0.0` too.
        return (!ip.is_unspecified()).then_some(HostPort {
            ip: IpAddr::V4(ip),
            port: None,
        });
    }
    let text = std::str::from_utf8(raw).ok()?;
    let (host, port) = split_host_port(text)?;
    let port = match port {
        Some(port) => Some(parse_port(port)?),
        None => None,
    };
    Some(HostPort {
        ip: host.ip(port.is_some())?,
        port,
    })
}

/// `a.b.c.d`, the form nearly every X-Forwarded-For entry and every peer
/// record takes, read from the bytes without `str` and `core::net`'s general
/// parser, which cost several times more per entry on the trusted walk.
/// `None` for anything else, which the general path then decides; what this
/// accepts, that path accepts as the same address.
fn dotted_quad(text: &[u8]) -> Option<Ipv4Addr> {
    let mut octets = [0u8; 4];
    // The octet being read, its value so far and its digits.
    let mut index = 0usize;
    let mut value = 0u16;
    let mut digits = 0u8;
    for &byte in text {
        match byte {
            b'0'..=b'9' => {
                // At most three digits, and no leading zero, as `Ipv4Addr`
                // wants.
                if digits == 3 || (digits == 1 && value == 0) {
                    return None;
                }
                value = value * 10 + u16::from(byte - b'0');
                digits += 1;
            }
            b'.' if digits > 0 => {
                *octets.get_mut(index)? = u8::try_from(value).ok()?;
                index += 1;
                value = 0;
                digits = 0;
            }
            _ => return None,
        }
    }
    if index != 3 || digits == 0 {
        return None;
    }
    *octets.get_mut(3)? = u8::try_from(value).ok()?;
    Some(Ipv4Addr::from(octets))
}

/// One X-Forwarded-For entry: the address, or `None` when the entry is invalid.
pub fn parse_forwarded_entry(raw: &[u8]) -> Option<IpAddr> {
    parse_host_port(raw).map(|host| host.ip)
}

fn parse_port(text: &str) -> Option<u16> {
    // u16::from_str would also take "+80".
    if text.is_empty() || text.len() > 5 || !text.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    text.parse().ok()
}

/// The downstream peer as Envoy's `source.address` reports it (`ip:port`,
/// `[v6]:port`). Port 0 means Envoy took the address from X-Forwarded-For
/// rather than from the socket (`use_remote_address: false`), so it is not a
/// peer at all and the result is `None`.
pub fn parse_socket_peer(raw: &[u8]) -> Option<IpAddr> {
    match parse_host_port(raw)? {
        HostPort {
            ip,
            port: Some(port),
        } if port != 0 => Some(ip),
        _ => None,
    }
}

/// Longest text of an address as `Display` writes it
/// (`ffff:ffff:ffff:ffff:ffff:ffff:255.255.255.255` is 45 bytes).
const IP_TEXT_CAPACITY: usize = 45;

/// An address written out on the stack, so that putting it in a header or a
/// property costs no allocation.
#[derive(Clone, Copy)]
pub struct IpText {
    ip: IpAddr,
    buf: [u8; IP_TEXT_CAPACITY],
    len: usize,
}

impl IpText {
    pub fn new(ip: IpAddr) -> Self {
        let mut text = IpText {
            ip,
            buf: [0; IP_TEXT_CAPACITY],
            len: 0,
        };
        match ip {
            // Digits by hand: `core::fmt` costs several times more, and the
            // request path writes the client out on every request.
            IpAddr::V4(v4) => {
                for (index, octet) in v4.octets().into_iter().enumerate() {
                    if index > 0 {
                        text.push(b'.');
                    }
                    if octet >= 100 {
                        text.push(b'0' + octet / 100);
                    }
                    if octet >= 10 {
                        text.push(b'0' + octet / 10 % 10);
                    }
                    text.push(b'0' + octet % 10);
                }
            }
            // Cannot fail: every address fits. Should it ever, the text is
            // empty and callers treat it as no address.
            IpAddr::V6(_) => {
                if write!(text, "{ip}").is_err() {
                    text.len = 0;
                }
            }
        }
        text
    }

    /// One byte more; at most 15 for IPv4, well within the buffer.
    fn push(&mut self, byte: u8) {
        if let Some(slot) = self.buf.get_mut(self.len) {
            *slot = byte;
            self.len += 1;
        }
    }

    /// The address written out.
    pub fn ip(&self) -> IpAddr {
        self.ip
    }

    pub fn as_bytes(&self) -> &[u8] {
        self.buf.get(..self.len).unwrap_or_default()
    }

    pub fn as_str(&self) -> &str {
        std::str::from_utf8(self.as_bytes()).unwrap_or_default()
    }
}

impl Write for IpText {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        let end = self.len.checked_add(s.len()).ok_or(fmt::Error)?;
        let slot = self.buf.get_mut(self.len..end).ok_or(fmt::Error)?;
        slot.copy_from_slice(s.as_bytes());
        self.len = end;
        Ok(())
    }
}

impl PartialEq for IpText {
    fn eq(&self, other: &Self) -> bool {
        self.ip == other.ip
    }
}

impl Eq for IpText {}

impl fmt::Debug for IpText {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn accepts_the_documented_forms() {
        let cases = [
            ("1.2.3.4", "1.2.3.4"),
            ("  1.2.3.4\t", "1.2.3.4"),
            ("1.2.3.4:8080", "1.2.3.4"),
            ("2001:db8::1", "2001:db8::1"),
            ("[2001:db8::1]", "2001:db8::1"),
            ("[2001:db8::1]:443", "2001:db8::1"),
            ("::ffff:10.1.2.3", "10.1.2.3"),
            ("[::ffff:10.1.2.3]:80", "10.1.2.3"),
            ("::1", "::1"),
        ];
        for (raw, want) in cases {
            assert_eq!(
                parse_forwarded_entry(raw.as_bytes()),
                Some(ip(want)),
                "{raw}"
            );
        }
    }

    #[test]
    fn rejects_everything_else() {
        let cases = [
            "",
            " ",
            "unknown",
            "_hidden",
            "example.com",
            "1.2.3",
            "01.2.3.4",
            "1.2.3.4:",
            "1.2.3.4:+80",
            "1.2.3.4:65536",
            "1.2.3.4:123456",
            "[1.2.3.4]",
            "[2001:db8::1",
            "[2001:db8::1]x",
            "[2001:db8::1]:",
            "fe80::1%eth0",
            "[fe80::1%25eth0]:80",
            "1.2.3.4 5.6.7.8",
            "\u{0}1.2.3.4",
            "0.0.0.0",
            "0.0.0.0:80",
            "::",
            "[::]:80",
            "::ffff:0.0.0.0",
            "1.2.3.4.",
            ".1.2.3.4",
            "1..2.3",
            "1.2.3.256",
            "1.2.3.1000",
            "1.2.3.04",
            "1.2.3.4.5",
            "1.2.3.-4",
            "1.2.3.+4",
        ];
        for raw in cases {
            assert_eq!(parse_forwarded_entry(raw.as_bytes()), None, "{raw:?}");
        }
        assert_eq!(parse_forwarded_entry(b"\xff\xfe1.2.3.4"), None);
    }

    #[test]
    fn socket_peer_needs_a_real_port() {
        assert_eq!(parse_socket_peer(b"127.0.0.5:40000"), Some(ip("127.0.0.5")));
        assert_eq!(parse_socket_peer(b"[::1]:40000"), Some(ip("::1")));
        assert_eq!(
            parse_socket_peer(b"[::ffff:127.0.0.9]:1"),
            Some(ip("127.0.0.9"))
        );
        // Envoy's address taken from X-Forwarded-For has port 0.
        assert_eq!(parse_socket_peer(b"6.6.6.6:0"), None);
        assert_eq!(parse_socket_peer(b"6.6.6.6"), None);
        assert_eq!(parse_socket_peer(b"/var/run/envoy.sock"), None);
    }

    #[test]
    fn text_round_trips_the_longest_addresses() {
        for raw in [
            "255.255.255.255",
            "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff",
            "::ffff:255.255.255.255",
            "::",
            "0.0.0.0",
            "1.10.100.9",
            "10.0.0.1",
        ] {
            let text = IpText::new(ip(raw));
            assert_eq!(text.as_str(), ip(raw).to_string());
        }
    }
}
