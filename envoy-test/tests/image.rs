//! The image as Istio meets it: `make push` to a real registry (Debian's
//! docker-registry) on loopback, then the manifest and blobs pulled back over
//! the registry API, the module extracted the way Istio's fetcher does, and
//! loaded into real Envoy.

use std::fs::FileTimes;
use std::io::Read;
use std::net::{SocketAddr, TcpListener};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, SystemTime};

use envoy_test::{module_path, repo_root, wait_until, Envoy, Listener, Request, ScratchDir};
use serde_json::Value;
use sha2::{Digest, Sha256};

const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
const OCI_LAYER_GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";

struct Registry {
    child: Child,
    addr: SocketAddr,
    /// Its storage; removed after the registry stops.
    _dir: ScratchDir,
}

impl Registry {
    fn start() -> Registry {
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        let scratch = ScratchDir::new("registry");
        let dir = scratch.path();
        let config = dir.join("config.yml");
        std::fs::write(
            &config,
            format!(
                "version: 0.1\nlog: {{level: warn}}\nstorage:\n  filesystem: {{rootdirectory: {}}}\nhttp:\n  addr: {addr}\n",
                dir.join("data").display()
            ),
        )
        .unwrap();
        let child = Command::new("docker-registry")
            .arg("serve")
            .arg(&config)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("docker-registry (Debian package docker-registry; `make test` installs it)");
        let registry = Registry {
            child,
            addr,
            _dir: scratch,
        };
        wait_until(Duration::from_secs(30), "the registry to start", || {
            registry.get("/v2/", "*/*").filter(|r| r.status == 200)
        });
        registry
    }

    fn get(&self, path: &str, accept: &str) -> Option<envoy_test::Response> {
        Request::get(path)
            .header("accept", accept)
            .try_send(self.addr)
            .ok()
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `make push` as a user runs it; returns the manifest digest it printed.
/// Pushes run one at a time: they share build/image and buildah's storage.
fn make_push(image: &str) -> String {
    static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _turn = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let output = Command::new("make")
        .current_dir(repo_root())
        .args([
            "--no-print-directory",
            "push",
            &format!("IMAGE={image}"),
            "TLS_VERIFY=false",
        ])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "make push failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    stdout
        .lines()
        .find_map(|line| line.strip_prefix("manifest digest: "))
        .unwrap_or_else(|| panic!("make push printed no digest:\n{stdout}"))
        .trim()
        .to_owned()
}

fn sha256(bytes: &[u8]) -> String {
    format!("sha256:{:x}", Sha256::digest(bytes))
}

/// Istio's fetcher, "compat" variant: the last layer must be an OCI tar+gzip
/// layer; the module is the entry whose base name is plugin.wasm.
fn extract_like_istio(registry: &Registry, repository: &str, manifest: &Value) -> Vec<u8> {
    let layer = manifest["layers"]
        .as_array()
        .unwrap()
        .last()
        .expect("at least one layer");
    assert_eq!(layer["mediaType"], OCI_LAYER_GZIP);
    let digest = layer["digest"].as_str().unwrap();
    let blob = registry
        .get(&format!("/v2/{repository}/blobs/{digest}"), "*/*")
        .unwrap();
    assert_eq!(blob.status, 200);
    assert_eq!(
        sha256(&blob.bytes),
        digest,
        "blob content matches its digest"
    );
    let mut archive = tar::Archive::new(flate2::read::GzDecoder::new(blob.bytes.as_slice()));
    for entry in archive.entries().unwrap() {
        let mut entry = entry.unwrap();
        if entry
            .path()
            .unwrap()
            .file_name()
            .is_some_and(|n| n == "plugin.wasm")
        {
            let mut module = Vec::new();
            entry.read_to_end(&mut module).unwrap();
            return module;
        }
    }
    panic!("plugin.wasm not found in the layer");
}

#[test]
fn pushed_image_gives_back_the_exact_module_and_it_runs() {
    let registry = Registry::start();
    let repository = "client-ip";
    let image = format!("{}/{repository}:roundtrip", registry.addr);
    let digest = make_push(&image);
    println!("manifest digest (WasmPlugin sha256): {digest}");

    let manifest = registry
        .get(
            &format!("/v2/{repository}/manifests/roundtrip"),
            OCI_MANIFEST,
        )
        .unwrap();
    assert_eq!(manifest.status, 200);
    assert_eq!(
        sha256(&manifest.bytes),
        digest,
        "the printed digest is the manifest's"
    );
    let manifest: Value = serde_json::from_slice(&manifest.bytes).unwrap();
    assert_eq!(manifest["mediaType"], OCI_MANIFEST);
    assert_eq!(manifest["layers"].as_array().unwrap().len(), 1);

    let module = extract_like_istio(&registry, repository, &manifest);
    let built = std::fs::read(module_path()).unwrap();
    assert!(
        module == built,
        "extracted module differs from build/plugin.wasm"
    );

    let dir = ScratchDir::new("pulled");
    let pulled = dir.path().join("plugin.wasm");
    std::fs::write(&pulled, &module).unwrap();
    run_in_envoy(&pulled);
}

fn run_in_envoy(module: &Path) {
    let envoy = Envoy::try_start_with_module(&[Listener::sidecar("sidecar", "{}")], module)
        .unwrap_or_else(|f| panic!("Envoy did not start with the pulled module:\n{}", f.log));
    let received = Request::get("/ip")
        .from("127.0.0.9")
        .header("x-forwarded-for", "6.6.6.6")
        .header("x-real-ip", "6.6.6.6")
        .send(envoy.listener("sidecar"))
        .received();
    assert_eq!(received.one("x-real-ip"), "127.0.0.9");
}

/// The file times of the module `make image` copies, put back when dropped.
struct ModuleTimes {
    file: std::fs::File,
    accessed: SystemTime,
    modified: SystemTime,
}

impl ModuleTimes {
    fn save() -> ModuleTimes {
        let path = repo_root().join("build/plugin.wasm");
        let file = std::fs::File::options().write(true).open(&path).unwrap();
        let metadata = file.metadata().unwrap();
        ModuleTimes {
            accessed: metadata.accessed().unwrap(),
            modified: metadata.modified().unwrap(),
            file,
        }
    }

    fn set(&self, accessed: SystemTime, modified: SystemTime) {
        let times = FileTimes::new()
            .set_accessed(accessed)
            .set_modified(modified);
        self.file.set_times(times).unwrap();
    }
}

impl Drop for ModuleTimes {
    fn drop(&mut self) {
        self.set(self.accessed, self.modified);
    }
}

#[test]
fn the_same_module_gives_the_same_image_digest() {
    let registry = Registry::start();
    // Each `make image` copies the module afresh and builds again; nothing
    // of when it ran may reach the image: neither the module's own file
    // times, set apart here (between its build and now, so that make does
    // not build it again and no time is in the future), nor the copy's,
    // which each run makes anew.
    let times = ModuleTimes::save();
    let built = times.modified;
    times.set(built, built);
    let first = make_push(&format!("{}/client-ip:first", registry.addr));
    let now = SystemTime::now();
    assert!(now > built, "build/plugin.wasm is dated in the future");
    times.set(now, now);
    let second = make_push(&format!("{}/client-ip:second", registry.addr));
    assert_eq!(first, second);
}
