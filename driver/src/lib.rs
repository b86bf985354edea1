//! crossbatch-driver: Score load against a crossbatch server, closed or open loop,
//! with exact counts, HDR latency summaries and raw samples that merge exactly.

pub mod load;
pub mod stats;
pub mod sweep;
pub mod workload;
