//! The HTTP filter, in three steps per request: read the facts from the host,
//! [`decide`] without it, apply the verdict.

use std::net::IpAddr;
use std::rc::Rc;

use proxy_wasm::traits::{Context, HttpContext};
use proxy_wasm::types::Action;

use super::counters::{Counter, Tally};
use super::host::{path, serialize_headers, Host, Status};
use crate::access::Decision;
use crate::address::IpText;
use crate::config::{FilterConfig, DEFAULT_CLIENT_IP_HEADER};
use crate::decide::{decide, RequestFacts, Verdict};
use crate::envoy_filter_state::{client_arguments, FUNCTION, IP_OBJECT};
use crate::peer::{self, WaypointPeer};
use crate::resolve::ClientOrigin;
use crate::rewrite::HeaderEdit;

const X_FORWARDED_FOR: &str = "x-forwarded-for";
const FORWARDED: &str = "forwarded";
/// A denial's body, and its `%RESPONSE_CODE_DETAILS%` in access logs.
const DENY_BODY: &[u8] = b"client address not allowed\n";
const DENY_DETAILS: &str = "client_ip_denied";
/// The answer when a write the trust guarantee depends on failed: the
/// request is never forwarded with what the client wrote.
const WRITE_FAILED_STATUS: u16 = 500;
const WRITE_FAILED_BODY: &[u8] = b"client address could not be set\n";
const WRITE_FAILED_DETAILS: &str = "client_ip_write_failed";

/// What every stream of one configured root shares.
pub struct HttpShared {
    pub config: FilterConfig,
    pub tally: Tally,
    /// Local replies' headers, serialised once.
    reply_headers: Vec<u8>,
}

impl HttpShared {
    pub fn new(config: FilterConfig) -> Self {
        HttpShared {
            config,
            tally: Tally::default(),
            reply_headers: serialize_headers(&[("content-type", "text/plain")]),
        }
    }

    /// One request's headers.
    pub fn serve_request(&self, host: &impl Host) -> Action {
        let tally = &self.tally;
        tally.bump(Counter::Requests, 1);
        let peer = read_peer(host, tally);
        let mut facts = HostFacts {
            host,
            config: &self.config,
        };
        let verdict = decide(&self.config, peer, &mut facts);
        self.count(&verdict);
        self.apply(host, &verdict)
    }

    fn count(&self, verdict: &Verdict) {
        let tally = &self.tally;
        let resolution = &verdict.resolution;
        tally.bump(
            Counter::InvalidXffEntries,
            u64::from(resolution.invalid_entries),
        );
        if resolution.peer_trusted_by_identity {
            tally.bump(Counter::PeerTrustedByIdentity, 1);
        }
        if resolution.source_missing {
            tally.bump(Counter::SourceMissing, 1);
        }
        if matches!(
            resolution.origin,
            ClientOrigin::TrustedHops | ClientOrigin::TrustedProxies
        ) {
            tally.bump(Counter::ClientFromTrusted, 1);
        }
        if verdict.forged_client_header {
            tally.bump(Counter::ForgedHeaderReplaced, 1);
        }
        match verdict.access {
            Decision::Allowed => {}
            Decision::AllowedByList => tally.bump(Counter::AllowedByList, 1),
            Decision::WouldDeny(reason) => {
                tally.bump(Counter::DryRunDenied, 1);
                log::debug!(
                    "dry run: would deny client {} ({})",
                    shown(verdict.client.as_ref()),
                    reason.as_str()
                );
            }
            Decision::Denied(reason) => {
                tally.bump(Counter::Denied, 1);
                log::debug!(
                    "denied client {} ({})",
                    shown(verdict.client.as_ref()),
                    reason.as_str()
                );
            }
        }
    }

    /// Applies the verdict. Every header write, and the publication of
    /// `envoy.network.ip`, is one the trust guarantee depends on: should any
    /// fail, the request is answered with an error and never forwarded.
    fn apply(&self, host: &impl Host, verdict: &Verdict) -> Action {
        let header = self
            .config
            .client_ip_header
            .as_deref()
            .unwrap_or(DEFAULT_CLIENT_IP_HEADER);
        let edits = &verdict.edits;
        let written = write(host, header, &edits.client_header)
            .and_then(|()| write(host, X_FORWARDED_FOR, &edits.forwarded_for))
            .and_then(|()| write(host, FORWARDED, &edits.forwarded))
            .and_then(|()| self.publish(host, verdict.client.as_ref()));
        if verdict.is_denied() {
            // The denial stands whatever was written: it only labels the log.
            return self.reply(
                host,
                self.config.access.deny_status,
                DENY_DETAILS,
                DENY_BODY,
            );
        }
        match written {
            Ok(()) => Action::Continue,
            Err(failure) => {
                self.tally.bump(Counter::WriteFailed, 1);
                log::warn!(
                    "{failure}; answering {WRITE_FAILED_STATUS} rather than forwarding what the client sent"
                );
                self.reply(
                    host,
                    WRITE_FAILED_STATUS,
                    WRITE_FAILED_DETAILS,
                    WRITE_FAILED_BODY,
                )
            }
        }
    }

    /// The client as filter state, for access logs and Envoy's own filters,
    /// as configured.
    fn publish(&self, host: &impl Host, client: Option<&IpText>) -> Result<(), String> {
        if self.config.publish_filter_state {
            if let Some(client) = client {
                // Only logs read `wasm.client_ip`: a failure is logged, not fatal.
                if let Err(status) = host.set_property(path::CLIENT_IP, client.as_bytes()) {
                    log::debug!("filter state wasm.client_ip not set (host status {status:?})");
                }
            }
        }
        if self.config.publish_ip_filter_state {
            match client {
                Some(client) => {
                    let mut arguments = Vec::new();
                    client_arguments(client.as_str(), &mut arguments);
                    if let Err(status) = host.call_foreign_function(FUNCTION, &arguments) {
                        self.tally.bump(Counter::IpFilterStateUnpublished, 1);
                        return Err(format!(
                            "filter state {IP_OBJECT} not set (host status {status:?})"
                        ));
                    }
                }
                None => self.tally.bump(Counter::IpFilterStateUnpublished, 1),
            }
        }
        Ok(())
    }

    fn reply(&self, host: &impl Host, status: u16, details: &str, body: &[u8]) -> Action {
        if let Err(code) = host.send_local_response(status, details, body, &self.reply_headers) {
            // Paused, the request goes no further upstream until Envoy's
            // timeouts end it.
            log::warn!("local reply {status} refused (host status {code:?}); the request is held");
        }
        Action::Pause
    }
}

fn write(host: &impl Host, header: &str, edit: &HeaderEdit) -> Result<(), String> {
    let result = match edit {
        HeaderEdit::Keep => return Ok(()),
        HeaderEdit::Set(value) => host.set_request_header(header, value),
        HeaderEdit::Remove => host.remove_request_header(header),
    };
    result.map_err(|status| format!("header {header} not written (host status {status:?})"))
}

/// The client as a log line shows it.
fn shown(client: Option<&IpText>) -> &str {
    client.map_or("unknown", IpText::as_str)
}

/// The facts a decision may ask for, read from the host when it asks.
struct HostFacts<'a, H> {
    host: &'a H,
    config: &'a FilterConfig,
}

impl<H: Host> RequestFacts for HostFacts<'_, H> {
    fn peer_identity(&mut self) -> Option<Vec<u8>> {
        // Without a peer certificate (an ambient waypoint's internal
        // listener), the HBONE peer's principal as the waypoint recorded it.
        read(self.host, "peer identity", path::PEER_URI_SAN).or_else(|| {
            read(
                self.host,
                "waypoint principal",
                path::WAYPOINT_PEER_PRINCIPAL,
            )
        })
    }

    fn forwarded_for(&mut self) -> Option<Vec<u8>> {
        // Envoy joins repeated X-Forwarded-For lines as they arrive, so one
        // read sees them all.
        logged(
            X_FORWARDED_FOR,
            self.host.get_request_header(X_FORWARDED_FOR),
        )
        .flatten()
    }

    fn source_header(&mut self) -> Option<Vec<u8>> {
        // The `request.headers` attribute holds every line of a repeated
        // header, joined by commas, where a header read returns the first
        // only: a client's own line must not hide the proxy's.
        let name = self.config.source.header_name();
        read(self.host, name, &["request", "headers", name])
    }

    fn client_header(&mut self) -> Option<Vec<u8>> {
        let header = self.config.client_ip_header.as_deref()?;
        logged(header, self.host.get_request_header(header)).flatten()
    }
}

/// The true downstream peer, from the first place that knows (see
/// [`crate::peer`]).
fn read_peer(host: &impl Host, tally: &Tally) -> Option<IpAddr> {
    if let Some(record) = read(host, "peer record", path::PEER_RECORD) {
        return known(peer::from_peer_filter(&record), tally);
    }
    // The waypoint's record before `source.address`: behind a waypoint the
    // request's X-Forwarded-For has mostly made that one a forgery, so
    // reading it first would cost every such request a read.
    match read_waypoint_peer(host) {
        WaypointPeer::Peer(peer) => return Some(peer),
        WaypointPeer::ForgedOnConnect => {
            tally.bump(Counter::PeerForgedOnConnect, 1);
            log::debug!("the HBONE CONNECT carried the peer's address: peer unknown");
            return known(None, tally);
        }
        WaypointPeer::Unknown => {}
    }
    let source = read(host, "source address", path::SOURCE_ADDRESS);
    known(source.as_deref().and_then(peer::from_source_address), tally)
}

/// The waypoint's record of its HBONE peer. The port first: when it is
/// absent there is no waypoint record, and when it is 0 the address is a
/// forgery not worth reading.
fn read_waypoint_peer(host: &impl Host) -> WaypointPeer {
    let Some(port) = read(host, "waypoint peer port", path::WAYPOINT_PEER_PORT) else {
        return WaypointPeer::Unknown;
    };
    if peer::from_waypoint(None, Some(&port)) == WaypointPeer::ForgedOnConnect {
        return WaypointPeer::ForgedOnConnect;
    }
    let ip = read(host, "waypoint peer", path::WAYPOINT_PEER_IP);
    peer::from_waypoint(ip.as_deref(), Some(&port))
}

fn known(peer: Option<IpAddr>, tally: &Tally) -> Option<IpAddr> {
    if peer.is_none() {
        tally.bump(Counter::PeerUnknown, 1);
    }
    peer
}

fn read(host: &impl Host, what: &str, path: &[&str]) -> Option<Vec<u8>> {
    logged(what, host.get_property(path)).flatten()
}

/// A failed read never fails the request: it is logged, and the decision
/// goes on without that fact (an unknown peer, no identity, no header).
fn logged<T>(what: &str, result: Result<T, Status>) -> Option<T> {
    match result {
        Ok(value) => Some(value),
        Err(status) => {
            log::debug!("host call on {what} failed (host status {status:?})");
            None
        }
    }
}

/// One HTTP stream.
pub struct ClientIpStream<H> {
    pub host: H,
    /// `None` while the root has no accepted configuration.
    pub shared: Option<Rc<HttpShared>>,
}

impl<H: Host> Context for ClientIpStream<H> {}

impl<H: Host> HttpContext for ClientIpStream<H> {
    fn on_http_request_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        match &self.shared {
            Some(shared) => shared.serve_request(&self.host),
            None => serve_unconfigured(&self.host),
        }
    }
}

/// A stream whose root has no configuration (Envoy creates none for a root
/// whose configuration failed; were it to, the forgeable header must still
/// not pass, and nothing else is known).
fn serve_unconfigured(host: &impl Host) -> Action {
    match host.remove_request_header(DEFAULT_CLIENT_IP_HEADER) {
        Ok(()) => Action::Continue,
        Err(status) => {
            log::warn!(
                "unconfigured stream could not remove {DEFAULT_CLIENT_IP_HEADER} (host status {status:?})"
            );
            let headers = serialize_headers(&[]);
            if let Err(code) = host.send_local_response(
                WRITE_FAILED_STATUS,
                WRITE_FAILED_DETAILS,
                WRITE_FAILED_BODY,
                &headers,
            ) {
                log::warn!("local reply refused (host status {code:?}); the request is held");
            }
            Action::Pause
        }
    }
}
