//! `config.json` of a HuggingFace BERT checkpoint: the hyperparameters the model is built from.

use std::path::Path;

use serde::Deserialize;

use crate::scorer::ModelError;

/// The subset of a HuggingFace `BertConfig` that the forward pass depends on.
#[derive(Debug, Clone, Deserialize)]
pub struct BertConfig {
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub intermediate_size: usize,
    #[serde(default = "default_act")]
    pub hidden_act: String,
    pub max_position_embeddings: usize,
    #[serde(default = "default_type_vocab")]
    pub type_vocab_size: usize,
    #[serde(default = "default_eps")]
    pub layer_norm_eps: f64,
    #[serde(default = "default_position_type")]
    pub position_embedding_type: String,
    #[serde(default)]
    pub id2label: Option<std::collections::BTreeMap<String, String>>,
    #[serde(default)]
    pub num_labels: Option<usize>,
}

fn default_act() -> String {
    "gelu".into()
}
fn default_type_vocab() -> usize {
    2
}
fn default_eps() -> f64 {
    1e-12
}
fn default_position_type() -> String {
    "absolute".into()
}

impl BertConfig {
    pub fn from_file(path: &Path) -> Result<Self, ModelError> {
        let text = std::fs::read_to_string(path).map_err(|source| ModelError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        let cfg: BertConfig = serde_json::from_str(&text).map_err(|e| ModelError::Config {
            path: path.to_path_buf(),
            message: e.to_string(),
        })?;
        cfg.validate().map_err(|message| ModelError::Config {
            path: path.to_path_buf(),
            message,
        })?;
        Ok(cfg)
    }

    /// Labels of the classification head (HF derives it from `id2label`).
    pub fn labels(&self) -> usize {
        self.id2label
            .as_ref()
            .map(|m| m.len())
            .or(self.num_labels)
            .unwrap_or(2)
    }

    /// Checks that every sequence of a batch can go through the model: non-empty, no
    /// longer than the position table, every id inside its vocabulary (the tokenizer
    /// guarantees all of it; a caller with its own ids may not).
    pub fn check_batch(&self, batch: &[&crate::scorer::Encoded]) -> Result<(), ModelError> {
        for (i, e) in batch.iter().enumerate() {
            if e.is_empty()
                || e.len() > self.max_position_embeddings
                || e.ids.len() != e.type_ids.len()
            {
                return Err(ModelError::Input(format!(
                    "sequence {i} has {} ids / {} type ids (allowed 1..={})",
                    e.ids.len(),
                    e.type_ids.len(),
                    self.max_position_embeddings
                )));
            }
            if let Some(&bad) = e.ids.iter().find(|&&t| t as usize >= self.vocab_size) {
                return Err(ModelError::Input(format!(
                    "sequence {i} has token id {bad} outside the vocabulary ({})",
                    self.vocab_size
                )));
            }
            if let Some(&bad) = e
                .type_ids
                .iter()
                .find(|&&t| t as usize >= self.type_vocab_size)
            {
                return Err(ModelError::Input(format!(
                    "sequence {i} has token type {bad} (type vocabulary {})",
                    self.type_vocab_size
                )));
            }
        }
        Ok(())
    }

    pub fn head_dim(&self) -> usize {
        self.hidden_size / self.num_attention_heads
    }

    fn validate(&self) -> Result<(), String> {
        if self.hidden_act != "gelu" {
            return Err(format!(
                "hidden_act {:?} is not supported (only the exact erf \"gelu\")",
                self.hidden_act
            ));
        }
        if self.position_embedding_type != "absolute" {
            return Err(format!(
                "position_embedding_type {:?} is not supported (only \"absolute\")",
                self.position_embedding_type
            ));
        }
        if self.num_attention_heads == 0
            || !self.hidden_size.is_multiple_of(self.num_attention_heads)
        {
            return Err(format!(
                "hidden_size {} is not divisible by num_attention_heads {}",
                self.hidden_size, self.num_attention_heads
            ));
        }
        if self.labels() != 1 {
            return Err(format!(
                "a cross-encoder has one output label; this config has {}",
                self.labels()
            ));
        }
        if self.num_hidden_layers == 0 || self.max_position_embeddings == 0 {
            return Err("num_hidden_layers and max_position_embeddings must be positive".into());
        }
        Ok(())
    }

    /// Dense-layer and attention FLOPs of one full forward over a sequence of
    /// `len` tokens (multiply-add = 2 FLOPs), the figure the bench reports against.
    pub fn flops_per_sequence(&self, len: usize) -> f64 {
        let h = self.hidden_size as f64;
        let i = self.intermediate_size as f64;
        let l = len as f64;
        // Q, K, V, output projections + two FFN matmuls, per token.
        let dense = 2.0 * l * (4.0 * h * h + 2.0 * h * i);
        // QK^T and attention·V.
        let attn = 2.0 * 2.0 * l * l * h;
        self.num_hidden_layers as f64 * (dense + attn) + 2.0 * h * h + 2.0 * h
    }
}
