//! The interface the serving side sees: a model that lays batches out one way, has
//! length limits, turns a pair into token ids and scores a batch of them. The server's
//! batcher and service depend on this alone (as text-embeddings-inference's router
//! depends on its backend trait), so they can be tested with a fake in milliseconds.

use std::path::PathBuf;

/// Token ids of one query/passage pair, as the model consumes them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Encoded {
    pub ids: Vec<u32>,
    pub type_ids: Vec<u32>,
}

impl Encoded {
    pub fn len(&self) -> usize {
        self.ids.len()
    }
    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }
}

/// How a batch is laid out for the forward pass (see the module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layout {
    Packed,
    Padded,
}

/// Length a padded batch is laid out at: the longest sequence rounded up to a multiple
/// of 32 (capped by the position table), so a GPU sees at most 16 lengths and compiles
/// and tunes each once, while rounding adds little padding.
pub fn padded_len(max_len: usize, max_positions: usize) -> usize {
    max_len
        .div_ceil(32)
        .max(1)
        .saturating_mul(32)
        .min(max_positions)
        .max(max_len)
}

/// The lengths a scorer accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Tokens per pair after truncation (the tokenizer's maximum).
    pub max_input_tokens: usize,
    /// The position table's size: no padded length exceeds it.
    pub max_positions: usize,
}

impl Limits {
    /// The length a padded batch whose longest pair has `longest` tokens is laid out at.
    pub fn padded_len(&self, longest: usize) -> usize {
        padded_len(longest, self.max_positions)
    }
}

/// The text of a caught panic's payload (`panic!` with a message gives a `String` or
/// a `&str`), or `fallback` for any other payload.
pub fn panic_message(panic: &(dyn std::any::Any + Send), fallback: &str) -> String {
    panic
        .downcast_ref::<String>()
        .cloned()
        .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
        .unwrap_or_else(|| fallback.to_string())
}

/// A model that scores query/passage pairs.
pub trait Scorer: Send + Sync {
    /// How batches are laid out (what a batch of given lengths costs).
    fn layout(&self) -> Layout;
    fn limits(&self) -> Limits;
    /// Token ids of one pair, truncated to the limits.
    fn encode(&self, query: &str, passage: &str) -> Result<Encoded, ModelError>;
    /// Raw logits for a batch, in order. Must not panic on any input `encode` made.
    fn forward(&self, batch: &[&Encoded]) -> Result<Vec<f32>, ModelError>;
}

#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: invalid config: {message}")]
    Config { path: PathBuf, message: String },
    #[error("{path}: {message}")]
    Checkpoint { path: PathBuf, message: String },
    #[error("{path}: tokenizer: {message}")]
    Tokenizer { path: PathBuf, message: String },
    #[error("invalid input: {0}")]
    Input(String),
    #[error("inference failed: {0}")]
    Inference(String),
    #[error("internal error: {0}")]
    Internal(String),
}
