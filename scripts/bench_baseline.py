#!/usr/bin/env python3
"""PyTorch side of `make bench-baseline`, and the side-by-side table.

Times sentence-transformers' CrossEncoder.predict(pairs, batch_size=B) (what a team
would otherwise run; it tokenizes inside) and, for a like-for-like view of the
forward alone, the HF model on pre-tokenized batches under inference_mode. Reads
crossbatch's `bench --json` output from the same run and prints one table.

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


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", required=True, help="HF model directory")
    ap.add_argument("--input", required=True, help="pair file (JSONL)")
    ap.add_argument("--crossbatch-json", required=True, help="`crossbatch-server bench --json` output")
    ap.add_argument("--batches", default="1,8,32,96")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--out", help="also write the table (markdown) here")
    args = ap.parse_args()

    import torch
    from sentence_transformers import CrossEncoder

    torch.set_num_threads(args.threads)
    batches = [int(b) for b in args.batches.split(",")]
    with open(args.input) as f:
        pairs = [(r["query"], r["passage"]) for r in map(json.loads, filter(str.strip, f))]
    with open(args.crossbatch_json) as f:
        ours = next(r for r in json.load(f) if r["backend"] == "cpu")
    if ours["pairs"] != len(pairs):
        sys.exit(f"crossbatch measured {ours['pairs']} pairs, the file has {len(pairs)}")

    model = CrossEncoder(args.model, device="cpu")
    hf, tok = model.model.eval(), model.tokenizer
    peak = matmul_gflops(torch)
    print(f"  torch {torch.__version__}, {torch.get_num_threads()} threads, matmul 2048^3: {peak:.1f} GFLOP/s", file=sys.stderr)

    rows, flagged = [], []
    for b in batches:
        model.predict(pairs[: 2 * b], batch_size=b, show_progress_bar=False)  # warm-up
        predict, forward = [], []
        for rep in range(args.repeat):
            with Pass() as p:
                model.predict(pairs, batch_size=b, show_progress_bar=False)
            predict.append(p.wall)
            if p.other is not None and p.other > CONTENDED * p.wall * os.cpu_count():
                flagged.append(f"predict batch {b} pass {rep + 1}: other processes used {p.other:.1f} CPU-s")
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
                forward.append(p.wall)
                if p.other is not None and p.other > CONTENDED * p.wall * os.cpu_count():
                    flagged.append(f"forward batch {b} pass {rep + 1}: other processes used {p.other:.1f} CPU-s")
        pp = len(pairs) / statistics.median(predict)
        pf = len(pairs) / statistics.median(forward)
        print(f"  batch {b}: predict {pp:.1f} pairs/s, forward {pf:.1f} pairs/s", file=sys.stderr)
        rows.append((b, pp, pf))

    gpp = ours["gflop_per_pair"]
    by_batch = {r["batch"]: r for r in ours["batches"]}
    when = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    lines = [
        f"CPU: {cpu_name()}, {os.cpu_count()} threads; {when}",
        f"{len(pairs)} pairs from {os.path.basename(args.input)}, {ours['real_tokens_per_pair']:.1f} tokens/pair, "
        f"{gpp:.3f} GFLOP/pair; {args.repeat} passes per cell, median",
        f"matmul peak (2048^3): crossbatch {ours['matmul_gflop_per_s']:.1f} GFLOP/s, "
        f"torch {torch.__version__} {peak:.1f} GFLOP/s",
        "",
        "| batch | crossbatch forward pairs/s | CrossEncoder.predict pairs/s | ratio | torch forward only (pre-tokenized) pairs/s "
        "| crossbatch GFLOP/s (% of its matmul) | predict GFLOP/s (% of torch matmul) |",
        "|---|---|---|---|---|---|---|",
    ]
    for b, pp, pf in rows:
        r = by_batch.get(b)
        if r is None:
            continue
        cb = r["forward_pairs_per_s"]
        lines.append(
            f"| {b} | {cb:.1f} | {pp:.1f} | {cb / pp:.2f}x | {pf:.1f} "
            f"| {cb * gpp:.1f} ({100 * cb * gpp / ours['matmul_gflop_per_s']:.0f}%) "
            f"| {pp * gpp:.1f} ({100 * pp * gpp / peak:.0f}%) |"
        )
    if ours.get("contended"):
        flagged += [f"crossbatch {c}" for c in ours["contended"]]
    lines.append("")
    if flagged:
        lines.append("WARNING: other processes used the CPU during timed passes; these figures are not clean:")
        lines += [f"- {f}" for f in flagged]
    else:
        lines.append("No other process used more than 5% of the CPU during any timed pass.")
    table = "\n".join(lines)
    print(table)
    if args.out:
        with open(args.out, "w") as f:
            f.write(table + "\n")


if __name__ == "__main__":
    main()
