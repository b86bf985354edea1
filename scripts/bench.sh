#!/usr/bin/env bash
# `make bench`: collector + server + driver on loopback, one run, one report.
# Everything started here is stopped on exit, failure or Ctrl-C included.
#
# Environment (all optional; `make bench` passes them through):
#   NAME=bench                       report name: reports/<NAME>-<timestamp>.md
#   SWEEP="batch=8 conc=1 pairs=800" the sweep (comma lists: batch=1,8,32 conc=1,4,16)
#   MODEL=cross-encoder/ms-marco-MiniLM-L-6-v2   (the stand-in when the hub is unreachable)
#   BACKEND=auto  DTYPE=f32  MAX_BATCH=auto  MAX_BATCH_TOKENS=16384  BATCH_TIMEOUT_MS=20
#   POLICY=auto (eager on the CPU, deadline on a GPU)
#   WORKLOAD=<jsonl|tsv|synthetic>   default: ../shared/reference/bench-800.jsonl if present
#   REPORTS=reports  WARMUP=0 (calls per config left out of the figures)
#   DASHBOARD=127.0.0.1:<free port>  the live page's address (DASHBOARD=off: none)
#   SERVERS=1                        server processes (replica-0 …), each on its own port
#   BALANCE=p2c                      the driver's policy over them: p2c, round-robin, pinned
#   KILL_SERVER_AFTER=S              SIGKILL replica-1 (replica-0 when SERVERS=1) S seconds
#                                    into the driver's run: failover, as a crash would
set -euo pipefail
cd "$(dirname "$0")/.."

NAME=${NAME:-bench}
SWEEP=${SWEEP:-}
MODEL=${MODEL:-cross-encoder/ms-marco-MiniLM-L-6-v2}
BACKEND=${BACKEND:-auto}
DTYPE=${DTYPE:-f32}
MAX_BATCH_TOKENS=${MAX_BATCH_TOKENS:-16384}
MAX_BATCH=${MAX_BATCH:-auto}
BATCH_TIMEOUT_MS=${BATCH_TIMEOUT_MS:-20}
POLICY=${POLICY:-auto}
REPORTS=${REPORTS:-reports}
WARMUP=${WARMUP:-0}
SERVERS=${SERVERS:-1}
BALANCE=${BALANCE:-p2c}
KILL_SERVER_AFTER=${KILL_SERVER_AFTER:-}
if ! [[ "$SERVERS" =~ ^[1-9][0-9]?$ ]]; then
    echo "error: SERVERS=$SERVERS: give 1 to 99 server processes" >&2
    exit 2
fi
if [[ -n "$KILL_SERVER_AFTER" ]] && ! [[ "$KILL_SERVER_AFTER" =~ ^[0-9]+(\.[0-9]+)?$ ]]; then
    echo "error: KILL_SERVER_AFTER=$KILL_SERVER_AFTER is not a number of seconds" >&2
    exit 2
fi
if [[ -z "${WORKLOAD:-}" ]]; then
    if [[ -f ../shared/reference/bench-800.jsonl ]]; then
        WORKLOAD=../shared/reference/bench-800.jsonl
    else
        WORKLOAD=synthetic
    fi
fi
BIN="${CARGO_TARGET_DIR:-target}/release"

batch=8 conc=1 pairs=800
for kv in $SWEEP; do
    case "$kv" in
        batch=*) batch=${kv#batch=} ;;
        conc=* | concurrency=*) conc=${kv#*=} ;;
        pairs=*) pairs=${kv#pairs=} ;;
        *) echo "error: SWEEP item '$kv' is not batch=…, conc=… or pairs=…" >&2; exit 2 ;;
    esac
done

free_port() {
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}
COLLECTOR=127.0.0.1:$(free_port)
servers=()
for _ in $(seq 1 "$SERVERS"); do
    servers+=("127.0.0.1:$(free_port)")
done
DASHBOARD=${DASHBOARD:-127.0.0.1:$(free_port)}
dashboard_flags=()
if [[ "$DASHBOARD" != off ]]; then
    dashboard_flags=(--dashboard "$DASHBOARD")
fi
mkdir -p "$REPORTS"
ts=$(date -u +%Y%m%d-%H%M%S)
run_id="$NAME-$ts"
logs="$REPORTS/$run_id.logs"
mkdir -p "$logs"

pids=()
cleanup() {
    for p in "${pids[@]}"; do
        kill -TERM "$p" 2>/dev/null || true
    done
    for p in "${pids[@]}"; do
        wait "$p" 2>/dev/null || true
    done
}
trap cleanup EXIT
trap 'exit 130' INT TERM

"$BIN/crossbatch-collector" serve --listen "$COLLECTOR" --out "$REPORTS" --name "$NAME" \
    --expect-drivers 1 --once --spans-out "$logs/spans.jsonl" "${dashboard_flags[@]}" \
    >"$logs/collector.out" 2>"$logs/collector.log" &
collector_pid=$!
pids+=("$collector_pid")

server_pids=()
targets=()
for i in "${!servers[@]}"; do
    log="$logs/server.log"
    if [[ "$SERVERS" -gt 1 ]]; then
        log="$logs/server-$i.log"
    fi
    "$BIN/crossbatch-server" serve --model "$MODEL" --backend "$BACKEND" --listen "${servers[$i]}" \
        --instance-id "replica-$i" \
        --dtype "$DTYPE" --max-batch "$MAX_BATCH" --max-batch-tokens "$MAX_BATCH_TOKENS" --batch-timeout-ms "$BATCH_TIMEOUT_MS" --batch-policy "$POLICY" \
        --otlp-endpoint "http://$COLLECTOR" 2>"$log" &
    pids+=("$!")
    server_pids+=("$!")
    targets+=("http://${servers[$i]}")
done
target_list=$(IFS=,; echo "${targets[*]}")

echo "bench: collector $COLLECTOR, $SERVERS server(s) ${servers[*]} ($BACKEND, $DTYPE, $BALANCE), sweep batch=$batch conc=$conc pairs=$pairs, workload $WORKLOAD" >&2
if [[ "$DASHBOARD" != off ]]; then
    echo "bench: live dashboard at http://$DASHBOARD/ (the run's HTML report is written beside the markdown at the end)" >&2
fi
driver_rc=0
"$BIN/crossbatch-driver" run --target "$target_list" --balance "$BALANCE" --batch "$batch" --concurrency "$conc" \
    --pairs "$pairs" --warmup "$WARMUP" --workload "$WORKLOAD" --run-id "$run_id" \
    --driver-id "driver-0" --connect-timeout 600 --otlp-endpoint "http://$COLLECTOR" \
    --samples-out "$logs/samples.jsonl" 2> >(tee "$logs/driver.log" >&2) &
driver_pid=$!
pids+=("$driver_pid")
if [[ -n "$KILL_SERVER_AFTER" ]]; then
    victim=$(( SERVERS > 1 ? 1 : 0 ))
    (
        # The clock starts when the driver logs that its run began (after the servers
        # warmed up), so S seconds means S seconds of load.
        for _ in $(seq 1 6000); do
            grep -q " started: " "$logs/driver.log" 2>/dev/null && break
            kill -0 "$driver_pid" 2>/dev/null || exit 0
            sleep 0.1
        done
        sleep "$KILL_SERVER_AFTER"
        kill -0 "$driver_pid" 2>/dev/null || exit 0
        echo "bench: SIGKILL replica-$victim (pid ${server_pids[$victim]}) ${KILL_SERVER_AFTER}s into the run" >&2
        kill -KILL "${server_pids[$victim]}" 2>/dev/null || true
        # When, for figures split before/during/after (scripts/bench-replicas.sh).
        echo "replica-$victim $(date +%s%N)" >"$logs/server-killed"
    ) &
    pids+=("$!")
fi
wait "$driver_pid" || driver_rc=$?

if [[ $driver_rc -ne 0 ]]; then
    echo "bench: the driver failed (exit $driver_rc); asking the collector for a partial report" >&2
    kill -TERM "$collector_pid" 2>/dev/null || true
fi
# The collector exits after the report (it waits for the server's last spans first).
for _ in $(seq 1 300); do
    kill -0 "$collector_pid" 2>/dev/null || break
    sleep 0.2
done
if kill -0 "$collector_pid" 2>/dev/null; then
    echo "bench: no complete run after 60 s; asking the collector for a partial report" >&2
    kill -TERM "$collector_pid" 2>/dev/null || true
fi
collector_rc=0
wait "$collector_pid" || collector_rc=$?
report=$(tail -n 1 "$logs/collector.out" 2>/dev/null || true)
if [[ -z "$report" || ! -f "$report" ]]; then
    echo "error: no report was written (collector exit $collector_rc); logs in $logs/" >&2
    exit 1
fi
echo "report: $report"
echo "html:   ${report%.md}.html"
echo "logs, spans and raw samples: $logs/"
exit "$driver_rc"
