//! The model's parameters, defined once: which checkpoint tensor (by its HF name) goes
//! where, in the orientation the forward wants. Generic over where a matrix and a
//! vector live, so the Burn forward (device tensors) and the CPU kernels (host
//! arrays) are built from the same tree rather than from two readings of the file.

use crate::config::BertConfig;
use crate::scorer::ModelError;
use crate::weights::{Checkpoint, HostTensor};

/// A linear layer, `x @ weight + bias`.
pub struct Dense<M, V> {
    /// `[in, out]` (PyTorch's `[out, in]` transposed once at load).
    pub weight: M,
    pub bias: V,
}

pub struct Norm<V> {
    pub gamma: V,
    pub beta: V,
    pub eps: f64,
}

pub struct Layer<M, V> {
    pub query: Dense<M, V>,
    /// Key and value projections fused: `[hidden, 2 * hidden]`, keys first.
    pub key_value: Dense<M, V>,
    pub attn_out: Dense<M, V>,
    pub attn_norm: Norm<V>,
    pub ffn_in: Dense<M, V>,
    pub ffn_out: Dense<M, V>,
    pub ffn_norm: Norm<V>,
}

pub struct Params<M, V> {
    /// `[vocab, hidden]`
    pub word: M,
    /// `[max_positions, hidden]`
    pub position: M,
    /// `[type_vocab, hidden]`
    pub token_type: M,
    pub emb_norm: Norm<V>,
    pub layers: Vec<Layer<M, V>>,
    pub pooler: Dense<M, V>,
    /// `[hidden, 1]`
    pub classifier: Dense<M, V>,
}

/// Parameters on the host: matrices as row-major [`HostTensor`]s, vectors as `Vec`s.
pub type HostParams = Params<HostTensor, Vec<f32>>;

/// Columns side by side: `[r, a] ++ [r, b] -> [r, a + b]`.
pub(crate) fn concat_cols(a: &HostTensor, b: &HostTensor) -> HostTensor {
    let rows = a.shape[0];
    let (ca, cb) = (a.shape[1], b.shape[1]);
    let mut data = Vec::with_capacity(rows * (ca + cb));
    for r in 0..rows {
        data.extend_from_slice(&a.data[r * ca..(r + 1) * ca]);
        data.extend_from_slice(&b.data[r * cb..(r + 1) * cb]);
    }
    HostTensor {
        shape: vec![rows, ca + cb],
        data,
    }
}

impl HostParams {
    /// Takes every tensor out of a checked checkpoint by its HF name.
    pub fn from_checkpoint(cfg: &BertConfig, mut ck: Checkpoint) -> Result<Self, ModelError> {
        let eps = cfg.layer_norm_eps;
        let dense = |ck: &mut Checkpoint, p: &str| -> Result<Dense<HostTensor, Vec<f32>>, _> {
            Ok::<_, ModelError>(Dense {
                weight: ck.take(&format!("{p}.weight"))?.transposed(),
                bias: ck.take(&format!("{p}.bias"))?.data,
            })
        };
        let norm = |ck: &mut Checkpoint, p: &str| -> Result<Norm<Vec<f32>>, ModelError> {
            Ok(Norm {
                gamma: ck.take(&format!("{p}.weight"))?.data,
                beta: ck.take(&format!("{p}.bias"))?.data,
                eps,
            })
        };
        let word = ck.take("embeddings.word_embeddings.weight")?;
        let position = ck.take("embeddings.position_embeddings.weight")?;
        let token_type = ck.take("embeddings.token_type_embeddings.weight")?;
        let emb_norm = norm(&mut ck, "embeddings.LayerNorm")?;
        let mut layers = Vec::with_capacity(cfg.num_hidden_layers);
        for l in 0..cfg.num_hidden_layers {
            let p = format!("encoder.layer.{l}");
            let key = dense(&mut ck, &format!("{p}.attention.self.key"))?;
            let value = dense(&mut ck, &format!("{p}.attention.self.value"))?;
            layers.push(Layer {
                query: dense(&mut ck, &format!("{p}.attention.self.query"))?,
                key_value: Dense {
                    weight: concat_cols(&key.weight, &value.weight),
                    bias: [key.bias, value.bias].concat(),
                },
                attn_out: dense(&mut ck, &format!("{p}.attention.output.dense"))?,
                attn_norm: norm(&mut ck, &format!("{p}.attention.output.LayerNorm"))?,
                ffn_in: dense(&mut ck, &format!("{p}.intermediate.dense"))?,
                ffn_out: dense(&mut ck, &format!("{p}.output.dense"))?,
                ffn_norm: norm(&mut ck, &format!("{p}.output.LayerNorm"))?,
            });
        }
        let pooler = dense(&mut ck, "pooler.dense")?;
        let classifier = dense(&mut ck, "classifier")?;
        Ok(Self {
            word,
            position,
            token_type,
            emb_norm,
            layers,
            pooler,
            classifier,
        })
    }
}

impl<M, V> Params<M, V> {
    /// The same tree with every matrix and vector converted (uploaded to a device,
    /// repacked for a kernel), by reference so the host copy can serve twice.
    pub fn map<M2, V2>(&self, m: impl Fn(&M) -> M2, v: impl Fn(&V) -> V2) -> Params<M2, V2> {
        let dense = |d: &Dense<M, V>| Dense {
            weight: m(&d.weight),
            bias: v(&d.bias),
        };
        let norm = |n: &Norm<V>| Norm {
            gamma: v(&n.gamma),
            beta: v(&n.beta),
            eps: n.eps,
        };
        Params {
            word: m(&self.word),
            position: m(&self.position),
            token_type: m(&self.token_type),
            emb_norm: norm(&self.emb_norm),
            layers: self
                .layers
                .iter()
                .map(|l| Layer {
                    query: dense(&l.query),
                    key_value: dense(&l.key_value),
                    attn_out: dense(&l.attn_out),
                    attn_norm: norm(&l.attn_norm),
                    ffn_in: dense(&l.ffn_in),
                    ffn_out: dense(&l.ffn_out),
                    ffn_norm: norm(&l.ffn_norm),
                })
                .collect(),
            pooler: dense(&self.pooler),
            classifier: dense(&self.classifier),
        }
    }
}
