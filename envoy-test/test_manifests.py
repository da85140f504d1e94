"""Every manifest in wasmplugin/ is one Istio accepts, every WasmPlugin one
the filter accepts, and every EnvoyFilter does in real Envoy what it says.

- Istio: each document validates against Istio's schema for its kind
  (WasmPlugin, the DestinationRule of session affinity, the
  AuthorizationPolicy beside the waypoint's plugin, and the EnvoyFilters
  that hand the client to Envoy's RBAC and rate limit filters), and the
  CRD's CEL rules, which OpenAPI validators do not evaluate, are checked here
  by hand, as are the rules istiod's validation applies to an EnvoyFilter's
  applyTo, match and patch. The schemas are npm's
  @kubernetes-models/istio 3.0.1, pinned in
  envoy-test/istio-schema/package-lock.json and installed there by
  `make test-manifests`. The package generates them from Istio 1.29.2's
  CRDs; istio/api's WasmPlugin CRD (kubernetes/customresourcedefinitions.gen.yaml)
  is the same from Istio 1.27 to 1.30, and checked field by field against
  it, the package's validator differs only in taking null for an optional
  field and in checking formats (int32, date-time). ISTIO_CRD=<path>
  validates against the openAPIV3Schema of another WasmPlugin CRD instead,
  e.g. a newer Istio's (its customresourcedefinitions.gen.yaml, or the
  WasmPlugin CRD alone); a DestinationRule, AuthorizationPolicy or
  EnvoyFilter is validated against that file's CRD of its kind when it holds
  one, else against the package's.
- The filter: each WasmPlugin's pluginConfig is loaded into real Envoy with
  build/plugin.wasm (`envoy --mode validate` runs the plugin's on_configure),
  so no example can drift from the configuration the filter really takes.
- Envoy's own filters: each EnvoyFilter's patch is put where Istio puts it,
  after client-ip on a sidecar's inbound HTTP connection manager, and run in
  real Envoy with the module: the RBAC sample denies a listed client behind
  a trusted proxy and the rate limit sample limits one client while another
  is served, forged X-Forwarded-For and X-Real-IP getting nowhere.
"""

import copy
import functools
import http.client
import ipaddress
import json
import os
import pathlib
import re
import subprocess
import tempfile
import time
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
MANIFEST_FILES = {"sidecar.yaml", "ingress-gateway.yaml", "gateway-api.yaml", "destinationrule-affinity.yaml",
                  "waypoint.yaml", "waypoint-service.yaml", "waypoint-authorizationpolicy.yaml",
                  "envoyfilter-rbac.yaml", "envoyfilter-local-ratelimit.yaml"}
# The kinds wasmplugin/ holds, with the API version each is written in.
API_VERSIONS = {"WasmPlugin": "extensions.istio.io/v1alpha1", "DestinationRule": "networking.istio.io/v1",
                "AuthorizationPolicy": "security.istio.io/v1", "EnvoyFilter": "networking.istio.io/v1alpha3"}
GATEWAY_PRINCIPAL = "cluster.local/ns/istio-system/sa/istio-ingressgateway-service-account"


def manifests():
    for path in sorted((REPO / "wasmplugin").glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if doc:
                yield pytest.param(doc, id=f"{path.name}:{doc['metadata']['namespace']}/{doc['metadata']['name']}")


MANIFESTS = list(manifests())
WASM_PLUGINS = [param for param in MANIFESTS if param.values[0].get("kind") == "WasmPlugin"]
DESTINATION_RULES = [param for param in MANIFESTS if param.values[0].get("kind") == "DestinationRule"]
AUTHORIZATION_POLICIES = [param for param in MANIFESTS if param.values[0].get("kind") == "AuthorizationPolicy"]
ENVOY_FILTERS = [param for param in MANIFESTS if param.values[0].get("kind") == "EnvoyFilter"]


def schema_not_loaded(reason):
    pytest.fail(f"Istio's schema could not be loaded: {reason}", pytrace=False)


@functools.cache
def crd_validator(kind):
    """The openAPIV3Schema of the CRD of `kind` (in the version API_VERSIONS
    names) in the file ISTIO_CRD names (the CRD alone, or with others as in
    customresourcedefinitions.gen.yaml): (validator, None), or (None, why not)."""
    try:
        docs = [doc for doc in yaml.safe_load_all(pathlib.Path(ISTIO_CRD).read_text()) if doc]
        crd = next((doc for doc in docs if doc.get("kind") == "CustomResourceDefinition"
                    and doc["spec"]["names"]["kind"] == kind), None)
        if crd is None:
            raise ValueError(f"no CustomResourceDefinition for {kind} in it")
        wanted = API_VERSIONS[kind].split("/")[1]
        version = next(v for v in crd["spec"]["versions"] if v["name"] == wanted)
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
    """For each document, its violations of Istio's schema for its kind ([] if none)."""
    results = [None] * len(docs)
    if ISTIO_CRD:
        for i, doc in enumerate(docs):
            validator, reason = crd_validator(doc.get("kind"))
            if validator is None and doc.get("kind") == "WasmPlugin":
                schema_not_loaded(reason)
            if validator is not None:
                results[i] = [f"/{'/'.join(map(str, error.absolute_path))} {error.message}"
                              for error in validator.iter_errors(doc)]
    rest = [i for i, result in enumerate(results) if result is None]
    if rest:
        for i, violations in zip(rest, npm_schema_violations([docs[i] for i in rest])):
            results[i] = violations
    return results


def test_there_are_sidecar_and_gateway_manifests():
    files = {param.id.split(":")[0] for param in MANIFESTS}
    assert MANIFEST_FILES <= files
    # Every document is of a kind checked here; none is passed over.
    assert {param.values[0].get("kind") for param in MANIFESTS} <= set(API_VERSIONS)
    types = [param.values[0]["spec"].get("type") for param in WASM_PLUGINS]
    assert types.count("HTTP") >= 3 and types.count("NETWORK") >= 3
    assert DESTINATION_RULES
    assert AUTHORIZATION_POLICIES
    assert len(ENVOY_FILTERS) >= 2


@pytest.mark.parametrize("doc", MANIFESTS)
def test_manifest_validates_against_the_istio_schema(doc):
    assert doc["kind"] in API_VERSIONS
    assert doc["apiVersion"] == API_VERSIONS[doc["kind"]]
    assert doc["metadata"]["name"] and doc["metadata"]["namespace"]
    [violations] = schema_violations(doc)
    assert not violations, "\n".join(violations)
    if doc["kind"] == "WasmPlugin":
        check_cel_rules(doc["spec"])
    elif doc["kind"] == "AuthorizationPolicy":
        check_authorization_policy_cel_rules(doc["spec"])
    elif doc["kind"] == "EnvoyFilter":
        check_envoy_filter_rules(doc["spec"])
    else:
        check_destination_rule_cel_rules(doc["spec"])


def test_the_schema_check_catches_a_bad_manifest():
    """The schema is really applied: each of these breaks it in one place."""
    good = WASM_PLUGINS[0].values[0]
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


def assert_schema_catches(good, breakages):
    """`good` passes the schema, and each breakage (a path, and a change to a
    copy of `good`'s spec) fails it at that path."""
    docs = []
    for breakage in breakages.values():
        doc = copy.deepcopy(good)
        breakage(doc["spec"])
        docs.append(doc)
    assert schema_violations(good) == [[]]
    for path, violations in zip(breakages, schema_violations(*docs)):
        assert any(v.startswith(path + " ") for v in violations), (path, violations)


def test_the_schema_check_catches_a_bad_destination_rule():
    """The DestinationRule schema is really applied: each of these breaks it
    in one place."""
    good = DESTINATION_RULES[0].values[0]
    lb = "/spec/trafficPolicy/loadBalancer"
    breakages = {
        "/spec": lambda spec: spec.pop("host"),
        lb: lambda spec: spec["trafficPolicy"]["loadBalancer"].update(simple="ROUND_ROBIN"),
        lb + "/simple": lambda spec: spec["trafficPolicy"].update(loadBalancer={"simple": "ROUND_ROBINISH"}),
        lb + "/consistentHash": lambda spec: spec["trafficPolicy"]["loadBalancer"]["consistentHash"].update(useSourceIp=True),
        lb + "/consistentHash/httpHeaderName": lambda spec: spec["trafficPolicy"]["loadBalancer"]["consistentHash"].update(httpHeaderName=7),
    }
    assert_schema_catches(good, breakages)
    # A duration is one of the CRD's CEL rules, checked by hand.
    with pytest.raises(AssertionError, match="1ms"):
        check_destination_rule_cel_rules({"host": "h", "trafficPolicy": {"connectionPool": {"tcp": {"connectTimeout": "0.5ms"}}}})


@pytest.mark.parametrize("doc", DESTINATION_RULES)
def test_affinity_hashes_the_header_client_ip_writes_at_the_gateways(doc):
    """The DestinationRule hashes the client header the gateways' client-ip
    writes, for httpbin, the service the sidecar manifest serves."""
    header = doc["spec"]["trafficPolicy"]["loadBalancer"]["consistentHash"]["httpHeaderName"]
    gateways = [param.values[0] for param in WASM_PLUGINS
                if param.id.split(":")[0] in {"ingress-gateway.yaml", "gateway-api.yaml"}
                and param.values[0]["spec"].get("type", "HTTP") == "HTTP"]
    assert len(gateways) >= 2
    for plugin in gateways:
        written = plugin["spec"].get("pluginConfig", {}).get("client_ip_header", "x-real-ip")
        assert written == header.lower(), plugin["metadata"]
    assert doc["spec"]["host"] == f"httpbin.{doc['metadata']['namespace']}.svc.cluster.local"


def go_duration_seconds(text):
    """A Go duration string (what the CRD's CEL duration() takes), in seconds."""
    units = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1, "m": 60, "h": 3600}
    parts = re.findall(r"([0-9]*\.?[0-9]+)(ns|us|µs|ms|s|m|h)", text)
    assert parts and "".join(n + u for n, u in parts) == text, f"{text!r} is not a duration"
    return sum(float(n) * units[u] for n, u in parts)


# The DestinationRule fields whose CEL rule is `duration(self) >= duration('1ms')`.
DURATION_FIELDS = {"idleTimeout", "connectTimeout", "maxConnectionDuration", "interval", "time",
                   "duration", "warmupDurationSecs", "baseEjectionTime"}


def check_destination_rule_cel_rules(spec):
    """The DestinationRule CRD's x-kubernetes-validations, by hand: label
    selectors without wildcards or empty keys, durations of at least 1ms."""
    for key, value in spec.get("workloadSelector", {}).get("matchLabels", {}).items():
        assert key and "*" not in key and "*" not in value, "no wildcards or empty keys in labels"

    def walk(node):
        if isinstance(node, dict):
            for key, value in node.items():
                if key == "labels":
                    continue
                if key in DURATION_FIELDS and isinstance(value, str):
                    assert go_duration_seconds(value) >= 1e-3, f"{key}: must be a valid duration greater than 1ms"
                walk(value)
        elif isinstance(node, list):
            for item in node:
                walk(item)
    walk(spec.get("trafficPolicy", {}))
    walk(spec.get("subsets", []))


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


@pytest.mark.parametrize("doc", WASM_PLUGINS)
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


@pytest.mark.parametrize("doc", WASM_PLUGINS)
def test_plugin_config_is_accepted_by_the_filter(doc):
    ok, output = envoy_accepts(doc["spec"])
    assert ok, output


def test_the_filter_check_catches_a_bad_plugin_config():
    spec = next(p.values[0]["spec"] for p in WASM_PLUGINS if p.values[0]["spec"].get("type") == "HTTP")
    bad = dict(spec, pluginConfig=dict(spec["pluginConfig"], xff_mode="bogus"))
    ok, output = envoy_accepts(bad)
    assert not ok
    assert "field `xff_mode`" in output


def test_the_schema_check_catches_a_bad_authorization_policy():
    """The AuthorizationPolicy schema is really applied: each of these breaks
    it in one place."""
    good = AUTHORIZATION_POLICIES[0].values[0]
    breakages = {
        "/spec/action": lambda spec: spec.update(action="PERMIT"),
        "/spec/rules/0/from/0/source/principals": lambda spec: spec["rules"][0]["from"][0]["source"].update(principals="x"),
        "/spec/selector/matchLabels/app": lambda spec: spec["selector"]["matchLabels"].update(app=7),
    }
    assert_schema_catches(good, breakages)
    with pytest.raises(AssertionError, match="only one of targetRefs or selector"):
        check_authorization_policy_cel_rules(dict(good["spec"], targetRefs=[{"kind": "Service", "group": "", "name": "h"}]))


def check_authorization_policy_cel_rules(spec):
    """The AuthorizationPolicy CRD's x-kubernetes-validations, by hand."""
    chosen = sum(key in spec for key in ("selector", "targetRef", "targetRefs"))
    assert chosen <= 1, "only one of targetRefs or selector can be set"
    for key, value in spec.get("selector", {}).get("matchLabels", {}).items():
        assert key and "*" not in key and "*" not in value, "no wildcards or empty keys in labels"
    for rule in spec.get("rules", []):
        for source in rule.get("from", []):
            for side in ("source", "notSource"):
                fields = source.get(side, {})
                assert not (fields.get("serviceAccounts") or fields.get("notServiceAccounts")) or not (
                    fields.get("namespaces") or fields.get("notNamespaces")), "Cannot set serviceAccounts with namespaces"
    for ref in [spec.get("targetRef")] + spec.get("targetRefs", []):
        assert ref is None or not ref.get("namespace"), "cross namespace referencing is not supported"


def waypoint_plugins():
    return [param.values[0] for param in WASM_PLUGINS
            if param.id.split(":")[0] in {"waypoint.yaml", "waypoint-service.yaml"}]


def test_the_waypoint_plugins_run_alone_on_the_waypoint_and_trust_the_ingress_gateway():
    """One HTTP plugin per attachment, no NETWORK peer filter (Istio runs none
    on a waypoint's HTTP chains), attached to the waypoint's Gateway or to a
    Service, trusting the ingress gateway's principal, at the first phase."""
    plugins = waypoint_plugins()
    assert len(plugins) == 2
    targets = set()
    for plugin in plugins:
        spec = plugin["spec"]
        assert spec["type"] == "HTTP" and spec["pluginName"] == "client_ip"
        assert spec["phase"] == "AUTHN" and spec["failStrategy"] == "FAIL_CLOSE"
        assert "selector" not in spec and "match" not in spec
        [ref] = spec["targetRefs"]
        targets.add((ref["group"], ref["kind"]))
        assert spec["pluginConfig"]["trusted_identities"] == [GATEWAY_PRINCIPAL]
        assert "trusted_proxies" not in spec["pluginConfig"] and "trusted_hops" not in spec["pluginConfig"]
    assert targets == {("gateway.networking.k8s.io", "Gateway"), ("", "Service")}


def test_the_waypoint_authorization_policy_admits_the_waypoint_alone():
    """httpbin's pods take traffic from the waypoint's identity and nothing
    else (an L4 rule ztunnel enforces), the identity the local mesh's
    httpbin-ambient ztunnel admits too."""
    [policy] = [param.values[0] for param in AUTHORIZATION_POLICIES
                if param.id.split(":")[0] == "waypoint-authorizationpolicy.yaml"]
    spec = policy["spec"]
    assert spec["action"] == "ALLOW"
    assert spec["selector"]["matchLabels"] == {"app": "httpbin"}
    [rule] = spec["rules"]
    assert set(rule) == {"from"}, "an L4 rule: no `to` or `when`, which ztunnel could not enforce"
    [source] = rule["from"]
    waypoint = [ref["name"] for plugin in waypoint_plugins() for ref in plugin["spec"]["targetRefs"]
                if ref["kind"] == "Gateway"]
    assert source == {"source": {"principals": [f"cluster.local/ns/{policy['metadata']['namespace']}/sa/{waypoint[0]}"]}}
    ztunnel = yaml.safe_load((REPO / "envoy-test/configs/ztunnel.yaml").read_text())
    [inbound] = [listener for listener in ztunnel["static_resources"]["listeners"] if listener["name"] == "ztunnel_inbound"]
    rbac = next(f for f in inbound["filter_chains"][0]["filters"][0]["typed_config"]["http_filters"]
                if f["name"] == "envoy.filters.http.rbac")
    [admitted] = [p["authenticated"]["principal_name"]["exact"]
                  for policy in rbac["typed_config"]["rules"]["policies"].values() for p in policy["principals"]]
    assert admitted == "spiffe://" + source["source"]["principals"][0]


# ---------------------------------------------------------------- EnvoyFilters

# The listener-class targets of applyTo, whose match must be a listener match.
LISTENER_CLASS = {"LISTENER", "FILTER_CHAIN", "NETWORK_FILTER", "HTTP_FILTER"}
ROUTE_CLASS = {"ROUTE_CONFIGURATION", "VIRTUAL_HOST", "HTTP_ROUTE"}
HCM = "envoy.filters.network.http_connection_manager"


def check_envoy_filter_rules(spec):
    """The EnvoyFilter CRD's x-kubernetes-validations (Istio 1.31's
    crd-all.gen.yaml), and istiod's validation of each patch
    (ValidateEnvoyFilter in pkg/config/validation), by hand."""
    assert "workloadSelector" not in spec or "targetRefs" not in spec, \
        "only one of targetRefs or workloadSelector can be set"
    for key, value in spec.get("workloadSelector", {}).get("labels", {}).items():
        assert "*" not in value, "wildcard is not supported in selector"
    for ref in spec.get("targetRefs", []):
        assert not ref.get("namespace"), "cross namespace referencing is not currently supported"
    for patch in spec["configPatches"]:
        apply_to = patch.get("applyTo")
        assert apply_to and apply_to != "INVALID", "Envoy filter: missing applyTo"
        operation = patch.get("patch", {}).get("operation")
        assert operation and operation != "INVALID", "Envoy filter: missing patch operation"
        assert operation == "REMOVE" or patch["patch"].get("value"), \
            "Envoy filter: missing patch value for non-remove operation"
        match = patch.get("match", {})
        assert (match.get("context") == "WAYPOINT") == ("waypoint" in match), \
            "only support waypointMatch when context is WAYPOINT"
        if apply_to in LISTENER_CLASS and any(k in match for k in ("routeConfiguration", "cluster")):
            raise AssertionError("Envoy filter: applyTo for listener class objects cannot have non listener match")
        if apply_to in ROUTE_CLASS and any(k in match for k in ("listener", "cluster")):
            raise AssertionError("Envoy filter: applyTo for http route class objects cannot have non route configuration match")
        network_filter = match.get("listener", {}).get("filterChain", {}).get("filter")
        if network_filter is not None:
            assert network_filter.get("name"), "Envoy filter: filter match has no name to match on"
            if "subFilter" in network_filter:
                assert apply_to == "HTTP_FILTER", "Envoy filter: subfilter match can be used with applyTo HTTP_FILTER only"
                assert network_filter["name"] == HCM, f"Envoy filter: subfilter match requires filter match with {HCM}"
                assert network_filter["subFilter"].get("name"), "Envoy filter: subfilter match has no name to match on"


def test_the_schema_check_catches_a_bad_envoy_filter():
    """The EnvoyFilter schema is really applied: each of these breaks it in
    one place."""
    good = ENVOY_FILTERS[0].values[0]
    patch = "/spec/configPatches/0"
    breakages = {
        patch + "/applyTo": lambda spec: spec["configPatches"][0].update(applyTo="HTTP_FILTERS"),
        patch + "/match/context": lambda spec: spec["configPatches"][0]["match"].update(context="INBOUND"),
        patch + "/patch/operation": lambda spec: spec["configPatches"][0]["patch"].update(operation="INSERT_SOMEWHERE"),
        "/spec/workloadSelector/labels/app": lambda spec: spec["workloadSelector"]["labels"].update(app=7),
    }
    assert_schema_catches(good, breakages)
    # istiod's own rules, checked by hand.
    bad = copy.deepcopy(good["spec"])
    bad["configPatches"][0]["applyTo"] = "NETWORK_FILTER"
    with pytest.raises(AssertionError, match="subfilter match can be used with applyTo HTTP_FILTER only"):
        check_envoy_filter_rules(bad)


def manifest(file_name, kind, pick=lambda doc: True):
    """The one document of `kind` in wasmplugin/<file_name> that `pick` takes."""
    [doc] = [param.values[0] for param in MANIFESTS
             if param.id.split(":")[0] == file_name and param.values[0]["kind"] == kind and pick(param.values[0])]
    return doc


def sidecar_http_plugin():
    return manifest("sidecar.yaml", "WasmPlugin", lambda doc: doc["spec"].get("type") == "HTTP")


@pytest.mark.parametrize("doc", ENVOY_FILTERS)
def test_envoy_filter_runs_after_client_ip_on_the_sidecar_it_serves(doc):
    """Each EnvoyFilter selects the workload sidecar.yaml's client-ip serves
    and inserts one HTTP filter before the router of its inbound HTTP
    connection managers: after client-ip, whose phase is AUTHN."""
    plugin = sidecar_http_plugin()
    assert plugin["spec"]["phase"] == "AUTHN"
    assert doc["metadata"]["namespace"] == plugin["metadata"]["namespace"]
    assert doc["spec"]["workloadSelector"]["labels"] == plugin["spec"]["selector"]["matchLabels"]
    [patch] = doc["spec"]["configPatches"]
    assert patch["applyTo"] == "HTTP_FILTER"
    assert patch["match"]["context"] == "SIDECAR_INBOUND"
    assert patch["match"]["listener"]["filterChain"]["filter"] == {
        "name": HCM, "subFilter": {"name": "envoy.filters.http.router"}}
    assert patch["patch"]["operation"] == "INSERT_BEFORE"


def test_the_rbac_sample_is_the_sidecar_plugin_publishing_the_client():
    """envoyfilter-rbac.yaml's WasmPlugin replaces sidecar.yaml's HTTP plugin
    (same name), changed only by publish_ip_filter_state."""
    plugin = sidecar_http_plugin()
    publishing = manifest("envoyfilter-rbac.yaml", "WasmPlugin")
    assert publishing["metadata"] == plugin["metadata"]
    expected = copy.deepcopy(plugin["spec"])
    expected["pluginConfig"]["publish_ip_filter_state"] = True
    assert publishing["spec"] == expected


# The trusted proxy of the loopback runs below, standing in for the ingress
# gateway that the samples trust by its mTLS identity.
GATEWAY = "127.0.0.100"


class RunningEnvoy:
    """Envoy on a bootstrap, on free ports, stopped on every path out."""

    def __init__(self, bootstrap):
        self.dir = tempfile.TemporaryDirectory(prefix="client-ip-envoyfilter-")
        config = pathlib.Path(self.dir.name, "envoy.json")
        config.write_text(json.dumps(bootstrap))
        self.admin_path = pathlib.Path(self.dir.name, "admin.address")
        self.log_path = pathlib.Path(self.dir.name, "envoy.log")
        self.process = subprocess.Popen(
            [ENVOY, "-c", str(config), "--disable-hot-restart", "--concurrency", "2", "-l", "info",
             "--admin-address-path", str(self.admin_path), "--log-path", str(self.log_path)],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def __enter__(self):
        try:
            deadline = time.monotonic() + 60
            while True:
                assert self.process.poll() is None, f"Envoy exited {self.process.returncode}:\n{self.log()}"
                if self.admin_path.exists() and self.admin_path.read_text().strip():
                    host, port = self.admin_path.read_text().strip().rsplit(":", 1)
                    self.admin = (host, int(port))
                    try:
                        if self.get("/ready", to=self.admin)[0] == 200:
                            break
                    except OSError:
                        pass
                assert time.monotonic() < deadline, f"Envoy not ready after 60 s:\n{self.log()}"
                time.sleep(0.05)
            listeners = json.loads(self.get("/listeners?format=json", to=self.admin)[1])
            socket = listeners["listener_statuses"][0]["local_address"]["socket_address"]
            self.listener = (socket["address"], socket["port_value"])
            return self
        except BaseException:
            self.__exit__(None, None, None)
            raise

    def __exit__(self, *exc):
        self.process.kill()
        self.process.wait()
        self.dir.cleanup()

    def log(self):
        return self.log_path.read_text() if self.log_path.exists() else ""

    def get(self, path, to=None, source="127.0.0.1", headers=None):
        """One request on a fresh connection from `source`: (status, body)."""
        host, port = to or self.listener
        conn = http.client.HTTPConnection(host, port, timeout=10, source_address=(source, 0))
        try:
            conn.request("GET", path, headers=headers or {})
            response = conn.getresponse()
            return response.status, response.read().decode(errors="replace")
        finally:
            conn.close()

    def stat(self, name):
        body = self.get(f"/stats?filter=^{re.escape(name)}$", to=self.admin)[1]
        values = [line.split(": ", 1)[1] for line in body.splitlines() if line.split(": ", 1)[0] == name]
        return int(values[0]) if values else 0


def sidecar_bootstrap(plugin_config, inserted_filter):
    """A sidecar inbound listener as Istio builds it, on loopback: the
    network plugin, then the HTTP connection manager (use_remote_address
    false) with client-ip, the EnvoyFilter's filter and the router, which
    answers every request that reaches it with 200 `app`."""
    def wasm(root, config=None):
        plugin = {"name": root, "root_id": root, "failure_policy": "FAIL_CLOSED",
                  "vm_config": {"vm_id": "client_ip", "runtime": "envoy.wasm.runtime.v8",
                                "code": {"local": {"filename": MODULE}}}}
        if config is not None:
            plugin["configuration"] = {"@type": "type.googleapis.com/google.protobuf.StringValue",
                                       "value": json.dumps(config)}
        return plugin
    router = {"name": "envoy.filters.http.router",
              "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}}
    client_ip = {"name": "default.client-ip", "typed_config": {
        "@type": "type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm",
        "config": wasm("client_ip", plugin_config)}}
    return {
        "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": 0}}},
        "static_resources": {"listeners": [{
            "name": "virtualInbound",
            "address": {"socket_address": {"address": "127.0.0.1", "port_value": 0}},
            "filter_chains": [{"filters": [
                {"name": "default.client-ip-peer", "typed_config": {
                    "@type": "type.googleapis.com/envoy.extensions.filters.network.wasm.v3.Wasm",
                    "config": wasm("client_ip_peer")}},
                {"name": HCM, "typed_config": {
                    "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
                    "stat_prefix": "inbound_0.0.0.0_8080",
                    "use_remote_address": False,
                    "route_config": {"virtual_hosts": [{"name": "inbound|http|8000", "domains": ["*"], "routes": [
                        {"match": {"prefix": "/"},
                         "direct_response": {"status": 200, "body": {"inline_string": "app"}}}]}]},
                    "http_filters": [client_ip, inserted_filter, router],
                }},
            ]}],
        }]},
    }


def loopback_plugin_config(doc_file):
    """The pluginConfig the sample runs with, trusting the loopback gateway by
    address where the mesh trusts the ingress gateway by identity."""
    plugins = [param.values[0] for param in MANIFESTS
               if param.id.split(":")[0] == doc_file and param.values[0]["kind"] == "WasmPlugin"]
    config = copy.deepcopy((plugins[0] if plugins else sidecar_http_plugin())["spec"]["pluginConfig"])
    assert config.pop("trusted_identities")
    config["trusted_proxies"] = [GATEWAY]
    return config


def host_in(cidr, offset=7):
    return str(ipaddress.ip_network(f"{cidr['address_prefix']}/{cidr['prefix_len']}")[offset])


def test_the_rbac_sample_denies_a_listed_client_in_real_envoy():
    doc = manifest("envoyfilter-rbac.yaml", "EnvoyFilter")
    inserted = doc["spec"]["configPatches"][0]["patch"]["value"]
    rbac = inserted["typed_config"]
    with RunningEnvoy(sidecar_bootstrap(loopback_plugin_config("envoyfilter-rbac.yaml"), inserted)) as envoy:
        [policy] = rbac["rules"]["policies"].values()
        for cidr in policy["principals"][0]["filter_state"]["address_match"]["ranges"]:
            denied = host_in(cidr)
            for headers in [
                {"X-Forwarded-For": denied},
                # Entries and a client header of its choosing change nothing.
                {"X-Forwarded-For": f"192.0.2.1, {denied}", "X-Real-IP": "192.0.2.1"},
            ]:
                assert envoy.get("/", source=GATEWAY, headers=headers) == (403, "RBAC: access denied"), \
                    (headers, envoy.log())
        assert envoy.get("/", source=GATEWAY, headers={"X-Forwarded-For": "192.0.2.1"}) == (200, "app")
        # A direct client naming a listed address is its own client.
        named = host_in(policy["principals"][0]["filter_state"]["address_match"]["ranges"][0])
        assert envoy.get("/", source="127.0.0.7", headers={"X-Forwarded-For": named, "X-Real-IP": named}) == (200, "app")
        # The shadow list only counts.
        [shadow] = rbac["shadow_rules"]["policies"].values()
        would_deny = host_in(shadow["principals"][0]["filter_state"]["address_match"]["ranges"][0])
        assert envoy.get("/", source=GATEWAY, headers={"X-Forwarded-For": would_deny}) == (200, "app")
        prefix = "http.inbound_0.0.0.0_8080.rbac."
        assert envoy.stat(prefix + rbac["rules_stat_prefix"] + ".denied") == 4
        assert envoy.stat(prefix + rbac["shadow_rules_stat_prefix"] + ".shadow_denied") == 1


def test_the_local_rate_limit_sample_keeps_a_bucket_per_client_in_real_envoy():
    doc = manifest("envoyfilter-local-ratelimit.yaml", "EnvoyFilter")
    inserted = doc["spec"]["configPatches"][0]["patch"]["value"]
    limit = inserted["typed_config"]
    [descriptor] = limit["descriptors"]
    per_client = descriptor["token_bucket"]["max_tokens"]
    with RunningEnvoy(sidecar_bootstrap(loopback_plugin_config("envoyfilter-local-ratelimit.yaml"), inserted)) as envoy:
        def client(address, **headers):
            return envoy.get("/", source=GATEWAY, headers={"X-Forwarded-For": address, **headers})[0]
        a_statuses = [client("203.0.113.7") for _ in range(per_client)]
        assert a_statuses == [200] * per_client
        assert client("203.0.113.7") == 429
        # Another client, meanwhile, is served.
        assert client("192.0.2.1") == 200
        # The limited client cannot write its way into another bucket.
        assert client("192.0.2.99, 203.0.113.7", **{"X-Real-IP": "192.0.2.99"}) == 429
        assert envoy.stat(limit["stat_prefix"] + ".http_local_rate_limit.rate_limited") == 2
