//! Query/passage pairs from JSONL (`{"query": …, "passage": …}` per line).

use std::path::Path;

use serde::Deserialize;

#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
pub struct Pair {
    pub query: String,
    pub passage: String,
}

/// One non-blank input line: its 1-based number and the pair or why it is not one.
#[derive(Debug)]
pub struct Line {
    pub number: usize,
    pub pair: Result<Pair, String>,
}

/// Parses every non-blank line; bad lines are kept, with their error, in place.
pub fn parse_jsonl(text: &str) -> Vec<Line> {
    text.lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(i, l)| Line {
            number: i + 1,
            pair: serde_json::from_str::<Pair>(l).map_err(|e| e.to_string()),
        })
        .collect()
}

/// Reads a JSONL file and fails on the first bad line (for benches and tests).
pub fn read_jsonl(path: &Path) -> Result<Vec<Pair>, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    parse_jsonl(&text)
        .into_iter()
        .map(|l| {
            l.pair
                .map_err(|e| format!("{}:{}: {e}", path.display(), l.number))
        })
        .collect()
}
