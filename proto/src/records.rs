//! The completion record a driver sends when it finishes one config of its sweep,
//! defined once for the driver that writes it and the collector that reads it. On the
//! wire it is the attributes of a `bench.step` span (keys in [`crate::attrs`]); the
//! collector keeps it, with who sent it and when, and writes it into its JSON.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// One config's completion record: counts of the measured calls (warm-up apart).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct StepRecord {
    /// Index of the config in the sweep, from 0.
    pub step: usize,
    pub batch: usize,
    pub concurrency: usize,
    /// `closed` or `open`.
    pub mode: String,
    pub calls_sent: usize,
    pub calls_ok: usize,
    /// `calls_sent - calls_ok` ([`StepRecord::count_failures`]), sent so that a reader
    /// need not trust the difference of two counts.
    pub calls_failed: usize,
    pub pairs_sent: usize,
    pub pairs_ok: usize,
    pub warmup_calls: usize,
    /// Open loop: calls sent later than scheduled.
    pub late_calls: usize,
    /// The step's wall time on the driver, in seconds.
    pub wall_s: f64,
    /// Stopped before its planned end.
    pub interrupted: bool,
    /// Attempts that failed on one endpoint and were retried on another.
    #[serde(default)]
    pub retries: usize,
    /// Times an endpoint was taken out of rotation.
    #[serde(default)]
    pub ejections: usize,
    /// Per endpoint the driver used in this step (on the wire: one JSON attribute).
    #[serde(default)]
    pub endpoints: Vec<EndpointRecord>,
}

/// One endpoint's share of a step, as the driver that balanced over it saw it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct EndpointRecord {
    /// The address as dialled ("ip:port", or the URL's authority).
    pub endpoint: String,
    /// The last `crossbatch-instance` header seen from it ("" if none).
    pub instance: String,
    /// Measured calls whose final answer came from here.
    pub calls_ok: usize,
    /// Attempts here that failed (retried or not).
    pub attempts_failed: usize,
    /// Attempts here that failed and were retried elsewhere.
    pub retries: usize,
    /// Times it was taken out of rotation.
    pub ejections: usize,
    /// Failed attempts here by status name ("UNAVAILABLE": 3).
    pub codes: BTreeMap<String, usize>,
    /// Out of rotation when the step ended.
    pub ejected_at_end: bool,
    /// When its last OK answer arrived, ns since the Unix epoch (0: never).
    pub last_ok_unix_nano: u64,
}

impl StepRecord {
    /// Sets `calls_failed` from the sent and succeeded counts.
    pub fn count_failures(&mut self) {
        self.calls_failed = self.calls_sent.saturating_sub(self.calls_ok);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serializes_under_the_field_names_reports_use() {
        let mut r = StepRecord {
            step: 2,
            mode: "open".into(),
            calls_sent: 10,
            calls_ok: 7,
            wall_s: 1.5,
            ..Default::default()
        };
        r.count_failures();
        assert_eq!(r.calls_failed, 3);
        let json = serde_json::to_value(&r).expect("serializes");
        assert_eq!(json["calls_failed"], 3);
        assert_eq!(json["wall_s"], 1.5);
        assert_eq!(json["mode"], "open");
        let back: StepRecord = serde_json::from_value(json).expect("parses");
        assert_eq!(back, r);
    }
}
