//! crossbatch-driver: Score load against a crossbatch server, closed or open loop,
//! with exact counts, exact latency percentiles, client spans over OTLP and raw
//! samples that merge exactly.

pub mod balance;
pub mod coordinated;
pub mod load;
pub mod progress;
pub mod stats;
pub mod sweep;
pub mod telemetry;
pub mod workload;
