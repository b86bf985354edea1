//! Run-time choice of instruction set for the CPU kernels. The crate is compiled for
//! the baseline of its target (SSE2 on x86-64), so a kernel written as plain loops would
//! never use AVX; [`multiversion!`] compiles its body again with AVX2+FMA and with
//! AVX-512 enabled, and calls the best one this CPU has. The bodies are branch-free
//! loops over fixed-width chunks that the compiler vectorizes at whatever width the
//! enabled features give.

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
/// `fn $with(isa, args)` that runs it compiled for a given one (for tests).
macro_rules! multiversion {
    ($(#[$meta:meta])* $vis:vis fn $name:ident / $with:ident ($($arg:ident : $ty:ty),* $(,)?) $body:block) => {
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
            fn body($($arg: $ty),*) $body
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx512f,avx512bw,avx512dq,avx512vl,avx2,fma")]
                #[allow(clippy::too_many_arguments)]
                unsafe fn avx512($($arg: $ty),*) { body($($arg),*) }
                #[target_feature(enable = "avx2,fma")]
                #[allow(clippy::too_many_arguments)]
                unsafe fn avx2($($arg: $ty),*) { body($($arg),*) }
                match isa {
                    // SAFETY: `at_most` never returns more than this CPU has.
                    $crate::cpu::simd::Isa::Avx512 => return unsafe { avx512($($arg),*) },
                    $crate::cpu::simd::Isa::Avx2 => return unsafe { avx2($($arg),*) },
                    $crate::cpu::simd::Isa::Baseline => {}
                }
            }
            let _ = isa;
            body($($arg),*)
        }
    };
}
pub(crate) use multiversion;
