//! Harness for running `build/plugin.wasm` in real Envoy.
//!
//! - [`Upstream`]: a small HTTP/1.1 server that answers every request with the
//!   request line and headers it received, in order, as JSON.
//! - [`Listener`] and [`envoy_config`]: Envoy configurations with the filter's
//!   two roots on loopback listeners.
//! - [`Envoy`]: a running Envoy on free ports, with its admin API and logs.
//! - [`Request`]: a raw HTTP/1.1 client that can pick its source address
//!   (any 127.0.0.x, or ::1) and send repeated or malformed headers.
//! - [`pki::Pki`]: a mesh CA issuing SPIFFE workload certificates as istiod
//!   does (made by `mesh-pki.sh`, like the local mesh's), for listeners with
//!   mutual TLS ([`ListenerTls`]).
//! - [`ScratchDir`]: a temporary directory removed on every path out.
//! - [`wait_until`]: polls for a condition until a deadline.

use std::cell::Cell;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};
use std::{fmt, fs, thread};

use serde_json::{json, Value};

pub mod pki;

pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn required_file(env_var: &str, default: PathBuf) -> PathBuf {
    let path = std::env::var_os(env_var)
        .map(PathBuf::from)
        .unwrap_or(default);
    assert!(
        path.exists(),
        "{} not found at {}: run the tests with `make test`, which builds and installs it (or set {env_var})",
        path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default(),
        path.display()
    );
    path
}

/// The Envoy binary: `$ENVOY_BIN`, else the project venv's.
pub fn envoy_bin() -> PathBuf {
    required_file("ENVOY_BIN", repo_root().join(".venv/bin/envoy"))
}

/// The module under test: `$PLUGIN_WASM`, else `build/plugin.wasm`.
pub fn module_path() -> PathBuf {
    required_file("PLUGIN_WASM", repo_root().join("build/plugin.wasm"))
}

/// The project venv's Python (beside its Envoy), which has the HTTP/2 and
/// gRPC client libraries the tests use.
pub fn venv_python() -> PathBuf {
    envoy_bin().with_file_name("python")
}

/// A fresh, empty `/tmp/client-ip-<tag>-<pid>-<n>`. The caller owns it;
/// [`ScratchDir`] removes it by itself.
pub fn scratch_dir(tag: &str) -> PathBuf {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    let dir = std::env::temp_dir().join(format!(
        "client-ip-{tag}-{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    ));
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir).unwrap();
    dir
}

/// A scratch directory that is removed when dropped, on every path out of a
/// test, a failed assertion included.
pub struct ScratchDir(PathBuf);

impl ScratchDir {
    pub fn new(tag: &str) -> ScratchDir {
        ScratchDir(scratch_dir(tag))
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for ScratchDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

// -------------------------------------------------------------- wait_until

/// Polls `poll` until it returns `Some`, and returns what it holds; panics,
/// naming `what`, once `timeout` has passed without. Polls every few
/// milliseconds at first, then every 100 ms.
pub fn wait_until<T>(
    timeout: Duration,
    what: impl fmt::Display,
    mut poll: impl FnMut() -> Option<T>,
) -> T {
    let deadline = Instant::now() + timeout;
    let mut pause = Duration::from_millis(5);
    loop {
        if let Some(value) = poll() {
            return value;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        thread::sleep(pause);
        pause = (pause * 2).min(Duration::from_millis(100));
    }
}

/// Displays what its closure writes, when displayed: a [`wait_until`]
/// message that shows the state when it gave up (say, the last value polled,
/// kept in a `Cell`). It runs while panicking, so it must not panic itself:
/// it reads what the poll kept, rather than ask again.
pub struct Lazy<F>(pub F);

impl<F: Fn(&mut fmt::Formatter<'_>) -> fmt::Result> fmt::Display for Lazy<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        (self.0)(f)
    }
}

// ---------------------------------------------------------------- upstream

/// An upstream that echoes each request as
/// `{"method":…,"path":…,"headers":[[name,value],…]}`. Dropping it stops its
/// accept thread and every connection's thread, and closes their sockets.
pub struct Upstream {
    pub port: u16,
    /// The listening socket, to wake the accept thread when stopping.
    listener: TcpListener,
    stopping: Arc<AtomicBool>,
    accept: Option<JoinHandle<()>>,
    connections: Arc<Mutex<Vec<Connection>>>,
}

/// A connection's socket, to shut it down, and the thread that serves it.
struct Connection {
    stream: TcpStream,
    thread: JoinHandle<()>,
}

impl Upstream {
    pub fn start() -> Upstream {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let stopping = Arc::new(AtomicBool::new(false));
        let connections = Arc::new(Mutex::new(Vec::<Connection>::new()));
        let accept = {
            let listener = listener.try_clone().unwrap();
            let stopping = Arc::clone(&stopping);
            let connections = Arc::clone(&connections);
            thread::spawn(move || {
                for stream in listener.incoming() {
                    if stopping.load(Ordering::SeqCst) {
                        return;
                    }
                    let Ok(stream) = stream else { continue };
                    let Ok(handle) = stream.try_clone() else {
                        continue;
                    };
                    let thread = thread::spawn(move || echo_connection(stream));
                    let mut connections = connections.lock().unwrap_or_else(|e| e.into_inner());
                    // A finished thread needs no joining; its socket closes.
                    connections.retain(|c| !c.thread.is_finished());
                    connections.push(Connection {
                        stream: handle,
                        thread,
                    });
                }
            })
        };
        Upstream {
            port,
            listener,
            stopping,
            accept: Some(accept),
            connections,
        }
    }
}

impl Drop for Upstream {
    fn drop(&mut self) {
        self.stopping.store(true, Ordering::SeqCst);
        // Shutting the listening socket down ends a blocked accept on Linux;
        // a connection of our own would wake it anywhere else.
        let _ = socket2::SockRef::from(&self.listener).shutdown(std::net::Shutdown::Read);
        let _ = TcpStream::connect_timeout(
            &SocketAddr::from(([127, 0, 0, 1], self.port)),
            Duration::from_secs(1),
        );
        if let Some(accept) = self.accept.take() {
            let _ = accept.join();
        }
        let connections =
            std::mem::take(&mut *self.connections.lock().unwrap_or_else(|e| e.into_inner()));
        for connection in connections {
            let _ = connection.stream.shutdown(std::net::Shutdown::Both);
            let _ = connection.thread.join();
        }
    }
}

/// Serves one connection until either side ends it, then shuts the socket
/// down (the upstream holds a handle on it, which would keep it open).
fn echo_connection(stream: TcpStream) {
    echo_requests(&stream);
    let _ = stream.shutdown(std::net::Shutdown::Both);
}

fn echo_requests(stream: &TcpStream) {
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let mut writer = stream;
    loop {
        let mut request_line = String::new();
        if reader.read_line(&mut request_line).unwrap_or(0) == 0 {
            return;
        }
        let mut parts = request_line.split_whitespace();
        let method = parts.next().unwrap_or("").to_owned();
        let path = parts.next().unwrap_or("").to_owned();
        let mut headers = Vec::new();
        let mut content_length = 0usize;
        let mut close = false;
        loop {
            let mut line = Vec::new();
            if reader.read_until(b'\n', &mut line).unwrap_or(0) == 0 {
                return;
            }
            let line = String::from_utf8_lossy(&line)
                .trim_end_matches(['\r', '\n'])
                .to_owned();
            if line.is_empty() {
                break;
            }
            if let Some((name, value)) = line.split_once(':') {
                let name = name.trim().to_ascii_lowercase();
                let value = value.trim().to_owned();
                if name == "content-length" {
                    content_length = value.parse().unwrap_or(0);
                }
                close |= name == "connection" && value.eq_ignore_ascii_case("close");
                headers.push(json!([name, value]));
            }
        }
        let mut body = vec![0; content_length];
        if reader.read_exact(&mut body).is_err() {
            return;
        }
        let reply = json!({"method": method, "path": path, "headers": headers}).to_string();
        let response = format!(
            "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{reply}",
            reply.len()
        );
        if writer.write_all(response.as_bytes()).is_err() || close {
            return;
        }
    }
}

// ------------------------------------------------------------------ config

/// One listener of the Envoy under test.
#[derive(Clone, Debug)]
pub struct Listener {
    pub name: String,
    /// Loopback address to bind; the port is chosen by the kernel.
    pub address: String,
    /// Port to bind; 0 lets the kernel choose.
    pub port: u16,
    /// Run the `client_ip_peer` network filter before the HTTP connection manager.
    pub peer_filter: bool,
    /// Plugin JSON for the `client_ip` HTTP filter; `None` runs no HTTP filter.
    pub http_filter: Option<String>,
    /// The HTTP connection manager's `use_remote_address` (Istio's sidecar
    /// inbound default is false, a gateway's true).
    pub use_remote_address: bool,
    /// `root_id` of the HTTP filter (`client_ip` unless a test says otherwise).
    pub http_root_id: String,
    /// Downstream TLS; `None` serves plaintext.
    pub tls: Option<ListenerTls>,
}

/// A listener's downstream TLS, as on a mesh inbound listener: the server's
/// certificate, the mesh CA that client certificates must chain to, and ALPN
/// `h2` and `http/1.1`.
#[derive(Clone, Debug)]
pub struct ListenerTls {
    pub server: pki::Identity,
    pub ca: PathBuf,
    /// Istio's STRICT mTLS requires one; without it a client may connect with
    /// no certificate, and so no identity.
    pub require_client_certificate: bool,
}

impl Listener {
    /// The documented sidecar deployment: both roots, `use_remote_address: false`.
    pub fn sidecar(name: &str, plugin_json: &str) -> Listener {
        Listener {
            name: name.to_owned(),
            address: "127.0.0.1".to_owned(),
            port: 0,
            peer_filter: true,
            http_filter: Some(plugin_json.to_owned()),
            use_remote_address: false,
            http_root_id: "client_ip".to_owned(),
            tls: None,
        }
    }

    pub fn with_tls(mut self, tls: ListenerTls) -> Listener {
        self.tls = Some(tls);
        self
    }

    pub fn without_peer_filter(mut self) -> Listener {
        self.peer_filter = false;
        self
    }

    pub fn on(mut self, address: &str) -> Listener {
        self.address = address.to_owned();
        self
    }
}

fn vm_config(module: &Path) -> Value {
    json!({
        "vm_id": "client_ip",
        "runtime": "envoy.wasm.runtime.v8",
        "code": {"local": {"filename": module.display().to_string()}}
    })
}

fn string_value(text: &str) -> Value {
    json!({"@type": "type.googleapis.com/google.protobuf.StringValue", "value": text})
}

/// The network filter entry for the `client_ip_peer` root.
pub fn peer_filter(module: &Path) -> Value {
    json!({
        "name": "envoy.filters.network.wasm",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.network.wasm.v3.Wasm",
            "config": {
                "name": "client_ip_peer",
                "root_id": "client_ip_peer",
                "vm_config": vm_config(module)
            }
        }
    })
}

/// The HTTP filter entry for the `client_ip` root.
pub fn http_filter(module: &Path, root_id: &str, plugin_json: &str) -> Value {
    json!({
        "name": "envoy.filters.http.wasm",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm",
            "config": {
                "name": "client_ip",
                "root_id": root_id,
                "configuration": string_value(plugin_json),
                "vm_config": vm_config(module),
                "failure_policy": "FAIL_CLOSED"
            }
        }
    })
}

/// Envoy's JSON access log with the fields docs/local-mesh.md explains.
pub fn access_log(path: &Path) -> Value {
    json!([{
        "name": "envoy.access_loggers.file",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog",
            "path": path.display().to_string(),
            "log_format": {"json_format": {
                "downstream_remote_address": "%DOWNSTREAM_REMOTE_ADDRESS%",
                "downstream_direct_remote_address": "%DOWNSTREAM_DIRECT_REMOTE_ADDRESS%",
                "upstream_local_address": "%UPSTREAM_LOCAL_ADDRESS%",
                "x_forwarded_for": "%REQ(X-FORWARDED-FOR)%",
                "x_real_ip": "%REQ(X-REAL-IP)%",
                "client_ip": "%FILTER_STATE(wasm.client_ip:PLAIN)%",
                "client_ip_peer": "%FILTER_STATE(wasm.client_ip_peer:PLAIN)%",
                "path": "%REQ(:PATH)%",
                "response_code": "%RESPONSE_CODE%",
                "response_code_details": "%RESPONSE_CODE_DETAILS%"
            }}
        }
    }])
}

/// One listener's config, as the bootstrap or an LDS file carries it.
pub fn listener_config(listener: &Listener, module: &Path, log_dir: &Path) -> Value {
    let mut http_filters = Vec::new();
    if let Some(plugin_json) = &listener.http_filter {
        http_filters.push(http_filter(module, &listener.http_root_id, plugin_json));
    }
    http_filters.push(json!({
        "name": "envoy.filters.http.router",
        "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}
    }));
    let mut filters = Vec::new();
    if listener.peer_filter {
        filters.push(peer_filter(module));
    }
    filters.push(json!({
        "name": "envoy.filters.network.http_connection_manager",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
            "stat_prefix": listener.name,
            "use_remote_address": listener.use_remote_address,
            "access_log": access_log(&log_dir.join(format!("{}.access.log", listener.name))),
            "route_config": {"virtual_hosts": [{
                "name": "app", "domains": ["*"],
                "routes": [{"match": {"prefix": "/"}, "route": {"cluster": "app"}}]
            }]},
            "http_filters": http_filters
        }
    }));
    let mut chain = json!({"filters": filters});
    if let Some(tls) = &listener.tls {
        chain["transport_socket"] = downstream_tls(tls);
    }
    json!({
        "name": listener.name,
        "address": {"socket_address": {"address": listener.address, "port_value": listener.port}},
        "filter_chains": [chain]
    })
}

fn downstream_tls(tls: &ListenerTls) -> Value {
    let path = |p: &Path| p.display().to_string();
    json!({
        "name": "envoy.transport_sockets.tls",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext",
            "require_client_certificate": tls.require_client_certificate,
            "common_tls_context": {
                "alpn_protocols": ["h2", "http/1.1"],
                "tls_certificates": [{
                    "certificate_chain": {"filename": path(&tls.server.cert)},
                    "private_key": {"filename": path(&tls.server.key)}
                }],
                "validation_context": {"trusted_ca": {"filename": path(&tls.ca)}}
            }
        }
    })
}

/// A whole bootstrap: the listeners, one upstream cluster, admin on a free port.
pub fn envoy_config(listeners: &[Listener], upstream_port: u16, log_dir: &Path) -> Value {
    envoy_config_with_module(listeners, upstream_port, log_dir, &module_path())
}

/// The same, loading the filter from `module`.
pub fn envoy_config_with_module(
    listeners: &[Listener],
    upstream_port: u16,
    log_dir: &Path,
    module: &Path,
) -> Value {
    json!({
        "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": 0}}},
        "static_resources": {
            "listeners": listeners.iter()
                .map(|l| listener_config(l, module, log_dir))
                .collect::<Vec<_>>(),
            "clusters": [{
                "name": "app",
                "type": "STATIC",
                "connect_timeout": "1s",
                "load_assignment": {"cluster_name": "app", "endpoints": [{"lb_endpoints": [{
                    "endpoint": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": upstream_port}}}
                }]}]}
            }]
        }
    })
}

/// The same, with an upstream that speaks HTTP/2 (a gRPC server).
pub fn envoy_config_to_http2_upstream(
    listeners: &[Listener],
    upstream_port: u16,
    log_dir: &Path,
) -> Value {
    let mut config = envoy_config(listeners, upstream_port, log_dir);
    config["static_resources"]["clusters"][0]["typed_extension_protocol_options"] = json!({
        "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
            "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
            "explicit_http_config": {"http2_protocol_options": {}}
        }
    });
    config
}

// ------------------------------------------------------------------- envoy

/// A running Envoy. Dropping it stops Envoy.
pub struct Envoy {
    child: Child,
    pub dir: PathBuf,
    pub admin: SocketAddr,
    /// The echo upstream Envoy was started in front of, when it started one;
    /// stopped after Envoy.
    upstream: Option<Upstream>,
}

/// Why Envoy did not come up, with its log.
#[derive(Debug)]
pub struct StartFailure {
    /// `None` when a signal ended it.
    pub exit_code: Option<i32>,
    pub log: String,
}

impl Envoy {
    /// Starts Envoy on `listeners` in front of a fresh echo upstream, and
    /// waits until it is ready. Panics if it does not start.
    pub fn start(listeners: &[Listener]) -> Envoy {
        Envoy::start_with(listeners, 2, &[])
    }

    pub fn try_start(listeners: &[Listener]) -> Result<Envoy, StartFailure> {
        Envoy::try_start_with_module(listeners, &module_path())
    }

    /// Starts Envoy with the filter loaded from `module`.
    pub fn try_start_with_module(
        listeners: &[Listener],
        module: &Path,
    ) -> Result<Envoy, StartFailure> {
        Envoy::try_start_in_front_of_upstream(listeners, module, 2, &[])
    }

    /// Starts Envoy as [`Envoy::start`] does, with `workers` worker threads
    /// (`--concurrency`) and `args` after the harness's own arguments
    /// (`--component-log-level wasm:debug`, say; a later `-l` overrides the
    /// harness's `-l info`).
    pub fn start_with(listeners: &[Listener], workers: u32, args: &[&str]) -> Envoy {
        Envoy::try_start_in_front_of_upstream(listeners, &module_path(), workers, args)
            .unwrap_or_else(|failure| {
                panic!(
                    "Envoy did not start (exit {:?}):\n{}",
                    failure.exit_code, failure.log
                )
            })
    }

    fn try_start_in_front_of_upstream(
        listeners: &[Listener],
        module: &Path,
        workers: u32,
        args: &[&str],
    ) -> Result<Envoy, StartFailure> {
        let upstream = Upstream::start();
        let dir = scratch_dir("envoy");
        let config = envoy_config_with_module(listeners, upstream.port, &dir, module);
        let mut envoy = Envoy::try_start_with_args(config, dir, workers, args)?;
        envoy.upstream = Some(upstream);
        Ok(envoy)
    }

    /// Makes `upstream` live as long as this Envoy, stopped after it.
    pub fn owning(mut self, upstream: Upstream) -> Envoy {
        self.upstream = Some(upstream);
        self
    }

    /// Starts Envoy with a ready-made bootstrap.
    pub fn try_start_with(
        config: Value,
        dir: PathBuf,
        workers: u32,
    ) -> Result<Envoy, StartFailure> {
        Envoy::try_start_with_args(config, dir, workers, &[])
    }

    /// The same, with `args` after the harness's own arguments.
    pub fn try_start_with_args(
        config: Value,
        dir: PathBuf,
        workers: u32,
        args: &[&str],
    ) -> Result<Envoy, StartFailure> {
        let config_path = dir.join("envoy.json");
        fs::write(&config_path, serde_json::to_vec_pretty(&config).unwrap()).unwrap();
        Envoy::try_start_file(config_path, dir, workers, args)
    }

    /// Starts Envoy with a bootstrap in YAML, as `envoy-test/configs/` has them.
    pub fn try_start_with_yaml(
        yaml: &str,
        dir: PathBuf,
        workers: u32,
    ) -> Result<Envoy, StartFailure> {
        let config_path = dir.join("envoy.yaml");
        fs::write(&config_path, yaml).unwrap();
        Envoy::try_start_file(config_path, dir, workers, &[])
    }

    fn try_start_file(
        config_path: PathBuf,
        dir: PathBuf,
        workers: u32,
        args: &[&str],
    ) -> Result<Envoy, StartFailure> {
        let admin_path = dir.join("admin.address");
        let log_path = dir.join("envoy.log");
        let child = Command::new(envoy_bin())
            .arg("-c")
            .arg(&config_path)
            .arg("--admin-address-path")
            .arg(&admin_path)
            .arg("--log-path")
            .arg(&log_path)
            .args(["--disable-hot-restart", "-l", "info", "--concurrency"])
            .arg(workers.to_string())
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn envoy");
        let mut envoy = Envoy {
            child,
            dir,
            admin: "127.0.0.1:0".parse().unwrap(),
            upstream: None,
        };
        // Should it never get there, the panic stops Envoy and shows its log.
        let exited = wait_until(
            Duration::from_secs(60),
            "Envoy to be ready, or to exit",
            || {
                if let Ok(Some(status)) = envoy.child.try_wait() {
                    return Some(Some(status.code()));
                }
                envoy.admin = fs::read_to_string(&admin_path).ok()?.trim().parse().ok()?;
                let ready = envoy.admin_get("/ready").is_some_and(|r| r.status == 200);
                ready.then_some(None)
            },
        );
        match exited {
            None => Ok(envoy),
            Some(exit_code) => Err(StartFailure {
                exit_code,
                log: envoy.log(),
            }),
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Envoy's resident memory, in KiB.
    pub fn rss_kib(&self) -> u64 {
        fs::read_to_string(format!("/proc/{}/status", self.pid()))
            .unwrap_or_default()
            .lines()
            .find_map(|line| line.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or(0)
    }

    pub fn log(&self) -> String {
        fs::read_to_string(self.dir.join("envoy.log")).unwrap_or_default()
    }

    /// Stops Envoy the way an operator does (the admin API's
    /// `/quitquitquit`), waits up to 30 s for it to exit, and returns its
    /// log, complete: Envoy writes out what it holds before exiting.
    pub fn stop(&mut self) -> String {
        let quit = Request::post("/quitquitquit").send(self.admin);
        assert_eq!(quit.status, 200, "/quitquitquit: {}", quit.body);
        wait_until(Duration::from_secs(30), "Envoy to exit", || {
            self.child.try_wait().ok().flatten()
        });
        self.log()
    }

    /// Fails if Envoy's log shows the module panicking or its VM failing.
    pub fn assert_no_vm_crash(&self) {
        let log = self.log();
        for marker in [
            "panicked",
            "invalid context_id",
            "Wasm VM failed",
            "unreachable",
            // The module's own line when a callback finds its contexts busy.
            "re-entered the module",
        ] {
            assert!(
                !log.contains(marker),
                "Envoy log mentions {marker:?}:\n{log}"
            );
        }
    }

    pub fn access_log(&self, listener: &str) -> Vec<Value> {
        fs::read_to_string(self.dir.join(format!("{listener}.access.log")))
            .unwrap_or_default()
            .lines()
            .filter_map(|line| serde_json::from_str(line).ok())
            .collect()
    }

    pub fn admin_get(&self, path: &str) -> Option<Response> {
        Request::get(path).try_send(self.admin).ok()
    }

    /// The address a listener was bound to.
    pub fn listener(&self, name: &str) -> SocketAddr {
        let listeners = self
            .admin_get("/listeners?format=json")
            .expect("admin /listeners");
        let listeners: Value = serde_json::from_str(&listeners.body).unwrap();
        for status in listeners["listener_statuses"]
            .as_array()
            .into_iter()
            .flatten()
        {
            if status["name"] == name {
                let socket = &status["local_address"]["socket_address"];
                let ip: IpAddr = socket["address"].as_str().unwrap().parse().unwrap();
                let port = socket["port_value"].as_u64().unwrap() as u16;
                return SocketAddr::new(ip, port);
            }
        }
        panic!("no listener {name} in {listeners}");
    }

    /// A counter or gauge from /stats by its exact name (cluster names may
    /// hold `|`), 0 if absent.
    pub fn stat(&self, name: &str) -> u64 {
        let stats = self
            .admin_get(&format!("/stats?filter=^{}$", regex_escaped(name)))
            .expect("admin /stats");
        stats
            .body
            .lines()
            .filter_map(|line| line.split_once(": "))
            .find(|(key, _)| *key == name)
            .and_then(|(_, value)| value.trim().parse().ok())
            .unwrap_or(0)
    }

    /// Waits (up to 10 s) for a counter to reach `at_least`, and returns it;
    /// panics if it does not. The filter publishes its counters once a second.
    pub fn counter_reaching(&self, name: &str, at_least: u64) -> u64 {
        let last = Cell::new(None);
        wait_until(
            Duration::from_secs(10),
            Lazy(|f: &mut fmt::Formatter<'_>| {
                write!(f, "{name} to reach {at_least} (last {:?})", last.get())
            }),
            || {
                let value = self.stat(name);
                last.set(Some(value));
                (value >= at_least).then_some(value)
            },
        )
    }
}

impl Drop for Envoy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        self.upstream = None;
        // A failing test shows Envoy's log (the test harness prints what a
        // failed test wrote); the directory goes on every path.
        if thread::panicking() {
            eprintln!("Envoy's log ({}):\n{}", self.dir.display(), self.log());
        }
        let _ = fs::remove_dir_all(&self.dir);
    }
}

// ------------------------------------------------------------------ client

/// A raw HTTP/1.1 request, sent on a fresh connection from a chosen source.
#[derive(Clone, Debug)]
pub struct Request {
    method: &'static str,
    path: String,
    headers: Vec<(String, Vec<u8>)>,
    source: Option<IpAddr>,
}

#[derive(Debug)]
pub struct Response {
    pub status: u16,
    pub body: String,
    /// The body as bytes, for binary payloads.
    pub bytes: Vec<u8>,
}

impl Request {
    pub fn get(path: &str) -> Request {
        Request {
            method: "GET",
            path: path.to_owned(),
            headers: Vec::new(),
            source: None,
        }
    }

    /// A POST with no body, as Envoy's admin wants for what changes state.
    pub fn post(path: &str) -> Request {
        Request {
            method: "POST",
            ..Request::get(path)
        }
    }

    /// Adds a header; calling it twice with one name sends it twice.
    pub fn header(mut self, name: &str, value: impl AsRef<[u8]>) -> Request {
        self.headers
            .push((name.to_owned(), value.as_ref().to_vec()));
        self
    }

    /// Connects from this local address (any 127.0.0.0/8 address, or ::1).
    pub fn from(mut self, source: &str) -> Request {
        self.source = Some(source.parse().unwrap());
        self
    }

    pub fn send(&self, to: SocketAddr) -> Response {
        self.try_send(to)
            .unwrap_or_else(|e| panic!("request {} to {to}: {e}", self.path))
    }

    pub fn try_send(&self, to: SocketAddr) -> std::io::Result<Response> {
        let socket = socket2::Socket::new(
            socket2::Domain::for_address(to),
            socket2::Type::STREAM,
            None,
        )?;
        if let Some(source) = self.source {
            socket.bind(&SocketAddr::new(source, 0).into())?;
        }
        socket.connect_timeout(&to.into(), Duration::from_secs(5))?;
        let mut stream: TcpStream = socket.into();
        stream.set_read_timeout(Some(Duration::from_secs(10)))?;
        let mut head = format!(
            "{} {} HTTP/1.1\r\nhost: app\r\nconnection: close\r\n",
            self.method, self.path
        )
        .into_bytes();
        for (name, value) in &self.headers {
            head.extend_from_slice(name.as_bytes());
            head.extend_from_slice(b": ");
            head.extend_from_slice(value);
            head.extend_from_slice(b"\r\n");
        }
        head.extend_from_slice(b"\r\n");
        stream.write_all(&head)?;
        let mut raw = Vec::new();
        stream.read_to_end(&mut raw)?;
        let split = raw
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .ok_or_else(|| {
                std::io::Error::other(format!(
                    "no HTTP response: {:?}",
                    String::from_utf8_lossy(&raw)
                ))
            })?;
        let head = String::from_utf8_lossy(&raw[..split]).to_ascii_lowercase();
        let body = &raw[split + 4..];
        let status = head
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| std::io::Error::other(format!("no HTTP status: {head:?}")))?;
        let chunked = head
            .lines()
            .any(|line| line.starts_with("transfer-encoding:") && line.contains("chunked"));
        let bytes = if chunked {
            dechunk(body)
        } else {
            body.to_vec()
        };
        Ok(Response {
            status,
            body: String::from_utf8_lossy(&bytes).into_owned(),
            bytes,
        })
    }
}

fn dechunk(mut body: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    while let Some(line_end) = body.windows(2).position(|w| w == b"\r\n") {
        let size = std::str::from_utf8(&body[..line_end])
            .ok()
            .and_then(|s| usize::from_str_radix(s.trim(), 16).ok());
        let rest = &body[line_end + 2..];
        match size {
            Some(size) if size > 0 && rest.len() >= size => {
                out.extend_from_slice(&rest[..size]);
                body = rest[size..].strip_prefix(b"\r\n").unwrap_or(&rest[size..]);
            }
            _ => break,
        }
    }
    out
}

/// What the echo upstream says it received.
#[derive(Debug)]
pub struct Received {
    pub headers: Vec<(String, String)>,
}

impl Response {
    /// Parses the echo upstream's answer; panics if the request did not reach it.
    pub fn received(&self) -> Received {
        assert_eq!(
            self.status, 200,
            "request did not reach the upstream: {}",
            self.body
        );
        let echo: Value =
            serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("{e}: {}", self.body));
        Received {
            headers: header_pairs(&echo["headers"]),
        }
    }
}

impl Received {
    /// Every value the upstream got under `name`.
    pub fn all(&self, name: &str) -> Vec<&str> {
        self.headers
            .iter()
            .filter(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
            .collect()
    }

    /// The one value under `name`; panics unless there is exactly one.
    pub fn one(&self, name: &str) -> &str {
        match self.all(name).as_slice() {
            [value] => value,
            values => panic!("expected exactly one {name}, got {values:?}"),
        }
    }
}

/// `name` as a regular expression that matches it alone.
fn regex_escaped(name: &str) -> String {
    let mut escaped = String::with_capacity(name.len());
    for c in name.chars() {
        if "\\.+*?()|[]{}^$".contains(c) {
            escaped.push('\\');
        }
        escaped.push(c);
    }
    escaped
}

/// Headers written as a JSON array of `[name, value]` pairs, as the echo
/// upstream and `client-ip resolve --format json` write them.
pub fn header_pairs(pairs: &Value) -> Vec<(String, String)> {
    pairs
        .as_array()
        .expect("an array of [name, value] pairs")
        .iter()
        .map(|pair| {
            (
                pair[0].as_str().unwrap().to_owned(),
                pair[1].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_dropped_upstream_stops_its_threads_and_closes_its_sockets() {
        let upstream = Upstream::start();
        let to = SocketAddr::from(([127, 0, 0, 1], upstream.port));
        // One connection served, one open and idle, its thread blocked
        // waiting for a request.
        let echoed = Request::get("/echo").send(to);
        assert!(echoed.body.contains(r#""path":"/echo""#), "{}", echoed.body);
        let mut idle = TcpStream::connect(to).unwrap();
        idle.set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        wait_until(
            Duration::from_secs(10),
            "the idle connection's thread",
            || {
                let connections = upstream.connections.lock().unwrap();
                connections
                    .iter()
                    .any(|c| !c.thread.is_finished())
                    .then_some(())
            },
        );
        // Dropping returns once every thread has been joined.
        let (dropped, done) = std::sync::mpsc::channel();
        thread::spawn(move || {
            drop(upstream);
            let _ = dropped.send(());
        });
        done.recv_timeout(Duration::from_secs(10))
            .expect("dropping the upstream joins its threads");
        assert_eq!(
            idle.read(&mut [0; 1]).unwrap(),
            0,
            "the idle connection is closed"
        );
        assert_eq!(
            TcpStream::connect(to).unwrap_err().kind(),
            std::io::ErrorKind::ConnectionRefused,
            "nothing listens any more"
        );
    }

    #[test]
    fn wait_until_returns_what_the_poll_found() {
        let mut polls = 0;
        let found = wait_until(Duration::from_secs(5), "the third poll", || {
            polls += 1;
            (polls == 3).then_some(polls * 10)
        });
        assert_eq!(found, 30);
    }

    #[test]
    fn wait_until_names_what_it_waited_for_as_it_was_at_the_end() {
        let polls = Cell::new(0);
        let gave_up = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            wait_until(
                Duration::from_millis(50),
                Lazy(|f: &mut fmt::Formatter<'_>| write!(f, "nothing (polled {})", polls.get())),
                || {
                    polls.set(polls.get() + 1);
                    None::<()>
                },
            )
        }));
        let message = *gave_up.unwrap_err().downcast::<String>().unwrap();
        assert!(polls.get() > 1);
        assert_eq!(
            message,
            format!(
                "timed out after 50ms waiting for nothing (polled {})",
                polls.get()
            )
        );
    }
}
