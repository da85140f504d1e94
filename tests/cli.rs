//! The `client-ip` command run as a user runs it: the built binary, real
//! files, exit statuses, and every command docs/check.md shows with its
//! output.

#![cfg(not(target_arch = "wasm32"))]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::Value;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn client_ip(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_client-ip"))
        .args(args)
        .current_dir(repo())
        .output()
        .expect("the client-ip binary runs")
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// A scratch directory removed on every path out.
struct Scratch(PathBuf);

impl Scratch {
    fn new(tag: &str) -> Scratch {
        let dir = std::env::temp_dir().join(format!("client-ip-cli-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        Scratch(dir)
    }

    fn file(&self, name: &str, text: &str) -> String {
        let path = self.0.join(name);
        std::fs::write(&path, text).unwrap();
        path.display().to_string()
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Manifests that replace a plugin of another file, which is deployed with
/// them: the RBAC sample's HTTP plugin publishes the client, and sidecar.yaml
/// still brings the peer filter.
const DEPLOYED_BESIDE: &[(&str, &str)] = &[("envoyfilter-rbac.yaml", "sidecar.yaml")];

#[test]
fn every_manifest_in_wasmplugin_passes_check() {
    let whole = client_ip(&["check", "--strict", "wasmplugin/"]);
    assert_eq!(whole.status.code(), Some(0), "{}", stdout(&whole));
    let text = stdout(&whole);
    assert!(text.contains("0 errors, 0 warnings"), "{text}");
    // Each WasmPlugin file on its own, and each one's every document.
    let mut plugins = 0;
    for entry in std::fs::read_dir(repo().join("wasmplugin")).unwrap() {
        let path = entry.unwrap().path();
        let text = std::fs::read_to_string(&path).unwrap();
        if !text.contains("kind: WasmPlugin") {
            // The directory run skipped it (a DestinationRule, an
            // EnvoyFilter, an AuthorizationPolicy); named alone it is refused.
            assert!(stdout(&whole).contains(&format!("{}: skipped", rel(&path))));
            continue;
        }
        // A file that replaces another's plugin is checked with the files it
        // is deployed beside.
        let mut files = vec![rel(&path)];
        let mut expected = text.matches("kind: WasmPlugin").count() as u64;
        if let Some((_, beside)) = DEPLOYED_BESIDE
            .iter()
            .find(|(file, _)| path.ends_with(file))
        {
            let beside = repo().join("wasmplugin").join(beside);
            expected += std::fs::read_to_string(&beside)
                .unwrap()
                .matches("kind: WasmPlugin")
                .count() as u64;
            files.push(rel(&beside));
        }
        let mut args = vec!["check", "--strict", "--format", "json"];
        args.extend(files.iter().map(String::as_str));
        let alone = client_ip(&args);
        assert_eq!(alone.status.code(), Some(0), "{}", stdout(&alone));
        let report: Value = serde_json::from_slice(&alone.stdout).unwrap();
        assert_eq!(report["checked"].as_u64(), Some(expected));
        plugins += report["checked"].as_u64().unwrap();
    }
    assert!(plugins >= 6, "{plugins}");
}

fn rel(path: &Path) -> String {
    path.strip_prefix(repo()).unwrap().display().to_string()
}

#[test]
fn a_refused_configuration_gets_envoys_line_and_exit_1() {
    let scratch = Scratch::new("refused");
    let unknown = scratch.file("unknown.json", r#"{"trusted_hop": 1}"#);
    let output = client_ip(&["check", &unknown]);
    assert_eq!(output.status.code(), Some(1));
    let text = stdout(&output);
    assert!(
        text.contains("error: field `trusted_hop`: 1 is refused: unknown field `trusted_hop`"),
        "{text}"
    );
    // The same line the parser gives, which Envoy logs.
    let expected = client_ip::config::FilterConfig::from_json(br#"{"trusted_hop": 1}"#)
        .unwrap_err()
        .to_string();
    assert!(
        text.contains(&format!("{unknown} (client_ip): error: {expected}")),
        "{text}"
    );
    let yaml = scratch.file(
        "bad.yaml",
        "apiVersion: extensions.istio.io/v1alpha1\nkind: WasmPlugin\nmetadata: {name: x, namespace: default}\nspec:\n  pluginName: client_ip\n  pluginConfig:\n    xff_mode: bogus\n",
    );
    let output = client_ip(&["check", "--format", "json", &yaml]);
    assert_eq!(output.status.code(), Some(1));
    let report: Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(report["errors"], 1);
    assert_eq!(report["results"][0]["status"], "error");
    assert!(report["results"][0]["error"]
        .as_str()
        .unwrap()
        .starts_with("field `xff_mode`:"));
}

#[test]
fn risky_trust_warns_and_strict_exits_2() {
    let lenient = client_ip(&["check", "docs/examples/risky-sidecar.yaml"]);
    assert_eq!(lenient.status.code(), Some(0));
    let strict = client_ip(&[
        "check",
        "--strict",
        "--format",
        "json",
        "docs/examples/risky-sidecar.yaml",
    ]);
    assert_eq!(strict.status.code(), Some(2));
    let report: Value = serde_json::from_slice(&strict.stdout).unwrap();
    assert_eq!(report["results"][0]["root"], "client_ip_peer");
    let codes: Vec<&str> = report["results"][1]["warnings"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| w["code"].as_str().unwrap())
        .collect();
    assert_eq!(codes, ["broad-trust", "identity-spans-namespaces"]);
    let scratch = Scratch::new("risky");
    // The HTTP filter of a sidecar without its peer filter.
    let alone = std::fs::read_to_string(repo().join("wasmplugin/sidecar.yaml")).unwrap();
    let http_only = alone.split("\n---\n").nth(1).unwrap();
    let file = scratch.file("http-only.yaml", http_only);
    let output = client_ip(&["check", "--strict", &file]);
    assert_eq!(output.status.code(), Some(2));
    assert!(
        stdout(&output).contains("warning [no-peer-filter]"),
        "{}",
        stdout(&output)
    );
    for (config, deployment, code) in [
        (
            r#"{"trusted_proxies":["0.0.0.0/0"]}"#,
            "gateway",
            "trusts-everyone",
        ),
        (r#"{"trusted_hops":1}"#, "sidecar", "hops-on-sidecar"),
        (
            r#"{"deny_clients":["6.6.6.6"]}"#,
            "waypoint",
            "access-without-trust",
        ),
    ] {
        let file = scratch.file("risky.json", config);
        let output = client_ip(&["check", "--strict", "--deployment", deployment, &file]);
        assert_eq!(output.status.code(), Some(2), "{config}");
        assert!(
            stdout(&output).contains(&format!("warning [{code}]")),
            "{}",
            stdout(&output)
        );
    }
}

#[test]
fn bad_input_is_one_clear_line_and_a_failure() {
    let scratch = Scratch::new("bad-input");
    let deployment = scratch.file(
        "deployment.yaml",
        "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: httpbin}\n",
    );
    let plain = scratch.file("plain.yaml", "trusted_proxies: [10.0.0.1]\n");
    let broken = scratch.file("broken.yaml", "kind: [\n");
    for (args, expected) in [
        (vec!["check", "no/such/file.yaml"], "cannot read the file"),
        (
            vec!["check", deployment.as_str()],
            "no client-ip WasmPlugin in it (Deployment httpbin is not a WasmPlugin)",
        ),
        (vec!["check", plain.as_str()], "is not a Kubernetes object"),
        (vec!["check", broken.as_str()], "not YAML"),
    ] {
        let output = client_ip(&args);
        assert_eq!(output.status.code(), Some(1), "{args:?}");
        let text = stdout(&output);
        let error: Vec<&str> = text.lines().filter(|l| l.contains(": error: ")).collect();
        assert_eq!(error.len(), 1, "{text}");
        assert!(error[0].contains(expected), "{text}");
    }
    for (args, expected) in [
        (
            vec![
                "resolve",
                "wasmplugin/sidecar.yaml",
                "--peer",
                "10.0.0.1",
                "-H",
                "X-Forwarded-For 1.1.1.1",
            ],
            "has no colon",
        ),
        (
            vec!["resolve", "wasmplugin/sidecar.yaml", "--peer", "gateway"],
            "is not an address",
        ),
        (
            vec!["resolve", "no/such.json", "--peer", "10.0.0.1"],
            "cannot read the file",
        ),
        (
            vec!["explain", deployment.as_str()],
            "no client-ip WasmPlugin",
        ),
        (
            vec!["explain", "docs/examples/typo.json"],
            "invalid plugin configuration: field `trusted_proxies[0]`",
        ),
    ] {
        let output = client_ip(&args);
        assert_eq!(output.status.code(), Some(1), "{args:?}");
        let text = stderr(&output);
        assert_eq!(text.lines().count(), 1, "{text}");
        assert!(
            text.starts_with("client-ip: error: ") && text.contains(expected),
            "{text}"
        );
    }
}

#[test]
fn explain_says_who_chooses_the_client() {
    let output = client_ip(&["explain", "wasmplugin/sidecar.yaml"]);
    assert!(output.status.success());
    let text = stdout(&output);
    for phrase in [
        "on a sidecar",
        "trusted identity cluster.local/ns/istio-system/sa/istio-ingressgateway-service-account: the peer whose certificate names exactly this identity chooses the client",
        "every other peer: is its own client",
        "x-forwarded-for (overwrite): the client alone",
        "forwarded (preserve): as received",
    ] {
        assert!(text.contains(phrase), "{phrase}\n{text}");
    }
    for name in client_ip::COUNTERS {
        assert!(text.contains(&format!("  - {name}: ")), "{name}");
    }
    let gateway = stdout(&client_ip(&["explain", "wasmplugin/ingress-gateway.yaml"]));
    assert!(
        gateway.contains("trusted proxy 10.0.0.0/8: a peer in 10.0.0.0/8 chooses the client"),
        "{gateway}"
    );
    assert!(gateway.contains("A whole network"), "{gateway}");
}

#[test]
fn resolve_gives_the_decision_as_json() {
    let trusted = client_ip(&[
        "resolve",
        "wasmplugin/sidecar.yaml",
        "--peer",
        "10.1.2.3:41000",
        "--identity",
        "cluster.local/ns/istio-system/sa/istio-ingressgateway-service-account",
        "-H",
        "X-Forwarded-For: 6.6.6.6, 203.0.113.7",
        "-H",
        "X-Real-IP: 6.6.6.6",
        "--format",
        "json",
    ]);
    assert!(trusted.status.success(), "{}", stderr(&trusted));
    let answer: Value = serde_json::from_slice(&trusted.stdout).unwrap();
    assert_eq!(answer["client"], "203.0.113.7");
    assert_eq!(answer["decision"], "allow");
    assert_eq!(answer["status"], Value::Null);
    assert_eq!(
        answer["headers"],
        serde_json::json!([
            ["x-real-ip", "203.0.113.7"],
            ["x-forwarded-for", "203.0.113.7"]
        ])
    );
    // Without the identity the same request names only its peer.
    let untrusted = client_ip(&[
        "resolve",
        "wasmplugin/sidecar.yaml",
        "--peer",
        "10.1.2.3",
        "-H",
        "X-Forwarded-For: 6.6.6.6",
        "--format",
        "json",
    ]);
    let answer: Value = serde_json::from_slice(&untrusted.stdout).unwrap();
    assert_eq!(answer["client"], "10.1.2.3");
    let scratch = Scratch::new("resolve");
    let deny = scratch.file("deny.json", r#"{"allow_clients":["203.0.113.0/24"]}"#);
    for (peer, decision, status, client) in [
        ("unknown", "deny", Value::from(403), Value::Null),
        (
            "198.51.100.1",
            "deny",
            Value::from(403),
            Value::from("198.51.100.1"),
        ),
        (
            "203.0.113.1",
            "allow",
            Value::Null,
            Value::from("203.0.113.1"),
        ),
    ] {
        let output = client_ip(&["resolve", &deny, "--peer", peer, "--format", "json"]);
        let answer: Value = serde_json::from_slice(&output.stdout).unwrap();
        assert_eq!(answer["decision"], decision, "{peer}");
        assert_eq!(answer["status"], status, "{peer}");
        assert_eq!(answer["client"], client, "{peer}");
    }
}

/// Every command in docs/check.md's `console` blocks, run from the
/// repository root with `client-ip` on the PATH, prints what the page shows
/// (stdout and stderr together). `CLIENT_IP_UPDATE_DOCS=1` writes the
/// outputs into the page instead.
#[test]
fn docs_check_md_commands_print_what_the_page_shows() {
    let page_path = repo().join("docs/check.md");
    let page = std::fs::read_to_string(&page_path).unwrap();
    let bin_dir = Path::new(env!("CARGO_BIN_EXE_client-ip")).parent().unwrap();
    let path = format!(
        "{}:{}",
        bin_dir.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let update = std::env::var_os("CLIENT_IP_UPDATE_DOCS").is_some();
    let run = |command: &str| {
        let output = Command::new("bash")
            .arg("-c")
            .arg(format!("exec 2>&1; {command}"))
            .env("PATH", &path)
            .current_dir(repo())
            .output()
            .unwrap();
        stdout(&output)
    };
    // The page as it would be with every output as the command prints it.
    let mut rewritten = String::new();
    let mut mismatches = Vec::new();
    let mut commands = 0;
    let mut in_block = false;
    let mut current: Option<(String, String)> = None;
    let mut finish = |current: &mut Option<(String, String)>, rewritten: &mut String| {
        if let Some((command, shown)) = current.take() {
            let printed = run(&command);
            if printed != shown {
                mismatches.push(format!(
                    "$ {command}\n--- the page shows:\n{shown}--- it prints:\n{printed}"
                ));
            }
            rewritten.push_str(&format!("$ {command}\n{printed}"));
            commands += 1;
        }
    };
    for line in page.lines() {
        if !in_block {
            rewritten.push_str(line);
            rewritten.push('\n');
            in_block = line == "```console";
            continue;
        }
        if line == "```" {
            finish(&mut current, &mut rewritten);
            rewritten.push_str("```\n");
            in_block = false;
        } else if let Some(command) = line.strip_prefix("$ ") {
            finish(&mut current, &mut rewritten);
            current = Some((command.to_owned(), String::new()));
        } else if let Some((_, shown)) = current.as_mut() {
            shown.push_str(line);
            shown.push('\n');
        }
    }
    if update {
        std::fs::write(&page_path, &rewritten).unwrap();
    } else {
        assert!(
            mismatches.is_empty(),
            "docs/check.md is out of date (CLIENT_IP_UPDATE_DOCS=1 cargo test --test cli rewrites it):\n{}",
            mismatches.join("\n")
        );
    }
    assert!(commands >= 5, "docs/check.md shows {commands} commands");
    // The CI example runs a command the page shows with its output.
    let shown: Vec<&str> = page.lines().filter_map(|l| l.strip_prefix("$ ")).collect();
    let ci: Vec<&str> = page
        .lines()
        .filter_map(|l| l.trim().strip_prefix("- run: client-ip "))
        .collect();
    assert!(!ci.is_empty(), "docs/check.md lost its CI example");
    for command in ci {
        assert!(
            shown.contains(&format!("client-ip {command}").as_str()),
            "the CI example's `client-ip {command}` is not among the commands shown"
        );
    }
}

#[test]
fn a_wasmplugin_written_as_json_is_read_as_a_manifest() {
    let scratch = Scratch::new("json-manifest");
    let file = scratch.file(
        "plugin.json",
        r#"{"apiVersion":"extensions.istio.io/v1alpha1","kind":"WasmPlugin",
            "metadata":{"name":"client-ip","namespace":"istio-system"},
            "spec":{"selector":{"matchLabels":{"istio":"ingressgateway"}},"pluginName":"client_ip",
                    "pluginConfig":{"trusted_proxies":["10.0.0.0/8"]}}}"#,
    );
    let output = client_ip(&["check", "--format", "json", &file]);
    assert_eq!(output.status.code(), Some(0), "{}", stdout(&output));
    let report: Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(
        report["results"][0]["manifest"],
        "WasmPlugin istio-system/client-ip"
    );
    assert_eq!(report["results"][0]["deployment"], "gateway");
}
