//! Shared by the wgpu integration tests: the adapter check and padded-batch scoring.
#![allow(dead_code)]

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
