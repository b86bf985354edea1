//! Prometheus metrics (`--metrics-addr`, off by default): request counts by outcome,
//! duration histograms for request, tokenization, queue and inference, batch size and
//! batch token histograms, and queue depth. Text exposition format over plain HTTP.

use std::fmt::Write as _;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::batcher::{BatchInfo, BatchObserver};

/// A fixed-bucket histogram; cheap to observe from any thread.
pub struct Histogram {
    bounds: Vec<f64>,
    counts: Vec<AtomicU64>,
    sum_micros: AtomicU64,
    count: AtomicU64,
    /// Values are stored ×1e6 in `sum_micros`; this scales them back for display.
    scale: f64,
}

impl Histogram {
    fn new(bounds: &[f64], scale: f64) -> Self {
        Self {
            bounds: bounds.to_vec(),
            counts: (0..=bounds.len()).map(|_| AtomicU64::new(0)).collect(),
            sum_micros: AtomicU64::new(0),
            count: AtomicU64::new(0),
            scale,
        }
    }

    pub fn observe(&self, v: f64) {
        let i = self
            .bounds
            .iter()
            .position(|&b| v <= b)
            .unwrap_or(self.bounds.len());
        self.counts[i].fetch_add(1, Ordering::Relaxed);
        self.sum_micros
            .fetch_add((v * 1e6 / self.scale) as u64, Ordering::Relaxed);
        self.count.fetch_add(1, Ordering::Relaxed);
    }

    fn render(&self, name: &str, help: &str, out: &mut String) {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} histogram");
        let mut cum = 0;
        for (i, b) in self.bounds.iter().enumerate() {
            cum += self.counts[i].load(Ordering::Relaxed);
            let _ = writeln!(out, "{name}_bucket{{le=\"{b}\"}} {cum}");
        }
        cum += self.counts[self.bounds.len()].load(Ordering::Relaxed);
        let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {cum}");
        let sum = self.sum_micros.load(Ordering::Relaxed) as f64 / 1e6 * self.scale;
        let _ = writeln!(out, "{name}_sum {sum}\n{name}_count {cum}");
    }
}

const SECONDS: [f64; 14] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];
const PAIRS: [f64; 9] = [1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 96.0, 128.0];
const TOKENS: [f64; 10] = [
    128.0, 256.0, 512.0, 1024.0, 2048.0, 4096.0, 8192.0, 16384.0, 32768.0, 65536.0,
];
const OUTCOMES: [&str; 6] = [
    "ok",
    "invalid_argument",
    "resource_exhausted",
    "deadline_exceeded",
    "unavailable",
    "internal",
];

pub struct Metrics {
    requests: [AtomicU64; OUTCOMES.len() + 1],
    pub request_seconds: Histogram,
    pub tokenize_seconds: Histogram,
    pub queue_seconds: Histogram,
    pub inference_seconds: Histogram,
    pub batch_pairs: Histogram,
    pub batch_tokens: Histogram,
    pub batch_padded_tokens: Histogram,
    queue_depth: AtomicU64,
}

impl Default for Metrics {
    fn default() -> Self {
        Self {
            requests: Default::default(),
            request_seconds: Histogram::new(&SECONDS, 1.0),
            tokenize_seconds: Histogram::new(&SECONDS, 1.0),
            queue_seconds: Histogram::new(&SECONDS, 1.0),
            inference_seconds: Histogram::new(&SECONDS, 1.0),
            batch_pairs: Histogram::new(&PAIRS, 1e6),
            batch_tokens: Histogram::new(&TOKENS, 1e6),
            batch_padded_tokens: Histogram::new(&TOKENS, 1e6),
            queue_depth: AtomicU64::new(0),
        }
    }
}

impl Metrics {
    /// Counts one finished call under its gRPC outcome.
    pub fn request_done(&self, code: tonic::Code, took: Duration) {
        let name = match code {
            tonic::Code::Ok => "ok",
            tonic::Code::InvalidArgument => "invalid_argument",
            tonic::Code::ResourceExhausted => "resource_exhausted",
            tonic::Code::DeadlineExceeded => "deadline_exceeded",
            tonic::Code::Unavailable => "unavailable",
            tonic::Code::Internal => "internal",
            _ => "other",
        };
        let i = OUTCOMES
            .iter()
            .position(|&o| o == name)
            .unwrap_or(OUTCOMES.len());
        self.requests[i].fetch_add(1, Ordering::Relaxed);
        self.request_seconds.observe(took.as_secs_f64());
    }

    pub fn set_queue_depth(&self, pairs: usize) {
        self.queue_depth.store(pairs as u64, Ordering::Relaxed);
    }

    pub fn render(&self) -> String {
        let mut out = String::new();
        out.push_str("# HELP crossbatch_requests_total Score and Rerank calls by outcome.\n# TYPE crossbatch_requests_total counter\n");
        for (i, o) in OUTCOMES.iter().chain(["other"].iter()).enumerate() {
            let _ = writeln!(
                out,
                "crossbatch_requests_total{{outcome=\"{o}\"}} {}",
                self.requests[i].load(Ordering::Relaxed)
            );
        }
        self.request_seconds.render(
            "crossbatch_request_duration_seconds",
            "Time inside the server per call.",
            &mut out,
        );
        self.tokenize_seconds.render(
            "crossbatch_tokenize_duration_seconds",
            "Tokenization time per call.",
            &mut out,
        );
        self.queue_seconds.render(
            "crossbatch_queue_duration_seconds",
            "Queue wait per call (until its last batch started).",
            &mut out,
        );
        self.inference_seconds.render(
            "crossbatch_inference_duration_seconds",
            "Forward pass time per batch.",
            &mut out,
        );
        self.batch_pairs
            .render("crossbatch_batch_pairs", "Pairs per batch.", &mut out);
        self.batch_tokens.render(
            "crossbatch_batch_tokens",
            "Real tokens per batch.",
            &mut out,
        );
        self.batch_padded_tokens.render(
            "crossbatch_batch_padded_tokens",
            "Computed tokens per batch, padding included.",
            &mut out,
        );
        let _ = writeln!(
            out,
            "# HELP crossbatch_queue_pairs Pairs waiting in the queue.\n# TYPE crossbatch_queue_pairs gauge\ncrossbatch_queue_pairs {}",
            self.queue_depth.load(Ordering::Relaxed)
        );
        out
    }
}

impl BatchObserver for Metrics {
    fn batch_done(&self, b: &BatchInfo) {
        self.inference_seconds.observe(b.duration.as_secs_f64());
        self.batch_pairs.observe(b.pairs as f64);
        self.batch_tokens.observe(b.real_tokens as f64);
        self.batch_padded_tokens.observe(b.padded_tokens as f64);
    }
}

/// Serves `GET /metrics` until the task is aborted. `refresh` runs before each scrape
/// (it updates the gauges).
pub async fn serve_http(
    listener: tokio::net::TcpListener,
    metrics: Arc<Metrics>,
    refresh: Arc<dyn Fn() + Send + Sync>,
) {
    loop {
        let Ok((mut conn, _)) = listener.accept().await else {
            continue;
        };
        let metrics = Arc::clone(&metrics);
        let refresh = Arc::clone(&refresh);
        tokio::spawn(async move {
            let mut buf = [0u8; 2048];
            let n = match tokio::time::timeout(Duration::from_secs(5), conn.read(&mut buf)).await {
                Ok(Ok(n)) => n,
                _ => return,
            };
            let head = String::from_utf8_lossy(&buf[..n]);
            let (status, body, ctype) = if head.starts_with("GET /metrics") {
                refresh();
                ("200 OK", metrics.render(), "text/plain; version=0.0.4")
            } else {
                (
                    "404 Not Found",
                    "try GET /metrics\n".to_string(),
                    "text/plain",
                )
            };
            let resp = format!(
                "HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = conn.write_all(resp.as_bytes()).await;
            let _ = conn.shutdown().await;
        });
    }
}
