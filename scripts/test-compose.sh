#!/usr/bin/env bash
# CI's compose tests (part of `make test`), on the stand-in (CPU backend):
# 0. the compose files and Envoy's config, checked offline (docker-compose config,
#    envoy --mode validate);
# 1. 1 collector + 1 server + 3 drivers, the server requiring an API key the drivers
#    send; the report must show 3 drivers, exact total pairs and summed concurrency,
#    and no errors;
# 2. the same with one driver container killed mid-run: the run must finish and the
#    report name the lost driver;
# 3. 3 server replicas, 2 drivers balancing over them (dns:///server:50051, p2c), one
#    replica SIGKILLed mid-run: every pair still scored, none failed, the drivers'
#    retries counted, and the killed replica (and only it) reported lost;
# 4. the 3 replicas behind Envoy (LB=envoy), the drivers on one plain channel to it:
#    every pair scored and every replica got calls (the report's servers, and each
#    replica's own /metrics).
# scripts/compose.sh tears each run down, failures included.
set -euo pipefail
cd "$(dirname "$0")/.."
export TIMEOUT_S=${TIMEOUT_S:-300}

check() { # report.md, python assertions on r (the JSON) and md (the markdown); more
    # arguments are in argv (argv[0]: the report)
    python3 - "$@" <<'PY'
import json, sys
md_path, code = sys.argv[1], sys.argv[2]
argv = [md_path] + sys.argv[3:]
md = open(md_path).read()
r = json.load(open(md_path[:-3] + ".json"))
exec(code)
PY
}

echo "compose test 0: compose files and Envoy's config, offline" >&2
COMPOSE=${COMPOSE:-docker-compose}
"$COMPOSE" -f docker-compose.yml config -q ||
    { echo "FAIL: compose test 0: docker-compose.yml" >&2; exit 1; }
"$COMPOSE" -f docker-compose.yml -f deploy/envoy/compose.yml config -q ||
    { echo "FAIL: compose test 0: docker-compose.yml + deploy/envoy/compose.yml" >&2; exit 1; }
envoy=$(docker/envoy.sh)
"$envoy" --mode validate -c deploy/envoy/envoy.yaml --log-level warn >/dev/null ||
    { echo "FAIL: compose test 0: envoy --mode validate -c deploy/envoy/envoy.yaml" >&2; exit 1; }
echo "  ok: compose files; deploy/envoy/envoy.yaml valid for $("$envoy" --version | grep -o '[0-9]*[.][0-9]*[.][0-9]*' | head -n 1)" >&2

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

# Tests 3 and 4: pairs per driver (batch 4, 4 callers each), and when the replica dies.
replica_pairs=${TEST_REPLICA_PAIRS:-400}
kill_at=${TEST_KILL_SERVER_AFTER:-2}
envoy_pairs=${TEST_ENVOY_PAIRS:-200}

echo "compose test 3: three server replicas, two balancing drivers, one replica killed mid-run" >&2
out=$(NAME=ci-compose-replicas SERVERS=3 DRIVERS=2 BATCH=4 CONC=4 PAIRS="$replica_pairs" \
    KILL_SERVER_AFTER="$kill_at" scripts/compose.sh) ||
    { echo "FAIL: compose test 3: the compose run failed" >&2; exit 1; }
report=${out##*report: }
killed=$(sed -n 's/^killed server: //p' <<<"$out")
echo "  $report (killed: $killed)" >&2
check "$report" '
killed, pairs = argv[1], int(argv[2])
want = 2 * pairs
drivers = r["drivers"]
assert len(drivers) == 2 and all(d["state"] == "finished" and d["pairs_ok"] == pairs for d in drivers), drivers
cfgs = r["configs"]
assert [(c["pairs"], c["pairs_failed"]) for c in cfgs] == [(want, 0)], cfgs
assert not cfgs[0]["errors"], cfgs[0]["errors"]
t = r["totals"]
assert t["pairs_ok"] == want and t["errors"] == 0 and t["calls"] == t["calls_ok"], t
assert t["retries"] >= 1, "no retry counted, though a replica died under load: %s" % t
servers = [s for s in r["servers"] if s["instance"]]
assert len(servers) == 3, r["servers"]
assert not [s for s in r["servers"] if not s["instance"]], r["servers"]
assert killed in [s["instance"] for s in servers], (killed, servers)
lost = [s for s in servers if s["lost"]]
assert [s["instance"] for s in lost] == [killed], ("lost", lost, "killed", killed)
assert lost[0]["lost_at_s"] is not None and lost[0]["calls"] > 0, lost[0]
assert all(s["calls_ok"] > 0 for s in servers), servers
assert sum(s["pairs_ok"] for s in servers) == want, servers
print("  ok: %d pairs, 0 failed, %d retries; %s lost at %.1f s after %d calls; shares %s" % (
    want, t["retries"], killed, lost[0]["lost_at_s"], lost[0]["calls"],
    " ".join("%s=%.2f" % (s["instance"], s["share"]) for s in servers)))
' "$killed" "$replica_pairs"

echo "compose test 4: three server replicas behind Envoy" >&2
out=$(NAME=ci-compose-envoy LB=envoy SERVERS=3 DRIVERS=2 BATCH=4 CONC=4 PAIRS="$envoy_pairs" scripts/compose.sh) ||
    { echo "FAIL: compose test 4: the compose run failed" >&2; exit 1; }
report=${out##*report: }
echo "  $report" >&2
check "$report" '
import glob, os, re
pairs = int(argv[1])
want = 2 * pairs
drivers = r["drivers"]
assert len(drivers) == 2 and all(d["state"] == "finished" and d["pairs_ok"] == pairs for d in drivers), drivers
cfgs = r["configs"]
assert [(c["pairs"], c["pairs_failed"]) for c in cfgs] == [(want, 0)], cfgs
assert r["totals"]["pairs_ok"] == want and r["totals"]["errors"] == 0, r["totals"]
servers = [s for s in r["servers"] if s["instance"]]
assert len(servers) == 3 and all(s["calls_ok"] > 0 for s in servers), r["servers"]
assert not [s for s in servers if s["lost"]], servers
# Each replica by its own count: the metrics compose.sh took from every replica.
ok = {}
for f in glob.glob("reports/%s.metrics/*.prom" % r["run_id"]):
    m = re.search(r"^crossbatch_requests_total\{outcome=\"ok\"\} (\S+)$", open(f).read(), re.M)
    ok[os.path.basename(f)[:-5]] = float(m.group(1)) if m else 0.0
assert sorted(ok) == sorted(s["instance"] for s in servers), (ok, servers)
assert all(v > 0 for v in ok.values()), ok
print("  ok: %d pairs through Envoy; calls per replica (report) %s; OK requests per replica (/metrics) %s" % (
    want, " ".join("%s=%d" % (s["instance"], s["calls"]) for s in servers),
    " ".join("%s=%d" % kv for kv in sorted(ok.items()))))
' "$envoy_pairs"
