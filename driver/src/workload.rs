//! Pairs to send: JSONL `{"query","passage"}`, MS MARCO-style TSV, or a seeded
//! synthetic generator of the same shape. Taken in order, cycling.

use std::path::Path;

/// SplitMix64: a tiny seeded generator, so the synthetic workload and Poisson
/// arrivals are the same on every machine without pulling in `rand`.
#[derive(Debug, Clone)]
pub struct SplitMix(u64);

impl SplitMix {
    pub fn new(seed: u64) -> Self {
        Self(seed)
    }
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    /// Uniform in `lo..=hi`.
    pub fn range(&mut self, lo: usize, hi: usize) -> usize {
        lo + (self.next_u64() % (hi - lo + 1) as u64) as usize
    }
    /// Uniform in (0, 1].
    pub fn unit(&mut self) -> f64 {
        ((self.next_u64() >> 11) as f64 + 1.0) / (1u64 << 53) as f64
    }
}

pub use crossbatch_proto::pairs::Pair;
use crossbatch_proto::pairs::{PairsError, parse_jsonl_strict};

/// Why a workload file gave no pairs: unreadable or a bad line (the shared reader's
/// error, TSV lines included), or empty.
#[derive(Debug, thiserror::Error)]
pub enum WorkloadError {
    #[error(transparent)]
    Pairs(#[from] PairsError),
    #[error("{0}: holds no pairs")]
    Empty(String),
}

/// JSONL by extension `.jsonl`/`.json`/`.ndjson` (the shared reader); otherwise TSV:
/// `query<TAB>passage`, or MS MARCO's `qid<TAB>pid<TAB>query<TAB>passage` (the last two
/// columns are used).
pub fn load(path: &Path) -> Result<Vec<Pair>, WorkloadError> {
    let name = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|source| PairsError::Io {
        path: name.clone(),
        source,
    })?;
    let jsonl = matches!(
        path.extension().and_then(|e| e.to_str()),
        Some("jsonl" | "json" | "ndjson")
    );
    let out = if jsonl {
        parse_jsonl_strict(&name, &text)?
    } else {
        parse_tsv(&name, &text)?
    };
    if out.is_empty() {
        return Err(WorkloadError::Empty(name));
    }
    Ok(out)
}

/// Every non-blank TSV line as a pair, or the first line with fewer than two columns.
fn parse_tsv(name: &str, text: &str) -> Result<Vec<Pair>, PairsError> {
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let cols: Vec<&str> = line.split('\t').collect();
        if cols.len() < 2 {
            return Err(PairsError::Parse {
                path: name.to_string(),
                line: i + 1,
                message: "expected query<TAB>passage".into(),
            });
        }
        out.push(Pair {
            query: cols[cols.len() - 2].to_string(),
            passage: cols[cols.len() - 1].to_string(),
        });
    }
    Ok(out)
}

const WORDS: &[&str] = &[
    "the",
    "river",
    "history",
    "energy",
    "protein",
    "market",
    "climate",
    "system",
    "city",
    "music",
    "engine",
    "language",
    "planet",
    "theory",
    "health",
    "forest",
    "water",
    "design",
    "network",
    "cell",
    "law",
    "price",
    "ocean",
    "school",
    "light",
    "trade",
    "disease",
    "bridge",
    "computer",
    "garden",
    "war",
    "coffee",
    "species",
    "metal",
    "film",
    "insurance",
    "tax",
    "mountain",
    "vaccine",
    "battery",
    "symptom",
    "recipe",
    "salary",
    "island",
    "museum",
];

/// `n` pairs shaped like MS MARCO: queries of 4–12 words, passages of 40–90 words.
pub fn synthetic(n: usize, seed: u64) -> Vec<Pair> {
    let mut rng = SplitMix::new(seed);
    let mut words = |lo: usize, hi: usize| -> String {
        let k = rng.range(lo, hi);
        (0..k)
            .map(|_| WORDS[rng.range(0, WORDS.len() - 1)])
            .collect::<Vec<_>>()
            .join(" ")
    };
    (0..n)
        .map(|_| Pair {
            query: words(4, 12),
            passage: words(40, 90),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn synthetic_is_seeded_and_shaped() {
        let a = synthetic(50, 7);
        assert_eq!(a, synthetic(50, 7));
        assert_ne!(a, synthetic(50, 8));
        for p in &a {
            let q = p.query.split(' ').count();
            let d = p.passage.split(' ').count();
            assert!((4..=12).contains(&q) && (40..=90).contains(&d));
        }
    }

    #[test]
    fn tsv_and_jsonl_parse_and_bad_lines_are_named() {
        let dir = tempfile::tempdir().expect("tmp");
        let tsv = dir.path().join("p.tsv");
        std::fs::write(&tsv, "1\t2\twhat is x\tx is y\nq\tp\n").expect("write");
        let pairs = load(&tsv).expect("tsv");
        assert_eq!(pairs[0].query, "what is x");
        assert_eq!(pairs[1].passage, "p");
        let j = dir.path().join("p.jsonl");
        std::fs::write(&j, "{\"query\":\"a\",\"passage\":\"b\"}\n\nnot json\n").expect("write");
        let err = load(&j).expect_err("bad line").to_string();
        assert!(err.contains(":3:"), "{err}");
    }
}
