//! Runs an experiment: one collector for the whole series; per variant a fresh
//! `crossbatch-server serve` process with its settings, the sweep from a
//! `crossbatch-driver run` process, then the server stopped and its report awaited.
//! Variants run one after the other on this machine, so their figures compare.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use crossbatch_collector::serve::{CollectConfig, serve};

use crate::spec::{Experiment, Variant};

#[derive(Debug, Clone)]
pub struct RunOptions {
    /// Overrides the file's `sweep.pairs` (`make experiment PAIRS=…`).
    pub pairs: Option<usize>,
    /// Parent of the experiment's report directory.
    pub out: PathBuf,
    /// Where `crossbatch-server` and `crossbatch-driver` are.
    pub bin_dir: PathBuf,
    /// The workload when the file names none.
    pub default_workload: String,
    /// `--model` for variants that set none (the server's default when `None`).
    pub model: Option<String>,
}

/// What became of one variant.
#[derive(Debug, Clone)]
pub enum Outcome {
    /// Its report (markdown; the JSON is beside it).
    Ran(PathBuf),
    Skipped(String),
    Failed(String),
}

#[derive(Debug)]
pub struct Finished {
    pub dir: PathBuf,
    pub outcomes: Vec<(Variant, Outcome)>,
    pub started_unix_s: u64,
    pub wall: Duration,
}

#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{}: not found (build with `cargo build --release --workspace`, or pass --bin-dir)", .0.display())]
    MissingBinary(PathBuf),
    #[error("collector: {0}")]
    Collector(String),
    #[error("interrupted")]
    Interrupted,
}

/// A child process killed (and reaped) when dropped: Ctrl-C or an error never
/// leaves a server running.
struct Guard {
    child: Option<Child>,
    what: String,
}

impl Guard {
    fn spawn(mut cmd: Command, what: &str) -> Result<Self, RunError> {
        let child = cmd.spawn().map_err(|source| RunError::Io {
            path: PathBuf::from(cmd.get_program()),
            source,
        })?;
        Ok(Self {
            child: Some(child),
            what: what.to_string(),
        })
    }

    fn try_wait(&mut self) -> Option<ExitStatus> {
        self.child
            .as_mut()
            .and_then(|c| c.try_wait().ok().flatten())
    }

    /// SIGTERM (the server drains and flushes its spans), then SIGKILL after `grace`.
    async fn stop(&mut self, grace: Duration) -> Option<ExitStatus> {
        let child = self.child.as_mut()?;
        if let Ok(Some(s)) = child.try_wait() {
            self.child = None;
            return Some(s);
        }
        // SAFETY: kill(2) on our own child's pid; no memory is involved.
        unsafe {
            libc::kill(child.id() as libc::pid_t, libc::SIGTERM);
        }
        let until = Instant::now() + grace;
        while Instant::now() < until {
            if let Ok(Some(s)) = child.try_wait() {
                self.child = None;
                return Some(s);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        tracing::warn!("{} did not stop in {grace:?}; killing it", self.what);
        let _ = child.kill();
        let s = child.wait().ok();
        self.child = None;
        s
    }

    /// Waits for the process to exit by itself.
    async fn wait(&mut self) -> Option<ExitStatus> {
        loop {
            if let Some(s) = self.try_wait() {
                self.child = None;
                return Some(s);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        if let Some(c) = self.child.as_mut() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn free_addr() -> Result<SocketAddr, RunError> {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map_err(|source| RunError::Io {
            path: "127.0.0.1:0".into(),
            source,
        })
}

fn log_file(path: &Path) -> Result<std::fs::File, RunError> {
    std::fs::File::create(path).map_err(|source| RunError::Io {
        path: path.to_path_buf(),
        source,
    })
}

/// Why a variant cannot run on this machine, if it cannot.
fn skip_reason(v: &Variant) -> Option<String> {
    if v.setting("backend") != Some("wgpu") {
        return None;
    }
    let adapters = crossbatch_model::backend::adapters();
    if adapters.iter().any(|a| !a.is_software()) {
        return None;
    }
    let seen: Vec<String> = adapters
        .iter()
        .map(|a| format!("{} ({})", a.name, a.backend))
        .collect();
    Some(if seen.is_empty() {
        "no GPU: wgpu finds no adapter on this machine".into()
    } else {
        format!(
            "no hardware GPU: wgpu finds only the software rasterizer {}, about 30x slower than the CPU backend; a figure from it would say nothing about a GPU",
            seen.join(", ")
        )
    })
}

/// Runs every variant of `exp`; the reports land in `<out>/<name>-<stamp>/`.
pub async fn run(exp: &Experiment, opts: &RunOptions) -> Result<Finished, RunError> {
    let server_bin = opts.bin_dir.join("crossbatch-server");
    let driver_bin = opts.bin_dir.join("crossbatch-driver");
    for b in [&server_bin, &driver_bin] {
        if !b.is_file() {
            return Err(RunError::MissingBinary(b.clone()));
        }
    }
    let started = Instant::now();
    let started_unix_s = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let stamp = crossbatch_collector::report::file_stamp_now();
    let dir = opts.out.join(format!("{}-{stamp}", exp.name));
    std::fs::create_dir_all(&dir).map_err(|source| RunError::Io {
        path: dir.clone(),
        source,
    })?;

    let run_ids: HashMap<String, String> = exp
        .variants
        .iter()
        .map(|v| (format!("{}-{stamp}-{}", exp.name, v.name), v.name.clone()))
        .collect();
    let (reported_tx, mut reported) = tokio::sync::mpsc::unbounded_channel();
    let collector_addr = free_addr()?;
    let listener = tokio::net::TcpListener::bind(collector_addr)
        .await
        .map_err(|source| RunError::Io {
            path: collector_addr.to_string().into(),
            source,
        })?;
    let cfg = CollectConfig {
        grace: Duration::from_secs(3),
        run_names: run_ids.clone(),
        reported: Some(reported_tx),
        description: Some(exp.description.clone()),
        spans_out: Some(dir.join("spans.jsonl")),
        ..CollectConfig::new(&dir, exp.name.clone())
    };
    let (stop_collector, collector_stopped) = tokio::sync::oneshot::channel::<()>();
    let mut stop_collector = Some(stop_collector);
    let mut collector = tokio::spawn(serve(cfg, listener, async move {
        let _ = collector_stopped.await;
    }));

    let pairs = opts.pairs.unwrap_or(exp.sweep.pairs);
    let workload = exp
        .sweep
        .workload
        .clone()
        .unwrap_or_else(|| opts.default_workload.clone());
    let mut outcomes = Vec::new();
    let total = exp.variants.len();
    for (i, v) in exp.variants.iter().enumerate() {
        eprintln!(
            "experiment {}: variant {}/{total} `{}` ({})",
            exp.name,
            i + 1,
            v.name,
            if v.settings.is_empty() {
                "server defaults".to_string()
            } else {
                v.serve_flags().join(" ")
            }
        );
        if let Some(why) = skip_reason(v) {
            eprintln!("  skipped: {why}");
            outcomes.push((v.clone(), Outcome::Skipped(why)));
            continue;
        }
        let run_id = format!("{}-{stamp}-{}", exp.name, v.name);
        let outcome = tokio::select! {
            o = run_variant(exp, v, &run_id, pairs, &workload, opts, &dir, collector_addr, &mut reported) => o?,
            _ = crossbatch_proto::lifecycle::shutdown_signal() => {
                // The guards kill this variant's processes; the collector writes
                // what it has, marked partial.
                if let Some(stop) = stop_collector.take() {
                    let _ = stop.send(());
                }
                let _ = (&mut collector).await;
                return Err(RunError::Interrupted);
            }
        };
        if let Outcome::Failed(why) = &outcome {
            eprintln!("  failed: {why}");
        }
        outcomes.push((v.clone(), outcome));
    }
    if let Some(stop) = stop_collector.take() {
        let _ = stop.send(());
    }
    match collector.await {
        Ok(Ok(_)) => {}
        Ok(Err(e)) => return Err(RunError::Collector(e.to_string())),
        Err(e) => return Err(RunError::Collector(e.to_string())),
    }
    Ok(Finished {
        dir,
        outcomes,
        started_unix_s,
        wall: started.elapsed(),
    })
}

#[allow(clippy::too_many_arguments)]
async fn run_variant(
    exp: &Experiment,
    v: &Variant,
    run_id: &str,
    pairs: usize,
    workload: &str,
    opts: &RunOptions,
    dir: &Path,
    collector: SocketAddr,
    reported: &mut tokio::sync::mpsc::UnboundedReceiver<(String, PathBuf)>,
) -> Result<Outcome, RunError> {
    let server_addr = free_addr()?;
    let mut server_cmd = Command::new(opts.bin_dir.join("crossbatch-server"));
    server_cmd
        .arg("serve")
        .args(["--listen", &server_addr.to_string()])
        .args(["--otlp-endpoint", &format!("http://{collector}")]);
    if v.setting("model").is_none()
        && let Some(m) = &opts.model
    {
        server_cmd.args(["--model", m]);
    }
    server_cmd
        .args(v.serve_flags())
        .stdout(Stdio::null())
        .stderr(log_file(&dir.join(format!("{}.server.log", v.name)))?);
    let mut server = Guard::spawn(server_cmd, "the server")?;

    // SERVING, or the server's exit (a setting it refused at start).
    let target = format!("http://{server_addr}");
    let plaintext = crossbatch_proto::client::ClientTls::default();
    let serving =
        crossbatch_driver::load::wait_serving(&target, &plaintext, Duration::from_secs(600));
    tokio::pin!(serving);
    let ready = loop {
        tokio::select! {
            r = &mut serving => break r.map(|_| ()),
            _ = tokio::time::sleep(Duration::from_millis(200)) => {
                if let Some(status) = server.try_wait() {
                    break Err(format!("the server exited at start ({status}); see {}.server.log", v.name));
                }
            }
        }
    };
    if let Err(why) = ready {
        server.stop(Duration::from_secs(10)).await;
        return Ok(Outcome::Failed(why));
    }

    let join = |v: &[usize]| v.iter().map(usize::to_string).collect::<Vec<_>>().join(",");
    let mut driver_cmd = Command::new(opts.bin_dir.join("crossbatch-driver"));
    driver_cmd
        .arg("run")
        .args(["--target", &target])
        .args(["--batch", &join(&exp.sweep.batch)])
        .args(["--concurrency", &join(&exp.sweep.concurrency)])
        .args(["--pairs", &pairs.to_string()])
        .args(["--warmup", &exp.sweep.warmup.to_string()])
        .args(["--workload", workload])
        .args(["--run-id", run_id])
        .args(["--driver-id", "driver-0"])
        .args(["--otlp-endpoint", &format!("http://{collector}")])
        .args(["--connect-timeout", "60"])
        .args(["--progress-s", "5"]);
    if let Some(r) = exp.sweep.rate {
        driver_cmd.args(["--rate", &r.to_string()]);
    }
    if let Some(a) = &exp.sweep.arrivals {
        driver_cmd.args(["--arrivals", a]);
    }
    if let Some(m) = exp.sweep.max_in_flight {
        driver_cmd.args(["--max-in-flight", &m.to_string()]);
    }
    if let Some(d) = exp.sweep.deadline_ms {
        driver_cmd.args(["--deadline-ms", &d.to_string()]);
    }
    driver_cmd
        .stdout(log_file(&dir.join(format!("{}.driver.out", v.name)))?)
        .stderr(Stdio::inherit());
    let mut driver = Guard::spawn(driver_cmd, "the driver")?;
    let driver_status = driver.wait().await;
    // The server drains and flushes its last spans before the report is awaited.
    server.stop(Duration::from_secs(60)).await;
    if !driver_status.is_some_and(|s| s.success()) {
        return Ok(Outcome::Failed(format!(
            "the driver failed ({}); see {}.driver.out",
            driver_status
                .map(|s| s.to_string())
                .unwrap_or_else(|| "no status".into()),
            v.name
        )));
    }
    let until = tokio::time::Instant::now() + Duration::from_secs(120);
    loop {
        match tokio::time::timeout_at(until, reported.recv()).await {
            Ok(Some((id, path))) if id == run_id => return Ok(Outcome::Ran(path)),
            Ok(Some(_)) => continue,
            Ok(None) => return Err(RunError::Collector("the collector stopped".into())),
            Err(_) => {
                return Ok(Outcome::Failed(
                    "no report from the collector within 120 s after the run".into(),
                ));
            }
        }
    }
}
