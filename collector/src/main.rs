//! `crossbatch-collector`: OTLP in, the benchmark report out.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use crossbatch_collector::serve::{CollectConfig, serve};
use crossbatch_proto::client::{KeyArg, resolve_key};

#[derive(Parser)]
#[command(
    name = "crossbatch-collector",
    version,
    about = "Receives crossbatch spans and metrics over OTLP and writes the benchmark report"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Receive OTLP/gRPC and write a report when each run completes.
    Serve(Box<ServeArgs>),
    /// Rebuild reports offline from a `--spans-out` file.
    Report(ReportArgs),
    /// Put runs side by side: their report JSONs, the first as the baseline.
    Compare(CompareArgs),
}

#[derive(Args)]
struct CompareArgs {
    /// Report JSONs (or their .md) to compare; the first is the baseline.
    #[arg(required = true, num_args = 2.., value_name = "REPORT")]
    runs: Vec<PathBuf>,
    /// Directory for the comparison (created if missing).
    #[arg(long, default_value = "reports")]
    out: PathBuf,
    /// Title and file-name prefix: `<out>/<name>-<timestamp>.md` and `.svg`.
    #[arg(long, default_value = "compare")]
    name: String,
}

#[derive(Args)]
struct Naming {
    /// Directory for the report files (created if missing).
    #[arg(long, env = "CROSSBATCH_REPORTS", default_value = "reports")]
    out: PathBuf,
    /// Report name: its title and the file-name prefix (`<name>-<timestamp>.md`).
    #[arg(long, env = "CROSSBATCH_REPORT_NAME", default_value = "crossbatch")]
    name: String,
    /// The italic line under the title [default: the batching policy and backend].
    #[arg(long, env = "CROSSBATCH_REPORT_DESCRIPTION")]
    description: Option<String>,
    /// Driver completion records a run needs to be whole.
    #[arg(long, env = "CROSSBATCH_EXPECT_DRIVERS", default_value_t = 1)]
    expect_drivers: usize,
}

#[derive(Args)]
struct ServeArgs {
    /// OTLP/gRPC listen address.
    #[arg(
        long,
        env = "CROSSBATCH_COLLECTOR_LISTEN",
        default_value = "127.0.0.1:4317"
    )]
    listen: SocketAddr,
    #[command(flatten)]
    naming: Naming,
    /// Also pass everything received, unchanged, to this OTLP/gRPC endpoint
    /// (Jaeger, an OpenTelemetry Collector).
    #[arg(long, env = "CROSSBATCH_FORWARD")]
    forward: Option<String>,
    /// Before each report and before exiting, ms to wait for the forward queue to
    /// empty; what is still undelivered then is counted in the report's notes.
    #[arg(long, env = "CROSSBATCH_FORWARD_DRAIN_MS", default_value_t = 10_000)]
    forward_drain_ms: u64,
    /// TLS for an https:// --forward target.
    #[command(flatten)]
    forward_tls: crossbatch_proto::client::ClientTls,
    /// Also keep every export as OTLP JSON lines in this file (for `report --spans`).
    #[arg(long, env = "CROSSBATCH_SPANS_OUT")]
    spans_out: Option<PathBuf>,
    /// Exit after writing the first report.
    #[arg(long, env = "CROSSBATCH_ONCE")]
    once: bool,
    /// After the last completion record, ms to wait for spans still on their way.
    #[arg(long, env = "CROSSBATCH_GRACE_MS", default_value_t = 5000)]
    grace_ms: u64,
    /// Seconds coordinated drivers (`crossbatch-driver run --coordinator`) have to join
    /// a run before it fails.
    #[arg(long, env = "CROSSBATCH_JOIN_TIMEOUT_S", default_value_t = 120)]
    join_timeout_s: u64,
    /// Serve the live dashboard at http://ADDR/ (server-sent events at /events, JSON at
    /// /api/snapshot), e.g. 127.0.0.1:8080.
    #[arg(long, env = "CROSSBATCH_DASHBOARD")]
    dashboard: Option<String>,
    /// Calls, batches and resource samples kept at most; beyond, dropped and counted.
    #[arg(long, env = "CROSSBATCH_MAX_RECORDS", default_value_t = 2_000_000)]
    max_records: usize,
    /// Every export and coordination call on --listen must send `authorization: Bearer
    /// KEY` (UNAUTHENTICATED otherwise). Prefer the environment variable or
    /// --api-key-file: a flag shows in `ps`.
    #[arg(long, env = "CROSSBATCH_COLLECTOR_API_KEY", hide_env_values = true, value_parser = KeyArg::parse)]
    api_key: Option<KeyArg>,
    /// Read the API key from the first line of this file.
    #[arg(long, env = "CROSSBATCH_COLLECTOR_API_KEY_FILE", value_name = "FILE")]
    api_key_file: Option<PathBuf>,
    /// Serve --listen over TLS with this certificate chain (PEM); needs
    /// --listen-tls-key. Plaintext connections are then refused. (--tls-cert is the
    /// client certificate for --forward.)
    #[arg(
        long,
        env = "CROSSBATCH_COLLECTOR_TLS_CERT",
        value_name = "FILE",
        requires = "listen_tls_key"
    )]
    listen_tls_cert: Option<PathBuf>,
    /// Private key (PEM) of --listen-tls-cert.
    #[arg(
        long,
        env = "CROSSBATCH_COLLECTOR_TLS_KEY",
        value_name = "FILE",
        requires = "listen_tls_cert"
    )]
    listen_tls_key: Option<PathBuf>,
}

impl ServeArgs {
    /// TLS for --listen, its files read (and so checked) before anything listens.
    fn listen_tls(&self) -> anyhow::Result<Option<tonic::transport::ServerTlsConfig>> {
        let (Some(cert), Some(key)) = (&self.listen_tls_cert, &self.listen_tls_key) else {
            return Ok(None);
        };
        let read = |flag: &str, p: &PathBuf| {
            std::fs::read(p).with_context(|| format!("{flag} {}", p.display()))
        };
        let identity = tonic::transport::Identity::from_pem(
            read("--listen-tls-cert", cert)?,
            read("--listen-tls-key", key)?,
        );
        Ok(Some(
            tonic::transport::ServerTlsConfig::new().identity(identity),
        ))
    }
}

#[derive(Args)]
struct ReportArgs {
    /// A file written by `serve --spans-out`.
    #[arg(long)]
    spans: PathBuf,
    #[command(flatten)]
    naming: Naming,
    /// Only this run [default: every run in the file].
    #[arg(long)]
    run_id: Option<String>,
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "info,h2=warn,tower=warn".into()),
        )
        .init();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Serve(a) => run_serve(*a),
        Command::Report(a) => crossbatch_collector::offline_report(
            &a.spans,
            &a.naming.out,
            &a.naming.name,
            a.naming.description,
            a.run_id.as_deref(),
            a.naming.expect_drivers,
        )
        .map(|paths| {
            for p in paths {
                println!("{}", p.display());
            }
        }),
        Command::Compare(a) => compare(a),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn compare(a: CompareArgs) -> anyhow::Result<()> {
    use crossbatch_collector::{compare, compare_render};
    let runs = a
        .runs
        .iter()
        .map(|p| compare::load(p))
        .collect::<Result<Vec<_>, _>>()?;
    let c = compare::Comparison::new(runs)?;
    let stamp = crossbatch_collector::report::file_stamp_now();
    let md = compare_render::write(&a.out, &a.name, &stamp, &c)?;
    if !c.partial.is_empty() {
        eprintln!(
            "note: {} config(s) are not in every run; listed under \"Configs not in every run\"",
            c.partial.len()
        );
    }
    println!("{}", md.display());
    Ok(())
}

fn run_serve(a: ServeArgs) -> anyhow::Result<()> {
    if a.naming.expect_drivers == 0 {
        anyhow::bail!("--expect-drivers must be at least 1");
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    // Empty (compose's `${DASHBOARD:-}`) means off.
    let dashboard = match a.dashboard.as_deref().filter(|d| !d.is_empty()) {
        Some(d) => Some(
            d.parse::<SocketAddr>()
                .with_context(|| format!("--dashboard {d}: not an address like 127.0.0.1:8080"))?,
        ),
        None => None,
    };
    let api_key = resolve_key(a.api_key.as_ref(), a.api_key_file.as_deref())
        .map_err(|e| anyhow::anyhow!(e))?;
    let tls = a.listen_tls()?;
    rt.block_on(async move {
        let listener = tokio::net::TcpListener::bind(a.listen)
            .await
            .with_context(|| format!("listening on {}", a.listen))?;
        tracing::info!(listen = %a.listen, expect_drivers = a.naming.expect_drivers, "collector receiving OTLP/gRPC");
        let cfg = CollectConfig {
            description: a.naming.description,
            expect_drivers: a.naming.expect_drivers,
            grace: Duration::from_millis(a.grace_ms),
            once: a.once,
            max_records: a.max_records.max(1),
            // Empty values (compose's `${FORWARD:-}`) mean unset.
            forward: a.forward.filter(|f| !f.is_empty()),
            forward_tls: a.forward_tls,
            dashboard,
            forward_drain: Duration::from_millis(a.forward_drain_ms),
            spans_out: a.spans_out.filter(|p| !p.as_os_str().is_empty()),
            join_timeout: Duration::from_secs(a.join_timeout_s),
            api_key,
            tls,
            ..CollectConfig::new(a.naming.out, a.naming.name)
        };
        serve(cfg, listener, crossbatch_proto::lifecycle::shutdown_signal()).await?;
        Ok(())
    })
}
