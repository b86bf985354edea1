//! `crossbatch-driver run`: Score load sweeps against a crossbatch server.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::{Args, Parser, Subcommand};

use crossbatch_driver::balance::{Balance, Pool, PoolConfig, parse_targets, record};
use crossbatch_driver::coordinated::Gate;
use crossbatch_driver::load::{Arrivals, Mode, StepConfig};
use crossbatch_driver::stats::Summary;
use crossbatch_driver::telemetry::{ClientTelemetry, Identity, ServerInfo};
use crossbatch_driver::{sweep, workload};
use crossbatch_proto::v1::InfoRequest;
use crossbatch_proto::v1::cross_encoder_client::CrossEncoderClient;

#[derive(Parser)]
#[command(
    name = "crossbatch-driver",
    version,
    about = "Score load for a crossbatch server"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run every batch × concurrency step of a sweep and print a summary per step.
    Run(RunArgs),
}

#[derive(Args)]
struct RunArgs {
    /// Servers, comma separated: URLs (http://host:port, https://host:port) and DNS
    /// names (dns:///host:port: every address is a replica, re-resolved every
    /// --resolve-s; TLS when a --tls-* option is given, verifying the name).
    #[arg(
        long,
        env = "CROSSBATCH_TARGET",
        default_value = "http://127.0.0.1:50051"
    )]
    target: String,
    /// How calls are spread over the servers: p2c (of two random endpoints, the one
    /// with fewer calls in flight), round-robin, or pinned (one connection, no
    /// failover: a naive client, the control case).
    #[arg(long, env = "CROSSBATCH_BALANCE", value_enum, default_value = "p2c")]
    balance: Balance,
    /// Times a call refused by an unavailable endpoint (UNAVAILABLE, or a failed
    /// connection) is sent to another one, within its deadline. Not with pinned.
    #[arg(long, env = "CROSSBATCH_RETRIES", default_value_t = 2)]
    retries: usize,
    /// Seconds between re-resolutions of dns:/// names (and health checks of the
    /// endpoints in rotation).
    #[arg(long, env = "CROSSBATCH_RESOLVE_S", default_value_t = 2.0)]
    resolve_s: f64,
    /// Pairs per call, comma separated (one step per value × concurrency).
    #[arg(long, value_delimiter = ',', default_value = "8")]
    batch: Vec<usize>,
    /// Concurrent callers (closed loop), comma separated.
    #[arg(long, value_delimiter = ',', default_value = "1")]
    concurrency: Vec<usize>,
    /// Pairs per step, exactly (the last call may be smaller).
    #[arg(long, default_value_t = 800)]
    pairs: usize,
    /// Calls per step sent first and left out of the figures.
    #[arg(long, default_value_t = 0)]
    warmup: usize,
    /// Each call's gRPC deadline in ms.
    #[arg(long)]
    deadline_ms: Option<u64>,
    /// Open loop: calls per second (latency from each call's intended start).
    #[arg(long)]
    rate: Option<f64>,
    /// Open loop arrivals.
    #[arg(long, value_enum, default_value = "uniform")]
    arrivals: Arrivals,
    /// Open loop: calls in flight at most (later calls are sent late, and counted).
    #[arg(long, default_value_t = 256)]
    max_in_flight: usize,
    /// Workload: a JSONL or TSV file; `synthetic` for the built-in seeded generator.
    #[arg(long, default_value = "synthetic")]
    workload: String,
    /// Seed of the synthetic workload.
    #[arg(long, default_value_t = 20240517)]
    seed: u64,
    /// Run id shared by the drivers of one run [default: generated].
    #[arg(long, env = "CROSSBATCH_RUN_ID")]
    run_id: Option<String>,
    /// This driver's id [default: host name + pid].
    #[arg(long, env = "CROSSBATCH_DRIVER_ID")]
    driver_id: Option<String>,
    /// Seconds to wait for the server's health to be SERVING before failing.
    #[arg(long, value_name = "SECONDS", default_value_t = 60)]
    connect_timeout: u64,
    /// Write every call as one JSON line here (merge several drivers exactly).
    #[arg(long)]
    samples_out: Option<PathBuf>,
    /// Seconds between progress lines when stderr is not a terminal (on a terminal a
    /// bar is redrawn in place); 0: no progress output.
    #[arg(long, default_value_t = 2.0)]
    progress_s: f64,
    /// Export a `client.score` span per call (traceparent sent to the server) and
    /// completion records to this OTLP/gRPC endpoint, e.g. the collector.
    #[arg(long, env = "CROSSBATCH_OTLP_ENDPOINT")]
    otlp_endpoint: Option<String>,
    /// Join a coordinated run at this collector (its gRPC address, e.g.
    /// http://collector:4317): every step starts on all the run's drivers together.
    /// Drivers of one run share `--run-id` and the same sweep.
    #[arg(long, env = "CROSSBATCH_COORDINATOR")]
    coordinator: Option<String>,
    #[command(flatten)]
    key: crossbatch_proto::client::ClientKey,
    #[command(flatten)]
    tls: crossbatch_proto::client::ClientTls,
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .init();
    let cli = Cli::parse();
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: starting the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = match cli.command {
        Command::Run(args) => rt.block_on(run(args)),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(args: RunArgs) -> Result<ExitCode> {
    if args.batch.contains(&0) || args.concurrency.contains(&0) || args.pairs == 0 {
        bail!("--batch, --concurrency and --pairs must be at least 1");
    }
    if let Some(r) = args.rate
        && !(r.is_finite() && r > 0.0)
    {
        bail!("--rate must be a positive number of calls per second");
    }
    let pairs = if args.workload == "synthetic" {
        workload::synthetic(args.pairs.max(1000), args.seed)
    } else {
        workload::load(std::path::Path::new(&args.workload))?
    };
    if !(args.resolve_s.is_finite() && args.resolve_s >= 0.1) {
        bail!("--resolve-s must be at least 0.1 seconds");
    }
    let api_key = args.key.secret().map_err(anyhow::Error::msg)?;
    let targets = parse_targets(&args.target).map_err(anyhow::Error::msg)?;
    let pool = Pool::start(
        targets,
        args.tls.clone(),
        PoolConfig {
            balance: args.balance,
            retries: args.retries,
            resolve_every: Duration::from_secs_f64(args.resolve_s),
            seed: args.seed,
            resolver: Default::default(),
        },
    )
    .await
    .map_err(anyhow::Error::msg)?;
    pool.wait_ready(Duration::from_secs(args.connect_timeout))
        .await
        .map_err(anyhow::Error::msg)?;
    let Some(first) = pool.any_serving() else {
        bail!("no server at {} is SERVING", args.target);
    };
    let run_id_given = args.run_id.clone();
    let run_id = args.run_id.unwrap_or_else(|| {
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis())
            .unwrap_or(0);
        format!("run-{t}")
    });
    let host = std::fs::read_to_string("/etc/hostname")
        .map(|h| h.trim().to_string())
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "host".into());
    let driver_id = args
        .driver_id
        .unwrap_or_else(|| format!("{host}-{}", std::process::id()));
    let mut info = tonic::Request::new(InfoRequest {});
    crossbatch_proto::client::authorize(&mut info, api_key.as_ref());
    let server: ServerInfo = CrossEncoderClient::new(first.channel.clone())
        .info(info)
        .await
        .with_context(|| format!("asking {} for its Info", first.key))?
        .into_inner()
        .into();
    let telemetry = match &args.otlp_endpoint {
        Some(endpoint) => Some(Arc::new(
            ClientTelemetry::new(
                endpoint,
                Identity {
                    run_id: run_id.clone(),
                    driver_id: driver_id.clone(),
                    host: host.clone(),
                    steps_planned: args.batch.len() * args.concurrency.len(),
                },
            )
            .context("starting span export")?,
        )),
        None => None,
    };
    let mode = match args.rate {
        Some(rate) => Mode::Open {
            rate,
            arrivals: args.arrivals,
            max_in_flight: args.max_in_flight,
        },
        None => Mode::Closed,
    };
    let cfg = sweep::SweepConfig {
        template: StepConfig {
            step: 0,
            batch: 1,
            concurrency: 1,
            pairs: args.pairs,
            warmup_calls: args.warmup,
            deadline: args.deadline_ms.map(Duration::from_millis),
            mode,
            run_id: run_id.clone(),
            driver_id,
            api_key: api_key.clone(),
        },
        batches: args.batch,
        concurrencies: args.concurrency,
        progress_every: Duration::from_secs_f64(args.progress_s.max(0.0)),
    };
    // Scripts wait for this line (scripts/bench.sh's KILL_SERVER_AFTER clock).
    eprintln!(
        "run {run_id} started: {} endpoint(s), balance {}",
        pool.snapshot().len(),
        args.balance.name()
    );
    let mut gate = match &args.coordinator {
        Some(url) => {
            if run_id_given.is_none() {
                bail!("--coordinator needs --run-id (the same on every driver of the run)");
            }
            let g = Gate::join(
                url,
                &run_id,
                &cfg.template.driver_id,
                &host,
                cfg.steps().len(),
                Duration::from_secs(args.connect_timeout),
            )
            .await?;
            eprintln!("joined run {run_id} at {url}; waiting for the other drivers");
            Some(g)
        }
        None => None,
    };
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        crossbatch_proto::lifecycle::shutdown_signal().await;
        eprintln!("interrupted: finishing calls in flight, then summarising");
        let _ = stop_tx.send(true);
    });
    let result = sweep::run(
        pool.clone(),
        Arc::new(pairs),
        &cfg,
        stop_rx,
        telemetry.clone(),
        server,
        gate.as_mut(),
    )
    .await;
    if let Some(t) = telemetry.and_then(Arc::into_inner)
        && let Err(e) = t.shutdown()
    {
        // The summary below is still right; say the export was incomplete.
        eprintln!("warning: exporting spans to the OTLP endpoint failed: {e}");
    }
    println!(
        "run {run_id}{}",
        if result.interrupted {
            " (interrupted)"
        } else {
            ""
        }
    );
    println!("{}", Summary::HEADER);
    for s in &result.summaries {
        println!("{}", s.line());
    }
    // Where the calls went: always with several endpoints, and with one when any
    // attempt had to be retried or the endpoint was ejected.
    if result.endpoints.len() > 1 || result.record.retries + result.record.ejections > 0 {
        println!(
            "\nendpoints ({}; {} retries, {} ejections)",
            args.balance.name(),
            result.record.retries,
            result.record.ejections
        );
        print!("{}", record::table(&result.endpoints));
    }
    if let Some(path) = &args.samples_out {
        sweep::write_samples(path, &result.samples)
            .with_context(|| format!("writing {}", path.display()))?;
        eprintln!(
            "{} samples written to {}",
            result.samples.len(),
            path.display()
        );
    }
    if let Some(e) = &result.error {
        eprintln!("error: {e}");
        return Ok(ExitCode::FAILURE);
    }
    Ok(if result.interrupted {
        ExitCode::from(130)
    } else {
        ExitCode::SUCCESS
    })
}
