//! The network filter: records each connection's true TCP peer.

use super::host::{path, Host};
use super::Action;
use crate::address::{parse_socket_peer, IpText};

/// Runs when a connection opens; it keeps no state per connection. At that
/// point no HTTP header has touched the address yet.
pub fn record_peer(host: &impl Host) -> Action {
    match host.get_property(path::SOURCE_ADDRESS) {
        Ok(Some(raw)) => match parse_socket_peer(&raw) {
            Some(peer) => {
                let text = IpText::new(peer);
                if let Err(status) = host.set_property(path::CLIENT_IP_PEER, text.as_bytes()) {
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
