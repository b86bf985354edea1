//! The `crossbatch.v1.CrossEncoder` gRPC service: validation, tokenization on a worker
//! pool, the batcher, and the response with TEI-style timing.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use crossbatch_proto::v1::cross_encoder_server::CrossEncoder as CrossEncoderApi;
use crossbatch_proto::v1::{
    InfoRequest, InfoResponse, Pair, Rank, RerankRequest, RerankResponse, ScoreRequest,
    ScoreResponse, Timing,
};
use tokio::sync::{OnceCell, oneshot};
use tokio::time::Instant;
use tonic::metadata::MetadataMap;
use tonic::{Request, Response, Status};

use tracing::{Instrument, Span};
use tracing_opentelemetry::OpenTelemetrySpanExt;

use crate::admission::{Admission, Admitted};
use crate::batcher::{BatchError, BatchInfo, Batcher, Outcome, Pending, RequestHooks};
use crate::error::ServeError;
use crate::metrics::Metrics;
use crossbatch_model::{Encoded, Scorer};

/// Limits a call is checked against before it is tokenized.
#[derive(Debug, Clone)]
pub struct Limits {
    pub max_client_batch: usize,
    /// Bytes per query or passage.
    pub max_text_bytes: usize,
}

/// What serves once the model is loaded and warmed up.
pub struct Ready {
    pub model: Arc<dyn Scorer>,
    pub batcher: Batcher,
    pub tokenizers: Arc<rayon::ThreadPool>,
    pub info: InfoResponse,
    /// The warm-up's forward time per pair: the speed estimate before any call ran.
    pub warm_seconds_per_pair: f64,
}

#[derive(Clone)]
pub struct ScoringService {
    ready: Arc<OnceCell<Ready>>,
    limits: Limits,
    metrics: Arc<Metrics>,
    admission: Arc<Admission>,
}

/// The texts of one call, moved out of the request and shared with the tokenizer job
/// as they are: a Rerank query is held once (`shared_query`), not copied per passage.
struct Texts {
    shared_query: Option<String>,
    pairs: Vec<Pair>,
}

impl Texts {
    fn score(pairs: Vec<Pair>) -> Self {
        Self {
            shared_query: None,
            pairs,
        }
    }

    fn rerank(query: String, passages: Vec<String>) -> Self {
        let pairs = passages
            .into_iter()
            .map(|passage| Pair {
                query: String::new(),
                passage,
            })
            .collect();
        Self {
            shared_query: Some(query),
            pairs,
        }
    }

    fn len(&self) -> usize {
        self.pairs.len()
    }

    fn get(&self, i: usize) -> (&str, &str) {
        let pair = &self.pairs[i];
        let query = self.shared_query.as_deref().unwrap_or(&pair.query);
        (query, &pair.passage)
    }
}

/// How a tokenizer job ended.
enum Tokenized {
    Done(Result<Vec<Encoded>, crossbatch_model::ModelError>),
    /// The call's deadline passed before its last pair was tokenized.
    PastDeadline,
    /// The client went away; nobody waits for the rest.
    Abandoned,
}

/// Tells the call's tokenizer job to stop when the call's handler ends, however it
/// ends: answered, failed, or dropped by tonic because the client went away.
struct StopOnDrop(Arc<AtomicBool>);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

impl ScoringService {
    pub fn new(
        ready: Arc<OnceCell<Ready>>,
        limits: Limits,
        metrics: Arc<Metrics>,
        admission: Arc<Admission>,
    ) -> Self {
        Self {
            ready,
            limits,
            metrics,
            admission,
        }
    }

    /// Admits `n` pairs or refuses the call now, before any of its work is done.
    fn admit(&self, n: usize) -> Result<Admitted, ServeError> {
        Ok(self.admission.try_admit(n)?)
    }

    fn ready(&self) -> Result<&Ready, ServeError> {
        self.ready.get().ok_or(ServeError::NotReady)
    }

    fn check_count(&self, n: usize, what: &str) -> Result<(), ServeError> {
        if n == 0 {
            return Err(ServeError::InvalidArgument(format!("{what} is empty")));
        }
        if n > self.limits.max_client_batch {
            return Err(ServeError::InvalidArgument(format!(
                "{n} {what} exceed the limit of {} per call (--max-client-batch)",
                self.limits.max_client_batch
            )));
        }
        Ok(())
    }

    /// Empty and whitespace-only texts are allowed: they tokenize to nothing and the
    /// pair scores as `[CLS] [SEP] [SEP]` around what remains, exactly as
    /// sentence-transformers' CrossEncoder scores them (the parity file has such rows).
    fn check_text(&self, text: &str, field: &str) -> Result<(), ServeError> {
        if text.len() > self.limits.max_text_bytes {
            return Err(ServeError::InvalidArgument(format!(
                "{field} is {} bytes, over the limit of {} (--max-text-bytes)",
                text.len(),
                self.limits.max_text_bytes
            )));
        }
        Ok(())
    }

    /// Tokenizes, queues and waits for the logits of `texts`. The tokenizer job stops
    /// between pairs once the call is abandoned or past its deadline.
    async fn run(
        &self,
        texts: Arc<Texts>,
        deadline: Option<Instant>,
    ) -> Result<(Outcome, Duration), ServeError> {
        let ready = self.ready()?;
        let started = Instant::now();
        let model = Arc::clone(&ready.model);
        let (tx, rx) = oneshot::channel();
        let stop = Arc::new(AtomicBool::new(false));
        let _stop_on_drop = StopOnDrop(Arc::clone(&stop));
        let tok_span = tracing::info_span!("tokenize", pairs = texts.len());
        // The pool's threads read the OS clock, not tokio's (which tests pause): the
        // deadline goes to them as an OS-clock instant.
        let os_deadline = deadline
            .map(|d| std::time::Instant::now() + d.saturating_duration_since(Instant::now()));
        ready.tokenizers.spawn(move || {
            let _g = tok_span.enter();
            let t = std::time::Instant::now();
            // A panic inside the tokenizer on some input fails this call, not the
            // process (rayon aborts on a panic that escapes a spawned job).
            let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                let mut encoded = Vec::with_capacity(texts.len());
                for i in 0..texts.len() {
                    if stop.load(Ordering::Relaxed) {
                        return Tokenized::Abandoned;
                    }
                    if os_deadline.is_some_and(|d| std::time::Instant::now() >= d) {
                        return Tokenized::PastDeadline;
                    }
                    let (q, p) = texts.get(i);
                    match model.encode(q, p) {
                        Ok(e) => encoded.push(e),
                        Err(e) => return Tokenized::Done(Err(e)),
                    }
                }
                Tokenized::Done(Ok(encoded))
            }));
            let _ = tx.send((r, t.elapsed()));
        });
        let (tokenized, tok_time) = rx
            .await
            .map_err(|_| ServeError::Internal("tokenizer worker vanished".into()))?;
        let encoded = match tokenized {
            Ok(Tokenized::Done(r)) => {
                self.metrics
                    .tokenize_seconds
                    .observe(tok_time.as_secs_f64());
                r.map_err(|e| ServeError::Tokenize(e.to_string()))?
            }
            Ok(Tokenized::PastDeadline) => {
                return Err(ServeError::DeadlineTokenizing(
                    started.elapsed().as_millis() as u64,
                ));
            }
            // Only a dropped handler sets `stop`, and then nobody reads this.
            Ok(Tokenized::Abandoned) => {
                return Err(ServeError::Internal("the call was abandoned".into()));
            }
            Err(panic) => {
                let why = crossbatch_model::panic_message(&*panic, "no message");
                tracing::error!(reason = %why, "the tokenizer panicked; the call fails with INTERNAL");
                return Err(ServeError::Internal(format!(
                    "the tokenizer panicked: {why}"
                )));
            }
        };
        if deadline.is_some_and(|d| Instant::now() >= d) {
            return Err(ServeError::DeadlineTokenizing(
                started.elapsed().as_millis() as u64,
            ));
        }
        let hooks = Arc::new(SpanHooks {
            rpc: Span::current(),
            queue_wait: std::sync::Mutex::new(Some(tracing::info_span!("queue_wait"))),
            inference: std::sync::Mutex::new(None),
        });
        let Pending { reply, progress } =
            ready
                .batcher
                .submit_tracked(encoded, deadline, Some(hooks))?;
        let outcome = async {
            match deadline {
                Some(d) => match tokio::time::timeout_at(d, reply).await {
                    Ok(r) => r,
                    Err(_) => {
                        let (scored, total) = progress.get();
                        return Err(BatchError::DeadlineExceeded {
                            waited_ms: started.elapsed().as_millis() as u64,
                            scored,
                            total,
                        }
                        .into());
                    }
                },
                None => reply.await,
            }
            .map_err(|_| ServeError::Internal("the batcher dropped the call".into()))?
            .map_err(ServeError::from)
        };
        let outcome = outcome.await?;
        self.metrics
            .queue_seconds
            .observe(outcome.queue.as_secs_f64());
        Ok((outcome, tok_time))
    }
}

/// Ends `queue_wait` when the request's first batch starts and opens an `inference`
/// span (child of the RPC span) around each batch that holds its pairs.
struct SpanHooks {
    rpc: Span,
    queue_wait: std::sync::Mutex<Option<Span>>,
    inference: std::sync::Mutex<Option<Span>>,
}

impl RequestHooks for SpanHooks {
    fn batch_started(&self, b: &BatchInfo) {
        let lock =
            |m: &std::sync::Mutex<Option<Span>>| m.lock().unwrap_or_else(|p| p.into_inner()).take();
        drop(lock(&self.queue_wait));
        let span = tracing::info_span!(
            parent: &self.rpc,
            "inference",
            batch.id = b.id as i64,
            batch.pairs = b.pairs as i64,
            batch.tokens = b.real_tokens as i64,
            batch.padded_tokens = b.padded_tokens as i64,
            batch.padding_waste = b.padding_waste(),
        );
        *self.inference.lock().unwrap_or_else(|p| p.into_inner()) = Some(span);
    }

    fn batch_finished(&self, _b: &BatchInfo) {
        drop(
            self.inference
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .take(),
        );
    }
}

/// The server span of one call, a child of the caller's span when `traceparent` came
/// along. Both RPC semantic-convention generations are written: `rpc.system`,
/// `rpc.service`, `rpc.method` (short) and `rpc.grpc.status_code` (pre-1.39), and
/// `rpc.system.name`, `rpc.response.status_code` with the span named
/// `crossbatch.v1.CrossEncoder/<Method>` (1.39).
fn rpc_span(method: &'static str, md: &MetadataMap) -> Span {
    let span = tracing::info_span!(
        "rpc",
        otel.name = format!("crossbatch.v1.CrossEncoder/{method}"),
        otel.kind = "server",
        rpc.system = "grpc",
        rpc.system.name = "grpc",
        rpc.service = "crossbatch.v1.CrossEncoder",
        rpc.method = method,
        rpc.grpc.status_code = tracing::field::Empty,
        rpc.response.status_code = tracing::field::Empty,
        otel.status_code = tracing::field::Empty,
        otel.status_message = tracing::field::Empty,
        pairs = tracing::field::Empty,
    );
    let _ = span.set_parent(crate::telemetry::remote_context(md));
    span
}

fn code_of<T>(result: &Result<T, Status>) -> tonic::Code {
    match result {
        Ok(_) => tonic::Code::Ok,
        Err(s) => s.code(),
    }
}

fn record_status<T>(span: &Span, result: &Result<T, Status>) {
    let code = code_of(result);
    span.record("rpc.grpc.status_code", code as i64);
    span.record(
        "rpc.response.status_code",
        crossbatch_proto::code_name(code),
    );
    if let Err(s) = result {
        span.record("otel.status_code", "ERROR");
        span.record("otel.status_message", s.message());
    }
}

fn timing(o: &Outcome, tokenization: Duration, total: Duration) -> Timing {
    Timing {
        tokenization_ns: tokenization.as_nanos() as u64,
        queue_ns: o.queue.as_nanos() as u64,
        inference_ns: o.inference.as_nanos() as u64,
        total_ns: total.as_nanos() as u64,
        real_tokens: o.real_tokens,
        padded_tokens: o.padded_tokens,
        batches: o.batches,
    }
}

fn sigmoid(x: f32) -> f32 {
    1.0 / (1.0 + (-x).exp())
}

/// The call's deadline from its `grpc-timeout` header, a little early: tonic's own
/// timers (server and client side) end an expired call as CANCELLED, so the server
/// answers DEADLINE_EXCEEDED just before they fire.
pub fn deadline(md: &MetadataMap, now: Instant) -> Option<Instant> {
    let v = md.get("grpc-timeout")?.to_str().ok()?;
    let (num, unit) = v.split_at(v.len().checked_sub(1)?);
    let n: u64 = num.parse().ok()?;
    let d = match unit {
        "H" => Duration::from_secs(n.saturating_mul(3600)),
        "M" => Duration::from_secs(n.saturating_mul(60)),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    };
    let margin = (d / 10).min(Duration::from_millis(20));
    now.checked_add(d - margin)
}

/// Counts a call's outcome once: the code it ended with, or CANCELLED when the client
/// went away first and tonic dropped the handler mid-call.
struct Counted<'a> {
    metrics: &'a Metrics,
    started: Instant,
    done: bool,
}

impl<'a> Counted<'a> {
    fn new(metrics: &'a Metrics) -> Self {
        Self {
            metrics,
            started: Instant::now(),
            done: false,
        }
    }

    fn done(mut self, code: tonic::Code) {
        self.done = true;
        self.metrics.request_done(code, self.started.elapsed());
    }
}

impl Drop for Counted<'_> {
    fn drop(&mut self) {
        if !self.done {
            self.metrics
                .request_done(tonic::Code::Cancelled, self.started.elapsed());
        }
    }
}

#[tonic::async_trait]
impl CrossEncoderApi for ScoringService {
    async fn score(
        &self,
        request: Request<ScoreRequest>,
    ) -> Result<Response<ScoreResponse>, Status> {
        let span = rpc_span("Score", request.metadata());
        span.record("pairs", request.get_ref().pairs.len() as i64);
        let counted = Counted::new(&self.metrics);
        let result = self.score_call(request).instrument(span.clone()).await;
        record_status(&span, &result);
        counted.done(code_of(&result));
        result
    }

    async fn rerank(
        &self,
        request: Request<RerankRequest>,
    ) -> Result<Response<RerankResponse>, Status> {
        let span = rpc_span("Rerank", request.metadata());
        span.record("pairs", request.get_ref().passages.len() as i64);
        let counted = Counted::new(&self.metrics);
        let result = self.rerank_call(request).instrument(span.clone()).await;
        record_status(&span, &result);
        counted.done(code_of(&result));
        result
    }

    async fn info(&self, _request: Request<InfoRequest>) -> Result<Response<InfoResponse>, Status> {
        let ready = self.ready()?;
        let mut info = ready.info.clone();
        info.queued_pairs = ready.batcher.queued_pairs() as u32;
        info.batches_run = ready.batcher.batches_run();
        Ok(Response::new(info))
    }
}

impl ScoringService {
    async fn score_call(
        &self,
        request: Request<ScoreRequest>,
    ) -> Result<Response<ScoreResponse>, Status> {
        let start = Instant::now();
        let deadline = deadline(request.metadata(), start);
        let req = request.into_inner();
        self.check_count(req.pairs.len(), "pairs")?;
        for (i, p) in req.pairs.iter().enumerate() {
            self.check_text(&p.query, &format!("pairs[{i}].query"))?;
            self.check_text(&p.passage, &format!("pairs[{i}].passage"))?;
        }
        let _admitted = self.admit(req.pairs.len())?;
        let texts = Arc::new(Texts::score(req.pairs));
        let (outcome, tok) = self.run(texts, deadline).await?;
        let scores = outcome
            .logits
            .iter()
            .map(|&l| if req.raw_scores { l } else { sigmoid(l) })
            .collect();
        Ok(Response::new(ScoreResponse {
            scores,
            timing: Some(timing(&outcome, tok, start.elapsed())),
        }))
    }

    async fn rerank_call(
        &self,
        request: Request<RerankRequest>,
    ) -> Result<Response<RerankResponse>, Status> {
        let start = Instant::now();
        let deadline = deadline(request.metadata(), start);
        let req = request.into_inner();
        self.check_count(req.passages.len(), "passages")?;
        self.check_text(&req.query, "query")?;
        for (i, p) in req.passages.iter().enumerate() {
            self.check_text(p, &format!("passages[{i}]"))?;
        }
        let _admitted = self.admit(req.passages.len())?;
        let texts = Arc::new(Texts::rerank(req.query, req.passages));
        let (outcome, tok) = self.run(Arc::clone(&texts), deadline).await?;
        let mut ranks: Vec<Rank> = outcome
            .logits
            .iter()
            .enumerate()
            .map(|(i, &l)| Rank {
                index: i as u32,
                score: if req.raw_scores { l } else { sigmoid(l) },
                text: req.return_text.then(|| texts.pairs[i].passage.clone()),
            })
            .collect();
        // Stable: ties keep request order.
        ranks.sort_by(|a, b| b.score.total_cmp(&a.score));
        if let Some(n) = req.top_n {
            ranks.truncate(n as usize);
        }
        Ok(Response::new(RerankResponse {
            ranks,
            timing: Some(timing(&outcome, tok, start.elapsed())),
        }))
    }
}
