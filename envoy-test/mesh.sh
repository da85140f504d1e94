#!/usr/bin/env bash
# The local mesh behind `make run`: httpbin behind a "sidecar" Envoy, with an
# "ingress gateway" Envoy in front, each path with and without client-ip.
# Runs in the foreground; Ctrl-C stops everything.
#
# Every port can be moved with an environment variable (the tests do, so they
# never clash with a running `make run`); the defaults are the documented ones.
set -euo pipefail

repo=$(cd "$(dirname "$0")/.." && pwd)
VENV=${VENV:-$repo/.venv}
RUN_DIR=${RUN_DIR:-$repo/envoy-test/run}
MODULE=${MODULE:-$repo/build/plugin.wasm}
APP_PORT=${APP_PORT:-8000}
SIDECAR_PORT=${SIDECAR_PORT:-10000}
SIDECAR_PLAIN_PORT=${SIDECAR_PLAIN_PORT:-20000}
SIDECAR_ADMIN_PORT=${SIDECAR_ADMIN_PORT:-15000}
GATEWAY_HTTP_PORT=${GATEWAY_HTTP_PORT:-10080}
GATEWAY_HTTPS_PORT=${GATEWAY_HTTPS_PORT:-10443}
GATEWAY_PLAIN_HTTP_PORT=${GATEWAY_PLAIN_HTTP_PORT:-20080}
GATEWAY_PLAIN_HTTPS_PORT=${GATEWAY_PLAIN_HTTPS_PORT:-20443}
GATEWAY_ADMIN_PORT=${GATEWAY_ADMIN_PORT:-15080}

for tool in "$VENV/bin/envoy" "$VENV/bin/gunicorn" "$MODULE"; do
  [ -e "$tool" ] || { echo "mesh: $tool is missing; start the mesh with 'make run'" >&2; exit 1; }
done
mkdir -p "$RUN_DIR/tls"

# A self-signed certificate for the gateway's HTTPS listeners, made here and
# never committed.
if [ ! -s "$RUN_DIR/tls/cert.pem" ] || [ ! -s "$RUN_DIR/tls/key.pem" ]; then
  openssl req -x509 -newkey rsa:2048 -nodes -days 30 -subj /CN=localhost \
    -addext "subjectAltName=DNS:localhost,IP:127.0.0.1" \
    -keyout "$RUN_DIR/tls/key.pem" -out "$RUN_DIR/tls/cert.pem" 2>/dev/null
fi

# The configs carry the default ports and repo-relative paths; write copies
# with this run's.
render() {
  sed -e "s#\bport_value: 8000\b#port_value: $APP_PORT#" \
      -e "s#\bport_value: 10000\b#port_value: $SIDECAR_PORT#" \
      -e "s#\bport_value: 20000\b#port_value: $SIDECAR_PLAIN_PORT#" \
      -e "s#\bport_value: 15000\b#port_value: $SIDECAR_ADMIN_PORT#" \
      -e "s#\bport_value: 10080\b#port_value: $GATEWAY_HTTP_PORT#" \
      -e "s#\bport_value: 10443\b#port_value: $GATEWAY_HTTPS_PORT#" \
      -e "s#\bport_value: 20080\b#port_value: $GATEWAY_PLAIN_HTTP_PORT#" \
      -e "s#\bport_value: 20443\b#port_value: $GATEWAY_PLAIN_HTTPS_PORT#" \
      -e "s#\bport_value: 15080\b#port_value: $GATEWAY_ADMIN_PORT#" \
      -e "s#filename: build/plugin.wasm#filename: $MODULE#" \
      -e "s#filename: envoy-test/run/tls/#filename: $RUN_DIR/tls/#" \
      "$repo/envoy-test/configs/$1.yaml" > "$RUN_DIR/$1.yaml"
}
render sidecar
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
"$VENV/bin/envoy" -c "$RUN_DIR/sidecar.yaml" --disable-hot-restart -l warning --concurrency 2 &
pids+=($!)
"$VENV/bin/envoy" -c "$RUN_DIR/gateway.yaml" --disable-hot-restart -l warning --concurrency 2 &
pids+=($!)

ready() {
  local deadline=$((SECONDS + 60))
  until curl -fs -o /dev/null "$1"; do
    if [ $SECONDS -ge $deadline ]; then echo "mesh: $2 did not come up ($1)" >&2; exit 1; fi
    sleep 0.2
  done
}
ready "http://127.0.0.1:$APP_PORT/get" httpbin
ready "http://127.0.0.1:$SIDECAR_ADMIN_PORT/ready" "sidecar Envoy"
ready "http://127.0.0.1:$GATEWAY_ADMIN_PORT/ready" "gateway Envoy"

cat <<MSG
mesh: ready
  httpbin (the app)                 127.0.0.1:$APP_PORT
  sidecar    with client-ip         :$SIDECAR_PORT      without: :$SIDECAR_PLAIN_PORT      (admin :$SIDECAR_ADMIN_PORT)
  gateway    HTTP  with client-ip   :$GATEWAY_HTTP_PORT      without: :$GATEWAY_PLAIN_HTTP_PORT
  gateway    HTTPS with client-ip   :$GATEWAY_HTTPS_PORT      without: :$GATEWAY_PLAIN_HTTPS_PORT      (admin :$GATEWAY_ADMIN_PORT)

Try, from another terminal:
  curl --interface 127.0.0.123 http://127.0.0.1:$SIDECAR_PLAIN_PORT/ip     # without: the app sees the proxy, 127.0.0.6
  curl --interface 127.0.0.123 http://127.0.0.1:$SIDECAR_PORT/ip     # with:    the app sees the client, 127.0.0.123
  curl --interface 127.0.0.123 -H 'X-Forwarded-For: 6.6.6.6' -H 'X-Real-IP: 6.6.6.6' 'http://127.0.0.1:$SIDECAR_PORT/headers?show_env=1'
  curl --interface 127.0.0.77 -H 'X-Real-IP: 6.6.6.6' 'http://127.0.0.1:$GATEWAY_HTTP_PORT/headers?show_env=1'
  curl -k --interface 127.0.0.77 https://127.0.0.1:$GATEWAY_HTTPS_PORT/ip
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
