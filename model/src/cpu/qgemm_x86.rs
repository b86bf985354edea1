//! The x86 kernels of [`super::qgemm`]: a tile of up to 6 rows against one 64-column
//! panel with AVX-512 VNNI (24 accumulators of 16 lanes), the same with AVX2 in blocks
//! of 4 rows × 16 columns, and the AVX-512 row quantizer. Shapes are checked by
//! [`Tile::run`]'s asserts before these run; what is left to each caller is stated on
//! the function.

use std::arch::x86_64::*;

use super::qgemm::{MR, NR, Tile};

/// Bytes of one k-step of a panel (4 k-values × 64 columns).
const STEP: usize = 4 * NR;

/// # Safety
/// The CPU has AVX-512 F/BW/VL and VNNI; the tile's shapes hold ([`Tile::run`] asserts
/// them); `dst` is valid for writes of `t.cols` f32 at each of `t.rows()` rows `stride`
/// apart, which nothing else accesses during the call.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni")]
pub(super) unsafe fn tile_vnni(t: &Tile<'_>, dst: *mut f32, stride: usize) {
    // SAFETY: passed on from this function's contract.
    unsafe {
        match t.rows() {
            1 => vnni::<1>(t, dst, stride),
            2 => vnni::<2>(t, dst, stride),
            3 => vnni::<3>(t, dst, stride),
            4 => vnni::<4>(t, dst, stride),
            5 => vnni::<5>(t, dst, stride),
            _ => vnni::<MR>(t, dst, stride),
        }
    }
}

/// Lanes `0..n` of 16 (n clamped to 0..=16), as a write mask.
fn mask16(n: usize) -> __mmask16 {
    ((1u32 << n.min(16)) - 1) as __mmask16
}

/// See [`tile_vnni`]; `R == t.rows()`.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni")]
unsafe fn vnni<const R: usize>(t: &Tile<'_>, dst: *mut f32, stride: usize) {
    debug_assert_eq!(R, t.rows());
    let (a, w) = (t.a.as_ptr(), t.w.as_ptr());
    let mut acc = [[_mm512_setzero_si512(); 4]; R];
    // SAFETY: step `s` reads bytes `s * STEP..(s + 1) * STEP` of the panel and bytes
    // `4 s..4 s + 4` of each of the R rows, all inside `t.w` and `t.a` (whose lengths
    // `Tile::run` asserted: k4 / 4 steps, R rows of k4 bytes). Unaligned loads.
    unsafe {
        for s in 0..t.k4 / 4 {
            let wp = w.add(s * STEP).cast::<__m512i>();
            let wv = [
                _mm512_loadu_si512(wp),
                _mm512_loadu_si512(wp.add(1)),
                _mm512_loadu_si512(wp.add(2)),
                _mm512_loadu_si512(wp.add(3)),
            ];
            for (r, acc) in acc.iter_mut().enumerate() {
                let four = a.add(r * t.k4 + 4 * s).cast::<i32>().read_unaligned();
                let av = _mm512_set1_epi32(four);
                for (acc, &wv) in acc.iter_mut().zip(&wv) {
                    *acc = _mm512_dpbusd_epi32(*acc, av, wv);
                }
            }
        }
    }
    for g in 0..4 {
        let mask = mask16(t.cols.saturating_sub(16 * g));
        if mask == 0 {
            break;
        }
        // SAFETY: `offset_sum` and `w_scale` hold NR = 64 values (asserted by
        // `Tile::run`); the masked store writes only columns below `t.cols` of row r,
        // which the caller vouches for (masked-off lanes are not accessed).
        unsafe {
            let off = _mm512_loadu_si512(t.offset_sum.as_ptr().add(16 * g).cast());
            let ws = _mm512_loadu_ps(t.w_scale.as_ptr().add(16 * g));
            for (r, acc) in acc.iter().enumerate() {
                let sum = _mm512_sub_epi32(acc[g], off);
                let y = _mm512_mul_ps(
                    _mm512_mul_ps(_mm512_cvtepi32_ps(sum), ws),
                    _mm512_set1_ps(t.a_scale[r]),
                );
                _mm512_mask_storeu_ps(dst.add(r * stride + 16 * g), mask, y);
            }
        }
    }
}

/// # Safety
/// As [`tile_vnni`], with AVX2 in place of AVX-512.
#[target_feature(enable = "avx2")]
pub(super) unsafe fn tile_avx2(t: &Tile<'_>, dst: *mut f32, stride: usize) {
    for g in 0..4 {
        if 16 * g >= t.cols {
            break;
        }
        let mut r0 = 0;
        while r0 < t.rows() {
            let rows = (t.rows() - r0).min(4);
            // SAFETY: passed on from this function's contract; rows r0..r0 + rows
            // exist in the tile.
            unsafe {
                match rows {
                    1 => avx2::<1>(t, g, r0, dst, stride),
                    2 => avx2::<2>(t, g, r0, dst, stride),
                    3 => avx2::<3>(t, g, r0, dst, stride),
                    _ => avx2::<4>(t, g, r0, dst, stride),
                }
            }
            r0 += rows;
        }
    }
}

/// Rows `r0..r0 + R` of the tile against its 16-column group `g`. `vpmaddubsw` takes
/// unsigned × signed bytes and saturates its pairwise i16 sums, so it gets `|q_x|`
/// (at most 128) and `q_w` with `q_x`'s sign (`vpsignb`; `|q_w| <= 127`): a pair
/// sums to at most 2 · 128 · 127 = 32512, below i16's 32767, so nothing saturates.
#[target_feature(enable = "avx2")]
unsafe fn avx2<const R: usize>(t: &Tile<'_>, g: usize, r0: usize, dst: *mut f32, stride: usize) {
    let (a, w) = (t.a.as_ptr(), t.w.as_ptr());
    let ones = _mm256_set1_epi16(1);
    let flip = _mm256_set1_epi8(i8::MIN);
    let mut acc = [[_mm256_setzero_si256(); 2]; R];
    // SAFETY: as in `vnni`: step s reads 64 bytes of group g inside the panel's step
    // and 4 bytes of each row r0 + r < t.rows(), all inside `t.w` and `t.a`.
    unsafe {
        for s in 0..t.k4 / 4 {
            let wp = w.add(s * STEP + 64 * g).cast::<__m256i>();
            let wv = [_mm256_loadu_si256(wp), _mm256_loadu_si256(wp.add(1))];
            for (r, acc) in acc.iter_mut().enumerate() {
                let four = a
                    .add((r0 + r) * t.k4 + 4 * s)
                    .cast::<i32>()
                    .read_unaligned();
                // The stored bytes are q + 128: flipping the top bit gives q.
                let q = _mm256_xor_si256(_mm256_set1_epi32(four), flip);
                let q_abs = _mm256_abs_epi8(q);
                for (acc, &wv) in acc.iter_mut().zip(&wv) {
                    let pairs = _mm256_maddubs_epi16(q_abs, _mm256_sign_epi8(wv, q));
                    *acc = _mm256_add_epi32(*acc, _mm256_madd_epi16(pairs, ones));
                }
            }
        }
    }
    for h in 0..2 {
        let c0 = 16 * g + 8 * h;
        let cols = t.cols.saturating_sub(c0).min(8);
        if cols == 0 {
            break;
        }
        // SAFETY: `w_scale` holds NR values and c0 + 8 <= NR; the writes are columns
        // c0..c0 + cols (below `t.cols`) of rows r0 + r, which the caller vouches for.
        unsafe {
            let ws = _mm256_loadu_ps(t.w_scale.as_ptr().add(c0));
            for (r, acc) in acc.iter().enumerate() {
                let y = _mm256_mul_ps(
                    _mm256_mul_ps(_mm256_cvtepi32_ps(acc[h]), ws),
                    _mm256_set1_ps(t.a_scale[r0 + r]),
                );
                let out = dst.add((r0 + r) * stride + c0);
                if cols == 8 {
                    _mm256_storeu_ps(out, y);
                } else {
                    let mut tmp = [0.0f32; 8];
                    _mm256_storeu_ps(tmp.as_mut_ptr(), y);
                    std::ptr::copy_nonoverlapping(tmp.as_ptr(), out, cols);
                }
            }
        }
    }
}

/// [`super::qgemm`]'s row quantizer on AVX-512: the same roundings as the scalar one
/// (`vcvtps2dq` rounds ties to even, as `round_ties_even` does; NaN elements become 0
/// and are ignored by the maximum, as `f32::max` ignores them), 16 values at a time.
/// `None` (nothing written) where the row's scale would not be finite: the scalar code
/// takes such a row, so the two agree there too.
///
/// # Safety
/// The CPU has AVX-512 F/BW/VL; `src.len() == out.len()`.
#[target_feature(enable = "avx512f,avx512bw,avx512vl")]
pub(super) unsafe fn quantize_row_avx512(src: &[f32], out: &mut [u8]) -> Option<f32> {
    let n = src.len();
    debug_assert_eq!(n, out.len());
    let (sp, op) = (src.as_ptr(), out.as_mut_ptr());
    // SAFETY: every load and store covers lanes i..i + 16 below n, or is masked to
    // the lanes below n (masked-off lanes are not accessed).
    unsafe {
        let mut m = _mm512_setzero_ps();
        let mut i = 0;
        while i < n {
            let mask = mask16(n - i);
            // A NaN first operand yields the second: NaN never becomes the maximum.
            m = _mm512_max_ps(_mm512_abs_ps(_mm512_maskz_loadu_ps(mask, sp.add(i))), m);
            i += 16;
        }
        let amax = _mm512_reduce_max_ps(m);
        if amax == 0.0 {
            out.fill(128);
            return Some(0.0);
        }
        let inv = 127.0 / amax;
        if !amax.is_finite() || !inv.is_finite() {
            return None;
        }
        let inv = _mm512_set1_ps(inv);
        let (lo, hi, offset) = (
            _mm512_set1_epi32(-127),
            _mm512_set1_epi32(127),
            _mm512_set1_epi32(128),
        );
        let mut i = 0;
        while i < n {
            let mask = mask16(n - i);
            let v = _mm512_mul_ps(_mm512_maskz_loadu_ps(mask, sp.add(i)), inv);
            // NaN lanes to 0, as `as i8` turns the scalar code's NaN into 0.
            let v = _mm512_maskz_mov_ps(_mm512_cmp_ps_mask::<_CMP_ORD_Q>(v, v), v);
            let q = _mm512_min_epi32(_mm512_max_epi32(_mm512_cvtps_epi32(v), lo), hi);
            let bytes = _mm512_cvtepi32_epi8(_mm512_add_epi32(q, offset));
            _mm_mask_storeu_epi8(op.add(i).cast(), mask, bytes);
            i += 16;
        }
        Some(amax / 127.0)
    }
}
