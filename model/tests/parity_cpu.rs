//! The model on the CPU backend against HF transformers (../shared/reference).

use crossbatch_model::backend::{self, BackendChoice};
use crossbatch_model::{CpuKernels, CrossEncoder, Encoded, Layout};
use crossbatch_testkit::parity;

fn cpu_model() -> CrossEncoder {
    let dev = backend::select(BackendChoice::Cpu).expect("cpu backend");
    CrossEncoder::load(
        &crossbatch_model::standin::ensure_default().expect("offline stand-in"),
        dev,
    )
    .expect("stand-in loads")
}

#[test]
fn token_ids_match_reference_for_every_row() {
    let model = cpu_model();
    for (i, row) in crossbatch_testkit::parity::reference_rows()
        .expect("reference rows")
        .iter()
        .enumerate()
    {
        let enc = model.encode(&row.query, &row.passage).expect("encodes");
        assert_eq!(enc.ids, row.input_ids, "input_ids of row {i}");
        assert_eq!(
            enc.type_ids, row.token_type_ids,
            "token_type_ids of row {i}"
        );
        assert_eq!(enc.len(), row.seq_len, "seq_len of row {i}");
    }
}

fn check_logits(model: &CrossEncoder, batch: usize, tol: f64) {
    let rows = crossbatch_testkit::parity::reference_rows().expect("reference rows");
    let encoded: Vec<Encoded> = rows
        .iter()
        .map(|r| model.encode(&r.query, &r.passage).expect("encodes"))
        .collect();
    let mut got = Vec::new();
    for chunk in encoded.chunks(batch) {
        let refs: Vec<&Encoded> = chunk.iter().collect();
        got.extend(model.forward(&refs).expect("forward"));
    }
    let want: Vec<f64> = rows.iter().map(|r| r.logit_f64).collect();
    let worst = parity::worst_error(&got, &want).expect("one score per row");
    eprintln!(
        "{:?} layout, batch {batch}: max |rust - hf_f64| = {:.3e} (row {})",
        model.layout(),
        worst.error,
        worst.row
    );
    assert!(
        worst.error <= tol,
        "row {} differs by {:.3e} > {tol:e}: got {}, reference {}",
        worst.row,
        worst.error,
        got[worst.row],
        rows[worst.row].logit_f64
    );
}

#[test]
fn logits_match_reference_packed_one_by_one_and_batched() {
    let model = cpu_model();
    assert_eq!(model.layout(), Layout::Packed, "CPU runs packed");
    assert_eq!(model.engine(), "fused", "on the fused CPU kernels");
    check_logits(&model, 1, 1e-5);
    check_logits(&model, 16, 1e-5);
    // Every row in one batch: 64 sequences, 3 to 512 tokens.
    check_logits(&model, 64, 1e-5);
}

#[test]
fn logits_match_reference_packed_on_burn_ops() {
    let mut model = cpu_model();
    model.set_cpu_kernels(CpuKernels::Burn);
    check_logits(&model, 16, 1e-5);
}

#[test]
fn logits_match_reference_padded_with_attention_mask() {
    let mut model = cpu_model();
    model.set_layout(Layout::Padded);
    // 64 rows of mixed lengths (3..512) in one padded batch: the mask must hide padding.
    check_logits(&model, 64, 1e-5);
}

#[test]
fn a_pair_scores_the_same_alone_and_inside_a_padded_mixed_batch() {
    let rows = crossbatch_testkit::parity::reference_rows().expect("reference rows");
    for (layout, kernels) in [
        (Layout::Packed, CpuKernels::Fused),
        (Layout::Packed, CpuKernels::Burn),
        (Layout::Padded, CpuKernels::Burn),
    ] {
        let mut model = cpu_model();
        model.set_layout(layout);
        model.set_cpu_kernels(kernels);
        let enc: Vec<Encoded> = rows
            .iter()
            .take(12)
            .map(|r| model.encode(&r.query, &r.passage).expect("encodes"))
            .collect();
        // Row 3's passage is >512 tokens; mix short and long around a short pair.
        let target = &enc[0];
        let alone = model.forward(&[target]).expect("forward")[0];
        let mixed: Vec<&Encoded> = vec![&enc[3], &enc[9], target, &enc[5], &enc[1]];
        assert!(
            mixed.iter().any(|e| e.len() > 2 * target.len()),
            "batch must pad"
        );
        let in_batch = model.forward(&mixed).expect("forward")[2];
        assert!(
            (alone - in_batch).abs() <= 1e-6,
            "{layout:?} on {kernels}: alone {alone} vs in batch {in_batch}"
        );
    }
}

#[test]
fn rejects_malformed_sequences_with_an_error_not_a_panic() {
    let model = cpu_model();
    let empty = Encoded {
        ids: vec![],
        type_ids: vec![],
    };
    assert!(model.forward(&[&empty]).is_err());
    let out_of_vocab = Encoded {
        ids: vec![101, 999_999, 102],
        type_ids: vec![0, 0, 0],
    };
    let err = model
        .forward(&[&out_of_vocab])
        .expect_err("id outside vocab");
    assert!(err.to_string().contains("999999"), "{err}");
    let too_long = Encoded {
        ids: vec![100; 513],
        type_ids: vec![0; 513],
    };
    assert!(model.forward(&[&too_long]).is_err());
}
