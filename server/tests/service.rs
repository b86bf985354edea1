//! The gRPC service over a fake scorer, called in process (no socket) under tokio's
//! paused time: validation, codes, deadlines, ordering and a failing model, each in
//! milliseconds.

use std::sync::Arc;
use std::time::Duration;

use crossbatch_model::{Encoded, Layout, Limits, ModelError, Scorer};
use crossbatch_proto::v1::cross_encoder_server::CrossEncoder as Api;
use crossbatch_proto::v1::{InfoRequest, InfoResponse, Pair, RerankRequest, ScoreRequest};
use crossbatch_server::batcher::{BatchPolicy, Batcher, BatcherConfig};
use crossbatch_server::metrics::Metrics;
use crossbatch_server::service::{Limits as CallLimits, Ready, ScoringService};
use tokio::sync::OnceCell;
use tonic::{Code, Request};

/// Scores a pair by its passage's length in bytes; a passage "boom" fails its batch and
/// "tokenizer panic" panics in `encode`.
struct LengthScorer;

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
        if passage == "tokenizer panic" {
            panic!("fake tokenizer told to panic");
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
    let cell = Arc::new(OnceCell::new());
    let metrics = Arc::new(Metrics::default());
    if ready {
        let model: Arc<dyn Scorer> = Arc::new(LengthScorer);
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
        });
    }
    let svc = ScoringService::new(
        cell,
        CallLimits {
            max_client_batch: 10,
            max_text_bytes: 50,
        },
        metrics.clone(),
    );
    (svc, metrics)
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
    // 10 ms: the call's deadline (less a safety margin) comes before the batch closes.
    let mut req = score(&["a"]);
    req.metadata_mut()
        .insert("grpc-timeout", "10m".parse().expect("ascii"));
    let err = svc.score(req).await.expect_err("too short");
    assert_eq!(err.code(), Code::DeadlineExceeded);
}

// Real time here: under paused time the clock would jump while the tokenizer pool (not
// a tokio thread) works, and the first call's batch could close before the second
// call arrives. A 10 s batch timeout keeps the first call queued instead.
#[tokio::test]
async fn a_call_that_would_overflow_the_queue_is_refused_at_once() {
    let svc = service_with(true, Duration::from_secs(10));
    let first = tokio::spawn({
        let svc = svc.clone();
        async move { svc.score(score(&["x"; 7])).await }
    });
    // The queue holds 16 pairs; wait until the first call's 7 are in it (under the max
    // batch of 8, so they wait for the timeout).
    let t = std::time::Instant::now();
    loop {
        let info = svc.info(Request::new(InfoRequest {})).await.expect("info");
        if info.get_ref().queued_pairs == 7 {
            break;
        }
        assert!(
            t.elapsed() < Duration::from_secs(5),
            "first call never queued"
        );
        tokio::task::yield_now().await;
    }
    let t = std::time::Instant::now();
    let err = svc.score(score(&["y"; 10])).await.expect_err("no room");
    assert_eq!(err.code(), Code::ResourceExhausted, "{}", err.message());
    assert!(t.elapsed() < Duration::from_secs(1), "refused at once");
    first.abort();
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
