//! The run per server replica: who answered how many calls, how fast the server itself
//! was, which driver went where, which replica dropped out, and the drivers' retries
//! and ejections. Figures only; `render_servers` prints them.
//!
//! A call counts under the replica that answered it ([`CallRecord::instance`]): the
//! `service.instance.id` of its server spans, else the `server.instance` its driver
//! heard. Calls no replica claims (a server that names none, a call that failed before
//! any answer) count under the unnamed replica "", shown as `-`.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

use serde::Serialize;

use crate::stats::{Dist, mean};
use crate::store::{BatchRecord, CallRecord, RunData};

/// One replica's share of the run (measured calls only, warm-up apart).
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct ServerRow {
    /// Its `service.instance.id`; "" for calls no replica claims.
    pub instance: String,
    /// Calls it answered, whatever their status.
    pub calls: usize,
    pub calls_ok: usize,
    pub errors: usize,
    pub pairs_ok: usize,
    /// Its fraction (0–1) of the run's measured calls.
    pub share: f64,
    /// Its OK calls as the server timed them (the RPC span), ms.
    pub latency_p50_ms: Option<f64>,
    pub latency_p95_ms: Option<f64>,
    /// Per OK call: time queued for a batch, and time in forward passes, ms.
    pub queue_p50_ms: Option<f64>,
    pub inference_p50_ms: Option<f64>,
    /// Forward passes that ran the calls it answered, and their mean pairs.
    pub batches: usize,
    pub pairs_per_batch: Option<f64>,
    /// From the drivers' endpoint records: attempts that failed on it, and times it
    /// was taken out of rotation.
    pub attempts_failed: usize,
    pub ejections: usize,
    /// Its last answer, seconds since the run's start.
    pub last_seen_s: Option<f64>,
    /// It stopped answering while the run went on ([`lost_at`]).
    pub lost: bool,
    /// When: its last answer, seconds since the run's start; null when not lost.
    pub lost_at_s: Option<f64>,
    /// Its calls per driver id: the driver × replica matrix.
    pub calls_by_driver: BTreeMap<String, usize>,
}

/// The run's counts over every driver.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Totals {
    /// Measured calls received, OK or not.
    pub calls: usize,
    pub calls_ok: usize,
    pub errors: usize,
    pub pairs_ok: usize,
    /// Attempts retried on another endpoint, and endpoints taken out of rotation, as
    /// the drivers counted them: a driver's `bench.run` record, else the sum of its
    /// `bench.step` records.
    pub retries: usize,
    pub ejections: usize,
}

/// Least calls after a replica's last answer that can make it lost.
const LOST_MIN_CALLS: usize = 5;
/// How unlikely its silence must be by chance: under 1 in 1000.
const LOST_CHANCE: f64 = 1e-3;
/// The run must go on at least this long after its last answer.
const LOST_MIN_GAP_NS: u64 = 1_000_000_000;

fn measured(d: &RunData) -> impl Iterator<Item = &CallRecord> {
    d.calls.iter().filter(|c| !c.client.warmup)
}

/// When a named replica was lost, ns since the epoch (its last answer), or `None`.
///
/// The rule: let T be the end of the last call `instance` answered, and the drivers
/// that ever got an answer from it be its drivers. It is lost when
/// - its drivers sent K calls that started after T (none of which it answered, by
///   the choice of T), and K is at least [`LOST_MIN_CALLS`] and large enough that,
///   at its share p of its drivers' calls that started by T, K calls missing it by
///   chance would be under [`LOST_CHANCE`]: (1 − p)^K < 0.001 (p = 1, a pinned
///   driver: any K ≥ 5);
/// - and the run's window ends at least [`LOST_MIN_GAP_NS`] (1 s) after T.
///
/// Only its own drivers count, so a replica whose pinned driver finished early is not
/// lost because other drivers went on; failed calls count (a dead replica's calls fail
/// without an answer). The unnamed replica "" is never lost. The drivers' endpoint
/// records (`ejected_at_end`) are not used: an ejection is a judgement of the balancer
/// and can follow a burst of overload errors from a live replica.
pub fn lost_at(d: &RunData, instance: &str) -> Option<u64> {
    if instance.is_empty() {
        return None;
    }
    let mine: Vec<&CallRecord> = measured(d).filter(|c| c.instance == instance).collect();
    let t = mine.iter().map(|c| c.client.end_unix_ns).max()?;
    if d.window_unix_ns.1 < t.saturating_add(LOST_MIN_GAP_NS) {
        return None;
    }
    let drivers: HashSet<&str> = mine.iter().map(|c| c.client.driver_id.as_str()).collect();
    let theirs = measured(d).filter(|c| drivers.contains(c.client.driver_id.as_str()));
    let (mut before, mut after) = (0usize, 0usize);
    for c in theirs {
        if c.client.start_unix_ns > t {
            after += 1;
        } else {
            before += 1;
        }
    }
    let p = mine.len() as f64 / before.max(1) as f64;
    let needed = if p >= 1.0 {
        LOST_MIN_CALLS
    } else {
        let k = (LOST_CHANCE.ln() / (1.0 - p).ln()).ceil();
        if k.is_finite() {
            (k as usize).max(LOST_MIN_CALLS)
        } else {
            usize::MAX
        }
    };
    (after >= needed).then_some(t)
}

/// Seconds from the run's start to `unix_ns`.
fn since_start(d: &RunData, unix_ns: u64) -> f64 {
    unix_ns.saturating_sub(d.window_unix_ns.0) as f64 / 1e9
}

/// One row per replica: every replica that answered a measured call or that a
/// driver's endpoint record names; named replicas in name order, the unnamed last.
pub fn rows(d: &RunData) -> Vec<ServerRow> {
    let total = measured(d).count();
    let batches: HashMap<(&str, i64), &BatchRecord> = d
        .batches
        .iter()
        .map(|b| ((b.instance.as_str(), b.id), b))
        .collect();
    let mut by: BTreeMap<&str, Vec<&CallRecord>> = BTreeMap::new();
    for c in measured(d) {
        by.entry(c.instance.as_str()).or_default().push(c);
    }
    // The drivers' endpoint records, per replica; an endpoint that never named its
    // replica is matched through the calls that reached it.
    let replica_of: HashMap<&str, &str> = measured(d)
        .filter(|c| !c.instance.is_empty())
        .filter_map(|c| Some((c.client.endpoint.as_deref()?, c.instance.as_str())))
        .collect();
    let mut failed: BTreeMap<&str, (usize, usize)> = BTreeMap::new();
    for e in d.steps.iter().flat_map(|s| &s.record.endpoints) {
        let name = if e.instance.is_empty() {
            replica_of.get(e.endpoint.as_str()).copied()
        } else {
            Some(e.instance.as_str())
        };
        if let Some(name) = name {
            let f = failed.entry(name).or_default();
            f.0 += e.attempts_failed;
            f.1 += e.ejections;
            by.entry(name).or_default();
        }
    }
    let mut out: Vec<ServerRow> = by
        .into_iter()
        .map(|(instance, calls)| {
            let ok: Vec<&&CallRecord> = calls.iter().filter(|c| c.client.status.is_ok()).collect();
            let server = |get: fn(&crate::store::ServerPart) -> Option<f64>| {
                Dist::of(
                    &ok.iter()
                        .filter_map(|c| c.server.as_ref().and_then(get))
                        .collect::<Vec<_>>(),
                )
            };
            let latency = server(|s| s.rpc_ms);
            let keys: BTreeSet<(&str, i64)> = calls
                .iter()
                .filter_map(|c| c.server.as_ref())
                .flat_map(|s| s.batch_ids.iter().map(|&id| (s.instance.as_str(), id)))
                .collect();
            let pairs: Vec<f64> = keys
                .iter()
                .filter_map(|k| batches.get(k))
                .map(|b| b.pairs as f64)
                .collect();
            let mut calls_by_driver = BTreeMap::new();
            for c in &calls {
                *calls_by_driver
                    .entry(c.client.driver_id.clone())
                    .or_insert(0) += 1;
            }
            let lost = lost_at(d, instance);
            let (attempts_failed, ejections) = failed.get(instance).copied().unwrap_or_default();
            ServerRow {
                instance: instance.to_string(),
                calls: calls.len(),
                calls_ok: ok.len(),
                errors: calls.len() - ok.len(),
                pairs_ok: ok.iter().map(|c| c.client.pairs).sum(),
                share: if total > 0 {
                    calls.len() as f64 / total as f64
                } else {
                    0.0
                },
                latency_p50_ms: latency.map(|l| l.p50),
                latency_p95_ms: latency.map(|l| l.p95),
                queue_p50_ms: server(|s| s.queue_ms).map(|q| q.p50),
                inference_p50_ms: server(|s| s.inference_ms).map(|q| q.p50),
                batches: pairs.len(),
                pairs_per_batch: mean(&pairs),
                attempts_failed,
                ejections,
                last_seen_s: calls
                    .iter()
                    .map(|c| c.client.end_unix_ns)
                    .max()
                    .map(|t| since_start(d, t)),
                lost: lost.is_some(),
                lost_at_s: lost.map(|t| since_start(d, t)),
                calls_by_driver,
            }
        })
        .collect();
    // The unnamed replica last.
    out.sort_by_key(|r| (r.instance.is_empty(), r.instance.clone()));
    out
}

/// The run's totals: call counts from the calls, retries and ejections from the
/// drivers' records.
pub fn totals(d: &RunData) -> Totals {
    let calls: Vec<&CallRecord> = measured(d).collect();
    let ok: Vec<&&CallRecord> = calls.iter().filter(|c| c.client.status.is_ok()).collect();
    let mut drivers: BTreeSet<&str> = d.runs.iter().map(|r| r.driver_id.as_str()).collect();
    drivers.extend(d.steps.iter().map(|s| s.driver_id.as_str()));
    let (mut retries, mut ejections) = (0, 0);
    for id in drivers {
        match d.runs.iter().find(|r| r.driver_id == id) {
            Some(r) => {
                retries += r.retries;
                ejections += r.ejections;
            }
            None => {
                for s in d.steps.iter().filter(|s| s.driver_id == id) {
                    retries += s.record.retries;
                    ejections += s.record.ejections;
                }
            }
        }
    }
    Totals {
        calls: calls.len(),
        calls_ok: ok.len(),
        errors: calls.len() - ok.len(),
        pairs_ok: ok.iter().map(|c| c.client.pairs).sum(),
        retries,
        ejections,
    }
}

#[cfg(test)]
mod tests {
    use crossbatch_proto::StatusCode;
    use crossbatch_proto::records::{EndpointRecord, StepRecord};

    use super::*;
    use crate::store::{ClientPart, RunDone, ServerPart, StepDone};

    const S: u64 = 1_000_000_000;
    const T0: u64 = 1_700_000_000 * S;

    /// A measured call of `driver`, answered by `instance` ("" none) with `status`,
    /// from `at_ms` after T0, 10 ms long.
    fn call(driver: &str, instance: &str, at_ms: u64, status: tonic::Code) -> CallRecord {
        let start = T0 + at_ms * 1_000_000;
        CallRecord {
            trace_id: format!("{driver}-{at_ms}"),
            instance: instance.into(),
            client: ClientPart {
                run_id: "r".into(),
                driver_id: driver.into(),
                step: 0,
                steps_planned: None,
                batch: 2,
                concurrency: 1,
                pairs: 2,
                warmup: false,
                status: StatusCode(status),
                latency_ms: 10.0,
                start_unix_ns: start,
                end_unix_ns: start + 10_000_000,
                intended_unix_ns: start,
                server_instance: Some(instance.into()),
                endpoint: None,
                attempts: Some(1),
            },
            server: (!instance.is_empty()).then(|| ServerPart {
                instance: instance.into(),
                rpc: true,
                status: Some(StatusCode(status)),
                rpc_ms: Some(8.0),
                queue_ms: Some(1.0),
                inference_ms: Some(5.0),
                batch_ids: vec![at_ms as i64],
                batch_pairs: vec![2],
                ..Default::default()
            }),
            other_servers: Vec::new(),
        }
    }

    fn run(calls: Vec<CallRecord>) -> RunData {
        let lo = calls
            .iter()
            .map(|c| c.client.start_unix_ns)
            .min()
            .unwrap_or(0);
        let hi = calls
            .iter()
            .map(|c| c.client.end_unix_ns)
            .max()
            .unwrap_or(0);
        RunData {
            run_id: "r".into(),
            calls,
            window_unix_ns: (lo, hi),
            ..Default::default()
        }
    }

    /// Two replicas behind one driver, a call every 100 ms for 10 s alternating;
    /// replica `b` answers only until `b_until_ms`, after which its calls fail (or go
    /// to `a`, with `failover`).
    fn two_replicas(b_until_ms: u64, failover: bool) -> RunData {
        let calls = (0..100)
            .map(|k| {
                let at = k * 100;
                match (k % 2, at < b_until_ms) {
                    (0, _) => call("d0", "a", at, tonic::Code::Ok),
                    (_, true) => call("d0", "b", at, tonic::Code::Ok),
                    (_, false) if failover => call("d0", "a", at, tonic::Code::Ok),
                    _ => call("d0", "", at, tonic::Code::Unavailable),
                }
            })
            .collect();
        run(calls)
    }

    #[test]
    fn a_replica_that_stops_answering_mid_run_is_lost_at_its_last_answer() {
        let d = two_replicas(4_000, true);
        let got = rows(&d);
        let b = got.iter().find(|r| r.instance == "b").expect("b");
        assert!(b.lost);
        // Its last call started at 3.9 s and took 10 ms.
        assert_eq!(b.lost_at_s, Some(3.91));
        let a = got.iter().find(|r| r.instance == "a").expect("a");
        assert!(!a.lost && a.lost_at_s.is_none());
        // Failed calls instead of failover: lost too, and they count as unclaimed.
        let d = two_replicas(4_000, false);
        let got = rows(&d);
        assert!(got.iter().any(|r| r.instance == "b" && r.lost));
        let last = got.last().expect("rows");
        assert_eq!(
            (last.instance.as_str(), last.lost, last.errors),
            ("", false, 30)
        );
    }

    #[test]
    fn a_replica_silent_only_briefly_or_by_chance_is_not_lost() {
        // b stops for the last 0.2 s only (under 1 s): not lost.
        assert!(lost_at(&two_replicas(9_800, true), "b").is_none());
        // Half the calls for 6 s, then 6 calls (< 10 needed at p = ½) over 0.6 s
        // plus a step record 2 s later: not lost.
        let mut d = two_replicas(6_000, true);
        d.calls
            .retain(|c| c.client.start_unix_ns < T0 + 6_600 * 1_000_000);
        d.window_unix_ns.1 = T0 + 8 * S;
        assert!(lost_at(&d, "b").is_none());
        // The same with 10 calls after it: lost.
        let mut d = two_replicas(6_000, true);
        d.calls
            .retain(|c| c.client.start_unix_ns < T0 + 7_000 * 1_000_000);
        d.window_unix_ns.1 = T0 + 8 * S;
        assert!(lost_at(&d, "b").is_some());
    }

    #[test]
    fn a_replica_whose_pinned_driver_finished_is_not_lost() {
        // d0 pinned to a for 3 s then done; d1 pinned to b for 10 s.
        let mut calls: Vec<CallRecord> = (0..30)
            .map(|k| call("d0", "a", k * 100, tonic::Code::Ok))
            .collect();
        calls.extend((0..100).map(|k| call("d1", "b", k * 100, tonic::Code::Ok)));
        let d = run(calls.clone());
        assert!(rows(&d).iter().all(|r| !r.lost));
        // d0 went on failing after a stopped: a is lost; 5 failures are enough.
        calls.extend((30..35).map(|k| call("d0", "", k * 100, tonic::Code::Unavailable)));
        let d = run(calls);
        let got = rows(&d);
        let a = got.iter().find(|r| r.instance == "a").expect("a");
        assert_eq!(a.lost_at_s, Some(2.91));
        assert_eq!(a.calls_by_driver, BTreeMap::from([("d0".to_string(), 30)]));
        assert!(
            lost_at(&d, "").is_none(),
            "the unnamed replica is never lost"
        );
    }

    #[test]
    fn rows_count_calls_shares_batches_and_the_matrix() {
        let mut calls = vec![
            call("d0", "a", 0, tonic::Code::Ok),
            call("d1", "a", 10, tonic::Code::Ok),
            call("d1", "b", 20, tonic::Code::ResourceExhausted),
            call("d0", "b", 30, tonic::Code::Ok),
        ];
        // Both of b's calls ran in its batch 0; a's in its batches 0 and 10: the
        // same id on two replicas is two batches.
        for c in &mut calls[2..] {
            if let Some(s) = c.server.as_mut() {
                s.batch_ids = vec![0];
            }
        }
        calls[0].server.as_mut().expect("server").batch_ids = vec![0];
        let mut d = run(calls);
        d.batches = [("a", 0, 3), ("a", 10, 1), ("b", 0, 4)]
            .iter()
            .map(|&(i, id, pairs)| BatchRecord {
                instance: i.into(),
                id,
                start_unix_ns: T0,
                inference_ms: 5.0,
                pairs,
                tokens: 0,
                padded_tokens: 0,
                padding_waste_pct: 0.0,
            })
            .collect();
        let got = rows(&d);
        assert_eq!(got.len(), 2);
        let (a, b) = (&got[0], &got[1]);
        assert_eq!((a.calls, a.calls_ok, a.pairs_ok, a.share), (2, 2, 4, 0.5));
        assert_eq!((a.batches, a.pairs_per_batch), (2, Some(2.0)));
        assert_eq!((b.calls, b.errors, b.pairs_ok), (2, 1, 2));
        assert_eq!((b.batches, b.pairs_per_batch), (1, Some(4.0)));
        assert_eq!(a.latency_p50_ms, Some(8.0));
        assert_eq!(
            b.calls_by_driver,
            BTreeMap::from([("d0".to_string(), 1), ("d1".to_string(), 1)])
        );
    }

    #[test]
    fn totals_take_each_drivers_run_record_else_its_steps() {
        let mut d = run(vec![call("d0", "a", 0, tonic::Code::Ok)]);
        let step = |driver: &str, retries, ejections, endpoints| StepDone {
            run_id: "r".into(),
            driver_id: driver.into(),
            host: String::new(),
            record: StepRecord {
                retries,
                ejections,
                endpoints,
                ..Default::default()
            },
            start_unix_ns: T0,
            end_unix_ns: T0,
        };
        let ep = |endpoint: &str, instance: &str| EndpointRecord {
            endpoint: endpoint.into(),
            instance: instance.into(),
            attempts_failed: 2,
            ejections: 1,
            ..Default::default()
        };
        d.steps = vec![
            step("d0", 1, 1, vec![ep("10.0.0.1:1", "a")]),
            step("d1", 2, 1, vec![ep("10.0.0.2:1", "c")]),
            step("d1", 3, 0, vec![]),
        ];
        d.runs = vec![RunDone {
            driver_id: "d0".into(),
            retries: 4,
            ejections: 2,
            ..Default::default()
        }];
        let t = totals(&d);
        assert_eq!((t.calls, t.retries, t.ejections), (1, 4 + 5, 2 + 1));
        // Replica c answered nothing, but a driver's record names it.
        let got = rows(&d);
        let c = got.iter().find(|r| r.instance == "c").expect("c");
        assert_eq!((c.calls, c.attempts_failed, c.ejections), (0, 2, 1));
    }
}
