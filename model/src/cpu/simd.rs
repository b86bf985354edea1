//! Run-time choice of instruction set for the CPU kernels. The crate is compiled for
//! the baseline of its target (SSE2 on x86-64), so a kernel written as plain loops would
//! never use AVX; [`multiversion!`] compiles its body again with AVX2+FMA and with
//! AVX-512 enabled, and calls the best one this CPU has. The bodies are branch-free
//! loops over fixed-width chunks that the compiler vectorizes at whatever width the
//! enabled features give.
//!
//! A body is generic over its [`Arith`]: how it computes `a * b + c`. The AVX2 and
//! AVX-512 variants fuse it (one rounding, one instruction). x86-64's baseline has no
//! FMA instruction: there `f32::mul_add` is a call to libm's `fmaf` per element (a
//! correctly rounded software emulation, and a call the loop cannot vectorize), so that
//! variant multiplies then adds instead, which SSE2 vectorizes like everything else.
//! Measured on a Xeon with AVX-512 (2 vCPUs), bias + GELU per element: 133 ns through
//! `fmaf`, 12.7 ns unfused on SSE2, 2.2 ns AVX2, 1.5 ns AVX-512.

use std::sync::OnceLock;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Isa {
    /// AVX-512 F/BW/DQ/VL with FMA: 16 lanes.
    Avx512,
    /// AVX2 with FMA: 8 lanes.
    Avx2,
    /// What the target guarantees (SSE2 on x86-64, NEON on aarch64).
    Baseline,
}

impl Isa {
    pub fn name(self) -> &'static str {
        match self {
            Isa::Avx512 => "avx512",
            Isa::Avx2 => "avx2+fma",
            Isa::Baseline => "baseline",
        }
    }

    /// Every variant this CPU can run, best first (tests check each against the others).
    pub fn available() -> Vec<Isa> {
        let best = detect();
        [Isa::Avx512, Isa::Avx2, Isa::Baseline]
            .into_iter()
            .skip_while(|&i| i != best)
            .collect()
    }
}

/// How a kernel body computes `a * b + c` (see the module docs); the numerics of each
/// are measured against f64 in [`super::math`]'s tests.
pub trait Arith {
    /// Whether [`Arith::mul_add`] rounds once.
    const FUSED: bool;
    /// `a * b + c`.
    fn mul_add(a: f32, b: f32, c: f32) -> f32;
    /// The rounding error of a square, `a * a - sq` exactly, where `sq` is `a * a`
    /// rounded (for `|a|` below about 1e19, where `a * 4097` cannot overflow).
    fn square_error(a: f32, sq: f32) -> f32;
}

/// One rounding, through the FMA instruction.
pub enum Fused {}

impl Arith for Fused {
    const FUSED: bool = true;
    #[inline(always)]
    fn mul_add(a: f32, b: f32, c: f32) -> f32 {
        a.mul_add(b, c)
    }
    #[inline(always)]
    fn square_error(a: f32, sq: f32) -> f32 {
        a.mul_add(a, -sq)
    }
}

/// A multiply rounded, then an add rounded: what a CPU without FMA vectorizes.
pub enum Unfused {}

impl Arith for Unfused {
    const FUSED: bool = false;
    #[inline(always)]
    fn mul_add(a: f32, b: f32, c: f32) -> f32 {
        a * b + c
    }
    /// Dekker's product: `a` split into two halves of 12 significant bits (Veltkamp),
    /// whose pairwise products are exact in f32, so the sum below recovers the error.
    #[inline(always)]
    fn square_error(a: f32, sq: f32) -> f32 {
        let c = a * 4097.0;
        let hi = c - (c - a);
        let lo = a - hi;
        ((hi * hi - sq) + 2.0 * hi * lo) + lo * lo
    }
}

/// The arithmetic of the baseline variant: unfused on x86-64 built without FMA, fused
/// where the baseline has the instruction (aarch64's NEON, or an x86-64 build for a CPU
/// with FMA).
#[cfg(all(target_arch = "x86_64", not(target_feature = "fma")))]
pub type BaselineArith = Unfused;
#[cfg(not(all(target_arch = "x86_64", not(target_feature = "fma"))))]
pub type BaselineArith = Fused;

impl Isa {
    /// Whether this variant's kernels round `a * b + c` once ([`Arith::FUSED`]).
    pub fn fused(self) -> bool {
        match self {
            Isa::Avx512 | Isa::Avx2 => true,
            Isa::Baseline => BaselineArith::FUSED,
        }
    }
}

fn detect() -> Isa {
    static BEST: OnceLock<Isa> = OnceLock::new();
    *BEST.get_or_init(detect_uncached)
}

/// `wanted`, or the best this CPU has where `wanted` is beyond it. Called on every
/// kernel call: no allocation, one cached load.
pub fn at_most(wanted: Isa) -> Isa {
    let rank = |i: Isa| match i {
        Isa::Avx512 => 2,
        Isa::Avx2 => 1,
        Isa::Baseline => 0,
    };
    let best = detect();
    if rank(wanted) <= rank(best) {
        wanted
    } else {
        best
    }
}

fn detect_uncached() -> Isa {
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx512f")
            && std::arch::is_x86_feature_detected!("avx512bw")
            && std::arch::is_x86_feature_detected!("avx512dq")
            && std::arch::is_x86_feature_detected!("avx512vl")
            && std::arch::is_x86_feature_detected!("fma")
        {
            return Isa::Avx512;
        }
        if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma")
        {
            return Isa::Avx2;
        }
    }
    Isa::Baseline
}

/// The instruction set the kernels use: the best this CPU has, or a lower one named by
/// `CROSSBATCH_CPU_ISA` (`avx512`, `avx2`, `baseline`) to compare them.
pub fn isa() -> Isa {
    static ISA: OnceLock<Isa> = OnceLock::new();
    *ISA.get_or_init(|| {
        let best = detect();
        let wanted = match std::env::var("CROSSBATCH_CPU_ISA").ok().as_deref() {
            Some("avx512") => Isa::Avx512,
            Some("avx2") => Isa::Avx2,
            Some("baseline") => Isa::Baseline,
            _ => best,
        };
        let chosen = at_most(wanted);
        tracing::debug!(isa = chosen.name(), "CPU kernels");
        chosen
    })
}

/// Defines `fn $name(args)` that runs `body` compiled for [`isa()`], and
/// `fn $with(isa, args)` that runs it compiled for a given one (for tests). The body
/// is generic over `<A: Arith>` (named by the caller) and computes `a * b + c` as
/// `A::mul_add(a, b, c)`: fused in the AVX variants, [`BaselineArith`] in the baseline.
macro_rules! multiversion {
    ($(#[$meta:meta])* $vis:vis fn $name:ident / $with:ident <$arith:ident> ($($arg:ident : $ty:ty),* $(,)?) $body:block) => {
        $(#[$meta])*
        #[allow(clippy::too_many_arguments)]
        $vis fn $name($($arg: $ty),*) {
            $with($crate::cpu::simd::isa(), $($arg),*)
        }

        #[allow(clippy::too_many_arguments)]
        $vis fn $with(isa: $crate::cpu::simd::Isa, $($arg: $ty),*) {
            let isa = $crate::cpu::simd::at_most(isa);
            #[inline(always)]
            #[allow(clippy::too_many_arguments)]
            fn body<$arith: $crate::cpu::simd::Arith>($($arg: $ty),*) $body
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx512f,avx512bw,avx512dq,avx512vl,avx2,fma")]
                #[allow(clippy::too_many_arguments)]
                unsafe fn avx512($($arg: $ty),*) {
                    body::<$crate::cpu::simd::Fused>($($arg),*)
                }
                #[target_feature(enable = "avx2,fma")]
                #[allow(clippy::too_many_arguments)]
                unsafe fn avx2($($arg: $ty),*) {
                    body::<$crate::cpu::simd::Fused>($($arg),*)
                }
                match isa {
                    // SAFETY: `at_most` never returns more than this CPU has.
                    $crate::cpu::simd::Isa::Avx512 => return unsafe { avx512($($arg),*) },
                    $crate::cpu::simd::Isa::Avx2 => return unsafe { avx2($($arg),*) },
                    $crate::cpu::simd::Isa::Baseline => {}
                }
            }
            let _ = isa;
            body::<$crate::cpu::simd::BaselineArith>($($arg),*)
        }
    };
}
pub(crate) use multiversion;
