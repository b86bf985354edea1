//! Warm-up before serving. On a GPU every new batch shape costs kernel compilation and
//! autotune the first time it runs (seconds, not milliseconds), so the server runs the
//! shapes its batcher can produce before it reports SERVING: a first call never pays a
//! compile. The padded layout makes that set small: lengths are multiples of 32, and
//! autotune keys round sizes to powers of two, so batch sizes 1, 2, 4, … up to the
//! largest the token budget allows at each length cover every batch.

use std::time::{Duration, Instant};

use crate::encoder::CrossEncoder;
use crate::scorer::{Encoded, Layout, ModelError, padded_len};

/// How much to warm up.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum WarmupMode {
    /// `full` on a hardware GPU, `quick` elsewhere (CPU kernels need no compiling, and a
    /// software rasterizer would take many minutes).
    Auto,
    /// Every padded shape the batcher can produce.
    Full,
    /// One small batch: allocations and the first kernels only.
    Quick,
}

/// What a warm-up ran and how long it took.
#[derive(Debug, Clone)]
pub struct WarmupReport {
    pub mode: WarmupMode,
    /// `(pairs, length)` of every batch run, in order.
    pub shapes: Vec<(usize, usize)>,
    pub elapsed: Duration,
}

/// The batch shapes a full warm-up runs for a padded layout: every multiple of 32 up to
/// `max_len`'s padded length, and per length the powers of two up to the largest batch
/// the limits allow there, plus that largest batch itself.
pub fn padded_shapes(
    max_len: usize,
    max_positions: usize,
    max_batch: usize,
    max_batch_tokens: usize,
) -> Vec<(usize, usize)> {
    let top = padded_len(max_len, max_positions);
    let mut shapes = Vec::new();
    let mut len = 32.min(top);
    loop {
        let largest = max_batch.min(max_batch_tokens / len);
        let mut b = 1;
        while b < largest {
            shapes.push((b, len));
            b *= 2;
        }
        if largest >= 1 {
            shapes.push((largest, len));
        }
        if len >= top {
            break;
        }
        len = (len + 32).min(top);
    }
    shapes
}

impl CrossEncoder {
    /// Runs the warm-up `mode` resolves to for this device and layout.
    pub fn warm_up(
        &self,
        mode: WarmupMode,
        max_batch: usize,
        max_batch_tokens: usize,
    ) -> Result<WarmupReport, ModelError> {
        let gpu = self.device().backend == crate::backend::BackendKind::Wgpu;
        let mode = match mode {
            WarmupMode::Auto if gpu && !self.device().software => WarmupMode::Full,
            WarmupMode::Auto => WarmupMode::Quick,
            m => m,
        };
        let shapes = match (mode, self.layout()) {
            (WarmupMode::Full, Layout::Padded) => padded_shapes(
                self.tokenizer().max_len(),
                self.config().max_position_embeddings,
                max_batch,
                max_batch_tokens,
            ),
            // Packed batches have no fixed shapes to precompile; one of each size is
            // enough for the allocator.
            (WarmupMode::Full, Layout::Packed) => vec![(max_batch.clamp(1, 8), 64)],
            _ => vec![(2, 16)],
        };
        let t = Instant::now();
        for &(pairs, len) in &shapes {
            let one = synthetic(len, self.config().vocab_size);
            let batch: Vec<&Encoded> = std::iter::repeat_n(&one, pairs).collect();
            self.forward(&batch)?;
        }
        Ok(WarmupReport {
            mode,
            shapes,
            elapsed: t.elapsed(),
        })
    }
}

/// What [`CrossEncoder::choose_batch`] measured and chose.
#[derive(Debug, Clone)]
pub struct BatchChoice {
    pub chosen: usize,
    /// `(batch, best seconds per pair)` for every batch size timed.
    pub per_pair: Vec<(usize, f64)>,
    /// Tokens per synthetic pair.
    pub tokens: usize,
}

impl BatchChoice {
    /// e.g. "1: 15.1 ms, 2: 13.2 ms, 4: 12.6 ms, …" per pair.
    pub fn describe(&self) -> String {
        self.per_pair
            .iter()
            .map(|(b, s)| format!("{b}: {:.2} ms", s * 1e3))
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// How far above the best per-pair cost a batch size may be and still be chosen: past
/// it, a larger batch buys throughput; within it, only latency.
pub const NEAR_BEST: f64 = 0.05;

/// The smallest batch whose cost per pair is within [`NEAR_BEST`] of the lowest: on a
/// CPU the per-pair cost flattens early, and a batch larger than that only makes its
/// pairs wait for one another.
pub fn smallest_near_best(per_pair: &[(usize, f64)]) -> Option<usize> {
    let best = per_pair
        .iter()
        .map(|&(_, s)| s)
        .fold(f64::INFINITY, f64::min);
    per_pair
        .iter()
        .filter(|&&(_, s)| s <= best * (1.0 + NEAR_BEST))
        .map(|&(b, _)| b)
        .min()
}

/// Largest batch [`CrossEncoder::choose_batch`] times: the CPU's per-pair cost is flat
/// well before it, and the timing must stay a second or two of start-up.
pub const CHOOSE_UP_TO: usize = 32;

impl CrossEncoder {
    /// Times forwards of 1, 2, 4, … pairs of `tokens` tokens, up to `cap` (and at most
    /// [`CHOOSE_UP_TO`] and what `max_batch_tokens` holds), best of `rounds` each, and
    /// chooses the smallest batch within [`NEAR_BEST`] of the lowest cost per pair.
    pub fn choose_batch(
        &self,
        cap: usize,
        max_batch_tokens: usize,
        tokens: usize,
        rounds: usize,
    ) -> Result<BatchChoice, ModelError> {
        let top = cap
            .min(CHOOSE_UP_TO)
            .min(max_batch_tokens / tokens.max(1))
            .max(1);
        let mut sizes: Vec<usize> = std::iter::successors(Some(1usize), |b| Some(b * 2))
            .take_while(|&b| b < top)
            .collect();
        sizes.push(top);
        let one = synthetic(tokens, self.config().vocab_size);
        let mut per_pair: Vec<(usize, f64)> = sizes.iter().map(|&b| (b, f64::INFINITY)).collect();
        // Rounds go over every size in turn, so a slow moment of a shared machine
        // lands on one round of each rather than on every round of one size.
        for _ in 0..rounds.max(1) {
            for (b, best) in per_pair.iter_mut() {
                let batch: Vec<&Encoded> = std::iter::repeat_n(&one, *b).collect();
                let t = Instant::now();
                self.forward(&batch)?;
                *best = best.min(t.elapsed().as_secs_f64() / *b as f64);
            }
        }
        let chosen = smallest_near_best(&per_pair).unwrap_or(top);
        Ok(BatchChoice {
            chosen,
            per_pair,
            tokens,
        })
    }
}

/// A pair of exactly `len` tokens: `[CLS] q [SEP] p [SEP]` with ordinary word ids.
fn synthetic(len: usize, vocab: usize) -> Encoded {
    let len = len.max(3);
    let word = 2000.min(vocab.saturating_sub(1)) as u32;
    let mut ids = vec![word; len];
    ids[0] = 101.min(vocab.saturating_sub(1)) as u32;
    let sep = 102.min(vocab.saturating_sub(1)) as u32;
    ids[len / 2] = sep;
    ids[len - 1] = sep;
    let type_ids = (0..len).map(|i| u32::from(i > len / 2)).collect();
    Encoded { ids, type_ids }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn padded_shapes_cover_every_length_and_respect_the_limits() {
        // max_len 512, max_batch 96, budget 16384 tokens.
        let s = padded_shapes(512, 512, 96, 16384);
        let lens: Vec<usize> = {
            let mut v: Vec<usize> = s.iter().map(|&(_, l)| l).collect();
            v.dedup();
            v
        };
        assert_eq!(lens, (1..=16).map(|i| i * 32).collect::<Vec<_>>());
        // At 32 tokens: 1..64 in powers of two, then 96 (the max batch).
        let at32: Vec<usize> = s
            .iter()
            .filter(|&&(_, l)| l == 32)
            .map(|&(b, _)| b)
            .collect();
        assert_eq!(at32, vec![1, 2, 4, 8, 16, 32, 64, 96]);
        // At 512 tokens the budget allows 32 pairs.
        let at512: Vec<usize> = s
            .iter()
            .filter(|&&(_, l)| l == 512)
            .map(|&(b, _)| b)
            .collect();
        assert_eq!(at512, vec![1, 2, 4, 8, 16, 32]);
        // At 160 tokens: 16384 / 160 = 102 > 96, so 96.
        let at160: Vec<usize> = s
            .iter()
            .filter(|&&(_, l)| l == 160)
            .map(|&(b, _)| b)
            .collect();
        assert_eq!(at160, vec![1, 2, 4, 8, 16, 32, 64, 96]);
        assert!(s.iter().all(|&(b, l)| b * l <= 16384 && b <= 96));
    }

    #[test]
    fn padded_shapes_for_a_short_model() {
        // A tokenizer capped at 40 tokens pads to 64 at most: two lengths.
        let s = padded_shapes(40, 512, 4, 1 << 20);
        assert_eq!(
            s,
            vec![(1, 32), (2, 32), (4, 32), (1, 64), (2, 64), (4, 64)]
        );
    }

    #[test]
    fn the_smallest_batch_near_the_best_cost_per_pair_is_chosen() {
        // Flat from 8 on (within 5% of the best at 32): 8.
        let flat = [
            (1, 15.0),
            (2, 13.5),
            (4, 12.9),
            (8, 12.5),
            (16, 12.2),
            (32, 12.0),
        ];
        assert_eq!(smallest_near_best(&flat), Some(8));
        // Still falling steeply: the largest.
        let falling = [(1, 40.0), (2, 20.0), (4, 10.0), (8, 5.0)];
        assert_eq!(smallest_near_best(&falling), Some(8));
        // Best at 1 (larger batches cost more per pair): 1.
        assert_eq!(
            smallest_near_best(&[(1, 10.0), (2, 10.6), (4, 11.0)]),
            Some(1)
        );
        assert_eq!(smallest_near_best(&[]), None);
    }

    #[test]
    fn synthetic_pairs_have_the_asked_length() {
        let e = synthetic(64, 30522);
        assert_eq!(e.len(), 64);
        assert_eq!(e.ids[0], 101);
        assert_eq!(e.ids[63], 102);
        assert_eq!(e.type_ids.len(), 64);
    }
}
