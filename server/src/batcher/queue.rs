//! What the handle and the scheduler share: the queue of waiting pairs, each call's
//! progress, and what a batch costs.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::{Notify, oneshot, watch};
use tokio::time::Instant;

use crossbatch_model::{Encoded, Layout, padded_len};

use super::{BatchError, BatcherConfig, Outcome, RequestHooks};

/// Per-request state shared by its queued pairs.
pub(super) struct Request {
    pub deadline: Option<Instant>,
    pub enqueued: Instant,
    /// Some batch has held pairs of this request (it no longer goes first).
    pub had_batch: AtomicBool,
    pub state: Mutex<RequestState>,
    /// Per-request hook, run by the scheduler when one of its batches starts and ends.
    pub hooks: Option<Arc<dyn RequestHooks>>,
}

pub(super) struct RequestState {
    pub logits: Vec<f32>,
    pub remaining: usize,
    pub outcome: Outcome,
    pub reply: Option<oneshot::Sender<Result<Outcome, BatchError>>>,
}

impl Request {
    pub fn lock(&self) -> MutexGuard<'_, RequestState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// True when nobody waits for this request any more (answered, cancelled).
    pub fn is_dead(&self) -> bool {
        let s = self.lock();
        match &s.reply {
            None => true,
            Some(tx) => tx.is_closed(),
        }
    }

    /// Pairs scored so far, and the call's size.
    pub fn progress(&self) -> (usize, usize) {
        let s = self.lock();
        (s.logits.len() - s.remaining, s.logits.len())
    }

    /// Answers the call with `err` unless it was answered already.
    pub fn fail(&self, err: BatchError) {
        if let Some(tx) = self.lock().reply.take() {
            let _ = tx.send(Err(err));
        }
    }
}

/// One waiting pair: the `index`th of its request.
pub(super) struct Item {
    pub enc: Encoded,
    pub index: usize,
    pub req: Arc<Request>,
}

pub(super) struct Queue {
    /// In arrival order; new pairs join at the back (the starvation bound rests on it).
    pub items: VecDeque<Item>,
    /// No new calls: shutting down (what waits still runs) or aborted (nothing waits).
    pub shutdown: bool,
    /// Draining: batches close without waiting for company (calls still arrive from
    /// connections that are finishing), so a drain is not held by the batch timeout.
    pub flushing: bool,
    /// Why [`super::Batcher::abort`] was called: new calls get it as UNAVAILABLE.
    pub aborted: Option<String>,
    /// The calls of the batch being run, so an abort can answer them too.
    pub in_flight: Vec<Arc<Request>>,
    /// The last batch did not hold the queue's oldest pair, so the next one starts
    /// with it (see `schedule`).
    pub passed_over_oldest: bool,
}

/// Tokens a forward pass computes for a batch.
#[derive(Debug, Clone, Copy)]
pub(super) struct Cost {
    pub layout: Layout,
    pub max_positions: usize,
}

impl Cost {
    /// For `count` pairs, the longest `longest` tokens, `sum` tokens in all.
    pub fn tokens(self, count: usize, longest: usize, sum: usize) -> usize {
        match self.layout {
            Layout::Packed => sum,
            Layout::Padded => count * padded_len(longest, self.max_positions),
        }
    }
}

pub(super) struct Shared {
    pub cfg: BatcherConfig,
    pub cost: Cost,
    pub queue: Mutex<Queue>,
    /// Wakes the scheduler: a new arrival, shutdown or abort.
    pub wake: Notify,
    pub next_batch: AtomicU64,
    /// Pairs waiting, readable without the queue's lock.
    pub queued: AtomicUsize,
    /// Set once if the scheduler stops for good: why.
    pub failure: watch::Sender<Option<String>>,
}

impl Shared {
    pub fn lock(&self) -> MutexGuard<'_, Queue> {
        self.queue.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Publishes the queue's length after a change.
    pub fn count(&self, q: &Queue) {
        self.queued.store(q.items.len(), Ordering::Relaxed);
    }

    /// Removes pairs of requests that were cancelled, answered, or are past their
    /// deadline (those are answered DEADLINE_EXCEEDED here).
    pub fn drop_dead(&self, q: &mut Queue) {
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
            self.count(q);
        }
    }
}
