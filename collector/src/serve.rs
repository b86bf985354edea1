//! The collector process: the OTLP receiver on a listener, and the loop that writes a
//! run's report once every expected driver has sent its completion record and the
//! run's spans have arrived (or a grace period has passed), or, on shutdown, a
//! partial report of whatever is in flight.

use std::collections::HashMap;
use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use opentelemetry_proto::tonic::collector::metrics::v1::metrics_service_server::MetricsServiceServer;
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::TraceServiceServer;
use tokio::net::TcpListener;

use crossbatch_proto::v1::coordinator_server::CoordinatorServer;

use crate::coordinate::{Coordination, CoordinatorService};
use crate::forward::Forwarder;
use crate::receiver::{Receiver, Shared};
use crate::report::{Meta, build};
use crate::spans_file::SpansWriter;
use crate::store::Store;
use crossbatch_proto::rejections::RejectLayer;

#[derive(Debug, Clone)]
pub struct CollectConfig {
    pub out_dir: PathBuf,
    pub name: String,
    pub description: Option<String>,
    /// Completion records to wait for per run.
    pub expect_drivers: usize,
    /// After the last completion record, how long to wait for stragglers (client
    /// spans still in an exporter's queue, the server's last spans).
    pub grace: Duration,
    /// Exit after the first report.
    pub once: bool,
    pub max_records: usize,
    pub forward: Option<String>,
    /// TLS for an `https://` forward target.
    pub forward_tls: crossbatch_proto::client::ClientTls,
    /// How long a report (and the exit) waits for the forward queue to empty.
    pub forward_drain: Duration,
    pub spans_out: Option<PathBuf>,
    /// How long coordinated drivers have to join before the run fails.
    pub join_timeout: Duration,
    /// Report name per run id, where it is not `name` (an experiment's variants).
    pub run_names: HashMap<String, String>,
    /// Serve the live dashboard here (`/`, `/events`, `/api/snapshot`).
    pub dashboard: Option<std::net::SocketAddr>,
    /// Told (run id, markdown path) after each report is written.
    pub reported: Option<tokio::sync::mpsc::UnboundedSender<(String, PathBuf)>>,
    /// Every call on the OTLP port (exports and coordination) must carry
    /// `authorization: Bearer KEY`; UNAUTHENTICATED otherwise.
    pub api_key: Option<crossbatch_proto::client::Secret>,
    /// Serve the OTLP port over TLS only.
    pub tls: Option<tonic::transport::ServerTlsConfig>,
}

impl CollectConfig {
    /// Defaults: one driver, 5 s grace, keep serving, 2,000,000 records, no forward or
    /// spans file, 120 s to join.
    pub fn new(out_dir: impl Into<PathBuf>, name: impl Into<String>) -> Self {
        Self {
            out_dir: out_dir.into(),
            name: name.into(),
            description: None,
            expect_drivers: 1,
            grace: Duration::from_secs(5),
            once: false,
            max_records: 2_000_000,
            forward: None,
            forward_tls: Default::default(),
            forward_drain: Duration::from_secs(10),
            spans_out: None,
            join_timeout: Duration::from_secs(120),
            run_names: HashMap::new(),
            dashboard: None,
            reported: None,
            api_key: None,
            tls: None,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum CollectorError {
    #[error(transparent)]
    SpansFile(#[from] crate::spans_file::SpansFileError),
    #[error(transparent)]
    Output(#[from] crate::output::OutputError),
    #[error("--forward {url}: {message}")]
    Forward { url: String, message: String },
    #[error("OTLP receiver")]
    Transport(#[from] tonic::transport::Error),
    #[error("TLS for the OTLP port: {0}")]
    Tls(tonic::transport::Error),
    #[error("--dashboard {addr}: {source}")]
    Dashboard {
        addr: std::net::SocketAddr,
        source: std::io::Error,
    },
    #[error("run {run_id} failed: {reason}")]
    RunFailed { run_id: String, reason: String },
}

/// Writes the report of one run and forgets its records.
async fn report_run(
    shared: &Shared,
    cfg: &CollectConfig,
    run_id: &str,
    partial: Option<String>,
) -> Result<PathBuf, CollectorError> {
    // Whoever inspects the traces elsewhere sees the run whole, or the report says
    // what did not get there.
    let forward = match &shared.forward {
        Some(f) => Some(f.drain(cfg.forward_drain).await),
        None => None,
    };
    let data = shared.store().run_data(run_id);
    let name = cfg.run_names.get(run_id).unwrap_or(&cfg.name);
    let meta = Meta {
        title: name.clone(),
        description: cfg.description.clone(),
        partial,
        expect_drivers: cfg.expect_drivers,
        forward,
    };
    let report = build(&data, &meta);
    let path = crate::output::write(&cfg.out_dir, name, &report)?;
    if cfg.dashboard.is_some() {
        *shared.finished.lock().unwrap_or_else(|p| p.into_inner()) = Some(crate::live::snapshot(
            &report,
            false,
            Some(path.display().to_string()),
        ));
        shared
            .generation
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }
    shared.store().forget(run_id, data.window_unix_ns.1);
    Ok(path)
}

/// Writes one run's report, prints its path and records it.
async fn emit(
    shared: &Shared,
    cfg: &CollectConfig,
    run_id: &str,
    partial: Option<String>,
    written: &mut Vec<PathBuf>,
) -> Result<(), CollectorError> {
    let p = report_run(shared, cfg, run_id, partial).await?;
    println!("{}", p.display());
    if let Some(tx) = &cfg.reported {
        let _ = tx.send((run_id.to_string(), p.clone()));
    }
    written.push(p);
    Ok(())
}

/// Serves OTLP on `listener` and writes reports until `shutdown` resolves (then a
/// partial report of every unfinished run) or, with `once`, after the first report.
/// Returns the markdown paths written, each also printed on stdout.
pub async fn serve(
    cfg: CollectConfig,
    listener: TcpListener,
    shutdown: impl Future<Output = ()>,
) -> Result<Vec<PathBuf>, CollectorError> {
    // Checked first: a bad certificate fails before anything is started.
    let mut builder = tonic::transport::Server::builder();
    if let Some(tls) = cfg.tls.clone() {
        builder = builder.tls_config(tls).map_err(CollectorError::Tls)?;
        tracing::info!("OTLP port: TLS only (plaintext refused)");
    }
    let spans_out = cfg
        .spans_out
        .as_deref()
        .map(SpansWriter::create)
        .transpose()?;
    let forward = match cfg.forward.as_deref() {
        Some(url) => Some(Forwarder::spawn(url, &cfg.forward_tls).map_err(|message| {
            CollectorError::Forward {
                url: url.to_string(),
                message,
            }
        })?),
        None => None,
    };
    let shared = Shared::new(Store::new(cfg.max_records), spans_out, forward);
    let receiver = Receiver(Arc::clone(&shared));
    let dashboard = match cfg.dashboard {
        Some(addr) => {
            let l = TcpListener::bind(addr)
                .await
                .map_err(|source| CollectorError::Dashboard { addr, source })?;
            let addr = l.local_addr().unwrap_or(addr);
            tracing::info!("live dashboard at http://{addr}/");
            let snapshots = crate::dashboard::spawn_publisher(
                Arc::clone(&shared),
                cfg.name.clone(),
                cfg.expect_drivers,
            );
            Some(tokio::spawn(crate::dashboard::serve(
                l,
                crate::dashboard::router(snapshots),
            )))
        }
        None => None,
    };
    let wake = Arc::new(tokio::sync::Notify::new());
    let coord = Coordination::new(cfg.expect_drivers, cfg.join_timeout, Arc::clone(&wake));
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
    let key_check = crossbatch_proto::key_check::KeyCheck::new(cfg.api_key.clone());
    if key_check.is_on() {
        tracing::info!("OTLP port: every export and coordination call needs the API key");
    }
    let server = tokio::spawn(
        builder
            // Pings find a driver whose network was cut (no FIN ever arrives).
            .http2_keepalive_interval(Some(Duration::from_secs(2)))
            .http2_keepalive_timeout(Some(Duration::from_secs(4)))
            // Outermost: a call without the key is refused before its body is read.
            .layer(tonic::service::InterceptorLayer::new(key_check))
            // Undecodable exports are the sender's fault: INVALID_ARGUMENT, not INTERNAL.
            .layer(RejectLayer::new(Arc::new(|outcome| {
                tracing::debug!(outcome, "refused an export before decoding it");
            })))
            .add_service(CoordinatorServer::new(CoordinatorService(Arc::clone(
                &coord,
            ))))
            .add_service(
                TraceServiceServer::new(receiver.clone()).max_decoding_message_size(64 << 20),
            )
            .add_service(MetricsServiceServer::new(receiver).max_decoding_message_size(64 << 20))
            .serve_with_incoming_shutdown(incoming, async {
                let _ = stop_rx.await;
            }),
    );
    let mut written = Vec::new();
    let mut complete_since: HashMap<String, Instant> = HashMap::new();
    tokio::pin!(shutdown);
    let result = loop {
        let stopping = tokio::select! {
            _ = shared.changed.notified() => false,
            _ = wake.notified() => false,
            _ = tokio::time::sleep(Duration::from_millis(200)) => false,
            _ = &mut shutdown => true,
        };
        if stopping {
            let runs = shared.store().run_ids();
            let mut r = Ok(());
            for run in runs {
                let why = "the collector was stopped before the run finished";
                if let Err(e) = emit(&shared, &cfg, &run, Some(why.into()), &mut written).await {
                    r = Err(e);
                }
            }
            break r;
        }
        if let Some((run_id, reason)) = coord.failed_runs().into_iter().next() {
            coord.forget(&run_id);
            if cfg.once {
                break Err(CollectorError::RunFailed { run_id, reason });
            }
            continue;
        }
        let mut ready = Vec::new();
        {
            let store = shared.store();
            for run in store.run_ids() {
                // Lost drivers (coordinated runs) will never send their record.
                let lost = coord.state(&run).map(|s| s.lost.len()).unwrap_or(0);
                if store.finished_drivers(&run) + lost < cfg.expect_drivers.max(1) {
                    continue;
                }
                let since = *complete_since
                    .entry(run.clone())
                    .or_insert_with(Instant::now);
                let (missing, unjoined) = store.outstanding(&run);
                if missing == 0 && unjoined == 0 {
                    ready.push((run, None));
                } else if since.elapsed() >= cfg.grace {
                    let partial = (missing > 0).then(|| {
                        format!("{missing} client spans the drivers reported never reached the collector")
                    });
                    ready.push((run, partial));
                }
            }
        }
        let mut done = false;
        let mut r = Ok(());
        for (run, partial) in ready {
            complete_since.remove(&run);
            let lost = coord.state(&run).map(|s| s.lost).unwrap_or_default();
            coord.forget(&run);
            let partial = match (partial, lost.is_empty()) {
                (p, true) => p,
                (None, false) => Some(format!("lost driver(s): {}", lost.join(", "))),
                (Some(p), false) => Some(format!("{p}; lost driver(s): {}", lost.join(", "))),
            };
            match emit(&shared, &cfg, &run, partial, &mut written).await {
                Ok(()) => done |= cfg.once,
                Err(e) => r = Err(e),
            }
        }
        if r.is_err() || done {
            break r;
        }
    };
    let _ = stop_tx.send(());
    if let Some(f) = &shared.forward {
        let t = f.drain(cfg.forward_drain).await;
        if t.undelivered() == 0 {
            tracing::info!(target = %t.target, delivered = t.delivered, "forwarded every export");
        } else {
            tracing::warn!(
                target = %t.target,
                delivered = t.delivered,
                failed = t.failed,
                dropped = t.dropped,
                pending = t.pending,
                "some exports were not forwarded"
            );
        }
    }
    if let Some(d) = dashboard {
        d.abort();
    }
    if let Ok(Err(e)) = server.await {
        return Err(e.into());
    }
    result.map(|()| written)
}
