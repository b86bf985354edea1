//! `crossbatch-server serve`: configuration, start-up (listen first, load and warm the
//! model behind NOT_SERVING health), and graceful shutdown.

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use crossbatch_proto::client::{KeyArg, Secret, resolve_key};
use crossbatch_proto::rejections::RejectLayer;
use crossbatch_proto::v1::InfoResponse;
use crossbatch_proto::v1::cross_encoder_server::CrossEncoderServer;
use tokio::sync::OnceCell;

use crate::admission::{Admission, AdmissionGate};
use crate::batcher::{BatchPolicy, Batcher, BatcherConfig, BatcherThread};
use crate::connections::LimitedIncoming;
use crate::instance::{InstanceId, header_layer};
use crate::metrics::Metrics;
use crate::service::{Limits, Ready, ScoringService};
use crossbatch_model::backend::{self, BackendChoice, Precision, SelectedDevice};
use crossbatch_model::source;
use crossbatch_model::{CrossEncoder, Layout, Scorer, WarmupMode, padded_len};

/// Every flag can also be set through the environment variable shown in `--help`.
#[derive(clap::Parser, Debug, Clone)]
#[command(name = "serve")]
pub struct ServeArgs {
    /// Address to listen on.
    #[arg(long, env = "CROSSBATCH_LISTEN", default_value = "127.0.0.1:50051")]
    pub listen: SocketAddr,
    /// Model directory (HF layout), hub id, or `stand-in`; the default falls back to the
    /// offline stand-in when the hub cannot be reached.
    #[arg(long, env = "CROSSBATCH_MODEL", default_value = source::DEFAULT_MODEL_ID)]
    pub model: String,
    /// Hub revision (branch, tag or commit) when the model is a hub id.
    #[arg(long, env = "CROSSBATCH_MODEL_REVISION", default_value = source::DEFAULT_REVISION)]
    pub revision: String,
    /// auto: wgpu on a hardware GPU, else CPU. wgpu: force wgpu. cpu: burn-flex.
    #[arg(long, env = "CROSSBATCH_BACKEND", value_enum, default_value = "auto")]
    pub backend: BackendChoice,
    /// Number format of the model: f16 (wgpu only) halves GPU memory traffic; int8 and
    /// bf16 (CPU backend only) run the linear layers in that format (accuracy: `eval`).
    #[arg(long, env = "CROSSBATCH_DTYPE", value_enum, default_value = "f32")]
    pub dtype: Precision,
    /// Before SERVING, run every batch shape the batcher can produce (full) so no call
    /// pays a kernel compile, or one small batch (quick). auto: full on a hardware GPU.
    #[arg(long, env = "CROSSBATCH_WARMUP", value_enum, default_value = "auto")]
    pub warmup: WarmupMode,
    /// Directory for the GPU runtime's autotune results and compiled kernels, kept
    /// between runs so a restart serves at full speed at once
    /// [default: ~/.cache/crossbatch/kernels].
    #[arg(long, env = "CROSSBATCH_KERNEL_CACHE")]
    pub kernel_cache: Option<std::path::PathBuf>,
    /// Pairs per forward pass at most, or `auto`: on the CPU the smallest batch whose
    /// cost per pair the warm-up measured within 5% of the best (larger batches there
    /// buy no throughput, only latency), at most 96; 96 on a GPU.
    #[arg(long, env = "CROSSBATCH_MAX_BATCH", default_value = "auto", value_parser = MaxBatch::parse)]
    pub max_batch: MaxBatch,
    /// deadline policy: how long a batch waits for more pairs after its oldest arrived.
    #[arg(long, env = "CROSSBATCH_BATCH_TIMEOUT_MS", default_value_t = 20)]
    pub batch_timeout_ms: u64,
    /// Computed tokens per forward pass at most (padding included on padded layouts).
    #[arg(long, env = "CROSSBATCH_MAX_BATCH_TOKENS", default_value_t = 16384)]
    pub max_batch_tokens: usize,
    /// deadline: wait up to the timeout for a full batch. eager: run whatever waits as
    /// soon as the model is free. auto: eager on the CPU, deadline on a GPU.
    #[arg(
        long,
        env = "CROSSBATCH_BATCH_POLICY",
        value_enum,
        default_value = "auto"
    )]
    pub batch_policy: BatchPolicy,
    /// Group waiting pairs of similar length into a batch (less padding).
    #[arg(long, env = "CROSSBATCH_GROUP_BY_LENGTH", default_value_t = true, action = clap::ArgAction::Set)]
    pub group_by_length: bool,
    /// Pairs admitted and not yet answered (being tokenized, waiting or in a forward
    /// pass); a call that would pass it gets RESOURCE_EXHAUSTED at once, before any of
    /// its work is done.
    #[arg(long, env = "CROSSBATCH_MAX_QUEUE_PAIRS", default_value_t = 4096)]
    pub max_queue_pairs: usize,
    /// Open client connections at most; one past it is closed at once (its client
    /// sees UNAVAILABLE) rather than left waiting.
    #[arg(long, env = "CROSSBATCH_MAX_CONNECTIONS", default_value_t = 1024)]
    pub max_connections: usize,
    /// Concurrent HTTP/2 streams (calls) per connection (SETTINGS_MAX_CONCURRENT_STREAMS);
    /// a client past it waits in its own HTTP/2 layer, not in the server's memory.
    #[arg(long, env = "CROSSBATCH_MAX_CONCURRENT_STREAMS", default_value_t = 128)]
    pub max_concurrent_streams: u32,
    /// On shutdown, how long queued work may take to finish (e.g. 30s, 500ms); then
    /// the calls still waiting get UNAVAILABLE and the process exits non-zero
    /// [default: a full queue at the speed measured while serving, times 1.5, at least 10s].
    #[arg(long, env = "CROSSBATCH_DRAIN_TIMEOUT", value_parser = parse_duration)]
    pub drain_timeout: Option<Duration>,
    /// Pairs per Score/Rerank call at most (more: INVALID_ARGUMENT).
    #[arg(long, env = "CROSSBATCH_MAX_CLIENT_BATCH", default_value_t = 1024)]
    pub max_client_batch: usize,
    /// Bytes per query or passage at most (more: INVALID_ARGUMENT).
    #[arg(long, env = "CROSSBATCH_MAX_TEXT_BYTES", default_value_t = 65536)]
    pub max_text_bytes: usize,
    /// OTLP/gRPC endpoint for spans and metrics, e.g. http://127.0.0.1:4317 (no export
    /// when unset).
    #[arg(long, env = "CROSSBATCH_OTLP_ENDPOINT")]
    pub otlp_endpoint: Option<String>,
    /// Resource sampling (CPU, memory) and telemetry export interval.
    #[arg(long, env = "CROSSBATCH_SAMPLE_INTERVAL_MS", default_value_t = 500)]
    pub sample_interval_ms: u64,
    /// Batch layout: auto (packed on CPU, padded on wgpu), or force one (for benchmarks).
    #[arg(long, env = "CROSSBATCH_LAYOUT", value_enum, default_value = "auto")]
    pub layout: LayoutChoice,
    /// Serve Prometheus metrics at http://ADDR/metrics (off when unset).
    #[arg(long, env = "CROSSBATCH_METRICS_ADDR")]
    pub metrics_addr: Option<SocketAddr>,
    /// Truncate each pair to N tokens, special tokens included [default: the model's
    /// maximum, 512]. Shorter is faster and scores differently on long passages.
    #[arg(long, env = "CROSSBATCH_MAX_LENGTH")]
    pub max_length: Option<usize>,
    /// Tokenizer threads [default: half the cores, at least 1].
    #[arg(long, env = "CROSSBATCH_TOKENIZER_WORKERS")]
    pub tokenizer_workers: Option<usize>,
    /// Serve TLS with this certificate chain (PEM); needs --tls-key. Plaintext
    /// connections are then refused.
    #[arg(long, env = "CROSSBATCH_TLS_CERT", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// Private key (PEM) for --tls-cert.
    #[arg(long, env = "CROSSBATCH_TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// Require clients to present a certificate signed by this CA (PEM): mutual TLS.
    #[arg(long, env = "CROSSBATCH_TLS_CLIENT_CA", requires = "tls_cert")]
    pub tls_client_ca: Option<PathBuf>,
    /// Every Score, Rerank and Info call must send `authorization: Bearer KEY`
    /// (UNAUTHENTICATED otherwise). Health and reflection stay open. Prefer the
    /// environment variable or --api-key-file: a flag shows in `ps`.
    #[arg(long, env = "CROSSBATCH_API_KEY", hide_env_values = true, value_parser = KeyArg::parse)]
    pub api_key: Option<KeyArg>,
    /// Read the API key from the first line of this file.
    #[arg(long, env = "CROSSBATCH_API_KEY_FILE")]
    pub api_key_file: Option<PathBuf>,
    /// This replica's name, in its spans' resource (`service.instance.id`), `Info` and
    /// a `crossbatch-instance` header on every response [default: the host name].
    #[arg(long, env = "CROSSBATCH_INSTANCE_ID", value_parser = InstanceId::parse)]
    pub instance_id: Option<InstanceId>,
}

/// A duration as `500ms`, `30s`, `2m`, or a plain number of seconds (`1.5`).
/// `--max-batch`: a number of pairs, or chosen at start-up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MaxBatch {
    Auto,
    Fixed(usize),
}

impl MaxBatch {
    /// What `auto` allows at most, and what it means on a GPU.
    pub const AUTO_CAP: usize = 96;

    pub fn parse(s: &str) -> Result<Self, String> {
        match s.trim() {
            "auto" => Ok(Self::Auto),
            n => match n.parse::<usize>() {
                Ok(0) => Err("must be at least 1 (or auto)".into()),
                Ok(n) => Ok(Self::Fixed(n)),
                Err(_) => Err(format!("{n:?} is neither a number of pairs nor auto")),
            },
        }
    }

    /// The largest batch this setting can produce.
    pub fn cap(self) -> usize {
        match self {
            Self::Auto => Self::AUTO_CAP,
            Self::Fixed(n) => n,
        }
    }
}

impl std::fmt::Display for MaxBatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Auto => f.write_str("auto"),
            Self::Fixed(n) => write!(f, "{n}"),
        }
    }
}

pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let (num, scale) = if let Some(n) = s.strip_suffix("ms") {
        (n, 1e-3)
    } else if let Some(n) = s.strip_suffix('s') {
        (n, 1.0)
    } else if let Some(n) = s.strip_suffix('m') {
        (n, 60.0)
    } else {
        (s, 1.0)
    };
    let v: f64 = num
        .trim()
        .parse()
        .map_err(|_| format!("{s:?} is not a duration (e.g. 30s, 500ms, 2m)"))?;
    Duration::try_from_secs_f64(v * scale)
        .map_err(|_| format!("{s:?} is not a duration of zero or more (e.g. 30s, 500ms, 2m)"))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LayoutChoice {
    Auto,
    Packed,
    Padded,
}

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("invalid configuration: {0}")]
    Config(String),
    #[error(transparent)]
    Source(#[from] source::SourceError),
    #[error(transparent)]
    Backend(#[from] backend::BackendError),
    #[error(transparent)]
    KernelCache(#[from] crossbatch_model::kernel_cache::KernelCacheError),
    #[error(transparent)]
    Model(#[from] crossbatch_model::ModelError),
    #[error("gRPC server: {0}")]
    Transport(String),
    #[error(
        "drain timed out after {}: {queued} queued pairs were answered UNAVAILABLE{}",
        fmt_secs(*waited),
        if *hung { "; a forward pass was still running when the server gave up on it" } else { "" }
    )]
    DrainTimeout {
        waited: Duration,
        queued: usize,
        hung: bool,
    },
}

fn fmt_secs(d: Duration) -> String {
    format!("{:.1} s", d.as_secs_f64())
}

impl ServeArgs {
    /// --instance-id, or the host name.
    pub fn instance(&self) -> InstanceId {
        self.instance_id
            .clone()
            .unwrap_or_else(InstanceId::from_host)
    }

    /// The API key from --api-key or --api-key-file, if any.
    fn api_key(&self) -> Result<Option<Secret>, StartError> {
        resolve_key(self.api_key.as_ref(), self.api_key_file.as_deref()).map_err(StartError::Config)
    }

    /// TLS for the gRPC port, read and checked before anything listens.
    fn tls(&self) -> Result<Option<tonic::transport::ServerTlsConfig>, StartError> {
        use tonic::transport::{Certificate, Identity, ServerTlsConfig};
        let (Some(cert), Some(key)) = (&self.tls_cert, &self.tls_key) else {
            return Ok(None);
        };
        let read = |flag: &str, p: &PathBuf| {
            std::fs::read(p).map_err(|e| StartError::Config(format!("{flag} {}: {e}", p.display())))
        };
        let mut cfg = ServerTlsConfig::new().identity(Identity::from_pem(
            read("--tls-cert", cert)?,
            read("--tls-key", key)?,
        ));
        if let Some(ca) = &self.tls_client_ca {
            cfg = cfg.client_ca_root(Certificate::from_pem(read("--tls-client-ca", ca)?));
        }
        Ok(Some(cfg))
    }

    /// The largest request body the transport accepts: a full call of the longest
    /// texts plus protobuf framing (tag and length per field and per pair), so a
    /// bigger one is refused from its length prefix, before it is read.
    pub fn max_request_bytes(&self) -> usize {
        const PER_PAIR_FRAMING: usize = 32;
        const PER_CALL_FRAMING: usize = 64;
        self.max_client_batch
            .saturating_mul(2 * self.max_text_bytes + PER_PAIR_FRAMING)
            .saturating_add(PER_CALL_FRAMING)
    }

    fn validate(&self) -> Result<(), StartError> {
        let bad = |m: String| Err(StartError::Config(m));
        if self.max_client_batch == 0 {
            return bad("--max-client-batch must be at least 1".into());
        }
        if self.max_connections == 0 {
            return bad("--max-connections must be at least 1".into());
        }
        if self.max_concurrent_streams == 0 {
            return bad("--max-concurrent-streams must be at least 1".into());
        }
        if self.max_queue_pairs < self.max_client_batch {
            return bad(format!(
                "--max-queue-pairs ({}) must hold at least one full call (--max-client-batch {})",
                self.max_queue_pairs, self.max_client_batch
            ));
        }
        Ok(())
    }
}

/// Mean tokens per pair that `--max-batch auto` times (an MS MARCO query and passage
/// come to about 100).
const CHOOSE_TOKENS: usize = 100;

/// The batch cap, and how it was set (for the log, `Info` and the report).
fn choose_max_batch(model: &CrossEncoder, args: &ServeArgs) -> Result<(usize, String), StartError> {
    match args.max_batch {
        MaxBatch::Fixed(n) => Ok((n, "--max-batch".into())),
        MaxBatch::Auto
            if model.device().backend == backend::BackendKind::Cpu
                && model.layout() == Layout::Packed =>
        {
            let c =
                model.choose_batch(MaxBatch::AUTO_CAP, args.max_batch_tokens, CHOOSE_TOKENS, 2)?;
            let how = format!(
                "auto: smallest batch within {:.0}% of the best cost per pair at {} tokens ({})",
                100.0 * crossbatch_model::warmup::NEAR_BEST,
                c.tokens,
                c.describe()
            );
            tracing::info!(
                max_batch = c.chosen,
                "max batch chosen by the warm-up: {how}"
            );
            Ok((c.chosen, how))
        }
        MaxBatch::Auto => Ok((MaxBatch::AUTO_CAP, "auto: the GPU default".into())),
    }
}

/// Loads, checks and warms the model, then starts the batcher.
fn load(
    args: &ServeArgs,
    metrics: Arc<Metrics>,
) -> Result<(Ready, BatcherThread, SelectedDevice), StartError> {
    let src = source::resolve(&args.model, &args.revision)?;
    if args.backend != BackendChoice::Cpu {
        crossbatch_model::kernel_cache::init_or_default(args.kernel_cache.as_deref())?;
    }
    let device = backend::select_with(args.backend, args.dtype)?;
    let mut model = CrossEncoder::load(&src.dir, device)?;
    match args.layout {
        LayoutChoice::Auto => {}
        LayoutChoice::Packed => model.set_layout(Layout::Packed),
        LayoutChoice::Padded => model.set_layout(Layout::Padded),
    }
    let precision = model.device().precision;
    if precision.fused_cpu_only() && model.layout() != Layout::Packed {
        return Err(StartError::Config(format!(
            "--dtype {precision} runs on the packed layout only (--layout padded runs Burn's f32 ops)"
        )));
    }
    if let Some(n) = args.max_length {
        model
            .set_max_length(n)
            .map_err(|e| StartError::Config(format!("--max-length: {e}")))?;
    }
    let max_len = model.tokenizer().max_len();
    let longest_cost = match model.layout() {
        Layout::Packed => max_len,
        Layout::Padded => padded_len(max_len, model.config().max_position_embeddings),
    };
    if args.max_batch_tokens < longest_cost {
        return Err(StartError::Config(format!(
            "--max-batch-tokens ({}) must fit one pair of the longest input ({longest_cost} tokens)",
            args.max_batch_tokens
        )));
    }
    // Warm-up: allocations on the CPU, kernel compilation (and autotune) on wgpu.
    let warm = model.warm_up(args.warmup, args.max_batch.cap(), args.max_batch_tokens)?;
    tracing::info!(
        mode = ?warm.mode,
        shapes = warm.shapes.len(),
        seconds = format!("{:.1}", warm.elapsed.as_secs_f64()),
        "warmed up"
    );
    let max_batch = choose_max_batch(&model, args)?;
    let warm_pairs: usize = warm.shapes.iter().map(|&(pairs, _)| pairs).sum();
    let warm_seconds_per_pair = warm.elapsed.as_secs_f64() / warm_pairs.max(1) as f64;
    let policy = args.batch_policy.resolve(model.device().backend);
    let info = InfoResponse {
        model_id: src.id.clone(),
        stand_in: model.is_standin(),
        backend: model.device().backend.to_string(),
        device: model.device().name.clone(),
        max_batch: max_batch.0 as u32,
        max_batch_chosen_by: max_batch.1.clone(),
        batch_timeout_ms: args.batch_timeout_ms as u32,
        max_batch_tokens: args.max_batch_tokens as u32,
        max_input_length: max_len as u32,
        max_client_batch: args.max_client_batch as u32,
        batch_policy: policy.to_string(),
        max_queue_pairs: args.max_queue_pairs as u32,
        version: env!("CARGO_PKG_VERSION").into(),
        queued_pairs: 0,
        batches_run: 0,
        instance_id: args.instance().to_string(),
    };
    tracing::info!(
        model = %info.model_id,
        stand_in = info.stand_in,
        backend = %info.backend,
        device = %info.device,
        "model ready{}",
        if info.stand_in { " (offline stand-in: scores are not relevance-trained)" } else { "" }
    );
    let device = model.device().clone();
    let model: Arc<dyn Scorer> = Arc::new(model);
    let cfg = BatcherConfig {
        max_batch: max_batch.0,
        timeout: Duration::from_millis(args.batch_timeout_ms),
        max_batch_tokens: args.max_batch_tokens,
        max_queue_pairs: args.max_queue_pairs,
        policy,
        group_by_length: args.group_by_length,
    };
    let (batcher, thread) = Batcher::start(Arc::clone(&model), cfg, metrics);
    let workers = args.tokenizer_workers.unwrap_or_else(|| {
        std::thread::available_parallelism()
            .map(|n| n.get() / 2)
            .unwrap_or(1)
            .max(1)
    });
    let tokenizers = rayon::ThreadPoolBuilder::new()
        .num_threads(workers.max(1))
        .thread_name(|i| format!("crossbatch-tokenize-{i}"))
        // Jobs catch their own panics; this only logs one that escapes, instead of
        // rayon aborting the process.
        .panic_handler(|p| {
            tracing::error!(
                "a tokenizer job panicked: {}",
                crossbatch_model::panic_message(&*p, "no message")
            );
        })
        .build()
        .map_err(|e| StartError::Config(format!("tokenizer pool: {e}")))?;
    Ok((
        Ready {
            model,
            batcher,
            tokenizers: Arc::new(tokenizers),
            info,
            warm_seconds_per_pair,
        },
        thread,
        device,
    ))
}

/// Health of the API and of the server as a whole ("").
async fn set_health(health: &tonic_health::server::HealthReporter, serving: bool) {
    let status = if serving {
        tonic_health::ServingStatus::Serving
    } else {
        tonic_health::ServingStatus::NotServing
    };
    health
        .set_service_status(
            <CrossEncoderServer<ScoringService> as tonic::server::NamedService>::NAME,
            status,
        )
        .await;
    health.set_service_status("", status).await;
}

/// After the drain timeout has answered the queued calls UNAVAILABLE, how long their
/// answers get to leave before the server stops regardless.
const DRAIN_ANSWER_GRACE: Duration = Duration::from_secs(2);

/// Resolves when the drain, once begun, has run past its limit: `--drain-timeout`, or a
/// full queue at the measured speed (the served batches' own time per pair, else the
/// warm-up's) times 1.5, at least 10 s. Returns how long it waited and the pairs
/// then still queued.
async fn drain_deadline(
    draining: &mut tokio::sync::watch::Receiver<bool>,
    flag: Option<Duration>,
    ready: &OnceCell<Ready>,
    metrics: &Metrics,
) -> (Duration, usize) {
    if draining.wait_for(|d| *d).await.is_err() {
        // The server ended without a drain: nothing to time.
        std::future::pending::<()>().await;
    }
    let limit = flag.unwrap_or_else(|| {
        let per_pair = metrics
            .seconds_per_pair()
            .or_else(|| ready.get().map(|r| r.warm_seconds_per_pair))
            .unwrap_or(0.0);
        let full_queue = ready
            .get()
            .map_or(0, |r| r.batcher.config().max_queue_pairs) as f64;
        Duration::from_secs_f64((full_queue * per_pair * 1.5).clamp(10.0, 3600.0))
    });
    tracing::info!(seconds = limit.as_secs_f64(), "drain limit");
    tokio::time::sleep(limit).await;
    let queued = ready.get().map_or(0, |r| r.batcher.queued_pairs());
    (limit, queued)
}

/// Serves on `listener` until `shutdown` resolves, then drains: stop accepting,
/// finish what is queued (within the drain timeout), return.
pub async fn serve(
    args: ServeArgs,
    listener: tokio::net::TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), StartError> {
    args.validate()?;
    let ready: Arc<OnceCell<Ready>> = Arc::new(OnceCell::new());
    let metrics = Arc::new(Metrics::default());
    let admission = Admission::new(args.max_queue_pairs);
    let svc = ScoringService::new(
        Arc::clone(&ready),
        Limits {
            max_client_batch: args.max_client_batch,
            max_text_bytes: args.max_text_bytes,
        },
        Arc::clone(&metrics),
        Arc::clone(&admission),
    );
    let incoming = {
        let metrics = Arc::clone(&metrics);
        LimitedIncoming::new(
            listener,
            args.max_connections,
            Arc::new(move || metrics.connection_refused()),
        )
    };
    let open_connections = incoming.gauge();
    let metrics_task = match args.metrics_addr {
        Some(addr) => {
            let l = tokio::net::TcpListener::bind(addr)
                .await
                .map_err(|e| StartError::Config(format!("--metrics-addr {addr}: {e}")))?;
            tracing::info!(%addr, "Prometheus metrics at /metrics");
            let ready = Arc::clone(&ready);
            let m = Arc::clone(&metrics);
            let admission = Arc::clone(&admission);
            let open_connections = open_connections.clone();
            let refresh = Arc::new(move || {
                if let Some(r) = ready.get() {
                    m.set_queue_depth(r.batcher.queued_pairs());
                }
                m.set_admitted_pairs(admission.in_flight());
                m.set_open_connections(open_connections.open());
            });
            Some(tokio::spawn(crate::metrics::serve_http(
                l,
                Arc::clone(&metrics),
                refresh,
            )))
        }
        None => None,
    };
    let (health, health_svc) = tonic_health::server::health_reporter();
    set_health(&health, false).await;
    // Both reflection generations: grpcurl and ghz ask v1, grpcio's reflection client
    // and older tools (Postman, older grpcurl) only v1alpha.
    let reflection_builder = || {
        tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(crossbatch_proto::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
    };
    let reflection = reflection_builder()
        .build_v1()
        .map_err(|e| StartError::Transport(e.to_string()))?;
    let reflection_v1alpha = reflection_builder()
        .build_v1alpha()
        .map_err(|e| StartError::Transport(e.to_string()))?;
    let api_key = args.api_key()?;
    if api_key.is_some() {
        tracing::info!("API key required on Score, Rerank and Info (health and reflection open)");
    }
    // Inside the key check (a caller without a key learns nothing of the load), and
    // before the body is read: a full server answers from the headers.
    let gated = {
        let metrics = Arc::clone(&metrics);
        AdmissionGate::new(
            CrossEncoderServer::new(svc).max_decoding_message_size(args.max_request_bytes()),
            Arc::clone(&admission),
            Arc::new(move || metrics.request_refused("resource_exhausted")),
        )
    };
    let api = tonic::service::interceptor::InterceptedService::new(
        gated,
        crossbatch_proto::key_check::KeyCheck::new(api_key),
    );
    let tls = args.tls()?;

    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    // Turns true when the drain begins; the drain's clock starts there.
    let (draining_tx, mut draining_rx) = tokio::sync::watch::channel(false);
    let shutdown_signal = {
        let health = health.clone();
        let mut stop_rx = stop_rx.clone();
        let ready = Arc::clone(&ready);
        async move {
            tokio::select! {
                _ = shutdown => {}
                _ = stop_rx.changed() => {}
            }
            tracing::info!("shutting down: no new calls; finishing queued work");
            let _ = draining_tx.send(true);
            // What waits for a fuller batch would hold the drain for the batch timeout.
            if let Some(r) = ready.get() {
                r.batcher.flush();
            }
            set_health(&health, false).await;
        }
    };
    let addr = incoming.local_addr();
    let mut builder =
        tonic::transport::Server::builder().max_concurrent_streams(args.max_concurrent_streams);
    if let Some(tls) = tls {
        builder = builder
            .tls_config(tls)
            .map_err(|e| StartError::Config(format!("--tls-cert/--tls-key: {e}")))?;
        tracing::info!(
            client_certificates = args.tls_client_ca.is_some(),
            "TLS on (plaintext refused)"
        );
    }
    let refused = {
        let metrics = Arc::clone(&metrics);
        RejectLayer::new(Arc::new(move |outcome| metrics.request_refused(outcome)))
    };
    let instance = args.instance();
    tracing::info!(instance = %instance, "replica name (crossbatch-instance header, Info, spans)");
    let server = builder
        .layer(header_layer::<tonic::body::Body>(&instance))
        .layer(refused)
        .add_service(health_svc)
        .add_service(reflection)
        .add_service(reflection_v1alpha)
        .add_service(api)
        .serve_with_incoming_shutdown(incoming, shutdown_signal);
    tracing::info!(addr = ?addr, "listening (NOT_SERVING until the model is warm)");

    let args_sample_ms = args.sample_interval_ms;
    let loader = {
        let metrics_for_batcher = Arc::clone(&metrics);
        let args = args.clone();
        let ready = Arc::clone(&ready);
        let health = health.clone();
        tokio::spawn(async move {
            let loaded = tokio::task::spawn_blocking(move || load(&args, metrics_for_batcher))
                .await
                .map_err(|e| StartError::Config(format!("model loader panicked: {e}")))??;
            let (r, thread, device) = loaded;
            let sampler = crate::resources::spawn_sampler(
                Arc::new(device),
                Duration::from_millis(args_sample_ms),
            );
            // Should the batcher stop for good, orchestrators must see it.
            let mut failure = r.batcher.failure();
            let on_failure = health.clone();
            tokio::spawn(async move {
                let why = match failure.wait_for(Option::is_some).await {
                    Ok(why) => why.clone().unwrap_or_default(),
                    Err(_) => return, // the batcher was dropped: a clean exit
                };
                tracing::error!(reason = %why, "the model cannot go on: NOT_SERVING");
                set_health(&on_failure, false).await;
            });
            let _ = ready.set(r);
            set_health(&health, true).await;
            tracing::info!("SERVING");
            Ok::<_, StartError>((thread, sampler))
        })
    };
    let server = tokio::spawn(server);
    let (thread, sampler) = match loader.await {
        Ok(Ok((t, s))) => (Some(t), Some(s)),
        Ok(Err(e)) => {
            let _ = stop_tx.send(true);
            let _ = server.await;
            return Err(e);
        }
        Err(e) => {
            let _ = stop_tx.send(true);
            let _ = server.await;
            return Err(StartError::Config(format!("model loader failed: {e}")));
        }
    };
    let drained = async {
        let result = server
            .await
            .map_err(|e| StartError::Transport(e.to_string()))
            .and_then(|r| r.map_err(|e| StartError::Transport(e.to_string())));
        if let Some(r) = ready.get() {
            r.batcher.shutdown();
        }
        if let Some(t) = thread {
            t.join().await;
        }
        result
    };
    tokio::pin!(drained);
    let result = tokio::select! {
        r = &mut drained => r,
        (waited, queued) = drain_deadline(&mut draining_rx, args.drain_timeout, &ready, &metrics) => {
            tracing::error!(
                seconds = waited.as_secs_f64(),
                queued,
                "drain timed out: answering the calls still queued with UNAVAILABLE"
            );
            if let Some(r) = ready.get() {
                r.batcher.abort("the server is shutting down: its drain timed out");
            }
            // Answered UNAVAILABLE, the waiting calls end and tonic closes; a forward
            // pass that never returns is not waited for.
            let hung = tokio::time::timeout(DRAIN_ANSWER_GRACE, &mut drained).await.is_err();
            Err(StartError::DrainTimeout { waited, queued, hung })
        }
    };
    if let Some(s) = sampler {
        s.abort();
    }
    if let Some(m) = metrics_task {
        m.abort();
    }
    tracing::info!("stopped");
    result
}
