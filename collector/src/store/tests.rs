//! The store's keying: server spans by replica, batches by (replica, batch id).

use crossbatch_proto::attrs as a;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value::Value};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span};

use super::Store;

const T0: u64 = 1_700_000_000_000_000_000;

fn kv(key: &str, v: Value) -> KeyValue {
    KeyValue {
        key: key.into(),
        value: Some(AnyValue { value: Some(v) }),
        ..Default::default()
    }
}

fn s(v: &str) -> Value {
    Value::StringValue(v.into())
}

fn i(v: i64) -> Value {
    Value::IntValue(v)
}

/// The driver's span of call `n`, answered (it says) by `answered_by`.
fn client(n: u8, answered_by: Option<&str>) -> Span {
    let t = T0 + n as u64 * 1_000_000;
    let mut attributes = vec![
        kv(a::RUN_ID, s("r")),
        kv(a::DRIVER_ID, s("d0")),
        kv(a::STEP, i(0)),
        kv(a::BATCH, i(2)),
        kv(a::CONCURRENCY, i(1)),
        kv(a::PAIRS, i(2)),
        kv(a::STATUS, s("OK")),
        kv(a::LATENCY_US, i(900)),
        kv(a::ATTEMPTS, i(1)),
    ];
    if let Some(who) = answered_by {
        attributes.push(kv(a::SERVER_INSTANCE, s(who)));
    }
    Span {
        trace_id: vec![n; 16],
        span_id: vec![n; 8],
        name: a::CLIENT_SPAN.into(),
        start_time_unix_nano: t,
        end_time_unix_nano: t + 900_000,
        attributes,
        ..Default::default()
    }
}

/// A server span of call `n` lasting `us` µs.
fn server(name: &str, n: u8, us: u64, attributes: Vec<KeyValue>) -> Span {
    let t = T0 + n as u64 * 1_000_000;
    Span {
        trace_id: vec![n; 16],
        span_id: vec![n, 2, 2, 2, 2, 2, 2, name.len() as u8],
        name: name.into(),
        kind: 2,
        start_time_unix_nano: t,
        end_time_unix_nano: t + us * 1000,
        attributes,
        ..Default::default()
    }
}

fn rpc(n: u8, status: &str) -> Span {
    server(
        "crossbatch.v1.CrossEncoder/Score",
        n,
        800,
        vec![kv("rpc.response.status_code", s(status))],
    )
}

fn inference(n: u8, batch: i64, pairs: i64) -> Span {
    server(
        "inference",
        n,
        500,
        vec![kv("batch.id", i(batch)), kv("batch.pairs", i(pairs))],
    )
}

/// Spans from one resource; `instance` its `service.instance.id` (None: unnamed).
fn from(instance: Option<&str>, spans: Vec<Span>) -> ResourceSpans {
    ResourceSpans {
        resource: Some(Resource {
            attributes: instance
                .map(|v| vec![kv(a::SERVICE_INSTANCE_ID, s(v))])
                .unwrap_or_default(),
            ..Default::default()
        }),
        scope_spans: vec![ScopeSpans {
            spans,
            ..Default::default()
        }],
        ..Default::default()
    }
}

fn ingest(store: &mut Store, resources: Vec<ResourceSpans>) {
    store.ingest_traces(&ExportTraceServiceRequest {
        resource_spans: resources,
    });
}

#[test]
fn batches_of_two_replicas_with_the_same_id_are_both_kept() {
    let mut store = Store::new(1000);
    ingest(
        &mut store,
        vec![
            from(None, vec![client(1, Some("a")), client(2, Some("b"))]),
            from(Some("a"), vec![rpc(1, "OK"), inference(1, 0, 3)]),
            from(Some("b"), vec![rpc(2, "OK"), inference(2, 0, 5)]),
        ],
    );
    let d = store.run_data("r");
    let mut got: Vec<(String, i64, usize)> = d
        .batches
        .iter()
        .map(|b| (b.instance.clone(), b.id, b.pairs))
        .collect();
    got.sort();
    assert_eq!(got, [("a".into(), 0, 3), ("b".into(), 0, 5)]);
    for (call, want) in d.calls.iter().zip(["a", "b"]) {
        assert_eq!(call.instance, want);
        let server = call.server.as_ref().expect("joined");
        assert_eq!((server.instance.as_str(), server.rpc), (want, true));
        assert_eq!(server.batch_ids, [0]);
        assert_eq!(server.rpc_ms, Some(0.8));
    }
    // The same (replica, id) again, from another call: the first record stays.
    ingest(
        &mut store,
        vec![
            from(None, vec![client(3, Some("a"))]),
            from(Some("a"), vec![rpc(3, "OK"), inference(3, 0, 9)]),
        ],
    );
    let d = store.run_data("r");
    assert_eq!(d.batches.len(), 2);
    assert!(d.batches.iter().all(|b| b.pairs != 9));
}

#[test]
fn a_server_without_an_instance_is_the_unnamed_replica() {
    let mut store = Store::new(1000);
    ingest(
        &mut store,
        vec![
            from(None, vec![client(1, None), client(2, Some("x"))]),
            from(None, vec![rpc(1, "OK"), inference(1, 7, 2)]),
            from(None, vec![rpc(2, "OK")]),
        ],
    );
    let d = store.run_data("r");
    assert_eq!(d.batches[0].instance, "");
    let by_trace = |n: u8| {
        d.calls
            .iter()
            .find(|c| c.trace_id.starts_with(&format!("{n:02x}")))
            .expect("call")
    };
    // Nobody names a replica: unnamed. The driver names one the server does not:
    // the driver's word, with the unnamed server's spans.
    assert_eq!(by_trace(1).instance, "");
    assert_eq!(by_trace(2).instance, "x");
    assert!(by_trace(2).server.as_ref().is_some_and(|s| s.rpc));
}

#[test]
fn a_retried_call_keeps_each_replicas_stages_apart() {
    let mut store = Store::new(1000);
    // Call 1 failed on a (5 ms queued) and was answered by b (1 ms queued).
    ingest(
        &mut store,
        vec![
            from(
                Some("a"),
                vec![server("queue_wait", 1, 5000, vec![]), rpc(1, "UNAVAILABLE")],
            ),
            from(
                Some("b"),
                vec![server("queue_wait", 1, 1000, vec![]), rpc(1, "OK")],
            ),
            from(None, vec![client(1, Some("b"))]),
        ],
    );
    let d = store.run_data("r");
    let call = &d.calls[0];
    assert_eq!(call.instance, "b");
    let b = call.server.as_ref().expect("b's spans");
    assert_eq!((b.instance.as_str(), b.queue_ms), ("b", Some(1.0)));
    assert_eq!(call.other_servers.len(), 1);
    assert_eq!(call.other_servers[0].instance, "a");
    assert_eq!(call.other_servers[0].queue_ms, Some(5.0));
    // Without the driver's word, the replica that answered OK.
    let mut store = Store::new(1000);
    ingest(
        &mut store,
        vec![
            from(Some("a"), vec![rpc(1, "UNAVAILABLE")]),
            from(Some("b"), vec![rpc(1, "OK")]),
            from(None, vec![client(1, None)]),
        ],
    );
    assert_eq!(store.run_data("r").calls[0].instance, "b");
}
