//! The batcher against a fake scorer under tokio's paused time: every timing below is
//! exact virtual time, and the whole file runs in milliseconds with no sleeps.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use crossbatch_model::{Encoded, Layout, Limits, ModelError, Scorer};
use crossbatch_server::batcher::{
    BatchError, BatchInfo, BatchObserver, BatchPolicy, Batcher, BatcherConfig, BatcherThread,
    Outcome,
};
use tokio::sync::oneshot;
use tokio::time::Instant;

/// Scores a pair as `1000 * its first id + its length`, so every logit says which pair
/// it belongs to. Records each batch's pair ids; fails or panics on request.
#[derive(Default)]
struct FakeScorer {
    layout: Option<Layout>,
    batches: Mutex<Vec<Vec<u32>>>,
    /// A batch holding this id fails.
    fail_on: Option<u32>,
    /// A batch holding this id panics.
    panic_on: Option<u32>,
    /// A batch holding this id gets one logit too few.
    short_on: Option<u32>,
}

impl Scorer for FakeScorer {
    fn layout(&self) -> Layout {
        self.layout.unwrap_or(Layout::Packed)
    }
    fn limits(&self) -> Limits {
        Limits {
            max_input_tokens: 512,
            max_positions: 512,
        }
    }
    fn encode(&self, _q: &str, _p: &str) -> Result<Encoded, ModelError> {
        unreachable!("the batcher gets encoded pairs")
    }
    fn forward(&self, batch: &[&Encoded]) -> Result<Vec<f32>, ModelError> {
        let ids: Vec<u32> = batch.iter().map(|e| e.ids[0]).collect();
        self.batches.lock().unwrap().push(ids.clone());
        if self.panic_on.is_some_and(|p| ids.contains(&p)) {
            panic!("fake scorer told to panic");
        }
        if self.fail_on.is_some_and(|f| ids.contains(&f)) {
            return Err(ModelError::Inference("fake scorer told to fail".into()));
        }
        let mut logits: Vec<f32> = batch
            .iter()
            .map(|e| (1000 * e.ids[0] + e.len() as u32) as f32)
            .collect();
        if self.short_on.is_some_and(|s| ids.contains(&s)) {
            logits.pop();
        }
        Ok(logits)
    }
}

impl FakeScorer {
    fn batches(&self) -> Vec<Vec<u32>> {
        self.batches.lock().unwrap().clone()
    }
}

#[derive(Default)]
struct Batches(Mutex<Vec<BatchInfo>>);
impl BatchObserver for Batches {
    fn batch_done(&self, info: &BatchInfo) {
        self.0.lock().unwrap().push(info.clone());
    }
}

/// A pair whose first id is `id`, `len` tokens long.
fn pair(id: u32, len: usize) -> Encoded {
    Encoded {
        ids: std::iter::once(id)
            .chain(std::iter::repeat_n(7, len - 1))
            .collect(),
        type_ids: vec![0; len],
    }
}

fn cfg(policy: BatchPolicy) -> BatcherConfig {
    BatcherConfig {
        max_batch: 4,
        timeout: Duration::from_millis(20),
        max_batch_tokens: 1 << 20,
        max_queue_pairs: 64,
        policy,
        group_by_length: false,
    }
}

struct Rig {
    scorer: Arc<FakeScorer>,
    observed: Arc<Batches>,
    batcher: Batcher,
    thread: BatcherThread,
}

fn rig(scorer: FakeScorer, cfg: BatcherConfig) -> Rig {
    let scorer = Arc::new(scorer);
    let observed = Arc::new(Batches::default());
    let (batcher, thread) = Batcher::start(scorer.clone(), cfg, observed.clone());
    Rig {
        scorer,
        observed,
        batcher,
        thread,
    }
}

type Reply = oneshot::Receiver<Result<Outcome, BatchError>>;

fn submit(b: &Batcher, pairs: Vec<Encoded>, deadline: Option<Instant>) -> Reply {
    b.submit(pairs, deadline, None).expect("queued")
}

async fn answer(rx: Reply) -> Result<Outcome, BatchError> {
    rx.await.expect("the batcher answers every call")
}

#[tokio::test(start_paused = true)]
async fn deadline_waits_the_timeout_for_a_lone_pair_and_eager_does_not() {
    let r = rig(FakeScorer::default(), cfg(BatchPolicy::Deadline));
    let t = Instant::now();
    let out = answer(submit(&r.batcher, vec![pair(1, 5)], None))
        .await
        .expect("scored");
    assert_eq!(t.elapsed(), Duration::from_millis(20), "deadline policy");
    assert_eq!(out.logits, vec![1005.0]);
    assert_eq!(out.queue, Duration::from_millis(20));
    assert_eq!(out.batches, 1);

    let r = rig(FakeScorer::default(), cfg(BatchPolicy::Eager));
    let t = Instant::now();
    answer(submit(&r.batcher, vec![pair(1, 5)], None))
        .await
        .expect("scored");
    assert_eq!(t.elapsed(), Duration::ZERO, "eager policy");
}

#[tokio::test(start_paused = true)]
async fn a_full_batch_runs_at_once_and_the_rest_waits_for_the_timeout() {
    let r = rig(FakeScorer::default(), cfg(BatchPolicy::Deadline));
    let t = Instant::now();
    // Ten one-pair calls, max batch 4: two full batches now, two pairs at +20 ms.
    let rx: Vec<Reply> = (0..10)
        .map(|i| submit(&r.batcher, vec![pair(i, 3)], None))
        .collect();
    let mut done = Vec::new();
    for rx in rx {
        let out = answer(rx).await.expect("scored");
        done.push((out.logits[0], t.elapsed()));
    }
    assert_eq!(
        r.scorer.batches(),
        vec![vec![0, 1, 2, 3], vec![4, 5, 6, 7], vec![8, 9]]
    );
    for (i, (logit, at)) in done.iter().enumerate() {
        assert_eq!(*logit, (1000 * i + 3) as f32, "call {i} got its own score");
        let want = if i < 8 { 0 } else { 20 };
        assert_eq!(*at, Duration::from_millis(want), "call {i}");
    }
}

#[tokio::test(start_paused = true)]
async fn a_large_call_splits_across_batches_and_comes_back_in_order() {
    let r = rig(FakeScorer::default(), cfg(BatchPolicy::Eager));
    let pairs: Vec<Encoded> = (0..10).map(|i| pair(i, 2 + i as usize)).collect();
    let out = answer(submit(&r.batcher, pairs, None))
        .await
        .expect("scored");
    let want: Vec<f32> = (0..10).map(|i| (1000 * i + 2 + i) as f32).collect();
    assert_eq!(out.logits, want);
    assert_eq!(out.batches, 3);
    assert_eq!(out.real_tokens, (2..12).sum::<u64>());
}

#[tokio::test(start_paused = true)]
async fn the_token_budget_bounds_a_batch_but_the_oldest_pair_always_runs() {
    let mut c = cfg(BatchPolicy::Eager);
    c.max_batch = 16;
    c.max_batch_tokens = 100;
    let r = rig(FakeScorer::default(), c);
    // Packed layout: a batch costs the sum of its lengths.
    let a = submit(&r.batcher, vec![pair(1, 150)], None); // alone over budget: runs alone
    let b = submit(&r.batcher, (2..8).map(|i| pair(i, 30)).collect(), None);
    answer(a).await.expect("oversized pair still runs");
    answer(b).await.expect("scored");
    assert_eq!(
        r.scorer.batches(),
        vec![vec![1], vec![2, 3, 4], vec![5, 6, 7]]
    );
    let seen = r.observed.0.lock().unwrap().clone();
    assert!(seen.iter().skip(1).all(|b| b.padded_tokens <= 100));
}

#[tokio::test(start_paused = true)]
async fn length_grouping_picks_the_nearest_lengths_after_the_oldest() {
    let mut c = cfg(BatchPolicy::Deadline);
    c.max_batch = 3;
    c.group_by_length = true;
    let s = FakeScorer {
        layout: Some(Layout::Padded),
        ..Default::default()
    };
    let r = rig(s, c);
    let lens = [40usize, 200, 45, 210, 38, 190];
    let rx: Vec<Reply> = lens
        .iter()
        .enumerate()
        .map(|(i, &l)| submit(&r.batcher, vec![pair(i as u32, l)], None))
        .collect();
    for rx in rx {
        answer(rx).await.expect("scored");
    }
    // Oldest (40) with 38 and 45; then the oldest left (200) with 210 and 190.
    assert_eq!(r.scorer.batches(), vec![vec![0, 2, 4], vec![1, 3, 5]]);
    let seen = r.observed.0.lock().unwrap().clone();
    // Padded to multiples of 32: 3 x 64 and 3 x 224.
    assert_eq!(
        seen.iter().map(|b| b.padded_tokens).collect::<Vec<_>>(),
        vec![192, 672]
    );
}

#[tokio::test(start_paused = true)]
async fn an_expired_call_leaves_the_queue_without_a_forward_pass() {
    let r = rig(FakeScorer::default(), cfg(BatchPolicy::Deadline));
    let t = Instant::now();
    let rx = submit(
        &r.batcher,
        vec![pair(1, 4)],
        Some(Instant::now() + Duration::from_millis(5)),
    );
    let err = answer(rx).await.expect_err("expired");
    assert_eq!(
        err,
        BatchError::DeadlineExceeded {
            waited_ms: 5,
            scored: 0,
            total: 1
        }
    );
    assert_eq!(
        t.elapsed(),
        Duration::from_millis(5),
        "answered at its deadline"
    );
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(r.scorer.batches().is_empty(), "no forward pass ran");
    assert_eq!(r.batcher.queued_pairs(), 0);
}

#[tokio::test(start_paused = true)]
async fn a_cancelled_call_leaves_the_queue_without_a_forward_pass() {
    let r = rig(FakeScorer::default(), cfg(BatchPolicy::Deadline));
    let gone = submit(&r.batcher, vec![pair(1, 4), pair(2, 4)], None);
    drop(gone); // the client went away
    let kept = submit(&r.batcher, vec![pair(3, 4)], None);
    answer(kept).await.expect("scored");
    assert_eq!(r.scorer.batches(), vec![vec![3]]);
}

#[tokio::test(start_paused = true)]
async fn overload_is_refused_at_once_and_the_queue_recovers() {
    let mut c = cfg(BatchPolicy::Deadline);
    c.max_queue_pairs = 5;
    c.max_batch = 64;
    let r = rig(FakeScorer::default(), c);
    let first = submit(&r.batcher, (0..4).map(|i| pair(i, 2)).collect(), None);
    let refused = r
        .batcher
        .submit((4..6).map(|i| pair(i, 2)).collect(), None, None)
        .expect_err("over the queue limit");
    assert_eq!(
        refused,
        BatchError::QueueFull {
            queued: 4,
            requested: 2,
            limit: 5
        }
    );
    answer(first).await.expect("scored");
    let again = submit(&r.batcher, (4..6).map(|i| pair(i, 2)).collect(), None);
    answer(again).await.expect("room again");
}

#[tokio::test(start_paused = true)]
async fn shutdown_finishes_queued_work_then_refuses() {
    let r = rig(FakeScorer::default(), cfg(BatchPolicy::Deadline));
    let t = Instant::now();
    let queued = submit(&r.batcher, vec![pair(1, 3), pair(2, 3)], None);
    r.batcher.shutdown();
    let out = answer(queued).await.expect("drained, not dropped");
    assert_eq!(out.logits, vec![1003.0, 2003.0]);
    assert_eq!(
        t.elapsed(),
        Duration::ZERO,
        "shutdown does not wait the timeout"
    );
    assert_eq!(
        r.batcher
            .submit(vec![pair(3, 3)], None, None)
            .expect_err("closed"),
        BatchError::ShuttingDown
    );
    r.thread.join().await;
}

#[tokio::test(start_paused = true)]
async fn a_failing_or_panicking_scorer_fails_only_its_batch() {
    let s = FakeScorer {
        fail_on: Some(1),
        panic_on: Some(5),
        ..Default::default()
    };
    let r = rig(s, cfg(BatchPolicy::Eager));
    let bad = answer(submit(&r.batcher, vec![pair(1, 3)], None)).await;
    assert_eq!(
        bad.expect_err("failed"),
        BatchError::Inference("inference failed: fake scorer told to fail".into())
    );
    let good = answer(submit(&r.batcher, vec![pair(2, 3)], None)).await;
    assert_eq!(good.expect("scored").logits, vec![2003.0]);
    let panicked = answer(submit(&r.batcher, vec![pair(5, 3)], None)).await;
    assert_eq!(
        panicked.expect_err("panicked"),
        BatchError::Inference("inference failed: fake scorer told to panic".into())
    );
    let after = answer(submit(&r.batcher, vec![pair(6, 3)], None)).await;
    assert_eq!(after.expect("still serving").logits, vec![6003.0]);
    let seen = r.observed.0.lock().unwrap().clone();
    assert_eq!(
        seen.iter().map(|b| b.ok).collect::<Vec<_>>(),
        vec![false, true, false, true]
    );
}

#[tokio::test(start_paused = true)]
async fn a_scorer_returning_too_few_logits_fails_its_batch_and_the_batcher_goes_on() {
    let s = FakeScorer {
        short_on: Some(1),
        ..Default::default()
    };
    let r = rig(s, cfg(BatchPolicy::Eager));
    let bad = answer(submit(&r.batcher, vec![pair(1, 3), pair(2, 3)], None)).await;
    assert_eq!(
        bad.expect_err("short"),
        BatchError::Inference("internal error: 1 logits for a batch of 2".into())
    );
    let after = answer(submit(&r.batcher, vec![pair(3, 3)], None)).await;
    assert_eq!(after.expect("still serving").logits, vec![3003.0]);
}

#[tokio::test(start_paused = true)]
async fn a_small_call_runs_in_the_next_batch_not_after_a_large_one() {
    let r = rig(FakeScorer::default(), cfg(BatchPolicy::Eager));
    // 40 pairs: 10 batches of 4. The small call arrives behind all of them.
    let big = submit(&r.batcher, (0..40).map(|_| pair(1, 4)).collect(), None);
    let small = submit(&r.batcher, vec![pair(2, 4)], None);
    answer(small).await.expect("small call");
    let batches = r.scorer.batches();
    let at = batches.iter().position(|b| b.contains(&2)).expect("ran");
    assert_eq!(at, 1, "the small call runs in the 2nd batch: {batches:?}");
    let out = answer(big).await.expect("the large call still completes");
    assert_eq!(out.logits, vec![1004.0; 40]);
    let all = r.scorer.batches();
    assert_eq!(all.iter().map(Vec::len).sum::<usize>(), 41);
    assert!(all.iter().all(|b| b.len() <= 4));
}

#[tokio::test(start_paused = true)]
async fn the_oldest_pair_runs_in_every_batch_while_new_calls_go_first() {
    let r = rig(FakeScorer::default(), cfg(BatchPolicy::Eager));
    let big = submit(&r.batcher, (0..8).map(|_| pair(1, 4)).collect(), None);
    let smalls: Vec<Reply> = (2..8)
        .map(|id| submit(&r.batcher, vec![pair(id, 4)], None))
        .collect();
    answer(big).await.expect("big");
    for s in smalls {
        answer(s).await.expect("small");
    }
    let batches = r.scorer.batches();
    // The big call's pairs run in every batch until it is done: new calls go first
    // but never starve it.
    let last_big = batches.iter().rposition(|b| b.contains(&1)).unwrap();
    assert!(
        batches[..=last_big].iter().all(|b| b.contains(&1)),
        "{batches:?}"
    );
    assert_eq!(last_big, 2, "{batches:?}");
}

/// A batch observer that panics on the batch holding `id`.
struct PanickyObserver(u32, Arc<FakeScorer>);
impl BatchObserver for PanickyObserver {
    fn batch_done(&self, _info: &BatchInfo) {
        if self.1.batches().last().is_some_and(|b| b.contains(&self.0)) {
            panic!("observer told to panic");
        }
    }
}

#[tokio::test(start_paused = true)]
async fn a_panic_in_the_batch_path_fails_nothing_it_should_not_and_the_batcher_goes_on() {
    let scorer = Arc::new(FakeScorer::default());
    let (batcher, _thread) = Batcher::start(
        scorer.clone(),
        cfg(BatchPolicy::Eager),
        Arc::new(PanickyObserver(3, scorer.clone())),
    );
    // The observer runs after the scores are computed and before they are handed
    // out; its panic is logged and the calls still get their scores.
    let out = answer(submit(&batcher, vec![pair(3, 2)], None)).await;
    assert_eq!(
        out.expect("scored despite the observer").logits,
        vec![3002.0]
    );
    let next = answer(submit(&batcher, vec![pair(4, 2)], None)).await;
    assert_eq!(next.expect("still serving").logits, vec![4002.0]);
    assert!(batcher.failure().borrow().is_none());
}

/// Request hooks that panic when dropped: the scheduler drops them when their
/// expired call leaves the queue, outside any batch.
struct DropBomb;
impl crossbatch_server::batcher::RequestHooks for DropBomb {}
impl Drop for DropBomb {
    fn drop(&mut self) {
        panic!("hook dropped");
    }
}

#[tokio::test(start_paused = true)]
async fn if_the_scheduler_dies_every_waiting_call_gets_unavailable_at_once() {
    let r = rig(FakeScorer::default(), cfg(BatchPolicy::Deadline));
    let mut failure = r.batcher.failure();
    let doomed = r
        .batcher
        .submit(
            vec![pair(1, 2)],
            Some(Instant::now() + Duration::from_millis(5)),
            Some(Arc::new(DropBomb)),
        )
        .expect("queued");
    // Waits for the 20 ms batch timeout; the scheduler dies at 5 ms.
    let waiting = submit(&r.batcher, vec![pair(2, 2)], None);
    let t = Instant::now();
    assert!(matches!(
        answer(doomed).await,
        Err(BatchError::DeadlineExceeded { .. })
    ));
    let err = answer(waiting).await.expect_err("the scheduler is gone");
    assert!(
        matches!(&err, BatchError::Unavailable(why) if why.contains("hook dropped")),
        "{err:?}"
    );
    assert_eq!(
        t.elapsed(),
        Duration::from_millis(5),
        "at once, not at 20 ms"
    );
    failure.changed().await.expect("failure reported");
    assert!(
        failure
            .borrow()
            .as_deref()
            .is_some_and(|w| w.contains("panicked"))
    );
    assert!(matches!(
        r.batcher.submit(vec![pair(3, 2)], None, None),
        Err(BatchError::Unavailable(_))
    ));
    assert!(r.scorer.batches().is_empty());
    r.thread.join().await;
}

#[tokio::test(start_paused = true)]
async fn policy_none_runs_every_call_alone_at_once() {
    let r = rig(FakeScorer::default(), cfg(BatchPolicy::None));
    let t = Instant::now();
    let a = submit(&r.batcher, vec![pair(1, 3), pair(1, 4)], None);
    let b = submit(&r.batcher, vec![pair(2, 3)], None);
    let big = submit(&r.batcher, (0..6).map(|_| pair(3, 2)).collect(), None);
    assert_eq!(answer(a).await.expect("a").logits, vec![1003.0, 1004.0]);
    assert_eq!(answer(b).await.expect("b").logits, vec![2003.0]);
    answer(big).await.expect("big");
    assert_eq!(t.elapsed(), Duration::ZERO, "no waiting for mates");
    assert_eq!(
        r.scorer.batches(),
        vec![vec![1, 1], vec![2], vec![3, 3, 3, 3], vec![3, 3]],
        "one call per forward pass, split only at --max-batch"
    );
}
