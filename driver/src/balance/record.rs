//! Per endpoint figures of a step: what its measured calls say (answers, failed
//! attempts by code, retries) beside what the pool saw (ejections, whether the
//! endpoint was in rotation at the end, its last good answer).

use std::collections::BTreeMap;

use crossbatch_proto::records::EndpointRecord;

use super::pool::MemberSnapshot;
use crate::stats::Sample;

/// The step's per-endpoint records: `samples` are its calls (warm-up ones are left
/// out), `before` and `after` the pool's snapshots at its start and end.
pub fn endpoint_records(
    samples: &[Sample],
    before: &[MemberSnapshot],
    after: &[MemberSnapshot],
) -> Vec<EndpointRecord> {
    let mut by: BTreeMap<String, EndpointRecord> = BTreeMap::new();
    for s in samples.iter().filter(|s| !s.warmup) {
        for r in &s.retried {
            let e = entry(&mut by, &r.endpoint);
            e.attempts_failed += 1;
            e.retries += 1;
            *e.codes.entry(r.code.name().to_string()).or_default() += 1;
        }
        if s.endpoint.is_empty() {
            continue;
        }
        let e = entry(&mut by, &s.endpoint);
        if !s.instance.is_empty() {
            e.instance = s.instance.clone();
        }
        if s.code.is_ok() {
            e.calls_ok += 1;
        } else {
            e.attempts_failed += 1;
            *e.codes.entry(s.code.name().to_string()).or_default() += 1;
        }
    }
    for m in after {
        let earlier = before
            .iter()
            .find(|b| b.endpoint == m.endpoint)
            .map_or(0, |b| b.ejections);
        let ejections = m.ejections.saturating_sub(earlier);
        let used = by.contains_key(&m.endpoint);
        // An endpoint this step never touched and that stayed healthy adds nothing.
        if !used && ejections == 0 && m.in_rotation {
            continue;
        }
        let e = entry(&mut by, &m.endpoint);
        e.ejections = ejections;
        e.ejected_at_end = !m.in_rotation;
        e.last_ok_unix_nano = m.last_ok_unix_nano;
        if e.instance.is_empty() {
            e.instance = m.instance.clone();
        }
    }
    by.into_values().collect()
}

fn entry<'a>(by: &'a mut BTreeMap<String, EndpointRecord>, key: &str) -> &'a mut EndpointRecord {
    by.entry(key.to_string()).or_insert_with(|| EndpointRecord {
        endpoint: key.to_string(),
        ..Default::default()
    })
}

/// Sums of several steps' records per endpoint (the run's view); the end state is
/// the last step's.
pub fn merge(steps: &[Vec<EndpointRecord>]) -> Vec<EndpointRecord> {
    let mut by: BTreeMap<String, EndpointRecord> = BTreeMap::new();
    for r in steps.iter().flatten() {
        let e = entry(&mut by, &r.endpoint);
        if !r.instance.is_empty() {
            e.instance = r.instance.clone();
        }
        e.calls_ok += r.calls_ok;
        e.attempts_failed += r.attempts_failed;
        e.retries += r.retries;
        e.ejections += r.ejections;
        for (code, n) in &r.codes {
            *e.codes.entry(code.clone()).or_default() += n;
        }
        e.ejected_at_end = r.ejected_at_end;
        e.last_ok_unix_nano = e.last_ok_unix_nano.max(r.last_ok_unix_nano);
    }
    by.into_values().collect()
}

/// The endpoints table the driver prints after its summary.
pub fn table(records: &[EndpointRecord]) -> String {
    use std::fmt::Write;
    let total: usize = records.iter().map(|r| r.calls_ok).sum();
    let mut out = String::from(
        "endpoint              instance              calls_ok   share  failed  retried  ejections  state  failed_by_code\n",
    );
    for r in records {
        let codes: Vec<String> = r.codes.iter().map(|(c, n)| format!("{c}={n}")).collect();
        let _ = writeln!(
            out,
            "{:<21} {:<21} {:>8} {:>6.1}% {:>7} {:>8} {:>10}  {:<5}  {}",
            r.endpoint,
            if r.instance.is_empty() {
                "-"
            } else {
                &r.instance
            },
            r.calls_ok,
            if total == 0 {
                0.0
            } else {
                100.0 * r.calls_ok as f64 / total as f64
            },
            r.attempts_failed,
            r.retries,
            r.ejections,
            if r.ejected_at_end { "out" } else { "in" },
            if codes.is_empty() {
                "-".to_string()
            } else {
                codes.join(" ")
            },
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stats::Retried;
    use crossbatch_proto::StatusCode;
    use tonic::Code;

    fn call(endpoint: &str, instance: &str, code: Code, retried: &[(&str, Code)]) -> Sample {
        Sample {
            run_id: "r".into(),
            driver_id: "d".into(),
            batch: 1,
            concurrency: 1,
            pairs: 1,
            intended_us: 0,
            sent_us: 0,
            latency_us: 1,
            code: code.into(),
            warmup: false,
            server: None,
            endpoint: endpoint.into(),
            instance: instance.into(),
            attempts: 1 + retried.len() as u32,
            retried: retried
                .iter()
                .map(|&(e, c)| Retried {
                    endpoint: e.into(),
                    code: StatusCode(c),
                })
                .collect(),
        }
    }

    fn snap(endpoint: &str, ejections: usize, in_rotation: bool) -> MemberSnapshot {
        MemberSnapshot {
            endpoint: endpoint.into(),
            instance: String::new(),
            ejections,
            in_rotation,
            in_flight: 0,
            last_ok_unix_nano: 7,
        }
    }

    #[test]
    fn counts_answers_retries_and_ejections_per_endpoint() {
        let mut warm = call("a:1", "A", Code::Ok, &[]);
        warm.warmup = true;
        let samples = vec![
            warm,
            call("a:1", "A", Code::Ok, &[]),
            call("a:1", "A", Code::Ok, &[("b:1", Code::Unavailable)]),
            call("c:1", "C", Code::Ok, &[("b:1", Code::Unknown)]),
            call("c:1", "C", Code::InvalidArgument, &[]),
        ];
        let before = [
            snap("a:1", 0, true),
            snap("b:1", 1, true),
            snap("c:1", 0, true),
        ];
        let after = [
            snap("a:1", 0, true),
            snap("b:1", 2, false),
            snap("c:1", 0, true),
            snap("d:1", 0, true),
        ];
        let r = endpoint_records(&samples, &before, &after);
        let keys: Vec<&str> = r.iter().map(|e| e.endpoint.as_str()).collect();
        assert_eq!(
            keys,
            ["a:1", "b:1", "c:1"],
            "an untouched healthy endpoint is left out"
        );
        assert_eq!(
            (r[0].calls_ok, r[0].attempts_failed, r[0].instance.as_str()),
            (2, 0, "A")
        );
        assert_eq!(
            (r[1].calls_ok, r[1].attempts_failed, r[1].retries),
            (0, 2, 2)
        );
        assert_eq!(r[1].codes["UNAVAILABLE"], 1);
        assert_eq!(r[1].codes["UNKNOWN"], 1);
        assert_eq!((r[1].ejections, r[1].ejected_at_end), (1, true));
        assert_eq!(
            (r[2].calls_ok, r[2].attempts_failed, r[2].retries),
            (1, 1, 0)
        );
        assert_eq!(r[2].codes["INVALID_ARGUMENT"], 1);

        let run = merge(&[r.clone(), r]);
        assert_eq!(run[1].retries, 4);
        assert_eq!(run[1].ejections, 2);
        let t = table(&run);
        assert_eq!(t.lines().count(), 4, "{t}");
        assert!(t.contains("UNAVAILABLE=2"), "{t}");
    }
}
