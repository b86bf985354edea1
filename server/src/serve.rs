//! `crossbatch-server serve`: configuration, start-up (listen first, load and warm the
//! model behind NOT_SERVING health), and graceful shutdown.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use crossbatch_proto::v1::InfoResponse;
use crossbatch_proto::v1::cross_encoder_server::CrossEncoderServer;
use tokio::sync::OnceCell;
use tokio_stream::wrappers::TcpListenerStream;

use crate::batcher::{BatchPolicy, Batcher, BatcherConfig, BatcherThread};
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
    /// auto: wgpu on a hardware GPU, else CPU. wgpu: force wgpu. cpu: burn-flex.
    #[arg(long, env = "CROSSBATCH_BACKEND", value_enum, default_value = "auto")]
    pub backend: BackendChoice,
    /// Float type of the model: f16 halves memory traffic on a GPU (wgpu only).
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
    /// Pairs per forward pass at most.
    #[arg(long, env = "CROSSBATCH_MAX_BATCH", default_value_t = 96)]
    pub max_batch: usize,
    /// deadline policy: how long a batch waits for more pairs after its oldest arrived.
    #[arg(long, env = "CROSSBATCH_BATCH_TIMEOUT_MS", default_value_t = 20)]
    pub batch_timeout_ms: u64,
    /// Computed tokens per forward pass at most (padding included on padded layouts).
    #[arg(long, env = "CROSSBATCH_MAX_BATCH_TOKENS", default_value_t = 16384)]
    pub max_batch_tokens: usize,
    /// deadline: wait up to the timeout for a full batch. eager: run whatever waits as
    /// soon as the model is free.
    #[arg(
        long,
        env = "CROSSBATCH_BATCH_POLICY",
        value_enum,
        default_value = "deadline"
    )]
    pub batch_policy: BatchPolicy,
    /// Group waiting pairs of similar length into a batch (less padding).
    #[arg(long, env = "CROSSBATCH_GROUP_BY_LENGTH", default_value_t = true, action = clap::ArgAction::Set)]
    pub group_by_length: bool,
    /// Pairs that may wait; beyond it calls get RESOURCE_EXHAUSTED at once.
    #[arg(long, env = "CROSSBATCH_MAX_QUEUE_PAIRS", default_value_t = 4096)]
    pub max_queue_pairs: usize,
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
    /// Tokenizer threads [default: half the cores, at least 1].
    #[arg(long, env = "CROSSBATCH_TOKENIZER_WORKERS")]
    pub tokenizer_workers: Option<usize>,
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
}

impl ServeArgs {
    fn validate(&self) -> Result<(), StartError> {
        let bad = |m: String| Err(StartError::Config(m));
        if self.max_batch == 0 {
            return bad("--max-batch must be at least 1".into());
        }
        if self.max_client_batch == 0 {
            return bad("--max-client-batch must be at least 1".into());
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

/// Loads, checks and warms the model, then starts the batcher.
fn load(
    args: &ServeArgs,
    metrics: Arc<Metrics>,
) -> Result<(Ready, BatcherThread, SelectedDevice), StartError> {
    let src = source::resolve(&args.model)?;
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
    let warm = model.warm_up(args.warmup, args.max_batch, args.max_batch_tokens)?;
    tracing::info!(
        mode = ?warm.mode,
        shapes = warm.shapes.len(),
        seconds = format!("{:.1}", warm.elapsed.as_secs_f64()),
        "warmed up"
    );
    let info = InfoResponse {
        model_id: src.id.clone(),
        stand_in: model.is_standin(),
        backend: model.device().backend.to_string(),
        device: model.device().name.clone(),
        max_batch: args.max_batch as u32,
        batch_timeout_ms: args.batch_timeout_ms as u32,
        max_batch_tokens: args.max_batch_tokens as u32,
        max_input_length: max_len as u32,
        max_client_batch: args.max_client_batch as u32,
        batch_policy: args.batch_policy.to_string(),
        max_queue_pairs: args.max_queue_pairs as u32,
        version: env!("CARGO_PKG_VERSION").into(),
        queued_pairs: 0,
        batches_run: 0,
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
        max_batch: args.max_batch,
        timeout: Duration::from_millis(args.batch_timeout_ms),
        max_batch_tokens: args.max_batch_tokens,
        max_queue_pairs: args.max_queue_pairs,
        policy: args.batch_policy,
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
        .build()
        .map_err(|e| StartError::Config(format!("tokenizer pool: {e}")))?;
    Ok((
        Ready {
            model,
            batcher,
            tokenizers: Arc::new(tokenizers),
            info,
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

/// Serves on `listener` until `shutdown` resolves, then drains: stop accepting,
/// finish what is queued, return.
pub async fn serve(
    args: ServeArgs,
    listener: tokio::net::TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), StartError> {
    args.validate()?;
    let ready: Arc<OnceCell<Ready>> = Arc::new(OnceCell::new());
    let metrics = Arc::new(Metrics::default());
    let svc = ScoringService::new(
        Arc::clone(&ready),
        Limits {
            max_client_batch: args.max_client_batch,
            max_text_bytes: args.max_text_bytes,
        },
        Arc::clone(&metrics),
    );
    let metrics_task = match args.metrics_addr {
        Some(addr) => {
            let l = tokio::net::TcpListener::bind(addr)
                .await
                .map_err(|e| StartError::Config(format!("--metrics-addr {addr}: {e}")))?;
            tracing::info!(%addr, "Prometheus metrics at /metrics");
            let ready = Arc::clone(&ready);
            let m = Arc::clone(&metrics);
            let refresh = Arc::new(move || {
                if let Some(r) = ready.get() {
                    m.set_queue_depth(r.batcher.queued_pairs());
                }
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
    // Room for a full call of long texts.
    let max_msg = (args.max_client_batch * 2 * args.max_text_bytes + 4096).min(256 << 20);
    let api = CrossEncoderServer::new(svc).max_decoding_message_size(max_msg);

    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let shutdown_signal = {
        let health = health.clone();
        let mut stop_rx = stop_rx.clone();
        async move {
            tokio::select! {
                _ = shutdown => {}
                _ = stop_rx.changed() => {}
            }
            tracing::info!("shutting down: no new calls; finishing queued work");
            set_health(&health, false).await;
        }
    };
    let addr = listener.local_addr().ok();
    let server = tonic::transport::Server::builder()
        .add_service(health_svc)
        .add_service(reflection)
        .add_service(reflection_v1alpha)
        .add_service(api)
        .serve_with_incoming_shutdown(TcpListenerStream::new(listener), shutdown_signal);
    tracing::info!(addr = ?addr, "listening (NOT_SERVING until the model is warm)");

    let args_sample_ms = args.sample_interval_ms;
    let loader = {
        let args = args.clone();
        let ready = Arc::clone(&ready);
        let health = health.clone();
        tokio::spawn(async move {
            let loaded = tokio::task::spawn_blocking(move || load(&args, metrics))
                .await
                .map_err(|e| StartError::Config(format!("model loader panicked: {e}")))??;
            let (r, thread, device) = loaded;
            let sampler = crate::resources::spawn_sampler(
                Arc::new(device),
                Duration::from_millis(args_sample_ms),
            );
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
    if let Some(s) = sampler {
        s.abort();
    }
    if let Some(m) = metrics_task {
        m.abort();
    }
    tracing::info!("stopped");
    result
}
