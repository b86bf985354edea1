//! OTLP spans as a driver and a server send them, with every string chosen by the
//! test: calls, a step record, a run record, and server spans (stages, the RPC, a
//! forward pass) from a named replica.
#![allow(dead_code)]

use crossbatch_proto::attrs as a;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span};

/// The strings a peer chooses.
#[derive(Debug, Clone)]
pub struct Peer {
    pub run_id: String,
    pub driver_id: String,
    pub host: String,
    pub model: String,
    pub backend: String,
    pub device: String,
    pub policy: String,
    /// The server replica that answers the calls (`server.instance`).
    pub instance: String,
}

impl Peer {
    /// Every field `value` (the run id too).
    pub fn all(value: &str) -> Self {
        Self {
            run_id: value.into(),
            driver_id: value.into(),
            host: value.into(),
            model: value.into(),
            backend: value.into(),
            device: value.into(),
            policy: value.into(),
            instance: value.into(),
        }
    }

    pub fn benign() -> Self {
        Self {
            run_id: "run1".into(),
            driver_id: "d0".into(),
            host: "hosta".into(),
            model: "modelx".into(),
            backend: "cpu".into(),
            device: "devicex".into(),
            policy: "deadline".into(),
            instance: "replica-a".into(),
        }
    }
}

/// An OTLP attribute.
pub fn kv(key: &str, v: any_value::Value) -> KeyValue {
    KeyValue {
        key: key.into(),
        value: Some(AnyValue { value: Some(v) }),
        ..Default::default()
    }
}

/// A string attribute value.
pub fn s(v: &str) -> any_value::Value {
    any_value::Value::StringValue(v.into())
}

/// An integer attribute value.
pub fn i(v: i64) -> any_value::Value {
    any_value::Value::IntValue(v)
}

const T0: u64 = 1_700_000_000_000_000_000;

/// Call `n` (from 1) of step 0: batch 2, 2 pairs, OK, `latency_us`, answered by
/// `p.instance`.
pub fn call(p: &Peer, n: u8, latency_us: i64) -> Span {
    call_on(p, n, latency_us, &p.instance)
}

/// As [`call`], answered by replica `instance`.
pub fn call_on(p: &Peer, n: u8, latency_us: i64, instance: &str) -> Span {
    let t0 = T0 + n as u64 * 10_000_000;
    Span {
        trace_id: vec![n; 16],
        span_id: vec![n; 8],
        name: a::CLIENT_SPAN.into(),
        start_time_unix_nano: t0,
        end_time_unix_nano: t0 + latency_us as u64 * 1000,
        attributes: vec![
            kv(a::RUN_ID, s(&p.run_id)),
            kv(a::DRIVER_ID, s(&p.driver_id)),
            kv(a::STEP, i(0)),
            kv(a::STEPS_PLANNED, i(1)),
            kv(a::BATCH, i(2)),
            kv(a::CONCURRENCY, i(1)),
            kv(a::PAIRS, i(2)),
            kv(a::STATUS, s("OK")),
            kv(a::LATENCY_US, i(latency_us)),
            kv(a::SERVER_INSTANCE, s(instance)),
            kv(a::ATTEMPTS, i(1)),
        ],
        ..Default::default()
    }
}

/// Sets the replica the driver says answered a call span.
pub fn answered_by(span: &mut Span, instance: &str) {
    span.attributes.retain(|kv| kv.key != a::SERVER_INSTANCE);
    span.attributes.push(kv(a::SERVER_INSTANCE, s(instance)));
}

/// The server's spans of call `n`: its RPC span (OK, 800 µs), a 100 µs queue wait,
/// and its forward pass, batch `batch` of `pairs` pairs (500 µs).
pub fn served(n: u8, batch: i64, pairs: i64) -> Vec<Span> {
    let t0 = T0 + n as u64 * 10_000_000;
    let rpc = Span {
        trace_id: vec![n; 16],
        span_id: vec![n, 3, 3, 3, 3, 3, 3, 3],
        name: "crossbatch.v1.CrossEncoder/Score".into(),
        kind: 2,
        start_time_unix_nano: t0,
        end_time_unix_nano: t0 + 800_000,
        attributes: vec![kv("rpc.response.status_code", s("OK"))],
        ..Default::default()
    };
    let mut inference = stage("inference", n, 500_000);
    inference.attributes = vec![
        kv("batch.id", i(batch)),
        kv("batch.pairs", i(pairs)),
        kv("batch.tokens", i(pairs * 10)),
        kv("batch.padded_tokens", i(pairs * 12)),
    ];
    vec![rpc, stage("queue_wait", n, 100_000), inference]
}

/// Spans a server replica sends: its resource names it (`service.instance.id`).
pub fn replica(instance: &str, spans: Vec<Span>) -> ResourceSpans {
    ResourceSpans {
        resource: Some(Resource {
            attributes: vec![
                kv("service.name", s("crossbatch-server")),
                kv(a::SERVICE_INSTANCE_ID, s(instance)),
            ],
            ..Default::default()
        }),
        scope_spans: vec![ScopeSpans {
            spans,
            ..Default::default()
        }],
        ..Default::default()
    }
}

/// Spans of no named resource (a driver's).
pub fn unnamed(spans: Vec<Span>) -> ResourceSpans {
    ResourceSpans {
        scope_spans: vec![ScopeSpans {
            spans,
            ..Default::default()
        }],
        ..Default::default()
    }
}

/// One export of several resources' spans.
pub fn export_resources(resource_spans: Vec<ResourceSpans>) -> ExportTraceServiceRequest {
    ExportTraceServiceRequest { resource_spans }
}

/// A server stage span (`tokenize`, `queue_wait`) of call `n`, lasting `ns`.
pub fn stage(name: &str, n: u8, ns: u64) -> Span {
    let t0 = T0 + n as u64 * 10_000_000;
    Span {
        trace_id: vec![n; 16],
        span_id: vec![n, 1, 1, 1, 1, 1, 1, name.len() as u8],
        name: name.into(),
        start_time_unix_nano: t0,
        end_time_unix_nano: t0 + ns,
        ..Default::default()
    }
}

/// The step record of step 0 after `calls` calls.
pub fn step_done(p: &Peer, calls: i64) -> Span {
    Span {
        trace_id: vec![0xee; 16],
        span_id: vec![0xee; 8],
        name: a::STEP_SPAN.into(),
        start_time_unix_nano: T0,
        end_time_unix_nano: T0 + 1_000_000_000,
        attributes: vec![
            kv(a::RUN_ID, s(&p.run_id)),
            kv(a::DRIVER_ID, s(&p.driver_id)),
            kv(a::HOST, s(&p.host)),
            kv(a::STEP, i(0)),
            kv(a::BATCH, i(2)),
            kv(a::CONCURRENCY, i(1)),
            kv(a::CALLS_SENT, i(calls)),
            kv(a::CALLS_OK, i(calls)),
            kv(a::PAIRS_SENT, i(2 * calls)),
            kv(a::PAIRS_OK, i(2 * calls)),
            kv(a::WALL_S, any_value::Value::DoubleValue(1.0)),
        ],
        ..Default::default()
    }
}

/// The driver's completion record, with the server's facts.
pub fn run_done(p: &Peer, calls: i64) -> Span {
    Span {
        trace_id: vec![0xff; 16],
        span_id: vec![0xff; 8],
        name: a::RUN_SPAN.into(),
        start_time_unix_nano: T0,
        end_time_unix_nano: T0 + 1_000_000_000,
        attributes: vec![
            kv(a::RUN_ID, s(&p.run_id)),
            kv(a::DRIVER_ID, s(&p.driver_id)),
            kv(a::HOST, s(&p.host)),
            kv(a::STEPS_PLANNED, i(1)),
            kv(a::STEPS_DONE, i(1)),
            kv(a::CALLS_SENT, i(calls)),
            kv(a::CALLS_OK, i(calls)),
            kv(a::PAIRS_SENT, i(2 * calls)),
            kv(a::PAIRS_OK, i(2 * calls)),
            kv(a::SERVER_MODEL, s(&p.model)),
            kv(a::SERVER_BACKEND, s(&p.backend)),
            kv(a::SERVER_DEVICE, s(&p.device)),
            kv(a::SERVER_POLICY, s(&p.policy)),
            kv(a::SERVER_MAX_BATCH, i(8)),
            // The policy's peer text again: how max batch was set is a peer string too.
            kv(a::SERVER_MAX_BATCH_CHOSEN_BY, s(&p.policy)),
            kv(a::SERVER_TIMEOUT_MS, i(5)),
        ],
        ..Default::default()
    }
}

/// A whole run of `calls` calls (each 1–`calls` ms), with its records.
pub fn whole_run(p: &Peer, calls: u8) -> Vec<Span> {
    let mut spans: Vec<Span> = (1..=calls).map(|n| call(p, n, 1000 * n as i64)).collect();
    spans.push(step_done(p, calls as i64));
    spans.push(run_done(p, calls as i64));
    spans
}

pub fn export(spans: Vec<Span>) -> ExportTraceServiceRequest {
    export_resources(vec![unnamed(spans)])
}
