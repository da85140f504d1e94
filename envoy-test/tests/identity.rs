//! Trust by identity in real Envoy: listeners with mutual TLS as on a mesh
//! inbound, peers holding SPIFFE certificates from a mesh CA, over HTTP/1.1,
//! HTTP/2 (many streams on one connection) and gRPC.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};

use envoy_test::pki::{Identity, Pki};
use envoy_test::{
    envoy_config_to_http2_upstream, repo_root, scratch_dir, venv_python, Envoy, Listener,
    ListenerTls, Received, Response,
};
use serde_json::Value;

const GATEWAY: &str = "cluster.local/ns/istio-system/sa/istio-ingressgateway-service-account";
const ROGUE: &str = "cluster.local/ns/default/sa/rogue";
/// The sidecar's plugin JSON: the ingress gateway is trusted by its identity
/// alone, no address.
const TRUST_GATEWAY: &str = r#"{"trusted_identities":["cluster.local/ns/istio-system/sa/istio-ingressgateway-service-account"],"xff_mode":"overwrite"}"#;
/// The same, counting forged client headers.
const TRUST_GATEWAY_COUNTING: &str = r#"{"trusted_identities":["cluster.local/ns/istio-system/sa/istio-ingressgateway-service-account"],"xff_mode":"overwrite","count_forged_headers":true}"#;
const BY_IDENTITY: &str = "wasmcustom.client_ip.peer_trusted_by_identity";

/// A mesh CA with the workloads the tests play.
struct Mesh {
    pki: Pki,
    server: Identity,
    gateway: Identity,
    rogue: Identity,
}

impl Mesh {
    fn new() -> Mesh {
        let pki = Pki::new();
        Mesh {
            server: pki.workload("httpbin", "cluster.local/ns/default/sa/httpbin"),
            gateway: pki.workload("gateway", GATEWAY),
            rogue: pki.workload("rogue", ROGUE),
            pki,
        }
    }

    /// STRICT mTLS: a client certificate is required.
    fn strict(&self) -> ListenerTls {
        ListenerTls {
            server: self.server.clone(),
            ca: self.pki.ca.clone(),
            require_client_certificate: true,
        }
    }

    /// Like PERMISSIVE's TLS side: a client certificate is optional.
    fn optional_client_certificate(&self) -> ListenerTls {
        ListenerTls {
            require_client_certificate: false,
            ..self.strict()
        }
    }
}

/// One request with curl over TLS; `client` is the certificate it presents.
struct Call<'a> {
    mesh: &'a Mesh,
    client: Option<&'a Identity>,
    source: &'a str,
    http2: bool,
    headers: Vec<String>,
}

impl<'a> Call<'a> {
    fn new(mesh: &'a Mesh, client: Option<&'a Identity>, source: &'a str) -> Call<'a> {
        Call {
            mesh,
            client,
            source,
            http2: true,
            headers: Vec::new(),
        }
    }

    fn http1(mut self) -> Self {
        self.http2 = false;
        self
    }

    fn header(mut self, line: &str) -> Self {
        self.headers.push(line.to_owned());
        self
    }

    /// Sends it and returns what the upstream received, checking the HTTP
    /// version the listener spoke.
    fn send(&self, to: SocketAddr) -> Received {
        let mut command = Command::new("curl");
        command
            .args(["-sS", "--max-time", "10", "--cacert"])
            .arg(&self.mesh.pki.ca)
            .args(["--interface", self.source])
            .arg(if self.http2 { "--http2" } else { "--http1.1" })
            .args(["-w", "\n%{http_code} %{http_version}"]);
        if let Some(client) = self.client {
            command.arg("--cert").arg(&client.cert);
            command.arg("--key").arg(&client.key);
        }
        for line in &self.headers {
            command.args(["-H", line]);
        }
        let output = command
            .arg(format!("https://{to}/headers"))
            .output()
            .expect("run curl");
        let text = String::from_utf8_lossy(&output.stdout).into_owned();
        assert!(
            output.status.success(),
            "curl: {}{text}",
            String::from_utf8_lossy(&output.stderr)
        );
        let (body, trailer) = text.rsplit_once('\n').unwrap();
        let (status, version) = trailer.split_once(' ').unwrap();
        assert_eq!(version, if self.http2 { "2" } else { "1.1" }, "{text}");
        Response {
            status: status.parse().unwrap(),
            body: body.to_owned(),
            bytes: body.as_bytes().to_vec(),
        }
        .received()
    }
}

fn sidecar_with(tls: ListenerTls, plugin_json: &str) -> Listener {
    Listener::sidecar("sidecar", plugin_json).with_tls(tls)
}

#[test]
fn a_trusted_identity_names_the_client_over_http1_and_http2() {
    let mesh = Mesh::new();
    let envoy = Envoy::start(&[sidecar_with(mesh.strict(), TRUST_GATEWAY)]);
    let sidecar = envoy.listener("sidecar");
    for call in [
        Call::new(&mesh, Some(&mesh.gateway), "127.0.0.100"),
        Call::new(&mesh, Some(&mesh.gateway), "127.0.0.100").http1(),
        // Whatever the gateway's address: pods move, identities do not.
        Call::new(&mesh, Some(&mesh.gateway), "127.0.0.199"),
    ] {
        let received = call
            .header("X-Forwarded-For: 6.6.6.6, 203.0.113.7")
            .header("X-Real-IP: 6.6.6.6")
            .send(sidecar);
        assert_eq!(received.one("x-real-ip"), "203.0.113.7");
        assert_eq!(received.one("x-forwarded-for"), "203.0.113.7");
    }
    assert_eq!(envoy.counter_reaching(BY_IDENTITY, 3), 3);
    assert_eq!(
        envoy.counter_reaching("wasmcustom.client_ip.client_from_trusted", 3),
        3
    );
    envoy.assert_no_vm_crash();
}

#[test]
fn another_mesh_identity_cannot_forge_a_client() {
    let mesh = Mesh::new();
    let envoy = Envoy::start(&[sidecar_with(mesh.strict(), TRUST_GATEWAY_COUNTING)]);
    let sidecar = envoy.listener("sidecar");
    // A valid mesh certificate, from the address next to the gateway's.
    for call in [
        Call::new(&mesh, Some(&mesh.rogue), "127.0.0.101"),
        Call::new(&mesh, Some(&mesh.rogue), "127.0.0.101").http1(),
    ] {
        let received = call
            .header("X-Forwarded-For: 6.6.6.6")
            .header("X-Real-IP: 6.6.6.6")
            .send(sidecar);
        assert_eq!(received.one("x-real-ip"), "127.0.0.101");
        assert_eq!(received.one("x-forwarded-for"), "127.0.0.101");
    }
    assert_eq!(
        envoy.counter_reaching("wasmcustom.client_ip.forged_header_replaced", 2),
        2
    );
    assert_eq!(envoy.stat(BY_IDENTITY), 0);
    envoy.assert_no_vm_crash();
}

#[test]
fn no_certificate_a_plaintext_peer_or_a_non_spiffe_uri_is_no_identity() {
    let mesh = Mesh::new();
    // A certificate from the mesh CA whose URI is not a SPIFFE ID, and one
    // with no URI at all.
    let not_spiffe = mesh.pki.issue(
        "not-spiffe",
        &[&format!("URI:https://{GATEWAY}"), "IP:127.0.0.1"],
    );
    let no_uri = mesh.pki.issue("no-uri", &["DNS:gateway", "IP:127.0.0.1"]);
    let envoy = Envoy::start(&[
        sidecar_with(mesh.optional_client_certificate(), TRUST_GATEWAY),
        Listener::sidecar("plaintext", TRUST_GATEWAY),
    ]);
    let sidecar = envoy.listener("sidecar");
    for client in [None, Some(&not_spiffe), Some(&no_uri)] {
        let received = Call::new(&mesh, client, "127.0.0.102")
            .header("X-Forwarded-For: 6.6.6.6")
            .send(sidecar);
        assert_eq!(received.one("x-real-ip"), "127.0.0.102", "{client:?}");
    }
    // PERMISSIVE mode's plaintext: no TLS, so no identity.
    let plaintext = envoy_test::Request::get("/headers")
        .from("127.0.0.103")
        .header("X-Forwarded-For", "6.6.6.6")
        .send(envoy.listener("plaintext"))
        .received();
    assert_eq!(plaintext.one("x-real-ip"), "127.0.0.103");
    // The gateway is still trusted on the same listener.
    let gateway = Call::new(&mesh, Some(&mesh.gateway), "127.0.0.100")
        .header("X-Forwarded-For: 203.0.113.8")
        .send(sidecar);
    assert_eq!(gateway.one("x-real-ip"), "203.0.113.8");
    assert_eq!(envoy.counter_reaching(BY_IDENTITY, 1), 1);
    assert_eq!(
        envoy.counter_reaching("wasmcustom.client_ip.requests", 5),
        5
    );
    envoy.assert_no_vm_crash();
}

#[test]
fn identities_beside_addresses() {
    let mesh = Mesh::new();
    // A proxy that is trusted by address, and entries left of the gateway's
    // judged by address: the identity vouches for its holder alone.
    let json = r#"{"trusted_identities":["cluster.local/ns/istio-system/*"],"trusted_proxies":["127.0.0.50","10.0.0.0/8"],"xff_mode":"overwrite"}"#;
    let envoy = Envoy::start(&[sidecar_with(mesh.strict(), json)]);
    let sidecar = envoy.listener("sidecar");
    let through_lb = Call::new(&mesh, Some(&mesh.gateway), "127.0.0.100")
        .header("X-Forwarded-For: 6.6.6.6, 198.51.100.4, 10.1.1.1")
        .send(sidecar);
    assert_eq!(through_lb.one("x-real-ip"), "198.51.100.4");
    // An untrusted identity from a trusted address is trusted by address,
    // and its identity is never read.
    let by_address = Call::new(&mesh, Some(&mesh.rogue), "127.0.0.50")
        .header("X-Forwarded-For: 198.51.100.5")
        .send(sidecar);
    assert_eq!(by_address.one("x-real-ip"), "198.51.100.5");
    assert_eq!(
        envoy.counter_reaching("wasmcustom.client_ip.client_from_trusted", 2),
        2
    );
    assert_eq!(envoy.stat(BY_IDENTITY), 1);
    envoy.assert_no_vm_crash();
}

#[test]
fn identity_works_without_the_network_filter() {
    // Without the peer filter, a sidecar (use_remote_address: false) that
    // receives X-Forwarded-For cannot know the peer's address, but TLS still
    // tells who the peer is.
    let mesh = Mesh::new();
    let envoy = Envoy::start(&[sidecar_with(mesh.strict(), TRUST_GATEWAY).without_peer_filter()]);
    let sidecar = envoy.listener("sidecar");
    let gateway = Call::new(&mesh, Some(&mesh.gateway), "127.0.0.100")
        .header("X-Forwarded-For: 203.0.113.9")
        .send(sidecar);
    assert_eq!(gateway.one("x-real-ip"), "203.0.113.9");
    // The rogue's address is unknown here and its identity untrusted: no
    // client header at all, never the forged one.
    let rogue = Call::new(&mesh, Some(&mesh.rogue), "127.0.0.101")
        .header("X-Forwarded-For: 6.6.6.6")
        .header("X-Real-IP: 6.6.6.6")
        .send(sidecar);
    assert!(rogue.all("x-real-ip").is_empty(), "{:?}", rogue.headers);
    assert_eq!(
        envoy.counter_reaching("wasmcustom.client_ip.peer_unknown", 2),
        2
    );
    assert_eq!(envoy.counter_reaching(BY_IDENTITY, 1), 1);
    envoy.assert_no_vm_crash();
}

/// Runs `envoy-test/h2_client.py` and parses the JSON it prints.
fn h2_tool(args: &[&str]) -> Value {
    let output = Command::new(venv_python())
        .arg(repo_root().join("envoy-test/h2_client.py"))
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run h2_client.py");
    assert!(
        output.status.success(),
        "h2_client.py {args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).unwrap()
}

fn concurrent_streams(
    mesh: &Mesh,
    to: SocketAddr,
    client: &Identity,
    source: &str,
    xffs: &[String],
) -> Vec<Received> {
    let (host, port) = (to.ip().to_string(), to.port().to_string());
    let paths = [&mesh.pki.ca, &client.cert, &client.key].map(|p| p.display().to_string());
    let mut args = vec![
        "streams", &host, &port, &paths[0], &paths[1], &paths[2], source,
    ];
    args.extend(xffs.iter().map(String::as_str));
    let answers = h2_tool(&args);
    answers
        .as_array()
        .unwrap()
        .iter()
        .map(|answer| {
            let body = answer["body"].to_string();
            Response {
                status: answer["status"].as_u64().unwrap() as u16,
                bytes: body.clone().into_bytes(),
                body,
            }
            .received()
        })
        .collect()
}

#[test]
fn concurrent_http2_streams_keep_their_own_clients() {
    let mesh = Mesh::new();
    let envoy = Envoy::start(&[sidecar_with(mesh.strict(), TRUST_GATEWAY)]);
    let sidecar = envoy.listener("sidecar");
    // A gateway multiplexes many clients on one connection.
    let xffs: Vec<String> = (1..=24)
        .map(|n| format!("6.6.6.6, 203.0.113.{n}"))
        .collect();
    let received = concurrent_streams(&mesh, sidecar, &mesh.gateway, "127.0.0.100", &xffs);
    assert_eq!(received.len(), xffs.len());
    for (n, stream) in (1..).zip(&received) {
        let client = format!("203.0.113.{n}");
        assert_eq!(stream.one("x-real-ip"), client);
        assert_eq!(stream.one("x-forwarded-for"), client);
    }
    // And a rogue's streams are each its own.
    let rogue_xffs: Vec<String> = (1..=8).map(|n| format!("203.0.113.{n}")).collect();
    for stream in concurrent_streams(&mesh, sidecar, &mesh.rogue, "127.0.0.101", &rogue_xffs) {
        assert_eq!(stream.one("x-real-ip"), "127.0.0.101");
    }
    assert_eq!(envoy.counter_reaching(BY_IDENTITY, 24), 24);
    assert_eq!(
        envoy.counter_reaching("wasmcustom.client_ip.requests", 32),
        32
    );
    envoy.assert_no_vm_crash();
}

/// A gRPC server that echoes each call's metadata; stopped when dropped.
struct GrpcEcho {
    child: Child,
    port: u16,
}

impl GrpcEcho {
    fn start() -> GrpcEcho {
        let mut child = Command::new(venv_python())
            .arg(repo_root().join("envoy-test/h2_client.py"))
            .arg("grpc-server")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("start the gRPC server");
        let mut line = String::new();
        let read = BufReader::new(child.stdout.take().unwrap()).read_line(&mut line);
        let port = read.ok().and_then(|_| line.trim().parse().ok());
        let mut server = GrpcEcho { child, port: 0 };
        server.port = port.unwrap_or_else(|| panic!("gRPC server printed {line:?}"));
        server
    }
}

impl Drop for GrpcEcho {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn a_grpc_call_through_the_filter() {
    let mesh = Mesh::new();
    let grpc = GrpcEcho::start();
    let dir = scratch_dir("grpc");
    let config = envoy_config_to_http2_upstream(
        &[sidecar_with(mesh.strict(), TRUST_GATEWAY)],
        grpc.port,
        &dir,
    );
    let envoy = Envoy::try_start_with(config, dir, 2).unwrap_or_else(|f| panic!("{}", f.log));
    let sidecar = envoy.listener("sidecar");
    let call = |client: &Identity, metadata: &[&str]| {
        let paths = [&mesh.pki.ca, &client.cert, &client.key].map(|p| p.display().to_string());
        let (host, port) = (sidecar.ip().to_string(), sidecar.port().to_string());
        let mut args = vec!["grpc-call", &host, &port, &paths[0], &paths[1], &paths[2]];
        args.extend(metadata);
        h2_tool(&args)
    };
    let from_gateway = call(&mesh.gateway, &["x-forwarded-for=203.0.113.10"]);
    assert_eq!(from_gateway["x-real-ip"], "203.0.113.10");
    assert_eq!(from_gateway["x-forwarded-for"], "203.0.113.10");
    let from_rogue = call(
        &mesh.rogue,
        &["x-forwarded-for=203.0.113.10", "x-real-ip=6.6.6.6"],
    );
    assert_eq!(from_rogue["x-real-ip"], "127.0.0.1");
    assert_eq!(envoy.counter_reaching(BY_IDENTITY, 1), 1);
    envoy.assert_no_vm_crash();
}
