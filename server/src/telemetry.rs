//! Logs, traces and metrics: `tracing` to stderr always; with an OTLP endpoint, spans
//! (through tracing-opentelemetry) and resource samples exported over OTLP/gRPC. W3C
//! trace context is the propagator, so a caller's `traceparent` makes our spans its
//! children.

use std::time::Duration;

use opentelemetry::propagation::Extractor;
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::{WithExportConfig, WithTonicConfig};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::metrics::SdkMeterProvider;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{BatchConfigBuilder, BatchSpanProcessor, SdkTracerProvider};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    #[error("OTLP exporter for {endpoint}: {message}")]
    Exporter { endpoint: String, message: String },
    #[error("a global tracing subscriber is already installed")]
    AlreadyInstalled,
}

/// Flushes and stops the exporters when dropped.
#[must_use = "dropping the guard stops telemetry export"]
pub struct Telemetry {
    tracer: Option<SdkTracerProvider>,
    meter: Option<SdkMeterProvider>,
}

impl Telemetry {
    /// The meter provider, when exporting (resource samples are recorded through it).
    pub fn meter_provider(&self) -> Option<&SdkMeterProvider> {
        self.meter.as_ref()
    }
}

impl Drop for Telemetry {
    fn drop(&mut self) {
        if let Some(t) = self.tracer.take() {
            let _ = t.force_flush();
            let _ = t.shutdown();
        }
        if let Some(m) = self.meter.take() {
            let _ = m.force_flush();
            let _ = m.shutdown();
        }
    }
}

fn env_filter() -> tracing_subscriber::EnvFilter {
    tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| "info,wgpu_core=warn,wgpu_hal=error,cubecl=warn,h2=warn".into())
}

/// Logs to stderr only (the offline commands).
pub fn init_logs() {
    let _ = tracing_subscriber::registry()
        .with(env_filter())
        .with(tracing_subscriber::fmt::layer().with_writer(std::io::stderr))
        .try_init();
}

/// How long one export may take (the channel's and the exporter's limit alike).
const EXPORT_TIMEOUT: Duration = Duration::from_secs(5);

/// Logs, plus OTLP export of spans and metrics to `endpoint` (e.g.
/// `http://127.0.0.1:4317`) when given. Must run inside a tokio runtime.
pub fn init(
    service: &str,
    endpoint: Option<&str>,
    export_interval: Duration,
) -> Result<Telemetry, TelemetryError> {
    init_instance(service, None, endpoint, export_interval)
}

/// As [`init`], naming this replica in the resource (`service.instance.id`) so that
/// the collector tells several servers' spans apart.
pub fn init_instance(
    service: &str,
    instance: Option<&str>,
    endpoint: Option<&str>,
    export_interval: Duration,
) -> Result<Telemetry, TelemetryError> {
    opentelemetry::global::set_text_map_propagator(TraceContextPropagator::new());
    let fmt = tracing_subscriber::fmt::layer().with_writer(std::io::stderr);
    let Some(endpoint) = endpoint else {
        tracing_subscriber::registry()
            .with(env_filter())
            .with(fmt)
            .try_init()
            .map_err(|_| TelemetryError::AlreadyInstalled)?;
        return Ok(Telemetry {
            tracer: None,
            meter: None,
        });
    };
    let err = |e: &dyn std::fmt::Display| TelemetryError::Exporter {
        endpoint: endpoint.to_string(),
        message: e.to_string(),
    };
    let mut resource = Resource::builder().with_service_name(service.to_string());
    if let Some(instance) = instance {
        resource = resource.with_attribute(opentelemetry::KeyValue::new(
            crossbatch_proto::attrs::SERVICE_INSTANCE_ID,
            instance.to_string(),
        ));
    }
    let resource = resource.build();
    // The collector's API key and CA (https://), from the environment.
    let access =
        crossbatch_proto::collector_access::CollectorAccess::from_env().map_err(|e| err(&e))?;
    let channel = || {
        access
            .channel(endpoint, EXPORT_TIMEOUT)
            .map_err(|e| err(&e))
    };
    let spans = opentelemetry_otlp::SpanExporter::builder()
        .with_tonic()
        .with_channel(channel()?)
        .with_metadata(access.metadata())
        .with_timeout(EXPORT_TIMEOUT)
        .build()
        .map_err(|e| err(&e))?;
    let processor = BatchSpanProcessor::builder(spans)
        .with_batch_config(
            BatchConfigBuilder::default()
                .with_scheduled_delay(export_interval)
                .with_max_queue_size(65_536)
                .build(),
        )
        .build();
    let tracer_provider = SdkTracerProvider::builder()
        .with_span_processor(processor)
        .with_resource(resource.clone())
        .build();
    let metrics = opentelemetry_otlp::MetricExporter::builder()
        .with_tonic()
        .with_channel(channel()?)
        .with_metadata(access.metadata())
        .with_timeout(EXPORT_TIMEOUT)
        .build()
        .map_err(|e| err(&e))?;
    let reader = opentelemetry_sdk::metrics::PeriodicReader::builder(metrics)
        .with_interval(export_interval)
        .build();
    let meter_provider = SdkMeterProvider::builder()
        .with_reader(reader)
        .with_resource(resource)
        .build();
    opentelemetry::global::set_meter_provider(meter_provider.clone());
    let tracer = tracer_provider.tracer(service.to_string());
    tracing_subscriber::registry()
        .with(env_filter())
        .with(fmt)
        .with(tracing_opentelemetry::layer().with_tracer(tracer))
        .try_init()
        .map_err(|_| TelemetryError::AlreadyInstalled)?;
    tracing::info!(%endpoint, "exporting spans and metrics over OTLP/gRPC");
    Ok(Telemetry {
        tracer: Some(tracer_provider),
        meter: Some(meter_provider),
    })
}

/// Reads W3C trace context out of gRPC metadata.
pub struct MetadataExtractor<'a>(pub &'a tonic::metadata::MetadataMap);

impl Extractor for MetadataExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }
    fn keys(&self) -> Vec<&str> {
        self.0
            .keys()
            .filter_map(|k| match k {
                tonic::metadata::KeyRef::Ascii(k) => Some(k.as_str()),
                tonic::metadata::KeyRef::Binary(_) => None,
            })
            .collect()
    }
}

/// The caller's trace context from `traceparent`/`tracestate`, if any.
pub fn remote_context(md: &tonic::metadata::MetadataMap) -> opentelemetry::Context {
    opentelemetry::global::get_text_map_propagator(|p| p.extract(&MetadataExtractor(md)))
}
