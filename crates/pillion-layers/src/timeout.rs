//! Request and per-try timeouts: fail with [`Elapsed`] if the response headers take too long.
//!
//! One service serves both: stacked above the retry layer it bounds the whole request
//! ([`TimeoutKind::Request`], every attempt and backoff included); below it (or through
//! [`crate::retry::RetryPolicy::per_try_timeout`]) it bounds one attempt ([`TimeoutKind::PerTry`]).
//! The timer covers the response future (until the response headers arrive), not the streaming of
//! the response body (the proxy bounds a route's body with what is left of the route's timeout).
//! With no duration the layer is a pass-through (no timer is created).

use std::{
    future::Future,
    pin::Pin,
    task::{Context, Poll},
    time::Duration,
};

use tower::{Layer, Service};

pub use crate::error::{Elapsed, TimeoutKind};
use crate::BoxError;

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
    S: Service<Req>,
    S::Error: Into<BoxError>,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = ResponseFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, req: Req) -> Self::Future {
        ResponseFuture::new(self.inner.call(req), self.after, self.kind)
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
    use tokio::time::Instant;
    use tower_test::{assert_request_eq, mock};

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
