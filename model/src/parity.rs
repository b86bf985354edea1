//! Scores against reference logits: the worst absolute error, where a NaN and a
//! missing or extra score fail the comparison instead of slipping past it.

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
