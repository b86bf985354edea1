#!/usr/bin/env bash
# The Kubernetes manifests (deploy/k8s), checked offline, as `make test-k8s` (part of
# `make test`). No cluster is involved:
#   1. `kubectl kustomize` (or a standalone `kustomize build`) renders the base, each
#      overlay and the prometheus-adapter rule;
#   2. every rendered built-in object is validated, strictly (unknown fields are
#      errors), against the Kubernetes JSON schemas of the oldest and the newest
#      version we claim (K8S_VERSIONS), by the PyPI package kubernetes-validate, in a
#      venv this script makes once under ${XDG_CACHE_HOME:-~/.cache}/crossbatch/;
#   3. the PodMonitor (a CRD: kubernetes-validate has no schema for it) against a
#      minimal JSON schema written below: required fields and the types of the fields
#      used, not the whole CRD;
#   4. the objects against each other: Services, the PodMonitor and the HPA find
#      their pods, ports and Deployment; the drivers' target is the headless Service;
#      the Job's completions and the collector's expected drivers equal its
#      parallelism; the grace period covers preStop + drain timeout; probes, instance
#      id, security context, requests and limits; each overlay's backend (and GPU);
#      the HPA's metric is the one the prometheus-adapter rule names;
#   5. the adapter rule's query, its template filled in, as PromQL with
#      `promtool check rules` (promtool: scripts/ensure-deps.sh --promtool; said
#      loudly when missing).
# That the rule's metric names are ones the server exports is checked by
# server/tests/k8s_metrics.rs (cargo test). Exits non-zero on any failure.
set -euo pipefail
cd "$(dirname "$0")/.."

K8S=deploy/k8s
# The oldest Kubernetes these manifests are for (Indexed Job backoffLimitPerIndex is
# beta, on by default, from 1.29) and the newest schema kubernetes-validate has.
K8S_VERSIONS=${K8S_VERSIONS:-1.29.0 1.37.0}
# Pinned, with everything it pulls in.
REQUIREMENTS="kubernetes-validate==1.37.0 jsonschema==4.26.0 jsonschema-specifications==2025.9.1
referencing==0.37.0 rpds-py==2026.9.1 attrs==26.1.0 PyYAML==6.0.4 packaging==26.4
importlib_resources==7.1.0 typing_extensions==4.16.0"
VENV=${CROSSBATCH_K8S_VENV:-${XDG_CACHE_HOME:-$HOME/.cache}/crossbatch/k8s-venv}

fail() { echo "check-k8s: FAIL: $*" >&2; exit 1; }

# 1. A kustomize: standalone, else kubectl's (v5 or later: labels, replacements).
if command -v kustomize >/dev/null 2>&1; then
    render() { kustomize build "$1"; }
    kversion=$(kustomize version 2>/dev/null | head -n1)
elif command -v kubectl >/dev/null 2>&1; then
    render() { kubectl kustomize "$1"; }
    kversion=$(kubectl version --client 2>/dev/null | sed -n 's/^Kustomize Version: //p')
else
    fail "neither kustomize nor kubectl is installed (kubectl's client is enough: it has kustomize built in)"
fi
kmajor=$(sed -n 's/^[^0-9]*\([0-9][0-9]*\)\..*/\1/p' <<<"$kversion")
if [[ -z "$kmajor" || "$kmajor" -lt 5 ]]; then
    fail "kustomize ${kversion:-of unknown version} is too old: v5 or later is needed (kubectl 1.27+)"
fi

out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
targets=(base overlays/cpu overlays/nvidia-gpu prometheus-adapter)
for t in "${targets[@]}"; do
    name=${t##*/}
    if ! render "$K8S/$t" >"$out/$name.yaml" 2>"$out/$name.err"; then
        cat "$out/$name.err" >&2
        fail "kustomize could not render $K8S/$t"
    fi
    echo "check-k8s: rendered $K8S/$t ($(grep -c '^kind:' "$out/$name.yaml") objects, kustomize $kversion)"
done

# 2. The venv with kubernetes-validate, made once (again when the pins change).
# shellcheck disable=SC2086
pins=$(echo $REQUIREMENTS)
if [[ ! -x "$VENV/bin/python" || "$(cat "$VENV/.pins" 2>/dev/null)" != "$pins" ]]; then
    echo "check-k8s: making $VENV ($pins)"
    rm -rf "$VENV"
    python3 -m venv "$VENV" || fail "python3 -m venv $VENV failed (Debian: apt-get install python3-venv)"
    # shellcheck disable=SC2086
    "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check $pins ||
        { rm -rf "$VENV"; fail "pip could not install $pins"; }
    echo "$pins" >"$VENV/.pins"
fi

promtool=$(command -v promtool || true)

"$VENV/bin/python" - "$out" "$K8S_VERSIONS" "$promtool" <<'PY'
import os, re, subprocess, sys, tempfile

import jsonschema
import kubernetes_validate
import yaml
from kubernetes_validate.utils import SchemaNotFoundError

out, versions, promtool = sys.argv[1], sys.argv[2].split(), sys.argv[3]
failures = []


def fail(where, msg):
    failures.append(f"{where}: {msg}")


def load(name):
    with open(os.path.join(out, name + ".yaml")) as f:
        return [d for d in yaml.safe_load_all(f) if d]


def kn(o):
    return f"{o['kind']}/{o['metadata']['name']}"


# --- 3. The CRDs: a minimal schema of our own (no full CRD schema offline). -------
DURATION = {"type": "string", "pattern": r"^(\d+(ms|s|m|h))+$"}
LABEL_SELECTOR = {
    "type": "object",
    "properties": {
        "matchLabels": {"type": "object", "additionalProperties": {"type": "string"}},
        "matchExpressions": {"type": "array"},
    },
    "additionalProperties": False,
    "minProperties": 1,
}
POD_MONITOR = {
    "type": "object",
    "required": ["apiVersion", "kind", "metadata", "spec"],
    "properties": {
        "apiVersion": {"const": "monitoring.coreos.com/v1"},
        "metadata": {
            "type": "object",
            "required": ["name"],
            "properties": {
                "name": {"type": "string", "pattern": r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"},
                "labels": {"type": "object", "additionalProperties": {"type": "string"}},
            },
        },
        "spec": {
            "type": "object",
            "required": ["selector", "podMetricsEndpoints"],
            "properties": {
                "selector": LABEL_SELECTOR,
                "jobLabel": {"type": "string"},
                "podMetricsEndpoints": {
                    "type": "array",
                    "minItems": 1,
                    "items": {
                        "type": "object",
                        "required": ["port"],
                        "properties": {
                            "port": {"type": "string", "minLength": 1},
                            "path": {"type": "string", "pattern": "^/"},
                            "scheme": {"enum": ["http", "https"]},
                            "interval": DURATION,
                            "scrapeTimeout": DURATION,
                            "honorLabels": {"type": "boolean"},
                        },
                    },
                },
            },
        },
    },
}
CRD_SCHEMAS = {("monitoring.coreos.com/v1", "PodMonitor"): POD_MONITOR}


def validate_schemas(label, objs):
    for o in objs:
        key = (o.get("apiVersion"), o.get("kind"))
        if key in CRD_SCHEMAS:
            v = jsonschema.Draft202012Validator(CRD_SCHEMAS[key])
            for e in v.iter_errors(o):
                fail(f"{label} {kn(o)}", f"{'.'.join(map(str, e.path))}: {e.message} (minimal {key[1]} schema)")
            continue
        for version in versions:
            try:
                kubernetes_validate.validate(o, version, strict=True)
            except SchemaNotFoundError:
                fail(f"{label} {kn(o)}", f"no Kubernetes {version} schema for {key[0]} {key[1]} "
                     "(a CRD? give it a minimal schema in CRD_SCHEMAS)")
            except jsonschema.ValidationError as e:
                fail(f"{label} {kn(o)}", f"Kubernetes {version} schema: {'.'.join(map(str, e.path))}: {e.message}")


# --- 4. The objects against each other. -----------------------------------------
def env_of(container):
    return {e["name"]: e for e in container.get("env", [])}


def env_value(container, name):
    e = env_of(container).get(name)
    return None if e is None else e.get("value")


def seconds(text):
    m = re.fullmatch(r"\s*([0-9.]+)\s*(ms|s|m)?\s*", text or "")
    if not m:
        return None
    return float(m.group(1)) * {"ms": 1e-3, "s": 1.0, "m": 60.0, None: 1.0}[m.group(2)]


def pod_spec(o):
    t = o["spec"].get("template")
    return t["spec"] if t else None


def pod_labels(o):
    return o["spec"]["template"]["metadata"].get("labels", {})


def selects(selector, labels):
    return all(labels.get(k) == v for k, v in selector.items())


def by_kind(objs, kind):
    return [o for o in objs if o["kind"] == kind]


def one(objs, kind, name, label):
    found = [o for o in objs if o["kind"] == kind and o["metadata"]["name"] == name]
    if len(found) != 1:
        fail(label, f"expected one {kind}/{name}, found {len(found)}")
        return None
    return found[0]


def named_ports(workload):
    return {p["name"]: p["containerPort"] for c in pod_spec(workload)["containers"] for p in c.get("ports", []) if "name" in p}


def check_together(label, objs, adapter_metric):
    workloads = [o for o in objs if o["kind"] in ("Deployment", "Job", "StatefulSet", "DaemonSet")]
    names = {(o["kind"], o["metadata"]["name"]) for o in objs}
    namespaces = {o["metadata"].get("namespace") for o in objs if o["kind"] != "Namespace"}
    if len(namespaces) != 1:
        fail(label, f"objects in {len(namespaces)} namespaces: {sorted(map(str, namespaces))}")
    for ns in namespaces:
        if ns and ("Namespace", ns) not in names:
            fail(label, f"namespace {ns} is not created by the manifests")

    # Every container: requests and limits, non-root, no privilege escalation.
    for w in workloads:
        spec = pod_spec(w)
        if not spec.get("securityContext", {}).get("runAsNonRoot"):
            fail(f"{label} {kn(w)}", "pod securityContext.runAsNonRoot is not true")
        if spec.get("enableServiceLinks") is not False:
            fail(f"{label} {kn(w)}", "enableServiceLinks is not false (service links put CROSSBATCH_*_PORT=tcp://… into the environment)")
        for c in spec.get("initContainers", []) + spec["containers"]:
            where = f"{label} {kn(w)} container {c['name']}"
            res = c.get("resources", {})
            for part in ("requests", "limits"):
                for r in ("cpu", "memory"):
                    if r not in res.get(part, {}):
                        fail(where, f"no {part}.{r}")
            sc = c.get("securityContext", {})
            if sc.get("allowPrivilegeEscalation") is not False:
                fail(where, "allowPrivilegeEscalation is not false")
            if sc.get("readOnlyRootFilesystem") is not True:
                fail(where, "readOnlyRootFilesystem is not true")
            if "ALL" not in sc.get("capabilities", {}).get("drop", []):
                fail(where, "capabilities do not drop ALL")
        # Every claim a pod mounts exists, and every mount has a volume.
        vols = {v["name"]: v for v in spec.get("volumes", [])}
        for v in vols.values():
            claim = v.get("persistentVolumeClaim", {}).get("claimName")
            if claim and ("PersistentVolumeClaim", claim) not in names:
                fail(f"{label} {kn(w)}", f"volume {v['name']}: no PersistentVolumeClaim {claim}")
        for c in spec.get("initContainers", []) + spec["containers"]:
            for m in c.get("volumeMounts", []):
                if m["name"] not in vols:
                    fail(f"{label} {kn(w)} container {c['name']}", f"mount of unknown volume {m['name']}")

    # Services find pods, and their target ports exist there.
    services = {}
    for s in by_kind(objs, "Service"):
        services[s["metadata"]["name"]] = s
        sel = s["spec"].get("selector", {})
        matched = [w for w in workloads if sel and selects(sel, pod_labels(w))]
        if not matched:
            fail(f"{label} {kn(s)}", f"selector {sel} matches no pod template")
        for p in s["spec"]["ports"]:
            tp = p.get("targetPort", p["port"])
            for w in matched:
                ports = named_ports(w)
                if isinstance(tp, str) and tp not in ports:
                    fail(f"{label} {kn(s)}", f"targetPort {tp} is not a named port of {kn(w)}")
                if isinstance(tp, int) and tp not in ports.values():
                    fail(f"{label} {kn(s)}", f"targetPort {tp} is not a port of {kn(w)}")

    # The server.
    server = one(objs, "Deployment", "crossbatch-server", label)
    if server:
        where = f"{label} {kn(server)}"
        spec = pod_spec(server)
        c = next((c for c in spec["containers"] if c["name"] == "server"), None)
        if c is None:
            fail(where, "no container named server")
            return
        if "replicas" in server["spec"]:
            fail(where, "spec.replicas is set: the HPA owns the count, and every apply would reset it")
        ports = named_ports(server)
        for var, port in (("CROSSBATCH_LISTEN", "grpc"), ("CROSSBATCH_METRICS_ADDR", "metrics")):
            addr = env_value(c, var) or ""
            if not addr.startswith("0.0.0.0:") or ports.get(port) != int(addr.rsplit(":", 1)[1]):
                fail(where, f"{var}={addr!r} does not listen on all addresses at the {port} port {ports.get(port)}")
        inst = env_of(c).get("CROSSBATCH_INSTANCE_ID", {})
        if inst.get("valueFrom", {}).get("fieldRef", {}).get("fieldPath") != "metadata.name":
            fail(where, "CROSSBATCH_INSTANCE_ID is not the pod name (fieldRef metadata.name)")
        for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
            if probe not in c:
                fail(where, f"no {probe}")
        ready = c.get("readinessProbe", {}).get("grpc", {})
        if ready.get("port") != ports.get("grpc") or ready.get("service") != "crossbatch.v1.CrossEncoder":
            fail(where, "readinessProbe is not grpc.health.v1 on the grpc port for crossbatch.v1.CrossEncoder")
        start = c.get("startupProbe", {})
        if start.get("periodSeconds", 10) * start.get("failureThreshold", 3) < 300:
            fail(where, "startupProbe allows under 5 minutes for loading and warming up")
        model = env_value(c, "CROSSBATCH_MODEL") or ""
        mounts = [m for m in c.get("volumeMounts", []) if model.startswith(m["mountPath"].rstrip("/") + "/")]
        if not mounts or not mounts[0].get("readOnly"):
            fail(where, f"CROSSBATCH_MODEL={model!r} is not on a read-only volume mount")
        drain = seconds(env_value(c, "CROSSBATCH_DRAIN_TIMEOUT"))
        if drain is None:
            fail(where, "CROSSBATCH_DRAIN_TIMEOUT is not set explicitly (its default depends on the measured speed)")
            drain = 0.0
        pre = c.get("lifecycle", {}).get("preStop", {})
        pre_s = pre.get("sleep", {}).get("seconds")
        if pre_s is None:
            cmd = pre.get("exec", {}).get("command", [])
            pre_s = float(cmd[1]) if len(cmd) == 2 and cmd[0] == "sleep" else 0.0
        grace = spec.get("terminationGracePeriodSeconds", 30)
        # The server answers the timed-out calls for 2 s more (DRAIN_ANSWER_GRACE in
        # server/src/serve.rs), then flushes telemetry: 3 s of margin for that.
        need = pre_s + drain + 2 + 3
        if grace < need:
            fail(where, f"terminationGracePeriodSeconds {grace} < preStop {pre_s:g} s + drain {drain:g} s + 2 s answers + 3 s margin")
        backend = env_value(c, "CROSSBATCH_BACKEND")
        want = {"base": "auto", "cpu": "cpu", "nvidia-gpu": "wgpu"}[label]
        if backend != want:
            fail(where, f"CROSSBATCH_BACKEND={backend!r}, want {want!r}")
        gpus = c.get("resources", {}).get("limits", {}).get("nvidia.com/gpu")
        if label == "nvidia-gpu":
            if str(gpus) != "1":
                fail(where, f"limits nvidia.com/gpu is {gpus!r}, want 1")
            if not spec.get("nodeSelector") or not spec.get("tolerations"):
                fail(where, "no nodeSelector and tolerations for GPU nodes")
            if "graphics" not in (env_value(c, "NVIDIA_DRIVER_CAPABILITIES") or ""):
                fail(where, "NVIDIA_DRIVER_CAPABILITIES lacks graphics (the Vulkan ICD wgpu needs)")
        elif gpus is not None:
            fail(where, "asks for a GPU outside the nvidia-gpu overlay")

        headless = services.get("crossbatch-server-headless")
        if not headless or headless["spec"].get("clusterIP") != "None":
            fail(label, "no headless Service crossbatch-server-headless (clusterIP: None)")
        elif headless["spec"].get("publishNotReadyAddresses"):
            fail(label, "the headless Service publishes pods that are not ready (warming, draining)")
        if "crossbatch-server" not in services or services["crossbatch-server"]["spec"].get("clusterIP") == "None":
            fail(label, "no ClusterIP Service crossbatch-server")

        for pdb in by_kind(objs, "PodDisruptionBudget"):
            if not selects(pdb["spec"]["selector"].get("matchLabels", {}), pod_labels(server)):
                fail(f"{label} {kn(pdb)}", "does not select the server's pods")

        # Metrics: the PodMonitor scrapes the server's metrics port.
        monitors = by_kind(objs, "PodMonitor")
        if not monitors:
            fail(label, "no PodMonitor")
        for pm in monitors:
            if not selects(pm["spec"]["selector"].get("matchLabels", {}), pod_labels(server)):
                fail(f"{label} {kn(pm)}", "does not select the server's pods")
            for ep in pm["spec"]["podMetricsEndpoints"]:
                if ep.get("port") not in ports:
                    fail(f"{label} {kn(pm)}", f"port {ep.get('port')!r} is not a named port of the server")

        # The HPA scales the server on the adapter's metric.
        hpas = by_kind(objs, "HorizontalPodAutoscaler")
        if len(hpas) != 1:
            fail(label, f"{len(hpas)} HorizontalPodAutoscalers, want 1")
        for h in hpas:
            where = f"{label} {kn(h)}"
            ref = h["spec"]["scaleTargetRef"]
            if (ref["kind"], ref["name"]) != ("Deployment", "crossbatch-server"):
                fail(where, f"scales {ref['kind']}/{ref['name']}, not the server Deployment")
            if not 1 <= h["spec"].get("minReplicas", 1) <= h["spec"]["maxReplicas"]:
                fail(where, "minReplicas/maxReplicas out of order")
            pods = [m for m in h["spec"].get("metrics", []) if m["type"] == "Pods"]
            if not pods:
                fail(where, "no Pods metric")
            for m in pods:
                name = m["pods"]["metric"]["name"]
                if name != adapter_metric:
                    fail(where, f"scales on {name!r}, but the prometheus-adapter rule serves {adapter_metric!r}")
                if m["pods"]["target"]["type"] != "AverageValue":
                    fail(where, "a Pods metric target must be AverageValue")
            down = h["spec"].get("behavior", {}).get("scaleDown", {})
            if down.get("stabilizationWindowSeconds", 300) < 60:
                fail(where, "scale-down stabilization under a minute: every removal is a drain")

    # The drivers: an Indexed Job, as many as the collector expects, on the headless
    # Service, coordinated by the collector's Service.
    job = one(objs, "Job", "crossbatch-driver", label)
    collector = one(objs, "Deployment", "crossbatch-collector", label)
    if job and collector:
        where = f"{label} {kn(job)}"
        js = job["spec"]
        if js.get("completionMode") != "Indexed":
            fail(where, "completionMode is not Indexed")
        n = js.get("parallelism")
        if js.get("completions") != n:
            fail(where, f"completions {js.get('completions')} != parallelism {n}: all drivers must run at once")
        cc = next(c for c in pod_spec(collector)["containers"] if c["name"] == "collector")
        expect = env_value(cc, "CROSSBATCH_EXPECT_DRIVERS")
        if expect != str(n):
            fail(where, f"the collector expects {expect} drivers, the Job runs {n}")
        d = pod_spec(job)["containers"][0]
        env = env_of(d)
        idx = env.get("COMPLETION_INDEX", {}).get("valueFrom", {}).get("fieldRef", {}).get("fieldPath", "")
        if "job-completion-index" not in idx or "$(COMPLETION_INDEX)" not in (env_value(d, "CROSSBATCH_DRIVER_ID") or ""):
            fail(where, "CROSSBATCH_DRIVER_ID is not made from the completion index")
        if "CROSSBATCH_RUN_ID" not in env:
            fail(where, "no CROSSBATCH_RUN_ID")
        target = env_value(d, "CROSSBATCH_TARGET") or ""
        m = re.fullmatch(r"dns:///([a-z0-9-]+):(\d+)", target)
        hs = services.get(m.group(1)) if m else None
        if not hs or hs["spec"].get("clusterIP") != "None" or int(m.group(2)) not in [p["port"] for p in hs["spec"]["ports"]]:
            fail(where, f"CROSSBATCH_TARGET={target!r} is not dns:/// on a headless Service's port")
        for var in ("CROSSBATCH_COORDINATOR", "CROSSBATCH_OTLP_ENDPOINT"):
            url = env_value(d, var) or ""
            m = re.fullmatch(r"http://([a-z0-9-]+):(\d+)", url)
            cs = services.get(m.group(1)) if m else None
            if not cs or not selects(cs["spec"]["selector"], pod_labels(collector)) or \
                    int(m.group(2)) not in [p["port"] for p in cs["spec"]["ports"]]:
                fail(where, f"{var}={url!r} is not the collector's Service")


# Two pods over four minutes of 15 s scrapes: pod a answers 4 calls and runs 2
# batches per scrape, its calls waiting 0.75 s on average and its batches taking
# 0.25 s (a ratio of 3); pod b is idle (0, not NaN).
PROMTOOL_SERIES = {
    "a": {"queue_duration_seconds_sum": "0+3x20", "queue_duration_seconds_count": "0+4x20",
          "inference_duration_seconds_sum": "0+0.5x20", "inference_duration_seconds_count": "0+2x20"},
    "b": {"queue_duration_seconds_sum": "0x20", "queue_duration_seconds_count": "0x20",
          "inference_duration_seconds_sum": "0x20", "inference_duration_seconds_count": "0x20"},
}
PROMTOOL_EXPECT = {"a": 3, "b": 0}


def check_promql(where, promql):
    """The query parses (promtool check rules) and gives the expected ratio on
    synthetic series (promtool test rules)."""
    with tempfile.TemporaryDirectory() as d:
        rules = os.path.join(d, "rules.yml")
        with open(rules, "w") as f:
            yaml.safe_dump({"groups": [{"name": "adapter", "rules": [{"record": "adapter:query", "expr": promql}]}]}, f)
        p = subprocess.run([promtool, "check", "rules", rules], capture_output=True, text=True)
        if p.returncode != 0:
            fail(where, f"metricsQuery is not valid PromQL:\n{p.stdout}{p.stderr}")
            return
        series = [{"series": f'crossbatch_{name}{{namespace="crossbatch",pod="{pod}"}}', "values": values}
                  for pod, s in PROMTOOL_SERIES.items() for name, values in s.items()]
        expect = [{"labels": f'adapter:query{{pod="{pod}"}}', "value": v} for pod, v in PROMTOOL_EXPECT.items()]
        test = os.path.join(d, "test.yml")
        with open(test, "w") as f:
            yaml.safe_dump({"rule_files": ["rules.yml"], "evaluation_interval": "15s", "tests": [{
                "interval": "15s", "input_series": series,
                "promql_expr_test": [{"expr": "adapter:query", "eval_time": "4m", "exp_samples": expect}]}]}, f)
        p = subprocess.run([promtool, "test", "rules", test], capture_output=True, text=True, cwd=d)
        if p.returncode != 0:
            fail(where, f"metricsQuery on synthetic series (pod a: calls wait 0.75 s, batches take 0.25 s; "
                 f"pod b idle) does not give {PROMTOOL_EXPECT}:\n{p.stdout}{p.stderr}")
            return
    print(f"check-k8s: {where}: metricsQuery parses as PromQL and gives {PROMTOOL_EXPECT} on synthetic series (promtool)")


def check_adapter(objs):
    """The rule's shape; returns the metric name it serves (and checks its PromQL)."""
    cms = by_kind(objs, "ConfigMap")
    if len(cms) != 1 or "config.yaml" not in cms[0].get("data", {}):
        fail("prometheus-adapter", "want one ConfigMap with a config.yaml")
        return None
    cfg = yaml.safe_load(cms[0]["data"]["config.yaml"])
    rules = cfg.get("rules") if isinstance(cfg, dict) else None
    if not rules:
        fail("prometheus-adapter", "config.yaml has no rules")
        return None
    served = None
    for i, r in enumerate(rules):
        where = f"prometheus-adapter rule {i}"
        for key in ("seriesQuery", "resources", "name", "metricsQuery"):
            if key not in r:
                fail(where, f"no {key}")
        if any(k not in r for k in ("seriesQuery", "resources", "name", "metricsQuery")):
            continue
        over = r["resources"].get("overrides", {})
        if over.get("namespace", {}).get("resource") != "namespace" or over.get("pod", {}).get("resource") != "pod":
            fail(where, "resources.overrides do not map the namespace and pod labels (a per-pod metric needs both)")
        series = re.match(r"[a-zA-Z_:][a-zA-Z0-9_:]*", r["seriesQuery"].strip())
        if not series or not re.search(r["name"].get("matches", ""), series.group(0)):
            fail(where, f"name.matches {r['name'].get('matches')!r} does not match the series {r['seriesQuery']!r}")
        served = r["name"].get("as")
        q = r["metricsQuery"]
        for t in ("<<.LabelMatchers>>", "<<.GroupBy>>"):
            if t not in q:
                fail(where, f"metricsQuery does not use {t} (it would not be per pod)")
        # The query as the adapter sends it for two pods of a namespace.
        promql = q.replace("<<.LabelMatchers>>", 'namespace="crossbatch",pod=~"a|b"').replace("<<.GroupBy>>", "pod")
        if re.search(r"<<[^>]*>>", promql):
            fail(where, f"unknown template fields in metricsQuery: {re.findall(r'<<[^>]*>>', promql)}")
        elif promtool:
            check_promql(where, promql)
        elif os.environ.get("CI") == "true":
            fail(where, "promtool not found, so the query cannot be checked (scripts/ensure-deps.sh --promtool)")
        else:
            print(f"check-k8s: {where}: metricsQuery NOT checked as PromQL: promtool not found "
                  "(scripts/ensure-deps.sh --promtool installs it)")
    return served


adapter = load("prometheus-adapter")
validate_schemas("prometheus-adapter", adapter)
metric = check_adapter(adapter)
for label in ("base", "cpu", "nvidia-gpu"):
    objs = load(label)
    validate_schemas(label, objs)
    check_together(label, objs, metric)
    kinds = sorted({o["kind"] for o in objs})
    print(f"check-k8s: {label}: {len(objs)} objects ({', '.join(kinds)})")

if failures:
    print(f"check-k8s: FAIL: {len(failures)} problem(s):", file=sys.stderr)
    for f in failures:
        print(f"  {f}", file=sys.stderr)
    sys.exit(1)
print(f"check-k8s: OK: schemas of Kubernetes {' and '.join(versions)} (kubernetes-validate {kubernetes_validate.__version__}, strict),"
      " the PodMonitor against a minimal schema of ours, the objects against each other, and the adapter query "
      + ("with promtool" if promtool else "NOT with promtool (not installed)"))
PY
