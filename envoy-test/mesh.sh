#!/usr/bin/env bash
# The local mesh behind `make run`, as Istio runs it in a cluster: two httpbin
# pods, each behind its sidecar Envoy, with an ingress gateway Envoy and the
# sleep pod's sidecar in front, talking mTLS and HTTP/2 with SPIFFE
# certificates from a mesh CA made at start-up; a load balancer (HAProxy) in
# front of the gateway that sends the client in a PROXY protocol header; the
# plain paths without client-ip that show the problem; and an ambient part
# beside it: a third httpbin pod behind a waypoint Envoy, the node's ztunnel
# played by Envoy, and the gateway sending HBONE to the waypoint. Runs in the
# foreground; Ctrl-C stops everything.
#
# Every port can be moved with an environment variable (the tests do, so they
# never clash with a running `make run`); the defaults are the documented ones.
set -euo pipefail

repo=$(cd "$(dirname "$0")/.." && pwd)
VENV=${VENV:-$repo/.venv}
RUN_DIR=${RUN_DIR:-$repo/envoy-test/run}
MODULE=${MODULE:-$repo/build/plugin.wasm}
APP_PORT=${APP_PORT:-8000}
APP2_PORT=${APP2_PORT:-8001}
SIDECAR_MTLS_PORT=${SIDECAR_MTLS_PORT:-15006}
SIDECAR_PORT=${SIDECAR_PORT:-10000}
SIDECAR_PLAIN_PORT=${SIDECAR_PLAIN_PORT:-20000}
SIDECAR_ADMIN_PORT=${SIDECAR_ADMIN_PORT:-15000}
SIDECAR2_MTLS_PORT=${SIDECAR2_MTLS_PORT:-15106}
SIDECAR2_ADMIN_PORT=${SIDECAR2_ADMIN_PORT:-15100}
SLEEP_OUTBOUND_PORT=${SLEEP_OUTBOUND_PORT:-15001}
SLEEP_ADMIN_PORT=${SLEEP_ADMIN_PORT:-15002}
GATEWAY_HTTP_PORT=${GATEWAY_HTTP_PORT:-10080}
GATEWAY_HTTPS_PORT=${GATEWAY_HTTPS_PORT:-10443}
GATEWAY_PROXY_PROTOCOL_PORT=${GATEWAY_PROXY_PROTOCOL_PORT:-10081}
GATEWAY_PLAIN_HTTP_PORT=${GATEWAY_PLAIN_HTTP_PORT:-20080}
GATEWAY_PLAIN_HTTPS_PORT=${GATEWAY_PLAIN_HTTPS_PORT:-20443}
GATEWAY_ADMIN_PORT=${GATEWAY_ADMIN_PORT:-15080}
LB_PORT=${LB_PORT:-8080}
# The ambient part. Its pods listen on their own addresses: the waypoint and
# httpbin-ambient's ztunnel on HBONE_PORT (15008, on 127.0.0.30 and
# 127.0.0.40), the Services on AMBIENT_SERVICE_PORT (8000, on 127.0.0.80 and
# 127.0.0.81), httpbin-ambient's app on AMBIENT_APP_PORT (8080, on 127.0.0.40).
HBONE_PORT=${HBONE_PORT:-15008}
AMBIENT_SERVICE_PORT=${AMBIENT_SERVICE_PORT:-8000}
AMBIENT_APP_PORT=${AMBIENT_APP_PORT:-8080}
ROGUE_HBONE_PORT=${ROGUE_HBONE_PORT:-15209}
ROGUE_HBONE_TO_POD_PORT=${ROGUE_HBONE_TO_POD_PORT:-15210}
WAYPOINT_ADMIN_PORT=${WAYPOINT_ADMIN_PORT:-15030}
ZTUNNEL_ADMIN_PORT=${ZTUNNEL_ADMIN_PORT:-15020}
GATEWAY_AMBIENT_PORT=${GATEWAY_AMBIENT_PORT:-10082}

for tool in "$VENV/bin/envoy" "$VENV/bin/gunicorn" "$MODULE"; do
  [ -e "$tool" ] || { echo "mesh: $tool is missing; start the mesh with 'make run'" >&2; exit 1; }
done
HAPROXY=$(command -v haproxy) || { echo "mesh: haproxy is missing; start the mesh with 'make run'" >&2; exit 1; }
mkdir -p "$RUN_DIR"

# A fresh mesh CA and the workloads' SPIFFE certificates, as a new cluster's
# istiod would issue them, and the gateway's own HTTPS certificate. Never
# committed.
"$repo/envoy-test/mesh-pki.sh" "$RUN_DIR"

# The configs carry the default ports and repo-relative paths; write copies
# with this run's. Every port is marked first and then replaced once, so a
# port moved onto another's default is not replaced twice.
render() {
  # The ambient pods' ports first, by address (their defaults repeat others'),
  # then every other port by its default.
  sed -E -e "s#address: (127\.0\.0\.8[01]), port_value: 8000\b#address: \1, port_value: =$AMBIENT_SERVICE_PORT#" \
      -e "s#address: 127\.0\.0\.40, port_value: 8080\b#address: 127.0.0.40, port_value: =$AMBIENT_APP_PORT#" \
      -e "s#\"127\.0\.0\.80:8000\"#\"127.0.0.80:$AMBIENT_SERVICE_PORT\"#" \
      -e "s#\"127\.0\.0\.40:8080\"#\"127.0.0.40:$AMBIENT_APP_PORT\"#" \
      -e "s#\"127\.0\.0\.30:15008\"#\"127.0.0.30:$HBONE_PORT\"#" \
      -e "s#upstream_port_override: 15008\b#upstream_port_override: $HBONE_PORT#" \
      "$repo/envoy-test/configs/$1.yaml" |
  sed -E -e 's#\bport_value: ([0-9]+)\b#port_value: @\1@#' \
      -e "s#@8000@#$APP_PORT#" \
      -e "s#@8001@#$APP2_PORT#" \
      -e "s#@15006@#$SIDECAR_MTLS_PORT#" \
      -e "s#@10000@#$SIDECAR_PORT#" \
      -e "s#@20000@#$SIDECAR_PLAIN_PORT#" \
      -e "s#@15000@#$SIDECAR_ADMIN_PORT#" \
      -e "s#@15106@#$SIDECAR2_MTLS_PORT#" \
      -e "s#@15100@#$SIDECAR2_ADMIN_PORT#" \
      -e "s#@15001@#$SLEEP_OUTBOUND_PORT#" \
      -e "s#@15002@#$SLEEP_ADMIN_PORT#" \
      -e "s#@10080@#$GATEWAY_HTTP_PORT#" \
      -e "s#@10443@#$GATEWAY_HTTPS_PORT#" \
      -e "s#@10081@#$GATEWAY_PROXY_PROTOCOL_PORT#" \
      -e "s#@20080@#$GATEWAY_PLAIN_HTTP_PORT#" \
      -e "s#@20443@#$GATEWAY_PLAIN_HTTPS_PORT#" \
      -e "s#@15080@#$GATEWAY_ADMIN_PORT#" \
      -e "s#@10082@#$GATEWAY_AMBIENT_PORT#" \
      -e "s#@15008@#$HBONE_PORT#" \
      -e "s#@15209@#$ROGUE_HBONE_PORT#" \
      -e "s#@15210@#$ROGUE_HBONE_TO_POD_PORT#" \
      -e "s#@15030@#$WAYPOINT_ADMIN_PORT#" \
      -e "s#@15020@#$ZTUNNEL_ADMIN_PORT#" \
      -e "s#@0@#0#" \
      -e "s#port_value: =#port_value: #" \
      -e "s#filename: build/plugin.wasm#filename: $MODULE#" \
      -e "s#filename: envoy-test/run/#filename: $RUN_DIR/#" \
      > "$RUN_DIR/$1.yaml"
  if grep -n 'port_value: @' "$RUN_DIR/$1.yaml" >&2; then
    echo "mesh: envoy-test/configs/$1.yaml has a port mesh.sh does not move" >&2
    exit 1
  fi
}
render sidecar
render sidecar-2
render sleep-sidecar
render gateway
render waypoint
render ztunnel

# The load balancer's config, with this run's two ports.
sed -e "s#^\(  bind 127\.0\.0\.1:\)8080\$#\1$LB_PORT#" \
    -e "s#^\(  server gateway 127\.0\.0\.1:\)10081 #\1$GATEWAY_PROXY_PROTOCOL_PORT #" \
    "$repo/envoy-test/configs/lb.cfg" > "$RUN_DIR/lb.cfg"
if ! grep -q "^  bind 127\.0\.0\.1:$LB_PORT\$" "$RUN_DIR/lb.cfg" ||
   ! grep -q "^  server gateway 127\.0\.0\.1:$GATEWAY_PROXY_PROTOCOL_PORT " "$RUN_DIR/lb.cfg"; then
  echo "mesh: envoy-test/configs/lb.cfg has a port mesh.sh does not move" >&2
  exit 1
fi

# Every process the mesh started, and theirs (gunicorn's workers), goes
# down with it: asked first, killed when still there after 10 s.
pids=()
alive() { # a running process, not a zombie waiting to be reaped
  local stat
  { read -r stat < "/proc/$1/stat"; } 2>/dev/null || return 1
  stat=${stat##*) }
  [ "${stat%% *}" != Z ]
}
any_alive() {
  local pid
  for pid in "$@"; do alive "$pid" && return 0; done
  return 1
}
descendants() {
  local child
  for child in $(ps -o pid= --ppid "$1" 2>/dev/null); do
    echo "$child"
    descendants "$child"
  done
}
stop() {
  trap - EXIT INT TERM HUP
  local all=() pid deadline=$((SECONDS + 10))
  for pid in "${pids[@]}"; do
    all+=("$pid" $(descendants "$pid"))
  done
  if [ ${#all[@]} -gt 0 ]; then
    kill "${pids[@]}" 2>/dev/null || true
    while any_alive "${all[@]}" && [ $SECONDS -lt $deadline ]; do sleep 0.1; done
    for pid in "${all[@]}"; do
      if alive "$pid"; then
        echo "mesh: $pid did not stop in time; killing it" >&2
        kill -KILL "$pid" 2>/dev/null || true
      fi
    done
  fi
  wait 2>/dev/null || true
  echo "mesh: stopped"
}
trap stop EXIT
trap 'exit 0' INT TERM HUP

# httpbin logs each request as it arrived: from the sidecar's 127.0.0.6, with
# the headers the sidecar handed on. gunicorn's control socket is one path in
# $HOME for every instance: the mesh runs three, and leaves nothing there.
for instance in 1 2; do
  port=$APP_PORT
  [ $instance = 1 ] || port=$APP2_PORT
  "$VENV/bin/gunicorn" --bind "127.0.0.1:$port" --workers 2 --log-level warning --no-control-socket \
    --access-logfile - \
    --access-logformat "{\"app\":\"httpbin-$instance\",\"remote_addr\":\"%(h)s\",\"path\":\"%(U)s\",\"status\":%(s)s,\"x_real_ip\":\"%({x-real-ip}i)s\",\"x_forwarded_for\":\"%({x-forwarded-for}i)s\"}" \
    httpbin:app &
  pids+=($!)
done
# httpbin-ambient, the ambient part's app, in its pod at 127.0.0.40: its
# peer is whoever ztunnel connected from (the waypoint, 127.0.0.30).
"$VENV/bin/gunicorn" --bind "127.0.0.40:$AMBIENT_APP_PORT" --workers 2 --log-level warning --no-control-socket \
  --access-logfile - \
  --access-logformat "{\"app\":\"httpbin-ambient\",\"remote_addr\":\"%(h)s\",\"path\":\"%(U)s\",\"status\":%(s)s,\"x_real_ip\":\"%({x-real-ip}i)s\",\"x_forwarded_for\":\"%({x-forwarded-for}i)s\"}" \
  httpbin:app &
pids+=($!)
for proxy in sidecar sidecar-2 sleep-sidecar gateway waypoint ztunnel; do
  "$VENV/bin/envoy" -c "$RUN_DIR/$proxy.yaml" --disable-hot-restart -l warning --concurrency 2 &
  pids+=($!)
done
"$HAPROXY" -db -f "$RUN_DIR/lb.cfg" &
pids+=($!)

ready() {
  local deadline=$((SECONDS + 60))
  until curl -fs -o /dev/null "$1"; do
    if [ $SECONDS -ge $deadline ]; then echo "mesh: $2 did not come up ($1)" >&2; exit 1; fi
    sleep 0.2
  done
}
# A TCP listener on PORT (at ADDRESS, 127.0.0.1 by default), seen in
# /proc/net/tcp without connecting to it (a request would show in the access
# logs).
listening() {
  local deadline=$((SECONDS + 60)) socket address=${3:-127.0.0.1}
  local a b c d
  IFS=. read -r a b c d <<< "$address"
  socket=$(printf '%02X%02X%02X%02X:%04X' "$d" "$c" "$b" "$a" "$1")
  until awk -v socket="$socket" '$2 == socket && $4 == "0A" { found = 1 } END { exit !found }' /proc/net/tcp; do
    if [ $SECONDS -ge $deadline ]; then echo "mesh: $2 did not come up ($address:$1)" >&2; exit 1; fi
    sleep 0.2
  done
}
listening "$APP_PORT" httpbin-1
listening "$APP2_PORT" httpbin-2
listening "$AMBIENT_APP_PORT" httpbin-ambient 127.0.0.40
ready "http://127.0.0.1:$SIDECAR_ADMIN_PORT/ready" "httpbin-1's sidecar"
ready "http://127.0.0.1:$SIDECAR2_ADMIN_PORT/ready" "httpbin-2's sidecar"
ready "http://127.0.0.1:$SLEEP_ADMIN_PORT/ready" "sleep's sidecar"
ready "http://127.0.0.1:$GATEWAY_ADMIN_PORT/ready" "the ingress gateway"
ready "http://127.0.0.1:$WAYPOINT_ADMIN_PORT/ready" "the waypoint"
ready "http://127.0.0.1:$ZTUNNEL_ADMIN_PORT/ready" "ztunnel"
listening "$LB_PORT" "the load balancer"

pki=$RUN_DIR/mesh
cat <<MSG
mesh: ready
  httpbin-1, httpbin-2 (the app)    127.0.0.1:$APP_PORT, 127.0.0.1:$APP2_PORT
  httpbin-1's sidecar with client-ip mTLS :$SIDECAR_MTLS_PORT, plaintext :$SIDECAR_PORT; without: :$SIDECAR_PLAIN_PORT   (admin :$SIDECAR_ADMIN_PORT)
  httpbin-2's sidecar with client-ip mTLS :$SIDECAR2_MTLS_PORT   (admin :$SIDECAR2_ADMIN_PORT)
  sleep's sidecar    outbound       :$SLEEP_OUTBOUND_PORT, from 127.0.0.10 over mTLS to :$SIDECAR_MTLS_PORT   (admin :$SLEEP_ADMIN_PORT)
  ingress gateway    with client-ip HTTP :$GATEWAY_HTTP_PORT   HTTPS :$GATEWAY_HTTPS_PORT   PROXY protocol :$GATEWAY_PROXY_PROTOCOL_PORT   (admin :$GATEWAY_ADMIN_PORT)
                     over mTLS to :$SIDECAR_MTLS_PORT and :$SIDECAR2_MTLS_PORT, one instance per client (hash of X-Real-IP)
                     without: HTTP :$GATEWAY_PLAIN_HTTP_PORT   HTTPS :$GATEWAY_PLAIN_HTTPS_PORT, plain to :$SIDECAR_PLAIN_PORT
  load balancer      TCP :$LB_PORT, from 127.0.0.200 to :$GATEWAY_PROXY_PROTOCOL_PORT with PROXY protocol v2
  ambient: httpbin-ambient (the app)  127.0.0.40:$AMBIENT_APP_PORT, behind the waypoint 127.0.0.30:$HBONE_PORT   (admin :$WAYPOINT_ADMIN_PORT)
                     Services httpbin-ambient 127.0.0.80:$AMBIENT_SERVICE_PORT (client-ip on the waypoint), httpbin-ambient-plain 127.0.0.81:$AMBIENT_SERVICE_PORT (without)
                     ztunnel for sleep (127.0.0.20) and rogue (127.0.0.101); httpbin-ambient's inbound 127.0.0.40:$HBONE_PORT, from the waypoint only   (admin :$ZTUNNEL_ADMIN_PORT)
                     ingress gateway HTTP :$GATEWAY_AMBIENT_PORT, HBONE to the waypoint
                     rogue's own HBONE: with X-Forwarded-For on the CONNECT :$ROGUE_HBONE_PORT, straight to the pod :$ROGUE_HBONE_TO_POD_PORT
  mesh CA and SPIFFE certificates   $pki/

Try, from another terminal:
  curl --interface 127.0.0.10 http://127.0.0.1:$SIDECAR_PLAIN_PORT/ip     # without client-ip: the app sees the proxy, 127.0.0.6
  curl --interface 127.0.0.10 http://127.0.0.1:$SLEEP_OUTBOUND_PORT/ip     # sleep -> httpbin over mTLS: the app sees sleep, 127.0.0.10
  curl --interface 127.0.0.77 -H 'X-Forwarded-For: 6.6.6.6' -H 'X-Real-IP: 6.6.6.6' 'http://127.0.0.1:$GATEWAY_HTTP_PORT/headers?show_env=1'
  curl -k --interface 127.0.0.77 https://127.0.0.1:$GATEWAY_HTTPS_PORT/ip
  curl -i --interface 127.0.0.66 -H 'X-Forwarded-For: 127.0.0.77' http://127.0.0.1:$GATEWAY_HTTP_PORT/ip     # a denied client: 403
  curl -s -o /dev/null -D - --interface 127.0.0.77 http://127.0.0.1:$GATEWAY_HTTP_PORT/get | grep -i x-served-by     # always the same instance
  curl --interface 127.0.0.55 http://127.0.0.1:$LB_PORT/ip     # through the load balancer and PROXY protocol: the app sees 127.0.0.55
  curl --http2 --cacert $pki/ca.pem --cert $pki/rogue.pem --key $pki/rogue-key.pem \\
    --interface 127.0.0.101 -H 'X-Forwarded-For: 6.6.6.6' -H 'X-Real-IP: 6.6.6.6' https://127.0.0.1:$SIDECAR_MTLS_PORT/ip
  curl -s http://127.0.0.1:$SIDECAR_ADMIN_PORT/stats | grep client_ip
  curl --interface 127.0.0.20 http://127.0.0.81:$AMBIENT_SERVICE_PORT/ip     # ambient, sleep -> waypoint without client-ip: the app sees the waypoint, 127.0.0.30
  curl --interface 127.0.0.20 http://127.0.0.80:$AMBIENT_SERVICE_PORT/ip     # ambient, sleep -> waypoint with client-ip: the app sees sleep, 127.0.0.20
  curl --interface 127.0.0.77 -H 'X-Forwarded-For: 6.6.6.6' http://127.0.0.1:$GATEWAY_AMBIENT_PORT/ip     # gateway -> waypoint: the app sees 127.0.0.77
  curl -s http://127.0.0.1:$WAYPOINT_ADMIN_PORT/stats | grep client_ip
Access logs follow, as JSON: a line per request from each proxy and each httpbin, a line per connection
from the load balancer. Ctrl-C stops the mesh.
MSG

# Run until Ctrl-C, or until any part of the mesh dies.
set +e
wait -n
status=$?
# On Ctrl-C Envoy and gunicorn get the signal too and may exit (with status
# 0) before this script runs its trap: that is a normal stop.
if [ $status -eq 0 ]; then exit 0; fi
echo "mesh: a process exited (status $status); stopping" >&2
exit 1
