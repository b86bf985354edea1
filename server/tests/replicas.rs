//! Many replicas behind one driver, end to end on loopback: three server processes
//! (each its own `--instance-id` and metrics port) and the driver's endpoint pool.
//! Calls are counted on each server's own `/metrics`, not only by the driver; a
//! replica killed with SIGKILL mid-run costs retries, not pairs, and the report names
//! it as lost.

mod common;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::Process;
use crossbatch_driver::balance::{Balance, Pool, PoolConfig, parse_targets};
use crossbatch_driver::load::{Mode, StepConfig};
use crossbatch_driver::sweep::{self, SweepConfig, SweepResult};
use crossbatch_driver::telemetry::{ClientTelemetry, Identity, ServerInfo};
use crossbatch_driver::workload;

const OK_CALLS: &str = "crossbatch_requests_total{outcome=\"ok\"}";

fn replicas(extra: &[&str]) -> Vec<Process> {
    (0..3)
        .map(|i| {
            let id = format!("replica-{i}");
            let mut args = vec!["--instance-id", id.as_str(), "--batch-timeout-ms", "2"];
            args.extend_from_slice(extra);
            Process::start(&args)
        })
        .collect()
}

async fn pool(servers: &[Process], balance: Balance) -> Pool {
    let list: Vec<&str> = servers.iter().map(|s| s.url.as_str()).collect();
    let pool = Pool::start(
        parse_targets(&list.join(",")).expect("targets"),
        Default::default(),
        PoolConfig {
            balance,
            retries: 2,
            resolve_every: Duration::from_millis(500),
            seed: 11,
            resolver: Default::default(),
        },
    )
    .await
    .expect("pool");
    pool.wait_ready(Duration::from_secs(120))
        .await
        .expect("every replica serving");
    pool
}

fn sweep_config(run_id: &str, batch: usize, concurrency: usize, pairs: usize) -> SweepConfig {
    SweepConfig {
        template: StepConfig {
            step: 0,
            batch,
            concurrency,
            pairs,
            warmup_calls: 0,
            deadline: Some(Duration::from_secs(60)),
            mode: Mode::Closed,
            run_id: run_id.into(),
            driver_id: "d0".into(),
            api_key: None,
        },
        batches: vec![batch],
        concurrencies: vec![concurrency],
        progress_every: Duration::ZERO,
    }
}

async fn drive(
    pool: &Pool,
    cfg: &SweepConfig,
    telemetry: Option<Arc<ClientTelemetry>>,
) -> SweepResult {
    let (_stop_tx, stop) = tokio::sync::watch::channel(false);
    sweep::run(
        pool.clone(),
        Arc::new(workload::synthetic(500, 3)),
        cfg,
        stop,
        telemetry,
        ServerInfo::default(),
        None,
    )
    .await
}

/// OK calls each replica answered, from its own metrics.
async fn served(servers: &[Process]) -> Vec<f64> {
    let mut out = Vec::new();
    for s in servers {
        out.push(s.metric(OK_CALLS).await);
    }
    out
}

/// Calls per replica name, as the driver's samples saw the `crossbatch-instance` header.
fn per_instance(r: &SweepResult) -> BTreeMap<String, usize> {
    let mut by = BTreeMap::new();
    for s in r.samples.iter().filter(|s| s.code.is_ok()) {
        *by.entry(s.instance.clone()).or_default() += 1;
    }
    by
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_spread_per_call_as_each_policy_says() {
    let servers = replicas(&[]);
    let calls = 240;
    for (balance, concurrency) in [
        (Balance::P2c, 4),
        (Balance::RoundRobin, 3),
        (Balance::Pinned, 4),
    ] {
        let pool = pool(&servers, balance).await;
        let before = served(&servers).await;
        let r = drive(&pool, &sweep_config("spread", 1, concurrency, calls), None).await;
        let after = served(&servers).await;
        let counts: Vec<usize> = after
            .iter()
            .zip(&before)
            .map(|(a, b)| (a - b) as usize)
            .collect();
        let name = balance.name();
        assert_eq!(r.record.calls_ok, calls, "{name}: every call answered");
        assert_eq!(counts.iter().sum::<usize>(), calls, "{name}: {counts:?}");
        let by = per_instance(&r);
        match balance {
            Balance::P2c => {
                for (i, &n) in counts.iter().enumerate() {
                    assert!(
                        n * 5 >= calls,
                        "{name}: replica {i} got {n} of {calls}: {counts:?}"
                    );
                }
                assert_eq!(by.len(), 3, "{name}: {by:?}");
            }
            Balance::RoundRobin => {
                let (lo, hi) = (counts.iter().min().unwrap(), counts.iter().max().unwrap());
                assert!(hi - lo <= 1, "{name}: {counts:?}");
            }
            Balance::Pinned => {
                assert_eq!(
                    counts.iter().filter(|&&n| n > 0).count(),
                    1,
                    "{name}: {counts:?}"
                );
                assert_eq!(by.len(), 1, "{name}: {by:?}");
            }
        }
        // The header names the replica the metrics counted.
        for (i, &n) in counts.iter().enumerate() {
            assert_eq!(
                by.get(&format!("replica-{i}")).copied().unwrap_or(0),
                n,
                "{name}"
            );
        }
        assert_eq!(r.record.retries, 0, "{name}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_killed_mid_run_costs_retries_not_pairs_and_the_report_names_it() {
    let dir = tempfile::tempdir().expect("tmp");
    let otlp = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let otlp_url = format!("http://{}", otlp.local_addr().expect("addr"));
    let collector = tokio::spawn(crossbatch_collector::serve::serve(
        crossbatch_collector::serve::CollectConfig {
            once: true,
            grace: Duration::from_millis(500),
            ..crossbatch_collector::serve::CollectConfig::new(dir.path(), "failover")
        },
        otlp,
        std::future::pending(),
    ));
    let mut servers = replicas(&["--otlp-endpoint", &otlp_url, "--sample-interval-ms", "200"]);
    let pool = pool(&servers, Balance::P2c).await;
    let telemetry = Arc::new(
        ClientTelemetry::new(
            &otlp_url,
            Identity {
                run_id: "failover".into(),
                driver_id: "d0".into(),
                host: "localhost".into(),
                steps_planned: 1,
            },
        )
        .expect("client telemetry"),
    );
    let pairs = 1200;
    let cfg = sweep_config("failover", 4, 3, pairs);
    let run = {
        let pool = pool.clone();
        let telemetry = Arc::clone(&telemetry);
        tokio::spawn(async move { drive(&pool, &cfg, Some(telemetry)).await })
    };
    // Kill replica 1 once it has answered a share of the run (mid-run by the run's
    // own progress, not by the clock) and while calls are in flight on it: it is
    // frozen first (SIGSTOP) until the driver has a call waiting on it, so the kill
    // always cuts a call off instead of racing the gaps between calls.
    let until = Instant::now() + Duration::from_secs(300);
    while servers[1].metric(OK_CALLS).await < 20.0 {
        assert!(Instant::now() < until, "replica 1 never got 20 calls");
        assert!(
            !run.is_finished(),
            "the run ended before replica 1 got 20 calls"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    servers[1].signal(libc::SIGSTOP);
    let in_flight_on_1 = || {
        pool.snapshot()
            .iter()
            .find(|m| m.instance == "replica-1")
            .map_or(0, |m| m.in_flight)
    };
    while in_flight_on_1() == 0 {
        assert!(
            Instant::now() < until,
            "no call reached the frozen replica 1"
        );
        assert!(!run.is_finished(), "the run ended with replica 1 frozen");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    servers[1].child.kill().expect("SIGKILL replica 1");
    servers[1].child.wait().expect("reaped");
    let r = run.await.expect("driver");
    Arc::into_inner(telemetry)
        .expect("sole owner")
        .shutdown()
        .expect("client spans exported");

    assert_eq!(
        r.record.pairs_ok, pairs,
        "every pair scored: {:?}",
        r.summaries
    );
    assert_eq!(r.record.calls_ok, r.record.calls_sent, "no call failed");
    assert!(r.record.retries > 0, "the calls cut off were retried");
    let lost = r
        .endpoints
        .iter()
        .find(|e| e.instance == "replica-1")
        .expect("replica 1 in the endpoint records");
    assert!(lost.ejected_at_end && lost.ejections >= 1, "{lost:?}");
    assert!(lost.retries >= 1, "{lost:?}");
    let retried_total: usize = r.endpoints.iter().map(|e| e.retries).sum();
    assert_eq!(retried_total, r.record.retries);

    // The report: the lost replica named, the retries counted.
    let paths = tokio::time::timeout(Duration::from_secs(120), collector)
        .await
        .expect("report in time")
        .expect("collector task")
        .expect("collector");
    let json: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(paths[0].with_extension("json")).expect("report json"),
    )
    .expect("json");
    let servers_json = json["servers"].as_array().expect("servers list");
    let named = |id: &str| {
        servers_json
            .iter()
            .find(|s| s["instance"] == id)
            .unwrap_or_else(|| panic!("{id} in {servers_json:?}"))
    };
    assert_eq!(named("replica-1")["lost"], true, "{servers_json:?}");
    assert!(
        named("replica-1")["lost_at_s"]
            .as_f64()
            .is_some_and(|t| t > 0.0)
    );
    assert_eq!(named("replica-0")["lost"], false);
    assert_eq!(named("replica-2")["lost"], false);
    assert!(named("replica-2")["lost_at_s"].is_null());
    // Every answered call is counted once, under the replica that answered it.
    let per_replica: u64 = servers_json
        .iter()
        .map(|s| s["calls_ok"].as_u64().expect("calls_ok"))
        .sum();
    assert_eq!(per_replica, r.record.calls_ok as u64, "{servers_json:?}");
    let totals = &json["totals"];
    assert_eq!(totals["retries"], r.record.retries, "{totals}");
    assert_eq!(totals["pairs_ok"], pairs, "{totals}");
    let md = std::fs::read_to_string(&paths[0]).expect("report");
    assert!(
        md.contains("**Lost replicas:** replica-1"),
        "the markdown names the lost replica"
    );
    drop(servers);
}
