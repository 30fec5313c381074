//! Fail-fast concurrency limits (Envoy-style circuit breakers): over the limit, fail at once.
//!
//! A [`Counter`] is shared by every clone (one `AtomicUsize`). [`Limit`] takes a permit in
//! `call`; when none is left the call fails at once with [`Overloaded`] (nothing queues, and
//! `poll_ready` only asks the inner service). The permit is held until the response is over:
//! it moves from the response future into the response body ([`ResponseBody`]), and is released
//! when the body reports its end or an error, or is dropped; an error or a dropped response future
//! releases it too. The retry layer can take permits from a counter labelled [`MAX_RETRIES`] to
//! bound concurrent retries (see [`crate::retry::RetryLayer::with_retry_limit`]).

use std::{
    future::Future,
    pin::Pin,
    sync::{
        atomic::{AtomicU64, AtomicUsize, Ordering},
        Arc,
    },
    task::{Context, Poll},
};

use http_body::{Body, Frame, SizeHint};
use tower::{Layer, Service};

pub use crate::error::Overloaded;
use crate::BoxError;

/// Label of the limit on concurrent requests.
pub const MAX_REQUESTS: &str = "max_requests";
/// Label of the limit on requests waiting for a connection.
pub const MAX_PENDING: &str = "max_pending";
/// Label of the limit on concurrent retries.
pub const MAX_RETRIES: &str = "max_retries";
/// Label of the limit on connections.
pub const MAX_CONNECTIONS: &str = "max_connections";

/// A shared, lock-free count of in-flight work with a maximum.
#[derive(Clone, Debug)]
pub struct Counter {
    shared: Arc<Shared>,
}

#[derive(Debug)]
struct Shared {
    limit: &'static str,
    max: usize,
    in_flight: AtomicUsize,
    rejected: AtomicU64,
}

/// One unit of a [`Counter`], given back when dropped.
#[derive(Debug)]
pub struct Permit {
    shared: Arc<Shared>,
}

/// Limits the concurrent requests of the inner service, failing fast.
#[derive(Clone, Debug)]
pub struct Limit<S> {
    inner: S,
    counter: Counter,
}

/// Builds [`Limit`] services sharing one [`Counter`].
#[derive(Clone, Debug)]
pub struct LimitLayer {
    counter: Counter,
}

// === impl Counter ===

impl Counter {
    /// A counter allowing `max` at once, reporting `limit` (e.g. [`MAX_REQUESTS`]) when full.
    pub fn new(limit: &'static str, max: usize) -> Self {
        Self {
            shared: Arc::new(Shared {
                limit,
                max,
                in_flight: AtomicUsize::new(0),
                rejected: AtomicU64::new(0),
            }),
        }
    }

    /// Takes a permit, or fails with [`Overloaded`] (and counts the rejection) when full.
    pub fn try_acquire(&self) -> Result<Permit, Overloaded> {
        let max = self.shared.max;
        match self
            .shared
            .in_flight
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < max).then_some(n + 1)
            }) {
            Ok(_) => Ok(Permit {
                shared: self.shared.clone(),
            }),
            Err(_) => {
                self.shared.rejected.fetch_add(1, Ordering::Relaxed);
                Err(Overloaded {
                    limit: self.shared.limit,
                })
            }
        }
    }

    /// Permits held now.
    pub fn in_flight(&self) -> usize {
        self.shared.in_flight.load(Ordering::Acquire)
    }

    /// Calls rejected so far.
    pub fn rejected_total(&self) -> u64 {
        self.shared.rejected.load(Ordering::Relaxed)
    }

    /// The maximum.
    pub fn max(&self) -> usize {
        self.shared.max
    }

    /// The label reported in [`Overloaded`].
    pub fn limit(&self) -> &'static str {
        self.shared.limit
    }
}

// === impl Permit ===

impl Drop for Permit {
    fn drop(&mut self) {
        self.shared.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

// === impl LimitLayer ===

impl LimitLayer {
    /// A layer whose services share a new counter of `max`, reported as `limit`.
    pub fn new(limit: &'static str, max: usize) -> Self {
        Self::shared(Counter::new(limit, max))
    }

    /// A layer whose services share `counter` (e.g. one per cluster).
    pub fn shared(counter: Counter) -> Self {
        Self { counter }
    }

    /// The shared counter (for its gauges and counters).
    pub fn counter(&self) -> &Counter {
        &self.counter
    }
}

impl<S> Layer<S> for LimitLayer {
    type Service = Limit<S>;

    fn layer(&self, inner: S) -> Limit<S> {
        Limit {
            inner,
            counter: self.counter.clone(),
        }
    }
}

// === impl Limit ===

impl<S, Req, RB> Service<Req> for Limit<S>
where
    S: Service<Req, Response = http::Response<RB>>,
    S::Error: Into<BoxError>,
    RB: Body,
{
    type Response = http::Response<ResponseBody<RB>>;
    type Error = BoxError;
    type Future = ResponseFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, req: Req) -> Self::Future {
        match self.counter.try_acquire() {
            Ok(permit) => ResponseFuture {
                inner: Some(self.inner.call(req)),
                permit: Some(permit),
                limit: self.counter.limit(),
            },
            Err(_) => ResponseFuture {
                inner: None,
                permit: None,
                limit: self.counter.limit(),
            },
        }
    }
}

// === impl ResponseFuture ===

pin_project_lite::pin_project! {
    /// The response future of [`Limit`]: holds the permit until the response arrives, then hands
    /// it to the response body.
    #[derive(Debug)]
    pub struct ResponseFuture<F> {
        #[pin]
        inner: Option<F>,
        permit: Option<Permit>,
        limit: &'static str,
    }
}

impl<F, RB, E> Future for ResponseFuture<F>
where
    F: Future<Output = Result<http::Response<RB>, E>>,
    E: Into<BoxError>,
    RB: Body,
{
    type Output = Result<http::Response<ResponseBody<RB>>, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let Some(inner) = this.inner.as_pin_mut() else {
            return Poll::Ready(Err(Overloaded { limit: this.limit }.into()));
        };
        let res = std::task::ready!(inner.poll(cx));
        let permit = this.permit.take();
        Poll::Ready(match res {
            Ok(rsp) => Ok(rsp.map(|body| ResponseBody::holding(body, permit))),
            Err(e) => Err(e.into()),
        })
    }
}

// === impl ResponseBody ===

pin_project_lite::pin_project! {
    /// A response body holding a [`Limit`] permit until it ends, fails or is dropped.
    #[derive(Debug)]
    pub struct ResponseBody<B> {
        #[pin]
        inner: B,
        permit: Option<Permit>,
    }
}

impl<B: Body> ResponseBody<B> {
    /// Holds `permit` until `inner` ends; an empty body is over already, so it is released now.
    pub fn holding(inner: B, permit: Option<Permit>) -> Self {
        let permit = permit.filter(|_| !inner.is_end_stream());
        Self { inner, permit }
    }
}

impl<B> ResponseBody<B> {
    /// The wrapped body (its permit is released when this wrapper is dropped).
    pub fn get_ref(&self) -> &B {
        &self.inner
    }
}

impl<B: Body> Body for ResponseBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<B::Data>, B::Error>>> {
        let mut this = self.project();
        let frame = std::task::ready!(this.inner.as_mut().poll_frame(cx));
        let done = match &frame {
            Some(Ok(_)) => this.inner.is_end_stream(),
            Some(Err(_)) | None => true,
        };
        if done {
            this.permit.take();
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error;
    use bytes::Bytes;
    use http_body_util::{BodyExt, Empty, Full};
    use tower_test::mock;

    type Rsp = http::Response<Full<Bytes>>;

    #[tokio::test]
    async fn eleventh_call_fails_at_once_and_slots_free_on_completion() {
        let layer = LimitLayer::new(MAX_REQUESTS, 10);
        let counter = layer.counter().clone();
        let (mut svc, mut handle) = mock::spawn_layer::<u32, Rsp, _>(layer);

        let mut futs = Vec::new();
        for i in 0..10 {
            assert!(svc.poll_ready().is_ready());
            futs.push(svc.call(i));
        }
        assert_eq!(counter.in_flight(), 10);

        // The 11th: ready (nothing waits), and fails at once.
        assert!(svc.poll_ready().is_ready());
        let err = svc.call(10).await.unwrap_err();
        assert_eq!(
            error::find::<Overloaded>(&*err),
            Some(&Overloaded {
                limit: MAX_REQUESTS
            })
        );
        assert_eq!(counter.rejected_total(), 1);

        // Answer the first request: its permit lives on in the body until the body ends.
        let mut txs = Vec::new();
        for _ in 0..10 {
            txs.push(handle.next_request().await.unwrap().1);
        }
        txs.remove(0)
            .send_response(http::Response::new(Full::new(Bytes::from_static(b"hi"))));
        let rsp = futs.remove(0).await.unwrap();
        assert_eq!(counter.in_flight(), 10);
        assert!(svc.call(11).await.is_err());
        let body = rsp.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(&body[..], b"hi");
        assert_eq!(counter.in_flight(), 9);

        // A dropped response future frees its slot.
        drop(futs.remove(0));
        drop(txs.remove(0));
        assert_eq!(counter.in_flight(), 8);

        // An error frees its slot.
        txs.remove(0).send_error("boom");
        assert!(futs.remove(0).await.is_err());
        assert_eq!(counter.in_flight(), 7);

        // A dropped body frees its slot.
        txs.remove(0)
            .send_response(http::Response::new(Full::new(Bytes::from_static(b"x"))));
        let rsp = futs.remove(0).await.unwrap();
        assert_eq!(counter.in_flight(), 7);
        drop(rsp);
        assert_eq!(counter.in_flight(), 6);
    }

    #[tokio::test]
    async fn empty_body_releases_with_the_response() {
        let layer = LimitLayer::new(MAX_PENDING, 1);
        let counter = layer.counter().clone();
        let (mut svc, mut handle) = mock::spawn_layer::<(), http::Response<Empty<Bytes>>, _>(layer);
        assert!(svc.poll_ready().is_ready());
        let fut = svc.call(());
        handle
            .next_request()
            .await
            .unwrap()
            .1
            .send_response(http::Response::new(Empty::new()));
        let _rsp = fut.await.unwrap();
        assert_eq!(counter.in_flight(), 0);
    }
}
