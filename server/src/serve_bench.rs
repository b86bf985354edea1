//! `crossbatch-server bench-serve`: the server in process on loopback, closed-loop
//! Score load from N concurrent clients, and the figures issue #3 asks for — served
//! throughput against the offline forward, latency spent outside tokenize + queue +
//! inference, and padding waste with and without length grouping.

use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Parser;
use crossbatch_proto::v1::cross_encoder_client::CrossEncoderClient;
use crossbatch_proto::v1::{Pair as ProtoPair, ScoreRequest, Timing};
use tonic::transport::Channel;

use crate::serve::{ServeArgs, StartError, serve};
use crossbatch_model::pairs::Pair;

#[derive(Debug, Clone, Default)]
pub struct LoadResult {
    pub calls: usize,
    pub pairs: usize,
    pub wall: Duration,
    pub latencies: Vec<Duration>,
    pub timings: Vec<Timing>,
    pub errors: usize,
}

impl LoadResult {
    pub fn pairs_per_s(&self) -> f64 {
        self.pairs as f64 / self.wall.as_secs_f64()
    }
    pub fn mean_latency(&self) -> Duration {
        self.latencies.iter().sum::<Duration>() / self.latencies.len().max(1) as u32
    }
    /// Mean share of client latency outside tokenization, queue wait and inference.
    pub fn overhead_share(&self) -> f64 {
        let shares: Vec<f64> = self
            .latencies
            .iter()
            .zip(&self.timings)
            .map(|(l, t)| {
                let inside = (t.tokenization_ns + t.queue_ns + t.inference_ns) as f64;
                let lat = l.as_nanos() as f64;
                ((lat - inside) / lat).max(0.0)
            })
            .collect();
        shares.iter().sum::<f64>() / shares.len().max(1) as f64
    }
    pub fn padding_waste(&self) -> f64 {
        let real: u64 = self.timings.iter().map(|t| t.real_tokens).sum();
        let padded: u64 = self.timings.iter().map(|t| t.padded_tokens).sum();
        if padded == 0 {
            0.0
        } else {
            1.0 - real as f64 / padded as f64
        }
    }
}

/// Closed loop: `concurrency` workers send calls of `batch` pairs back to back until
/// `total` pairs are sent (pairs taken in order, cycling).
pub async fn closed_loop(
    channel: Channel,
    pairs: Arc<Vec<Pair>>,
    batch: usize,
    concurrency: usize,
    total: usize,
) -> LoadResult {
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let start = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..concurrency {
        let mut client = CrossEncoderClient::new(channel.clone());
        let next = Arc::clone(&next);
        let pairs = Arc::clone(&pairs);
        tasks.push(tokio::spawn(async move {
            let mut r = LoadResult::default();
            loop {
                let from = next.fetch_add(batch, std::sync::atomic::Ordering::Relaxed);
                if from >= total {
                    return r;
                }
                let n = batch.min(total - from);
                let req = ScoreRequest {
                    pairs: (from..from + n)
                        .map(|i| {
                            let p = &pairs[i % pairs.len()];
                            ProtoPair {
                                query: p.query.clone(),
                                passage: p.passage.clone(),
                            }
                        })
                        .collect(),
                    raw_scores: true,
                };
                let t = Instant::now();
                match client.score(req).await {
                    Ok(resp) => {
                        r.latencies.push(t.elapsed());
                        r.timings.push(resp.into_inner().timing.unwrap_or_default());
                        r.pairs += n;
                    }
                    Err(_) => r.errors += 1,
                }
                r.calls += 1;
            }
        }));
    }
    let mut all = LoadResult::default();
    for t in tasks {
        if let Ok(r) = t.await {
            all.calls += r.calls;
            all.pairs += r.pairs;
            all.errors += r.errors;
            all.latencies.extend(r.latencies);
            all.timings.extend(r.timings);
        }
    }
    all.wall = start.elapsed();
    all
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
