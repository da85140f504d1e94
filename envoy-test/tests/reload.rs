//! Live configuration changes, as Istio pushes them over xDS while traffic
//! flows. Envoy reads the listener from a file (file-based LDS); the test
//! rewrites it under load:
//!
//! 1. new plugin JSON: no request fails, and the new rules take effect;
//! 2. bad plugin JSON: Envoy rejects the update, and the old one keeps serving;
//! 3. a module that cannot load: the same.

use std::net::{SocketAddr, TcpListener};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use envoy_test::{
    listener_config, module_path, scratch_dir, wait_until, Envoy, Listener, Request, Upstream,
};
use serde_json::json;

const CLIENT: &str = "127.0.0.20";
const NAMED: &str = "203.0.113.7";

fn write_lds(dir: &Path, version: u32, listener: &Listener, module: &Path) {
    let mut resource = listener_config(listener, module, dir);
    resource["@type"] = json!("type.googleapis.com/envoy.config.listener.v3.Listener");
    let document = json!({"version_info": version.to_string(), "resources": [resource]});
    // Envoy watches for the file being moved into place.
    let staging = dir.join("lds.json.next");
    std::fs::write(&staging, serde_json::to_vec(&document).unwrap()).unwrap();
    std::fs::rename(&staging, dir.join("lds.json")).unwrap();
}

fn sidecar(port: u16, plugin_json: &str) -> Listener {
    Listener {
        port,
        ..Listener::sidecar("sidecar", plugin_json)
    }
}

#[derive(Default)]
struct Outcomes {
    /// The client header of every answered request, in order.
    clients: Vec<String>,
    failures: Vec<String>,
}

#[test]
fn plugin_config_changes_under_load() {
    let upstream = Upstream::start();
    let dir = scratch_dir("reload");
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let module = module_path();
    write_lds(&dir, 1, &sidecar(port, "{}"), &module);
    let bootstrap = json!({
        "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": 0}}},
        "node": {"id": "reload-test", "cluster": "reload-test"},
        "dynamic_resources": {"lds_config": {
            "path_config_source": {"path": dir.join("lds.json").display().to_string()},
            "resource_api_version": "V3"
        }},
        "static_resources": {"clusters": [{
            "name": "app", "type": "STATIC", "connect_timeout": "1s",
            "load_assignment": {"cluster_name": "app", "endpoints": [{"lb_endpoints": [{
                "endpoint": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": upstream.port}}}
            }]}]}
        }]}
    });
    let envoy = Envoy::try_start_with(bootstrap, dir.clone(), 2)
        .unwrap_or_else(|f| panic!("Envoy did not start:\n{}", f.log));
    let address: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();

    // Load: an untrusted-at-first peer naming another client, without pause.
    let outcomes = Arc::new(Mutex::new(Outcomes::default()));
    let stop = Arc::new(AtomicBool::new(false));
    let load = LoadThread {
        stop: Arc::clone(&stop),
        handle: Some({
            let (outcomes, stop) = (Arc::clone(&outcomes), Arc::clone(&stop));
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    let result = Request::get("/reload")
                        .from(CLIENT)
                        .header("x-forwarded-for", NAMED)
                        .try_send(address);
                    let mut outcomes = outcomes.lock().unwrap();
                    match result {
                        Ok(response) if response.status == 200 => {
                            let client = response.received().one("x-real-ip").to_owned();
                            outcomes.clients.push(client);
                        }
                        Ok(response) => outcomes
                            .failures
                            .push(format!("{}: {}", response.status, response.body)),
                        Err(error) => outcomes.failures.push(error.to_string()),
                    }
                }
            })
        }),
    };
    let answered = |outcomes: &Arc<Mutex<Outcomes>>| outcomes.lock().unwrap().clients.len();
    wait_until(
        Duration::from_secs(20),
        "traffic under the first config",
        || (answered(&outcomes) >= 50).then_some(()),
    );
    assert!(outcomes.lock().unwrap().clients.iter().all(|c| c == CLIENT));

    // 1. A new config: the peer becomes a trusted proxy.
    let trusting = format!(r#"{{"trusted_proxies":["{CLIENT}"]}}"#);
    write_lds(&dir, 2, &sidecar(port, &trusting), &module);
    wait_until(Duration::from_secs(20), "the new rules", || {
        let clients = &outcomes.lock().unwrap().clients;
        clients.last().is_some_and(|c| c == NAMED).then_some(())
    });
    let switched_at = answered(&outcomes);
    wait_until(
        Duration::from_secs(20),
        "traffic under the new config",
        || (answered(&outcomes) >= switched_at + 50).then_some(()),
    );

    // 2. A bad config is rejected; the last good one keeps serving.
    let rejected_before = envoy.stat("listener_manager.lds.update_rejected");
    write_lds(&dir, 3, &sidecar(port, r#"{"xff_mode":"bogus"}"#), &module);
    wait_until(
        Duration::from_secs(20),
        "the bad update to be rejected",
        || (envoy.stat("listener_manager.lds.update_rejected") > rejected_before).then_some(()),
    );
    assert!(
        envoy.log().contains("field `xff_mode`"),
        "the refusal names the field"
    );
    let after_bad = answered(&outcomes);
    wait_until(
        Duration::from_secs(20),
        "traffic after the bad update",
        || (answered(&outcomes) >= after_bad + 50).then_some(()),
    );

    // 3. A module that cannot load is rejected the same way.
    let missing = dir.join("no-such-plugin.wasm");
    write_lds(&dir, 4, &sidecar(port, "{}"), &missing);
    wait_until(
        Duration::from_secs(20),
        "the unloadable module to be rejected",
        || (envoy.stat("listener_manager.lds.update_rejected") > rejected_before + 1).then_some(()),
    );
    let after_missing = answered(&outcomes);
    wait_until(
        Duration::from_secs(20),
        "traffic after the unloadable module",
        || (answered(&outcomes) >= after_missing + 50).then_some(()),
    );

    drop(load);
    let outcomes = outcomes.lock().unwrap();
    assert!(
        outcomes.failures.is_empty(),
        "failed requests: {:?}",
        outcomes.failures
    );
    // Once switched, never back: every later answer follows the new rules.
    let first_new = outcomes.clients.iter().position(|c| c == NAMED).unwrap();
    assert!(outcomes.clients[first_new..].iter().all(|c| c == NAMED));
    assert!(outcomes.clients[..first_new].iter().all(|c| c == CLIENT));
    println!(
        "reload: {} requests, none failed; {} under the first config, {} under the second (through a rejected bad config and an unloadable module)",
        outcomes.clients.len(),
        first_new,
        outcomes.clients.len() - first_new
    );
}

/// The load thread, stopped and joined on every path out of the test, a
/// failed assertion included.
struct LoadThread {
    stop: Arc<AtomicBool>,
    handle: Option<std::thread::JoinHandle<()>>,
}

impl Drop for LoadThread {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(handle) = self.handle.take() {
            let joined = handle.join();
            if !std::thread::panicking() {
                joined.expect("the load thread panicked");
            }
        }
    }
}
