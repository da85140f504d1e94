//! Glue between the proxy-wasm SDK and the client-IP logic.
//!
//! One module, two roots, chosen by `root_id`:
//! - `client_ip`: the HTTP filter, which resolves the client and rewrites
//!   headers ([`http`]);
//! - `client_ip_peer`: the peer filter, a network filter that records each
//!   connection's true TCP peer for the HTTP filter ([`peer_filter`]).
//!
//! The SDK dispatches Envoy's callbacks to the contexts here. Everything the
//! contexts ask of Envoy goes through the [`host::Host`] trait, so the whole
//! flow runs in unit tests against a host that behaves like Envoy.

// Off wasm32 nothing calls in but the unit tests.
#![cfg_attr(not(target_arch = "wasm32"), allow(dead_code))]

mod counters;
pub use counters::{COUNTERS, MEMORY_GAUGE};
#[cfg(test)]
mod flow_tests;
mod host;
mod http;
#[cfg(all(test, not(target_arch = "wasm32")))]
mod link_stubs;
#[cfg(test)]
mod mock;
mod peer_filter;
mod root;

#[cfg(target_arch = "wasm32")]
proxy_wasm::main! {{
    // Info until the first root reads Envoy's level and follows it.
    proxy_wasm::set_log_level(proxy_wasm::types::LogLevel::Info);
    proxy_wasm::set_root_context(|_| -> Box<dyn proxy_wasm::traits::RootContext> {
        Box::new(root::PluginRoot::new(host::WasmHost))
    });
}}
