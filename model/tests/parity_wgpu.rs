//! The model on burn-wgpu against HF transformers. CI installs the software Vulkan
//! driver (mesa-vulkan-drivers) so this runs there; set CROSSBATCH_REQUIRE_WGPU=1 to
//! make a missing adapter a failure instead of a loud "did not run".

mod common;

use crossbatch_model::backend::{self, BackendChoice, BackendKind};
use crossbatch_model::{CrossEncoder, Encoded, Layout};
use crossbatch_testkit::parity;

#[test]
fn wgpu_logits_match_reference() {
    if !common::wgpu_adapter_or_say("wgpu parity") {
        return;
    }
    let dev = backend::select(BackendChoice::Wgpu).expect("wgpu device");
    assert_eq!(dev.backend, BackendKind::Wgpu);
    eprintln!("wgpu device: {}", dev.name);
    let model = CrossEncoder::load(
        &crossbatch_model::standin::ensure_default().expect("offline stand-in"),
        dev,
    )
    .expect("loads on wgpu");
    assert_eq!(model.layout(), Layout::Padded);

    let rows = crossbatch_testkit::parity::reference_rows().expect("reference rows");
    let encoded: Vec<Encoded> = rows
        .iter()
        .map(|r| model.encode(&r.query, &r.passage).expect("encodes"))
        .collect();
    // Batches of 8 sharing one padded length: 6 shapes for the 64 rows.
    let got = common::score_in_padded_batches(&model, &encoded, 8);
    let want: Vec<f64> = rows.iter().map(|r| r.logit_f64).collect();
    let parity::Worst {
        error: worst,
        row: at,
    } = parity::worst_error(&got, &want).expect("one score per row");
    eprintln!("wgpu: max |rust - hf_f64| = {worst:.3e} (row {at})");
    assert!(worst <= 2e-5, "row {at} differs by {worst:.3e}");
}
