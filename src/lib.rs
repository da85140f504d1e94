//! client-ip: an Envoy proxy-wasm filter that tells the application who its
//! client really is.
//!
//! The crate has two halves:
//! - host-independent logic, with no proxy-wasm types: [`peer`] (where the
//!   true peer comes from), [`decide`] (the whole decision for one request),
//!   built on [`resolve`] (who the client is), [`trust`] (whom to believe),
//!   [`identity`] (matching the peer's mTLS identity), [`access`] (access
//!   control on the client), [`rewrite`] (what the request carries on),
//!   [`address`], [`forwarded`] and [`ranges`] (parsing and matching
//!   addresses), and [`config`] (parsing the plugin JSON);
//! - `filter`, the thin glue over the proxy-wasm SDK (the default `filter`
//!   feature): it reads the facts, calls [`decide::decide`], and applies the
//!   verdict.

// A panic inside the module aborts the Wasm VM and every later request on that
// worker fails, so nothing on a runtime path may panic.
#![cfg_attr(
    not(test),
    deny(
        clippy::unwrap_used,
        clippy::expect_used,
        clippy::panic,
        clippy::indexing_slicing,
        clippy::unreachable,
        clippy::todo
    )
)]

pub mod access;
pub mod address;
pub mod config;
pub mod decide;
pub mod envoy_filter_state;
pub mod forwarded;
pub mod identity;
pub mod peer;
pub mod ranges;
pub mod resolve;
pub mod rewrite;
pub mod trust;

#[cfg(feature = "filter")]
mod filter;
/// The filter's stat names (Envoy shows them as `wasmcustom.<name>`), for
/// `client-ip explain`.
#[cfg(feature = "filter")]
pub use filter::{COUNTERS, MEMORY_GAUGE};
