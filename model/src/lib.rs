//! crossbatch-model: the cross-encoder (`cross-encoder/ms-marco-MiniLM-L-6-v2`) on Burn
//! behind a small scoring interface ([`Scorer`]), with what loading it takes: the
//! device choice, the model source and offline stand-in, the tokenizer. The server
//! depends on [`Scorer`] for batching and serving; its offline bench lives in the
//! server, the reference rows the parity tests read in `crossbatch-testkit`.

pub mod backend;
mod bert;
pub mod config;
pub mod cpu;
mod encoder;
pub mod gpu_monitor;
pub mod hub;
pub mod kernel_cache;
pub mod params;
mod pyjson;
pub mod scorer;
pub mod source;
pub mod standin;
pub mod tokenize;
pub mod warmup;
pub mod weights;

pub use bert::Bert;
pub use config::BertConfig;
pub use encoder::{CpuKernels, CrossEncoder, is_standin_head};
pub use scorer::{Encoded, Layout, Limits, ModelError, Scorer, padded_len, panic_message};
pub use warmup::{BatchChoice, WarmupMode, WarmupReport, padded_shapes};
pub use weights::{Checkpoint, KeyLayout};
