//! Row kernels of the CPU forward: GELU in place, residual-summed layer norm, and the
//! softmax inside attention. Sums are kept in 16 lanes so the compiler can vectorize
//! them (a plain `iter().sum()` is a sequential dependency it must not reorder).

use super::math;
use super::simd::{Arith, multiversion};

const LANES: usize = 16;

/// Sum of a slice in 16 independent lanes, then across them.
#[inline(always)]
fn lane_sum(x: &[f32]) -> f32 {
    let mut acc = [0.0f32; LANES];
    let chunks = x.chunks_exact(LANES);
    let rest = chunks.remainder();
    for c in chunks {
        for i in 0..LANES {
            acc[i] += c[i];
        }
    }
    acc.iter().sum::<f32>() + rest.iter().sum::<f32>()
}

/// Sum of squared deviations from `mean`, in 16 lanes.
#[inline(always)]
fn lane_sq_dev<A: Arith>(x: &[f32], mean: f32) -> f32 {
    let mut acc = [0.0f32; LANES];
    let chunks = x.chunks_exact(LANES);
    let rest = chunks.remainder();
    for c in chunks {
        for i in 0..LANES {
            let d = c[i] - mean;
            acc[i] = A::mul_add(d, d, acc[i]);
        }
    }
    acc.iter().sum::<f32>() + rest.iter().map(|v| (v - mean) * (v - mean)).sum::<f32>()
}

/// Largest value of a slice, in 16 lanes (NaN-free input).
#[inline(always)]
fn lane_max(x: &[f32]) -> f32 {
    let mut acc = [f32::NEG_INFINITY; LANES];
    let chunks = x.chunks_exact(LANES);
    let rest = chunks.remainder();
    for c in chunks {
        for i in 0..LANES {
            acc[i] = if c[i] > acc[i] { c[i] } else { acc[i] };
        }
    }
    acc.iter()
        .chain(rest)
        .fold(f32::NEG_INFINITY, |m, &v| m.max(v))
}

multiversion! {
    /// `x = gelu(x + bias)` for every `bias`-wide row, with the exact erf.
    pub fn bias_gelu / bias_gelu_with<A>(x: &mut [f32], bias: &[f32]) {
        for row in x.chunks_exact_mut(bias.len()) {
            for (v, b) in row.iter_mut().zip(bias) {
                *v = math::gelu::<A>(*v + b);
            }
        }
    }
}

multiversion! {
    /// `x = layer_norm(x + bias + residual)` for every `gamma`-wide row, in place (two
    /// passes: mean, then variance about it, as PyTorch does). `residual` may be empty.
    pub fn layer_norm / layer_norm_with<A>(
        x: &mut [f32],
        bias: &[f32],
        residual: &[f32],
        gamma: &[f32],
        beta: &[f32],
        eps: f32,
    ) {
        let width = gamma.len();
        for (i, row) in x.chunks_exact_mut(width).enumerate() {
            if !bias.is_empty() {
                for (v, b) in row.iter_mut().zip(bias) {
                    *v += b;
                }
            }
            if !residual.is_empty() {
                for (v, r) in row.iter_mut().zip(&residual[i * width..(i + 1) * width]) {
                    *v += r;
                }
            }
            let mean = lane_sum(row) / width as f32;
            let var = lane_sq_dev::<A>(row, mean) / width as f32;
            let inv = 1.0 / (var + eps).sqrt();
            for ((v, g), b) in row.iter_mut().zip(gamma).zip(beta) {
                *v = A::mul_add((*v - mean) * inv, *g, *b);
            }
        }
    }
}

multiversion! {
    /// Softmax of one row in place; the result's sum is 1 to rounding.
    pub fn softmax / softmax_with<A>(x: &mut [f32]) {
        let max = lane_max(x);
        for v in x.iter_mut() {
            *v = math::exp::<A>(*v - max);
        }
        let inv = 1.0 / lane_sum(x);
        for v in x.iter_mut() {
            *v *= inv;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cpu::simd::{Fused, Isa, Unfused};

    fn pseudo_random(n: usize, seed: u32) -> Vec<f32> {
        crate::cpu::test_values(n, seed, 4.0)
    }

    #[test]
    fn layer_norm_adds_bias_and_residual_first() {
        let (x, bias, res) = ([1.0, 5.0, 2.0, 2.0], [1.0, -1.0], [0.0, 0.0, 3.0, 1.0]);
        let mut y = x;
        // Rows become [2, 4] and [6, 2]: normalised to [-1, 1] and [1, -1].
        layer_norm(&mut y, &bias, &res, &[2.0, 2.0], &[0.5, 0.5], 0.0);
        assert_eq!(y, [-1.5, 2.5, 2.5, -1.5]);
    }

    #[test]
    fn every_instruction_set_gives_the_same_layer_norm_as_f64() {
        let width = 384;
        let x = pseudo_random(width * 5, 7);
        let gamma = pseudo_random(width, 8);
        let beta = pseudo_random(width, 9);
        for isa in Isa::available() {
            let mut y = x.clone();
            layer_norm_with(isa, &mut y, &[], &[], &gamma, &beta, 1e-12);
            for (r, row) in x.chunks(width).enumerate() {
                let mean = row.iter().map(|&v| v as f64).sum::<f64>() / width as f64;
                let var =
                    row.iter().map(|&v| (v as f64 - mean).powi(2)).sum::<f64>() / width as f64;
                for c in 0..width {
                    let want = (row[c] as f64 - mean) / (var + 1e-12).sqrt() * gamma[c] as f64
                        + beta[c] as f64;
                    let got = y[r * width + c] as f64;
                    assert!(
                        (got - want).abs() <= 2e-6 * (1.0 + want.abs()),
                        "{isa:?} row {r} col {c}: {got} vs {want}"
                    );
                }
            }
        }
    }

    #[test]
    fn every_instruction_set_gives_the_same_gelu_and_softmax() {
        let x = pseudo_random(1000, 3);
        let bias = pseudo_random(10, 4);
        let scalar = |gelu: fn(f32) -> f32| -> Vec<f32> {
            x.iter()
                .enumerate()
                .map(|(i, v)| gelu(v + bias[i % 10]))
                .collect()
        };
        let (fused, unfused) = (scalar(math::gelu::<Fused>), scalar(math::gelu::<Unfused>));
        for isa in Isa::available() {
            let mut y = x.clone();
            bias_gelu_with(isa, &mut y, &bias);
            // The vector loop computes what the scalar function of its arithmetic does.
            let want = if isa.fused() { &fused } else { &unfused };
            assert_eq!(&y, want, "{isa:?} gelu differs from the scalar path");

            let mut s = x[..77].to_vec();
            softmax_with(isa, &mut s);
            let max = x[..77].iter().fold(f64::MIN, |m, &v| m.max(v as f64));
            let total: f64 = x[..77].iter().map(|&v| (v as f64 - max).exp()).sum();
            for (got, &v) in s.iter().zip(&x[..77]) {
                let want = (v as f64 - max).exp() / total;
                assert!(
                    (*got as f64 - want).abs() <= 1e-6 * want + 1e-9,
                    "{isa:?} softmax {got} vs {want}"
                );
            }
        }
    }
}
