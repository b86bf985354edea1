//! API keys (`--api-key`): every scoring call must carry `authorization: Bearer KEY`;
//! a missing or wrong key is refused before the request body is read. Health and
//! reflection stay open for orchestrators and tools.

use std::sync::Arc;

use crossbatch_proto::client::Secret;
use tonic::{Request, Status};

use crate::error::ServeError;

#[derive(Clone, Default)]
pub struct ApiKeyCheck {
    key: Option<Arc<Secret>>,
}

impl ApiKeyCheck {
    pub fn new(key: Option<Secret>) -> Self {
        Self {
            key: key.map(Arc::new),
        }
    }
}

/// `Bearer KEY` (the scheme is case-insensitive, as in HTTP).
fn bearer(value: &[u8]) -> Option<&[u8]> {
    let (scheme, rest) = value.split_at_checked(7)?;
    scheme.eq_ignore_ascii_case(b"bearer ").then_some(rest)
}

impl tonic::service::Interceptor for ApiKeyCheck {
    fn call(&mut self, request: Request<()>) -> Result<Request<()>, Status> {
        let Some(key) = &self.key else {
            return Ok(request);
        };
        let presented = request
            .metadata()
            .get("authorization")
            .map(|v| bearer(v.as_bytes()));
        match presented {
            None => Err(ServeError::Unauthenticated(
                "missing API key: send the header `authorization: Bearer <key>`",
            )
            .into()),
            Some(Some(k)) if key.matches(k) => Ok(request),
            Some(_) => Err(ServeError::Unauthenticated("invalid API key").into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tonic::service::Interceptor;

    fn call(check: &mut ApiKeyCheck, header: Option<&str>) -> Result<(), Status> {
        let mut r = Request::new(());
        if let Some(h) = header {
            r.metadata_mut().insert("authorization", h.parse().unwrap());
        }
        check.call(r).map(|_| ())
    }

    #[test]
    fn checks_the_bearer_key() {
        let mut open = ApiKeyCheck::new(None);
        assert!(call(&mut open, None).is_ok());
        let mut check = ApiKeyCheck::new(Some(Secret::new("s3cret").unwrap()));
        assert!(call(&mut check, Some("Bearer s3cret")).is_ok());
        assert!(call(&mut check, Some("bearer s3cret")).is_ok());
        let missing = call(&mut check, None).unwrap_err();
        assert_eq!(missing.code(), tonic::Code::Unauthenticated);
        assert!(missing.message().contains("missing API key"));
        for wrong in [
            "Bearer s3cre",
            "Bearer s3crett",
            "s3cret",
            "Basic s3cret",
            "Bearer ",
        ] {
            let e = call(&mut check, Some(wrong)).unwrap_err();
            assert_eq!(e.code(), tonic::Code::Unauthenticated, "{wrong}");
            assert_eq!(e.message(), "invalid API key");
        }
    }
}
