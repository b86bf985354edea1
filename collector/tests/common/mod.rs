//! A live run for the dashboard tests: the collector with `--dashboard`, the real
//! server (stand-in, CPU backend) exporting to it, and the driver library in a task.
#![allow(dead_code)]

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Parser;
use crossbatch_collector::serve::{CollectConfig, CollectorError, serve};
use crossbatch_driver::coordinated::Gate;
use crossbatch_driver::load::{Mode, StepConfig, wait_serving};
use crossbatch_driver::telemetry::{ClientTelemetry, Identity, ServerInfo};
use crossbatch_driver::{sweep, workload};
use crossbatch_proto::v1::InfoRequest;
use crossbatch_proto::v1::cross_encoder_client::CrossEncoderClient;
use crossbatch_server::serve::ServeArgs;
use serde_json::Value;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt};
use tokio::task::JoinHandle;

pub struct Rig {
    /// The dashboard's address (host:port).
    pub dash: String,
    pub otlp: String,
    pub target: String,
    pub reports: PathBuf,
    collector: JoinHandle<Result<Vec<PathBuf>, CollectorError>>,
    stop_collector: Option<tokio::sync::oneshot::Sender<()>>,
    server: Option<JoinHandle<Result<(), crossbatch_server::serve::StartError>>>,
    stop_server: Option<tokio::sync::oneshot::Sender<()>>,
    /// Keeps the server's span export running.
    telemetry: Option<crossbatch_server::telemetry::Telemetry>,
    _dir: tempfile::TempDir,
}

impl Rig {
    /// The collector (with its dashboard) alone, no run yet.
    pub async fn collector(name: &str) -> Rig {
        Self::collector_expecting(name, 1).await
    }

    /// The collector, its runs made of `expect_drivers` drivers.
    pub async fn collector_expecting(name: &str, expect_drivers: usize) -> Rig {
        let dir = tempfile::tempdir().expect("tmp");
        let reports = dir.path().join("reports");
        let dash_addr = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("free port");
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let otlp = format!("http://{}", listener.local_addr().expect("addr"));
        let cfg = CollectConfig {
            grace: Duration::from_secs(10),
            dashboard: Some(dash_addr),
            expect_drivers,
            ..CollectConfig::new(reports.clone(), name)
        };
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let collector = tokio::spawn(serve(cfg, listener, async move {
            let _ = stopped.await;
        }));
        let dash = dash_addr.to_string();
        let until = Instant::now() + Duration::from_secs(10);
        while tokio::net::TcpStream::connect(&dash).await.is_err() {
            assert!(Instant::now() < until, "the dashboard never listened");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Rig {
            dash,
            otlp,
            target: String::new(),
            reports,
            collector,
            stop_collector: Some(stop),
            server: None,
            stop_server: None,
            telemetry: None,
            _dir: dir,
        }
    }

    /// Starts the server, exporting to the collector.
    pub async fn start_server(&mut self) {
        self.telemetry = Some(
            crossbatch_server::telemetry::init(
                "crossbatch-server",
                Some(&self.otlp),
                Duration::from_millis(200),
            )
            .expect("server telemetry"),
        );
        let (url, stop, task) =
            stand_in_server(&["--batch-timeout-ms", "5", "--sample-interval-ms", "100"]).await;
        self.target = url;
        self.stop_server = Some(stop);
        self.server = Some(task);
    }

    /// Runs a sweep (batch 4 × `concurrencies`, `pairs` each) in a task.
    pub async fn spawn_driver(
        &self,
        run_id: &str,
        concurrencies: Vec<usize>,
        pairs: usize,
    ) -> JoinHandle<()> {
        self.spawn(run_id, concurrencies, pairs, false)
    }

    /// As [`Rig::spawn_driver`], the driver joining the run at the collector's
    /// coordinator, so a [`Holder`] can hold it between steps.
    pub async fn spawn_coordinated_driver(
        &self,
        run_id: &str,
        concurrencies: Vec<usize>,
        pairs: usize,
    ) -> JoinHandle<()> {
        self.spawn(run_id, concurrencies, pairs, true)
    }

    fn spawn(
        &self,
        run_id: &str,
        concurrencies: Vec<usize>,
        pairs: usize,
        coordinated: bool,
    ) -> JoinHandle<()> {
        let (target, otlp, run_id) = (self.target.clone(), self.otlp.clone(), run_id.to_string());
        tokio::spawn(async move {
            let spec = Drive {
                batches: vec![4],
                concurrencies,
                pairs,
                warmup_calls: 0,
                workload: 200,
                coordinator: coordinated.then(|| otlp.clone()),
            };
            drive_spec(&target, &otlp, &run_id, spec).await;
        })
    }

    /// Joins `run_id` (a sweep of `steps`) as a second driver that sends no calls:
    /// the run's next step starts only when it says so.
    pub async fn holder(&self, run_id: &str, steps: usize) -> Holder {
        let gate = Gate::join(
            &self.otlp,
            run_id,
            "holder",
            "test",
            steps,
            Duration::from_secs(10),
        )
        .await
        .expect("the holder joins");
        Holder { gate }
    }

    /// Polls the dashboard's snapshot until `ready` holds (60 s at most); that snapshot.
    pub async fn wait_snapshot(&self, what: &str, ready: impl Fn(&Value) -> bool) -> Value {
        let until = Instant::now() + Duration::from_secs(60);
        loop {
            let s = snapshot(&self.dash).await;
            if ready(&s) {
                return s;
            }
            assert!(Instant::now() < until, "never {what}: {s}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Waits until the dashboard says the run is done; its snapshot.
    pub async fn wait_done(&self) -> Value {
        let until = Instant::now() + Duration::from_secs(60);
        loop {
            let s = snapshot(&self.dash).await;
            if s["state"] == "done" {
                return s;
            }
            assert!(Instant::now() < until, "never done: {s}");
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
    }

    pub async fn stop(mut self) {
        if let Some(s) = self.stop_collector.take() {
            let _ = s.send(());
        }
        (&mut self.collector)
            .await
            .expect("task")
            .expect("collector");
        if let Some(s) = self.stop_server.take() {
            let _ = s.send(());
        }
        if let Some(s) = self.server.take() {
            let _ = s.await;
        }
    }
}

/// A driver of a coordinated run that sends nothing: it holds every other driver at
/// the end of each step until the test releases it. Dropped, it is lost and the run
/// goes on without it.
pub struct Holder {
    gate: Gate,
}

impl Holder {
    /// Waits until the coordinator starts `step` on every driver.
    pub async fn started(&mut self, step: usize) {
        let next = tokio::time::timeout(Duration::from_secs(60), self.gate.wait_start(step))
            .await
            .expect("the step starts in time")
            .expect("the coordinator starts the step");
        assert_eq!(next, crossbatch_driver::coordinated::Next::Start);
    }

    /// Lets the run go past `step`.
    pub async fn release(&mut self, step: usize) {
        self.gate.done(step, 0, 0).await.expect("step done");
    }
}

/// A stand-in server on the CPU backend with `extra` flags, listening on loopback and
/// SERVING: its URL, the sender that stops it, and its task.
pub async fn stand_in_server(
    extra: &[&str],
) -> (
    String,
    tokio::sync::oneshot::Sender<()>,
    JoinHandle<Result<(), crossbatch_server::serve::StartError>>,
) {
    let model = crossbatch_model::standin::ensure_default().expect("stand-in");
    let mut argv = vec![
        "serve",
        "--model",
        model.to_str().expect("utf-8"),
        "--backend",
        "cpu",
    ];
    argv.extend_from_slice(extra);
    let args = ServeArgs::try_parse_from(argv).expect("args");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let url = format!("http://{}", listener.local_addr().expect("addr"));
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(crossbatch_server::serve::serve(
        args,
        listener,
        async move {
            let _ = rx.await;
        },
    ));
    wait_serving(&url, &Default::default(), Duration::from_secs(120))
        .await
        .expect("serving");
    (url, tx, task)
}

/// One driver (id `d0`) against `target`: a batch × concurrency sweep with client
/// spans to `otlp`, waiting for the server's health first; returns once its spans are
/// exported. `workload` synthetic pairs are cycled.
#[allow(clippy::too_many_arguments)]
pub async fn drive(
    target: &str,
    otlp: &str,
    run_id: &str,
    batches: Vec<usize>,
    concurrencies: Vec<usize>,
    pairs: usize,
    warmup_calls: usize,
    workload: usize,
) -> sweep::SweepResult {
    let spec = Drive {
        batches,
        concurrencies,
        pairs,
        warmup_calls,
        workload,
        coordinator: None,
    };
    drive_spec(target, otlp, run_id, spec).await
}

/// What one driver runs.
pub struct Drive {
    pub batches: Vec<usize>,
    pub concurrencies: Vec<usize>,
    pub pairs: usize,
    pub warmup_calls: usize,
    /// Synthetic pairs, cycled.
    pub workload: usize,
    /// Join the run at this coordinator first.
    pub coordinator: Option<String>,
}

/// [`drive`] with a [`Drive`].
pub async fn drive_spec(target: &str, otlp: &str, run_id: &str, spec: Drive) -> sweep::SweepResult {
    let Drive {
        batches,
        concurrencies,
        pairs,
        warmup_calls,
        workload,
        coordinator,
    } = spec;
    let ch = wait_serving(target, &Default::default(), Duration::from_secs(120))
        .await
        .expect("serving");
    let info = CrossEncoderClient::new(ch.clone())
        .info(InfoRequest {})
        .await
        .expect("info")
        .into_inner();
    let client = Arc::new(
        ClientTelemetry::new(
            otlp,
            Identity {
                run_id: run_id.into(),
                driver_id: "d0".into(),
                host: "localhost".into(),
                steps_planned: batches.len() * concurrencies.len(),
            },
        )
        .expect("client telemetry"),
    );
    let cfg = sweep::SweepConfig {
        template: StepConfig {
            step: 0,
            batch: 1,
            concurrency: 1,
            pairs,
            warmup_calls,
            deadline: None,
            mode: Mode::Closed,
            run_id: run_id.into(),
            driver_id: "d0".into(),
            api_key: None,
        },
        batches,
        concurrencies,
        progress_every: Duration::ZERO,
    };
    let mut gate = match coordinator {
        Some(url) => Some(
            Gate::join(
                &url,
                run_id,
                "d0",
                "localhost",
                cfg.steps().len(),
                Duration::from_secs(10),
            )
            .await
            .expect("join"),
        ),
        None => None,
    };
    let (_stop_tx, stop) = tokio::sync::watch::channel(false);
    let result = sweep::run(
        ch,
        Arc::new(workload::synthetic(workload, 7)),
        &cfg,
        stop,
        Some(Arc::clone(&client)),
        ServerInfo::from(info),
        gate.as_mut(),
    )
    .await;
    Arc::into_inner(client)
        .expect("sole owner")
        .shutdown()
        .expect("client spans exported");
    result
}

pub async fn http_get(addr: &str, path: &str) -> (String, String) {
    let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes())
        .await
        .expect("write");
    let mut out = String::new();
    s.read_to_string(&mut out).await.expect("read");
    let (head, body) = out.split_once("\r\n\r\n").expect("http response");
    (head.to_string(), body.to_string())
}

pub async fn snapshot(addr: &str) -> Value {
    let (head, body) = http_get(addr, "/api/snapshot").await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(
        head.to_ascii_lowercase().contains("application/json"),
        "{head}"
    );
    serde_json::from_str(&body).unwrap_or_else(|e| panic!("{e}: {body}"))
}

/// The first server-sent event of `/events` (30 s at most).
pub async fn first_event(addr: &str) -> String {
    let read = async {
        let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
        s.write_all(b"GET /events HTTP/1.1\r\nHost: x\r\nAccept: text/event-stream\r\n\r\n")
            .await
            .expect("write");
        let mut lines = tokio::io::BufReader::new(s).lines();
        let mut event = String::new();
        while let Ok(Some(line)) = lines.next_line().await {
            if line.starts_with("event:") || line.starts_with("data:") {
                event.push_str(&line);
                event.push('\n');
            } else if line.is_empty() && event.contains("data:") {
                break;
            }
        }
        event
    };
    tokio::time::timeout(Duration::from_secs(30), read)
        .await
        .expect("no event within 30 s")
}
