# crossbatch: `make bench` (the main job) and `make test` (everything CI checks).
# Cargo builds into $CARGO_TARGET_DIR when set (CI points it outside the clone).

CARGO ?= cargo
SERVER = $(CARGO) run --quiet --release -p crossbatch-server --
REPORTS ?= reports
# Timed passes per batch size in the offline bench.
REPEAT ?= 3
# The wgpu test runs on the software Vulkan driver in CI, where full kernel autotune
# of every shape would take most of the CI budget.
CUBECL_AUTOTUNE_LEVEL ?= minimal
export CUBECL_AUTOTUNE_LEVEL

.PHONY: all build test bench bench-offline standin deps fmt clippy

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

# Until the server and collector land, the main job is the offline model bench.
bench: standin
	@mkdir -p $(REPORTS)
	@out=$(REPORTS)/offline-bench-$$(date +%Y%m%d-%H%M%S); \
	$(SERVER) bench --repeat $(REPEAT) --json $$out.json | tee $$out.md && \
	echo "report: $$out.md"
