//! The scheduler task: wait until a batch closes, take it, run its forward pass on
//! the blocking pool, hand the results on. One batch at a time.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio::time::Instant;

use crossbatch_model::{Encoded, ModelError, Scorer, panic_message};

use super::deliver::{deliver, fail_batch, requests};
use super::queue::{Item, Shared};
use super::schedule::take_batch;
use super::{BatchInfo, BatchObserver};

/// Runs batches until shutdown has drained the queue. A panic in a batch's path (the
/// forward pass, a hook, the observer, delivery) fails that batch's calls, not the
/// server. Returns `Err` only when it cannot go on.
pub(super) async fn run(
    shared: Arc<Shared>,
    model: Arc<dyn Scorer>,
    observer: Arc<dyn BatchObserver>,
) -> Result<(), String> {
    loop {
        let Some(batch) = next_batch(&shared).await else {
            return Ok(());
        };
        let done = run_batch(&shared, &model, &*observer, batch).await;
        shared.lock().in_flight.clear();
        done?;
    }
}

/// One batch: start hooks, the forward pass, the observer, delivery.
async fn run_batch(
    shared: &Shared,
    model: &Arc<dyn Scorer>,
    observer: &dyn BatchObserver,
    batch: Vec<Item>,
) -> Result<(), String> {
    let id = shared.next_batch.fetch_add(1, Ordering::Relaxed);
    let real: usize = batch.iter().map(|i| i.enc.len()).sum();
    let longest = batch.iter().map(|i| i.enc.len()).max().unwrap_or(0);
    let mut info = BatchInfo {
        id,
        pairs: batch.len(),
        real_tokens: real,
        padded_tokens: shared.cost.tokens(batch.len(), longest, real),
        started: Instant::now(),
        duration: Duration::ZERO,
        ok: true,
    };
    let started = caught(|| {
        for req in requests(&batch) {
            if let Some(h) = &req.hooks {
                h.batch_started(&info);
            }
        }
    });
    if let Err(why) = started {
        fail_batch(&batch, id, "a batch-start hook", why);
        return Ok(());
    }
    let model = Arc::clone(model);
    let (batch, result) = match tokio::task::spawn_blocking(move || {
        let refs: Vec<&Encoded> = batch.iter().map(|i| &i.enc).collect();
        let result =
            caught(|| model.forward(&refs)).unwrap_or_else(|why| Err(ModelError::Inference(why)));
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
    if let Err(why) = caught(|| deliver(&batch, result, &info, shared.cost.layout)) {
        fail_batch(&batch, id, "delivering the scores", why);
    }
    Ok(())
}

/// Runs `f`, turning a panic into its message.
fn caught<T>(f: impl FnOnce() -> T) -> Result<T, String> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(f))
        .map_err(|panic| panic_message(&*panic, "no message"))
}

/// Waits until a batch closes (or shutdown with an empty queue: `None`), takes it out
/// of the queue and records its calls as in flight.
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
            shared.drop_dead(&mut q);
            match q.items.front() {
                None if q.shutdown => return None,
                None => None,
                Some(oldest) => {
                    let now = Instant::now();
                    let due = oldest.req.enqueued + cfg.timeout;
                    if cfg.policy.closes(
                        q.items.len(),
                        cfg.max_batch,
                        q.shutdown || q.flushing,
                        due,
                        now,
                    ) {
                        let batch = take_batch(cfg, shared.cost, &mut q);
                        q.in_flight = requests(&batch);
                        shared.count(&q);
                        return Some(batch);
                    }
                    // Wake at the timeout, or at the earliest deadline of a waiting
                    // request (so it leaves the queue on time), or on a new arrival.
                    let earliest = q.items.iter().filter_map(|i| i.req.deadline).min();
                    Some(earliest.map_or(due, |d| d.min(due)))
                }
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
