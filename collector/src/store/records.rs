//! The drivers' completion records (`bench.step`, `bench.run`) and the server's
//! resource samples, as the store reads them.

use crossbatch_proto::attrs as a;
use crossbatch_proto::records::StepRecord;
use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use opentelemetry_proto::tonic::metrics::v1::{NumberDataPoint, metric::Data, number_data_point};
use opentelemetry_proto::tonic::trace::v1::Span;

use super::attr::{bool_attr, f64_attr, int_attr, str_attr, uint_attr};
use super::{MetricPoint, RunDone, StepDone, Store};

impl Store {
    pub(super) fn ingest_step(&mut self, s: &Span) {
        let at = &s.attributes;
        let rec = (|| {
            Some(StepDone {
                run_id: str_attr(at, a::RUN_ID)?,
                driver_id: str_attr(at, a::DRIVER_ID)?,
                host: str_attr(at, a::HOST).unwrap_or_default(),
                record: StepRecord {
                    step: uint_attr(at, a::STEP)?,
                    batch: uint_attr(at, a::BATCH)?,
                    concurrency: uint_attr(at, a::CONCURRENCY)?,
                    mode: str_attr(at, a::MODE).unwrap_or_else(|| "closed".into()),
                    calls_sent: uint_attr(at, a::CALLS_SENT)?,
                    calls_ok: uint_attr(at, a::CALLS_OK)?,
                    calls_failed: uint_attr(at, a::CALLS_FAILED).unwrap_or(0),
                    pairs_sent: uint_attr(at, a::PAIRS_SENT)?,
                    pairs_ok: uint_attr(at, a::PAIRS_OK)?,
                    warmup_calls: uint_attr(at, a::WARMUP_CALLS).unwrap_or(0),
                    late_calls: uint_attr(at, a::LATE_CALLS).unwrap_or(0),
                    wall_s: f64_attr(at, a::WALL_S)?,
                    interrupted: bool_attr(at, a::INTERRUPTED).unwrap_or(false),
                    retries: uint_attr(at, a::RETRIES).unwrap_or(0),
                    ejections: uint_attr(at, a::EJECTIONS).unwrap_or(0),
                    // A malformed list is dropped, not the whole record: the counts
                    // above still hold.
                    endpoints: str_attr(at, a::ENDPOINTS)
                        .and_then(|j| serde_json::from_str(&j).ok())
                        .unwrap_or_default(),
                },
                start_unix_ns: s.start_time_unix_nano,
                end_unix_ns: s.end_time_unix_nano,
            })
        })();
        match rec {
            Some(r) => {
                // A re-sent record replaces the earlier one.
                self.steps.retain(|o| {
                    !(o.run_id == r.run_id
                        && o.driver_id == r.driver_id
                        && o.record.step == r.record.step)
                });
                self.steps.push(r);
            }
            None => self.counters.malformed_spans += 1,
        }
    }

    pub(super) fn ingest_run(&mut self, s: &Span) {
        let at = &s.attributes;
        let rec = (|| {
            Some(RunDone {
                run_id: str_attr(at, a::RUN_ID)?,
                driver_id: str_attr(at, a::DRIVER_ID)?,
                host: str_attr(at, a::HOST).unwrap_or_default(),
                steps_planned: uint_attr(at, a::STEPS_PLANNED)?,
                steps_done: uint_attr(at, a::STEPS_DONE)?,
                calls_sent: uint_attr(at, a::CALLS_SENT)?,
                calls_ok: uint_attr(at, a::CALLS_OK)?,
                calls_failed: uint_attr(at, a::CALLS_FAILED).unwrap_or(0),
                pairs_sent: uint_attr(at, a::PAIRS_SENT)?,
                pairs_ok: uint_attr(at, a::PAIRS_OK)?,
                interrupted: bool_attr(at, a::INTERRUPTED).unwrap_or(false),
                retries: uint_attr(at, a::RETRIES).unwrap_or(0),
                ejections: uint_attr(at, a::EJECTIONS).unwrap_or(0),
                model: str_attr(at, a::SERVER_MODEL).unwrap_or_default(),
                stand_in: bool_attr(at, a::SERVER_STANDIN).unwrap_or(false),
                backend: str_attr(at, a::SERVER_BACKEND).unwrap_or_default(),
                device: str_attr(at, a::SERVER_DEVICE).unwrap_or_default(),
                max_batch: int_attr(at, a::SERVER_MAX_BATCH).unwrap_or(0).max(0) as u64,
                max_batch_chosen_by: str_attr(at, a::SERVER_MAX_BATCH_CHOSEN_BY)
                    .unwrap_or_default(),
                batch_timeout_ms: int_attr(at, a::SERVER_TIMEOUT_MS).unwrap_or(0).max(0) as u64,
                batch_policy: str_attr(at, a::SERVER_POLICY).unwrap_or_default(),
                start_unix_ns: s.start_time_unix_nano,
                end_unix_ns: s.end_time_unix_nano,
            })
        })();
        match rec {
            Some(r) => {
                self.runs
                    .retain(|o| !(o.run_id == r.run_id && o.driver_id == r.driver_id));
                self.runs.push(r);
            }
            None => self.counters.malformed_spans += 1,
        }
    }

    pub fn ingest_metrics(&mut self, req: &ExportMetricsServiceRequest) {
        for rm in &req.resource_metrics {
            for sm in &rm.scope_metrics {
                for m in &sm.metrics {
                    let points: &[NumberDataPoint] = match &m.data {
                        Some(Data::Gauge(g)) => &g.data_points,
                        Some(Data::Sum(s)) => &s.data_points,
                        _ => &[],
                    };
                    for p in points {
                        self.counters.metric_points += 1;
                        let v = match p.value {
                            Some(number_data_point::Value::AsDouble(d)) => d,
                            Some(number_data_point::Value::AsInt(i)) => i as f64,
                            None => continue,
                        };
                        if !v.is_finite() || p.time_unix_nano == 0 {
                            continue;
                        }
                        if self.full() {
                            self.counters.dropped += 1;
                            continue;
                        }
                        self.metrics.push(MetricPoint {
                            name: m.name.clone(),
                            kind: str_attr(&p.attributes, "memory.kind"),
                            unix_ns: p.time_unix_nano,
                            value: v,
                        });
                    }
                }
            }
        }
    }
}
