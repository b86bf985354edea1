#!/usr/bin/env bash
# CI's compose tests (part of `make test`): 1 collector + 1 server + 3 drivers on the
# stand-in (CPU backend), the server requiring an API key the drivers send; the report
# must show 3 drivers, exact total pairs and summed concurrency, and no errors. Then
# the same with one driver container killed mid-run: the run must
# finish and the report name the lost driver. scripts/compose.sh tears each run down,
# failures included.
set -euo pipefail
cd "$(dirname "$0")/.."
export TIMEOUT_S=${TIMEOUT_S:-300}

check() { # report.md, python assertions on r (the JSON) and md (the markdown)
    python3 - "$1" "$2" <<'PY'
import json, sys
md_path, code = sys.argv[1], sys.argv[2]
md = open(md_path).read()
r = json.load(open(md_path[:-3] + ".json"))
exec(code)
PY
}

echo "compose test 1: three drivers, two configs, an API key passed to server and drivers" >&2
out=$(NAME=ci-compose DRIVERS=3 BATCH=4 CONC=1,2 PAIRS=48 API_KEY=ci-compose-key scripts/compose.sh) ||
    { echo "FAIL: compose test 1: the compose run failed" >&2; exit 1; }
report=${out##*report: }
echo "  $report" >&2
check "$report" '
assert r["partial"] is None, r["partial"]
drivers = r["drivers"]
assert len(drivers) == 3, drivers
assert all(d["state"] == "finished" and d["pairs_ok"] == 96 for d in drivers), drivers
cfgs = r["configs"]
assert [(c["batch"], c["concurrency"], c["pairs"], c["drivers"]) for c in cfgs] == [(4, 3, 144, 3), (4, 6, 144, 3)], cfgs
assert sum(1 for c in r["calls"] if not c["warmup"]) == 72
assert all(not c["errors"] for c in cfgs), [c["errors"] for c in cfgs]
assert r["notes"]["calls_without_server_spans"] == 0, r["notes"]
assert "| 4 | 6 | 144 |" in md
print("  ok: 3 drivers, 144 pairs per config, concurrency 3 and 6")
'

echo "compose test 2: one driver killed mid-run" >&2
out=$(NAME=ci-compose-loss DRIVERS=3 BATCH=8 CONC=1 PAIRS=400 KILL_DRIVER_AFTER=4 scripts/compose.sh) ||
    { echo "FAIL: compose test 2: the compose run failed" >&2; exit 1; }
report=${out##*report: }
echo "  $report" >&2
check "$report" '
lost = [d for d in r["drivers"] if d["state"] == "lost"]
assert len(lost) == 1, r["drivers"]
assert sum(1 for d in r["drivers"] if d["state"] == "finished") == 2, r["drivers"]
assert "lost driver(s): " + lost[0]["driver_id"] in (r["partial"] or ""), r["partial"]
assert "**Lost drivers:** " + lost[0]["driver_id"] in md
ok = r["configs"][0]["pairs"]
assert 800 <= ok < 1200, ok
print("  ok: driver %s lost after %d pairs; the run finished with %d pairs" % (lost[0]["driver_id"], lost[0]["pairs_ok"], ok))
'
