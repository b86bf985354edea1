//! The dynamic batcher: tokenized pairs wait in a bounded queue; one scheduler task
//! takes batches out and runs each forward pass on the blocking pool, one at a time.
//! Time is tokio's (`tokio::time::Instant`, `sleep_until`), so tests run it against a
//! fake scorer under paused time, in milliseconds and without sleeps.
//!
//! A batch closes when it holds `max_batch` pairs, or (policy `deadline`) `timeout`
//! after its oldest pair arrived, whichever comes first; policy `eager` sends whatever
//! waits as soon as the model is free (`policy`). A batch never exceeds
//! `max_batch_tokens` computed tokens, save a single pair that alone exceeds it. A call
//! that has not had a batch yet goes first, so a small call is not held behind the rest
//! of a large one; a batch that leaves out the queue's oldest pair is followed by one
//! that starts with it, so a pair queued with `p` pairs ahead of it runs within
//! `2p + 1` batches, under every policy and limit (`schedule` states and proves it).
//! A request's pairs may span batches; its scores come back in order. Calls whose
//! deadline passed or that were cancelled leave the queue before inference.
//!
//! A panic in a batch's path fails that batch's calls, not the server. Should the
//! scheduler itself stop, every waiting call gets UNAVAILABLE at once and
//! [`Batcher::failure`] says why (the server then reports NOT_SERVING)
//! (`supervise`).
//!
//! Where each job lives: `policy` (when a batch closes), `schedule` (which pairs go
//! in it), `scheduler` (the task that runs batches), `deliver` (scores back to their
//! calls), `supervise` (no call left waiting), `queue` (the shared state).

mod deliver;
mod policy;
mod queue;
mod schedule;
mod scheduler;
mod supervise;

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{Notify, oneshot, watch};
use tokio::time::Instant;

use crossbatch_model::{Encoded, Scorer};

pub use policy::BatchPolicy;
use queue::{Cost, Item, Queue, Request, RequestState, Shared};

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

/// Lets the caller attach spans to the request's queue wait and inference.
pub trait RequestHooks: Send + Sync {
    fn batch_started(&self, _batch: &BatchInfo) {}
    fn batch_finished(&self, _batch: &BatchInfo) {}
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
    /// Waits until the scheduler has drained the queue and exited. After
    /// [`Batcher::abort`] that still waits for the forward pass in progress, if any.
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
            cost: Cost {
                layout: model.layout(),
                max_positions: model.limits().max_positions,
            },
            cfg,
            queue: Mutex::new(Queue {
                items: VecDeque::new(),
                shutdown: false,
                flushing: false,
                aborted: None,
                in_flight: Vec::new(),
                passed_over_oldest: false,
            }),
            wake: Notify::new(),
            next_batch: AtomicU64::new(1),
            queued: Default::default(),
            failure: watch::Sender::new(None),
        });
        let handle = supervise::spawn(Arc::clone(&shared), model, observer);
        (Self { shared }, BatcherThread { handle })
    }

    pub fn config(&self) -> &BatcherConfig {
        &self.shared.cfg
    }

    /// Pairs the queue holds at most (`max_queue_pairs`): what admission counts
    /// against.
    pub fn capacity(&self) -> usize {
        self.shared.cfg.max_queue_pairs
    }

    /// Pairs waiting now.
    pub fn queued_pairs(&self) -> usize {
        self.shared.queued.load(Ordering::Relaxed)
    }

    /// `Some(reason)` once the scheduler has stopped for good (never on shutdown or
    /// [`Batcher::abort`]).
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
        if let Some(why) = &q.aborted {
            return Err(BatchError::Unavailable(why.clone()));
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
        self.shared.count(&q);
        drop(q);
        self.shared.wake.notify_one();
        Ok(pending)
    }

    /// The server is draining: from now on a batch closes as soon as the model is free
    /// (no waiting for a fuller one), while calls already on their way are still
    /// taken. [`Batcher::shutdown`] follows once no call can arrive.
    pub fn flush(&self) {
        self.shared.lock().flushing = true;
        self.shared.wake.notify_one();
    }

    /// Stops taking requests; the scheduler finishes what is queued, then exits.
    pub fn shutdown(&self) {
        self.shared.lock().shutdown = true;
        self.shared.wake.notify_one();
    }

    /// Gives up on the work that waits: every waiting call, queued or in the forward
    /// pass now running, gets [`BatchError::Unavailable`] with `why` at once, and so
    /// does every later [`Batcher::submit`]. For a bounded drain after its timeout.
    /// The scheduler exits once the forward pass in progress (if any) returns.
    ///
    /// [`Batcher::failure`] stays as it was: it reports a scheduler that stopped by
    /// itself (health turns NOT_SERVING), while an abort is the server's own decision
    /// and its caller says why.
    pub fn abort(&self, why: &str) {
        let answered = self.shared.close(why);
        tracing::warn!(calls = answered, reason = why, "the batcher was aborted");
    }
}
