//! Calls refused before any handler runs: a body that is not the protobuf it claims
//! to be, a message over the size limit, a call without a valid API key.
//!
//! tonic answers an undecodable body with INTERNAL, which the API reserves for the
//! server's own failures; the fault is the client's, so this layer rewrites those
//! answers to INVALID_ARGUMENT with the decoder's reason. It also reports every such
//! refusal by outcome (the handlers count the calls they see; these they never see).

use std::sync::Arc;
use std::task::{Context, Poll};

use tonic::codegen::http;
use tonic::{Code, Status};

/// Outcome names for calls refused before a handler (the metrics' `outcome` label).
pub const MALFORMED: &str = "malformed";
pub const TOO_LARGE: &str = "too_large";
pub const UNAUTHENTICATED: &str = "unauthenticated";

/// What tonic's decoder says when the bytes are not a valid message: prost's
/// `DecodeError`, a body that ends inside a message, a bad compression flag.
fn is_decode_failure(message: &str) -> bool {
    message.starts_with("failed to decode Protobuf message")
        || message.starts_with("Unexpected EOF decoding stream")
        || message.starts_with("protocol error: received message with invalid compression flag")
}

/// The answer for a refused call, and the outcome it counts under.
fn classify(status: &Status) -> Option<(Option<Status>, &'static str)> {
    match status.code() {
        Code::Internal if is_decode_failure(status.message()) => Some((
            Some(Status::invalid_argument(format!(
                "malformed request: {}",
                status.message()
            ))),
            MALFORMED,
        )),
        // tonic refuses from the length prefix, before reading the body; the client
        // sent more than the server accepts, which is an argument problem, not a
        // range or a transient one to retry.
        Code::OutOfRange if status.message().contains("message length too large") => Some((
            Some(Status::invalid_argument(format!(
                "request too large: {} (a full call of the server's --max-client-batch \
                 pairs of --max-text-bytes texts fits)",
                status.message()
            ))),
            TOO_LARGE,
        )),
        Code::Unauthenticated => Some((None, UNAUTHENTICATED)),
        _ => None,
    }
}

pub type OnReject = Arc<dyn Fn(&'static str) + Send + Sync>;

/// Wraps every service of a tonic server (`Server::builder().layer(..)`).
#[derive(Clone)]
pub struct RejectLayer {
    on_reject: OnReject,
}

impl RejectLayer {
    pub fn new(on_reject: OnReject) -> Self {
        Self { on_reject }
    }
}

impl<S> tower::Layer<S> for RejectLayer {
    type Service = Rejections<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Rejections {
            inner,
            on_reject: Arc::clone(&self.on_reject),
        }
    }
}

#[derive(Clone)]
pub struct Rejections<S> {
    inner: S,
    on_reject: OnReject,
}

impl<S, ReqBody, ResBody> tower::Service<http::Request<ReqBody>> for Rejections<S>
where
    S: tower::Service<http::Request<ReqBody>, Response = http::Response<ResBody>>,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    ResBody: Default + Send + 'static,
{
    type Response = http::Response<ResBody>;
    type Error = S::Error;
    type Future = std::pin::Pin<
        Box<dyn std::future::Future<Output = Result<Self::Response, Self::Error>> + Send>,
    >;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<ReqBody>) -> Self::Future {
        let future = self.inner.call(request);
        let on_reject = Arc::clone(&self.on_reject);
        Box::pin(async move {
            let response = future.await?;
            // A refused unary call is answered "trailers-only": the status is in the
            // headers. Successful calls carry no grpc-status header here.
            let Some(status) = Status::from_header_map(response.headers()) else {
                return Ok(response);
            };
            let Some((rewrite, outcome)) = classify(&status) else {
                return Ok(response);
            };
            on_reject(outcome);
            Ok(match rewrite {
                Some(s) => s.into_http(),
                None => response,
            })
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decode_failures_become_invalid_argument() {
        let s = Status::internal("failed to decode Protobuf message: invalid string value");
        let (rewrite, outcome) = classify(&s).unwrap();
        let rewrite = rewrite.unwrap();
        assert_eq!(rewrite.code(), Code::InvalidArgument);
        assert!(rewrite.message().contains("invalid string value"));
        assert_eq!(outcome, MALFORMED);
        let eof = Status::internal("Unexpected EOF decoding stream.");
        assert_eq!(classify(&eof).unwrap().1, MALFORMED);
    }

    #[test]
    fn the_servers_own_failures_pass_unchanged() {
        assert!(classify(&Status::internal("internal error: forward pass failed")).is_none());
        assert!(classify(&Status::invalid_argument("empty query")).is_none());
        assert!(classify(&Status::ok("")).is_none());
        let big = Status::out_of_range(
            "Error, decoded message length too large: found 9 bytes, the limit is: 8 bytes",
        );
        let (rewrite, outcome) = classify(&big).unwrap();
        assert_eq!(rewrite.unwrap().code(), Code::InvalidArgument);
        assert_eq!(outcome, TOO_LARGE);
    }
}
