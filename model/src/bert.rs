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
use crate::params::{self, HostParams};
use crate::scorer::{Encoded, Layout, ModelError, padded_len};
use crate::weights::HostTensor;

type Dense = params::Dense<Tensor<2>, Tensor<1>>;
type Norm = params::Norm<Tensor<1>>;
type EncoderLayer = params::Layer<Tensor<2>, Tensor<1>>;

fn linear_fwd<const D: usize>(d: &Dense, x: Tensor<D>) -> Tensor<D> {
    linear(x, d.weight.clone(), Some(d.bias.clone()))
}

fn norm_fwd<const D: usize>(n: &Norm, x: Tensor<D>) -> Tensor<D> {
    layer_norm(x, n.gamma.clone(), Some(n.beta.clone()), n.eps)
}

pub struct Bert {
    cfg: BertConfig,
    device: Device,
    p: params::Params<Tensor<2>, Tensor<1>>,
    /// Row blocks the GELU is split into (CPU backend only; see `gelu`).
    activation_parallelism: usize,
}

fn upload(t: &HostTensor, device: &Device) -> Tensor<2> {
    let shape = [t.shape[0], t.shape[1]];
    Tensor::from_data(TensorData::new(t.data.clone(), shape), device)
}

fn upload1(t: &[f32], device: &Device) -> Tensor<1> {
    Tensor::from_data(TensorData::new(t.to_vec(), [t.len()]), device)
}

impl Bert {
    /// Uploads the parameters to `device`.
    pub fn new(
        cfg: BertConfig,
        host: &HostParams,
        device: &Device,
        activation_parallelism: usize,
    ) -> Self {
        Self {
            cfg,
            device: device.clone(),
            p: host.map(|m| upload(m, device), |v| upload1(v, device)),
            activation_parallelism: activation_parallelism.max(1),
        }
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
        self.cfg.check_batch(batch)?;
        self.forward_checked(batch, layout)
    }

    /// [`forward`](Self::forward) for a non-empty batch its caller has already checked.
    pub(crate) fn forward_checked(
        &self,
        batch: &[&Encoded],
        layout: Layout,
    ) -> Result<Vec<f32>, ModelError> {
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
        let x = self.p.word.clone().select(0, self.int_tensor(ids))
            + self
                .p
                .position
                .clone()
                .select(0, self.int_tensor(positions))
            + self.p.token_type.clone().select(0, self.int_tensor(types));
        norm_fwd(&self.p.emb_norm, x)
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
        let n_layers = self.p.layers.len();
        for (li, layer) in self.p.layers.iter().enumerate() {
            let last = li + 1 == n_layers;
            let kv = linear_fwd(&layer.key_value, x.clone());
            // Residual rows: every token, or only [CLS] in the last layer.
            let residual = if last {
                let cls: Vec<i32> = offsets.iter().map(|&o| o as i32).collect();
                x.select(0, self.int_tensor(cls))
            } else {
                x
            };
            let q = linear_fwd(&layer.query, residual.clone());
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
        let n_layers = self.p.layers.len();
        for (li, layer) in self.p.layers.iter().enumerate() {
            let last = li + 1 == n_layers;
            let kv = linear_fwd(&layer.key_value, x.clone()).reshape([b, l, 2 * h]);
            let split = |t: Tensor<3>| t.reshape([b, l, nh, dh]).swap_dims(1, 2);
            let k = split(kv.clone().narrow(2, 0, h));
            let v = split(kv.narrow(2, h, h));
            let (residual, lq) = if last {
                (x.reshape([b, l, h]).narrow(1, 0, 1).reshape([b, h]), 1)
            } else {
                (x, l)
            };
            let q = linear_fwd(&layer.query, residual.clone())
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
        let a = norm_fwd(
            &layer.attn_norm,
            linear_fwd(&layer.attn_out, ctx) + residual,
        );
        let f = linear_fwd(
            &layer.ffn_out,
            self.gelu(linear_fwd(&layer.ffn_in, a.clone())),
        );
        norm_fwd(&layer.ffn_norm, f + a)
    }

    /// `[batch, hidden]` [CLS] states → `[batch, 1]` logits.
    fn head(&self, cls: Tensor<2>) -> Tensor<2> {
        let pooled = linear_fwd(&self.p.pooler, cls).tanh();
        linear_fwd(&self.p.classifier, pooled)
    }
}
