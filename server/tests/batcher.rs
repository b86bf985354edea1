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
async fn a_flushing_batcher_closes_batches_at_once_and_still_takes_calls() {
    let mut c = cfg(BatchPolicy::Deadline);
    c.timeout = Duration::from_secs(600);
    let r = rig(FakeScorer::default(), c);
    let t = Instant::now();
    let queued = submit(&r.batcher, vec![pair(1, 3)], None);
    r.batcher.flush();
    let out = answer(queued).await.expect("scored");
    assert_eq!(out.logits, vec![1003.0]);
    assert_eq!(
        t.elapsed(),
        Duration::ZERO,
        "a drain does not wait the timeout"
    );
    // A call still on its way while the server drains is taken, and runs at once.
    let late = answer(submit(&r.batcher, vec![pair(2, 3)], None))
        .await
        .expect("taken while flushing");
    assert_eq!(late.logits, vec![2003.0]);
    assert_eq!(t.elapsed(), Duration::ZERO);
    r.batcher.shutdown();
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

/// A fresh one-pair call arrives after every batch, so one is always waiting when the
/// next batch is chosen: the load under which "new calls first" could starve a call
/// that already had a batch. The observer submits them (it runs after each batch,
/// before the next is taken); ids 100, 101, … name them.
struct FreshEveryBatch {
    batcher: std::sync::OnceLock<Batcher>,
    len: usize,
    /// How many fresh calls to send in all (the test ends even on a starving batcher).
    limit: u32,
    /// Each pair's id, the batches run before it was queued, and the pairs ahead of it.
    queued: Mutex<Vec<(u32, u64, usize)>>,
    replies: tokio::sync::mpsc::UnboundedSender<Reply>,
}

impl BatchObserver for FreshEveryBatch {
    fn batch_done(&self, _info: &BatchInfo) {
        let b = self.batcher.get().expect("set at start");
        let mut queued = self.queued.lock().unwrap();
        let sent = queued.iter().filter(|q| q.0 >= 100).count() as u32;
        if sent >= self.limit {
            return;
        }
        let id = 100 + sent;
        queued.push((id, b.batches_run(), b.queued_pairs()));
        let _ = self.replies.send(submit(b, vec![pair(id, self.len)], None));
    }
}

/// Runs an old call of `old` pairs (ids 1, 2, …, each `old_len` tokens) against a
/// fresh call after every batch, then checks the bound the batcher's docs prove: a
/// pair runs within `2p + 1` batches of being queued, `p` the pairs ahead of it then.
/// Returns the batches the old call took, and how many of them held its pairs.
async fn old_call_under_fresh_load(
    c: BatcherConfig,
    old: u32,
    old_len: usize,
    fresh_len: usize,
) -> (usize, u32) {
    let scorer = Arc::new(FakeScorer::default());
    let (replies, mut fresh_replies) = tokio::sync::mpsc::unbounded_channel();
    let fresh = Arc::new(FreshEveryBatch {
        batcher: Default::default(),
        len: fresh_len,
        limit: 40,
        queued: Default::default(),
        replies,
    });
    let (batcher, _thread) = Batcher::start(scorer.clone(), c, fresh.clone());
    assert!(fresh.batcher.set(batcher.clone()).is_ok(), "set once");
    let ids: Vec<u32> = (1..=old).collect();
    for (ahead, &id) in ids.iter().enumerate() {
        fresh.queued.lock().unwrap().push((id, 0, ahead));
    }
    let out = answer(submit(
        &batcher,
        ids.iter().map(|&id| pair(id, old_len)).collect(),
        None,
    ))
    .await
    .expect("the old call is scored");
    let want: Vec<f32> = ids
        .iter()
        .map(|&id| (1000 * id as usize + old_len) as f32)
        .collect();
    assert_eq!(out.logits, want);
    // Each fresh call's batch sends the next one (its observer runs before delivery).
    for _ in 0..fresh.limit {
        let rx = fresh_replies.recv().await.expect("sent");
        answer(rx).await.expect("every fresh call is scored too");
    }
    let batches = scorer.batches();
    // Batch numbers from 1, as `batches_run` counts them.
    let ran_in = |id: u32| 1 + batches.iter().position(|b| b.contains(&id)).expect("ran") as u64;
    for &(id, before, ahead) in fresh.queued.lock().unwrap().iter() {
        let waited = ran_in(id) - before;
        let bound = 2 * ahead as u64 + 1;
        assert!(
            waited <= bound,
            "pair {id} ({ahead} pairs ahead of it) ran {waited} batches after it was queued, \
             over the bound of {bound}: {batches:?}"
        );
    }
    (ran_in(old) as usize, out.batches)
}

#[tokio::test(start_paused = true)]
async fn policy_none_does_not_starve_a_call_that_had_a_batch() {
    let (took, held) = old_call_under_fresh_load(cfg(BatchPolicy::None), 6, 4, 4).await;
    assert!(held >= 2, "the old call spans batches");
    assert!(took <= 11, "took {took} batches: over 2 * 5 + 1");
}

fn one_pair_batches(policy: BatchPolicy) -> BatcherConfig {
    BatcherConfig {
        max_batch: 1,
        ..cfg(policy)
    }
}

/// A 4-pair call that runs one pair per batch under fresh load: its last pair has 3
/// ahead, so it must finish within 2 * 3 + 1 batches.
async fn four_pair_call_within_the_bound(c: BatcherConfig, old_len: usize, new_len: usize) {
    let (took, held) = old_call_under_fresh_load(c, 4, old_len, new_len).await;
    assert_eq!(held, 4);
    assert!(took <= 7, "took {took} batches: over 2 * 3 + 1");
}

#[tokio::test(start_paused = true)]
async fn max_batch_one_does_not_starve_a_call_that_had_a_batch_eager() {
    four_pair_call_within_the_bound(one_pair_batches(BatchPolicy::Eager), 4, 4).await;
}

#[tokio::test(start_paused = true)]
async fn max_batch_one_does_not_starve_a_call_that_had_a_batch_deadline() {
    four_pair_call_within_the_bound(one_pair_batches(BatchPolicy::Deadline), 4, 4).await;
}

#[tokio::test(start_paused = true)]
async fn max_batch_one_does_not_starve_a_call_that_had_a_batch_none() {
    four_pair_call_within_the_bound(one_pair_batches(BatchPolicy::None), 4, 4).await;
}

/// A budget of 100 tokens (packed: a batch costs the sum of its lengths) holds one
/// 60-token pair, never the oldest beside a fresh call's first.
fn one_pair_budget(policy: BatchPolicy, group_by_length: bool) -> BatcherConfig {
    BatcherConfig {
        max_batch_tokens: 100,
        group_by_length,
        ..cfg(policy)
    }
}

#[tokio::test(start_paused = true)]
async fn a_token_budget_too_small_for_two_does_not_starve_a_call_eager() {
    four_pair_call_within_the_bound(one_pair_budget(BatchPolicy::Eager, false), 60, 60).await;
}

#[tokio::test(start_paused = true)]
async fn a_token_budget_too_small_for_two_does_not_starve_a_call_deadline() {
    four_pair_call_within_the_bound(one_pair_budget(BatchPolicy::Deadline, false), 60, 60).await;
}

#[tokio::test(start_paused = true)]
async fn a_token_budget_too_small_for_two_does_not_starve_a_call_grouped() {
    four_pair_call_within_the_bound(one_pair_budget(BatchPolicy::Eager, true), 60, 60).await;
}

#[tokio::test(start_paused = true)]
async fn eager_and_deadline_with_room_run_the_oldest_pair_in_every_batch() {
    // With room for the oldest beside the fresh call's first, nothing is passed over
    // and the tighter bound p + 1 holds: 4 for the old call's last pair. It takes 3,
    // as its first batch holds two of its pairs and every later one holds one.
    for policy in [BatchPolicy::Eager, BatchPolicy::Deadline] {
        let c = BatcherConfig {
            max_batch: 2,
            ..cfg(policy)
        };
        let (took, held) = old_call_under_fresh_load(c, 4, 4, 4).await;
        assert_eq!(held, 3, "{policy}");
        assert_eq!(took, 3, "{policy}");
    }
}

/// A scorer whose forward pass says it started, then blocks until released: a hung
/// forward pass, under the test's control.
struct GateScorer {
    started: Mutex<Option<oneshot::Sender<()>>>,
    release: Mutex<std::sync::mpsc::Receiver<()>>,
}

impl Scorer for GateScorer {
    fn layout(&self) -> Layout {
        Layout::Packed
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
        if let Some(tx) = self.started.lock().unwrap().take() {
            let _ = tx.send(());
        }
        let _ = self.release.lock().unwrap().recv();
        Ok(vec![0.0; batch.len()])
    }
}

#[tokio::test(start_paused = true)]
async fn abort_answers_every_waiting_call_at_once_and_refuses_new_ones() {
    let (started_tx, started) = oneshot::channel();
    let (release, release_rx) = std::sync::mpsc::channel();
    let scorer = Arc::new(GateScorer {
        started: Mutex::new(Some(started_tx)),
        release: Mutex::new(release_rx),
    });
    let (batcher, thread) = Batcher::start(
        scorer,
        cfg(BatchPolicy::Eager),
        Arc::new(Batches::default()),
    );
    assert_eq!(batcher.capacity(), 64, "capacity is --max-queue-pairs");
    let running = submit(&batcher, vec![pair(1, 3)], None);
    started.await.expect("the forward pass started");
    let queued = submit(&batcher, vec![pair(2, 3), pair(3, 3)], None);
    assert_eq!(batcher.queued_pairs(), 2);
    let t = Instant::now();
    batcher.abort("drain timed out");
    let want = BatchError::Unavailable("drain timed out".into());
    // The call in the hung forward pass is answered too, not only the queued one.
    assert_eq!(answer(running).await.expect_err("aborted"), want);
    assert_eq!(answer(queued).await.expect_err("aborted"), want);
    assert_eq!(t.elapsed(), Duration::ZERO, "at once");
    assert_eq!(batcher.queued_pairs(), 0);
    assert_eq!(
        batcher
            .submit(vec![pair(4, 3)], None, None)
            .expect_err("refused after an abort"),
        want
    );
    assert!(
        batcher.failure().borrow().is_none(),
        "an abort is no failure"
    );
    // Once the hung pass returns, the scheduler exits (its late scores go nowhere).
    release.send(()).expect("the forward pass waits");
    thread.join().await;
}
