//! How a measured figure is printed everywhere in the report (markdown, HTML, SVG,
//! compare): at the column's precision, except that a small non-zero value keeps two
//! significant digits. A measured 0.02 ms queue wait printed `0.0` would read exactly
//! like an unmeasured zero.

/// `v` with `digits` decimals; a non-zero value that those decimals would show as
/// (nearly) nothing — under 0.1, or under 1 with no decimals — gets two significant
/// digits instead (`0.020`, `0.0031`). Zero stays `0` / `0.0`.
pub fn fig(v: f64, digits: usize) -> String {
    let small = if digits == 0 { 1.0 } else { 0.1 };
    if v == 0.0 || !v.is_finite() || v.abs() >= small {
        return format!("{v:.digits$}");
    }
    // Decimals that leave two significant digits: 0.02 → 3, 0.0031 → 4, 0.5 → 2.
    let magnitude = v.abs().log10().floor() as i32;
    let decimals = (1 - magnitude).clamp(digits as i32, 17) as usize;
    format!("{v:.decimals$}")
}

#[cfg(test)]
mod tests {
    use super::fig;

    #[test]
    fn small_figures_keep_two_significant_digits() {
        assert_eq!(fig(0.02, 1), "0.020");
        assert_eq!(fig(0.0031, 1), "0.0031");
        assert_eq!(fig(0.0031, 2), "0.0031");
        assert_eq!(fig(0.099, 2), "0.099");
        assert_eq!(fig(-0.02, 1), "-0.020");
        assert_eq!(fig(0.000_012_34, 1), "0.000012");
    }

    #[test]
    fn zero_and_ordinary_figures_keep_the_columns_precision() {
        assert_eq!(fig(0.0, 1), "0.0");
        assert_eq!(fig(0.0, 0), "0");
        assert_eq!(fig(0.0, 2), "0.00");
        assert_eq!(fig(0.1, 1), "0.1");
        assert_eq!(fig(12.345, 2), "12.35");
        assert_eq!(fig(7.0, 0), "7");
        assert_eq!(fig(1234.5, 1), "1234.5");
    }

    #[test]
    fn no_decimals_still_shows_a_fraction_below_one() {
        assert_eq!(fig(0.5, 0), "0.50");
        assert_eq!(fig(0.05, 0), "0.050");
        assert_eq!(fig(1.4, 0), "1");
    }

    #[test]
    fn non_finite_values_do_not_panic() {
        assert_eq!(fig(f64::NAN, 1), "NaN");
        assert_eq!(fig(f64::INFINITY, 1), "inf");
    }
}
