//! What the collector keeps: spans joined by trace id into one record per call,
//! batches (deduplicated by batch id), the drivers' completion records and the
//! server's resource samples. Bounded: past `max_records` kept items, new ones are
//! dropped and counted. Unknown spans and metrics are counted and ignored; malformed
//! ones (bad ids, missing fields) are counted, never trusted.

use std::collections::{HashMap, HashSet};

use crossbatch_proto::StatusCode;
use crossbatch_proto::attrs as a;
use crossbatch_proto::records::StepRecord;
use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value::Value};
use opentelemetry_proto::tonic::metrics::v1::{NumberDataPoint, metric::Data, number_data_point};
use opentelemetry_proto::tonic::trace::v1::Span;
use serde::Serialize;

/// The driver's side of one call (`client.score`).
#[derive(Debug, Clone, Serialize)]
pub struct ClientPart {
    pub run_id: String,
    pub driver_id: String,
    pub step: usize,
    /// Configs in the driver's sweep, where the driver said.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub steps_planned: Option<usize>,
    pub batch: usize,
    pub concurrency: usize,
    pub pairs: usize,
    pub warmup: bool,
    pub status: StatusCode,
    /// The driver's latency (from the intended start in open loop).
    pub latency_ms: f64,
    pub start_unix_ns: u64,
    pub end_unix_ns: u64,
    pub intended_unix_ns: u64,
}

/// The server's side of one call: its RPC span and children.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ServerPart {
    /// Seen the RPC span itself (children can arrive without it, for a while).
    pub rpc: bool,
    pub status: Option<StatusCode>,
    pub tokenize_ms: Option<f64>,
    pub queue_ms: Option<f64>,
    pub inference_ms: Option<f64>,
    /// The batches that held this call's pairs.
    pub batch_ids: Vec<i64>,
    /// Pairs in each of those batches (the batch sizes this call ran at).
    pub batch_pairs: Vec<usize>,
    /// Real and computed (padded) tokens of those batches, summed.
    pub batch_tokens: u64,
    pub batch_padded_tokens: u64,
}

/// One call: the client span and the server spans of the same trace.
#[derive(Debug, Clone, Serialize)]
pub struct CallRecord {
    pub trace_id: String,
    #[serde(flatten)]
    pub client: ClientPart,
    pub server: Option<ServerPart>,
}

/// One forward pass, from its `inference` spans.
#[derive(Debug, Clone, Serialize)]
pub struct BatchRecord {
    pub id: i64,
    pub start_unix_ns: u64,
    pub inference_ms: f64,
    pub pairs: usize,
    pub tokens: u64,
    pub padded_tokens: u64,
    /// Percent of computed tokens that were padding.
    pub padding_waste_pct: f64,
}

/// A driver finished one config (`bench.step`): its record, who sent it and when.
#[derive(Debug, Clone, Serialize)]
pub struct StepDone {
    pub run_id: String,
    pub driver_id: String,
    pub host: String,
    #[serde(flatten)]
    pub record: StepRecord,
    pub start_unix_ns: u64,
    pub end_unix_ns: u64,
}

/// A driver finished its run (`bench.run`), with what the server said of itself.
#[derive(Debug, Clone, Default, Serialize)]
pub struct RunDone {
    pub run_id: String,
    pub driver_id: String,
    pub host: String,
    pub steps_planned: usize,
    pub steps_done: usize,
    pub calls_sent: usize,
    pub calls_ok: usize,
    pub calls_failed: usize,
    pub pairs_sent: usize,
    pub pairs_ok: usize,
    pub interrupted: bool,
    pub model: String,
    pub stand_in: bool,
    pub backend: String,
    pub device: String,
    pub max_batch: u64,
    pub batch_timeout_ms: u64,
    pub batch_policy: String,
    pub start_unix_ns: u64,
    pub end_unix_ns: u64,
}

/// One resource sample from the server.
#[derive(Debug, Clone, Serialize)]
pub struct MetricPoint {
    pub name: String,
    /// `memory.kind` (device / host) where the metric has one.
    pub kind: Option<String>,
    pub unix_ns: u64,
    pub value: f64,
}

/// What was received but not kept, for the report's notes.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Counters {
    pub spans: u64,
    pub metric_points: u64,
    /// Spans of names we do not read (other services).
    pub unknown_spans: u64,
    /// Spans with an invalid trace id or missing required attributes.
    pub malformed_spans: u64,
    /// Items dropped because `max_records` was reached.
    pub dropped: u64,
}

#[derive(Debug, Default)]
struct Partial {
    client: Option<ClientPart>,
    server: Option<ServerPart>,
}

/// Everything kept, bounded by `max_records` (calls + batches + metric points).
#[derive(Debug)]
pub struct Store {
    max_records: usize,
    traces: HashMap<[u8; 16], Partial>,
    batches: HashMap<i64, BatchRecord>,
    pub steps: Vec<StepDone>,
    pub runs: Vec<RunDone>,
    pub metrics: Vec<MetricPoint>,
    pub counters: Counters,
}

/// A copy of one run's data, to build its report without holding the store.
#[derive(Debug, Clone, Default)]
pub struct RunData {
    pub run_id: String,
    pub calls: Vec<CallRecord>,
    pub batches: Vec<BatchRecord>,
    pub steps: Vec<StepDone>,
    pub runs: Vec<RunDone>,
    pub metrics: Vec<MetricPoint>,
    pub counters: Counters,
    /// Server RPC spans whose trace has no client span (another client, or a client
    /// span that never arrived): counted, never guessed into a config.
    pub orphan_server_calls: usize,
    /// The run's window: first call start to last completion, ns since the epoch.
    pub window_unix_ns: (u64, u64),
}

fn value(kvs: &[KeyValue], key: &str) -> Option<Value> {
    kvs.iter()
        .find(|kv| kv.key == key)
        .and_then(|kv| kv.value.as_ref())
        .and_then(|v: &AnyValue| v.value.clone())
}

fn str_attr(kvs: &[KeyValue], key: &str) -> Option<String> {
    match value(kvs, key)? {
        Value::StringValue(s) => Some(s),
        _ => None,
    }
}

fn int_attr(kvs: &[KeyValue], key: &str) -> Option<i64> {
    match value(kvs, key)? {
        Value::IntValue(i) => Some(i),
        Value::DoubleValue(d) if d.is_finite() => Some(d as i64),
        Value::StringValue(s) => s.parse().ok(),
        _ => None,
    }
}

fn uint_attr(kvs: &[KeyValue], key: &str) -> Option<usize> {
    int_attr(kvs, key).and_then(|i| usize::try_from(i).ok())
}

fn f64_attr(kvs: &[KeyValue], key: &str) -> Option<f64> {
    match value(kvs, key)? {
        Value::DoubleValue(d) => Some(d),
        Value::IntValue(i) => Some(i as f64),
        Value::StringValue(s) => s.parse().ok(),
        _ => None,
    }
    .filter(|x| x.is_finite())
}

fn bool_attr(kvs: &[KeyValue], key: &str) -> Option<bool> {
    match value(kvs, key)? {
        Value::BoolValue(b) => Some(b),
        _ => None,
    }
}

fn duration_ms(s: &Span) -> Option<f64> {
    (s.end_time_unix_nano >= s.start_time_unix_nano && s.start_time_unix_nano > 0)
        .then(|| (s.end_time_unix_nano - s.start_time_unix_nano) as f64 / 1e6)
}

/// The status of a server RPC span under either semantic-convention generation.
fn server_status(attrs: &[KeyValue]) -> Option<StatusCode> {
    if let Some(s) = str_attr(attrs, "rpc.response.status_code") {
        return Some(status_from_name(&s));
    }
    let code = int_attr(attrs, "rpc.grpc.status_code")?;
    i32::try_from(code)
        .ok()
        .map(|c| StatusCode(tonic::Code::from_i32(c)))
}

/// A status name from a span; a name that is no gRPC code counts as UNKNOWN (an
/// error), so the call is kept and counted rather than dropped.
fn status_from_name(name: &str) -> StatusCode {
    StatusCode::from_name(name).unwrap_or(StatusCode(tonic::Code::Unknown))
}

fn is_server_rpc(s: &Span) -> bool {
    s.name.starts_with("crossbatch.v1.CrossEncoder/")
        || (s.kind == 2 /* SERVER */
            && (str_attr(&s.attributes, "rpc.system").as_deref() == Some("grpc")
                || str_attr(&s.attributes, "rpc.system.name").as_deref() == Some("grpc")))
}

fn hex(id: &[u8]) -> String {
    id.iter().map(|b| format!("{b:02x}")).collect()
}

impl Store {
    pub fn new(max_records: usize) -> Self {
        Self {
            max_records,
            traces: HashMap::new(),
            batches: HashMap::new(),
            steps: Vec::new(),
            runs: Vec::new(),
            metrics: Vec::new(),
            counters: Counters::default(),
        }
    }

    fn kept(&self) -> usize {
        self.traces.len() + self.batches.len() + self.metrics.len()
    }

    fn full(&self) -> bool {
        self.kept() >= self.max_records
    }

    pub fn ingest_traces(&mut self, req: &ExportTraceServiceRequest) {
        for rs in &req.resource_spans {
            let resource = rs
                .resource
                .as_ref()
                .map(|r| r.attributes.as_slice())
                .unwrap_or(&[]);
            for ss in &rs.scope_spans {
                for span in &ss.spans {
                    self.counters.spans += 1;
                    self.ingest_span(span, resource);
                }
            }
        }
    }

    fn partial(&mut self, trace: [u8; 16]) -> Option<&mut Partial> {
        if !self.traces.contains_key(&trace) && self.full() {
            self.counters.dropped += 1;
            return None;
        }
        Some(self.traces.entry(trace).or_default())
    }

    fn ingest_span(&mut self, s: &Span, resource: &[KeyValue]) {
        let Ok(trace) = <[u8; 16]>::try_from(s.trace_id.as_slice()) else {
            self.counters.malformed_spans += 1;
            return;
        };
        let at = &s.attributes;
        match s.name.as_str() {
            n if n == a::CLIENT_SPAN => {
                let part = (|| {
                    Some(ClientPart {
                        run_id: str_attr(at, a::RUN_ID)?,
                        driver_id: str_attr(at, a::DRIVER_ID)
                            .or_else(|| str_attr(resource, a::DRIVER_ID))?,
                        step: uint_attr(at, a::STEP)?,
                        steps_planned: uint_attr(at, a::STEPS_PLANNED),
                        batch: uint_attr(at, a::BATCH)?,
                        concurrency: uint_attr(at, a::CONCURRENCY)?,
                        pairs: uint_attr(at, a::PAIRS)?,
                        warmup: bool_attr(at, a::WARMUP).unwrap_or(false),
                        status: status_from_name(&str_attr(at, a::STATUS)?),
                        latency_ms: f64_attr(at, a::LATENCY_US)
                            .map(|us| us / 1e3)
                            .or_else(|| duration_ms(s))?,
                        start_unix_ns: s.start_time_unix_nano,
                        end_unix_ns: s.end_time_unix_nano,
                        intended_unix_ns: int_attr(at, a::INTENDED_START)
                            .and_then(|v| u64::try_from(v).ok())
                            .unwrap_or(s.start_time_unix_nano),
                    })
                })();
                match part {
                    Some(p) => {
                        if let Some(t) = self.partial(trace) {
                            t.client = Some(p);
                        }
                    }
                    None => self.counters.malformed_spans += 1,
                }
            }
            n if n == a::STEP_SPAN => self.ingest_step(s),
            n if n == a::RUN_SPAN => self.ingest_run(s),
            "tokenize" | "queue_wait" | "inference" => {
                let Some(ms) = duration_ms(s) else {
                    self.counters.malformed_spans += 1;
                    return;
                };
                if s.name == "inference" {
                    self.ingest_batch(s, ms);
                }
                let Some(t) = self.partial(trace) else { return };
                let server = t.server.get_or_insert_with(ServerPart::default);
                let add = |slot: &mut Option<f64>| *slot = Some(slot.unwrap_or(0.0) + ms);
                match s.name.as_str() {
                    "tokenize" => add(&mut server.tokenize_ms),
                    "queue_wait" => add(&mut server.queue_ms),
                    _ => {
                        add(&mut server.inference_ms);
                        if let Some(id) = int_attr(at, "batch.id") {
                            server.batch_ids.push(id);
                        }
                        if let Some(p) = uint_attr(at, "batch.pairs") {
                            server.batch_pairs.push(p);
                        }
                        server.batch_tokens +=
                            int_attr(at, "batch.tokens").unwrap_or(0).max(0) as u64;
                        server.batch_padded_tokens +=
                            int_attr(at, "batch.padded_tokens").unwrap_or(0).max(0) as u64;
                    }
                }
            }
            _ if is_server_rpc(s) => {
                let status = server_status(at);
                let Some(t) = self.partial(trace) else { return };
                let server = t.server.get_or_insert_with(ServerPart::default);
                server.rpc = true;
                server.status = status;
            }
            _ => self.counters.unknown_spans += 1,
        }
    }

    fn ingest_batch(&mut self, s: &Span, ms: f64) {
        let at = &s.attributes;
        let Some(id) = int_attr(at, "batch.id") else {
            self.counters.malformed_spans += 1;
            return;
        };
        if self.batches.contains_key(&id) {
            return;
        }
        if self.full() {
            self.counters.dropped += 1;
            return;
        }
        let tokens = int_attr(at, "batch.tokens").unwrap_or(0).max(0) as u64;
        let padded = int_attr(at, "batch.padded_tokens").unwrap_or(0).max(0) as u64;
        let waste = f64_attr(at, "batch.padding_waste").unwrap_or(if padded > 0 {
            1.0 - tokens as f64 / padded as f64
        } else {
            0.0
        });
        self.batches.insert(
            id,
            BatchRecord {
                id,
                start_unix_ns: s.start_time_unix_nano,
                inference_ms: ms,
                pairs: uint_attr(at, "batch.pairs").unwrap_or(0),
                tokens,
                padded_tokens: padded,
                padding_waste_pct: waste * 100.0,
            },
        );
    }

    fn ingest_step(&mut self, s: &Span) {
        let at = &s.attributes;
        let rec = (|| {
            Some(StepDone {
                run_id: str_attr(at, a::RUN_ID)?,
                driver_id: str_attr(at, a::DRIVER_ID)?,
                host: str_attr(at, a::HOST).unwrap_or_default(),
                record: StepRecord {
                    step: uint_attr(at, a::STEP)?,
                    batch: uint_attr(at, a::BATCH)?,
                    concurrency: uint_attr(at, a::CONCURRENCY)?,
                    mode: str_attr(at, a::MODE).unwrap_or_else(|| "closed".into()),
                    calls_sent: uint_attr(at, a::CALLS_SENT)?,
                    calls_ok: uint_attr(at, a::CALLS_OK)?,
                    calls_failed: uint_attr(at, a::CALLS_FAILED).unwrap_or(0),
                    pairs_sent: uint_attr(at, a::PAIRS_SENT)?,
                    pairs_ok: uint_attr(at, a::PAIRS_OK)?,
                    warmup_calls: uint_attr(at, a::WARMUP_CALLS).unwrap_or(0),
                    late_calls: uint_attr(at, a::LATE_CALLS).unwrap_or(0),
                    wall_s: f64_attr(at, a::WALL_S)?,
                    interrupted: bool_attr(at, a::INTERRUPTED).unwrap_or(false),
                },
                start_unix_ns: s.start_time_unix_nano,
                end_unix_ns: s.end_time_unix_nano,
            })
        })();
        match rec {
            Some(r) => {
                // A re-sent record replaces the earlier one.
                self.steps.retain(|o| {
                    !(o.run_id == r.run_id
                        && o.driver_id == r.driver_id
                        && o.record.step == r.record.step)
                });
                self.steps.push(r);
            }
            None => self.counters.malformed_spans += 1,
        }
    }

    fn ingest_run(&mut self, s: &Span) {
        let at = &s.attributes;
        let rec = (|| {
            Some(RunDone {
                run_id: str_attr(at, a::RUN_ID)?,
                driver_id: str_attr(at, a::DRIVER_ID)?,
                host: str_attr(at, a::HOST).unwrap_or_default(),
                steps_planned: uint_attr(at, a::STEPS_PLANNED)?,
                steps_done: uint_attr(at, a::STEPS_DONE)?,
                calls_sent: uint_attr(at, a::CALLS_SENT)?,
                calls_ok: uint_attr(at, a::CALLS_OK)?,
                calls_failed: uint_attr(at, a::CALLS_FAILED).unwrap_or(0),
                pairs_sent: uint_attr(at, a::PAIRS_SENT)?,
                pairs_ok: uint_attr(at, a::PAIRS_OK)?,
                interrupted: bool_attr(at, a::INTERRUPTED).unwrap_or(false),
                model: str_attr(at, a::SERVER_MODEL).unwrap_or_default(),
                stand_in: bool_attr(at, a::SERVER_STANDIN).unwrap_or(false),
                backend: str_attr(at, a::SERVER_BACKEND).unwrap_or_default(),
                device: str_attr(at, a::SERVER_DEVICE).unwrap_or_default(),
                max_batch: int_attr(at, a::SERVER_MAX_BATCH).unwrap_or(0).max(0) as u64,
                batch_timeout_ms: int_attr(at, a::SERVER_TIMEOUT_MS).unwrap_or(0).max(0) as u64,
                batch_policy: str_attr(at, a::SERVER_POLICY).unwrap_or_default(),
                start_unix_ns: s.start_time_unix_nano,
                end_unix_ns: s.end_time_unix_nano,
            })
        })();
        match rec {
            Some(r) => {
                self.runs
                    .retain(|o| !(o.run_id == r.run_id && o.driver_id == r.driver_id));
                self.runs.push(r);
            }
            None => self.counters.malformed_spans += 1,
        }
    }

    pub fn ingest_metrics(&mut self, req: &ExportMetricsServiceRequest) {
        for rm in &req.resource_metrics {
            for sm in &rm.scope_metrics {
                for m in &sm.metrics {
                    let points: &[NumberDataPoint] = match &m.data {
                        Some(Data::Gauge(g)) => &g.data_points,
                        Some(Data::Sum(s)) => &s.data_points,
                        _ => &[],
                    };
                    for p in points {
                        self.counters.metric_points += 1;
                        let v = match p.value {
                            Some(number_data_point::Value::AsDouble(d)) => d,
                            Some(number_data_point::Value::AsInt(i)) => i as f64,
                            None => continue,
                        };
                        if !v.is_finite() || p.time_unix_nano == 0 {
                            continue;
                        }
                        if self.full() {
                            self.counters.dropped += 1;
                            continue;
                        }
                        self.metrics.push(MetricPoint {
                            name: m.name.clone(),
                            kind: str_attr(&p.attributes, "memory.kind"),
                            unix_ns: p.time_unix_nano,
                            value: v,
                        });
                    }
                }
            }
        }
    }

    /// Run ids seen in client spans or completion records.
    pub fn run_ids(&self) -> Vec<String> {
        let mut ids: Vec<String> = self
            .traces
            .values()
            .filter_map(|p| p.client.as_ref().map(|c| c.run_id.clone()))
            .chain(self.runs.iter().map(|r| r.run_id.clone()))
            .chain(self.steps.iter().map(|r| r.run_id.clone()))
            .collect::<HashSet<_>>()
            .into_iter()
            .collect();
        ids.sort();
        ids
    }

    /// Drivers that sent their `bench.run` record for `run_id`.
    pub fn finished_drivers(&self, run_id: &str) -> usize {
        self.runs.iter().filter(|r| r.run_id == run_id).count()
    }

    /// How complete `run_id` is: (client spans missing against the drivers' counts,
    /// successful calls whose server spans have not arrived).
    pub fn outstanding(&self, run_id: &str) -> (usize, usize) {
        let expected: usize = self
            .runs
            .iter()
            .filter(|r| r.run_id == run_id)
            .map(|r| r.calls_sent)
            .sum();
        let mut have = 0;
        let mut unjoined = 0;
        for p in self.traces.values() {
            if let Some(c) = &p.client
                && c.run_id == run_id
                && !c.warmup
            {
                have += 1;
                if c.status.is_ok() && !p.server.as_ref().is_some_and(|s| s.rpc) {
                    unjoined += 1;
                }
            }
        }
        (expected.saturating_sub(have), unjoined)
    }

    /// A copy of everything belonging to `run_id`.
    pub fn run_data(&self, run_id: &str) -> RunData {
        let mut calls = Vec::new();
        let mut batch_ids = HashSet::new();
        let (mut lo, mut hi) = (u64::MAX, 0u64);
        for (id, p) in &self.traces {
            let Some(c) = &p.client else { continue };
            if c.run_id != run_id {
                continue;
            }
            lo = lo.min(c.start_unix_ns);
            hi = hi.max(c.end_unix_ns);
            if let Some(s) = &p.server
                && !c.warmup
            {
                batch_ids.extend(s.batch_ids.iter().copied());
            }
            calls.push(CallRecord {
                trace_id: hex(id),
                client: c.clone(),
                server: p.server.clone(),
            });
        }
        calls.sort_by_key(|c| (c.client.step, c.client.start_unix_ns));
        let steps: Vec<StepDone> = self
            .steps
            .iter()
            .filter(|s| s.run_id == run_id)
            .cloned()
            .collect();
        for s in &steps {
            lo = lo.min(s.start_unix_ns);
            hi = hi.max(s.end_unix_ns);
        }
        let orphan_server_calls = self
            .traces
            .values()
            .filter(|p| p.client.is_none())
            .filter_map(|p| p.server.as_ref())
            .filter(|s| s.rpc)
            .count();
        let mut batches: Vec<BatchRecord> = batch_ids
            .iter()
            .filter_map(|id| self.batches.get(id).cloned())
            .collect();
        batches.sort_by_key(|b| b.start_unix_ns);
        // Resource samples in the run's window (one sample interval of margin).
        let margin = 1_000_000_000;
        let metrics = self
            .metrics
            .iter()
            .filter(|m| lo != u64::MAX && m.unix_ns + margin >= lo && m.unix_ns <= hi + margin)
            .cloned()
            .collect();
        RunData {
            run_id: run_id.to_string(),
            calls,
            batches,
            steps,
            runs: self
                .runs
                .iter()
                .filter(|r| r.run_id == run_id)
                .cloned()
                .collect(),
            metrics,
            counters: self.counters.clone(),
            orphan_server_calls,
            window_unix_ns: if lo == u64::MAX { (0, 0) } else { (lo, hi) },
        }
    }

    /// Forgets a reported run: its calls and records, and batches and resource
    /// samples up to its end, so a long-lived collector stays within its bound.
    pub fn forget(&mut self, run_id: &str, until_unix_ns: u64) {
        self.traces.retain(|_, p| match &p.client {
            Some(c) => c.run_id != run_id,
            // Orphans from before the run's end are counted once, then dropped.
            None => false,
        });
        self.steps.retain(|s| s.run_id != run_id);
        self.runs.retain(|r| r.run_id != run_id);
        self.batches.retain(|_, b| b.start_unix_ns > until_unix_ns);
        self.metrics.retain(|m| m.unix_ns > until_unix_ns);
    }
}
