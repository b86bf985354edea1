//! Int8 matrix products for `--dtype int8`: `out = x · w` with `w` quantized per output
//! column when the model loads and `x` quantized per row before each product, both
//! symmetric to `[-127, 127]`; the products of 8-bit values add up exactly in i32, and
//! each output is `(Σ q_x q_w) · s_w[col] · s_x[row]`.
//!
//! The fast kernel is AVX-512 VNNI's `vpdpbusd`, which multiplies *unsigned* bytes by
//! signed ones. The activations are therefore stored offset by 128 (`u = q + 128`,
//! `1..=255`), and `128 · Σ_k q_w[k][col]`, fixed per column, is subtracted from each
//! sum. AVX2 has no such instruction; `vpmaddubsw` would saturate on `255 · 127 · 2`,
//! so that kernel multiplies `|q_x|` by `q_w` carrying `q_x`'s sign (`vpsignb`), whose
//! pairwise sums stay below 2^15. Every kernel therefore computes the same i32 sums,
//! and the same f32 from them: variants agree bit for bit, which the tests check, and
//! [`reference`] computes that arithmetic in f64 to check them against.

use std::ops::Range;
use std::sync::OnceLock;

use rayon::prelude::*;

use super::gemm::View;
use super::peak;
use super::tiling::for_each_tile;

/// Output columns per packed panel: four 16-lane vectors of AVX-512.
pub const NR: usize = 64;
/// Rows per register tile of the kernels.
pub const MR: usize = 6;
/// Bytes of one packed k-step of a panel: 4 k-values for each of its 64 columns.
const STEP: usize = 4 * NR;

/// Which int8 kernel runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Int8Isa {
    /// AVX-512 with VNNI (`vpdpbusd`): 64 multiply-adds per instruction.
    Avx512Vnni,
    /// AVX2 (`vpmaddubsw` on sign-carried bytes, then `vpmaddwd`).
    Avx2,
    /// Plain loops (any CPU; the tests' cross-check).
    Scalar,
}

impl Int8Isa {
    pub fn name(self) -> &'static str {
        match self {
            Self::Avx512Vnni => "avx512-vnni",
            Self::Avx2 => "avx2",
            Self::Scalar => "scalar",
        }
    }

    /// The best this CPU has, at most what `CROSSBATCH_CPU_ISA` allows the f32
    /// kernels (so one variable lowers both).
    pub fn detect() -> Self {
        static BEST: OnceLock<Int8Isa> = OnceLock::new();
        *BEST.get_or_init(|| {
            let best = Self::available()[0];
            tracing::debug!(isa = best.name(), "int8 kernels");
            best
        })
    }

    /// Every variant this CPU can run, best first (tests check each against the others).
    pub fn available() -> Vec<Self> {
        let mut v = Vec::new();
        #[cfg(target_arch = "x86_64")]
        {
            use super::simd::{Isa, isa};
            let f32_isa = isa();
            if f32_isa == Isa::Avx512 && std::arch::is_x86_feature_detected!("avx512vnni") {
                v.push(Self::Avx512Vnni);
            }
            if matches!(f32_isa, Isa::Avx512 | Isa::Avx2) {
                v.push(Self::Avx2);
            }
        }
        v.push(Self::Scalar);
        v
    }
}

/// Rounds `v` to the nearest integer (ties to even, as `vcvtps2dq` does) and clamps it
/// to the symmetric int8 range.
#[inline(always)]
fn quantize_one(v: f32) -> i8 {
    v.round_ties_even().clamp(-127.0, 127.0) as i8
}

/// A weight matrix quantized per output column and packed for the kernels: panels of
/// [`NR`] columns, each a run of k-steps of 4 rows × 64 columns, the 4 values of a
/// column adjacent (what `vpdpbusd` multiplies into one i32 lane).
pub struct QuantWeights {
    k: usize,
    n: usize,
    /// `k` rounded up to a multiple of 4 (the padding rows are zero).
    k4: usize,
    packed: Vec<i8>,
    /// Per column (padded to whole panels with zeros): the dequantization scale.
    scale: Vec<f32>,
    /// Per column: `128 · Σ_k q[k][col]`, what the activations' offset adds.
    offset_sum: Vec<i32>,
}

impl QuantWeights {
    /// Columns `cols` of the row-major `k × width` matrix `w`, each scaled so its
    /// largest magnitude maps to 127.
    pub fn quantize(w: &[f32], width: usize, cols: Range<usize>) -> Self {
        assert!(width > 0 && w.len().is_multiple_of(width), "ragged matrix");
        assert!(cols.end <= width, "columns out of range");
        let k = w.len() / width;
        let n = cols.len();
        let k4 = k.next_multiple_of(4);
        let panels = n.div_ceil(NR);
        let mut packed = vec![0i8; panels * (k4 / 4) * STEP];
        let mut scale = vec![0.0f32; panels * NR];
        let mut offset_sum = vec![0i32; panels * NR];
        for j in 0..n {
            let col = cols.start + j;
            let amax = (0..k)
                .map(|r| w[r * width + col].abs())
                .fold(0.0f32, f32::max);
            if amax == 0.0 {
                continue;
            }
            scale[j] = amax / 127.0;
            let inv = 127.0 / f64::from(amax);
            let mut sum = 0i32;
            for r in 0..k {
                // Rounded once, in f64 (through f32 first would round twice).
                let q = (f64::from(w[r * width + col]) * inv)
                    .round_ties_even()
                    .clamp(-127.0, 127.0) as i8;
                packed[Self::index(k4, r, j)] = q;
                sum += i32::from(q);
            }
            offset_sum[j] = 128 * sum;
        }
        Self {
            k,
            n,
            k4,
            packed,
            scale,
            offset_sum,
        }
    }

    /// Where `q[r][j]` lies in `packed`.
    fn index(k4: usize, r: usize, j: usize) -> usize {
        let (panel, c) = (j / NR, j % NR);
        (panel * (k4 / 4) + r / 4) * STEP + c * 4 + r % 4
    }

    pub fn rows(&self) -> usize {
        self.k
    }
    pub fn cols(&self) -> usize {
        self.n
    }

    /// The quantized value at row `r`, column `j`.
    pub fn q(&self, r: usize, j: usize) -> i8 {
        self.packed[Self::index(self.k4, r, j)]
    }

    /// Column `j`'s scale.
    pub fn scale(&self, j: usize) -> f32 {
        self.scale[j]
    }

    fn panel(&self, p: usize) -> &[i8] {
        let len = (self.k4 / 4) * STEP;
        &self.packed[p * len..][..len]
    }
}

/// Rows of activations quantized for the kernels: `u8` offset by 128, rows `k4` bytes
/// apart (the padding holds 128, a zero), with one scale per row. Kept between calls
/// so a forward allocates it once.
#[derive(Default)]
pub struct QuantRows {
    rows: usize,
    k: usize,
    k4: usize,
    data: Vec<u8>,
    scale: Vec<f32>,
}

impl QuantRows {
    /// Quantizes every row of `x` with the given kernel variant's code.
    ///
    /// Panics where `isa` is not available on this CPU.
    pub fn fill(&mut self, x: View<'_>, isa: Int8Isa) {
        assert!(
            isa == Int8Isa::Scalar || Int8Isa::available().contains(&isa),
            "{} kernels are not available on this CPU",
            isa.name()
        );
        let (rows, k) = (x.rows, x.cols);
        let k4 = k.next_multiple_of(4);
        self.rows = rows;
        self.k = k;
        self.k4 = k4;
        // Every byte is written below (values, then padding): no fill pass first.
        self.data.resize(rows * k4, 0);
        self.scale.clear();
        self.scale.resize(rows, 0.0);
        let row_block = 16;
        self.data
            .par_chunks_mut(k4 * row_block)
            .zip(self.scale.par_chunks_mut(row_block))
            .enumerate()
            .for_each(|(b, (data, scales))| {
                for (i, (q, s)) in data.chunks_exact_mut(k4).zip(scales).enumerate() {
                    let r = b * row_block + i;
                    let src = &x.data[r * x.stride..][..k];
                    *s = quantize_row(src, &mut q[..k], isa);
                    q[k..].fill(128);
                }
            });
    }

    pub fn rows(&self) -> usize {
        self.rows
    }

    /// Row `r`'s quantized values (offset removed) and scale.
    pub fn row(&self, r: usize) -> (impl Iterator<Item = i32> + '_, f32) {
        let q = self.data[r * self.k4..][..self.k]
            .iter()
            .map(|&u| i32::from(u) - 128);
        (q, self.scale[r])
    }
}

/// Quantizes one row into `out` (offset by 128) and returns its scale: the row's
/// largest finite-or-infinite magnitude (NaN ignored) maps to 127; an all-zero row
/// gets scale 0; a NaN element quantizes to 0. The vector variant returns `None` for
/// a row whose scale is not finite (an infinity, or a magnitude near f32's smallest)
/// and such a row takes this scalar code, so the variants agree on every input.
fn quantize_row(src: &[f32], out: &mut [u8], isa: Int8Isa) -> f32 {
    assert_eq!(src.len(), out.len());
    #[cfg(target_arch = "x86_64")]
    if isa == Int8Isa::Avx512Vnni {
        // SAFETY: `fill` asserted that this variant is available (AVX-512 F/BW/VL
        // detected); the lengths match (asserted above).
        if let Some(scale) = unsafe { super::qgemm_x86::quantize_row_avx512(src, out) } {
            return scale;
        }
    }
    let _ = isa;
    let amax = src.iter().fold(0.0f32, |m, v| m.max(v.abs()));
    if amax == 0.0 {
        out.fill(128);
        return 0.0;
    }
    let inv = 127.0 / amax;
    for (o, &v) in out.iter_mut().zip(src) {
        *o = (i16::from(quantize_one(v * inv)) + 128) as u8;
    }
    amax / 127.0
}

/// `out = x · w` in int8 for every row of `x` (already quantized), written row-major
/// with row stride `out_stride`, split over the rayon pool by [`for_each_tile`].
///
/// Panics (before any write) on mismatched shapes, an output past its slice, or an
/// output stride below the row width (rows that overlap would be written by two tasks).
pub fn matmul(out: &mut [f32], out_stride: usize, x: &QuantRows, w: &QuantWeights, isa: Int8Isa) {
    assert_eq!(x.k, w.k, "inner dimensions differ");
    assert_eq!(x.k4, w.k4);
    assert!(
        isa == Int8Isa::Scalar || Int8Isa::available().contains(&isa),
        "{} kernels are not available on this CPU",
        isa.name()
    );
    for_each_tile(out, out_stride, (x.rows, w.n), (MR, NR), |at| {
        let (r0, p) = (at.rows.start, at.panel);
        let tile = Tile {
            a: &x.data[r0 * x.k4..][..at.rows.len() * x.k4],
            k4: x.k4,
            a_scale: &x.scale[at.rows.clone()],
            w: w.panel(p),
            w_scale: &w.scale[p * NR..][..NR],
            offset_sum: &w.offset_sum[p * NR..][..NR],
            cols: at.cols.len(),
        };
        // SAFETY: `for_each_tile` vouches for the tile's rectangle at `dst` (inside
        // `out`, no other tile's); `isa` is available (asserted above).
        unsafe { tile.run(isa, at.dst(), at.stride()) };
    });
}

/// Up to [`MR`] rows against one panel: the inputs of one kernel call.
pub(crate) struct Tile<'a> {
    /// `mr` rows of `k4` bytes.
    pub a: &'a [u8],
    pub k4: usize,
    pub a_scale: &'a [f32],
    /// One panel: `k4 / 4` steps of [`STEP`] bytes.
    pub w: &'a [i8],
    pub w_scale: &'a [f32],
    pub offset_sum: &'a [i32],
    /// Columns of the panel to write (the rest is padding).
    pub cols: usize,
}

impl Tile<'_> {
    pub fn rows(&self) -> usize {
        self.a_scale.len()
    }

    /// Writes the tile's `rows() × cols` outputs at `dst`, rows `stride` apart.
    ///
    /// # Safety
    /// `dst` must be valid for writes of `cols` f32 at each of `rows()` rows `stride`
    /// apart, none of them read or written by anyone else during the call; `isa` must
    /// be available on this CPU.
    unsafe fn run(&self, isa: Int8Isa, dst: *mut f32, stride: usize) {
        let mr = self.rows();
        assert!((1..=MR).contains(&mr) && self.cols <= NR);
        assert_eq!(self.a.len(), mr * self.k4);
        assert_eq!(self.w.len(), self.k4 / 4 * STEP);
        assert!(self.w_scale.len() == NR && self.offset_sum.len() == NR);
        match isa {
            #[cfg(target_arch = "x86_64")]
            // SAFETY: shapes asserted above; the caller vouches for `dst` and the CPU.
            Int8Isa::Avx512Vnni => unsafe { super::qgemm_x86::tile_vnni(self, dst, stride) },
            #[cfg(target_arch = "x86_64")]
            // SAFETY: as above.
            Int8Isa::Avx2 => unsafe { super::qgemm_x86::tile_avx2(self, dst, stride) },
            _ => {
                let mut acc = [[0i32; NR]; MR];
                for s in 0..self.k4 / 4 {
                    let w = &self.w[s * STEP..][..STEP];
                    for (r, acc) in acc.iter_mut().take(mr).enumerate() {
                        let a = &self.a[r * self.k4 + 4 * s..][..4];
                        for (c, acc) in acc.iter_mut().enumerate() {
                            for t in 0..4 {
                                let q = i32::from(a[t]) - 128;
                                *acc += q * i32::from(w[4 * c + t]);
                            }
                        }
                    }
                }
                for (r, acc) in acc.iter().take(mr).enumerate() {
                    for (c, &v) in acc.iter().take(self.cols).enumerate() {
                        let y = dequantize(v, self.w_scale[c], self.a_scale[r]);
                        // SAFETY: the caller vouches for `cols` values at each row.
                        unsafe { dst.add(r * stride + c).write(y) };
                    }
                }
            }
        }
    }
}

/// The one way every kernel turns an exact sum into f32 (same operations, same order,
/// so the variants agree bit for bit).
#[inline(always)]
pub(crate) fn dequantize(sum: i32, w_scale: f32, a_scale: f32) -> f32 {
    (sum as f32 * w_scale) * a_scale
}

/// Best of `reps` square `n`×`n` int8 products (inputs already quantized), in
/// GOP/s (2 ops per multiply-add): the peak a forward's int8 matmuls can reach here.
pub fn peak_gops(n: usize, reps: usize) -> f64 {
    let isa = Int8Isa::detect();
    let w = QuantWeights::quantize(&peak::square_input(n, 1), n, 0..n);
    let mut x = QuantRows::default();
    x.fill(View::new(&peak::square_input(n, 2), n, n), isa);
    let mut out = vec![0.0f32; n * n];
    peak::best_rate(n, reps, || matmul(&mut out, n, &x, &w, isa))
}

/// The same arithmetic in f64 from the quantized values: what every kernel must
/// match to within the f32 roundings of the final scaling.
pub fn reference(x: &QuantRows, w: &QuantWeights) -> Vec<f64> {
    let mut out = Vec::with_capacity(x.rows * w.n);
    for r in 0..x.rows {
        let (q, s) = x.row(r);
        let q: Vec<i32> = q.collect();
        for j in 0..w.n {
            let dot: i64 = (0..w.k)
                .map(|kk| i64::from(q[kk]) * i64::from(w.q(kk, j)))
                .sum();
            out.push(dot as f64 * f64::from(w.scale(j)) * f64::from(s));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cpu::test_values;

    fn product(m: usize, k: usize, n: usize, isa: Int8Isa, seed: u32) -> (Vec<f32>, Vec<f64>) {
        let x = test_values(m * k, seed, 2.0);
        let w = test_values(k * n, seed + 1, 0.3);
        let qw = QuantWeights::quantize(&w, n, 0..n);
        let mut qx = QuantRows::default();
        qx.fill(View::new(&x, m, k), isa);
        let mut out = vec![f32::NAN; m * n];
        matmul(&mut out, n, &qx, &qw, isa);
        (out, reference(&qx, &qw))
    }

    #[test]
    fn every_variant_matches_the_f64_reference_of_the_quantized_arithmetic() {
        // Odd shapes on purpose: a k that is no multiple of 4, partial tiles and panels.
        for &(m, k, n) in &[(1, 3, 1), (7, 37, 70), (13, 384, 129), (6, 1536, 64)] {
            for isa in Int8Isa::available() {
                let (out, want) = product(m, k, n, isa, 7);
                for (i, (&o, &w)) in out.iter().zip(&want).enumerate() {
                    // Two f32 roundings of the scaling (and one of the i32 sum past 2^24).
                    let tol = 4.0 * f64::from(f32::EPSILON) * w.abs();
                    assert!(
                        (f64::from(o) - w).abs() <= tol,
                        "{} {m}x{k}x{n} at {i}: {o} vs {w}",
                        isa.name()
                    );
                }
            }
        }
    }

    #[test]
    fn variants_agree_bit_for_bit() {
        let (m, k, n) = (29, 392, 200);
        let (want, _) = product(m, k, n, Int8Isa::Scalar, 3);
        for isa in Int8Isa::available() {
            let (out, _) = product(m, k, n, isa, 3);
            assert!(
                out.iter()
                    .zip(&want)
                    .all(|(a, b)| a.to_bits() == b.to_bits()),
                "{} differs from scalar",
                isa.name()
            );
        }
    }

    #[test]
    fn quantization_stays_within_half_a_step_of_each_value() {
        let x = test_values(5 * 77, 9, 3.0);
        for isa in Int8Isa::available() {
            let mut q = QuantRows::default();
            q.fill(View::new(&x, 5, 77), isa);
            for r in 0..5 {
                let (vals, s) = q.row(r);
                for (v, &orig) in vals.zip(&x[r * 77..]) {
                    let err = (v as f32 * s - orig).abs();
                    assert!(
                        err <= 0.5 * s * 1.0001,
                        "{} row {r}: {err} > {s}/2",
                        isa.name()
                    );
                }
            }
        }
        let w = test_values(40 * 9, 4, 1.0);
        let qw = QuantWeights::quantize(&w, 9, 2..7);
        for r in 0..40 {
            for j in 0..5 {
                let orig = w[r * 9 + 2 + j];
                let err = (f32::from(qw.q(r, j)) * qw.scale(j) - orig).abs();
                assert!(err <= 0.5 * qw.scale(j) * 1.0001, "weight {r},{j}");
            }
        }
    }

    #[test]
    fn variants_quantize_nan_infinity_and_tiny_rows_alike() {
        let k = 37;
        let mut x = test_values(4 * k, 5, 1.0);
        x[3] = f32::NAN; // row 0: one NaN among ordinary values
        x[k + 5] = f32::INFINITY; // row 1: an infinity
        for v in &mut x[2 * k..3 * k] {
            *v *= 1e-38; // row 2: every magnitude near f32's smallest normal
        }
        x[3 * k + 36] = f32::NAN; // row 3: NaN in the masked tail
        let rows = |isa| {
            let mut q = QuantRows::default();
            q.fill(View::new(&x, 4, k), isa);
            (
                q.data.clone(),
                q.scale.iter().map(|s| s.to_bits()).collect::<Vec<_>>(),
            )
        };
        let want = rows(Int8Isa::Scalar);
        for isa in Int8Isa::available() {
            assert_eq!(rows(isa), want, "{}", isa.name());
        }
        assert_eq!(want.0[3], 128, "NaN quantizes to 0");
    }

    #[test]
    fn zero_rows_and_columns_give_zeros() {
        let mut x = test_values(3 * 8, 1, 1.0);
        x[8..16].fill(0.0);
        let mut w = test_values(8 * 5, 2, 1.0);
        for r in 0..8 {
            w[r * 5 + 3] = 0.0;
        }
        for isa in Int8Isa::available() {
            let qw = QuantWeights::quantize(&w, 5, 0..5);
            let mut qx = QuantRows::default();
            qx.fill(View::new(&x, 3, 8), isa);
            let mut out = vec![f32::NAN; 15];
            matmul(&mut out, 5, &qx, &qw, isa);
            assert!(out[5..10].iter().all(|&v| v == 0.0), "{out:?}");
            assert!((0..3).all(|r| out[r * 5 + 3] == 0.0), "{out:?}");
        }
    }

    #[test]
    fn extreme_values_do_not_saturate_the_avx2_pairs() {
        // Every product at its largest magnitude with the sign that adds up: 127 · 127
        // per term, where an unsigned-offset vpmaddubsw would saturate.
        let (m, k, n) = (MR, 64, NR);
        let x: Vec<f32> = (0..m * k)
            .map(|i| if i % 2 == 0 { 1.0 } else { -1.0 })
            .collect();
        let w: Vec<f32> = (0..k * n)
            .map(|i| if (i / n) % 2 == 0 { 1.0 } else { -1.0 })
            .collect();
        for isa in Int8Isa::available() {
            let qw = QuantWeights::quantize(&w, n, 0..n);
            let mut qx = QuantRows::default();
            qx.fill(View::new(&x, m, k), isa);
            let mut out = vec![0.0; m * n];
            matmul(&mut out, n, &qx, &qw, isa);
            // 64 · 127² exactly in i32, then scaled by about 1/127 twice.
            let close = |v: f32| (v - k as f32).abs() <= 1e-5 * k as f32;
            assert!(out.iter().all(|&v| close(v)), "{}: {out:?}", isa.name());
        }
    }
}
