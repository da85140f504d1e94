#!/usr/bin/env python3
"""`make bench`: what the filter costs, side by side with the alternatives.

One Envoy under test (one worker) holds a listener per chain, all proxying to
a second Envoy that answers with `direct_response`. wrk drives one chain at a
time on loopback, the chains alternating round by round, for two workloads:
keep-alive, and a new connection per request. For each run it records wrk's
throughput and latency percentiles, and the CPU time the Envoy under test
spent (summed over its threads from /proc/<pid>/task/*/schedstat), so the
load generator's own work never counts. Medians over the rounds go to
BENCHMARKS.md, with an SVG chart of the CPU cost per chain.
"""

import argparse
import json
import os
import pathlib
import platform
import re
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
RAW_MODULE = REPO / "target/wasm32-wasip1/release/client_ip.wasm"
EMPTY_FILTER_WAT = REPO / "envoy-test/empty-filter.wat"
# Built from EMPTY_FILTER_WAT into the run's scratch directory by main().
EMPTY_MODULE = None

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

CHAINS = [
    ("none", "no filter (use_remote_address: false)"),
    ("native", "Envoy-native use_remote_address: true"),
    ("lua", "Envoy Lua filter doing the same job"),
    ("empty_wasm", "empty Wasm HTTP filter (the floor)"),
    ("empty_wasm_property", "empty Wasm HTTP filter reading one property"),
    ("module", "client-ip, both roots (documented deployment)"),
    ("http_root", "client-ip, HTTP root alone"),
    ("http_root_quiet", "client-ip, HTTP root alone, writing no header"),
]
WORKLOADS = [
    ("keep-alive", []),
    ("new connection per request", ["-H", "Connection: close"]),
]


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wasm_config(root_id, plugin_json=None, module=MODULE, vm_id="client_ip"):
    config = {
        "name": root_id,
        "root_id": root_id,
        "vm_config": {"vm_id": vm_id, "runtime": "envoy.wasm.runtime.v8",
                      "code": {"local": {"filename": str(module)}}},
        "failure_policy": "FAIL_CLOSED",
    }
    if plugin_json is not None:
        config["configuration"] = {"@type": "type.googleapis.com/google.protobuf.StringValue", "value": plugin_json}
    return config


def chain_listener(chain, port):
    http_filters = []
    network_filters = []
    if chain in ("module", "http_root", "http_root_quiet"):
        # The quiet variant still resolves and publishes filter state, but
        # reads and writes no client header and leaves XFF alone: the
        # difference shows what those header calls cost.
        plugin_json = '{"client_ip_header": "", "xff_mode": "preserve"}' if chain == "http_root_quiet" else "{}"
        http_filters.append({"name": "envoy.filters.http.wasm", "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm",
            "config": wasm_config("client_ip", plugin_json)}})
    if chain == "module":
        network_filters.append({"name": "envoy.filters.network.wasm", "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.network.wasm.v3.Wasm",
            "config": wasm_config("client_ip_peer")}})
    if chain in ("empty_wasm", "empty_wasm_property"):
        # The same three VM entries per stream as the HTTP root, with nothing
        # inside them (what Envoy charges for any Wasm HTTP filter), or with
        # one property read (what the peer lookup costs).
        plugin_json = "read" if chain == "empty_wasm_property" else None
        http_filters.append({"name": "envoy.filters.http.wasm", "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm",
            "config": wasm_config(chain, plugin_json, module=EMPTY_MODULE, vm_id="empty")}})
    if chain == "lua":
        http_filters.append({"name": "envoy.filters.http.lua", "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.lua.v3.Lua",
            "default_source_code": {"inline_string": LUA_SAME_JOB}}})
    http_filters.append({"name": "envoy.filters.http.router", "typed_config": {
        "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}})
    network_filters.append({"name": "envoy.filters.network.http_connection_manager", "typed_config": {
        "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
        "stat_prefix": chain,
        "use_remote_address": chain == "native",
        "route_config": {"virtual_hosts": [{"name": "app", "domains": ["*"],
                                            "routes": [{"match": {"prefix": "/"}, "route": {"cluster": "upstream"}}]}]},
        "http_filters": http_filters}})
    return {"name": chain, "address": {"socket_address": {"address": "127.0.0.1", "port_value": port}},
            "filter_chains": [{"filters": network_filters}]}


def start_envoy(config, workdir, name):
    path = workdir / f"{name}.json"
    path.write_text(json.dumps(config))
    log = open(workdir / f"{name}.log", "w")
    process = subprocess.Popen([ENVOY, "-c", str(path), "--disable-hot-restart", "--concurrency", "1", "-l", "warning"],
                               stdout=log, stderr=subprocess.STDOUT)
    return process


def wait_ready(admin_port, process):
    deadline = time.time() + 60
    while time.time() < deadline:
        if process.poll() is not None:
            sys.exit(f"bench: Envoy exited ({process.returncode})")
        try:
            if urllib.request.urlopen(f"http://127.0.0.1:{admin_port}/ready", timeout=1).status == 200:
                return
        except OSError:
            pass
        time.sleep(0.1)
    sys.exit("bench: Envoy did not become ready")


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


def run_wrk(port, seconds, connections, extra):
    out = subprocess.run(
        ["wrk", "-t1", f"-c{connections}", f"-d{seconds}s", "--latency",
         "-H", "X-Forwarded-For: 203.0.113.7", *extra, f"http://127.0.0.1:{port}/"],
        capture_output=True, text=True, check=True).stdout
    requests = int(re.search(r"(\d+) requests in", out).group(1))
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    latency = {p: to_ms(*re.search(rf"\s{p}%\s+([\d.]+)(us|ms|s)", out).groups()) for p in ("50", "99")}
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    if errors:
        sys.exit(f"bench: {errors.group(1)} failed responses:\n{out}")
    return requests, rps, latency


def vm_memory_bytes(admin_port):
    text = urllib.request.urlopen(f"http://127.0.0.1:{admin_port}/stats?filter=client_ip.vm_memory_bytes").read().decode()
    values = [int(v) for v in re.findall(r"vm_memory_bytes: (\d+)", text)]
    return max(values) if values else None


def svg_chart(results, path):
    """Horizontal bars: Envoy CPU microseconds per request, per chain and workload."""
    width, bar, gap, left = 760, 18, 6, 290
    rows = [(w, c, results[w][c]["cpu_us"]) for w, _ in WORKLOADS for c, _ in CHAINS]
    top = max(v for _, _, v in rows) or 1
    height = 40 + len(rows) * (bar + gap) + len(WORKLOADS) * 24
    lines = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" font-family="sans-serif" font-size="12">',
             f'<text x="10" y="20" font-size="14" font-weight="bold">Envoy CPU per request (µs, median; lower is better)</text>']
    y = 40
    for workload, _ in WORKLOADS:
        lines.append(f'<text x="10" y="{y + 12}" font-weight="bold">{workload}</text>')
        y += 24
        for chain, label in CHAINS:
            value = results[workload][chain]["cpu_us"]
            length = (width - left - 70) * value / top
            colour = "#2a7ab0" if chain.startswith(("module", "http_root")) else "#9aa5b1"
            lines.append(f'<text x="10" y="{y + 13}">{label}</text>')
            lines.append(f'<rect x="{left}" y="{y}" width="{length:.1f}" height="{bar}" fill="{colour}"/>')
            lines.append(f'<text x="{left + length + 6:.1f}" y="{y + 13}">{value:.1f}</text>')
            y += bar + gap
    lines.append("</svg>")
    path.write_text("\n".join(lines) + "\n")


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=int(os.environ.get("BENCH_ROUNDS", 5)))
    parser.add_argument("--seconds", type=int, default=int(os.environ.get("BENCH_SECONDS", 4)))
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--out", default=str(REPO / "BENCHMARKS.md"))
    args = parser.parse_args()

    workdir = pathlib.Path(tempfile.mkdtemp(prefix="client-ip-bench-"))
    global EMPTY_MODULE
    EMPTY_MODULE = workdir / "empty-filter.wasm"
    subprocess.run(["wat2wasm", str(EMPTY_FILTER_WAT), "-o", str(EMPTY_MODULE)], check=True)
    upstream_port, upstream_admin, admin = free_port(), free_port(), free_port()
    ports = {chain: free_port() for chain, _ in CHAINS}
    upstream = start_envoy({
        "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": upstream_admin}}},
        "static_resources": {"listeners": [{
            "name": "direct", "address": {"socket_address": {"address": "127.0.0.1", "port_value": upstream_port}},
            "filter_chains": [{"filters": [{"name": "envoy.filters.network.http_connection_manager", "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
                "stat_prefix": "direct",
                "route_config": {"virtual_hosts": [{"name": "d", "domains": ["*"], "routes": [
                    {"match": {"prefix": "/"}, "direct_response": {"status": 200, "body": {"inline_string": "ok"}}}]}]},
                "http_filters": [{"name": "envoy.filters.http.router", "typed_config": {
                    "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}}]}}]}]}]}}, workdir, "upstream")
    under_test = start_envoy({
        "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": admin}}},
        "static_resources": {
            "listeners": [chain_listener(chain, port) for chain, port in ports.items()],
            "clusters": [{"name": "upstream", "type": "STATIC", "connect_timeout": "1s",
                          "load_assignment": {"cluster_name": "upstream", "endpoints": [{"lb_endpoints": [{"endpoint": {
                              "address": {"socket_address": {"address": "127.0.0.1", "port_value": upstream_port}}}}]}]}}]}},
        workdir, "under_test")
    try:
        wait_ready(upstream_admin, upstream)
        wait_ready(admin, under_test)
        samples = {w: {c: [] for c, _ in CHAINS} for w, _ in WORKLOADS}
        for workload, extra in WORKLOADS:
            for chain, port in ports.items():  # warm-up, not recorded
                run_wrk(port, 1, args.connections, extra)
            for round_ in range(args.rounds):
                order = [c for c, _ in CHAINS]
                order = order[round_ % len(order):] + order[:round_ % len(order)]
                for chain in order:
                    before = cpu_ns(under_test.pid)
                    requests, rps, latency = run_wrk(ports[chain], args.seconds, args.connections, extra)
                    cpu_us = (cpu_ns(under_test.pid) - before) / 1000 / requests
                    samples[workload][chain].append({"rps": rps, "p50": latency["50"], "p99": latency["99"], "cpu_us": cpu_us})
                    print(f"{workload:>28} round {round_ + 1}/{args.rounds} {chain:>9}: "
                          f"{rps:9.0f} req/s  p50 {latency['50']:.3f} ms  p99 {latency['99']:.3f} ms  {cpu_us:6.1f} µs CPU/req",
                          flush=True)
        time.sleep(1.5)  # the filter publishes its gauges once a second
        memory = vm_memory_bytes(admin)
    finally:
        for process in (under_test, upstream):
            process.terminate()
            process.wait()

    results = {w: {c: {k: statistics.median(s[k] for s in runs) for k in ("rps", "p50", "p99", "cpu_us")}
                   for c, runs in chains.items()} for w, chains in samples.items()}
    write_report(args, results, memory)


def write_report(args, results, memory):
    out = pathlib.Path(args.out)
    chart = out.with_name("benchmarks.svg")
    svg_chart(results, chart)
    cpu_model = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")), "?")
    envoy_version = subprocess.run([ENVOY, "--version"], capture_output=True, text=True).stdout.strip().split("version:")[-1].strip()
    lines = [
        "# Benchmarks",
        "",
        "Produced by `make bench` (`envoy-test/bench.py`); regenerate it on your machine to compare.",
        "",
        f"- Machine: {os.cpu_count()} CPUs, {cpu_model}, {platform.system()} {platform.release()}",
        f"- Envoy: {envoy_version}, one worker (`--concurrency 1`)",
        f"- Load: `wrk -t1 -c{args.connections} -d{args.seconds}s --latency -H 'X-Forwarded-For: 203.0.113.7'`, "
        f"{args.rounds} rounds, chains alternating round by round; medians shown",
        "- Upstream: a second Envoy answering with `direct_response`",
        "- CPU: the Envoy under test only, from `/proc/<pid>/task/*/schedstat`, divided by the requests served",
        "- Empty Wasm HTTP filter: `envoy-test/empty-filter.wat`, the HTTP root's three per-stream callbacks "
        "doing nothing (or reading `source.address` once), what Envoy charges any proxy-wasm filter",
        "",
        "![Envoy CPU per request per chain](benchmarks.svg)",
        "",
    ]
    for workload, _ in WORKLOADS:
        base = results[workload]["none"]
        lines += [f"## {workload.capitalize()}", "",
                  "| chain | req/s | vs no filter | p50 ms | p99 ms | Envoy CPU µs/req | added µs/req |",
                  "|---|---:|---:|---:|---:|---:|---:|"]
        for chain, label in CHAINS:
            r = results[workload][chain]
            lines.append(f"| {label} | {r['rps']:.0f} | {r['rps'] / base['rps']:.3f}x | {r['p50']:.3f} | {r['p99']:.3f} | "
                         f"{r['cpu_us']:.1f} | {r['cpu_us'] - base['cpu_us']:+.1f} |")
        lines.append("")
    lines += ["## Module", "",
              f"- Size: {RAW_MODULE.stat().st_size if RAW_MODULE.exists() else '?'} bytes as compiled, "
              f"{MODULE.stat().st_size} bytes after dropping unused exports and `wasm-opt -Oz` (`build/plugin.wasm`)",
              f"- Wasm VM memory per worker: {memory if memory is not None else '?'} bytes of linear memory "
              "(the `wasmcustom.client_ip.vm_memory_bytes` gauge) after the runs", ""]
    out.write_text("\n".join(lines))
    print(f"wrote {out} and {chart}")


if __name__ == "__main__":
    main()
