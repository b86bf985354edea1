//! What the collector keeps: spans joined by trace id into one record per call,
//! batches (deduplicated by replica and batch id), the drivers' completion records and
//! the server's resource samples. Each server span belongs to the replica named by its
//! resource's `service.instance.id` ("" when none): batch ids restart at 0 in every
//! server process, so only (replica, batch id) names one forward pass. Bounded: past
//! `max_records` kept items, new ones are dropped and counted. Unknown spans and metrics are counted and ignored; malformed
//! ones (bad ids, missing fields) are counted, never trusted.

mod attr;
mod records;
#[cfg(test)]
mod tests;

use std::collections::{HashMap, HashSet};

use crossbatch_proto::StatusCode;
use crossbatch_proto::attrs as a;
use crossbatch_proto::records::StepRecord;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::KeyValue;
use opentelemetry_proto::tonic::trace::v1::Span;
use serde::Serialize;

use attr::{bool_attr, duration_ms, f64_attr, int_attr, str_attr, uint_attr};

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
    /// The replica that gave the final answer, as the driver heard it (its
    /// `crossbatch-instance` header; "" when none answered). Absent from drivers that
    /// do not say.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub server_instance: Option<String>,
    /// The address of the call's last attempt.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<String>,
    /// Attempts the call took (1: no retry).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub attempts: Option<usize>,
}

/// The server's side of one call on one replica: its RPC span and children.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ServerPart {
    /// The replica (`service.instance.id` of the server's resource; "" if unnamed).
    pub instance: String,
    /// Seen the RPC span itself (children can arrive without it, for a while).
    pub rpc: bool,
    pub status: Option<StatusCode>,
    /// The RPC span's duration: the call as the server timed it.
    pub rpc_ms: Option<f64>,
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
    /// The replica the call counts under: the instance of the server spans that
    /// answered it, else the one the driver named; "" when neither says.
    pub instance: String,
    #[serde(flatten)]
    pub client: ClientPart,
    /// The answering replica's spans.
    pub server: Option<ServerPart>,
    /// Spans of this call from other replicas: attempts that failed there and were
    /// retried elsewhere.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub other_servers: Vec<ServerPart>,
}

/// One forward pass, from its `inference` spans.
#[derive(Debug, Clone, Serialize)]
pub struct BatchRecord {
    /// The replica that ran it ("" if unnamed): batch ids are per replica.
    pub instance: String,
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
    /// Attempts retried on another endpoint, and endpoints taken out of rotation.
    pub retries: usize,
    pub ejections: usize,
    pub model: String,
    pub stand_in: bool,
    pub backend: String,
    pub device: String,
    pub max_batch: u64,
    pub max_batch_chosen_by: String,
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
    /// One per replica that sent spans of this trace (usually one).
    servers: Vec<ServerPart>,
}

/// Replicas one call's spans may come from: a retried call visits a few; more is a
/// peer making up instance names, and their spans are dropped.
const MAX_REPLICAS_PER_CALL: usize = 8;

impl Partial {
    /// The part of replica `instance`, made on first use; `None` past
    /// [`MAX_REPLICAS_PER_CALL`].
    fn server(&mut self, instance: &str) -> Option<&mut ServerPart> {
        let i = match self.servers.iter().position(|s| s.instance == instance) {
            Some(i) => i,
            None if self.servers.len() >= MAX_REPLICAS_PER_CALL => return None,
            None => {
                self.servers.push(ServerPart {
                    instance: instance.to_string(),
                    ..Default::default()
                });
                self.servers.len() - 1
            }
        };
        self.servers.get_mut(i)
    }

    fn has_rpc(&self) -> bool {
        self.servers.iter().any(|s| s.rpc)
    }
}

/// Splits a call's server parts into the answering replica's and the others'. The
/// answer is the part of the replica the driver named, else (the driver named none, or
/// the server names no replicas) the part that answered OK, else one with its RPC span.
fn answering(
    named: Option<&str>,
    mut parts: Vec<ServerPart>,
) -> (Option<ServerPart>, Vec<ServerPart>) {
    let named = named.filter(|n| !n.is_empty());
    let pick = match named {
        Some(n) => parts
            .iter()
            .position(|p| p.instance == n)
            .or_else(|| parts.iter().position(|p| p.instance.is_empty())),
        None => parts
            .iter()
            .position(|p| p.rpc && p.status.is_some_and(|s| s.is_ok()))
            .or_else(|| parts.iter().position(|p| p.rpc))
            .or_else(|| (!parts.is_empty()).then_some(0)),
    };
    let chosen = pick.map(|i| parts.remove(i));
    (chosen, parts)
}

/// Everything kept, bounded by `max_records` (calls + batches + metric points).
#[derive(Debug)]
pub struct Store {
    max_records: usize,
    traces: HashMap<[u8; 16], Partial>,
    /// By (replica, batch id).
    batches: HashMap<(String, i64), BatchRecord>,
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
            let instance = str_attr(resource, a::SERVICE_INSTANCE_ID).unwrap_or_default();
            for ss in &rs.scope_spans {
                for span in &ss.spans {
                    self.counters.spans += 1;
                    self.ingest_span(span, resource, &instance);
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

    /// One span; `instance` names the replica of a server span.
    fn ingest_span(&mut self, s: &Span, resource: &[KeyValue], instance: &str) {
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
                        server_instance: str_attr(at, a::SERVER_INSTANCE),
                        endpoint: str_attr(at, a::ENDPOINT),
                        attempts: uint_attr(at, a::ATTEMPTS),
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
                    self.ingest_batch(s, ms, instance);
                }
                let Some(t) = self.partial(trace) else { return };
                let Some(server) = t.server(instance) else {
                    self.counters.dropped += 1;
                    return;
                };
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
                let Some(server) = t.server(instance) else {
                    self.counters.dropped += 1;
                    return;
                };
                server.rpc = true;
                server.status = status;
                server.rpc_ms = duration_ms(s);
            }
            _ => self.counters.unknown_spans += 1,
        }
    }

    fn ingest_batch(&mut self, s: &Span, ms: f64, instance: &str) {
        let at = &s.attributes;
        let Some(id) = int_attr(at, "batch.id") else {
            self.counters.malformed_spans += 1;
            return;
        };
        let key = (instance.to_string(), id);
        if self.batches.contains_key(&key) {
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
            key,
            BatchRecord {
                instance: instance.to_string(),
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
                if c.status.is_ok() && !p.has_rpc() {
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
            if !c.warmup {
                for s in &p.servers {
                    batch_ids.extend(s.batch_ids.iter().map(|&b| (s.instance.clone(), b)));
                }
            }
            let (server, other_servers) =
                answering(c.server_instance.as_deref(), p.servers.clone());
            let instance = server
                .as_ref()
                .map(|s| s.instance.clone())
                .filter(|i| !i.is_empty())
                .or_else(|| c.server_instance.clone())
                .unwrap_or_default();
            calls.push(CallRecord {
                trace_id: hex(id),
                instance,
                client: c.clone(),
                server,
                other_servers,
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
            .filter(|p| p.client.is_none() && p.has_rpc())
            .count();
        let mut batches: Vec<BatchRecord> = batch_ids
            .iter()
            .filter_map(|id| self.batches.get(id).cloned())
            .collect();
        batches.sort_by(|a, b| {
            (a.start_unix_ns, &a.instance, a.id).cmp(&(b.start_unix_ns, &b.instance, b.id))
        });
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
