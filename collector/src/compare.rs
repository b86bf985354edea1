//! Runs side by side: the report JSONs of several runs (the first is the baseline),
//! matched by (batch, concurrency), with each figure's change against the baseline.
//! `compare_render` turns a [`Comparison`] into markdown and SVG; experiments use the
//! same figures for their "Variants compared" table.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// The figures of a distribution that comparisons use.
#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq)]
pub struct Pcts {
    pub avg: f64,
    pub p50: f64,
    pub p95: f64,
    pub p99: f64,
}

impl From<&crate::stats::Dist> for Pcts {
    fn from(d: &crate::stats::Dist) -> Self {
        Self {
            avg: d.avg,
            p50: d.p50,
            p95: d.p95,
            p99: d.p99,
        }
    }
}

/// One config of a run, as its report JSON has it.
#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct ConfigSummary {
    pub batch: usize,
    pub concurrency: usize,
    pub pairs: usize,
    pub time_s: f64,
    pub pairs_per_s: f64,
    #[serde(default)]
    pub errors: BTreeMap<String, usize>,
    pub latency_ms: Option<Pcts>,
    /// Absent from reports written before these were recorded.
    #[serde(default)]
    pub inference_ms: Option<Pcts>,
    #[serde(default)]
    pub queue_ms: Option<Pcts>,
}

impl ConfigSummary {
    pub fn key(&self) -> ConfigKey {
        ConfigKey {
            batch: self.batch,
            concurrency: self.concurrency,
        }
    }

    pub fn error_count(&self) -> usize {
        self.errors.values().sum()
    }
}

/// What a run's report JSON says about the run (the rest of the file is ignored).
#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct RunSummary {
    pub title: String,
    pub run_id: String,
    pub timestamp: String,
    pub model: String,
    pub stand_in: bool,
    pub backend: String,
    pub device: String,
    pub batch_policy: String,
    pub max_batch: Option<u64>,
    pub batch_timeout_ms: Option<u64>,
    pub partial: Option<String>,
    pub configs: Vec<ConfigSummary>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub struct ConfigKey {
    pub batch: usize,
    pub concurrency: usize,
}

impl std::fmt::Display for ConfigKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "batch {} × conc {}", self.batch, self.concurrency)
    }
}

/// One run to compare, under the name the tables show.
#[derive(Debug, Clone)]
pub struct Run {
    pub label: String,
    /// The report it came from, for links.
    pub path: Option<PathBuf>,
    pub summary: RunSummary,
}

impl Run {
    pub fn config(&self, key: ConfigKey) -> Option<&ConfigSummary> {
        self.summary.configs.iter().find(|c| c.key() == key)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum CompareError {
    #[error("{}: {source}", path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{}: not a crossbatch report JSON ({source})", path.display())]
    NotAReport {
        path: PathBuf,
        source: serde_json::Error,
    },
    #[error("compare needs at least two runs, got {0}")]
    TooFew(usize),
}

/// Reads a report JSON (`<name>-<timestamp>.json` beside the markdown; the `.md`
/// path is accepted too). Its label is the file's stem.
pub fn load(path: &Path) -> Result<Run, CompareError> {
    let path = if path.extension().is_some_and(|e| e == "md") {
        path.with_extension("json")
    } else {
        path.to_path_buf()
    };
    let text = std::fs::read_to_string(&path).map_err(|source| CompareError::Read {
        path: path.clone(),
        source,
    })?;
    let summary: RunSummary =
        serde_json::from_str(&text).map_err(|source| CompareError::NotAReport {
            path: path.clone(),
            source,
        })?;
    let label = path
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| summary.run_id.clone());
    Ok(Run {
        label,
        path: Some(path),
        summary,
    })
}

/// A figure set side by side.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Metric {
    Throughput,
    LatencyP50,
    LatencyP95,
    LatencyP99,
    InferenceP50,
    QueueP50,
}

impl Metric {
    pub const ALL: [Metric; 6] = [
        Metric::Throughput,
        Metric::LatencyP50,
        Metric::LatencyP95,
        Metric::LatencyP99,
        Metric::InferenceP50,
        Metric::QueueP50,
    ];

    pub fn title(self) -> &'static str {
        match self {
            Self::Throughput => "Throughput (pairs/s, higher is better)",
            Self::LatencyP50 => "Latency P50 (ms, lower is better)",
            Self::LatencyP95 => "Latency P95 (ms, lower is better)",
            Self::LatencyP99 => "Latency P99 (ms, lower is better)",
            Self::InferenceP50 => "Inference per call, P50 (ms, server spans)",
            Self::QueueP50 => "Queue wait per call, P50 (ms, server spans)",
        }
    }

    pub fn get(self, c: &ConfigSummary) -> Option<f64> {
        match self {
            Self::Throughput => (c.pairs > 0).then_some(c.pairs_per_s),
            Self::LatencyP50 => c.latency_ms.map(|d| d.p50),
            Self::LatencyP95 => c.latency_ms.map(|d| d.p95),
            Self::LatencyP99 => c.latency_ms.map(|d| d.p99),
            Self::InferenceP50 => c.inference_ms.map(|d| d.p50),
            Self::QueueP50 => c.queue_ms.map(|d| d.p50),
        }
    }
}

/// The change from `base` to `x` in percent; none when the base is zero.
pub fn change_pct(base: f64, x: f64) -> Option<f64> {
    (base.abs() > f64::EPSILON && base.is_finite() && x.is_finite())
        .then(|| (x - base) / base * 100.0)
}

/// `+12.3%`, `-4.0%`, `±0.0%`.
pub fn fmt_change(pct: Option<f64>) -> String {
    match pct {
        None => "n/a".into(),
        Some(p) if p.abs() < 0.05 => "±0.0%".into(),
        Some(p) => format!("{p:+.1}%"),
    }
}

/// A run's best throughput and best median latency, and where they were reached.
#[derive(Debug, Clone, Copy, Default)]
pub struct Best {
    pub throughput: Option<(f64, ConfigKey)>,
    pub latency_p50: Option<(f64, ConfigKey)>,
}

pub fn best(run: &Run) -> Best {
    let with_calls = || {
        run.summary
            .configs
            .iter()
            .filter(|c| c.latency_ms.is_some())
    };
    Best {
        throughput: with_calls()
            .max_by(|a, b| a.pairs_per_s.total_cmp(&b.pairs_per_s))
            .map(|c| (c.pairs_per_s, c.key())),
        latency_p50: with_calls()
            .filter_map(|c| c.latency_ms.map(|l| (l.p50, c.key())))
            .min_by(|a, b| a.0.total_cmp(&b.0)),
    }
}

/// Runs matched by config: those every run has, and those only some have (listed,
/// never dropped silently).
#[derive(Debug, Clone)]
pub struct Comparison {
    pub runs: Vec<Run>,
    pub shared: Vec<ConfigKey>,
    /// Configs missing from at least one run, with the labels of the runs that have them.
    pub partial: Vec<(ConfigKey, Vec<String>)>,
}

impl Comparison {
    pub fn new(runs: Vec<Run>) -> Result<Self, CompareError> {
        if runs.len() < 2 {
            return Err(CompareError::TooFew(runs.len()));
        }
        Ok(Self::of(runs))
    }

    /// Any number of runs (an experiment may have one variant left).
    pub fn of(runs: Vec<Run>) -> Self {
        let all: BTreeSet<ConfigKey> = runs
            .iter()
            .flat_map(|r| r.summary.configs.iter().map(ConfigSummary::key))
            .collect();
        let mut shared = Vec::new();
        let mut partial = Vec::new();
        for key in all {
            let having: Vec<String> = runs
                .iter()
                .filter(|r| r.config(key).is_some())
                .map(|r| r.label.clone())
                .collect();
            if having.len() == runs.len() {
                shared.push(key);
            } else {
                partial.push((key, having));
            }
        }
        Self {
            runs,
            shared,
            partial,
        }
    }

    /// `metric` of every run at `key` (None where a run lacks the figure).
    pub fn row(&self, key: ConfigKey, metric: Metric) -> Vec<Option<f64>> {
        self.runs
            .iter()
            .map(|r| r.config(key).and_then(|c| metric.get(c)))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(batch: usize, concurrency: usize, tp: f64, p50: f64) -> ConfigSummary {
        ConfigSummary {
            batch,
            concurrency,
            pairs: 100,
            time_s: 100.0 / tp,
            pairs_per_s: tp,
            errors: BTreeMap::new(),
            latency_ms: Some(Pcts {
                avg: p50,
                p50,
                p95: p50 * 2.0,
                p99: p50 * 3.0,
            }),
            inference_ms: None,
            queue_ms: None,
        }
    }

    fn run(label: &str, configs: Vec<ConfigSummary>) -> Run {
        Run {
            label: label.into(),
            path: None,
            summary: RunSummary {
                title: label.into(),
                run_id: label.into(),
                timestamp: "2026-12-01 00:00:00".into(),
                model: "m".into(),
                stand_in: true,
                backend: "cpu".into(),
                device: "cpu".into(),
                batch_policy: "deadline".into(),
                max_batch: Some(96),
                batch_timeout_ms: Some(20),
                partial: None,
                configs,
            },
        }
    }

    #[test]
    fn changes_are_against_the_first_run() {
        assert_eq!(change_pct(80.0, 100.0), Some(25.0));
        assert_eq!(change_pct(100.0, 80.0), Some(-20.0));
        assert_eq!(change_pct(0.0, 5.0), None);
        assert_eq!(fmt_change(Some(12.345)), "+12.3%");
        assert_eq!(fmt_change(Some(-4.0)), "-4.0%");
        assert_eq!(fmt_change(Some(0.01)), "±0.0%");
        assert_eq!(fmt_change(None), "n/a");
    }

    #[test]
    fn configs_only_some_runs_have_are_listed() {
        let a = run("a", vec![cfg(8, 1, 50.0, 150.0), cfg(8, 4, 60.0, 500.0)]);
        let b = run("b", vec![cfg(8, 1, 55.0, 140.0), cfg(32, 1, 70.0, 450.0)]);
        let c = Comparison::new(vec![a, b]).unwrap();
        let k = |batch, concurrency| ConfigKey { batch, concurrency };
        assert_eq!(c.shared, vec![k(8, 1)]);
        assert_eq!(
            c.partial,
            vec![
                (k(8, 4), vec!["a".to_string()]),
                (k(32, 1), vec!["b".to_string()])
            ]
        );
        assert_eq!(
            c.row(k(8, 1), Metric::Throughput),
            vec![Some(50.0), Some(55.0)]
        );
        assert_eq!(
            c.row(k(8, 1), Metric::LatencyP99),
            vec![Some(450.0), Some(420.0)]
        );
        assert_eq!(c.row(k(8, 1), Metric::InferenceP50), vec![None, None]);
        assert!(matches!(
            Comparison::new(vec![run("x", vec![])]),
            Err(CompareError::TooFew(1))
        ));
    }

    #[test]
    fn best_throughput_and_latency_name_their_config() {
        let r = run("a", vec![cfg(8, 1, 50.0, 150.0), cfg(8, 4, 60.0, 500.0)]);
        let b = best(&r);
        assert_eq!(b.throughput.map(|t| t.0), Some(60.0));
        assert_eq!(b.latency_p50.map(|l| l.1.concurrency), Some(1));
    }
}
