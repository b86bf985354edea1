//! Scores against reference logits: the reference rows computed with HF transformers
//! (`../shared/reference/parity-64.jsonl`), and the worst absolute error, where a NaN
//! and a missing or extra score fail the comparison instead of slipping past it.

use std::path::{Path, PathBuf};

use serde::Deserialize;

/// `../shared/reference` beside the checkout, or `$CROSSBATCH_REFERENCE_DIR`.
pub fn reference_dir() -> PathBuf {
    if let Some(p) = std::env::var_os("CROSSBATCH_REFERENCE_DIR") {
        return PathBuf::from(p);
    }
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../shared/reference")
}

/// One row of `parity-64.jsonl`: the pair, HF's token ids and its logits.
#[derive(Debug, Clone, Deserialize)]
pub struct ParityRow {
    pub query: String,
    pub passage: String,
    pub input_ids: Vec<u32>,
    pub token_type_ids: Vec<u32>,
    pub seq_len: usize,
    pub logit_f32: f64,
    pub logit_f64: f64,
}

/// The 64 reference rows, `parity-64.jsonl` in [`reference_dir`].
pub fn reference_rows() -> Result<Vec<ParityRow>, String> {
    let path = reference_dir().join("parity-64.jsonl");
    let rows = load_rows(&path)?;
    if rows.len() != 64 {
        return Err(format!("{}: {} rows, want 64", path.display(), rows.len()));
    }
    Ok(rows)
}

/// The rows of a parity file; an unreadable file or row is an error naming it.
pub fn load_rows(path: &Path) -> Result<Vec<ParityRow>, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("{}: {e} (set CROSSBATCH_REFERENCE_DIR)", path.display()))?;
    text.lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(i, l)| {
            serde_json::from_str(l).map_err(|e| format!("{}:{}: {e}", path.display(), i + 1))
        })
        .collect()
}

/// The largest |got - want| and the row it is at.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Worst {
    pub error: f64,
    pub row: usize,
}

/// The worst error over all rows. A NaN (or infinite) score counts as an infinite
/// error; different lengths are an error naming both.
pub fn worst_error(got: &[f32], want: &[f64]) -> Result<Worst, String> {
    if got.len() != want.len() {
        return Err(format!(
            "{} scores for {} reference rows",
            got.len(),
            want.len()
        ));
    }
    let mut worst = Worst { error: 0.0, row: 0 };
    for (row, (&g, &w)) in got.iter().zip(want).enumerate() {
        let d = (g as f64 - w).abs();
        let d = if d.is_finite() { d } else { f64::INFINITY };
        if d > worst.error {
            worst = Worst { error: d, row };
        }
    }
    Ok(worst)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_worst_row() {
        let w = worst_error(&[0.5, 0.25, -1.0], &[0.5, 0.5, -1.125]).expect("same length");
        assert_eq!(
            w,
            Worst {
                error: 0.25,
                row: 1
            }
        );
    }

    #[test]
    fn a_nan_is_the_worst_possible_error() {
        let w = worst_error(&[0.0, f32::NAN, 1.0], &[0.0, 0.0, 0.5]).expect("same length");
        assert_eq!(w.row, 1);
        assert!(w.error.is_infinite());
    }

    #[test]
    fn missing_or_extra_rows_are_an_error() {
        assert_eq!(
            worst_error(&[0.0], &[0.0, 0.0]),
            Err("1 scores for 2 reference rows".into())
        );
        assert!(worst_error(&[0.0, 0.0, 0.0], &[0.0, 0.0]).is_err());
    }
}
