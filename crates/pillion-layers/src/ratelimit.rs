//! Local rate limit: a token bucket shared by every clone, failing fast with [`RateLimited`].
//!
//! The bucket is kept lock-free as one `AtomicU64` (the generic cell rate algorithm, GCRA, which
//! is a token bucket stored as the "theoretical arrival time" of the next request): `burst`
//! requests may pass at once, then tokens refill at `per_second`. Nothing waits: `poll_ready`
//! only asks the inner service, and `call` fails at once when the bucket is empty.

use std::{
    future::Future,
    pin::Pin,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
    task::{Context, Poll},
};

use tokio::time::Instant;
use tower::{Layer, Service};

pub use crate::error::RateLimited;
use crate::BoxError;

/// A rate: `per_second` tokens refill each second, up to `burst` stored tokens.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct RateLimitPolicy {
    /// Sustained requests per second (fractions allowed; zero or less rejects everything).
    pub per_second: f64,
    /// Requests allowed at once when the bucket is full (at least 1 is used).
    pub burst: u32,
}

/// A token bucket shared by every service built from one [`RateLimitLayer`].
#[derive(Debug)]
pub struct Bucket {
    start: Instant,
    /// Nanoseconds between two tokens (`u64::MAX`: no token ever).
    interval: u64,
    /// How far ahead of now the theoretical arrival time may run (burst - 1 intervals).
    tolerance: u64,
    /// The theoretical arrival time, in nanoseconds since `start`.
    tat: AtomicU64,
    rejected: AtomicU64,
}

/// Rate-limits the inner service with a shared [`Bucket`].
#[derive(Clone, Debug)]
pub struct RateLimit<S> {
    inner: S,
    bucket: Arc<Bucket>,
}

/// Builds [`RateLimit`] services sharing one bucket.
#[derive(Clone, Debug)]
pub struct RateLimitLayer {
    bucket: Arc<Bucket>,
}

// === impl Bucket ===

impl Bucket {
    /// A full bucket for `policy`.
    pub fn new(policy: RateLimitPolicy) -> Self {
        let interval = if policy.per_second.is_finite() && policy.per_second > 0.0 {
            // NOTE: the float-to-int cast saturates, and a rate so high it rounds to zero
            // nanoseconds still needs one.
            ((1e9 / policy.per_second) as u64).max(1)
        } else {
            u64::MAX
        };
        let burst = u64::from(policy.burst.max(1));
        Self {
            start: Instant::now(),
            interval,
            tolerance: interval.saturating_mul(burst - 1),
            tat: AtomicU64::new(0),
            rejected: AtomicU64::new(0),
        }
    }

    /// Takes one token if there is one.
    pub fn try_acquire(&self) -> bool {
        if self.interval == u64::MAX {
            self.rejected.fetch_add(1, Ordering::Relaxed);
            return false;
        }
        let now = u64::try_from(self.start.elapsed().as_nanos()).unwrap_or(u64::MAX);
        let mut tat = self.tat.load(Ordering::Relaxed);
        loop {
            let base = tat.max(now);
            if base - now > self.tolerance {
                self.rejected.fetch_add(1, Ordering::Relaxed);
                return false;
            }
            match self.tat.compare_exchange_weak(
                tat,
                base.saturating_add(self.interval),
                Ordering::Relaxed,
                Ordering::Relaxed,
            ) {
                Ok(_) => return true,
                Err(actual) => tat = actual,
            }
        }
    }

    /// Requests rejected so far.
    pub fn rejected_total(&self) -> u64 {
        self.rejected.load(Ordering::Relaxed)
    }
}

// === impl RateLimitLayer ===

impl RateLimitLayer {
    /// A layer whose services share one new bucket for `policy`.
    pub fn new(policy: RateLimitPolicy) -> Self {
        Self::shared(Arc::new(Bucket::new(policy)))
    }

    /// A layer whose services share `bucket` (e.g. one bucket for several routes).
    pub fn shared(bucket: Arc<Bucket>) -> Self {
        Self { bucket }
    }

    /// The shared bucket (for its counters).
    pub fn bucket(&self) -> &Arc<Bucket> {
        &self.bucket
    }
}

impl<S> Layer<S> for RateLimitLayer {
    type Service = RateLimit<S>;

    fn layer(&self, inner: S) -> RateLimit<S> {
        RateLimit {
            inner,
            bucket: self.bucket.clone(),
        }
    }
}

// === impl RateLimit ===

impl<S, Req> Service<Req> for RateLimit<S>
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
        if self.bucket.try_acquire() {
            ResponseFuture {
                inner: Some(self.inner.call(req)),
            }
        } else {
            ResponseFuture { inner: None }
        }
    }
}

// === impl ResponseFuture ===

pin_project_lite::pin_project! {
    /// The response future of [`RateLimit`]: the inner future, or a [`RateLimited`] error.
    #[derive(Debug)]
    pub struct ResponseFuture<F> {
        #[pin]
        inner: Option<F>,
    }
}

impl<F, T, E> Future for ResponseFuture<F>
where
    F: Future<Output = Result<T, E>>,
    E: Into<BoxError>,
{
    type Output = Result<T, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project().inner.as_pin_mut() {
            Some(f) => f.poll(cx).map_err(Into::into),
            None => Poll::Ready(Err(RateLimited.into())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error;
    use std::time::Duration;
    use tower_test::{assert_request_eq, mock};

    async fn send(
        svc: &mut tower_test::mock::Spawn<RateLimit<mock::Mock<&'static str, &'static str>>>,
        handle: &mut mock::Handle<&'static str, &'static str>,
    ) -> Result<(), BoxError> {
        assert!(svc.poll_ready().is_ready());
        let fut = svc.call("hi");
        if let Some((req, tx)) =
            futures_util::FutureExt::now_or_never(handle.next_request()).flatten()
        {
            assert_eq!(req, "hi");
            tx.send_response("ok");
        }
        fut.await.map(|_| ())
    }

    #[tokio::test(start_paused = true)]
    async fn burst_then_refill_at_rate() {
        let layer = RateLimitLayer::new(RateLimitPolicy {
            per_second: 10.0,
            burst: 5,
        });
        let bucket = layer.bucket().clone();
        let (mut svc, mut handle) = mock::spawn_layer(layer);

        for _ in 0..5 {
            send(&mut svc, &mut handle).await.unwrap();
        }
        let err = send(&mut svc, &mut handle).await.unwrap_err();
        assert!(error::is::<RateLimited>(&*err));
        assert_eq!(bucket.rejected_total(), 1);

        // One token every 100ms.
        tokio::time::advance(Duration::from_millis(99)).await;
        assert!(send(&mut svc, &mut handle).await.is_err());
        tokio::time::advance(Duration::from_millis(1)).await;
        send(&mut svc, &mut handle).await.unwrap();
        assert!(send(&mut svc, &mut handle).await.is_err());

        // Over 10 seconds: 100 more, not more (the bucket refills to the burst, no further).
        let mut ok = 0;
        for _ in 0..1000 {
            tokio::time::advance(Duration::from_millis(10)).await;
            if send(&mut svc, &mut handle).await.is_ok() {
                ok += 1;
            }
        }
        assert_eq!(ok, 100);

        // Idle for a minute: the burst is back, capped at 5.
        tokio::time::advance(Duration::from_secs(60)).await;
        let mut ok = 0;
        for _ in 0..10 {
            if send(&mut svc, &mut handle).await.is_ok() {
                ok += 1;
            }
        }
        assert_eq!(ok, 5);
    }

    #[tokio::test(start_paused = true)]
    async fn clones_share_the_bucket() {
        let layer = RateLimitLayer::new(RateLimitPolicy {
            per_second: 1.0,
            burst: 2,
        });
        let (mut a, mut handle) = mock::spawn_layer::<&str, &str, _>(layer.clone());
        let mut b = tower_test::mock::Spawn::new(a.get_ref().clone());
        assert!(a.poll_ready().is_ready());
        let fa = a.call("a");
        assert_request_eq!(handle, "a").send_response("ok");
        fa.await.unwrap();
        assert!(b.poll_ready().is_ready());
        let fb = b.call("b");
        assert_request_eq!(handle, "b").send_response("ok");
        fb.await.unwrap();
        assert!(a.poll_ready().is_ready());
        assert!(a.call("c").await.is_err());
    }

    #[tokio::test(start_paused = true)]
    async fn zero_rate_rejects() {
        let bucket = Bucket::new(RateLimitPolicy {
            per_second: 0.0,
            burst: 10,
        });
        assert!(!bucket.try_acquire());
    }
}
