//! The CPU forward's linear layers: `x · w (+ bias)` with the weights in f32 (the
//! `gemm` crate), quantized to int8 ([`super::qgemm`]) or rounded to bf16
//! ([`super::bgemm`]) at load, and the buffers the products write into.

use std::ops::Range;

use rayon::prelude::*;

use super::ROW_BLOCK;
use super::bgemm::{self, Bf16Isa, Bf16Rows, Bf16Weights};
use super::gemm::{View, matmul};
use super::qgemm::{self, Int8Isa, QuantRows, QuantWeights};
use crate::params::Dense;
use crate::weights::HostTensor;

/// Resizes without writing the kept part: the next kernel overwrites every element.
pub(super) fn fit(v: &mut Vec<f32>, len: usize) {
    if v.len() > len {
        v.truncate(len);
    } else {
        v.resize(len, 0.0);
    }
}

/// One product of a layer, to name its low-precision weights.
#[derive(Clone, Copy)]
pub(super) enum Product {
    Qkv,
    /// The query columns of `Qkv` alone, and the key/value ones: the last layer
    /// projects them from different rows.
    Q,
    Kv,
    AttnOut,
    FfnIn,
    FfnOut,
}

/// A layer's linear weights in one number format, converted at load.
pub(super) struct LayerSet<W> {
    qkv: W,
    /// `Product::Q` and `Product::Kv`: the last layer's only (no other asks for them).
    split: Option<(W, W)>,
    attn_out: W,
    ffn_in: W,
    ffn_out: W,
}

impl<W> LayerSet<W> {
    /// Converts each weight matrix (columns of a row-major `k × width` matrix) with
    /// `convert(w, width, cols)`; the split QKV columns too where `last`.
    fn convert(l: &LayerTensors<'_>, convert: impl Fn(&[f32], usize, Range<usize>) -> W) -> Self {
        let all = |t: &HostTensor| convert(&t.data, t.shape[1], 0..t.shape[1]);
        let (w, h) = (l.qkv.shape[1], l.qkv.shape[1] / 3);
        Self {
            qkv: all(l.qkv),
            split: l
                .last
                .then(|| (convert(&l.qkv.data, w, 0..h), convert(&l.qkv.data, w, h..w))),
            attn_out: all(l.attn_out),
            ffn_in: all(l.ffn_in),
            ffn_out: all(l.ffn_out),
        }
    }

    fn get(&self, p: Product) -> &W {
        let split = || {
            // The forward's structure, not its input: only the last layer splits.
            self.split
                .as_ref()
                .expect("split QKV weights are asked of the last layer only")
        };
        match p {
            Product::Qkv => &self.qkv,
            Product::Q => &split().0,
            Product::Kv => &split().1,
            Product::AttnOut => &self.attn_out,
            Product::FfnIn => &self.ffn_in,
            Product::FfnOut => &self.ffn_out,
        }
    }
}

/// A layer's linear weights where the model computes them below f32.
pub(super) enum LayerLowp {
    Int8(Box<LayerSet<QuantWeights>>),
    Bf16(Box<LayerSet<Bf16Weights>>),
}

/// A layer's f32 weight matrices, to convert.
pub(super) struct LayerTensors<'a> {
    pub qkv: &'a HostTensor,
    pub attn_out: &'a HostTensor,
    pub ffn_in: &'a HostTensor,
    pub ffn_out: &'a HostTensor,
    /// The model's last layer, which also projects the query and key/value columns
    /// of `qkv` on their own.
    pub last: bool,
}

impl LayerLowp {
    /// The layer's weights in `dtype`, or `None` for f32 (the dense layers' own).
    pub fn convert(dtype: CpuDtype, l: &LayerTensors<'_>) -> Option<Self> {
        match dtype {
            CpuDtype::F32 => None,
            CpuDtype::Int8 => Some(Self::Int8(Box::new(LayerSet::convert(
                l,
                QuantWeights::quantize,
            )))),
            CpuDtype::Bf16 => {
                let isa = Bf16Isa::detect();
                Some(Self::Bf16(Box::new(LayerSet::convert(
                    l,
                    |w, width, cols| Bf16Weights::new(w, width, cols, isa),
                ))))
            }
        }
    }

    /// Product `p`'s weights, with `rows` to convert its input into.
    pub fn weights<'a>(&'a self, p: Product, rows: &'a mut LowpRows) -> Weights<'a> {
        match self {
            Self::Int8(set) => Weights::Int8(set.get(p), &mut rows.int8),
            Self::Bf16(set) => Weights::Bf16(set.get(p), &mut rows.bf16),
        }
    }
}

/// A product's input converted to the weights' format; kept between products.
#[derive(Default)]
pub(super) struct LowpRows {
    int8: QuantRows,
    bf16: Bf16Rows,
}

/// The number format of the CPU forward's linear layers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CpuDtype {
    F32,
    /// Weights per output column and activations per row in int8 (see [`qgemm`]);
    /// attention, softmax, norms and GELU stay f32.
    Int8,
    /// Weights and activations rounded to bf16, products summed in f32 (see
    /// [`super::bgemm`]); attention, softmax, norms and GELU stay f32.
    Bf16,
}

pub(super) fn view(t: &HostTensor) -> View<'_> {
    View::new(&t.data, t.shape[0], t.shape[1])
}

/// A product's weights: f32 columns of a dense layer, or their low-precision copy
/// (with the buffer its input is converted into).
pub(super) enum Weights<'a> {
    F32(&'a Dense<HostTensor, Vec<f32>>, Range<usize>),
    Int8(&'a QuantWeights, &'a mut QuantRows),
    Bf16(&'a Bf16Weights, &'a mut Bf16Rows),
}

impl<'a> Weights<'a> {
    /// Columns `cols` of `d`, or `lowp` (the same columns in a lower precision) where
    /// present.
    pub fn of(
        d: &'a Dense<HostTensor, Vec<f32>>,
        cols: Range<usize>,
        lowp: Option<Weights<'a>>,
    ) -> Self {
        match lowp {
            Some(w) => {
                assert_eq!(
                    w.cols(),
                    cols.len(),
                    "low-precision weights for other columns"
                );
                w
            }
            None => Weights::F32(d, cols),
        }
    }

    fn cols(&self) -> usize {
        match self {
            Weights::F32(_, cols) => cols.len(),
            Weights::Int8(q, _) => q.cols(),
            Weights::Bf16(b, _) => b.cols(),
        }
    }
}

/// `out = x · w`, without the bias: the kernel that reads `out` next adds it.
pub(super) fn project(out: &mut Vec<f32>, x: View<'_>, w: Weights<'_>) {
    match w {
        Weights::F32(d, cols) => {
            let n = cols.len();
            fit(out, x.rows * n);
            matmul(out, n, x, view(&d.weight).columns(cols.start, n), false);
        }
        Weights::Int8(q, rows) => {
            let n = q.cols();
            fit(out, x.rows * n);
            let isa = Int8Isa::detect();
            rows.fill(x, isa);
            qgemm::matmul(out, n, rows, q, isa);
        }
        Weights::Bf16(b, rows) => {
            let n = b.cols();
            fit(out, x.rows * n);
            rows.fill(x, Bf16Isa::detect());
            bgemm::matmul(out, n, rows, b);
        }
    }
}

/// `x · w[:, cols] + bias[cols]`.
pub(super) fn dense(
    out: &mut Vec<f32>,
    x: View<'_>,
    d: &Dense<HostTensor, Vec<f32>>,
    cols: Range<usize>,
    lowp: Option<Weights<'_>>,
) {
    project(out, x, Weights::of(d, cols.clone(), lowp));
    let bias = &d.bias[cols];
    out.par_chunks_mut(bias.len() * ROW_BLOCK).for_each(|rows| {
        for row in rows.chunks_exact_mut(bias.len()) {
            for (v, b) in row.iter_mut().zip(bias) {
                *v += b;
            }
        }
    });
}
