#!/usr/bin/env bash
# `make bench-compose DRIVERS=N`: builds the three images, runs docker-compose with N
# coordinated drivers, leaves the report under ./reports, tears everything down.
#
# Images: by default the offline path (a debootstrap base image and the release
# binaries built on this host), since this machine's engine cannot pull; OFFLINE=0
# builds from the public rust and debian images instead.
#
# Environment (optional): DRIVERS=3 NAME=compose BATCH=8 CONC=1 PAIRS=800
#   WORKLOAD=synthetic MODEL_DIR (default: the offline stand-in) BACKEND=cpu
#   KILL_DRIVER_AFTER=S (tests: kill one driver container S seconds into the run)
#   TIMEOUT_S=900 (the whole run)
set -euo pipefail
cd "$(dirname "$0")/.."

DRIVERS=${DRIVERS:-3}
NAME=${NAME:-compose}
OFFLINE=${OFFLINE:-1}
TIMEOUT_S=${TIMEOUT_S:-900}
BIN="${CARGO_TARGET_DIR:-target}/release"
COMPOSE=${COMPOSE:-docker-compose}
export DRIVERS NAME
export BATCH=${BATCH:-8} CONC=${CONC:-1} PAIRS=${PAIRS:-800} WORKLOAD=${WORKLOAD:-synthetic}
export BACKEND=${BACKEND:-cpu}

if ! [[ "$DRIVERS" =~ ^[1-9][0-9]*$ ]]; then
    echo "error: DRIVERS must be a positive number, not '$DRIVERS'" >&2
    exit 2
fi

# Images.
export IMAGE_TAG=${IMAGE_TAG:-local}
if [[ "$OFFLINE" == 1 ]]; then
    docker/base-image.sh crossbatch-base:bookworm
    rm -rf docker/dist && mkdir -p docker/dist
    # Without the line tables the release profile keeps for backtraces: the server
    # binary goes from ~580 MB to ~70 MB, and the image with it.
    for b in crossbatch-server crossbatch-driver crossbatch-collector; do
        strip --strip-debug -o "docker/dist/$b" "$BIN/$b" 2>/dev/null || cp "$BIN/$b" docker/dist/
    done
    export BUILDER_IMAGE=crossbatch-base:bookworm BASE_IMAGE=crossbatch-base:bookworm BINARIES=host
else
    export BUILDER_IMAGE=rust:1.95-bookworm BASE_IMAGE=debian:bookworm-slim BINARIES=source
fi
for target in collector server driver; do
    DOCKER_BUILDKIT=0 docker build -q --build-arg BUILDER="$BUILDER_IMAGE" \
        --build-arg BASE="$BASE_IMAGE" --build-arg BINARIES="$BINARIES" --target "$target" \
        -t "crossbatch-$target:$IMAGE_TAG" . >/dev/null
done

# The model: the offline stand-in unless MODEL_DIR/MODEL say otherwise.
if [[ -z "${MODEL_DIR:-}" ]]; then
    standin=$("$BIN/crossbatch-server" model stand-in 2>/dev/null | tail -n 1)
    # Mount its parent so the report names the model by its directory's name.
    MODEL_DIR=$(dirname "$standin")
    export MODEL="/models/$(basename "$standin")"
fi
export MODEL_DIR

ts=$(date -u +%Y%m%d-%H%M%S)
export RUN_ID="$NAME-$ts"
project="crossbatch-$(echo "$ts" | tr -d -)"
mkdir -p reports
dc() { "$COMPOSE" -p "$project" -f docker-compose.yml "$@"; }
cleanup() {
    dc logs --no-color >"reports/$RUN_ID.compose.log" 2>&1 || true
    dc down -v --remove-orphans >/dev/null 2>&1 || true
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# The live dashboard on the host: 8080 when free, else any free port.
if [[ -z "${DASHBOARD_PORT:-}" ]]; then
    DASHBOARD_PORT=$(python3 -c '
import socket
s = socket.socket()
try:
    s.bind(("127.0.0.1", 8080))
except OSError:
    s.bind(("127.0.0.1", 0))
print(s.getsockname()[1])')
fi
export DASHBOARD_PORT
echo "compose: $DRIVERS drivers, run $RUN_ID (batch=$BATCH conc=$CONC pairs=$PAIRS per driver)" >&2
echo "compose: live dashboard at http://127.0.0.1:$DASHBOARD_PORT/" >&2
dc up -d --no-build --scale driver="$DRIVERS" >&2
collector=$(dc ps -q collector)

if [[ -n "${KILL_DRIVER_AFTER:-}" ]]; then
    sleep "$KILL_DRIVER_AFTER"
    victim=$(dc ps -q driver | sed -n 1p)
    echo "compose: killing driver container ${victim:0:12}" >&2
    docker kill "$victim" >/dev/null
fi

# The collector exits once the run's report is written.
deadline=$((SECONDS + TIMEOUT_S))
while [[ "$(docker inspect -f '{{.State.Running}}' "$collector")" == true ]]; do
    if ((SECONDS > deadline)); then
        echo "compose: no report after ${TIMEOUT_S} s; asking the collector for a partial one" >&2
        docker kill -s TERM "$collector" >/dev/null
        sleep 5
        break
    fi
    sleep 1
done
rc=$(docker inspect -f '{{.State.ExitCode}}' "$collector")
report=$(docker logs "$collector" 2>/dev/null | grep '^/reports/.*\.md$' | tail -n 1 || true)
if [[ -z "$report" ]]; then
    echo "error: the collector wrote no report (exit $rc); logs: reports/$RUN_ID.compose.log" >&2
    exit 1
fi
echo "report: reports/${report#/reports/}"
