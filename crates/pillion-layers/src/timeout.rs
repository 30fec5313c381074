//! Request and per-try timeouts: fail with [`Elapsed`] if the response headers take too long.
//!
//! One service serves both: stacked above the retry layer it bounds the whole request
//! ([`TimeoutKind::Request`], every attempt and backoff included); below it (or through
//! [`crate::retry::RetryPolicy::per_try_timeout`]) it bounds one attempt ([`TimeoutKind::PerTry`]).
//! The timer covers the response future (until the response headers arrive), not the streaming of
//! the response body (the proxy bounds a route's body with what is left of the route's timeout).
//! With no duration the layer is a pass-through (no timer is created).
//!
//! Each timeout also writes its deadline into the request (a [`Deadline`] extension, the earliest
//! of the timeouts it runs under), so that the service at the bottom, whose future a firing timer
//! drops, can tell a try cut by a timeout (the endpoint's failure: Envoy counts it as a gateway
//! error for outlier detection) from one the client cancelled.

use std::{
    future::Future,
    pin::Pin,
    task::{Context, Poll},
    time::Duration,
};

use tokio::time::Instant;
use tower::{Layer, Service};

pub use crate::error::{Elapsed, TimeoutKind};
use crate::BoxError;

/// The earliest deadline of the timeouts a request runs under, a request extension.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Deadline(pub Instant);

/// A request that can carry the [`Deadline`] of its timeouts.
pub trait Deadlined {
    /// Lowers the request's deadline to `at` unless it is already earlier.
    fn tighten_deadline(&mut self, at: Instant);
}

impl<B> Deadlined for http::Request<B> {
    fn tighten_deadline(&mut self, at: Instant) {
        let ext = self.extensions_mut();
        match ext.get_mut::<Deadline>() {
            Some(d) => d.0 = d.0.min(at),
            None => {
                ext.insert(Deadline(at));
            }
        }
    }
}

impl Deadline {
    /// The deadline `req` carries, if a timeout set one.
    pub fn of<B>(req: &http::Request<B>) -> Option<Instant> {
        req.extensions().get::<Deadline>().map(|d| d.0)
    }
}

/// Applies a timeout to every request of the inner service.
#[derive(Clone, Debug)]
pub struct Timeout<S> {
    inner: S,
    after: Option<Duration>,
    kind: TimeoutKind,
}

/// Builds [`Timeout`] services.
#[derive(Clone, Copy, Debug)]
pub struct TimeoutLayer {
    after: Option<Duration>,
    kind: TimeoutKind,
}

// === impl TimeoutLayer ===

impl TimeoutLayer {
    /// A timeout of `kind` firing `after` (none: pass requests through untouched).
    pub fn new(after: Option<Duration>, kind: TimeoutKind) -> Self {
        Self { after, kind }
    }

    /// A whole-request timeout (place it above the retry layer).
    pub fn request(after: Duration) -> Self {
        Self::new(Some(after), TimeoutKind::Request)
    }

    /// A per-try timeout (place it below the retry layer).
    pub fn per_try(after: Duration) -> Self {
        Self::new(Some(after), TimeoutKind::PerTry)
    }
}

impl<S> Layer<S> for TimeoutLayer {
    type Service = Timeout<S>;

    fn layer(&self, inner: S) -> Timeout<S> {
        Timeout {
            inner,
            after: self.after,
            kind: self.kind,
        }
    }
}

// === impl Timeout ===

impl<S> Timeout<S> {
    /// Wraps `inner` with a timeout of `kind` (none: pass-through).
    pub fn new(inner: S, after: Option<Duration>, kind: TimeoutKind) -> Self {
        Self { inner, after, kind }
    }
}

impl<S, Req> Service<Req> for Timeout<S>
where
    Req: Deadlined,
    S: Service<Req>,
    S::Error: Into<BoxError>,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = ResponseFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, mut req: Req) -> Self::Future {
        let Some(after) = self.after else {
            return ResponseFuture::new(self.inner.call(req), None, self.kind);
        };
        // NOTE: one clock read for the deadline and the timer, so the two agree exactly.
        let at = Instant::now() + after;
        req.tighten_deadline(at);
        ResponseFuture::until(self.inner.call(req), at, after, self.kind)
    }
}

// === impl ResponseFuture ===

pin_project_lite::pin_project! {
    /// The response future of [`Timeout`]: the inner future raced against an optional timer.
    #[derive(Debug)]
    pub struct ResponseFuture<F> {
        #[pin]
        inner: F,
        #[pin]
        sleep: Option<tokio::time::Sleep>,
        after: Duration,
        kind: TimeoutKind,
    }
}

impl<F> ResponseFuture<F> {
    /// Races `inner` against a timer of `after` (none: no timer).
    pub fn new(inner: F, after: Option<Duration>, kind: TimeoutKind) -> Self {
        Self {
            inner,
            sleep: after.map(tokio::time::sleep),
            after: after.unwrap_or_default(),
            kind,
        }
    }

    /// Races `inner` against a timer firing at `at`, reported as a timeout of `after`.
    pub fn until(inner: F, at: Instant, after: Duration, kind: TimeoutKind) -> Self {
        Self {
            inner,
            sleep: Some(tokio::time::sleep_until(at)),
            after,
            kind,
        }
    }
}

impl<F, T, E> Future for ResponseFuture<F>
where
    F: Future<Output = Result<T, E>>,
    E: Into<BoxError>,
{
    type Output = Result<T, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        if let Poll::Ready(res) = this.inner.poll(cx) {
            return Poll::Ready(res.map_err(Into::into));
        }
        if let Some(sleep) = this.sleep.as_pin_mut() {
            if sleep.poll(cx).is_ready() {
                return Poll::Ready(Err(Elapsed {
                    kind: *this.kind,
                    after: *this.after,
                }
                .into()));
            }
        }
        Poll::Pending
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error;
    use tower_test::{assert_request_eq, mock};

    // The mock requests of these tests carry no deadline.
    impl Deadlined for &'static str {
        fn tighten_deadline(&mut self, _: Instant) {}
    }

    #[tokio::test(start_paused = true)]
    async fn fires_at_exactly_the_configured_time() {
        for kind in [TimeoutKind::Request, TimeoutKind::PerTry] {
            let layer = TimeoutLayer::new(Some(Duration::from_millis(250)), kind);
            let (mut svc, mut handle) = mock::spawn_layer::<&str, &str, _>(layer);
            assert!(svc.poll_ready().is_ready());
            let start = Instant::now();
            let fut = svc.call("hello");
            let _pending = assert_request_eq!(handle, "hello");
            let err = fut.await.unwrap_err();
            assert_eq!(start.elapsed(), Duration::from_millis(250));
            let elapsed = error::find::<Elapsed>(&*err).unwrap();
            assert_eq!(
                *elapsed,
                Elapsed {
                    kind,
                    after: Duration::from_millis(250)
                }
            );
        }
    }

    #[tokio::test(start_paused = true)]
    async fn the_request_carries_the_earliest_deadline_of_its_timeouts() {
        let start = Instant::now();
        for (outer, inner, want) in [(250, 100, 100), (100, 250, 100), (300, 300, 300)] {
            let stack = tower::ServiceBuilder::new()
                .layer(TimeoutLayer::request(Duration::from_millis(outer)))
                .layer(TimeoutLayer::per_try(Duration::from_millis(inner)));
            let (mut svc, mut handle) = mock::spawn_layer::<http::Request<()>, (), _>(stack);
            assert!(svc.poll_ready().is_ready());
            let _fut = svc.call(http::Request::new(()));
            let (req, _tx) = handle.next_request().await.expect("a request");
            assert_eq!(
                Deadline::of(&req),
                Some(start + Duration::from_millis(want)),
                "{outer} ms around {inner} ms"
            );
        }
        // No duration, no deadline.
        let (mut svc, mut handle) = mock::spawn_layer::<http::Request<()>, (), _>(
            TimeoutLayer::new(None, TimeoutKind::Request),
        );
        assert!(svc.poll_ready().is_ready());
        let _fut = svc.call(http::Request::new(()));
        let (req, _tx) = handle.next_request().await.expect("a request");
        assert_eq!(Deadline::of(&req), None);
    }

    #[tokio::test(start_paused = true)]
    async fn response_before_the_deadline_passes() {
        let (mut svc, mut handle) =
            mock::spawn_layer::<&str, &str, _>(TimeoutLayer::request(Duration::from_secs(1)));
        assert!(svc.poll_ready().is_ready());
        let fut = svc.call("hello");
        let tx = assert_request_eq!(handle, "hello");
        tokio::time::sleep(Duration::from_millis(999)).await;
        tx.send_response("world");
        assert_eq!(fut.await.unwrap(), "world");
    }

    #[tokio::test(start_paused = true)]
    async fn no_timeout_passes_through_and_keeps_errors() {
        let (mut svc, mut handle) =
            mock::spawn_layer::<&str, &str, _>(TimeoutLayer::new(None, TimeoutKind::Request));
        assert!(svc.poll_ready().is_ready());
        let fut = svc.call("hello");
        let tx = assert_request_eq!(handle, "hello");
        tokio::time::sleep(Duration::from_secs(3600)).await;
        tx.send_error(std::io::Error::from(std::io::ErrorKind::ConnectionReset));
        let err = fut.await.unwrap_err();
        assert!(error::is::<std::io::Error>(&*err));
    }
}
