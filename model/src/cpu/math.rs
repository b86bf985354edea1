//! exp and the erf GELU for one f32, branch-free so that a loop over a slice
//! vectorizes (libm's `expf`/`erff` are scalar calls the compiler cannot vectorize).
//! Generic over the [`Arith`] of the kernel that inlines them: fused multiply-adds
//! (the AVX variants), or a multiply then an add (x86-64's baseline, no FMA), where the
//! exact square GELU needs comes from Dekker's product instead of an FMA. exp is within
//! 2 ulps of the exact result either way; GELU within 4.5 fused and 5.5 unfused (worst,
//! in its far negative tail) and half an ulp on average; the tests measure both
//! against f64.

// Constants keep the digits they were derived with; the compiler rounds them to f32.
#![allow(clippy::excessive_precision)]

use std::f32::consts::LOG2_E;

use super::simd::Arith;

/// ln 2 split so that `n * LN2_HI` is exact for the `n` used here (Cody & Waite).
const LN2_HI: f32 = 0.693_145_751_953_125;
const LN2_LO: f32 = 1.428_606_765_330_187e-6;
/// Adding then subtracting 1.5 * 2^23 rounds an f32 of magnitude < 2^22 to an integer
/// (ties to even) without a rounding instruction SSE2 lacks.
const ROUND: f32 = 12_582_912.0;
/// Below this, exp underflows f32's normal range: the kernels flush it to 0.
const EXP_MIN: f32 = -87.336_55;
const EXP_MAX: f32 = 88.722_83;

/// `e^(hi + lo)` where `lo` is a small correction to `hi` (|lo| below about 2): the
/// argument's low part survives the range reduction instead of being rounded off.
#[inline(always)]
pub fn exp_parts<A: Arith>(hi: f32, lo: f32) -> f32 {
    let x = hi + lo;
    let xc = x.clamp(EXP_MIN, EXP_MAX);
    let shifted = A::mul_add(xc, LOG2_E, ROUND);
    let n = shifted - ROUND;
    // The integer n sits in the low mantissa bits of `shifted`.
    let ni = (shifted.to_bits() as i32).wrapping_sub(ROUND.to_bits() as i32);
    let r = A::mul_add(-n, LN2_HI, hi);
    let r = A::mul_add(-n, LN2_LO, r) + lo;
    // e^r on |r| <= ln2/2 by its Taylor series to r^7: truncation 6e-9 relative.
    let mut p: f32 = 1.0 / 5040.0;
    p = A::mul_add(p, r, 1.0 / 720.0);
    p = A::mul_add(p, r, 1.0 / 120.0);
    p = A::mul_add(p, r, 1.0 / 24.0);
    p = A::mul_add(p, r, 1.0 / 6.0);
    p = A::mul_add(p, r, 0.5);
    p = A::mul_add(p, r, 1.0);
    p = A::mul_add(p, r, 1.0);
    // 2^n built in two halves so n = 128 (x near EXP_MAX) does not overflow the field.
    let half = ni >> 1;
    let s1 = f32::from_bits(((half + 127) << 23) as u32);
    let s2 = f32::from_bits(((ni - half + 127) << 23) as u32);
    let y = p * s1 * s2;
    if x < EXP_MIN {
        0.0
    } else if x > EXP_MAX {
        f32::INFINITY
    } else {
        y
    }
}

#[inline(always)]
pub fn exp<A: Arith>(x: f32) -> f32 {
    exp_parts::<A>(x, 0.0)
}

/// P(t - C) of `scripts/fit-erfc.py` (degree 10), highest degree first.
const ERFC_C: f32 = 0.589_285_714_285_714_3;
const ERFC_P: [f32; 11] = [
    -1.519_346_598e-1,
    1.375_437_801e-1,
    1.532_263_627e-1,
    -2.385_069_034e-1,
    -6.317_351_645e-2,
    2.931_974_776e-1,
    -2.591_258_081e-2,
    -4.081_215_341e-1,
    8.340_953_760e-2,
    1.369_773_401,
    -5.504_449_810e-1,
];

/// `0.5 * erfc(|x| / sqrt 2)`, the normal tail beyond |x|, with a relative error of a
/// few ulps: `t * exp(-x²/2 + P(t))`, `t = 1 / (1 + |x| / (2 sqrt 2))`, where x² is
/// carried exactly as a sum of two f32s.
#[inline(always)]
fn normal_tail<A: Arith>(x: f32) -> f32 {
    let a = x.abs();
    let t = 1.0 / A::mul_add(a, 0.5 * std::f32::consts::FRAC_1_SQRT_2, 1.0);
    let s = t - ERFC_C;
    let mut p = ERFC_P[0];
    for &c in &ERFC_P[1..] {
        p = A::mul_add(p, s, c);
    }
    // x² = sq + sq_lo exactly; halving is exact.
    let sq = a * a;
    let sq_lo = A::square_error(a, sq);
    0.5 * t * exp_parts::<A>(-0.5 * sq, p - 0.5 * sq_lo)
}

/// GELU with the exact erf, `x * Φ(x)`: Φ(x) is the tail for x < 0 and one minus it
/// otherwise, so both signs keep their relative accuracy.
#[inline(always)]
pub fn gelu<A: Arith>(x: f32) -> f32 {
    let tail = normal_tail::<A>(x);
    let phi = if x < 0.0 { tail } else { 1.0 - tail };
    x * phi
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cpu::simd::{Fused, Unfused};

    /// Distance in ulps between an f32 result and the exact (f64) value.
    fn ulps(got: f32, want: f64) -> f64 {
        let w = want as f32;
        if got == w {
            return 0.0;
        }
        let ulp = (f32::from_bits(w.abs().to_bits() + 1) - w.abs()) as f64;
        (got as f64 - want).abs() / ulp
    }

    /// erfc in f64 to ~1e-15 relative: Taylor series of erf (|x| < 1.5, little
    /// cancellation there) or the continued fraction of erfc.
    fn erfc64(x: f64) -> f64 {
        if x.abs() < 1.5 {
            let mut sum = 0.0;
            let mut term = x;
            let mut n = 0.0;
            while term.abs() > 1e-20 {
                sum += term / (2.0 * n + 1.0);
                n += 1.0;
                term *= -x * x / n;
            }
            1.0 - 2.0 / std::f64::consts::PI.sqrt() * sum
        } else if x > 0.0 {
            // Continued fraction, evaluated bottom-up; 200 terms converge for x >= 1.5.
            let mut f = 0.0;
            for k in (1..200).rev() {
                f = (k as f64 / 2.0) / (x + f);
            }
            (-x * x).exp() / std::f64::consts::PI.sqrt() / (x + f)
        } else {
            2.0 - erfc64(-x)
        }
    }

    fn gelu64(x: f64) -> f64 {
        0.5 * x * erfc64(-x / std::f64::consts::SQRT_2)
    }

    #[test]
    fn reference_erfc_is_right() {
        // Known values: erfc(0.5), erfc(2), erfc(5).
        assert!((erfc64(0.5) - 0.479_500_122_186_953_5).abs() < 1e-15);
        assert!((erfc64(2.0) / 0.004_677_734_981_047_266 - 1.0).abs() < 1e-14);
        assert!((erfc64(3.0) / 2.209_049_699_858_544e-5 - 1.0).abs() < 1e-14);
        assert!((erfc64(1.4) / 0.047_714_880_237_351_6 - 1.0).abs() < 1e-14);
        assert!((erfc64(1.6) / 0.023_651_616_655_355_9 - 1.0).abs() < 1e-14);
        assert!((erfc64(5.0) / 1.537_459_794_428_035e-12 - 1.0).abs() < 1e-12);
    }

    /// Worst ulp error of exp over its range, and where.
    fn exp_worst<A: Arith>() -> (f64, f32) {
        let mut worst = (0.0, 0.0);
        let mut x = -87.0f32;
        while x < 88.0 {
            let e = ulps(exp::<A>(x), (x as f64).exp());
            if e > worst.0 {
                worst = (e, x);
            }
            x += 0.000_37;
        }
        assert_eq!(exp::<A>(-200.0), 0.0);
        assert_eq!(exp::<A>(0.0), 1.0);
        assert_eq!(exp::<A>(200.0), f32::INFINITY);
        worst
    }

    #[test]
    fn exp_is_within_two_ulps_over_its_range_fused_or_not() {
        for (name, (worst, at), bound) in [
            ("fused", exp_worst::<Fused>(), 2.0),
            ("unfused", exp_worst::<Unfused>(), 2.0),
        ] {
            eprintln!("exp {name}: worst {worst:.2} ulp at {at}");
            assert!(worst <= bound, "exp {name} off by {worst} ulp at {at}");
        }
    }

    /// Worst and mean ulp error of GELU over [-10, 10]: relative accuracy; beyond -10
    /// the result is below 1e-22. The worst case sits in the negative tail, where x·Φ(x)
    /// is small; there the usual f32 form 0.5·x·(1 + erf(x/√2)) loses every digit to
    /// cancellation instead.
    fn gelu_error<A: Arith>() -> ((f64, f32), f64) {
        let (mut worst, mut sum, mut n) = ((0.0, 0.0), 0.0, 0);
        let mut x = -10.0f32;
        while x < 10.0 {
            let e = ulps(gelu::<A>(x), gelu64(x as f64));
            if e > worst.0 {
                worst = (e, x);
            }
            sum += e;
            n += 1;
            x += 0.000_13;
        }
        assert_eq!(gelu::<A>(0.0), 0.0);
        assert_eq!(gelu::<A>(30.0), 30.0);
        assert_eq!(gelu::<A>(-30.0), 0.0);
        assert!(gelu::<A>(f32::NAN).is_nan());
        (worst, sum / n as f64)
    }

    #[test]
    fn gelu_is_within_a_few_ulps_where_it_matters_fused_or_not() {
        for (name, ((worst, at), mean), bound) in [
            ("fused", gelu_error::<Fused>(), 4.5),
            ("unfused", gelu_error::<Unfused>(), 5.5),
        ] {
            eprintln!("gelu {name}: worst {worst:.2} ulp at {at}, mean {mean:.3} ulp");
            assert!(worst <= bound, "gelu {name} off by {worst} ulp at {at}");
            assert!(mean <= 0.5, "gelu {name} off by {mean} ulp on average");
        }
    }

    #[test]
    fn dekker_square_error_is_exact() {
        for &a in &[1.1f32, 3.0e-3, 7.77, 1.0e18, 0.333_333_34, 12_345.679] {
            let sq = a * a;
            let exact = a as f64 * a as f64 - sq as f64;
            assert_eq!(Unfused::square_error(a, sq) as f64, exact, "{a}");
            assert_eq!(Fused::square_error(a, sq) as f64, exact, "{a}");
        }
    }
}
