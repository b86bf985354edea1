//! The cross-encoder: config, checked weights, the BERT forward on Burn, and the
//! tokenizer, loaded together from one HuggingFace-format directory.

use std::path::Path;

use crate::backend::{BackendKind, Precision, SelectedDevice};
use crate::bert::Bert;
use crate::config::BertConfig;
use crate::cpu::{CpuBert, CpuDtype};
use crate::params::HostParams;
use crate::scorer::{Encoded, Layout, Limits, ModelError, Scorer};
use crate::tokenize::PairTokenizer;
use crate::weights::{Checkpoint, KeyLayout};

/// What runs a packed forward on the CPU backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum CpuKernels {
    /// The fused kernels of `model::cpu` (gemm matmuls, one attention job per
    /// sequence and head, vectorized GELU and layer norm).
    #[default]
    Fused,
    /// One Burn op per step on burn-flex, as on the GPU (kept to compare against).
    Burn,
}

impl std::fmt::Display for CpuKernels {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Fused => "fused",
            Self::Burn => "burn",
        })
    }
}

/// A loaded cross-encoder, ready to score pairs on one device.
pub struct CrossEncoder {
    bert: Bert,
    /// The CPU backend's fused forward (packed layout); `None` on wgpu.
    fused: Option<CpuBert>,
    cpu_kernels: CpuKernels,
    tokenizer: PairTokenizer,
    layout: Layout,
    key_layout: KeyLayout,
    standin_head: bool,
    device: SelectedDevice,
}

/// `classifier.weight[0][i] = f32(0.05 * sin(0.37 i + 0.11))`, bias 0: the stand-in's
/// synthetic head (../shared/reference/README.md). Used to name the model honestly.
pub fn is_standin_head(weight: &[f32], bias: &[f32]) -> bool {
    bias.iter().all(|&b| b == 0.0)
        && weight
            .iter()
            .enumerate()
            .all(|(i, &w)| w == (0.05 * (0.37 * i as f64 + 0.11).sin()) as f32)
}

impl CrossEncoder {
    /// Loads `config.json`, `model.safetensors` and `tokenizer.json` from `dir`.
    pub fn load(dir: &Path, device: SelectedDevice) -> Result<Self, ModelError> {
        let cfg = BertConfig::from_file(&dir.join("config.json"))?;
        let ck = Checkpoint::load(&dir.join("model.safetensors"), &cfg)?;
        let key_layout = ck.layout;
        let standin_head = match (ck.get("classifier.weight"), ck.get("classifier.bias")) {
            (Some(w), Some(b)) => is_standin_head(&w.data, &b.data),
            _ => false,
        };
        let max_len = max_length(dir, &cfg);
        let tokenizer = PairTokenizer::from_file(&dir.join("tokenizer.json"), max_len)?;
        let host = HostParams::from_checkpoint(&cfg, ck)?;
        let bert = Bert::new(
            cfg.clone(),
            &host,
            &device.device,
            device.activation_parallelism(),
        );
        let dtype = match device.precision {
            Precision::Int8 => CpuDtype::Int8,
            Precision::Bf16 => CpuDtype::Bf16,
            Precision::F32 | Precision::F16 => CpuDtype::F32,
        };
        let fused = (device.backend == BackendKind::Cpu).then(|| CpuBert::new(cfg, host, dtype));
        Ok(Self {
            bert,
            fused,
            cpu_kernels: CpuKernels::default(),
            tokenizer,
            layout: device.preferred_layout(),
            key_layout,
            standin_head,
            device,
        })
    }

    pub fn config(&self) -> &BertConfig {
        self.bert.config()
    }
    pub fn tokenizer(&self) -> &PairTokenizer {
        &self.tokenizer
    }
    /// Truncates inputs to `max_len` tokens (special tokens included): at least 3
    /// (`[CLS] [SEP] [SEP]`), at most what the model was trained for.
    pub fn set_max_length(&mut self, max_len: usize) -> Result<(), ModelError> {
        let limit = max_length_limit(self.config());
        if !(3..=limit).contains(&max_len) {
            return Err(ModelError::Input(format!(
                "max length {max_len} out of range: 3 to {limit} (the model's position table)"
            )));
        }
        self.tokenizer.set_max_len(max_len)
    }
    pub fn device(&self) -> &SelectedDevice {
        &self.device
    }
    pub fn key_layout(&self) -> KeyLayout {
        self.key_layout
    }
    /// True when the classifier head is the offline stand-in's synthetic one.
    pub fn is_standin(&self) -> bool {
        self.standin_head
    }
    pub fn layout(&self) -> Layout {
        self.layout
    }
    pub fn set_layout(&mut self, layout: Layout) {
        self.layout = layout;
    }
    /// What computes a packed forward on the CPU backend (ignored on wgpu).
    pub fn cpu_kernels(&self) -> CpuKernels {
        self.cpu_kernels
    }
    pub fn set_cpu_kernels(&mut self, kernels: CpuKernels) {
        self.cpu_kernels = kernels;
    }
    /// A short name for what computes a forward: `fused`, `burn` (ops) or `wgpu`.
    pub fn engine(&self) -> String {
        match (self.fused_kernels(), &self.fused) {
            (Some(_), _) => CpuKernels::Fused.to_string(),
            (None, Some(_)) => CpuKernels::Burn.to_string(),
            (None, None) => self.device.backend.to_string(),
        }
    }

    /// The fused CPU forward when it is what runs (CPU backend, packed layout, fused
    /// kernels chosen); `None` where Burn's ops run.
    fn fused_kernels(&self) -> Option<&CpuBert> {
        self.fused
            .as_ref()
            .filter(|_| self.layout == Layout::Packed && self.cpu_kernels == CpuKernels::Fused)
    }

    pub fn encode(&self, query: &str, passage: &str) -> Result<Encoded, ModelError> {
        self.tokenizer.encode(query, passage)
    }

    /// Raw logits for already-encoded pairs, one forward pass. A panic inside the
    /// tensor library becomes an error, so one bad batch cannot take a server down.
    pub fn forward(&self, batch: &[&Encoded]) -> Result<Vec<f32>, ModelError> {
        let run = || {
            if batch.is_empty() {
                return Ok(Vec::new());
            }
            self.config().check_batch(batch)?;
            match self.fused_kernels() {
                Some(fused) => Ok(fused.forward(batch)),
                None if self.device.precision.fused_cpu_only() => Err(self.needs_fused()),
                None => self.bert.forward_checked(batch, self.layout),
            }
        };
        match std::panic::catch_unwind(std::panic::AssertUnwindSafe(run)) {
            Ok(r) => r,
            Err(panic) => Err(ModelError::Inference(crate::scorer::panic_message(
                &*panic,
                "panic in the tensor backend",
            ))),
        }
    }

    fn needs_fused(&self) -> ModelError {
        ModelError::Input(format!(
            "{} runs on the fused CPU kernels with the packed layout only (not --cpu-kernels burn or a padded layout)",
            self.device.precision
        ))
    }

    /// Logits and pooled [CLS] vectors (`hidden` values per pair) from the fused CPU
    /// forward, to compare number formats (`crossbatch-server eval`); an error where
    /// those kernels do not run.
    pub fn forward_pooled(&self, batch: &[&Encoded]) -> Result<(Vec<f32>, Vec<f32>), ModelError> {
        let fused = self.fused_kernels().ok_or_else(|| {
            ModelError::Input(
                "pooled vectors come from the fused CPU forward only (--backend cpu)".into(),
            )
        })?;
        if batch.is_empty() {
            return Ok((Vec::new(), Vec::new()));
        }
        self.config().check_batch(batch)?;
        std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| fused.forward_pooled(batch)))
            .map_err(|panic| {
                ModelError::Inference(crate::scorer::panic_message(
                    &*panic,
                    "panic in the CPU forward",
                ))
            })
    }

    /// A forward on the fused CPU kernels that also adds each phase's wall time to
    /// `phases`; `None` where those kernels do not run (wgpu, or another engine chosen).
    pub fn forward_profiled(
        &self,
        batch: &[&Encoded],
        phases: &mut crate::cpu::PhaseTimes,
    ) -> Option<Result<Vec<f32>, ModelError>> {
        let fused = self
            .fused
            .as_ref()
            .filter(|_| self.layout == Layout::Packed && self.cpu_kernels == CpuKernels::Fused)?;
        if batch.is_empty() {
            return Some(Ok(Vec::new()));
        }
        Some(
            self.config()
                .check_batch(batch)
                .map(|()| fused.forward_profiled(batch, phases)),
        )
    }

    /// Tokenizes and scores pairs in chunks of `batch` (raw logits, in order).
    pub fn score_pairs(
        &self,
        pairs: &[(String, String)],
        batch: usize,
    ) -> Result<Vec<f32>, ModelError> {
        let encoded = pairs
            .iter()
            .map(|(q, p)| self.encode(q, p))
            .collect::<Result<Vec<_>, _>>()?;
        let mut out = Vec::with_capacity(pairs.len());
        for chunk in encoded.chunks(batch.max(1)) {
            let refs: Vec<&Encoded> = chunk.iter().collect();
            out.extend(self.forward(&refs)?);
        }
        Ok(out)
    }
}

fn max_length_limit(cfg: &BertConfig) -> usize {
    cfg.max_position_embeddings
}

/// The tokenizer's `model_max_length`, capped by the position table.
fn max_length(dir: &Path, cfg: &BertConfig) -> usize {
    let from_tokenizer = std::fs::read_to_string(dir.join("tokenizer_config.json"))
        .ok()
        .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok())
        .and_then(|v| v.get("model_max_length").and_then(|m| m.as_f64()))
        .filter(|&m| m >= 3.0)
        .map(|m| m as usize);
    from_tokenizer
        .unwrap_or(cfg.max_position_embeddings)
        .min(cfg.max_position_embeddings)
}

impl Scorer for CrossEncoder {
    fn layout(&self) -> Layout {
        self.layout
    }
    fn limits(&self) -> Limits {
        Limits {
            max_input_tokens: self.tokenizer.max_len(),
            max_positions: self.config().max_position_embeddings,
        }
    }
    fn encode(&self, query: &str, passage: &str) -> Result<Encoded, ModelError> {
        CrossEncoder::encode(self, query, passage)
    }
    fn forward(&self, batch: &[&Encoded]) -> Result<Vec<f32>, ModelError> {
        CrossEncoder::forward(self, batch)
    }
}
