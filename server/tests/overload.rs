//! Overload, end to end: a flood of maximum-size calls at 10x capacity against the
//! server binary (its own process, so its memory is its own), and a drain that runs
//! past its limit.

mod common;

use std::time::{Duration, Instant};

use common::{Process, Server};
use crossbatch_proto::v1::cross_encoder_client::CrossEncoderClient;
use crossbatch_proto::v1::{InfoRequest, Pair, ScoreRequest, ScoreResponse};
use crossbatch_server::serve::StartError;
use tonic::Code;
use tonic::codegen::http;
use tonic::transport::Channel;

async fn connect(url: &str) -> Channel {
    let until = Instant::now() + Duration::from_secs(120);
    loop {
        if let Ok(ch) = Channel::from_shared(url.to_string())
            .expect("uri")
            .connect()
            .await
        {
            let mut c = CrossEncoderClient::new(ch.clone());
            if c.info(InfoRequest {}).await.is_ok() {
                return ch;
            }
        }
        assert!(Instant::now() < until, "server never served");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn call(pairs: usize, passage: &str) -> ScoreRequest {
    ScoreRequest {
        pairs: (0..pairs)
            .map(|i| Pair {
                query: format!("query {i}"),
                passage: passage.to_string(),
            })
            .collect(),
        raw_scores: true,
    }
}

/// Sends already-encoded `ScoreRequest` bytes as a Score call.
async fn score_encoded(
    c: &mut tonic::client::Grpc<Channel>,
    body: bytes::Bytes,
) -> Result<ScoreResponse, tonic::Status> {
    c.ready()
        .await
        .map_err(|e| tonic::Status::unavailable(e.to_string()))?;
    let path = http::uri::PathAndQuery::from_static("/crossbatch.v1.CrossEncoder/Score");
    c.unary(tonic::Request::new(body), path, RawCodec)
        .await
        .map(tonic::Response::into_inner)
}

/// Encodes pre-encoded bytes as they are; decodes the response with prost.
struct RawCodec;

struct RawEncoder;

impl tonic::codec::Encoder for RawEncoder {
    type Item = bytes::Bytes;
    type Error = tonic::Status;

    fn encode(
        &mut self,
        item: bytes::Bytes,
        dst: &mut tonic::codec::EncodeBuf<'_>,
    ) -> Result<(), tonic::Status> {
        bytes::BufMut::put(dst, item);
        Ok(())
    }
}

impl tonic::codec::Codec for RawCodec {
    type Encode = bytes::Bytes;
    type Decode = ScoreResponse;
    type Encoder = RawEncoder;
    type Decoder = tonic_prost::ProstDecoder<ScoreResponse>;

    fn encoder(&mut self) -> Self::Encoder {
        RawEncoder
    }

    fn decoder(&mut self) -> Self::Decoder {
        tonic_prost::ProstDecoder::new(tonic::codec::BufferSettings::default())
    }
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

/// Peak resident memory the flood may add to the warm server (README, "Overload").
const FLOOD_RSS_BOUND: u64 = 256 << 20;

/// 40 clients, each on its own connection, send maximum-size calls (1024 pairs of 2 KiB
/// passages, about 2 MiB each) for 8 s: 40 960 pairs asked against a capacity of 4096.
/// Admitted calls are scored, the rest are refused RESOURCE_EXHAUSTED before they are
/// tokenized; memory stays bounded and the server serves normally afterwards.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_maximum_size_calls_is_refused_before_work_and_memory_stays_bounded() {
    // Pairs cut to 32 tokens keep each forward short on two cores; tokenization still
    // reads every byte of every admitted call.
    let server = Process::start(&["--max-length", "32"]);
    let ch = connect(&server.url).await;
    // Warm, one full call scored: the baseline the flood is measured against.
    let passage = "lorem ipsum dolor sit amet, consectetur adipiscing elit. ".repeat(36);
    assert!(passage.len() >= 2048);
    CrossEncoderClient::new(ch.clone())
        .score(call(1024, &passage))
        .await
        .expect("a full call before the flood");
    let (before, _) = server.rss();

    // Encoded once: each client sends the same bytes, so the clients' own work per
    // call (on the same two cores as the server) is a copy, not a clone and encode.
    let encoded = bytes::Bytes::from(prost::Message::encode_to_vec(&call(1024, &passage)));
    const CLIENTS: usize = 40;
    let flood_for = Duration::from_secs(8);
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..CLIENTS {
        // A connection per client, as separate services would have.
        let ch = Channel::from_shared(server.url.clone())
            .expect("uri")
            .connect()
            .await
            .expect("connect");
        let body = encoded.clone();
        tasks.push(tokio::spawn(async move {
            let mut c = tonic::client::Grpc::new(ch);
            let mut ok = 0usize;
            let mut refused = Vec::new();
            let mut other = Vec::new();
            while started.elapsed() < flood_for {
                let t = Instant::now();
                match score_encoded(&mut c, body.clone()).await {
                    Ok(_) => ok += 1,
                    Err(s) if s.code() == Code::ResourceExhausted => refused.push(t.elapsed()),
                    Err(s) => other.push(format!("{:?}: {}", s.code(), s.message())),
                }
            }
            (ok, refused, other)
        }));
    }
    let mut ok = 0;
    let mut refused = Vec::new();
    let mut other = Vec::new();
    for t in tasks {
        let (o, r, e) = t.await.expect("client task");
        ok += o;
        refused.extend(r);
        other.extend(e);
    }
    let (_, peak) = server.rss();
    refused.sort();
    eprintln!(
        "flood: {ok} calls scored, {} refused (P50 {:?}, P95 {:?}, P99 {:?}, max {:?}); \
         RSS {} MiB warm, peak {} MiB",
        refused.len(),
        percentile(&refused, 0.5),
        percentile(&refused, 0.95),
        percentile(&refused, 0.99),
        refused.last().copied().unwrap_or_default(),
        before >> 20,
        peak >> 20,
    );
    assert!(
        other.is_empty(),
        "only RESOURCE_EXHAUSTED may refuse: {other:?}"
    );
    assert!(ok > 0, "admitted calls were scored during the flood");
    assert!(refused.len() > ok, "most of a 10x flood is refused");
    // Refused before any work: only the calls that were scored were tokenized (the
    // warm-up call included).
    let tokenized = server
        .metric("crossbatch_tokenize_duration_seconds_count")
        .await;
    assert_eq!(tokenized as usize, ok + 1, "a refused call was tokenized");
    let counted = server
        .metric("crossbatch_requests_total{outcome=\"resource_exhausted\"}")
        .await;
    assert_eq!(
        counted as usize,
        refused.len(),
        "every refusal counted once"
    );
    assert!(
        peak.saturating_sub(before) < FLOOD_RSS_BOUND,
        "the flood added {} MiB at peak (bound {} MiB)",
        peak.saturating_sub(before) >> 20,
        FLOOD_RSS_BOUND >> 20
    );

    // Afterwards: nothing held, and a normal call is served.
    let mut c = CrossEncoderClient::new(ch);
    let r = c
        .score(call(8, "a short passage"))
        .await
        .expect("served after the flood");
    assert_eq!(r.get_ref().scores.len(), 8);
    assert_eq!(server.metric("crossbatch_admitted_pairs").await, 0.0);
}

/// A drain that cannot finish in `--drain-timeout`: the calls still queued get
/// UNAVAILABLE saying why, and the server ends with an error rather than waiting.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drain_past_its_timeout_answers_the_queue_unavailable_and_fails_the_exit() {
    let server = Server::start(&["--max-batch", "8", "--drain-timeout", "200ms"]).await;
    let mut c = server.client().await;
    // 12 calls of 8 full-length pairs: many seconds of forward passes on two cores.
    let passage = "relevance ranking with a cross encoder ".repeat(60);
    let mut calls = Vec::new();
    for _ in 0..12 {
        let mut c = c.clone();
        let req = call(8, &passage);
        calls.push(tokio::spawn(async move { c.score(req).await }));
    }
    common::wait_info(&mut c, "most of the calls queued", |i| i.queued_pairs >= 64).await;
    let err = server.stop_result().await.expect_err("the drain timed out");
    assert!(
        matches!(err, StartError::DrainTimeout { queued, .. } if queued > 0),
        "{err}"
    );
    assert!(err.to_string().contains("drain timed out"), "{err}");
    let mut unavailable = 0;
    for call in calls {
        match call.await.expect("task") {
            Ok(r) => assert_eq!(r.get_ref().scores.len(), 8),
            Err(s) => {
                assert_eq!(s.code(), Code::Unavailable, "{s:?}");
                unavailable += 1;
            }
        }
    }
    assert!(unavailable > 0, "queued calls were answered UNAVAILABLE");
}
