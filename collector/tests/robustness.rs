//! The collector on loopback against bad input: malformed and partial OTLP, bytes
//! that are not protobuf, a client that disconnects mid-stream, more data than its
//! memory cap, and a stop before the run finished (a partial report).

mod otlp;

use std::time::Duration;

use crossbatch_collector::serve::{CollectConfig, serve};
use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use opentelemetry_proto::tonic::collector::metrics::v1::metrics_service_client::MetricsServiceClient;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_client::TraceServiceClient;
use opentelemetry_proto::tonic::metrics::v1::{
    Gauge, Metric, NumberDataPoint, ResourceMetrics, ScopeMetrics, metric, number_data_point,
};
use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span};
use otlp::{i, kv, s};
use tokio::io::AsyncWriteExt;

/// A well-formed `client.score` span of run `r1`, trace id `n`.
fn client_span(n: u8, latency_us: i64) -> Span {
    let t0 = 1_700_000_000_000_000_000u64 + n as u64 * 1_000_000;
    Span {
        trace_id: vec![n; 16],
        span_id: vec![n; 8],
        name: "client.score".into(),
        start_time_unix_nano: t0,
        end_time_unix_nano: t0 + latency_us as u64 * 1000,
        attributes: vec![
            kv("bench.run_id", s("r1")),
            kv("bench.driver_id", s("d0")),
            kv("bench.step", i(0)),
            kv("bench.batch", i(2)),
            kv("bench.concurrency", i(1)),
            kv("bench.pairs", i(2)),
            kv("bench.status", s("OK")),
            kv("bench.latency_us", i(latency_us)),
        ],
        ..Default::default()
    }
}

fn export(spans: Vec<Span>) -> ExportTraceServiceRequest {
    ExportTraceServiceRequest {
        resource_spans: vec![ResourceSpans {
            scope_spans: vec![ScopeSpans {
                spans,
                ..Default::default()
            }],
            ..Default::default()
        }],
    }
}

struct Running {
    url: String,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<
        Result<Vec<std::path::PathBuf>, crossbatch_collector::serve::CollectorError>,
    >,
}

async fn start(out: &std::path::Path, max_records: usize) -> Running {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let url = format!("http://{}", listener.local_addr().expect("addr"));
    let cfg = CollectConfig {
        grace: Duration::from_secs(1),
        max_records,
        join_timeout: Duration::from_secs(60),
        ..CollectConfig::new(out, "robust")
    };

    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(serve(cfg, listener, async move {
        let _ = rx.await;
    }));
    Running {
        url,
        stop: Some(tx),
        task,
    }
}

/// Bytes that are not an `ExportTraceServiceRequest`: field 1 (resource_spans, a
/// message) holding an invalid varint.
#[derive(Clone, PartialEq, prost::Message)]
struct NotOtlp {
    #[prost(bytes = "vec", tag = "1")]
    junk: Vec<u8>,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn survives_malformed_data_disconnects_and_stops_with_a_partial_report() {
    let dir = tempfile::tempdir().expect("tmp");
    let mut c = start(dir.path(), 1_000_000).await;
    let mut traces = TraceServiceClient::connect(c.url.clone())
        .await
        .expect("connect");

    // Malformed and partial spans: all acknowledged, none trusted.
    let mut missing_attrs = client_span(9, 1000);
    missing_attrs.attributes.truncate(3);
    let mut backwards = client_span(10, 1000);
    backwards.name = "inference".into();
    backwards.end_time_unix_nano = backwards.start_time_unix_nano - 5;
    let mut bad_id = client_span(11, 1000);
    bad_id.trace_id = vec![1, 2, 3];
    let mut wrong_types = client_span(12, 1000);
    wrong_types.attributes[2] = kv("bench.step", s("not a number"));
    let unknown = Span {
        trace_id: vec![13; 16],
        name: "something.else".into(),
        ..Default::default()
    };
    let mut req = export(vec![missing_attrs, backwards, bad_id, wrong_types, unknown]);
    req.resource_spans.push(ResourceSpans::default());
    traces
        .export(req)
        .await
        .expect("malformed spans are acknowledged");
    traces
        .export(ExportTraceServiceRequest::default())
        .await
        .expect("an empty export is fine");
    let mut metrics = MetricsServiceClient::connect(c.url.clone())
        .await
        .expect("connect");
    metrics
        .export(ExportMetricsServiceRequest {
            resource_metrics: vec![ResourceMetrics {
                scope_metrics: vec![ScopeMetrics {
                    metrics: vec![
                        Metric {
                            name: "process.cpu.percent".into(),
                            data: Some(metric::Data::Gauge(Gauge {
                                data_points: vec![NumberDataPoint {
                                    time_unix_nano: 1,
                                    value: Some(number_data_point::Value::AsDouble(f64::NAN)),
                                    ..Default::default()
                                }],
                            })),
                            ..Default::default()
                        },
                        Metric::default(),
                    ],
                    ..Default::default()
                }],
                ..Default::default()
            }],
        })
        .await
        .expect("malformed metrics are acknowledged");

    // Not protobuf at all: an error status, and the collector keeps serving.
    let ch = tonic::transport::Endpoint::from_shared(c.url.clone())
        .expect("url")
        .connect()
        .await
        .expect("connect");
    let mut raw = tonic::client::Grpc::new(ch);
    raw.ready().await.expect("ready");
    let r: Result<tonic::Response<NotOtlp>, tonic::Status> = raw
        .unary(
            tonic::Request::new(NotOtlp {
                junk: vec![0xff; 12],
            }),
            tonic::codegen::http::uri::PathAndQuery::from_static(
                "/opentelemetry.proto.collector.trace.v1.TraceService/Export",
            ),
            tonic_prost::ProstCodec::default(),
        )
        .await;
    let refused = r.expect_err("undecodable bytes are refused");
    assert_eq!(refused.code(), tonic::Code::InvalidArgument, "{refused:?}");
    assert!(
        refused.message().starts_with("malformed request:"),
        "{}",
        refused.message()
    );

    // A client that disconnects in the middle of an HTTP/2 stream.
    let addr = c.url.trim_start_matches("http://").to_string();
    let mut tcp = tokio::net::TcpStream::connect(&addr).await.expect("tcp");
    tcp.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00\x00\x00\x40\x01\x04\x00\x00\x00\x01")
        .await
        .expect("write");
    drop(tcp);

    // Still receiving: three good calls of run r1 (no completion record yet).
    traces
        .export(export(vec![
            client_span(1, 10_000),
            client_span(2, 20_000),
            client_span(3, 30_000),
        ]))
        .await
        .expect("good export after the bad ones");

    // Stopped before the run finished: a partial report of what arrived.
    let _ = c.stop.take().map(|t| t.send(()));
    let paths = tokio::time::timeout(Duration::from_secs(30), &mut c.task)
        .await
        .expect("stops")
        .expect("task")
        .expect("collector");
    assert_eq!(paths.len(), 1, "{paths:?}");
    let md = std::fs::read_to_string(&paths[0]).expect("md");
    assert!(md.contains("**Partial report:**"), "{md}");
    assert!(md.contains("| 2 | 1 | 6 |"), "3 calls × 2 pairs: {md}");
    assert!(
        md.contains("| d0 |  | 3 | 6 | 6 | 0 | 0/? | lost |"),
        "{md}"
    );
    let json: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(paths[0].with_extension("json")).expect("json"),
    )
    .expect("json");
    let lat = &json["configs"][0]["latency_ms"];
    assert_eq!(lat["p50"], 20.0);
    assert_eq!(lat["max"], 30.0);
    assert_eq!(lat["avg"], 20.0);
    let notes = &json["notes"];
    // 9 missing attrs, 11 bad id, 12 wrong type, 10 backwards: 4 malformed; 1 unknown.
    assert_eq!(notes["malformed_spans"], 4, "{notes}");
    assert_eq!(notes["unknown_spans"], 1, "{notes}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drops_past_the_memory_cap_are_counted_and_named() {
    let dir = tempfile::tempdir().expect("tmp");
    let mut c = start(dir.path(), 5).await;
    let mut traces = TraceServiceClient::connect(c.url.clone())
        .await
        .expect("connect");
    traces
        .export(export(
            (1..=8).map(|n| client_span(n, 1000 * n as i64)).collect(),
        ))
        .await
        .expect("export");
    let _ = c.stop.take().map(|t| t.send(()));
    let paths = (&mut c.task).await.expect("task").expect("collector");
    let md = std::fs::read_to_string(&paths[0]).expect("md");
    assert!(md.contains("dropped at the memory cap: 3"), "{md}");
    assert!(md.contains("| 2 | 1 | 10 |"), "5 calls kept: {md}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forward_passes_every_export_on_unchanged() {
    let dir = tempfile::tempdir().expect("tmp");
    // The forward target: a second collector (any OTLP receiver would do).
    let mut target = start(&dir.path().join("target"), 1_000_000).await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let url = format!("http://{}", listener.local_addr().expect("addr"));
    let spans = dir.path().join("spans.jsonl");
    let cfg = CollectConfig {
        grace: Duration::from_secs(1),
        forward: Some(target.url.clone()),
        spans_out: Some(spans.clone()),
        join_timeout: Duration::from_secs(60),
        ..CollectConfig::new(dir.path().join("front"), "front")
    };
    let (stop_front, front_stopped) = tokio::sync::oneshot::channel::<()>();
    let front = tokio::spawn(serve(cfg, listener, async move {
        let _ = front_stopped.await;
    }));
    let mut traces = TraceServiceClient::connect(url).await.expect("connect");
    for n in 1..=4u8 {
        traces
            .export(export(vec![client_span(n, 1000 * n as i64)]))
            .await
            .expect("export");
    }
    // Stopped at once: the front's partial report waits for the forward queue.
    let _ = stop_front.send(());
    let front_paths = front.await.expect("task").expect("front");
    let front_md = std::fs::read_to_string(&front_paths[0]).expect("front md");
    assert!(
        front_md.contains(&format!(
            "Forwarded to {}: 4 exports delivered; not delivered: 0",
            target.url
        )),
        "{front_md}"
    );
    let _ = target.stop.take().map(|t| t.send(()));
    let paths = (&mut target.task).await.expect("task").expect("target");
    let md = std::fs::read_to_string(&paths[0]).expect("md");
    assert!(md.contains("| 2 | 1 | 8 |"), "all 4 calls forwarded: {md}");
    // And the spans file holds the 4 exports as OTLP JSON.
    let text = std::fs::read_to_string(&spans).expect("spans file");
    assert_eq!(text.lines().count(), 4);
    assert!(
        text.lines().all(|l| l.starts_with("{\"resourceSpans\":")),
        "{text}"
    );
    assert!(
        text.contains("\"traceId\":\"01010101010101010101010101010101\""),
        "hex ids: {text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exports_the_forward_target_never_got_are_counted_and_the_exit_is_bounded() {
    let dir = tempfile::tempdir().expect("tmp");
    // Nothing listens on the target port: every delivery fails.
    let dead = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let dead_url = format!("http://{}", dead.local_addr().expect("addr"));
    drop(dead);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let url = format!("http://{}", listener.local_addr().expect("addr"));
    let cfg = CollectConfig {
        grace: Duration::from_millis(200),
        forward: Some(dead_url.clone()),
        forward_drain: Duration::from_secs(3),
        ..CollectConfig::new(dir.path(), "front")
    };
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let front = tokio::spawn(serve(cfg, listener, async move {
        let _ = stopped.await;
    }));
    let mut traces = TraceServiceClient::connect(url).await.expect("connect");
    for n in 1..=3u8 {
        traces
            .export(export(vec![client_span(n, 1000 * n as i64)]))
            .await
            .expect("the collector acknowledges what it stored");
    }
    let began = std::time::Instant::now();
    let _ = stop.send(());
    let paths = tokio::time::timeout(Duration::from_secs(20), front)
        .await
        .expect("the collector exits within its drain bounds")
        .expect("task")
        .expect("front");
    assert!(began.elapsed() < Duration::from_secs(15));
    let md = std::fs::read_to_string(&paths[0]).expect("md");
    assert!(
        md.contains(&format!(
            "Forwarded to {dead_url}: 0 exports delivered; not delivered: 3"
        )),
        "{md}"
    );
}
