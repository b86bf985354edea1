//! Prometheus metrics (`--metrics-addr`, off by default): request counts by outcome,
//! duration histograms for request, tokenization, queue and inference, batch size and
//! batch token histograms, and queue depth. Kept in a `prometheus-client` registry (one
//! per server, no global: tests run several servers in one process) and served by
//! axum, both the maintained crates rather than hand-written exposition and HTTP.

use std::sync::Arc;
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

use crate::batcher::{BatchInfo, BatchObserver};

const SECONDS: [f64; 14] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];
const PAIRS: [f64; 9] = [1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 96.0, 128.0];
const TOKENS: [f64; 10] = [
    128.0, 256.0, 512.0, 1024.0, 2048.0, 4096.0, 8192.0, 16384.0, 32768.0, 65536.0,
];
/// Every outcome is exported from the start (at 0), so a rate over it is defined.
const OUTCOMES: [&str; 11] = [
    "ok",
    "cancelled",
    "invalid_argument",
    "resource_exhausted",
    "deadline_exceeded",
    "unavailable",
    "internal",
    "other",
    // Refused before a handler runs (see crossbatch_proto::rejections).
    crossbatch_proto::rejections::MALFORMED,
    crossbatch_proto::rejections::TOO_LARGE,
    crossbatch_proto::rejections::UNAUTHENTICATED,
];

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabel {
    outcome: &'static str,
}

pub struct Metrics {
    registry: Registry,
    requests: Family<OutcomeLabel, Counter>,
    pub request_seconds: Histogram,
    pub tokenize_seconds: Histogram,
    pub queue_seconds: Histogram,
    pub inference_seconds: Histogram,
    pub batch_pairs: Histogram,
    pub batch_tokens: Histogram,
    pub batch_padded_tokens: Histogram,
    queue_depth: Gauge,
    admitted_pairs: Gauge,
    open_connections: Gauge,
    connections_refused: Counter,
    pairs_scored: Counter,
    /// Forward time of every batch, in ns: with `pairs_scored`, the measured speed.
    inference_ns: std::sync::atomic::AtomicU64,
}

impl Default for Metrics {
    fn default() -> Self {
        let h = |b: &[f64]| Histogram::new(b.iter().copied());
        let mut m = Self {
            registry: Registry::default(),
            requests: Family::default(),
            request_seconds: h(&SECONDS),
            tokenize_seconds: h(&SECONDS),
            queue_seconds: h(&SECONDS),
            inference_seconds: h(&SECONDS),
            batch_pairs: h(&PAIRS),
            batch_tokens: h(&TOKENS),
            batch_padded_tokens: h(&TOKENS),
            queue_depth: Gauge::default(),
            admitted_pairs: Gauge::default(),
            open_connections: Gauge::default(),
            connections_refused: Counter::default(),
            pairs_scored: Counter::default(),
            inference_ns: Default::default(),
        };
        for outcome in OUTCOMES {
            let _ = m.requests.get_or_create(&OutcomeLabel { outcome });
        }
        let r = &mut m.registry;
        r.register(
            "crossbatch_requests",
            "Score and Rerank calls by outcome",
            m.requests.clone(),
        );
        for (name, help, metric) in [
            (
                "crossbatch_request_duration_seconds",
                "Time inside the server per call",
                &m.request_seconds,
            ),
            (
                "crossbatch_tokenize_duration_seconds",
                "Tokenization time per call",
                &m.tokenize_seconds,
            ),
            (
                "crossbatch_queue_duration_seconds",
                "Queue wait per call (until its last batch started)",
                &m.queue_seconds,
            ),
            (
                "crossbatch_inference_duration_seconds",
                "Forward pass time per batch",
                &m.inference_seconds,
            ),
            ("crossbatch_batch_pairs", "Pairs per batch", &m.batch_pairs),
            (
                "crossbatch_batch_tokens",
                "Real tokens per batch",
                &m.batch_tokens,
            ),
            (
                "crossbatch_batch_padded_tokens",
                "Computed tokens per batch, padding included",
                &m.batch_padded_tokens,
            ),
        ] {
            r.register(name, help, metric.clone());
        }
        r.register(
            "crossbatch_queue_pairs",
            "Pairs waiting in the queue",
            m.queue_depth.clone(),
        );
        r.register(
            "crossbatch_admitted_pairs",
            "Pairs admitted and not yet answered (tokenizing, queued or running), against --max-queue-pairs",
            m.admitted_pairs.clone(),
        );
        r.register(
            "crossbatch_open_connections",
            "Client connections open, against --max-connections",
            m.open_connections.clone(),
        );
        r.register(
            "crossbatch_connections_refused",
            "Connections closed at accept for being over --max-connections",
            m.connections_refused.clone(),
        );
        r.register(
            "crossbatch_pairs_scored",
            "Pairs that went through a successful forward pass",
            m.pairs_scored.clone(),
        );
        m
    }
}

impl Metrics {
    /// Counts one finished call under its gRPC outcome.
    pub fn request_done(&self, code: tonic::Code, took: Duration) {
        let outcome = match code {
            tonic::Code::Ok => "ok",
            tonic::Code::Cancelled => "cancelled",
            tonic::Code::InvalidArgument => "invalid_argument",
            tonic::Code::ResourceExhausted => "resource_exhausted",
            tonic::Code::DeadlineExceeded => "deadline_exceeded",
            tonic::Code::Unavailable => "unavailable",
            tonic::Code::Internal => "internal",
            _ => "other",
        };
        self.requests.get_or_create(&OutcomeLabel { outcome }).inc();
        self.request_seconds.observe(took.as_secs_f64());
    }

    /// Counts one call refused before its handler ran (malformed, too large, no key).
    pub fn request_refused(&self, outcome: &'static str) {
        self.requests.get_or_create(&OutcomeLabel { outcome }).inc();
    }

    pub fn set_queue_depth(&self, pairs: usize) {
        self.queue_depth.set(pairs as i64);
    }

    pub fn set_admitted_pairs(&self, pairs: usize) {
        self.admitted_pairs.set(pairs as i64);
    }

    pub fn set_open_connections(&self, open: usize) {
        self.open_connections.set(open as i64);
    }

    pub fn connection_refused(&self) {
        self.connections_refused.inc();
    }

    /// Forward time per pair over every successful batch so far (`None` before one).
    pub fn seconds_per_pair(&self) -> Option<f64> {
        let pairs = self.pairs_scored.get();
        let ns = self.inference_ns.load(std::sync::atomic::Ordering::Relaxed);
        (pairs > 0).then(|| ns as f64 * 1e-9 / pairs as f64)
    }

    /// The text exposition (OpenMetrics, which Prometheus scrapes natively).
    pub fn render(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

impl BatchObserver for Metrics {
    fn batch_done(&self, b: &BatchInfo) {
        self.inference_seconds.observe(b.duration.as_secs_f64());
        self.batch_pairs.observe(b.pairs as f64);
        self.batch_tokens.observe(b.real_tokens as f64);
        self.batch_padded_tokens.observe(b.padded_tokens as f64);
        if b.ok {
            self.pairs_scored.inc_by(b.pairs as u64);
            self.inference_ns.fetch_add(
                b.duration.as_nanos() as u64,
                std::sync::atomic::Ordering::Relaxed,
            );
        }
    }
}

/// Serves `GET /metrics` on `listener` until the task is aborted. `refresh` runs before
/// each scrape (it updates the gauges).
pub async fn serve_http(
    listener: tokio::net::TcpListener,
    metrics: Arc<Metrics>,
    refresh: Arc<dyn Fn() + Send + Sync>,
) {
    use axum::http::header::CONTENT_TYPE;
    let app = axum::Router::new().route(
        "/metrics",
        axum::routing::get(move || {
            let metrics = Arc::clone(&metrics);
            let refresh = Arc::clone(&refresh);
            async move {
                refresh();
                (
                    [(
                        CONTENT_TYPE,
                        "application/openmetrics-text; version=1.0.0; charset=utf-8",
                    )],
                    metrics.render(),
                )
            }
        }),
    );
    if let Err(e) = axum::serve(listener, app).await {
        tracing::error!(error = %e, "metrics endpoint stopped");
    }
}
