#!/usr/bin/env bash
# The local mesh behind `make run`, as Istio runs it in a cluster: httpbin
# behind its sidecar Envoy, with an ingress gateway Envoy and the sleep pod's
# sidecar in front, talking mTLS and HTTP/2 with SPIFFE certificates from a
# mesh CA made at start-up; and the plain paths without client-ip that show
# the problem. Runs in the foreground; Ctrl-C stops everything.
#
# Every port can be moved with an environment variable (the tests do, so they
# never clash with a running `make run`); the defaults are the documented ones.
set -euo pipefail

repo=$(cd "$(dirname "$0")/.." && pwd)
VENV=${VENV:-$repo/.venv}
RUN_DIR=${RUN_DIR:-$repo/envoy-test/run}
MODULE=${MODULE:-$repo/build/plugin.wasm}
APP_PORT=${APP_PORT:-8000}
SIDECAR_MTLS_PORT=${SIDECAR_MTLS_PORT:-15006}
SIDECAR_PORT=${SIDECAR_PORT:-10000}
SIDECAR_PLAIN_PORT=${SIDECAR_PLAIN_PORT:-20000}
SIDECAR_ADMIN_PORT=${SIDECAR_ADMIN_PORT:-15000}
SLEEP_OUTBOUND_PORT=${SLEEP_OUTBOUND_PORT:-15001}
SLEEP_ADMIN_PORT=${SLEEP_ADMIN_PORT:-15002}
GATEWAY_HTTP_PORT=${GATEWAY_HTTP_PORT:-10080}
GATEWAY_HTTPS_PORT=${GATEWAY_HTTPS_PORT:-10443}
GATEWAY_PLAIN_HTTP_PORT=${GATEWAY_PLAIN_HTTP_PORT:-20080}
GATEWAY_PLAIN_HTTPS_PORT=${GATEWAY_PLAIN_HTTPS_PORT:-20443}
GATEWAY_ADMIN_PORT=${GATEWAY_ADMIN_PORT:-15080}

for tool in "$VENV/bin/envoy" "$VENV/bin/gunicorn" "$MODULE"; do
  [ -e "$tool" ] || { echo "mesh: $tool is missing; start the mesh with 'make run'" >&2; exit 1; }
done
mkdir -p "$RUN_DIR"

# A fresh mesh CA and the workloads' SPIFFE certificates, as a new cluster's
# istiod would issue them, and the gateway's own HTTPS certificate. Never
# committed.
"$repo/envoy-test/mesh-pki.sh" "$RUN_DIR"

# The configs carry the default ports and repo-relative paths; write copies
# with this run's. Every port is marked first and then replaced once, so a
# port moved onto another's default is not replaced twice.
render() {
  sed -E -e 's#\bport_value: ([0-9]+)\b#port_value: @\1@#' \
      -e "s#@8000@#$APP_PORT#" \
      -e "s#@15006@#$SIDECAR_MTLS_PORT#" \
      -e "s#@10000@#$SIDECAR_PORT#" \
      -e "s#@20000@#$SIDECAR_PLAIN_PORT#" \
      -e "s#@15000@#$SIDECAR_ADMIN_PORT#" \
      -e "s#@15001@#$SLEEP_OUTBOUND_PORT#" \
      -e "s#@15002@#$SLEEP_ADMIN_PORT#" \
      -e "s#@10080@#$GATEWAY_HTTP_PORT#" \
      -e "s#@10443@#$GATEWAY_HTTPS_PORT#" \
      -e "s#@20080@#$GATEWAY_PLAIN_HTTP_PORT#" \
      -e "s#@20443@#$GATEWAY_PLAIN_HTTPS_PORT#" \
      -e "s#@15080@#$GATEWAY_ADMIN_PORT#" \
      -e "s#@0@#0#" \
      -e "s#filename: build/plugin.wasm#filename: $MODULE#" \
      -e "s#filename: envoy-test/run/#filename: $RUN_DIR/#" \
      "$repo/envoy-test/configs/$1.yaml" > "$RUN_DIR/$1.yaml"
  if grep -n 'port_value: @' "$RUN_DIR/$1.yaml" >&2; then
    echo "mesh: envoy-test/configs/$1.yaml has a port mesh.sh does not move" >&2
    exit 1
  fi
}
render sidecar
render sleep-sidecar
render gateway

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

"$VENV/bin/gunicorn" --bind "127.0.0.1:$APP_PORT" --workers 2 --log-level warning httpbin:app &
pids+=($!)
for proxy in sidecar sleep-sidecar gateway; do
  "$VENV/bin/envoy" -c "$RUN_DIR/$proxy.yaml" --disable-hot-restart -l warning --concurrency 2 &
  pids+=($!)
done

ready() {
  local deadline=$((SECONDS + 60))
  until curl -fs -o /dev/null "$1"; do
    if [ $SECONDS -ge $deadline ]; then echo "mesh: $2 did not come up ($1)" >&2; exit 1; fi
    sleep 0.2
  done
}
ready "http://127.0.0.1:$APP_PORT/get" httpbin
ready "http://127.0.0.1:$SIDECAR_ADMIN_PORT/ready" "httpbin's sidecar"
ready "http://127.0.0.1:$SLEEP_ADMIN_PORT/ready" "sleep's sidecar"
ready "http://127.0.0.1:$GATEWAY_ADMIN_PORT/ready" "the ingress gateway"

pki=$RUN_DIR/mesh
cat <<MSG
mesh: ready
  httpbin (the app)                 127.0.0.1:$APP_PORT
  httpbin's sidecar  with client-ip mTLS :$SIDECAR_MTLS_PORT, plaintext :$SIDECAR_PORT; without: :$SIDECAR_PLAIN_PORT   (admin :$SIDECAR_ADMIN_PORT)
  sleep's sidecar    outbound       :$SLEEP_OUTBOUND_PORT, from 127.0.0.10 over mTLS to :$SIDECAR_MTLS_PORT   (admin :$SLEEP_ADMIN_PORT)
  ingress gateway    over mTLS to :$SIDECAR_MTLS_PORT    HTTP :$GATEWAY_HTTP_PORT   HTTPS :$GATEWAY_HTTPS_PORT   (admin :$GATEWAY_ADMIN_PORT)
                     plain to :$SIDECAR_PLAIN_PORT       HTTP :$GATEWAY_PLAIN_HTTP_PORT   HTTPS :$GATEWAY_PLAIN_HTTPS_PORT
  mesh CA and SPIFFE certificates   $pki/

Try, from another terminal:
  curl --interface 127.0.0.10 http://127.0.0.1:$SIDECAR_PLAIN_PORT/ip     # without client-ip: the app sees the proxy, 127.0.0.6
  curl --interface 127.0.0.10 http://127.0.0.1:$SLEEP_OUTBOUND_PORT/ip     # sleep -> httpbin over mTLS: the app sees sleep, 127.0.0.10
  curl --interface 127.0.0.77 -H 'X-Forwarded-For: 6.6.6.6' -H 'X-Real-IP: 6.6.6.6' 'http://127.0.0.1:$GATEWAY_HTTP_PORT/headers?show_env=1'
  curl -k --interface 127.0.0.77 https://127.0.0.1:$GATEWAY_HTTPS_PORT/ip
  curl --http2 --cacert $pki/ca.pem --cert $pki/rogue.pem --key $pki/rogue-key.pem \\
    --interface 127.0.0.101 -H 'X-Forwarded-For: 6.6.6.6' -H 'X-Real-IP: 6.6.6.6' https://127.0.0.1:$SIDECAR_MTLS_PORT/ip
  curl -s http://127.0.0.1:$SIDECAR_ADMIN_PORT/stats | grep client_ip
Access logs follow (JSON, one line per request and proxy). Ctrl-C stops the mesh.
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
