//! bf16 matrix products for `--dtype bf16`: `out = x · w` with `w` rounded to bf16 when
//! the model loads and `x` rounded to bf16 before each product, the products summed in
//! f32. bf16 keeps f32's exponent and 8 of its 24 significand bits, so a rounding moves
//! a value by at most 2^-9 of itself, with no scale to choose (unlike int8) and no
//! overflow short of f32's.
//!
//! The fast kernel is AVX-512 BF16's `vdpbf16ps`: per f32 lane, two bf16 products
//! added to the accumulator, 32 multiply-adds per instruction against 16 for an f32
//! FMA, from half the bytes. Weights are packed for it in panels of [`NR`] columns,
//! each k-step 2 rows × 64 columns with a column's 2 values adjacent.
//!
//! On a CPU without it, the emulated variant computes the same function the slow way:
//! the f32 kernels ([`super::gemm`]) on values rounded to bf16 (and kept as f32). It is
//! no faster than f32, and exists so `--dtype bf16` gives the same numbers on every
//! machine, and as the kernel's cross-check.
//!
//! The variants sum in different orders, so they agree to f32 rounding of the sums,
//! not bit for bit; the tests bound both against [`reference`], the f64 product of the
//! same bf16 values.

use std::ops::Range;
use std::sync::OnceLock;

use rayon::prelude::*;

use super::gemm::{self, View};
use super::peak;
use super::tiling::for_each_tile;

/// Output columns per packed panel: four 16-lane vectors of AVX-512.
pub const NR: usize = 64;
/// Rows per register tile of the kernel.
pub const MR: usize = 6;
/// bf16 values of one packed k-step of a panel: 2 k-values for each of its 64 columns.
pub(crate) const STEP: usize = 2 * NR;

/// Which bf16 kernel runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Bf16Isa {
    /// AVX-512 BF16 (`vdpbf16ps`).
    Avx512Bf16,
    /// The f32 kernels on bf16-rounded values: same function, f32's speed.
    Emulated,
}

impl Bf16Isa {
    pub fn name(self) -> &'static str {
        match self {
            Self::Avx512Bf16 => "avx512-bf16",
            Self::Emulated => "emulated on f32 kernels (this CPU has no AVX-512 BF16)",
        }
    }

    /// The best this CPU has, at most what `CROSSBATCH_CPU_ISA` allows the f32
    /// kernels (so one variable lowers both).
    pub fn detect() -> Self {
        static BEST: OnceLock<Bf16Isa> = OnceLock::new();
        *BEST.get_or_init(|| {
            let best = Self::available()[0];
            tracing::debug!(isa = best.name(), "bf16 kernels");
            best
        })
    }

    /// Every variant this CPU can run, best first (tests check each against the others).
    pub fn available() -> Vec<Self> {
        let mut v = Vec::new();
        #[cfg(target_arch = "x86_64")]
        {
            use super::simd::{Isa, isa};
            if isa() == Isa::Avx512 && std::arch::is_x86_feature_detected!("avx512bf16") {
                v.push(Self::Avx512Bf16);
            }
        }
        v.push(Self::Emulated);
        v
    }

    fn check_available(self) {
        assert!(
            self == Self::Emulated || Self::available().contains(&self),
            "{} kernels are not available on this CPU",
            self.name()
        );
    }
}

/// `v` rounded to bf16 exactly as `vcvtneps2bf16` rounds it: to nearest, ties to
/// even; NaN stays NaN (made quiet); a subnormal input becomes a zero of its sign
/// (the instruction treats subnormals as zero). The tests hold the two to every
/// class of input.
pub fn to_bf16(v: f32) -> u16 {
    let b = v.to_bits();
    if v.is_nan() {
        return ((b >> 16) | 0x0040) as u16;
    }
    if b & 0x7f80_0000 == 0 {
        return ((b >> 16) & 0x8000) as u16;
    }
    let lsb = (b >> 16) & 1;
    // Cannot overflow u32: the largest finite magnitude's bits plus 0x8000 stay below
    // 2^32, and carrying into the exponent is what rounding up to a power of 2 (or to
    // infinity) is.
    ((b + 0x7fff + lsb) >> 16) as u16
}

/// The f32 with `b`'s bits on top (exact: every bf16 is an f32).
pub fn from_bf16(b: u16) -> f32 {
    f32::from_bits(u32::from(b) << 16)
}

/// `v` rounded to bf16 and widened back.
fn round(v: f32) -> f32 {
    from_bf16(to_bf16(v))
}

/// A weight matrix rounded to bf16, stored for the variant that will multiply it.
pub struct Bf16Weights {
    k: usize,
    n: usize,
    /// `k` rounded up to a multiple of 2 (the padding row is zero).
    k2: usize,
    store: WeightStore,
}

enum WeightStore {
    /// Panels of [`NR`] columns, each `k2 / 2` steps of [`STEP`] values.
    Packed(Vec<u16>),
    /// Row-major `k × n`, each value rounded to bf16 and kept as f32.
    Rounded(Vec<f32>),
}

impl Bf16Weights {
    /// Columns `cols` of the row-major `k × width` matrix `w`, laid out for `isa`.
    ///
    /// Panics where `isa` is not available on this CPU.
    pub fn new(w: &[f32], width: usize, cols: Range<usize>, isa: Bf16Isa) -> Self {
        assert!(width > 0 && w.len().is_multiple_of(width), "ragged matrix");
        assert!(cols.end <= width, "columns out of range");
        isa.check_available();
        let k = w.len() / width;
        let n = cols.len();
        let k2 = k.next_multiple_of(2);
        let store = match isa {
            Bf16Isa::Avx512Bf16 => {
                let mut packed = vec![0u16; n.div_ceil(NR) * (k2 / 2) * STEP];
                for r in 0..k {
                    for j in 0..n {
                        packed[Self::index(k2, r, j)] = to_bf16(w[r * width + cols.start + j]);
                    }
                }
                WeightStore::Packed(packed)
            }
            Bf16Isa::Emulated => WeightStore::Rounded(
                w.chunks_exact(width)
                    .flat_map(|row| row[cols.clone()].iter().map(|&v| round(v)))
                    .collect(),
            ),
        };
        Self { k, n, k2, store }
    }

    /// Where the value at row `r`, column `j` lies in a packed store.
    fn index(k2: usize, r: usize, j: usize) -> usize {
        let (panel, c) = (j / NR, j % NR);
        (panel * (k2 / 2) + r / 2) * STEP + c * 2 + r % 2
    }

    pub fn rows(&self) -> usize {
        self.k
    }
    pub fn cols(&self) -> usize {
        self.n
    }

    /// The stored (bf16) value at row `r`, column `j`.
    pub fn value(&self, r: usize, j: usize) -> f32 {
        match &self.store {
            WeightStore::Packed(p) => from_bf16(p[Self::index(self.k2, r, j)]),
            WeightStore::Rounded(v) => v[r * self.n + j],
        }
    }

    fn isa(&self) -> Bf16Isa {
        match self.store {
            WeightStore::Packed(_) => Bf16Isa::Avx512Bf16,
            WeightStore::Rounded(_) => Bf16Isa::Emulated,
        }
    }
}

/// Rows of activations rounded to bf16 for the kernels: packed bf16 rows `k2` values
/// apart (the padding is zero) for the native kernel, f32 rows `k` apart for the
/// emulated one. Kept between calls so a forward allocates it once.
#[derive(Default)]
pub struct Bf16Rows {
    /// The variant the rows were last filled for.
    isa: Option<Bf16Isa>,
    rows: usize,
    k: usize,
    k2: usize,
    packed: Vec<u16>,
    rounded: Vec<f32>,
}

impl Bf16Rows {
    /// Rounds every row of `x` for `isa`.
    ///
    /// Panics where `isa` is not available on this CPU.
    pub fn fill(&mut self, x: View<'_>, isa: Bf16Isa) {
        isa.check_available();
        let (rows, k) = (x.rows, x.cols);
        let k2 = k.next_multiple_of(2);
        self.isa = Some(isa);
        self.rows = rows;
        self.k = k;
        self.k2 = k2;
        let row_block = 16;
        let src = |r: usize| &x.data[r * x.stride..][..k];
        match isa {
            Bf16Isa::Avx512Bf16 => {
                // Every value is written below (row, then padding): no fill pass first.
                self.packed.resize(rows * k2, 0);
                self.packed
                    .par_chunks_mut((k2 * row_block).max(1))
                    .enumerate()
                    .for_each(|(b, block)| {
                        for (i, row) in block.chunks_exact_mut(k2).enumerate() {
                            let (vals, pad) = row.split_at_mut(k);
                            round_row(src(b * row_block + i), vals, isa);
                            pad.fill(0);
                        }
                    });
            }
            Bf16Isa::Emulated => {
                self.rounded.resize(rows * k, 0.0);
                self.rounded
                    .par_chunks_mut((k * row_block).max(1))
                    .enumerate()
                    .for_each(|(b, block)| {
                        for (i, row) in block.chunks_exact_mut(k).enumerate() {
                            for (o, &v) in row.iter_mut().zip(src(b * row_block + i)) {
                                *o = round(v);
                            }
                        }
                    });
            }
        }
    }

    pub fn rows(&self) -> usize {
        self.rows
    }

    /// Row `r`'s stored (bf16) values.
    pub fn row(&self, r: usize) -> Vec<f32> {
        match self.isa {
            None => Vec::new(),
            Some(Bf16Isa::Avx512Bf16) => self.packed[r * self.k2..][..self.k]
                .iter()
                .map(|&b| from_bf16(b))
                .collect(),
            Some(Bf16Isa::Emulated) => self.rounded[r * self.k..][..self.k].to_vec(),
        }
    }
}

/// Rounds one row into `out` with the variant's own conversion (the vector one where
/// there is one; the tests hold it to [`to_bf16`]).
fn round_row(src: &[f32], out: &mut [u16], isa: Bf16Isa) {
    assert_eq!(src.len(), out.len());
    #[cfg(target_arch = "x86_64")]
    if isa == Bf16Isa::Avx512Bf16 {
        // SAFETY: the callers checked that this variant is available (AVX-512 F/BW/VL
        // and BF16 detected); the lengths match (asserted above).
        unsafe { super::bgemm_x86::round_row(src, out) };
        return;
    }
    let _ = isa;
    for (o, &v) in out.iter_mut().zip(src) {
        *o = to_bf16(v);
    }
}

/// `out = x · w` for every row of `x` (already rounded), written row-major with row
/// stride `out_stride`.
///
/// Panics (before any write) on mismatched shapes, rows and weights laid out for
/// different variants, an output past its slice, or an output stride below the row
/// width.
pub fn matmul(out: &mut [f32], out_stride: usize, x: &Bf16Rows, w: &Bf16Weights) {
    assert_eq!(x.k, w.k, "inner dimensions differ");
    assert_eq!(
        x.isa,
        Some(w.isa()),
        "rows and weights laid out for different kernels"
    );
    match &w.store {
        WeightStore::Rounded(wv) => {
            gemm::matmul(
                out,
                out_stride,
                View::new(&x.rounded, x.rows, x.k),
                View::new(wv, w.k, w.n),
                false,
            );
        }
        WeightStore::Packed(packed) => {
            let panel_len = (w.k2 / 2) * STEP;
            for_each_tile(out, out_stride, (x.rows, w.n), (MR, NR), |at| {
                let tile = Tile {
                    a: &x.packed[at.rows.start * x.k2..][..at.rows.len() * x.k2],
                    rows: at.rows.len(),
                    k2: x.k2,
                    w: &packed[at.panel * panel_len..][..panel_len],
                    cols: at.cols.len(),
                };
                // SAFETY: `for_each_tile` vouches for the rectangle at `dst` (inside
                // `out`, no other tile's); the weights were packed only after
                // `check_available` found AVX-512 BF16 on this CPU.
                unsafe { tile.run(at.dst(), at.stride()) };
            });
        }
    }
}

/// Up to [`MR`] rows against one panel: the inputs of one kernel call.
pub(crate) struct Tile<'a> {
    /// `rows` rows of `k2` bf16 values.
    pub a: &'a [u16],
    pub rows: usize,
    pub k2: usize,
    /// One panel: `k2 / 2` steps of [`STEP`] values.
    pub w: &'a [u16],
    /// Columns of the panel to write (the rest is padding).
    pub cols: usize,
}

impl Tile<'_> {
    /// Writes the tile's `rows × cols` outputs at `dst`, rows `stride` apart.
    ///
    /// # Safety
    /// `dst` must be valid for writes of `cols` f32 at each of `rows` rows `stride`
    /// apart, none of them read or written by anyone else during the call; the CPU
    /// must have AVX-512 F/BW and BF16.
    unsafe fn run(&self, dst: *mut f32, stride: usize) {
        assert!((1..=MR).contains(&self.rows) && self.cols <= NR);
        assert!(self.k2.is_multiple_of(2));
        assert_eq!(self.a.len(), self.rows * self.k2);
        assert_eq!(self.w.len(), self.k2 / 2 * STEP);
        #[cfg(target_arch = "x86_64")]
        // SAFETY: shapes asserted above; the caller vouches for `dst` and the CPU.
        unsafe {
            super::bgemm_x86::tile(self, dst, stride)
        };
        #[cfg(not(target_arch = "x86_64"))]
        unreachable!("packed bf16 weights exist only on x86-64 ({dst:?}, {stride})");
    }
}

/// Best of `reps` square `n`×`n` bf16 products (inputs already rounded), in GFLOP/s:
/// the peak a forward's bf16 matmuls can reach here.
pub fn peak_gflops(n: usize, reps: usize) -> f64 {
    let isa = Bf16Isa::detect();
    let w = Bf16Weights::new(&peak::square_input(n, 1), n, 0..n, isa);
    let mut x = Bf16Rows::default();
    x.fill(View::new(&peak::square_input(n, 2), n, n), isa);
    let mut out = vec![0.0f32; n * n];
    peak::best_rate(n, reps, || matmul(&mut out, n, &x, &w))
}

/// The product of the same bf16 values in f64, and beside each output the sum of
/// its terms' magnitudes (what bounds an f32 summation's error).
pub fn reference(x: &Bf16Rows, w: &Bf16Weights) -> Vec<(f64, f64)> {
    let mut out = Vec::with_capacity(x.rows * w.n);
    for r in 0..x.rows {
        let a = x.row(r);
        for j in 0..w.n {
            let terms = (0..w.k).map(|kk| f64::from(a[kk]) * f64::from(w.value(kk, j)));
            let (sum, mag) = terms.fold((0.0, 0.0), |(s, m), t| (s + t, m + t.abs()));
            out.push((sum, mag));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cpu::test_values;

    #[test]
    fn rounding_is_to_nearest_even_with_nan_infinity_and_subnormals_handled() {
        assert_eq!(to_bf16(1.0), 0x3f80);
        // Halfway cases go to the even neighbour; past halfway, up.
        assert_eq!(to_bf16(f32::from_bits(0x3f80_8000)), 0x3f80);
        assert_eq!(to_bf16(f32::from_bits(0x3f81_8000)), 0x3f82);
        assert_eq!(to_bf16(f32::from_bits(0x3f80_8001)), 0x3f81);
        assert_eq!(to_bf16(f32::MAX), 0x7f80, "rounds up to infinity");
        assert_eq!(to_bf16(f32::NEG_INFINITY), 0xff80);
        assert_eq!(
            to_bf16(f32::from_bits(0x7f80_0001)),
            0x7fc0,
            "signalling NaN made quiet"
        );
        assert_eq!(to_bf16(-1e-39), 0x8000, "subnormal to a signed zero");
        assert_eq!(
            to_bf16(f32::MIN_POSITIVE),
            0x0080,
            "the smallest normal survives"
        );
        for v in test_values(1000, 3, 100.0) {
            let r = round(v);
            assert!((r - v).abs() <= v.abs() / 256.0, "{v} -> {r}");
        }
    }

    /// The vector conversion rounds every class of f32 as [`to_bf16`] does.
    #[test]
    fn variants_round_alike() {
        let mut vals: Vec<f32> = [
            0.0,
            -0.0,
            1.0,
            f32::MAX,
            f32::MIN,
            f32::INFINITY,
            f32::NEG_INFINITY,
            f32::NAN,
            f32::from_bits(0x7f80_0001),
            f32::from_bits(0xffc1_2345),
            f32::MIN_POSITIVE,
            -1e-39,
            1e-45,
            f32::from_bits(0x3f80_8000),
            f32::from_bits(0x3f81_8000),
        ]
        .to_vec();
        let mut s = 12345u32;
        vals.extend((0..4000).map(|_| {
            s = s.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
            f32::from_bits(s)
        }));
        let want: Vec<u16> = vals.iter().map(|&v| to_bf16(v)).collect();
        for isa in Bf16Isa::available() {
            let mut got = vec![0u16; vals.len()];
            round_row(&vals, &mut got, isa);
            for (i, (g, w)) in got.iter().zip(&want).enumerate() {
                assert_eq!(g, w, "{}: {:#010x}", isa.name(), vals[i].to_bits());
            }
        }
    }

    fn product(
        m: usize,
        k: usize,
        n: usize,
        isa: Bf16Isa,
        seed: u32,
    ) -> (Vec<f32>, Vec<(f64, f64)>) {
        let x = test_values(m * k, seed, 2.0);
        let w = test_values(k * n, seed + 1, 0.3);
        let bw = Bf16Weights::new(&w, n, 0..n, isa);
        let mut bx = Bf16Rows::default();
        bx.fill(View::new(&x, m, k), isa);
        let mut out = vec![f32::NAN; m * n];
        matmul(&mut out, n, &bx, &bw);
        (out, reference(&bx, &bw))
    }

    #[test]
    fn every_variant_matches_the_f64_product_of_its_bf16_values() {
        // Odd shapes on purpose: an odd k, partial tiles and panels.
        for &(m, k, n) in &[(1, 3, 1), (7, 37, 70), (13, 384, 129), (6, 1536, 64)] {
            for isa in Bf16Isa::available() {
                let (out, want) = product(m, k, n, isa, 7);
                for (i, (&o, &(w, mag))) in out.iter().zip(&want).enumerate() {
                    // An f32 sum of k exact products: each add rounds by at most half
                    // an ulp of a partial sum, itself below the sum of magnitudes.
                    let tol = k as f64 * f64::from(f32::EPSILON) * mag;
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
    fn variants_round_the_same_values() {
        let (m, k, n) = (5, 77, 9);
        let x = test_values(m * k, 1, 3.0);
        let w = test_values(k * 12, 2, 1.0);
        for isa in Bf16Isa::available() {
            let mut bx = Bf16Rows::default();
            bx.fill(View::new(&x, m, k), isa);
            let bw = Bf16Weights::new(&w, 12, 2..2 + n, isa);
            for r in 0..m {
                let want: Vec<f32> = x[r * k..][..k].iter().map(|&v| round(v)).collect();
                assert_eq!(bx.row(r), want, "{} row {r}", isa.name());
            }
            for r in 0..k {
                for j in 0..n {
                    assert_eq!(bw.value(r, j), round(w[r * 12 + 2 + j]), "{}", isa.name());
                }
            }
        }
    }

    #[test]
    fn ones_sum_exactly() {
        // Every product of a row ±1 with one sign: sums of whole numbers below 2^24
        // are exact in any order, and the odd k leaves a padding row to ignore.
        let (m, k, n) = (MR + 1, 65, NR + 3);
        let x: Vec<f32> = (0..m * k)
            .map(|i| if i % 2 == 0 { 1.0 } else { -1.0 })
            .collect();
        let w: Vec<f32> = (0..k * n)
            .map(|i| if (i / n) % 2 == 0 { 1.0 } else { -1.0 })
            .collect();
        for isa in Bf16Isa::available() {
            let bw = Bf16Weights::new(&w, n, 0..n, isa);
            let mut bx = Bf16Rows::default();
            bx.fill(View::new(&x, m, k), isa);
            let mut out = vec![0.0; m * n];
            matmul(&mut out, n, &bx, &bw);
            // With k odd, x's signs flip from row to row: odd rows sum to −k.
            for (r, row) in out.chunks_exact(n).enumerate() {
                let want = if r % 2 == 0 { k as f32 } else { -(k as f32) };
                assert!(
                    row.iter().all(|&v| v == want),
                    "{} row {r}: {row:?}",
                    isa.name()
                );
            }
        }
    }

    #[test]
    #[should_panic(expected = "inner dimensions differ")]
    fn refuses_mismatched_shapes() {
        let isa = Bf16Isa::Emulated;
        let bw = Bf16Weights::new(&[1.0; 8], 4, 0..4, isa);
        let mut bx = Bf16Rows::default();
        bx.fill(View::new(&[1.0; 6], 2, 3), isa);
        matmul(&mut [0.0; 8], 4, &bx, &bw);
    }
}
