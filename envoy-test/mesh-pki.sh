#!/usr/bin/env bash
# The local mesh's certificates, made afresh in DIR (envoy-test/run/ for
# `make run` and `make certs`; never committed):
#
#   DIR/mesh/ca.pem                  a mesh CA, like istiod's self-signed root
#   DIR/mesh/<workload>.pem, -key.pem  SPIFFE certificates as istiod issues
#                                    them: EC P-256, no subject, the identity
#                                    as the only URI SAN
#     gateway   spiffe://cluster.local/ns/istio-system/sa/istio-ingressgateway-service-account
#     sleep     spiffe://cluster.local/ns/default/sa/sleep
#     httpbin   spiffe://cluster.local/ns/default/sa/httpbin (and IP:127.0.0.1,
#               so that curl can verify the sidecar's inbound listener)
#     rogue     spiffe://cluster.local/ns/default/sa/rogue: a valid mesh
#               identity that nobody trusts
#   DIR/tls/cert.pem, key.pem        the ingress gateway's own HTTPS
#                                    certificate, self-signed for localhost
#
# The CA's key is deleted once the certificates are issued. The keys are
# readable by all (the Envoy image runs as its own user when docker compose
# mounts them): they belong to a throwaway CA that only this demo trusts.
set -euo pipefail

[ $# -eq 1 ] || { echo "usage: $0 DIR" >&2; exit 2; }
dir=$1
mesh=$dir/mesh
tls=$dir/tls
days=30
mkdir -p "$mesh" "$tls"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

new_key() { # ec P-256; a CSR with an empty subject, as istio-agent sends
  openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj / \
    -keyout "$1" -out "$2" 2>/dev/null
}

openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days "$days" \
  -subj /O=cluster.local \
  -addext "basicConstraints=critical,CA:TRUE" \
  -addext "keyUsage=critical,keyCertSign,cRLSign" \
  -keyout "$work/ca-key.pem" -out "$mesh/ca.pem" 2>/dev/null

issue() { # name SAN...
  local name=$1 san
  shift
  san=$(IFS=,; echo "$*")
  new_key "$mesh/$name-key.pem" "$work/$name.csr"
  printf '%s\n' \
    "basicConstraints=critical,CA:FALSE" \
    "keyUsage=critical,digitalSignature,keyEncipherment" \
    "extendedKeyUsage=serverAuth,clientAuth" \
    "subjectAltName=critical,$san" > "$work/$name.ext"
  openssl x509 -req -in "$work/$name.csr" -CA "$mesh/ca.pem" -CAkey "$work/ca-key.pem" \
    -days "$days" -extfile "$work/$name.ext" -out "$mesh/$name.pem" 2>/dev/null
}
issue gateway URI:spiffe://cluster.local/ns/istio-system/sa/istio-ingressgateway-service-account
issue sleep URI:spiffe://cluster.local/ns/default/sa/sleep
issue httpbin URI:spiffe://cluster.local/ns/default/sa/httpbin IP:127.0.0.1
issue rogue URI:spiffe://cluster.local/ns/default/sa/rogue

openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days "$days" \
  -subj /CN=localhost -addext "subjectAltName=DNS:localhost,IP:127.0.0.1" \
  -keyout "$tls/key.pem" -out "$tls/cert.pem" 2>/dev/null

chmod 644 "$mesh"/*.pem "$tls"/*.pem
