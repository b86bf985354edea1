//! Which waiting pairs make the next batch, and how long any pair can wait.
//!
//! A batch starts with its *anchor*, which runs whatever its size (so a pair over
//! `max_batch_tokens` runs alone). The anchor is normally the first waiting pair of
//! the oldest call that has not had a batch yet, so a small call arriving behind a
//! large one runs next, not after it; the queue's oldest pair joins it if it fits;
//! then the pairs nearest in length to the anchor (`group_by_length`) or next in
//! arrival order fill the batch, within `max_batch` pairs and `max_batch_tokens`.
//! Policy `none` takes only the anchor's call's pairs, in order.
//!
//! That rule can pass over the oldest pair: under `none` (another call's pairs never
//! join), at `max_batch` 1, or when the token budget cannot hold the oldest pair
//! beside the anchor. A call that already had a batch could then wait as long as
//! fresh calls keep coming. So a batch that did not hold the queue's oldest pair is
//! always followed by one anchored on the (then) oldest pair; the oldest new call's
//! first pair joins that one if it fits.
//!
//! **The bound.** A pair queued with `p` pairs ahead of it runs in one of the first
//! `2p + 1` batches taken after it was queued, whatever the policy, the limits and
//! the arrivals. The queue holds at most `max_queue_pairs`, so `p < max_queue_pairs`:
//! no pair waits more than `2 * max_queue_pairs - 1` batches.
//!
//! Proof. The queue keeps arrival order and new pairs join at its back, so the pairs
//! ahead of ours only ever leave (run, cancelled, expired) and none join. The first
//! batch after ours was queued removes one of them, or ours: our call has not had a
//! batch yet, so the oldest new call starts at or before ours, and the anchor is that
//! call's first pair or the oldest pair. From then on, of any two consecutive batches
//! at least one holds the queue's oldest pair, since a batch that does not makes the
//! next one start with it; while ours waits, that oldest pair is one of those ahead
//! of it or ours. So after the first batch at most `p - 1` are ahead, every two
//! batches remove one of them or run ours, and ours runs by batch `1 + 2p`.
//!
//! The bound is reached: at `max_batch` 1 with a fresh call arriving before every
//! batch, batches alternate between the fresh calls and the oldest pair
//! (`the_bound_is_reached_and_not_passed` below). When every batch has room for the
//! oldest pair beside the anchor (policy `eager` or `deadline`, `max_batch` at least
//! 2, a token budget for both), nothing is passed over and it falls to `p + 1`.
//!
//! Batches keep coming while a pair waits: `eager` and `none` take one whenever the
//! model is free, `deadline` at the latest its timeout after the oldest pair arrived.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use super::BatcherConfig;
use super::policy::BatchPolicy;
use super::queue::{Cost, Item, Queue};

/// Takes the next batch out of a non-empty queue (see the module docs).
pub(super) fn take_batch(cfg: &BatcherConfig, cost: Cost, q: &mut Queue) -> Vec<Item> {
    let items = &q.items;
    let n = items.len();
    let fits = |chosen: &[usize], extra: usize| fits_in(cfg, cost, items, chosen, extra);
    let first_new = items
        .iter()
        .position(|i| !i.req.had_batch.load(Ordering::Relaxed));
    // Index 0 is the oldest pair.
    let (anchor, second) = match first_new {
        Some(new) if q.passed_over_oldest => (0, new),
        Some(new) => (new, 0),
        None => (0, 0),
    };
    let mut chosen: Vec<usize> = Vec::with_capacity(cfg.max_batch.min(n));
    chosen.push(anchor);
    if cfg.policy == BatchPolicy::None {
        // The anchor's call's pairs only, in order.
        let call = &items[anchor].req;
        for (i, item) in items.iter().enumerate().skip(anchor + 1) {
            if !Arc::ptr_eq(&item.req, call) {
                continue;
            }
            if !fits(&chosen, i) {
                break;
            }
            chosen.push(i);
        }
    } else {
        if second != anchor && fits(&chosen, second) {
            chosen.push(second);
        }
        if cfg.group_by_length {
            // Nearest lengths first, ties by arrival: less padding on padded layouts.
            let len = items[anchor].enc.len() as i64;
            let mut order: Vec<usize> = (0..n).filter(|i| !chosen.contains(i)).collect();
            order.sort_by_key(|&i| ((items[i].enc.len() as i64 - len).abs(), i));
            for i in order {
                if chosen.len() >= cfg.max_batch {
                    break;
                }
                if fits(&chosen, i) {
                    chosen.push(i);
                }
            }
        } else {
            for i in 0..n {
                if chosen.contains(&i) {
                    continue;
                }
                if !fits(&chosen, i) {
                    break;
                }
                chosen.push(i);
            }
        }
    }
    q.passed_over_oldest = !chosen.contains(&0);
    remove_chosen(q, chosen)
}

/// Whether pair `extra` fits beside the `chosen` ones, in pairs and in tokens.
fn fits_in(
    cfg: &BatcherConfig,
    cost: Cost,
    items: &VecDeque<Item>,
    chosen: &[usize],
    extra: usize,
) -> bool {
    let lens = chosen.iter().chain([&extra]).map(|&i| items[i].enc.len());
    let (count, longest, sum) = lens.fold((0, 0, 0), |(c, m, s), l| (c + 1, m.max(l), s + l));
    count <= cfg.max_batch && cost.tokens(count, longest, sum) <= cfg.max_batch_tokens
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

#[cfg(test)]
mod tests {
    use std::sync::Mutex;
    use std::sync::atomic::AtomicBool;
    use std::time::Duration;

    use crossbatch_model::{Encoded, Layout};
    use tokio::sync::oneshot;
    use tokio::time::Instant;

    use super::*;
    use crate::batcher::Outcome;
    use crate::batcher::queue::{Request, RequestState};

    fn queue() -> Queue {
        Queue {
            items: VecDeque::new(),
            shutdown: false,
            flushing: false,
            aborted: None,
            in_flight: Vec::new(),
            passed_over_oldest: false,
        }
    }

    /// Queues a call of pairs with these ids and lengths; its reply is dropped (the
    /// scheduling rule never looks at it).
    fn push_call(q: &mut Queue, pairs: &[(u32, usize)]) {
        let (tx, _) = oneshot::channel();
        let req = Arc::new(Request {
            deadline: None,
            enqueued: Instant::now(),
            had_batch: AtomicBool::new(false),
            state: Mutex::new(RequestState {
                logits: vec![0.0; pairs.len()],
                remaining: pairs.len(),
                outcome: Outcome::default(),
                reply: Some(tx),
            }),
            hooks: None,
        });
        for (index, &(id, len)) in pairs.iter().enumerate() {
            q.items.push_back(Item {
                enc: Encoded {
                    ids: std::iter::once(id)
                        .chain(std::iter::repeat_n(0, len - 1))
                        .collect(),
                    type_ids: vec![0; len],
                },
                index,
                req: Arc::clone(&req),
            });
        }
    }

    fn ids(batch: &[Item]) -> Vec<u32> {
        batch.iter().map(|i| i.enc.ids[0]).collect()
    }

    fn config(policy: BatchPolicy, max_batch: usize, max_batch_tokens: usize) -> BatcherConfig {
        BatcherConfig {
            max_batch,
            timeout: Duration::from_millis(20),
            max_batch_tokens,
            max_queue_pairs: 32,
            policy,
            group_by_length: false,
        }
    }

    const PACKED: Cost = Cost {
        layout: Layout::Packed,
        max_positions: 512,
    };

    #[test]
    fn the_bound_is_reached_and_not_passed() {
        // One call of three pairs, then a fresh call before every batch. Its last pair
        // has 2 ahead of it: the bound is 2 * 2 + 1 = 5 batches, and it takes 5.
        let cfg = config(BatchPolicy::Eager, 1, 1 << 20);
        let mut q = queue();
        push_call(&mut q, &[(1, 3), (2, 3), (3, 3)]);
        assert_eq!(ids(&take_batch(&cfg, PACKED, &mut q)), vec![1]);
        let mut ran = Vec::new();
        // Bounded, so a scheduler that starves pair 3 fails here rather than hangs.
        for fresh in 100..110 {
            push_call(&mut q, &[(fresh, 3)]);
            let batch = ids(&take_batch(&cfg, PACKED, &mut q));
            ran.push(batch[0]);
            if batch == [3] {
                break;
            }
        }
        assert_eq!(ran, vec![100, 2, 101, 3]);
    }

    #[test]
    fn an_oversized_pair_runs_alone_as_the_anchor() {
        let cfg = config(BatchPolicy::Eager, 8, 100);
        let mut q = queue();
        push_call(&mut q, &[(1, 150), (2, 10)]);
        assert_eq!(ids(&take_batch(&cfg, PACKED, &mut q)), vec![1]);
        push_call(&mut q, &[(3, 150)]);
        // The new call's oversized pair is the anchor; the oldest (2) does not fit.
        assert_eq!(ids(&take_batch(&cfg, PACKED, &mut q)), vec![3]);
        // Passed over, so the oldest anchors the next batch, oversized or not.
        push_call(&mut q, &[(4, 150)]);
        assert_eq!(ids(&take_batch(&cfg, PACKED, &mut q)), vec![2]);
        assert_eq!(ids(&take_batch(&cfg, PACKED, &mut q)), vec![4]);
    }

    #[test]
    fn after_a_pass_over_the_oldest_leads_and_a_new_call_joins_if_it_fits() {
        let cfg = config(BatchPolicy::Eager, 4, 100);
        let mut q = queue();
        push_call(&mut q, &[(1, 60), (2, 60)]);
        assert_eq!(ids(&take_batch(&cfg, PACKED, &mut q)), vec![1]);
        push_call(&mut q, &[(3, 60)]);
        assert_eq!(ids(&take_batch(&cfg, PACKED, &mut q)), vec![3]);
        push_call(&mut q, &[(4, 30)]);
        assert_eq!(ids(&take_batch(&cfg, PACKED, &mut q)), vec![2, 4]);
    }

    /// A small deterministic generator (xorshift), enough to vary arrivals.
    struct Rng(u64);
    impl Rng {
        fn below(&mut self, n: u64) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0 % n
        }
    }

    #[test]
    fn no_pair_waits_past_the_bound_under_any_policy_or_limit() {
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
        for policy in [BatchPolicy::Eager, BatchPolicy::Deadline, BatchPolicy::None] {
            for max_batch in [1, 2, 3, 8] {
                for budget in [50, 120, 1 << 20] {
                    for group_by_length in [false, true] {
                        for layout in [Layout::Packed, Layout::Padded] {
                            let cfg = BatcherConfig {
                                group_by_length,
                                ..config(policy, max_batch, budget)
                            };
                            let cost = Cost {
                                layout,
                                max_positions: 512,
                            };
                            check_bound(&cfg, cost, &mut rng);
                        }
                    }
                }
            }
        }
    }

    /// 400 batches with calls arriving at random (up to the queue's limit), then
    /// drained: every pair runs within `2p + 1` batches of being queued.
    fn check_bound(cfg: &BatcherConfig, cost: Cost, rng: &mut Rng) {
        let mut q = queue();
        // Per pair id: batches taken before it was queued, pairs ahead of it.
        let mut queued: Vec<(u64, usize)> = Vec::new();
        let mut taken = 0u64;
        while taken < 400 || !q.items.is_empty() {
            for _ in 0..rng.below(3) {
                let size = 1 + rng.below(5) as usize;
                if taken >= 400 || q.items.len() + size > cfg.max_queue_pairs {
                    break;
                }
                let first = queued.len() as u32;
                let pairs: Vec<(u32, usize)> = (0..size as u32)
                    .map(|k| (first + k, 2 + rng.below(70) as usize))
                    .collect();
                for k in 0..size {
                    queued.push((taken, q.items.len() + k));
                }
                push_call(&mut q, &pairs);
            }
            if q.items.is_empty() {
                continue;
            }
            let batch = take_batch(cfg, cost, &mut q);
            taken += 1;
            assert!(!batch.is_empty());
            let lens = batch.iter().map(|i| i.enc.len());
            let sum: usize = lens.clone().sum();
            let longest = lens.max().unwrap_or(0);
            assert!(
                batch.len() == 1
                    || (batch.len() <= cfg.max_batch
                        && cost.tokens(batch.len(), longest, sum) <= cfg.max_batch_tokens),
                "{cfg:?}: a batch over its limits"
            );
            for item in &batch {
                let id = item.enc.ids[0] as usize;
                let (before, ahead) = queued[id];
                let waited = taken - before;
                assert!(
                    waited <= 2 * ahead as u64 + 1,
                    "{cfg:?} {cost:?}: pair {id} with {ahead} ahead waited {waited} batches"
                );
            }
        }
    }
}
