//! crossbatch-server: the gRPC service for the cross-encoder, with its dynamic batcher,
//! telemetry and metrics. The batcher and the service see the model only through
//! `crossbatch_model::Scorer`; `serve` is where the concrete model is loaded.

pub mod admission;
pub mod batcher;
pub mod connections;
pub mod error;
pub mod eval;
pub mod instance;
pub mod metrics;
pub mod offline_bench;
pub mod resources;
pub mod serve;
pub mod serve_bench;
pub mod service;
pub mod telemetry;
