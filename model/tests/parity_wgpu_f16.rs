//! `--dtype f16` on burn-wgpu: logits within a measured tolerance of the reference, and
//! the ranking a reranker returns unchanged from f32's. Its own test binary: Burn fixes
//! a device's float type once per process, so f16 cannot share a process with the f32
//! wgpu parity test. On the software Vulkan driver in CI; where the adapter has no f16,
//! it says so loudly and does not run.

mod common;

use crossbatch_model::backend::{self, BackendChoice, BackendError, Precision};
use crossbatch_model::{CrossEncoder, Encoded};
use crossbatch_testkit::parity;

/// Max |f16 logit - HF f64 logit| allowed. Worst measured (2026-12-01): 3.6e-4 on the
/// software Vulkan driver (lavapipe, LLVM 15, all 64 rows), 2.0e-4 on an NVIDIA H200 (all 64
/// rows); this leaves room for other CPUs' codegen under lavapipe. The stand-in's logits
/// are small (|x| < 0.071), so this is an absolute bound (f32 holds 2e-5).
const TOL_F16: f64 = 1e-3;

#[test]
fn f16_logits_match_reference_and_rankings_match_f32() {
    if !common::wgpu_adapter_or_say("wgpu f16 parity") {
        return;
    }
    let dev = match backend::select_with(BackendChoice::Wgpu, Precision::F16) {
        Ok(d) => d,
        Err(e @ BackendError::Precision { .. }) => {
            eprintln!("wgpu f16 parity DID NOT RUN: this adapter has no f16: {e}");
            return;
        }
        Err(e) => panic!("wgpu device: {e}"),
    };
    assert_eq!(dev.precision, Precision::F16);
    eprintln!("wgpu device: {}", dev.name);
    let f16 = CrossEncoder::load(
        &crossbatch_model::standin::ensure_default().expect("offline stand-in"),
        dev,
    )
    .expect("loads in f16");
    let cpu = CrossEncoder::load(
        &crossbatch_model::standin::ensure_default().expect("offline stand-in"),
        backend::select(BackendChoice::Cpu).expect("cpu"),
    )
    .expect("loads on the CPU");

    // 1. Logits against the reference, every row (512-token ones included: f16's
    // range is narrowest in long attention rows).
    let rows = crossbatch_testkit::parity::reference_rows().expect("reference rows");
    let encoded: Vec<Encoded> = rows
        .iter()
        .map(|r| f16.encode(&r.query, &r.passage).expect("encodes"))
        .collect();
    let got = common::score_in_padded_batches(&f16, &encoded, 8);
    let want: Vec<f64> = rows.iter().map(|r| r.logit_f64).collect();
    let w = parity::worst_error(&got, &want).expect("one score per row");
    let worst = (w.error, w.row);
    eprintln!(
        "wgpu f16: max |rust - hf_f64| = {:.3e} over {} rows (row {})",
        worst.0,
        rows.len(),
        worst.1
    );
    assert!(
        worst.0 <= TOL_F16,
        "f16 logit of row {} differs by {:.3e} (allowed {TOL_F16:.0e})",
        worst.1,
        worst.0
    );

    // 2. Rankings: four parity queries, each against the same 12 parity passages, as a
    // reranker sees them. Two scores each within the tolerance can swap only when their
    // f32 scores are closer than twice it: such pairs are ties at f16's precision, not
    // asserted, and counted.
    let queries: Vec<&str> = rows
        .iter()
        .step_by(11)
        .take(4)
        .map(|r| r.query.as_str())
        .collect();
    let passages: Vec<&str> = rows
        .iter()
        .skip(1)
        .step_by(4)
        .take(12)
        .map(|r| r.passage.as_str())
        .collect();
    let mut ties = 0;
    let mut compared = 0;
    for q in &queries {
        let enc: Vec<Encoded> = passages
            .iter()
            .map(|p| cpu.encode(q, p).expect("encodes"))
            .collect();
        let s32 = cpu
            .forward(&enc.iter().collect::<Vec<_>>())
            .expect("cpu forward");
        let s16 = common::score_in_padded_batches(&f16, &enc, 8);
        for i in 0..enc.len() {
            for j in i + 1..enc.len() {
                let d32 = s32[i] as f64 - s32[j] as f64;
                if d32.abs() <= 2.0 * TOL_F16 {
                    ties += 1;
                    continue;
                }
                compared += 1;
                let d16 = s16[i] as f64 - s16[j] as f64;
                assert!(
                    d32.signum() == d16.signum(),
                    "query {q:?}: passages {i} and {j} swap places in f16 (f32 {:.5} vs {:.5}, f16 {:.5} vs {:.5})",
                    s32[i],
                    s32[j],
                    s16[i],
                    s16[j]
                );
            }
        }
    }
    eprintln!(
        "wgpu f16: ranking order agrees with f32 on all {compared} passage pairs of {} queries ({ties} pairs within 2 x {TOL_F16:.0e} of each other not compared)",
        queries.len()
    );
    assert!(
        compared > 4 * ties,
        "too few pairs compared ({compared}; {ties} ties)"
    );
}
