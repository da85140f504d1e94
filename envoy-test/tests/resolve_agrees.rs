//! `client-ip resolve` against real Envoy: every case of
//! envoy-test/resolve-cases.json goes through Envoy with the module (the
//! documented sidecar listener: the peer filter, `use_remote_address:
//! false`) and through the command, and both must give the case's client,
//! the same access decision and status, and the same request headers.
//!
//! The headers compared are those the case sends and those the filter owns
//! (the client header, X-Forwarded-For, Forwarded), in the order the
//! application gets them. Where the two can differ is Envoy's own header
//! handling, which the command models only as far as the filter sees it:
//! - Envoy adds headers of its own (x-request-id, x-forwarded-proto,
//!   x-envoy-expected-rq-timeout-ms) and the harness sends host and
//!   connection: not compared, the filter never touches them;
//! - Envoy joins repeated lines of the headers it keeps inline
//!   (X-Forwarded-For among them, and Accept) before any filter runs; the
//!   command does the same for X-Forwarded-For only, the one such header the
//!   filter reads or writes, so a case that repeats another inline header
//!   (two Accept lines come out as one `a,b` from Envoy, two from the
//!   command) would show them apart; the filter's decision is the same;
//! - Envoy refuses some requests before the filter (malformed or oversized
//!   headers, a name or value HTTP forbids); the command refuses a header
//!   line with no colon, CR, LF or NUL, and takes the rest;
//! - with `use_remote_address: true` (a gateway) Envoy appends the peer to
//!   X-Forwarded-For before the filter (its own address for a loopback
//!   peer); the command takes the headers as the client sent them, so these
//!   cases run on the sidecar listener only.
//!
//! A denied request never reaches the upstream: its status is compared, and
//! its client header as the access log records it.
//!
//! A case with an `identity` runs on a listener with mutual TLS, as a mesh
//! inbound does: curl presents a certificate from a test mesh CA whose URI
//! SAN is `spiffe://<identity>`, and the command gets `--identity`.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use envoy_test::pki::{Identity, Pki};
use envoy_test::{
    header_pairs, repo_root, Envoy, Listener, ListenerTls, Request, Response, ScratchDir,
};
use serde_json::Value;

struct Case {
    name: String,
    config: String,
    peer: String,
    identity: Option<String>,
    headers: Vec<(String, String)>,
    client: String,
    decision: String,
}

fn cases() -> Vec<Case> {
    let path = repo_root().join("envoy-test/resolve-cases.json");
    let table: Vec<Value> = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    table
        .iter()
        .map(|case| Case {
            name: case["name"].as_str().unwrap().to_owned(),
            config: case["config"].to_string(),
            peer: case["peer"].as_str().unwrap().to_owned(),
            identity: case["identity"].as_str().map(str::to_owned),
            headers: header_pairs(&case["headers"]),
            client: case["client"].as_str().unwrap().to_owned(),
            decision: case["decision"].as_str().unwrap().to_owned(),
        })
        .collect()
}

/// The command: `$CLIENT_IP_BIN`, else the release build `make cli` makes.
fn command_bin() -> PathBuf {
    let path = std::env::var_os("CLIENT_IP_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo_root().join("target/release/client-ip"));
    assert!(
        path.exists(),
        "client-ip not found at {}: run `make cli` (or set CLIENT_IP_BIN)",
        path.display()
    );
    path
}

fn client_header(config: &Value) -> Option<String> {
    match config.get("client_ip_header").and_then(Value::as_str) {
        Some("") => None,
        Some(name) => Some(name.to_ascii_lowercase()),
        None => Some("x-real-ip".to_owned()),
    }
}

/// The headers to compare: those sent, and those the filter owns.
fn compared_names(case: &Case) -> Vec<String> {
    let config: Value = serde_json::from_str(&case.config).unwrap();
    let mut names: Vec<String> = case
        .headers
        .iter()
        .map(|(name, _)| name.to_ascii_lowercase())
        .collect();
    names.extend(client_header(&config));
    names.extend(["x-forwarded-for".to_owned(), "forwarded".to_owned()]);
    names
}

/// One request over mutual TLS with curl, presenting `client`'s certificate.
fn send_tls(pki: &Pki, client: &Identity, case: &Case, path: &str, to: SocketAddr) -> Response {
    let mut command = Command::new("curl");
    command
        .args(["-sS", "--max-time", "10", "--http1.1", "--cacert"])
        .arg(&pki.ca)
        .args(["--interface", &case.peer])
        .arg("--cert")
        .arg(&client.cert)
        .arg("--key")
        .arg(&client.key)
        .args(["-w", "\n%{http_code}"]);
    for (name, value) in &case.headers {
        command.args(["-H", &format!("{name}: {value}")]);
    }
    let output = command.arg(format!("https://{to}{path}")).output().unwrap();
    let text = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        output.status.success(),
        "curl: {}{text}",
        String::from_utf8_lossy(&output.stderr)
    );
    let (body, status) = text.rsplit_once('\n').unwrap();
    Response {
        status: status.parse().unwrap(),
        body: body.to_owned(),
        bytes: body.as_bytes().to_vec(),
    }
}

fn wait_for_log_entry(envoy: &Envoy, listener: &str, path: &str) -> Value {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(entry) = envoy
            .access_log(listener)
            .into_iter()
            .find(|entry| entry["path"] == path)
        {
            return entry;
        }
        assert!(
            Instant::now() < deadline,
            "no access log entry for {path} on {listener}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn resolve_agrees_with_envoy_on_every_shared_case() {
    let cases = cases();
    assert!(cases.len() >= 15, "the table lost its cases");
    let scratch = ScratchDir::new("resolve-agrees");
    let pki = Pki::new();
    let tls = ListenerTls {
        server: pki.workload("httpbin", "cluster.local/ns/default/sa/httpbin"),
        ca: pki.ca.clone(),
        require_client_certificate: true,
    };
    let key = |case: &Case| {
        (
            case.config.clone(),
            case.peer.contains(':'),
            case.identity.is_some(),
        )
    };
    // One listener per distinct (configuration, address family, mTLS).
    let mut listeners: BTreeMap<(String, bool, bool), String> = BTreeMap::new();
    for case in &cases {
        let next = format!("case{}", listeners.len());
        listeners.entry(key(case)).or_insert(next);
    }
    let envoy = Envoy::start(
        &listeners
            .iter()
            .map(|((config, v6, mtls), name)| {
                let mut listener = Listener::sidecar(name, config);
                if *v6 {
                    listener = listener.on("::1");
                }
                if *mtls {
                    listener = listener.with_tls(tls.clone());
                }
                listener
            })
            .collect::<Vec<_>>(),
    );
    let bin = command_bin();
    for (index, case) in cases.iter().enumerate() {
        let listener = &listeners[&key(case)];
        let path = format!("/case/{index}");
        let to = envoy.listener(listener);
        let response = match &case.identity {
            Some(identity) => {
                let client = pki.workload(&format!("client{index}"), identity);
                send_tls(&pki, &client, case, &path, to)
            }
            None => {
                let mut request = Request::get(&path).from(&case.peer);
                for (name, value) in &case.headers {
                    request = request.header(name, value);
                }
                request.send(to)
            }
        };

        let config_file = scratch.path().join(format!("case{index}.json"));
        std::fs::write(&config_file, &case.config).unwrap();
        let mut command = Command::new(&bin);
        command
            .arg("resolve")
            .arg(&config_file)
            .args(["--peer", &case.peer, "--format", "json"]);
        if let Some(identity) = &case.identity {
            command.args(["--identity", identity]);
        }
        for (name, value) in &case.headers {
            command.args(["-H", &format!("{name}: {value}")]);
        }
        let output = command.output().unwrap();
        assert!(
            output.status.success(),
            "{}: {}",
            case.name,
            String::from_utf8_lossy(&output.stderr)
        );
        let resolved: Value = serde_json::from_slice(&output.stdout).unwrap();

        let name = &case.name;
        assert_eq!(resolved["client"], case.client.as_str(), "{name}: client");
        assert_eq!(resolved["decision"], case.decision.as_str(), "{name}");
        let config: Value = serde_json::from_str(&case.config).unwrap();
        let header = client_header(&config);
        if case.decision == "deny" {
            assert_eq!(
                Some(response.status),
                resolved["status"].as_u64().map(|s| s as u16),
                "{name}: status"
            );
            let logged = wait_for_log_entry(&envoy, listener, &path);
            assert_eq!(logged["x_real_ip"], case.client.as_str(), "{name}");
            continue;
        }
        assert!(resolved["status"].is_null(), "{name}");
        let received = response.received();
        let names = compared_names(case);
        let from_envoy: Vec<(String, String)> = received
            .headers
            .iter()
            .filter(|(n, _)| names.contains(n))
            .cloned()
            .collect();
        let from_command = header_pairs(&resolved["headers"]);
        assert_eq!(from_command, from_envoy, "{name}: headers");
        if let Some(header) = header {
            assert_eq!(received.one(&header), case.client, "{name}: Envoy's client");
        }
    }
    envoy.assert_no_vm_crash();
}
