//! The CPU forward: the packed layout run on host arrays with a few fused kernels
//! instead of one Burn op per step. Burn's CPU backend (burn-flex) spends about half
//! of a forward outside its matmuls (README, "The model alone"): a fresh
//! buffer per op, scalar libm `exp`/`erf`, per-sequence attention as a dozen small ops.
//! Here the same parameters ([`crate::params`]) feed
//! - the `gemm` crate's matmuls (burn-flex's own), with bias and residual added in the
//!   pass that reads the product next (GELU, layer norm) rather than a pass of their own;
//! - one fused attention job per (sequence, head) ([`attention`]);
//! - vectorized GELU and layer norm over row blocks on the rayon pool ([`kernels`]);
//! - with `--dtype int8` or `bf16`, the linear layers' products in that format instead
//!   ([`linear`], [`qgemm`], [`bgemm`]); everything else stays f32.
//!
//! The wgpu path keeps Burn's ops ([`crate::bert`]); both compute the same function,
//! which the parity tests check against the reference on each.

mod attention;
pub mod bgemm;
#[cfg(target_arch = "x86_64")]
mod bgemm_x86;
mod gemm;
mod kernels;
mod linear;
mod math;
mod peak;
pub mod qgemm;
#[cfg(target_arch = "x86_64")]
mod qgemm_x86;
pub mod simd;
mod tiling;

use rayon::prelude::*;

use crate::config::BertConfig;
use crate::params::{Dense, HostParams, Norm, concat_cols};
use crate::scorer::Encoded;
use crate::weights::HostTensor;
use gemm::View;
pub use linear::CpuDtype;
use linear::{LayerLowp, LayerTensors, LowpRows, Product, Weights, dense, fit, project};
use std::sync::{Mutex, MutexGuard, TryLockError};
use std::time::{Duration, Instant};

/// Repeatable values in `[-half_range, half_range)` for the kernels' tests (an LCG).
#[cfg(test)]
pub(crate) fn test_values(n: usize, seed: u32, half_range: f32) -> Vec<f32> {
    let mut s = seed;
    (0..n)
        .map(|_| {
            s = s.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
            (s >> 8) as f32 / (1u32 << 24) as f32 * 2.0 * half_range - half_range
        })
        .collect()
}

/// Rows per parallel block of the element-wise kernels: big enough to amortize a
/// rayon task, small enough to spread a batch-1 forward over two cores.
const ROW_BLOCK: usize = 16;

/// Wall time per phase of the forward, summed over the calls that recorded into it, in
/// the order phases first ran.
#[derive(Debug, Clone, Default)]
pub struct PhaseTimes(pub Vec<(&'static str, Duration)>);

impl PhaseTimes {
    fn add(&mut self, name: &'static str, d: Duration) {
        match self.0.iter_mut().find(|(n, _)| *n == name) {
            Some((_, total)) => *total += d,
            None => self.0.push((name, d)),
        }
    }

    pub fn total(&self) -> Duration {
        self.0.iter().map(|(_, d)| *d).sum()
    }
}

/// Times consecutive phases when it has somewhere to put them; free otherwise.
struct Clock<'a> {
    sink: Option<&'a mut PhaseTimes>,
    last: Instant,
}

impl<'a> Clock<'a> {
    fn off() -> Self {
        Self {
            sink: None,
            last: Instant::now(),
        }
    }
    fn on(sink: &'a mut PhaseTimes) -> Self {
        Self {
            sink: Some(sink),
            last: Instant::now(),
        }
    }
    /// Charges the time since the previous lap to `phase`.
    fn lap(&mut self, phase: &'static str) {
        if let Some(sink) = self.sink.as_deref_mut() {
            let now = Instant::now();
            sink.add(phase, now - self.last);
            self.last = now;
        }
    }
}

/// Activations of one forward, reused from layer to layer.
#[derive(Default)]
struct Buffers {
    qkv: Vec<f32>,
    ctx: Vec<f32>,
    /// After attention, output projection and norm.
    a: Vec<f32>,
    /// The FFN's intermediate activations.
    ffn: Vec<f32>,
    /// The layer's output, swapped in as the next layer's input.
    next: Vec<f32>,
    /// Keys and values of the last layer.
    kv: Vec<f32>,
    /// A product's input, converted to its weights' format (int8 and bf16 only).
    xq: LowpRows,
}

struct Layer {
    /// Query, key and value projections side by side: `[hidden, 3 * hidden]`.
    qkv: Dense<HostTensor, Vec<f32>>,
    attn_out: Dense<HostTensor, Vec<f32>>,
    attn_norm: Norm<Vec<f32>>,
    ffn_in: Dense<HostTensor, Vec<f32>>,
    ffn_out: Dense<HostTensor, Vec<f32>>,
    ffn_norm: Norm<Vec<f32>>,
    /// The same products' weights in int8 or bf16, where the model computes in one.
    lowp: Option<LayerLowp>,
}

pub struct CpuBert {
    cfg: BertConfig,
    word: HostTensor,
    position: HostTensor,
    token_type: HostTensor,
    emb_norm: Norm<Vec<f32>>,
    layers: Vec<Layer>,
    pooler: Dense<HostTensor, Vec<f32>>,
    classifier: Dense<HostTensor, Vec<f32>>,
    dtype: CpuDtype,
    /// Activation buffers kept between forwards: fresh ones would be zeroed (and their
    /// pages faulted in) on every call. A concurrent caller gets its own.
    buffers: Mutex<Buffers>,
}

/// `x = layer_norm(x + bias + residual)` over row blocks on the rayon pool.
fn add_norm(x: &mut [f32], bias: &[f32], residual: Option<&[f32]>, n: &Norm<Vec<f32>>) {
    let width = n.gamma.len();
    let block = width * ROW_BLOCK;
    let eps = n.eps as f32;
    match residual {
        Some(r) => x
            .par_chunks_mut(block)
            .zip(r.par_chunks(block))
            .for_each(|(rows, res)| kernels::layer_norm(rows, bias, res, &n.gamma, &n.beta, eps)),
        None => x
            .par_chunks_mut(block)
            .for_each(|rows| kernels::layer_norm(rows, bias, &[], &n.gamma, &n.beta, eps)),
    }
}

impl CpuBert {
    /// Takes the host parameters (no copy of the big tables beyond the fused QKV).
    /// In `dtype`, the linear layers converted here where it is below f32.
    pub fn new(cfg: BertConfig, p: HostParams, dtype: CpuDtype) -> Self {
        let n_layers = p.layers.len();
        let layers = p
            .layers
            .into_iter()
            .enumerate()
            .map(|(i, l)| {
                let qkv = concat_cols(&l.query.weight, &l.key_value.weight);
                let tensors = LayerTensors {
                    qkv: &qkv,
                    attn_out: &l.attn_out.weight,
                    ffn_in: &l.ffn_in.weight,
                    ffn_out: &l.ffn_out.weight,
                    last: i + 1 == n_layers,
                };
                let lowp = LayerLowp::convert(dtype, &tensors);
                Layer {
                    qkv: Dense {
                        weight: qkv,
                        bias: [l.query.bias, l.key_value.bias].concat(),
                    },
                    attn_out: l.attn_out,
                    attn_norm: l.attn_norm,
                    ffn_in: l.ffn_in,
                    ffn_out: l.ffn_out,
                    ffn_norm: l.ffn_norm,
                    lowp,
                }
            })
            .collect();
        Self {
            cfg,
            word: p.word,
            position: p.position,
            token_type: p.token_type,
            emb_norm: p.emb_norm,
            layers,
            pooler: p.pooler,
            classifier: p.classifier,
            dtype,
            buffers: Mutex::default(),
        }
    }

    pub fn dtype(&self) -> CpuDtype {
        self.dtype
    }

    /// Raw logits, one per sequence, in order (inputs already checked by the caller).
    pub fn forward(&self, batch: &[&Encoded]) -> Vec<f32> {
        // On a pool thread, so every parallel step below is split from there rather
        // than handed over from (and waited for by) the caller's thread.
        rayon::scope(|_| self.forward_on_pool(batch, &mut Clock::off()).0)
    }

    /// Logits and the pooled [CLS] vectors (`hidden` values per sequence, after the
    /// pooler's tanh), to compare number formats by more than one value per pair.
    pub fn forward_pooled(&self, batch: &[&Encoded]) -> (Vec<f32>, Vec<f32>) {
        rayon::scope(|_| self.forward_on_pool(batch, &mut Clock::off()))
    }

    /// [`forward`](Self::forward), adding the wall time of each phase to `phases`.
    pub fn forward_profiled(&self, batch: &[&Encoded], phases: &mut PhaseTimes) -> Vec<f32> {
        rayon::scope(|_| self.forward_on_pool(batch, &mut Clock::on(phases)).0)
    }

    /// Logits and pooled vectors.
    fn forward_on_pool(&self, batch: &[&Encoded], clock: &mut Clock<'_>) -> (Vec<f32>, Vec<f32>) {
        let h = self.cfg.hidden_size;
        let heads = self.cfg.num_attention_heads;
        let dh = self.cfg.head_dim();
        let mut seqs = Vec::with_capacity(batch.len());
        let mut tokens = 0;
        for e in batch {
            seqs.push(attention::Seq {
                kv_start: tokens,
                len: e.len(),
                q_start: tokens,
                q_len: e.len(),
            });
            tokens += e.len();
        }
        let mut x = self.embed(batch, tokens);
        clock.lap("embeddings + norm");
        let mut own = None;
        let mut shared = self.shared_buffers();
        let buf: &mut Buffers = match shared.as_deref_mut() {
            Some(b) => b,
            None => own.insert(Buffers::default()),
        };
        let Buffers {
            qkv,
            ctx,
            a,
            ffn,
            next,
            kv,
            xq,
        } = buf;
        let n_layers = self.layers.len();
        for (li, layer) in self.layers.iter().enumerate() {
            if li + 1 < n_layers {
                let lowp = layer.lowp.as_ref();
                dense(
                    qkv,
                    View::new(&x, tokens, h),
                    &layer.qkv,
                    0..3 * h,
                    lowp.map(|l| l.weights(Product::Qkv, &mut *xq)),
                );
                clock.lap("QKV projection");
                fit(ctx, tokens * h);
                let inp = attention::Inputs {
                    q: qkv,
                    q_stride: 3 * h,
                    kv: qkv,
                    kv_stride: 3 * h,
                    k_col: h,
                    v_col: 2 * h,
                    heads,
                    head_dim: dh,
                };
                attention::attend(&inp, &seqs, ctx, h);
                clock.lap("attention");
                self.block_tail(layer, ctx, &x, tokens, a, ffn, next, xq, clock);
                std::mem::swap(&mut x, next);
            } else {
                // Only the [CLS] rows reach the pooler: keys and values for every token,
                // everything else for one row per sequence.
                let lowp = layer.lowp.as_ref();
                dense(
                    kv,
                    View::new(&x, tokens, h),
                    &layer.qkv,
                    h..3 * h,
                    lowp.map(|l| l.weights(Product::Kv, &mut *xq)),
                );
                let cls: Vec<f32> = seqs
                    .iter()
                    .flat_map(|s| x[s.kv_start * h..(s.kv_start + 1) * h].iter().copied())
                    .collect();
                let b = seqs.len();
                dense(
                    qkv,
                    View::new(&cls, b, h),
                    &layer.qkv,
                    0..h,
                    lowp.map(|l| l.weights(Product::Q, &mut *xq)),
                );
                clock.lap("QKV projection");
                for (i, s) in seqs.iter_mut().enumerate() {
                    s.q_start = i;
                    s.q_len = 1;
                }
                fit(ctx, b * h);
                let inp = attention::Inputs {
                    q: qkv,
                    q_stride: h,
                    kv,
                    kv_stride: 2 * h,
                    k_col: 0,
                    v_col: h,
                    heads,
                    head_dim: dh,
                };
                attention::attend(&inp, &seqs, ctx, h);
                clock.lap("attention");
                self.block_tail(layer, ctx, &cls, b, a, ffn, next, xq, clock);
                std::mem::swap(&mut x, next);
            }
        }
        let out = self.head(&x, seqs.len());
        clock.lap("pooler + classifier");
        out
    }

    /// The kept activation buffers, or `None` while another forward holds them. A
    /// forward that panicked (caught further up) poisons the lock: its buffers may be
    /// half-written, so they are dropped and the lock cleared rather than left
    /// poisoned, which would send every later forward to fresh buffers for good.
    fn shared_buffers(&self) -> Option<MutexGuard<'_, Buffers>> {
        match self.buffers.try_lock() {
            Ok(guard) => Some(guard),
            Err(TryLockError::WouldBlock) => None,
            Err(TryLockError::Poisoned(poisoned)) => {
                let mut guard = poisoned.into_inner();
                *guard = Buffers::default();
                self.buffers.clear_poison();
                tracing::debug!("CPU forward buffers reset after a panicked forward");
                Some(guard)
            }
        }
    }

    /// Word + position + token type embeddings of every token, normalised.
    fn embed(&self, batch: &[&Encoded], tokens: usize) -> Vec<f32> {
        let h = self.cfg.hidden_size;
        let mut x = Vec::with_capacity(tokens * h);
        for e in batch {
            for (pos, (&id, &ty)) in e.ids.iter().zip(&e.type_ids).enumerate() {
                let w = &self.word.data[id as usize * h..][..h];
                let p = &self.position.data[pos * h..][..h];
                let t = &self.token_type.data[ty as usize * h..][..h];
                x.extend(w.iter().zip(p).zip(t).map(|((w, p), t)| w + p + t));
            }
        }
        add_norm(&mut x, &[], None, &self.emb_norm);
        x
    }

    /// Output projection onto the residual, norm, FFN with GELU onto that, norm.
    /// `x` has `rows` rows; the result is left in `out`.
    #[allow(clippy::too_many_arguments)]
    fn block_tail(
        &self,
        layer: &Layer,
        ctx: &[f32],
        x: &[f32],
        rows: usize,
        a: &mut Vec<f32>,
        ffn: &mut Vec<f32>,
        out: &mut Vec<f32>,
        xq: &mut LowpRows,
        clock: &mut Clock<'_>,
    ) {
        let (h, inter) = (self.cfg.hidden_size, self.cfg.intermediate_size);
        let lowp = layer.lowp.as_ref();
        let w = Weights::of(
            &layer.attn_out,
            0..h,
            lowp.map(|l| l.weights(Product::AttnOut, &mut *xq)),
        );
        project(a, View::new(ctx, rows, h), w);
        clock.lap("attention output projection");
        add_norm(a, &layer.attn_out.bias, Some(x), &layer.attn_norm);
        clock.lap("bias + residual + layer norm");
        let w = Weights::of(
            &layer.ffn_in,
            0..inter,
            lowp.map(|l| l.weights(Product::FfnIn, &mut *xq)),
        );
        project(ffn, View::new(a, rows, h), w);
        clock.lap("FFN in (384 -> 1536)");
        let bias = &layer.ffn_in.bias;
        ffn.par_chunks_mut(inter * ROW_BLOCK)
            .for_each(|rows| kernels::bias_gelu(rows, bias));
        clock.lap("bias + GELU");
        let w = Weights::of(
            &layer.ffn_out,
            0..h,
            lowp.map(|l| l.weights(Product::FfnOut, &mut *xq)),
        );
        project(out, View::new(ffn, rows, inter), w);
        clock.lap("FFN out (1536 -> 384)");
        add_norm(out, &layer.ffn_out.bias, Some(a), &layer.ffn_norm);
        clock.lap("bias + residual + layer norm");
    }

    /// Pooler (tanh) over the [CLS] states, then the one-logit classifier (both f32
    /// in every dtype: a few rows). Returns the logits and the pooled vectors.
    fn head(&self, cls: &[f32], b: usize) -> (Vec<f32>, Vec<f32>) {
        let h = self.cfg.hidden_size;
        let mut pooled = Vec::new();
        dense(&mut pooled, View::new(cls, b, h), &self.pooler, 0..h, None);
        pooled.iter_mut().for_each(|v| *v = v.tanh());
        let mut logits = Vec::new();
        dense(
            &mut logits,
            View::new(&pooled, b, h),
            &self.classifier,
            0..1,
            None,
        );
        (logits, pooled)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::params::{Dense, Layer as ParamLayer, Params};

    fn mat(rows: usize, cols: usize, seed: u32) -> HostTensor {
        HostTensor {
            shape: vec![rows, cols],
            data: test_values(rows * cols, seed, 0.5),
        }
    }

    fn dense(rows: usize, cols: usize, seed: u32) -> Dense<HostTensor, Vec<f32>> {
        Dense {
            weight: mat(rows, cols, seed),
            bias: test_values(cols, seed + 1, 0.1),
        }
    }

    fn norm(width: usize) -> Norm<Vec<f32>> {
        Norm {
            gamma: vec![1.0; width],
            beta: vec![0.0; width],
            eps: 1e-12,
        }
    }

    /// Two layers, hidden 8 in two heads, random weights.
    fn tiny() -> CpuBert {
        let cfg: BertConfig = serde_json::from_str(
            r#"{"vocab_size": 12, "hidden_size": 8, "num_hidden_layers": 2,
                "num_attention_heads": 2, "intermediate_size": 16,
                "max_position_embeddings": 16}"#,
        )
        .expect("config");
        let (h, i) = (8, 16);
        let layer = |s: u32| ParamLayer {
            query: dense(h, h, s),
            key_value: dense(h, 2 * h, s + 10),
            attn_out: dense(h, h, s + 20),
            attn_norm: norm(h),
            ffn_in: dense(h, i, s + 30),
            ffn_out: dense(i, h, s + 40),
            ffn_norm: norm(h),
        };
        let params = Params {
            word: mat(12, h, 1),
            position: mat(16, h, 2),
            token_type: mat(2, h, 3),
            emb_norm: norm(h),
            layers: vec![layer(100), layer(200)],
            pooler: dense(h, h, 4),
            classifier: dense(h, 1, 5),
        };
        CpuBert::new(cfg, params, CpuDtype::F32)
    }

    fn encoded(len: usize) -> Encoded {
        Encoded {
            ids: (0..len as u32).map(|i| i % 12).collect(),
            type_ids: (0..len).map(|i| u32::from(i >= len / 2)).collect(),
        }
    }

    impl CpuBert {
        /// Length of the kept key/value buffer (`tokens × 2 × hidden` after a forward),
        /// or `None` while its lock is poisoned.
        fn kept_kv_len(&self) -> Option<usize> {
            self.buffers.lock().ok().map(|b| b.kv.len())
        }
    }

    #[test]
    fn a_panicked_forward_does_not_turn_buffer_reuse_off() {
        let bert = tiny();
        let (five, seven) = (encoded(5), encoded(7));
        let first = bert.forward(&[&five, &seven]);
        assert_eq!(
            bert.kept_kv_len(),
            Some(12 * 16),
            "the forward used the kept buffers"
        );

        // An empty sequence panics inside attention, with the buffers locked.
        let empty = encoded(0);
        let caught = std::panic::catch_unwind(|| bert.forward(&[&five, &empty]));
        assert!(caught.is_err(), "an empty sequence must panic");
        assert!(bert.buffers.is_poisoned(), "the panic poisoned the lock");

        // The next forward takes the lock back, fresh, and computes the same logits.
        let again = bert.forward(&[&seven]);
        assert!(!bert.buffers.is_poisoned());
        assert_eq!(bert.kept_kv_len(), Some(7 * 16), "reuse is back on");
        let both = bert.forward(&[&five, &seven]);
        assert_eq!(both, first);
        assert!((again[0] - first[1]).abs() < 1e-5, "{again:?} vs {first:?}");
    }
}
