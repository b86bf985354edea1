//! Pair tokenization with the checkpoint's `tokenizer.json`:
//! `[CLS] query [SEP] passage [SEP]`, token type 0 through the first [SEP] and 1 after,
//! truncated longest-first to the model's maximum length, never padded.

use std::path::Path;

use tokenizers::{Tokenizer, TruncationDirection, TruncationParams, TruncationStrategy};

use crate::scorer::{Encoded, ModelError};

pub struct PairTokenizer {
    inner: Tokenizer,
    max_len: usize,
}

impl PairTokenizer {
    /// Loads `tokenizer.json` and overrides whatever truncation and padding it
    /// carries (the stand-in's carries 128 / Fixed(128), which would change scores).
    pub fn from_file(path: &Path, max_len: usize) -> Result<Self, ModelError> {
        let tok_err = |message: String| ModelError::Tokenizer {
            path: path.to_path_buf(),
            message,
        };
        let inner = Tokenizer::from_file(path).map_err(|e| tok_err(e.to_string()))?;
        let mut tok = Self { inner, max_len };
        tok.set_max_len(max_len)
            .map_err(|e| tok_err(e.to_string()))?;
        tok.inner.with_padding(None);
        Ok(tok)
    }

    /// Truncates pairs (longest first) to `max_len` tokens, special tokens included.
    pub fn set_max_len(&mut self, max_len: usize) -> Result<(), ModelError> {
        self.inner
            .with_truncation(Some(TruncationParams {
                max_length: max_len,
                strategy: TruncationStrategy::LongestFirst,
                stride: 0,
                direction: TruncationDirection::Right,
            }))
            .map_err(|e| ModelError::Input(format!("truncation to {max_len} tokens: {e}")))?;
        self.max_len = max_len;
        Ok(())
    }

    /// Longest sequence this tokenizer emits (special tokens included).
    pub fn max_len(&self) -> usize {
        self.max_len
    }

    pub fn encode(&self, query: &str, passage: &str) -> Result<Encoded, ModelError> {
        let enc = self
            .inner
            .encode((query, passage), true)
            .map_err(|e| ModelError::Input(format!("tokenization failed: {e}")))?;
        Ok(Encoded {
            ids: enc.get_ids().to_vec(),
            type_ids: enc.get_type_ids().to_vec(),
        })
    }
}
