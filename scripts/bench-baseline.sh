#!/usr/bin/env bash
# `make bench-baseline`: crossbatch's CPU forward beside PyTorch and ONNX Runtime on the
# same machine, one right after the other, on the same pair file, batch sizes and
# thread count:
#   1. `crossbatch-server bench --backends cpu`, in f32, int8 and bf16 (the forward,
#      tokenization excluded);
#   2. ONNX Runtime on the model exported to ONNX (opset 17) with its BERT graph
#      fusions (f32), and that graph with its dynamic int8 quantization (per channel);
#   3. sentence-transformers `CrossEncoder(model).predict(pairs, batch_size=B)` and the
#      HF forward alone in f32 and in bf16, torch on the CPU with the same number of
#      threads;
# alternating batch size by batch size for REPEAT rounds; then the accuracy of each
# dtype (`crossbatch-server eval`, ONNX Runtime on the parity pairs) and one report
# (scripts/bench_baseline.py) in reports/baseline-<ts>.md.
# PyTorch and ONNX Runtime live in a virtual environment created under the clone
# (.baseline/venv, pip from PyPI, several GB with the CUDA wheels PyPI's torch pulls
# in): never part of `make test`. Each side starts on an idle machine (or says it
# could not wait for one).
#
# Environment (all optional):
#   BATCHES=1,8,32,96  REPEAT=3 (rounds: timed passes per batch size and side, median)
#   MODEL=cross-encoder/ms-marco-MiniLM-L-6-v2 (the stand-in when the hub is unreachable)
#   WORKLOAD=../shared/reference/bench-800.jsonl  REPORTS=reports  BASELINE_VENV=.baseline/venv
#   TORCH_SPEC="torch==2.15.0"  ST_SPEC="sentence-transformers==6.2.0"
#   ORT_SPEC="onnxruntime==1.32.0 onnx==1.23.2 onnxscript==0.7.2"
#   PARITY=../shared/reference/parity-64.jsonl
set -euo pipefail
cd "$(dirname "$0")/.."

BIN="${CARGO_TARGET_DIR:-target}/release"
REPORTS=${REPORTS:-reports}
BATCHES=${BATCHES:-1,8,32,96}
REPEAT=${REPEAT:-3}
MODEL=${MODEL:-cross-encoder/ms-marco-MiniLM-L-6-v2}
WORKLOAD=${WORKLOAD:-../shared/reference/bench-800.jsonl}
VENV=${BASELINE_VENV:-.baseline/venv}
TORCH_SPEC=${TORCH_SPEC:-torch==2.15.0}
ST_SPEC=${ST_SPEC:-sentence-transformers==6.2.0}
ORT_SPEC=${ORT_SPEC:-onnxruntime==1.32.0 onnx==1.23.2 onnxscript==0.7.2}
PARITY=${PARITY:-../shared/reference/parity-64.jsonl}
THREADS=$(nproc)

if [[ ! -f "$WORKLOAD" ]]; then
    echo "error: pair file $WORKLOAD not found (set WORKLOAD=...)" >&2
    exit 2
fi

if ! "$VENV/bin/python" -c 'import torch, sentence_transformers, onnxruntime, onnx' 2>/dev/null; then
    echo "== creating $VENV with $TORCH_SPEC, $ST_SPEC and $ORT_SPEC (pip, PyPI; once)" >&2
    python3 -m venv "$VENV"
    "$VENV/bin/pip" install --quiet --upgrade pip
    # shellcheck disable=SC2086 # ORT_SPEC is a list of specs
    "$VENV/bin/pip" install --quiet "$TORCH_SPEC" "$ST_SPEC" $ORT_SPEC
fi

# Busy share of the whole machine over one second, in percent (Linux /proc/stat).
busy_share() {
    local b0 i0 b1 i1
    read -r b0 i0 < <(awk '/^cpu /{print $2+$3+$4+$7+$8+$9, $5+$6}' /proc/stat)
    sleep 1
    read -r b1 i1 < <(awk '/^cpu /{print $2+$3+$4+$7+$8+$9, $5+$6}' /proc/stat)
    echo $(( 100 * (b1 - b0) / ((b1 - b0) + (i1 - i0) + 1) ))
}

# Waits (up to a minute) until less than 10% of the machine is busy.
wait_idle() {
    local share
    for i in $(seq 1 60); do
        share=$(busy_share)
        (( share < 10 )) && return 0
        (( i == 1 )) && echo "waiting for the machine to go idle ($share% busy)..." >&2
    done
    echo "WARNING: the machine is still $share% busy after a minute; timing anyway" >&2
}

mkdir -p "$REPORTS"
started=$(date -u '+%Y-%m-%d %H:%M UTC')
out="$REPORTS/baseline-$(date -u +%Y%m%d-%H%M%S)"
mkdir -p "$out.runs"
model_dir=$("$BIN/crossbatch-server" model path --model "$MODEL")
echo "== model: $model_dir; $THREADS threads on each side; $REPEAT rounds" >&2
onnx_dir="$out.runs/onnx"
echo "== exporting to ONNX, fusing, quantizing: $onnx_dir" >&2
HF_HUB_OFFLINE=1 "$VENV/bin/python" scripts/bench_baseline.py export --model "$model_dir" --out "$onnx_dir"
echo "== accuracy: crossbatch-server eval" >&2
"$BIN/crossbatch-server" eval --model "$model_dir" --dtypes int8,bf16 --parity "$PARITY" \
    --rerank-input "$WORKLOAD" --json "$out.runs/eval.json" > "$out.runs/eval.md"

# The two sides alternate, batch size by batch size, round after round: a machine whose
# speed drifts over minutes (a shared VM does) then moves both sides alike.
for round in $(seq 1 "$REPEAT"); do
    for b in ${BATCHES//,/ }; do
        wait_idle
        for dtype in f32 int8 bf16; do
            echo "== round $round, batch $b: crossbatch $dtype" >&2
            "$BIN/crossbatch-server" bench --backends cpu --dtype "$dtype" --model "$model_dir" \
                --input "$WORKLOAD" --batches "$b" --repeat 1 \
                --json "$out.runs/crossbatch-$dtype-$b-$round.json" >/dev/null
            wait_idle
        done
        for dtype in f32 int8; do
            echo "== round $round, batch $b: ONNX Runtime $dtype" >&2
            graph="$onnx_dir/model-opt.onnx"
            [[ $dtype == int8 ]] && graph="$onnx_dir/model-int8.onnx"
            parity=()
            (( round == 1 )) && parity=(--parity "$PARITY")
            HF_HUB_OFFLINE=1 "$VENV/bin/python" scripts/bench_baseline.py ort --model "$model_dir" \
                --graph "$graph" --dtype "$dtype" --input "$WORKLOAD" --batch "$b" \
                --threads "$THREADS" "${parity[@]}" --json "$out.runs/ort-$dtype-$b-$round.json"
            wait_idle
        done
        wait_idle
        echo "== round $round, batch $b: PyTorch" >&2
        OMP_NUM_THREADS=$THREADS MKL_NUM_THREADS=$THREADS HF_HUB_OFFLINE=1 \
            "$VENV/bin/python" scripts/bench_baseline.py torch --model "$model_dir" \
            --input "$WORKLOAD" --batch "$b" --threads "$THREADS" \
            --json "$out.runs/torch-$b-$round.json" 2> >(grep -v '^Loading weights' >&2)
    done
done
"$VENV/bin/python" scripts/bench_baseline.py table --input "$WORKLOAD" --started "$started" \
    --crossbatch "$out.runs"/crossbatch-*.json --torch "$out.runs"/torch-*.json \
    --ort "$out.runs"/ort-*.json --parity "$PARITY" --eval "$out.runs/eval.json" \
    --eval-md "$out.runs/eval.md" --out "$out.md"
echo "report: $out.md (every pass: $out.runs/)"
