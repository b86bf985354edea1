//! Per-config figures from raw samples: exact latency percentiles (every sample is
//! kept and sorted — exact, where an HDR histogram would round to 3 significant
//! digits), exact counts, errors by gRPC code. Percentiles are never averaged: merge
//! samples, then summarise. Percentile method: nearest rank (the smallest sample with
//! at least p% of samples at or below it).

use std::collections::BTreeMap;
use std::time::Duration;

use crossbatch_proto::StatusCode;
use serde::{Deserialize, Serialize};

/// One call, as written to `--samples-out` (one JSON line each).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Sample {
    pub run_id: String,
    pub driver_id: String,
    pub batch: usize,
    pub concurrency: usize,
    /// Pairs in this call.
    pub pairs: usize,
    /// When the call was meant to start, µs since the config started.
    pub intended_us: u64,
    /// When it was sent, µs since the config started.
    pub sent_us: u64,
    /// Latency in µs: from the intended start (open loop) or from sending (closed loop).
    pub latency_us: u64,
    /// The call's gRPC status (written as its name: "OK", "UNAVAILABLE", …).
    pub code: StatusCode,
    /// Sent during warm-up: left out of every figure.
    pub warmup: bool,
    /// What the server said the call cost (its `timing`), when it answered.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server: Option<ServerTiming>,
    /// The endpoint of the call's last attempt ("" when none could be tried).
    #[serde(default)]
    pub endpoint: String,
    /// The replica that gave the final answer (its `crossbatch-instance` header).
    #[serde(default)]
    pub instance: String,
    /// Attempts the call took (1: no retry).
    #[serde(default = "one")]
    pub attempts: u32,
    /// Attempts that failed on one endpoint and were retried on another.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub retried: Vec<Retried>,
}

fn one() -> u32 {
    1
}

/// An attempt that failed because of its endpoint and was sent elsewhere.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Retried {
    pub endpoint: String,
    pub code: StatusCode,
}

/// The server's own account of one call (`ScoreResponse.timing`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServerTiming {
    pub tokenization_ns: u64,
    pub queue_ns: u64,
    pub inference_ns: u64,
    pub real_tokens: u64,
    pub padded_tokens: u64,
}

impl From<crossbatch_proto::v1::Timing> for ServerTiming {
    fn from(t: crossbatch_proto::v1::Timing) -> Self {
        Self {
            tokenization_ns: t.tokenization_ns,
            queue_ns: t.queue_ns,
            inference_ns: t.inference_ns,
            real_tokens: t.real_tokens,
            padded_tokens: t.padded_tokens,
        }
    }
}

/// Index of the nearest-rank `p` quantile in a sorted list of `n` values.
pub fn nearest_rank(n: usize, p: f64) -> usize {
    // The epsilon keeps p·n that is an integer in exact arithmetic (0.07 × 100) from
    // rounding up a rank through float error.
    ((p * n as f64 - 1e-9).ceil() as usize).clamp(1, n) - 1
}

#[derive(Debug, Clone, Serialize)]
pub struct Summary {
    pub batch: usize,
    pub concurrency: usize,
    pub calls: usize,
    pub pairs_ok: usize,
    pub wall_s: f64,
    pub pairs_per_s: f64,
    pub latency_ms: Latency,
    pub errors: BTreeMap<String, usize>,
    /// Open loop: calls sent later than intended because max-in-flight was reached.
    pub late: usize,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct Latency {
    pub avg: f64,
    pub p50: f64,
    pub p90: f64,
    pub p95: f64,
    pub p99: f64,
    pub max: f64,
}

/// Summarises the measured (non-warm-up) samples of one config.
pub fn summarise(samples: &[Sample], wall: Duration, late: usize) -> Summary {
    let measured: Vec<&Sample> = samples.iter().filter(|s| !s.warmup).collect();
    let mut lat: Vec<u64> = Vec::with_capacity(measured.len());
    let mut errors = BTreeMap::new();
    let mut pairs_ok = 0;
    for s in &measured {
        if s.code.is_ok() {
            pairs_ok += s.pairs;
            lat.push(s.latency_us);
        } else {
            *errors.entry(s.code.name().to_string()).or_insert(0) += 1;
        }
    }
    lat.sort_unstable();
    let latency = if lat.is_empty() {
        Latency::default()
    } else {
        let q = |p: f64| lat[nearest_rank(lat.len(), p)] as f64 / 1e3;
        Latency {
            avg: lat.iter().sum::<u64>() as f64 / lat.len() as f64 / 1e3,
            p50: q(0.50),
            p90: q(0.90),
            p95: q(0.95),
            p99: q(0.99),
            max: lat[lat.len() - 1] as f64 / 1e3,
        }
    };
    let (batch, concurrency) = measured
        .first()
        .map(|s| (s.batch, s.concurrency))
        .unwrap_or_default();
    Summary {
        batch,
        concurrency,
        calls: measured.len(),
        pairs_ok,
        wall_s: wall.as_secs_f64(),
        pairs_per_s: pairs_ok as f64 / wall.as_secs_f64().max(1e-9),
        latency_ms: latency,
        errors,
        late,
    }
}

impl Summary {
    pub fn line(&self) -> String {
        let errs = if self.errors.is_empty() {
            "0".to_string()
        } else {
            self.errors
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect::<Vec<_>>()
                .join(" ")
        };
        let l = &self.latency_ms;
        format!(
            "| {} | {} | {} | {} | {:.2} | {:.1} | {:.1} | {:.1} | {:.1} | {:.1} | {:.1} | {:.1} | {} | {} |",
            self.batch,
            self.concurrency,
            self.calls,
            self.pairs_ok,
            self.wall_s,
            self.pairs_per_s,
            l.avg,
            l.p50,
            l.p90,
            l.p95,
            l.p99,
            l.max,
            errs,
            self.late
        )
    }

    pub const HEADER: &'static str = "| batch | conc | calls | pairs | wall s | pairs/s | lat avg ms | p50 | p90 | p95 | p99 | max | errors | late |\n|---|---|---|---|---|---|---|---|---|---|---|---|---|---|";
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(latency_us: u64, code: &str, warmup: bool) -> Sample {
        Sample {
            run_id: "r".into(),
            driver_id: "d".into(),
            batch: 4,
            concurrency: 2,
            pairs: 4,
            intended_us: 0,
            sent_us: 0,
            latency_us,
            code: StatusCode::from_name(code).expect("a status name"),
            warmup,
            server: None,
            endpoint: "127.0.0.1:1".into(),
            instance: "i".into(),
            attempts: 1,
            retried: Vec::new(),
        }
    }

    #[test]
    fn warmup_and_errors_stay_out_of_latency() {
        let samples = vec![
            s(1_000_000, "OK", true),
            s(10_000, "OK", false),
            s(20_000, "OK", false),
            s(30_000, "OK", false),
            s(5, "UNAVAILABLE", false),
        ];
        let sum = summarise(&samples, Duration::from_secs(1), 0);
        assert_eq!(sum.calls, 4);
        assert_eq!(sum.pairs_ok, 12);
        assert_eq!(sum.errors.get("UNAVAILABLE"), Some(&1));
        assert!(
            (sum.latency_ms.avg - 20.0).abs() < 0.05,
            "{}",
            sum.latency_ms.avg
        );
        assert!((sum.latency_ms.max - 30.0).abs() < 0.05);
        assert!((sum.latency_ms.p50 - 20.0).abs() < 0.05);
    }

    #[test]
    fn nearest_rank_percentiles_by_hand() {
        // 1..=10: p50 = 5, p90 = 9, p95 = 10, p99 = 10, p10 = 1.
        assert_eq!(nearest_rank(10, 0.50), 4);
        assert_eq!(nearest_rank(10, 0.90), 8);
        assert_eq!(nearest_rank(10, 0.95), 9);
        assert_eq!(nearest_rank(10, 0.99), 9);
        assert_eq!(nearest_rank(10, 0.10), 0);
        assert_eq!(nearest_rank(1, 0.99), 0);
        assert_eq!(nearest_rank(100, 0.07), 6);
    }
}
