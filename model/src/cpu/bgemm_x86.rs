//! The x86 kernels of [`super::bgemm`]: a tile of up to 6 rows against one 64-column
//! panel with AVX-512 BF16 (24 accumulators of 16 f32 lanes), and the row rounding.
//! Shapes are checked by [`Tile::run`]'s asserts before these run; what is left to
//! each caller is stated on the function.

use std::arch::x86_64::*;

use super::bgemm::{MR, STEP, Tile};

/// Lanes `0..n` of 16 (n clamped to 0..=16), as a write mask.
fn mask16(n: usize) -> __mmask16 {
    ((1u32 << n.min(16)) - 1) as __mmask16
}

/// # Safety
/// The CPU has AVX-512 F/BW and BF16; the tile's shapes hold ([`Tile::run`] asserts
/// them); `dst` is valid for writes of `t.cols` f32 at each of `t.rows` rows `stride`
/// apart, which nothing else accesses during the call.
#[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
pub(super) unsafe fn tile(t: &Tile<'_>, dst: *mut f32, stride: usize) {
    // SAFETY: passed on from this function's contract.
    unsafe {
        match t.rows {
            1 => dot::<1>(t, dst, stride),
            2 => dot::<2>(t, dst, stride),
            3 => dot::<3>(t, dst, stride),
            4 => dot::<4>(t, dst, stride),
            5 => dot::<5>(t, dst, stride),
            _ => dot::<MR>(t, dst, stride),
        }
    }
}

/// See [`tile`]; `R == t.rows`.
#[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
unsafe fn dot<const R: usize>(t: &Tile<'_>, dst: *mut f32, stride: usize) {
    debug_assert_eq!(R, t.rows);
    let (a, w) = (t.a.as_ptr(), t.w.as_ptr());
    let mut acc = [[_mm512_setzero_ps(); 4]; R];
    // SAFETY: step `s` reads values `s * STEP..(s + 1) * STEP` of the panel and values
    // `2 s..2 s + 2` of each of the R rows, all inside `t.w` and `t.a` (whose lengths
    // `Tile::run` asserted: k2 / 2 steps, R rows of k2 values). Unaligned loads; the
    // transmutes reinterpret 64 bytes as 32 bf16, which every bit pattern is.
    unsafe {
        for s in 0..t.k2 / 2 {
            let wp = w.add(s * STEP).cast::<__m512i>();
            let wv: [__m512bh; 4] = [
                std::mem::transmute::<__m512i, __m512bh>(_mm512_loadu_si512(wp)),
                std::mem::transmute::<__m512i, __m512bh>(_mm512_loadu_si512(wp.add(1))),
                std::mem::transmute::<__m512i, __m512bh>(_mm512_loadu_si512(wp.add(2))),
                std::mem::transmute::<__m512i, __m512bh>(_mm512_loadu_si512(wp.add(3))),
            ];
            for (r, acc) in acc.iter_mut().enumerate() {
                let pair = a.add(r * t.k2 + 2 * s).cast::<i32>().read_unaligned();
                let av = std::mem::transmute::<__m512i, __m512bh>(_mm512_set1_epi32(pair));
                for (acc, &wv) in acc.iter_mut().zip(&wv) {
                    *acc = _mm512_dpbf16_ps(*acc, av, wv);
                }
            }
        }
    }
    for g in 0..4 {
        let mask = mask16(t.cols.saturating_sub(16 * g));
        if mask == 0 {
            break;
        }
        // SAFETY: the masked store writes only columns below `t.cols` of row r, which
        // the caller vouches for (masked-off lanes are not accessed).
        unsafe {
            for (r, acc) in acc.iter().enumerate() {
                _mm512_mask_storeu_ps(dst.add(r * stride + 16 * g), mask, acc[g]);
            }
        }
    }
}

/// Rounds `src` to bf16 into `out` with `vcvtneps2bf16`, 16 values at a time.
///
/// # Safety
/// The CPU has AVX-512 F/BW/VL and BF16; `src.len() == out.len()`.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512bf16")]
pub(super) unsafe fn round_row(src: &[f32], out: &mut [u16]) {
    let n = src.len();
    debug_assert_eq!(n, out.len());
    let (sp, op) = (src.as_ptr(), out.as_mut_ptr());
    let mut i = 0;
    // SAFETY: every load and store is masked to lanes i..i + 16 below n (masked-off
    // lanes are not accessed); the transmute reinterprets 16 bf16 as 32 bytes.
    unsafe {
        while i < n {
            let mask = mask16(n - i);
            let v = _mm512_cvtneps_pbh(_mm512_maskz_loadu_ps(mask, sp.add(i)));
            let bits = std::mem::transmute::<__m256bh, __m256i>(v);
            _mm256_mask_storeu_epi16(op.add(i).cast(), mask, bits);
            i += 16;
        }
    }
}
