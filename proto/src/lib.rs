//! The crossbatch gRPC API, package `crossbatch.v1` (see `crossbatch/v1/crossbatch.proto`).

#[allow(clippy::all, missing_docs)]
pub mod v1 {
    tonic::include_proto!("crossbatch.v1");
}

pub mod client;
pub mod collector_access;
pub mod key_check;
pub mod lifecycle;
pub mod pairs;
pub mod records;
pub mod rejections;

/// Encoded `FileDescriptorSet` of the API, for gRPC server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/crossbatch_descriptor.bin"));

/// The canonical upper-case name of a gRPC status code ("OK", "UNAVAILABLE", …), as
/// span attributes, metrics and reports write it.
pub fn code_name(code: tonic::Code) -> &'static str {
    use tonic::Code::*;
    match code {
        Ok => "OK",
        Cancelled => "CANCELLED",
        Unknown => "UNKNOWN",
        InvalidArgument => "INVALID_ARGUMENT",
        DeadlineExceeded => "DEADLINE_EXCEEDED",
        NotFound => "NOT_FOUND",
        AlreadyExists => "ALREADY_EXISTS",
        PermissionDenied => "PERMISSION_DENIED",
        ResourceExhausted => "RESOURCE_EXHAUSTED",
        FailedPrecondition => "FAILED_PRECONDITION",
        Aborted => "ABORTED",
        OutOfRange => "OUT_OF_RANGE",
        Unimplemented => "UNIMPLEMENTED",
        Internal => "INTERNAL",
        Unavailable => "UNAVAILABLE",
        DataLoss => "DATA_LOSS",
        Unauthenticated => "UNAUTHENTICATED",
    }
}

/// A gRPC status code, compared as a code and written (span attributes, samples files,
/// report JSON) as its canonical name ("OK", "UNAVAILABLE", …).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct StatusCode(pub tonic::Code);

impl StatusCode {
    pub const OK: Self = Self(tonic::Code::Ok);

    pub fn is_ok(self) -> bool {
        self.0 == tonic::Code::Ok
    }
    pub fn name(self) -> &'static str {
        code_name(self.0)
    }
    /// The code a canonical name stands for; `None` for any other text.
    pub fn from_name(name: &str) -> Option<Self> {
        (0..=16)
            .map(tonic::Code::from_i32)
            .find(|&c| code_name(c) == name)
            .map(Self)
    }
}

impl From<tonic::Code> for StatusCode {
    fn from(c: tonic::Code) -> Self {
        Self(c)
    }
}

impl std::fmt::Display for StatusCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl serde::Serialize for StatusCode {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.name())
    }
}

impl<'de> serde::Deserialize<'de> for StatusCode {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let name = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        Self::from_name(&name)
            .ok_or_else(|| serde::de::Error::custom(format!("unknown gRPC status {name:?}")))
    }
}

/// Span names and attribute keys shared by the driver (which writes them) and the
/// collector (which reads them): the contract between the two, in one place.
pub mod attrs {
    /// One Score call, a client span around it; its trace id is the call's.
    pub const CLIENT_SPAN: &str = "client.score";
    /// One config of a sweep finished on one driver (counts, wall time).
    pub const STEP_SPAN: &str = "bench.step";
    /// One driver's whole run finished (totals, the server it measured).
    pub const RUN_SPAN: &str = "bench.run";

    pub const RUN_ID: &str = "bench.run_id";
    pub const DRIVER_ID: &str = "bench.driver_id";
    pub const HOST: &str = "bench.host";
    /// Index of the config in the sweep, from 0.
    pub const STEP: &str = "bench.step";
    pub const BATCH: &str = "bench.batch";
    pub const CONCURRENCY: &str = "bench.concurrency";
    /// Pairs in this call.
    pub const PAIRS: &str = "bench.pairs";
    pub const WARMUP: &str = "bench.warmup";
    /// The status code's name ("OK", "UNAVAILABLE", …).
    pub const STATUS: &str = "bench.status";
    /// When the call was meant to start, ns since the Unix epoch (open loop: the
    /// schedule; closed loop: when it was sent).
    pub const INTENDED_START: &str = "bench.intended_start_unix_nano";
    /// The driver's latency in µs: from the intended start (open loop) or from sending.
    pub const LATENCY_US: &str = "bench.latency_us";
    pub const MODE: &str = "bench.mode";
    /// The replica that gave the call's final answer (its `crossbatch-instance` header;
    /// empty when none answered).
    pub const SERVER_INSTANCE: &str = "server.instance";
    /// The address (ip:port) of the call's final attempt.
    pub const ENDPOINT: &str = "bench.endpoint";
    /// Attempts the call took (1: no retry).
    pub const ATTEMPTS: &str = "bench.attempts";

    // Completion records (`bench.step`, `bench.run`).
    pub const CALLS_SENT: &str = "bench.calls_sent";
    pub const CALLS_OK: &str = "bench.calls_ok";
    pub const CALLS_FAILED: &str = "bench.calls_failed";
    pub const PAIRS_SENT: &str = "bench.pairs_sent";
    pub const PAIRS_OK: &str = "bench.pairs_ok";
    pub const WARMUP_CALLS: &str = "bench.warmup_calls";
    pub const LATE_CALLS: &str = "bench.late_calls";
    pub const WALL_S: &str = "bench.wall_s";
    pub const INTERRUPTED: &str = "bench.interrupted";
    pub const STEPS_PLANNED: &str = "bench.steps_planned";
    pub const STEPS_DONE: &str = "bench.steps_done";
    /// Attempts retried on another endpoint.
    pub const RETRIES: &str = "bench.retries";
    /// Endpoints taken out of rotation.
    pub const EJECTIONS: &str = "bench.ejections";
    /// Per endpoint figures: one JSON array of [`crate::records::EndpointRecord`].
    pub const ENDPOINTS: &str = "bench.endpoints";

    // What the server said about itself (`Info`), on `bench.run`.
    pub const SERVER_MODEL: &str = "server.model";
    pub const SERVER_STANDIN: &str = "server.stand_in";
    pub const SERVER_BACKEND: &str = "server.backend";
    pub const SERVER_DEVICE: &str = "server.device";
    pub const SERVER_MAX_BATCH: &str = "server.max_batch";
    /// How the server's max batch was set (`--max-batch`, or `auto: …`).
    pub const SERVER_MAX_BATCH_CHOSEN_BY: &str = "server.max_batch_chosen_by";
    pub const SERVER_TIMEOUT_MS: &str = "server.batch_timeout_ms";
    pub const SERVER_POLICY: &str = "server.batch_policy";
    pub const SERVER_VERSION: &str = "server.version";

    /// The response header that names the replica which answered.
    pub const INSTANCE_HEADER: &str = "crossbatch-instance";
    /// The OpenTelemetry resource attribute that names a server replica.
    pub const SERVICE_INSTANCE_ID: &str = "service.instance.id";
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_codes_round_trip_through_their_names() {
        for i in 0..=16 {
            let c = StatusCode(tonic::Code::from_i32(i));
            assert_eq!(StatusCode::from_name(c.name()), Some(c));
            let json = serde_json::to_string(&c).expect("serializes");
            assert_eq!(json, format!("\"{}\"", c.name()));
            assert_eq!(
                serde_json::from_str::<StatusCode>(&json).expect("parses"),
                c
            );
        }
        assert_eq!(StatusCode::from_name("Ok"), None);
        assert!(serde_json::from_str::<StatusCode>("\"NOPE\"").is_err());
        assert!(StatusCode::OK.is_ok() && !StatusCode(tonic::Code::Internal).is_ok());
    }
}
