//! The gRPC service over a fake scorer, called in process (no socket) under tokio's
//! paused time: validation, codes, deadlines, ordering and a failing model, each in
//! milliseconds.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use crossbatch_model::{Encoded, Layout, Limits, ModelError, Scorer};
use crossbatch_proto::v1::cross_encoder_server::CrossEncoder as Api;
use crossbatch_proto::v1::{InfoRequest, InfoResponse, Pair, RerankRequest, ScoreRequest};
use crossbatch_server::admission::Admission;
use crossbatch_server::batcher::{BatchPolicy, Batcher, BatcherConfig};
use crossbatch_server::metrics::Metrics;
use crossbatch_server::service::{Limits as CallLimits, Ready, ScoringService};
use tokio::sync::OnceCell;
use tonic::{Code, Request};

/// Scores a pair by its passage's length in bytes; a passage "boom" fails its batch,
/// "tokenizer panic" panics in `encode`, "gate" blocks the tokenizer until the test
/// opens the gate, "slow" tokenizes for 150 ms, and "counted" counts its tokenization.
struct LengthScorer {
    gate: Arc<Gate>,
}

/// Lets a test hold the (one) tokenizer thread inside `encode` and see that it is there.
#[derive(Default)]
struct Gate {
    /// Tokenizations of "gate" begun.
    entered: Mutex<usize>,
    entered_cv: Condvar,
    open: Mutex<bool>,
    open_cv: Condvar,
    /// Tokenizations of "counted".
    counted: AtomicUsize,
}

impl Gate {
    /// Blocks the calling (tokenizer) thread until the gate opens.
    fn pass(&self) {
        *self.entered.lock().expect("lock") += 1;
        self.entered_cv.notify_all();
        let mut open = self.open.lock().expect("lock");
        while !*open {
            open = self.open_cv.wait(open).expect("lock");
        }
    }

    /// Waits (off the async runtime) until `n` tokenizations have entered the gate.
    async fn wait_entered(self: &Arc<Self>, n: usize) {
        let gate = Arc::clone(self);
        tokio::task::spawn_blocking(move || {
            let mut entered = gate.entered.lock().expect("lock");
            while *entered < n {
                entered = gate.entered_cv.wait(entered).expect("lock");
            }
        })
        .await
        .expect("waiter");
    }

    fn open(&self) {
        *self.open.lock().expect("lock") = true;
        self.open_cv.notify_all();
    }
}

impl Scorer for LengthScorer {
    fn layout(&self) -> Layout {
        Layout::Packed
    }
    fn limits(&self) -> Limits {
        Limits {
            max_input_tokens: 512,
            max_positions: 512,
        }
    }
    fn encode(&self, query: &str, passage: &str) -> Result<Encoded, ModelError> {
        match passage {
            "tokenizer panic" => panic!("fake tokenizer told to panic"),
            "gate" => self.gate.pass(),
            // Only "at least 150 ms" matters: a slower machine takes longer, and the
            // deadline it is set against has passed either way.
            "slow" => std::thread::sleep(Duration::from_millis(150)),
            "counted" => {
                self.gate.counted.fetch_add(1, Ordering::SeqCst);
            }
            _ => {}
        }
        let len = 3 + query.len().min(100) + passage.len().min(400);
        let mut ids = vec![1; len];
        ids[0] = if passage == "boom" {
            0
        } else {
            passage.len() as u32 + 1
        };
        Ok(Encoded {
            ids,
            type_ids: vec![0; len],
        })
    }
    fn forward(&self, batch: &[&Encoded]) -> Result<Vec<f32>, ModelError> {
        if batch.iter().any(|e| e.ids[0] == 0) {
            return Err(ModelError::Inference("boom".into()));
        }
        Ok(batch.iter().map(|e| (e.ids[0] - 1) as f32).collect())
    }
}

fn service(ready: bool) -> ScoringService {
    service_with(ready, Duration::from_millis(20))
}

fn service_with(ready: bool, batch_timeout: Duration) -> ScoringService {
    service_and_metrics(ready, batch_timeout).0
}

fn service_and_metrics(ready: bool, batch_timeout: Duration) -> (ScoringService, Arc<Metrics>) {
    let (svc, metrics, _gate) = harness(ready, batch_timeout);
    (svc, metrics)
}

/// The service over the fake scorer (queue and admission capacity 16 pairs, 10 per
/// call, one tokenizer thread), its metrics and the scorer's gate.
fn harness(ready: bool, batch_timeout: Duration) -> (ScoringService, Arc<Metrics>, Arc<Gate>) {
    let cell = Arc::new(OnceCell::new());
    let metrics = Arc::new(Metrics::default());
    let gate = Arc::new(Gate::default());
    if ready {
        let model: Arc<dyn Scorer> = Arc::new(LengthScorer {
            gate: Arc::clone(&gate),
        });
        let (batcher, _thread) = Batcher::start(
            Arc::clone(&model),
            BatcherConfig {
                max_batch: 8,
                timeout: batch_timeout,
                max_batch_tokens: 1 << 16,
                max_queue_pairs: 16,
                policy: BatchPolicy::Deadline,
                group_by_length: false,
            },
            metrics.clone(),
        );
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(1)
            .build()
            .expect("pool");
        let _ = cell.set(Ready {
            model,
            batcher,
            tokenizers: Arc::new(pool),
            info: InfoResponse {
                model_id: "fake".into(),
                ..Default::default()
            },
            warm_seconds_per_pair: 0.0,
        });
    }
    let svc = ScoringService::new(
        cell,
        CallLimits {
            max_client_batch: 10,
            max_text_bytes: 50,
        },
        metrics.clone(),
        Admission::new(16),
    );
    (svc, metrics, gate)
}

fn pairs(passages: &[&str]) -> Vec<Pair> {
    passages
        .iter()
        .map(|p| Pair {
            query: "q".into(),
            passage: p.to_string(),
        })
        .collect()
}

fn score(passages: &[&str]) -> Request<ScoreRequest> {
    Request::new(ScoreRequest {
        pairs: pairs(passages),
        raw_scores: true,
    })
}

#[tokio::test(start_paused = true)]
async fn scores_come_back_in_order_raw_or_as_sigmoid() {
    let svc = service(true);
    let r = svc.score(score(&["abc", "a", "abcdef"])).await.expect("ok");
    assert_eq!(r.get_ref().scores, vec![3.0, 1.0, 6.0]);
    let t = r.get_ref().timing.expect("timing");
    assert_eq!(
        t.queue_ns, 20_000_000,
        "the deadline policy's 20 ms, exactly"
    );
    assert_eq!(t.batches, 1);
    let mut req = score(&["", "a"]);
    req.get_mut().raw_scores = false;
    let r = svc.score(req).await.expect("ok");
    assert_eq!(r.get_ref().scores, vec![0.5, 1.0 / (1.0 + (-1.0f32).exp())]);
}

#[tokio::test(start_paused = true)]
async fn rerank_orders_best_first_and_keeps_ties_in_request_order() {
    let svc = service(true);
    let r = svc
        .rerank(Request::new(RerankRequest {
            query: "q".into(),
            passages: vec!["ab".into(), "abcd".into(), "xy".into(), "a".into()],
            top_n: Some(3),
            return_text: true,
            raw_scores: true,
        }))
        .await
        .expect("ok");
    let ranks: Vec<(u32, f32, Option<String>)> = r
        .get_ref()
        .ranks
        .iter()
        .map(|k| (k.index, k.score, k.text.clone()))
        .collect();
    assert_eq!(
        ranks,
        vec![
            (1, 4.0, Some("abcd".into())),
            (0, 2.0, Some("ab".into())),
            (2, 2.0, Some("xy".into()))
        ]
    );
}

#[tokio::test(start_paused = true)]
async fn bad_calls_get_invalid_argument_naming_the_field() {
    let svc = service(true);
    let cases: Vec<(Request<ScoreRequest>, &str)> = vec![
        (score(&[]), "pairs is empty"),
        (score(&["x"; 11]), "11 pairs"),
        (score(&["x", &"y".repeat(51)]), "pairs[1].passage"),
    ];
    for (req, want) in cases {
        let err = svc.score(req).await.expect_err("refused");
        assert_eq!(err.code(), Code::InvalidArgument, "{}", err.message());
        assert!(
            err.message().contains(want),
            "{:?} should name {want:?}",
            err.message()
        );
    }
}

#[tokio::test(start_paused = true)]
async fn codes_for_a_loading_server_a_deadline_and_a_failing_model() {
    let loading = service(false);
    let err = loading.score(score(&["a"])).await.expect_err("loading");
    assert_eq!(err.code(), Code::Unavailable);
    let err = loading
        .info(Request::new(InfoRequest {}))
        .await
        .expect_err("loading");
    assert_eq!(err.code(), Code::Unavailable);

    let svc = service(true);
    // A passage "boom" fails its batch: INTERNAL for that call only.
    let err = svc.score(score(&["boom"])).await.expect_err("model failed");
    assert_eq!(err.code(), Code::Internal);
    assert!(err.message().contains("boom"), "{}", err.message());
    svc.score(score(&["fine"]))
        .await
        .expect("next call is fine");

    // A panic inside the tokenizer fails that call with INTERNAL; the server goes on.
    let err = svc
        .score(score(&["fine", "tokenizer panic"]))
        .await
        .expect_err("tokenizer panicked");
    assert_eq!(err.code(), Code::Internal);
    assert!(err.message().contains("told to panic"), "{}", err.message());
    svc.score(score(&["fine"])).await.expect("still serving");

    // 100 ms grpc-timeout, 20 ms batch timeout: answered in time.
    let mut req = score(&["a"]);
    req.metadata_mut()
        .insert("grpc-timeout", "100m".parse().expect("ascii"));
    svc.score(req).await.expect("within its deadline");
    // 10 ms: the call's deadline (less a safety margin) comes before the batch closes,
    // so it expires in the queue, with nothing scored.
    let mut req = score(&["a"]);
    req.metadata_mut()
        .insert("grpc-timeout", "10m".parse().expect("ascii"));
    let err = svc.score(req).await.expect_err("too short");
    assert_eq!(err.code(), Code::DeadlineExceeded);
    assert!(
        err.message().contains("in the queue") && err.message().contains("no pair"),
        "{}",
        err.message()
    );
}

// Real time: the deadline must pass while the tokenizer (an OS thread, 150 ms on
// "slow") works; only "at least" matters, so no machine is too fast or too slow for it.
#[tokio::test]
async fn a_deadline_that_passes_while_tokenizing_stops_the_tokenizer() {
    let (svc, _metrics, gate) = harness(true, Duration::from_millis(20));
    let mut req = score(&["slow", "counted", "counted"]);
    req.metadata_mut()
        .insert("grpc-timeout", "50m".parse().expect("ascii"));
    let err = svc.score(req).await.expect_err("past its deadline");
    assert_eq!(err.code(), Code::DeadlineExceeded);
    assert!(
        err.message().contains("while tokenizing"),
        "{}",
        err.message()
    );
    // The single tokenizer thread runs jobs in order: once this call is tokenized, the
    // one before it has finished, and it never reached its "counted" pairs.
    svc.score(score(&["a"])).await.expect("ok");
    assert_eq!(
        gate.counted.load(Ordering::SeqCst),
        0,
        "tokenized past its deadline"
    );
}

#[tokio::test]
async fn an_abandoned_call_stops_tokenizing_and_frees_its_admission() {
    let (svc, metrics, gate) = harness(true, Duration::from_millis(20));
    let call = tokio::spawn({
        let svc = svc.clone();
        async move {
            let mut passages = vec!["gate"];
            passages.extend(["counted"; 9]);
            svc.score(score(&passages)).await
        }
    });
    gate.wait_entered(1).await;
    // The client goes away while its first pair is in the tokenizer.
    call.abort();
    let _ = call.await;
    gate.open();
    // Ten more pairs fit the capacity of 16 only once the abandoned call's ten have
    // been released.
    let r = svc
        .score(score(&["a"; 10]))
        .await
        .expect("admitted after the abandoned call left");
    assert_eq!(r.get_ref().scores.len(), 10);
    assert_eq!(
        gate.counted.load(Ordering::SeqCst),
        0,
        "tokenized for nobody"
    );
    assert!(
        metrics
            .render()
            .lines()
            .any(|l| l == "crossbatch_requests_total{outcome=\"cancelled\"} 1")
    );
}

// Admission counts the pairs still being tokenized: with the first call's 7 held in
// the tokenizer (none queued yet), a call of 10 would pass the capacity of 16 and is
// refused before any of its work, whatever the clock says.
#[tokio::test]
async fn a_call_that_would_overflow_capacity_is_refused_before_tokenizing() {
    let (svc, _metrics, gate) = harness(true, Duration::from_millis(20));
    let first = tokio::spawn({
        let svc = svc.clone();
        async move {
            svc.score(score(&["gate", "x", "x", "x", "x", "x", "x"]))
                .await
        }
    });
    gate.wait_entered(1).await;
    let info = svc.info(Request::new(InfoRequest {})).await.expect("info");
    assert_eq!(
        info.get_ref().queued_pairs,
        0,
        "still tokenizing, not queued"
    );
    let err = svc
        .score(score(&["counted"; 10]))
        .await
        .expect_err("no room");
    assert_eq!(err.code(), Code::ResourceExhausted, "{}", err.message());
    assert!(
        err.message().contains("7 pairs in flight"),
        "{}",
        err.message()
    );
    // A call that fits is admitted while the first is still held.
    let fits = tokio::spawn({
        let svc = svc.clone();
        async move { svc.score(score(&["y"; 9])).await }
    });
    gate.open();
    assert_eq!(
        first
            .await
            .expect("task")
            .expect("ok")
            .get_ref()
            .scores
            .len(),
        7
    );
    assert_eq!(
        fits.await
            .expect("task")
            .expect("ok")
            .get_ref()
            .scores
            .len(),
        9
    );
    assert_eq!(
        gate.counted.load(Ordering::SeqCst),
        0,
        "the refused call was never tokenized"
    );
}

#[tokio::test(start_paused = true)]
async fn every_outcome_is_counted_a_cancelled_call_included() {
    let (svc, metrics) = service_and_metrics(true, Duration::from_millis(20));
    svc.score(score(&["a"])).await.expect("ok");
    svc.score(score(&[])).await.expect_err("invalid");
    // The client goes away 5 ms in, while the call waits for its batch (20 ms).
    let gone = tokio::time::timeout(Duration::from_millis(5), svc.score(score(&["b"]))).await;
    assert!(gone.is_err(), "the call was still waiting");
    let text = metrics.render();
    for line in [
        "crossbatch_requests_total{outcome=\"ok\"} 1",
        "crossbatch_requests_total{outcome=\"invalid_argument\"} 1",
        "crossbatch_requests_total{outcome=\"cancelled\"} 1",
        "crossbatch_request_duration_seconds_count 3",
    ] {
        assert!(
            text.lines().any(|l| l == line),
            "missing {line:?} in\n{text}"
        );
    }
}
