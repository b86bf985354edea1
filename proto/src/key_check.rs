//! The receiving side of `authorization: Bearer KEY` (the sending side is
//! [`crate::client::authorize`]): a tonic interceptor that refuses a call without the
//! key before its body is read. The collector puts it in front of every service on
//! its port (OTLP and coordination).

use std::sync::Arc;

use tonic::{Request, Status};

use crate::client::Secret;

/// Refuses calls without `authorization: Bearer KEY` with UNAUTHENTICATED; with no
/// key configured, lets every call through.
#[derive(Clone, Default)]
pub struct KeyCheck {
    key: Option<Arc<Secret>>,
}

impl KeyCheck {
    pub fn new(key: Option<Secret>) -> Self {
        Self {
            key: key.map(Arc::new),
        }
    }

    /// Whether calls must carry a key.
    pub fn is_on(&self) -> bool {
        self.key.is_some()
    }
}

/// `Bearer KEY` (the scheme is case-insensitive, as in HTTP).
fn bearer(value: &[u8]) -> Option<&[u8]> {
    let (scheme, rest) = value.split_at_checked(7)?;
    scheme.eq_ignore_ascii_case(b"bearer ").then_some(rest)
}

impl tonic::service::Interceptor for KeyCheck {
    fn call(&mut self, request: Request<()>) -> Result<Request<()>, Status> {
        let Some(key) = &self.key else {
            return Ok(request);
        };
        match request
            .metadata()
            .get("authorization")
            .map(|v| bearer(v.as_bytes()))
        {
            None => Err(Status::unauthenticated(
                "missing API key: send the header `authorization: Bearer <key>`",
            )),
            Some(Some(k)) if key.matches(k) => Ok(request),
            Some(_) => Err(Status::unauthenticated("invalid API key")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tonic::service::Interceptor;

    fn call(check: &mut KeyCheck, header: Option<&str>) -> Result<(), Status> {
        let mut r = Request::new(());
        if let Some(h) = header {
            r.metadata_mut()
                .insert("authorization", h.parse().expect("ascii"));
        }
        check.call(r).map(|_| ())
    }

    #[test]
    fn refuses_a_missing_or_wrong_key() {
        let mut open = KeyCheck::default();
        assert!(!open.is_on());
        assert!(call(&mut open, None).is_ok());
        let mut check = KeyCheck::new(Some(Secret::new("s3cret").expect("key")));
        assert!(check.is_on());
        assert!(call(&mut check, Some("Bearer s3cret")).is_ok());
        assert!(call(&mut check, Some("BEARER s3cret")).is_ok());
        let missing = call(&mut check, None).unwrap_err();
        assert_eq!(missing.code(), tonic::Code::Unauthenticated);
        assert!(missing.message().contains("missing API key"), "{missing}");
        for wrong in ["Bearer s3cre", "Bearer s3crett", "s3cret", "Basic s3cret"] {
            let e = call(&mut check, Some(wrong)).unwrap_err();
            assert_eq!(e.code(), tonic::Code::Unauthenticated, "{wrong}");
            assert_eq!(e.message(), "invalid API key");
        }
    }
}
