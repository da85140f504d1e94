//! The peer filter (`root_id: client_ip_peer`): a network filter that records
//! each connection's true TCP peer for the HTTP filter, because with
//! `use_remote_address: false` Envoy's `source.address` becomes the rightmost
//! X-Forwarded-For entry once a request carries one.

use proxy_wasm::traits::{Context, StreamContext};
use proxy_wasm::types::Action;

use super::host::{path, Host};
use crate::address::IpText;
use crate::peer::from_source_address;

pub struct PeerFilter<H> {
    pub host: H,
}

impl<H: Host> Context for PeerFilter<H> {}

impl<H: Host> StreamContext for PeerFilter<H> {
    /// Runs when a connection opens, before any HTTP header has touched the
    /// address. It keeps no state per connection.
    fn on_new_connection(&mut self) -> Action {
        let host = &self.host;
        match host.get_property(path::SOURCE_ADDRESS) {
            Ok(Some(raw)) => match from_source_address(&raw) {
                Some(peer) => {
                    let text = IpText::new(peer);
                    if let Err(status) = host.set_property(path::PEER_RECORD, text.as_bytes()) {
                        log::warn!("peer not recorded (host status {status:?})");
                    }
                }
                None => log::debug!(
                    "peer {:?} is not an IP address",
                    String::from_utf8_lossy(&raw)
                ),
            },
            Ok(None) => log::debug!("connection has no peer address"),
            Err(status) => log::warn!("peer unreadable (host status {status:?})"),
        }
        Action::Continue
    }
}
