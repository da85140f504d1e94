//! Ambient mode in real Envoy: the local mesh's own configs
//! (`envoy-test/configs/waypoint.yaml`, `ztunnel.yaml`, `gateway.yaml`),
//! with the certificates `envoy-test/mesh-pki.sh` issues, on free ports, and
//! the echo upstream as the app behind httpbin-ambient's ztunnel. Every
//! request goes through the waypoint: HBONE (mutual TLS, HTTP/2 CONNECT) to
//! `connect_terminate`, the Service's chain on `main_internal`, where
//! client-ip runs alone as an HTTP filter, then HBONE again to the pod's
//! ztunnel, which reaches the app from the waypoint's address.
//!
//! The pods: sleep (127.0.0.20), rogue (127.0.0.101, a valid mesh identity
//! nobody trusts), the ingress gateway (127.0.0.100), the waypoint
//! (127.0.0.30) and httpbin-ambient (127.0.0.40); the Services
//! httpbin-ambient (127.0.0.80, client-ip on the waypoint) and
//! httpbin-ambient-plain (127.0.0.81, without).

use std::net::{SocketAddr, TcpListener};
use std::path::Path;
use std::process::Command;

use envoy_test::{
    module_path, repo_root, Envoy, Received, Request, Response, ScratchDir, Upstream,
};

const SLEEP: &str = "127.0.0.20";
const ROGUE: &str = "127.0.0.101";
const WAYPOINT: &str = "127.0.0.30";
const HTTPBIN_AMBIENT_POD: &str = "127.0.0.40";
const SERVICE: &str = "127.0.0.80";
const SERVICE_PLAIN: &str = "127.0.0.81";
/// The plugin JSON `make run` gives the waypoint.
const MESH_CONFIG: &str = r#"{"trusted_identities": ["cluster.local/ns/istio-system/sa/istio-ingressgateway-service-account"], "xff_mode": "overwrite", "deny_clients": ["127.0.0.66"]}"#;
const TRUST_GATEWAY: &str = r#"{"trusted_identities":["cluster.local/ns/istio-system/sa/istio-ingressgateway-service-account"],"xff_mode":"overwrite"}"#;
const SERVICE_CLUSTER: &str = "inbound-vip|8000|http|httpbin-ambient.default.svc.cluster.local";

/// A port free on every one of these loopback addresses.
fn free_port_on(addresses: &[&str]) -> u16 {
    for _ in 0..100 {
        let first = TcpListener::bind((addresses[0], 0)).unwrap();
        let port = first.local_addr().unwrap().port();
        if addresses[1..]
            .iter()
            .all(|address| TcpListener::bind((*address, port)).is_ok())
        {
            return port;
        }
    }
    panic!("no port free on all of {addresses:?}");
}

struct Ports {
    hbone: u16,
    service: u16,
    app: u16,
}

/// One of `envoy-test/configs/`, as `mesh.sh` renders it: the ambient pods'
/// ports by address, this run's certificates and module; every other port
/// (admins, the gateway's listeners, the rogue's) left to the kernel. The
/// app is the echo upstream on 127.0.0.1.
fn render(name: &str, ports: &Ports, pki: &Path, plugin_json: &str) -> String {
    let path = repo_root().join(format!("envoy-test/configs/{name}.yaml"));
    let text = std::fs::read_to_string(&path).unwrap();
    let (hbone, service, app) = (ports.hbone, ports.service, ports.app);
    let text = text
        .replace(
            "address: 127.0.0.80, port_value: 8000",
            &format!("address: 127.0.0.80, port_value: ={service}"),
        )
        .replace(
            "address: 127.0.0.81, port_value: 8000",
            &format!("address: 127.0.0.81, port_value: ={service}"),
        )
        .replace(
            "address: 127.0.0.40, port_value: 8080",
            &format!("address: 127.0.0.1, port_value: ={app}"),
        )
        .replace("port_value: 15008", &format!("port_value: ={hbone}"))
        .replace(
            "upstream_port_override: 15008",
            &format!("upstream_port_override: {hbone}"),
        )
        .replace("\"127.0.0.80:8000\"", &format!("\"127.0.0.80:{service}\""))
        .replace("\"127.0.0.30:15008\"", &format!("\"127.0.0.30:{hbone}\""))
        .replace(
            "filename: build/plugin.wasm",
            &format!("filename: {}", module_path().display()),
        )
        .replace(
            "filename: envoy-test/run/",
            &format!("filename: {}/", pki.display()),
        );
    // Every port not set above goes to the kernel.
    let mut parts = text.split("port_value: ");
    let mut out = parts.next().unwrap_or_default().to_owned();
    for part in parts {
        out.push_str("port_value: ");
        if let Some(kept) = part.strip_prefix('=') {
            out.push_str(kept);
        } else {
            let digits = part.bytes().take_while(u8::is_ascii_digit).count();
            out.push_str(if digits > 0 { "0" } else { "" });
            out.push_str(&part[digits..]);
        }
    }
    // The waypoint's plugin JSON.
    out.lines()
        .map(|line| match line.split_once("value: '{") {
            Some((indent, _)) => format!("{indent}value: '{plugin_json}'"),
            None => line.to_owned(),
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// The ambient part of the local mesh: the waypoint, the node's ztunnel
/// and the ingress gateway, each its own Envoy, in front of the echo app.
struct Ambient {
    waypoint: Envoy,
    ztunnel: Envoy,
    gateway: Envoy,
    ports: Ports,
    _pki: ScratchDir,
    /// The application; stopped when the mesh is dropped, after the Envoys.
    _app: Upstream,
}

impl Ambient {
    fn start(plugin_json: &str) -> Ambient {
        let pki = ScratchDir::new("ambient-pki");
        let made = Command::new(repo_root().join("envoy-test/mesh-pki.sh"))
            .arg(pki.path())
            .status()
            .expect("run mesh-pki.sh");
        assert!(made.success());
        let app = Upstream::start();
        let ports = Ports {
            hbone: free_port_on(&[WAYPOINT, HTTPBIN_AMBIENT_POD]),
            service: free_port_on(&[SERVICE, SERVICE_PLAIN]),
            app: app.port,
        };
        let start = |name: &str, workers: u32| {
            let yaml = render(name, &ports, pki.path(), plugin_json);
            let dir = envoy_test::scratch_dir(name);
            Envoy::try_start_with_yaml(&yaml, dir, workers).unwrap_or_else(|failure| {
                panic!(
                    "{name}.yaml did not start (exit {:?}):\n{}",
                    failure.exit_code, failure.log
                )
            })
        };
        // One worker: every inner connection of the waypoint shares one pool
        // towards the app.
        let waypoint = start("waypoint", 1);
        let ztunnel = start("ztunnel", 2);
        let gateway = start("gateway", 2);
        Ambient {
            waypoint,
            ztunnel,
            gateway,
            ports,
            _pki: pki,
            _app: app,
        }
    }

    /// The Service httpbin-ambient, as a pod dials it (ztunnel captures it).
    fn service(&self) -> SocketAddr {
        SocketAddr::new(SERVICE.parse().unwrap(), self.ports.service)
    }

    /// The same pod behind httpbin-ambient-plain: no client-ip on the waypoint.
    fn service_plain(&self) -> SocketAddr {
        SocketAddr::new(SERVICE_PLAIN.parse().unwrap(), self.ports.service)
    }

    /// The ingress gateway's listener for httpbin-ambient (HBONE to the waypoint).
    fn gateway(&self) -> SocketAddr {
        self.gateway.listener("gateway_http_ambient")
    }

    /// A counter of client-ip on the waypoint, once the filter has published
    /// it (once a second) and it reached `at_least`; the harness fails the
    /// test if it does not within 10 s.
    fn counter(&self, name: &str, at_least: u64) -> u64 {
        self.waypoint
            .counter_reaching(&format!("wasmcustom.client_ip.{name}"), at_least)
    }

    fn check_no_vm_crash(&self) {
        self.waypoint.assert_no_vm_crash();
    }
}

fn forging(request: Request, address: &str) -> Request {
    request
        .header("X-Forwarded-For", address)
        .header("X-Real-IP", address)
}

#[test]
fn a_pod_behind_the_waypoint_is_seen_and_cannot_forge() {
    let ambient = Ambient::start(MESH_CONFIG);
    // Without client-ip (httpbin-ambient-plain): the app is handed whatever
    // sleep wrote, and its own peer is the waypoint.
    let plain = forging(Request::get("/ip").from(SLEEP), "6.6.6.6")
        .send(ambient.service_plain())
        .received();
    assert_eq!(plain.one("x-real-ip"), "6.6.6.6");
    assert_eq!(plain.one("x-forwarded-for"), "6.6.6.6");
    let bare = Request::get("/ip")
        .from(SLEEP)
        .send(ambient.service_plain())
        .received();
    assert!(bare.all("x-real-ip").is_empty(), "{:?}", bare.headers);
    assert!(bare.all("x-forwarded-for").is_empty(), "{:?}", bare.headers);

    // With it: the pod ztunnel speaks for, whatever it writes.
    let seen = Request::get("/ip")
        .from(SLEEP)
        .send(ambient.service())
        .received();
    assert_eq!(seen.one("x-real-ip"), SLEEP);
    assert_eq!(seen.one("x-forwarded-for"), SLEEP);
    for forged in ["6.6.6.6", "127.0.0.77", "6.6.6.6, 127.0.0.77", "junk"] {
        let received = forging(Request::get("/ip").from(SLEEP), forged)
            .send(ambient.service())
            .received();
        assert_eq!(received.one("x-real-ip"), SLEEP, "forging {forged:?}");
        assert_eq!(received.one("x-forwarded-for"), SLEEP, "forging {forged:?}");
    }
    // The sources and the Services each path took: sleep's pod connected to
    // the waypoint, and the waypoint chose each Service's chain.
    assert!(
        ambient
            .ztunnel
            .stat("tcp.sleep_outbound.downstream_cx_total")
            >= 7
    );
    assert_eq!(
        ambient
            .waypoint
            .counter_reaching(&format!("http.{SERVICE_CLUSTER}.downstream_rq_total"), 5),
        5
    );
    assert_eq!(ambient.counter("requests", 5), 5);
    assert_eq!(ambient.counter("peer_unknown", 0), 0);
    ambient.check_no_vm_crash();
}

#[test]
fn the_gateway_names_its_client_to_the_waypoint_by_its_identity() {
    let ambient = Ambient::start(MESH_CONFIG);
    // The gateway appends the client it saw to what the client wrote; the
    // waypoint trusts the gateway's principal, so takes that entry.
    for (client, forged) in [
        ("127.0.0.77", None),
        ("127.0.0.77", Some("6.6.6.6")),
        ("127.0.0.78", Some("127.0.0.20")),
    ] {
        let mut request = Request::get("/ip").from(client);
        if let Some(forged) = forged {
            request = forging(request, forged);
        }
        let received = request.send(ambient.gateway()).received();
        assert_eq!(received.one("x-real-ip"), client, "forging {forged:?}");
        assert_eq!(
            received.one("x-forwarded-for"),
            client,
            "forging {forged:?}"
        );
    }
    assert_eq!(ambient.counter("peer_trusted_by_identity", 3), 3);
    assert_eq!(ambient.counter("client_from_trusted", 3), 3);
    // A pod does not get that trust, however it got its header.
    let received = forging(Request::get("/ip").from(SLEEP), "127.0.0.77")
        .send(ambient.service())
        .received();
    assert_eq!(received.one("x-real-ip"), SLEEP);
    assert_eq!(ambient.counter("requests", 4), 4);
    assert_eq!(ambient.counter("peer_trusted_by_identity", 3), 3);
    ambient.check_no_vm_crash();
}

#[test]
fn a_rogue_identity_cannot_forge_on_the_inner_request_nor_on_the_connect() {
    let ambient = Ambient::start(MESH_CONFIG);
    // Through its ztunnel, with its valid mesh identity: its own client.
    let received = forging(Request::get("/ip").from(ROGUE), "6.6.6.6")
        .header("X-Forwarded-For", "127.0.0.77")
        .send(ambient.service())
        .received();
    assert_eq!(received.one("x-real-ip"), ROGUE);
    assert_eq!(received.one("x-forwarded-for"), ROGUE);

    // Speaking HBONE itself, with X-Forwarded-For: 6.6.6.6 on the CONNECT:
    // Envoy takes it as the CONNECT's address, with port 0. The peer is
    // unknown: no client header reaches the app, and no address the rogue
    // wrote, on the CONNECT or inside.
    let forged_connect = ambient.ztunnel.listener("rogue_hbone_forged_connect");
    for request in [
        Request::get("/ip"),
        forging(Request::get("/ip"), "6.6.6.6"),
        forging(Request::get("/ip"), "127.0.0.77"),
    ] {
        let received = request.send(forged_connect).received();
        assert!(
            received.all("x-real-ip").is_empty(),
            "{:?}",
            received.headers
        );
        assert!(
            received.all("x-forwarded-for").is_empty(),
            "{:?}",
            received.headers
        );
    }
    assert_eq!(ambient.counter("peer_forged_on_connect", 3), 3);
    assert_eq!(ambient.counter("peer_unknown", 3), 3);
    assert_eq!(ambient.counter("requests", 4), 4);

    // Going around the waypoint, straight to the pod: httpbin-ambient's
    // ztunnel takes HBONE from the waypoint's identity alone.
    let around = ambient.ztunnel.listener("rogue_hbone_to_pod");
    // The tunnel is refused, so the connection closes unanswered, or at
    // least never with the app's answer.
    if let Ok(response) = Request::get("/ip").try_send(around) {
        assert_ne!(response.status, 200, "{}", response.body);
    }
    assert_eq!(
        ambient
            .ztunnel
            .counter_reaching("http.ztunnel_inbound.rbac.denied", 1),
        1
    );
    assert_eq!(ambient.counter("requests", 4), 4);
    ambient.check_no_vm_crash();
}

/// One request with curl over h2c (HTTP/2 with prior knowledge, as an app
/// that speaks HTTP/2 sends it), inside the tunnel ztunnel opens for the pod;
/// the echo upstream's body and the HTTP version curl spoke.
fn curl_h2c(source: &str, url: &str, headers: &[&str]) -> (String, String) {
    let mut command = Command::new("curl");
    command
        .args(["-sS", "--max-time", "10", "--http2-prior-knowledge"])
        .args(["--interface", source, "-w", "\n%{http_version}"]);
    for header in headers {
        command.args(["-H", header]);
    }
    let output = command.arg(url).output().expect("run curl");
    assert!(
        output.status.success(),
        "curl: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let text = String::from_utf8_lossy(&output.stdout).into_owned();
    let (body, version) = text.rsplit_once('\n').unwrap();
    (body.to_owned(), version.to_owned())
}

#[test]
fn http2_inside_the_tunnel_keeps_the_pod() {
    let ambient = Ambient::start(MESH_CONFIG);
    for path in ["/one", "/two"] {
        let (body, version) = curl_h2c(
            SLEEP,
            &format!("http://{}{path}", ambient.service()),
            &["X-Forwarded-For: 6.6.6.6", "X-Real-IP: 6.6.6.6"],
        );
        assert_eq!(version, "2", "{body}");
        let received = Response {
            status: 200,
            bytes: body.clone().into_bytes(),
            body,
        }
        .received();
        assert_eq!(received.one("x-real-ip"), SLEEP);
        assert_eq!(received.one("x-forwarded-for"), SLEEP);
    }
    // The waypoint's chain spoke HTTP/2 with sleep, HTTP/1.1 with the app.
    assert_eq!(
        ambient.waypoint.counter_reaching(
            &format!("http.{SERVICE_CLUSTER}.downstream_cx_http2_total"),
            2
        ),
        2
    );
    assert_eq!(ambient.counter("requests", 2), 2);
    ambient.check_no_vm_crash();
}

#[test]
fn many_clients_share_the_connection_to_the_app_each_with_its_own_client() {
    let ambient = Ambient::start(MESH_CONFIG);
    // Gateway clients and pods, interleaved, each forging another's address.
    let mut expected = Vec::new();
    for round in 0..3 {
        for client in ["127.0.0.71", "127.0.0.72", "127.0.0.73"] {
            let received = forging(Request::get(&format!("/gw/{round}")).from(client), SLEEP)
                .send(ambient.gateway())
                .received();
            expected.push(client);
            assert_eq!(received.one("x-real-ip"), client);
        }
        for pod in [SLEEP, ROGUE] {
            let received = forging(
                Request::get(&format!("/pod/{round}")).from(pod),
                "127.0.0.71",
            )
            .send(ambient.service())
            .received();
            expected.push(pod);
            assert_eq!(received.one("x-real-ip"), pod);
        }
    }
    let requests = expected.len() as u64;
    let cluster = |stat: &str| format!("cluster.{SERVICE_CLUSTER}.{stat}");
    assert_eq!(
        ambient
            .waypoint
            .counter_reaching(&cluster("upstream_rq_total"), requests),
        requests
    );
    // One connection from the waypoint to the app carried them all.
    assert_eq!(ambient.waypoint.stat(&cluster("upstream_cx_total")), 1);
    assert_eq!(
        ambient
            .ztunnel
            .stat("cluster.httpbin_ambient_pod.upstream_cx_total"),
        1
    );
    assert_eq!(ambient.counter("requests", requests), requests);
    assert_eq!(ambient.counter("peer_trusted_by_identity", 9), 9);
    ambient.check_no_vm_crash();
}

#[test]
fn allow_deny_and_dry_run_judge_the_resolved_client_on_the_waypoint() {
    // Deny sleep and a gateway client; the rogue and other clients pass.
    let ambient = Ambient::start(
        r#"{"trusted_identities":["cluster.local/ns/istio-system/sa/istio-ingressgateway-service-account"],"deny_clients":["127.0.0.20","127.0.0.66"]}"#,
    );
    let denied = forging(Request::get("/ip").from(SLEEP), "127.0.0.9").send(ambient.service());
    assert_eq!(denied.status, 403, "{}", denied.body);
    assert_eq!(denied.body, "client address not allowed\n");
    let denied =
        forging(Request::get("/ip").from("127.0.0.66"), "127.0.0.9").send(ambient.gateway());
    assert_eq!(denied.status, 403, "{}", denied.body);
    // Naming a denied address gets nobody denied.
    let served = forging(Request::get("/ip").from(ROGUE), SLEEP)
        .send(ambient.service())
        .received();
    assert_eq!(served.one("x-real-ip"), ROGUE);
    let served = forging(Request::get("/ip").from("127.0.0.77"), "127.0.0.66")
        .send(ambient.gateway())
        .received();
    assert_eq!(served.one("x-real-ip"), "127.0.0.77");
    // A forged CONNECT leaves no client, which a deny list does not deny.
    let forged_connect = ambient.ztunnel.listener("rogue_hbone_forged_connect");
    assert_eq!(Request::get("/ip").send(forged_connect).status, 200);
    assert_eq!(ambient.counter("denied", 2), 2);
    assert_eq!(ambient.counter("requests", 5), 5);
    ambient.check_no_vm_crash();
    drop(ambient);

    // An allow list: only the gateway's client 127.0.0.77; a forged CONNECT,
    // with no client, is refused.
    let ambient = Ambient::start(
        r#"{"trusted_identities":["cluster.local/ns/istio-system/sa/istio-ingressgateway-service-account"],"allow_clients":["127.0.0.77"]}"#,
    );
    let served = Request::get("/ip")
        .from("127.0.0.77")
        .send(ambient.gateway())
        .received();
    assert_eq!(served.one("x-real-ip"), "127.0.0.77");
    for (request, to) in [
        (
            forging(Request::get("/ip").from(SLEEP), "127.0.0.77"),
            ambient.service(),
        ),
        (Request::get("/ip").from("127.0.0.78"), ambient.gateway()),
        (
            forging(Request::get("/ip"), "127.0.0.77"),
            ambient.ztunnel.listener("rogue_hbone_forged_connect"),
        ),
    ] {
        let refused = request.send(to);
        assert_eq!(refused.status, 403, "{}", refused.body);
    }
    assert_eq!(ambient.counter("allowed_by_list", 1), 1);
    assert_eq!(ambient.counter("denied", 3), 3);
    ambient.check_no_vm_crash();
    drop(ambient);

    // The same lists in a dry run: everyone served, the denials counted.
    let ambient = Ambient::start(
        r#"{"trusted_identities":["cluster.local/ns/istio-system/sa/istio-ingressgateway-service-account"],"allow_clients":["127.0.0.77"],"access_dry_run":true}"#,
    );
    let served = Request::get("/ip")
        .from(SLEEP)
        .send(ambient.service())
        .received();
    assert_eq!(served.one("x-real-ip"), SLEEP);
    let served = Request::get("/ip")
        .from("127.0.0.78")
        .send(ambient.gateway())
        .received();
    assert_eq!(served.one("x-real-ip"), "127.0.0.78");
    assert_eq!(ambient.counter("dry_run_denied", 2), 2);
    assert_eq!(ambient.counter("denied", 0), 0);
    ambient.check_no_vm_crash();
}

#[test]
fn the_waypoint_counts_what_it_resolved() {
    let ambient = Ambient::start(&TRUST_GATEWAY.replace('}', r#","count_forged_headers":true}"#));
    // sleep forging, the gateway's client, and a forged CONNECT.
    let received: Received = forging(Request::get("/ip").from(SLEEP), "6.6.6.6")
        .send(ambient.service())
        .received();
    assert_eq!(received.one("x-real-ip"), SLEEP);
    Request::get("/ip")
        .from("127.0.0.77")
        .send(ambient.gateway())
        .received();
    Request::get("/ip")
        .send(ambient.ztunnel.listener("rogue_hbone_forged_connect"))
        .received();
    assert_eq!(ambient.counter("requests", 3), 3);
    assert_eq!(ambient.counter("forged_header_replaced", 1), 1);
    assert_eq!(ambient.counter("peer_trusted_by_identity", 1), 1);
    assert_eq!(ambient.counter("client_from_trusted", 1), 1);
    assert_eq!(ambient.counter("peer_unknown", 1), 1);
    assert_eq!(ambient.counter("peer_forged_on_connect", 1), 1);
    ambient.check_no_vm_crash();
}
