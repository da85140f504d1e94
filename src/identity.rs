//! Peer identities: the mTLS identity of the downstream peer, matched against
//! `trusted_identities` the way Istio matches AuthorizationPolicy principals.
//!
//! In a mesh every hop between proxies is mutual TLS, and the peer's
//! certificate names its workload with a SPIFFE ID in its URI SAN
//! (`spiffe://cluster.local/ns/istio-system/sa/istio-ingressgateway-service-account`).
//! Entries are written as Istio writes principals, without the scheme
//! (`cluster.local/ns/istio-system/sa/istio-ingressgateway-service-account`);
//! the `spiffe://` form is accepted and means the same. An entry may carry one
//! `*` at its start (`*/sa/gateway`, a suffix match) or at its end
//! (`cluster.local/ns/istio-system/*`, a prefix match). Matching is exact, byte
//! for byte, as Istio's is.

/// The most entries `trusted_identities` may hold.
pub const MAX_TRUSTED_IDENTITIES: usize = 64;

const SPIFFE_SCHEME: &[u8] = b"spiffe://";

/// One `trusted_identities` entry, scheme stripped.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum IdentityPattern {
    /// The whole identity.
    Exact(String),
    /// `text*`: identities that start with the text.
    Prefix(String),
    /// `*text`: identities that end with the text.
    Suffix(String),
}

impl IdentityPattern {
    /// Parses one entry; the error says what is wrong with it.
    pub fn parse(entry: &str) -> Result<IdentityPattern, String> {
        let body = strip_spiffe_scheme(entry.as_bytes()).unwrap_or(entry.as_bytes());
        let body = std::str::from_utf8(body).map_err(|_| format!("{entry:?} is not text"))?;
        if body.is_empty() {
            return Err(format!("{entry:?} is empty"));
        }
        if body == "*" {
            return Err(format!(
                "{entry:?} would trust every workload that holds a mesh certificate; name the proxies' identities"
            ));
        }
        if !body.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(format!(
                "{entry:?} holds a space, a control or a non-ASCII character, which no SPIFFE ID has"
            ));
        }
        if body.contains("://") {
            return Err(format!(
                "{entry:?} is not a SPIFFE identity; write it as Istio writes principals, e.g. \"cluster.local/ns/istio-system/sa/istio-ingressgateway-service-account\""
            ));
        }
        let pattern = if let Some(rest) = body.strip_prefix('*') {
            IdentityPattern::Suffix(rest.to_owned())
        } else if let Some(rest) = body.strip_suffix('*') {
            IdentityPattern::Prefix(rest.to_owned())
        } else {
            IdentityPattern::Exact(body.to_owned())
        };
        if pattern.text().contains('*') {
            return Err(format!(
                "{entry:?} has a `*` that is not its first or last character, or more than one `*`"
            ));
        }
        Ok(pattern)
    }

    fn text(&self) -> &str {
        match self {
            IdentityPattern::Exact(text)
            | IdentityPattern::Prefix(text)
            | IdentityPattern::Suffix(text) => text,
        }
    }

    fn matches(&self, identity: &[u8]) -> bool {
        match self {
            IdentityPattern::Exact(text) => identity == text.as_bytes(),
            IdentityPattern::Prefix(text) => identity.starts_with(text.as_bytes()),
            IdentityPattern::Suffix(text) => identity.ends_with(text.as_bytes()),
        }
    }
}

/// The identities whose forwarding headers are believed.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TrustedIdentities {
    patterns: Vec<IdentityPattern>,
}

impl TrustedIdentities {
    pub fn new(patterns: Vec<IdentityPattern>) -> Self {
        TrustedIdentities { patterns }
    }

    pub fn is_empty(&self) -> bool {
        self.patterns.is_empty()
    }

    pub fn len(&self) -> usize {
        self.patterns.len()
    }

    /// Whether a peer whose certificate carries this URI SAN (as Envoy reports
    /// it) is trusted. Only a `spiffe://` URI is a mesh identity: any other
    /// URI, or an empty one, is trusted by no entry.
    pub fn trust(&self, peer_uri_san: &[u8]) -> bool {
        match strip_spiffe_scheme(peer_uri_san) {
            Some(identity) if !identity.is_empty() => self
                .patterns
                .iter()
                .any(|pattern| pattern.matches(identity)),
            _ => false,
        }
    }
}

/// The identity after `spiffe://` (the scheme in any case, as URI schemes
/// are), or `None` when the text does not start with it.
fn strip_spiffe_scheme(text: &[u8]) -> Option<&[u8]> {
    let scheme = text.get(..SPIFFE_SCHEME.len())?;
    if scheme.eq_ignore_ascii_case(SPIFFE_SCHEME) {
        text.get(SPIFFE_SCHEME.len()..)
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GATEWAY: &str = "cluster.local/ns/istio-system/sa/istio-ingressgateway-service-account";

    fn trusting(entries: &[&str]) -> TrustedIdentities {
        TrustedIdentities::new(
            entries
                .iter()
                .map(|e| IdentityPattern::parse(e).unwrap())
                .collect(),
        )
    }

    #[test]
    fn principal_and_spiffe_forms_mean_the_same() {
        let san = format!("spiffe://{GATEWAY}");
        for entry in [
            GATEWAY.to_owned(),
            san.clone(),
            format!("SPIFFE://{GATEWAY}"),
        ] {
            let trusted = trusting(&[&entry]);
            assert!(trusted.trust(san.as_bytes()), "{entry}");
            assert!(trusted.trust(format!("Spiffe://{GATEWAY}").as_bytes()));
        }
    }

    #[test]
    fn exact_entries_match_whole_identities_only() {
        let trusted = trusting(&[GATEWAY]);
        for san in [
            format!("spiffe://{GATEWAY}x"),
            format!("spiffe://x{GATEWAY}"),
            format!("spiffe://{}", GATEWAY.to_uppercase()),
            format!("spiffe://{GATEWAY}/"),
            GATEWAY.to_owned(),
            format!("https://{GATEWAY}"),
            String::new(),
            "spiffe://".to_owned(),
        ] {
            assert!(!trusted.trust(san.as_bytes()), "{san:?}");
        }
    }

    #[test]
    fn a_star_at_either_end() {
        let namespace = trusting(&["cluster.local/ns/istio-system/*"]);
        assert!(namespace.trust(format!("spiffe://{GATEWAY}").as_bytes()));
        assert!(!namespace.trust(b"spiffe://cluster.local/ns/default/sa/sleep"));
        assert!(!namespace.trust(b"spiffe://evil.example/cluster.local/ns/istio-system/sa/x"));
        let account = trusting(&["*/sa/istio-ingressgateway-service-account"]);
        assert!(account.trust(format!("spiffe://{GATEWAY}").as_bytes()));
        assert!(!account.trust(b"spiffe://cluster.local/ns/default/sa/sleep"));
    }

    #[test]
    fn bad_entries_are_refused_with_a_reason() {
        for (entry, reason) in [
            ("", "empty"),
            ("spiffe://", "empty"),
            ("*", "every workload"),
            ("spiffe://*", "every workload"),
            ("cluster.local/ns/*/sa/gw", "`*`"),
            ("*/ns/istio-system/*", "`*`"),
            ("**", "`*`"),
            ("cluster.local/ns/a b", "space"),
            ("cluster.local/ns/\u{e9}", "non-ASCII"),
            (" cluster.local/ns/a", "space"),
            ("https://cluster.local/ns/a", "not a SPIFFE identity"),
        ] {
            let error = IdentityPattern::parse(entry).unwrap_err();
            assert!(error.contains(reason), "{entry:?}: {error}");
            assert!(error.contains(&format!("{entry:?}")), "{entry:?}: {error}");
        }
    }

    #[test]
    fn nothing_is_trusted_by_an_empty_list() {
        let trusted = TrustedIdentities::default();
        assert!(trusted.is_empty());
        assert!(!trusted.trust(format!("spiffe://{GATEWAY}").as_bytes()));
    }
}
