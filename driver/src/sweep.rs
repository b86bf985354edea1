//! A sweep: every batch × concurrency step in turn, with a summary per step and the
//! raw samples of all of them.

use std::io::Write;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use crossbatch_proto::records::EndpointRecord;
use tokio::sync::watch;

use crate::balance::Pool;

use crate::coordinated::{Gate, Next};
use crate::load::{Mode, Progress, StepConfig, StepResult, run_step};
use crate::progress::Ticker;
use crate::stats::{Sample, Summary, summarise};
use crate::telemetry::{ClientTelemetry, RunRecord, ServerInfo, StepRecord};
use crate::workload::Pair;

#[derive(Debug, Clone)]
pub struct SweepConfig {
    /// Every step's settings; its `step`, `batch` and `concurrency` are set per step.
    pub template: StepConfig,
    pub batches: Vec<usize>,
    pub concurrencies: Vec<usize>,
    /// Progress: plain-line interval when stderr is not a terminal (0: none at all).
    pub progress_every: Duration,
}

impl SweepConfig {
    /// The steps in the order they run: every batch × every concurrency.
    pub fn steps(&self) -> Vec<StepConfig> {
        let mut out = Vec::new();
        for &batch in &self.batches {
            for &concurrency in &self.concurrencies {
                out.push(StepConfig {
                    step: out.len(),
                    batch,
                    concurrency,
                    ..self.template.clone()
                });
            }
        }
        out
    }
}

#[derive(Debug, Default)]
pub struct SweepResult {
    pub summaries: Vec<Summary>,
    pub samples: Vec<Sample>,
    pub interrupted: bool,
    /// Totals over every step (warm-up calls excluded), for the run record.
    pub record: RunRecord,
    /// A coordinated run that could not go on (aborted, coordinator lost).
    pub error: Option<String>,
    /// Per endpoint figures over every step.
    pub endpoints: Vec<EndpointRecord>,
}

/// Runs every step in turn; with `telemetry`, every call is a span and each step and
/// the run end with a completion record (the run's carries `server`). With a `gate`,
/// each step waits for the coordinator's start and is reported done after.
pub async fn run(
    pool: impl Into<Pool>,
    workload: Arc<Vec<Pair>>,
    cfg: &SweepConfig,
    mut stop: watch::Receiver<bool>,
    telemetry: Option<Arc<ClientTelemetry>>,
    server: ServerInfo,
    mut gate: Option<&mut Gate>,
) -> SweepResult {
    let pool: Pool = pool.into();
    let run_started = SystemTime::now();
    let steps = cfg.steps();
    let mut per_step = Vec::new();
    let mut out = SweepResult {
        record: RunRecord {
            steps_planned: steps.len(),
            server,
            ..Default::default()
        },
        ..Default::default()
    };
    for step in steps {
        if *stop.borrow() {
            out.interrupted = true;
            break;
        }
        if let Some(g) = gate.as_deref_mut() {
            let next = tokio::select! {
                n = g.wait_start(step.step) => n,
                _ = stop.wait_for(|s| *s) => {
                    out.interrupted = true;
                    break;
                }
            };
            match next {
                Ok(Next::Start) => {}
                Ok(Next::Finish) => break,
                Err(e) => {
                    out.error = Some(e.to_string());
                    break;
                }
            }
        }
        let progress = Arc::new(Progress::default());
        let ticker = Ticker::start(
            Arc::clone(&progress),
            format!("batch={} conc={}", step.batch, step.concurrency),
            step.pairs,
            cfg.progress_every,
        );
        let r = run_step(
            pool.clone(),
            Arc::clone(&workload),
            step.clone(),
            progress,
            stop.clone(),
            telemetry.clone(),
        )
        .await;
        ticker.finish();
        let rec = step_record(&step, &r);
        if let Some(t) = &telemetry {
            t.step_done(&rec, r.started.unwrap_or(run_started));
        }
        if let Some(g) = gate.as_deref_mut()
            && !r.interrupted
            && let Err(e) = g.done(step.step, rec.calls_sent, rec.calls_ok).await
        {
            out.error = Some(e.to_string());
        }
        let run = &mut out.record;
        run.steps_done += 1;
        run.calls_sent += rec.calls_sent;
        run.calls_ok += rec.calls_ok;
        run.pairs_sent += rec.pairs_sent;
        run.pairs_ok += rec.pairs_ok;
        run.retries += rec.retries;
        run.ejections += rec.ejections;
        per_step.push(rec.endpoints);
        out.summaries.push(summarise(&r.samples, r.wall, r.late));
        out.samples.extend(r.samples);
        if r.interrupted {
            out.interrupted = true;
            break;
        }
        if out.error.is_some() {
            break;
        }
    }
    if let Some(g) = gate
        && !out.interrupted
        && out.error.is_none()
        && out.record.steps_done == out.record.steps_planned
        && let Err(e) = g.wait_finish().await
    {
        out.error = Some(e.to_string());
    }
    out.endpoints = crate::balance::record::merge(&per_step);
    out.record.interrupted = out.interrupted || out.error.is_some();
    if let Some(t) = &telemetry {
        t.run_done(&out.record, run_started);
    }
    out
}

/// The completion record of one step: counts of measured calls (warm-up apart).
pub fn step_record(step: &StepConfig, r: &StepResult) -> StepRecord {
    let measured = r.samples.iter().filter(|s| !s.warmup);
    let mut rec = StepRecord {
        step: step.step,
        batch: step.batch,
        concurrency: step.concurrency,
        mode: match step.mode {
            Mode::Closed => "closed".into(),
            Mode::Open { .. } => "open".into(),
        },
        warmup_calls: r.samples.iter().filter(|s| s.warmup).count(),
        late_calls: r.late,
        wall_s: r.wall.as_secs_f64(),
        interrupted: r.interrupted,
        ejections: r.endpoints.iter().map(|e| e.ejections).sum(),
        endpoints: r.endpoints.clone(),
        ..Default::default()
    };
    for s in measured {
        rec.calls_sent += 1;
        rec.pairs_sent += s.pairs;
        rec.retries += s.retried.len();
        if s.code.is_ok() {
            rec.calls_ok += 1;
            rec.pairs_ok += s.pairs;
        }
    }
    rec.count_failures();
    rec
}

/// One JSON line per call.
pub fn write_samples(path: &Path, samples: &[Sample]) -> std::io::Result<()> {
    let mut f = std::io::BufWriter::new(std::fs::File::create(path)?);
    for s in samples {
        serde_json::to_writer(&mut f, s)?;
        f.write_all(b"\n")?;
    }
    f.flush()
}

pub fn read_samples(path: &Path) -> Result<Vec<Sample>, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    text.lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(i, l)| {
            serde_json::from_str(l).map_err(|e| format!("{}:{}: {e}", path.display(), i + 1))
        })
        .collect()
}
