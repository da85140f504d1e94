//! The network filter: records each connection's true TCP peer.

use proxy_wasm::traits::{Context, StreamContext};
use proxy_wasm::types::Action;

use super::host::{self, path};
use crate::address::{parse_socket_peer, IpText};

/// Holds no state, so creating one per connection allocates nothing.
pub struct PeerRecorder;

impl Context for PeerRecorder {}

impl StreamContext for PeerRecorder {
    fn on_new_connection(&mut self) -> Action {
        // At connection time no HTTP header has touched the address yet.
        match host::get_property(path::SOURCE_ADDRESS) {
            Ok(Some(raw)) => match parse_socket_peer(&raw) {
                Some(peer) => {
                    let text = IpText::new(peer);
                    if let Err(status) = host::set_property(path::CLIENT_IP_PEER, text.as_bytes()) {
                        log::warn!("peer not recorded (host status {status})");
                    }
                }
                None => log::debug!(
                    "peer {:?} is not an IP address",
                    String::from_utf8_lossy(&raw)
                ),
            },
            Ok(None) => log::debug!("connection has no peer address"),
            Err(status) => log::warn!("peer unreadable (host status {status})"),
        }
        Action::Continue
    }
}
