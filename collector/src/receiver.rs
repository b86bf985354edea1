//! The OTLP/gRPC receiver: the `TraceService` and `MetricsService` of
//! opentelemetry-proto. Each export is stored, optionally written to the spans file
//! and passed on unchanged to `--forward` (see `forward`).

use std::sync::{Arc, Mutex};

use opentelemetry_proto::tonic::collector::metrics::v1::metrics_service_server::MetricsService;
use opentelemetry_proto::tonic::collector::metrics::v1::{
    ExportMetricsServiceRequest, ExportMetricsServiceResponse,
};
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::TraceService;
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use tokio::sync::Notify;
use tonic::{Request, Response, Status};

use crate::forward::Forwarder;
use crate::spans_file::SpansWriter;
use crate::store::Store;

/// One export, to be forwarded.
pub enum Export {
    Traces(ExportTraceServiceRequest),
    Metrics(ExportMetricsServiceRequest),
}

/// State shared by the receiver services and the report loop.
pub struct Shared {
    pub store: Mutex<Store>,
    pub spans_out: Option<Mutex<SpansWriter>>,
    pub forward: Option<Forwarder>,
    /// Woken after every export, so the report loop can check completion.
    pub changed: Notify,
    /// The dashboard's view of the last run whose report was written.
    pub finished: Mutex<Option<crate::live::Snapshot>>,
    /// Bumped by every export and every report: the dashboard rebuilds its view only
    /// when it moved.
    pub generation: std::sync::atomic::AtomicU64,
}

impl Shared {
    pub fn new(
        store: Store,
        spans_out: Option<SpansWriter>,
        forward: Option<Forwarder>,
    ) -> Arc<Self> {
        Arc::new(Self {
            store: Mutex::new(store),
            spans_out: spans_out.map(Mutex::new),
            forward,
            changed: Notify::new(),
            finished: Mutex::new(None),
            generation: Default::default(),
        })
    }

    pub fn store(&self) -> std::sync::MutexGuard<'_, Store> {
        // A panic while holding the lock cannot leave the store half-updated in a way
        // that matters more than losing the run; keep serving.
        self.store.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn pass_on(&self, e: Export) {
        if let Some(f) = &self.forward {
            f.offer(e);
        }
    }

    fn write_out(&self, line: Result<String, serde_json::Error>) {
        let Some(w) = &self.spans_out else { return };
        match line {
            Ok(l) => {
                if let Err(e) = w.lock().unwrap_or_else(|p| p.into_inner()).write_line(&l) {
                    tracing::warn!(error = %e, "writing the spans file");
                }
            }
            Err(e) => tracing::warn!(error = %e, "encoding an export as OTLP JSON"),
        }
    }
}

#[derive(Clone)]
pub struct Receiver(pub Arc<Shared>);

impl Receiver {
    /// Stores one export, keeps it in the spans file, forwards it, wakes the report loop.
    fn accept<T: serde::Serialize>(
        &self,
        req: T,
        ingest: impl FnOnce(&mut Store, &T),
        wrap: fn(T) -> Export,
    ) {
        ingest(&mut self.0.store(), &req);
        self.0.write_out(serde_json::to_string(&req));
        self.0.pass_on(wrap(req));
        self.0
            .generation
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.0.changed.notify_one();
    }
}

#[tonic::async_trait]
impl TraceService for Receiver {
    async fn export(
        &self,
        request: Request<ExportTraceServiceRequest>,
    ) -> Result<Response<ExportTraceServiceResponse>, Status> {
        self.accept(request.into_inner(), Store::ingest_traces, Export::Traces);
        Ok(Response::new(ExportTraceServiceResponse::default()))
    }
}

#[tonic::async_trait]
impl MetricsService for Receiver {
    async fn export(
        &self,
        request: Request<ExportMetricsServiceRequest>,
    ) -> Result<Response<ExportMetricsServiceResponse>, Status> {
        self.accept(request.into_inner(), Store::ingest_metrics, Export::Metrics);
        Ok(Response::new(ExportMetricsServiceResponse::default()))
    }
}
