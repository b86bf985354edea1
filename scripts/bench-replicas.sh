#!/usr/bin/env bash
# `make bench-replicas`: three server processes on loopback behind one driver, four
# runs (p2c, round-robin, pinned, then p2c with replica-1 killed by SIGKILL mid-run),
# and one table of what each replica served and what the kill cost:
# reports/replicas-<timestamp>.md. Each run is a `make bench` run (scripts/bench.sh)
# with its own report beside it.
#
# Environment: SERVERS=3  SWEEP="batch=4 conc=4 pairs=1600"  KILL_SERVER_AFTER=4
# (and what scripts/bench.sh takes).
set -euo pipefail
cd "$(dirname "$0")/.."

export SERVERS=${SERVERS:-3}
export SWEEP=${SWEEP:-batch=4 conc=4 pairs=1600}
export DASHBOARD=off
# Calls left out of the figures at the start (first calls on fresh servers are slow).
export WARMUP=${WARMUP:-12}
REPORTS=${REPORTS:-reports}
KILL=${KILL_SERVER_AFTER:-4}
if [[ "$SERVERS" -lt 2 ]]; then
    echo "error: SERVERS=$SERVERS: failover needs at least 2 replicas" >&2
    exit 2
fi
ts=$(date -u +%Y%m%d-%H%M%S)
out="$REPORTS/replicas-$ts.md"
mkdir -p "$REPORTS"

reports=()
for run in p2c round-robin pinned kill; do
    balance=$run kill=
    if [[ $run == kill ]]; then
        balance=p2c kill=$KILL
    fi
    echo "bench-replicas: $run ($SERVERS servers, $SWEEP)" >&2
    said=$(NAME="replicas-$run" BALANCE=$balance KILL_SERVER_AFTER=$kill REPORTS=$REPORTS scripts/bench.sh) || {
        echo "error: the $run run failed; its logs are under $REPORTS/" >&2
        exit 1
    }
    report=$(sed -n 's/^report: //p' <<<"$said")
    logs=$(sed -n 's/^logs, spans and raw samples: //p' <<<"$said")
    reports+=("$run=$report=$logs")
done

python3 - "$out" "$SERVERS" "$KILL" "${reports[@]}" <<'PY'
import json, os, platform, subprocess, sys, datetime

out, servers, kill_after, runs = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4:]

def pct(xs, p):
    xs = sorted(xs)
    if not xs:
        return float("nan")
    k = max(0, min(len(xs) - 1, int(round(p / 100 * len(xs) + 0.5)) - 1))
    return xs[k]

def cpu():
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"

lines = [
    f"# Replicas on loopback: {servers} servers, one driver",
    "",
    f"{datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC, {cpu()}, {os.cpu_count()} cores. "
    "All servers share these cores, so more replicas cannot add throughput here: "
    "these figures show where calls go and what a lost replica costs, not scaling.",
    "",
    "## Calls per replica",
    "",
    "| policy | " + " | ".join(f"replica-{i}" for i in range(servers)) + " | calls | failed calls | retries |",
    "|---|" + "---:|" * (servers + 3),
]
kill_rows = []
for item in runs:
    name, md, logs = item.split("=", 2)
    r = json.load(open(md[:-3] + ".json"))
    by = {s["instance"]: s for s in r.get("servers", [])}
    t = r["totals"]
    cells = []
    for i in range(servers):
        s = by.get(f"replica-{i}")
        cells.append("0" if s is None else f'{s["calls"]} ({100 * s["share"]:.0f}%)')
    failed = t.get("errors", "?")
    label = name if name != "kill" else f"p2c, replica-1 killed at {kill_after} s"
    lines.append(f"| {label} | " + " | ".join(cells) + f' | {t.get("calls_ok", "?")} | {failed} | {t.get("retries", 0)} |')
    if name == "kill":
        victim, at_ns = open(os.path.join(logs, "server-killed")).read().split()
        at_ns = int(at_ns)
        calls = [c for c in r["calls"] if not c["warmup"]]
        # "Before": calls that ended before the kill; "during": those in flight at the
        # kill or sent in the 2 s after it, when retries and the ejection happen;
        # "after": the rest, on the survivors.
        window = 2_000_000_000
        groups = {"before": [], "during (in flight at the kill, or sent 0–2 s after)": [],
                  "after (sent 2 s on)": [], "retried calls (any time)": []}
        for c in calls:
            if c.get("attempts", 1) > 1:
                groups["retried calls (any time)"].append(c["latency_ms"])
            if c["end_unix_ns"] < at_ns:
                groups["before"].append(c["latency_ms"])
            elif c["start_unix_ns"] < at_ns + window:
                groups["during (in flight at the kill, or sent 0–2 s after)"].append(c["latency_ms"])
            else:
                groups["after (sent 2 s on)"].append(c["latency_ms"])
        kill_rows.append((victim, groups, r, md))
lines.append("")
for victim, groups, r, md in kill_rows:
    lost = [s for s in r.get("servers", []) if s.get("lost")]
    lines += [
        f"## {victim} killed with SIGKILL {kill_after} s into the run (p2c)",
        "",
        "| window | calls | P50 ms | P95 ms | max ms |",
        "|---|---:|---:|---:|---:|",
    ]
    for k, xs in groups.items():
        lines.append(f"| {k} | {len(xs)} | {pct(xs, 50):.1f} | {pct(xs, 95):.1f} | {max(xs) if xs else float('nan'):.1f} |")
    lines += [
        "",
        f"Report: {md}. Lost replica(s) in the report: "
        + (", ".join(f'{s["instance"]} at {s["lost_at_s"]:.1f} s' for s in lost) or "none")
        + f'; retries {r["totals"].get("retries", 0)}, ejections {r["totals"].get("ejections", 0)}.',
        "",
    ]
open(out, "w").write("\n".join(lines) + "\n")
print("\n".join(lines))
print(f"report: {out}")
PY
