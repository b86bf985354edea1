//! The benchmark report of one run: every figure computed from the joined records (the
//! sections of `report-example.md`, plus an Errors column, the drivers, and notes that
//! say what could not be measured or kept). `render` turns it into markdown.

use std::collections::{BTreeMap, BTreeSet};

use serde::Serialize;

use crate::stats::{Bucket, Dist, latency_buckets, pearson};
use crate::store::{CallRecord, RunData};

/// What the caller names the report.
#[derive(Debug, Clone)]
pub struct Meta {
    pub title: String,
    /// Italic line under the title; default says the batching and backend.
    pub description: Option<String>,
    /// Written before the run was whole (SIGTERM, a timeout, saved spans of an
    /// unfinished run): the reason.
    pub partial: Option<String>,
    /// Drivers the run expected (0: whatever arrived).
    pub expect_drivers: usize,
    /// `--forward`'s tally when the report was written.
    pub forward: Option<crate::forward::ForwardTally>,
}

#[derive(Debug, Clone, Serialize)]
pub struct ConfigReport {
    pub index: usize,
    pub step: usize,
    pub batch: usize,
    /// Summed over the drivers that ran this step.
    pub concurrency: usize,
    pub drivers: usize,
    pub calls: usize,
    pub pairs: usize,
    pub pairs_failed: usize,
    pub time_s: f64,
    /// pairs / time_s.
    pub pairs_per_s: f64,
    pub errors: BTreeMap<String, usize>,
    pub late_calls: usize,
    pub latency_ms: Option<Dist>,
    /// Per call: pairs / latency.
    pub throughput: Option<Dist>,
    pub buckets: Vec<Bucket>,
    pub correlation: Option<f64>,
    /// Per successful call, from its server spans: time in forward passes, and queue
    /// wait (what `compare` and experiments set side by side).
    pub inference_ms: Option<Dist>,
    pub queue_ms: Option<Dist>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Overall {
    pub best_throughput: Option<(f64, String)>,
    pub best_latency: Option<(f64, String)>,
    pub avg_throughput: Option<f64>,
    pub avg_latency: Option<f64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct DashboardRow {
    pub metric: String,
    pub dist: Option<Dist>,
    /// Why there is no figure (a footnote), when `dist` is None.
    pub why_na: Option<String>,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct SeriesRow {
    pub index: usize,
    pub start_s: f64,
    pub gpu_mem_mb: Option<f64>,
    pub gpu_util_pct: Option<f64>,
    pub cpu_pct: Option<f64>,
    pub latency_ms: Option<f64>,
    /// Pairs completed in the interval, per second.
    pub throughput: f64,
    pub tokenize_ms: Option<f64>,
    pub inference_ms: Option<f64>,
    pub queue_ms: Option<f64>,
    pub padding_pct: Option<f64>,
    /// Latency percentiles of the calls that ended in the interval (JSON and the
    /// dashboard; the markdown shows the average).
    pub latency_p50_ms: Option<f64>,
    pub latency_p95_ms: Option<f64>,
    pub latency_p99_ms: Option<f64>,
    /// Pairs per forward pass started in the interval, on average.
    pub batch_pairs: Option<f64>,
    /// Host memory (CPU backend), where `gpu_mem_mb` is the device's.
    pub host_mem_mb: Option<f64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct DriverRow {
    pub driver_id: String,
    pub host: String,
    pub calls: usize,
    pub pairs_sent: usize,
    pub pairs_ok: usize,
    pub errors: usize,
    /// "finished", "interrupted", or "lost" (no completion record).
    pub state: String,
    pub steps_done: usize,
    pub steps_planned: Option<usize>,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct Notes {
    pub spans_received: u64,
    pub unknown_spans: u64,
    pub malformed_spans: u64,
    pub dropped: u64,
    pub orphan_server_calls: usize,
    /// Successful calls whose server spans never arrived.
    pub calls_without_server_spans: usize,
    pub warmup_calls: usize,
    pub forward: Option<crate::forward::ForwardTally>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub title: String,
    pub description: String,
    pub timestamp: String,
    pub run_id: String,
    pub partial: Option<String>,
    pub model: String,
    pub stand_in: bool,
    pub backend: String,
    pub device: String,
    pub max_batch: Option<u64>,
    /// How the server set it: `--max-batch`, or `auto: …` with what its warm-up measured.
    pub max_batch_chosen_by: String,
    pub batch_timeout_ms: Option<u64>,
    pub batch_policy: String,
    pub configs: Vec<ConfigReport>,
    pub overall: Overall,
    pub dashboard: Vec<DashboardRow>,
    pub series_interval_s: f64,
    pub series: Vec<SeriesRow>,
    pub drivers: Vec<DriverRow>,
    /// One row per server replica (`servers`).
    pub servers: Vec<crate::servers::ServerRow>,
    /// The run's counts over every driver, retries and ejections included.
    pub totals: crate::servers::Totals,
    pub notes: Notes,
    /// The joined per-call records (JSON only).
    pub calls: Vec<CallRecord>,
    /// The forward passes that ran the measured calls (JSON only).
    pub batches: Vec<crate::store::BatchRecord>,
}

/// File-name-safe `YYYYmmdd-HHMMSS` of a `YYYY-MM-DD HH:MM:SS` timestamp.
pub fn file_stamp(timestamp: &str) -> String {
    timestamp.replace(['-', ':'], "").replace(' ', "-")
}

/// [`file_stamp`] of now (UTC): files written now, outside a run's report.
pub fn file_stamp_now() -> String {
    let ns = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0);
    file_stamp(&utc_timestamp(ns))
}

/// `YYYY-MM-DD HH:MM:SS` (UTC) of a Unix time in ns.
pub fn utc_timestamp(unix_ns: u64) -> String {
    let secs = unix_ns / 1_000_000_000;
    let (days, rem) = ((secs / 86_400) as i64, secs % 86_400);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02}",
        rem / 3600,
        rem / 60 % 60,
        rem % 60
    )
}

fn measured(calls: &[CallRecord]) -> impl Iterator<Item = &CallRecord> {
    calls.iter().filter(|c| !c.client.warmup)
}

fn configs(d: &RunData) -> Vec<ConfigReport> {
    let steps: BTreeSet<usize> = measured(&d.calls)
        .map(|c| c.client.step)
        .chain(d.steps.iter().map(|s| s.record.step))
        .collect();
    let mut out = Vec::new();
    for step in steps {
        let calls: Vec<&CallRecord> = measured(&d.calls)
            .filter(|c| c.client.step == step)
            .collect();
        let recs: Vec<_> = d.steps.iter().filter(|s| s.record.step == step).collect();
        let batch = recs
            .first()
            .map(|r| r.record.batch)
            .or_else(|| calls.first().map(|c| c.client.batch))
            .unwrap_or(0);
        // Concurrency per driver: from its step record, else from its calls.
        let mut conc: BTreeMap<&str, usize> = BTreeMap::new();
        for c in &calls {
            conc.insert(&c.client.driver_id, c.client.concurrency);
        }
        for r in &recs {
            conc.insert(&r.driver_id, r.record.concurrency);
        }
        let ok: Vec<&&CallRecord> = calls.iter().filter(|c| c.client.status.is_ok()).collect();
        let latency: Vec<f64> = ok.iter().map(|c| c.client.latency_ms).collect();
        let throughput: Vec<f64> = ok
            .iter()
            .map(|c| c.client.pairs as f64 / (c.client.latency_ms / 1e3).max(1e-9))
            .collect();
        let mut errors = BTreeMap::new();
        let mut pairs_failed = 0;
        for c in calls.iter().filter(|c| !c.client.status.is_ok()) {
            *errors
                .entry(c.client.status.name().to_string())
                .or_insert(0) += 1;
            pairs_failed += c.client.pairs;
        }
        let pairs: usize = ok.iter().map(|c| c.client.pairs).sum();
        // Time: one driver's own wall clock; several drivers, first start to last end.
        let time_s = match recs.as_slice() {
            [one] => one.record.wall_s,
            [] => {
                let lo = calls
                    .iter()
                    .map(|c| c.client.start_unix_ns)
                    .min()
                    .unwrap_or(0);
                let hi = calls
                    .iter()
                    .map(|c| c.client.end_unix_ns)
                    .max()
                    .unwrap_or(0);
                hi.saturating_sub(lo) as f64 / 1e9
            }
            many => {
                let lo = many.iter().map(|r| r.start_unix_ns).min().unwrap_or(0);
                let hi = many.iter().map(|r| r.end_unix_ns).max().unwrap_or(0);
                hi.saturating_sub(lo) as f64 / 1e9
            }
        };
        out.push(ConfigReport {
            index: out.len() + 1,
            step,
            batch,
            concurrency: conc.values().sum(),
            drivers: conc.len(),
            calls: calls.len(),
            pairs,
            pairs_failed,
            time_s,
            pairs_per_s: if time_s > 0.0 {
                pairs as f64 / time_s
            } else {
                0.0
            },
            errors,
            late_calls: recs.iter().map(|r| r.record.late_calls).sum(),
            latency_ms: Dist::of(&latency),
            throughput: Dist::of(&throughput),
            buckets: latency_buckets(&latency, &throughput),
            correlation: pearson(&latency, &throughput),
            inference_ms: Dist::of(&server_figure(&ok, |s| s.inference_ms)),
            queue_ms: Dist::of(&server_figure(&ok, |s| s.queue_ms)),
        });
    }
    out
}

/// One server-side figure of each call that has it.
fn server_figure(
    calls: &[&&CallRecord],
    get: impl Fn(&crate::store::ServerPart) -> Option<f64>,
) -> Vec<f64> {
    calls
        .iter()
        .filter_map(|c| c.server.as_ref().and_then(&get))
        .collect()
}

fn label(c: &ConfigReport) -> String {
    format!("batch={}, conc={}", c.batch, c.concurrency)
}

fn overall(cfgs: &[ConfigReport]) -> Overall {
    let with_calls: Vec<&ConfigReport> = cfgs.iter().filter(|c| c.latency_ms.is_some()).collect();
    let best_tp = with_calls
        .iter()
        .max_by(|a, b| a.pairs_per_s.total_cmp(&b.pairs_per_s))
        .map(|c| (c.pairs_per_s, label(c)));
    let best_lat = with_calls
        .iter()
        .filter_map(|c| c.latency_ms.map(|l| (l.avg, label(c))))
        .min_by(|a, b| a.0.total_cmp(&b.0));
    let tps: Vec<f64> = with_calls.iter().map(|c| c.pairs_per_s).collect();
    let lats: Vec<f64> = with_calls
        .iter()
        .filter_map(|c| c.latency_ms.map(|l| l.avg))
        .collect();
    Overall {
        best_throughput: best_tp,
        best_latency: best_lat,
        avg_throughput: crate::stats::mean(&tps),
        avg_latency: crate::stats::mean(&lats),
    }
}

const UTIL_METRIC: &str = "crossbatch.device.utilization";
const MEM_METRIC: &str = "crossbatch.memory.used";
const CPU_METRIC: &str = "process.cpu.percent";

fn metric_values<'a>(
    d: &'a RunData,
    name: &'a str,
    kind: Option<&'a str>,
) -> impl Iterator<Item = (u64, f64)> + 'a {
    d.metrics
        .iter()
        .filter(move |m| m.name == name && (kind.is_none() || m.kind.as_deref() == kind))
        .map(|m| (m.unix_ns, m.value))
}

fn dashboard(d: &RunData, backend: &str) -> Vec<DashboardRow> {
    let vals = |name, kind| {
        metric_values(d, name, kind)
            .map(|(_, v)| v)
            .collect::<Vec<_>>()
    };
    let server_calls: Vec<_> = measured(&d.calls)
        .filter_map(|c| c.server.as_ref())
        .collect();
    let no_server = "no server spans reached the collector (is the server's --otlp-endpoint set?)";
    let no_metrics = "no server resource samples reached the collector";
    let row = |metric: &str, v: Vec<f64>, why: &str| DashboardRow {
        metric: metric.into(),
        dist: Dist::of(&v),
        why_na: Dist::of(&v).is_none().then(|| why.to_string()),
    };
    let any_metrics = !d.metrics.is_empty();
    let mut rows = vec![
        row(
            "GPU Memory (MB)",
            vals(MEM_METRIC, Some("device")),
            if !any_metrics {
                no_metrics
            } else if backend == "cpu" {
                "the CPU backend has no device memory; the server's resident memory is the Host Memory row"
            } else {
                "the server reported no device memory samples"
            },
        ),
        row(
            "GPU Utilization (%)",
            vals(UTIL_METRIC, None),
            if backend == "cpu" {
                "the CPU backend has no device to be busy; CPU Usage is the figure"
            } else {
                "no NVML reading from the server (not an NVIDIA GPU, or libnvidia-ml not found there); burn-wgpu itself reports none"
            },
        ),
        row("CPU Usage (%)", vals(CPU_METRIC, None), no_metrics),
        row(
            "Tokenization (ms)",
            server_calls.iter().filter_map(|s| s.tokenize_ms).collect(),
            no_server,
        ),
        row(
            "Inference (ms)",
            d.batches.iter().map(|b| b.inference_ms).collect(),
            no_server,
        ),
        row(
            "Queue Wait (ms)",
            server_calls.iter().filter_map(|s| s.queue_ms).collect(),
            no_server,
        ),
        row(
            "Padding Waste (%)",
            d.batches.iter().map(|b| b.padding_waste_pct).collect(),
            no_server,
        ),
    ];
    let host = vals(MEM_METRIC, Some("host"));
    if !host.is_empty() {
        rows.insert(1, row("Host Memory (MB)", host, no_metrics));
    }
    rows
}

/// The interval of the time series: whole seconds, at most ~60 rows.
fn series_interval_s(window_s: f64) -> f64 {
    (window_s / 60.0).ceil().max(1.0)
}

fn series(d: &RunData) -> (f64, Vec<SeriesRow>) {
    let (lo, hi) = d.window_unix_ns;
    if hi <= lo {
        return (1.0, Vec::new());
    }
    let width = series_interval_s((hi - lo) as f64 / 1e9);
    let n = (((hi - lo) as f64 / 1e9) / width).ceil().max(1.0) as usize;
    let slot = |t: u64| -> Option<usize> {
        (t >= lo).then(|| ((((t - lo) as f64 / 1e9) / width) as usize).min(n - 1))
    };
    #[derive(Default, Clone)]
    struct Acc {
        mem: Vec<f64>,
        host_mem: Vec<f64>,
        batch_pairs: Vec<f64>,
        util: Vec<f64>,
        cpu: Vec<f64>,
        lat: Vec<f64>,
        pairs: usize,
        tok: Vec<f64>,
        inf: Vec<f64>,
        queue: Vec<f64>,
        pad: Vec<f64>,
    }
    let mut acc = vec![Acc::default(); n];
    for (t, v) in metric_values(d, MEM_METRIC, Some("device")) {
        if let Some(i) = slot(t) {
            acc[i].mem.push(v);
        }
    }
    for (t, v) in metric_values(d, MEM_METRIC, Some("host")) {
        if let Some(i) = slot(t) {
            acc[i].host_mem.push(v);
        }
    }
    for (t, v) in metric_values(d, UTIL_METRIC, None) {
        if let Some(i) = slot(t) {
            acc[i].util.push(v);
        }
    }
    for (t, v) in metric_values(d, CPU_METRIC, None) {
        if let Some(i) = slot(t) {
            acc[i].cpu.push(v);
        }
    }
    for c in measured(&d.calls).filter(|c| c.client.status.is_ok()) {
        let Some(i) = slot(c.client.end_unix_ns) else {
            continue;
        };
        let a = &mut acc[i];
        a.lat.push(c.client.latency_ms);
        a.pairs += c.client.pairs;
        if let Some(s) = &c.server {
            a.tok.extend(s.tokenize_ms);
            a.queue.extend(s.queue_ms);
        }
    }
    for b in &d.batches {
        if let Some(i) = slot(b.start_unix_ns) {
            acc[i].inf.push(b.inference_ms);
            acc[i].pad.push(b.padding_waste_pct);
            acc[i].batch_pairs.push(b.pairs as f64);
        }
    }
    let avg = |v: &[f64]| crate::stats::mean(v);
    let rows = acc
        .iter()
        .enumerate()
        .map(|(i, a)| {
            let lat = Dist::of(&a.lat);
            SeriesRow {
                index: i,
                start_s: i as f64 * width,
                gpu_mem_mb: avg(&a.mem),
                gpu_util_pct: avg(&a.util),
                cpu_pct: avg(&a.cpu),
                latency_ms: avg(&a.lat),
                throughput: a.pairs as f64 / width,
                tokenize_ms: avg(&a.tok),
                inference_ms: avg(&a.inf),
                queue_ms: avg(&a.queue),
                padding_pct: avg(&a.pad),
                latency_p50_ms: lat.as_ref().map(|l| l.p50),
                latency_p95_ms: lat.as_ref().map(|l| l.p95),
                latency_p99_ms: lat.as_ref().map(|l| l.p99),
                batch_pairs: avg(&a.batch_pairs),
                host_mem_mb: avg(&a.host_mem),
            }
        })
        .collect();
    (width, rows)
}

fn drivers(d: &RunData) -> Vec<DriverRow> {
    let mut ids: BTreeSet<&str> = measured(&d.calls)
        .map(|c| c.client.driver_id.as_str())
        .collect();
    ids.extend(d.steps.iter().map(|s| s.driver_id.as_str()));
    ids.extend(d.runs.iter().map(|r| r.driver_id.as_str()));
    ids.into_iter()
        .map(|id| {
            let calls: Vec<_> = measured(&d.calls)
                .filter(|c| c.client.driver_id == id)
                .collect();
            let run = d.runs.iter().find(|r| r.driver_id == id);
            let host = run
                .map(|r| r.host.clone())
                .or_else(|| {
                    d.steps
                        .iter()
                        .find(|s| s.driver_id == id)
                        .map(|s| s.host.clone())
                })
                .unwrap_or_default();
            DriverRow {
                driver_id: id.to_string(),
                host,
                calls: calls.len(),
                pairs_sent: calls.iter().map(|c| c.client.pairs).sum(),
                pairs_ok: calls
                    .iter()
                    .filter(|c| c.client.status.is_ok())
                    .map(|c| c.client.pairs)
                    .sum(),
                errors: calls.iter().filter(|c| !c.client.status.is_ok()).count(),
                state: match run {
                    Some(r) if r.interrupted => "interrupted".into(),
                    Some(_) => "finished".into(),
                    None => "lost".into(),
                },
                steps_done: d.steps.iter().filter(|s| s.driver_id == id).count(),
                steps_planned: run.map(|r| r.steps_planned),
            }
        })
        .collect()
}

/// Builds every figure of the report from one run's records.
pub fn build(d: &RunData, meta: &Meta) -> Report {
    let server = d.runs.first().cloned().unwrap_or_default();
    let backend = if server.backend.is_empty() {
        "unknown".to_string()
    } else {
        server.backend.clone()
    };
    let cfgs = configs(d);
    let (interval, rows) = series(d);
    let measured_ok: Vec<_> = measured(&d.calls)
        .filter(|c| c.client.status.is_ok())
        .collect();
    let mut partial = meta.partial.clone();
    if partial.is_none() && meta.expect_drivers > 0 && d.runs.len() < meta.expect_drivers {
        partial = Some(format!(
            "{} of {} drivers sent their completion record",
            d.runs.len(),
            meta.expect_drivers
        ));
    }
    let description = meta.description.clone().unwrap_or_else(|| {
        format!(
            "Dynamic batching ({}) with {} backend",
            if server.batch_policy.is_empty() {
                "deadline"
            } else {
                &server.batch_policy
            },
            backend
        )
    });
    Report {
        title: meta.title.clone(),
        description,
        timestamp: utc_timestamp(d.window_unix_ns.0),
        run_id: d.run_id.clone(),
        partial,
        model: if server.model.is_empty() {
            "unknown (no driver completion record)".into()
        } else {
            server.model.clone()
        },
        stand_in: server.stand_in,
        backend,
        device: if server.device.is_empty() {
            "unknown".into()
        } else {
            server.device.clone()
        },
        max_batch: (server.max_batch > 0).then_some(server.max_batch),
        max_batch_chosen_by: server.max_batch_chosen_by.clone(),
        batch_timeout_ms: (server.max_batch > 0).then_some(server.batch_timeout_ms),
        batch_policy: server.batch_policy.clone(),
        overall: overall(&cfgs),
        dashboard: dashboard(d, &server.backend),
        configs: cfgs,
        series_interval_s: interval,
        series: rows,
        drivers: drivers(d),
        servers: crate::servers::rows(d),
        totals: crate::servers::totals(d),
        notes: Notes {
            spans_received: d.counters.spans,
            unknown_spans: d.counters.unknown_spans,
            malformed_spans: d.counters.malformed_spans,
            dropped: d.counters.dropped,
            orphan_server_calls: d.orphan_server_calls,
            calls_without_server_spans: measured_ok
                .iter()
                .filter(|c| !c.server.as_ref().is_some_and(|s| s.rpc))
                .count(),
            warmup_calls: d.calls.iter().filter(|c| c.client.warmup).count(),
            forward: meta.forward.clone(),
        },
        calls: d.calls.clone(),
        batches: d.batches.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn utc_timestamps_by_hand() {
        assert_eq!(utc_timestamp(0), "1970-01-01 00:00:00");
        // 2025-12-26 02:21:32 UTC = 1766715692 s.
        assert_eq!(
            utc_timestamp(1_766_715_692_000_000_000),
            "2025-12-26 02:21:32"
        );
        // A leap day: 2024-02-29 12:00:00 UTC = 1709208000 s.
        assert_eq!(
            utc_timestamp(1_709_208_000_000_000_000),
            "2024-02-29 12:00:00"
        );
    }

    #[test]
    fn interval_is_whole_seconds_and_at_most_sixty_rows() {
        assert_eq!(series_interval_s(7.1), 1.0);
        assert_eq!(series_interval_s(60.0), 1.0);
        assert_eq!(series_interval_s(61.0), 2.0);
        assert_eq!(series_interval_s(600.0), 10.0);
    }
}
