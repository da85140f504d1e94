//! The decision for one request, made without the host: who the client is,
//! whether it may pass, and what every header the filter owns becomes.
//!
//! The request path is three steps: the glue reads the facts, [`decide`]
//! decides, the glue applies the verdict. Facts other than the peer are read
//! through [`RequestFacts`] only when the decision needs them, so a feature
//! that is not configured, or a header an untrusted peer sent, costs no host
//! call. `client-ip resolve` runs this same function.

use std::borrow::Cow;
use std::cell::RefCell;
use std::net::IpAddr;

use crate::access::Decision;
use crate::address::IpText;
use crate::config::{ClientIpSource, FilterConfig, XffMode};
use crate::resolve::{resolve_client_observed, Resolution, Step};
use crate::rewrite::{forwarded_edit, forwarded_for_edit, strip_envoy_append, HeaderEdit};

/// What a request carries besides its peer, each read at most once and only
/// when asked for.
pub trait RequestFacts {
    /// The peer's mTLS identity: its certificate's URI SAN or, behind an
    /// ambient waypoint, the principal of the HBONE peer.
    fn peer_identity(&mut self) -> Option<Vec<u8>>;
    /// X-Forwarded-For as it reaches the filter.
    fn forwarded_for(&mut self) -> Option<Vec<u8>>;
    /// The `client_ip_source` header when it is not X-Forwarded-For, every
    /// line joined by commas.
    fn source_header(&mut self) -> Option<Vec<u8>>;
    /// The client header as the request arrived with it.
    fn client_header(&mut self) -> Option<Vec<u8>>;
}

/// The edits to the headers the filter owns, in the order they are applied.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Edits {
    /// The client header (`client_ip_header`); `Keep` when it is turned off.
    pub client_header: HeaderEdit,
    pub forwarded_for: HeaderEdit,
    pub forwarded: HeaderEdit,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Verdict {
    /// The resolved client, written out.
    pub client: Option<IpText>,
    pub resolution: Resolution,
    pub access: Decision,
    /// The request arrived with a client header other than the client (known
    /// only under `count_forged_headers`).
    pub forged_client_header: bool,
    /// What to write. A denied request gets only its client header, so that
    /// its access-log line shows the client like any other.
    pub edits: Edits,
}

impl Verdict {
    pub fn is_denied(&self) -> bool {
        matches!(self.access, Decision::Denied(_))
    }
}

/// Decides one request. `peer` is the true downstream peer, already
/// normalised, or `None` when it cannot be known.
pub fn decide(
    config: &FilterConfig,
    peer: Option<IpAddr>,
    facts: &mut impl RequestFacts,
) -> Verdict {
    decide_observed(config, peer, facts, &mut |_| {})
}

/// [`decide`], telling `observe` each step of the resolution. The filter
/// calls [`decide`], whose empty observer the compiler removes; `client-ip
/// resolve` shows the steps.
pub fn decide_observed(
    config: &FilterConfig,
    peer: Option<IpAddr>,
    facts: &mut impl RequestFacts,
    observe: &mut impl FnMut(Step),
) -> Verdict {
    // X-Forwarded-For is read when it is the source, or to append to it.
    let reads_xff =
        config.source == ClientIpSource::XForwardedFor || config.xff_mode == XffMode::Append;
    let seen_xff = if reads_xff {
        facts.forwarded_for()
    } else {
        None
    };
    // Under `use_remote_address: true` Envoy has appended the peer already;
    // the rules speak of X-Forwarded-For as it arrived.
    let envoy_appended_to = match (&seen_xff, peer) {
        (Some(seen), Some(peer)) => strip_envoy_append(seen, peer),
        _ => None,
    };
    let received_xff = envoy_appended_to.or(seen_xff.as_deref());
    let resolution = resolve(config, peer, received_xff, facts, observe);
    let client = resolution.client.map(IpText::new);
    let access = config.access.decide(resolution.client);

    let wanted = client.as_ref().map(IpText::as_bytes);
    let forged_client_header = config.client_ip_header.is_some()
        && config.count_forged_headers
        && facts
            .client_header()
            .is_some_and(|received| Some(received.as_slice()) != wanted);
    let client_header = match (&config.client_ip_header, wanted) {
        (None, _) => HeaderEdit::Keep,
        // Always replaced, never appended: whatever the client sent under
        // that name never reaches the application.
        (Some(_), Some(wanted)) => HeaderEdit::Set(wanted.to_vec()),
        (Some(_), None) => HeaderEdit::Remove,
    };
    let edits = if matches!(access, Decision::Denied(_)) {
        Edits {
            client_header,
            forwarded_for: HeaderEdit::Keep,
            forwarded: HeaderEdit::Keep,
        }
    } else {
        Edits {
            client_header,
            forwarded_for: forwarded_for_edit(
                config.xff_mode,
                received_xff,
                envoy_appended_to.is_some(),
                peer,
                client.as_ref(),
            ),
            forwarded: forwarded_edit(config.forwarded_mode, client.as_ref()),
        }
    };
    Verdict {
        client,
        resolution,
        access,
        forged_client_header,
        edits,
    }
}

/// The resolution rules over the configured source. X-Forwarded-For is
/// already read; the identity and another source are read only when the
/// rules need them.
fn resolve(
    config: &FilterConfig,
    peer: Option<IpAddr>,
    received_xff: Option<&[u8]>,
    facts: &mut impl RequestFacts,
    observe: &mut impl FnMut(Step),
) -> Resolution {
    // The rules call for the identity, then the source, never both at once.
    let facts = RefCell::new(facts);
    resolve_client_observed(
        &config.trust,
        peer,
        || facts.try_borrow_mut().ok()?.peer_identity(),
        &config.source,
        || match config.source {
            ClientIpSource::XForwardedFor => received_xff.map(Cow::Borrowed),
            _ => facts.try_borrow_mut().ok()?.source_header().map(Cow::Owned),
        },
        observe,
    )
}
