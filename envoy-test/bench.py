#!/usr/bin/env python3
"""`make bench`: what the filter costs, side by side with the alternatives,
with the floor of its job, and with each host call it makes.

One Envoy under test (one worker) holds a listener per chain, all proxying to
a second Envoy that answers with `direct_response`. One chain at a time is
driven on loopback, the chains alternating round by round, under three
workloads: HTTP/1.1 keep-alive (wrk), a new HTTP/1.1 connection per request
(wrk, `Connection: close`) and HTTP/2 with many streams per connection
(h2load, cleartext with prior knowledge), which is what a sidecar's inbound
listener mostly sees. For each run it records the throughput and latency
percentiles, and the CPU time the Envoy under test spent (summed over its
threads from /proc/<pid>/task/*/schedstat), so the load generator's own work
never counts. Medians over the rounds go to BENCHMARKS.md, with an SVG chart
of the CPU cost per chain.

Besides client-ip and the alternatives (no filter, Envoy-native, Lua), and
the waypoint chains (the structure of an ambient waypoint, whose HTTP chains
run on the internal listener main_internal; see WAYPOINT_CHAINS), the chains
hold small hand-written Wasm modules:

- envoy-test/empty-filter.wat: the per-stream callbacks doing nothing, what
  Envoy charges for any proxy-wasm HTTP filter;
- envoy-test/job-floor.wat: the job (the peer into x-real-ip, appended to
  X-Forwarded-For) with only the host calls it cannot avoid, the yardstick
  client-ip's added cost is measured against;
- envoy-test/host-call-probe.wat and extra-entry-filter.wat: one host call
  (or one more VM entry) each, for a table of what each costs.

Environment (or the matching options): BENCH_ROUNDS, BENCH_SECONDS,
BENCH_CHAINS (comma-separated chain names or shell patterns; the no-filter
chain always runs), BENCH_WORKLOADS (keep-alive, new-connection, http2),
BENCH_OUT (the report's path; the chart goes beside it as benchmarks.svg).
"""

import argparse
import fnmatch
import json
import os
import pathlib
import platform
import re
import shlex
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request

REPO = pathlib.Path(__file__).resolve().parent.parent
ENVOY = os.environ.get("ENVOY_BIN", str(REPO / ".venv/bin/envoy"))
MODULE = pathlib.Path(os.environ.get("PLUGIN_WASM", REPO / "build/plugin.wasm"))
# Another build of the module to run beside this one (both roots, default
# configuration), for a before-and-after in the same run; BENCH_COMPARE_LABEL
# names it in the report.
COMPARE_MODULE = os.environ.get("BENCH_COMPARE_MODULE")
FINDINGS = REPO / "envoy-test/bench-findings.md"
RAW_MODULE = REPO / "target/wasm32-wasip1/release/client_ip.wasm"
SIZE_TARGET_KIB = 256
# The target for client-ip's added CPU per request, as a multiple of the job
# floor's.
FLOOR_TARGET = 1.25
XFF = "203.0.113.7"

# The same job in Lua: the socket's peer into X-Real-IP, appended to XFF.
LUA_SAME_JOB = """
function envoy_on_request(handle)
  local peer = handle:streamInfo():downstreamDirectRemoteAddress()
  local ip = string.match(peer, "^%[(.*)%]:%d+$") or string.match(peer, "^(.*):%d+$") or peer
  local headers = handle:headers()
  headers:replace("x-real-ip", ip)
  local xff = headers:get("x-forwarded-for")
  if xff then headers:replace("x-forwarded-for", xff .. "," .. ip) else headers:add("x-forwarded-for", ip) end
end
"""

# client-ip's plugin configurations. The default chains configure nothing, so
# they show what features cost when left unset; one chain configures the
# newer ones, with a peer that none of them trusts.
MODULE_DEFAULT_CONFIG = "{}"
MODULE_FEATURES_CONFIG = json.dumps({
    "trusted_identities": ["cluster.local/ns/istio-system/sa/istio-ingressgateway-service-account"],
    "trusted_proxies": ["10.0.0.0/8"],
    "allow_clients": ["0.0.0.0/0", "::/0"],
    "deny_clients": ["192.0.2.0/24"],
    "client_ip_source": "forwarded",
})
# The two per-request extras a user can opt into, each one host call.
MODULE_OPT_INS_CONFIG = json.dumps({"publish_filter_state": True, "count_forged_headers": True})
# The client as Envoy's typed filter state envoy.network.ip: one foreign
# function call per request.
MODULE_IP_FILTER_STATE_CONFIG = json.dumps({"publish_ip_filter_state": True})
FEATURE_FIELDS = ("trusted_identities", "trusted_proxies", "trusted_hops", "allow_clients", "deny_clients",
                  "client_ip_source", "access_dry_run", "publish_filter_state", "count_forged_headers",
                  "publish_ip_filter_state")

# The hand-written modules: chain -> (module, plugin configuration).
WAT = {
    "empty": REPO / "envoy-test/empty-filter.wat",
    "job_floor": REPO / "envoy-test/job-floor.wat",
    "probe": REPO / "envoy-test/host-call-probe.wat",
    "extra_entry": REPO / "envoy-test/extra-entry-filter.wat",
}
# The cost table: chain, the probe's operation, what it measures.
PROBES = [
    ("probe_header_read", "header-read", "header read (`proxy_get_header_map_value`, X-Forwarded-For)"),
    ("probe_header_replace", "header-replace", "header replace (`proxy_replace_header_map_value`, x-real-ip, absent)"),
    ("probe_header_remove", "header-remove", "header remove (`proxy_remove_header_map_value`, x-real-ip, absent)"),
    ("probe_property_read", "property-read", "property read (`proxy_get_property`, `source.address`)"),
    ("probe_filter_state_write", "filter-state-write",
     "filter-state write (`proxy_set_property`, `wasm.bench_probe`, 11 bytes)"),
    ("probe_header_pairs", "header-pairs", "all request headers (`proxy_get_header_map_pairs`)"),
]
EXTRA_ENTRY = ("probe_extra_entry", "one more VM entry (`proxy_on_response_headers`, empty)")
WASM_CHAINS = {
    "empty_wasm": ("empty", None),
    "job_floor": ("job_floor", None),
    **{chain: ("probe", op) for chain, op, _ in PROBES},
    EXTRA_ENTRY[0]: ("extra_entry", None),
}

CHAINS = [
    ("none", "no filter (use_remote_address: false)"),
    ("native", "Envoy-native use_remote_address: true"),
    ("lua", "Envoy Lua filter doing the same job"),
    ("empty_wasm", "empty Wasm HTTP filter (Envoy's Wasm floor)"),
    ("job_floor", "job floor: the job's host calls alone"),
    *[(chain, f"probe: {label.split(' (')[0]}") for chain, _, label in PROBES],
    (EXTRA_ENTRY[0], "probe: one more VM entry"),
    ("module", "client-ip, both roots (documented deployment)"),
    ("module_features", "client-ip, both roots, newer features configured"),
    ("module_opt_ins", "client-ip, both roots, filter state and forged-header count on"),
    ("module_ip_filter_state", "client-ip, both roots, envoy.network.ip published"),
    ("http_root", "client-ip, HTTP root alone"),
    ("http_root_quiet", "client-ip, HTTP root alone, writing no header"),
    ("waypoint_none", "waypoint: main_internal without a filter"),
    ("waypoint_job_floor", "waypoint: main_internal, job floor"),
    ("waypoint_module", "waypoint: main_internal, client-ip's HTTP filter alone"),
    ("waypoint_module_identities", "waypoint: main_internal, client-ip trusting the ingress gateway's identity"),
    *([("module_compare", os.environ.get("BENCH_COMPARE_LABEL")
                          or f"client-ip, both roots, from {pathlib.Path(COMPARE_MODULE).name}")]
      if COMPARE_MODULE else []),
]
LABELS = dict(CHAINS)
CLIENT_IP_CHAINS = ("module", "module_features", "module_opt_ins", "module_ip_filter_state", "http_root",
                    "http_root_quiet",
                    *(("module_compare",) if COMPARE_MODULE else ()))
# Chains doing the job, whose added cost is shown as a multiple of the floor's.
JOB_CHAINS = ("lua", "job_floor", *CLIENT_IP_CHAINS)
# An ambient waypoint's structure. The load goes to an HBONE client in the
# upstream Envoy (ztunnel's part, not counted), which tunnels each connection
# in an HTTP/2 CONNECT to the chain's connect_terminate in the Envoy under
# test; its connect_authority filter records what istiod's does (the
# destination as envoy.filters.listener.original_dst.local_ip, the peer as
# ..remote_ip, a principal as io.istio.peer_principal), shared with the
# upstream once, and the CONNECT goes on to the internal listener
# main_internal_<chain>: original_dst, then the HTTP connection manager with
# use_remote_address: false and the chain's HTTP filter alone, as a waypoint
# runs a WasmPlugin. The tunnel is plaintext: mutual TLS costs every waypoint
# chain the same. The load's X-Forwarded-For gives Envoy's source.address
# port 0, so client-ip takes the waypoint's record: what it costs shows
# against the job floor on the same structure (waypoint_job_floor) over no
# filter (waypoint_none).
WAYPOINT_CHAINS = ("waypoint_none", "waypoint_job_floor", "waypoint_module", "waypoint_module_identities")
WAYPOINT_MODULE_CHAINS = ("waypoint_module", "waypoint_module_identities")
WAYPOINT_IDENTITIES_CONFIG = json.dumps({
    "trusted_identities": ["cluster.local/ns/istio-system/sa/istio-ingressgateway-service-account"],
    "xff_mode": "overwrite",
})
WAYPOINT_PRINCIPAL = "spiffe://cluster.local/ns/default/sa/sleep"

WRK_CONNECTIONS = 16
H2_CONNECTIONS, H2_STREAMS = 4, 32
WORKLOADS = [
    ("keep-alive", "Keep-alive (HTTP/1.1)"),
    ("new-connection", "New connection per request (HTTP/1.1)"),
    ("http2", "HTTP/2, many streams per connection"),
]
WORKLOAD_TITLES = dict(WORKLOADS)


class BenchError(Exception):
    pass


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wasm_config(name, root_id, vm_id, module, plugin_config=None):
    config = {
        "name": name,
        "root_id": root_id,
        "vm_config": {"vm_id": vm_id, "runtime": "envoy.wasm.runtime.v8",
                      "code": {"local": {"filename": str(module)}}},
        "failure_policy": "FAIL_CLOSED",
    }
    if plugin_config is not None:
        config["configuration"] = {"@type": "type.googleapis.com/google.protobuf.StringValue", "value": plugin_config}
    return config


def wasm_http_filter(config):
    return {"name": "envoy.filters.http.wasm", "typed_config": {
        "@type": "type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm", "config": config}}


def chain_listener(chain, port, compiled):
    http_filters = []
    network_filters = []
    if chain in CLIENT_IP_CHAINS:
        # The quiet variant still reads the peer and resolves, but writes
        # no client header and leaves XFF alone: the difference shows what
        # those header calls cost.
        plugin_config = {
            "module": MODULE_DEFAULT_CONFIG,
            "http_root": MODULE_DEFAULT_CONFIG,
            "http_root_quiet": '{"client_ip_header": "", "xff_mode": "preserve"}',
            "module_features": MODULE_FEATURES_CONFIG,
            "module_opt_ins": MODULE_OPT_INS_CONFIG,
            "module_ip_filter_state": MODULE_IP_FILTER_STATE_CONFIG,
            "module_compare": MODULE_DEFAULT_CONFIG,
        }[chain]
        # The client-ip chains share one VM, as the roots of one module do;
        # the other build gets its own.
        module, vm_id = (COMPARE_MODULE, "client_ip_compare") if chain == "module_compare" else (MODULE, "client_ip")
        http_filters.append(wasm_http_filter(wasm_config(chain, "client_ip", vm_id, module, plugin_config)))
    if chain in ("module", "module_features", "module_opt_ins", "module_ip_filter_state", "module_compare"):
        network_filters.append({"name": "envoy.filters.network.wasm", "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.network.wasm.v3.Wasm",
            "config": wasm_config(f"{chain}_peer", "client_ip_peer", vm_id, module)}})
    if chain in WASM_CHAINS:
        # Each in a VM of its own: a module's globals (the probe's operation)
        # are the VM's, shared by every plugin in it.
        module, plugin_config = WASM_CHAINS[chain]
        http_filters.append(wasm_http_filter(wasm_config(chain, chain, chain, compiled[module], plugin_config)))
    if chain == "lua":
        http_filters.append({"name": "envoy.filters.http.lua", "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.lua.v3.Lua",
            "default_source_code": {"inline_string": LUA_SAME_JOB}}})
    http_filters.append({"name": "envoy.filters.http.router", "typed_config": {
        "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}})
    network_filters.append({"name": "envoy.filters.network.http_connection_manager", "typed_config": {
        "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
        "stat_prefix": chain,
        # HTTP/1.1, or HTTP/2 with prior knowledge (h2c), told apart by the
        # connection preface.
        "codec_type": "AUTO",
        "use_remote_address": chain == "native",
        "route_config": {"virtual_hosts": [{"name": "app", "domains": ["*"],
                                            "routes": [{"match": {"prefix": "/"}, "route": {"cluster": "upstream"}}]}]},
        "http_filters": http_filters}})
    return {"name": chain, "address": {"socket_address": {"address": "127.0.0.1", "port_value": port}},
            "filter_chains": [{"filters": network_filters}]}


def waypoint_parts(chain, port, compiled):
    """A waypoint chain in the Envoy under test: connect_terminate_<chain> on
    `port`, main_internal_<chain>, and the cluster between them."""
    internal = f"main_internal_{chain}"
    http_filters = []
    if chain == "waypoint_job_floor":
        http_filters.append(wasm_http_filter(wasm_config(chain, chain, chain, compiled["job_floor"])))
    elif chain in WAYPOINT_MODULE_CHAINS:
        plugin_config = WAYPOINT_IDENTITIES_CONFIG if chain == "waypoint_module_identities" else MODULE_DEFAULT_CONFIG
        http_filters.append(wasm_http_filter(wasm_config(chain, "client_ip", "client_ip", MODULE, plugin_config)))
    router = {"name": "envoy.filters.http.router", "typed_config": {
        "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}}

    def recorded(key, value, factory=None):
        entry = {"object_key": key, "format_string": {"text_format_source": {"inline_string": value}},
                 "shared_with_upstream": "ONCE"}
        if factory:
            entry["factory_key"] = factory
        return entry

    hcm = "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager"
    connect_terminate = {
        "name": f"connect_terminate_{chain}",
        "address": {"socket_address": {"address": "127.0.0.1", "port_value": port}},
        "filter_chains": [{"filters": [{"name": "envoy.filters.network.http_connection_manager", "typed_config": {
            "@type": hcm, "stat_prefix": f"connect_terminate_{chain}", "use_remote_address": False,
            "codec_type": "HTTP2", "http2_protocol_options": {"allow_connect": True},
            "upgrade_configs": [{"upgrade_type": "CONNECT"}],
            "route_config": {"virtual_hosts": [{"name": "default", "domains": ["*"], "routes": [{
                "match": {"connect_matcher": {}},
                "route": {"cluster": internal,
                          "upgrade_configs": [{"upgrade_type": "CONNECT", "connect_config": {}}]}}]}]},
            "http_filters": [
                {"name": "connect_authority", "typed_config": {
                    "@type": "type.googleapis.com/envoy.extensions.filters.http.set_filter_state.v3.Config",
                    "on_request_headers": [
                        recorded("envoy.filters.listener.original_dst.local_ip", "%REQ(:AUTHORITY)%"),
                        recorded("envoy.filters.listener.original_dst.remote_ip", "%DOWNSTREAM_REMOTE_ADDRESS%"),
                        # No TLS here: the principal mTLS would give, as text.
                        recorded("io.istio.peer_principal", WAYPOINT_PRINCIPAL, "envoy.string"),
                    ]}},
                router]}}]}]}
    main_internal = {
        "name": internal, "internal_listener": {},
        "listener_filters": [{"name": "envoy.filters.listener.original_dst", "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.listener.original_dst.v3.OriginalDst"}}],
        "filter_chains": [{"filters": [{"name": "envoy.filters.network.http_connection_manager", "typed_config": {
            "@type": hcm, "stat_prefix": internal, "codec_type": "AUTO", "use_remote_address": False,
            "route_config": {"virtual_hosts": [{"name": "app", "domains": ["*"], "routes": [
                {"match": {"prefix": "/"}, "route": {"cluster": "upstream"}}]}]},
            "http_filters": http_filters + [router]}}]}]}
    cluster = {"name": internal, "type": "STATIC", "connect_timeout": "1s",
               "load_assignment": {"cluster_name": internal, "endpoints": [{"lb_endpoints": [{"endpoint": {
                   "address": {"envoy_internal_address": {"server_listener_name": internal}}}}]}]},
               "transport_socket": {"name": "envoy.transport_sockets.internal_upstream", "typed_config": {
                   "@type": "type.googleapis.com/envoy.extensions.transport_sockets.internal_upstream.v3.InternalUpstreamTransport",
                   "transport_socket": {"name": "envoy.transport_sockets.raw_buffer", "typed_config": {
                       "@type": "type.googleapis.com/envoy.extensions.transport_sockets.raw_buffer.v3.RawBuffer"}}}}}
    return [connect_terminate, main_internal], [cluster]


def hbone_client_parts(chain, port, terminate_port):
    """What ztunnel does for the load generator, in the upstream Envoy (whose
    CPU is not counted): the connection on `port` goes inside an HTTP/2
    CONNECT to the chain's connect_terminate."""
    name = f"hbone_{chain}"
    listener = {"name": name, "address": {"socket_address": {"address": "127.0.0.1", "port_value": port}},
                "filter_chains": [{"filters": [{"name": "envoy.filters.network.tcp_proxy", "typed_config": {
                    "@type": "type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy",
                    "stat_prefix": name, "cluster": name,
                    "tunneling_config": {"hostname": "%DOWNSTREAM_LOCAL_ADDRESS%"}}}]}]}
    cluster = {"name": name, "type": "STATIC", "connect_timeout": "1s",
               "typed_extension_protocol_options": {"envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                   "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
                   "explicit_http_config": {"http2_protocol_options": {"allow_connect": True}}}},
               "load_assignment": {"cluster_name": name, "endpoints": [{"lb_endpoints": [{"endpoint": {
                   "address": {"socket_address": {"address": "127.0.0.1", "port_value": terminate_port}}}}]}]}}
    return listener, cluster


def upstream_config(admin_port, port, hbone=None):
    listeners, clusters = [], []
    for chain, (client_port, terminate_port) in (hbone or {}).items():
        listener, cluster = hbone_client_parts(chain, client_port, terminate_port)
        listeners.append(listener)
        clusters.append(cluster)
    return {
        "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": admin_port}}},
        "static_resources": {"clusters": clusters, "listeners": listeners + [{
            "name": "direct", "address": {"socket_address": {"address": "127.0.0.1", "port_value": port}},
            "filter_chains": [{"filters": [{"name": "envoy.filters.network.http_connection_manager", "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
                "stat_prefix": "direct",
                "route_config": {"virtual_hosts": [{"name": "d", "domains": ["*"], "routes": [
                    {"match": {"prefix": "/"}, "direct_response": {"status": 200, "body": {"inline_string": "ok"}}}]}]},
                "http_filters": [{"name": "envoy.filters.http.router", "typed_config": {
                    "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}}]}}]}]}]}}


def under_test_config(admin_port, ports, upstream_port, compiled, terminate_ports=None):
    listeners, clusters = [], []
    for chain, port in ports.items():
        if chain in WAYPOINT_CHAINS:
            more_listeners, more_clusters = waypoint_parts(chain, terminate_ports[chain], compiled)
            listeners += more_listeners
            clusters += more_clusters
        else:
            listeners.append(chain_listener(chain, port, compiled))
    return {
        "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": admin_port}}},
        "bootstrap_extensions": [{"name": "envoy.bootstrap.internal_listener", "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.bootstrap.internal_listener.v3.InternalListener"}}],
        "static_resources": {
            "listeners": listeners,
            "clusters": clusters + [{"name": "upstream", "type": "STATIC", "connect_timeout": "1s",
                                     "load_assignment": {"cluster_name": "upstream", "endpoints": [{"lb_endpoints": [{"endpoint": {
                                         "address": {"socket_address": {"address": "127.0.0.1", "port_value": upstream_port}}}}]}]}}]}}


class Processes:
    """Every process the bench starts, stopped on every way out."""

    def __init__(self, workdir):
        self.workdir = workdir
        self.running = []

    def start_envoy(self, config, name):
        path = self.workdir / f"{name}.json"
        path.write_text(json.dumps(config))
        log_path = self.workdir / f"{name}.log"
        with open(log_path, "w") as log:
            process = subprocess.Popen(
                [ENVOY, "-c", str(path), "--disable-hot-restart", "--concurrency", "1", "-l", "warning"],
                stdout=log, stderr=subprocess.STDOUT)
        process.log_path = log_path
        self.running.append(process)
        return process

    def stop_all(self):
        for process in reversed(self.running):
            if process.poll() is None:
                process.terminate()
        for process in reversed(self.running):
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        self.running.clear()


def log_tail(process, lines=20):
    try:
        return "\n".join(process.log_path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def wait_ready(admin_port, process, name):
    deadline = time.time() + 60
    while time.time() < deadline:
        if process.poll() is not None:
            raise BenchError(f"{name} Envoy exited ({process.returncode}):\n{log_tail(process)}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{admin_port}/ready", timeout=1) as response:
                if response.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.1)
    raise BenchError(f"{name} Envoy did not become ready:\n{log_tail(process)}")


def cpu_ns(pid):
    """CPU time of every thread of the process, in nanoseconds."""
    total = 0
    for task in pathlib.Path(f"/proc/{pid}/task").iterdir():
        try:
            total += int((task / "schedstat").read_text().split()[0])
        except (OSError, ValueError, IndexError):
            pass
    return total


def to_ms(value, unit):
    return float(value) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit]


def wrk_command(seconds, close):
    return (["wrk", "-t1", f"-c{WRK_CONNECTIONS}", f"-d{seconds}s", "--latency", "-H", f"X-Forwarded-For: {XFF}"]
            + (["-H", "Connection: close"] if close else []))


def h2load_command(seconds):
    return ["h2load", "-t1", f"-c{H2_CONNECTIONS}", f"-m{H2_STREAMS}", f"-D{seconds}", "-H", f"x-forwarded-for: {XFF}"]


def run_wrk(port, seconds, close):
    command = wrk_command(seconds, close) + [f"http://127.0.0.1:{port}/"]
    out = run_load(command, seconds)
    match = re.search(r"(\d+) requests in", out)
    requests = int(match.group(1)) if match else 0
    failed = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    if failed or (errors and any(int(n) for n in errors.groups())) or requests == 0:
        raise BenchError(f"failed or missing responses:\n{out}")
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    latency = {p: to_ms(*re.search(rf"\s{p}%\s+([\d.]+)(us|ms|s)", out).groups()) for p in ("50", "99")}
    return {"requests": requests, "rps": rps, "p50": latency["50"], "p99": latency["99"]}


def run_h2load(port, seconds, log_path):
    command = h2load_command(seconds) + ["--log-file", str(log_path), f"http://127.0.0.1:{port}/"]
    try:
        out = run_load(command, seconds)
        counts = re.search(r"requests: (\d+) total, (\d+) started, (\d+) done, (\d+) succeeded, "
                           r"(\d+) failed, (\d+) errored, (\d+) timeout", out)
        if not counts or "Application protocol: h2c" not in out:
            raise BenchError(f"unexpected h2load output:\n{out}")
        done, succeeded, failed, errored, timeout = (int(n) for n in counts.groups()[2:])
        if failed or errored or timeout or succeeded == 0:
            raise BenchError(f"failed or missing responses:\n{out}")
        rps = float(re.search(r"finished in [\d.]+s, ([\d.]+) req/s", out).group(1))
        # h2load prints no percentiles; its log has every request's time.
        times = sorted(int(line.split("\t")[2]) for line in log_path.read_text().splitlines() if line)
    finally:
        log_path.unlink(missing_ok=True)
    if not times:
        raise BenchError(f"h2load logged no request:\n{out}")

    def percentile_ms(p):
        return times[min(len(times) - 1, int(len(times) * p / 100))] / 1000

    return {"requests": done, "rps": rps, "p50": percentile_ms(50), "p99": percentile_ms(99)}


def run_load(command, seconds):
    try:
        result = subprocess.run(command, capture_output=True, text=True, timeout=seconds + 60)
    except subprocess.TimeoutExpired:
        raise BenchError(f"{command[0]} did not finish")
    if result.returncode != 0:
        raise BenchError(f"{command[0]} failed ({result.returncode}):\n{result.stdout}{result.stderr}")
    return result.stdout


def measure(workload, port, seconds, pid, workdir):
    before = cpu_ns(pid)
    if workload == "http2":
        sample = run_h2load(port, seconds, workdir / "h2load.log")
    else:
        sample = run_wrk(port, seconds, close=workload == "new-connection")
    sample["cpu_us"] = (cpu_ns(pid) - before) / 1000 / sample["requests"]
    return sample


def vm_memory_bytes(admin_port):
    url = f"http://127.0.0.1:{admin_port}/stats?filter=client_ip.vm_memory_bytes"
    with urllib.request.urlopen(url, timeout=5) as response:
        text = response.read().decode()
    values = [int(v) for v in re.findall(r"vm_memory_bytes: (\d+)", text)]
    return max(values) if values else None


def select(names, patterns, what):
    if not patterns:
        return list(names)
    unmatched = [p for p in patterns if not any(fnmatch.fnmatchcase(n, p) for n in names)]
    if unmatched:
        raise BenchError(f"no {what} matches {', '.join(unmatched)}; the {what}s are: {', '.join(names)}")
    return [n for n in names if any(fnmatch.fnmatchcase(n, p) for p in patterns)]


def split_list(text):
    return [item.strip() for item in (text or "").split(",") if item.strip()]


def on_sigterm(signum, frame):
    raise SystemExit(128 + signum)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=int(os.environ.get("BENCH_ROUNDS") or 7))
    parser.add_argument("--seconds", type=int, default=int(os.environ.get("BENCH_SECONDS") or 3))
    parser.add_argument("--chains", default=os.environ.get("BENCH_CHAINS", ""),
                        help="comma-separated chain names or patterns (default: all)")
    parser.add_argument("--workloads", default=os.environ.get("BENCH_WORKLOADS", ""),
                        help="comma-separated workloads (default: all)")
    parser.add_argument("--out", default=os.environ.get("BENCH_OUT") or str(REPO / "BENCHMARKS.md"))
    parser.add_argument("--list", action="store_true", help="list the chains and workloads, and exit")
    args = parser.parse_args()
    if args.list:
        for chain, label in CHAINS:
            print(f"{chain:26} {label}")
        print("workloads:", ", ".join(w for w, _ in WORKLOADS))
        return
    if args.rounds < 1 or args.seconds < 1:
        sys.exit("bench: --rounds and --seconds must be at least 1")
    # The default chains must configure none of the features, so that their
    # figures show what an unset feature costs.
    for field in FEATURE_FIELDS:
        assert field not in json.loads(MODULE_DEFAULT_CONFIG), field
    signal.signal(signal.SIGTERM, on_sigterm)
    try:
        chains = select([c for c, _ in CHAINS], split_list(args.chains), "chain")
        if "none" not in chains:
            chains.insert(0, "none")
        # A waypoint chain is judged against the waypoint's own floor.
        if any(c in WAYPOINT_MODULE_CHAINS for c in chains):
            for base in ("waypoint_job_floor", "waypoint_none"):
                if base not in chains:
                    chains.insert(1, base)
        workloads = select([w for w, _ in WORKLOADS], split_list(args.workloads), "workload")
        results, rounds, memory = run(args, chains, workloads)
    except BenchError as error:
        sys.exit(f"bench: {error}")
    except KeyboardInterrupt:
        sys.exit("bench: interrupted")
    write_report(args, chains, workloads, results, rounds, memory)


def run(args, chains, workloads):
    workdir = pathlib.Path(tempfile.mkdtemp(prefix="client-ip-bench-"))
    processes = Processes(workdir)
    try:
        compiled = {}
        for name, wat in WAT.items():
            compiled[name] = workdir / f"{name}.wasm"
            subprocess.run(["wat2wasm", str(wat), "-o", str(compiled[name])], check=True)
        upstream_port, upstream_admin, admin = free_port(), free_port(), free_port()
        ports = {chain: free_port() for chain in chains}
        # A waypoint chain's load goes to its HBONE client in the upstream
        # Envoy, which tunnels it to connect_terminate in the Envoy under test.
        terminate_ports = {chain: free_port() for chain in chains if chain in WAYPOINT_CHAINS}
        hbone = {chain: (ports[chain], terminate_ports[chain]) for chain in terminate_ports}
        upstream = processes.start_envoy(upstream_config(upstream_admin, upstream_port, hbone), "upstream")
        under_test = processes.start_envoy(
            under_test_config(admin, ports, upstream_port, compiled, terminate_ports), "under_test")
        wait_ready(upstream_admin, upstream, "upstream")
        wait_ready(admin, under_test, "under-test")

        # samples[workload][chain][round]
        samples = {w: {c: [] for c in chains} for w in workloads}
        for workload in workloads:
            for chain in chains:  # warm-up, not recorded
                try:
                    measure(workload, ports[chain], 1, under_test.pid, workdir)
                except BenchError as error:
                    raise BenchError(f"chain {chain}, {workload} (warm-up): {error}")
            for round_ in range(args.rounds):
                order = chains[round_ % len(chains):] + chains[:round_ % len(chains)]
                for chain in order:
                    try:
                        sample = measure(workload, ports[chain], args.seconds, under_test.pid, workdir)
                    except BenchError as error:
                        raise BenchError(f"chain {chain}, {workload}, round {round_ + 1}: {error}")
                    samples[workload][chain].append(sample)
                    print(f"{workload:>14} round {round_ + 1}/{args.rounds} {chain:>24}: "
                          f"{sample['rps']:9.0f} req/s  p50 {sample['p50']:.3f} ms  p99 {sample['p99']:.3f} ms  "
                          f"{sample['cpu_us']:6.1f} µs CPU/req", flush=True)
                if under_test.poll() is not None:
                    raise BenchError(f"the Envoy under test exited ({under_test.returncode}):\n{log_tail(under_test)}")
        memory = None
        if any(c in CLIENT_IP_CHAINS or c in WAYPOINT_MODULE_CHAINS for c in chains):
            time.sleep(1.5)  # the filter publishes its gauges once a second
            memory = vm_memory_bytes(admin)
    finally:
        processes.stop_all()
        shutil.rmtree(workdir, ignore_errors=True)

    results = {w: {c: {k: statistics.median(s[k] for s in runs) for k in ("rps", "p50", "p99", "cpu_us")}
                   for c, runs in by_chain.items()} for w, by_chain in samples.items()}
    rounds = {w: {c: [s["cpu_us"] for s in runs] for c, runs in by_chain.items()} for w, by_chain in samples.items()}
    return results, rounds, memory


def floor_multiples(rounds, workload, chain):
    """The chain's added CPU over the job floor's, round by round."""
    base, floor, own = (rounds[workload][c] for c in ("none", "job_floor", chain))
    return [(o - b) / (f - b) for b, f, o in zip(base, floor, own) if f - b > 0]


def svg_chart(chains, workloads, results, path):
    """Horizontal bars: Envoy CPU microseconds per request, per chain and workload."""
    width, bar, gap, left = 800, 16, 5, 330
    rows = [results[w][c]["cpu_us"] for w in workloads for c in chains]
    top = max(rows) or 1
    height = 40 + len(rows) * (bar + gap) + len(workloads) * 24
    lines = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" font-family="sans-serif" font-size="12">',
             '<text x="10" y="20" font-size="14" font-weight="bold">Envoy CPU per request (µs, median; lower is better)</text>']
    y = 40
    for workload in workloads:
        lines.append(f'<text x="10" y="{y + 12}" font-weight="bold">{WORKLOAD_TITLES[workload]}</text>')
        y += 24
        for chain in chains:
            value = results[workload][chain]["cpu_us"]
            length = (width - left - 60) * value / top
            colour = ("#2a7ab0" if chain in CLIENT_IP_CHAINS or chain in WAYPOINT_MODULE_CHAINS
                      else "#d08a1e" if chain in ("job_floor", "waypoint_job_floor")
                      else "#c3ccd4" if chain.startswith("probe_") else "#8c98a4")
            lines.append(f'<text x="10" y="{y + 12}">{LABELS[chain]}</text>')
            lines.append(f'<rect x="{left}" y="{y}" width="{length:.1f}" height="{bar}" fill="{colour}"/>')
            lines.append(f'<text x="{left + length + 6:.1f}" y="{y + 12}">{value:.1f}</text>')
            y += bar + gap
    lines.append("</svg>")
    path.write_text("\n".join(lines) + "\n")


def write_report(args, chains, workloads, results, rounds, memory):
    out = pathlib.Path(args.out)
    chart = out.with_name("benchmarks.svg")
    svg_chart(chains, workloads, results, chart)
    cpu_model = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")), "?")
    envoy_version = subprocess.run([ENVOY, "--version"], capture_output=True, text=True).stdout.strip().split("version:")[-1].strip()
    added = {w: {c: results[w][c]["cpu_us"] - results[w]["none"]["cpu_us"] for c in chains} for w in workloads}
    has_floor = "job_floor" in chains
    has_empty = "empty_wasm" in chains

    def loads(seconds):
        return (f"keep-alive `{shlex.join(wrk_command(seconds, False))}`; new connection per request the same with "
                f"`-H 'Connection: close'`; HTTP/2 `{shlex.join(h2load_command(seconds))}` (cleartext, prior knowledge)")

    lines = [
        "# Benchmarks",
        "",
        "Produced by `make bench` (`envoy-test/bench.py`); regenerate it on your machine to compare.",
        "",
        f"- Machine: {os.cpu_count()} CPUs, {cpu_model}, {platform.system()} {platform.release()}",
        f"- Envoy: {envoy_version}, one worker (`--concurrency 1`), a listener per chain with "
        "`use_remote_address: false` (as on a sidecar's inbound listener) unless the chain says otherwise",
        f"- Load: {loads(args.seconds)}; {args.rounds} round{'s' if args.rounds > 1 else ''} of {args.seconds} s, "
        "chains alternating round by round; medians shown",
        "- Upstream: a second Envoy answering with `direct_response`",
        "- CPU: the Envoy under test only, from `/proc/<pid>/task/*/schedstat`, divided by the requests served; "
        "*added* is over the no-filter chain in the same workload",
        "- Empty Wasm HTTP filter: `envoy-test/empty-filter.wat`, the HTTP root's three per-stream callbacks doing "
        "nothing: what Envoy charges any proxy-wasm filter",
        "- Job floor: `envoy-test/job-floor.wat`, no SDK: per request it reads `source.address` and "
        "`X-Forwarded-For`, replaces `x-real-ip` with the address (port dropped) and `X-Forwarded-For` with the "
        "received value, a comma and the address. Those four host calls are what the job cannot avoid. On these "
        "listeners Envoy's `source.address` is the rightmost `X-Forwarded-For` entry (the reason client-ip has a "
        "network root), so here it writes that address; the calls, and what they cost, are the same",
        "- Probes: `envoy-test/host-call-probe.wat`, the empty filter making one host call per request, chosen by "
        "its plugin configuration, and `envoy-test/extra-entry-filter.wat`, the empty filter with one more callback",
        "- client-ip: the default chains configure nothing (`{}`), so every optional feature is off; the "
        f"features chain configures `{MODULE_FEATURES_CONFIG}` (the peer, `127.0.0.1` in plaintext, is trusted by "
        "none of them, so per request this adds the read of its identity, absent in plaintext, and address lookups; "
        "`Forwarded` is never read); the opt-ins chain configures "
        f"`{MODULE_OPT_INS_CONFIG}`, one more host call each per request; the envoy.network.ip chain configures "
        f"`{MODULE_IP_FILTER_STATE_CONFIG}`, one foreign function call (`set_envoy_filter_state`) per request",
        "- client-ip, HTTP root alone: without the network root's record, and with `X-Forwarded-For` present, the "
        "peer cannot be known on these listeners (Envoy's `source.address` is the header's entry, port 0), so these "
        "chains measure that path: the client is unknown and `x-real-ip` is removed, not written",
    ]
    if len(chains) < len(CHAINS) or len(workloads) < len(WORKLOADS):
        lines.append(f"- Partial run: chains {', '.join(chains)}; workloads {', '.join(workloads)}")
    lines += ["", "![Envoy CPU per request per chain](benchmarks.svg)", ""]

    for workload in workloads:
        base = results[workload]["none"]
        lines += [f"## {WORKLOAD_TITLES[workload]}", "",
                  "| chain | req/s | vs no filter | p50 ms | p99 ms | Envoy CPU µs/req | added µs/req | × job floor |",
                  "|---|---:|---:|---:|---:|---:|---:|---:|"]
        floor_added = added[workload].get("job_floor")
        for chain in chains:
            r = results[workload][chain]
            multiple = ""
            if chain in JOB_CHAINS and has_floor and floor_added > 0:
                multiple = f"{added[workload][chain] / floor_added:.2f}×"
            lines.append(f"| {LABELS[chain]} | {r['rps']:.0f} | {r['rps'] / base['rps']:.3f}x | {r['p50']:.3f} | "
                         f"{r['p99']:.3f} | {r['cpu_us']:.1f} | {added[workload][chain]:+.1f} | {multiple} |")
        lines.append("")

    module_chains = [c for c in CLIENT_IP_CHAINS if c in chains]
    if has_floor and module_chains:
        lines += ["## Against the job floor", "",
                  f"client-ip's added CPU per request as a multiple of the job floor's (target: at most "
                  f"{FLOOR_TARGET:.2f}×). In brackets, the lowest and highest over the rounds, each round's chains "
                  "against that round's floor and no-filter runs.", "",
                  "| chain | " + " | ".join(WORKLOAD_TITLES[w] for w in workloads) + " |",
                  "|---|" + "---:|" * len(workloads)]
        for chain in module_chains:
            cells = []
            for workload in workloads:
                floor_added = added[workload]["job_floor"]
                if floor_added <= 0:
                    cells.append("n/a (floor ≤ 0)")
                    continue
                multiple = added[workload][chain] / floor_added
                per_round = floor_multiples(rounds, workload, chain)
                spread = f" ({min(per_round):.2f}–{max(per_round):.2f})" if len(per_round) > 1 else ""
                verdict = "met" if multiple <= FLOOR_TARGET else "missed"
                cells.append(f"{multiple:.2f}×{spread}, {verdict}")
            lines.append(f"| {LABELS[chain]} | " + " | ".join(cells) + " |")
        lines += ["| *the job floor's added µs/req, the divisor* | "
                  + " | ".join(f"{added[w]['job_floor']:+.1f}" for w in workloads) + " |", ""]

    waypoint_chains = [c for c in WAYPOINT_MODULE_CHAINS if c in chains]
    if waypoint_chains:
        lines += ["## On a waypoint, against its job floor", "",
                  "client-ip's added CPU per request on the waypoint's structure (over `waypoint_none`) as a "
                  "multiple of the job floor's on the same structure (target: at most "
                  f"{FLOOR_TARGET:.2f}×). The request's `X-Forwarded-For` hides the peer from `source.address`, so "
                  "client-ip reads the waypoint's record (its port, then its address); trusting an identity adds "
                  f"the reads of the peer's certificate (absent) and of its principal (`{WAYPOINT_IDENTITIES_CONFIG}`). "
                  "In brackets, the lowest and highest over the rounds.", "",
                  "| chain | " + " | ".join(WORKLOAD_TITLES[w] for w in workloads) + " |",
                  "|---|" + "---:|" * len(workloads)]
        for chain in waypoint_chains:
            cells = []
            for workload in workloads:
                base = rounds[workload]["waypoint_none"]
                floor = rounds[workload]["waypoint_job_floor"]
                floor_added = results[workload]["waypoint_job_floor"]["cpu_us"] - results[workload]["waypoint_none"]["cpu_us"]
                if floor_added <= 0:
                    cells.append("n/a (floor ≤ 0)")
                    continue
                multiple = (results[workload][chain]["cpu_us"] - results[workload]["waypoint_none"]["cpu_us"]) / floor_added
                per_round = [(o - b) / (f - b) for b, f, o in zip(base, floor, rounds[workload][chain]) if f - b > 0]
                spread = f" ({min(per_round):.2f}–{max(per_round):.2f})" if len(per_round) > 1 else ""
                verdict = "met" if multiple <= FLOOR_TARGET else "missed"
                cells.append(f"{multiple:.2f}×{spread}, {verdict}")
            lines.append(f"| {LABELS[chain]} | " + " | ".join(cells) + " |")
        lines += ["| *the waypoint job floor's added µs/req, the divisor* | "
                  + " | ".join(f"{results[w]['waypoint_job_floor']['cpu_us'] - results[w]['waypoint_none']['cpu_us']:+.1f}"
                               for w in workloads) + " |", ""]

    if has_empty:
        lines += ["## What each host call costs", "",
                  "CPU per request each probe adds over the empty Wasm filter (µs); the first row is the empty "
                  "filter over no filter.", "",
                  "| host call | " + " | ".join(WORKLOAD_TITLES[w] for w in workloads) + " |",
                  "|---|" + "---:|" * len(workloads),
                  "| nothing: the empty filter, over no filter (context create, request headers, delete) | "
                  + " | ".join(f"{added[w]['empty_wasm']:+.2f}" for w in workloads) + " |"]
        over_empty = {w: {c: added[w][c] - added[w]["empty_wasm"] for c in chains} for w in workloads}
        for chain, _, label in [*PROBES, (EXTRA_ENTRY[0], None, EXTRA_ENTRY[1])]:
            if chain in chains:
                lines.append(f"| {label} | " + " | ".join(f"{over_empty[w][chain]:+.2f}" for w in workloads) + " |")
        parts = ["probe_property_read", "probe_header_read", "probe_header_replace"]
        if all(p in chains for p in parts):
            lines.append("| the job's calls added up: property read + header read + 2 × header replace | "
                         + " | ".join(f"{over_empty[w][parts[0]] + over_empty[w][parts[1]] + 2 * over_empty[w][parts[2]]:+.2f}"
                                      for w in workloads) + " |")
        if has_floor:
            lines.append("| the job floor, over the empty filter | "
                         + " | ".join(f"{over_empty[w]['job_floor']:+.2f}" for w in workloads) + " |")
        lines.append("")

    size = MODULE.stat().st_size
    verdict = (f"{(SIZE_TARGET_KIB * 1024 - size) / 1024:.1f} KiB under" if size <= SIZE_TARGET_KIB * 1024
               else f"{(size - SIZE_TARGET_KIB * 1024) / 1024:.1f} KiB over")
    lines += ["## Module", "",
              f"- Size: {RAW_MODULE.stat().st_size if RAW_MODULE.exists() else '?'} bytes as compiled, "
              f"{size} bytes ({size / 1024:.1f} KiB) after dropping unused exports and `wasm-opt -Oz` "
              f"(`build/plugin.wasm`); target at most {SIZE_TARGET_KIB} KiB: {verdict}",
              "- Wasm VM memory per worker: " + (f"{memory} bytes of linear memory" if memory is not None else "?")
              + " (the `wasmcustom.client_ip.vm_memory_bytes` gauge) after the runs", ""]
    # What the tables answered, and what was tried: kept by hand beside the
    # bench, from the runs that decided it.
    if FINDINGS.exists():
        lines += [FINDINGS.read_text().rstrip(), ""]
    out.write_text("\n".join(lines))
    print(f"wrote {out} and {chart}")


if __name__ == "__main__":
    main()
