# client-ip: build, test and run the filter locally.
#
#   make build   the release module at build/plugin.wasm
#   make test    everything: lint, unit and property tests, wasm32 tests under
#                Node, the real-Envoy tests, fuzzing, and the docs check
#   make run     the local mesh demo (docs/local-mesh.md walks through it)
#   make cli     the client-ip command at target/release/client-ip

SHELL := /bin/bash
.DEFAULT_GOAL := build

WASM_TARGET := wasm32-wasip1
MODULE := build/plugin.wasm
RAW_MODULE := target/$(WASM_TARGET)/release/client_ip.wasm
VENV := .venv
ENVOY := $(VENV)/bin/envoy
# wasm-opt 108 (Debian) needs the features rustc emits by default spelled out.
WASM_FEATURES := --enable-bulk-memory --enable-sign-ext --enable-mutable-globals \
	--enable-nontrapping-float-to-int
WASM_OPT_FLAGS := -Oz $(WASM_FEATURES) --strip-debug --strip-producers
# The callbacks the filter implements. The SDK exports every proxy_on_*; Envoy
# skips a callback the module does not export, so dropping the rest saves a VM
# entry per stream (on_done, on_log, response headers, ...) and their code.
# envoy-test/tests/exports.rs checks the module exports exactly these.
KEEP_EXPORTS := memory _initialize proxy_abi_version_0_2_1 proxy_on_memory_allocate \
	proxy_on_vm_start proxy_on_configure proxy_on_tick proxy_on_context_create \
	proxy_on_new_connection proxy_on_request_headers proxy_on_delete

RUST_SOURCES := Cargo.toml Cargo.lock $(shell find src -name '*.rs')
# Debian packages, per target: each target installs what it uses (apt_install
# below), when missing. `make deps` installs them all.
APT_BUILD := binaryen
# python3 -m venv needs ensurepip, a package of its own on Debian.
APT_VENV := python3-venv
APT_IMAGE = $(if $(filter buildah,$(CONTAINER_TOOL)),buildah)
# wasm-bindgen-test-runner runs the wasm32 tests under Node.
APT_TEST_WASM := nodejs
# curl and haproxy for the mesh (tests/mesh.rs), openssl for its certificates
# and the identity tests' (mesh-pki.sh, src/pki.rs), docker-registry and the
# image tools for the image round trip (tests/image.rs runs make push).
APT_TEST_ENVOY = curl docker-registry haproxy openssl $(APT_IMAGE)
APT_RUN := curl haproxy openssl
APT_CERTS := openssl
# wrk for HTTP/1.1, h2load (nghttp2-client) for HTTP/2, wat2wasm (wabt) for
# the hand-written probe filters, valgrind (callgrind) for the counted phase.
APT_BENCH := nghttp2-client valgrind wabt wrk
APT_PACKAGES = $(sort $(APT_BUILD) buildah $(APT_VENV) $(APT_TEST_WASM) $(APT_TEST_ENVOY) $(APT_RUN) $(APT_CERTS) $(APT_BENCH))
export PATH := $(HOME)/.cargo/bin:$(PATH)

.PHONY: build cli image push bench fuzz soak run certs test test-fuzz test-unit test-wasm test-envoy test-manifests test-docs lint deps deps-apt deps-venv clean

build: $(MODULE)

$(MODULE): $(RUST_SOURCES)
	@$(call apt_install,$(APT_BUILD))
	rustup target add $(WASM_TARGET) >/dev/null
	cargo build --release --locked --target $(WASM_TARGET) --lib
	mkdir -p build
	printf '{"name":"%s","export":"%s","root":true}\n' $(foreach e,$(KEEP_EXPORTS),$(e) $(e)) \
	  | paste -sd, | sed 's/.*/[&]/' > build/exports.json
	wasm-metadce $(WASM_FEATURES) -f build/exports.json $(RAW_MODULE) -o build/plugin.dce.wasm >/dev/null
	wasm-opt $(WASM_OPT_FLAGS) build/plugin.dce.wasm -o $@
	rm -f build/plugin.dce.wasm
	@echo "built $@ ($$(stat -c %s $@) bytes)"

# The client-ip command (check, explain, resolve), native; `cargo install
# --path .` installs the same.
CLI := target/release/client-ip
cli: $(CLI)
$(CLI): $(RUST_SOURCES)
	cargo build --release --locked --bin client-ip

# ---------------------------------------------------------------- deps
deps: deps-apt deps-venv

# Debian packages, installed only when missing: $(call apt_install,PACKAGES)
# at the top of a recipe.
apt_install = missing=""; \
	for pkg in $(1); do dpkg -s $$pkg >/dev/null 2>&1 || missing="$$missing $$pkg"; done; \
	if [ -n "$$missing" ]; then \
	  echo "installing:$$missing"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing; \
	fi

# Every Debian package any target uses.
deps-apt:
	@$(call apt_install,$(APT_PACKAGES))

# Envoy (with its V8 Wasm runtime) and httpbin in a project-local venv.
deps-venv: $(VENV)/.installed
$(VENV)/.installed: envoy-test/requirements.txt
	@$(call apt_install,$(APT_VENV))
	python3 -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --disable-pip-version-check -r envoy-test/requirements.txt
	touch $@

# ---------------------------------------------------------------- tests
test: lint test-unit test-wasm test-envoy test-manifests test-fuzz test-docs

lint:
	cargo fmt --all --check
	cargo clippy --locked --workspace --all-targets -- -D warnings
	@# The ABI callbacks exist only in the wasm32 build.
	rustup target add $(WASM_TARGET) >/dev/null
	cargo clippy --locked -p client-ip --release --target $(WASM_TARGET) -- -D warnings

test-unit:
	cargo test --locked -p client-ip

# The logic tests compiled to wasm32 and run under Node by wasm-bindgen-test.
WASM_BINDGEN_VERSION = $(shell sed -n '/^name = "wasm-bindgen"$$/{n;s/version = "\(.*\)"/\1/p}' Cargo.lock)
test-wasm:
	@$(call apt_install,$(APT_TEST_WASM))
	rustup target add wasm32-unknown-unknown >/dev/null
	@if [ "$$(wasm-bindgen-test-runner --version 2>/dev/null | awk '{print $$2}')" != "$(WASM_BINDGEN_VERSION)" ]; then \
	  cargo install --quiet wasm-bindgen-cli --version "=$(WASM_BINDGEN_VERSION)"; \
	fi
	CARGO_TARGET_WASM32_UNKNOWN_UNKNOWN_RUNNER=wasm-bindgen-test-runner \
	  cargo test --locked -p client-ip --no-default-features --target wasm32-unknown-unknown --test rules

test-envoy: $(MODULE) $(CLI) deps-venv
	@$(call apt_install,$(APT_TEST_ENVOY))
	ENVOY_BIN=$(abspath $(ENVOY)) PLUGIN_WASM=$(abspath $(MODULE)) CLIENT_IP_BIN=$(abspath $(CLI)) \
	  cargo test --locked -p envoy-test -- --test-threads 2

# wasmplugin/ against Istio's schemas (WasmPlugin, DestinationRule,
# EnvoyFilter) and real Envoy, the EnvoyFilters' RBAC and rate limit run
# after the module. The schemas are npm's @kubernetes-models/istio, pinned in
# envoy-test/istio-schema/package-lock.json and installed there (npm ci,
# Node.js and npm from Debian when missing) the first time: generated from
# Istio 1.29.2's CRDs, its WasmPlugin schema is the one Istio 1.27 to 1.30
# ship. ISTIO_CRD=<path> to another WasmPlugin CRD (alone, or in a
# customresourcedefinitions.gen.yaml) validates against that instead, and the
# DestinationRule against the file's own DestinationRule CRD when it has one.
ISTIO_CRD ?=
ISTIO_SCHEMA := envoy-test/istio-schema
ISTIO_SCHEMA_INSTALLED := $(ISTIO_SCHEMA)/node_modules/.package-lock.json
test-manifests: $(MODULE) deps-venv $(ISTIO_SCHEMA_INSTALLED)
	@echo "test-manifests: Istio's WasmPlugin schema from $(if $(ISTIO_CRD),$(ISTIO_CRD),@kubernetes-models/istio ($(ISTIO_SCHEMA)))"
	ISTIO_CRD=$(if $(ISTIO_CRD),$(abspath $(ISTIO_CRD))) ENVOY_BIN=$(abspath $(ENVOY)) PLUGIN_WASM=$(abspath $(MODULE)) \
	  $(VENV)/bin/pytest -q -p no:cacheprovider envoy-test/test_manifests.py

$(ISTIO_SCHEMA_INSTALLED): $(ISTIO_SCHEMA)/package.json $(ISTIO_SCHEMA)/package-lock.json
	@command -v npm >/dev/null || { echo "installing: nodejs npm"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nodejs npm; }
	npm ci --prefix $(ISTIO_SCHEMA) --ignore-scripts --no-audit --no-fund --loglevel=error
	touch $@

# Every shell block of README.md and docs/ run by a test or marked not-run,
# every relative link and anchor resolving (envoy-test/check_docs.py, after
# its own tests).
test-docs:
	python3 -B envoy-test/test_check_docs.py
	python3 -B envoy-test/check_docs.py

clean:
	rm -rf build target $(VENV)

# ---------------------------------------------------------------- image
# The module as an OCI image for Istio's WasmPlugin: one layer, a tar.gz
# holding /plugin.wasm. `make push` prints the manifest digest to pin.
IMAGE ?= localhost/client-ip:dev
TLS_VERIFY ?= true
# buildah needs no daemon; set CONTAINER_TOOL=docker or podman to use yours.
CONTAINER_TOOL ?= buildah
IMAGE_CONTEXT := build/image
BUILDAH := buildah --root $(abspath build/containers/storage) \
	--runroot $(abspath build/containers/run) --storage-driver vfs

image: $(MODULE)
	@$(call apt_install,$(APT_IMAGE))
	rm -rf $(IMAGE_CONTEXT) && mkdir -p $(IMAGE_CONTEXT) && cp $(MODULE) $(IMAGE_CONTEXT)/plugin.wasm
ifeq ($(CONTAINER_TOOL),buildah)
	$(BUILDAH) build --quiet --isolation chroot --timestamp 0 --identity-label=false \
	  --omit-history -f Containerfile -t $(IMAGE) $(IMAGE_CONTEXT)
else
	$(CONTAINER_TOOL) build -f Containerfile -t $(IMAGE) $(IMAGE_CONTEXT)
endif

push: image
ifeq ($(CONTAINER_TOOL),buildah)
	$(BUILDAH) push --quiet --tls-verify=$(TLS_VERIFY) --digestfile build/image.digest $(IMAGE) docker://$(IMAGE)
else ifeq ($(CONTAINER_TOOL),podman)
	podman push --tls-verify=$(TLS_VERIFY) --digestfile build/image.digest $(IMAGE)
else
	$(CONTAINER_TOOL) push $(IMAGE) | tee build/push.log
	sed -n 's/.*digest: \(sha256:[0-9a-f]*\).*/\1/p' build/push.log > build/image.digest
endif
	@echo "pushed $(IMAGE)"
	@echo "manifest digest: $$(cat build/image.digest)"
	@echo "WasmPlugin: url: oci://$(IMAGE)  sha256: $$(cut -d: -f2 build/image.digest)"

# ---------------------------------------------------------------- fuzz
# cargo-fuzz (libFuzzer, nightly) on the address and Forwarded parsers, the config parser,
# identity matching, access lists and whole resolution; FUZZ_SECONDS per target. New inputs go to
# build/fuzz/; the seeds in fuzz/corpus/ are only read. A crash fails the
# run and leaves its input in build/fuzz/artifacts/.
FUZZ_SECONDS ?= 60
FUZZ_TARGETS := forwarded_entry forwarded_header plugin_config resolution peer_identity access_lists waypoint_record filter_state_arguments
fuzz:
	@rustup toolchain list | grep -q '^nightly' || rustup toolchain install nightly --profile minimal
	@cargo +nightly fuzz --version >/dev/null 2>&1 || cargo +nightly install --quiet cargo-fuzz
	@set -o pipefail; for target in $(FUZZ_TARGETS); do \
	  mkdir -p build/fuzz/corpus/$$target build/fuzz/artifacts/$$target; \
	  echo "fuzz: $$target for $(FUZZ_SECONDS) s"; \
	  (cd fuzz && cargo +nightly fuzz run $$target ../build/fuzz/corpus/$$target corpus/$$target -- \
	    -max_total_time=$(FUZZ_SECONDS) -artifact_prefix=../build/fuzz/artifacts/$$target/ -print_final_stats=1 2>&1 \
	    | grep -E "^(#[0-9]+ +DONE|Done [0-9]+ runs|stat::number_of_executed_units|==[0-9]+==ERROR|SUMMARY|thread .* panicked)") \
	    || exit 1; \
	done

# A short fuzzing run for every target, part of `make test`.
test-fuzz:
	$(MAKE) --no-print-directory fuzz FUZZ_SECONDS=10

# ---------------------------------------------------------------- soak
# The adversarial soak at length; `make test` runs a short one.
SOAK_REQUESTS ?= 40000
soak: $(MODULE) deps-venv
	SOAK_REQUESTS=$(SOAK_REQUESTS) ENVOY_BIN=$(abspath $(ENVOY)) PLUGIN_WASM=$(abspath $(MODULE)) \
	  cargo test --locked -p envoy-test --test soak -- --nocapture

# ---------------------------------------------------------------- bench
# Not part of `make test`: timings belong here. Writes BENCHMARKS.md and
# benchmarks.svg (about 45 minutes on 2 CPUs). BENCH_ROUNDS, BENCH_SECONDS,
# BENCH_WINDOWS (the side-by-side phase) and BENCH_COUNT_REQUESTS (the
# counted phase under valgrind, whose instruction counts judge the floors'
# targets) shorten or lengthen it; BENCH_CHAINS (names or patterns, see
# `envoy-test/bench.py --list`) and BENCH_WORKLOADS (keep-alive,
# new-connection, http2) run part of it; BENCH_OUT writes the report (and the
# chart beside it) elsewhere. wrk drives HTTP/1.1, h2load (nghttp2-client)
# HTTP/2.
bench: $(MODULE) deps-venv
	@$(call apt_install,$(APT_BENCH))
	ENVOY_BIN=$(abspath $(ENVOY)) PLUGIN_WASM=$(abspath $(MODULE)) $(VENV)/bin/python envoy-test/bench.py

# ---------------------------------------------------------------- demo
run: $(MODULE) deps-venv
	@$(call apt_install,$(APT_RUN))
	envoy-test/mesh.sh

# A fresh mesh CA, the workloads' SPIFFE certificates and the gateway's HTTPS
# certificate in envoy-test/run/, for running the configs without `make run`
# (docker compose, func-e). `make run` makes new ones at every start.
certs:
	@$(call apt_install,$(APT_CERTS))
	envoy-test/mesh-pki.sh envoy-test/run
