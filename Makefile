# crossbatch: `make bench` (the main job) and `make test` (everything CI checks).
# Cargo builds into $CARGO_TARGET_DIR when set (CI points it outside the clone).

SHELL := /bin/bash
.SHELLFLAGS := -o pipefail -c
CARGO ?= cargo
SERVER = $(CARGO) run --quiet --release -p crossbatch-server --
REPORTS ?= reports
# Timed passes per batch size in the offline bench.
REPEAT ?= 3
# The wgpu test runs on the software Vulkan driver in CI, where full kernel autotune
# of every shape would take most of the CI budget.
CUBECL_AUTOTUNE_LEVEL ?= minimal
export CUBECL_AUTOTUNE_LEVEL

.PHONY: all build test bench standin deps fmt clippy

all: build

deps:
	@scripts/ensure-deps.sh --vulkan

build:
	$(CARGO) build --release --workspace

# The offline stand-in model (built once, cached under ~/.cache/crossbatch).
standin: deps build
	@$(SERVER) model stand-in

fmt:
	$(CARGO) fmt --all --check

clippy:
	$(CARGO) clippy --release --workspace --all-targets -- -D warnings

test: deps fmt clippy standin
	$(CARGO) test --release --workspace

# Until the collector lands, the main job is the offline model bench + the served bench.
bench: standin
	@mkdir -p $(REPORTS)
	@out=$(REPORTS)/bench-$$(date +%Y%m%d-%H%M%S); \
	{ echo "## Offline forward"; $(SERVER) bench --repeat $(REPEAT) --json $$out.json; \
	  echo "## Served (loopback)"; $(SERVER) bench-serve; } | tee $$out.md && \
	echo "report: $$out.md"
