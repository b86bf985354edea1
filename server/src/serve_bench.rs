//! `crossbatch-server bench-serve`: the server in process on loopback, closed-loop
//! Score load from N concurrent clients: served throughput against the offline forward
//! at the batch size the server actually formed, how busy the machine's cores were,
//! latency spent outside tokenize + queue + inference, and padding waste with and
//! without length grouping.

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

/// Batches the server formed during a step: `crossbatch_batch_pairs` sum and count
/// from its Prometheus endpoint.
pub async fn batch_pairs_totals(metrics: std::net::SocketAddr) -> Option<(f64, f64)> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut conn = tokio::net::TcpStream::connect(metrics).await.ok()?;
    let req = format!("GET /metrics HTTP/1.1\r\nHost: {metrics}\r\nConnection: close\r\n\r\n");
    conn.write_all(req.as_bytes()).await.ok()?;
    let mut body = String::new();
    conn.read_to_string(&mut body).await.ok()?;
    let value = |name: &str| {
        body.lines().find_map(|l| {
            l.strip_prefix(name)?
                .strip_prefix(' ')?
                .trim()
                .parse::<f64>()
                .ok()
        })
    };
    Some((
        value("crossbatch_batch_pairs_sum")?,
        value("crossbatch_batch_pairs_count")?,
    ))
}

/// A free loopback port for the server's metrics endpoint.
pub fn free_local_addr() -> std::io::Result<std::net::SocketAddr> {
    std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()
}

/// One served configuration and what it achieved.
pub struct ServedRow {
    pub policy: String,
    pub batch: usize,
    pub concurrency: usize,
    pub result: LoadResult,
    /// Mean pairs per forward pass the server formed.
    pub mean_batch: Option<f64>,
    /// Cores the whole machine kept busy on average (server and clients together).
    pub busy_cores: Option<f64>,
}

/// Starts a server with `flags` (plus a metrics endpoint), runs `warmup` then
/// `pairs` pairs of closed-loop load, and stops it.
pub async fn served_row(
    flags: &[String],
    policy: &str,
    workload: Arc<Vec<Pair>>,
    batch: usize,
    concurrency: usize,
    pairs: usize,
) -> Result<ServedRow, StartError> {
    let metrics = free_local_addr().map_err(|e| StartError::Transport(e.to_string()))?;
    let mut flags = flags.to_vec();
    flags.extend(["--batch-policy".into(), policy.into()]);
    flags.extend(["--metrics-addr".into(), metrics.to_string()]);
    let (ch, stop, task) = start_local(&flags).await?;
    // 64 pairs of warm-up, left out of the figures.
    let warmup_calls = 64usize.div_ceil(batch);
    let warm = closed_loop(
        ch.clone(),
        workload.clone(),
        batch,
        concurrency,
        64,
        warmup_calls,
    );
    warm.await;
    let before = batch_pairs_totals(metrics).await;
    let cpu0 = crate::offline_bench::busy_seconds();
    let result = closed_loop(ch, workload, batch, concurrency, pairs, 0).await;
    let cpu1 = crate::offline_bench::busy_seconds();
    let after = batch_pairs_totals(metrics).await;
    let _ = stop.send(());
    let _ = task.await;
    let mean_batch = match (before, after) {
        (Some((s0, n0)), Some((s1, n1))) if n1 > n0 => Some((s1 - s0) / (n1 - n0)),
        _ => None,
    };
    let busy_cores = match (cpu0, cpu1) {
        (Some((m0, _)), Some((m1, _))) => Some((m1 - m0) / result.wall.as_secs_f64()),
        _ => None,
    };
    Ok(ServedRow {
        policy: policy.to_string(),
        batch,
        concurrency,
        result,
        mean_batch,
        busy_cores,
    })
}

/// Offline pairs/s at batch size `b`, linear between the measured sizes (and the
/// nearest one outside them).
pub fn offline_at(measured: &[(usize, f64)], b: f64) -> Option<f64> {
    let mut m = measured.to_vec();
    m.sort_by_key(|&(size, _)| size);
    let (first, last) = (m.first()?, m.last()?);
    if b <= first.0 as f64 {
        return Some(first.1);
    }
    if b >= last.0 as f64 {
        return Some(last.1);
    }
    m.windows(2).find_map(|w| {
        let ((b0, p0), (b1, p1)) = ((w[0].0 as f64, w[0].1), (w[1].0 as f64, w[1].1));
        (b >= b0 && b <= b1).then(|| p0 + (p1 - p0) * (b - b0) / (b1 - b0).max(1e-9))
    })
}

#[cfg(test)]
mod tests {
    use super::offline_at;

    #[test]
    fn offline_figure_is_interpolated_between_measured_batch_sizes() {
        let m = [(8, 100.0), (1, 60.0), (32, 90.0)];
        assert_eq!(offline_at(&m, 1.0), Some(60.0));
        assert_eq!(offline_at(&m, 0.5), Some(60.0));
        assert_eq!(offline_at(&m, 8.0), Some(100.0));
        assert_eq!(offline_at(&m, 20.0), Some(95.0));
        assert_eq!(offline_at(&m, 64.0), Some(90.0));
        assert_eq!(offline_at(&[], 8.0), None);
    }
}
