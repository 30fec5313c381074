//! Upstream connection pools, one per endpoint, on hyper's connection API.
//!
//! HTTP/1.1: LIFO stacks of idle connections. A connection goes back on its stack when the
//! response body has been read to its end (or at once when all of the body came with the head),
//! so there is no task per request and no lookup by key: the endpoint carries its pool. A request
//! without a body goes on a connection of the proxy's own client ([`crate::h1`]), which the
//! requesting task drives itself; others go on hyper's client, whose connections run as tasks of
//! their own. An idle connection of the first kind becomes one of the second when a request
//! needs it (never back), so a mixed load opens no extra connections.
//!
//! HTTP/2: one shared connection per endpoint, opened by the first request that needs it while
//! the others wait for it, and replaced when it closes.
//!
//! Connections idle for the cluster's `idle_timeout` are closed by a reaper task that runs only
//! while the endpoint has connections. It looks every quarter of the timeout and closes what it
//! has found idle [`REAP_TICKS`] times in a row (after 3/4 to 4/4 of the timeout, never later, so
//! a connection is not reused past an app's keep-alive), and the request path reads no clock. A request refused by a reused connection before
//! any of it was sent (the upstream closed it while idle) is sent again on another connection.

use crate::{
    cluster::Endpoint,
    connect::{Counted, CountedConn},
    h1_client::{self as h1, H1Conn},
    http::RequestBody,
};
use bytes::Bytes;
use http::{Request, Response};
use http_body::{Body, Frame, SizeHint};
use hyper::{
    body::Incoming,
    client::conn::{http1, http2, TrySendError},
};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use pillion_layers::{balance::Pick, error::ConnectFailed, retry::ReplayBody, BoxError};
use pillion_tls::{MaybeTls, TlsConnector};
use std::{
    future::Future,
    net::SocketAddr,
    pin::Pin,
    sync::{
        atomic::{AtomicU64, AtomicUsize, Ordering},
        Arc, Mutex, MutexGuard, Weak,
    },
    task::{Context, Poll},
    time::Duration,
};
use tower::ServiceExt;
use tracing::debug;

/// How many consecutive looks, a quarter of `idle_timeout` apart, find a connection idle before
/// it is closed.
const REAP_TICKS: u8 = 4;

/// The body sent upstream.
pub(crate) type SendBody = ReplayBody<RequestBody>;

/// An upstream connection, opened and counted.
pub(crate) type Conn = CountedConn<TokioIo<MaybeTls>>;

/// Opens connections for a cluster, for one HTTP version: TCP (and TLS), counted and within the
/// cluster's limits.
#[derive(Clone)]
pub(crate) struct Connector {
    inner: Counted<TlsConnector>,
    /// Bounds, besides the TCP and TLS handshakes, the wait for an HTTP/2 upstream's first bytes.
    connect_timeout: Duration,
}

/// The pooled connections to one endpoint.
#[derive(Debug)]
pub struct EndpointPool {
    state: Mutex<State>,
    /// Serialises opening the shared HTTP/2 connection.
    h2_opening: tokio::sync::Mutex<()>,
    /// Attempts to open it, so that requests waiting on a failed attempt fail with it rather
    /// than each trying again in turn.
    h2_attempts: AtomicU64,
    /// Requests on the shared HTTP/2 connection whose response has not ended: while any is in
    /// flight (a long stream, a slow answer), the reaper keeps the connection.
    h2_streams: AtomicUsize,
    idle_timeout: Duration,
}

/// A failed attempt to open an endpoint's shared HTTP/2 connection, as each request that waited
/// on it reports it: the opener's error (a TLS identity mismatch stays one) behind a shared
/// pointer.
#[derive(Debug, Clone)]
struct H2Failure(Arc<dyn std::error::Error + Send + Sync>);

#[derive(Debug, Default)]
struct State {
    /// Idle HTTP/1.1 connections of hyper's client, most recently used last.
    idle: Vec<Idle>,
    /// Idle HTTP/1.1 connections of the proxy's own client, most recently used last.
    idle_own: Vec<IdleOwn>,
    /// The shared HTTP/2 connection, and how many looks of the reaper in a row found it unused.
    h2: Option<(http2::SendRequest<SendBody>, u8)>,
    /// Why the last attempt to open it failed (cleared when one succeeds), for the requests
    /// that waited on that attempt.
    h2_failure: Option<H2Failure>,
    /// Whether the reaper task is running.
    reaping: bool,
}

#[derive(Debug)]
struct Idle {
    tx: http1::SendRequest<SendBody>,
    /// How many looks of the reaper found it idle.
    ticks: u8,
}

#[derive(Debug)]
struct IdleOwn {
    conn: Box<H1Conn>,
    ticks: u8,
}

/// A response body from upstream. An HTTP/1.1 connection returns to its pool when the body has
/// been read to the end; the endpoint counts the request in flight until then.
pub struct UpstreamBody {
    kind: BodyKind,
    pick: Option<Pick>,
    _stream: Option<H2Stream>,
}

enum BodyKind {
    /// From hyper's client.
    Hyper {
        inner: Incoming,
        checkin: Option<Checkin>,
        ended: bool,
    },
    /// From the proxy's own HTTP/1.1 client.
    Own(h1::Body),
}

/// One request in flight on an endpoint's shared HTTP/2 connection, until dropped.
struct H2Stream(Arc<EndpointPool>);

struct Checkin {
    tx: http1::SendRequest<SendBody>,
    pool: Arc<EndpointPool>,
}

// === impl Connector ===

impl Connector {
    /// A connector over `inner`, whose TLS (ALPN) matches the version it is used for.
    pub(crate) fn new(inner: Counted<TlsConnector>, connect_timeout: Duration) -> Self {
        Self {
            inner,
            connect_timeout,
        }
    }

    async fn open(&self, ep: &Endpoint) -> Result<Conn, BoxError> {
        self.inner
            .clone()
            .oneshot(ep.uri.clone())
            .await
            .map_err(
                |e| match e.downcast::<pillion_layers::error::Overloaded>() {
                    // A circuit breaker is a local decision, not a connect failure.
                    Ok(overloaded) => overloaded as BoxError,
                    Err(e) => Box::new(ConnectFailed(e)),
                },
            )
    }

    /// Sends `req` to `ep` on an idle pooled HTTP/1.1 connection, opening one if there is none.
    pub(crate) async fn send_h1(
        &self,
        ep: &Endpoint,
        mut req: Request<SendBody>,
    ) -> Result<Response<UpstreamBody>, BoxError> {
        if h1::can_send(&req) {
            // An idle connection of the own client, else one of hyper's, else a new one; again
            // on another when a reused one had closed before any of the request was written, and
            // once (an idempotent request) when one closed before the response came.
            let mut lost = false;
            loop {
                let (conn, reused) = match ep.pool.checkout_own() {
                    Some(conn) => (conn, true),
                    None if ep.pool.has_idle_h1() => {
                        // NOTE: hyper's client consumes the request; a request without a body
                        // is copied (rarely: the own client serves most of them) to go again.
                        let again =
                            (!lost && req.method().is_idempotent()).then(|| bodyless_copy(&req));
                        match Box::pin(self.send_h1_hyper(ep, req)).await {
                            Err(e) if e.is::<LostOnReuse>() => match again {
                                Some(copy) => {
                                    debug!(endpoint = %ep.addr, "pooled connection closed with no answer; sending again");
                                    lost = true;
                                    req = copy;
                                    continue;
                                }
                                None => return Err(e),
                            },
                            done => return done,
                        }
                    }
                    // NOTE: boxed to keep the per-request future small; connecting is rare.
                    None => (H1Conn::new(Box::pin(self.open(ep)).await?), false),
                };
                match conn.send(&req, reused, !lost, &ep.pool).await {
                    Ok(rsp) => return Ok(rsp.map(UpstreamBody::own)),
                    Err(h1::SendError::Unsent) => {
                        debug!(endpoint = %ep.addr, "pooled connection closed; sending again");
                    }
                    Err(h1::SendError::Lost) => {
                        debug!(endpoint = %ep.addr, "pooled connection closed with no answer; sending again");
                        lost = true;
                    }
                    Err(h1::SendError::Failed(e)) => return Err(e),
                }
            }
        }
        // NOTE: boxed, so hyper's exchange does not widen the own client's future (moved into
        // a box for every request) for the requests that do not need it.
        Box::pin(self.send_h1_hyper(ep, req)).await
    }

    /// Sends `req` on hyper's HTTP/1.1 client.
    async fn send_h1_hyper(
        &self,
        ep: &Endpoint,
        mut req: Request<SendBody>,
    ) -> Result<Response<UpstreamBody>, BoxError> {
        let body = req.body();
        if !body.is_end_stream()
            && body.size_hint().exact().is_none()
            && matches!(*req.method(), http::Method::GET | http::Method::HEAD)
            && !req.headers().contains_key(http::header::CONTENT_LENGTH)
        {
            // NOTE: hyper's client sends no body of unknown length on a GET or a HEAD unless told
            // to frame it: a chunked body on one is passed on chunked, not dropped.
            req.headers_mut().insert(
                http::header::TRANSFER_ENCODING,
                http::HeaderValue::from_static("chunked"),
            );
        }
        let asked_upgrade = req.headers().contains_key(http::header::UPGRADE);
        let (tx, rsp) = self
            .send_on::<http1::SendRequest<SendBody>>(ep, req)
            .await?;
        if rsp.status() == http::StatusCode::SWITCHING_PROTOCOLS && !asked_upgrade {
            // The connection speaks something else now: dropped with the response.
            return Err(Box::new(h1::Malformed::UnaskedUpgrade));
        }
        let checkin = if rsp.status() == http::StatusCode::SWITCHING_PROTOCOLS {
            // The connection now belongs to the tunnel.
            None
        } else if tx.is_ready() {
            // Nothing left to read: reusable at once.
            ep.pool.checkin(tx);
            None
        } else {
            Some(Checkin {
                tx,
                pool: ep.pool.clone(),
            })
        };
        Ok(rsp.map(|inner| UpstreamBody::new(inner, checkin, None)))
    }

    /// Sends `req` on a connection `S` takes from the pool or opens, and again on another when
    /// a reused one refuses it before sending any of it (it closed while idle).
    async fn send_on<S: Sender>(
        &self,
        ep: &Endpoint,
        mut req: Request<SendBody>,
    ) -> Result<(S, Response<Incoming>), BoxError> {
        loop {
            let (mut tx, reused) = S::get(self, ep).await?;
            match tx.try_send(req).await {
                Ok(rsp) => return Ok((tx, rsp)),
                Err(mut e) => match e.take_message() {
                    Some(unsent) if reused => {
                        debug!(endpoint = %ep.addr, "pooled connection closed; sending again");
                        S::closed(&ep.pool);
                        req = unsent;
                    }
                    _ => {
                        let e = e.into_error();
                        return Err(if reused && e.is_incomplete_message() {
                            Box::new(LostOnReuse(e))
                        } else {
                            e.into()
                        });
                    }
                },
            }
        }
    }

    /// A connection for hyper's HTTP/1.1 client: an idle one of the own client, else a new one;
    /// and whether it was reused.
    async fn open_h1(
        &self,
        ep: &Endpoint,
    ) -> Result<(http1::SendRequest<SendBody>, bool), BoxError> {
        let (io, reused) = match ep.pool.checkout_own() {
            Some(conn) => ((*conn).into_io(), true),
            None => (self.open(ep).await?, false),
        };
        let (tx, conn) = http1::Builder::new()
            .handshake(io)
            .await
            .map_err(|e| ConnectFailed(e.into()))?;
        let addr = ep.addr;
        tokio::spawn(async move {
            if let Err(error) = conn.with_upgrades().await {
                debug!(endpoint = %addr, %error, "upstream connection ended with an error");
            }
        });
        Ok((tx, reused))
    }

    /// Sends `req` to `ep` on its shared HTTP/2 connection, opening it if needed.
    pub(crate) async fn send_h2(
        &self,
        ep: &Endpoint,
        req: Request<SendBody>,
    ) -> Result<Response<UpstreamBody>, BoxError> {
        let stream = H2Stream::new(&ep.pool);
        let (_, rsp) = self
            .send_on::<http2::SendRequest<SendBody>>(ep, req)
            .await?;
        Ok(rsp.map(|inner| UpstreamBody::new(inner, None, Some(stream))))
    }

    /// The shared HTTP/2 connection, opened by one request while others wait for it. Returns
    /// whether it was already open (then a refused request may be sent again).
    async fn open_h2(
        &self,
        ep: &Endpoint,
    ) -> Result<(http2::SendRequest<SendBody>, bool), BoxError> {
        let seen = ep.pool.h2_attempts.load(Ordering::Acquire);
        let _opening = ep.pool.h2_opening.lock().await;
        if let Some(tx) = ep.pool.checkout_h2() {
            return Ok((tx, true));
        }
        if ep.pool.h2_attempts.load(Ordering::Acquire) != seen {
            // The attempt this request waited on failed: fail with its error.
            return Err(match ep.pool.lock().h2_failure.clone() {
                Some(failure) => Box::new(failure),
                None => Box::new(ConnectFailed(
                    "the shared HTTP/2 connection closed as it opened".into(),
                )),
            });
        }
        ep.pool.h2_attempts.fetch_add(1, Ordering::AcqRel);
        match self.handshake_h2(ep).await {
            Ok(tx) => {
                ep.pool.set_h2(tx.clone());
                Ok((tx, false))
            }
            Err(e) => {
                let failure = H2Failure(Arc::from(e));
                ep.pool.lock().h2_failure = Some(failure.clone());
                Err(Box::new(failure))
            }
        }
    }

    /// Opens an HTTP/2 connection and waits, within the connect timeout, for the upstream's
    /// first bytes (its SETTINGS): an endpoint that accepts TCP and never speaks HTTP/2 is a
    /// connect failure, not a wait for as long as the route allows.
    async fn handshake_h2(&self, ep: &Endpoint) -> Result<http2::SendRequest<SendBody>, BoxError> {
        let (spoke, heard) = tokio::sync::oneshot::channel();
        let io = Speaks {
            io: self.open(ep).await?,
            spoke: Some(spoke),
        };
        let (tx, conn) = http2::Builder::new(TokioExecutor::new())
            .timer(TokioTimer::new())
            .initial_stream_window_size(1 << 20)
            .initial_connection_window_size(4 << 20)
            .handshake(io)
            .await
            .map_err(|e| ConnectFailed(e.into()))?;
        let addr = ep.addr;
        let conn = tokio::spawn(async move {
            if let Err(error) = conn.await {
                debug!(endpoint = %addr, %error, "upstream HTTP/2 connection ended with an error");
            }
        });
        match tokio::time::timeout(self.connect_timeout, heard).await {
            Ok(Ok(())) => Ok(tx),
            // The connection ended before a byte came (its task dropped the sender).
            Ok(Err(_)) => Err(Box::new(ConnectFailed(
                "the upstream closed the HTTP/2 connection before speaking".into(),
            ))),
            Err(_) => {
                conn.abort();
                Err(Box::new(ConnectFailed(
                    format!(
                        "the upstream sent no HTTP/2 SETTINGS within the connect timeout ({:?})",
                        self.connect_timeout
                    )
                    .into(),
                )))
            }
        }
    }
}

/// An upstream HTTP/2 connection that reports its first bytes read.
struct Speaks {
    io: Conn,
    spoke: Option<tokio::sync::oneshot::Sender<()>>,
}

impl hyper::rt::Read for Speaks {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        mut buf: hyper::rt::ReadBufCursor<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        if this.spoke.is_none() {
            return Pin::new(&mut this.io).poll_read(cx, buf);
        }
        // Until then, through a small buffer of its own: the cursor cannot be lent and looked at
        // after (once per connection).
        let mut first = [0u8; 64];
        let mut local = hyper::rt::ReadBuf::new(&mut first[..buf.remaining().min(64)]);
        let ready = Pin::new(&mut this.io).poll_read(cx, local.unfilled());
        let read = local.filled();
        if matches!(ready, Poll::Ready(Ok(()))) && !read.is_empty() {
            buf.put_slice(read);
            if let Some(spoke) = this.spoke.take() {
                let _ = spoke.send(());
            }
        }
        ready
    }
}

impl hyper::rt::Write for Speaks {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write_vectored(cx, bufs)
    }
}

// === impl Sender ===

/// A reused connection closed after the request went out and before a whole response head came
/// back: usually the upstream closing an idle connection as the request arrived (the keep-alive
/// race).
#[derive(Debug, thiserror::Error)]
#[error("the pooled connection closed before a response: {0}")]
struct LostOnReuse(#[source] hyper::Error);

/// A request without a body, copied to go again: method, target, version and headers.
fn bodyless_copy(req: &Request<SendBody>) -> Request<SendBody> {
    let mut copy = Request::new(ReplayBody::passthrough(RequestBody::new(
        crate::http::NoBody,
        None,
    )));
    *copy.method_mut() = req.method().clone();
    *copy.uri_mut() = req.uri().clone();
    *copy.version_mut() = req.version();
    *copy.headers_mut() = req.headers().clone();
    copy
}

/// An upstream connection's sending half, HTTP/1.1 or HTTP/2, as [`Connector::send_on`] uses it.
trait Sender: Sized + Send {
    /// A connection for `ep`, and whether it was reused (so a refusal may be retried).
    fn get(
        connector: &Connector,
        ep: &Endpoint,
    ) -> impl Future<Output = Result<(Self, bool), BoxError>> + Send;

    fn try_send(
        &mut self,
        req: Request<SendBody>,
    ) -> impl Future<Output = Result<Response<Incoming>, TrySendError<Request<SendBody>>>> + Send;

    /// A reused connection refused a request: it has closed.
    fn closed(pool: &EndpointPool);
}

impl Sender for http1::SendRequest<SendBody> {
    async fn get(connector: &Connector, ep: &Endpoint) -> Result<(Self, bool), BoxError> {
        match ep.pool.checkout_h1() {
            Some(tx) => Ok((tx, true)),
            // NOTE: boxed to keep the per-request future small; connecting is rare.
            None => Box::pin(connector.open_h1(ep)).await,
        }
    }

    fn try_send(
        &mut self,
        req: Request<SendBody>,
    ) -> impl Future<Output = Result<Response<Incoming>, TrySendError<Request<SendBody>>>> + Send
    {
        self.try_send_request(req)
    }

    fn closed(_: &EndpointPool) {
        // Checked-out HTTP/1.1 connections are not in the pool: nothing to forget.
    }
}

impl Sender for http2::SendRequest<SendBody> {
    async fn get(connector: &Connector, ep: &Endpoint) -> Result<(Self, bool), BoxError> {
        match ep.pool.checkout_h2() {
            Some(tx) => Ok((tx, true)),
            None => Box::pin(connector.open_h2(ep)).await,
        }
    }

    fn try_send(
        &mut self,
        req: Request<SendBody>,
    ) -> impl Future<Output = Result<Response<Incoming>, TrySendError<Request<SendBody>>>> + Send
    {
        self.try_send_request(req)
    }

    fn closed(pool: &EndpointPool) {
        pool.forget_closed_h2();
    }
}

// === impl EndpointPool ===

impl EndpointPool {
    /// An empty pool closing connections idle for `idle_timeout`.
    pub fn new(idle_timeout: Duration) -> Arc<Self> {
        Arc::new(Self {
            state: Mutex::default(),
            h2_opening: tokio::sync::Mutex::new(()),
            h2_attempts: AtomicU64::new(0),
            h2_streams: AtomicUsize::new(0),
            idle_timeout,
        })
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // NOTE: no code panics while holding the lock; recover the state if one ever did.
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The most recently used idle connection that can take a request now. Closed or expired
    /// ones are dropped; ones still finishing a previous exchange stay for later.
    fn checkout_h1(&self) -> Option<http1::SendRequest<SendBody>> {
        let mut s = self.lock();
        let mut i = s.idle.len();
        while i > 0 {
            i -= 1;
            let c = &s.idle[i];
            if c.tx.is_closed() {
                s.idle.remove(i);
            } else if c.tx.is_ready() {
                return Some(s.idle.remove(i).tx);
            }
        }
        None
    }

    fn checkin(self: &Arc<Self>, tx: http1::SendRequest<SendBody>) {
        if tx.is_closed() {
            return;
        }
        let mut s = self.lock();
        s.idle.push(Idle { tx, ticks: 0 });
        self.start_reaper(&mut s);
    }

    /// Whether an idle connection of hyper's client is pooled.
    fn has_idle_h1(&self) -> bool {
        !self.lock().idle.is_empty()
    }

    /// The most recently used idle connection of the own client that is still usable; those
    /// the upstream closed (or wrote to unasked) are dropped.
    fn checkout_own(&self) -> Option<Box<H1Conn>> {
        loop {
            let mut conn = self.lock().idle_own.pop()?.conn;
            // NOTE: looked at outside the lock; dropping a dead connection closes its socket.
            if conn.is_usable() {
                return Some(conn);
            }
        }
    }

    /// Pools a connection of the own client whose exchange has ended.
    pub(crate) fn checkin_h1_own(self: &Arc<Self>, conn: Box<H1Conn>) {
        let mut s = self.lock();
        s.idle_own.push(IdleOwn { conn, ticks: 0 });
        self.start_reaper(&mut s);
    }

    fn checkout_h2(&self) -> Option<http2::SendRequest<SendBody>> {
        let mut s = self.lock();
        match &mut s.h2 {
            Some((tx, unused)) if !tx.is_closed() => {
                *unused = 0;
                Some(tx.clone())
            }
            Some(_) => {
                s.h2 = None;
                None
            }
            None => None,
        }
    }

    fn set_h2(self: &Arc<Self>, tx: http2::SendRequest<SendBody>) {
        let mut s = self.lock();
        s.h2 = Some((tx, 0));
        s.h2_failure = None;
        self.start_reaper(&mut s);
    }

    /// Forgets the shared HTTP/2 connection if it has closed (a newer one is kept).
    fn forget_closed_h2(&self) {
        let mut s = self.lock();
        if s.h2.as_ref().is_some_and(|(tx, _)| tx.is_closed()) {
            s.h2 = None;
        }
    }

    fn start_reaper(self: &Arc<Self>, s: &mut State) {
        if s.reaping {
            return;
        }
        // NOTE: outside a runtime (only while one shuts down) nothing is left to reap for.
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            s.reaping = true;
            rt.spawn(reap(
                Arc::downgrade(self),
                self.idle_timeout / u32::from(REAP_TICKS),
            ));
        }
    }

    /// One look of the reaper: counts it on every idle connection and closes those idle for
    /// [`REAP_TICKS`] looks; returns false to stop (the pool is empty).
    fn expire(&self) -> bool {
        let mut s = self.lock();
        s.idle.retain_mut(|c| {
            c.ticks += 1;
            c.ticks < REAP_TICKS && !c.tx.is_closed()
        });
        s.idle_own.retain_mut(|c| {
            c.ticks += 1;
            c.ticks < REAP_TICKS
        });
        if let Some((tx, unused)) = &mut s.h2 {
            if self.h2_streams.load(Ordering::Relaxed) > 0 {
                *unused = 0;
            } else {
                *unused += 1;
            }
            if *unused >= REAP_TICKS || tx.is_closed() {
                s.h2 = None;
            }
        }
        if s.idle.is_empty() && s.idle_own.is_empty() && s.h2.is_none() {
            s.reaping = false;
            return false;
        }
        true
    }
}

async fn reap(pool: Weak<EndpointPool>, every: Duration) {
    loop {
        tokio::time::sleep(every).await;
        let Some(pool) = pool.upgrade() else { return };
        if !pool.expire() {
            return;
        }
    }
}

// === impl UpstreamBody ===

impl UpstreamBody {
    /// An HTTP/1.1 body returns its connection with `checkin`; an HTTP/2 one holds its
    /// `stream` open for the reaper.
    fn new(inner: Incoming, checkin: Option<Checkin>, stream: Option<H2Stream>) -> Self {
        Self {
            kind: BodyKind::Hyper {
                inner,
                checkin,
                ended: false,
            },
            pick: None,
            _stream: stream,
        }
    }

    /// A body read by the proxy's own HTTP/1.1 client.
    fn own(body: h1::Body) -> Self {
        Self {
            kind: BodyKind::Own(body),
            pick: None,
            _stream: None,
        }
    }

    /// Keeps the endpoint's in-flight count until the body ends or is dropped.
    pub(crate) fn hold(&mut self, pick: Pick) {
        self.pick = Some(pick);
    }

    /// The endpoint the response came from.
    pub fn endpoint(&self) -> Option<SocketAddr> {
        self.pick.as_ref().map(Pick::addr)
    }
}

impl Body for UpstreamBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match &mut self.kind {
            BodyKind::Own(body) => Pin::new(body).poll_frame(cx),
            BodyKind::Hyper { inner, ended, .. } => {
                let polled = Pin::new(inner).poll_frame(cx);
                if let Poll::Ready(None) = polled {
                    *ended = true;
                }
                polled.map_err(Into::into)
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.kind {
            BodyKind::Own(body) => body.is_end_stream(),
            BodyKind::Hyper { inner, .. } => inner.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.kind {
            BodyKind::Own(body) => body.size_hint(),
            BodyKind::Hyper { inner, .. } => inner.size_hint(),
        }
    }
}

impl Drop for UpstreamBody {
    fn drop(&mut self) {
        if let BodyKind::Hyper {
            inner,
            checkin,
            ended,
        } = &mut self.kind
        {
            if let Some(Checkin { tx, pool }) = checkin.take() {
                // A body dropped before its end leaves the connection mid-response: hyper
                // closes it.
                if *ended || inner.is_end_stream() {
                    pool.checkin(tx);
                }
            }
        }
    }
}

// === impl H2Failure ===

impl std::fmt::Display for H2Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("the shared HTTP/2 connection could not be opened")
    }
}

impl std::error::Error for H2Failure {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&*self.0)
    }
}

// === impl H2Stream ===

impl H2Stream {
    fn new(pool: &Arc<EndpointPool>) -> Self {
        pool.h2_streams.fetch_add(1, Ordering::Relaxed);
        Self(pool.clone())
    }
}

impl Drop for H2Stream {
    fn drop(&mut self) {
        self.0.h2_streams.fetch_sub(1, Ordering::Relaxed);
    }
}

impl std::fmt::Debug for UpstreamBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.kind {
            BodyKind::Own(body) => f.debug_tuple("UpstreamBody").field(body).finish(),
            BodyKind::Hyper { checkin, ended, .. } => f
                .debug_struct("UpstreamBody")
                .field("pooled", &checkin.is_some())
                .field("ended", ended)
                .finish_non_exhaustive(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::convert::Infallible;

    /// An HTTP/1.1 sender over an in-memory pipe; the peer end is returned to keep it open.
    async fn sender() -> (http1::SendRequest<SendBody>, tokio::io::DuplexStream) {
        let (client, server) = tokio::io::duplex(1024);
        let (mut tx, conn) = http1::handshake(TokioIo::new(client)).await.unwrap();
        tokio::spawn(conn);
        tx.ready().await.unwrap();
        (tx, server)
    }

    #[tokio::test(start_paused = true)]
    async fn idle_connections_are_closed_within_the_idle_timeout() {
        let timeout = Duration::from_secs(4);
        let pool = EndpointPool::new(timeout);
        let (tx, _peer) = sender().await;
        assert!(tx.is_ready());
        pool.checkin(tx);
        assert_eq!(pool.lock().idle.len(), 1);

        // Three looks (3s) find it idle: kept. The fourth, at the timeout, closes it.
        tokio::time::sleep(Duration::from_millis(3_500)).await;
        assert_eq!(pool.lock().idle.len(), 1, "kept before 3/4 of the timeout");
        tokio::time::sleep(Duration::from_millis(600)).await;
        assert_eq!(pool.lock().idle.len(), 0, "closed by the timeout");
        assert!(!pool.lock().reaping, "the reaper stops with the pool empty");
    }

    /// An HTTP/2 sender over an in-memory pipe to a hyper server.
    async fn h2_sender() -> http2::SendRequest<SendBody> {
        let (client, server) = tokio::io::duplex(64 * 1024);
        let svc = hyper::service::service_fn(|_req| async {
            Ok::<_, Infallible>(hyper::Response::new(http_body_util::Empty::<Bytes>::new()))
        });
        tokio::spawn(
            hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(server), svc),
        );
        let (tx, conn) = http2::handshake(TokioExecutor::new(), TokioIo::new(client))
            .await
            .unwrap();
        tokio::spawn(conn);
        tx
    }

    #[tokio::test(start_paused = true)]
    async fn the_shared_http2_connection_outlives_the_idle_timeout_while_a_stream_is_open() {
        let timeout = Duration::from_secs(4);
        let pool = EndpointPool::new(timeout);
        pool.set_h2(h2_sender().await);
        let stream = H2Stream::new(&pool);

        tokio::time::sleep(3 * timeout).await;
        assert!(pool.lock().h2.is_some(), "kept while a stream is in flight");

        drop(stream);
        tokio::time::sleep(timeout + Duration::from_millis(100)).await;
        assert!(pool.lock().h2.is_none(), "closed once idle for the timeout");
        assert!(!pool.lock().reaping, "the reaper stops with the pool empty");
    }

    /// A connection of the own client to a fresh local listener, and the listener's end of it.
    async fn own_conn() -> (Box<H1Conn>, tokio::net::TcpStream) {
        use pillion_layers::limit::{Counter, MAX_CONNECTIONS, MAX_PENDING};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let uri: http::Uri = format!("http://{}/", listener.local_addr().unwrap())
            .parse()
            .unwrap();
        let metrics = pillion_telemetry::Metrics::register(&mut Default::default());
        let connector = Counted::new(
            TlsConnector::new(
                hyper_util::client::legacy::connect::HttpConnector::new(),
                None,
            ),
            metrics.upstream_stats("test"),
            Counter::new(MAX_CONNECTIONS, 10),
            Counter::new(MAX_PENDING, 10),
        );
        let (conn, peer) = tokio::join!(connector.oneshot(uri), listener.accept());
        (H1Conn::new(conn.unwrap()), peer.unwrap().0)
    }

    /// Checks out an own connection until the runtime has seen what the peer did (or 2s pass);
    /// returns whether one was still handed out then.
    async fn checkout_after_peer_acted(pool: &Arc<EndpointPool>) -> bool {
        for _ in 0..400 {
            tokio::time::sleep(Duration::from_millis(5)).await;
            match pool.checkout_own() {
                Some(conn) => pool.checkin_h1_own(conn),
                None => return false,
            }
        }
        true
    }

    #[tokio::test]
    async fn an_own_connection_the_upstream_closed_or_wrote_to_is_not_checked_out() {
        use tokio::io::AsyncWriteExt;
        let pool = EndpointPool::new(Duration::from_secs(60));

        let (conn, peer) = own_conn().await;
        pool.checkin_h1_own(conn);
        assert!(
            pool.checkout_own().is_some(),
            "a quiet connection is usable"
        );
        assert!(pool.lock().idle_own.is_empty());

        let (conn, peer_closing) = own_conn().await;
        pool.checkin_h1_own(conn);
        drop(peer_closing);
        assert!(
            !checkout_after_peer_acted(&pool).await,
            "a connection the upstream closed is dropped"
        );

        let (conn, mut peer_writing) = own_conn().await;
        pool.checkin_h1_own(conn);
        peer_writing
            .write_all(b"HTTP/1.1 200 OK\r\n")
            .await
            .unwrap();
        assert!(
            !checkout_after_peer_acted(&pool).await,
            "a connection with bytes nobody asked for is dropped"
        );
        assert!(pool.lock().idle_own.is_empty());
        drop(peer);
    }

    #[tokio::test(start_paused = true)]
    async fn checkout_takes_the_most_recent_ready_connection_and_skips_closed_ones() {
        let pool = EndpointPool::new(Duration::from_secs(60));
        let (old, _a) = sender().await;
        let (closed, peer) = sender().await;
        pool.checkin(old);
        pool.checkin(closed);
        drop(peer);
        // Wait for the connection task to see the peer go away.
        for _ in 0..10_000 {
            if pool.lock().idle.iter().any(|c| c.tx.is_closed()) {
                break;
            }
            tokio::task::yield_now().await;
        }
        assert!(
            pool.lock().idle.iter().any(|c| c.tx.is_closed()),
            "the peer's close was seen"
        );
        let got = pool.checkout_h1().expect("the open connection");
        assert!(!got.is_closed());
        assert!(pool.checkout_h1().is_none(), "the closed one was dropped");
    }
}
