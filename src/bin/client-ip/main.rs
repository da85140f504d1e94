//! `client-ip`: checks, explains and tries a client-ip configuration with
//! the filter's own code (its parser and [`client_ip::decide`]), before it
//! reaches a mesh.
//!
//! - `check FILE...`: the one-line error Envoy would log, and warnings about
//!   trust that lets the wrong party choose the client;
//! - `explain FILE`: who can choose the client, what the application
//!   receives, what is counted;
//! - `resolve FILE --peer ADDR`: the decision for one request, step by step.
//!
//! On wasm32 (the module's own build) this is an empty stub, so the
//! command's dependencies never reach the module.

#[cfg(not(target_arch = "wasm32"))]
mod check;
#[cfg(not(target_arch = "wasm32"))]
mod cli;
#[cfg(not(target_arch = "wasm32"))]
mod explain;
#[cfg(not(target_arch = "wasm32"))]
mod load;
#[cfg(not(target_arch = "wasm32"))]
mod resolve;

#[cfg(not(target_arch = "wasm32"))]
fn main() {
    std::process::exit(cli::main());
}

#[cfg(target_arch = "wasm32")]
fn main() {}
