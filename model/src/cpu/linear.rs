//! The CPU forward's linear layers: `x · w (+ bias)` with the weights in f32 (the
//! `gemm` crate) or quantized to int8 at load ([`super::qgemm`]), and the buffers the
//! products write into.

use std::ops::Range;

use rayon::prelude::*;

use super::ROW_BLOCK;
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

/// A layer's linear weights quantized per output column (`--dtype int8`).
pub(super) struct LayerInt8 {
    pub qkv: QuantWeights,
    /// The query and the key/value columns of `qkv` on their own: the last layer
    /// projects them from different rows.
    pub q: QuantWeights,
    pub kv: QuantWeights,
    pub attn_out: QuantWeights,
    pub ffn_in: QuantWeights,
    pub ffn_out: QuantWeights,
}

impl LayerInt8 {
    pub fn quantize(
        qkv: &HostTensor,
        attn_out: &HostTensor,
        ffn_in: &HostTensor,
        ffn_out: &HostTensor,
    ) -> Self {
        let all = |t: &HostTensor| QuantWeights::quantize(&t.data, t.shape[1], 0..t.shape[1]);
        let (w, h) = (qkv.shape[1], qkv.shape[1] / 3);
        Self {
            qkv: all(qkv),
            q: QuantWeights::quantize(&qkv.data, w, 0..h),
            kv: QuantWeights::quantize(&qkv.data, w, h..w),
            attn_out: all(attn_out),
            ffn_in: all(ffn_in),
            ffn_out: all(ffn_out),
        }
    }
}

/// The number format of the CPU forward's linear layers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CpuDtype {
    F32,
    /// Weights per output column and activations per row in int8 (see [`qgemm`]);
    /// attention, softmax, norms and GELU stay f32.
    Int8,
}

pub(super) fn view(t: &HostTensor) -> View<'_> {
    View::new(&t.data, t.shape[0], t.shape[1])
}

/// A product's weights: f32 columns of a dense layer, or their int8 copy (with the
/// buffer its input is quantized into).
pub(super) enum Weights<'a> {
    F32(&'a Dense<HostTensor, Vec<f32>>, Range<usize>),
    Int8(&'a QuantWeights, &'a mut QuantRows),
}

impl<'a> Weights<'a> {
    /// Columns `cols` of `d`, or `int8` (the same columns quantized) where present.
    pub fn of(
        d: &'a Dense<HostTensor, Vec<f32>>,
        cols: Range<usize>,
        int8: Option<(&'a QuantWeights, &'a mut QuantRows)>,
    ) -> Self {
        match int8 {
            Some((q, rows)) => {
                assert_eq!(q.cols(), cols.len(), "int8 weights for other columns");
                Weights::Int8(q, rows)
            }
            None => Weights::F32(d, cols),
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
    }
}

/// `x · w[:, cols] + bias[cols]`.
pub(super) fn dense(
    out: &mut Vec<f32>,
    x: View<'_>,
    d: &Dense<HostTensor, Vec<f32>>,
    cols: Range<usize>,
    int8: Option<(&QuantWeights, &mut QuantRows)>,
) {
    project(out, x, Weights::of(d, cols.clone(), int8));
    let bias = &d.bias[cols];
    out.par_chunks_mut(bias.len() * ROW_BLOCK).for_each(|rows| {
        for row in rows.chunks_exact_mut(bias.len()) {
            for (v, b) in row.iter_mut().zip(bias) {
                *v += b;
            }
        }
    });
}
