//! `crossbatch-server bench-serve`: the server in process on loopback, closed-loop
//! Score load from N concurrent clients, and the figures issue #3 asks for — served
//! throughput against the offline forward, latency spent outside tokenize + queue +
//! inference, and padding waste with and without length grouping.

use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Parser;
use crossbatch_driver::load::{Mode, StepConfig, run_step};
use crossbatch_driver::stats::Sample;
use crossbatch_driver::workload::Pair;
use tonic::transport::Channel;

use crate::serve::{ServeArgs, StartError, serve};

/// One measured step: what the driver library recorded, call by call.
#[derive(Debug, Clone, Default)]
pub struct LoadResult {
    pub samples: Vec<Sample>,
    pub wall: Duration,
}

impl LoadResult {
    fn ok(&self) -> impl Iterator<Item = &Sample> {
        self.samples.iter().filter(|s| !s.warmup && s.code.is_ok())
    }
    pub fn errors(&self) -> usize {
        self.samples
            .iter()
            .filter(|s| !s.warmup && !s.code.is_ok())
            .count()
    }
    pub fn pairs_per_s(&self) -> f64 {
        self.ok().map(|s| s.pairs).sum::<usize>() as f64 / self.wall.as_secs_f64()
    }
    pub fn mean_latency(&self) -> Duration {
        let n = self.ok().count().max(1) as u64;
        Duration::from_micros(self.ok().map(|s| s.latency_us).sum::<u64>() / n)
    }
    /// Mean share of client latency outside tokenization, queue wait and inference.
    pub fn overhead_share(&self) -> f64 {
        let shares: Vec<f64> = self
            .ok()
            .filter_map(|s| {
                let t = s.server?;
                let inside = (t.tokenization_ns + t.queue_ns + t.inference_ns) as f64;
                let lat = s.latency_us as f64 * 1e3;
                Some(((lat - inside) / lat).max(0.0))
            })
            .collect();
        shares.iter().sum::<f64>() / shares.len().max(1) as f64
    }
    pub fn padding_waste(&self) -> f64 {
        let (real, padded) = self
            .ok()
            .filter_map(|s| s.server)
            .fold((0u64, 0u64), |(r, p), t| {
                (r + t.real_tokens, p + t.padded_tokens)
            });
        if padded == 0 {
            0.0
        } else {
            1.0 - real as f64 / padded as f64
        }
    }
}

/// Closed loop through the driver library: `concurrency` workers send calls of `batch`
/// pairs back to back until `total` pairs are sent (pairs in order, cycling), after
/// `warmup_calls` calls that are left out of every figure.
pub async fn closed_loop(
    channel: Channel,
    pairs: Arc<Vec<Pair>>,
    batch: usize,
    concurrency: usize,
    total: usize,
    warmup_calls: usize,
) -> LoadResult {
    let cfg = StepConfig {
        step: 0,
        batch,
        concurrency,
        pairs: total,
        warmup_calls,
        deadline: None,
        mode: Mode::Closed,
        run_id: "bench-serve".into(),
        driver_id: "bench-serve".into(),
        api_key: None,
    };
    let (_stop_tx, stop) = tokio::sync::watch::channel(false);
    let r = run_step(channel, pairs, cfg, Arc::default(), stop, None).await;
    LoadResult {
        samples: r.samples,
        wall: r.wall,
    }
}

/// A server in this process on 127.0.0.1 with `flags`; returns its channel and a stop handle.
pub async fn start_local(
    flags: &[String],
) -> Result<
    (
        Channel,
        tokio::sync::oneshot::Sender<()>,
        tokio::task::JoinHandle<Result<(), StartError>>,
    ),
    StartError,
> {
    let mut argv = vec!["serve".to_string()];
    argv.extend(flags.iter().cloned());
    let args = ServeArgs::try_parse_from(argv).map_err(|e| StartError::Config(e.to_string()))?;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .map_err(|e| StartError::Transport(e.to_string()))?;
    let addr = format!(
        "http://{}",
        listener
            .local_addr()
            .map_err(|e| StartError::Transport(e.to_string()))?
    );
    let (tx, rx) = tokio::sync::oneshot::channel();
    let task = tokio::spawn(serve(args, listener, async move {
        let _ = rx.await;
    }));
    let channel = Channel::from_shared(addr)
        .map_err(|e| StartError::Transport(e.to_string()))?
        .connect_lazy();
    // Ready when health says SERVING (NOT_SERVING while the model loads).
    let until = Instant::now() + Duration::from_secs(600);
    loop {
        if let Ok(None) = crossbatch_proto::lifecycle::not_serving(channel.clone()).await {
            break;
        }
        if task.is_finished() || Instant::now() > until {
            return Err(StartError::Transport("the server did not come up".into()));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok((channel, tx, task))
}
