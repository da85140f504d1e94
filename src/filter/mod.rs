//! Glue between the proxy-wasm SDK and the client-IP logic.
//!
//! One module, two roots, chosen by `root_id`:
//! - `client_ip`: the HTTP filter that resolves the client and rewrites headers;
//! - `client_ip_peer`: a network filter that records each connection's true
//!   TCP peer for the HTTP filter, because with `use_remote_address: false`
//!   Envoy's `source.address` is the rightmost X-Forwarded-For entry.

mod counters;
mod host;
mod http;
mod peer;
mod root;

use proxy_wasm::traits::RootContext;
use proxy_wasm::types::LogLevel;

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Info);
    proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> { Box::new(root::PluginRoot::new()) });
}}
