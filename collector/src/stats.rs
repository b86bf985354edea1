//! The report's statistics, each checked against hand-computed values below.
//! Percentiles are nearest-rank (the smallest value with at least p% of the values at
//! or below it: every reported percentile is a measured value, as the driver's are);
//! the standard deviation is the population one (divide by n).

use serde::Serialize;

/// Index of the nearest-rank `p` quantile (0 < p ≤ 1) in a sorted list of `n` values.
pub fn nearest_rank(n: usize, p: f64) -> usize {
    // The epsilon keeps p·n that is an integer in exact arithmetic (0.07 × 100) from
    // rounding up a rank through float error.
    ((p * n as f64 - 1e-9).ceil() as usize).clamp(1, n) - 1
}

/// Nearest-rank percentile of already sorted values.
pub fn percentile(sorted: &[f64], p: f64) -> Option<f64> {
    (!sorted.is_empty()).then(|| sorted[nearest_rank(sorted.len(), p)])
}

pub fn mean(v: &[f64]) -> Option<f64> {
    (!v.is_empty()).then(|| v.iter().sum::<f64>() / v.len() as f64)
}

/// Population standard deviation.
pub fn std_dev(v: &[f64]) -> Option<f64> {
    let m = mean(v)?;
    Some((v.iter().map(|x| (x - m) * (x - m)).sum::<f64>() / v.len() as f64).sqrt())
}

/// Pearson's correlation coefficient; `None` when undefined (fewer than two points,
/// or either variable constant).
pub fn pearson(x: &[f64], y: &[f64]) -> Option<f64> {
    if x.len() != y.len() || x.len() < 2 {
        return None;
    }
    let (mx, my) = (mean(x)?, mean(y)?);
    let (mut sxy, mut sxx, mut syy) = (0.0, 0.0, 0.0);
    for (a, b) in x.iter().zip(y) {
        sxy += (a - mx) * (b - my);
        sxx += (a - mx) * (a - mx);
        syy += (b - my) * (b - my);
    }
    (sxx > 0.0 && syy > 0.0).then(|| sxy / (sxx * syy).sqrt())
}

/// The distribution figures of one quantity, as the report's tables show them.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Dist {
    pub count: usize,
    pub avg: f64,
    pub min: f64,
    pub max: f64,
    pub std_dev: f64,
    pub p50: f64,
    pub p75: f64,
    pub p90: f64,
    pub p95: f64,
    pub p99: f64,
}

impl Dist {
    /// `None` for no values (the report then says n/a).
    pub fn of(values: &[f64]) -> Option<Dist> {
        let mut v: Vec<f64> = values.iter().copied().filter(|x| x.is_finite()).collect();
        if v.is_empty() {
            return None;
        }
        v.sort_by(f64::total_cmp);
        let p = |q| percentile(&v, q).unwrap_or(f64::NAN);
        Some(Dist {
            count: v.len(),
            avg: mean(&v)?,
            min: v[0],
            max: v[v.len() - 1],
            std_dev: std_dev(&v)?,
            p50: p(0.50),
            p75: p(0.75),
            p90: p(0.90),
            p95: p(0.95),
            p99: p(0.99),
        })
    }
}

/// Per-call throughput of the calls in one latency band.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Bucket {
    /// "< 67.9ms (P50)", "67.9-74.6ms (P50-P75)", …
    pub label: String,
    pub avg: Option<f64>,
    pub min: Option<f64>,
    pub max: Option<f64>,
    pub count: usize,
}

/// Splits calls by latency at the P50, P75 and P90 latencies (nearest rank) into four
/// bands, [0, P50), [P50, P75), [P75, P90), [P90, ∞), and summarises each band's
/// throughput. `latency_ms[i]` and `throughput[i]` belong to the same call.
pub fn latency_buckets(latency_ms: &[f64], throughput: &[f64]) -> Vec<Bucket> {
    let mut sorted = latency_ms.to_vec();
    sorted.sort_by(f64::total_cmp);
    let (Some(p50), Some(p75), Some(p90)) = (
        percentile(&sorted, 0.50),
        percentile(&sorted, 0.75),
        percentile(&sorted, 0.90),
    ) else {
        return Vec::new();
    };
    let bands = [
        (f64::NEG_INFINITY, p50, format!("< {p50:.1}ms (P50)")),
        (p50, p75, format!("{p50:.1}-{p75:.1}ms (P50-P75)")),
        (p75, p90, format!("{p75:.1}-{p90:.1}ms (P75-P90)")),
        (p90, f64::INFINITY, format!(">= {p90:.1}ms (P90+)")),
    ];
    bands
        .into_iter()
        .map(|(lo, hi, label)| {
            let tp: Vec<f64> = latency_ms
                .iter()
                .zip(throughput)
                .filter(|(l, _)| **l >= lo && **l < hi)
                .map(|(_, t)| *t)
                .collect();
            Bucket {
                label,
                avg: mean(&tp),
                min: tp.iter().copied().min_by(f64::total_cmp),
                max: tp.iter().copied().max_by(f64::total_cmp),
                count: tp.len(),
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() < 1e-9
    }

    #[test]
    fn nearest_rank_by_hand() {
        // 1..=10: p50 → 5, p75 → 8, p90 → 9, p95 → 10, p99 → 10.
        let v: Vec<f64> = (1..=10).map(f64::from).collect();
        assert_eq!(percentile(&v, 0.50), Some(5.0));
        assert_eq!(percentile(&v, 0.75), Some(8.0));
        assert_eq!(percentile(&v, 0.90), Some(9.0));
        assert_eq!(percentile(&v, 0.95), Some(10.0));
        assert_eq!(percentile(&v, 0.99), Some(10.0));
        // 100 values: p7 is the 7th (0.07 × 100 is 7.000000000000001 in floats).
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentile(&v, 0.07), Some(7.0));
        assert_eq!(percentile(&v, 0.99), Some(99.0));
        assert_eq!(percentile(&[42.0], 0.5), Some(42.0));
        assert_eq!(percentile(&[], 0.5), None);
    }

    #[test]
    fn mean_and_population_std_dev_by_hand() {
        // 2,4,4,4,5,5,7,9: mean 5, population variance 4, std dev 2.
        let v = [2.0, 4.0, 4.0, 4.0, 5.0, 5.0, 7.0, 9.0];
        assert_eq!(mean(&v), Some(5.0));
        assert_eq!(std_dev(&v), Some(2.0));
        let d = Dist::of(&v).expect("dist");
        assert_eq!(
            (d.min, d.max, d.p50, d.p90, d.count),
            (2.0, 9.0, 4.0, 9.0, 8)
        );
        assert_eq!(Dist::of(&[]), None);
    }

    #[test]
    fn pearson_by_hand() {
        // y = 2x + 1: r = 1; reversed: r = -1.
        let x = [1.0, 2.0, 3.0, 4.0];
        assert!(close(pearson(&x, &[3.0, 5.0, 7.0, 9.0]).unwrap(), 1.0));
        assert!(close(pearson(&x, &[9.0, 7.0, 5.0, 3.0]).unwrap(), -1.0));
        // x = 1,2,3 and y = 1,3,2: sxy = 1, sxx = 2, syy = 2 → r = 0.5.
        assert!(close(
            pearson(&[1.0, 2.0, 3.0], &[1.0, 3.0, 2.0]).unwrap(),
            0.5
        ));
        assert_eq!(pearson(&[1.0, 1.0], &[2.0, 3.0]), None);
        assert_eq!(pearson(&[1.0], &[2.0]), None);
    }

    #[test]
    fn latency_buckets_by_hand() {
        // Latencies 10..=100 ms step 10 (10 calls), throughput = 8 pairs / latency.
        let lat: Vec<f64> = (1..=10).map(|i| 10.0 * i as f64).collect();
        let tp: Vec<f64> = lat.iter().map(|l| 8.0 / (l / 1e3)).collect();
        let b = latency_buckets(&lat, &tp);
        // P50 = 50, P75 = 80, P90 = 90: bands [10,50) [50,80) [80,90) [90,∞).
        let counts: Vec<usize> = b.iter().map(|b| b.count).collect();
        assert_eq!(counts, vec![4, 3, 1, 2]);
        assert_eq!(b[0].label, "< 50.0ms (P50)");
        assert_eq!(b[1].label, "50.0-80.0ms (P50-P75)");
        assert_eq!(b[3].label, ">= 90.0ms (P90+)");
        // Band 1: latencies 50, 60, 70 → throughput 160, 133.33, 114.29.
        assert!(close(b[1].max.unwrap(), 160.0));
        assert!(close(b[1].min.unwrap(), 8.0 / 0.07));
        assert!(close(
            b[1].avg.unwrap(),
            (160.0 + 8.0 / 0.06 + 8.0 / 0.07) / 3.0
        ));
        assert_eq!(b[2].max, Some(100.0));
        assert!(latency_buckets(&[], &[]).is_empty());
    }
}
