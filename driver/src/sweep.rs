//! A sweep: every batch × concurrency step in turn, with a summary per step and the
//! raw samples of all of them.

use std::io::Write;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio::sync::watch;
use tonic::transport::Channel;

use crate::load::{Mode, Progress, StepConfig, run_step};
use crate::stats::{Sample, Summary, summarise};
use crate::workload::Pair;

#[derive(Debug, Clone)]
pub struct SweepConfig {
    pub batches: Vec<usize>,
    pub concurrencies: Vec<usize>,
    pub pairs: usize,
    pub warmup_calls: usize,
    pub deadline: Option<Duration>,
    pub mode: Mode,
    pub run_id: String,
    pub driver_id: String,
    /// Print a progress line this often (0: never).
    pub progress_every: Duration,
}

#[derive(Debug, Default)]
pub struct SweepResult {
    pub summaries: Vec<Summary>,
    pub samples: Vec<Sample>,
    pub interrupted: bool,
}

pub async fn run(
    channel: Channel,
    workload: Arc<Vec<Pair>>,
    cfg: &SweepConfig,
    stop: watch::Receiver<bool>,
) -> SweepResult {
    let mut out = SweepResult::default();
    'steps: for &batch in &cfg.batches {
        for &concurrency in &cfg.concurrencies {
            if *stop.borrow() {
                out.interrupted = true;
                break 'steps;
            }
            let step = StepConfig {
                batch,
                concurrency,
                pairs: cfg.pairs,
                warmup_calls: cfg.warmup_calls,
                deadline: cfg.deadline,
                mode: cfg.mode.clone(),
                run_id: cfg.run_id.clone(),
                driver_id: cfg.driver_id.clone(),
            };
            let progress = Arc::new(Progress::default());
            let ticker = (!cfg.progress_every.is_zero()).then(|| {
                let p = Arc::clone(&progress);
                let every = cfg.progress_every;
                let total = cfg.pairs;
                tokio::spawn(async move {
                    let start = std::time::Instant::now();
                    loop {
                        tokio::time::sleep(every).await;
                        let done = p.pairs_done.load(Ordering::Relaxed);
                        let rate = done as f64 / start.elapsed().as_secs_f64();
                        let eta = if rate > 0.0 {
                            format!("{:.0}s", (total.saturating_sub(done)) as f64 / rate)
                        } else {
                            "?".into()
                        };
                        eprintln!(
                            "batch={batch} conc={concurrency}: {done}/{total} pairs, {rate:.1} pairs/s, {} errors, ETA {eta}",
                            p.errors.load(Ordering::Relaxed)
                        );
                    }
                })
            });
            let r = run_step(
                channel.clone(),
                Arc::clone(&workload),
                step,
                progress,
                stop.clone(),
            )
            .await;
            if let Some(t) = ticker {
                t.abort();
            }
            out.summaries.push(summarise(&r.samples, r.wall, r.late));
            out.samples.extend(r.samples);
            if r.interrupted {
                out.interrupted = true;
                break 'steps;
            }
        }
    }
    out
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
