# Shoal: `make run` starts a demo on a local origin; `make test` installs what the tests
# need (the Garage S3 server, rclone, boto3, moto, Azurite and azure-storage-blob,
# the AWS CLI, prometheus_client) and runs everything.

CARGO ?= cargo
GARAGE ?= $(shell command -v garage 2>/dev/null || echo $(HOME)/.cargo/bin/garage)
# cachey installs its binary as `server`.
CACHEY ?= $(HOME)/.cargo/bin/server
DEMO := target/demo-origin/demo

.PHONY: run cluster test test-deps garage-dep disk-check lint bench bench-deps demo-data \
	clean-demo fuzz chaos soak

run: demo-data
	$(CARGO) run --release -- serve --config config/dev.toml

# Three replicas on loopback, one cluster, over the same demo origin.
cluster: demo-data
	$(CARGO) build --release --bin shoal
	deploy/local-cluster.sh target/release/shoal


demo-data:
	@mkdir -p $(DEMO)/models
	@test -f $(DEMO)/hello.txt || echo "Hello from Shoal's demo origin." > $(DEMO)/hello.txt
	@test -f $(DEMO)/models/weights.bin || head -c 20971520 /dev/urandom > $(DEMO)/models/weights.bin
	@echo "demo origin: $(DEMO) (bucket 'demo')"

test-deps: garage-dep
	@command -v rclone >/dev/null 2>&1 || { \
		echo "installing rclone (client-compatibility tests)"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq rclone >/dev/null; }
	@python3 -c "import boto3" 2>/dev/null || { \
		echo "installing boto3 (client-compatibility tests)"; \
		python3 -m pip install -q boto3; }
	@python3 -c "import prometheus_client" 2>/dev/null || { \
		echo "installing prometheus_client (its parser checks /metrics)"; \
		python3 -m pip install -q prometheus_client; }
	@python3 -c "import moto.server, flask" 2>/dev/null || { \
		echo "installing moto (a second S3 server, with versioning, for the fidelity tests)"; \
		python3 -m pip install -q "moto[server]"; }
	@python3 -c "import azure.storage.blob" 2>/dev/null || { \
		echo "installing azure-storage-blob (seeds the Azure origin's tests)"; \
		python3 -m pip install -q azure-storage-blob; }
	@command -v azurite-blob >/dev/null 2>&1 || { \
		echo "installing Azurite, the Azure Storage emulator (Azure origin tests)"; \
		command -v npm >/dev/null 2>&1 || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nodejs npm >/dev/null; }; \
		npm install -g --silent azurite@3; }
	@python3 -c "import awscli" 2>/dev/null || { \
		echo "installing the AWS CLI (client-compatibility tests)"; \
		python3 -m pip install -q awscli; }

garage-dep:
	@if [ ! -x "$(GARAGE)" ]; then \
		echo "installing the garage S3 server (first time only, a few minutes)"; \
		$(CARGO) install garage --locked --version 2.5.0; \
	fi

test: test-deps disk-check lint
	GARAGE_BIN=$(GARAGE) $(CARGO) test --workspace --all-targets
	$(CARGO) test --workspace --doc
	# A short fault run (about 2 minutes) against the debug binary built above.
	GARAGE_BIN=$(GARAGE) CHAOS_SECS=120 $(CARGO) test --bench chaos -- --run

# The fuzz targets (proptest properties named `fuzz_*` over what parses untrusted input:
# SigV4, the S3 request parser, Range, the conditional headers, the internal fill's query).
# `make test` runs each for 2,000 cases; this runs them for FUZZ_CASES (default 200,000).
FUZZ_CASES ?= 200000
fuzz:
	SHOAL_FUZZ_CASES=$(FUZZ_CASES) $(CARGO) test --release --lib fuzz_

# Fault injection and soak (benches/chaos.rs): three replicas, Garage behind a fault proxy,
# every byte checked. Reports go to target/chaos/. Mounting the store tmpfs needs root.
# `make chaos` also fails unless the two replicas left while one is SIGSTOPped keep half
# their rate (the short run in `make test` reports that ratio only: one sample, debug build).
CHAOS_SECS ?= 600
SOAK_SECS ?= 600
CHAOS_REQUIRE_STOP_RATIO ?= 0.5

chaos: garage-dep
	GARAGE_BIN=$(GARAGE) CHAOS_SECS=$(CHAOS_SECS) CHAOS_REQUIRE_STOP_RATIO=$(CHAOS_REQUIRE_STOP_RATIO) \
		$(CARGO) bench --bench chaos

soak: garage-dep
	GARAGE_BIN=$(GARAGE) SOAK_SECS=$(SOAK_SECS) $(CARGO) bench --bench chaos -- --soak

# A full test build needs about 4 GiB in target/. A linker that runs out of disk dies of
# SIGBUS with no word about space, so say it first (a warning: the build may still fit).
disk-check:
	@avail=$$(df -Pk . | awk 'NR==2 {print int($$4 / 1048576)}'); \
	if [ "$${avail:-0}" -lt 6 ]; then \
		echo "warning: only $${avail} GiB free here; a full test build needs about 4 GiB in target/"; \
	fi

lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings
	RUSTDOCFLAGS="-D warnings" $(CARGO) doc --workspace --no-deps
	@# The layers crate builds none of the server: no AWS SDK, figment, clap or prometheus.
	@if $(CARGO) tree -p shoal-layers -e normal --prefix none | grep -E '^(aws-|figment|clap|prometheus)'; then \
		echo "shoal-layers depends on a server crate (above)"; exit 1; fi

bench: test-deps bench-deps
	$(CARGO) bench --bench warm_get --bench singleflight --bench micro
	GARAGE_BIN=$(GARAGE) $(CARGO) bench --bench herd
	GARAGE_BIN=$(GARAGE) CACHEY_BIN=$(CACHEY) $(CARGO) bench --bench peers
	GARAGE_BIN=$(GARAGE) $(CARGO) bench --bench stores

# The peers Shoal is compared with: nginx (proxy_cache + slice), wrk, and cachey.
bench-deps:
	@command -v nginx >/dev/null 2>&1 && command -v wrk >/dev/null 2>&1 || { \
		echo "installing nginx and wrk (benchmarks)"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nginx wrk >/dev/null; }
	@if [ ! -x "$(CACHEY)" ]; then \
		echo "installing cachey, the Rust peer (first time only, several minutes)"; \
		$(CARGO) install cachey --locked --version 0.10.14; \
	fi


clean-demo:
	rm -rf target/demo-origin
