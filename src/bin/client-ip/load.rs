//! Reading what the user points at: plugin JSON, or Istio WasmPlugin
//! manifests (YAML, several documents per file), and telling from a
//! WasmPlugin where the filter runs.

use std::path::{Path, PathBuf};

use serde::Deserialize;
use serde_json::Value;

/// The filter's two roots, by Istio's `pluginName` (Envoy's `root_id`).
pub const HTTP_ROOT: &str = "client_ip";
pub const PEER_ROOT: &str = "client_ip_peer";

/// Where the filter runs, which decides what is risky to trust.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Deployment {
    /// A workload's sidecar: its peers are other workloads and gateways.
    Sidecar,
    /// An ingress gateway: its peers are load balancers and clients.
    Gateway,
    /// An ambient waypoint: its peers are workloads (through ztunnel) and gateways.
    Waypoint,
}

impl Deployment {
    pub fn as_str(self) -> &'static str {
        match self {
            Deployment::Sidecar => "sidecar",
            Deployment::Gateway => "gateway",
            Deployment::Waypoint => "waypoint",
        }
    }
}

/// Which root a configuration is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Root {
    Http,
    Peer,
}

impl Root {
    pub fn name(self) -> &'static str {
        match self {
            Root::Http => HTTP_ROOT,
            Root::Peer => PEER_ROOT,
        }
    }
}

/// One configuration of the filter found in a file.
#[derive(Clone, Debug)]
pub struct Plugin {
    pub file: String,
    /// `WasmPlugin <namespace>/<name>`, or `None` for plugin JSON.
    pub manifest: Option<String>,
    pub root: Root,
    /// From the WasmPlugin's selector or targetRefs, or `--deployment`;
    /// `None` when neither says.
    pub deployment: Option<Deployment>,
    /// How the deployment was told, for the reader.
    pub deployment_reason: Option<String>,
    /// The plugin JSON as Envoy receives it.
    pub json: Vec<u8>,
    /// For a WasmPlugin: its namespace and where it attaches (selector and
    /// targetRefs, as written), which pair the HTTP filter with its peer
    /// filter.
    pub attachment: Option<(String, String)>,
}

impl Plugin {
    /// `file`, or `file: WasmPlugin ns/name`.
    pub fn label(&self) -> String {
        match &self.manifest {
            Some(manifest) => format!("{}: {manifest}", self.file),
            None => self.file.clone(),
        }
    }
}

/// What one input yielded.
#[derive(Debug)]
pub enum Found {
    Plugin(Box<Plugin>),
    /// A document this command has nothing to say about, and why.
    Skipped {
        file: String,
        why: String,
    },
    /// The input is unreadable or not what it should be.
    Error {
        file: String,
        error: String,
    },
}

/// Every configuration in the inputs. A directory stands for its `*.yaml`,
/// `*.yml` and `*.json` files (not its subdirectories), in name order; there
/// a file that holds no WasmPlugin is skipped, where a file named on its own
/// must hold one.
pub fn load_all(inputs: &[PathBuf], deployment: Option<Deployment>) -> Vec<Found> {
    let mut found = Vec::new();
    for input in inputs {
        if input.is_dir() {
            match directory_files(input) {
                Ok(files) => {
                    for file in files {
                        found.extend(load_file(&file, deployment, true));
                    }
                }
                Err(error) => found.push(Found::Error {
                    file: shown(input),
                    error,
                }),
            }
        } else {
            found.extend(load_file(input, deployment, false));
        }
    }
    found
}

fn directory_files(dir: &Path) -> Result<Vec<PathBuf>, String> {
    let entries = std::fs::read_dir(dir).map_err(|e| format!("cannot read the directory: {e}"))?;
    let mut files: Vec<PathBuf> = entries
        .filter_map(Result::ok)
        .map(|entry| entry.path())
        .filter(|path| {
            path.is_file()
                && path
                    .extension()
                    .and_then(|e| e.to_str())
                    .is_some_and(|e| matches!(e, "yaml" | "yml" | "json"))
        })
        .collect();
    files.sort();
    Ok(files)
}

fn shown(path: &Path) -> String {
    path.display().to_string()
}

fn is_json(path: &Path) -> bool {
    path.extension().and_then(|e| e.to_str()) == Some("json")
}

/// The configurations in one file.
pub fn load_file(path: &Path, deployment: Option<Deployment>, in_directory: bool) -> Vec<Found> {
    let file = shown(path);
    let bytes = match std::fs::read(path) {
        Ok(bytes) => bytes,
        Err(e) => {
            return vec![Found::Error {
                file,
                error: format!("cannot read the file: {e}"),
            }]
        }
    };
    // A Kubernetes object written as JSON is a manifest, not plugin JSON.
    let manifest_in_json = is_json(path)
        && serde_json::from_slice::<Value>(&bytes)
            .is_ok_and(|v| v.get("apiVersion").is_some() && v.get("kind").is_some());
    if is_json(path) && !manifest_in_json {
        return vec![Found::Plugin(Box::new(Plugin {
            file,
            manifest: None,
            root: Root::Http,
            deployment,
            deployment_reason: deployment.map(|_| "--deployment".to_owned()),
            json: bytes,
            attachment: None,
        }))];
    }
    let text = match String::from_utf8(bytes) {
        Ok(text) => text,
        Err(_) => {
            return vec![Found::Error {
                file,
                error: "not UTF-8 text, so not YAML".to_owned(),
            }]
        }
    };
    match manifests(&file, &text, deployment) {
        Ok(found) if in_directory || found.iter().any(|f| matches!(f, Found::Plugin(_))) => found,
        Ok(found) => {
            let kinds: Vec<String> = found
                .iter()
                .filter_map(|f| match f {
                    Found::Skipped { why, .. } => Some(why.clone()),
                    _ => None,
                })
                .collect();
            let detail = match kinds.is_empty() {
                true => "the file is empty".to_owned(),
                false => kinds.join("; "),
            };
            vec![Found::Error {
                file,
                error: format!("no client-ip WasmPlugin in it ({detail})"),
            }]
        }
        Err(error) => vec![Found::Error { file, error }],
    }
}

/// The documents of a YAML stream, each a Kubernetes object.
fn manifests(file: &str, text: &str, deployment: Option<Deployment>) -> Result<Vec<Found>, String> {
    let mut found = Vec::new();
    for (index, document) in serde_norway::Deserializer::from_str(text).enumerate() {
        let number = index + 1;
        let value = Value::deserialize(document)
            .map_err(|e| format!("document {number}: not YAML this command can read: {e}"))?;
        if value.is_null() {
            continue;
        }
        let kind = value.get("kind").and_then(Value::as_str).ok_or_else(|| {
            format!(
                "document {number} is not a Kubernetes object (it has no `kind`); plugin JSON goes in a file named *.json"
            )
        })?;
        let name = object_name(&value);
        let api_version = value
            .get("apiVersion")
            .and_then(Value::as_str)
            .unwrap_or("");
        if kind != "WasmPlugin" || !api_version.starts_with("extensions.istio.io/") {
            found.push(Found::Skipped {
                file: file.to_owned(),
                why: format!("{kind} {name} is not a WasmPlugin"),
            });
            continue;
        }
        found.push(wasm_plugin(file, &value, &name, deployment)?);
    }
    Ok(found)
}

fn object_name(value: &Value) -> String {
    let meta = value.get("metadata");
    let get = |key| meta.and_then(|m| m.get(key)).and_then(Value::as_str);
    match (get("namespace"), get("name")) {
        (Some(ns), Some(name)) => format!("{ns}/{name}"),
        (None, Some(name)) => name.to_owned(),
        _ => "(unnamed)".to_owned(),
    }
}

fn wasm_plugin(
    file: &str,
    value: &Value,
    name: &str,
    deployment: Option<Deployment>,
) -> Result<Found, String> {
    let manifest = format!("WasmPlugin {name}");
    let spec = value
        .get("spec")
        .ok_or_else(|| format!("{manifest} has no spec"))?;
    let plugin_name = spec.get("pluginName").and_then(Value::as_str).unwrap_or("");
    let root = match plugin_name {
        HTTP_ROOT => Root::Http,
        PEER_ROOT => Root::Peer,
        other => {
            // Istio's pluginName is the module's root_id. One that looks
            // like ours is a typo the module would refuse; another is
            // someone else's module.
            let squashed: String = other
                .chars()
                .filter(char::is_ascii_alphanumeric)
                .collect::<String>()
                .to_ascii_lowercase();
            if squashed.starts_with("clientip") || other.is_empty() {
                return Err(format!(
                    "{manifest}: field `root_id`: {other:?} is not a root of this module; use \"client_ip\" for the HTTP filter or \"client_ip_peer\" for the peer filter (spec.pluginName)"
                ));
            }
            return Ok(Found::Skipped {
                file: file.to_owned(),
                why: format!("{manifest} has pluginName {other:?}, another module's"),
            });
        }
    };
    let json = match spec.get("pluginConfig") {
        None | Some(Value::Null) => Vec::new(),
        Some(config) => serde_json::to_vec(config)
            .map_err(|e| format!("{manifest}: pluginConfig cannot be written as JSON: {e}"))?,
    };
    let (deployment, deployment_reason) = match deployment {
        Some(given) => (Some(given), Some("--deployment".to_owned())),
        None => {
            let (told, reason) = deployment_of(spec);
            (Some(told), Some(reason))
        }
    };
    let namespace = value
        .get("metadata")
        .and_then(|m| m.get("namespace"))
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_owned();
    let attached_to = serde_json::json!([
        spec.get("selector"),
        spec.get("targetRefs"),
        spec.get("targetRef")
    ])
    .to_string();
    Ok(Found::Plugin(Box::new(Plugin {
        file: file.to_owned(),
        manifest: Some(manifest),
        root,
        deployment,
        deployment_reason,
        json,
        attachment: Some((namespace, attached_to)),
    })))
}

/// Where a WasmPlugin applies, from its targetRefs or selector. Istio does
/// not say in the WasmPlugin itself, so these are heuristics, each named in
/// the reason:
/// - a targetRef of kind `Service` or `ServiceEntry`: a waypoint (Istio
///   applies such WasmPlugins at the waypoint of the service, in ambient);
/// - a targetRef of kind `GatewayClass`: a waypoint for `istio-waypoint`,
///   else a gateway;
/// - a targetRef of kind `Gateway`: a waypoint when its name contains
///   `waypoint` (`istioctl waypoint apply` names it `waypoint`; its
///   gatewayClassName `istio-waypoint` is not in the file), else a gateway;
/// - a selector with `istio: ingressgateway` or `istio: egressgateway`, or
///   with `gateway.networking.k8s.io/gateway-name` or
///   `istio.io/gateway-name` (the labels Istio puts on the pods of a Gateway
///   API gateway): a gateway, or a waypoint when that name contains
///   `waypoint` or `gateway.istio.io/managed` is `istio.io-mesh-controller`;
/// - anything else, a selector or none: sidecars (with no selector, every
///   workload of the namespace, the strictest reading).
pub fn deployment_of(spec: &Value) -> (Deployment, String) {
    let refs: Vec<&Value> = match (spec.get("targetRefs"), spec.get("targetRef")) {
        (Some(Value::Array(refs)), _) => refs.iter().collect(),
        (_, Some(one)) => vec![one],
        _ => Vec::new(),
    };
    for target in refs {
        let kind = target.get("kind").and_then(Value::as_str).unwrap_or("");
        let name = target.get("name").and_then(Value::as_str).unwrap_or("");
        match kind {
            "Service" | "ServiceEntry" => {
                return (
                    Deployment::Waypoint,
                    format!("targetRef {kind} {name}: applied at its waypoint"),
                )
            }
            "GatewayClass" if name == "istio-waypoint" => {
                return (
                    Deployment::Waypoint,
                    "targetRef GatewayClass istio-waypoint".to_owned(),
                )
            }
            "GatewayClass" => {
                return (
                    Deployment::Gateway,
                    format!("targetRef GatewayClass {name}"),
                )
            }
            "Gateway" if name.contains("waypoint") => {
                return (
                    Deployment::Waypoint,
                    format!("targetRef Gateway {name}: named as a waypoint"),
                )
            }
            "Gateway" => return (Deployment::Gateway, format!("targetRef Gateway {name}")),
            _ => {}
        }
    }
    let labels = spec
        .get("selector")
        .and_then(|s| s.get("matchLabels"))
        .and_then(Value::as_object);
    if let Some(labels) = labels {
        let label = |key: &str| labels.get(key).and_then(Value::as_str);
        if label("gateway.istio.io/managed") == Some("istio.io-mesh-controller") {
            return (
                Deployment::Waypoint,
                "selector gateway.istio.io/managed: istio.io-mesh-controller".to_owned(),
            );
        }
        for key in [
            "gateway.networking.k8s.io/gateway-name",
            "istio.io/gateway-name",
        ] {
            if let Some(name) = label(key) {
                return match name.contains("waypoint") {
                    true => (
                        Deployment::Waypoint,
                        format!("selector {key}: {name}, named as a waypoint"),
                    ),
                    false => (Deployment::Gateway, format!("selector {key}: {name}")),
                };
            }
        }
        if let Some(istio @ ("ingressgateway" | "egressgateway")) = label("istio") {
            return (Deployment::Gateway, format!("selector istio: {istio}"));
        }
        return (
            Deployment::Sidecar,
            "selector of workloads, not of a gateway".to_owned(),
        );
    }
    (
        Deployment::Sidecar,
        "no selector nor targetRefs: every workload of the namespace".to_owned(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn deployments_from_selectors_and_target_refs() {
        for (spec, expected) in [
            (json!({}), Deployment::Sidecar),
            (
                json!({"selector": {"matchLabels": {"app": "httpbin"}}}),
                Deployment::Sidecar,
            ),
            (
                json!({"selector": {"matchLabels": {"istio": "ingressgateway"}}}),
                Deployment::Gateway,
            ),
            (
                json!({"selector": {"matchLabels": {"gateway.networking.k8s.io/gateway-name": "waypoint"}}}),
                Deployment::Waypoint,
            ),
            (
                json!({"targetRefs": [{"kind": "Gateway", "group": "gateway.networking.k8s.io", "name": "httpbin-gateway"}]}),
                Deployment::Gateway,
            ),
            (
                json!({"targetRefs": [{"kind": "Gateway", "name": "waypoint"}]}),
                Deployment::Waypoint,
            ),
            (
                json!({"targetRefs": [{"kind": "Service", "name": "httpbin"}]}),
                Deployment::Waypoint,
            ),
            (
                json!({"targetRef": {"kind": "GatewayClass", "name": "istio-waypoint"}}),
                Deployment::Waypoint,
            ),
        ] {
            assert_eq!(deployment_of(&spec).0, expected, "{spec}");
        }
    }
}
