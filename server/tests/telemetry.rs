//! Spans and metrics reach a real OTLP receiver (in process, on loopback) with the
//! caller's trace as parent, the RPC attributes and the batch attributes.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use clap::Parser;
use crossbatch_proto::v1::cross_encoder_client::CrossEncoderClient;
use crossbatch_proto::v1::{Pair, ScoreRequest};
use crossbatch_server::serve::{ServeArgs, serve};
use opentelemetry_proto::tonic::collector::metrics::v1::metrics_service_server::{
    MetricsService, MetricsServiceServer,
};
use opentelemetry_proto::tonic::collector::metrics::v1::{
    ExportMetricsServiceRequest, ExportMetricsServiceResponse,
};
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use opentelemetry_proto::tonic::trace::v1::Span;
use tonic::{Request, Response, Status};

#[derive(Clone, Default)]
struct Receiver {
    spans: Arc<Mutex<Vec<Span>>>,
    metrics: Arc<Mutex<Vec<String>>>,
}

#[tonic::async_trait]
impl TraceService for Receiver {
    async fn export(
        &self,
        request: Request<ExportTraceServiceRequest>,
    ) -> Result<Response<ExportTraceServiceResponse>, Status> {
        let mut spans = self.spans.lock().expect("lock");
        for rs in request.into_inner().resource_spans {
            for ss in rs.scope_spans {
                spans.extend(ss.spans);
            }
        }
        Ok(Response::new(ExportTraceServiceResponse::default()))
    }
}

#[tonic::async_trait]
impl MetricsService for Receiver {
    async fn export(
        &self,
        request: Request<ExportMetricsServiceRequest>,
    ) -> Result<Response<ExportMetricsServiceResponse>, Status> {
        let mut names = self.metrics.lock().expect("lock");
        for rm in request.into_inner().resource_metrics {
            for sm in rm.scope_metrics {
                names.extend(sm.metrics.into_iter().map(|m| m.name));
            }
        }
        Ok(Response::new(ExportMetricsServiceResponse::default()))
    }
}

fn attrs(span: &Span) -> HashMap<String, Value> {
    span.attributes
        .iter()
        .filter_map(|kv| {
            let v = kv.value.as_ref()?.value.clone()?;
            Some((kv.key.clone(), v))
        })
        .collect()
}

fn s(v: &str) -> Value {
    Value::StringValue(v.into())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spans_and_metrics_reach_an_otlp_receiver_under_the_callers_trace() {
    let receiver = Receiver::default();
    let otlp = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let otlp_addr = format!("http://{}", otlp.local_addr().expect("addr"));
    let rx = receiver.clone();
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(TraceServiceServer::new(rx.clone()))
            .add_service(MetricsServiceServer::new(rx))
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(otlp)),
    );

    let telemetry = crossbatch_server::telemetry::init(
        "crossbatch-server",
        Some(&otlp_addr),
        Duration::from_millis(200),
    )
    .expect("telemetry");
    let dir = crossbatch_model::standin::ensure_default().expect("offline stand-in");
    let args = ServeArgs::try_parse_from([
        "serve",
        "--model",
        dir.to_str().expect("utf-8 path"),
        "--backend",
        "cpu",
        "--batch-timeout-ms",
        "5",
        "--sample-interval-ms",
        "200",
    ])
    .expect("args");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = format!("http://{}", listener.local_addr().expect("addr"));
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(serve(args, listener, async move {
        let _ = stopped.await;
    }));

    let trace_id = "0af7651916cd43dd8448eb211c80319c";
    let parent_id = "b7ad6b7169203331";
    let mut client = loop {
        if let Ok(c) = CrossEncoderClient::connect(addr.clone()).await {
            break c;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let mut req = Request::new(ScoreRequest {
            pairs: vec![Pair {
                query: "what is a cross-encoder".into(),
                passage: "A cross-encoder reads the query and passage together.".into(),
            }],
            raw_scores: true,
        });
        req.metadata_mut().insert(
            "traceparent",
            format!("00-{trace_id}-{parent_id}-01")
                .parse()
                .expect("ascii"),
        );
        match client.score(req).await {
            Ok(_) => break,
            Err(e) if e.code() == tonic::Code::Unavailable && Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(100)).await
            }
            Err(e) => panic!("score: {e}"),
        }
    }

    let want_trace = hex_bytes(trace_id);
    let until = Instant::now() + Duration::from_secs(20);
    let (rpc, children) = loop {
        {
            let spans = receiver.spans.lock().expect("lock");
            // Calls answered UNAVAILABLE while the model loaded have no children.
            let found = spans
                .iter()
                .filter(|sp| {
                    sp.trace_id == want_trace && sp.name == "crossbatch.v1.CrossEncoder/Score"
                })
                .find_map(|rpc| {
                    let kids: Vec<Span> = spans
                        .iter()
                        .filter(|c| c.parent_span_id == rpc.span_id)
                        .cloned()
                        .collect();
                    (kids.len() >= 3).then(|| (rpc.clone(), kids))
                });
            if let Some(found) = found {
                break found;
            }
        }
        if Instant::now() >= until {
            let spans = receiver.spans.lock().expect("lock");
            let seen: Vec<(String, String)> = spans
                .iter()
                .map(|sp| {
                    (
                        sp.name.clone(),
                        sp.trace_id.iter().map(|b| format!("{b:02x}")).collect(),
                    )
                })
                .collect();
            panic!("spans never arrived; received {seen:?}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(
        rpc.parent_span_id,
        hex_bytes(parent_id),
        "child of the caller's span"
    );
    let a = attrs(&rpc);
    assert_eq!(a.get("rpc.system"), Some(&s("grpc")));
    assert_eq!(a.get("rpc.system.name"), Some(&s("grpc")));
    assert_eq!(a.get("rpc.service"), Some(&s("crossbatch.v1.CrossEncoder")));
    assert_eq!(a.get("rpc.method"), Some(&s("Score")));
    assert_eq!(a.get("rpc.grpc.status_code"), Some(&Value::IntValue(0)));
    assert_eq!(a.get("rpc.response.status_code"), Some(&s("OK")));

    let names: Vec<&str> = children.iter().map(|c| c.name.as_str()).collect();
    for want in ["tokenize", "queue_wait", "inference"] {
        assert!(names.contains(&want), "{want} missing from {names:?}");
    }
    let inference = children
        .iter()
        .find(|c| c.name == "inference")
        .expect("inference");
    let ia = attrs(inference);
    assert_eq!(ia.get("batch.pairs"), Some(&Value::IntValue(1)));
    for k in [
        "batch.id",
        "batch.tokens",
        "batch.padded_tokens",
        "batch.padding_waste",
    ] {
        assert!(ia.contains_key(k), "inference lacks {k}: {ia:?}");
    }
    assert!(matches!(ia.get("batch.tokens"), Some(Value::IntValue(n)) if *n > 3));

    let until = Instant::now() + Duration::from_secs(20);
    loop {
        let m = receiver.metrics.lock().expect("lock").clone();
        if m.iter().any(|n| n == "process.cpu.percent")
            && m.iter().any(|n| n == "crossbatch.memory.used")
        {
            break;
        }
        assert!(
            Instant::now() < until,
            "resource metrics never arrived: {m:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let _ = stop.send(());
    server.await.expect("task").expect("clean exit");
    drop(telemetry);
}

fn hex_bytes(h: &str) -> Vec<u8> {
    (0..h.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&h[i..i + 2], 16).expect("hex"))
        .collect()
}
