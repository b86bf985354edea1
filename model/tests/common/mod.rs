//! Shared by the integration tests: the reference data and the stand-in model.
#![allow(dead_code)]

use std::path::PathBuf;
use std::sync::OnceLock;

use serde::Deserialize;

/// `../shared/reference` beside the checkout, or `$CROSSBATCH_REFERENCE_DIR`.
pub fn reference_dir() -> PathBuf {
    if let Some(p) = std::env::var_os("CROSSBATCH_REFERENCE_DIR") {
        return PathBuf::from(p);
    }
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../shared/reference")
}

#[derive(Debug, Deserialize)]
pub struct ParityRow {
    pub query: String,
    pub passage: String,
    pub input_ids: Vec<u32>,
    pub token_type_ids: Vec<u32>,
    pub seq_len: usize,
    pub logit_f32: f64,
    pub logit_f64: f64,
}

pub fn parity_rows() -> Vec<ParityRow> {
    let path = reference_dir().join("parity-64.jsonl");
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("{}: {e} (set CROSSBATCH_REFERENCE_DIR)", path.display()));
    let rows: Vec<ParityRow> = text
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).expect("parity row"))
        .collect();
    assert_eq!(rows.len(), 64, "parity-64.jsonl should hold 64 rows");
    rows
}

/// The stand-in model directory, built once per machine (cached like the CLI does).
pub fn standin_dir() -> PathBuf {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = crossbatch_model::standin::default_dir();
        crossbatch_model::standin::ensure(&dir).expect("building the offline stand-in")
    })
    .clone()
}

/// True when wgpu finds an adapter. Otherwise says loudly that `test` did not run, and
/// fails instead where `CROSSBATCH_REQUIRE_WGPU=1` (CI, which installs one).
pub fn wgpu_adapter_or_say(test: &str) -> bool {
    if !crossbatch_model::backend::adapters().is_empty() {
        return true;
    }
    let msg = format!("{test} DID NOT RUN: no wgpu adapter (install mesa-vulkan-drivers)");
    if std::env::var("CROSSBATCH_REQUIRE_WGPU").is_ok_and(|v| v == "1") {
        panic!("{msg}, and CROSSBATCH_REQUIRE_WGPU=1");
    }
    eprintln!("{msg}");
    false
}

/// Scores `encoded` on a padded-layout model in batches of exactly `batch` pairs that
/// share one padded length: sorted by length, a short pair is never padded to a long
/// one's length, and a batch of up to 128 tokens short of `batch` pairs is filled with
/// copies of its first pair (their scores dropped). Each (batch, length) shape costs a kernel compile on a
/// software Vulkan driver (up to ~20 s), so few shapes keep the wgpu tests short.
pub fn score_in_padded_batches(
    model: &crossbatch_model::CrossEncoder,
    encoded: &[crossbatch_model::Encoded],
    batch: usize,
) -> Vec<f32> {
    let max_positions = model.config().max_position_embeddings;
    let padded = |i: usize| crossbatch_model::padded_len(encoded[i].len(), max_positions);
    let mut order: Vec<usize> = (0..encoded.len()).collect();
    order.sort_by_key(|&i| encoded[i].len());
    let mut groups: Vec<Vec<usize>> = Vec::new();
    for i in order {
        match groups.last_mut() {
            Some(g) if g.len() < batch && padded(g[0]) == padded(i) => g.push(i),
            _ => groups.push(vec![i]),
        }
    }
    let mut out = vec![f32::NAN; encoded.len()];
    for g in groups {
        let mut refs: Vec<&crossbatch_model::Encoded> = g.iter().map(|&i| &encoded[i]).collect();
        // Filling costs compute, which grows with the length: only short batches are
        // filled (a filled 8 x 512 batch took over a minute there).
        if padded(g[0]) <= 128 {
            refs.resize(batch, &encoded[g[0]]);
        }
        let t = std::time::Instant::now();
        let scores = model.forward(&refs).expect("forward");
        assert_eq!(scores.len(), refs.len(), "one score per pair");
        eprintln!(
            "  {} pairs padded to {} tokens: {:.1} s",
            g.len(),
            padded(g[0]),
            t.elapsed().as_secs_f64()
        );
        for (&i, s) in g.iter().zip(scores) {
            out[i] = s;
        }
    }
    out
}
