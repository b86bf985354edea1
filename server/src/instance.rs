//! Which replica this is: `--instance-id` names it in the OpenTelemetry resource
//! (`service.instance.id`), in `Info`, and in a `crossbatch-instance` header on every
//! response, so that a client balancing over several replicas can count its calls per
//! replica without spans, and the collector can tell two replicas' batches apart.

use std::sync::Arc;

use tonic::codegen::http;
use tonic::codegen::http::HeaderValue;
use tonic::codegen::http::header::HeaderName;

/// The longest instance id accepted (it travels on every response).
const MAX_LEN: usize = 128;

/// A checked replica name: 1 to 128 visible ASCII characters, so it is a valid header
/// value and reads the same in every report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InstanceId(Arc<str>);

impl InstanceId {
    pub fn parse(s: &str) -> Result<Self, String> {
        if s.is_empty() {
            return Err("--instance-id must not be empty".into());
        }
        if s.len() > MAX_LEN {
            return Err(format!(
                "--instance-id is {} bytes long; at most {MAX_LEN}",
                s.len()
            ));
        }
        if let Some(c) = s.chars().find(|c| !c.is_ascii_graphic()) {
            return Err(format!(
                "--instance-id {s:?} holds {c:?}: use visible ASCII characters (letters, digits, - _ . : /)"
            ));
        }
        Ok(Self(s.into()))
    }

    /// This machine's host name (a container's or a pod's name), else `server`.
    pub fn from_host() -> Self {
        let host = std::env::var("HOSTNAME")
            .ok()
            .or_else(|| std::fs::read_to_string("/etc/hostname").ok())
            .map(|h| h.trim().to_string())
            .unwrap_or_default();
        Self::parse(&host).unwrap_or_else(|_| Self("server".into()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for InstanceId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// Adds `crossbatch-instance: <id>` to every response of a service answering with body
/// `B`, refusals and errors included (outermost, it sees every answer).
pub fn header_layer<B>(
    id: &InstanceId,
) -> tower::util::MapResponseLayer<impl Fn(http::Response<B>) -> http::Response<B> + Clone + use<B>>
{
    // InstanceId::parse admits only visible ASCII, which is always a valid value.
    let value =
        HeaderValue::from_str(id.as_str()).unwrap_or_else(|_| HeaderValue::from_static("server"));
    tower::util::MapResponseLayer::new(move |mut response: http::Response<B>| {
        response.headers_mut().insert(
            HeaderName::from_static(crossbatch_proto::attrs::INSTANCE_HEADER),
            value.clone(),
        );
        response
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_visible_ascii_of_bounded_length() {
        assert_eq!(InstanceId::parse("server-2").unwrap().as_str(), "server-2");
        assert!(InstanceId::parse("pod/ns:abc_1.x").is_ok());
        assert!(InstanceId::parse("").unwrap_err().contains("empty"));
        assert!(InstanceId::parse("a b").unwrap_err().contains("' '"));
        assert!(InstanceId::parse("évé").is_err());
        assert!(InstanceId::parse("x\r\nset-cookie: 1").is_err());
        assert!(
            InstanceId::parse(&"a".repeat(129))
                .unwrap_err()
                .contains("129")
        );
        assert!(InstanceId::parse(&"a".repeat(128)).is_ok());
    }

    #[test]
    fn the_host_name_is_a_valid_name() {
        let id = InstanceId::from_host();
        assert!(InstanceId::parse(id.as_str()).is_ok(), "{id}");
    }
}
