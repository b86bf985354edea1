//! `--dtype int8` and `--dtype bf16` on the CPU backend: logits within a measured
//! bound of the HF reference, pooled [CLS] vectors close to f32's, no ranking swap
//! beyond what the bound allows, and the engines that cannot run them refusing with an
//! error. The kernels' own arithmetic (every variant against the others and against
//! f64) is tested in `cpu::qgemm` and `cpu::bgemm`.

use crossbatch_model::backend::{self, BackendChoice, Precision};
use crossbatch_model::{CpuKernels, CrossEncoder, Encoded, ModelError};
use crossbatch_testkit::parity;

/// A format's bounds.
struct Bounds {
    /// Max |logit − HF f64 logit| on the parity rows.
    tol: f64,
    /// Lowest cosine of a pooled [CLS] vector against f32's.
    min_cosine: f64,
}

/// Measured 2026-12-07 on a 2-vCPU Xeon (AVX-512 VNNI): 6.3e-3 (mean 2.3e-3), where
/// ONNX Runtime 1.32's dynamic int8 (per channel) gave 1.06e-2 (mean 2.8e-3) on the
/// same pairs, same machine (`make bench-baseline`); cosine 0.9913. The integer sums
/// are the same on every kernel variant, so other CPUs differ only in the f32 parts; a
/// bound at ONNX Runtime's figure would let a worse quantization pass.
const INT8: Bounds = Bounds {
    tol: 8e-3,
    min_cosine: 0.99,
};

/// Measured 2026-12-07 on a 2-vCPU AMD EPYC (Zen 4): 3.41e-4 with `vdpbf16ps`, 3.39e-4
/// emulated (`CROSSBATCH_CPU_ISA=avx2`); cosine 0.99999 both. The variants round the
/// same bf16 inputs and differ only in the order of their f32 sums.
const BF16: Bounds = Bounds {
    tol: 6e-4,
    min_cosine: 0.9999,
};

fn load(precision: Precision) -> CrossEncoder {
    let dev = backend::select_with(BackendChoice::Cpu, precision).expect("cpu backend");
    CrossEncoder::load(
        &crossbatch_model::standin::ensure_default().expect("offline stand-in"),
        dev,
    )
    .expect("stand-in loads")
}

fn cosine(a: &[f32], b: &[f32]) -> f64 {
    let dot: f64 = a
        .iter()
        .zip(b)
        .map(|(&x, &y)| f64::from(x) * f64::from(y))
        .sum();
    let norm = |v: &[f32]| v.iter().map(|&x| f64::from(x).powi(2)).sum::<f64>().sqrt();
    dot / (norm(a) * norm(b))
}

fn stays_near_the_reference_and_pooled_vectors_near_f32(precision: Precision, b: Bounds) {
    let (f32m, low) = (load(Precision::F32), load(precision));
    assert_eq!(low.device().precision, precision);
    let name = precision.to_string();
    assert!(low.device().name.contains(&name), "{}", low.device().name);
    let rows = parity::reference_rows().expect("reference rows");
    let encoded: Vec<Encoded> = rows
        .iter()
        .map(|r| low.encode(&r.query, &r.passage).expect("encodes"))
        .collect();
    let want: Vec<f64> = rows.iter().map(|r| r.logit_f64).collect();
    let h = low.config().hidden_size;
    for batch in [1, 16] {
        let (mut logits, mut worst_cos) = (Vec::new(), 1.0f64);
        for chunk in encoded.chunks(batch) {
            let refs: Vec<&Encoded> = chunk.iter().collect();
            let (l, p) = low.forward_pooled(&refs).expect("low-precision forward");
            let (l32, p32) = f32m.forward_pooled(&refs).expect("f32 forward");
            assert_eq!(
                low.forward(&refs).expect("forward"),
                l,
                "forward = forward_pooled"
            );
            assert_eq!(l.len(), l32.len());
            for (a, b) in p.chunks_exact(h).zip(p32.chunks_exact(h)) {
                worst_cos = worst_cos.min(cosine(a, b));
            }
            logits.extend(l);
        }
        let w = parity::worst_error(&logits, &want).expect("one score per row");
        eprintln!(
            "{name} batch {batch}: max |{name} - hf_f64| = {:.3e} (row {}), lowest pooled cosine vs f32 {worst_cos:.6}",
            w.error, w.row
        );
        assert!(
            w.error <= b.tol,
            "{name}: row {} differs by {:.3e} > {:e}",
            w.row,
            w.error,
            b.tol
        );
        assert!(
            worst_cos >= b.min_cosine,
            "{name}: pooled cosine {worst_cos} < {}",
            b.min_cosine
        );
    }
}

fn keeps_every_order_that_its_bound_does_not_cover(precision: Precision, b: Bounds) {
    // Four parity queries, each against the same 12 parity passages, as a reranker
    // sees them: two passages whose f32 scores differ by more than twice the bound
    // must keep their order.
    let (f32m, low) = (load(Precision::F32), load(precision));
    let rows = parity::reference_rows().expect("reference rows");
    let (mut compared, mut ties) = (0, 0);
    for q in rows.iter().step_by(11).take(4).map(|r| r.query.as_str()) {
        let enc: Vec<Encoded> = rows
            .iter()
            .skip(1)
            .step_by(4)
            .take(12)
            .map(|r| f32m.encode(q, &r.passage).expect("encodes"))
            .collect();
        let refs: Vec<&Encoded> = enc.iter().collect();
        let (s32, sl) = (
            f32m.forward(&refs).expect("f32"),
            low.forward(&refs).expect("low precision"),
        );
        for i in 0..enc.len() {
            for j in i + 1..enc.len() {
                let d32 = f64::from(s32[i]) - f64::from(s32[j]);
                if d32.abs() <= 2.0 * b.tol {
                    ties += 1;
                    continue;
                }
                compared += 1;
                let dl = f64::from(sl[i]) - f64::from(sl[j]);
                assert_eq!(
                    d32.signum(),
                    dl.signum(),
                    "{precision}, query {q:?}: passages {i} and {j} swap"
                );
            }
        }
    }
    eprintln!(
        "{precision}: order kept on all {compared} passage pairs ({ties} within 2 x {:.0e}, not compared)",
        b.tol
    );
    assert!(compared > 0, "the test compared nothing");
}

fn refuses_the_engines_that_cannot_run_it(precision: Precision) {
    let mut low = load(precision);
    let rows = parity::reference_rows().expect("reference rows");
    let e = low
        .encode(&rows[0].query, &rows[0].passage)
        .expect("encodes");
    low.set_cpu_kernels(CpuKernels::Burn);
    match low.forward(&[&e]) {
        Err(ModelError::Input(m)) => assert!(m.contains(&precision.to_string()), "{m}"),
        other => panic!("burn kernels in {precision} must be refused: {other:?}"),
    }
    let gpu = backend::select_with(BackendChoice::Wgpu, precision);
    if let Ok(d) = gpu {
        panic!("{precision} must not be offered on wgpu ({})", d.name);
    }
}

#[test]
fn int8_logits_stay_near_the_reference_and_pooled_vectors_near_f32() {
    stays_near_the_reference_and_pooled_vectors_near_f32(Precision::Int8, INT8);
}

#[test]
fn int8_keeps_every_order_that_its_bound_does_not_cover() {
    keeps_every_order_that_its_bound_does_not_cover(Precision::Int8, INT8);
}

#[test]
fn int8_refuses_the_engines_that_cannot_run_it() {
    refuses_the_engines_that_cannot_run_it(Precision::Int8);
}

#[test]
fn bf16_logits_stay_near_the_reference_and_pooled_vectors_near_f32() {
    stays_near_the_reference_and_pooled_vectors_near_f32(Precision::Bf16, BF16);
}

#[test]
fn bf16_keeps_every_order_that_its_bound_does_not_cover() {
    keeps_every_order_that_its_bound_does_not_cover(Precision::Bf16, BF16);
}

#[test]
fn bf16_refuses_the_engines_that_cannot_run_it() {
    refuses_the_engines_that_cannot_run_it(Precision::Bf16);
}
