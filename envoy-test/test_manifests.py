"""Every WasmPlugin manifest in wasmplugin/ is one Istio accepts and one the
filter accepts.

- Istio: each document validates against Istio's WasmPlugin schema, and the
  CRD's CEL rules, which OpenAPI validators do not evaluate, are checked here
  by hand. The schema is npm's @kubernetes-models/istio 3.0.1, pinned in
  envoy-test/istio-schema/package-lock.json and installed there by
  `make test-manifests`. The package generates it from Istio 1.29.2's CRDs;
  istio/api's WasmPlugin CRD (kubernetes/customresourcedefinitions.gen.yaml)
  is the same from Istio 1.27 to 1.30, and checked field by field against
  it, the package's validator differs only in taking null for an optional
  field and in checking formats (int32, date-time). ISTIO_CRD=<path>
  validates against the openAPIV3Schema of another WasmPlugin CRD instead,
  e.g. a newer Istio's (its customresourcedefinitions.gen.yaml, or the
  WasmPlugin CRD alone).
- The filter: each plugin's pluginConfig is loaded into real Envoy with
  build/plugin.wasm (`envoy --mode validate` runs the plugin's on_configure),
  so no example can drift from the configuration the filter really takes.
"""

import copy
import functools
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
ISTIO_CRD = os.environ.get("ISTIO_CRD", "")
SCHEMA_VALIDATOR = REPO / "envoy-test/istio-schema/validate-wasmplugin.mjs"
NODE = os.environ.get("NODE", "node")
ENVOY = os.environ.get("ENVOY_BIN", str(REPO / ".venv/bin/envoy"))
MODULE = os.environ.get("PLUGIN_WASM", str(REPO / "build/plugin.wasm"))
ROOT_FOR_TYPE = {"HTTP": "client_ip", "NETWORK": "client_ip_peer"}
MANIFEST_FILES = {"sidecar.yaml", "ingress-gateway.yaml", "gateway-api.yaml"}


def manifests():
    for path in sorted((REPO / "wasmplugin").glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if doc:
                yield pytest.param(doc, id=f"{path.name}:{doc['metadata']['namespace']}/{doc['metadata']['name']}")


MANIFESTS = list(manifests())


def schema_not_loaded(reason):
    pytest.fail(f"Istio's WasmPlugin schema could not be loaded: {reason}", pytrace=False)


@functools.cache
def crd_validator():
    """The openAPIV3Schema of the WasmPlugin CRD in the file ISTIO_CRD names (the
    CRD alone, or with others as in customresourcedefinitions.gen.yaml):
    (validator, None), or (None, why not)."""
    try:
        docs = [doc for doc in yaml.safe_load_all(pathlib.Path(ISTIO_CRD).read_text()) if doc]
        crd = next((doc for doc in docs if doc.get("kind") == "CustomResourceDefinition"
                    and doc["spec"]["names"]["kind"] == "WasmPlugin"), None)
        if crd is None:
            raise ValueError("no CustomResourceDefinition for WasmPlugin in it")
        version = next(v for v in crd["spec"]["versions"] if v["name"] == "v1alpha1")
        return jsonschema.Draft7Validator(version["schema"]["openAPIV3Schema"]), None
    except (OSError, yaml.YAMLError, AttributeError, KeyError, TypeError, ValueError, StopIteration) as err:
        return None, f"ISTIO_CRD={ISTIO_CRD}: {type(err).__name__}: {err}"


def npm_schema_violations(docs):
    """Runs the npm package's validator (validate-wasmplugin.mjs) on docs."""
    script = SCHEMA_VALIDATOR.relative_to(REPO)
    try:
        run = subprocess.run([NODE, str(SCHEMA_VALIDATOR)], input=json.dumps(docs),
                             capture_output=True, text=True, timeout=60)
    except OSError as err:
        run, reason = None, f"cannot run {NODE}: {err}"
    if run is not None and run.returncode != 0:
        lines = [line.strip() for line in run.stderr.splitlines() if line.strip()]
        error = next((line for line in lines if "Error" in line), lines[-1] if lines else f"exit status {run.returncode}")
        reason = f"{script}: {error} (`make test-manifests` installs @kubernetes-models/istio with npm ci)"
    elif run is not None:
        try:
            results = json.loads(run.stdout)
        except ValueError:
            results = None
        if isinstance(results, list) and len(results) == len(docs):
            return results
        reason = f"{script} printed {run.stdout[:200]!r}"
    schema_not_loaded(reason)


def schema_violations(*docs):
    """For each document, its violations of Istio's WasmPlugin schema ([] if none)."""
    if ISTIO_CRD:
        validator, reason = crd_validator()
        if validator is None:
            schema_not_loaded(reason)
        return [
            [f"/{'/'.join(map(str, error.absolute_path))} {error.message}" for error in validator.iter_errors(doc)]
            for doc in docs
        ]
    return npm_schema_violations(list(docs))


def test_there_are_sidecar_and_gateway_manifests():
    files = {param.id.split(":")[0] for param in MANIFESTS}
    assert MANIFEST_FILES <= files
    types = [param.values[0]["spec"].get("type") for param in MANIFESTS]
    assert types.count("HTTP") >= 3 and types.count("NETWORK") >= 3


@pytest.mark.parametrize("doc", MANIFESTS)
def test_manifest_validates_against_the_istio_schema(doc):
    assert doc["apiVersion"] == "extensions.istio.io/v1alpha1"
    assert doc["kind"] == "WasmPlugin"
    assert doc["metadata"]["name"] and doc["metadata"]["namespace"]
    [violations] = schema_violations(doc)
    assert not violations, "\n".join(violations)
    check_cel_rules(doc["spec"])


def test_the_schema_check_catches_a_bad_manifest():
    """The schema is really applied: each of these breaks it in one place."""
    good = MANIFESTS[0].values[0]
    breakages = {
        "/spec/type": {"type": "TCP"},
        "/spec/failStrategy": {"failStrategy": "FAIL_SOMETIMES"},
        "/spec/phase": {"phase": "ROUTER"},
        "/spec/match/0/mode": {"match": [{"mode": "INBOUND"}]},
        "/spec/targetRefs/0": {"targetRefs": [{"group": "gateway.networking.k8s.io", "kind": "Gateway"}]},
        "/spec/sha256": {"sha256": "sha256:" + "0" * 64},
        "/spec": {"url": None},
    }
    docs = []
    for change in breakages.values():
        doc = copy.deepcopy(good)
        doc["spec"].update(change)
        doc["spec"] = {key: value for key, value in doc["spec"].items() if value is not None}
        docs.append(doc)
    assert schema_violations(good) == [[]]
    for path, violations in zip(breakages, schema_violations(*docs)):
        assert any(v.startswith(path + " ") for v in violations), (path, violations)


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
