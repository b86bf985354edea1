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
