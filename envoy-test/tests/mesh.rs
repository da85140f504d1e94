//! The local mesh of `make run`, driven as a user drives it: `mesh.sh` on free
//! ports, then the walkthrough's curl commands against real Envoy and httpbin:
//! asserted one by one with the access logs and counters behind them, and, in
//! `docs_local_mesh_md_runs_as_shown`, every command of docs/local-mesh.md run
//! as written, in order, printing what the doc shows.
//!
//! `mesh.sh` runs in a process group of its own, with the signal dispositions
//! a terminal gives it (whoever started the tests may have ignored SIGINT, and
//! bash cannot trap a signal ignored when it started). It is stopped as Ctrl-C
//! stops `make run`, SIGINT to the whole group, and on every other way out the
//! whole group is killed, so no Envoy or gunicorn outlives a test.

use std::cell::{Cell, RefCell};
use std::fmt;
use std::io::{self, BufRead, BufReader};
use std::net::TcpListener;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use envoy_test::{envoy_bin, module_path, repo_root, wait_until, Lazy};
use serde_json::Value;

const PORT_VARS: [&str; 25] = [
    "APP_PORT",
    "APP2_PORT",
    "SIDECAR_MTLS_PORT",
    "SIDECAR_PORT",
    "SIDECAR_PLAIN_PORT",
    "SIDECAR_ADMIN_PORT",
    "SIDECAR2_MTLS_PORT",
    "SIDECAR2_ADMIN_PORT",
    "SLEEP_OUTBOUND_PORT",
    "SLEEP_ADMIN_PORT",
    "GATEWAY_HTTP_PORT",
    "GATEWAY_HTTPS_PORT",
    "GATEWAY_PROXY_PROTOCOL_PORT",
    "GATEWAY_PLAIN_HTTP_PORT",
    "GATEWAY_PLAIN_HTTPS_PORT",
    "GATEWAY_ADMIN_PORT",
    "LB_PORT",
    "HBONE_PORT",
    "AMBIENT_SERVICE_PORT",
    "AMBIENT_APP_PORT",
    "ROGUE_HBONE_PORT",
    "ROGUE_HBONE_TO_POD_PORT",
    "WAYPOINT_ADMIN_PORT",
    "ZTUNNEL_ADMIN_PORT",
    "GATEWAY_AMBIENT_PORT",
];

/// A directory under the system temp dir, removed however the test ends.
struct TempDir(PathBuf);

impl TempDir {
    /// One of its own, however many tests of this process make one.
    fn new(tag: &str) -> TempDir {
        static MADE: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = MADE.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("client-ip-{tag}-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }

    fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Back to what a shell started from a terminal gets: SIGINT, SIGTERM, SIGHUP
/// and SIGQUIT handled by default, nothing blocked. Runs in the child between
/// fork and exec, so only async-signal-safe calls.
fn default_signals() -> io::Result<()> {
    for signal in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP, libc::SIGQUIT] {
        // SAFETY: sigaction-backed, async-signal-safe.
        if unsafe { libc::signal(signal, libc::SIG_DFL) } == libc::SIG_ERR {
            return Err(io::Error::last_os_error());
        }
    }
    // SAFETY: an emptied local sigset_t, handed to sigprocmask.
    unsafe {
        let mut none: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut none);
        if libc::sigprocmask(libc::SIG_SETMASK, &none, std::ptr::null_mut()) != 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

/// Sends `signal` to every process of the group; false when none is left.
fn signal_group(pgid: i32, signal: i32) -> bool {
    // SAFETY: kill(2) on a negative pid addresses the process group.
    let sent = unsafe { libc::kill(-pgid, signal) } == 0;
    sent || io::Error::last_os_error().raw_os_error() != Some(libc::ESRCH)
}

/// The processes of a group, as `pid state command`, read from /proc.
fn group_members(pgid: i32) -> Vec<String> {
    let mut members = Vec::new();
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
            continue;
        };
        // pid (comm) state ppid pgrp ...; comm may hold spaces and parentheses.
        let Some((_, rest)) = stat.rsplit_once(") ") else {
            continue;
        };
        let fields: Vec<&str> = rest.split_whitespace().collect();
        if fields.get(2).and_then(|f| f.parse::<i32>().ok()) != Some(pgid) {
            continue;
        }
        let command = std::fs::read(entry.path().join("cmdline"))
            .map(|c| String::from_utf8_lossy(&c).replace('\0', " "))
            .unwrap_or_default();
        members.push(format!(
            "{} {} {}",
            entry.file_name().to_string_lossy(),
            fields.first().unwrap_or(&"?"),
            command.trim_end()
        ));
    }
    members
}

struct Mesh {
    child: Option<Child>,
    /// The process group of mesh.sh and everything it starts; None once it is
    /// known to be empty.
    pgid: Option<i32>,
    ports: Vec<(&'static str, u16)>,
    lines: mpsc::Receiver<String>,
    /// Every access-log line printed so far.
    access_log: RefCell<Vec<Value>>,
    run_dir: TempDir,
    /// The mesh's $HOME, which it must leave as it found it: empty.
    home: TempDir,
}

impl Mesh {
    fn start() -> Mesh {
        // Hold every listener until all ports are chosen, so none repeats.
        let held: Vec<TcpListener> = PORT_VARS
            .iter()
            .map(|_| TcpListener::bind("127.0.0.1:0").unwrap())
            .collect();
        let ports: Vec<(&str, u16)> = PORT_VARS
            .iter()
            .zip(&held)
            .map(|(var, l)| (*var, l.local_addr().unwrap().port()))
            .collect();
        drop(held);
        let run_dir = TempDir::new("mesh");
        let home = TempDir::new("mesh-home");
        let venv = envoy_bin()
            .parent()
            .unwrap()
            .parent()
            .unwrap()
            .to_path_buf();
        let mut command = Command::new(repo_root().join("envoy-test/mesh.sh"));
        command
            .env("VENV", venv)
            .env("RUN_DIR", run_dir.path())
            .env("HOME", home.path())
            .env("MODULE", module_path())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .process_group(0);
        // SAFETY: default_signals only makes async-signal-safe calls.
        unsafe { command.pre_exec(default_signals) };
        for (var, port) in &ports {
            command.env(var, port.to_string());
        }
        let mut child = command.spawn().expect("start envoy-test/mesh.sh");
        let pgid = i32::try_from(child.id()).unwrap();
        let stdout = child.stdout.take().unwrap();
        let (sender, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if sender.send(line).is_err() {
                    return;
                }
            }
        });
        let mesh = Mesh {
            child: Some(child),
            pgid: Some(pgid),
            ports,
            lines,
            access_log: RefCell::new(Vec::new()),
            run_dir,
            home,
        };
        mesh.wait_for_line("mesh: ready", Duration::from_secs(120));
        mesh
    }

    fn port(&self, var: &str) -> u16 {
        self.ports.iter().find(|(v, _)| *v == var).unwrap().1
    }

    fn wait_for_line(&self, wanted: &str, timeout: Duration) -> Vec<String> {
        let deadline = Instant::now() + timeout;
        let mut seen = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) if line.contains(wanted) => return seen,
                Ok(line) => seen.push(line),
                Err(_) => panic!(
                    "mesh never printed {wanted:?}; it printed:\n{}",
                    seen.join("\n")
                ),
            }
        }
    }

    /// Waits (up to 10 s; every Envoy worker flushes its access log on its
    /// own, so lines do not come in order) for an access-log line that
    /// matches, among all those printed so far.
    fn wait_for_access_log(&self, matches: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut other = Vec::new();
        loop {
            if let Some(entry) = self.access_log.borrow().iter().find(|e| matches(e)) {
                return entry.clone();
            }
            match self
                .lines
                .recv_timeout(deadline.saturating_duration_since(Instant::now()))
            {
                Ok(line) => match serde_json::from_str::<Value>(&line) {
                    Ok(entry) if entry.is_object() => self.access_log.borrow_mut().push(entry),
                    _ => other.push(line),
                },
                Err(_) => {
                    let log = self.access_log.borrow();
                    let log: Vec<String> = log.iter().map(Value::to_string).collect();
                    panic!(
                        "no matching access-log line in:\n{}\nother output:\n{}",
                        log.join("\n"),
                        other.join("\n")
                    );
                }
            }
        }
    }

    /// A stat of the Envoy whose admin port is `admin_var`, from its admin's
    /// /stats as `curl -s http://127.0.0.1:15000/stats | grep client_ip`
    /// shows it.
    fn stat(&self, admin_var: &str, name: &str) -> u64 {
        let stats = curl_text(&[&format!(
            "http://127.0.0.1:{}/stats?filter={name}",
            self.port(admin_var)
        )]);
        stats
            .lines()
            .find_map(|line| line.strip_prefix(name)?.strip_prefix(": "))
            .unwrap_or_else(|| panic!("no {name} in:\n{stats}"))
            .trim()
            .parse()
            .unwrap()
    }

    /// A counter of client-ip on httpbin's sidecars, both instances together.
    fn sidecar_counter(&self, name: &str) -> u64 {
        self.stat("SIDECAR_ADMIN_PORT", name) + self.stat("SIDECAR2_ADMIN_PORT", name)
    }

    /// Waits (up to 10 s: the filter hands its counts to Envoy once a second
    /// per worker) until the counter reaches `at_least`, and returns it.
    fn wait_for_counter(&self, name: &str, at_least: u64) -> u64 {
        wait_for_at_least(&format!("the sidecars' {name}"), at_least, || {
            self.sidecar_counter(name)
        })
    }

    /// Waits (up to 10 s) until a stat of the Envoy at `admin_var` reaches
    /// `at_least`, and returns it.
    fn wait_for_stat(&self, admin_var: &str, name: &str, at_least: u64) -> u64 {
        wait_for_at_least(&format!("{name} at {admin_var}"), at_least, || {
            self.stat(admin_var, name)
        })
    }

    fn url(&self, var: &str, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port(var))
    }

    /// An access-log line of either httpbin sidecar's mTLS inbound.
    fn is_sidecar_mtls(&self, entry: &Value) -> bool {
        entry["proxy"] == format!("sidecar:{}", self.port("SIDECAR_MTLS_PORT")).as_str()
            || entry["proxy"] == format!("sidecar-2:{}", self.port("SIDECAR2_MTLS_PORT")).as_str()
    }

    /// Ctrl-C, as a user stops `make run`: SIGINT to the whole process group.
    /// Every process of the group must then be gone within 30 s.
    fn interrupt(&mut self) -> ExitStatus {
        let pgid = self.pgid.unwrap();
        assert!(
            signal_group(pgid, libc::SIGINT),
            "the mesh was already gone"
        );
        self.wait_for_line("mesh: stopped", Duration::from_secs(30));
        let status = self.child.take().unwrap().wait().unwrap();
        wait_until(
            Duration::from_secs(30),
            Lazy(|f: &mut fmt::Formatter<'_>| {
                let left = group_members(pgid).join("\n");
                write!(
                    f,
                    "every process to end after Ctrl-C; still running:\n{left}"
                )
            }),
            || (!signal_group(pgid, 0)).then_some(()),
        );
        self.pgid = None;
        status
    }
}

/// Waits (up to 10 s) until `read` gives at least `at_least`, and returns
/// what it gave; on timeout the message names `what` and its last value.
fn wait_for_at_least(what: &str, at_least: u64, read: impl Fn() -> u64) -> u64 {
    let last = Cell::new(None);
    wait_until(
        Duration::from_secs(10),
        Lazy(|f: &mut fmt::Formatter<'_>| {
            let last = last.get();
            write!(f, "{what} to reach {at_least} (last {last:?})")
        }),
        || {
            let value = read();
            last.set(Some(value));
            (value >= at_least).then_some(value)
        },
    )
}

impl Drop for Mesh {
    /// Whatever happened, nothing of the mesh outlives the test.
    fn drop(&mut self) {
        if let Some(pgid) = self.pgid {
            signal_group(pgid, libc::SIGKILL);
        }
        if let Some(child) = &mut self.child {
            let _ = child.wait();
        }
        // Orphans killed with mesh.sh are reaped by init: give it a moment.
        if let Some(pgid) = self.pgid {
            let deadline = Instant::now() + Duration::from_secs(5);
            while signal_group(pgid, 0) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    }
}

fn run_curl(args: &[&str]) -> std::process::Output {
    Command::new("curl")
        .args(["-sS", "--max-time", "10"])
        .args(args)
        .output()
        .expect("curl")
}

fn curl_text(args: &[&str]) -> String {
    let output = run_curl(args);
    assert!(
        output.status.success(),
        "curl {args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn curl(args: &[&str]) -> Value {
    let body = curl_text(args);
    serde_json::from_str(&body).unwrap_or_else(|e| panic!("curl {args:?}: {e}: {body}"))
}

/// A response as `curl -i` shows it.
struct Reply {
    status: u16,
    headers: Vec<(String, String)>,
    body: String,
}

impl Reply {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The instance that answered (x-served-by, set by its sidecar).
    fn served_by(&self) -> String {
        self.header("x-served-by")
            .unwrap_or_else(|| panic!("no x-served-by in {:?}", self.headers))
            .to_owned()
    }
}

fn request(args: &[&str]) -> Reply {
    let text = curl_text(&with(&[&["-i"], args]));
    let (head, body) = text
        .split_once("\r\n\r\n")
        .unwrap_or_else(|| panic!("curl {args:?}: no header block in {text:?}"));
    let mut lines = head.lines();
    let status = lines
        .next()
        .and_then(|line| line.split_whitespace().nth(1))
        .and_then(|code| code.parse().ok())
        .unwrap_or_else(|| panic!("curl {args:?}: no status in {head:?}"));
    let headers = lines
        .filter_map(|line| line.split_once(':'))
        .map(|(name, value)| (name.trim().to_owned(), value.trim().to_owned()))
        .collect();
    Reply {
        status,
        headers,
        body: body.to_owned(),
    }
}

/// One curl command line from its parts.
fn with<'a>(parts: &[&[&'a str]]) -> Vec<&'a str> {
    parts.concat()
}

const GATEWAY_IDENTITY: &str =
    "spiffe://cluster.local/ns/istio-system/sa/istio-ingressgateway-service-account";
const TRUSTED_BY_IDENTITY: &str = "wasmcustom.client_ip.peer_trusted_by_identity";
const REQUESTS: &str = "wasmcustom.client_ip.requests";
const DENIED: &str = "wasmcustom.client_ip.denied";
/// The client httpbin's sidecars refuse (deny_clients).
const DENIED_CLIENT: &str = "127.0.0.66";
const DENIAL_BODY: &str = "client address not allowed";

#[test]
fn walkthrough_over_mtls_access_control_affinity_and_proxy_protocol() {
    let mut mesh = Mesh::start();
    let url = |var: &str, path: &str| format!("http://127.0.0.1:{}{path}", mesh.port(var));
    let tls_url = |var: &str, path: &str| format!("https://127.0.0.1:{}{path}", mesh.port(var));
    let forged = ["-H", "X-Forwarded-For: 6.6.6.6", "-H", "X-Real-IP: 6.6.6.6"];
    // Requests that went through client-ip on httpbin's sidecar so far.
    let mut filtered = 0;

    // East-west, without the filter: the app sees the sidecar's 127.0.0.6.
    let before = curl(&[
        "--interface",
        "127.0.0.10",
        &url("SIDECAR_PLAIN_PORT", "/ip"),
    ]);
    assert_eq!(before["origin"], "127.0.0.6");
    // ...and a forged X-Real-IP reaches it untouched.
    let headers = curl(&with(&[
        &["--interface", "127.0.0.10"],
        &forged,
        &[&url("SIDECAR_PLAIN_PORT", "/headers?show_env=1")],
    ]));
    assert_eq!(headers["headers"]["X-Real-Ip"], "6.6.6.6");

    // East-west through sleep's sidecar, over mTLS and HTTP/2: the app sees
    // the sleep pod, and nothing sleep writes changes that.
    let sleep = curl(&[
        "--interface",
        "127.0.0.10",
        &url("SLEEP_OUTBOUND_PORT", "/ip"),
    ]);
    assert_eq!(sleep["origin"], "127.0.0.10");
    let sleep_forging = curl(&with(&[
        &["--interface", "127.0.0.10"],
        &forged,
        &[&url("SLEEP_OUTBOUND_PORT", "/headers?show_env=1")],
    ]));
    assert_eq!(sleep_forging["headers"]["X-Real-Ip"], "127.0.0.10");
    assert_eq!(sleep_forging["headers"]["X-Forwarded-For"], "127.0.0.10");
    filtered += 2;

    // Plaintext to the sidecar (PERMISSIVE): the client, whatever it forges.
    let after = curl(&["--interface", "127.0.0.123", &url("SIDECAR_PORT", "/ip")]);
    assert_eq!(after["origin"], "127.0.0.123");
    // 127.0.0.100 is the gateway's address, but only its identity is
    // trusted: a plaintext client there is a client like any other.
    for client in ["127.0.0.123", "127.0.0.200", "127.0.0.100"] {
        let headers = curl(&with(&[
            &["--interface", client],
            &forged,
            &[&url("SIDECAR_PORT", "/headers?show_env=1")],
        ]));
        assert_eq!(headers["headers"]["X-Real-Ip"], client);
        assert_eq!(headers["headers"]["X-Forwarded-For"], client);
    }
    let ipv6 = curl(&[
        "-g",
        "--interface",
        "::1",
        &format!("http://[::1]:{}/ip", mesh.port("SIDECAR_PORT")),
    ]);
    assert_eq!(ipv6["origin"], "::1");
    filtered += 5;

    // A rogue workload with a valid mesh certificate of its own, next to the
    // gateway's address, straight to the mTLS inbound: its forgeries get
    // nowhere.
    let pki = mesh.run_dir.path().join("mesh");
    let pki_file = |name: &str| pki.join(name).to_str().unwrap().to_owned();
    let rogue: Vec<String> = [
        "--http2",
        "--cacert",
        &pki_file("ca.pem"),
        "--cert",
        &pki_file("rogue.pem"),
        "--key",
        &pki_file("rogue-key.pem"),
        "--interface",
        "127.0.0.101",
    ]
    .map(str::to_owned)
    .to_vec();
    let rogue: Vec<&str> = rogue.iter().map(String::as_str).collect();
    let rogue_forging = curl(&with(&[
        &rogue,
        &forged,
        &[&tls_url("SIDECAR_MTLS_PORT", "/headers?show_env=1")],
    ]));
    assert_eq!(rogue_forging["headers"]["X-Real-Ip"], "127.0.0.101");
    assert_eq!(rogue_forging["headers"]["X-Forwarded-For"], "127.0.0.101");
    let rogue_origin = curl(&with(&[
        &rogue,
        &forged,
        &[&tls_url("SIDECAR_MTLS_PORT", "/ip")],
    ]));
    assert_eq!(rogue_origin["origin"], "127.0.0.101");
    filtered += 2;
    // Without a mesh certificate there is no way in.
    let no_cert = run_curl(&[
        "--http2",
        "--cacert",
        &pki_file("ca.pem"),
        &tls_url("SIDECAR_MTLS_PORT", "/ip"),
    ]);
    assert!(!no_cert.status.success(), "{no_cert:?}");

    // Nobody so far was trusted by identity.
    assert_eq!(mesh.wait_for_counter(REQUESTS, filtered), filtered);
    assert_eq!(mesh.sidecar_counter(TRUSTED_BY_IDENTITY), 0);

    // North-south over HTTP: the gateway's client, even when it forges
    // headers.
    let via_gateway = curl(&with(&[
        &["--interface", "127.0.0.77"],
        &forged,
        &[&url("GATEWAY_HTTP_PORT", "/headers?show_env=1")],
    ]));
    assert_eq!(via_gateway["headers"]["X-Real-Ip"], "127.0.0.77");
    assert_eq!(via_gateway["headers"]["X-Forwarded-For"], "127.0.0.77");
    let origin = curl(&[
        "--interface",
        "127.0.0.77",
        "-H",
        "X-Forwarded-For: 6.6.6.6",
        &url("GATEWAY_HTTP_PORT", "/ip"),
    ]);
    assert_eq!(origin["origin"], "127.0.0.77");
    // Without the filter the client's entry reaches the app, and the forged
    // X-Real-IP crosses the gateway and the sidecar.
    let plain_origin = curl(&[
        "--interface",
        "127.0.0.77",
        "-H",
        "X-Forwarded-For: 6.6.6.6",
        &url("GATEWAY_PLAIN_HTTP_PORT", "/ip"),
    ]);
    assert_eq!(plain_origin["origin"], "6.6.6.6,127.0.0.77");
    let plain_gateway = curl(&with(&[
        &["--interface", "127.0.0.77"],
        &forged,
        &[&url("GATEWAY_PLAIN_HTTP_PORT", "/headers?show_env=1")],
    ]));
    assert_eq!(plain_gateway["headers"]["X-Real-Ip"], "6.6.6.6");

    // North-south over HTTPS, TLS ended at the gateway.
    let https = curl(&with(&[
        &["-k", "--interface", "127.0.0.78"],
        &forged,
        &[&tls_url("GATEWAY_HTTPS_PORT", "/headers?show_env=1")],
    ]));
    assert_eq!(https["headers"]["X-Real-Ip"], "127.0.0.78");
    let https_origin = curl(&[
        "-k",
        "--interface",
        "127.0.0.78",
        "-H",
        "X-Forwarded-For: 6.6.6.6",
        &tls_url("GATEWAY_HTTPS_PORT", "/ip"),
    ]);
    assert_eq!(https_origin["origin"], "127.0.0.78");
    let https_plain = curl(&[
        "-k",
        "--interface",
        "127.0.0.78",
        &tls_url("GATEWAY_PLAIN_HTTPS_PORT", "/ip"),
    ]);
    assert_eq!(
        https_plain["origin"], "127.0.0.78",
        "Envoy's own XFF, read by httpbin"
    );
    let through_gateway = 4;
    filtered += through_gateway;

    // Every request the gateway brought, and only those, was trusted by the
    // gateway's identity.
    assert_eq!(mesh.wait_for_counter(REQUESTS, filtered), filtered);
    assert_eq!(
        mesh.wait_for_counter(TRUSTED_BY_IDENTITY, through_gateway),
        through_gateway
    );

    // The access log shows who came in over mTLS, with which identity and
    // protocol, and the client the filter resolved. The gateway's requests
    // reach either instance; sleep's and the rogue's reach httpbin-1.
    let mtls = format!("sidecar:{}", mesh.port("SIDECAR_MTLS_PORT"));
    let gateway_hop = mesh.wait_for_access_log(|e| {
        mesh.is_sidecar_mtls(e) && e["x_forwarded_for"] == "127.0.0.77" && e["path"] == "/ip"
    });
    assert_eq!(gateway_hop["peer_identity"], GATEWAY_IDENTITY);
    assert_eq!(gateway_hop["protocol"], "HTTP/2");
    assert_eq!(gateway_hop["client_ip"], "127.0.0.77");
    assert_eq!(gateway_hop["downstream_remote_address"], "127.0.0.77:0");
    let direct = gateway_hop["downstream_direct_remote_address"]
        .as_str()
        .unwrap();
    assert!(direct.starts_with("127.0.0.100:"), "{direct}");
    let upstream_local = gateway_hop["upstream_local_address"].as_str().unwrap();
    assert!(upstream_local.starts_with("127.0.0.6:"), "{upstream_local}");

    let sleep_hop = mesh.wait_for_access_log(|e| {
        e["proxy"] == mtls.as_str() && e["client_ip"] == "127.0.0.10" && e["path"] == "/ip"
    });
    assert_eq!(
        sleep_hop["peer_identity"],
        "spiffe://cluster.local/ns/default/sa/sleep"
    );
    assert_eq!(sleep_hop["protocol"], "HTTP/2");

    let rogue_hop = mesh.wait_for_access_log(|e| {
        e["proxy"] == mtls.as_str() && e["client_ip"] == "127.0.0.101" && e["path"] == "/ip"
    });
    assert_eq!(
        rogue_hop["peer_identity"],
        "spiffe://cluster.local/ns/default/sa/rogue"
    );
    assert_eq!(rogue_hop["downstream_remote_address"], "6.6.6.6:0");

    // The gateway logs the client it resolved too, and the sidecar it chose.
    let at_gateway = mesh.wait_for_access_log(|e| {
        e["proxy"] == format!("gateway:{}", mesh.port("GATEWAY_HTTP_PORT")).as_str()
            && e["client_ip"] == "127.0.0.77"
            && e["path"] == "/ip"
    });
    let peer = at_gateway["downstream_direct_remote_address"]
        .as_str()
        .unwrap();
    assert!(peer.starts_with("127.0.0.77:"), "{peer}");
    assert_eq!(
        at_gateway["upstream_peer_identity"],
        "spiffe://cluster.local/ns/default/sa/httpbin"
    );
    // httpbin itself logs the sidecar's 127.0.0.6 as its peer, and the client
    // in the headers the sidecar handed on.
    let at_app = mesh.wait_for_access_log(|e| {
        e["app"].as_str().is_some_and(|a| a.starts_with("httpbin-"))
            && e["x_real_ip"] == "127.0.0.77"
            && e["path"] == "/ip"
    });
    assert_eq!(at_app["remote_addr"], "127.0.0.6");
    assert_eq!(at_app["x_forwarded_for"], "127.0.0.77");

    access_control(&mesh);
    affinity(&mesh);
    proxy_protocol(&mesh);

    let status = mesh.interrupt();
    assert!(
        status.success(),
        "make run must stop cleanly on Ctrl-C: {status}"
    );
    for (var, port) in &mesh.ports {
        assert!(
            TcpListener::bind(("127.0.0.1", *port)).is_ok(),
            "{var} still bound after Ctrl-C"
        );
    }
    let left_in_home: Vec<_> = std::fs::read_dir(mesh.home.path())
        .unwrap()
        .map(|entry| entry.unwrap().file_name())
        .collect();
    assert!(
        left_in_home.is_empty(),
        "make run left {left_in_home:?} in $HOME"
    );
}

/// httpbin's sidecars refuse 127.0.0.66 (deny_clients): the client they
/// resolve, however it comes and whatever it writes. The request never
/// reaches httpbin.
fn access_control(mesh: &Mesh) {
    let denied_before = mesh.sidecar_counter(DENIED);
    let from_denied = ["--interface", DENIED_CLIENT];
    let naming_allowed = [
        "-H",
        "X-Forwarded-For: 127.0.0.77",
        "-H",
        "X-Real-IP: 127.0.0.77",
    ];
    // Through the gateway, which the sidecars trust by identity: the client
    // it saw is 127.0.0.66, and no header the client writes changes that.
    for extra in [&[][..], &naming_allowed[..]] {
        let reply = request(&with(&[
            &from_denied,
            extra,
            &[&mesh.url("GATEWAY_HTTP_PORT", "/ip")],
        ]));
        assert_eq!(reply.status, 403, "{}", reply.body);
        assert_eq!(reply.body.trim_end(), DENIAL_BODY);
        assert!(reply.served_by().starts_with("httpbin-"));
    }
    // Straight to a sidecar in plaintext: the peer itself is the client.
    let plain = request(&with(&[
        &from_denied,
        &naming_allowed,
        &[&mesh.url("SIDECAR_PORT", "/ip")],
    ]));
    assert_eq!(plain.status, 403, "{}", plain.body);
    assert_eq!(plain.served_by(), "httpbin-1");
    // East-west the client is the sleep pod, 127.0.0.10, whatever address
    // the curl inside it binds and whatever it writes: served.
    for extra in [&[][..], &["-H", "X-Forwarded-For: 127.0.0.66"][..]] {
        let sleep = curl(&with(&[
            &from_denied,
            extra,
            &[&mesh.url("SLEEP_OUTBOUND_PORT", "/ip")],
        ]));
        assert_eq!(sleep["origin"], "127.0.0.10");
    }
    assert_eq!(
        mesh.wait_for_counter(DENIED, denied_before + 3),
        denied_before + 3
    );

    // httpbin's side: the sidecar answered itself, with no upstream...
    let denial = mesh.wait_for_access_log(|e| {
        mesh.is_sidecar_mtls(e) && e["client_ip"] == DENIED_CLIENT && e["response_code"] == 403
    });
    assert_eq!(denial["response_code_details"], "client_ip_denied");
    assert_eq!(denial["upstream_host"], Value::Null);
    assert_eq!(denial["peer_identity"], GATEWAY_IDENTITY);
    assert_eq!(denial["x_forwarded_for"], DENIED_CLIENT);
    let plain_denial = mesh.wait_for_access_log(|e| {
        e["proxy"] == format!("sidecar:{}", mesh.port("SIDECAR_PORT")).as_str()
            && e["client_ip"] == DENIED_CLIENT
    });
    assert_eq!(plain_denial["response_code"], 403);
    assert_eq!(plain_denial["response_code_details"], "client_ip_denied");
    assert_eq!(plain_denial["upstream_host"], Value::Null);
    // ...and neither httpbin logged it. Each is asked something straight
    // afterwards, so its log has caught up with the denials.
    for (app, port) in [("httpbin-1", "APP_PORT"), ("httpbin-2", "APP2_PORT")] {
        curl(&[&mesh.url(port, "/get?after-denials")]);
        mesh.wait_for_access_log(|e| {
            e["app"] == app && e["path"] == "/get" && e["x_real_ip"] == "-"
        });
    }
    let log = mesh.access_log.borrow();
    let reached: Vec<&Value> = log
        .iter()
        .filter(|e| e.get("app").is_some() && e["x_real_ip"] == DENIED_CLIENT)
        .collect();
    assert!(
        reached.is_empty(),
        "a denied client reached httpbin: {reached:?}"
    );
}

/// The gateway hashes on the X-Real-IP its client-ip writes over a ring of
/// both httpbin instances: one client always reaches one instance, and many
/// clients spread over both.
fn affinity(mesh: &Mesh) {
    let served_by = |client: &str, var: &str| {
        request(&["--interface", client, &mesh.url(var, "/get")]).served_by()
    };
    let first = served_by("127.0.0.77", "GATEWAY_HTTP_PORT");
    for _ in 0..5 {
        assert_eq!(served_by("127.0.0.77", "GATEWAY_HTTP_PORT"), first);
    }
    // A forged X-Real-IP does not move a client: client-ip replaces it
    // before the router hashes.
    for forged in ["127.0.0.1", "127.0.0.2", "127.0.0.3", "6.6.6.6"] {
        let reply = request(&[
            "--interface",
            "127.0.0.77",
            "-H",
            &format!("X-Real-IP: {forged}"),
            &mesh.url("GATEWAY_HTTP_PORT", "/get"),
        ]);
        assert_eq!(reply.served_by(), first, "X-Real-IP: {forged}");
    }
    let mut instances = std::collections::BTreeMap::<String, Vec<String>>::new();
    for last in 1..=40 {
        let client = format!("127.0.0.{last}");
        let instance = served_by(&client, "GATEWAY_HTTP_PORT");
        assert_eq!(
            served_by(&client, "GATEWAY_HTTP_PORT"),
            instance,
            "{client}"
        );
        instances.entry(instance).or_default().push(client);
    }
    let names: Vec<&String> = instances.keys().collect();
    assert_eq!(names, ["httpbin-1", "httpbin-2"], "{instances:?}");
    // The same client keeps its instance through the load balancer.
    for client in ["127.0.0.56", "127.0.0.7", "127.0.0.77"] {
        assert_eq!(
            served_by(client, "LB_PORT"),
            served_by(client, "GATEWAY_HTTP_PORT"),
            "{client}"
        );
    }
}

/// The load balancer connects from 127.0.0.200 and sends the client in a
/// PROXY protocol v2 header; the gateway's proxy_protocol listener filter
/// restores it, and client-ip takes it as the peer.
fn proxy_protocol(mesh: &Mesh) {
    let lb = mesh.url("LB_PORT", "/ip");
    let origin = curl(&["--interface", "127.0.0.55", &lb]);
    assert_eq!(origin["origin"], "127.0.0.55");
    let headers = curl(&[
        "--interface",
        "127.0.0.55",
        "-H",
        "X-Forwarded-For: 6.6.6.6",
        "-H",
        "X-Real-IP: 6.6.6.6",
        &mesh.url("LB_PORT", "/headers?show_env=1"),
    ]);
    assert_eq!(headers["headers"]["X-Real-Ip"], "127.0.0.55");
    assert_eq!(headers["headers"]["X-Forwarded-For"], "127.0.0.55");

    // The gateway logs the load balancer as its direct peer and the restored
    // client as the peer, which client-ip resolved...
    let proxy_port = mesh.port("GATEWAY_PROXY_PROTOCOL_PORT");
    let at_gateway = mesh.wait_for_access_log(|e| {
        e["proxy"] == format!("gateway:{proxy_port}").as_str()
            && e["path"] == "/ip"
            && e["client_ip"] == "127.0.0.55"
    });
    let direct = at_gateway["downstream_direct_remote_address"]
        .as_str()
        .unwrap();
    assert!(direct.starts_with("127.0.0.200:"), "{direct}");
    let restored = at_gateway["downstream_remote_address"].as_str().unwrap();
    assert!(restored.starts_with("127.0.0.55:"), "{restored}");
    // ...and the load balancer that connection: the client as its peer, and
    // itself connecting from 127.0.0.200, from the port the gateway saw.
    let at_lb = mesh.wait_for_access_log(|e| {
        e["proxy"] == format!("lb:{}", mesh.port("LB_PORT")).as_str()
            && e["downstream_remote_address"] == restored
    });
    assert_eq!(at_lb["upstream_local_address"], direct);
    assert_eq!(
        at_lb["upstream_host"],
        format!("127.0.0.1:{proxy_port}").as_str()
    );
    // ...and the sidecar the client the gateway vouched for.
    let at_sidecar = mesh.wait_for_access_log(|e| {
        mesh.is_sidecar_mtls(e) && e["client_ip"] == "127.0.0.55" && e["path"] == "/ip"
    });
    assert_eq!(at_sidecar["peer_identity"], GATEWAY_IDENTITY);

    // The denied client is denied this way too.
    let denied = request(&["--interface", DENIED_CLIENT, &lb]);
    assert_eq!(denied.status, 403, "{}", denied.body);

    // A client that reaches the PROXY protocol listener itself, without the
    // header: Envoy closes the connection (a reset, as the request is left
    // unread) and counts it.
    let proxy_url = mesh.url("GATEWAY_PROXY_PROTOCOL_PORT", "/ip");
    let errors = mesh.stat("GATEWAY_ADMIN_PORT", "downstream_cx_proxy_proto_error");
    let not_found = mesh.stat("GATEWAY_ADMIN_PORT", "proxy_proto.not_found_disallowed");
    let without_header = run_curl(&["--interface", "127.0.0.55", &proxy_url]);
    assert_eq!(without_header.status.code(), Some(56), "{without_header:?}");
    assert!(
        String::from_utf8_lossy(&without_header.stderr).contains("Connection reset by peer"),
        "{without_header:?}"
    );
    assert_eq!(
        mesh.wait_for_stat(
            "GATEWAY_ADMIN_PORT",
            "downstream_cx_proxy_proto_error",
            errors + 1
        ),
        errors + 1
    );
    assert_eq!(
        mesh.wait_for_stat(
            "GATEWAY_ADMIN_PORT",
            "proxy_proto.not_found_disallowed",
            not_found + 1
        ),
        not_found + 1
    );
    // A client that sends a PROXY header itself, from anywhere but the load
    // balancer, finds no filter chain: it could otherwise name any client.
    let no_match = format!("listener.127.0.0.1_{proxy_port}.no_filter_chain_match");
    let refused = mesh.stat("GATEWAY_ADMIN_PORT", &no_match);
    let own_header = run_curl(&[
        "--haproxy-protocol",
        "--interface",
        "127.0.0.55",
        &proxy_url,
    ]);
    assert!(
        matches!(own_header.status.code(), Some(52 | 56)),
        "{own_header:?}"
    );
    assert_eq!(
        mesh.wait_for_stat("GATEWAY_ADMIN_PORT", &no_match, refused + 1),
        refused + 1
    );
}

#[test]
fn every_envoy_config_in_the_repo_validates() {
    let configs: Vec<_> = std::fs::read_dir(repo_root().join("envoy-test/configs"))
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.extension().is_some_and(|e| e == "yaml"))
        .collect();
    assert!(configs.len() >= 4, "{configs:?}");
    let scratch = TempDir::new("validate");
    let dir = scratch.path();
    // The certificates `make run` and `make certs` make.
    let made = Command::new(repo_root().join("envoy-test/mesh-pki.sh"))
        .arg(dir)
        .status()
        .unwrap();
    assert!(made.success());
    for config in configs {
        // The same path rewriting mesh.sh does.
        let text = std::fs::read_to_string(&config)
            .unwrap()
            .replace(
                "filename: build/plugin.wasm",
                &format!("filename: {}", module_path().display()),
            )
            .replace(
                "filename: envoy-test/run/",
                &format!("filename: {}/", dir.display()),
            );
        let rendered = dir.join(config.file_name().unwrap());
        std::fs::write(&rendered, text).unwrap();
        let output = Command::new(envoy_bin())
            .args(["--mode", "validate", "--disable-hot-restart", "-c"])
            .arg(&rendered)
            .output()
            .unwrap();
        let all = format!(
            "{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        assert!(
            output.status.success() && all.contains(" OK"),
            "{}:\n{all}",
            config.display()
        );
    }
    // The load balancer's, by HAProxy itself.
    let lb = repo_root().join("envoy-test/configs/lb.cfg");
    let output = Command::new("haproxy")
        .arg("-c")
        .arg("-f")
        .arg(&lb)
        .output()
        .expect("haproxy (make deps-apt installs it)");
    let all = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        output.status.success() && all.contains("Configuration file is valid"),
        "{}:\n{all}",
        lb.display()
    );
}

/// Where a port follows 127.0.0.1 (or ::1) in the doc: a URL, the
/// listener's name in Envoy's stats (`listener.127.0.0.1_10081.…`), or the
/// proxy's name in its access log (`"proxy":"sidecar:15006"`).
const LOOPBACK: &[&str] = &[
    "127.0.0.1:",
    "[::1]:",
    "_",
    "\"sidecar:",
    "\"sidecar-2:",
    "\"sleep:",
    "\"gateway:",
    "\"lb:",
];

/// `make run`'s default ports as docs/local-mesh.md writes them, after what
/// they follow, and the variable that moves each (the top of
/// envoy-test/mesh.sh). A port of another address goes in with that address
/// (`&["127.0.0.80:"]`).
const DOC_PORTS: [(&[&str], u16, &str); 25] = [
    (LOOPBACK, 8000, "APP_PORT"),
    (LOOPBACK, 8001, "APP2_PORT"),
    (LOOPBACK, 15006, "SIDECAR_MTLS_PORT"),
    (LOOPBACK, 10000, "SIDECAR_PORT"),
    (LOOPBACK, 20000, "SIDECAR_PLAIN_PORT"),
    (LOOPBACK, 15000, "SIDECAR_ADMIN_PORT"),
    (LOOPBACK, 15106, "SIDECAR2_MTLS_PORT"),
    (LOOPBACK, 15100, "SIDECAR2_ADMIN_PORT"),
    (LOOPBACK, 15001, "SLEEP_OUTBOUND_PORT"),
    (LOOPBACK, 15002, "SLEEP_ADMIN_PORT"),
    (LOOPBACK, 10080, "GATEWAY_HTTP_PORT"),
    (LOOPBACK, 10443, "GATEWAY_HTTPS_PORT"),
    (LOOPBACK, 10081, "GATEWAY_PROXY_PROTOCOL_PORT"),
    (LOOPBACK, 20080, "GATEWAY_PLAIN_HTTP_PORT"),
    (LOOPBACK, 20443, "GATEWAY_PLAIN_HTTPS_PORT"),
    (LOOPBACK, 15080, "GATEWAY_ADMIN_PORT"),
    (LOOPBACK, 8080, "LB_PORT"),
    (&["127.0.0.30:", "127.0.0.40:"], 15008, "HBONE_PORT"),
    (
        &["127.0.0.80:", "127.0.0.81:"],
        8000,
        "AMBIENT_SERVICE_PORT",
    ),
    (&["127.0.0.40:"], 8080, "AMBIENT_APP_PORT"),
    (LOOPBACK, 15209, "ROGUE_HBONE_PORT"),
    (LOOPBACK, 15210, "ROGUE_HBONE_TO_POD_PORT"),
    (LOOPBACK, 15030, "WAYPOINT_ADMIN_PORT"),
    (LOOPBACK, 15020, "ZTUNNEL_ADMIN_PORT"),
    (LOOPBACK, 10082, "GATEWAY_AMBIENT_PORT"),
];

/// The walkthrough as the doc has it.
const WALKTHROUGH: &str = "docs/local-mesh.md";
/// The marker docs/local-mesh.md puts before each block this test runs; the
/// docs check (envoy-test/check_docs.py) fails on a shell block that no test
/// runs and that is not marked not-run.
const RUN_BY: &str = "<!-- run-by: envoy-test/tests/mesh.rs -->";

/// One command of the doc and what the doc shows it printing.
struct DocStep {
    line: usize,
    command: String,
    output: Vec<String>,
}

/// Every `$ ` command of the ```console blocks marked RUN_BY, in order, and
/// every line of the ```json blocks marked RUN_BY (access-log lines), with
/// its line number.
fn doc_steps(doc: &str) -> (Vec<DocStep>, Vec<(usize, String)>) {
    let mut steps = Vec::new();
    let mut logged = Vec::new();
    let mut lines = doc.lines().enumerate();
    while let Some((_, line)) = lines.next() {
        if line.trim() != RUN_BY {
            continue;
        }
        let fence = lines.next().map(|(_, l)| l.trim());
        assert!(
            matches!(fence, Some("```console" | "```json")),
            "{WALKTHROUGH}: {RUN_BY} before {fence:?}"
        );
        let log_lines = fence == Some("```json");
        for (number, line) in lines.by_ref() {
            if line.trim() == "```" {
                break;
            }
            if log_lines {
                logged.push((number + 1, line.to_owned()));
            } else if let Some(command) = line.strip_prefix("$ ") {
                assert!(
                    !command.ends_with('\\'),
                    "{WALKTHROUGH}:{}: one line per command",
                    number + 1
                );
                steps.push(DocStep {
                    line: number + 1,
                    command: command.to_owned(),
                    output: Vec::new(),
                });
            } else {
                let step = steps.last_mut().unwrap_or_else(|| {
                    panic!("{WALKTHROUGH}:{}: output before any command", number + 1)
                });
                step.output.push(line.to_owned());
            }
        }
    }
    (steps, logged)
}

/// An access-log line as the doc shows it: the same fields with the same
/// values, but for the ports a connection was given (an `address:port`
/// whose port is neither 0 nor one of the mesh's must match by address)
/// and byte counts (a Host header holds the ports, so they vary).
fn logged_as_shown(shown: &Value, logged: &Value, ports: &[u16]) -> bool {
    let (Some(shown), Some(logged)) = (shown.as_object(), logged.as_object()) else {
        return false;
    };
    let ephemeral = |text: &str| {
        let (address, port) = text.rsplit_once(':')?;
        let port: u16 = port.parse().ok()?;
        (port != 0 && !ports.contains(&port)).then_some(address.to_owned())
    };
    shown.len() == logged.len()
        && shown.iter().all(|(key, want)| {
            let Some(got) = logged.get(key) else {
                return false;
            };
            if key.starts_with("bytes_") {
                return got.is_u64();
            }
            match (want.as_str(), got.as_str()) {
                (Some(want), Some(got)) if want != got => {
                    ephemeral(want).is_some_and(|address| ephemeral(got) == Some(address))
                }
                _ => want == got,
            }
        })
}

impl Mesh {
    /// The doc's text with this mesh's ports: a default port of DOC_PORTS,
    /// after what it follows there, becomes the port it runs on;
    /// envoy-test/run/ becomes this mesh's run dir.
    fn doc_text(&self, text: &str) -> String {
        let text = text.replace(
            "envoy-test/run/",
            &format!("{}/", self.run_dir.path().display()),
        );
        let mut out = String::new();
        let mut rest = text.as_str();
        while let Some(start) = rest.find(|c: char| c.is_ascii_digit()) {
            let end = rest[start..]
                .find(|c: char| !c.is_ascii_digit())
                .map_or(rest.len(), |e| start + e);
            out.push_str(&rest[..start]);
            let digits = &rest[start..end];
            let moved = DOC_PORTS
                .iter()
                .find(|(after, port, _)| {
                    port.to_string() == digits && after.iter().any(|a| out.ends_with(a))
                })
                .map(|(_, _, var)| self.port(var).to_string());
            out.push_str(moved.as_deref().unwrap_or(digits));
            rest = &rest[end..];
        }
        out.push_str(rest);
        out
    }
}

/// What may differ between runs: the `date` and upstream time of a `curl -i`.
fn comparable(text: &str) -> Vec<String> {
    text.lines()
        .map(|line| {
            let line = line.trim_end();
            for varying in ["date: ", "x-envoy-upstream-service-time: "] {
                if line.to_ascii_lowercase().starts_with(varying) {
                    return format!("{varying}…");
                }
            }
            line.to_owned()
        })
        .collect()
}

/// docs/local-mesh.md, run as a reader runs it against `make run`: each
/// command of its run-by blocks through bash from the repository root, in
/// the doc's order, must print what the doc shows under it (with this mesh's
/// ports). A doc line `curl: (N) ...` is curl failing: the command must fail
/// with a curl error (which one varies with timing, as the doc says). The
/// counters the doc shows last are those of every command before them, so
/// they are polled until the filter has published them.
#[test]
fn docs_local_mesh_md_runs_as_shown() {
    let doc = std::fs::read_to_string(repo_root().join(WALKTHROUGH)).unwrap();
    let (steps, logged) = doc_steps(&doc);
    assert!(
        logged.len() >= 20,
        "{WALKTHROUGH}: only {} log lines",
        logged.len()
    );
    assert!(
        steps.len() >= 40,
        "{WALKTHROUGH}: only {} commands",
        steps.len()
    );
    let mut mesh = Mesh::start();
    // Every curl of the doc gives up after 10 s rather than hang the test.
    let curl_home = mesh.run_dir.path().join("curl-home");
    std::fs::create_dir_all(&curl_home).unwrap();
    std::fs::write(curl_home.join(".curlrc"), "max-time = 10\n").unwrap();
    for step in &steps {
        let command = mesh.doc_text(&step.command);
        // A port the table does not know would reach whatever listens there
        // (a `make run` of the reader's own, say), not this mesh: on
        // 127.0.0.1 and on each address of the ambient part.
        let addresses = DOC_PORTS
            .iter()
            .flat_map(|(after, _, _)| after.iter())
            .filter(|after| after.starts_with("127."));
        for address in addresses {
            for (at, _) in command.match_indices(address) {
                let port: String = command[at + address.len()..]
                    .chars()
                    .take_while(char::is_ascii_digit)
                    .collect();
                assert!(
                    mesh.ports.iter().any(|(_, p)| p.to_string() == port),
                    "{WALKTHROUGH}:{}: port {port} of {address} is not in DOC_PORTS: `{}`",
                    step.line,
                    step.command
                );
            }
        }
        let expected = comparable(&mesh.doc_text(&step.output.join("\n")));
        let fails = expected.len() == 1 && expected[0].starts_with("curl: (");
        let run = || {
            let output = Command::new("bash")
                .arg("-c")
                .arg(&command)
                .current_dir(repo_root())
                .env("CURL_HOME", &curl_home)
                .stdin(Stdio::null())
                .output()
                .unwrap();
            let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
            let stderr = String::from_utf8_lossy(&output.stderr);
            let shown = if fails {
                !output.status.success() && stdout.is_empty() && stderr.contains("curl: (")
            } else {
                comparable(&stdout) == expected
            };
            let printed = format!("it printed ({}):\n{stdout}{stderr}", output.status);
            (shown, printed)
        };
        let unlike = |printed: &str| {
            format!(
                "{WALKTHROUGH}:{}: `{command}`\nthe doc shows:\n{}\n{printed}",
                step.line,
                expected.join("\n")
            )
        };
        // Counters reach /stats once a second: poll those, run the rest once.
        if command.contains("/stats") {
            let last = RefCell::new(String::new());
            wait_until(
                Duration::from_secs(10),
                Lazy(|f: &mut fmt::Formatter<'_>| f.write_str(&unlike(&last.borrow()))),
                || {
                    let (shown, printed) = run();
                    *last.borrow_mut() = printed;
                    shown.then_some(())
                },
            );
        } else {
            let (shown, printed) = run();
            assert!(shown, "{}", unlike(&printed));
        }
    }
    // The access-log lines the doc shows, among those the mesh printed.
    let ports: Vec<u16> = mesh.ports.iter().map(|(_, port)| *port).collect();
    for (line, text) in &logged {
        let shown: Value = serde_json::from_str(&mesh.doc_text(text))
            .unwrap_or_else(|e| panic!("{WALKTHROUGH}:{line}: {e}"));
        eprintln!("{WALKTHROUGH}:{line}: looking for {shown}");
        mesh.wait_for_access_log(|entry| logged_as_shown(&shown, entry, &ports));
    }
    // And Ctrl-C stops it all, the ambient part's proxies included.
    let status = mesh.interrupt();
    assert!(status.success(), "{status:?}");
}
