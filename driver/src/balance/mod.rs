//! Many servers behind one driver: targets (URLs and DNS names), the endpoint pool
//! with per-call balancing, ejection and retries, and the per-endpoint records.

pub mod member;
pub mod pool;
pub mod record;
pub mod targets;

pub use pool::{Balance, CallOutcome, FailedAttempt, Pool, PoolConfig};
pub use targets::{Resolver, Target, parse_targets};
