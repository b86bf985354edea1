//! The offline benchmark (`crossbatch-server bench`): forward and tokenization
//! throughput on a pair file, at several batch sizes, with achieved model GFLOP/s
//! beside the device's matmul GFLOP/s.

use std::time::Instant;

use serde::Serialize;

use crossbatch_model::backend::BackendKind;
use crossbatch_model::cpu::PhaseTimes;
use crossbatch_model::{CrossEncoder, Encoded, Layout, ModelError, padded_len};
use crossbatch_proto::pairs::Pair;

#[derive(Debug, Clone, Serialize)]
pub struct BatchResult {
    pub batch: usize,
    /// Pairs per second of forward passes (tokenization excluded), median run.
    pub forward_pairs_per_s: f64,
    /// Model FLOPs of a plain unpadded forward over the real tokens, per second.
    pub model_gflop_per_s: f64,
    /// Tokens the layout computed per pair (real tokens when packed).
    pub computed_tokens_per_pair: f64,
    pub runs_s: Vec<f64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct BenchReport {
    pub backend: String,
    pub device: String,
    /// Float type the model computed in (f32, f16).
    pub dtype: String,
    pub layout: String,
    /// What computed the forward: `fused` or `burn` on the CPU, `wgpu` on a GPU.
    pub engine: String,
    pub pairs: usize,
    pub real_tokens_per_pair: f64,
    pub gflop_per_pair: f64,
    pub tokenize_pairs_per_s: f64,
    pub matmul_gflop_per_s: f64,
    pub batches: Vec<BatchResult>,
    /// Timed passes during which other processes used more than 5% of the machine's
    /// CPU time (Linux only), e.g. "batch 8 pass 2: other processes used 1.2 CPU-s".
    pub contended: Vec<String>,
}

/// Share of the machine's CPU time used by other processes that flags a timed pass.
const CONTENDED: f64 = 0.05;

/// CPU seconds the whole machine and this process have spent busy (Linux /proc).
pub fn busy_seconds() -> Option<(f64, f64)> {
    // USER_HZ is 100 on every Linux this runs on.
    const TICK: f64 = 0.01;
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let fields: Vec<u64> = stat
        .lines()
        .next()?
        .split_whitespace()
        .skip(1)
        .take(8)
        .filter_map(|v| v.parse().ok())
        .collect();
    if fields.len() < 8 {
        return None;
    }
    let machine = fields.iter().sum::<u64>() - fields[3] - fields[4];
    let own = std::fs::read_to_string("/proc/self/stat").ok()?;
    // Fields after the command name (which may hold spaces) start at its ')'.
    let after = own.rsplit_once(')')?.1;
    let f: Vec<&str> = after.split_whitespace().collect();
    let (utime, stime): (u64, u64) = (f.get(11)?.parse().ok()?, f.get(12)?.parse().ok()?);
    Some((machine as f64 * TICK, (utime + stime) as f64 * TICK))
}

/// Runs `f`, returning its wall seconds and the CPU seconds other processes used.
fn timed_pass<T>(f: impl FnOnce() -> T) -> (T, f64, Option<f64>) {
    let before = busy_seconds();
    let t = Instant::now();
    let out = f();
    let wall = t.elapsed().as_secs_f64();
    let other = match (before, busy_seconds()) {
        (Some((m0, o0)), Some((m1, o1))) => Some(((m1 - m0) - (o1 - o0)).max(0.0)),
        _ => None,
    };
    (out, wall, other)
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

pub struct BenchOptions {
    pub batches: Vec<usize>,
    pub repeat: usize,
    pub matmul_n: usize,
}

pub fn run(
    model: &CrossEncoder,
    pairs: &[Pair],
    opts: &BenchOptions,
    mut progress: impl FnMut(&str),
) -> Result<BenchReport, ModelError> {
    // Tokenization, single thread, as the offline path does it.
    let t = Instant::now();
    let encoded: Vec<Encoded> = pairs
        .iter()
        .map(|p| model.encode(&p.query, &p.passage))
        .collect::<Result<_, _>>()?;
    let tokenize_pairs_per_s = pairs.len() as f64 / t.elapsed().as_secs_f64();
    let cfg = model.config();
    let real_tokens: usize = encoded.iter().map(Encoded::len).sum();
    let flops: f64 = encoded
        .iter()
        .map(|e| cfg.flops_per_sequence(e.len()))
        .sum();
    progress(&format!(
        "tokenized {} pairs: {tokenize_pairs_per_s:.0} pairs/s",
        pairs.len()
    ));

    let matmul = model.device().matmul_gflops(opts.matmul_n, 5)?;
    progress(&format!(
        "matmul {n}x{n}x{n}: {matmul:.1} GFLOP/s",
        n = opts.matmul_n
    ));

    let mut batches = Vec::new();
    let mut contended = Vec::new();
    for &batch in &opts.batches {
        let chunks: Vec<Vec<&Encoded>> = encoded
            .chunks(batch.max(1))
            .map(|c| c.iter().collect())
            .collect();
        let computed: usize = match model.layout() {
            Layout::Packed => real_tokens,
            Layout::Padded => chunks
                .iter()
                .map(|c| {
                    let longest = c.iter().map(|e| e.len()).max().unwrap_or(0);
                    c.len() * padded_len(longest, cfg.max_position_embeddings)
                })
                .sum(),
        };
        // Warm-up, untimed. On wgpu every new shape compiles and autotunes kernels the
        // first time, so one whole pass; on the CPU the first batch (allocations).
        if model.device().backend == BackendKind::Wgpu {
            for c in &chunks {
                model.forward(c)?;
            }
        } else {
            model.forward(&chunks[0])?;
        }
        let mut runs = Vec::new();
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get()) as f64;
        for pass in 1..=opts.repeat.max(1) {
            let (result, wall, other) =
                timed_pass(|| chunks.iter().try_for_each(|c| model.forward(c).map(drop)));
            result?;
            runs.push(wall);
            if let Some(other) = other.filter(|&o| o > CONTENDED * wall * cores) {
                let note =
                    format!("batch {batch} pass {pass}: other processes used {other:.1} CPU-s");
                progress(&format!("WARNING: {note}"));
                contended.push(note);
            }
        }
        let secs = median(&mut runs.clone());
        let r = BatchResult {
            batch,
            forward_pairs_per_s: pairs.len() as f64 / secs,
            model_gflop_per_s: flops / secs / 1e9,
            computed_tokens_per_pair: computed as f64 / pairs.len() as f64,
            runs_s: runs,
        };
        progress(&format!(
            "batch {batch}: {:.1} pairs/s, {:.1} GFLOP/s",
            r.forward_pairs_per_s, r.model_gflop_per_s
        ));
        batches.push(r);
    }
    Ok(BenchReport {
        backend: model.device().backend.to_string(),
        device: model.device().name.clone(),
        dtype: model.device().precision.to_string(),
        layout: format!("{:?}", model.layout()).to_lowercase(),
        engine: model.engine(),
        pairs: pairs.len(),
        real_tokens_per_pair: real_tokens as f64 / pairs.len() as f64,
        gflop_per_pair: flops / pairs.len() as f64 / 1e9,
        tokenize_pairs_per_s,
        matmul_gflop_per_s: matmul,
        batches,
        contended,
    })
}

impl BenchReport {
    pub fn markdown(&self) -> String {
        let mut s = format!(
            "backend {} ({} kernels) on {} ({}, {} layout); {} pairs, {:.1} real tokens/pair, {:.2} GFLOP/pair\n\
             tokenization: {:.0} pairs/s (1 thread); matmul peak: {:.1} GFLOP/s\n\n\
             | batch | forward pairs/s | model GFLOP/s | % of matmul | computed tokens/pair |\n\
             |---|---|---|---|---|\n",
            self.backend,
            self.engine,
            self.device,
            self.dtype,
            self.layout,
            self.pairs,
            self.real_tokens_per_pair,
            self.gflop_per_pair,
            self.tokenize_pairs_per_s,
            self.matmul_gflop_per_s
        );
        for b in &self.batches {
            s.push_str(&format!(
                "| {} | {:.1} | {:.1} | {:.0}% | {:.1} |\n",
                b.batch,
                b.forward_pairs_per_s,
                b.model_gflop_per_s,
                100.0 * b.model_gflop_per_s / self.matmul_gflop_per_s,
                b.computed_tokens_per_pair
            ));
        }
        if !self.contended.is_empty() {
            s.push_str("\nWARNING: other processes used the CPU during timed passes:\n");
            for c in &self.contended {
                s.push_str(&format!("- {c}\n"));
            }
        }
        s
    }
}

/// Where one forward's time goes on the fused CPU kernels: every `batch`-pair chunk of
/// `pairs` run once (after one warm-up chunk), phase times summed. `None` where those
/// kernels do not run.
pub fn profile(
    model: &CrossEncoder,
    pairs: &[Pair],
    batch: usize,
) -> Result<Option<PhaseTimes>, ModelError> {
    let encoded: Vec<Encoded> = pairs
        .iter()
        .map(|p| model.encode(&p.query, &p.passage))
        .collect::<Result<_, _>>()?;
    let chunks: Vec<Vec<&Encoded>> = encoded
        .chunks(batch.max(1))
        .map(|c| c.iter().collect())
        .collect();
    let Some(first) = chunks.first() else {
        return Ok(None);
    };
    let mut phases = PhaseTimes::default();
    if model
        .forward_profiled(first, &mut phases)
        .transpose()?
        .is_none()
    {
        return Ok(None);
    }
    phases = Default::default();
    for c in &chunks {
        model.forward_profiled(c, &mut phases).transpose()?;
    }
    Ok(Some(phases))
}

/// The breakdown as a markdown table: phase, ms per forward, share.
pub fn profile_markdown(phases: &PhaseTimes, forwards: usize, batch: usize) -> String {
    let total = phases.total().as_secs_f64();
    let mut s = format!(
        "| phase (batch {batch}, mean of {forwards} forwards) | ms per forward | share |\n|---|---|---|\n"
    );
    for (name, d) in &phases.0 {
        let secs = d.as_secs_f64();
        s.push_str(&format!(
            "| {name} | {:.2} | {:.1}% |\n",
            1e3 * secs / forwards.max(1) as f64,
            100.0 * secs / total.max(1e-12)
        ));
    }
    s.push_str(&format!(
        "| **total** | {:.2} | 100% |\n",
        1e3 * total / forwards.max(1) as f64
    ));
    s
}
