//! The plugin JSON: parsed and checked once, when Envoy configures the plugin.
//!
//! A bad configuration is refused whole, with an error that names the field
//! and the value, so the plugin never runs half-configured. This file only
//! parses: what the settings mean lives in [`crate::trust`],
//! [`crate::access`], [`crate::resolve`] and [`crate::rewrite`].

use std::fmt;
use std::net::IpAddr;

use ipnet::IpNet;
use serde::Deserialize;

use crate::access::{AccessPolicy, DEFAULT_DENY_STATUS, MAX_ACCESS_ENTRIES};
use crate::identity::{IdentityPattern, TrustedIdentities, MAX_TRUSTED_IDENTITIES};
use crate::ranges::AddressSet;
pub use crate::trust::{TrustPolicy, MAX_FORWARDED_ENTRIES, MAX_TRUSTED_PROXIES};

pub const DEFAULT_CLIENT_IP_HEADER: &str = "x-real-ip";

/// What happens to X-Forwarded-For on its way to the application.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum XffMode {
    /// Append the peer, as Envoy's `use_remote_address: true` does.
    #[default]
    Append,
    /// Replace it with the resolved client alone.
    Overwrite,
    /// Leave it as received.
    Preserve,
}

/// What happens to the RFC 7239 `Forwarded` header. Applications and
/// frameworks that read it (often before X-Forwarded-For) would otherwise
/// believe whatever the client wrote there.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ForwardedMode {
    /// Leave it as received.
    #[default]
    Preserve,
    /// Replace it with `for=` the resolved client alone.
    Overwrite,
    /// Remove it.
    Remove,
}

/// The request header a trusted peer names the client in.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(try_from = "String")]
pub enum ClientIpSource {
    /// `X-Forwarded-For`, walked from the right.
    #[default]
    XForwardedFor,
    /// RFC 7239 `Forwarded`, its `for=` nodes walked from the right.
    Forwarded,
    /// A header that carries one address (`cf-connecting-ip`,
    /// `true-client-ip`, `x-envoy-external-address`...), lower-case.
    Header(String),
}

impl TryFrom<String> for ClientIpSource {
    type Error = String;

    fn try_from(name: String) -> Result<Self, String> {
        Ok(match check_header_name(&name, &[])?.as_str() {
            "x-forwarded-for" => ClientIpSource::XForwardedFor,
            "forwarded" => ClientIpSource::Forwarded,
            header => ClientIpSource::Header(header.to_owned()),
        })
    }
}

impl ClientIpSource {
    pub fn header_name(&self) -> &str {
        match self {
            ClientIpSource::XForwardedFor => "x-forwarded-for",
            ClientIpSource::Forwarded => "forwarded",
            ClientIpSource::Header(name) => name,
        }
    }

    /// Whether the source is a chain of entries, which `trusted_hops` counts.
    pub fn is_chain(&self) -> bool {
        !matches!(self, ClientIpSource::Header(_))
    }
}

/// The HTTP filter's configuration, checked and ready for the request path.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FilterConfig {
    pub xff_mode: XffMode,
    pub forwarded_mode: ForwardedMode,
    /// Lower-case header name, or `None` when the header is turned off.
    pub client_ip_header: Option<String>,
    /// Where a trusted peer names the client.
    pub source: ClientIpSource,
    pub trust: TrustPolicy,
    /// `trusted_proxies` as written (normalised), for explaining the policy.
    pub trusted_proxies: Vec<IpNet>,
    pub access: AccessPolicy,
    /// Publish the client as filter state `wasm.client_ip` (one host call
    /// per request).
    pub publish_filter_state: bool,
    /// Publish the client as Envoy's typed `envoy.network.ip` filter state,
    /// for Envoy's RBAC and other filters (one host call per request).
    pub publish_ip_filter_state: bool,
    /// Read the client header as received, to count forged ones (one host
    /// call per request).
    pub count_forged_headers: bool,
}

impl Default for FilterConfig {
    fn default() -> Self {
        FilterConfig {
            xff_mode: XffMode::default(),
            forwarded_mode: ForwardedMode::default(),
            client_ip_header: Some(DEFAULT_CLIENT_IP_HEADER.to_owned()),
            source: ClientIpSource::default(),
            trust: TrustPolicy::default(),
            trusted_proxies: Vec::new(),
            access: AccessPolicy::default(),
            publish_filter_state: false,
            publish_ip_filter_state: false,
            count_forged_headers: false,
        }
    }
}

/// Why a configuration was refused: the field (a path such as
/// `trusted_proxies[1]`, or `.` for the document) and what is wrong with its value.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigError {
    pub field: String,
    pub problem: String,
}

impl ConfigError {
    fn new(field: impl Into<String>, problem: impl Into<String>) -> Self {
        ConfigError {
            field: field.into(),
            problem: problem.into(),
        }
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "field `{}`: {}", self.field, self.problem)
    }
}

impl std::error::Error for ConfigError {}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFilterConfig {
    #[serde(default)]
    xff_mode: XffMode,
    #[serde(default)]
    forwarded_mode: ForwardedMode,
    client_ip_header: Option<String>,
    #[serde(default)]
    client_ip_source: ClientIpSource,
    #[serde(default)]
    trusted_proxies: Vec<String>,
    #[serde(default)]
    trusted_hops: u32,
    #[serde(default)]
    trusted_identities: Vec<String>,
    #[serde(default)]
    allow_clients: Vec<String>,
    #[serde(default)]
    deny_clients: Vec<String>,
    #[serde(default)]
    access_dry_run: bool,
    #[serde(default = "default_deny_status")]
    deny_status: u16,
    #[serde(default)]
    publish_filter_state: bool,
    #[serde(default)]
    publish_ip_filter_state: bool,
    #[serde(default)]
    count_forged_headers: bool,
}

fn default_deny_status() -> u16 {
    DEFAULT_DENY_STATUS
}

/// The peer filter records the peer and takes no settings.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPeerConfig {}

impl FilterConfig {
    /// Parses the plugin JSON. Empty or blank means every default.
    pub fn from_json(bytes: &[u8]) -> Result<Self, ConfigError> {
        if bytes.trim_ascii().is_empty() {
            return Ok(FilterConfig::default());
        }
        let raw: RawFilterConfig = parse_json(bytes)?;
        let client_ip_header = match raw.client_ip_header {
            None => Some(DEFAULT_CLIENT_IP_HEADER.to_owned()),
            Some(name) if name.is_empty() => None,
            Some(name) => Some(
                check_header_name(&name, FORWARDING_HEADERS)
                    .map_err(|problem| ConfigError::new("client_ip_header", problem))?,
            ),
        };
        let source = raw.client_ip_source;
        let trusted_proxies =
            parse_net_list("trusted_proxies", &raw.trusted_proxies, MAX_TRUSTED_PROXIES)?;
        let trusted_hops = usize::try_from(raw.trusted_hops).unwrap_or(usize::MAX);
        if trusted_hops > MAX_FORWARDED_ENTRIES {
            return Err(ConfigError::new(
                "trusted_hops",
                format!(
                    "{trusted_hops} is above {MAX_FORWARDED_ENTRIES}, the most X-Forwarded-For entries looked at"
                ),
            ));
        }
        if trusted_hops > 0 && !source.is_chain() {
            return Err(ConfigError::new(
                "trusted_hops",
                format!(
                    "{trusted_hops} cannot be combined with client_ip_source {:?}: hops count the entries of a chain (x-forwarded-for or forwarded), and that header holds one address",
                    source.header_name()
                ),
            ));
        }
        let trusted_identities = parse_trusted_identities(&raw.trusted_identities)?;
        if trusted_hops > 0 && !trusted_identities.is_empty() {
            return Err(ConfigError::new(
                "trusted_hops",
                format!(
                    "{trusted_hops} cannot be combined with trusted_identities: hops trust proxies whatever they are, an identity vouches only for the peer that holds it; list the proxies further left in trusted_proxies"
                ),
            ));
        }
        if !(200..=599).contains(&raw.deny_status) {
            return Err(ConfigError::new(
                "deny_status",
                format!("{} is not an HTTP status from 200 to 599", raw.deny_status),
            ));
        }
        let access = AccessPolicy {
            allow: AddressSet::new(&parse_net_list(
                "allow_clients",
                &raw.allow_clients,
                MAX_ACCESS_ENTRIES,
            )?),
            deny: AddressSet::new(&parse_net_list(
                "deny_clients",
                &raw.deny_clients,
                MAX_ACCESS_ENTRIES,
            )?),
            dry_run: raw.access_dry_run,
            deny_status: raw.deny_status,
        };
        Ok(FilterConfig {
            xff_mode: raw.xff_mode,
            forwarded_mode: raw.forwarded_mode,
            client_ip_header,
            source,
            trust: TrustPolicy::new(&trusted_proxies, trusted_hops, trusted_identities),
            trusted_proxies,
            access,
            publish_filter_state: raw.publish_filter_state,
            publish_ip_filter_state: raw.publish_ip_filter_state,
            count_forged_headers: raw.count_forged_headers,
        })
    }

    /// `trusted_hops` takes precedence, so any `trusted_proxies` beside it are unused.
    pub fn ignores_trusted_proxies(&self) -> bool {
        self.trust.trusted_hops > 0 && self.trust.has_trusted_proxies()
    }
}

/// Checks the peer filter's configuration, which must be empty or `{}`.
pub fn check_peer_config(bytes: &[u8]) -> Result<(), ConfigError> {
    if bytes.trim_ascii().is_empty() {
        return Ok(());
    }
    parse_json::<RawPeerConfig>(bytes).map(|_| ())
}

fn parse_json<'de, T: Deserialize<'de>>(bytes: &'de [u8]) -> Result<T, ConfigError> {
    // Syntax first: a document that is not JSON has no field to blame.
    if let Err(error) = serde_json::from_slice::<serde::de::IgnoredAny>(bytes) {
        return Err(ConfigError::new(
            ".",
            format!("not valid JSON ({error}): {}", snippet(bytes)),
        ));
    }
    let mut deserializer = serde_json::Deserializer::from_slice(bytes);
    serde_path_to_error::deserialize(&mut deserializer).map_err(|error| {
        let field = match error.path().to_string() {
            // An empty key is still a field the line must name.
            path if path.is_empty() => "\"\"".to_owned(),
            path => path,
        };
        let mut problem = error.inner().to_string();
        // Some of serde's messages do not show the value; the line must.
        if let Some(value) = value_at(bytes, error.path()) {
            // Strings as JSON writes them (quoted), numbers as serde does.
            let shown = match value.is_string() {
                true => problem.contains(&value.to_string()),
                false => problem.contains(&format!("`{value}`")),
            };
            if !shown {
                problem = format!("{value} is refused: {problem}");
            }
        }
        ConfigError::new(field, problem)
    })
}

/// The value at `path`, if the document has one there.
fn value_at(bytes: &[u8], path: &serde_path_to_error::Path) -> Option<serde_json::Value> {
    use serde_path_to_error::Segment;
    let document = serde_json::from_slice::<serde_json::Value>(bytes).ok()?;
    let mut value = &document;
    for segment in path.iter() {
        value = match segment {
            Segment::Map { key } => value.get(key)?,
            Segment::Seq { index } => value.get(index)?,
            _ => return None,
        };
    }
    Some(value.clone())
}

/// The start of a refused document, quoted, for the error line.
fn snippet(bytes: &[u8]) -> String {
    const LONGEST: usize = 80;
    let text = String::from_utf8_lossy(bytes);
    let mut shown: String = text.chars().take(LONGEST).collect();
    if text.chars().nth(LONGEST).is_some() {
        shown.push('…');
    }
    format!("{shown:?}")
}

fn parse_trusted_identities(entries: &[String]) -> Result<TrustedIdentities, ConfigError> {
    if entries.len() > MAX_TRUSTED_IDENTITIES {
        return Err(ConfigError::new(
            "trusted_identities",
            format!(
                "{} entries, at most {MAX_TRUSTED_IDENTITIES} are allowed",
                entries.len()
            ),
        ));
    }
    entries
        .iter()
        .enumerate()
        .map(|(index, entry)| {
            IdentityPattern::parse(entry).map_err(|problem| {
                ConfigError::new(format!("trusted_identities[{index}]"), problem)
            })
        })
        .collect::<Result<Vec<_>, _>>()
        .map(TrustedIdentities::new)
}

/// A list of addresses and CIDRs, at most `cap` of them; an error names the
/// entry.
fn parse_net_list(field: &str, entries: &[String], cap: usize) -> Result<Vec<IpNet>, ConfigError> {
    if entries.len() > cap {
        return Err(ConfigError::new(
            field,
            format!("{} entries, at most {cap} are allowed", entries.len()),
        ));
    }
    entries
        .iter()
        .enumerate()
        .map(|(index, text)| {
            parse_net(text).ok_or_else(|| {
                ConfigError::new(
                    format!("{field}[{index}]"),
                    format!("{text:?} is not an IP address or CIDR"),
                )
            })
        })
        .collect()
}

/// An address is a one-address range. Ranges written with host bits set are
/// taken as their network, as Envoy's own CIDR ranges are.
fn parse_net(text: &str) -> Option<IpNet> {
    let net = match text.parse::<IpAddr>() {
        Ok(ip) => IpNet::from(ip),
        Err(_) => text.parse::<IpNet>().ok()?.trunc(),
    };
    Some(normalize_mapped_net(net))
}

/// `::ffff:10.0.0.0/104` is 10.0.0.0/8: peers are normalised to IPv4, so
/// their trusted ranges must be too.
fn normalize_mapped_net(net: IpNet) -> IpNet {
    if let IpNet::V6(v6) = net {
        if let (Some(v4), Some(prefix)) = (
            v6.network().to_ipv4_mapped(),
            v6.prefix_len().checked_sub(96),
        ) {
            if let Ok(v4net) = ipnet::Ipv4Net::new(v4, prefix) {
                return IpNet::V4(v4net);
            }
        }
    }
    net
}

/// Headers that never carry a client address and must not be rewritten:
/// Host and the framing and hop-by-hop headers.
const FRAMING_HEADERS: &[&str] = &[
    "host",
    "content-length",
    "transfer-encoding",
    "connection",
    "keep-alive",
    "upgrade",
    "te",
];

/// What the client header may not be besides those: the headers the filter
/// writes by their own rules.
const FORWARDING_HEADERS: &[&str] = &["x-forwarded-for", "forwarded"];

/// A valid header name, lower-cased, that is none of the framing headers
/// nor of `reserved`; the error names the value.
fn check_header_name(name: &str, reserved: &[&str]) -> Result<String, String> {
    let is_token_byte = |b: u8| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b);
    if name.is_empty() || !name.bytes().all(is_token_byte) {
        return Err(format!("{name:?} is not a valid HTTP header name"));
    }
    let lower = name.to_ascii_lowercase();
    if FRAMING_HEADERS.contains(&lower.as_str()) || reserved.contains(&lower.as_str()) {
        return Err(format!(
            "{name:?} is reserved; choose a header of its own such as \"x-real-ip\""
        ));
    }
    Ok(lower)
}
