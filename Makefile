# crossbatch: `make bench` (the main job) and `make test` (everything CI checks).
# Cargo builds into $CARGO_TARGET_DIR when set (CI points it outside the clone).

SHELL := /bin/bash
.SHELLFLAGS := -o pipefail -c
CARGO ?= cargo
SERVER = $(CARGO) run --quiet --release -p crossbatch-server --
REPORTS ?= reports
# Timed passes per batch size in the offline bench.
REPEAT ?= 3
REPEAT_GPU ?= 10
# The wgpu test runs on the software Vulkan driver in CI, where full kernel autotune
# of every shape would take most of the CI budget.
CUBECL_AUTOTUNE_LEVEL ?= minimal
export CUBECL_AUTOTUNE_LEVEL

.PHONY: all build test test-k8s test-compose bench bench-replicas bench-baseline bench-gpu bench-model bench-compose standin deps fmt clippy experiment experiments

# `make bench` settings (see scripts/bench.sh): e.g. make bench SWEEP="batch=1,8,32 conc=1,4,16"
export NAME SWEEP MODEL BACKEND DTYPE MAX_BATCH MAX_BATCH_TOKENS BATCH_TIMEOUT_MS POLICY WORKLOAD WARMUP REPORTS
# Many servers on loopback (see scripts/bench.sh): make bench SERVERS=3 BALANCE=round-robin
export SERVERS BALANCE KILL_SERVER_AFTER
# `make bench-gpu` settings (see scripts/bench-gpu.sh): e.g. make bench-gpu DTYPES=f16
export DTYPES BATCHES SERVED_SWEEP REPEAT
# `make bench-compose` settings (see scripts/compose.sh; SERVERS, BALANCE and
# KILL_SERVER_AFTER too): e.g. make bench-compose SERVERS=3 DRIVERS=2 LB=envoy
export DRIVERS BATCH CONC PAIRS OFFLINE LB KILL_DRIVER_AFTER

all: build

deps:
	@scripts/ensure-deps.sh --vulkan --browser --promtool

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
	promtool check config deploy/prometheus/prometheus.yml
	@$(MAKE) --no-print-directory test-k8s
	$(CARGO) test --release --workspace
	@$(MAKE) --no-print-directory test-compose

# Kubernetes manifests (deploy/k8s), offline: rendered with kubectl kustomize, every
# object validated against the Kubernetes schemas (kubernetes-validate, in a venv it
# makes under ~/.cache/crossbatch), the objects checked against each other and the
# HPA's prometheus-adapter query run by promtool on synthetic series. No cluster.
test-k8s:
	@scripts/ensure-deps.sh --promtool
	@scripts/check-k8s.sh

# Containers: 3 drivers in one coordinated run, then one driver killed mid-run; 3 server
# replicas and 2 drivers balancing over them with one replica killed mid-run; then the
# 3 replicas behind Envoy (its config validated by envoy itself first).
# Needs a Docker engine with docker-compose; CROSSBATCH_SKIP_COMPOSE=1 skips it
# (said loudly) on a machine without one. CI does not skip it.
test-compose: build standin
	@if [[ "$${CROSSBATCH_SKIP_COMPOSE:-}" == 1 ]]; then \
	    echo "test-compose: SKIPPED (CROSSBATCH_SKIP_COMPOSE=1)"; \
	else \
	    env -u SERVERS -u DRIVERS -u BATCH -u CONC -u PAIRS -u NAME -u LB -u BALANCE \
	        -u KILL_SERVER_AFTER -u KILL_DRIVER_AFTER scripts/test-compose.sh; \
	fi

# The main job: collector + server + driver on loopback, one run, reports/<name>-<ts>.md
# with its SVG plots and JSON (seed config: batch 8, concurrency 1, 800 pairs; server
# max_batch 96, timeout 20 ms).
bench: standin
	@scripts/bench.sh

# Three replicas on loopback under p2c, round-robin and pinned, then one killed with
# SIGKILL mid-run: calls per replica and P95 before/during/after, in
# reports/replicas-<ts>.md (the README's "Many servers" figures).
bench-replicas: standin
	@scripts/bench-replicas.sh

# The wgpu backend on a hardware GPU, f32 and f16: offline forward at batch 8/32/96/128
# and the served run with its report per dtype. Refuses on a software-only machine.
# Full kernel autotune here: these are the figures that get quoted.
bench-gpu: export CUBECL_AUTOTUNE_LEVEL = balanced
bench-gpu: standin
	@REPEAT=$(REPEAT_GPU) scripts/bench-gpu.sh

# N server replicas and M coordinated drivers in containers (docker-compose), report in
# ./reports: make bench-compose SERVERS=3 DRIVERS=2 [LB=envoy] [KILL_SERVER_AFTER=10]
bench-compose: build standin
	@scripts/compose.sh

# crossbatch's CPU forward beside PyTorch's CrossEncoder.predict, same machine, same run:
# one table in reports/baseline-<ts>.md. Creates .baseline/venv (pip, several GB) once.
bench-baseline: build standin
	@scripts/bench-baseline.sh

# The model alone (offline forward passes per batch size) and the served throughput
# and overheads on loopback, as text.
bench-model: standin
	@mkdir -p $(REPORTS)
	@out=$(REPORTS)/model-$$(date +%Y%m%d-%H%M%S); \
	{ echo "## Offline forward"; $(SERVER) bench --repeat $(REPEAT) --json $$out.json; \
	  echo "## Served (loopback)"; $(SERVER) bench-serve; } | tee $$out.md && \
	echo "report: $$out.md"

# Experiments (experiments/*.toml): every variant on a fresh server, one report with the
# variants side by side, in reports/<name>-<timestamp>/. make experiment E=dynamic-batching
# [PAIRS=200]; make experiments runs them all. MODEL= overrides the model of variants
# that set none.
BIN_DIR = $${CARGO_TARGET_DIR:-target}/release
EXPERIMENT_FLAGS = $(if $(PAIRS),--pairs $(PAIRS)) $(if $(MODEL),--model $(MODEL)) --out $(REPORTS)

experiment: build standin
	@if [[ -z "$(E)" ]]; then echo "usage: make experiment E=NAME [PAIRS=N]; experiments:"; \
	    $(BIN_DIR)/crossbatch-experiment list; exit 2; fi
	@$(BIN_DIR)/crossbatch-experiment run $(E) $(EXPERIMENT_FLAGS)

experiments: build standin
	@rc=0; for f in experiments/*.toml; do \
	    $(BIN_DIR)/crossbatch-experiment run "$$f" $(EXPERIMENT_FLAGS) || rc=1; \
	done; exit $$rc
