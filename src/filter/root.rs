//! A root context: learns its role from `root_id`, checks the plugin JSON
//! once, and publishes the counters.

use std::rc::Rc;

use super::counters::Stats;
use super::host::{path, Host};
use super::http::HttpShared;
use crate::config::{check_peer_config, FilterConfig};

pub const HTTP_ROOT_ID: &[u8] = b"client_ip";
pub const PEER_ROOT_ID: &[u8] = b"client_ip_peer";

/// How often counters reach Envoy's stats.
const STATS_PERIOD_MS: u32 = 1000;

#[derive(Debug, PartialEq, Eq)]
pub enum Role {
    Http,
    Peer,
    /// The root_id as read, or why it could not be read.
    Unknown(String),
}

impl Role {
    fn detect(host: &impl Host) -> Role {
        match host.get_property(path::PLUGIN_ROOT_ID) {
            Ok(Some(id)) if id == HTTP_ROOT_ID => Role::Http,
            Ok(Some(id)) if id == PEER_ROOT_ID => Role::Peer,
            Ok(Some(id)) => Role::Unknown(format!("{:?}", String::from_utf8_lossy(&id))),
            Ok(None) => Role::Unknown("none".to_owned()),
            Err(status) => Role::Unknown(format!("unreadable (host status {status})")),
        }
    }
}

pub struct PluginRoot {
    pub role: Role,
    /// Set once the HTTP role is configured; every stream of the root shares it.
    pub http: Option<Rc<HttpShared>>,
    stats: Option<Stats>,
}

impl PluginRoot {
    pub fn new(host: &impl Host) -> Self {
        PluginRoot {
            role: Role::detect(host),
            http: None,
            stats: None,
        }
    }

    /// Checks and applies the plugin configuration; `false` refuses it.
    pub fn configure(&mut self, host: &impl Host, configuration_size: usize) -> bool {
        if let Role::Unknown(_) = self.role {
            self.role = Role::detect(host);
        }
        let json = match host.plugin_configuration(configuration_size) {
            Ok(json) => json,
            Err(status) => {
                log::error!("cannot read the plugin configuration (host status {status})");
                return false;
            }
        };
        match &self.role {
            Role::Http => self.configure_http(host, &json),
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

    fn configure_http(&mut self, host: &impl Host, json: &[u8]) -> bool {
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
            match Stats::define(host) {
                Ok(stats) => self.stats = Some(stats),
                Err(status) => log::warn!("counters unavailable (host status {status})"),
            }
            if let Err(status) = host.set_tick_period_milliseconds(STATS_PERIOD_MS) {
                log::warn!("counters will not be published (host status {status})");
            }
        }
        self.flush_stats(host);
        self.http = Some(Rc::new(HttpShared::new(config)));
        true
    }

    pub fn flush_stats(&self, host: &impl Host) {
        if let (Some(stats), Some(http)) = (&self.stats, &self.http) {
            stats.flush(host, &http.tally);
        }
    }
}
