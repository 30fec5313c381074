//! Body types: the response body (upstream's stream or a small local one) and the request body
//! sent upstream, each counting bytes for the access log when it is on.

use super::log::{PendingLog, DOWNSTREAM_GONE};
use crate::{
    io::{BodyEnd, RequestGuard},
    pool::UpstreamBody,
};
use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use pillion_layers::{error::DownstreamBodyError, limit, BoxError};
use pillion_telemetry::HttpStats;
use std::future::Future;
use std::{
    pin::Pin,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
    task::{ready, Context, Poll},
    time::Duration,
};
use tokio::time::{Instant, Sleep};

pin_project_lite::pin_project! {
    /// A response body: streamed from upstream or made by the proxy, without boxing. When the
    /// access log is on, it carries the request's pending line, written when the body ends. On
    /// HTTP/1 it ends the request (for the head timeout) when it ends. On a route with a
    /// `timeout`, it fails with [`BodyTimeout`] if it has not ended by the route's deadline.
    pub struct ProxyBody {
        #[pin]
        kind: Kind,
        log: Option<Box<PendingLog>>,
        request: Option<RequestGuard>,
        deadline: Option<Pin<Box<Deadline>>>,
        idle: Option<IdleTimer>,
    }

    impl PinnedDrop for ProxyBody {
        fn drop(this: Pin<&mut Self>) {
            let this = this.project();
            // NOTE: every end the proxy sees (the end of the stream, an error, a cut) writes the
            // line before this. hyper drops a body without asking for its end once the body says
            // it has ended, or once it has all the `Content-Length` it framed (an HTTP/2
            // upstream may send its END_STREAM after the last data). So an upstream body dropped
            // with its line pending, with data still to come, was dropped because the client
            // went away mid-body (its connection failed or closed, or it reset the HTTP/2
            // stream). A local body is not counted: a response to `HEAD` drops one unread.
            if let (Some(log), Kind::Upstream { body }) = (this.log.as_mut(), &*this.kind) {
                if !body.is_end_stream() && body.size_hint().exact() != Some(0) {
                    log.entry.response_flags = DOWNSTREAM_GONE;
                }
            }
        }
    }
}

/// A body's idle timer (the listener's `stream_idle_timeout`): armed when the body has nothing to
/// give while it is asked for more, re-armed only after it gave something. A body that is not
/// asked (its reader is busy writing) is not idle. The timer is allocated the first time the
/// body makes its reader wait, never for a body that is always ready.
///
/// NOTE: 16 bytes (the timeout in milliseconds), as it makes every body bigger.
struct IdleTimer {
    sleep: Option<Pin<Box<Sleep>>>,
    after_ms: u32,
    moved: bool,
}

/// A body moved no byte for the listener's `stream_idle_timeout`: a request body so idle fails
/// its request (408 `stream-idle-timeout`), a response body is cut short.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("the body moved no byte for {after:?} (stream_idle_timeout)")]
pub struct StreamIdle {
    /// The listener's `stream_idle_timeout`.
    pub after: Duration,
}

impl IdleTimer {
    fn new(after: Duration) -> Self {
        Self {
            sleep: None,
            // NOTE: at least 1ms; a timeout beyond 49 days is as good as none.
            after_ms: u32::try_from(after.as_millis()).unwrap_or(u32::MAX).max(1),
            moved: true,
        }
    }

    fn after(&self) -> Duration {
        Duration::from_millis(u64::from(self.after_ms))
    }

    /// Notes what the body's poll gave: data or an end re-arm the timer; `Pending` polls it,
    /// and is `Ready` once the body has been idle for `after`.
    fn poll_idle<T>(&mut self, cx: &mut Context<'_>, polled: &Poll<T>) -> Poll<StreamIdle> {
        if polled.is_ready() {
            self.moved = true;
            return Poll::Pending;
        }
        if self.moved {
            self.moved = false;
            let at = Instant::now() + self.after();
            match &mut self.sleep {
                Some(s) => s.as_mut().reset(at),
                None => self.sleep = Some(Box::pin(tokio::time::sleep_until(at))),
            }
        }
        match &mut self.sleep {
            Some(s) => {
                ready!(s.as_mut().poll(cx));
                Poll::Ready(StreamIdle {
                    after: self.after(),
                })
            }
            None => Poll::Pending,
        }
    }
}

pin_project_lite::pin_project! {
    /// A route's deadline for the rest of a response, the timeout it comes from, and the route's
    /// stats that count the cut: one allocation, the timer inside it.
    struct Deadline {
        #[pin]
        sleep: Sleep,
        after: Duration,
        stats: HttpStats,
    }
}

/// The route's `timeout` elapsed while the response body was still streaming: the response is
/// cut short (the downstream connection closed on HTTP/1, the stream reset on HTTP/2), and the
/// upstream's body is dropped with its connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("request timeout elapsed after {after:?} while the response body was streaming")]
pub struct BodyTimeout {
    /// The route's timeout.
    pub after: Duration,
}

pin_project_lite::pin_project! {
    #[project = KindProj]
    enum Kind {
        Upstream { #[pin] body: limit::ResponseBody<UpstreamBody> },
        Local { data: Option<Bytes> },
    }
}

pin_project_lite::pin_project! {
    /// The request body sent upstream: the downstream body, counted when the access log is on.
    pub struct RequestBody {
        #[pin]
        inner: Downstream,
        received: Option<Arc<AtomicU64>>,
        idle: Option<IdleTimer>,
    }
}

pin_project_lite::pin_project! {
    /// A request's body as the downstream connection delivers it: hyper's, or none at all (a
    /// request the proxy's own HTTP/1.1 server read has no body).
    #[project = DownstreamProj]
    pub enum Downstream {
        Hyper { #[pin] body: Incoming, end: Option<BodyEnd> },
        Empty,
    }
}

impl From<Incoming> for Downstream {
    fn from(body: Incoming) -> Self {
        Self::Hyper { body, end: None }
    }
}

impl Downstream {
    /// hyper's body of an HTTP/1 request, which tells `end` when it has been read whole (so
    /// bytes after an early response are known to be the rest of it, not the next request).
    pub fn watched(body: Incoming, end: BodyEnd) -> Self {
        Self::Hyper {
            body,
            end: Some(end),
        }
    }
}

/// The body of a request without one.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoBody;

impl From<NoBody> for Downstream {
    fn from(_: NoBody) -> Self {
        Self::Empty
    }
}

// === impl ProxyBody ===

impl ProxyBody {
    /// A body made by the proxy.
    pub fn local(data: impl Into<Bytes>) -> Self {
        let data: Bytes = data.into();
        Self {
            kind: Kind::Local {
                data: (!data.is_empty()).then_some(data),
            },
            log: None,
            request: None,
            deadline: None,
            idle: None,
        }
    }

    /// Ends the body with [`BodyTimeout`] at `at` (the route's `timeout` of `after` from when the
    /// request went to the route's stack) unless it ends first.
    pub(crate) fn set_deadline(&mut self, at: Instant, after: Duration, stats: &HttpStats) {
        if !self.is_end_stream() {
            self.deadline = Some(Box::pin(Deadline {
                sleep: tokio::time::sleep_until(at),
                after,
                stats: stats.clone(),
            }));
        }
    }

    /// Cuts the body if it makes its reader wait `after` for a byte (the listener's
    /// `stream_idle_timeout`).
    pub(crate) fn set_idle_timeout(&mut self, after: Duration) {
        if !self.is_end_stream() {
            self.idle = Some(IdleTimer::new(after));
        }
    }

    /// Attaches the pending access-log line; it is written when the body ends or is dropped.
    pub(crate) fn set_log(&mut self, log: Box<PendingLog>) {
        if self.is_end_stream() {
            // Nothing left to stream: write the line now.
            drop(log);
        } else {
            self.log = Some(log);
        }
    }

    /// Ends the request when the body ends or is dropped.
    pub(crate) fn set_request(&mut self, request: RequestGuard) {
        if !self.is_end_stream() {
            self.request = Some(request);
        }
    }
}

impl From<limit::ResponseBody<UpstreamBody>> for ProxyBody {
    fn from(body: limit::ResponseBody<UpstreamBody>) -> Self {
        Self {
            kind: Kind::Upstream { body },
            log: None,
            request: None,
            deadline: None,
            idle: None,
        }
    }
}

impl Body for ProxyBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let mut this = self.project();
        if let Some(d) = this.deadline {
            let d = d.as_mut().project();
            if d.sleep.poll(cx).is_ready() {
                let after = *d.after;
                d.stats.record_body_timeout();
                *this.deadline = None;
                tracing::debug!(
                    ?after,
                    "route timeout elapsed mid-body: cutting the response"
                );
                // NOTE: the upstream body goes now, and with it its connection and permit.
                this.kind.set(Kind::Local { data: None });
                *this.request = None;
                if let Some(log) = this.log.as_mut() {
                    log.entry.response_flags = "UT";
                }
                *this.log = None;
                return Poll::Ready(Some(Err(BodyTimeout { after }.into())));
            }
        }
        let res = match this.kind.as_mut().project() {
            KindProj::Upstream { body } => body.poll_frame(cx),
            KindProj::Local { data } => Poll::Ready(data.take().map(|d| Ok(Frame::data(d)))),
        };
        if let Some(idle) = this.idle {
            if let Poll::Ready(e) = idle.poll_idle(cx, &res) {
                tracing::debug!(after = ?e.after, "response body idle: cutting the response");
                // NOTE: as for the route's timeout: the upstream body goes now, with its
                // connection.
                this.kind.set(Kind::Local { data: None });
                *this.request = None;
                *this.idle = None;
                if let Some(log) = this.log.as_mut() {
                    log.entry.response_flags = "SI";
                }
                *this.log = None;
                return Poll::Ready(Some(Err(e.into())));
            }
        }
        if let Poll::Ready(None | Some(Err(_))) = &res {
            *this.request = None;
        }
        if let Some(log) = this.log {
            match &res {
                Poll::Ready(Some(Ok(f))) => {
                    log.entry.bytes_sent += f.data_ref().map_or(0, |d| d.len() as u64)
                }
                Poll::Ready(None) => *this.log = None,
                Poll::Ready(Some(Err(_))) => {
                    log.entry.response_flags = "UR";
                    *this.log = None;
                }
                Poll::Pending => {}
            }
        }
        res
    }

    fn is_end_stream(&self) -> bool {
        match &self.kind {
            Kind::Upstream { body } => body.is_end_stream(),
            Kind::Local { data } => data.is_none(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.kind {
            Kind::Upstream { body } => body.size_hint(),
            Kind::Local { data } => {
                SizeHint::with_exact(data.as_ref().map_or(0, |d| d.len() as u64))
            }
        }
    }
}

// === impl RequestBody ===

impl RequestBody {
    /// Wraps a downstream body, counting into `received` when given.
    pub fn new(inner: impl Into<Downstream>, received: Option<Arc<AtomicU64>>) -> Self {
        Self {
            inner: inner.into(),
            received,
            idle: None,
        }
    }

    /// Fails the body with [`StreamIdle`] if the client sends no byte of it for `after` while
    /// the upstream waits for more (the listener's `stream_idle_timeout`).
    pub fn with_idle_timeout(mut self, after: Duration) -> Self {
        if !self.is_end_stream() {
            self.idle = Some(IdleTimer::new(after));
        }
        self
    }
}

impl Body for RequestBody {
    type Data = Bytes;
    type Error = DownstreamBodyError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, DownstreamBodyError>>> {
        let this = self.project();
        let res = match this.inner.project() {
            // NOTE: marked as the client's, so the upstream try it breaks is not held against
            // the endpoint, not retried, and answered 400.
            DownstreamProj::Hyper { mut body, end } => {
                let polled = body.as_mut().poll_frame(cx);
                if let Some(idle) = this.idle {
                    if let Poll::Ready(e) = idle.poll_idle(cx, &polled) {
                        *this.idle = None;
                        return Poll::Ready(Some(Err(DownstreamBodyError(Box::new(e)))));
                    }
                }
                let frame = ready!(polled);
                if let Some(end) = end
                    .as_ref()
                    .filter(|_| frame.is_none() || body.is_end_stream())
                {
                    end.ended();
                }
                Poll::Ready(frame.map(|f| f.map_err(|e| DownstreamBodyError(Box::new(e)))))
            }
            DownstreamProj::Empty => return Poll::Ready(None),
        };
        if let (Some(c), Poll::Ready(Some(Ok(f)))) = (this.received, &res) {
            c.fetch_add(
                f.data_ref().map_or(0, |d| d.len() as u64),
                Ordering::Relaxed,
            );
        }
        res
    }

    fn is_end_stream(&self) -> bool {
        match &self.inner {
            Downstream::Hyper { body, .. } => body.is_end_stream(),
            Downstream::Empty => true,
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.inner {
            Downstream::Hyper { body, .. } => body.size_hint(),
            Downstream::Empty => SizeHint::with_exact(0),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;
    use pillion_telemetry::{Metrics, RouteLabels};
    use prometheus_client::registry::Registry;

    /// A route's stats, and the registry's text, to read its counters from.
    fn stats() -> (HttpStats, impl Fn() -> String) {
        let mut registry = Registry::default();
        let metrics = Metrics::register(&mut registry);
        let stats = metrics.http_stats(RouteLabels {
            direction: "inbound",
            listener: "in".into(),
            route: "r".into(),
            cluster: "app".into(),
        });
        let text = move || {
            let mut out = String::new();
            prometheus_client::encoding::text::encode(&mut out, &registry).expect("encode");
            out
        };
        (stats, text)
    }

    #[tokio::test(start_paused = true)]
    async fn the_idle_timer_fires_only_after_a_wait_without_progress() {
        let after = Duration::from_millis(100);
        let mut t = IdleTimer::new(after);
        // The body waits 60ms at a time and then gives something: never idle for long enough.
        for _ in 0..5 {
            std::future::poll_fn(|cx| {
                assert!(t.poll_idle(cx, &Poll::<()>::Pending).is_pending());
                Poll::Ready(())
            })
            .await;
            tokio::time::sleep(Duration::from_millis(60)).await;
            std::future::poll_fn(|cx| {
                assert!(t.poll_idle(cx, &Poll::Ready(())).is_pending());
                Poll::Ready(())
            })
            .await;
        }
        // Then it gives nothing: the timer fires `after` from the first wait.
        let armed = Instant::now();
        let idle = std::future::poll_fn(|cx| t.poll_idle(cx, &Poll::<()>::Pending)).await;
        assert_eq!(idle, StreamIdle { after });
        assert_eq!(armed.elapsed(), after);
    }

    fn body_timeouts(text: &str) -> &str {
        text.lines()
            .find(|l| l.starts_with("pillion_http_response_body_timeouts_total{"))
            .and_then(|l| l.rsplit(' ').next())
            .unwrap_or("missing")
    }

    #[tokio::test(start_paused = true)]
    async fn a_body_that_has_not_ended_by_its_deadline_fails_with_body_timeout() {
        let after = Duration::from_millis(300);
        let (stats, text) = stats();
        let mut body = ProxyBody::local("late");
        body.set_deadline(Instant::now() + after, after, &stats);
        tokio::time::advance(Duration::from_millis(301)).await;
        let err = body
            .frame()
            .await
            .expect("a frame")
            .expect_err("the deadline passed");
        let timeout = err.downcast_ref::<BodyTimeout>().expect("a BodyTimeout");
        assert_eq!(timeout.after, after);
        // The upstream body went with the timeout: nothing follows the error.
        assert!(body.is_end_stream());
        assert!(body.frame().await.is_none());
        let text = text();
        assert_eq!(body_timeouts(&text), "1", "{text}");
    }

    #[tokio::test(start_paused = true)]
    async fn a_body_polled_before_its_deadline_streams_whole() {
        let after = Duration::from_millis(300);
        let (stats, text) = stats();
        let mut body = ProxyBody::local("in time");
        body.set_deadline(Instant::now() + after, after, &stats);
        tokio::time::advance(Duration::from_millis(299)).await;
        let data = body.collect().await.expect("no timeout").to_bytes();
        assert_eq!(&data[..], b"in time");
        let text = text();
        assert_eq!(body_timeouts(&text), "0", "{text}");
    }

    #[test]
    fn an_ended_body_gets_no_timer() {
        // An empty body has nothing left to stream, so no deadline (and no timer) is set; this
        // runs outside a runtime, where making a timer would panic.
        let mut body = ProxyBody::local("");
        body.set_deadline(Instant::now(), Duration::from_secs(1), &stats().0);
        assert!(body.deadline.is_none());
    }
}
