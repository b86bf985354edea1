// crossbatch dashboard: renders a run snapshot (the collector's /api/snapshot shape)
// as tiles, charts and tables. Live: follows /events (server-sent events). In a saved
// HTML report: renders the embedded final snapshot once. No dependencies.
// Every value of the snapshot (driver ids, hosts, model names: whatever peers sent)
// reaches the page as text nodes or setAttribute values, never parsed as markup.
"use strict";

const COLORS = ["#4cc2ff", "#f0883e", "#3fb950", "#d2a8ff", "#f85149", "#e3b341"];

// A small non-zero figure keeps two significant digits (0.020, 0.0031) rather than
// reading as zero; the report's markdown does the same (figure.rs).
function fmt(v, digits) {
  if (v === null || v === undefined || Number.isNaN(v)) return "n/a";
  const d = digits === undefined ? (Math.abs(v) >= 100 ? 0 : Math.abs(v) >= 10 ? 1 : 2) : digits;
  if (v !== 0 && Math.abs(v) < (d === 0 ? 1 : 0.1)) {
    return v.toLocaleString("en-US", { minimumSignificantDigits: 2, maximumSignificantDigits: 2 });
  }
  return v.toLocaleString("en-US", { minimumFractionDigits: d, maximumFractionDigits: d });
}

function el(tag, attrs, children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) e.setAttribute(k, v);
  for (const c of children || []) e.append(c);
  return e;
}

function svgEl(tag, attrs) {
  const e = document.createElementNS("http://www.w3.org/2000/svg", tag);
  for (const [k, v] of Object.entries(attrs || {})) e.setAttribute(k, v);
  return e;
}

function niceMax(v) {
  if (!(v > 0)) return 1;
  const mag = Math.pow(10, Math.floor(Math.log10(v)));
  for (const m of [1, 2, 2.5, 5, 10]) if (m * mag >= v) return m * mag;
  return 10 * mag;
}

// lines: [{name, values: [[x, y|null], ...]}]
function lineChart(title, unit, lines) {
  const box = el("div", { class: "chart", "data-chart": title });
  box.append(el("h3", {}, [title + (unit ? " (" + unit + ")" : "")]));
  const W = 440, H = 190, L = 46, R = 10, T = 8, B = 22;
  const svg = svgEl("svg", { viewBox: `0 0 ${W} ${H}`, preserveAspectRatio: "none" });
  const pts = lines.flatMap((l) => l.values.filter((p) => p[1] !== null && p[1] !== undefined));
  if (pts.length === 0) {
    const t = svgEl("text", { x: W / 2, y: H / 2, "text-anchor": "middle", class: "empty" });
    t.textContent = "no data yet";
    svg.append(t);
    box.append(svg);
    return box;
  }
  const xMax = Math.max(1, ...pts.map((p) => p[0]));
  const yMax = niceMax(Math.max(...pts.map((p) => p[1])));
  const x = (v) => L + (W - L - R) * (v / xMax);
  const y = (v) => H - B - (H - T - B) * (v / yMax);
  for (let k = 0; k <= 4; k++) {
    const v = (yMax * k) / 4;
    svg.append(svgEl("line", { x1: L, x2: W - R, y1: y(v), y2: y(v), stroke: "#2a3541" }));
    const t = svgEl("text", { x: L - 4, y: y(v) + 4, "text-anchor": "end", fill: "#8b98a5", "font-size": 10 });
    t.textContent = fmt(v, Number.isInteger(v) ? 0 : 1);
    svg.append(t);
  }
  for (let k = 0; k <= 4; k++) {
    const v = (xMax * k) / 4;
    const t = svgEl("text", { x: x(v), y: H - 6, "text-anchor": "middle", fill: "#8b98a5", "font-size": 10 });
    t.textContent = fmt(v, Number.isInteger(v) ? 0 : 1) + " s";
    svg.append(t);
  }
  lines.forEach((l, i) => {
    const color = COLORS[i % COLORS.length];
    let d = "";
    let pen = false;
    for (const [px, py] of l.values) {
      if (py === null || py === undefined) { pen = false; continue; }
      d += (pen ? "L" : "M") + x(px).toFixed(1) + " " + y(py).toFixed(1);
      pen = true;
    }
    svg.append(svgEl("path", { d, fill: "none", stroke: color, "stroke-width": 2 }));
    for (const [px, py] of l.values) {
      if (py === null || py === undefined) continue;
      svg.append(svgEl("circle", { cx: x(px), cy: y(py), r: 2, fill: color }));
    }
  });
  box.append(svg);
  const legend = el("div", { class: "legend" });
  lines.forEach((l, i) => {
    legend.append(el("span", {}, [el("i", { style: "background:" + COLORS[i % COLORS.length] }), l.name]));
  });
  box.append(legend);
  return box;
}

function tile(label, value, sub, cls) {
  return el("div", { class: "tile" }, [
    el("div", { class: "label" }, [label]),
    el("div", { class: "value" + (cls ? " " + cls : ""), "data-tile": label }, [value]),
    el("div", { class: "sub" }, [sub || "\u00a0"]),
  ]);
}

function table(headers, rows) {
  const t = el("table");
  t.append(el("tr", {}, headers.map((h) => el("th", {}, [h]))));
  for (const r of rows) t.append(el("tr", {}, r.map((c) => el("td", {}, [String(c)]))));
  return t;
}

// The server replicas: one row each; with several, the driver × replica matrix of
// calls; and the drivers' retries and ejections. Keys of calls_by_driver are driver
// ids (a peer's strings): read as own properties only.
function serversSection(s) {
  const rows = s.servers || [];
  if (rows.length === 0) return [];
  const name = (v) => (v ? v : "-");
  const own = (m, k) => (m && Object.prototype.hasOwnProperty.call(m, k) ? m[k] : 0);
  const state = (r) => (r.lost ? "lost at " + fmt(r.lost_at_s, 1) + " s" : r.instance ? "up" : "-");
  const out = [
    el("h2", {}, ["Servers"]),
    table(
      ["Server", "State", "Calls", "Pairs ok", "Share", "P50 (ms)", "P95 (ms)", "Queue P50 (ms)", "Inference P50 (ms)", "Batches", "Pairs/batch"],
      rows.map((r) => [
        name(r.instance), state(r), r.calls, r.pairs_ok, fmt(r.share * 100, 1) + " %",
        fmt(r.latency_p50_ms), fmt(r.latency_p95_ms), fmt(r.queue_p50_ms), fmt(r.inference_p50_ms), r.batches, fmt(r.pairs_per_batch, 1),
      ]),
    ),
  ];
  if (rows.length > 1) {
    const drivers = [...new Set(rows.flatMap((r) => Object.keys(r.calls_by_driver || {})))].sort();
    out.push(el("h3", {}, ["Calls by driver and replica"]));
    out.push(table(["Driver", ...rows.map((r) => name(r.instance))], drivers.map((d) => [d, ...rows.map((r) => own(r.calls_by_driver, d))])));
  }
  const t = s.totals || {};
  if (rows.length > 1 || t.retries || t.ejections) {
    out.push(el("p", { class: "progress", id: "retries" }, [`Retries: ${t.retries || 0} · ejections: ${t.ejections || 0}`]));
  }
  return out;
}

function known(v) {
  return Boolean(v) && !String(v).startsWith("unknown");
}

function render(s) {
  document.title = (s.title || "crossbatch") + " — crossbatch";
  const root = document.getElementById("app");
  root.replaceChildren();

  const head = el("header", {}, [
    el("h1", {}, [s.title || "crossbatch"]),
    el("span", { class: "badge " + s.state, id: "state" }, [s.state]),
    el("span", { class: "meta" }, [
      // The server's facts arrive with the drivers' completion records; until then
      // they are "unknown" and left out.
      [
        s.run_id,
        known(s.model) && s.model + (s.stand_in ? " (stand-in)" : ""),
        known(s.backend) && s.backend + (known(s.device) ? " on " + s.device : ""),
        known(s.batch_policy) && "policy " + s.batch_policy,
      ]
        .filter(Boolean)
        .join(" · "),
    ]),
  ]);
  root.append(head);
  const main = el("main");
  root.append(main);

  if (s.state === "waiting") {
    main.append(el("p", { class: "progress" }, ["Waiting for a run: start the drivers; this page follows the first spans that arrive."]));
    return;
  }
  if (s.step) {
    const of = s.step.of ? " of " + s.step.of : "";
    const frac = s.step.of ? Math.min(1, (s.step.index - (s.state === "done" ? 0 : 0.5)) / s.step.of) : 0;
    main.append(
      el("div", { class: "progress", id: "step" }, [
        `Step ${s.step.index}${of}: batch ${s.step.batch} × concurrency ${s.step.concurrency}` + (s.state === "done" ? " — finished" : ""),
        el("div", { class: "bar" }, [el("div", { style: `width:${(s.state === "done" ? 1 : frac) * 100}%` })]),
      ]),
    );
  }
  const t = s.tiles;
  const errCount = Object.values(t.errors || {}).reduce((a, b) => a + b, 0);
  const errText = errCount === 0 ? "none" : Object.entries(t.errors).map(([k, v]) => `${k} ${v}`).join(", ");
  const lat = t.latency_ms || {};
  main.append(
    el("div", { class: "tiles" }, [
      tile("Pairs done", fmt(t.pairs_ok, 0), fmt(t.calls, 0) + " calls"),
      tile("Pairs/s now", fmt(t.pairs_per_s_now), "avg " + fmt(t.pairs_per_s_avg)),
      tile("Latency p50", fmt(lat.p50) + " ms", "driver's, all configs"),
      tile("Latency p95", fmt(lat.p95) + " ms"),
      tile("Latency p99", fmt(lat.p99) + " ms"),
      tile("Tokenize", fmt(t.tokenize_ms) + " ms", "avg per call"),
      tile("Queue wait", fmt(t.queue_ms) + " ms", "avg per call"),
      tile("Inference", fmt(t.inference_ms) + " ms", "avg per batch"),
      tile("Errors", fmt(errCount, 0), errText, errCount > 0 ? "bad" : ""),
      tile("CPU", fmt(t.cpu_pct, 0) + " %", "server, % of one core"),
      tile((t.memory_kind || "host") + " memory", fmt(t.memory_mb, 0) + " MB"),
      tile("Padding waste", fmt(t.padding_pct, 1) + " %"),
    ]),
  );

  const x = (i) => i * (s.series_interval_s || 1);
  const col = (f) => (s.series || []).map((r, i) => [x(i), f(r)]);
  main.append(
    el("div", { class: "charts" }, [
      lineChart("Latency percentiles", "ms", [
        { name: "p50", values: col((r) => r.latency_p50_ms) },
        { name: "p95", values: col((r) => r.latency_p95_ms) },
        { name: "p99", values: col((r) => r.latency_p99_ms) },
      ]),
      lineChart("Throughput", "pairs/s", [{ name: "pairs/s", values: col((r) => r.throughput) }]),
      lineChart("Stage breakdown", "ms", [
        { name: "tokenize", values: col((r) => r.tokenize_ms) },
        { name: "queue wait", values: col((r) => r.queue_ms) },
        { name: "inference (per batch)", values: col((r) => r.inference_ms) },
      ]),
      lineChart("Batches", "pairs per batch, % padding", [
        { name: "pairs per batch", values: col((r) => r.batch_pairs) },
        { name: "padding %", values: col((r) => r.padding_pct) },
      ]),
      lineChart("CPU and memory", "% of one core, MB", [
        { name: "CPU %", values: col((r) => r.cpu_pct) },
        { name: "memory MB", values: col((r) => r.gpu_mem_mb ?? r.host_mem_mb) },
      ]),
    ]),
  );

  main.append(
    el("section", {}, [
      el("h2", {}, ["Configs"]),
      table(
        ["Batch", "Concurrency", "Calls", "Pairs", "Pairs/s", "P50 (ms)", "P95 (ms)", "P99 (ms)", "Errors"],
        (s.configs || []).map((c) => [
          c.batch, c.concurrency, c.calls, c.pairs_ok, fmt(c.pairs_per_s),
          fmt(c.latency_ms && c.latency_ms.p50), fmt(c.latency_ms && c.latency_ms.p95), fmt(c.latency_ms && c.latency_ms.p99), c.errors,
        ]),
      ),
      el("h2", {}, ["Drivers"]),
      table(
        ["Driver", "Host", "State", "Steps", "Calls", "Pairs ok", "Errors"],
        (s.drivers || []).map((d) => [
          d.driver_id, d.host, d.state, d.steps_done + (d.steps_planned ? " / " + d.steps_planned : ""), d.calls, d.pairs_ok, d.errors,
        ]),
      ),
      ...serversSection(s),
    ]),
  );
  if (s.report) main.append(el("p", { class: "progress" }, ["Report: " + s.report]));
}

function start() {
  const embedded = document.getElementById("snapshot");
  if (embedded) {
    render(JSON.parse(embedded.textContent));
    return;
  }
  const status = document.getElementById("conn");
  // The state when the page was served, so it shows figures before the event
  // stream's first message; the stream then keeps it current.
  const initial = document.getElementById("initial");
  if (initial) render(JSON.parse(initial.textContent));
  const source = new EventSource("events");
  source.addEventListener("snapshot", (e) => {
    render(JSON.parse(e.data));
    if (status) status.textContent = "live · updated " + new Date().toLocaleTimeString();
  });
  source.onerror = () => {
    if (status) status.textContent = "disconnected from the collector; retrying…";
  };
}

document.addEventListener("DOMContentLoaded", start);
