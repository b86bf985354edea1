#!/usr/bin/env python3
"""PyTorch and ONNX Runtime sides of `make bench-baseline`, and the side-by-side table.

`torch`: times sentence-transformers' CrossEncoder.predict(pairs, batch_size=B) (what
a team would otherwise run; it tokenizes inside and sorts by length) and, for a
like-for-like view of the forward alone, the HF model on pre-tokenized, length-sorted
batches under inference_mode. `export`: the model to ONNX (opset 17), then ONNX
Runtime's BERT graph fusions, then its dynamic int8 quantization (per channel, what
sentence-transformers' qint8 exports do). `ort`: times one of those on the same
pre-tokenized batches as the torch forward, and scores the parity pairs for the
accuracy columns. `table`: merges every side's JSON of the same run into one table.

Each timed pass records the CPU time other processes used meanwhile (/proc/stat
minus this process); a pass where that exceeds 5% of the machine is flagged.
"""
import argparse
import datetime
import json
import os
import platform
import statistics
import sys
import time

CONTENDED = 0.05  # share of the machine's CPU time used by others that flags a pass


def machine_busy_s():
    """CPU seconds the whole machine has spent busy (all cores), from /proc/stat."""
    try:
        with open("/proc/stat") as f:
            fields = [int(v) for v in f.readline().split()[1:]]
    except OSError:
        return None
    idle = fields[3] + fields[4]  # idle + iowait
    return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")


def own_cpu_s():
    t = os.times()
    return t.user + t.system


class Pass:
    """Wall time of a block, and the CPU time others used during it."""

    def __enter__(self):
        self.m0, self.o0, self.t0 = machine_busy_s(), own_cpu_s(), time.perf_counter()
        return self

    def __exit__(self, *exc):
        self.wall = time.perf_counter() - self.t0
        m1, o1 = machine_busy_s(), own_cpu_s()
        self.other = None if self.m0 is None else max(0.0, (m1 - self.m0) - (o1 - self.o0))


def cpu_name():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def matmul_gflops(torch, n=2048, reps=5):
    a, b = torch.rand(n, n), torch.rand(n, n)
    a @ b
    best = min(timed(lambda: a @ b) for _ in range(reps))
    return 2 * n**3 / best / 1e9


def timed(fn):
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def measure_torch(args):
    """One batch size, `--repeat` passes of predict and of the forward alone: JSON out."""
    import torch
    from sentence_transformers import CrossEncoder

    torch.set_num_threads(args.threads)
    b = args.batch
    with open(args.input) as f:
        pairs = [(r["query"], r["passage"]) for r in map(json.loads, filter(str.strip, f))]
    model = CrossEncoder(args.model, device="cpu")
    hf, tok = model.model.eval(), model.tokenizer
    peak = matmul_gflops(torch)
    flagged, predict = [], []
    model.predict(pairs[: 2 * b], batch_size=b, show_progress_bar=False)  # warm-up
    for rep in range(args.repeat):
        with Pass() as p:
            model.predict(pairs, batch_size=b, show_progress_bar=False)
        predict.append(len(pairs) / p.wall)
        if p.other is not None and p.other > CONTENDED * p.wall * os.cpu_count():
            flagged.append(f"predict batch {b}: other processes used {p.other:.1f} CPU-s")
    # The forward alone: tokenized up front, as crossbatch's bench excludes
    # tokenization, and sorted by length as predict sorts (less padding per batch).
    ordered = sorted(pairs, key=lambda p: -(len(p[0]) + len(p[1])))
    feats = [
        tok([q for q, _ in ordered[i : i + b]], [d for _, d in ordered[i : i + b]],
            padding=True, truncation=True, return_tensors="pt")
        for i in range(0, len(ordered), b)
    ]
    def timed_forward(label):
        """`--repeat` passes over every batch (after one warm-up batch), in pairs/s."""
        rates = []
        hf(**feats[0])
        for rep in range(args.repeat):
            with Pass() as p:
                for x in feats:
                    hf(**x)
            rates.append(len(pairs) / p.wall)
            if p.other is not None and p.other > CONTENDED * p.wall * os.cpu_count():
                flagged.append(f"{label} batch {b}: other processes used {p.other:.1f} CPU-s")
        return rates

    with torch.inference_mode():
        forward = timed_forward("forward")
        # The same forward with the model in bf16 (oneDNN's AVX-512 BF16 / AMX kernels
        # where the CPU has them): torch's side of crossbatch's --dtype bf16.
        hf.to(torch.bfloat16)
        forward_bf16 = timed_forward("bf16 forward")
    print(f"  torch batch {b}: predict {', '.join(f'{v:.1f}' for v in predict)} pairs/s, "
          f"forward {', '.join(f'{v:.1f}' for v in forward)}, "
          f"bf16 forward {', '.join(f'{v:.1f}' for v in forward_bf16)}", file=sys.stderr)
    with open(args.json, "w") as f:
        json.dump({"batch": b, "pairs": len(pairs), "predict": predict, "forward": forward,
                   "forward_bf16": forward_bf16,
                   "matmul_gflop_per_s": peak, "torch": torch.__version__,
                   "threads": torch.get_num_threads(), "flagged": flagged}, f)


def pad_batches(tok, pairs, b):
    """Length-sorted, padded, pre-tokenized batches (numpy int64), as the torch forward."""
    ordered = sorted(pairs, key=lambda p: -(len(p[0]) + len(p[1])))
    return [
        {k: v.astype("int64") for k, v in tok([q for q, _ in ordered[i : i + b]],
                                              [d for _, d in ordered[i : i + b]],
                                              padding=True, truncation=True, return_tensors="np").items()}
        for i in range(0, len(ordered), b)
    ]


def export(args):
    """model.onnx (opset 17), model-opt.onnx (BERT fusions), model-int8.onnx (dynamic int8)."""
    import onnx
    import torch
    from onnxruntime.quantization import QuantType, quantize_dynamic
    from onnxruntime.transformers.optimizer import optimize_model
    from transformers import AutoConfig, AutoModelForSequenceClassification

    os.makedirs(args.out, exist_ok=True)
    cfg = AutoConfig.from_pretrained(args.model)
    hf = AutoModelForSequenceClassification.from_pretrained(args.model).eval()
    ids = torch.ones(2, 16, dtype=torch.long)
    names = ["input_ids", "attention_mask", "token_type_ids"]
    axes = {n: {0: "batch", 1: "seq"} for n in names} | {"logits": {0: "batch"}}
    plain, opt, int8 = (os.path.join(args.out, f) for f in ("model.onnx", "model-opt.onnx", "model-int8.onnx"))
    with torch.inference_mode():
        torch.onnx.export(hf, (ids, torch.ones_like(ids), torch.zeros_like(ids)), plain, input_names=names,
                          output_names=["logits"], dynamic_axes=axes, opset_version=17, dynamo=False)
    optimize_model(plain, model_type="bert", num_heads=cfg.num_attention_heads,
                   hidden_size=cfg.hidden_size).save_model_to_file(opt)
    # The fused graph's contrib ops defeat ONNX shape inference; the quantizer then
    # needs to be told that untyped tensors are float (its own error message says so).
    quantize_dynamic(opt, int8, weight_type=QuantType.QInt8, per_channel=True,
                     extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT})
    print(f"  exported {plain}, {opt}, {int8}", file=sys.stderr)


def measure_ort(args):
    """One graph at one batch size: `--repeat` timed passes, and the parity pairs' logits."""
    import numpy as np
    import onnxruntime as ort
    from transformers import AutoTokenizer

    so = ort.SessionOptions()
    so.intra_op_num_threads, so.inter_op_num_threads = args.threads, 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    sess = ort.InferenceSession(args.graph, so, providers=["CPUExecutionProvider"])
    wanted = {i.name for i in sess.get_inputs()}
    tok = AutoTokenizer.from_pretrained(args.model)
    run = lambda x: sess.run(["logits"], {k: v for k, v in x.items() if k in wanted})[0]
    with open(args.input) as f:
        pairs = [(r["query"], r["passage"]) for r in map(json.loads, filter(str.strip, f))]
    feats = pad_batches(tok, pairs, args.batch)
    run(feats[0])
    forward, flagged = [], []
    for rep in range(args.repeat):
        with Pass() as p:
            for x in feats:
                run(x)
        forward.append(len(pairs) / p.wall)
        if p.other is not None and p.other > CONTENDED * p.wall * os.cpu_count():
            flagged.append(f"ort {args.dtype} batch {args.batch}: other processes used {p.other:.1f} CPU-s")
    parity = []
    if args.parity:
        with open(args.parity) as f:
            for r in map(json.loads, filter(str.strip, f)):
                x = tok([r["query"]], [r["passage"]], truncation=True, return_tensors="np")
                parity.append(float(run({k: v.astype(np.int64) for k, v in x.items()})[0][0]))
    print(f"  ort {args.dtype} batch {args.batch}: {', '.join(f'{v:.1f}' for v in forward)} pairs/s",
          file=sys.stderr)
    with open(args.json, "w") as f:
        json.dump({"batch": args.batch, "dtype": args.dtype, "pairs": len(pairs), "forward": forward,
                   "ort": ort.__version__, "threads": args.threads, "flagged": flagged,
                   "parity_logits": parity}, f)


def spread(v):
    return f"{statistics.median(v):.1f} ({min(v):.1f}–{max(v):.1f})"


def median_or_none(v):
    return statistics.median(v) if v else None


def cell(v):
    return spread(v) if v else "–"


def ratio(a, b):
    return f"{statistics.median(a) / statistics.median(b):.2f}x" if a and b else "–"


def delta(logits, ref):
    d = [abs(a - b) for a, b in zip(logits, ref)]
    return (max(d), sum(d) / len(d)) if d else None


def table(args):
    """Every round's JSON of every side and batch size: one speed table and one accuracy table."""
    ours, theirs, orts = [], [], []
    for path in args.crossbatch:
        with open(path) as f:
            ours += [r for r in json.load(f) if r["backend"] == "cpu"]
    for path in args.torch:
        with open(path) as f:
            theirs.append(json.load(f))
    for path in args.ort or []:
        with open(path) as f:
            orts.append(json.load(f))
    if not ours or not theirs:
        sys.exit("nothing to tabulate")
    first = ours[0]
    gpp = first["gflop_per_pair"]
    batches = sorted({t["batch"] for t in theirs})

    def cb(dtype, b):
        return [r["forward_pairs_per_s"] for o in ours if o["dtype"] == dtype for r in o["batches"] if r["batch"] == b]

    def ort(dtype, b):
        return [v for o in orts if o["dtype"] == dtype and o["batch"] == b for v in o["forward"]]

    pr = {b: [v for t in theirs if t["batch"] == b for v in t["predict"]] for b in batches}
    fw = {b: [v for t in theirs if t["batch"] == b for v in t["forward"]] for b in batches}
    fw16 = {b: [v for t in theirs if t["batch"] == b for v in t.get("forward_bf16", [])] for b in batches}
    peak = {d: median_or_none([o["matmul_gflop_per_s"] for o in ours if o["dtype"] == d])
            for d in ("f32", "int8", "bf16")}
    t_peak = statistics.median(t["matmul_gflop_per_s"] for t in theirs)
    flagged = [f for t in theirs + orts for f in t["flagged"]] + [
        f"crossbatch {o['dtype']} {c}" for o in ours for c in o.get("contended", [])]
    rounds = max(len(cb("f32", b)) for b in batches)
    ort_version = orts[0]["ort"] if orts else "not run"
    lines = [
        f"CPU: {cpu_name()}, {os.cpu_count()} threads on each side; {args.started} to "
        f"{datetime.datetime.now(datetime.timezone.utc).strftime('%H:%M UTC')}",
        f"{first['pairs']} pairs from {os.path.basename(args.input)}, {first['real_tokens_per_pair']:.1f} tokens/pair, "
        f"{gpp:.3f} GFLOP/pair. Per batch size every side runs in turn ({rounds} rounds, one timed pass "
        "each); cells are median (min–max) pairs/s of the forward alone (tokenization excluded), ratios "
        "are of medians. crossbatch packs each batch (no padding); ONNX Runtime and torch run "
        "length-sorted padded batches.",
        f"Peaks (2048^3, median): crossbatch f32 matmul {peak['f32'] or 0:.1f} GFLOP/s"
        + (f", crossbatch int8 matmul {peak['int8']:.1f} GOP/s" if peak["int8"] else "")
        + (f", crossbatch bf16 matmul {peak['bf16']:.1f} GFLOP/s" if peak["bf16"] else "")
        + f"; torch {theirs[0]['torch']} {t_peak:.1f} GFLOP/s (f32); ONNX Runtime {ort_version}.",
        "",
        "| batch | crossbatch f32 (% of f32 peak) | crossbatch int8 (% of int8 peak) | crossbatch bf16 (% of bf16 peak) "
        "| ONNX Runtime f32 (fused) | ONNX Runtime int8 | torch f32 forward | torch bf16 forward "
        "| int8 ÷ ORT int8 | f32 ÷ ORT f32 | bf16 ÷ torch bf16 | int8 ÷ own f32 | bf16 ÷ own f32 | CrossEncoder.predict |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]

    def with_peak(v, d):
        if not v:
            return "–"
        return f"{spread(v)} ({100 * statistics.median(v) * gpp / peak[d]:.0f}%)" if peak[d] else spread(v)

    for b in batches:
        c32, c8, c16 = cb("f32", b), cb("int8", b), cb("bf16", b)
        o32, o8 = ort("f32", b), ort("int8", b)
        lines.append(
            f"| {b} | {with_peak(c32, 'f32')} | {with_peak(c8, 'int8')} | {with_peak(c16, 'bf16')} "
            f"| {cell(o32)} | {cell(o8)} | {cell(fw[b])} | {cell(fw16[b])} "
            f"| {ratio(c8, o8)} | {ratio(c32, o32)} | {ratio(c16, fw16[b])} | {ratio(c8, c32)} | {ratio(c16, c32)} "
            f"| {cell(pr[b])} |"
        )
    lines.append("")
    if args.parity:
        with open(args.parity) as f:
            ref = [r["logit_f64"] for r in map(json.loads, filter(str.strip, f))]
        lines += [
            f"Accuracy on {os.path.basename(args.parity)} ({len(ref)} pairs, one per forward): |Δlogit| against "
            "HF transformers in f64 (the file's `logit_f64`). crossbatch's figures from `crossbatch-server eval` "
            "(its full table, with pooled-vector cosines and ranking agreement, is below).",
            "",
            "| engine | dtype | max \\|Δ\\| | mean \\|Δ\\| |",
            "|---|---|---|---|",
        ]
        for dtype in ("f32", "int8"):
            logits = next((o["parity_logits"] for o in orts if o["dtype"] == dtype and o["parity_logits"]), None)
            d = delta(logits or [], ref)
            if d:
                lines.append(f"| ONNX Runtime | {dtype} | {d[0]:.2e} | {d[1]:.2e} |")
        for row in json.load(open(args.eval)) if args.eval else []:
            r = row["parity"]["vs_reference"]
            if r:
                lines.append(f"| crossbatch | {row['dtype']} | {r['max']:.2e} | {r['mean']:.2e} |")
        lines.append("")
    if args.eval_md:
        with open(args.eval_md) as f:
            lines += ["crossbatch-server eval:", "", f.read().strip(), ""]
    if flagged:
        lines.append("WARNING: other processes used the CPU during timed passes; these figures are not clean:")
        lines += [f"- {f}" for f in flagged]
    else:
        lines.append("No other process used more than 5% of the CPU during any timed pass.")
    text = "\n".join(lines)
    print(text)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text + "\n")


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    t = sub.add_parser("torch", help="time PyTorch at one batch size")
    t.add_argument("--model", required=True, help="HF model directory")
    t.add_argument("--input", required=True, help="pair file (JSONL)")
    t.add_argument("--batch", type=int, required=True)
    t.add_argument("--repeat", type=int, default=1)
    t.add_argument("--threads", type=int, default=os.cpu_count())
    t.add_argument("--json", required=True, help="where to write the passes")
    e = sub.add_parser("export", help="export to ONNX, fuse, quantize (once)")
    e.add_argument("--model", required=True, help="HF model directory")
    e.add_argument("--out", required=True, help="directory for the three graphs")
    o = sub.add_parser("ort", help="time one ONNX Runtime graph at one batch size")
    o.add_argument("--model", required=True, help="HF model directory (the tokenizer)")
    o.add_argument("--graph", required=True, help="ONNX file")
    o.add_argument("--dtype", required=True, choices=["f32", "int8"])
    o.add_argument("--input", required=True, help="pair file (JSONL)")
    o.add_argument("--parity", help="parity file whose pairs to score for the accuracy table")
    o.add_argument("--batch", type=int, required=True)
    o.add_argument("--repeat", type=int, default=1)
    o.add_argument("--threads", type=int, default=os.cpu_count())
    o.add_argument("--json", required=True)
    m = sub.add_parser("table", help="merge the rounds into one table")
    m.add_argument("--input", required=True)
    m.add_argument("--ort", nargs="*", help="`ort` subcommand files")
    m.add_argument("--parity", help="parity file with `logit_f64` (accuracy table)")
    m.add_argument("--eval", help="`crossbatch-server eval --json` file")
    m.add_argument("--eval-md", help="`crossbatch-server eval` markdown")
    m.add_argument("--crossbatch", nargs="+", required=True, help="`crossbatch-server bench --json` files")
    m.add_argument("--torch", nargs="+", required=True, help="`torch` subcommand files")
    m.add_argument("--started", default="")
    m.add_argument("--out")
    args = ap.parse_args()
    {"torch": measure_torch, "export": export, "ort": measure_ort, "table": table}[args.cmd](args)


if __name__ == "__main__":
    main()
