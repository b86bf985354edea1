#!/usr/bin/env python3
"""PyTorch side of `make bench-baseline`, and the side-by-side table.

`torch`: times sentence-transformers' CrossEncoder.predict(pairs, batch_size=B) (what
a team would otherwise run; it tokenizes inside and sorts by length) and, for a
like-for-like view of the forward alone, the HF model on pre-tokenized, length-sorted
batches under inference_mode. `table`: merges those with crossbatch's `bench --json`
files of the same run into one table.

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
    flagged, predict, forward = [], [], []
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
    with torch.inference_mode():
        hf(**feats[0])
        for rep in range(args.repeat):
            with Pass() as p:
                for x in feats:
                    hf(**x)
            forward.append(len(pairs) / p.wall)
            if p.other is not None and p.other > CONTENDED * p.wall * os.cpu_count():
                flagged.append(f"forward batch {b}: other processes used {p.other:.1f} CPU-s")
    print(f"  torch batch {b}: predict {', '.join(f'{v:.1f}' for v in predict)} pairs/s, "
          f"forward {', '.join(f'{v:.1f}' for v in forward)}", file=sys.stderr)
    with open(args.json, "w") as f:
        json.dump({"batch": b, "pairs": len(pairs), "predict": predict, "forward": forward,
                   "matmul_gflop_per_s": peak, "torch": torch.__version__,
                   "threads": torch.get_num_threads(), "flagged": flagged}, f)


def spread(v):
    return f"{statistics.median(v):.1f} ({min(v):.1f}–{max(v):.1f})"


def table(args):
    """Every round's crossbatch and PyTorch JSON for every batch size: one table."""
    ours, theirs = [], []
    for path in args.crossbatch:
        with open(path) as f:
            ours += [r for r in json.load(f) if r["backend"] == "cpu"]
    for path in args.torch:
        with open(path) as f:
            theirs.append(json.load(f))
    if not ours or not theirs:
        sys.exit("nothing to tabulate")
    first = ours[0]
    gpp = first["gflop_per_pair"]
    batches = sorted({t["batch"] for t in theirs})
    cb = {b: [r["forward_pairs_per_s"] for o in ours for r in o["batches"] if r["batch"] == b] for b in batches}
    pr = {b: [v for t in theirs if t["batch"] == b for v in t["predict"]] for b in batches}
    fw = {b: [v for t in theirs if t["batch"] == b for v in t["forward"]] for b in batches}
    cb_peak = statistics.median(o["matmul_gflop_per_s"] for o in ours)
    t_peak = statistics.median(t["matmul_gflop_per_s"] for t in theirs)
    flagged = [f for t in theirs for f in t["flagged"]] + [f"crossbatch {c}" for o in ours for c in o.get("contended", [])]
    rounds = max(len(v) for v in cb.values())
    lines = [
        f"CPU: {cpu_name()}, {os.cpu_count()} threads on each side; {args.started} to "
        f"{datetime.datetime.now(datetime.timezone.utc).strftime('%H:%M UTC')}",
        f"{first['pairs']} pairs from {os.path.basename(args.input)}, {first['real_tokens_per_pair']:.1f} tokens/pair, "
        f"{gpp:.3f} GFLOP/pair. Per batch size, crossbatch and PyTorch alternate ({rounds} rounds, one timed "
        "pass each); cells are median (min–max), the ratio is of medians.",
        f"matmul peak (2048^3, median): crossbatch {cb_peak:.1f} GFLOP/s, "
        f"torch {theirs[0]['torch']} {t_peak:.1f} GFLOP/s",
        "",
        "| batch | crossbatch forward pairs/s | CrossEncoder.predict pairs/s | ratio | torch forward only (pre-tokenized) pairs/s "
        "| crossbatch GFLOP/s (% of its matmul) | predict GFLOP/s (% of torch matmul) |",
        "|---|---|---|---|---|---|---|",
    ]
    for b in batches:
        if not cb[b] or not pr[b]:
            continue
        c, p = statistics.median(cb[b]), statistics.median(pr[b])
        lines.append(
            f"| {b} | {spread(cb[b])} | {spread(pr[b])} | {c / p:.2f}x | {spread(fw[b])} "
            f"| {c * gpp:.1f} ({100 * c * gpp / cb_peak:.0f}%) "
            f"| {p * gpp:.1f} ({100 * p * gpp / t_peak:.0f}%) |"
        )
    lines.append("")
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
    m = sub.add_parser("table", help="merge the rounds into one table")
    m.add_argument("--input", required=True)
    m.add_argument("--crossbatch", nargs="+", required=True, help="`crossbatch-server bench --json` files")
    m.add_argument("--torch", nargs="+", required=True, help="`torch` subcommand files")
    m.add_argument("--started", default="")
    m.add_argument("--out")
    args = ap.parse_args()
    measure_torch(args) if args.cmd == "torch" else table(args)


if __name__ == "__main__":
    main()
