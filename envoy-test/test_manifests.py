"""Every WasmPlugin manifest in wasmplugin/ is one Istio accepts and one the
filter accepts.

- Istio: each document validates against the WasmPlugin CRD's
  openAPIV3Schema (../shared/istio/), and the CRD's CEL rules, which JSON
  Schema validators do not evaluate, are checked here by hand.
- The filter: each plugin's pluginConfig is loaded into real Envoy with
  build/plugin.wasm (`envoy --mode validate` runs the plugin's on_configure),
  so no example can drift from the configuration the filter really takes.
"""

import json
import os
import pathlib
import subprocess
import tempfile
from urllib.parse import urlparse

import jsonschema
import pytest
import yaml

REPO = pathlib.Path(__file__).resolve().parent.parent
CRD = pathlib.Path(os.environ.get("ISTIO_CRD", REPO.parent / "shared/istio/wasmplugins.extensions.istio.io.yaml"))
ENVOY = os.environ.get("ENVOY_BIN", str(REPO / ".venv/bin/envoy"))
MODULE = os.environ.get("PLUGIN_WASM", str(REPO / "build/plugin.wasm"))
ROOT_FOR_TYPE = {"HTTP": "client_ip", "NETWORK": "client_ip_peer"}


def manifests():
    for path in sorted((REPO / "wasmplugin").glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if doc:
                yield pytest.param(doc, id=f"{path.name}:{doc['metadata']['namespace']}/{doc['metadata']['name']}")


MANIFESTS = list(manifests())


def spec_schema():
    crd = yaml.safe_load(CRD.read_text())
    return crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]


def test_there_are_sidecar_and_gateway_manifests():
    files = {param.id.split(":")[0] for param in MANIFESTS}
    assert {"sidecar.yaml", "ingress-gateway.yaml"} <= files
    types = [param.values[0]["spec"].get("type") for param in MANIFESTS]
    assert types.count("HTTP") >= 2 and types.count("NETWORK") >= 2


@pytest.mark.parametrize("doc", MANIFESTS)
def test_manifest_validates_against_the_istio_crd(doc):
    assert doc["apiVersion"] == "extensions.istio.io/v1alpha1"
    assert doc["kind"] == "WasmPlugin"
    assert doc["metadata"]["name"] and doc["metadata"]["namespace"]
    jsonschema.Draft7Validator(spec_schema()).validate({"spec": doc["spec"]})
    check_cel_rules(doc["spec"])


def check_cel_rules(spec):
    """The CRD's x-kubernetes-validations, by hand."""
    scheme = urlparse(spec["url"] if "://" in spec["url"] else "http://" + spec["url"]).scheme
    assert scheme in {"", "http", "https", "oci", "file"}, "url must have schema one of [http, https, file, oci]"
    chosen = sum(key in spec for key in ("selector", "targetRef", "targetRefs"))
    assert chosen <= 1, "only one of targetRefs or selector can be set"
    for key, value in spec.get("selector", {}).get("matchLabels", {}).items():
        assert key and "*" not in key and "*" not in value, "no wildcards or empty keys in labels"
    for ref in [spec.get("targetRef")] + spec.get("targetRefs", []):
        assert ref is None or not ref.get("namespace"), "cross namespace referencing is not supported"


@pytest.mark.parametrize("doc", MANIFESTS)
def test_manifest_names_a_root_of_the_module(doc):
    spec = doc["spec"]
    assert spec["url"].startswith("oci://")
    assert spec["pluginName"] == ROOT_FOR_TYPE[spec.get("type", "HTTP")]
    assert spec.get("failStrategy") == "FAIL_CLOSE"


def envoy_accepts(spec):
    """Runs `envoy --mode validate` on a bootstrap with this plugin; returns (ok, output)."""
    plugin = {
        "name": spec["pluginName"],
        "root_id": spec["pluginName"],
        "vm_config": {"runtime": "envoy.wasm.runtime.v8", "code": {"local": {"filename": MODULE}}},
        "failure_policy": "FAIL_CLOSED",
    }
    if "pluginConfig" in spec:
        # Istio hands pluginConfig to the plugin as a JSON string.
        plugin["configuration"] = {
            "@type": "type.googleapis.com/google.protobuf.StringValue",
            "value": json.dumps(spec["pluginConfig"]),
        }
    router = {
        "name": "envoy.filters.http.router",
        "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"},
    }
    http_filters = [router]
    network_filters = []
    if spec.get("type", "HTTP") == "HTTP":
        http_filters.insert(0, {
            "name": "envoy.filters.http.wasm",
            "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm", "config": plugin},
        })
    else:
        network_filters.append({
            "name": "envoy.filters.network.wasm",
            "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.network.wasm.v3.Wasm", "config": plugin},
        })
    network_filters.append({
        "name": "envoy.filters.network.http_connection_manager",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
            "stat_prefix": "inbound",
            "route_config": {"virtual_hosts": [{"name": "app", "domains": ["*"], "routes": [
                {"match": {"prefix": "/"}, "direct_response": {"status": 200}}]}]},
            "http_filters": http_filters,
        },
    })
    bootstrap = {"static_resources": {"listeners": [{
        "name": "inbound",
        "address": {"socket_address": {"address": "127.0.0.1", "port_value": 0}},
        "filter_chains": [{"filters": network_filters}],
    }]}}
    with tempfile.NamedTemporaryFile("w", suffix=".json") as config:
        json.dump(bootstrap, config)
        config.flush()
        run = subprocess.run(
            [ENVOY, "--mode", "validate", "--disable-hot-restart", "-c", config.name],
            capture_output=True, text=True, timeout=120,
        )
    output = run.stdout + run.stderr
    return run.returncode == 0 and " OK" in output, output


@pytest.mark.parametrize("doc", MANIFESTS)
def test_plugin_config_is_accepted_by_the_filter(doc):
    ok, output = envoy_accepts(doc["spec"])
    assert ok, output


def test_the_filter_check_catches_a_bad_plugin_config():
    spec = next(p.values[0]["spec"] for p in MANIFESTS if p.values[0]["spec"].get("type") == "HTTP")
    bad = dict(spec, pluginConfig=dict(spec["pluginConfig"], xff_mode="bogus"))
    ok, output = envoy_accepts(bad)
    assert not ok
    assert "field `xff_mode`" in output
