//! crossbatch-server: the cross-encoder (`cross-encoder/ms-marco-MiniLM-L-6-v2`) on
//! Burn, the gRPC service with its dynamic batcher, and the pieces around them
//! (model source, stand-in, backend choice, bench).

pub mod backend;
pub mod batcher;
pub mod bench;
pub mod error;
pub mod gpu_monitor;
pub mod kernel_cache;
pub mod metrics;
pub mod model;
pub mod pairs;
pub mod pyjson;
pub mod resources;
pub mod serve;
pub mod serve_bench;
pub mod service;
pub mod source;
pub mod standin;
pub mod telemetry;
pub mod tokenize;
