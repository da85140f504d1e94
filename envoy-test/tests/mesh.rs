//! The local mesh of `make run`, driven as a user drives it: `mesh.sh` on free
//! ports, then the README's curl commands against real Envoy and httpbin.
//!
//! `mesh.sh` runs in a process group of its own, with the signal dispositions
//! a terminal gives it (whoever started the tests may have ignored SIGINT, and
//! bash cannot trap a signal ignored when it started). It is stopped as Ctrl-C
//! stops `make run`, SIGINT to the whole group, and on every other way out the
//! whole group is killed, so no Envoy or gunicorn outlives a test.

use std::io::{self, BufRead, BufReader};
use std::net::TcpListener;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use envoy_test::{envoy_bin, module_path, repo_root};
use serde_json::Value;

const PORT_VARS: [&str; 9] = [
    "APP_PORT",
    "SIDECAR_PORT",
    "SIDECAR_PLAIN_PORT",
    "SIDECAR_ADMIN_PORT",
    "GATEWAY_HTTP_PORT",
    "GATEWAY_HTTPS_PORT",
    "GATEWAY_PLAIN_HTTP_PORT",
    "GATEWAY_PLAIN_HTTPS_PORT",
    "GATEWAY_ADMIN_PORT",
];

/// A directory under the system temp dir, removed however the test ends.
struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> TempDir {
        let dir = std::env::temp_dir().join(format!("client-ip-{tag}-{}", std::process::id()));
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
    _run_dir: TempDir,
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
            _run_dir: run_dir,
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

    /// Waits (up to 10 s; Envoy flushes access logs in batches) for an
    /// access-log line that matches.
    fn wait_for_access_log(&self, matches: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut seen = Vec::new();
        while let Ok(line) = self
            .lines
            .recv_timeout(deadline.saturating_duration_since(Instant::now()))
        {
            if let Ok(entry) = serde_json::from_str::<Value>(&line) {
                if matches(&entry) {
                    return entry;
                }
            }
            seen.push(line);
        }
        panic!("no matching access-log line in:\n{}", seen.join("\n"));
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
        let deadline = Instant::now() + Duration::from_secs(30);
        while signal_group(pgid, 0) {
            assert!(
                Instant::now() < deadline,
                "still running 30 s after Ctrl-C:\n{}",
                group_members(pgid).join("\n")
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        self.pgid = None;
        status
    }
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

fn curl(args: &[&str]) -> Value {
    let output = Command::new("curl")
        .args(["-sS", "--max-time", "10"])
        .args(args)
        .output()
        .expect("curl");
    let body = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "curl {args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_str(&body).unwrap_or_else(|e| panic!("curl {args:?}: {e}: {body}"))
}

#[test]
fn east_west_north_south_http_and_https() {
    let mut mesh = Mesh::start();
    let url = |var: &str, path: &str| format!("http://127.0.0.1:{}{path}", mesh.port(var));
    let tls_url = |var: &str, path: &str| format!("https://127.0.0.1:{}{path}", mesh.port(var));
    let forged = ["-H", "X-Forwarded-For: 6.6.6.6", "-H", "X-Real-IP: 6.6.6.6"];

    // East-west, without the filter: the app sees the sidecar's 127.0.0.6.
    let before = curl(&[
        "--interface",
        "127.0.0.123",
        &url("SIDECAR_PLAIN_PORT", "/ip"),
    ]);
    assert_eq!(before["origin"], "127.0.0.6");
    // ...and a forged X-Real-IP reaches it untouched.
    let headers = curl(
        &[
            &["--interface", "127.0.0.123"][..],
            &forged,
            &[&url("SIDECAR_PLAIN_PORT", "/headers?show_env=1")],
        ]
        .concat(),
    );
    assert_eq!(headers["headers"]["X-Real-Ip"], "6.6.6.6");

    // East-west, with the filter: the app sees the client.
    let after = curl(&["--interface", "127.0.0.123", &url("SIDECAR_PORT", "/ip")]);
    assert_eq!(after["origin"], "127.0.0.123");
    for client in ["127.0.0.123", "127.0.0.124", "127.0.0.200"] {
        let headers = curl(
            &[
                &["--interface", client][..],
                &forged,
                &[&url("SIDECAR_PORT", "/headers?show_env=1")],
            ]
            .concat(),
        );
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

    // North-south over HTTP: the gateway's client, even when it forges headers.
    let via_gateway = curl(
        &[
            &["--interface", "127.0.0.77"][..],
            &forged,
            &[&url("GATEWAY_HTTP_PORT", "/headers?show_env=1")],
        ]
        .concat(),
    );
    assert_eq!(via_gateway["headers"]["X-Real-Ip"], "127.0.0.77");
    assert_eq!(via_gateway["headers"]["X-Forwarded-For"], "127.0.0.77");
    let origin = curl(&[
        "--interface",
        "127.0.0.77",
        &url("GATEWAY_HTTP_PORT", "/ip"),
    ]);
    assert_eq!(origin["origin"], "127.0.0.77");
    // Without the filter the forged X-Real-IP crosses the gateway and the sidecar.
    let plain_gateway = curl(
        &[
            &["--interface", "127.0.0.77"][..],
            &forged,
            &[&url("GATEWAY_PLAIN_HTTP_PORT", "/headers?show_env=1")],
        ]
        .concat(),
    );
    assert_eq!(plain_gateway["headers"]["X-Real-Ip"], "6.6.6.6");

    // North-south over HTTPS, TLS ended at the gateway.
    let https = curl(
        &[
            &["-k", "--interface", "127.0.0.78"][..],
            &forged,
            &[&tls_url("GATEWAY_HTTPS_PORT", "/headers?show_env=1")],
        ]
        .concat(),
    );
    assert_eq!(https["headers"]["X-Real-Ip"], "127.0.0.78");
    let https_origin = curl(&[
        "-k",
        "--interface",
        "127.0.0.78",
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

    // The access log shows both views: Envoy's, and the filter's client.
    let sidecar = format!("sidecar:{}", mesh.port("SIDECAR_PORT"));
    let sidecar_view = mesh.wait_for_access_log(|e| {
        e["proxy"] == sidecar.as_str() && e["x_forwarded_for"] == "127.0.0.77" && e["path"] == "/ip"
    });
    assert_eq!(sidecar_view["client_ip"], "127.0.0.77");
    assert_eq!(sidecar_view["downstream_remote_address"], "127.0.0.77:0");
    let direct = sidecar_view["downstream_direct_remote_address"]
        .as_str()
        .unwrap();
    assert!(direct.starts_with("127.0.0.100:"), "{direct}");
    let upstream_local = sidecar_view["upstream_local_address"].as_str().unwrap();
    assert!(upstream_local.starts_with("127.0.0.6:"), "{upstream_local}");

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
}

#[test]
fn every_envoy_config_in_the_repo_validates() {
    let configs: Vec<_> = std::fs::read_dir(repo_root().join("envoy-test/configs"))
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.extension().is_some_and(|e| e == "yaml"))
        .collect();
    assert!(configs.len() >= 2, "{configs:?}");
    let scratch = TempDir::new("validate");
    let dir = scratch.path();
    std::fs::create_dir_all(dir.join("tls")).unwrap();
    let made = Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=localhost",
        ])
        .arg("-keyout")
        .arg(dir.join("tls/key.pem"))
        .arg("-out")
        .arg(dir.join("tls/cert.pem"))
        .stderr(Stdio::null())
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
                "filename: envoy-test/run/tls/",
                &format!("filename: {}/tls/", dir.display()),
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
}
