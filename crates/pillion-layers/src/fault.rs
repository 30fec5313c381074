//! Fault injection: delay a percentage of requests, abort a percentage with [`FaultAbort`].
//!
//! The delay comes first (the request is held before it is forwarded), then the abort draw, as in
//! Envoy. With no policy the layer forwards the request and returns the inner future untouched;
//! only delayed requests are boxed.

use std::{
    future::Future,
    pin::Pin,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
    task::{Context, Poll},
    time::Duration,
};

use futures_util::future::BoxFuture;
use tower::{Layer, Service};

pub use crate::error::FaultAbort;
use crate::BoxError;

/// What faults to inject.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct FaultPolicy {
    /// Delay this share of requests.
    pub delay: Option<FaultDelay>,
    /// Abort this share of requests.
    pub abort: Option<FaultAbortPolicy>,
}

/// Delays `percent` % of requests by `duration`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct FaultDelay {
    /// Share of requests delayed, 0 to 100.
    pub percent: f64,
    /// How long they are held before being forwarded.
    pub duration: Duration,
}

/// Aborts `percent` % of requests with `status`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct FaultAbortPolicy {
    /// Share of requests aborted, 0 to 100.
    pub percent: f64,
    /// The status the proxy answers aborted requests with.
    pub status: http::StatusCode,
}

/// Injects faults into the requests of the inner service.
#[derive(Clone, Debug)]
pub struct Fault<S> {
    inner: S,
    policy: Option<Arc<Policy>>,
}

/// Builds [`Fault`] services.
#[derive(Clone, Debug)]
pub struct FaultLayer {
    policy: Option<Arc<Policy>>,
}

#[derive(Debug)]
struct Policy {
    delay: Option<FaultDelay>,
    abort: Option<FaultAbortPolicy>,
    rng: Draw,
}

/// Where the random draws come from.
#[derive(Debug)]
enum Draw {
    /// fastrand's thread-local generator.
    ThreadLocal,
    /// A seeded sequence shared by every clone (tests): draw `n` uses the seed `seed + n`.
    Seeded(AtomicU64),
}

// === impl FaultLayer ===

impl FaultLayer {
    /// A layer injecting `policy`'s faults (none, or a policy with neither fault: pass-through).
    pub fn new(policy: Option<FaultPolicy>) -> Self {
        Self::build(policy, Draw::ThreadLocal)
    }

    /// Like [`FaultLayer::new`], with a deterministic random sequence starting at `seed`.
    pub fn with_seed(policy: Option<FaultPolicy>, seed: u64) -> Self {
        Self::build(policy, Draw::Seeded(AtomicU64::new(seed)))
    }

    fn build(policy: Option<FaultPolicy>, rng: Draw) -> Self {
        let policy = policy
            .filter(|p| p.delay.is_some() || p.abort.is_some())
            .map(|p| {
                Arc::new(Policy {
                    delay: p.delay,
                    abort: p.abort,
                    rng,
                })
            });
        Self { policy }
    }
}

impl<S> Layer<S> for FaultLayer {
    type Service = Fault<S>;

    fn layer(&self, inner: S) -> Fault<S> {
        Fault {
            inner,
            policy: self.policy.clone(),
        }
    }
}

// === impl Policy ===

impl Policy {
    /// Draws a number in [0, 100).
    fn draw(&self) -> f64 {
        match &self.rng {
            Draw::ThreadLocal => fastrand::f64() * 100.0,
            Draw::Seeded(next) => {
                fastrand::Rng::with_seed(next.fetch_add(1, Ordering::Relaxed)).f64() * 100.0
            }
        }
    }

    fn hit(&self, percent: f64) -> bool {
        // NOTE: a draw is made only for a configured fault, so its share holds per fault.
        percent > 0.0 && self.draw() < percent
    }
}

// === impl Fault ===

impl<S, Req> Service<Req> for Fault<S>
where
    S: Service<Req> + Clone + Send + 'static,
    S::Future: Send,
    S::Error: Into<BoxError>,
    Req: Send + 'static,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = ResponseFuture<S::Future, S::Response>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, req: Req) -> Self::Future {
        let Some(policy) = &self.policy else {
            return ResponseFuture::passthrough(self.inner.call(req));
        };
        let abort = policy
            .abort
            .filter(|a| policy.hit(a.percent))
            .map(|a| FaultAbort { status: a.status });
        match policy.delay.filter(|d| policy.hit(d.percent)) {
            None => match abort {
                Some(abort) => ResponseFuture::abort(abort),
                None => ResponseFuture::passthrough(self.inner.call(req)),
            },
            Some(delay) => {
                // NOTE: this service is ready; move it (with its reserved capacity) into the
                // future so the request goes out after the delay, and keep a clone here.
                let clone = self.inner.clone();
                let mut svc = std::mem::replace(&mut self.inner, clone);
                ResponseFuture::delayed(Box::pin(async move {
                    tokio::time::sleep(delay.duration).await;
                    if let Some(abort) = abort {
                        return Err(abort.into());
                    }
                    svc.call(req).await.map_err(Into::into)
                }))
            }
        }
    }
}

// === impl ResponseFuture ===

pin_project_lite::pin_project! {
    /// The response future of [`Fault`].
    pub struct ResponseFuture<F, T> {
        #[pin]
        state: State<F, T>,
    }
}

pin_project_lite::pin_project! {
    #[project = StateProj]
    enum State<F, T> {
        Passthrough { #[pin] fut: F },
        Abort { abort: Option<FaultAbort> },
        Delayed { fut: BoxFuture<'static, Result<T, BoxError>> },
    }
}

impl<F, T> ResponseFuture<F, T> {
    fn passthrough(fut: F) -> Self {
        Self {
            state: State::Passthrough { fut },
        }
    }

    fn abort(abort: FaultAbort) -> Self {
        Self {
            state: State::Abort { abort: Some(abort) },
        }
    }

    fn delayed(fut: BoxFuture<'static, Result<T, BoxError>>) -> Self {
        Self {
            state: State::Delayed { fut },
        }
    }
}

impl<F, T, E> Future for ResponseFuture<F, T>
where
    F: Future<Output = Result<T, E>>,
    E: Into<BoxError>,
{
    type Output = Result<T, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project().state.project() {
            StateProj::Passthrough { fut } => fut.poll(cx).map_err(Into::into),
            StateProj::Abort { abort } => match abort.take() {
                Some(abort) => Poll::Ready(Err(abort.into())),
                None => Poll::Ready(Err("fault future polled after completion".into())),
            },
            StateProj::Delayed { fut } => fut.as_mut().poll(cx),
        }
    }
}

impl<F, T> std::fmt::Debug for ResponseFuture<F, T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("fault::ResponseFuture")
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error;
    use tokio::time::Instant;
    use tower_test::{assert_request_eq, mock};

    type Svc = mock::Spawn<Fault<mock::Mock<u32, u32>>>;

    /// Sends `n` requests one after the other; returns (aborted, delayed) counts.
    async fn run(svc: &mut Svc, handle: &mut mock::Handle<u32, u32>, n: u32) -> (u32, u32) {
        let (mut aborted, mut delayed) = (0, 0);
        for i in 0..n {
            assert!(svc.poll_ready().is_ready());
            let start = Instant::now();
            let mut fut = tokio::spawn(svc.call(i));
            // The request reaches the upstream at once or after the delay, or never.
            let res = loop {
                tokio::select! {
                    res = &mut fut => break res.unwrap(),
                    Some((req, tx)) = handle.next_request() => {
                        assert_eq!(req, i);
                        tx.send_response(i);
                    }
                }
            };
            match res {
                Ok(v) => assert_eq!(v, i),
                Err(e) => {
                    assert_eq!(
                        error::find::<FaultAbort>(&*e).unwrap().status,
                        http::StatusCode::SERVICE_UNAVAILABLE
                    );
                    aborted += 1;
                }
            }
            if start.elapsed() >= Duration::from_secs(1) {
                delayed += 1;
            }
        }
        (aborted, delayed)
    }

    #[tokio::test(start_paused = true)]
    async fn percentages_are_respected() {
        let policy = FaultPolicy {
            delay: Some(FaultDelay {
                percent: 20.0,
                duration: Duration::from_secs(1),
            }),
            abort: Some(FaultAbortPolicy {
                percent: 10.0,
                status: http::StatusCode::SERVICE_UNAVAILABLE,
            }),
        };
        let (mut svc, mut handle) = mock::spawn_layer(FaultLayer::with_seed(Some(policy), 42));
        let (aborted, delayed) = run(&mut svc, &mut handle, 2000).await;
        assert!((150..=250).contains(&aborted), "aborted {aborted}");
        assert!((340..=460).contains(&delayed), "delayed {delayed}");
    }

    #[tokio::test(start_paused = true)]
    async fn delay_holds_the_request_then_forwards_it() {
        let policy = FaultPolicy {
            delay: Some(FaultDelay {
                percent: 100.0,
                duration: Duration::from_millis(500),
            }),
            abort: None,
        };
        let (mut svc, mut handle) = mock::spawn_layer::<u32, u32, _>(FaultLayer::new(Some(policy)));
        assert!(svc.poll_ready().is_ready());
        let start = Instant::now();
        let fut = tokio::spawn(svc.call(7));
        tokio::time::sleep(Duration::from_millis(499)).await;
        assert!(handle.next_request().now_or_never_is_none());
        assert_request_eq!(handle, 7).send_response(8);
        assert_eq!(fut.await.unwrap().unwrap(), 8);
        assert_eq!(start.elapsed(), Duration::from_millis(500));
    }

    #[tokio::test(start_paused = true)]
    async fn full_abort_never_reaches_the_upstream() {
        let policy = FaultPolicy {
            delay: None,
            abort: Some(FaultAbortPolicy {
                percent: 100.0,
                status: http::StatusCode::IM_A_TEAPOT,
            }),
        };
        let (mut svc, mut handle) = mock::spawn_layer::<u32, u32, _>(FaultLayer::new(Some(policy)));
        assert!(svc.poll_ready().is_ready());
        let err = svc.call(1).await.unwrap_err();
        assert_eq!(
            error::find::<FaultAbort>(&*err).unwrap().status,
            http::StatusCode::IM_A_TEAPOT
        );
        assert!(handle.next_request().now_or_never_is_none());
    }

    #[tokio::test(start_paused = true)]
    async fn off_costs_nothing() {
        for layer in [
            FaultLayer::with_seed(None, 1),
            FaultLayer::with_seed(Some(FaultPolicy::default()), 1),
        ] {
            assert!(layer.policy.is_none());
            let (mut svc, mut handle) = mock::spawn_layer::<u32, u32, _>(layer);
            assert!(svc.poll_ready().is_ready());
            let fut = svc.call(1);
            // The inner future itself, not a boxed or delayed one.
            assert!(matches!(fut.state, State::Passthrough { .. }));
            assert_request_eq!(handle, 1).send_response(2);
            assert_eq!(fut.await.unwrap(), 2);
        }
    }

    trait NowOrNeverIsNone {
        fn now_or_never_is_none(self) -> bool;
    }

    impl<F: Future> NowOrNeverIsNone for F {
        fn now_or_never_is_none(self) -> bool {
            futures_util::FutureExt::now_or_never(self).is_none()
        }
    }
}
