//! Sending the load: closed loop (N workers back to back) or open loop (a fixed
//! schedule of intended start times, uniform or Poisson, latency measured from the
//! intended start as wrk2 does, so a stalled server cannot hide its queueing).

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant, SystemTime};

use crossbatch_proto::records::EndpointRecord;
use crossbatch_proto::v1::{Pair as ProtoPair, ScoreRequest};
use tokio::sync::{Mutex, Semaphore, watch};
use tonic::transport::Channel;

use crate::balance::Pool;
use crate::stats::{Retried, Sample};
use crate::telemetry::ClientTelemetry;
use crate::workload::Pair;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Arrivals {
    /// Evenly spaced calls.
    Uniform,
    /// Exponential gaps (a Poisson process), seeded.
    Poisson,
}

#[derive(Debug, Clone)]
pub enum Mode {
    Closed,
    Open {
        rate: f64,
        arrivals: Arrivals,
        max_in_flight: usize,
    },
}

#[derive(Debug, Clone)]
pub struct StepConfig {
    /// Index of this config in the sweep (from 0).
    pub step: usize,
    pub batch: usize,
    pub concurrency: usize,
    pub pairs: usize,
    pub warmup_calls: usize,
    pub deadline: Option<Duration>,
    pub mode: Mode,
    pub run_id: String,
    pub driver_id: String,
    /// Sent as `authorization: Bearer KEY` on every call.
    pub api_key: Option<crossbatch_proto::client::Secret>,
}

#[derive(Debug, Default)]
pub struct StepResult {
    pub samples: Vec<Sample>,
    /// Wall-clock start of the measured part (after warm-up).
    pub started: Option<SystemTime>,
    pub wall: Duration,
    pub late: usize,
    /// Stopped early (Ctrl-C): the figures cover what was measured.
    pub interrupted: bool,
    /// Per endpoint figures of the measured calls.
    pub endpoints: Vec<EndpointRecord>,
}

/// Progress counters the caller may print while the step runs.
#[derive(Debug, Default)]
pub struct Progress {
    pub pairs_done: AtomicUsize,
    pub errors: AtomicUsize,
}

/// An exponential gap with the given mean (inverse transform sampling).
fn exp_gap(rng: &mut crate::workload::SplitMix, mean_s: f64) -> f64 {
    -mean_s * rng.unit().ln()
}

struct Caller {
    pool: Pool,
    workload: Arc<Vec<Pair>>,
    cfg: StepConfig,
    origin: Instant,
    origin_wall: SystemTime,
    telemetry: Option<Arc<ClientTelemetry>>,
}

impl Caller {
    /// One Score call of pairs `[from, from + n)` (cycling the workload).
    async fn call(&mut self, from: usize, n: usize, intended: Instant, warmup: bool) -> Sample {
        let w = &self.workload;
        let message = ScoreRequest {
            pairs: (from..from + n)
                .map(|i| {
                    let p = &w[i % w.len()];
                    ProtoPair {
                        query: p.query.clone(),
                        passage: p.passage.clone(),
                    }
                })
                .collect(),
            raw_scores: true,
        };
        // The metadata every attempt carries: key and trace context.
        let mut head = tonic::Request::new(());
        crossbatch_proto::client::authorize(&mut head, self.cfg.api_key.as_ref());
        let span = self
            .telemetry
            .as_ref()
            .map(|t| t.start_call(head.metadata_mut()));
        let sent = Instant::now();
        // Retries included: latency runs from the first attempt (or the intended
        // start), so what a failover costs shows in the figures.
        let outcome = self
            .pool
            .score(message, head.metadata().clone(), self.cfg.deadline)
            .await;
        let (code, server) = match outcome.result {
            Ok(r) => (tonic::Code::Ok, r.timing.map(Into::into)),
            Err(s) => (s.code(), None),
        };
        let done = Instant::now();
        let us = |t: Instant| t.saturating_duration_since(self.origin).as_micros() as u64;
        let from_t = match self.cfg.mode {
            Mode::Closed => sent,
            Mode::Open { .. } => intended,
        };
        let sample = Sample {
            run_id: self.cfg.run_id.clone(),
            driver_id: self.cfg.driver_id.clone(),
            batch: self.cfg.batch,
            concurrency: self.cfg.concurrency,
            pairs: n,
            intended_us: us(intended),
            sent_us: us(sent),
            latency_us: done.saturating_duration_since(from_t).as_micros() as u64,
            code: code.into(),
            warmup,
            server,
            endpoint: outcome.endpoint,
            instance: outcome.instance,
            attempts: outcome.attempts,
            retried: outcome
                .failed
                .into_iter()
                .map(|f| Retried {
                    endpoint: f.endpoint,
                    code: f.code,
                })
                .collect(),
        };
        if let (Some(t), Some(span)) = (&self.telemetry, span) {
            let intended_wall = self.origin_wall + intended.saturating_duration_since(self.origin);
            t.end_call(span, &sample, self.cfg.step, intended_wall);
        }
        sample
    }
}

/// Runs one batch × concurrency step: warm-up calls first, then exactly `pairs` pairs.
pub async fn run_step(
    pool: impl Into<Pool>,
    workload: Arc<Vec<Pair>>,
    cfg: StepConfig,
    progress: Arc<Progress>,
    stop: watch::Receiver<bool>,
    telemetry: Option<Arc<ClientTelemetry>>,
) -> StepResult {
    let pool: Pool = pool.into();
    let batch = cfg.batch.max(1);
    let origin = Instant::now();
    let origin_wall = SystemTime::now();
    let caller = |cfg: &StepConfig| Caller {
        pool: pool.clone(),
        workload: Arc::clone(&workload),
        cfg: cfg.clone(),
        origin,
        origin_wall,
        telemetry: telemetry.clone(),
    };
    let mut samples = Vec::new();
    // Warm-up: `warmup_calls` full calls across the workers, before the clock starts.
    {
        let next = Arc::new(AtomicUsize::new(0));
        let mut tasks = Vec::new();
        for _ in 0..cfg.concurrency.max(1).min(cfg.warmup_calls.max(1)) {
            let mut c = caller(&cfg);
            let next = Arc::clone(&next);
            let total = cfg.warmup_calls;
            tasks.push(tokio::spawn(async move {
                let mut out = Vec::new();
                while next.fetch_add(1, Ordering::Relaxed) < total {
                    out.push(c.call(0, batch, Instant::now(), true).await);
                }
                out
            }));
        }
        for t in tasks {
            if let Ok(s) = t.await {
                samples.extend(s);
            }
        }
    }
    let before = pool.snapshot();
    let start = Instant::now();
    let started = SystemTime::now();
    let claimed = Arc::new(AtomicUsize::new(0));
    let mut late = 0;
    let mut interrupted = false;
    match cfg.mode {
        Mode::Closed => {
            let mut tasks = Vec::new();
            for _ in 0..cfg.concurrency.max(1) {
                let mut c = caller(&cfg);
                let claimed = Arc::clone(&claimed);
                let progress = Arc::clone(&progress);
                let stop = stop.clone();
                let total = cfg.pairs;
                tasks.push(tokio::spawn(async move {
                    let mut out = Vec::new();
                    loop {
                        if *stop.borrow() {
                            return (out, true);
                        }
                        let from = claimed.fetch_add(batch, Ordering::Relaxed);
                        if from >= total {
                            return (out, false);
                        }
                        let n = batch.min(total - from);
                        let s = c.call(from, n, Instant::now(), false).await;
                        if s.code.is_ok() {
                            progress.pairs_done.fetch_add(n, Ordering::Relaxed);
                        } else {
                            progress.errors.fetch_add(1, Ordering::Relaxed);
                        }
                        out.push(s);
                    }
                }));
            }
            for t in tasks {
                if let Ok((s, stopped)) = t.await {
                    samples.extend(s);
                    interrupted |= stopped;
                }
            }
        }
        Mode::Open {
            rate,
            arrivals,
            max_in_flight,
        } => {
            let calls = cfg.pairs.div_ceil(batch);
            let slots = Arc::new(Semaphore::new(max_in_flight.max(1)));
            let out = Arc::new(Mutex::new(Vec::with_capacity(calls)));
            let mut rng = crate::workload::SplitMix::new(0x5eed);
            let mut t = 0.0f64;
            let mut tasks = Vec::with_capacity(calls);
            for k in 0..calls {
                if *stop.borrow() {
                    interrupted = true;
                    break;
                }
                let intended = start + Duration::from_secs_f64(t);
                t += match arrivals {
                    Arrivals::Uniform => 1.0 / rate,
                    Arrivals::Poisson => exp_gap(&mut rng, 1.0 / rate),
                };
                tokio::time::sleep_until(intended.into()).await;
                let Ok(permit) = Arc::clone(&slots).acquire_owned().await else {
                    break;
                };
                if Instant::now().duration_since(intended) > Duration::from_millis(1) {
                    late += 1;
                }
                let from = k * batch;
                let n = batch.min(cfg.pairs - from);
                let mut c = caller(&cfg);
                let out = Arc::clone(&out);
                let progress = Arc::clone(&progress);
                tasks.push(tokio::spawn(async move {
                    let s = c.call(from, n, intended, false).await;
                    if s.code.is_ok() {
                        progress.pairs_done.fetch_add(n, Ordering::Relaxed);
                    } else {
                        progress.errors.fetch_add(1, Ordering::Relaxed);
                    }
                    out.lock().await.push(s);
                    drop(permit);
                }));
            }
            for t in tasks {
                let _ = t.await;
            }
            samples.extend(out.lock().await.drain(..));
        }
    }
    let wall = start.elapsed();
    let endpoints = crate::balance::record::endpoint_records(&samples, &before, &pool.snapshot());
    StepResult {
        samples,
        started: Some(started),
        wall,
        late,
        interrupted,
        endpoints,
    }
}

/// Waits until the server's health says SERVING, up to `timeout`. `https://` targets
/// are dialled with `tls`.
pub async fn wait_serving(
    target: &str,
    tls: &crossbatch_proto::client::ClientTls,
    timeout: Duration,
) -> Result<Channel, String> {
    let until = Instant::now() + timeout;
    let mut last: String;
    loop {
        let endpoint = crossbatch_proto::client::endpoint(target, tls)?;
        match endpoint.connect().await {
            Ok(ch) => match crossbatch_proto::lifecycle::not_serving(ch.clone()).await {
                Ok(None) => return Ok(ch),
                Ok(Some(status)) => last = format!("health status {}", status.as_str_name()),
                Err(e) => last = e.message().to_string(),
            },
            Err(e) => last = e.to_string(),
        }
        if Instant::now() >= until {
            return Err(format!(
                "server at {target} not SERVING after {:.0?} ({last})",
                timeout
            ));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
