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
  X-Forwarded-For) with only the four host calls it cannot avoid, the
  yardstick client-ip's added cost is measured against. Its plugin
  configuration picks one of two floors: the job floor parses the peer (drops
  the port, strips IPv6 brackets), the bare floor writes the property's bytes
  as they are and parses nothing, the stricter of the two;
- envoy-test/host-call-probe.wat and extra-entry-filter.wat: one host call
  (or one more VM entry) each, for a table of what each costs.

Two chains measure the largest configuration: client-ip with
`trusted_proxies`, `allow_clients` and `deny_clients` each at their cap and
the longest walk (a 32-entry X-Forwarded-For, every entry trusted but the
leftmost), beside client-ip's default configuration fed the same header, and
a no-filter chain fed it too as their baseline.

A second phase runs side by side: the floors, client-ip and the no-filter
chain each in its own Envoy under test, all loaded at once, window after
window (SIDE_BY_SIDE_GROUPS), so that a machine shared with others slows them
alike; one after another, chains a few seconds apart can differ by more than
the cost being judged. A third phase counts instead of timing
(COUNTED_GROUPS): each chain of those groups, and the largest
configuration's three, runs alone in an Envoy under valgrind's callgrind,
which counts the instructions a fixed number of requests cost it. A count
barely moves with the machine's load, so runs agree to within about 1% of
what client-ip adds; it does not see cache misses or stalls, which the
side-by-side phase does. The cost targets are judged on the counts, with the
timed multiples and their spread beside them.

Before measuring, one request per chain doing the job checks what the
upstream received (the client header and X-Forwarded-For), so each chain is
known to take the path it claims to measure.

Environment (or the matching options): BENCH_ROUNDS, BENCH_SECONDS,
BENCH_WINDOWS (side-by-side windows per workload), BENCH_COUNT_REQUESTS
(requests counted per chain and workload, after as many to warm up),
BENCH_CHAINS (comma-separated chain names or shell patterns; the no-filter
chain always runs, and the 32-entry chains bring the chains they are read
against), BENCH_WORKLOADS (keep-alive, new-connection, http2),
BENCH_OUT (the report's path; the chart goes beside it as benchmarks.svg).
"""

import argparse
import concurrent.futures
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
# The target for client-ip's added cost per request, as a multiple of a
# floor's: judged on the instructions counted (see `counted`).
FLOOR_TARGET = 1.15
# The target for the largest configuration's added cost per request, as a
# multiple of the default configuration's fed the same header: judged on the
# instructions counted too.
LARGEST_TARGET = 2.0
CLIENT = "203.0.113.7"
XFF = CLIENT
# The peer every chain sees: the load generator on loopback.
PEER = "127.0.0.1"

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


def spaced_slash24s(first_octet, count):
    """`count` /24 networks under `first_octet`, none touching another, so
    that a list of them merges into as many ranges as it has entries."""
    return [f"{first_octet}.{16 + i // 128}.{(i % 128) * 2}.0/24" for i in range(count)]


# The longest walk: MAX_FORWARDED_ENTRIES (32) X-Forwarded-For entries, every
# one trusted but the leftmost, the client.
XFF_CHAIN_HOPS = [f"172.16.{2 * k}.1" for k in range(31)]
XFF_LONG = ", ".join([CLIENT, *XFF_CHAIN_HOPS])
# The largest configuration: every address list at its cap (4096 entries),
# none of whose entries merge. trusted_proxies holds the peer and the 31 hops;
# allow_clients holds the client and deny_clients does not, so the request is
# served. All IPv4, the family the lookups search.
LIST_CAP = 4096
MODULE_LARGEST_CONFIG = json.dumps({
    "trusted_proxies": [PEER, *XFF_CHAIN_HOPS, *spaced_slash24s(10, LIST_CAP - 1 - len(XFF_CHAIN_HOPS))],
    "allow_clients": ["203.0.113.0/24", *spaced_slash24s(11, LIST_CAP - 1)],
    "deny_clients": spaced_slash24s(12, LIST_CAP),
})
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
    ("probe_peer_record_read", "peer-record-read",
     "peer record read (`proxy_get_property`, `client_ip_peer`, the peer filter's filter state; "
     "over the peer filter alone)"),
]
# The peer filter beside the empty filter, no
# call: what the filter whose record the peer-record probe reads costs, and
# the yardstick for that probe.
PEER_FILTER_PROBE = ("probe_peer_filter", "the peer filter alone (client-ip's peer filter beside the empty filter; "
                     "its per-connection record, no call per request)")
# Probes that run the peer filter, measured over it.
PEER_FILTER_CHAINS = (PEER_FILTER_PROBE[0], "probe_peer_record_read")
EXTRA_ENTRY = ("probe_extra_entry", "one more VM entry (`proxy_on_response_headers`, empty)")
WASM_CHAINS = {
    "empty_wasm": ("empty", None),
    "job_floor": ("job_floor", None),
    "bare_floor": ("job_floor", "bare"),
    **{chain: ("probe", op) for chain, op, _ in PROBES},
    EXTRA_ENTRY[0]: ("extra_entry", None),
    PEER_FILTER_PROBE[0]: ("probe", None),
}

CHAINS = [
    ("none", "no filter (use_remote_address: false)"),
    ("native", "Envoy-native use_remote_address: true"),
    ("lua", "Envoy Lua filter doing the same job"),
    ("empty_wasm", "empty Wasm HTTP filter (Envoy's Wasm floor)"),
    ("bare_floor", "bare floor: the job's four host calls, parsing nothing"),
    ("job_floor", "job floor: the job's four host calls, parsing the peer"),
    *[(chain, f"probe: {label.split(' (')[0]}") for chain, _, label in PROBES],
    (EXTRA_ENTRY[0], "probe: one more VM entry"),
    (PEER_FILTER_PROBE[0], "probe: the peer filter alone"),
    ("module", "client-ip, both roots (documented deployment)"),
    ("module_features", "client-ip, both roots, newer features configured"),
    ("module_opt_ins", "client-ip, both roots, filter state and forged-header count on"),
    ("module_ip_filter_state", "client-ip, both roots, envoy.network.ip published"),
    ("http_root", "client-ip, HTTP filter alone"),
    ("http_root_quiet", "client-ip, HTTP filter alone, writing no header"),
    ("none_xff32", "no filter, 32-entry X-Forwarded-For"),
    ("module_xff32", "client-ip, both roots, default configuration, 32-entry X-Forwarded-For"),
    ("module_largest", "client-ip, both roots, largest configuration, 32-entry walk"),
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
                    "http_root_quiet", *(("module_compare",) if COMPARE_MODULE else ()), "module_xff32",
                    "module_largest")
# client-ip chains that run the peer filter too.
BOTH_ROOTS_CHAINS = ("module", "module_features", "module_opt_ins", "module_ip_filter_state", "module_compare",
                     "module_xff32", "module_largest")
# Chains whose load generator sends the 32-entry X-Forwarded-For; their added
# cost is over none_xff32, which runs whenever one of them does.
LONG_XFF_CHAINS = ("none_xff32", "module_xff32", "module_largest")
FLOORS = ("bare_floor", "job_floor")
# Chains doing the job with the short header, whose added cost is shown as a
# multiple of each floor's.
JOB_CHAINS = ("lua", *FLOORS, *(c for c in CLIENT_IP_CHAINS if c not in LONG_XFF_CHAINS))
# What the upstream receives from each chain doing the job: the client
# header, and X-Forwarded-For. On these listeners Envoy's `source.address` is
# X-Forwarded-For's rightmost entry with port 0 (see the job floor), so that
# is what the floors write.
EXPECTED = {
    "lua": (PEER, f"{XFF},{PEER}"),
    "bare_floor": (f"{XFF}:0", f"{XFF},{XFF}:0"),
    "job_floor": (XFF, f"{XFF},{XFF}"),
    **{chain: (PEER, f"{XFF},{PEER}") for chain in ("module", "module_features", "module_opt_ins",
                                                    "module_ip_filter_state", "module_compare")},
    # The HTTP filter alone cannot know the peer here: the client is unknown.
    "http_root": (None, XFF),
    "http_root_quiet": (None, XFF),
    "module_xff32": (PEER, f"{XFF_LONG},{PEER}"),
    "module_largest": (CLIENT, f"{XFF_LONG},{PEER}"),
}
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

# The chains judged against the floors, timed side by side (each in its own
# Envoy under test, all loaded at once, window after window, so that whatever
# slows the machine in a window slows them alike; run one after another, on a
# shared machine, chains a few seconds apart can differ by more than the whole
# cost being judged), then counted one by one under callgrind, whose counts
# judge the targets. A group runs only when all its chains are selected.
SIDE_BY_SIDE_GROUPS = (
    ("none", "bare_floor", "job_floor", "module"),
    ("waypoint_none", "waypoint_job_floor", "waypoint_module"),
)
# The chain each side-by-side chain's added cost is taken over.
SIDE_BY_SIDE_BASE = {"waypoint_job_floor": "waypoint_none", "waypoint_module": "waypoint_none"}
# The counted phase: the side-by-side groups again, each chain alone in an
# Envoy under callgrind, for the workloads the targets speak of. The load is
# the timed workloads' with a fixed number of requests (h2load for both, so
# that the count is exact), after as many unmeasured ones, which let V8 finish
# compiling the module's hot functions.
COUNTED_WORKLOADS = ("keep-alive", "http2")
# The largest configuration against the default one fed the same 32-entry
# header, over no filter fed it: counted only, one Envoy at a time.
LARGEST_GROUP = ("none_xff32", "module_xff32", "module_largest")
COUNTED_GROUPS = (*SIDE_BY_SIDE_GROUPS, LARGEST_GROUP)
# After each counted load, as long an idle window with instructions counted
# too: its rate, times the load's duration, is taken off the load's count, so
# that what runs by the clock (Envoy's timers, client-ip's once-a-second
# flush) is not charged to the requests, which callgrind slows some fifty
# times.
IDLE_SECONDS = 3

CHECK_HEADER = "x-bench-check"
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
            "module_xff32": MODULE_DEFAULT_CONFIG,
            "module_largest": MODULE_LARGEST_CONFIG,
        }[chain]
        # The client-ip chains share one VM, as the roots of one module do;
        # the other build gets its own.
        module, vm_id = (COMPARE_MODULE, "client_ip_compare") if chain == "module_compare" else (MODULE, "client_ip")
        http_filters.append(wasm_http_filter(wasm_config(chain, "client_ip", vm_id, module, plugin_config)))
    if chain in BOTH_ROOTS_CHAINS or chain in PEER_FILTER_CHAINS:
        # The probe reads the record this filter writes.
        module, vm_id = (COMPARE_MODULE, "client_ip_compare") if chain == "module_compare" else (MODULE, "client_ip")
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
                    # The check before the runs: what a chain forwarded, echoed.
                    {"match": {"prefix": "/", "headers": [{"name": CHECK_HEADER, "present_match": True}]},
                     "direct_response": {"status": 200, "body": {"inline_string": "ok"}},
                     "response_headers_to_add": [
                         {"header": {"key": f"echo-{name}", "value": f"%REQ({name})%"}}
                         for name in ("x-real-ip", "x-forwarded-for")]},
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

    def start_envoy(self, config, name, wrapper=(), executable=ENVOY):
        """An Envoy with one worker, started through `wrapper` (valgrind) if
        one is given."""
        path = self.workdir / f"{name}.json"
        path.write_text(json.dumps(config))
        log_path = self.workdir / f"{name}.log"
        with open(log_path, "w") as log:
            process = subprocess.Popen(
                [*wrapper, str(executable), "-c", str(path), "--disable-hot-restart", "--concurrency", "1",
                 "-l", "warning"],
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


def wait_ready(admin_port, process, name, timeout=60):
    deadline = time.time() + timeout
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


def chain_xff(chain):
    """The X-Forwarded-For the load generator sends to the chain."""
    return XFF_LONG if chain in LONG_XFF_CHAINS else XFF


def wrk_command(seconds, close, xff=XFF):
    return (["wrk", "-t1", f"-c{WRK_CONNECTIONS}", f"-d{seconds}s", "--latency", "-H", f"X-Forwarded-For: {xff}"]
            + (["-H", "Connection: close"] if close else []))


def h2load_command(seconds, xff=XFF):
    return ["h2load", "-t1", f"-c{H2_CONNECTIONS}", f"-m{H2_STREAMS}", f"-D{seconds}", "-H", f"x-forwarded-for: {xff}"]


def run_wrk(port, seconds, close, xff):
    command = wrk_command(seconds, close, xff) + [f"http://127.0.0.1:{port}/"]
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


def run_h2load(port, seconds, log_path, xff):
    command = h2load_command(seconds, xff) + ["--log-file", str(log_path), f"http://127.0.0.1:{port}/"]
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


def measure(workload, port, seconds, pid, workdir, xff):
    before = cpu_ns(pid)
    if workload == "http2":
        sample = run_h2load(port, seconds, workdir / "h2load.log", xff)
    else:
        sample = run_wrk(port, seconds, workload == "new-connection", xff)
    sample["cpu_us"] = (cpu_ns(pid) - before) / 1000 / sample["requests"]
    return sample


def check_chain(chain, port):
    """One request through the chain: the upstream must have received the
    client header and X-Forwarded-For the chain is meant to forward."""
    if chain not in EXPECTED:
        return
    request = urllib.request.Request(f"http://127.0.0.1:{port}/", headers={
        "X-Forwarded-For": chain_xff(chain), CHECK_HEADER: "1"})
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            seen = tuple(response.headers.get(f"echo-{name}") or None for name in ("x-real-ip", "x-forwarded-for"))
    except OSError as error:
        raise BenchError(f"chain {chain}: the check request failed: {error}")
    if seen != EXPECTED[chain]:
        raise BenchError(f"chain {chain}: the upstream received x-real-ip, X-Forwarded-For {seen}, "
                         f"expected {EXPECTED[chain]}")


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
    parser.add_argument("--windows", type=int, default=int(os.environ.get("BENCH_WINDOWS") or 15),
                        help="side-by-side windows per workload, each --seconds long")
    parser.add_argument("--count-requests", type=int, default=int(os.environ.get("BENCH_COUNT_REQUESTS") or 5000),
                        help="requests counted per chain and workload under callgrind, after as many to warm up")
    parser.add_argument("--out", default=os.environ.get("BENCH_OUT") or str(REPO / "BENCHMARKS.md"))
    parser.add_argument("--list", action="store_true", help="list the chains and workloads, and exit")
    args = parser.parse_args()
    if args.list:
        for chain, label in CHAINS:
            print(f"{chain:26} {label}")
        print("workloads:", ", ".join(w for w, _ in WORKLOADS))
        return
    if args.rounds < 1 or args.seconds < 1 or args.windows < 1:
        sys.exit("bench: --rounds, --seconds and --windows must be at least 1")
    if args.count_requests < max(WRK_CONNECTIONS, H2_CONNECTIONS):
        sys.exit(f"bench: --count-requests must be at least {max(WRK_CONNECTIONS, H2_CONNECTIONS)}, "
                 "a request per connection")
    # The default chains must configure none of the features, so that their
    # figures show what an unset feature costs.
    for field in FEATURE_FIELDS:
        assert field not in json.loads(MODULE_DEFAULT_CONFIG), field
    signal.signal(signal.SIGTERM, on_sigterm)
    # Made before the run, so that a long run never ends with nowhere to write.
    pathlib.Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    try:
        chains = select([c for c, _ in CHAINS], split_list(args.chains), "chain")
        # The largest configuration is read against the default one fed the
        # same header, and both against no filter fed it.
        if "module_largest" in chains and "module_xff32" not in chains:
            chains.insert(chains.index("module_largest"), "module_xff32")
        if "probe_peer_record_read" in chains and PEER_FILTER_PROBE[0] not in chains:
            chains.insert(chains.index("probe_peer_record_read"), PEER_FILTER_PROBE[0])
        if any(c in LONG_XFF_CHAINS for c in chains) and "none_xff32" not in chains:
            chains.insert(0, "none_xff32")
        if "none" not in chains:
            chains.insert(0, "none")
        # A waypoint chain is judged against the waypoint's own floor.
        if any(c in WAYPOINT_MODULE_CHAINS for c in chains):
            for base in ("waypoint_job_floor", "waypoint_none"):
                if base not in chains:
                    chains.insert(1, base)
        workloads = select([w for w, _ in WORKLOADS], split_list(args.workloads), "workload")
        if counts_anything(chains, workloads):
            # Before hours of timing, not after.
            for tool in ("valgrind", "callgrind_control"):
                if shutil.which(tool) is None:
                    raise BenchError(f"{tool} not found: the counted phase needs valgrind (`make bench` installs it)")
            envoy_executable()
        results, rounds, memory, windows, counts = run(args, chains, workloads)
    except BenchError as error:
        sys.exit(f"bench: {error}")
    except KeyboardInterrupt:
        sys.exit("bench: interrupted")
    write_report(args, chains, workloads, results, rounds, memory, windows, counts)


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
        for chain in chains:
            check_chain(chain, ports[chain])

        # samples[workload][chain][round]
        samples = {w: {c: [] for c in chains} for w in workloads}
        for workload in workloads:
            for chain in chains:  # warm-up, not recorded
                try:
                    measure(workload, ports[chain], 1, under_test.pid, workdir, chain_xff(chain))
                except BenchError as error:
                    raise BenchError(f"chain {chain}, {workload} (warm-up): {error}")
            for round_ in range(args.rounds):
                order = chains[round_ % len(chains):] + chains[:round_ % len(chains)]
                for chain in order:
                    try:
                        sample = measure(workload, ports[chain], args.seconds, under_test.pid, workdir,
                                         chain_xff(chain))
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
        processes.stop_all()
        windows = {}
        for group in SIDE_BY_SIDE_GROUPS:
            if all(c in chains for c in group):
                windows[group] = side_by_side(args, group, workloads, compiled, processes, workdir)
        processes.stop_all()
        counts = {}
        counted_workloads = [w for w in workloads if w in COUNTED_WORKLOADS]
        for group in COUNTED_GROUPS:
            if counts_anything(group, counted_workloads):
                counts[group] = counted(group, counted_workloads, args.count_requests, compiled, processes, workdir)
    finally:
        processes.stop_all()
        shutil.rmtree(workdir, ignore_errors=True)

    results = {w: {c: {k: statistics.median(s[k] for s in runs) for k in ("rps", "p50", "p99", "cpu_us")}
                   for c, runs in by_chain.items()} for w, by_chain in samples.items()}
    rounds = {w: {c: [s["cpu_us"] for s in runs] for c, runs in by_chain.items()} for w, by_chain in samples.items()}
    return results, rounds, memory, windows, counts


def chain_alone(chain, upstream_port, compiled):
    """An Envoy under test holding one chain: its admin and load ports, its
    configuration, and what the upstream's HBONE client needs when the chain
    is a waypoint's (the load then goes through the upstream's tunnel)."""
    admin, port = free_port(), free_port()
    terminate_ports, hbone = None, {}
    if chain in WAYPOINT_CHAINS:
        terminate_ports = {chain: free_port()}
        hbone[chain] = (port, terminate_ports[chain])
    return admin, port, under_test_config(admin, {chain: port}, upstream_port, compiled, terminate_ports), hbone


def side_by_side(args, group, workloads, compiled, processes, workdir):
    """The group's chains, each in its own Envoy under test (one worker), all
    driven at once for a window, then again: windows[workload][chain] is the
    CPU per request of each window."""
    upstream_port, upstream_admin = free_port(), free_port()
    envoys = {}
    hbone = {}
    for chain in group:
        admin, port, config, chain_hbone = chain_alone(chain, upstream_port, compiled)
        hbone.update(chain_hbone)
        envoys[chain] = (processes.start_envoy(config, f"side_by_side_{chain}"), admin, port)
    upstream = processes.start_envoy(upstream_config(upstream_admin, upstream_port, hbone), "side_by_side_upstream")
    wait_ready(upstream_admin, upstream, "side-by-side upstream")
    for chain, (process, admin, port) in envoys.items():
        wait_ready(admin, process, f"side-by-side {chain}")
        check_chain(chain, port)
        (workdir / f"side_by_side_{chain}").mkdir(exist_ok=True)

    def one(workload, seconds, chain):
        process, _, port = envoys[chain]
        return measure(workload, port, seconds, process.pid, workdir / f"side_by_side_{chain}", chain_xff(chain))

    windows = {w: {c: [] for c in group} for w in workloads}
    with concurrent.futures.ThreadPoolExecutor(len(group)) as pool:
        for workload in workloads:
            try:
                list(pool.map(lambda c: one(workload, 1, c), group))  # warm-up, not recorded
                for window in range(args.windows):
                    samples = list(pool.map(lambda c: one(workload, args.seconds, c), group))
                    for chain, sample in zip(group, samples):
                        windows[workload][chain].append(sample["cpu_us"])
                    print(f"{workload:>14} side by side {window + 1}/{args.windows}: " + "  ".join(
                        f"{c} {s['cpu_us']:.1f}" for c, s in zip(group, samples)) + " µs CPU/req", flush=True)
            except BenchError as error:
                raise BenchError(f"side by side, {workload}: {error}")
    return windows


def counts_anything(chains, workloads):
    """Whether the counted phase has a group and a workload to count."""
    return (any(w in COUNTED_WORKLOADS for w in workloads)
            and any(all(c in chains for c in group) for group in COUNTED_GROUPS))


def envoy_executable():
    """The Envoy binary itself: valgrind must start it, not the PyPI
    package's Python launcher, which would run it outside valgrind."""
    path = pathlib.Path(shutil.which(ENVOY) or ENVOY)
    with open(path, "rb") as head:
        if head.read(4) == b"\x7fELF":
            return path
    found = sorted(path.resolve().parent.parent.glob("lib/python3*/site-packages/envoy/_bin/envoy"))
    if not found:
        raise BenchError(f"{ENVOY} is a launcher and no Envoy binary was found beside it for valgrind")
    return found[0]


def count_load_command(workload, port, requests, xff):
    """A fixed number of requests, the workload's concurrency."""
    shape = (["--h1", "-c", str(WRK_CONNECTIONS), "-m", "1"] if workload == "keep-alive"
             else ["-c", str(H2_CONNECTIONS), "-m", str(H2_STREAMS)])
    return ["h2load", "-t1", "-n", str(requests), *shape, "-H", f"x-forwarded-for: {xff}", f"http://127.0.0.1:{port}/"]


def run_counted_load(workload, port, requests, xff):
    out = run_load(count_load_command(workload, port, requests, xff), 600)
    counts = re.search(r"requests: \d+ total, \d+ started, \d+ done, (\d+) succeeded", out)
    if not counts or int(counts.group(1)) != requests:
        raise BenchError(f"not every counted request succeeded:\n{out}")


def callgrind_totals(dump):
    """The instructions a callgrind dump counted; never none, for a dump
    taken while counting was off would read as a free chain."""
    for line in dump.read_text(errors="replace").splitlines():
        if line.startswith("totals:"):
            total = int(line.split()[1])
            if total <= 0:
                raise BenchError(f"{dump} counted no instruction: counting was not on")
            return total
    raise BenchError(f"no totals in {dump}")


def counted(group, workloads, requests, compiled, processes, workdir):
    """counts[workload][chain]: the instructions per request of each chain,
    each alone in an Envoy under callgrind, counting only while its counted
    requests run."""
    executable = envoy_executable()
    counts = {w: {} for w in workloads}
    for chain in group:
        upstream_port, upstream_admin = free_port(), free_port()
        admin, port, config, hbone = chain_alone(chain, upstream_port, compiled)
        upstream = processes.start_envoy(upstream_config(upstream_admin, upstream_port, hbone), f"counted_upstream_{chain}")
        dumps = workdir / f"counted_{chain}"
        dumps.mkdir(exist_ok=True)
        # --smc-check: V8 writes the module's machine code at run time.
        process = processes.start_envoy(
            config, f"counted_{chain}", executable=executable,
            wrapper=("valgrind", "--tool=callgrind", "--instr-atstart=no", "--smc-check=all-non-file",
                     f"--callgrind-out-file={dumps / 'callgrind.out'}"))
        wait_ready(upstream_admin, upstream, f"counted upstream for {chain}")
        wait_ready(admin, process, f"counted {chain}", timeout=600)
        check_chain(chain, port)

        def callgrind(*command):
            # callgrind_control exits 0 whatever happened; its answer says.
            try:
                result = subprocess.run(["callgrind_control", *command, str(process.pid)],
                                        capture_output=True, text=True, timeout=300)
            except subprocess.TimeoutExpired:
                raise BenchError(f"callgrind_control {' '.join(command)} did not answer")
            if "OK." not in result.stdout or "Error" in result.stdout:
                raise BenchError(f"callgrind_control {' '.join(command)} failed:\n{result.stdout}{result.stderr}")

        def counted_window(action):
            """The instructions counted while `action` runs, and its duration."""
            before = set(dumps.iterdir())
            callgrind("--instr=on")
            start = time.monotonic()
            action()
            duration = time.monotonic() - start
            callgrind("--instr=off")
            callgrind("--dump")
            new = sorted(set(dumps.iterdir()) - before)
            if len(new) != 1:
                raise BenchError(f"expected one callgrind dump, found {[p.name for p in new]}")
            return callgrind_totals(new[0]), duration

        for workload in workloads:
            try:
                run_counted_load(workload, port, requests, chain_xff(chain))  # warm-up, not counted
                loaded, duration = counted_window(
                    lambda: run_counted_load(workload, port, requests, chain_xff(chain)))
                idle, idle_duration = counted_window(lambda: time.sleep(IDLE_SECONDS))
            except BenchError as error:
                raise BenchError(f"counted, chain {chain}, {workload}: {error}")
            counts[workload][chain] = (loaded - idle / idle_duration * duration) / requests
            print(f"{workload:>14} counted {chain:>24}: {counts[workload][chain]:9.0f} instructions/req", flush=True)
        processes.stop_all()
    return counts


def baseline(chain):
    """The no-filter chain fed the same X-Forwarded-For."""
    return "none_xff32" if chain in LONG_XFF_CHAINS and chain != "none_xff32" else "none"


def round_multiples(rounds, workload, chain, reference):
    """The chain's added CPU over the reference chain's, round by round, each
    over the no-filter run of its own header in the same round."""
    by = rounds[workload]
    return [(o - ob) / (r - rb)
            for ob, rb, r, o in zip(by[baseline(chain)], by[baseline(reference)], by[reference], by[chain])
            if r - rb > 0]


def multiple_cell(results_added, rounds, workload, chain, reference):
    """`1.10× (0.92–1.33)`: the medians' ratio and the rounds' spread (the
    verdict is the counts')."""
    divisor = results_added[workload][reference]
    if divisor <= 0:
        return "n/a (divisor ≤ 0)"
    multiple = results_added[workload][chain] / divisor
    per_round = round_multiples(rounds, workload, chain, reference)
    spread = f" ({min(per_round):.2f}–{max(per_round):.2f})" if len(per_round) > 1 else ""
    return f"{multiple:.2f}×{spread}"


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
                      else "#d08a1e" if chain in (*FLOORS, "waypoint_job_floor")
                      else "#c3ccd4" if chain.startswith("probe_") else "#8c98a4")
            lines.append(f'<text x="10" y="{y + 12}">{LABELS[chain]}</text>')
            lines.append(f'<rect x="{left}" y="{y}" width="{length:.1f}" height="{bar}" fill="{colour}"/>')
            lines.append(f'<text x="{left + length + 6:.1f}" y="{y + 12}">{value:.1f}</text>')
            y += bar + gap
    lines.append("</svg>")
    path.write_text("\n".join(lines) + "\n")


def side_by_side_cell(windows, workload, chain, reference):
    """`1.04× (0.91–1.20)`: the ratio of the windows' median added CPU and
    the quartiles of the windows' own ratios (the verdict is the counts')."""
    by = windows[workload]
    base = by[SIDE_BY_SIDE_BASE.get(chain, "none")]
    added = [c - b for c, b in zip(by[chain], base)]
    divisors = [r - b for r, b in zip(by[reference], base)]
    divisor = statistics.median(divisors)
    if divisor <= 0:
        return "n/a (divisor ≤ 0)"
    multiple = statistics.median(added) / divisor
    per_window = [a / d for a, d in zip(added, divisors) if d > 0]
    spread = ""
    if len(per_window) >= 4:
        low, _, high = statistics.quantiles(per_window, n=4)
        spread = f" ({low:.2f}–{high:.2f})"
    return f"{multiple:.2f}×{spread}"


def side_by_side_added(windows, workload, chain):
    by = windows[workload]
    base = by[SIDE_BY_SIDE_BASE.get(chain, "none")]
    return statistics.median(c - b for c, b in zip(by[chain], base))


def counted_cell(counts, workload, chain, reference, base, target):
    """`1.09×, met`: the chain's added instructions per request over the
    reference chain's, both over the base chain's, against the target."""
    by = counts[workload]
    divisor = by[reference] - by[base]
    if divisor <= 0 or by[chain] <= by[base]:
        return "n/a (an added count ≤ 0)"
    multiple = (by[chain] - by[base]) / divisor
    return f"{multiple:.2f}×, {'met' if multiple <= target else 'missed'}"


def counted_section(title, intro, counts, workloads, rows, added_rows, base, target=FLOOR_TARGET):
    """A table of multiples judged on the counts, then each chain's added
    instructions per request."""
    lines = [f"## {title}", "", intro, "",
             "| chain | over | " + " | ".join(WORKLOAD_TITLES[w] for w in workloads) + " |",
             "|---|---|" + "---:|" * len(workloads)]
    for chain, reference, reference_name in rows:
        lines.append(f"| {LABELS[chain]} | {reference_name} | "
                     + " | ".join(counted_cell(counts, w, chain, reference, base, target) for w in workloads) + " |")
    for chain, name in added_rows:
        lines.append(f"| *{name}'s added instructions/req* | | "
                     + " | ".join(f"{counts[w][chain] - counts[w][base]:+,.0f}" for w in workloads) + " |")
    lines.append(f"| *{LABELS[base]}, instructions/req* | | "
                 + " | ".join(f"{counts[w][base]:,.0f}" for w in workloads) + " |")
    return lines + [""]


def write_report(args, chains, workloads, results, rounds, memory, windows, counts):
    out = pathlib.Path(args.out)
    chart = out.with_name("benchmarks.svg")
    svg_chart(chains, workloads, results, chart)
    cpu_model = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")), "?")
    envoy_version = subprocess.run([ENVOY, "--version"], capture_output=True, text=True).stdout.strip().split("version:")[-1].strip()
    valgrind_version = (subprocess.run(["valgrind", "--version"], capture_output=True, text=True).stdout.strip()
                        if counts and shutil.which("valgrind") else None)
    added = {w: {c: results[w][c]["cpu_us"] - results[w][baseline(c)]["cpu_us"] for c in chains} for w in workloads}
    floors = [f for f in FLOORS if f in chains]
    floor_names = {"bare_floor": "bare floor", "job_floor": "job floor"}
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
        "*added* is over the no-filter chain fed the same X-Forwarded-For in the same workload",
        "- Check: before the runs, one request through each chain doing the job, against an upstream route that "
        "echoes what it received; a chain that forwards another client header or X-Forwarded-For than the path it "
        "claims to measure stops the bench",
        "- Empty Wasm HTTP filter: `envoy-test/empty-filter.wat`, the HTTP filter's three per-stream callbacks doing "
        "nothing: what Envoy charges any proxy-wasm filter",
        "- Floors: `envoy-test/job-floor.wat`, no SDK: per request it reads `source.address` and "
        "`X-Forwarded-For`, replaces `x-real-ip` with the address and `X-Forwarded-For` with the received value, "
        "a comma and the address. Those four host calls are what the job cannot avoid. The *job floor* drops the "
        "port and strips IPv6 brackets, as the job needs; the *bare floor* (plugin configuration `bare`) writes "
        "the property's bytes as they are and parses nothing, the stricter yardstick. On these listeners Envoy's "
        "`source.address` is the rightmost `X-Forwarded-For` entry with port 0 (the reason client-ip has a "
        "peer filter), so here they write that address; the calls, and what they cost, are the same",
        "- Probes: `envoy-test/host-call-probe.wat`, the empty filter making one host call per request, chosen by "
        "its plugin configuration, and `envoy-test/extra-entry-filter.wat`, the empty filter with one more callback; "
        "the peer-record probe runs client-ip's peer filter beside it and is measured over a chain with that filter "
        "and no call",
        "- client-ip: the default chains configure nothing (`{}`), so every optional feature is off; the "
        f"features chain configures `{MODULE_FEATURES_CONFIG}` (the peer, `127.0.0.1` in plaintext, is trusted by "
        "none of them, so per request this adds the read of its identity, absent in plaintext, and address lookups; "
        "`Forwarded` is never read); the opt-ins chain configures "
        f"`{MODULE_OPT_INS_CONFIG}`, one more host call each per request; the envoy.network.ip chain configures "
        f"`{MODULE_IP_FILTER_STATE_CONFIG}`, one foreign function call (`set_envoy_filter_state`) per request",
        "- client-ip, HTTP filter alone: without the peer filter's record, and with `X-Forwarded-For` present, the "
        "peer cannot be known on these listeners (Envoy's `source.address` is the header's entry, port 0), so these "
        "chains measure that path: the client is unknown and `x-real-ip` is removed, not written",
        f"- Largest configuration: the load generator sends a 32-entry `X-Forwarded-For` (`{CLIENT}` then 31 "
        f"hops, `{XFF_CHAIN_HOPS[0]}` to `{XFF_CHAIN_HOPS[-1]}`), the most the walk looks at; `trusted_proxies` holds "
        f"{LIST_CAP} entries (the peer `{PEER}`, the 31 hops and /24s none of which touch), `allow_clients` "
        f"{LIST_CAP} (`203.0.113.0/24` among them) and `deny_clients` {LIST_CAP}, each at its cap and merging into "
        "as many ranges as it has entries, all IPv4. Per request the walk passes the 31 hops and stops at "
        f"`{CLIENT}`, which the allow list admits. It is compared with the default configuration fed the same "
        "header (the peer untrusted, nothing walked, the long header read and appended to), both over a no-filter "
        "chain fed that header",
    ]
    if valgrind_version:
        lines.append(f"- Instructions: counted by {valgrind_version}'s callgrind (the sections marked *counted*)")
    if len(chains) < len(CHAINS) or len(workloads) < len(WORKLOADS):
        lines.append(f"- Partial run: chains {', '.join(chains)}; workloads {', '.join(workloads)}")
    lines += ["", "![Envoy CPU per request per chain](benchmarks.svg)", ""]

    for workload in workloads:
        base = results[workload]["none"]
        lines += [f"## {WORKLOAD_TITLES[workload]}", "",
                  "| chain | req/s | vs no filter | p50 ms | p99 ms | Envoy CPU µs/req | added µs/req |"
                  + "".join(f" × {floor_names[f]} |" for f in floors),
                  "|---|---:|---:|---:|---:|---:|---:|" + "---:|" * len(floors)]
        for chain in chains:
            r = results[workload][chain]
            multiples = "".join(
                f" {added[workload][chain] / added[workload][floor]:.2f}× |"
                if chain in JOB_CHAINS and added[workload][floor] > 0 else " |" for floor in floors)
            lines.append(f"| {LABELS[chain]} | {r['rps']:.0f} | {r['rps'] / base['rps']:.3f}x | {r['p50']:.3f} | "
                         f"{r['p99']:.3f} | {r['cpu_us']:.1f} | {added[workload][chain]:+.1f} |{multiples}")
        lines.append("")

    floor_group, waypoint_group = SIDE_BY_SIDE_GROUPS
    side_by_side_note = (
        f"Each chain runs in its own Envoy under test (one worker) and all of them are loaded at once, "
        f"{args.windows} windows of {args.seconds} s per workload, so that whatever slows the machine in a window "
        "slows them alike; figures are each window's CPU per request over its own no-filter chain's. The multiple "
        "is the ratio of the windows' medians; in brackets, the quartiles of the windows' own ratios.")
    counted_workloads = [w for w in workloads if w in COUNTED_WORKLOADS]
    counted_note = (
        f"Each chain runs alone in an Envoy under test (one worker) under valgrind's callgrind, which counts the "
        f"instructions the Envoy under test executes, its Wasm included, over {args.count_requests} requests sent "
        f"after {args.count_requests} unmeasured ones (`{shlex.join(count_load_command('keep-alive', 'PORT', args.count_requests, XFF)[:-1])}` "
        f"with keep-alive, `{shlex.join(count_load_command('http2', 'PORT', args.count_requests, XFF)[:-1])}` "
        "over HTTP/2); the load generator and the upstream are not counted, and what the Envoy counts while idle "
        f"for {IDLE_SECONDS} s right after, per second, is taken off for the load's duration (timers, client-ip's "
        "once-a-second flush). Unlike CPU time, a count barely moves with the machine's load: runs of the same "
        "build agree to within about 1% of what client-ip adds (BENCHMARKS.md's findings). It does not see cache "
        "misses or stalls; the side-by-side CPU times do.")

    def judged(group):
        """Where a timed table sends the reader for its target's verdict."""
        return ("is judged on the counts above" if group in counts
                else "is judged on instruction counts, which this run did not take")

    if floor_group in counts:
        lines += counted_section(
            "Against the floors, counted",
            f"client-ip's added instructions per request as a multiple of each floor's (target: at most "
            f"{FLOOR_TARGET:.2f}× the job floor with keep-alive and over HTTP/2, judged here; the bare floor, which "
            f"parses nothing, is the stricter check). {counted_note}",
            counts[floor_group], counted_workloads,
            [("module", "job_floor", "job floor"), ("module", "bare_floor", "bare floor")],
            [("bare_floor", "the bare floor"), ("job_floor", "the job floor"), ("module", "client-ip")], "none")
    if waypoint_group in counts:
        lines += counted_section(
            "On a waypoint, counted",
            "client-ip's HTTP filter on the waypoint's structure, its added instructions per request as a multiple "
            f"of the job floor's on the same structure, both over `waypoint_none` (target: at most {FLOOR_TARGET:.2f}×, "
            f"judged here). {counted_note}",
            counts[waypoint_group], counted_workloads,
            [("waypoint_module", "waypoint_job_floor", "waypoint job floor")],
            [("waypoint_job_floor", "the waypoint job floor"), ("waypoint_module", "client-ip on the waypoint")],
            "waypoint_none")
    if LARGEST_GROUP in counts:
        lines += counted_section(
            "The largest configuration, counted",
            "client-ip's added instructions per request with every address list at its cap and the longest walk, "
            "as a multiple of its default configuration's fed the same 32-entry `X-Forwarded-For`, both over the "
            f"no-filter chain fed that header (target: at most {LARGEST_TARGET:.0f}×, judged here). {counted_note}",
            counts[LARGEST_GROUP], counted_workloads,
            [("module_largest", "module_xff32", "the default configuration")],
            [("module_xff32", "the default configuration"), ("module_largest", "the largest configuration")],
            "none_xff32", LARGEST_TARGET)
    if floor_group in windows:
        lines += ["## Against the floors, side by side", "",
                  f"client-ip's added CPU per request as a multiple of each floor's, timed (the target, at most "
                  f"{FLOOR_TARGET:.2f}× the job floor, {judged(floor_group)}; this is what CPU time says on "
                  f"this machine, and how widely). {side_by_side_note} The tables above, one chain after "
                  "another, show every chain's multiples too, but on a shared machine seconds apart can differ by "
                  "more than the cost judged here.", "",
                  "| chain | floor | " + " | ".join(WORKLOAD_TITLES[w] for w in workloads) + " |",
                  "|---|---|" + "---:|" * len(workloads)]
        for floor in FLOORS:
            cells = [side_by_side_cell(windows[floor_group], w, "module", floor) for w in workloads]
            lines.append(f"| {LABELS['module']} | {floor_names[floor]} | " + " | ".join(cells) + " |")
        for chain, name in (("bare_floor", "the bare floor"), ("job_floor", "the job floor"), ("module", "client-ip")):
            lines.append(f"| *{name}'s added µs/req, side by side* | | "
                         + " | ".join(f"{side_by_side_added(windows[floor_group], w, chain):+.1f}"
                                      for w in workloads) + " |")
        lines.append("")

    if "module_largest" in chains and "module_xff32" in chains:
        lines += ["## The largest configuration", "",
                  "client-ip's added CPU per request with every address list at its cap and the longest walk, "
                  "against its default configuration fed the same 32-entry `X-Forwarded-For`, both over the "
                  "no-filter chain fed that header, chains one after another (the target, at most "
                  f"{LARGEST_TARGET:.0f}×, {judged(LARGEST_GROUP)}). In brackets, the lowest and highest over the rounds.", "",
                  "| | " + " | ".join(WORKLOAD_TITLES[w] for w in workloads) + " |",
                  "|---|" + "---:|" * len(workloads)]
        for chain in ("none_xff32", "module_xff32", "module_largest"):
            what = "over no filter with the one-entry header" if chain == "none_xff32" else "added µs/req"
            lines.append(f"| {LABELS[chain]}, {what} | "
                         + " | ".join(f"{added[w][chain]:+.1f}" for w in workloads) + " |")
        lines.append("| largest ÷ default | " + " | ".join(
            multiple_cell(added, rounds, w, "module_largest", "module_xff32") for w in workloads) + " |")
        lines.append("")

    if waypoint_group in windows:
        lines += ["## On a waypoint, side by side", "",
                  "client-ip's HTTP filter on the waypoint's structure, against the job floor on the same "
                  f"structure, both over `waypoint_none`, timed (the target, at most {FLOOR_TARGET:.2f}×, {judged(waypoint_group)}). "
                  f"{side_by_side_note}",
                  "",
                  "| chain | " + " | ".join(WORKLOAD_TITLES[w] for w in workloads) + " |",
                  "|---|" + "---:|" * len(workloads),
                  f"| {LABELS['waypoint_module']} | " + " | ".join(
                      side_by_side_cell(windows[waypoint_group], w, "waypoint_module", "waypoint_job_floor")
                      for w in workloads) + " |"]
        for chain in ("waypoint_job_floor", "waypoint_module"):
            lines.append(f"| *{LABELS[chain]}, added µs/req, side by side* | "
                         + " | ".join(f"{side_by_side_added(windows[waypoint_group], w, chain):+.1f}"
                                      for w in workloads) + " |")
        lines.append("")

    waypoint_chains = [c for c in WAYPOINT_MODULE_CHAINS if c in chains]
    if waypoint_chains:
        lines += ["## On a waypoint, against its job floor", "",
                  "client-ip's added CPU per request on the waypoint's structure (over `waypoint_none`) as a "
                  "multiple of the job floor's on the same structure, chains one after another (the target, at "
                  f"most {FLOOR_TARGET:.2f}×, {judged(waypoint_group)}; the waypoint's second chain, trusting an identity, is "
                  "shown here only). The request's `X-Forwarded-For` hides the peer from `source.address`, so "
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
                cells.append(f"{multiple:.2f}×{spread}")
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
        for chain, _, label in [*PROBES, (EXTRA_ENTRY[0], None, EXTRA_ENTRY[1]), (*PEER_FILTER_PROBE[:1], None,
                                                                                     PEER_FILTER_PROBE[1])]:
            if chain not in chains:
                continue
            # The peer-record probe over the peer filter alone, which it runs too.
            reference = PEER_FILTER_PROBE[0] if chain == "probe_peer_record_read" else "empty_wasm"
            lines.append(f"| {label} | " + " | ".join(f"{added[w][chain] - added[w][reference]:+.2f}"
                                                      for w in workloads) + " |")
        parts = ["probe_property_read", "probe_header_read", "probe_header_replace"]
        if all(p in chains for p in parts):
            lines.append("| the job's calls added up: property read + header read + 2 × header replace | "
                         + " | ".join(f"{over_empty[w][parts[0]] + over_empty[w][parts[1]] + 2 * over_empty[w][parts[2]]:+.2f}"
                                      for w in workloads) + " |")
        for floor in floors:
            lines.append(f"| the {floor_names[floor]}, over the empty filter | "
                         + " | ".join(f"{over_empty[w][floor]:+.2f}" for w in workloads) + " |")
        lines.append("")

    size = MODULE.stat().st_size
    verdict = (f"{(SIZE_TARGET_KIB * 1024 - size) / 1024:.1f} KiB under" if size <= SIZE_TARGET_KIB * 1024
               else f"{(size - SIZE_TARGET_KIB * 1024) / 1024:.1f} KiB over")
    lines += ["## Module", "",
              f"- Size: {RAW_MODULE.stat().st_size if RAW_MODULE.exists() else '?'} bytes as compiled, "
              f"{size} bytes ({size / 1024:.1f} KiB) after dropping unused exports and `wasm-opt -Oz` "
              f"(`build/plugin.wasm`); target at most {SIZE_TARGET_KIB} KiB: {verdict}",
              "- Wasm VM memory per worker: " + (f"{memory} bytes of linear memory" if memory is not None else "?")
              + " (the `wasmcustom.client_ip.vm_memory_bytes` gauge) after the runs"
              + (", the largest configuration's three lists loaded in the same VM as the other client-ip chains'"
                 if "module_largest" in chains else ""), ""]
    # What the tables answered, and what was tried: kept by hand beside the
    # bench, from the runs that decided it.
    if FINDINGS.exists():
        lines += [FINDINGS.read_text().rstrip(), ""]
    out.write_text("\n".join(lines))
    print(f"wrote {out} and {chart}")


if __name__ == "__main__":
    main()
