//! BertForSequenceClassification on Burn tensors: embeddings (word + absolute
//! position + token type), post-norm encoder layers with erf GELU, the tanh pooler
//! over [CLS] and the one-logit classifier.
//!
//! Two ways to lay a batch out, same function computed:
//! - `Packed`: every real token of every sequence in one `[tokens, hidden]` matrix,
//!   attention run per sequence. No padding anywhere; best on the CPU backend,
//!   where an extra op costs microseconds and a padded FLOP costs the same as a real one.
//! - `Padded`: `[batch, max_len, hidden]` with a key mask; few, large kernels, which is
//!   what a GPU wants.
//!
//! In both, the last layer computes keys and values for every token but queries,
//! attention output and FFN only for the [CLS] rows: nothing else reaches the pooler.

use burn::tensor::activation::gelu;
use burn::tensor::module::{attention, layer_norm, linear};
use burn::tensor::ops::AttentionModuleOptions;
use burn::tensor::{Bool, Device, Int, Tensor, TensorData};

use crate::config::BertConfig;
use crate::scorer::{Encoded, Layout, ModelError, padded_len};
use crate::weights::{Checkpoint, HostTensor};

struct Dense {
    /// `[in, out]`
    weight: Tensor<2>,
    bias: Tensor<1>,
}

impl Dense {
    fn forward<const D: usize>(&self, x: Tensor<D>) -> Tensor<D> {
        linear(x, self.weight.clone(), Some(self.bias.clone()))
    }
}

struct Norm {
    gamma: Tensor<1>,
    beta: Tensor<1>,
    eps: f64,
}

impl Norm {
    fn forward<const D: usize>(&self, x: Tensor<D>) -> Tensor<D> {
        layer_norm(x, self.gamma.clone(), Some(self.beta.clone()), self.eps)
    }
}

struct EncoderLayer {
    query: Dense,
    /// Key and value projections fused: `[hidden, 2 * hidden]`.
    key_value: Dense,
    attn_out: Dense,
    attn_norm: Norm,
    ffn_in: Dense,
    ffn_out: Dense,
    ffn_norm: Norm,
}

pub struct Bert {
    cfg: BertConfig,
    device: Device,
    word: Tensor<2>,
    position: Tensor<2>,
    token_type: Tensor<2>,
    emb_norm: Norm,
    layers: Vec<EncoderLayer>,
    pooler: Dense,
    classifier: Dense,
    /// Row blocks the GELU is split into (CPU backend only; see `gelu`).
    activation_parallelism: usize,
}

fn upload(t: HostTensor, device: &Device) -> Tensor<2> {
    let shape = [t.shape[0], t.shape[1]];
    Tensor::from_data(TensorData::new(t.data, shape), device)
}

fn upload1(t: HostTensor, device: &Device) -> Tensor<1> {
    let n = t.data.len();
    Tensor::from_data(TensorData::new(t.data, [n]), device)
}

/// Columns side by side: `[r, a] ++ [r, b] -> [r, a + b]`.
fn concat_cols(a: &HostTensor, b: &HostTensor) -> HostTensor {
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

impl Bert {
    /// Builds the model on `device` from a checked checkpoint.
    pub fn new(
        cfg: BertConfig,
        mut ck: Checkpoint,
        device: &Device,
        activation_parallelism: usize,
    ) -> Result<Self, ModelError> {
        let eps = cfg.layer_norm_eps;
        let dense = |ck: &mut Checkpoint, p: &str| -> Result<Dense, ModelError> {
            let w = ck.take(&format!("{p}.weight"))?.transposed();
            let b = ck.take(&format!("{p}.bias"))?;
            Ok(Dense {
                weight: upload(w, device),
                bias: upload1(b, device),
            })
        };
        let norm = |ck: &mut Checkpoint, p: &str| -> Result<Norm, ModelError> {
            Ok(Norm {
                gamma: upload1(ck.take(&format!("{p}.weight"))?, device),
                beta: upload1(ck.take(&format!("{p}.bias"))?, device),
                eps,
            })
        };
        let word = upload(ck.take("embeddings.word_embeddings.weight")?, device);
        let position = upload(ck.take("embeddings.position_embeddings.weight")?, device);
        let token_type = upload(ck.take("embeddings.token_type_embeddings.weight")?, device);
        let emb_norm = norm(&mut ck, "embeddings.LayerNorm")?;
        let mut layers = Vec::with_capacity(cfg.num_hidden_layers);
        for l in 0..cfg.num_hidden_layers {
            let p = format!("encoder.layer.{l}");
            let k_w = ck
                .take(&format!("{p}.attention.self.key.weight"))?
                .transposed();
            let v_w = ck
                .take(&format!("{p}.attention.self.value.weight"))?
                .transposed();
            let k_b = ck.take(&format!("{p}.attention.self.key.bias"))?;
            let v_b = ck.take(&format!("{p}.attention.self.value.bias"))?;
            let kv_b = HostTensor {
                shape: vec![k_b.data.len() + v_b.data.len()],
                data: [k_b.data, v_b.data].concat(),
            };
            layers.push(EncoderLayer {
                query: dense(&mut ck, &format!("{p}.attention.self.query"))?,
                key_value: Dense {
                    weight: upload(concat_cols(&k_w, &v_w), device),
                    bias: upload1(kv_b, device),
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
            cfg,
            device: device.clone(),
            word,
            position,
            token_type,
            emb_norm,
            layers,
            pooler,
            classifier,
            activation_parallelism: activation_parallelism.max(1),
        })
    }

    pub fn config(&self) -> &BertConfig {
        &self.cfg
    }

    pub fn device(&self) -> &Device {
        &self.device
    }

    /// Raw logits, one per sequence, in order. Sequences must be non-empty and no
    /// longer than `max_position_embeddings` (the tokenizer guarantees both).
    pub fn forward(&self, batch: &[&Encoded], layout: Layout) -> Result<Vec<f32>, ModelError> {
        if batch.is_empty() {
            return Ok(Vec::new());
        }
        for (i, e) in batch.iter().enumerate() {
            if e.is_empty()
                || e.len() > self.cfg.max_position_embeddings
                || e.ids.len() != e.type_ids.len()
            {
                return Err(ModelError::Input(format!(
                    "sequence {i} has {} ids / {} type ids (allowed 1..={})",
                    e.ids.len(),
                    e.type_ids.len(),
                    self.cfg.max_position_embeddings
                )));
            }
            if let Some(&bad) = e.ids.iter().find(|&&t| t as usize >= self.cfg.vocab_size) {
                return Err(ModelError::Input(format!(
                    "sequence {i} has token id {bad} outside the vocabulary ({})",
                    self.cfg.vocab_size
                )));
            }
            if let Some(&bad) = e
                .type_ids
                .iter()
                .find(|&&t| t as usize >= self.cfg.type_vocab_size)
            {
                return Err(ModelError::Input(format!(
                    "sequence {i} has token type {bad} (type vocabulary {})",
                    self.cfg.type_vocab_size
                )));
            }
        }
        let logits = match layout {
            Layout::Packed => self.forward_packed(batch),
            Layout::Padded => self.forward_padded(batch),
        };
        let data = logits
            .try_into_data()
            .map_err(|e| ModelError::Inference(format!("reading logits back: {e:?}")))?;
        // f16 on the device: widen on the host (exact), so callers always see f32.
        data.try_into_vec_as::<f32>()
            .map_err(|e| ModelError::Inference(format!("logits have an unexpected type: {e:?}")))
    }

    fn int_tensor(&self, v: Vec<i32>) -> Tensor<1, Int> {
        let n = v.len();
        Tensor::from_data(TensorData::new(v, [n]), &self.device)
    }

    /// Sum of the three embeddings for flat index lists, normalised: `[n, hidden]`.
    fn embed(&self, ids: Vec<i32>, positions: Vec<i32>, types: Vec<i32>) -> Tensor<2> {
        let x = self.word.clone().select(0, self.int_tensor(ids))
            + self.position.clone().select(0, self.int_tensor(positions))
            + self.token_type.clone().select(0, self.int_tensor(types));
        self.emb_norm.forward(x)
    }

    /// `[rows, hidden] -> [1, heads, rows, head_dim]`
    fn heads(&self, x: Tensor<2>) -> Tensor<4> {
        let rows = x.dims()[0];
        x.reshape([1, rows, self.cfg.num_attention_heads, self.cfg.head_dim()])
            .swap_dims(1, 2)
    }

    fn head_out(&self, ctx: Tensor<4>) -> Tensor<2> {
        let [_, _, rows, _] = ctx.dims();
        ctx.swap_dims(1, 2).reshape([rows, self.cfg.hidden_size])
    }

    fn forward_packed(&self, batch: &[&Encoded]) -> Tensor<2> {
        let total: usize = batch.iter().map(|e| e.len()).sum();
        let mut ids = Vec::with_capacity(total);
        let mut types = Vec::with_capacity(total);
        let mut positions = Vec::with_capacity(total);
        let mut offsets = Vec::with_capacity(batch.len());
        for e in batch {
            offsets.push(ids.len());
            ids.extend(e.ids.iter().map(|&t| t as i32));
            types.extend(e.type_ids.iter().map(|&t| t as i32));
            positions.extend(0..e.len() as i32);
        }
        let h = self.cfg.hidden_size;
        let mut x = self.embed(ids, positions, types);
        let n_layers = self.layers.len();
        for (li, layer) in self.layers.iter().enumerate() {
            let last = li + 1 == n_layers;
            let kv = layer.key_value.forward(x.clone());
            // Residual rows: every token, or only [CLS] in the last layer.
            let residual = if last {
                let cls: Vec<i32> = offsets.iter().map(|&o| o as i32).collect();
                x.select(0, self.int_tensor(cls))
            } else {
                x
            };
            let q = layer.query.forward(residual.clone());
            let mut ctxs = Vec::with_capacity(batch.len());
            for (b, e) in batch.iter().enumerate() {
                let (off, len) = (offsets[b], e.len());
                let qb = if last {
                    q.clone().narrow(0, b, 1)
                } else {
                    q.clone().narrow(0, off, len)
                };
                let kvb = kv.clone().narrow(0, off, len);
                let kb = kvb.clone().narrow(1, 0, h);
                let vb = kvb.narrow(1, h, h);
                let ctx = attention(
                    self.heads(qb),
                    self.heads(kb),
                    self.heads(vb),
                    None,
                    None,
                    AttentionModuleOptions::default(),
                );
                ctxs.push(self.head_out(ctx));
            }
            let ctx = Tensor::cat(ctxs, 0);
            x = self.block_tail(layer, ctx, residual);
        }
        self.head(x)
    }

    fn forward_padded(&self, batch: &[&Encoded]) -> Tensor<2> {
        let b = batch.len();
        let longest = batch.iter().map(|e| e.len()).max().unwrap_or(1);
        let l = padded_len(longest, self.cfg.max_position_embeddings);
        let (h, nh, dh) = (
            self.cfg.hidden_size,
            self.cfg.num_attention_heads,
            self.cfg.head_dim(),
        );
        let mut ids = vec![0i32; b * l];
        let mut types = vec![0i32; b * l];
        let mut pad = vec![true; b * l];
        let positions: Vec<i32> = (0..b).flat_map(|_| 0..l as i32).collect();
        for (i, e) in batch.iter().enumerate() {
            for (j, (&t, &ty)) in e.ids.iter().zip(&e.type_ids).enumerate() {
                ids[i * l + j] = t as i32;
                types[i * l + j] = ty as i32;
                pad[i * l + j] = false;
            }
        }
        let key_pad: Tensor<2, Bool> =
            Tensor::from_data(TensorData::new(pad, [b, l]), &self.device);
        let key_pad: Tensor<4, Bool> = key_pad.reshape([b, 1, 1, l]);
        let mut x = self.embed(ids, positions, types); // [b*l, h]
        let n_layers = self.layers.len();
        for (li, layer) in self.layers.iter().enumerate() {
            let last = li + 1 == n_layers;
            let kv = layer.key_value.forward(x.clone()).reshape([b, l, 2 * h]);
            let split = |t: Tensor<3>| t.reshape([b, l, nh, dh]).swap_dims(1, 2);
            let k = split(kv.clone().narrow(2, 0, h));
            let v = split(kv.narrow(2, h, h));
            let (residual, lq) = if last {
                (x.reshape([b, l, h]).narrow(1, 0, 1).reshape([b, h]), 1)
            } else {
                (x, l)
            };
            let q = layer
                .query
                .forward(residual.clone())
                .reshape([b, lq, nh, dh])
                .swap_dims(1, 2);
            let mask = key_pad.clone().expand([b, nh, lq, l]);
            let ctx = attention(q, k, v, Some(mask), None, AttentionModuleOptions::default());
            let ctx = ctx.swap_dims(1, 2).reshape([b * lq, h]);
            x = self.block_tail(layer, ctx, residual);
        }
        self.head(x)
    }

    /// Erf GELU. burn-flex evaluates it with scalar libm `erff` on one thread, which
    /// made it a fifth of the CPU forward; row blocks on the rayon pool cut that by
    /// the core count. On wgpu it is one fused kernel either way.
    fn gelu(&self, x: Tensor<2>) -> Tensor<2> {
        let rows = x.dims()[0];
        let parts = self.activation_parallelism.min(rows / 32);
        if parts <= 1 {
            return gelu(x);
        }
        let chunk = rows.div_ceil(parts);
        let pieces: Vec<Tensor<2>> = (0..parts)
            .map(|i| i * chunk)
            .take_while(|&start| start < rows)
            .map(|start| x.clone().narrow(0, start, chunk.min(rows - start)))
            .collect();
        use rayon::prelude::*;
        Tensor::cat(pieces.into_par_iter().map(gelu).collect(), 0)
    }

    /// Attention output projection, residual + norm, FFN, residual + norm.
    fn block_tail(&self, layer: &EncoderLayer, ctx: Tensor<2>, residual: Tensor<2>) -> Tensor<2> {
        let a = layer
            .attn_norm
            .forward(layer.attn_out.forward(ctx) + residual);
        let f = layer
            .ffn_out
            .forward(self.gelu(layer.ffn_in.forward(a.clone())));
        layer.ffn_norm.forward(f + a)
    }

    /// `[batch, hidden]` [CLS] states → `[batch, 1]` logits.
    fn head(&self, cls: Tensor<2>) -> Tensor<2> {
        let pooled = self.pooler.forward(cls).tanh();
        self.classifier.forward(pooled)
    }
}
