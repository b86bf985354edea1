//! Handing a batch's logits back to their calls, and failing a batch.

use std::sync::Arc;

use crossbatch_model::{Layout, ModelError};

use super::queue::{Item, Request};
use super::{BatchError, BatchInfo};

/// Hands each pair's logit to its request; answers requests that are complete.
pub(super) fn deliver(
    batch: &[Item],
    result: Result<Vec<f32>, ModelError>,
    info: &BatchInfo,
    layout: Layout,
) {
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

/// Fails every call of the batch not yet answered (INTERNAL), logged once per batch.
pub(super) fn fail_batch(batch: &[Item], id: u64, stage: &str, why: String) {
    tracing::error!(
        batch = id,
        "{stage} panicked: {why}; failing the batch's calls"
    );
    for item in batch {
        item.req
            .fail(BatchError::Inference(format!("{stage} panicked: {why}")));
    }
}

/// The distinct requests of a batch, in batch order.
pub(super) fn requests(batch: &[Item]) -> Vec<Arc<Request>> {
    let mut seen: Vec<Arc<Request>> = Vec::new();
    for item in batch {
        if !seen.iter().any(|r| Arc::ptr_eq(r, &item.req)) {
            seen.push(Arc::clone(&item.req));
        }
    }
    seen
}
