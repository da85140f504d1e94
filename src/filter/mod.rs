//! Glue between the proxy-wasm ABI and the client-IP logic.
//!
//! One module, two roots, chosen by `root_id`:
//! - `client_ip`: the HTTP filter that resolves the client and rewrites headers;
//! - `client_ip_peer`: a network filter that records each connection's true
//!   TCP peer for the HTTP filter, because with `use_remote_address: false`
//!   Envoy's `source.address` is the rightmost X-Forwarded-For entry.
//!
//! The module implements the ABI's callbacks itself ([`exports`], wasm32
//! only) instead of through an SDK's dispatcher: per stream it keeps one
//! map entry and enters no code it does not need. Everything below the
//! callbacks reaches Envoy through the [`host::Host`] trait, so the request
//! flow runs in unit tests against a recording host.

// Off wasm32 nothing calls in but the unit tests.
#![cfg_attr(not(target_arch = "wasm32"), allow(dead_code))]

mod contexts;
mod counters;
#[cfg(target_arch = "wasm32")]
mod exports;
#[cfg(test)]
mod flow_tests;
mod host;
mod http;
#[cfg(test)]
mod mock;
mod peer;
mod root;

/// What a stream callback tells Envoy to do next.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    Continue = 0,
    /// Stop here: the filter answered the request itself.
    Pause = 1,
}
