//! The gRPC server over loopback: the stand-in on the CPU backend, real calls.

mod common;

use std::time::{Duration, Instant};

use common::Server;
use crossbatch_proto::v1::{InfoRequest, Pair, RerankRequest, ScoreRequest};
use tonic::transport::Channel;
use tonic::{Code, Request};

fn pair(q: &str, p: &str) -> Pair {
    Pair {
        query: q.into(),
        passage: p.into(),
    }
}

fn raw(pairs: Vec<Pair>) -> ScoreRequest {
    ScoreRequest {
        pairs,
        raw_scores: true,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_scores_equal_offline_scores_for_the_parity_file() {
    let server = Server::start(&["--batch-timeout-ms", "5"]).await;
    let mut c = server.client().await;
    let rows = crossbatch_testkit::parity::reference_rows().expect("reference rows");
    let pairs: Vec<Pair> = rows.iter().map(|r| pair(&r.query, &r.passage)).collect();
    // Offline, one pair per forward: what `crossbatch-server score --batch 1` writes.
    let offline = {
        let dev = crossbatch_model::backend::select(crossbatch_model::backend::BackendChoice::Cpu)
            .expect("cpu");
        let m = crossbatch_model::CrossEncoder::load(
            &crossbatch_model::standin::ensure_default().expect("offline stand-in"),
            dev,
        )
        .expect("loads");
        let p: Vec<(String, String)> = rows
            .iter()
            .map(|r| (r.query.clone(), r.passage.clone()))
            .collect();
        m.score_pairs(&p, 1).expect("scores")
    };
    let resp = c.score(raw(pairs)).await.expect("score").into_inner();
    assert_eq!(resp.scores.len(), 64);
    for (i, ((g, o), r)) in resp.scores.iter().zip(&offline).zip(&rows).enumerate() {
        assert!((g - o).abs() <= 1e-6, "row {i}: grpc {g} vs offline {o}");
        assert!(
            (*g as f64 - r.logit_f64).abs() <= 1e-5,
            "row {i} vs reference"
        );
    }
    let t = resp.timing.expect("timing");
    let real: usize = rows.iter().map(|r| r.seq_len).sum();
    assert_eq!(t.real_tokens as usize, real);
    assert!(t.batches >= 1 && t.inference_ns > 0 && t.total_ns >= t.inference_ns);

    // Sigmoid unless raw_scores.
    let one = c
        .score(ScoreRequest {
            pairs: vec![pair(&rows[0].query, &rows[0].passage)],
            raw_scores: false,
        })
        .await
        .expect("score")
        .into_inner()
        .scores[0];
    let want = 1.0 / (1.0 + (-offline[0]).exp());
    assert!((one - want).abs() <= 1e-6, "{one} vs sigmoid {want}");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pair_scores_the_same_alone_and_in_a_batch_of_96() {
    let server = Server::start(&["--batch-timeout-ms", "5", "--max-batch", "96"]).await;
    let mut c = server.client().await;
    let rows = crossbatch_testkit::parity::reference_rows().expect("reference rows");
    let target = pair(&rows[0].query, &rows[0].passage);
    let alone = c
        .score(raw(vec![target.clone()]))
        .await
        .expect("alone")
        .into_inner();
    let mut many: Vec<Pair> = rows
        .iter()
        .cycle()
        .skip(1)
        .take(95)
        .map(|r| pair(&r.query, &r.passage))
        .collect();
    many.insert(40, target);
    let batch = c.score(raw(many)).await.expect("batch").into_inner();
    assert_eq!(batch.scores.len(), 96);
    let t = batch.timing.expect("timing");
    assert_eq!(t.batches, 1, "96 pairs fit one batch");
    assert!(
        (alone.scores[0] - batch.scores[40]).abs() <= 1e-6,
        "{} vs {}",
        alone.scores[0],
        batch.scores[40]
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lone_request_waits_for_the_timeout_under_deadline_but_not_eager() {
    // A lower bound: the deadline policy holds a lone pair at least its timeout.
    let server = Server::start(&["--batch-timeout-ms", "400", "--batch-policy", "deadline"]).await;
    let mut c = server.client().await;
    let t = Instant::now();
    let r = c
        .score(raw(vec![pair("q", "p")]))
        .await
        .expect("score")
        .into_inner();
    let took = t.elapsed();
    let timing = r.timing.expect("timing");
    assert!(
        took >= Duration::from_millis(400),
        "answered after {took:?}"
    );
    assert!(
        timing.queue_ns >= 400_000_000,
        "queued {} ns",
        timing.queue_ns
    );
    server.stop().await;

    // Eager with a 10-minute timeout: answered, so it did not wait for the timeout.
    let server = Server::start(&["--batch-timeout-ms", "600000", "--batch-policy", "eager"]).await;
    let mut c = server.client().await;
    let r = c
        .score(raw(vec![pair("q", "p")]))
        .await
        .expect("score")
        .into_inner();
    let timing = r.timing.expect("timing");
    assert!(
        timing.queue_ns < 600_000_000_000,
        "eager queued {} ns",
        timing.queue_ns
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overload_is_refused_at_once_and_the_server_recovers() {
    // A batch closes at 9 pairs or after 10 minutes; capacity 9 pairs.
    let server = Server::start(&[
        "--batch-policy",
        "deadline",
        "--batch-timeout-ms",
        "600000",
        "--max-batch",
        "9",
        "--max-queue-pairs",
        "9",
        "--max-client-batch",
        "8",
    ])
    .await;
    let mut c = server.client().await;
    let mut c2 = c.clone();
    let eight: Vec<Pair> = (0..8)
        .map(|i| pair("query", &format!("passage {i}")))
        .collect();
    let first = tokio::spawn(async move { c2.score(raw(eight)).await });
    common::wait_info(&mut c, "the first call's 8 pairs queued", |i| {
        i.queued_pairs == 8
    })
    .await;
    // Refused while the first call still waits: the refusal did not wait for a batch.
    let err = c
        .score(raw(vec![pair("two", "more"), pair("two", "more")]))
        .await
        .expect_err("at capacity");
    assert_eq!(err.code(), Code::ResourceExhausted, "{err}");
    assert!(
        err.message().contains("8 pairs in flight")
            && err.message().contains("--max-queue-pairs 9"),
        "{}",
        err.message()
    );
    assert!(!first.is_finished(), "the first call was still queued");
    let info = c.info(InfoRequest {}).await.expect("info").into_inner();
    assert_eq!(
        (info.max_batch, info.max_batch_chosen_by.as_str()),
        (9, "--max-batch")
    );
    // One more pair fits and fills the batch: both calls are answered.
    let after = c
        .score(raw(vec![pair("one", "more")]))
        .await
        .expect("recovered");
    assert_eq!(after.into_inner().scores.len(), 1);
    let ok = first.await.expect("task").expect("first call succeeds");
    assert_eq!(ok.into_inner().scores.len(), 8);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_deadlines_and_cancelled_calls_leave_the_queue_before_inference() {
    // No batch closes on its own for 10 minutes.
    let server =
        Server::start(&["--batch-timeout-ms", "600000", "--batch-policy", "deadline"]).await;
    let mut c = server.client().await;

    // A cancelled call: the client gives up once its pair is queued.
    let mut c2 = c.clone();
    let call = tokio::spawn(async move { c2.score(raw(vec![pair("cancel", "me")])).await });
    common::wait_info(&mut c, "the call to cancel queued", |i| i.queued_pairs == 1).await;
    call.abort();

    // A call with a 300 ms deadline: it cannot be answered before the batch timeout,
    // so it ends DEADLINE_EXCEEDED, with nothing scored.
    let mut req = Request::new(raw(vec![pair("late", "call")]));
    req.set_timeout(Duration::from_millis(300));
    let err = c.score(req).await.expect_err("deadline");
    assert_eq!(err.code(), Code::DeadlineExceeded, "{err}");
    assert!(err.message().contains("no pair"), "{}", err.message());

    // Both leave the queue and no forward pass runs for them.
    let info = common::wait_info(&mut c, "the queue empty", |i| i.queued_pairs == 0).await;
    assert_eq!(info.batches_run, 0, "no inference for dropped calls");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_inputs_get_invalid_argument_and_empty_passages_a_score() {
    let server = Server::start(&[
        "--batch-timeout-ms",
        "5",
        "--max-client-batch",
        "4",
        "--max-text-bytes",
        "1000",
    ])
    .await;
    let mut c = server.client().await;
    let cases: Vec<(ScoreRequest, &str)> = vec![
        (raw(vec![]), "pairs is empty"),
        (
            raw((0..5).map(|_| pair("q", "p")).collect()),
            "--max-client-batch",
        ),
        (raw(vec![pair("q", &"x".repeat(1001))]), "--max-text-bytes"),
    ];
    for (req, want) in cases {
        let err = c.score(req).await.expect_err("invalid");
        assert_eq!(err.code(), Code::InvalidArgument, "{err}");
        assert!(
            err.message().contains(want),
            "{:?} lacks {want:?}",
            err.message()
        );
    }
    // Empty and whitespace texts have a defined score: whitespace tokenizes to nothing,
    // so it scores exactly like the empty text ([CLS] q [SEP] [SEP], [CLS] [SEP] [SEP]).
    let r = c
        .score(raw(vec![
            pair("query", ""),
            pair("query", "   "),
            pair("", ""),
            pair(" \t\n", "\u{3000}"),
        ]))
        .await
        .expect("empty texts score")
        .into_inner();
    assert_eq!(r.scores.len(), 4);
    assert!(r.scores.iter().all(|s| s.is_finite()));
    assert_eq!(r.scores[0], r.scores[1]);
    assert_eq!(r.scores[2], r.scores[3]);
    assert_ne!(r.scores[0], r.scores[2]);

    let err = c
        .rerank(RerankRequest {
            query: "q".into(),
            passages: vec![],
            ..Default::default()
        })
        .await
        .expect_err("no passages");
    assert_eq!(err.code(), Code::InvalidArgument);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rerank_sorts_best_first_with_top_n_and_text() {
    let server = Server::start(&["--batch-timeout-ms", "5"]).await;
    let mut c = server.client().await;
    let rows = crossbatch_testkit::parity::reference_rows().expect("reference rows");
    let query = rows[0].query.clone();
    let passages: Vec<String> = rows[..6].iter().map(|r| r.passage.clone()).collect();
    let scores = c
        .score(raw(passages.iter().map(|p| pair(&query, p)).collect()))
        .await
        .expect("score")
        .into_inner()
        .scores;
    let r = c
        .rerank(RerankRequest {
            query,
            passages: passages.clone(),
            top_n: Some(3),
            return_text: true,
            raw_scores: true,
        })
        .await
        .expect("rerank")
        .into_inner();
    assert_eq!(r.ranks.len(), 3);
    let mut want: Vec<usize> = (0..6).collect();
    want.sort_by(|&a, &b| scores[b].total_cmp(&scores[a]));
    for (rank, &i) in r.ranks.iter().zip(&want) {
        assert_eq!(rank.index as usize, i);
        assert_eq!(rank.score, scores[i]);
        assert_eq!(rank.text.as_deref(), Some(passages[i].as_str()));
    }
    let info = c.info(InfoRequest {}).await.expect("info").into_inner();
    assert!(info.stand_in, "the stand-in is named as such");
    assert_eq!(info.backend, "cpu");
    assert_eq!(
        info.batch_policy, "eager",
        "the default, auto, is eager on the CPU"
    );
    // The default cap, auto, is measured on the CPU: the smallest batch within 5% of
    // the best cost per pair, among the sizes the warm-up timed (1, 2, 4, … 32).
    assert!(
        info.max_batch_chosen_by
            .starts_with("auto: smallest batch within 5%"),
        "{}",
        info.max_batch_chosen_by
    );
    assert!(
        [1, 2, 4, 8, 16, 32].contains(&info.max_batch)
            && info
                .max_batch_chosen_by
                .contains(&format!("{}: ", info.max_batch)),
        "max batch {} from {}",
        info.max_batch,
        info.max_batch_chosen_by
    );
    assert_eq!(info.max_input_length, 512);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_finishes_queued_work_then_exits_cleanly() {
    let server =
        Server::start(&["--batch-timeout-ms", "600000", "--batch-policy", "deadline"]).await;
    let mut c = server.client().await;
    let mut c2 = c.clone();
    let call = tokio::spawn(async move { c2.score(raw(vec![pair("finish", "me")])).await });
    common::wait_info(&mut c, "the call queued", |i| i.queued_pairs == 1).await;
    let addr = server.addr.clone();
    server.stop().await;
    let r = call
        .await
        .expect("task")
        .expect("queued call answered during shutdown");
    assert_eq!(r.into_inner().scores.len(), 1);
    // Nothing listens any more.
    assert!(
        Channel::from_shared(addr)
            .expect("uri")
            .connect()
            .await
            .is_err()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prometheus_metrics_count_outcomes_batches_and_queue() {
    let metrics_addr = common::free_addr();
    let server = Server::start(&["--batch-timeout-ms", "5", "--metrics-addr", &metrics_addr]).await;
    let mut c = server.client().await;
    c.score(raw(vec![pair("q", "p"), pair("q2", "p2")]))
        .await
        .expect("ok call");
    c.score(raw(vec![])).await.expect_err("invalid call");
    let body = common::scrape(&metrics_addr).await;
    assert!(body.starts_with("HTTP/1.1 200 OK"), "{body}");
    for line in [
        "crossbatch_requests_total{outcome=\"ok\"} 1",
        "crossbatch_requests_total{outcome=\"invalid_argument\"} 1",
        "crossbatch_request_duration_seconds_count 2",
        "crossbatch_tokenize_duration_seconds_count 1",
        "crossbatch_queue_duration_seconds_count 1",
        "crossbatch_inference_duration_seconds_count 1",
        // OpenMetrics writes float bounds and sums with a decimal point.
        "crossbatch_batch_pairs_bucket{le=\"2.0\"} 1",
        "crossbatch_batch_pairs_sum 2.0",
        "crossbatch_queue_pairs 0",
        "# EOF",
    ] {
        assert!(
            body.lines().any(|l| l == line),
            "missing {line:?} in\n{body}"
        );
    }
    server.stop().await;
}

/// Lists the services over one reflection generation (`v1` or `v1alpha`: the same
/// messages in two packages).
macro_rules! list_services {
    ($version:ident, $channel:expr) => {{
        use tonic_reflection::pb::$version::ServerReflectionRequest;
        use tonic_reflection::pb::$version::server_reflection_client::ServerReflectionClient;
        use tonic_reflection::pb::$version::server_reflection_request::MessageRequest;
        use tonic_reflection::pb::$version::server_reflection_response::MessageResponse;
        let mut c = ServerReflectionClient::new($channel);
        let req = ServerReflectionRequest {
            host: String::new(),
            message_request: Some(MessageRequest::ListServices(String::new())),
        };
        let mut stream = c
            .server_reflection_info(tokio_stream::iter([req]))
            .await
            .expect("reflection")
            .into_inner();
        let resp = stream
            .message()
            .await
            .expect("message")
            .expect("one response");
        let Some(MessageResponse::ListServicesResponse(list)) = resp.message_response else {
            panic!("unexpected reflection answer");
        };
        list.service
            .into_iter()
            .map(|s| s.name)
            .collect::<Vec<String>>()
    }};
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reflection_v1_and_v1alpha_list_the_api_and_health() {
    let server = Server::start(&["--batch-timeout-ms", "5"]).await;
    let v1 = list_services!(v1, server.channel().await);
    let v1alpha = list_services!(v1alpha, server.channel().await);
    for names in [&v1, &v1alpha] {
        for want in ["crossbatch.v1.CrossEncoder", "grpc.health.v1.Health"] {
            assert!(names.iter().any(|n| n == want), "{want} not in {names:?}");
        }
    }
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_length_truncates_every_pair_and_out_of_range_values_stop_the_start() {
    let long = "relevance ".repeat(300);
    let full = Server::start(&[]).await;
    let untruncated = full
        .client()
        .await
        .score(raw(vec![pair("what is relevance", &long)]))
        .await
        .expect("full length")
        .into_inner();
    full.stop().await;
    let server = Server::start(&["--max-length", "16"]).await;
    let mut c = server.client().await;
    let info = c.info(InfoRequest {}).await.expect("info").into_inner();
    assert_eq!(info.max_input_length, 16);
    let short = c
        .score(raw(vec![pair("what is relevance", &long)]))
        .await
        .expect("truncated")
        .into_inner();
    assert_eq!(short.timing.as_ref().expect("timing").real_tokens, 16);
    let full_tokens = untruncated.timing.as_ref().expect("timing").real_tokens;
    assert!(full_tokens > 300, "{full_tokens} tokens untruncated");
    assert_ne!(
        short.scores, untruncated.scores,
        "truncation changes the input"
    );
    server.stop().await;

    for bad in ["2", "513"] {
        let err = common::start_error(&["--max-length", bad]).await;
        assert!(err.to_string().contains("--max-length"), "{err}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_small_call_is_not_held_behind_a_huge_one() {
    // A 128-pair call of ~120-token passages in batches of 8 (16 forward passes), and
    // a 1-pair call sent once two of its batches have started. Counted in batches, not
    // seconds: the small call must run within a few batches, while the big one still
    // has most of its batches to go.
    let server = Server::start(&["--max-batch", "8", "--batch-policy", "eager"]).await;
    let passage = "the quick brown fox jumps over the lazy dog again and again ".repeat(10);
    let big = raw((0..128)
        .map(|i| pair(&format!("query {i}"), &passage))
        .collect());
    let mut big_client = server.client().await;
    let big_call = tokio::spawn(async move { big_client.score(big).await });
    let mut c = server.client().await;
    let sent_at = common::wait_info(&mut c, "two of the big call's batches started", |i| {
        i.batches_run >= 2
    })
    .await
    .batches_run;
    let small = c
        .score(raw(vec![pair("a small call", "a short passage")]))
        .await
        .expect("small call")
        .into_inner();
    let answered_at = c
        .info(InfoRequest {})
        .await
        .expect("info")
        .into_inner()
        .batches_run;
    assert_eq!(small.timing.expect("timing").batches, 1);
    let big_result = big_call
        .await
        .expect("task")
        .expect("big call")
        .into_inner();
    assert_eq!(big_result.scores.len(), 128);
    let big_batches = u64::from(big_result.timing.expect("timing").batches);
    assert!(big_batches >= 16, "{big_batches} batches");
    eprintln!(
        "small call sent after batch {sent_at}, answered by batch {answered_at}, of {} in all",
        big_batches + 1
    );
    // The batch running when it arrived, its own, and one more that may have started
    // before this client read the count.
    assert!(
        answered_at <= sent_at + 3,
        "the small call waited from batch {sent_at} to {answered_at}"
    );
    assert!(
        answered_at < big_batches,
        "the small call ({answered_at}) must not wait for the big one ({big_batches} batches)"
    );
    server.stop().await;
}
