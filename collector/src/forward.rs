//! `--forward`: every export received passed on, unchanged and in order, to another
//! OTLP/gRPC receiver (Jaeger, an OpenTelemetry Collector). Exports are acknowledged
//! to the senders once stored, so a slow target never slows a run; before a report is
//! written and before the collector exits the queue is drained (bounded in time), and
//! what could not be delivered is counted in the report's notes.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use crossbatch_proto::client::ClientTls;
use opentelemetry_proto::tonic::collector::metrics::v1::metrics_service_client::MetricsServiceClient;
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_client::TraceServiceClient;
use serde::Serialize;
use tokio::sync::{Notify, mpsc};

use crate::receiver::Export;

/// Exports waiting for the target at most; beyond, new ones are dropped and counted.
const QUEUE: usize = 4096;
/// Attempts per export while the target is unavailable (restarting, not yet up).
const ATTEMPTS: u32 = 3;

#[derive(Default)]
struct Counts {
    queued: AtomicU64,
    delivered: AtomicU64,
    failed: AtomicU64,
    dropped: AtomicU64,
}

/// Where the forwarding stands, for the report's notes and the exit log.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct ForwardTally {
    pub target: String,
    pub delivered: u64,
    /// Refused by the target or unreachable after retries.
    pub failed: u64,
    /// Dropped because the queue was full (the target too slow).
    pub dropped: u64,
    /// Still queued when the tally was taken (the drain ran out of time).
    pub pending: u64,
}

impl ForwardTally {
    pub fn undelivered(&self) -> u64 {
        self.failed + self.dropped + self.pending
    }
}

pub struct Forwarder {
    url: String,
    tx: mpsc::Sender<Export>,
    counts: Arc<Counts>,
    progressed: Arc<Notify>,
}

impl Forwarder {
    /// Starts the forwarding task on one lazily connected channel (tonic reconnects it
    /// as needed). `https://` targets use `tls`.
    pub fn spawn(url: &str, tls: &ClientTls) -> Result<Self, String> {
        let channel = crossbatch_proto::client::endpoint(url, tls)?.connect_lazy();
        let mut traces = TraceServiceClient::new(channel.clone());
        let mut metrics = MetricsServiceClient::new(channel);
        let (tx, mut rx) = mpsc::channel::<Export>(QUEUE);
        let counts = Arc::new(Counts::default());
        let progressed = Arc::new(Notify::new());
        let (c, p, target) = (
            Arc::clone(&counts),
            Arc::clone(&progressed),
            url.to_string(),
        );
        tokio::spawn(async move {
            let mut warned = false;
            while let Some(export) = rx.recv().await {
                let mut attempt = 1;
                let result = loop {
                    let r = match &export {
                        Export::Traces(r) => traces.export(r.clone()).await.map(|_| ()),
                        Export::Metrics(r) => metrics.export(r.clone()).await.map(|_| ()),
                    };
                    match r {
                        Err(s) if s.code() == tonic::Code::Unavailable && attempt < ATTEMPTS => {
                            tokio::time::sleep(Duration::from_millis(200 * u64::from(attempt)))
                                .await;
                            attempt += 1;
                        }
                        r => break r,
                    }
                };
                match result {
                    Ok(()) => c.delivered.fetch_add(1, Ordering::Relaxed),
                    Err(s) => {
                        if !warned {
                            tracing::warn!(target = %target, error = %s.message(), "forwarding failed (counted; further failures are quiet)");
                            warned = true;
                        }
                        c.failed.fetch_add(1, Ordering::Relaxed)
                    }
                };
                p.notify_waiters();
            }
        });
        Ok(Self {
            url: url.to_string(),
            tx,
            counts,
            progressed,
        })
    }

    /// Queues one export; a full queue drops it (counted, warned once).
    pub fn offer(&self, export: Export) {
        match self.tx.try_send(export) {
            Ok(()) => {
                self.counts.queued.fetch_add(1, Ordering::Relaxed);
            }
            Err(_) => {
                if self.counts.dropped.fetch_add(1, Ordering::Relaxed) == 0 {
                    tracing::warn!(target = %self.url, "forward target is behind or down: dropping exports for it (counted)");
                }
            }
        }
    }

    pub fn tally(&self) -> ForwardTally {
        let c = &self.counts;
        let (delivered, failed) = (
            c.delivered.load(Ordering::Relaxed),
            c.failed.load(Ordering::Relaxed),
        );
        ForwardTally {
            target: self.url.clone(),
            delivered,
            failed,
            dropped: c.dropped.load(Ordering::Relaxed),
            pending: c
                .queued
                .load(Ordering::Relaxed)
                .saturating_sub(delivered + failed),
        }
    }

    /// Waits until everything queued so far was delivered or failed, or `within`
    /// passed; returns the tally then.
    pub async fn drain(&self, within: Duration) -> ForwardTally {
        let until = tokio::time::Instant::now() + within;
        loop {
            let progressed = self.progressed.notified();
            let t = self.tally();
            if t.pending == 0 {
                return t;
            }
            if tokio::time::timeout_at(until, progressed).await.is_err() {
                return self.tally();
            }
        }
    }
}
