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
    fn synthetic_pairs_have_the_asked_length() {
        let e = synthetic(64, 30522);
        assert_eq!(e.len(), 64);
        assert_eq!(e.ids[0], 101);
        assert_eq!(e.ids[63], 102);
        assert_eq!(e.type_ids.len(), 64);
    }
}
