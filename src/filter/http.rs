//! The HTTP filter: resolves the client and rewrites the request headers.

use std::cell::RefCell;
use std::net::IpAddr;

use super::counters::{bump, Tally};
use super::host::{path, serialize_headers, Host};
use super::Action;
use crate::access::Decision;
use crate::address::{parse_forwarded_entry, parse_socket_peer, IpText};
use crate::config::{ClientIpSource, FilterConfig, XffMode};
use crate::resolve::{resolve_client, resolve_client_from, ClientOrigin};
use crate::rewrite::{forwarded_edit, forwarded_for_edit, strip_envoy_append, HeaderEdit};

const X_FORWARDED_FOR: &str = "x-forwarded-for";
const FORWARDED: &str = "forwarded";
/// A denial's body, and its `%RESPONSE_CODE_DETAILS%` in access logs.
const DENY_BODY: &[u8] = b"client address not allowed\n";
const DENY_DETAILS: &str = "client_ip_denied";

/// What every stream of one configured root shares.
pub struct HttpShared {
    config: FilterConfig,
    pub tally: Tally,
    /// Reused for the new X-Forwarded-For value, so requests do not allocate.
    scratch: RefCell<Vec<u8>>,
    /// The denial's headers, serialised once.
    deny_headers: Vec<u8>,
    /// The property path of the client source header. The attribute holds
    /// every value of a repeated header, joined by commas, where a header
    /// read would return the first value only: a client's own line must not
    /// hide the proxy's.
    source_path: Vec<u8>,
}

impl HttpShared {
    pub fn new(config: FilterConfig) -> Self {
        HttpShared {
            source_path: path::request_header(config.source.header_name()),
            config,
            tally: Tally::default(),
            scratch: RefCell::new(Vec::with_capacity(256)),
            deny_headers: serialize_headers(&[("content-type", "text/plain")]),
        }
    }

    /// One request's headers: resolve the client, apply the access lists,
    /// rewrite the headers and publish the client.
    pub fn serve_request(&self, host: &impl Host) -> Action {
        let tally = &self.tally;
        bump(&tally.requests, 1);
        let peer = read_peer(host);
        if peer.is_none() {
            bump(&tally.peer_unknown, 1);
        }
        let config = &self.config;
        // X-Forwarded-For is read when it is the source, or to append to it.
        let reads_xff =
            config.source == ClientIpSource::XForwardedFor || config.xff_mode == XffMode::Append;
        let seen_xff = if reads_xff {
            logged(X_FORWARDED_FOR, host.get_request_header(X_FORWARDED_FOR)).flatten()
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
        let peer_identity =
            || logged("peer identity", host.get_property(path::PEER_URI_SAN)).flatten();
        let resolution = match &config.source {
            ClientIpSource::XForwardedFor => {
                resolve_client(&config.trust, peer, peer_identity, received_xff)
            }
            // Another header is read only when the peer is trusted.
            source => resolve_client_from(&config.trust, peer, peer_identity, source, || {
                logged(source.header_name(), host.get_property(&self.source_path)).flatten()
            }),
        };
        bump(
            &tally.invalid_xff_entries,
            u64::from(resolution.invalid_entries),
        );
        if resolution.peer_trusted_by_identity {
            bump(&tally.peer_trusted_by_identity, 1);
        }
        if resolution.source_missing {
            bump(&tally.source_missing, 1);
        }
        if matches!(
            resolution.origin,
            ClientOrigin::TrustedHops | ClientOrigin::TrustedProxies
        ) {
            bump(&tally.client_from_trusted, 1);
        }
        let client = resolution.client.map(IpText::new);

        match config.access.decide(resolution.client) {
            Decision::Allowed => {}
            Decision::AllowedByList => bump(&tally.allowed_by_list, 1),
            Decision::WouldDeny(reason) => {
                bump(&tally.dry_run_denied, 1);
                log::debug!(
                    "dry run: would deny client {} ({})",
                    shown(client.as_ref()),
                    reason.as_str()
                );
            }
            Decision::Denied(reason) => {
                bump(&tally.denied, 1);
                log::debug!(
                    "denied client {} ({})",
                    shown(client.as_ref()),
                    reason.as_str()
                );
                // The request goes no further, but its access log line
                // shows the client like any other.
                if let (Some(header), Some(client)) = (&config.client_ip_header, &client) {
                    apply(host, header, HeaderEdit::Set(client.as_bytes()));
                }
                self.publish_client(host, client.as_ref());
                self.deny(host);
                return Action::Pause;
            }
        }

        if let Some(header) = &config.client_ip_header {
            self.write_client_header(host, header, client.as_ref());
        }
        self.write_forwarding_headers(
            host,
            received_xff,
            envoy_appended_to.is_some(),
            peer,
            client.as_ref(),
        );
        self.publish_client(host, client.as_ref());
        Action::Continue
    }

    /// The client as filter state `wasm.client_ip`, for access logs and
    /// other filters, when `publish_filter_state` asks for it.
    fn publish_client(&self, host: &impl Host, client: Option<&IpText>) {
        if let (true, Some(client)) = (self.config.publish_filter_state, client) {
            logged(
                "filter state",
                host.set_property(path::CLIENT_IP, client.as_bytes()),
            );
        }
    }

    /// Answers a denied request; it never reaches the application. Should
    /// Envoy refuse the reply, the request stays paused rather than go on.
    fn deny(&self, host: &impl Host) {
        let status = self.config.access.deny_status;
        if let Err(status_code) =
            host.send_local_response(status, DENY_DETAILS, DENY_BODY, &self.deny_headers)
        {
            log::warn!("denial not answered (host status {status_code}); the request is held");
        }
    }

    /// The header is always replaced, never appended, so whatever the client
    /// sent under that name never reaches the application.
    fn write_client_header(&self, host: &impl Host, header: &str, client: Option<&IpText>) {
        let wanted = client.map(IpText::as_bytes);
        // Replacing needs no read: the read is only for the counter.
        if self.config.count_forged_headers {
            if let Some(received) = logged(header, host.get_request_header(header)).flatten() {
                if Some(received.as_slice()) != wanted {
                    bump(&self.tally.forged_header_replaced, 1);
                }
            }
        }
        apply(
            host,
            header,
            wanted.map_or(HeaderEdit::Remove, HeaderEdit::Set),
        );
    }

    /// X-Forwarded-For and Forwarded, as their modes say.
    fn write_forwarding_headers(
        &self,
        host: &impl Host,
        received: Option<&[u8]>,
        envoy_appended: bool,
        peer: Option<IpAddr>,
        client: Option<&IpText>,
    ) {
        self.with_scratch(|scratch| {
            let edit = forwarded_for_edit(
                self.config.xff_mode,
                received,
                envoy_appended,
                peer,
                client,
                scratch,
            );
            apply(host, X_FORWARDED_FOR, edit);
            let edit = forwarded_edit(self.config.forwarded_mode, client, scratch);
            apply(host, FORWARDED, edit);
        });
    }

    fn with_scratch(&self, write: impl FnOnce(&mut Vec<u8>)) {
        // A stream never re-enters while another runs; should the borrow
        // ever fail, a fresh buffer does the job.
        match self.scratch.try_borrow_mut() {
            Ok(mut scratch) => write(&mut scratch),
            Err(_) => write(&mut Vec::new()),
        }
    }
}

/// The client as a log line shows it.
fn shown(client: Option<&IpText>) -> &str {
    client.map_or("unknown", IpText::as_str)
}

fn apply(host: &impl Host, header: &str, edit: HeaderEdit) {
    let result = match edit {
        HeaderEdit::Keep => return,
        HeaderEdit::Set(value) => host.set_request_header(header, value),
        HeaderEdit::Remove => host.remove_request_header(header),
    };
    logged(header, result);
}

/// The true downstream peer: the network filter's record when it runs, else
/// Envoy's `source.address` when that is the socket's (it has a real port).
/// With `use_remote_address: false` and an X-Forwarded-For present, Envoy's
/// `source.address` is that header's rightmost entry with port 0, which the
/// client controls, so then the peer is unknown.
fn read_peer(host: &impl Host) -> Option<IpAddr> {
    if let Some(recorded) = logged("peer", host.get_property(path::CLIENT_IP_PEER)).flatten() {
        return parse_forwarded_entry(&recorded);
    }
    let source = logged("peer", host.get_property(path::SOURCE_ADDRESS)).flatten()?;
    parse_socket_peer(&source)
}

/// A failed host call never fails the request: it is logged and the request
/// goes on without that step.
fn logged<T>(what: &str, result: Result<T, super::host::Status>) -> Option<T> {
    match result {
        Ok(value) => Some(value),
        Err(status) => {
            log::debug!("host call on {what} failed (host status {status})");
            None
        }
    }
}

/// A stream whose root has no configuration (Envoy creates none for a root
/// whose configuration failed; were it to, the forgeable header must still
/// not pass).
pub fn serve_unconfigured(host: &impl Host) -> Action {
    logged(
        crate::config::DEFAULT_CLIENT_IP_HEADER,
        host.remove_request_header(crate::config::DEFAULT_CLIENT_IP_HEADER),
    );
    Action::Continue
}
