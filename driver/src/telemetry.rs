//! The driver's spans over OTLP: one `client.score` span per call, its W3C
//! `traceparent` injected into the gRPC metadata so the server's spans join the same
//! trace, and completion records (`bench.step` per config, `bench.run` at the end)
//! that tell the collector a run is whole. Attribute keys: `crossbatch_proto::attrs`.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crossbatch_proto::attrs as a;
use crossbatch_proto::collector_access::CollectorAccess;
use opentelemetry::propagation::{Injector, TextMapPropagator};
use opentelemetry::trace::{Span as _, SpanKind, Status, TraceContextExt, Tracer as _};
use opentelemetry::{Context, KeyValue};
use opentelemetry_otlp::{WithExportConfig, WithTonicConfig};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{
    BatchConfigBuilder, BatchSpanProcessor, SdkTracer, SdkTracerProvider,
};

use crate::stats::Sample;

#[derive(Debug, thiserror::Error)]
#[error("OTLP exporter for {endpoint}: {message}")]
pub struct TelemetryError {
    endpoint: String,
    message: String,
}

/// Who is sending: written on every span so the collector can tell drivers apart.
#[derive(Debug, Clone)]
pub struct Identity {
    pub run_id: String,
    pub driver_id: String,
    pub host: String,
    /// Configs in this driver's sweep (each call carries it, so a live view can say
    /// "step i of N" before the run's completion record).
    pub steps_planned: usize,
}

/// Exports the driver's spans; flushes on [`ClientTelemetry::shutdown`].
pub struct ClientTelemetry {
    provider: SdkTracerProvider,
    tracer: SdkTracer,
    propagator: TraceContextPropagator,
    id: Identity,
}

/// A call in flight: its span, already started, and its context injected.
pub struct CallSpan {
    cx: Context,
}

/// One config's completion record, as the collector reads it back.
pub use crossbatch_proto::records::StepRecord;

/// The server's description of itself (`Info`), recorded on `bench.run`.
#[derive(Debug, Clone, Default)]
pub struct ServerInfo {
    pub model: String,
    pub stand_in: bool,
    pub backend: String,
    pub device: String,
    pub max_batch: u32,
    pub max_batch_chosen_by: String,
    pub batch_timeout_ms: u32,
    pub batch_policy: String,
    pub version: String,
}

impl From<crossbatch_proto::v1::InfoResponse> for ServerInfo {
    fn from(i: crossbatch_proto::v1::InfoResponse) -> Self {
        Self {
            model: i.model_id,
            stand_in: i.stand_in,
            backend: i.backend,
            device: i.device,
            max_batch: i.max_batch,
            max_batch_chosen_by: i.max_batch_chosen_by,
            batch_timeout_ms: i.batch_timeout_ms,
            batch_policy: i.batch_policy,
            version: i.version,
        }
    }
}

/// One driver's whole-run record.
#[derive(Debug, Clone, Default)]
pub struct RunRecord {
    pub steps_planned: usize,
    pub steps_done: usize,
    pub calls_sent: usize,
    pub calls_ok: usize,
    pub pairs_sent: usize,
    pub pairs_ok: usize,
    /// Attempts retried on another endpoint, and endpoint ejections, over every step.
    pub retries: usize,
    pub ejections: usize,
    pub interrupted: bool,
    pub server: ServerInfo,
}

struct MetadataInjector<'a>(&'a mut tonic::metadata::MetadataMap);

impl Injector for MetadataInjector<'_> {
    fn set(&mut self, key: &str, value: String) {
        if let (Ok(k), Ok(v)) = (
            tonic::metadata::MetadataKey::from_bytes(key.as_bytes()),
            tonic::metadata::MetadataValue::try_from(value.as_str()),
        ) {
            self.0.insert(k, v);
        }
    }
}

fn unix_nanos(t: SystemTime) -> i64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as i64)
        .unwrap_or(0)
}

fn usize_kv(key: &'static str, v: usize) -> KeyValue {
    KeyValue::new(key, v as i64)
}

impl ClientTelemetry {
    /// Exports to `endpoint` (e.g. `http://127.0.0.1:4317`). Must run inside a tokio
    /// runtime.
    pub fn new(endpoint: &str, id: Identity) -> Result<Self, TelemetryError> {
        let err = |e: &dyn std::fmt::Display| TelemetryError {
            endpoint: endpoint.to_string(),
            message: e.to_string(),
        };
        // The collector's API key and CA (https://), from the environment.
        let access = CollectorAccess::from_env().map_err(|e| err(&e))?;
        let timeout = Duration::from_secs(10);
        let exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_tonic()
            .with_channel(access.channel(endpoint, timeout).map_err(|e| err(&e))?)
            .with_metadata(access.metadata())
            .with_timeout(timeout)
            .build()
            .map_err(|e| err(&e))?;
        // A large queue: a fast sweep ends thousands of spans between exports, and a
        // dropped client span would be a call the report cannot see.
        let processor = BatchSpanProcessor::builder(exporter)
            .with_batch_config(
                BatchConfigBuilder::default()
                    .with_scheduled_delay(Duration::from_millis(500))
                    .with_max_queue_size(1 << 18)
                    .with_max_export_batch_size(2048)
                    .build(),
            )
            .build();
        let resource = Resource::builder()
            .with_service_name("crossbatch-driver")
            .with_attributes([
                KeyValue::new(a::DRIVER_ID, id.driver_id.clone()),
                KeyValue::new(a::HOST, id.host.clone()),
            ])
            .build();
        let provider = SdkTracerProvider::builder()
            .with_span_processor(processor)
            .with_resource(resource)
            .build();
        let tracer = opentelemetry::trace::TracerProvider::tracer(&provider, "crossbatch-driver");
        Ok(Self {
            provider,
            tracer,
            propagator: TraceContextPropagator::new(),
            id,
        })
    }

    /// Starts a call's span (a new trace) and puts its `traceparent` into `metadata`.
    pub fn start_call(&self, metadata: &mut tonic::metadata::MetadataMap) -> CallSpan {
        let span = self
            .tracer
            .span_builder(a::CLIENT_SPAN)
            .with_kind(SpanKind::Client)
            .with_start_time(SystemTime::now())
            .start_with_context(&self.tracer, &Context::new());
        let cx = Context::new().with_span(span);
        self.propagator
            .inject_context(&cx, &mut MetadataInjector(metadata));
        CallSpan { cx }
    }

    /// Ends a call's span with what the call measured.
    pub fn end_call(&self, call: CallSpan, s: &Sample, step: usize, intended: SystemTime) {
        let span = call.cx.span();
        span.set_attributes([
            KeyValue::new(a::RUN_ID, self.id.run_id.clone()),
            KeyValue::new(a::DRIVER_ID, self.id.driver_id.clone()),
            usize_kv(a::STEP, step),
            usize_kv(a::STEPS_PLANNED, self.id.steps_planned),
            usize_kv(a::BATCH, s.batch),
            usize_kv(a::CONCURRENCY, s.concurrency),
            usize_kv(a::PAIRS, s.pairs),
            KeyValue::new(a::WARMUP, s.warmup),
            KeyValue::new(a::STATUS, s.code.name()),
            KeyValue::new(a::INTENDED_START, unix_nanos(intended)),
            KeyValue::new(a::LATENCY_US, s.latency_us as i64),
            KeyValue::new("rpc.system", "grpc"),
            KeyValue::new("rpc.service", "crossbatch.v1.CrossEncoder"),
            KeyValue::new("rpc.method", "Score"),
            KeyValue::new("rpc.grpc.status_code", s.code.0 as i64),
            KeyValue::new(a::SERVER_INSTANCE, s.instance.clone()),
            KeyValue::new(a::ENDPOINT, s.endpoint.clone()),
            KeyValue::new(a::ATTEMPTS, i64::from(s.attempts)),
        ]);
        if !s.code.is_ok() {
            span.set_status(Status::error(s.code.name()));
        }
        span.end_with_timestamp(SystemTime::now());
    }

    fn record(&self, name: &'static str, start: SystemTime, attrs: Vec<KeyValue>) {
        let mut span = self
            .tracer
            .span_builder(name)
            .with_kind(SpanKind::Internal)
            .with_start_time(start)
            .start_with_context(&self.tracer, &Context::new());
        span.set_attributes(attrs);
        span.set_attribute(KeyValue::new(a::RUN_ID, self.id.run_id.clone()));
        span.set_attribute(KeyValue::new(a::DRIVER_ID, self.id.driver_id.clone()));
        span.set_attribute(KeyValue::new(a::HOST, self.id.host.clone()));
        span.end_with_timestamp(SystemTime::now());
    }

    /// Marks one config done on this driver.
    pub fn step_done(&self, r: &StepRecord, started: SystemTime) {
        self.record(
            a::STEP_SPAN,
            started,
            vec![
                usize_kv(a::STEP, r.step),
                usize_kv(a::BATCH, r.batch),
                usize_kv(a::CONCURRENCY, r.concurrency),
                KeyValue::new(a::MODE, r.mode.clone()),
                usize_kv(a::CALLS_SENT, r.calls_sent),
                usize_kv(a::CALLS_OK, r.calls_ok),
                usize_kv(a::CALLS_FAILED, r.calls_failed),
                usize_kv(a::PAIRS_SENT, r.pairs_sent),
                usize_kv(a::PAIRS_OK, r.pairs_ok),
                usize_kv(a::WARMUP_CALLS, r.warmup_calls),
                usize_kv(a::LATE_CALLS, r.late_calls),
                KeyValue::new(a::WALL_S, r.wall_s),
                KeyValue::new(a::INTERRUPTED, r.interrupted),
                usize_kv(a::RETRIES, r.retries),
                usize_kv(a::EJECTIONS, r.ejections),
                KeyValue::new(
                    a::ENDPOINTS,
                    serde_json::to_string(&r.endpoints).unwrap_or_else(|_| "[]".into()),
                ),
            ],
        );
    }

    /// Marks this driver's run done; the collector writes the report once every
    /// expected driver has sent this.
    pub fn run_done(&self, r: &RunRecord, started: SystemTime) {
        let s = &r.server;
        self.record(
            a::RUN_SPAN,
            started,
            vec![
                usize_kv(a::STEPS_PLANNED, r.steps_planned),
                usize_kv(a::STEPS_DONE, r.steps_done),
                usize_kv(a::CALLS_SENT, r.calls_sent),
                usize_kv(a::CALLS_OK, r.calls_ok),
                usize_kv(a::CALLS_FAILED, r.calls_sent - r.calls_ok),
                usize_kv(a::PAIRS_SENT, r.pairs_sent),
                usize_kv(a::PAIRS_OK, r.pairs_ok),
                KeyValue::new(a::INTERRUPTED, r.interrupted),
                usize_kv(a::RETRIES, r.retries),
                usize_kv(a::EJECTIONS, r.ejections),
                KeyValue::new(a::SERVER_MODEL, s.model.clone()),
                KeyValue::new(a::SERVER_STANDIN, s.stand_in),
                KeyValue::new(a::SERVER_BACKEND, s.backend.clone()),
                KeyValue::new(a::SERVER_DEVICE, s.device.clone()),
                KeyValue::new(a::SERVER_MAX_BATCH, s.max_batch as i64),
                KeyValue::new(a::SERVER_MAX_BATCH_CHOSEN_BY, s.max_batch_chosen_by.clone()),
                KeyValue::new(a::SERVER_TIMEOUT_MS, s.batch_timeout_ms as i64),
                KeyValue::new(a::SERVER_POLICY, s.batch_policy.clone()),
                KeyValue::new(a::SERVER_VERSION, s.version.clone()),
            ],
        );
    }

    /// Exports everything still queued and stops.
    pub fn shutdown(self) -> Result<(), String> {
        self.provider.force_flush().map_err(|e| e.to_string())?;
        self.provider.shutdown().map_err(|e| e.to_string())
    }
}
