//! How the packed-weight kernels ([`super::qgemm`], [`super::bgemm`]) measure their own
//! peak: the best of a few square products on fixed pseudo-random inputs, so a forward's
//! rate can be set beside what its matmuls reach on this machine.

use std::time::{Duration, Instant};

/// `n × n` repeatable values in `[-0.5, 0.5)` (an LCG), one matrix per `seed`.
pub(super) fn square_input(n: usize, seed: u64) -> Vec<f32> {
    let mut s = seed;
    (0..n * n)
        .map(|_| {
            s = s
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            (s >> 40) as f32 / (1u64 << 24) as f32 - 0.5
        })
        .collect()
}

/// Runs `product` (an `n`×`n`×`n` product) once to warm up, then `reps` times, and
/// returns the best rate in G-ops/s (2 per multiply-add).
pub(super) fn best_rate(n: usize, reps: usize, mut product: impl FnMut()) -> f64 {
    product();
    let mut best = Duration::MAX;
    for _ in 0..reps.max(1) {
        let t = Instant::now();
        product();
        best = best.min(t.elapsed());
    }
    2.0 * (n as f64).powi(3) / best.as_secs_f64() / 1e9
}
