//! Coordinated runs on loopback without containers: three drivers join the
//! collector's coordinator and run a two-step sweep together against a real server;
//! the report merges their calls exactly and sums their concurrency. A driver that
//! vanishes mid-step is named lost and the run still finishes; too few drivers in time
//! fail the run clearly.

mod common;

use std::sync::Arc;
use std::time::Duration;

use crossbatch_collector::serve::{CollectConfig, CollectorError, serve};
use crossbatch_driver::coordinated::Gate;
use crossbatch_driver::load::{Mode, StepConfig, wait_serving};
use crossbatch_driver::stats::summarise;
use crossbatch_driver::telemetry::{ClientTelemetry, Identity};
use crossbatch_driver::{sweep, workload};
use serde_json::Value;

type CollectorTask = tokio::task::JoinHandle<Result<Vec<std::path::PathBuf>, CollectorError>>;

async fn collector(
    out: &std::path::Path,
    expect: usize,
    join_timeout: Duration,
) -> (String, CollectorTask) {
    collector_with_dashboard(out, expect, join_timeout, None).await
}

/// As [`collector`], with the live dashboard at `dashboard` (to watch the run).
async fn collector_with_dashboard(
    out: &std::path::Path,
    expect: usize,
    join_timeout: Duration,
    dashboard: Option<std::net::SocketAddr>,
) -> (String, CollectorTask) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let url = format!("http://{}", listener.local_addr().expect("addr"));
    let cfg = CollectConfig {
        expect_drivers: expect,
        // No server spans in these tests: do not wait long for them.
        grace: Duration::from_millis(500),
        once: true,
        join_timeout,
        dashboard,
        ..CollectConfig::new(out, "coordinated")
    };

    (
        url,
        tokio::spawn(serve(cfg, listener, std::future::pending())),
    )
}

async fn server() -> (String, tokio::sync::oneshot::Sender<()>) {
    let (url, stop, _task) = common::stand_in_server(&["--batch-timeout-ms", "2"]).await;
    (url, stop)
}

fn sweep_cfg(run_id: &str, driver: &str, conc: Vec<usize>, pairs: usize) -> sweep::SweepConfig {
    sweep::SweepConfig {
        template: StepConfig {
            step: 0,
            batch: 2,
            concurrency: 1,
            pairs,
            warmup_calls: 0,
            deadline: None,
            mode: Mode::Closed,
            run_id: run_id.into(),
            driver_id: driver.into(),
            api_key: None,
        },
        batches: vec![2],
        concurrencies: conc,
        progress_every: Duration::ZERO,
    }
}

/// One driver process, as a task: join, sweep, export.
async fn driver(
    target: String,
    coord: String,
    run_id: &'static str,
    id: String,
    conc: Vec<usize>,
    pairs: usize,
) -> sweep::SweepResult {
    let ch = wait_serving(&target, &Default::default(), Duration::from_secs(60))
        .await
        .expect("serving");
    let cfg = sweep_cfg(run_id, &id, conc, pairs);
    let mut gate = Gate::join(
        &coord,
        run_id,
        &id,
        "loopback",
        cfg.steps().len(),
        Duration::from_secs(10),
    )
    .await
    .expect("join");
    let tel = Arc::new(
        ClientTelemetry::new(
            &coord,
            Identity {
                run_id: run_id.into(),
                driver_id: id.clone(),
                host: "loopback".into(),
                steps_planned: 2,
            },
        )
        .expect("telemetry"),
    );
    let (_tx, stop) = tokio::sync::watch::channel(false);
    let r = sweep::run(
        ch,
        Arc::new(workload::synthetic(30, 5)),
        &cfg,
        stop,
        Some(Arc::clone(&tel)),
        Default::default(),
        Some(&mut gate),
    )
    .await;
    Arc::into_inner(tel)
        .expect("owner")
        .shutdown()
        .expect("exported");
    r
}

fn read_report(paths: &[std::path::PathBuf]) -> (String, Value) {
    assert_eq!(paths.len(), 1, "{paths:?}");
    let md = std::fs::read_to_string(&paths[0]).expect("md");
    let json = serde_json::from_str(
        &std::fs::read_to_string(paths[0].with_extension("json")).expect("json"),
    )
    .expect("json");
    (md, json)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_drivers_step_together_and_merge_exactly() {
    let dir = tempfile::tempdir().expect("tmp");
    let (coord, collector) = collector(dir.path(), 3, Duration::from_secs(60)).await;
    let (target, _stop) = server().await;
    let drivers: Vec<_> = (0..3)
        .map(|i| {
            tokio::spawn(driver(
                target.clone(),
                coord.clone(),
                "three",
                format!("d{i}"),
                vec![1, 2],
                20,
            ))
        })
        .collect();
    let mut samples = Vec::new();
    for d in drivers {
        let r = d.await.expect("driver");
        assert!(r.error.is_none(), "{:?}", r.error);
        samples.extend(r.samples);
    }
    let paths = tokio::time::timeout(Duration::from_secs(60), collector)
        .await
        .expect("report in time")
        .expect("task")
        .expect("collector");
    let (md, r) = read_report(&paths);
    assert!(r["partial"].is_null(), "{}", r["partial"]);
    assert_eq!(r["drivers"].as_array().map(Vec::len), Some(3));
    assert!(
        md.contains("| d2 | loopback | 20 | 40 | 40 | 0 | 2/2 | finished |"),
        "{md}"
    );
    let cfgs = r["configs"].as_array().expect("configs");
    for (i, (c, conc)) in cfgs.iter().zip([3u64, 6]).enumerate() {
        assert_eq!(c["pairs"], 60, "exact total pairs");
        assert_eq!(c["concurrency"].as_u64(), Some(conc), "summed concurrency");
        assert_eq!(c["drivers"], 3);
        // Percentiles of all drivers' samples merged, never averaged.
        let step: Vec<_> = samples
            .iter()
            .filter(|s| s.concurrency == [1, 2][i])
            .cloned()
            .collect();
        let merged = summarise(&step, Duration::from_secs(1), 0);
        for (k, want) in [
            ("p50", merged.latency_ms.p50),
            ("p90", merged.latency_ms.p90),
            ("p99", merged.latency_ms.p99),
            ("max", merged.latency_ms.max),
        ] {
            assert_eq!(c["latency_ms"][k].as_f64(), Some(want), "{k}");
        }
    }
    // Lock-step: no call of step 1 started before every driver finished step 0.
    let calls = r["calls"].as_array().expect("calls");
    let last_end_0 = calls
        .iter()
        .filter(|c| c["step"] == 0)
        .filter_map(|c| c["end_unix_ns"].as_u64())
        .max()
        .expect("step 0");
    let first_start_1 = calls
        .iter()
        .filter(|c| c["step"] == 1)
        .filter_map(|c| c["start_unix_ns"].as_u64())
        .min()
        .expect("step 1");
    assert!(
        first_start_1 > last_end_0,
        "step 1 began before step 0 ended everywhere"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_driver_lost_mid_step_is_named_and_the_run_finishes() {
    let dir = tempfile::tempdir().expect("tmp");
    let dash = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port");
    let (coord, collector) =
        collector_with_dashboard(dir.path(), 3, Duration::from_secs(60), Some(dash)).await;
    let (target, _stop) = server().await;
    let mut steady = Vec::new();
    for i in 0..2 {
        steady.push(tokio::spawn(driver(
            target.clone(),
            coord.clone(),
            "loss",
            format!("ok{i}"),
            vec![1],
            60,
        )));
    }
    // The third driver dies (its task and connections dropped) during the step: a
    // step it cannot finish in the test's time, and dropped once the collector has
    // seen it send calls.
    let doomed = tokio::spawn(driver(
        target.clone(),
        coord.clone(),
        "loss",
        "doomed".into(),
        vec![1],
        1_000_000,
    ));
    let dash = dash.to_string();
    let until = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let s = common::snapshot(&dash).await;
        let calls = s["drivers"].as_array().and_then(|ds| {
            ds.iter()
                .find(|d| d["driver_id"] == "doomed")
                .and_then(|d| d["calls"].as_u64())
        });
        if calls.is_some_and(|n| n > 0) {
            break;
        }
        assert!(
            std::time::Instant::now() < until,
            "the doomed driver never sent a call: {s}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(!doomed.is_finished(), "still mid-step");
    doomed.abort();
    for d in steady {
        let r = tokio::time::timeout(Duration::from_secs(120), d)
            .await
            .expect("survivors finish")
            .expect("driver");
        assert!(r.error.is_none(), "{:?}", r.error);
    }
    let paths = tokio::time::timeout(Duration::from_secs(60), collector)
        .await
        .expect("the run never hangs on a dead driver")
        .expect("task")
        .expect("collector");
    let (md, r) = read_report(&paths);
    assert!(
        r["partial"]
            .as_str()
            .is_some_and(|p| p.contains("lost driver(s): doomed")),
        "{}",
        r["partial"]
    );
    assert!(md.contains("**Lost drivers:** doomed"), "{md}");
    let drivers = r["drivers"].as_array().expect("drivers");
    let states: Vec<(&str, &str)> = drivers
        .iter()
        .map(|d| {
            (
                d["driver_id"].as_str().unwrap_or(""),
                d["state"].as_str().unwrap_or(""),
            )
        })
        .collect();
    assert!(states.contains(&("doomed", "lost")), "{states:?}");
    assert!(states.contains(&("ok0", "finished")) && states.contains(&("ok1", "finished")));
    assert!(
        r["configs"][0]["pairs"].as_u64().is_some_and(|p| p >= 120),
        "{}",
        r["configs"][0]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn too_few_drivers_in_time_fail_the_run_clearly() {
    let dir = tempfile::tempdir().expect("tmp");
    let (coord, collector) = collector(dir.path(), 2, Duration::from_secs(1)).await;
    let mut gate = Gate::join(
        &coord,
        "lonely",
        "d0",
        "loopback",
        1,
        Duration::from_secs(10),
    )
    .await
    .expect("join");
    let err = gate.wait_start(0).await.expect_err("aborted");
    assert!(
        err.to_string().contains("only 1 of 2 drivers joined"),
        "{err}"
    );
    match collector.await.expect("task") {
        Err(CollectorError::RunFailed { run_id, reason }) => {
            assert_eq!(run_id, "lonely");
            assert!(reason.contains("only 1 of 2"), "{reason}");
        }
        other => panic!("expected a failed run, got {other:?}"),
    }
}
