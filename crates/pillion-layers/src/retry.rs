//! Retries: a policy (which failures, how many times, with what backoff), a per-cluster budget,
//! request bodies replayed from a bounded buffer, and one transparent retry of requests that
//! never left on a stale pooled connection.
//!
//! The layer turns `Request<B>` into `Request<ReplayBody<B>>` for the inner service. A request is
//! retried only if its body can be replayed (empty, or within [`RetryPolicy::buffer_cap`]).
//! Idempotent methods (GET, HEAD, OPTIONS, TRACE, PUT, DELETE) are retried on every configured
//! condition; other methods only when nothing reached the upstream (connect failure, HTTP/2
//! `REFUSED_STREAM`). The final response carries [`Attempts`]; the final error is wrapped in
//! [`RequestFailed`] with the attempt count. With no policy and the transparent retry off, the
//! layer forwards the inner future untouched; the retrying future is boxed.

mod budget;
mod replay;

use std::{
    future::Future,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
    time::Duration,
};

use futures_util::future::BoxFuture;
use http::{Method, Request, Response, StatusCode};
use http_body::Body;
use tower::{Layer, Service};

pub use self::{
    budget::{Budget, BudgetPolicy},
    replay::{Capped, ReplayBody},
};
pub use crate::error::{classify, FailureKind, RequestFailed};
use crate::{
    error::{self, TimeoutKind},
    limit::{Counter, Permit},
    timeout::{self, Deadlined},
    BoxError,
};

/// The default replay buffer cap: 64 KiB.
pub const DEFAULT_BUFFER_CAP: usize = 64 * 1024;

/// When and how to retry.
#[derive(Clone, Debug, PartialEq)]
pub struct RetryPolicy {
    /// Retries after the first attempt (0: never retry on this policy).
    pub retries: u32,
    /// The failures that are retried.
    pub on: RetryOn,
    /// The wait before each retry.
    pub backoff: Backoff,
    /// A timeout for each attempt; when it fires the attempt fails with
    /// `Elapsed { kind: PerTry }`, retried like a 504 (on `status_5xx` or `gateway_error`).
    pub per_try_timeout: Option<Duration>,
    /// The most request body bytes kept for replays; larger bodies are sent once.
    pub buffer_cap: usize,
}

impl Default for RetryPolicy {
    /// Two retries of connect failures, resets, refused streams and 502/503/504, 25 ms to 250 ms
    /// backoff, no per-try timeout, 64 KiB buffer.
    fn default() -> Self {
        Self {
            retries: 2,
            on: RetryOn {
                connect_failure: true,
                reset: true,
                refused_stream: true,
                status_5xx: false,
                gateway_error: true,
                statuses: Vec::new(),
            },
            backoff: Backoff::default(),
            per_try_timeout: None,
            buffer_cap: DEFAULT_BUFFER_CAP,
        }
    }
}

/// The failures a policy retries.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RetryOn {
    /// No connection could be made (any method).
    pub connect_failure: bool,
    /// The connection was reset or closed under the request (idempotent methods).
    pub reset: bool,
    /// HTTP/2 `REFUSED_STREAM` (any method).
    pub refused_stream: bool,
    /// Any 5xx response (idempotent methods), and no response at all: what `connect_failure`,
    /// `refused_stream` and `reset` retry, and per-try timeouts (idempotent methods).
    pub status_5xx: bool,
    /// 502, 503 and 504 responses (idempotent methods), and no response at all, as
    /// `status_5xx`.
    pub gateway_error: bool,
    /// These response statuses (idempotent methods).
    pub statuses: Vec<u16>,
}

/// Exponential backoff with full jitter: before retry `n` (from 0), wait a random duration in
/// `[0, min(max, base * 2^n)]`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Backoff {
    /// The ceiling of the first wait.
    pub base: Duration,
    /// The largest ceiling.
    pub max: Duration,
}

impl Default for Backoff {
    /// 25 ms, up to 250 ms.
    fn default() -> Self {
        Self {
            base: Duration::from_millis(25),
            max: Duration::from_millis(250),
        }
    }
}

/// The number of attempts made for a response (1: no retry), in its extensions.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Attempts(pub u32);

/// The transparent retry: one retry, whatever the policy, of a request that failed before any of
/// it was sent (see [`error::is_unsent`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Transparent {
    /// Whether the transparent retry is made at all.
    pub enabled: bool,
    /// Also retry "connection closed before message completed" (the keep-alive race) of
    /// idempotent methods. NOTE: off by default: hyper cannot tell whether such a request was
    /// read by the upstream, and the transparent retry is only for requests nothing of which
    /// was sent; a route's policy retries these with `reset`.
    pub incomplete_message: bool,
    /// With `incomplete_message`: retry non-idempotent methods too.
    pub incomplete_message_any_method: bool,
}

impl Default for Transparent {
    /// Enabled, for unsent requests only.
    fn default() -> Self {
        Self {
            enabled: true,
            incomplete_message: false,
            incomplete_message_any_method: false,
        }
    }
}

/// Retries requests to the inner service.
#[derive(Clone, Debug)]
pub struct Retry<S> {
    inner: S,
    config: Arc<Config>,
}

/// Builds [`Retry`] services.
#[derive(Clone, Debug)]
pub struct RetryLayer {
    config: Arc<Config>,
}

// NOTE: cloning shares the budget and the retry limit (both are handles).
#[derive(Clone, Debug)]
struct Config {
    policy: Option<RetryPolicy>,
    budget: Option<Arc<Budget>>,
    retry_limit: Option<Counter>,
    transparent: Transparent,
}

// === impl Backoff ===

impl Backoff {
    /// The ceiling of the wait before retry `n` (from 0): `min(max, base * 2^n)`.
    pub fn ceiling(&self, n: u32) -> Duration {
        self.base
            .saturating_mul(2u32.saturating_pow(n))
            .min(self.max)
    }

    /// A random wait before retry `n` (from 0), in `[0, ceiling(n)]`.
    pub fn delay(&self, n: u32, rng: &mut fastrand::Rng) -> Duration {
        let ceiling = u64::try_from(self.ceiling(n).as_nanos()).unwrap_or(u64::MAX);
        Duration::from_nanos(rng.u64(0..=ceiling))
    }
}

// === impl RetryOn ===

impl RetryOn {
    fn status(&self, status: StatusCode) -> bool {
        (self.status_5xx && status.is_server_error())
            || (self.gateway_error
                && matches!(
                    status,
                    StatusCode::BAD_GATEWAY
                        | StatusCode::SERVICE_UNAVAILABLE
                        | StatusCode::GATEWAY_TIMEOUT
                ))
            || self.statuses.contains(&status.as_u16())
    }
}

// === impl RetryLayer ===

impl RetryLayer {
    /// A layer retrying on `policy` (none: only the transparent retry), with the default
    /// transparent retry, no budget and no limit on concurrent retries.
    pub fn new(policy: Option<RetryPolicy>) -> Self {
        Self {
            config: Arc::new(Config {
                policy,
                budget: None,
                retry_limit: None,
                transparent: Transparent::default(),
            }),
        }
    }

    /// Policy retries also need a token from `budget` (shared by the cluster's routes).
    pub fn with_budget(mut self, budget: Arc<Budget>) -> Self {
        Arc::make_mut(&mut self.config).budget = Some(budget);
        self
    }

    /// Policy retries also need a permit from `limit` (e.g. `Counter::new(MAX_RETRIES, n)`), held
    /// until the request is over; a retry refused for it is not made (and counted there).
    pub fn with_retry_limit(mut self, limit: Counter) -> Self {
        Arc::make_mut(&mut self.config).retry_limit = Some(limit);
        self
    }

    /// Sets the transparent retry.
    pub fn with_transparent(mut self, transparent: Transparent) -> Self {
        Arc::make_mut(&mut self.config).transparent = transparent;
        self
    }
}

impl<S> Layer<S> for RetryLayer {
    type Service = Retry<S>;

    fn layer(&self, inner: S) -> Retry<S> {
        Retry {
            inner,
            config: self.config.clone(),
        }
    }
}

// === impl Retry ===

impl<S, B, RB> Service<Request<B>> for Retry<S>
where
    S: Service<Request<ReplayBody<B>>, Response = Response<RB>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Into<BoxError>,
    B: Body + Unpin + Send + 'static,
    B::Error: Into<BoxError>,
    RB: Send + 'static,
{
    type Response = Response<RB>;
    type Error = BoxError;
    type Future = ResponseFuture<S::Future, RB>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        let config = &self.config;
        if config.policy.is_none() && !config.transparent.enabled {
            return ResponseFuture::passthrough(self.inner.call(req.map(ReplayBody::passthrough)));
        }

        let cap = config
            .policy
            .as_ref()
            .map_or(DEFAULT_BUFFER_CAP, |p| p.buffer_cap);
        let (parts, body) = req.into_parts();
        let body = ReplayBody::new(body, cap);
        let Some(template) = body.try_clone() else {
            // Known to be larger than the buffer: sent once.
            return ResponseFuture::passthrough(self.inner.call(Request::from_parts(parts, body)));
        };
        if config.policy.is_some() {
            if let Some(budget) = &config.budget {
                budget.deposit();
            }
        }

        let per_try = config.policy.as_ref().and_then(|p| p.per_try_timeout);
        let first = attempt(
            &mut self.inner,
            Request::from_parts(parts.clone(), body),
            per_try,
        );
        let svc = self.inner.clone();
        ResponseFuture::retrying(Box::pin(RetryFuture {
            state: State::Attempt { fut: first },
            svc,
            config: config.clone(),
            parts,
            template,
            attempts: 1,
            retries: 0,
            transparent_used: false,
            permit: None,
            rng: None,
        }))
    }
}

// === impl ResponseFuture ===

pin_project_lite::pin_project! {
    /// The response future of [`Retry`]: the inner future itself when no retry is possible, else
    /// the boxed retrying future.
    pub struct ResponseFuture<F, RB> {
        #[pin]
        inner: Inner<F, RB>,
    }
}

pin_project_lite::pin_project! {
    #[project = InnerProj]
    enum Inner<F, RB> {
        Passthrough { #[pin] fut: F },
        Retrying { fut: BoxFuture<'static, Result<Response<RB>, BoxError>> },
    }
}

impl<F, RB> ResponseFuture<F, RB> {
    fn passthrough(fut: F) -> Self {
        Self {
            inner: Inner::Passthrough { fut },
        }
    }

    fn retrying(fut: BoxFuture<'static, Result<Response<RB>, BoxError>>) -> Self {
        Self {
            inner: Inner::Retrying { fut },
        }
    }

    /// Whether this request may be retried (false: the inner future is returned untouched).
    pub fn is_retrying(&self) -> bool {
        matches!(self.inner, Inner::Retrying { .. })
    }
}

impl<F, RB, E> Future for ResponseFuture<F, RB>
where
    F: Future<Output = Result<Response<RB>, E>>,
    E: Into<BoxError>,
{
    type Output = Result<Response<RB>, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project().inner.project() {
            InnerProj::Passthrough { fut } => fut.poll(cx).map_err(Into::into),
            InnerProj::Retrying { fut } => fut.as_mut().poll(cx),
        }
    }
}

impl<F, RB> std::fmt::Debug for ResponseFuture<F, RB> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("retry::ResponseFuture")
            .field("retrying", &self.is_retrying())
            .finish()
    }
}

// === impl RetryFuture ===

pin_project_lite::pin_project! {
    /// Drives attempts until one succeeds or no retry is allowed.
    struct RetryFuture<S, F, B, RB> {
        #[pin]
        state: State<F, ReplayBody<B>, RB>,
        svc: S,
        config: Arc<Config>,
        parts: http::request::Parts,
        // Never polled: the source of each retry's body.
        template: ReplayBody<B>,
        attempts: u32,
        // Policy retries made (transparent retries excluded).
        retries: u32,
        transparent_used: bool,
        // The retry-limit permit, held until the request is over.
        permit: Option<Permit>,
        rng: Option<fastrand::Rng>,
    }
}

pin_project_lite::pin_project! {
    #[project = StateProj]
    enum State<F, RBody, RB> {
        // An attempt is in flight.
        Attempt { #[pin] fut: timeout::ResponseFuture<F> },
        // Waiting before a retry, and for the previous attempt to release the body. The last
        // result is kept in case the retry cannot be made after all.
        Backoff {
            #[pin]
            sleep: Option<tokio::time::Sleep>,
            last: Option<Result<Response<RB>, BoxError>>,
        },
        // Waiting for the service to be ready for the retry.
        Ready { body: Option<RBody> },
    }
}

/// Why a retry is made.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Why {
    Policy,
    Transparent,
}

impl<S, F, B, RB, E> Future for RetryFuture<S, F, B, RB>
where
    S: Service<Request<ReplayBody<B>>, Response = Response<RB>, Future = F, Error = E>,
    F: Future<Output = Result<Response<RB>, E>>,
    E: Into<BoxError>,
    B: Body + Unpin,
{
    type Output = Result<Response<RB>, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        loop {
            match this.state.as_mut().project() {
                StateProj::Attempt { fut } => {
                    let result = std::task::ready!(fut.poll(cx));
                    let why = decide(
                        this.config,
                        &this.parts.method,
                        *this.retries,
                        *this.transparent_used,
                        &result,
                    );
                    let Some(why) = why else {
                        return Poll::Ready(finish(result, *this.attempts));
                    };
                    if this.template.is_capped() {
                        return Poll::Ready(finish(result, *this.attempts));
                    }
                    // A response that came before all of the request body had: its connection
                    // (which the response holds) may still be taking the body, so the retry
                    // could wait for the body forever. It is the answer, as sent.
                    if result.is_ok() && !this.template.is_complete() {
                        return Poll::Ready(finish(result, *this.attempts));
                    }
                    let delay = match why {
                        Why::Transparent => {
                            *this.transparent_used = true;
                            None
                        }
                        Why::Policy => {
                            // NOTE: the limit first, so a retry it refuses spends no token.
                            if this.permit.is_none() {
                                if let Some(limit) = &this.config.retry_limit {
                                    match limit.try_acquire() {
                                        Ok(permit) => *this.permit = Some(permit),
                                        Err(_) => {
                                            tracing::debug!("retry limit reached");
                                            return Poll::Ready(finish(result, *this.attempts));
                                        }
                                    }
                                }
                            }
                            if let Some(budget) = &this.config.budget {
                                if !budget.try_withdraw() {
                                    tracing::debug!("retry budget exhausted");
                                    return Poll::Ready(finish(result, *this.attempts));
                                }
                            }
                            let n = *this.retries;
                            *this.retries += 1;
                            let backoff = this.config.policy.as_ref().map(|p| p.backoff);
                            let rng = this.rng.get_or_insert_with(fastrand::Rng::new);
                            backoff.map(|b| b.delay(n, rng)).filter(|d| !d.is_zero())
                        }
                    };
                    tracing::debug!(attempt = *this.attempts, ?why, ?delay, "retrying");
                    // NOTE: a response to retry is released now, and with it its connection
                    // and the body it was sent (the body is whole, so the retry will have it);
                    // an error is kept, to be the answer if the body cannot be replayed.
                    this.state.set(State::Backoff {
                        sleep: delay.map(tokio::time::sleep),
                        last: result.is_err().then_some(result),
                    });
                }
                StateProj::Backoff { sleep, last } => {
                    if let Some(sleep) = sleep.as_pin_mut() {
                        std::task::ready!(sleep.poll(cx));
                    }
                    let replayable = std::task::ready!(this.template.poll_replayable(cx));
                    let body = if replayable {
                        this.template.try_clone()
                    } else {
                        None
                    };
                    let Some(body) = body else {
                        let last = last.take().unwrap_or_else(|| {
                            Err("the request body could not be replayed for a retry".into())
                        });
                        return Poll::Ready(finish(last, *this.attempts));
                    };
                    drop(last.take());
                    this.state.set(State::Ready { body: Some(body) });
                }
                StateProj::Ready { body } => {
                    if let Err(e) = std::task::ready!(this.svc.poll_ready(cx)) {
                        return Poll::Ready(finish(Err(e.into()), *this.attempts));
                    }
                    let Some(body) = body.take() else {
                        return Poll::Ready(Err("retry polled after completion".into()));
                    };
                    let req = Request::from_parts(this.parts.clone(), body);
                    let per_try = this.config.policy.as_ref().and_then(|p| p.per_try_timeout);
                    let fut = attempt(this.svc, req, per_try);
                    *this.attempts += 1;
                    this.state.set(State::Attempt { fut });
                }
            }
        }
    }
}

/// Sends one try of a request, bounded by `per_try` (whose deadline the request carries).
fn attempt<S, B>(
    svc: &mut S,
    mut req: Request<B>,
    per_try: Option<Duration>,
) -> timeout::ResponseFuture<S::Future>
where
    S: Service<Request<B>>,
{
    match per_try {
        None => timeout::ResponseFuture::new(svc.call(req), None, TimeoutKind::PerTry),
        Some(after) => {
            let at = tokio::time::Instant::now() + after;
            req.tighten_deadline(at);
            timeout::ResponseFuture::until(svc.call(req), at, after, TimeoutKind::PerTry)
        }
    }
}

/// Returns why the attempt's result should be retried, if it should.
fn decide<RB>(
    config: &Config,
    method: &Method,
    retries: u32,
    transparent_used: bool,
    result: &Result<Response<RB>, BoxError>,
) -> Option<Why> {
    let idempotent = is_idempotent(method);
    let policy = config.policy.as_ref().filter(|p| retries < p.retries);
    match result {
        Ok(rsp) => policy
            .filter(|p| idempotent && p.on.status(rsp.status()))
            .map(|_| Why::Policy),
        Err(e) => {
            let t = &config.transparent;
            if t.enabled
                && !transparent_used
                && (error::is_unsent(&**e)
                    || (t.incomplete_message
                        && error::is_incomplete_message(&**e)
                        && (idempotent || t.incomplete_message_any_method)))
            {
                return Some(Why::Transparent);
            }
            let on = &policy?.on;
            // NOTE: no response at all is a gateway error the proxy answers for the upstream
            // (502, 503 or 504), so `5xx` and `gateway-error` retry it too, as in Envoy.
            let no_response = on.status_5xx || on.gateway_error;
            let retry = match classify(e)? {
                FailureKind::ConnectFailure => on.connect_failure || no_response,
                FailureKind::RefusedStream => on.refused_stream || no_response,
                FailureKind::Reset => idempotent && (on.reset || no_response),
                FailureKind::Timeout => idempotent && no_response,
                FailureKind::Other => false,
            };
            retry.then_some(Why::Policy)
        }
    }
}

/// Whether a method may be retried after it may have reached the upstream.
pub fn is_idempotent(method: &Method) -> bool {
    matches!(
        *method,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::TRACE | Method::PUT | Method::DELETE
    )
}

fn finish<RB>(
    result: Result<Response<RB>, BoxError>,
    attempts: u32,
) -> Result<Response<RB>, BoxError> {
    match result {
        Ok(mut rsp) => {
            rsp.extensions_mut().insert(Attempts(attempts));
            Ok(rsp)
        }
        Err(source) => Err(RequestFailed { attempts, source }.into()),
    }
}

#[cfg(test)]
mod tests;
