//! The driver against a real server on loopback (the stand-in, CPU backend).

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::start;
use crossbatch_driver::load::{Mode, StepConfig, wait_serving};
use crossbatch_driver::{sweep, workload};

fn cfg(batches: Vec<usize>, conc: Vec<usize>, pairs: usize, warmup: usize) -> sweep::SweepConfig {
    sweep::SweepConfig {
        template: StepConfig {
            step: 0,
            batch: 1,
            concurrency: 1,
            pairs,
            warmup_calls: warmup,
            deadline: None,
            mode: Mode::Closed,
            run_id: "test-run".into(),
            driver_id: "d0".into(),
            api_key: None,
        },
        batches,
        concurrencies: conc,
        progress_every: Duration::ZERO,
    }
}

/// A sweep without span export.
async fn sweep_run(
    ch: tonic::transport::Channel,
    work: Arc<Vec<workload::Pair>>,
    c: &sweep::SweepConfig,
    stop: tokio::sync::watch::Receiver<bool>,
) -> sweep::SweepResult {
    sweep::run(ch, work, c, stop, None, Default::default(), None).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exact_pairs_per_step_warmup_excluded_samples_round_trip() {
    let mut server = start(&["--batch-timeout-ms", "2"]).await;
    let ch = wait_serving(&server.url, &Default::default(), Duration::from_secs(120))
        .await
        .expect("serving");
    let (_tx, stop) = tokio::sync::watch::channel(false);
    let work = Arc::new(workload::synthetic(50, 1));
    let c = cfg(vec![3, 8], vec![1, 2], 20, 2);
    let r = sweep_run(ch, work, &c, stop).await;
    assert!(!r.interrupted);
    assert_eq!(r.summaries.len(), 4);
    for s in &r.summaries {
        assert_eq!(
            s.pairs_ok, 20,
            "exact pairs for batch {} conc {}",
            s.batch, s.concurrency
        );
        assert!(s.errors.is_empty(), "{:?}", s.errors);
        assert_eq!(s.calls, 20usize.div_ceil(s.batch));
        assert!(s.latency_ms.p50 > 0.0 && s.latency_ms.max >= s.latency_ms.p99);
    }
    // Warm-up calls are recorded as such and left out of every figure.
    let warm = r.samples.iter().filter(|s| s.warmup).count();
    assert_eq!(warm, 2 * 4);
    let measured: usize = r
        .samples
        .iter()
        .filter(|s| !s.warmup)
        .map(|s| s.pairs)
        .sum();
    assert_eq!(measured, 4 * 20);
    // The last call of a step may be smaller: 20 = 8 + 8 + 4.
    assert!(
        r.samples
            .iter()
            .any(|s| !s.warmup && s.batch == 8 && s.pairs == 4)
    );

    let dir = tempfile::tempdir().expect("tmp");
    let path = dir.path().join("samples.jsonl");
    sweep::write_samples(&path, &r.samples).expect("write");
    assert_eq!(sweep::read_samples(&path).expect("read"), r.samples);

    let _ = server.stop.take().map(|t| t.send(()));
    let _ = (&mut server.task).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn errors_are_counted_by_code_when_the_server_goes_away() {
    let mut server = start(&["--batch-timeout-ms", "2"]).await;
    let ch = wait_serving(&server.url, &Default::default(), Duration::from_secs(120))
        .await
        .expect("serving");
    let (_tx, stop) = tokio::sync::watch::channel(false);
    let work = Arc::new(workload::synthetic(50, 2));
    // Stop the server once 20 of the step's 400 calls have run (counted by the server
    // itself, not guessed from a clock); the run must finish and count.
    let stopper = server.stop.take().expect("stop handle");
    let mut info = crossbatch_proto::v1::cross_encoder_client::CrossEncoderClient::new(ch.clone());
    tokio::spawn(async move {
        loop {
            match info.info(crossbatch_proto::v1::InfoRequest {}).await {
                Ok(r) if r.get_ref().batches_run >= 20 => break,
                Ok(_) => tokio::time::sleep(Duration::from_millis(2)).await,
                Err(_) => break,
            }
        }
        let _ = stopper.send(());
    });
    let c = cfg(vec![1], vec![2], 400, 0);
    let r = tokio::time::timeout(Duration::from_secs(120), sweep_run(ch, work, &c, stop))
        .await
        .expect("the run ends on its own");
    let s = &r.summaries[0];
    assert_eq!(s.calls, 400, "every call accounted for");
    let errors: usize = s.errors.values().sum();
    assert!(errors > 0, "no errors counted: {s:?}");
    assert!(s.errors.contains_key("UNAVAILABLE"), "{:?}", s.errors);
    assert_eq!(s.pairs_ok + errors, 400);
    let _ = (&mut server.task).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn open_loop_latency_grows_from_intended_start_on_a_slow_server_closed_does_not() {
    // A slow server: under `deadline` a lone call waits the full 300 ms batch timeout.
    let mut server = start(&["--batch-timeout-ms", "300", "--batch-policy", "deadline"]).await;
    let ch = wait_serving(&server.url, &Default::default(), Duration::from_secs(120))
        .await
        .expect("serving");
    let (_tx, stop) = tokio::sync::watch::channel(false);
    let work = Arc::new(workload::synthetic(50, 3));
    // Closed loop at concurrency 1: each call ~300 ms, flat.
    let closed = sweep_run(
        ch.clone(),
        Arc::clone(&work),
        &cfg(vec![1], vec![1], 6, 0),
        stop.clone(),
    )
    .await;
    let c = &closed.samples;
    // Open loop at 10 calls/s against a server that does ~3/s with max-in-flight 1:
    // calls are sent late and latency from the intended start keeps growing.
    let mut open_cfg = cfg(vec![1], vec![1], 6, 0);
    open_cfg.template.mode = Mode::Open {
        rate: 10.0,
        arrivals: crossbatch_driver::load::Arrivals::Uniform,
        max_in_flight: 1,
    };
    let open = sweep_run(ch, work, &open_cfg, stop).await;
    let mut o = open.samples.clone();
    o.sort_by_key(|s| s.intended_us);
    assert!(
        open.summaries[0].late >= 4,
        "late sends counted: {}",
        open.summaries[0].late
    );
    assert!(
        o.last().expect("samples").latency_us > o[0].latency_us + 800_000,
        "open-loop latency should grow: {:?}",
        o.iter().map(|s| s.latency_us).collect::<Vec<_>>()
    );
    let (min, max) = c.iter().fold((u64::MAX, 0), |(a, b), s| {
        (a.min(s.latency_us), b.max(s.latency_us))
    });
    assert!(
        max < min + 250_000,
        "closed-loop latency stays flat: {min}..{max}"
    );
    let _ = server.stop.take().map(|t| t.send(()));
    let _ = (&mut server.task).await;
}
