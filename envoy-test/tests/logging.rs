//! The filter's log lines in real Envoy, at the level Envoy is asked for: a
//! denial is logged at debug level, so it shows when Envoy logs its `wasm`
//! component at debug (`--component-log-level wasm:debug`, as
//! `istioctl proxy-config log <pod> --level wasm:debug` sets it) and not at
//! Envoy's default level, info.

use envoy_test::{Envoy, Listener, Request};

const DENY: &str = r#"{"deny_clients":["127.0.0.66"]}"#;
const DENIED_LINE: &str = "denied client 127.0.0.66 (listed in deny_clients)";

/// Starts Envoy (one worker) with `args`, sends one request from the denied
/// client, and returns Envoy's whole log once it has stopped.
fn log_of_a_denial(args: &[&str]) -> String {
    let mut envoy = Envoy::start_with(&[Listener::sidecar("sidecar", DENY)], 1, args);
    let response = Request::get("/ip")
        .from("127.0.0.66")
        .send(envoy.listener("sidecar"));
    assert_eq!(response.status, 403, "{}", response.body);
    assert_eq!(response.body, "client address not allowed\n");
    assert_eq!(envoy.counter_reaching("wasmcustom.client_ip.denied", 1), 1);
    envoy.assert_no_vm_crash();
    let log = envoy.stop();
    // The log is complete: it runs to Envoy's own last words.
    assert!(log.contains("exiting"), "Envoy's log ends early:\n{log}");
    log
}

#[test]
fn a_denial_is_logged_when_envoy_logs_wasm_at_debug() {
    let log = log_of_a_denial(&["--component-log-level", "wasm:debug"]);
    let wasm: Vec<&str> = log.lines().filter(|l| l.contains("][wasm]")).collect();
    let line = wasm
        .iter()
        .find(|line| line.contains(DENIED_LINE))
        .unwrap_or_else(|| {
            panic!(
                "no {DENIED_LINE:?} among Envoy's wasm lines:\n{}",
                wasm.join("\n")
            )
        });
    assert!(line.contains("[debug][wasm]"), "{line}");
}

#[test]
fn a_denial_leaves_no_line_at_envoys_default_level() {
    let log = log_of_a_denial(&[]);
    assert!(
        !log.contains("denied client"),
        "a debug line at info level:\n{log}"
    );
}
