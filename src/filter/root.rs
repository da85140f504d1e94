//! A root context: learns its role from `root_id`, checks the plugin JSON
//! once, follows Envoy's log level, and publishes the counters.

use std::rc::Rc;
use std::time::Duration;

use proxy_wasm::traits::{Context, HttpContext, RootContext, StreamContext};
use proxy_wasm::types::{ContextType, Status};

use super::counters::Stats;
use super::host::{path, Host};
use super::http::{ClientIpStream, HttpShared};
use super::peer_filter::PeerFilter;
use crate::config::{check_peer_config, FilterConfig};
use crate::envoy_filter_state::{factory_probe, function_probe, judge_probes, Support, FUNCTION};

pub const HTTP_ROOT_ID: &[u8] = b"client_ip";
pub const PEER_ROOT_ID: &[u8] = b"client_ip_peer";

/// How often counters reach Envoy's stats, and the log level is checked.
const TICK: Duration = Duration::from_secs(1);

#[derive(Debug, PartialEq, Eq)]
pub enum Role {
    /// The HTTP filter.
    Http,
    /// The peer filter: a network filter that records each connection's peer.
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
            Err(status) => Role::Unknown(format!("unreadable (host status {status:?})")),
        }
    }
}

pub struct PluginRoot<H> {
    host: H,
    pub role: Role,
    /// Set once the HTTP role is configured; every stream of the root shares it.
    pub http: Option<Rc<HttpShared>>,
    stats: Option<Stats>,
}

impl<H: Host + Clone> PluginRoot<H> {
    pub fn new(host: H) -> Self {
        PluginRoot {
            host,
            role: Role::Unknown("not yet read".to_owned()),
            http: None,
            stats: None,
        }
    }

    /// Checks and applies the plugin configuration; `false` refuses it.
    pub fn configure(&mut self) -> bool {
        self.follow_log_level();
        self.role = Role::detect(&self.host);
        let json = match self.host.plugin_configuration() {
            Ok(json) => json.unwrap_or_default(),
            Err(status) => {
                log::error!("cannot read the plugin configuration (host status {status:?})");
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
                    "field `root_id`: {root_id} is not a root of this module; use \"client_ip\" for the HTTP filter or \"client_ip_peer\" for the peer filter"
                );
                false
            }
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
        if config.publish_ip_filter_state {
            if let Err(problem) = check_ip_filter_state(&self.host) {
                log::error!("invalid plugin configuration: field `publish_ip_filter_state`: true, but {problem}");
                return false;
            }
        }
        if config.ignores_trusted_proxies() {
            log::warn!("trusted_hops is set, so trusted_proxies is not used");
        }
        if self.stats.is_none() {
            match Stats::define(&self.host) {
                Ok(stats) => self.stats = Some(stats),
                Err(status) => log::warn!("counters unavailable (host status {status:?})"),
            }
        }
        if let Err(status) = self.host.set_tick_period(TICK) {
            log::warn!("counters will not be published (host status {status:?})");
        }
        self.http = Some(Rc::new(HttpShared::new(config)));
        self.flush_stats();
        true
    }

    /// Lets debug lines through when Envoy's `wasm` logger is at debug, and
    /// keeps them out (unformatted) when it is not.
    fn follow_log_level(&self) {
        match self.host.log_level() {
            Ok(level) => self.host.follow_log_level(level),
            Err(status) => log::debug!("log level unreadable (host status {status:?})"),
        }
    }

    pub fn flush_stats(&self) {
        if let (Some(stats), Some(http)) = (&self.stats, &self.http) {
            stats.flush(&self.host, &http.tally);
        }
    }

    pub fn new_http_stream(&self) -> ClientIpStream<H> {
        ClientIpStream {
            host: self.host.clone(),
            shared: self.http.clone(),
        }
    }
}

/// Whether this Envoy can publish `envoy.network.ip`, asked from the root
/// context with two calls that can store nothing (see
/// [`crate::envoy_filter_state`]): the function first, then the factory.
fn check_ip_filter_state(host: &impl Host) -> Result<(), Support> {
    let status = |result: Result<Option<Vec<u8>>, Status>| match result {
        Ok(_) => 0,
        Err(status) => status as u32,
    };
    let function = status(host.call_foreign_function(FUNCTION, function_probe()));
    let factory = status(host.call_foreign_function(FUNCTION, &factory_probe()));
    match judge_probes(function, factory) {
        Support::Ready => Ok(()),
        missing => Err(missing),
    }
}

impl<H: Host + Clone> Context for PluginRoot<H> {}

impl<H: Host + Clone + 'static> RootContext for PluginRoot<H> {
    fn on_configure(&mut self, _plugin_configuration_size: usize) -> bool {
        self.configure()
    }

    fn on_tick(&mut self) {
        self.follow_log_level();
        self.flush_stats();
    }

    fn create_http_context(&self, _context_id: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(self.new_http_stream()))
    }

    fn create_stream_context(&self, _context_id: u32) -> Option<Box<dyn StreamContext>> {
        Some(Box::new(PeerFilter {
            host: self.host.clone(),
        }))
    }

    fn get_type(&self) -> Option<ContextType> {
        // The SDK panics on a root without a type, so an unconfigured root
        // still answers one.
        Some(match self.role {
            Role::Peer => ContextType::StreamContext,
            _ => ContextType::HttpContext,
        })
    }
}
