//! The dynamic batcher: tokenized pairs wait in a bounded queue; one scheduler task
//! takes batches out and runs each forward pass on the blocking pool, one at a time.
//! Time is tokio's (`tokio::time::Instant`, `sleep_until`), so tests run it against a
//! fake scorer under paused time, in milliseconds and without sleeps.
//!
//! A batch closes when it holds `max_batch` pairs, or (policy `deadline`) `timeout`
//! after its oldest pair arrived, whichever comes first; policy `eager` sends whatever
//! waits as soon as the model is free. A batch never exceeds `max_batch_tokens`
//! computed tokens. A call that has not had a batch yet goes first (so a small call is
//! not held behind the rest of a large one), then the oldest waiting pair (so nothing
//! waits forever); the rest are chosen by similar length (less padding). A request's
//! pairs may span batches; its scores come back in order. Calls whose deadline passed
//! or that were cancelled leave the queue before inference.
//!
//! A panic in a batch's path fails that batch's calls, not the server. Should the
//! scheduler itself stop, every waiting call gets UNAVAILABLE at once and
//! [`Batcher::failure`] says why (the server then reports NOT_SERVING).

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::sync::{Notify, oneshot, watch};
use tokio::time::Instant;

use crossbatch_model::{Encoded, Layout, ModelError, Scorer, padded_len, panic_message};

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum BatchPolicy {
    /// `eager` on the CPU, `deadline` on a GPU (the default; see [`BatchPolicy::resolve`]).
    Auto,
    /// Wait up to the timeout for a full batch.
    Deadline,
    /// Run whatever waits as soon as the model is free (text-embeddings-inference's way).
    Eager,
    /// No merging: every call is its own forward pass (split only by the batch
    /// limits), as soon as the model is free. The "dynamic batching off" baseline.
    None,
}

impl BatchPolicy {
    /// The policy `auto` stands for on a backend. On a GPU a fuller batch costs little
    /// more than a small one, so waiting for one pays. On the CPU the cost per pair
    /// hardly falls past a batch of 8 (README, "The model alone"), so a batch waiting
    /// for company only leaves the cores idle: measured, `eager` served more than
    /// `deadline` at every load `bench-serve` runs.
    pub fn resolve(self, backend: crossbatch_model::backend::BackendKind) -> Self {
        use crossbatch_model::backend::BackendKind;
        match (self, backend) {
            (Self::Auto, BackendKind::Cpu) => Self::Eager,
            (Self::Auto, BackendKind::Wgpu) => Self::Deadline,
            (other, _) => other,
        }
    }
}

impl std::fmt::Display for BatchPolicy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Auto => "auto",
            Self::Deadline => "deadline",
            Self::Eager => "eager",
            Self::None => "none",
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
    #[error("{}", deadline_message(*waited_ms, *scored, *total))]
    DeadlineExceeded {
        waited_ms: u64,
        /// Pairs of the call already scored when the deadline passed.
        scored: usize,
        total: usize,
    },
    #[error("the server is shutting down")]
    ShuttingDown,
    #[error("inference failed: {0}")]
    Inference(String),
    #[error("the model is unavailable: {0}")]
    Unavailable(String),
}

fn deadline_message(waited_ms: u64, scored: usize, total: usize) -> String {
    if scored == 0 {
        format!("deadline exceeded after {waited_ms} ms in the queue (no pair of the call had run)")
    } else {
        format!(
            "deadline exceeded after {waited_ms} ms: {scored} of the call's {total} pairs were scored, the rest had not run"
        )
    }
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
    /// Some batch has held pairs of this request (it no longer goes first).
    had_batch: AtomicBool,
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

    /// Pairs scored so far, and the call's size.
    fn progress(&self) -> (usize, usize) {
        let s = self.lock();
        (s.logits.len() - s.remaining, s.logits.len())
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
    /// Set once if the scheduler stops for good: why.
    failure: watch::Sender<Option<String>>,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Queue> {
        self.queue.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The scheduler cannot go on: every waiting call gets UNAVAILABLE now, new ones
    /// are refused, and [`Batcher::failure`] turns to `Some`.
    fn fail_all(&self, why: String) {
        tracing::error!(reason = %why, "the batcher stopped; failing every waiting call");
        let items: Vec<Item> = {
            let mut q = self.lock();
            q.shutdown = true;
            q.items.drain(..).collect()
        };
        self.queued.store(0, Ordering::Relaxed);
        for item in &items {
            item.req.fail(BatchError::Unavailable(why.clone()));
        }
        self.failure.send_replace(Some(why));
    }

    /// Tokens the forward pass computes for these lengths.
    fn cost(&self, count: usize, longest: usize, sum: usize) -> usize {
        match self.layout {
            Layout::Packed => sum,
            Layout::Padded => count * padded_len(longest, self.max_positions),
        }
    }
}

/// A submitted call: its reply, and how far it got.
pub struct Pending {
    pub reply: oneshot::Receiver<Result<Outcome, BatchError>>,
    pub progress: CallProgress,
}

/// How far a submitted call got.
pub struct CallProgress(Arc<Request>);

impl CallProgress {
    /// Pairs scored so far, and the call's size.
    pub fn get(&self) -> (usize, usize) {
        self.0.progress()
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
            failure: watch::Sender::new(None),
        });
        let scheduler = tokio::spawn(run(Arc::clone(&shared), model, observer));
        let supervised = Arc::clone(&shared);
        let handle = tokio::spawn(async move {
            let why = match scheduler.await {
                Ok(Ok(())) => return,
                Ok(Err(why)) => why,
                Err(e) if e.is_panic() => format!(
                    "the batch scheduler panicked: {}",
                    panic_message(&*e.into_panic(), "no message")
                ),
                Err(e) => format!("the batch scheduler ended: {e}"),
            };
            supervised.fail_all(why);
        });
        (Self { shared }, BatcherThread { handle })
    }

    pub fn config(&self) -> &BatcherConfig {
        &self.shared.cfg
    }

    /// Pairs waiting now.
    pub fn queued_pairs(&self) -> usize {
        self.shared.queued.load(Ordering::Relaxed)
    }

    /// `Some(reason)` once the scheduler has stopped for good (never on shutdown).
    pub fn failure(&self) -> watch::Receiver<Option<String>> {
        self.shared.failure.subscribe()
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
        self.submit_tracked(encoded, deadline, hooks)
            .map(|p| p.reply)
    }

    /// [`Batcher::submit`], keeping a handle that can tell how far the call got.
    pub fn submit_tracked(
        &self,
        encoded: Vec<Encoded>,
        deadline: Option<Instant>,
        hooks: Option<Arc<dyn RequestHooks>>,
    ) -> Result<Pending, BatchError> {
        let (tx, rx) = oneshot::channel();
        let n = encoded.len();
        let req = Arc::new(Request {
            deadline,
            enqueued: Instant::now(),
            had_batch: AtomicBool::new(false),
            state: Mutex::new(RequestState {
                logits: vec![0.0; n],
                remaining: n,
                outcome: Outcome::default(),
                reply: Some(tx),
            }),
            hooks,
        });
        let pending = Pending {
            reply: rx,
            progress: CallProgress(Arc::clone(&req)),
        };
        if n == 0 {
            if let Some(tx) = req.lock().reply.take() {
                let _ = tx.send(Ok(Outcome::default()));
            }
            return Ok(pending);
        }
        let mut q = self.shared.lock();
        if let Some(why) = self.shared.failure.borrow().clone() {
            return Err(BatchError::Unavailable(why));
        }
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
        Ok(pending)
    }

    /// Stops taking requests; the scheduler finishes what is queued, then exits.
    pub fn shutdown(&self) {
        self.shared.lock().shutdown = true;
        self.shared.wake.notify_one();
    }
}

/// The scheduler: wait for a batch to close, run it on the blocking pool, answer its
/// requests. A panic in a batch's path (the forward pass, a hook, the observer,
/// delivery) fails that batch's calls, not the server. Returns `Err` only when it
/// cannot go on.
async fn run(
    shared: Arc<Shared>,
    model: Arc<dyn Scorer>,
    observer: Arc<dyn BatchObserver>,
) -> Result<(), String> {
    loop {
        let Some(batch) = next_batch(&shared).await else {
            return Ok(());
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
        let started = caught(|| {
            for_each_request(&batch, |req| {
                if let Some(h) = &req.hooks {
                    h.batch_started(&info);
                }
            })
        });
        if let Err(why) = started {
            fail_batch(&batch, id, "a batch-start hook", why);
            continue;
        }
        let model = Arc::clone(&model);
        let (batch, result) = match tokio::task::spawn_blocking(move || {
            let refs: Vec<&Encoded> = batch.iter().map(|i| &i.enc).collect();
            let result = caught(|| model.forward(&refs))
                .unwrap_or_else(|why| Err(ModelError::Inference(why)));
            drop(refs);
            (batch, result)
        })
        .await
        {
            Ok(done) => done,
            // The closure catches panics: only a runtime shutting down gets here, and
            // the batch's calls went with it.
            Err(e) => return Err(format!("the forward pass task ended without a result: {e}")),
        };
        info.duration = info.started.elapsed();
        info.ok = result.is_ok();
        if let Err(e) = &result {
            tracing::error!(batch = id, pairs = info.pairs, error = %e, "forward pass failed");
        }
        if let Err(why) = caught(|| observer.batch_done(&info)) {
            tracing::error!(batch = id, "the batch observer panicked: {why}");
        }
        if let Err(why) = caught(|| deliver(&batch, result, &info, shared.layout)) {
            fail_batch(&batch, id, "delivering the scores", why);
        }
    }
}

/// Runs `f`, turning a panic into its message.
fn caught<T>(f: impl FnOnce() -> T) -> Result<T, String> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(f))
        .map_err(|panic| panic_message(&*panic, "no message"))
}

/// Fails every call of the batch not yet answered (INTERNAL), logged once per batch.
fn fail_batch(batch: &[Item], id: u64, stage: &str, why: String) {
    tracing::error!(
        batch = id,
        "{stage} panicked: {why}; failing the batch's calls"
    );
    for item in batch {
        item.req
            .fail(BatchError::Inference(format!("{stage} panicked: {why}")));
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
                    // `auto` is resolved before the batcher starts; unresolved, it is eager.
                    BatchPolicy::Eager | BatchPolicy::None | BatchPolicy::Auto => true,
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
            let (scored, total) = item.req.progress();
            item.req.fail(BatchError::DeadlineExceeded {
                waited_ms: now.duration_since(item.req.enqueued).as_millis() as u64,
                scored,
                total,
            });
            return false;
        }
        !item.req.is_dead()
    });
    if q.items.len() != before {
        shared.queued.store(q.items.len(), Ordering::Relaxed);
    }
}

/// Picks the next batch: first the oldest call that has not had a batch yet (a small
/// call arriving behind a large one runs next, not after it), then the oldest pair
/// (so nothing waits forever), then the waiting pairs closest in length to the first
/// (when grouping) or next in arrival order, within the pair and token limits.
fn take_batch(shared: &Shared, q: &mut Queue) -> Vec<Item> {
    let cfg = &shared.cfg;
    let n = q.items.len();
    let mut chosen: Vec<usize> = Vec::with_capacity(cfg.max_batch.min(n));
    let fits = |chosen: &[usize], extra: usize, items: &VecDeque<Item>| -> bool {
        let lens = chosen.iter().map(|&i| items[i].enc.len()).chain([extra]);
        let (count, longest, sum) = lens.fold((0, 0, 0), |(c, m, s), l| (c + 1, m.max(l), s + l));
        count <= cfg.max_batch && shared.cost(count, longest, sum) <= cfg.max_batch_tokens
    };
    let first = q
        .items
        .iter()
        .position(|i| !i.req.had_batch.load(Ordering::Relaxed))
        .unwrap_or(0);
    chosen.push(first); // runs whatever its size
    if cfg.policy == BatchPolicy::None {
        // That call's pairs only, in order.
        let call = Arc::clone(&q.items[first].req);
        for i in first + 1..n {
            if !Arc::ptr_eq(&q.items[i].req, &call) {
                continue;
            }
            if chosen.len() >= cfg.max_batch || !fits(&chosen, q.items[i].enc.len(), &q.items) {
                break;
            }
            chosen.push(i);
        }
        return remove_chosen(q, chosen);
    }
    if first != 0 && fits(&chosen, q.items[0].enc.len(), &q.items) {
        chosen.push(0);
    }
    if cfg.group_by_length {
        // Nearest lengths first, ties by arrival: a short pair is not held behind
        // long ones, and the oldest bounds how long anything waits.
        let anchor = q.items[first].enc.len() as i64;
        let mut order: Vec<usize> = (0..n).filter(|i| !chosen.contains(i)).collect();
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
        for i in 0..n {
            if chosen.contains(&i) {
                continue;
            }
            if chosen.len() >= cfg.max_batch || !fits(&chosen, q.items[i].enc.len(), &q.items) {
                break;
            }
            chosen.push(i);
        }
    }
    remove_chosen(q, chosen)
}

/// Takes the chosen items out of the queue, in queue order, marking their calls.
fn remove_chosen(q: &mut Queue, mut chosen: Vec<usize>) -> Vec<Item> {
    chosen.sort_unstable();
    let mut batch = Vec::with_capacity(chosen.len());
    for (removed, i) in chosen.into_iter().enumerate() {
        if let Some(item) = q.items.remove(i - removed) {
            item.req.had_batch.store(true, Ordering::Relaxed);
            batch.push(item);
        }
    }
    batch
}
