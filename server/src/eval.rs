//! `crossbatch-server eval`: what a number format does to the scores, measured on the
//! user's own pairs. Each dtype is set beside f32 computed by the same kernels:
//! logits (max and mean |Δ|, and against a reference logit where the pair file carries
//! one), pooled [CLS] vectors (cosine: meaningful even where a head is not), and on a
//! reranking set (many passages per query) whether each query's order holds
//! (Spearman's ρ and top-3 overlap).

use serde::Serialize;

use crossbatch_model::{CrossEncoder, Encoded, ModelError};

/// One scored set: a logit and a pooled vector per pair.
#[derive(Clone)]
pub struct Scored {
    pub logits: Vec<f32>,
    pub pooled: Vec<Vec<f32>>,
}

/// Scores `encoded` in forwards of `batch` pairs.
pub fn score(
    model: &CrossEncoder,
    encoded: &[Encoded],
    batch: usize,
) -> Result<Scored, ModelError> {
    let mut logits = Vec::with_capacity(encoded.len());
    let mut pooled = Vec::with_capacity(encoded.len());
    let h = model.config().hidden_size;
    for chunk in encoded.chunks(batch.max(1)) {
        let refs: Vec<&Encoded> = chunk.iter().collect();
        let (l, p) = model.forward_pooled(&refs)?;
        logits.extend(l);
        pooled.extend(p.chunks_exact(h).map(<[f32]>::to_vec));
    }
    Ok(Scored { logits, pooled })
}

/// Max and mean of |a − b| over pairs.
#[derive(Debug, Clone, Copy, Serialize, Default)]
pub struct Delta {
    pub max: f64,
    pub mean: f64,
}

impl Delta {
    pub fn of(a: impl IntoIterator<Item = f64>, b: impl IntoIterator<Item = f64>) -> Self {
        let (mut max, mut sum, mut n) = (0.0f64, 0.0, 0usize);
        for (x, y) in a.into_iter().zip(b) {
            let d = (x - y).abs();
            // A NaN logit must show as NaN, not vanish in `f64::max`.
            if d.is_nan() || d > max {
                max = d;
            }
            sum += d;
            n += 1;
        }
        Self {
            max,
            mean: if n == 0 { 0.0 } else { sum / n as f64 },
        }
    }
}

/// Cosine similarity in f64 (1 for two zero vectors: nothing moved).
pub fn cosine(a: &[f32], b: &[f32]) -> f64 {
    let (mut ab, mut aa, mut bb) = (0.0f64, 0.0f64, 0.0f64);
    for (&x, &y) in a.iter().zip(b) {
        let (x, y) = (f64::from(x), f64::from(y));
        ab += x * y;
        aa += x * x;
        bb += y * y;
    }
    match (aa == 0.0, bb == 0.0) {
        (true, true) => return 1.0,
        (true, false) | (false, true) => return 0.0,
        _ => {}
    }
    ab / (aa.sqrt() * bb.sqrt())
}

/// Ranks from 1, ties given the mean of the ranks they span.
fn ranks(v: &[f32]) -> Vec<f64> {
    let mut idx: Vec<usize> = (0..v.len()).collect();
    idx.sort_by(|&a, &b| v[a].total_cmp(&v[b]));
    let mut r = vec![0.0; v.len()];
    let mut i = 0;
    while i < idx.len() {
        let mut j = i;
        while j + 1 < idx.len() && v[idx[j + 1]] == v[idx[i]] {
            j += 1;
        }
        let mean = (i + j) as f64 / 2.0 + 1.0;
        for &k in &idx[i..=j] {
            r[k] = mean;
        }
        i = j + 1;
    }
    r
}

/// Spearman's ρ: the Pearson correlation of the ranks (ties averaged). 1 when both
/// orders agree; where either list is constant, 1 if both are, else 0.
pub fn spearman(a: &[f32], b: &[f32]) -> f64 {
    let (ra, rb) = (ranks(a), ranks(b));
    let n = ra.len() as f64;
    let (ma, mb) = (ra.iter().sum::<f64>() / n, rb.iter().sum::<f64>() / n);
    let (mut ab, mut aa, mut bb) = (0.0, 0.0, 0.0);
    for (x, y) in ra.iter().zip(&rb) {
        ab += (x - ma) * (y - mb);
        aa += (x - ma) * (x - ma);
        bb += (y - mb) * (y - mb);
    }
    match (aa == 0.0, bb == 0.0) {
        (true, true) => 1.0,
        (true, false) | (false, true) => 0.0,
        _ => ab / (aa * bb).sqrt(),
    }
}

/// Indices of the `k` highest scores (ties broken by position).
fn top(v: &[f32], k: usize) -> Vec<usize> {
    let mut idx: Vec<usize> = (0..v.len()).collect();
    idx.sort_by(|&a, &b| v[b].total_cmp(&v[a]).then(a.cmp(&b)));
    idx.truncate(k);
    idx
}

/// The share of `b`'s top `k` that is also in `a`'s.
pub fn top_k_overlap(a: &[f32], b: &[f32], k: usize) -> f64 {
    let k = k.min(a.len());
    if k == 0 {
        return 1.0;
    }
    let ta = top(a, k);
    top(b, k).iter().filter(|i| ta.contains(i)).count() as f64 / k as f64
}

/// One dtype against f32 on one pair set.
#[derive(Debug, Clone, Serialize)]
pub struct SetAccuracy {
    pub pairs: usize,
    /// |Δlogit| against f32 from the same kernels.
    pub vs_f32: Delta,
    /// |Δlogit| against the pair file's reference logits, where it has them.
    pub vs_reference: Option<Delta>,
    /// Cosine of the pooled [CLS] vectors against f32: the lowest and the mean.
    pub cosine_min: f64,
    pub cosine_mean: f64,
}

impl SetAccuracy {
    pub fn of(s: &Scored, f32s: &Scored, reference: Option<&[f64]>) -> Self {
        let widen = |v: &[f32]| v.iter().map(|&x| f64::from(x)).collect::<Vec<_>>();
        let cos: Vec<f64> = s
            .pooled
            .iter()
            .zip(&f32s.pooled)
            .map(|(a, b)| cosine(a, b))
            .collect();
        Self {
            pairs: s.logits.len(),
            vs_f32: Delta::of(widen(&s.logits), widen(&f32s.logits)),
            vs_reference: reference.map(|r| Delta::of(widen(&s.logits), r.iter().copied())),
            cosine_min: cos.iter().copied().fold(f64::INFINITY, f64::min),
            cosine_mean: cos.iter().sum::<f64>() / cos.len().max(1) as f64,
        }
    }
}

/// Per-query ranking agreement with f32 on a reranking set.
#[derive(Debug, Clone, Serialize)]
pub struct Ranking {
    pub queries: usize,
    pub passages_per_query: usize,
    pub spearman_mean: f64,
    pub spearman_min: f64,
    /// Share of f32's top 3 that the dtype also ranks top 3, mean over queries.
    pub top3_mean: f64,
    pub top3_min: f64,
}

impl Ranking {
    /// `s` and `f32s` hold `queries` runs of `per_query` consecutive pairs.
    pub fn of(s: &Scored, f32s: &Scored, per_query: usize) -> Self {
        let per_query = per_query.max(1);
        let (mut rho, mut top3) = (Vec::new(), Vec::new());
        for (a, b) in s
            .logits
            .chunks(per_query)
            .zip(f32s.logits.chunks(per_query))
        {
            rho.push(spearman(a, b));
            top3.push(top_k_overlap(b, a, 3));
        }
        let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len().max(1) as f64;
        let min = |v: &[f64]| v.iter().copied().fold(f64::INFINITY, f64::min);
        Self {
            queries: rho.len(),
            passages_per_query: per_query,
            spearman_mean: mean(&rho),
            spearman_min: min(&rho),
            top3_mean: mean(&top3),
            top3_min: min(&top3),
        }
    }
}

/// Everything `eval` measured for one dtype.
#[derive(Debug, Clone, Serialize)]
pub struct DtypeAccuracy {
    pub dtype: String,
    /// The kernels that computed it (e.g. `avx512-vnni`).
    pub device: String,
    pub parity: SetAccuracy,
    pub rerank: SetAccuracy,
    pub ranking: Ranking,
}

/// The table `eval` prints (markdown; values are numbers or names we chose, no peer
/// text).
pub fn markdown(rows: &[DtypeAccuracy], parity_name: &str, rerank_name: &str) -> String {
    let mut s = String::new();
    s.push_str(&format!(
        "Parity set: {parity_name}. Reranking set: {rerank_name}.\n\n\
         | dtype | set | pairs | max \\|Δ\\| vs f32 | mean \\|Δ\\| vs f32 | max \\|Δ\\| vs reference | mean \\|Δ\\| vs reference | cosine min | cosine mean | Spearman mean (min) | top-3 mean (min) |\n\
         |---|---|---|---|---|---|---|---|---|---|---|\n"
    ));
    let opt =
        |d: Option<Delta>, f: fn(Delta) -> f64| d.map_or("–".into(), |d| format!("{:.2e}", f(d)));
    for r in rows {
        for (set, a, rank) in [
            ("parity", &r.parity, None),
            ("rerank", &r.rerank, Some(&r.ranking)),
        ] {
            s.push_str(&format!(
                "| {} | {set} | {} | {:.2e} | {:.2e} | {} | {} | {:.6} | {:.6} | {} | {} |\n",
                r.dtype,
                a.pairs,
                a.vs_f32.max,
                a.vs_f32.mean,
                opt(a.vs_reference, |d| d.max),
                opt(a.vs_reference, |d| d.mean),
                a.cosine_min,
                a.cosine_mean,
                rank.map_or("–".into(), |k| format!(
                    "{:.4} ({:.4})",
                    k.spearman_mean, k.spearman_min
                )),
                rank.map_or("–".into(), |k| format!(
                    "{:.3} ({:.3})",
                    k.top3_mean, k.top3_min
                )),
            ));
        }
    }
    s
}

/// Many passages per query: `queries` runs of `per_query` consecutive pairs.
pub struct RerankSet {
    pub pairs: Vec<(String, String)>,
    pub queries: usize,
    pub per_query: usize,
}

/// A reranking set from a pair file: the first `queries` distinct queries, each with
/// the first `passages` distinct passages (every query ranks the same passages).
pub fn rerank_set(
    pairs: &[crossbatch_proto::pairs::Pair],
    queries: usize,
    passages: usize,
) -> RerankSet {
    let mut qs: Vec<&str> = Vec::new();
    let mut ps: Vec<&str> = Vec::new();
    for p in pairs {
        if qs.len() < queries && !qs.contains(&p.query.as_str()) {
            qs.push(&p.query);
        }
        if ps.len() < passages && !ps.contains(&p.passage.as_str()) {
            ps.push(&p.passage);
        }
    }
    RerankSet {
        pairs: qs
            .iter()
            .flat_map(|q| ps.iter().map(move |p| (q.to_string(), p.to_string())))
            .collect(),
        queries: qs.len(),
        per_query: ps.len(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spearman_of_same_reversed_and_tied_orders() {
        let a = [0.1, 0.5, 0.3, 0.9];
        assert!((spearman(&a, &a) - 1.0).abs() < 1e-12);
        let rev = [0.9, 0.5, 0.7, 0.1];
        assert!((spearman(&a, &rev) + 1.0).abs() < 1e-12);
        // One swap of neighbours among 4: ρ = 1 − 6·2 / (4·15) = 0.8.
        let swapped = [0.1, 0.3, 0.5, 0.9];
        assert!((spearman(&a, &swapped) - 0.8).abs() < 1e-12);
        assert_eq!(ranks(&[2.0, 1.0, 2.0]), vec![2.5, 1.0, 2.5]);
        assert_eq!(spearman(&[1.0, 1.0], &[1.0, 1.0]), 1.0);
        assert_eq!(spearman(&[1.0, 1.0], &[1.0, 2.0]), 0.0);
    }

    #[test]
    fn top_three_overlap_counts_shared_members_not_order() {
        let a = [5.0, 4.0, 3.0, 2.0, 1.0];
        // The same three on top, in another order.
        assert_eq!(top_k_overlap(&a, &[4.0, 5.0, 3.0, 1.0, 0.0], 3), 1.0);
        // Index 3 pushes index 0 out of the top three.
        assert!((top_k_overlap(&a, &[1.0, 4.0, 5.0, 3.0, 0.0], 3) - 2.0 / 3.0).abs() < 1e-12);
        assert!((top_k_overlap(&a, &[5.0, 4.0, 0.0, 9.0, 1.0], 3) - 2.0 / 3.0).abs() < 1e-12);
        assert_eq!(top_k_overlap(&[1.0], &[2.0], 3), 1.0);
    }

    #[test]
    fn cosine_and_deltas() {
        assert!((cosine(&[1.0, 0.0], &[0.0, 2.0])).abs() < 1e-12);
        assert!((cosine(&[1.0, 2.0], &[2.0, 4.0]) - 1.0).abs() < 1e-12);
        assert_eq!(cosine(&[0.0], &[0.0]), 1.0);
        assert_eq!(
            cosine(&[0.0, 0.0], &[1.0, 0.0]),
            0.0,
            "one zero vector: no NaN"
        );
        let nan = Delta::of([1.0, f64::NAN, 3.0], [1.0, 2.0, 3.0]);
        assert!(nan.max.is_nan() && nan.mean.is_nan(), "a NaN logit shows");
        let d = Delta::of([1.0, 2.0, 3.0], [1.5, 2.0, 1.0]);
        assert_eq!((d.max, d.mean), (2.0, 2.5 / 3.0));
    }

    #[test]
    fn rerank_set_crosses_distinct_queries_with_distinct_passages() {
        let p = |q: &str, d: &str| crossbatch_proto::pairs::Pair {
            query: q.into(),
            passage: d.into(),
        };
        let pairs = [p("a", "x"), p("a", "y"), p("b", "x"), p("c", "z")];
        let set = rerank_set(&pairs, 2, 3);
        assert_eq!((set.queries, set.per_query), (2, 3));
        let want: Vec<(String, String)> = [
            ("a", "x"),
            ("a", "y"),
            ("a", "z"),
            ("b", "x"),
            ("b", "y"),
            ("b", "z"),
        ]
        .iter()
        .map(|(q, d)| (q.to_string(), d.to_string()))
        .collect();
        assert_eq!(set.pairs, want);
    }
}
