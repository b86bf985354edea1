//! Reading OTLP attributes as the store needs them: a wrong type or a value out of
//! range reads as absent, never as a panic or a guess.

use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value::Value};
use opentelemetry_proto::tonic::trace::v1::Span;

fn value(kvs: &[KeyValue], key: &str) -> Option<Value> {
    kvs.iter()
        .find(|kv| kv.key == key)
        .and_then(|kv| kv.value.as_ref())
        .and_then(|v: &AnyValue| v.value.clone())
}

pub(super) fn str_attr(kvs: &[KeyValue], key: &str) -> Option<String> {
    match value(kvs, key)? {
        Value::StringValue(s) => Some(s),
        _ => None,
    }
}

pub(super) fn int_attr(kvs: &[KeyValue], key: &str) -> Option<i64> {
    match value(kvs, key)? {
        Value::IntValue(i) => Some(i),
        Value::DoubleValue(d) if d.is_finite() => Some(d as i64),
        Value::StringValue(s) => s.parse().ok(),
        _ => None,
    }
}

pub(super) fn uint_attr(kvs: &[KeyValue], key: &str) -> Option<usize> {
    int_attr(kvs, key).and_then(|i| usize::try_from(i).ok())
}

pub(super) fn f64_attr(kvs: &[KeyValue], key: &str) -> Option<f64> {
    match value(kvs, key)? {
        Value::DoubleValue(d) => Some(d),
        Value::IntValue(i) => Some(i as f64),
        Value::StringValue(s) => s.parse().ok(),
        _ => None,
    }
    .filter(|x| x.is_finite())
}

pub(super) fn bool_attr(kvs: &[KeyValue], key: &str) -> Option<bool> {
    match value(kvs, key)? {
        Value::BoolValue(b) => Some(b),
        _ => None,
    }
}

pub(super) fn duration_ms(s: &Span) -> Option<f64> {
    (s.end_time_unix_nano >= s.start_time_unix_nano && s.start_time_unix_nano > 0)
        .then(|| (s.end_time_unix_nano - s.start_time_unix_nano) as f64 / 1e6)
}
