//! Supervision: when the scheduler stops for good, or the server gives up on a drain,
//! no call is left waiting.

use std::sync::Arc;

use crossbatch_model::{Scorer, panic_message};

use super::queue::Shared;
use super::scheduler::run;
use super::{BatchError, BatchObserver};

/// Starts the scheduler, and a supervisor that fails every waiting call should the
/// scheduler end other than by a drained shutdown. Returns the supervisor's task.
pub(super) fn spawn(
    shared: Arc<Shared>,
    model: Arc<dyn Scorer>,
    observer: Arc<dyn BatchObserver>,
) -> tokio::task::JoinHandle<()> {
    let scheduler = tokio::spawn(run(Arc::clone(&shared), model, observer));
    tokio::spawn(async move {
        let why = match scheduler.await {
            Ok(Ok(())) => return,
            Ok(Err(why)) => why,
            Err(e) if e.is_panic() => format!(
                "the batch scheduler panicked: {}",
                panic_message(&*e.into_panic(), "no message")
            ),
            Err(e) => format!("the batch scheduler ended: {e}"),
        };
        shared.fail_all(why);
    })
}

impl Shared {
    /// The scheduler cannot go on: every waiting call gets UNAVAILABLE now, new ones
    /// are refused, and [`super::Batcher::failure`] turns to `Some`.
    pub fn fail_all(&self, why: String) {
        tracing::error!(reason = %why, "the batcher stopped; failing every waiting call");
        self.close(&why);
        self.failure.send_replace(Some(why));
    }

    /// Every waiting call, queued or in the batch being run, gets UNAVAILABLE with
    /// `why` now, and so does every new one. Returns how many calls were answered.
    pub fn close(&self, why: &str) -> usize {
        let (items, running) = {
            let mut q = self.lock();
            q.shutdown = true;
            q.aborted.get_or_insert_with(|| why.to_owned());
            let items: Vec<_> = q.items.drain(..).collect();
            self.count(&q);
            (items, std::mem::take(&mut q.in_flight))
        };
        // A batch that was running when the call closed may still finish; its calls
        // were answered here, and delivery skips answered calls.
        let mut answered = 0;
        let calls = running.iter().chain(items.iter().map(|i| &i.req));
        for req in calls {
            if !req.is_dead() {
                answered += 1;
            }
            req.fail(BatchError::Unavailable(why.to_owned()));
        }
        // Wakes the scheduler so it sees the empty, closed queue and exits.
        self.wake.notify_one();
        answered
    }
}
