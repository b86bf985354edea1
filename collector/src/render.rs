//! The report as markdown, in the shape of `report-example.md` (sections, tables,
//! columns, order): text only, every figure already computed by `report::build`.
//! Every string that came from a peer goes through `escape`, every figure through
//! `figure::fig`.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use crate::escape::{md, md_code, md_url};
use crate::figure::fig;
use crate::report::Report;

/// Links to the plots beside the markdown (file names, relative).
#[derive(Debug, Clone, Default)]
pub struct Plots {
    pub latency: Option<String>,
    pub throughput: Option<String>,
    pub series: Option<String>,
}

fn na_or(v: Option<f64>, digits: usize) -> String {
    match v {
        Some(x) => fig(x, digits),
        None => "n/a".into(),
    }
}

fn dash_or(v: Option<f64>, digits: usize) -> String {
    match v {
        Some(x) => fig(x, digits),
        None => "-".into(),
    }
}

fn errors_cell(errors: &BTreeMap<String, usize>) -> String {
    if errors.is_empty() {
        return "0".into();
    }
    let total: usize = errors.values().sum();
    let by: Vec<String> = errors.iter().map(|(k, v)| format!("{k} {v}")).collect();
    format!("{total} ({})", by.join(", "))
}

/// The markdown text of the report.
pub fn markdown(r: &Report, plots: &Plots) -> String {
    let mut o = String::new();
    let w = &mut o;
    let _ = writeln!(w, "# {}\n", md(&r.title));
    let _ = writeln!(w, "_{}_\n", md(&r.description));
    if let Some(why) = &r.partial {
        let _ = writeln!(
            w,
            "> **Partial report:** {}. The figures cover what was received.\n",
            md(why)
        );
    }
    let _ = writeln!(w, "**Timestamp:** {}\n", md(&r.timestamp));
    let model_note = if r.stand_in {
        " — offline stand-in: same architecture and cost, deterministic classifier head; its scores are not relevance-trained"
    } else {
        ""
    };
    let _ = writeln!(w, "**Model:** {}{model_note}\n", md_code(&r.model));
    let _ = writeln!(
        w,
        "**Backend:** {} | **Device:** {}\n",
        md_code(&r.backend),
        md_code(&r.device)
    );
    match (r.max_batch, r.batch_timeout_ms) {
        (Some(mb), Some(t)) => {
            let policy = if r.batch_policy.is_empty() {
                String::new()
            } else {
                format!(", policy={}", md(&r.batch_policy))
            };
            let _ = writeln!(
                w,
                "**Dynamic Batching:** enabled (max_batch={mb}, timeout={t}ms{policy})\n"
            );
            if !r.max_batch_chosen_by.is_empty() {
                let _ = writeln!(w, "**Max batch set by:** {}\n", md(&r.max_batch_chosen_by));
            }
        }
        _ => {
            let _ = writeln!(
                w,
                "**Dynamic Batching:** n/a (no driver reported the server's settings)\n"
            );
        }
    }
    let _ = writeln!(
        w,
        "**Run:** {} | **Drivers:** {}\n",
        md_code(&r.run_id),
        r.drivers.len()
    );

    let _ = writeln!(w, "## Results Summary\n");
    let _ = writeln!(
        w,
        "| Batch | Conc | Pairs | Time(s) | Lat Avg | Lat P95 | Lat P99 | TP Avg | TP P95 | Errors |"
    );
    let _ = writeln!(
        w,
        "|-------|------|-------|---------|---------|---------|---------|--------|--------|--------|"
    );
    for c in &r.configs {
        let l = c.latency_ms;
        let t = c.throughput;
        let ms = |v: Option<f64>| {
            v.map(|x| format!("{}ms", fig(x, 1)))
                .unwrap_or_else(|| "n/a".into())
        };
        let _ = writeln!(
            w,
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
            c.batch,
            c.concurrency,
            c.pairs,
            fig(c.time_s, 2),
            ms(l.map(|d| d.avg)),
            ms(l.map(|d| d.p95)),
            ms(l.map(|d| d.p99)),
            na_or(t.map(|d| d.avg), 1),
            na_or(t.map(|d| d.p95), 1),
            errors_cell(&c.errors)
        );
    }
    let _ = writeln!(
        w,
        "\nLatency in ms as the driver measured it; percentiles by nearest rank.[^pct]\n"
    );
    if let Some(p) = &plots.throughput {
        let _ = writeln!(w, "![Throughput vs concurrency]({})\n", md_url(p));
    }

    let _ = writeln!(w, "## Detailed Metrics\n");
    for c in &r.configs {
        let _ = writeln!(
            w,
            "### Config {}: batch={}, concurrency={}\n",
            c.index, c.batch, c.concurrency
        );
        let _ = writeln!(w, "**Total:** {} pairs in {}s\n", c.pairs, fig(c.time_s, 2));
        if !c.errors.is_empty() {
            let _ = writeln!(
                w,
                "**Errors:** {} calls ({} pairs): {}\n",
                c.errors.values().sum::<usize>(),
                c.pairs_failed,
                errors_cell(&c.errors)
            );
        }
        if c.late_calls > 0 {
            let _ = writeln!(
                w,
                "**Late sends:** {} calls could not be sent at their intended time (max in flight reached); their latency counts from the intended time.\n",
                c.late_calls
            );
        }
        for (head, d) in [
            ("Latency (ms)", c.latency_ms),
            ("Throughput (pairs/s)", c.throughput),
        ] {
            let _ = writeln!(w, "#### {head}");
            let _ = writeln!(w, "| Metric | Value |\n|--------|-------|");
            let f = |v: Option<f64>| na_or(v, 2);
            for (name, v) in [
                ("Average", d.map(|d| d.avg)),
                ("Min", d.map(|d| d.min)),
                ("Max", d.map(|d| d.max)),
                ("Std Dev", d.map(|d| d.std_dev)),
                ("P50", d.map(|d| d.p50)),
                ("P90", d.map(|d| d.p90)),
                ("P95", d.map(|d| d.p95)),
                ("P99", d.map(|d| d.p99)),
            ] {
                let _ = writeln!(w, "| {name} | {} |", f(v));
            }
            let _ = writeln!(w);
        }
        let _ = writeln!(w, "#### Latency vs Throughput Analysis\n");
        let _ = writeln!(
            w,
            "| Latency Range | Avg Throughput | Min Throughput | Max Throughput | Count |"
        );
        let _ = writeln!(
            w,
            "|---------------|----------------|----------------|----------------|-------|"
        );
        for b in &c.buckets {
            let _ = writeln!(
                w,
                "| {} | {} | {} | {} | {} |",
                b.label,
                dash_or(b.avg, 2),
                dash_or(b.min, 2),
                dash_or(b.max, 2),
                b.count
            );
        }
        let _ = writeln!(w);
        match c.correlation {
            Some(r) => {
                let _ = writeln!(
                    w,
                    "**Correlation:** {} (negative correlation expected: lower latency = higher throughput)\n",
                    fig(r, 3)
                );
            }
            None => {
                let _ = writeln!(
                    w,
                    "**Correlation:** n/a (fewer than two successful calls, or no spread in latency)\n"
                );
            }
        }
    }
    if let Some(p) = &plots.latency {
        let _ = writeln!(w, "![Latency distribution per config]({})\n", md_url(p));
    }

    let _ = writeln!(w, "## Overall Summary\n");
    let _ = writeln!(
        w,
        "| Metric | Value | Config |\n|--------|-------|--------|"
    );
    let ov = &r.overall;
    let pv = |v: Option<(f64, String)>, unit: &str, digits: usize| match v {
        Some((x, l)) => format!("{}{unit} | {}", fig(x, digits), md(&l)),
        None => "n/a | -".into(),
    };
    let _ = writeln!(
        w,
        "| Best Throughput[^tp] | {} |",
        pv(ov.best_throughput.clone(), " p/s", 2)
    );
    let _ = writeln!(
        w,
        "| Best Latency | {} |",
        pv(ov.best_latency.clone(), "ms", 2)
    );
    let _ = writeln!(
        w,
        "| Avg Throughput[^tp] | {} | all configs |",
        ov.avg_throughput
            .map(|x| format!("{} p/s", fig(x, 2)))
            .unwrap_or_else(|| "n/a".into())
    );
    let _ = writeln!(
        w,
        "| Avg Latency | {} | all configs |\n",
        ov.avg_latency
            .map(|x| format!("{}ms", fig(x, 2)))
            .unwrap_or_else(|| "n/a".into())
    );

    let _ = writeln!(w, "## Dashboard Metrics Summary\n");
    let _ = writeln!(
        w,
        "| Metric | Avg | Min | Max | P50 | P95 |\n|--------|-----|-----|-----|-----|-----|"
    );
    let mut footnotes: Vec<(String, String)> = Vec::new();
    for row in &r.dashboard {
        match (&row.dist, &row.why_na) {
            (Some(d), _) => {
                let _ = writeln!(
                    w,
                    "| {} | {} | {} | {} | {} | {} |",
                    md(&row.metric),
                    fig(d.avg, 1),
                    fig(d.min, 1),
                    fig(d.max, 1),
                    fig(d.p50, 1),
                    fig(d.p95, 1)
                );
            }
            (None, why) => {
                let key = format!("na{}", footnotes.len() + 1);
                footnotes.push((
                    key.clone(),
                    format!(
                        "{}: {}.",
                        md(&row.metric),
                        md(why.as_deref().unwrap_or_default())
                    ),
                ));
                let _ = writeln!(
                    w,
                    "| {} | n/a[^{key}] | n/a | n/a | n/a | n/a |",
                    md(&row.metric)
                );
            }
        }
    }
    let _ = writeln!(w);

    let _ = writeln!(w, "## Dashboard Time-Series Data\n");
    if let Some(p) = &plots.series {
        let _ = writeln!(w, "![Time series]({})\n", md_url(p));
    }
    let _ = writeln!(
        w,
        "| Index | GPU Mem (MB) | GPU Util (%) | CPU (%) | Latency (ms) | Throughput | Tokenize (ms) | Inference (ms) | Queue (ms) | Padding (%) |"
    );
    let _ = writeln!(
        w,
        "|-----|-----|-----|-----|-----|-----|-----|-----|-----|-----|"
    );
    let mem_na = r
        .dashboard
        .iter()
        .find(|d| d.metric.starts_with("GPU Memory"))
        .is_some_and(|d| d.dist.is_none());
    let util_na = r
        .dashboard
        .iter()
        .find(|d| d.metric.starts_with("GPU Util"))
        .is_some_and(|d| d.dist.is_none());
    for s in &r.series {
        let cell = |v: Option<f64>, na: bool| if na { "n/a".to_string() } else { dash_or(v, 1) };
        let _ = writeln!(
            w,
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
            s.index,
            cell(s.gpu_mem_mb, mem_na),
            cell(s.gpu_util_pct, util_na),
            dash_or(s.cpu_pct, 1),
            dash_or(s.latency_ms, 1),
            fig(s.throughput, 0),
            dash_or(s.tokenize_ms, 1),
            dash_or(s.inference_ms, 1),
            dash_or(s.queue_ms, 1),
            dash_or(s.padding_pct, 1),
        );
    }
    let _ = writeln!(
        w,
        "\nOne row per {} s from the run's first call; Throughput is pairs completed in the interval per second; \
         latency, tokenize and queue average the calls completed in it, inference and padding the batches started in it; \
         `-` means nothing happened in that interval.\n",
        fig(r.series_interval_s, 0)
    );

    let _ = writeln!(w, "## Drivers\n");
    let _ = writeln!(
        w,
        "| Driver | Host | Calls | Pairs Sent | Pairs OK | Errors | Steps | State |\n|--------|------|-------|------------|----------|--------|-------|-------|"
    );
    for d in &r.drivers {
        let steps = match d.steps_planned {
            Some(p) => format!("{}/{p}", d.steps_done),
            None => format!("{}/?", d.steps_done),
        };
        let _ = writeln!(
            w,
            "| {} | {} | {} | {} | {} | {} | {} | {} |",
            md(&d.driver_id),
            md(&d.host),
            d.calls,
            d.pairs_sent,
            d.pairs_ok,
            d.errors,
            steps,
            md(&d.state)
        );
    }
    let lost: Vec<String> = r
        .drivers
        .iter()
        .filter(|d| d.state == "lost")
        .map(|d| md(&d.driver_id))
        .collect();
    if !lost.is_empty() {
        let _ = writeln!(
            w,
            "\n**Lost drivers:** {} — no completion record arrived; the table shows the calls they completed before.",
            lost.join(", ")
        );
    }
    let _ = writeln!(w);

    crate::render_servers::section(w, r);

    let n = &r.notes;
    let _ = writeln!(w, "## Notes\n");
    let _ = writeln!(
        w,
        "- Latency is the driver's: from sending (closed loop) or from the intended send time (open loop). Per-call throughput is pairs / latency. Failed calls are left out of latency and throughput and counted under Errors."
    );
    let _ = writeln!(
        w,
        "- {} warm-up calls were sent and left out of every figure.",
        n.warmup_calls
    );
    let _ = writeln!(
        w,
        "- Spans received: {}; unknown (ignored): {}; malformed (ignored): {}; dropped at the memory cap: {}.",
        n.spans_received, n.unknown_spans, n.malformed_spans, n.dropped
    );
    let _ = writeln!(
        w,
        "- Server calls without a client span (orphans, counted, not assigned to a config): {}. Successful calls whose server spans never arrived: {}.",
        n.orphan_server_calls, n.calls_without_server_spans
    );
    if let Some(f) = &n.forward {
        let _ = writeln!(
            w,
            "- Forwarded to {}: {} exports delivered; not delivered: {} (refused or unreachable {}, dropped with the queue full {}, still queued when this report was written {}).",
            md(&f.target),
            f.delivered,
            f.undelivered(),
            f.failed,
            f.dropped,
            f.pending
        );
    }
    let _ = writeln!(w);
    let _ = writeln!(
        w,
        "[^pct]: Percentiles are nearest-rank over every measured call: the smallest latency with at least p% of calls at or below it, so each one is a measured value, never interpolated; several drivers' calls are merged first, never averaged. Std Dev is the population standard deviation."
    );
    let _ = writeln!(
        w,
        "[^tp]: Throughput here is the config's Pairs / Time(s), what the server sustained; TP Avg and TP P95 above are per call (pairs / latency)."
    );
    for (k, text) in footnotes {
        let _ = writeln!(w, "[^{k}]: {text}");
    }
    o
}
