//! Admission before work: a call is admitted (or refused with RESOURCE_EXHAUSTED) by its
//! pair count alone, before its texts are copied, tokenized or queued. Every pair
//! admitted and not yet answered counts against one capacity (`--max-queue-pairs`),
//! whether it is being tokenized, waiting in the batcher or in a forward pass, so a
//! flood of large calls costs the server a counter compare each, not a tokenization.
//!
//! Two checks, one count: [`AdmissionGate`] refuses a scoring call from its headers,
//! before its body is read or decoded, while no pair at all has room (the common case
//! under a flood); the handler then admits the decoded call by its exact pair count.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll};

use tonic::codegen::http;

/// Pairs admitted and not yet answered, against a fixed capacity.
#[derive(Debug)]
pub struct Admission {
    capacity: usize,
    in_flight: AtomicUsize,
}

/// A call refused at admission: the pairs it asked for would not fit.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "server at capacity: {in_flight} pairs in flight, {requested} more would exceed --max-queue-pairs {capacity}; retry later"
)]
pub struct Overloaded {
    pub in_flight: usize,
    pub requested: usize,
    pub capacity: usize,
}

/// The pairs of one admitted call; they leave the count when this is dropped (the
/// call answered, failed, or was abandoned by its client).
#[derive(Debug)]
pub struct Admitted {
    admission: Arc<Admission>,
    pairs: usize,
}

impl Admission {
    pub fn new(capacity: usize) -> Arc<Self> {
        Arc::new(Self {
            capacity,
            in_flight: AtomicUsize::new(0),
        })
    }

    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Pairs admitted and not yet answered.
    pub fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::Acquire)
    }

    /// Admits `pairs` if they fit, all or nothing. Lock-free: a compare-and-swap loop,
    /// so two calls racing for the last room cannot both get it.
    pub fn try_admit(self: &Arc<Self>, pairs: usize) -> Result<Admitted, Overloaded> {
        let mut current = self.in_flight.load(Ordering::Acquire);
        loop {
            let next = current.saturating_add(pairs);
            if next > self.capacity {
                return Err(Overloaded {
                    in_flight: current,
                    requested: pairs,
                    capacity: self.capacity,
                });
            }
            match self.in_flight.compare_exchange_weak(
                current,
                next,
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => {
                    return Ok(Admitted {
                        admission: Arc::clone(self),
                        pairs,
                    });
                }
                Err(seen) => current = seen,
            }
        }
    }
}

/// Refuses Score and Rerank calls from their headers while the server is full (no room
/// for one more pair), so a flood is answered without reading its bodies. Info,
/// health and reflection always pass.
#[derive(Clone)]
pub struct AdmissionGate<S> {
    inner: S,
    admission: Arc<Admission>,
    on_refused: Arc<dyn Fn() + Send + Sync>,
}

impl<S> AdmissionGate<S> {
    /// `on_refused` runs once per call refused here (its handler never sees it).
    pub fn new(
        inner: S,
        admission: Arc<Admission>,
        on_refused: Arc<dyn Fn() + Send + Sync>,
    ) -> Self {
        Self {
            inner,
            admission,
            on_refused,
        }
    }
}

/// The methods whose work admission bounds.
fn is_scoring(path: &str) -> bool {
    path.ends_with("/Score") || path.ends_with("/Rerank")
}

impl<S, ReqBody, ResBody> tower::Service<http::Request<ReqBody>> for AdmissionGate<S>
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
        let in_flight = self.admission.in_flight();
        if in_flight >= self.admission.capacity && is_scoring(request.uri().path()) {
            (self.on_refused)();
            let status = crate::error::ServeError::from(Overloaded {
                in_flight,
                requested: 1,
                capacity: self.admission.capacity,
            });
            let response = tonic::Status::from(status).into_http();
            return Box::pin(std::future::ready(Ok(response)));
        }
        Box::pin(self.inner.call(request))
    }
}

impl<S: tonic::server::NamedService> tonic::server::NamedService for AdmissionGate<S> {
    const NAME: &'static str = S::NAME;
}

impl Drop for Admitted {
    fn drop(&mut self) {
        self.admission
            .in_flight
            .fetch_sub(self.pairs, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn admits_up_to_capacity_and_releases_on_drop() {
        let a = Admission::new(10);
        let first = a.try_admit(6).expect("fits");
        let second = a.try_admit(4).expect("fits exactly");
        assert_eq!(a.in_flight(), 10);
        let refused = a.try_admit(1).expect_err("full");
        assert_eq!(
            refused,
            Overloaded {
                in_flight: 10,
                requested: 1,
                capacity: 10
            }
        );
        assert!(refused.to_string().contains("--max-queue-pairs 10"));
        drop(first);
        assert_eq!(a.in_flight(), 4);
        let _third = a.try_admit(6).expect("room again");
        drop(second);
        assert_eq!(a.in_flight(), 6);
    }

    #[test]
    fn a_call_larger_than_capacity_is_refused_whole() {
        let a = Admission::new(8);
        assert!(a.try_admit(9).is_err());
        assert_eq!(a.in_flight(), 0, "nothing was taken");
    }

    #[test]
    fn racing_threads_never_exceed_capacity() {
        let a = Admission::new(100);
        let peak = Arc::new(AtomicUsize::new(0));
        std::thread::scope(|s| {
            for _ in 0..8 {
                let a = Arc::clone(&a);
                let peak = Arc::clone(&peak);
                s.spawn(move || {
                    for _ in 0..10_000 {
                        if let Ok(p) = a.try_admit(7) {
                            peak.fetch_max(a.in_flight(), Ordering::Relaxed);
                            drop(p);
                        }
                    }
                });
            }
        });
        assert!(peak.load(Ordering::Relaxed) <= 100);
        assert_eq!(a.in_flight(), 0);
    }
}
