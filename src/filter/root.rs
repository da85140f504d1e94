//! The root context: learns its role from `root_id`, checks the plugin JSON
//! once, creates the per-stream contexts and publishes the counters.

use std::rc::Rc;

use proxy_wasm::traits::{Context, HttpContext, RootContext, StreamContext};
use proxy_wasm::types::ContextType;

use super::counters::Stats;
use super::host::{self, path};
use super::http::{ClientIpStream, HttpShared};
use super::peer::PeerRecorder;
use crate::config::{check_peer_config, FilterConfig};

pub const HTTP_ROOT_ID: &[u8] = b"client_ip";
pub const PEER_ROOT_ID: &[u8] = b"client_ip_peer";

/// How often counters reach Envoy's stats.
const STATS_PERIOD_MS: u32 = 1000;

#[derive(Debug, PartialEq, Eq)]
enum Role {
    Http,
    Peer,
    /// The root_id as read, or why it could not be read.
    Unknown(String),
}

impl Role {
    /// The role must be known when the root is created: the SDK asks for the
    /// context type of every new connection or stream, and a stream created as
    /// the wrong type would abort the VM on its first callback.
    fn detect() -> Role {
        match host::get_property(path::PLUGIN_ROOT_ID) {
            Ok(Some(id)) if id == HTTP_ROOT_ID => Role::Http,
            Ok(Some(id)) if id == PEER_ROOT_ID => Role::Peer,
            Ok(Some(id)) => Role::Unknown(format!("{:?}", String::from_utf8_lossy(&id))),
            Ok(None) => Role::Unknown("none".to_owned()),
            Err(status) => Role::Unknown(format!("unreadable (host status {status})")),
        }
    }
}

pub struct PluginRoot {
    role: Role,
    /// Set once the HTTP role is configured.
    http: Option<Rc<HttpShared>>,
    stats: Option<Stats>,
}

impl PluginRoot {
    pub fn new() -> Self {
        PluginRoot {
            role: Role::detect(),
            http: None,
            stats: None,
        }
    }

    fn configure_http(&mut self, json: &[u8]) -> bool {
        let config = match FilterConfig::from_json(json) {
            Ok(config) => config,
            Err(error) => {
                log::error!("invalid plugin configuration: {error}");
                return false;
            }
        };
        if config.ignores_trusted_proxies() {
            log::warn!("trusted_hops is set, so trusted_proxies is not used");
        }
        if self.stats.is_none() {
            match Stats::define() {
                Ok(stats) => self.stats = Some(stats),
                Err(status) => log::warn!("counters unavailable (host status {status})"),
            }
            if let Err(status) = host::set_tick_period_milliseconds(STATS_PERIOD_MS) {
                log::warn!("counters will not be published (host status {status})");
            }
        }
        self.flush_stats();
        self.http = Some(Rc::new(HttpShared::new(config)));
        true
    }

    fn flush_stats(&self) {
        if let (Some(stats), Some(http)) = (&self.stats, &self.http) {
            stats.flush(&http.tally);
        }
    }
}

impl Context for PluginRoot {}

impl RootContext for PluginRoot {
    fn on_configure(&mut self, plugin_configuration_size: usize) -> bool {
        if let Role::Unknown(_) = self.role {
            self.role = Role::detect();
        }
        let json = match host::plugin_configuration(plugin_configuration_size) {
            Ok(json) => json,
            Err(status) => {
                log::error!("cannot read the plugin configuration (host status {status})");
                return false;
            }
        };
        match &self.role {
            Role::Http => self.configure_http(&json),
            Role::Peer => match check_peer_config(&json) {
                Ok(()) => true,
                Err(error) => {
                    log::error!("invalid plugin configuration: {error}");
                    false
                }
            },
            Role::Unknown(root_id) => {
                log::error!(
                    "field `root_id`: {root_id} is not a root of this module; use \"client_ip\" for the HTTP filter or \"client_ip_peer\" for the network filter"
                );
                false
            }
        }
    }

    fn on_tick(&mut self) {
        self.flush_stats();
    }

    fn get_type(&self) -> Option<ContextType> {
        match self.role {
            Role::Http => Some(ContextType::HttpContext),
            Role::Peer => Some(ContextType::StreamContext),
            Role::Unknown(_) => None,
        }
    }

    fn create_http_context(&self, _context_id: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(ClientIpStream::new(self.http.clone())))
    }

    fn create_stream_context(&self, _context_id: u32) -> Option<Box<dyn StreamContext>> {
        Some(Box::new(PeerRecorder))
    }
}
