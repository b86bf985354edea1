//! Query/passage pairs from JSONL (`{"query": …, "passage": …}` per line): the one
//! reader that the server's offline commands and the driver's workloads share.

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

/// Why a pair file could not be read whole.
#[derive(Debug, thiserror::Error)]
pub enum PairsError {
    #[error("{path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("{path}:{line}: {message}")]
    Parse {
        path: String,
        line: usize,
        message: String,
    },
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

/// Every pair of a JSONL text, or the first bad line, named by `path` and number.
pub fn parse_jsonl_strict(path: &str, text: &str) -> Result<Vec<Pair>, PairsError> {
    parse_jsonl(text)
        .into_iter()
        .map(|l| {
            l.pair.map_err(|message| PairsError::Parse {
                path: path.to_string(),
                line: l.number,
                message,
            })
        })
        .collect()
}

/// Reads a JSONL file and fails on its first bad line.
pub fn read_jsonl(path: &Path) -> Result<Vec<Pair>, PairsError> {
    let name = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|source| PairsError::Io {
        path: name.clone(),
        source,
    })?;
    parse_jsonl_strict(&name, &text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_lines_keep_their_place_and_number() {
        let text = "{\"query\":\"a\",\"passage\":\"b\"}\n\n  \nnot json\n{\"query\":\"c\"}\n";
        let lines = parse_jsonl(text);
        let numbers: Vec<usize> = lines.iter().map(|l| l.number).collect();
        assert_eq!(numbers, [1, 4, 5]);
        assert_eq!(
            lines[0].pair.as_ref().expect("a pair"),
            &Pair {
                query: "a".into(),
                passage: "b".into()
            }
        );
        assert!(lines[1].pair.is_err());
        let missing = lines[2].pair.as_ref().expect_err("no passage");
        assert!(missing.contains("passage"), "{missing}");

        let err = parse_jsonl_strict("p.jsonl", text).expect_err("bad line");
        assert_eq!(err.to_string().split(": ").next(), Some("p.jsonl:4"));
    }

    #[test]
    fn a_missing_file_is_named() {
        let err = read_jsonl(Path::new("/nonexistent/pairs.jsonl")).expect_err("no file");
        assert!(matches!(err, PairsError::Io { .. }));
        assert!(
            err.to_string().starts_with("/nonexistent/pairs.jsonl: "),
            "{err}"
        );
    }
}
