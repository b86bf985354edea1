//! What the live dashboard shows: a [`Snapshot`] of the run in progress, computed
//! from the same joined records and by the same code as the final report (so the
//! live figures and the report agree), plus the last finished run once its report
//! is written.

use std::collections::BTreeMap;

use serde::Serialize;

use crate::compare::Pcts;
use crate::report::{DashboardRow, DriverRow, Report, SeriesRow};
use crate::servers::{ServerRow, Totals};
use crate::stats::Dist;

#[derive(Debug, Clone, Serialize)]
pub struct LiveConfig {
    pub batch: usize,
    pub concurrency: usize,
    pub calls: usize,
    pub pairs_ok: usize,
    pub errors: usize,
    pub pairs_per_s: f64,
    pub latency_ms: Option<Pcts>,
}

/// The step a run is on: the latest config any driver sent a call of.
#[derive(Debug, Clone, Serialize)]
pub struct StepProgress {
    /// From 1.
    pub index: usize,
    /// Configs in the sweep, where the drivers said.
    pub of: Option<usize>,
    pub batch: usize,
    pub concurrency: usize,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct Tiles {
    pub calls: usize,
    pub pairs_ok: usize,
    /// Pairs completed per second in the latest full interval of the time series.
    pub pairs_per_s_now: Option<f64>,
    /// Pairs completed per second since the run's first call.
    pub pairs_per_s_avg: Option<f64>,
    pub latency_ms: Option<Pcts>,
    pub tokenize_ms: Option<f64>,
    pub queue_ms: Option<f64>,
    pub inference_ms: Option<f64>,
    pub errors: BTreeMap<String, usize>,
    pub cpu_pct: Option<f64>,
    pub memory_mb: Option<f64>,
    /// "GPU" or "host".
    pub memory_kind: String,
    pub padding_pct: Option<f64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Snapshot {
    /// "waiting" (no run yet), "running", or "done" (its report is written).
    pub state: &'static str,
    pub run_id: Option<String>,
    pub title: String,
    pub model: String,
    pub stand_in: bool,
    pub backend: String,
    pub device: String,
    pub batch_policy: String,
    pub step: Option<StepProgress>,
    pub tiles: Tiles,
    pub configs: Vec<LiveConfig>,
    pub series_interval_s: f64,
    pub series: Vec<SeriesRow>,
    pub drivers: Vec<DriverRow>,
    /// One row per server replica; lost ones by the report's rule, so far.
    pub servers: Vec<ServerRow>,
    /// Calls, retries and ejections over every driver.
    pub totals: Totals,
    /// The report's markdown, once written.
    pub report: Option<String>,
}

impl Snapshot {
    pub fn waiting(title: &str) -> Self {
        Self {
            state: "waiting",
            run_id: None,
            title: title.to_string(),
            model: String::new(),
            stand_in: false,
            backend: String::new(),
            device: String::new(),
            batch_policy: String::new(),
            step: None,
            tiles: Tiles::default(),
            configs: Vec::new(),
            series_interval_s: 1.0,
            series: Vec::new(),
            drivers: Vec::new(),
            servers: Vec::new(),
            totals: Totals::default(),
            report: None,
        }
    }
}

fn dashboard_avg(rows: &[DashboardRow], metric: &str) -> Option<f64> {
    rows.iter()
        .find(|r| r.metric.starts_with(metric))
        .and_then(|r| r.dist.as_ref())
        .map(|d| d.avg)
}

/// The snapshot of `r`, a report built from the run's records so far. `running`:
/// drivers without a completion record are still running, not lost.
pub fn snapshot(r: &Report, running: bool, report_path: Option<String>) -> Snapshot {
    // Counts per config are the report's; latency over all configs and the run's
    // span need the calls themselves.
    let measured: Vec<_> = r.calls.iter().filter(|c| !c.client.warmup).collect();
    let ok: Vec<f64> = measured
        .iter()
        .filter(|c| c.client.status.is_ok())
        .map(|c| c.client.latency_ms)
        .collect();
    let mut errors = BTreeMap::new();
    for (code, n) in r.configs.iter().flat_map(|c| &c.errors) {
        *errors.entry(code.clone()).or_insert(0) += n;
    }
    let pairs_ok: usize = r.configs.iter().map(|c| c.pairs).sum();
    let (first, last) = measured.iter().fold((u64::MAX, 0u64), |(lo, hi), c| {
        (lo.min(c.client.start_unix_ns), hi.max(c.client.end_unix_ns))
    });
    let span_s = last.saturating_sub(first) as f64 / 1e9;
    // The latest interval is still filling while the run goes on; "now" is the one before.
    let full = if running && r.series.len() > 1 {
        &r.series[..r.series.len() - 1]
    } else {
        &r.series[..]
    };
    let last_row = full.last();
    let gpu_mem = r.series.iter().rev().find_map(|s| s.gpu_mem_mb);
    let host_mem = r.series.iter().rev().find_map(|s| s.host_mem_mb);
    let latest = measured.iter().max_by_key(|c| c.client.start_unix_ns);
    let step = latest.map(|c| StepProgress {
        index: c.client.step + 1,
        of: c
            .client
            .steps_planned
            .or_else(|| r.drivers.iter().find_map(|d| d.steps_planned)),
        batch: c.client.batch,
        concurrency: r
            .configs
            .iter()
            .find(|cfg| cfg.step == c.client.step)
            .map(|cfg| cfg.concurrency)
            .unwrap_or(c.client.concurrency),
    });
    let drivers = r
        .drivers
        .iter()
        .cloned()
        .map(|mut d| {
            if running && d.state == "lost" {
                d.state = "running".into();
            }
            d
        })
        .collect();
    Snapshot {
        state: if running { "running" } else { "done" },
        run_id: Some(r.run_id.clone()),
        title: r.title.clone(),
        model: r.model.clone(),
        stand_in: r.stand_in,
        backend: r.backend.clone(),
        device: r.device.clone(),
        batch_policy: r.batch_policy.clone(),
        step,
        tiles: Tiles {
            calls: r.configs.iter().map(|c| c.calls).sum(),
            pairs_ok,
            pairs_per_s_now: last_row.map(|s| s.throughput),
            pairs_per_s_avg: (span_s > 0.0).then(|| pairs_ok as f64 / span_s),
            latency_ms: Dist::of(&ok).as_ref().map(Pcts::from),
            tokenize_ms: dashboard_avg(&r.dashboard, "Tokenization"),
            queue_ms: dashboard_avg(&r.dashboard, "Queue"),
            inference_ms: dashboard_avg(&r.dashboard, "Inference"),
            errors,
            cpu_pct: last_row
                .and_then(|s| s.cpu_pct)
                .or_else(|| dashboard_avg(&r.dashboard, "CPU")),
            memory_mb: gpu_mem.or(host_mem),
            memory_kind: if gpu_mem.is_some() { "GPU" } else { "host" }.into(),
            padding_pct: dashboard_avg(&r.dashboard, "Padding"),
        },
        configs: r
            .configs
            .iter()
            .map(|c| LiveConfig {
                batch: c.batch,
                concurrency: c.concurrency,
                calls: c.calls,
                pairs_ok: c.pairs,
                errors: c.errors.values().sum(),
                pairs_per_s: c.pairs_per_s,
                latency_ms: c.latency_ms.as_ref().map(Pcts::from),
            })
            .collect(),
        series_interval_s: r.series_interval_s,
        series: r.series.clone(),
        drivers,
        servers: r.servers.clone(),
        totals: r.totals.clone(),
        report: report_path,
    }
}
