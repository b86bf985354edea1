//! The dynamic batcher: tokenized pairs wait in a bounded queue; one scheduler task
//! takes batches out and runs each forward pass on the blocking pool, one at a time.
//! Time is tokio's (`tokio::time::Instant`, `sleep_until`), so tests run it against a
//! fake scorer under paused time, in milliseconds and without sleeps.
//!
//! A batch closes when it holds `max_batch` pairs, or (policy `deadline`) `timeout`
//! after its oldest pair arrived, whichever comes first; policy `eager` sends whatever
//! waits as soon as the model is free. A batch never exceeds `max_batch_tokens`
//! computed tokens. Among waiting pairs, the oldest always goes first and the rest are
//! chosen by similar length (less padding). A request's pairs may span batches; its
//! scores come back in order. Calls whose deadline passed or that were cancelled leave
//! the queue before inference.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::sync::{Notify, oneshot};
use tokio::time::Instant;

use crossbatch_model::{Encoded, Layout, ModelError, Scorer, padded_len, panic_message};

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum BatchPolicy {
    /// Wait up to the timeout for a full batch (the default).
    Deadline,
    /// Run whatever waits as soon as the model is free (text-embeddings-inference's way).
    Eager,
}

impl std::fmt::Display for BatchPolicy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Deadline => "deadline",
            Self::Eager => "eager",
        })
    }
}

#[derive(Debug, Clone)]
pub struct BatcherConfig {
    pub max_batch: usize,
    pub timeout: Duration,
    pub max_batch_tokens: usize,
    pub max_queue_pairs: usize,
    pub policy: BatchPolicy,
    /// Choose batch mates by similar length (cuts padding on padded layouts).
    pub group_by_length: bool,
}

/// Why a call got no scores.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum BatchError {
    #[error(
        "queue full: {queued} pairs waiting, {requested} more would exceed --max-queue-pairs {limit}; retry later"
    )]
    QueueFull {
        queued: usize,
        requested: usize,
        limit: usize,
    },
    #[error("deadline exceeded after {waited_ms} ms in the queue")]
    DeadlineExceeded { waited_ms: u64 },
    #[error("the server is shutting down")]
    ShuttingDown,
    #[error("inference failed: {0}")]
    Inference(String),
}

/// What a finished request gets back.
#[derive(Debug, Clone, Default)]
pub struct Outcome {
    pub logits: Vec<f32>,
    /// Enqueue until the start of the last batch that held its pairs.
    pub queue: Duration,
    /// Wall time of the forward passes that held its pairs.
    pub inference: Duration,
    pub real_tokens: u64,
    pub padded_tokens: u64,
    pub batches: u32,
}

/// Observes batches (telemetry hooks); called by the scheduler after each batch.
pub trait BatchObserver: Send + Sync {
    fn batch_done(&self, _info: &BatchInfo) {}
}

#[derive(Debug, Clone)]
pub struct BatchInfo {
    pub id: u64,
    pub pairs: usize,
    pub real_tokens: usize,
    pub padded_tokens: usize,
    pub started: Instant,
    pub duration: Duration,
    pub ok: bool,
}

impl BatchInfo {
    pub fn padding_waste(&self) -> f64 {
        if self.padded_tokens == 0 {
            0.0
        } else {
            1.0 - self.real_tokens as f64 / self.padded_tokens as f64
        }
    }
}

/// Per-request state shared by its queued pairs.
struct Request {
    deadline: Option<Instant>,
    enqueued: Instant,
    state: Mutex<RequestState>,
    /// Per-request hook, run by the scheduler when one of its batches starts and ends.
    hooks: Option<Arc<dyn RequestHooks>>,
}

/// Lets the caller attach spans to the request's queue wait and inference.
pub trait RequestHooks: Send + Sync {
    fn batch_started(&self, _batch: &BatchInfo) {}
    fn batch_finished(&self, _batch: &BatchInfo) {}
}

struct RequestState {
    logits: Vec<f32>,
    remaining: usize,
    outcome: Outcome,
    reply: Option<oneshot::Sender<Result<Outcome, BatchError>>>,
}

impl Request {
    fn lock(&self) -> MutexGuard<'_, RequestState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// True when nobody waits for this request any more (answered, cancelled).
    fn is_dead(&self) -> bool {
        let s = self.lock();
        match &s.reply {
            None => true,
            Some(tx) => tx.is_closed(),
        }
    }

    fn fail(&self, err: BatchError) {
        if let Some(tx) = self.lock().reply.take() {
            let _ = tx.send(Err(err));
        }
    }
}

struct Item {
    enc: Encoded,
    index: usize,
    req: Arc<Request>,
}

struct Queue {
    items: VecDeque<Item>,
    shutdown: bool,
}

struct Shared {
    cfg: BatcherConfig,
    layout: Layout,
    max_positions: usize,
    queue: Mutex<Queue>,
    /// Wakes the scheduler: a new arrival or shutdown.
    wake: Notify,
    next_batch: AtomicU64,
    queued: std::sync::atomic::AtomicUsize,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Queue> {
        self.queue.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Tokens the forward pass computes for these lengths.
    fn cost(&self, count: usize, longest: usize, sum: usize) -> usize {
        match self.layout {
            Layout::Packed => sum,
            Layout::Padded => count * padded_len(longest, self.max_positions),
        }
    }
}

/// Handle to the batcher; cloning shares it.
#[derive(Clone)]
pub struct Batcher {
    shared: Arc<Shared>,
}

/// The scheduler task; await [`BatcherThread::join`] after [`Batcher::shutdown`].
pub struct BatcherThread {
    handle: tokio::task::JoinHandle<()>,
}

impl BatcherThread {
    /// Waits until the scheduler has drained the queue and exited.
    pub async fn join(self) {
        let _ = self.handle.await;
    }
}

impl Batcher {
    /// Starts the scheduler task that owns `model`, on the current tokio runtime.
    pub fn start(
        model: Arc<dyn Scorer>,
        cfg: BatcherConfig,
        observer: Arc<dyn BatchObserver>,
    ) -> (Self, BatcherThread) {
        let shared = Arc::new(Shared {
            layout: model.layout(),
            max_positions: model.limits().max_positions,
            cfg,
            queue: Mutex::new(Queue {
                items: VecDeque::new(),
                shutdown: false,
            }),
            wake: Notify::new(),
            next_batch: AtomicU64::new(1),
            queued: Default::default(),
        });
        let handle = tokio::spawn(run(Arc::clone(&shared), model, observer));
        (Self { shared }, BatcherThread { handle })
    }

    pub fn config(&self) -> &BatcherConfig {
        &self.shared.cfg
    }

    /// Pairs waiting now.
    pub fn queued_pairs(&self) -> usize {
        self.shared.queued.load(Ordering::Relaxed)
    }

    /// Forward passes run so far.
    pub fn batches_run(&self) -> u64 {
        self.shared.next_batch.load(Ordering::Relaxed) - 1
    }

    /// Enqueues one request's pairs. Refuses at once when the queue would overflow.
    pub fn submit(
        &self,
        encoded: Vec<Encoded>,
        deadline: Option<Instant>,
        hooks: Option<Arc<dyn RequestHooks>>,
    ) -> Result<oneshot::Receiver<Result<Outcome, BatchError>>, BatchError> {
        let (tx, rx) = oneshot::channel();
        let n = encoded.len();
        if n == 0 {
            let _ = tx.send(Ok(Outcome::default()));
            return Ok(rx);
        }
        let req = Arc::new(Request {
            deadline,
            enqueued: Instant::now(),
            state: Mutex::new(RequestState {
                logits: vec![0.0; n],
                remaining: n,
                outcome: Outcome::default(),
                reply: Some(tx),
            }),
            hooks,
        });
        let mut q = self.shared.lock();
        if q.shutdown {
            return Err(BatchError::ShuttingDown);
        }
        let queued = q.items.len();
        let limit = self.shared.cfg.max_queue_pairs;
        if queued + n > limit {
            return Err(BatchError::QueueFull {
                queued,
                requested: n,
                limit,
            });
        }
        q.items
            .extend(encoded.into_iter().enumerate().map(|(index, enc)| Item {
                enc,
                index,
                req: Arc::clone(&req),
            }));
        self.shared.queued.store(q.items.len(), Ordering::Relaxed);
        drop(q);
        self.shared.wake.notify_one();
        Ok(rx)
    }

    /// Stops taking requests; the scheduler finishes what is queued, then exits.
    pub fn shutdown(&self) {
        self.shared.lock().shutdown = true;
        self.shared.wake.notify_one();
    }
}

/// The scheduler: wait for a batch to close, run it on the blocking pool, answer its
/// requests. A forward pass that panics fails that batch's calls, not the server.
async fn run(shared: Arc<Shared>, model: Arc<dyn Scorer>, observer: Arc<dyn BatchObserver>) {
    loop {
        let Some(batch) = next_batch(&shared).await else {
            return;
        };
        let id = shared.next_batch.fetch_add(1, Ordering::Relaxed);
        let real: usize = batch.iter().map(|i| i.enc.len()).sum();
        let longest = batch.iter().map(|i| i.enc.len()).max().unwrap_or(0);
        let mut info = BatchInfo {
            id,
            pairs: batch.len(),
            real_tokens: real,
            padded_tokens: shared.cost(batch.len(), longest, real),
            started: Instant::now(),
            duration: Duration::ZERO,
            ok: true,
        };
        for_each_request(&batch, |req| {
            if let Some(h) = &req.hooks {
                h.batch_started(&info);
            }
        });
        let model = Arc::clone(&model);
        let (batch, result) = match tokio::task::spawn_blocking(move || {
            let refs: Vec<&Encoded> = batch.iter().map(|i| &i.enc).collect();
            let result =
                std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| model.forward(&refs)))
                    .unwrap_or_else(|panic| {
                        Err(ModelError::Inference(panic_message(
                            &*panic,
                            "the forward pass panicked",
                        )))
                    });
            drop(refs);
            (batch, result)
        })
        .await
        {
            Ok(done) => done,
            // Only a cancelled runtime gets here (the closure catches panics): the
            // batch's requests were dropped with it and their callers see it.
            Err(e) => {
                tracing::error!(error = %e, "the forward pass task ended without a result");
                return;
            }
        };
        info.duration = info.started.elapsed();
        info.ok = result.is_ok();
        if let Err(e) = &result {
            tracing::error!(batch = id, pairs = info.pairs, error = %e, "forward pass failed");
        }
        observer.batch_done(&info);
        deliver(&batch, result, &info, shared.layout);
    }
}

/// Calls `f` once per distinct request in the batch, in batch order.
fn for_each_request(batch: &[Item], mut f: impl FnMut(&Request)) {
    let mut seen: Vec<*const Request> = Vec::new();
    for item in batch {
        let p = Arc::as_ptr(&item.req);
        if !seen.contains(&p) {
            seen.push(p);
            f(&item.req);
        }
    }
}

/// Hands each pair's logit to its request; answers requests that are complete.
fn deliver(batch: &[Item], result: Result<Vec<f32>, ModelError>, info: &BatchInfo, layout: Layout) {
    // A scorer that returns the wrong number of logits fails the batch; indexing past
    // the end would end the scheduler and leave every waiting call hanging.
    let result = result.and_then(|l| {
        if l.len() == batch.len() {
            Ok(l)
        } else {
            Err(ModelError::Internal(format!(
                "{} logits for a batch of {}",
                l.len(),
                batch.len()
            )))
        }
    });
    let per_pair_padded = info.padded_tokens / info.pairs.max(1);
    let mut seen: Vec<*const Request> = Vec::new();
    for (k, item) in batch.iter().enumerate() {
        let p = Arc::as_ptr(&item.req);
        let first = !seen.contains(&p);
        if first {
            seen.push(p);
            if let Some(h) = &item.req.hooks {
                h.batch_finished(info);
            }
        }
        let logits = match &result {
            Ok(l) => l,
            Err(e) => {
                item.req.fail(BatchError::Inference(e.to_string()));
                continue;
            }
        };
        let mut s = item.req.lock();
        if first {
            s.outcome.queue = info.started.duration_since(item.req.enqueued);
            s.outcome.inference += info.duration;
            s.outcome.batches += 1;
        }
        s.logits[item.index] = logits[k];
        s.outcome.real_tokens += item.enc.len() as u64;
        s.outcome.padded_tokens += match layout {
            Layout::Packed => item.enc.len(),
            Layout::Padded => per_pair_padded,
        } as u64;
        s.remaining -= 1;
        if s.remaining == 0
            && let Some(tx) = s.reply.take()
        {
            let mut outcome = std::mem::take(&mut s.outcome);
            outcome.logits = std::mem::take(&mut s.logits);
            let _ = tx.send(Ok(outcome));
        }
    }
}

/// Waits until a batch closes (or shutdown with an empty queue: `None`).
async fn next_batch(shared: &Shared) -> Option<Vec<Item>> {
    let cfg = &shared.cfg;
    loop {
        // Registered before the queue is read, so a wake-up between the read and the
        // wait is not lost.
        let woken = shared.wake.notified();
        tokio::pin!(woken);
        woken.as_mut().enable();
        let wait_until = {
            let mut q = shared.lock();
            drop_dead(shared, &mut q);
            if q.items.is_empty() {
                if q.shutdown {
                    return None;
                }
                None
            } else {
                let now = Instant::now();
                let due = q.items.front().map(|i| i.req.enqueued + cfg.timeout);
                let ready = match cfg.policy {
                    BatchPolicy::Eager => true,
                    BatchPolicy::Deadline => {
                        q.items.len() >= cfg.max_batch
                            || q.shutdown
                            || due.is_some_and(|d| now >= d)
                    }
                };
                if ready {
                    let batch = take_batch(shared, &mut q);
                    shared.queued.store(q.items.len(), Ordering::Relaxed);
                    return Some(batch);
                }
                // Wake at the timeout, or at the earliest deadline of a waiting
                // request (so it leaves the queue on time), or on a new arrival.
                let mut until = due.unwrap_or(now + cfg.timeout);
                if let Some(d) = q.items.iter().filter_map(|i| i.req.deadline).min() {
                    until = until.min(d);
                }
                Some(until)
            }
        };
        match wait_until {
            Some(t) => {
                tokio::select! {
                    _ = &mut woken => {}
                    _ = tokio::time::sleep_until(t) => {}
                }
            }
            None => woken.await,
        }
    }
}

/// Removes pairs of requests that were cancelled, answered, or are past their deadline.
fn drop_dead(shared: &Shared, q: &mut Queue) {
    let now = Instant::now();
    let before = q.items.len();
    q.items.retain(|item| {
        if let Some(d) = item.req.deadline
            && now >= d
        {
            item.req.fail(BatchError::DeadlineExceeded {
                waited_ms: now.duration_since(item.req.enqueued).as_millis() as u64,
            });
            return false;
        }
        !item.req.is_dead()
    });
    if q.items.len() != before {
        shared.queued.store(q.items.len(), Ordering::Relaxed);
    }
}

/// Picks the next batch: the oldest pair, plus the waiting pairs closest to it in
/// length (when grouping) or next in arrival order, within the pair and token limits.
fn take_batch(shared: &Shared, q: &mut Queue) -> Vec<Item> {
    let cfg = &shared.cfg;
    let n = q.items.len();
    let mut chosen: Vec<usize> = Vec::with_capacity(cfg.max_batch.min(n));
    let fits = |chosen: &[usize], extra: usize, items: &VecDeque<Item>| -> bool {
        let lens = chosen.iter().map(|&i| items[i].enc.len()).chain([extra]);
        let (count, longest, sum) = lens.fold((0, 0, 0), |(c, m, s), l| (c + 1, m.max(l), s + l));
        count <= cfg.max_batch && shared.cost(count, longest, sum) <= cfg.max_batch_tokens
    };
    chosen.push(0); // the oldest always runs, whatever its size
    if cfg.group_by_length {
        // Nearest lengths first, ties by arrival: a short pair is not held behind
        // long ones, and the oldest bounds how long anything waits.
        let anchor = q.items[0].enc.len() as i64;
        let mut order: Vec<usize> = (1..n).collect();
        order.sort_by_key(|&i| ((q.items[i].enc.len() as i64 - anchor).abs(), i));
        for i in order {
            if chosen.len() >= cfg.max_batch {
                break;
            }
            if fits(&chosen, q.items[i].enc.len(), &q.items) {
                chosen.push(i);
            }
        }
    } else {
        for i in 1..n {
            if chosen.len() >= cfg.max_batch || !fits(&chosen, q.items[i].enc.len(), &q.items) {
                break;
            }
            chosen.push(i);
        }
    }
    chosen.sort_unstable();
    let mut batch = Vec::with_capacity(chosen.len());
    for (removed, i) in chosen.into_iter().enumerate() {
        if let Some(item) = q.items.remove(i - removed) {
            batch.push(item);
        }
    }
    batch
}
