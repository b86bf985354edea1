//! Reading a HuggingFace BERT checkpoint (`model.safetensors`) into host arrays,
//! checking every tensor against the config: nothing is left random, nothing extra
//! is ignored silently.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use safetensors::{Dtype, SafeTensors};

use crate::config::BertConfig;
use crate::scorer::ModelError;

/// A host-side f32 tensor, row-major.
#[derive(Debug, Clone)]
pub struct HostTensor {
    pub shape: Vec<usize>,
    pub data: Vec<f32>,
}

impl HostTensor {
    /// `[out, in]` (PyTorch `Linear`) to `[in, out]` (what `x @ W` wants).
    pub fn transposed(&self) -> HostTensor {
        let (rows, cols) = (self.shape[0], self.shape[1]);
        let mut data = vec![0.0; rows * cols];
        for r in 0..rows {
            for c in 0..cols {
                data[c * rows + r] = self.data[r * cols + c];
            }
        }
        HostTensor {
            shape: vec![cols, rows],
            data,
        }
    }
}

/// Which naming the checkpoint uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyLayout {
    /// `bert.embeddings.…` + `classifier.*` (BertForSequenceClassification, the hub model).
    Prefixed,
    /// `embeddings.…` + `classifier.*` (bare BertModel keys).
    Bare,
}

/// Every tensor of the checkpoint, by its layout-independent name (`embeddings.…`,
/// `encoder.layer.N.…`, `pooler.…`, `classifier.…`).
#[derive(Debug)]
pub struct Checkpoint {
    pub layout: KeyLayout,
    tensors: BTreeMap<String, HostTensor>,
}

/// Buffers that HF writes next to weights; they carry no learned values.
fn is_buffer(name: &str) -> bool {
    name.ends_with("embeddings.position_ids")
}

/// The names and shapes a BertForSequenceClassification with this config must have.
pub fn expected_tensors(cfg: &BertConfig) -> Vec<(String, Vec<usize>)> {
    let h = cfg.hidden_size;
    let i = cfg.intermediate_size;
    let mut out = vec![
        (
            "embeddings.word_embeddings.weight".to_string(),
            vec![cfg.vocab_size, h],
        ),
        (
            "embeddings.position_embeddings.weight".into(),
            vec![cfg.max_position_embeddings, h],
        ),
        (
            "embeddings.token_type_embeddings.weight".into(),
            vec![cfg.type_vocab_size, h],
        ),
        ("embeddings.LayerNorm.weight".into(), vec![h]),
        ("embeddings.LayerNorm.bias".into(), vec![h]),
    ];
    for l in 0..cfg.num_hidden_layers {
        let p = format!("encoder.layer.{l}");
        for (name, shape) in [
            ("attention.self.query.weight", vec![h, h]),
            ("attention.self.query.bias", vec![h]),
            ("attention.self.key.weight", vec![h, h]),
            ("attention.self.key.bias", vec![h]),
            ("attention.self.value.weight", vec![h, h]),
            ("attention.self.value.bias", vec![h]),
            ("attention.output.dense.weight", vec![h, h]),
            ("attention.output.dense.bias", vec![h]),
            ("attention.output.LayerNorm.weight", vec![h]),
            ("attention.output.LayerNorm.bias", vec![h]),
            ("intermediate.dense.weight", vec![i, h]),
            ("intermediate.dense.bias", vec![i]),
            ("output.dense.weight", vec![h, i]),
            ("output.dense.bias", vec![h]),
            ("output.LayerNorm.weight", vec![h]),
            ("output.LayerNorm.bias", vec![h]),
        ] {
            out.push((format!("{p}.{name}"), shape));
        }
    }
    out.push(("pooler.dense.weight".into(), vec![h, h]));
    out.push(("pooler.dense.bias".into(), vec![h]));
    out.push(("classifier.weight".into(), vec![cfg.labels(), h]));
    out.push(("classifier.bias".into(), vec![cfg.labels()]));
    out
}

impl Checkpoint {
    /// Reads and checks `model.safetensors` against `cfg`.
    pub fn load(path: &Path, cfg: &BertConfig) -> Result<Self, ModelError> {
        let bytes = std::fs::read(path).map_err(|source| ModelError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        Self::from_bytes(&bytes, cfg).map_err(|e| match e {
            ModelError::Checkpoint { message, .. } => ModelError::Checkpoint {
                path: path.to_path_buf(),
                message,
            },
            other => other,
        })
    }

    pub fn from_bytes(bytes: &[u8], cfg: &BertConfig) -> Result<Self, ModelError> {
        let err = |message: String| ModelError::Checkpoint {
            path: Default::default(),
            message,
        };
        let st = SafeTensors::deserialize(bytes)
            .map_err(|e| err(format!("not a valid safetensors file: {e}")))?;
        let names: BTreeSet<&str> = st.names().into_iter().collect();
        let layout = if names.iter().any(|n| n.starts_with("bert.")) {
            KeyLayout::Prefixed
        } else {
            KeyLayout::Bare
        };
        let file_name = |name: &str| -> String {
            match layout {
                KeyLayout::Prefixed if !name.starts_with("classifier.") => format!("bert.{name}"),
                _ => name.to_string(),
            }
        };

        let mut tensors = BTreeMap::new();
        let mut used = BTreeSet::new();
        for (name, shape) in expected_tensors(cfg) {
            let key = file_name(&name);
            let view = st
                .tensor(&key)
                .map_err(|_| err(format!("missing tensor `{key}` (expected shape {shape:?})")))?;
            if view.shape() != shape.as_slice() {
                return Err(err(format!(
                    "tensor `{key}` has shape {:?}, expected {shape:?}",
                    view.shape()
                )));
            }
            let data = match view.dtype() {
                Dtype::F32 => view
                    .data()
                    .chunks_exact(4)
                    .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                    .collect::<Vec<f32>>(),
                other => {
                    return Err(err(format!(
                        "tensor `{key}` has dtype {other:?}; only F32 checkpoints are supported"
                    )));
                }
            };
            if let Some(bad) = data.iter().position(|v| !v.is_finite()) {
                return Err(err(format!(
                    "tensor `{key}` holds a non-finite value at element {bad}"
                )));
            }
            used.insert(key);
            tensors.insert(name, HostTensor { shape, data });
        }
        let extra: Vec<&str> = names
            .iter()
            .copied()
            .filter(|n| !used.contains(*n) && !is_buffer(n))
            .collect();
        if !extra.is_empty() {
            return Err(err(format!(
                "unexpected tensor(s) not used by the model: {}",
                extra.join(", ")
            )));
        }
        Ok(Self { layout, tensors })
    }

    /// Takes a tensor out by its layout-independent name.
    pub fn take(&mut self, name: &str) -> Result<HostTensor, ModelError> {
        self.tensors
            .remove(name)
            .ok_or_else(|| ModelError::Internal(format!("tensor `{name}` taken twice")))
    }

    /// Borrow a tensor by its layout-independent name.
    pub fn get(&self, name: &str) -> Option<&HostTensor> {
        self.tensors.get(name)
    }
}
