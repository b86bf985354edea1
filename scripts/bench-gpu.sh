#!/usr/bin/env bash
# `make bench-gpu`: the wgpu backend on a hardware GPU, in f32 and in f16.
#   1. the offline forward (`crossbatch-server bench`) at each batch size;
#   2. the served run of `make bench` (collector + server + driver on loopback) with
#      the report, one per dtype.
# Refuses (exit 3) on a machine with only a software adapter or none.
#
# Environment (all optional):
#   DTYPES="f32 f16"  BATCHES=8,32,96,128  REPEAT=10 (timed passes per batch size)
#   SERVED_SWEEP="batch=8,32,96,128 conc=16 pairs=24000"  MAX_BATCH=128
#   MAX_BATCH_TOKENS=65536  POLICY=eager  MODEL=…  REPORTS=reports
set -euo pipefail
cd "$(dirname "$0")/.."

BIN="${CARGO_TARGET_DIR:-target}/release"
REPORTS=${REPORTS:-reports}
DTYPES=${DTYPES:-"f32 f16"}
BATCHES=${BATCHES:-8,32,96,128}
REPEAT=${REPEAT:-10}
SERVED_SWEEP=${SERVED_SWEEP:-"batch=8,32,96,128 conc=16 pairs=24000"}
MODEL=${MODEL:-cross-encoder/ms-marco-MiniLM-L-6-v2}
WORKLOAD=${WORKLOAD:-../shared/reference/bench-800.jsonl}
[[ -f "$WORKLOAD" ]] || WORKLOAD=synthetic

rc=0
"$BIN/crossbatch-server" devices --require-gpu || rc=$?
if [[ $rc -ne 0 ]]; then
    echo "error: make bench-gpu times a hardware GPU; this machine has none (make bench measures the CPU)" >&2
    exit 3
fi

mkdir -p "$REPORTS"
ts=$(date -u +%Y%m%d-%H%M%S)
summary="$REPORTS/gpu-$ts.md"
{
    echo "# make bench-gpu, $(date -u '+%Y-%m-%d %H:%M UTC')"
    echo
    echo '```'
    "$BIN/crossbatch-server" devices
    echo '```'
} >"$summary"

for dt in $DTYPES; do
    echo "== offline forward, wgpu $dt, batches $BATCHES" >&2
    # The workload file has 800 pairs; at GPU speed one pass is a fraction of a second.
    {
        echo
        echo "## Offline forward, $dt"
        echo
        "$BIN/crossbatch-server" bench --model "$MODEL" --backends wgpu --dtype "$dt" \
            --input "$WORKLOAD" --batches "$BATCHES" --repeat "$REPEAT" --matmul-n 4096 \
            --json "$REPORTS/gpu-$ts-offline-$dt.json"
    } | tee -a "$summary"
done

for dt in $DTYPES; do
    echo "== served, wgpu $dt: $SERVED_SWEEP" >&2
    out=$(NAME="gpu-$dt" BACKEND=wgpu DTYPE="$dt" MODEL="$MODEL" WORKLOAD="$WORKLOAD" \
        MAX_BATCH="${MAX_BATCH:-128}" MAX_BATCH_TOKENS="${MAX_BATCH_TOKENS:-65536}" \
        POLICY="${POLICY:-eager}" SWEEP="$SERVED_SWEEP" WARMUP="${WARMUP:-2}" \
        REPORTS="$REPORTS" scripts/bench.sh)
    echo "$out"
    report=$(grep '^report: ' <<<"$out" | cut -d' ' -f2-)
    logs=$(grep '^logs, spans and raw samples: ' <<<"$out" | cut -d' ' -f6-)
    {
        echo
        echo "## Served, $dt ($report)"
        echo
        echo "Driver (pairs/s = pairs / wall time of the step):"
        echo
        grep '^|' <<<"$out" || true
        echo
        echo "Report's Results Summary:"
        echo
        awk '/^## Results Summary/ {f = 1; next} f && /^#/ {exit} f && /^\|/' "$report"
        grep -m1 -i 'warmed up' "$logs/server.log" | sed 's/\x1b\[[0-9;]*m//g' || true
    } >>"$summary"
done
echo "summary: $summary"
