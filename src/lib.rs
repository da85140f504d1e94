//! client-ip: an Envoy proxy-wasm filter that tells the application who its
//! client really is.
//!
//! The crate has two halves:
//! - host-independent logic, with no proxy-wasm types: [`access`] (access
//!   control on the client), [`address`] (parsing
//!   and normalising addresses), [`config`] (the plugin JSON), [`identity`]
//!   (matching the peer's mTLS identity), [`resolve`] (who the client is) and
//!   [`rewrite`] (what the request carries on);
//! - `filter`, the thin glue that adapts that logic to the proxy-wasm SDK
//!   (built with the default `filter` feature).

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
pub mod forwarded;
pub mod identity;
pub mod resolve;
pub mod rewrite;

#[cfg(feature = "filter")]
mod filter;
