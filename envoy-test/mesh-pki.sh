#!/usr/bin/env bash
# Mesh certificates as istiod issues them. The one place that decides their
# profile: the local mesh (`make run`, `make certs`) and the real-Envoy tests
# (envoy-test/src/pki.rs) both get theirs from here.
#
#   mesh-pki.sh DIR                    the local mesh's, made afresh in DIR
#                                      (envoy-test/run/; never committed)
#   mesh-pki.sh ca DIR                 a mesh CA alone: DIR/ca.pem and its key
#                                      DIR/ca-key.pem
#   mesh-pki.sh issue DIR NAME SAN...  DIR/NAME.pem and DIR/NAME-key.pem,
#                                      signed by DIR's CA; SANs in openssl's
#                                      syntax (URI:spiffe://..., IP:..., DNS:...)
#
# The profile, istiod's (security/pkg/pki in istio/istio):
#   CA        self-signed, subject O=cluster.local, CA:TRUE (critical),
#             keyCertSign and cRLSign (critical)
#   workload  an EC P-256 key and a CSR with an empty subject, as
#             istio-agent sends it; the certificate keeps that empty subject,
#             so its subjectAltName is critical (RFC 5280), CA:FALSE
#             (critical), digitalSignature and keyEncipherment (critical),
#             serverAuth and clientAuth
#
# The local mesh's DIR holds:
#   DIR/mesh/ca.pem                    the mesh CA, like istiod's self-signed root
#   DIR/mesh/<workload>.pem, -key.pem  the workloads' SPIFFE certificates, the
#                                      identity as the only URI SAN
#     gateway   spiffe://cluster.local/ns/istio-system/sa/istio-ingressgateway-service-account
#     sleep     spiffe://cluster.local/ns/default/sa/sleep
#     httpbin   spiffe://cluster.local/ns/default/sa/httpbin (and IP:127.0.0.1,
#               so that curl can verify the sidecar's inbound listener)
#     rogue     spiffe://cluster.local/ns/default/sa/rogue: a valid mesh
#               identity that nobody trusts
#     waypoint  spiffe://cluster.local/ns/default/sa/waypoint: the ambient
#               waypoint (a Gateway named waypoint in default)
#   DIR/tls/cert.pem, key.pem        the ingress gateway's own HTTPS
#                                    certificate, self-signed for localhost
#
# There the CA's key is deleted once the certificates are issued, and the keys
# are readable by all (the Envoy image runs as its own user when docker compose
# mounts them): they belong to a throwaway CA that only this demo trusts.
set -euo pipefail

usage() {
  echo "usage: $0 DIR | $0 ca DIR | $0 issue DIR NAME SAN..." >&2
  exit 2
}
days=30
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

# Runs a command quietly (openssl reports its progress on stderr), showing
# what it said only when it fails.
quiet() {
  local out
  out=$("$@" 2>&1) || { printf '%s\n' "$out" >&2; echo "mesh-pki: $1 failed" >&2; return 1; }
}

make_ca() { # CERT KEY
  quiet openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days "$days" \
    -subj /O=cluster.local \
    -addext "basicConstraints=critical,CA:TRUE" \
    -addext "keyUsage=critical,keyCertSign,cRLSign" \
    -keyout "$2" -out "$1"
}

issue() { # CA CA_KEY OUT_DIR NAME SAN...
  local ca=$1 ca_key=$2 out=$3 name=$4 san
  shift 4
  [ $# -gt 0 ] || { echo "mesh-pki: $name: at least one SAN (the subject is empty)" >&2; return 2; }
  san=$(IFS=,; echo "$*")
  quiet openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj / \
    -keyout "$out/$name-key.pem" -out "$work/$name.csr"
  printf '%s\n' \
    "basicConstraints=critical,CA:FALSE" \
    "keyUsage=critical,digitalSignature,keyEncipherment" \
    "extendedKeyUsage=serverAuth,clientAuth" \
    "subjectAltName=critical,$san" > "$work/$name.ext"
  quiet openssl x509 -req -in "$work/$name.csr" -CA "$ca" -CAkey "$ca_key" \
    -days "$days" -extfile "$work/$name.ext" -out "$out/$name.pem"
}

case ${1:-} in
  ca)
    [ $# -eq 2 ] || usage
    mkdir -p "$2"
    make_ca "$2/ca.pem" "$2/ca-key.pem"
    ;;
  issue)
    [ $# -ge 4 ] || usage
    dir=$2
    shift 2
    issue "$dir/ca.pem" "$dir/ca-key.pem" "$dir" "$@"
    ;;
  *)
    [ $# -eq 1 ] || usage
    mesh=$1/mesh
    tls=$1/tls
    mkdir -p "$mesh" "$tls"
    make_ca "$mesh/ca.pem" "$work/ca-key.pem"
    mesh_issue() { issue "$mesh/ca.pem" "$work/ca-key.pem" "$mesh" "$@"; }
    mesh_issue gateway URI:spiffe://cluster.local/ns/istio-system/sa/istio-ingressgateway-service-account
    mesh_issue sleep URI:spiffe://cluster.local/ns/default/sa/sleep
    mesh_issue httpbin URI:spiffe://cluster.local/ns/default/sa/httpbin IP:127.0.0.1
    mesh_issue rogue URI:spiffe://cluster.local/ns/default/sa/rogue
    mesh_issue waypoint URI:spiffe://cluster.local/ns/default/sa/waypoint
    quiet openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days "$days" \
      -subj /CN=localhost -addext "subjectAltName=DNS:localhost,IP:127.0.0.1" \
      -keyout "$tls/key.pem" -out "$tls/cert.pem"
    chmod 644 "$mesh"/*.pem "$tls"/*.pem
    ;;
esac
