//! The HTTP proxy: serves HTTP/1.1 and HTTP/2 on a connection and forwards each request.

mod body;
mod error;
pub mod headers;
pub mod ids;
mod log;
mod router;

pub use self::body::{Downstream, NoBody, ProxyBody, RequestBody};
pub use self::error::{ProxyError, ERROR_HEADER};
pub use self::router::{rate_policy, Route, RouteService, RouteTable};

use self::{log::PendingLog, router::Target};
use crate::{cluster::UpstreamError, io::RequestGuard};
use http::{HeaderValue, Request, Response};
use hyper_util::rt::TokioIo;
use pillion_layers::{error::find, ratelimit::Bucket, retry::Attempts};
use pillion_telemetry::access_log::{AccessLog, Entry};
use prometheus_client::metrics::counter::Counter;
use std::{
    convert::Infallible,
    net::SocketAddr,
    sync::Arc,
    time::{Duration, SystemTime},
};
use tokio::time::Instant;
use tokio_util::task::TaskTracker;
use tower::ServiceExt;
use tracing::debug;

/// What every request on one listener shares.
#[derive(Debug)]
pub struct HttpListener {
    /// The listener's name.
    pub name: Arc<str>,
    /// `inbound` or `outbound`.
    pub direction: &'static str,
    /// Keep or generate `x-request-id`.
    pub request_id: bool,
    /// Keep or start a W3C trace.
    pub trace_context: bool,
    /// Append `x-forwarded-for`, set `x-forwarded-proto`.
    pub forwarded_headers: bool,
    /// How long an upgraded connection (a WebSocket tunnel) may move no byte either way.
    pub idle_timeout: Duration,
    /// How long a request or response body may keep its reader waiting for a byte.
    pub stream_idle_timeout: Duration,
    /// The access log, when on.
    pub access_log: Option<AccessLog>,
    /// The listener-wide rate limit.
    pub rate_limit: Option<Arc<Bucket>>,
    /// The listener's authorization policy (every request, and TCP connections).
    pub policy: Option<pillion_tls::authz::Policy>,
    /// Proxy-generated responses by reason, indexed like [`ProxyError::ALL`].
    pub proxy_responses: [Counter; ProxyError::COUNT],
}

/// What every request on one downstream connection shares.
#[derive(Debug)]
pub struct ConnCtx {
    /// The listener.
    pub listener: Arc<HttpListener>,
    /// The route table in force when the connection was accepted.
    pub table: Arc<RouteTable>,
    /// The downstream peer.
    pub client: SocketAddr,
    /// The peer's IP as a header value, for `x-forwarded-for`.
    pub client_ip: HeaderValue,
    /// Upgraded tunnels are tracked so shutdown can wait for them.
    pub tasks: TaskTracker,
    /// `https` when the connection came over TLS, else `http`.
    pub scheme: &'static str,
    /// The peer's identity from its client certificate (mTLS).
    pub identity: Option<Arc<str>>,
}

/// The header that tells the app who the peer is (the SPIFFE ID of its client certificate).
pub const PEER_IDENTITY: http::HeaderName =
    http::HeaderName::from_static("x-pillion-peer-identity");

/// What happened upstream, for the access log.
#[derive(Debug, Default)]
struct Upstream {
    host: Option<SocketAddr>,
    service_time: Option<Duration>,
    /// Tries made (0 when the request never reached the route's service).
    attempts: u32,
}

/// Handles one request: route, forward, and map any failure to a response.
///
/// On HTTP/1, `request` marks the request under way until its response ends.
pub async fn handle<B: Into<Downstream>>(
    ctx: Arc<ConnCtx>,
    mut req: Request<B>,
    request: Option<RequestGuard>,
) -> Result<Response<ProxyBody>, Infallible> {
    let start = Instant::now();
    let l = &*ctx.listener;
    let upgrade = match req.version() {
        http::Version::HTTP_11 => headers::upgrade_request(req.headers()),
        _ => None,
    };
    let malformed = check_request(&mut req).err();
    // NOTE: the access log has the request as the client sent it (before path normalization).
    let entry = l.access_log.as_ref().map(|_| entry(&ctx, &req));

    // NOTE: with a policy in force, routing, authorization and the app all see the normalized
    // path, so `/x/../admin` or `/%61dmin` cannot reach an `/admin` route around its policy.
    let bad_path = ctx.table.normalize_paths && !normalize_path(&mut req);
    let limited = l.rate_limit.as_ref().is_some_and(|b| !b.try_acquire());
    let route = if limited || bad_path || malformed.is_some() {
        None
    } else {
        ctx.table.route(&req)
    };
    // NOTE: routes match on the headers as sent (`Upgrade` among them); hop-by-hop fields go
    // after that and before the proxy adds its own, so `Connection` cannot name away the request
    // id or trace context the proxy sets.
    headers::strip_hop_by_hop(req.headers_mut());
    let ids = ids::apply(req.headers_mut(), l.request_id, l.trace_context);
    let target = route.map(|r| (r, r.target()));
    let mut log = l.access_log.as_ref().zip(entry).map(|(log, mut entry)| {
        // NOTE: set before the request goes upstream, so a line written because the client went
        // away before the response names them too.
        entry.route = route.map(|r| r.name_arc());
        entry.cluster = target.map(|(_, t)| t.cluster.name_arc());
        entry.request_id = ids
            .request_id
            .as_ref()
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        entry.trace_id = ids
            .trace_id
            .map(|t| String::from_utf8_lossy(&t).into_owned());
        Box::new(PendingLog::new(log.clone(), entry, start))
    });
    let mut upstream = Upstream::default();
    let allowed = |p: &Option<pillion_tls::authz::Policy>| {
        p.as_ref().is_none_or(|p| {
            p.check(
                ctx.identity.as_deref(),
                Some((req.method(), req.uri().path())),
            )
            .is_allowed()
        })
    };
    let denied = bad_path
        || (!limited && (!allowed(&l.policy) || route.is_some_and(|r| !allowed(&r.policy))));
    let result = match (malformed, target) {
        (Some(e), _) => Err(e),
        _ if denied => Err(ProxyError::Denied),
        (None, None) if limited => Err(ProxyError::RateLimited),
        (None, None) => Err(ProxyError::NoRoute),
        (None, Some((route, target))) => {
            let received = log.as_ref().map(|l| l.received.clone());
            forward(&ctx, route, target, req, upgrade, received, &mut upstream).await
        }
    };
    let mut rsp = match result {
        Ok(rsp) => rsp,
        Err(e) => {
            debug!(listener = %l.name, route = ?route.map(Route::name), error = %e, "proxy error");
            l.proxy_responses[e.index()].inc();
            if let Some(log) = log.as_mut() {
                log.entry.response_flags = e.flag();
            }
            e.into_response()
        }
    };
    let status = rsp.status().as_u16();
    match target {
        Some((_, t)) => t.stats.record(status, start.elapsed()),
        None => {
            if let Some(s) = &ctx.table.no_route {
                s.record(status, start.elapsed());
            }
        }
    }
    if let Some(id) = ids.request_id {
        rsp.headers_mut().insert(ids::X_REQUEST_ID, id);
    }
    if upstream.attempts > 1 {
        rsp.headers_mut()
            .insert(ATTEMPTS_HEADER, HeaderValue::from(upstream.attempts));
    }
    if let Some(mut log) = log {
        let e = &mut log.entry;
        e.status = Some(status);
        e.upstream_host = upstream.host;
        e.upstream_service_time = upstream.service_time;
        rsp.body_mut().set_log(log);
    }
    if let Some(request) = request {
        rsp.body_mut().set_request(request);
    }
    Ok(rsp)
}

/// Refuses what no request may be (RFC 9112, section 3): `CONNECT` (the proxy opens no tunnels
/// to arbitrary hosts), a request target its method does not allow (`*` but for `OPTIONS`, the
/// authority form, a scheme other than `http`/`https`, user info), a repeated or invalid
/// `Host`, and a missing one (on HTTP/1.1, and on HTTP/2 without `:authority`). A target with an
/// authority (the absolute form, or HTTP/2's `:authority`) replaces `Host`, so routing, policies
/// and the app all see the same host.
fn check_request<B>(req: &mut Request<B>) -> Result<(), ProxyError> {
    use http::{header::HOST, Method, Version};
    if req.method() == Method::CONNECT {
        return Err(ProxyError::ConnectUnsupported);
    }
    let uri = req.uri();
    // NOTE: on HTTP/2 an asterisk `:path` comes with a scheme and an authority.
    if uri.path() == "*" && req.method() != Method::OPTIONS {
        return Err(ProxyError::BadRequest);
    }
    let authority = match (uri.scheme_str(), uri.authority()) {
        (None, None) => None,
        (Some(scheme), Some(a))
            if (scheme.eq_ignore_ascii_case("http") || scheme.eq_ignore_ascii_case("https"))
                && !a.host().is_empty()
                && !a.as_str().contains('@')
                && valid_port(a) =>
        {
            Some(a)
        }
        // The authority form (CONNECT's only), another scheme, user info, an empty host, a port
        // past 65535.
        _ => return Err(ProxyError::BadRequest),
    };
    // NOTE: HTTP/2 may name the host in `:authority` instead (RFC 9113, section 8.3.1); HTTP/1.0
    // need not name it at all.
    let needs_host = match req.version() {
        Version::HTTP_11 => true,
        Version::HTTP_2 | Version::HTTP_3 => authority.is_none(),
        _ => false,
    };
    let mut hosts = req.headers().get_all(HOST).iter();
    match (hosts.next(), hosts.next()) {
        (_, Some(_)) => return Err(ProxyError::BadRequest),
        (None, None) if needs_host => return Err(ProxyError::BadRequest),
        (Some(host), None) if !headers::valid_host(host.as_bytes()) => {
            return Err(ProxyError::BadRequest)
        }
        _ => {}
    }
    if let Some(a) = authority {
        let host = HeaderValue::from_str(a.as_str()).map_err(|_| ProxyError::BadRequest)?;
        req.headers_mut().insert(HOST, host);
    }
    Ok(())
}

/// Whether the authority's port, if it has one, is a number a port can be (an empty one may be).
fn valid_port(a: &http::uri::Authority) -> bool {
    // NOTE: the part after the host; an IPv6 address keeps its colons inside brackets.
    let after_host = a
        .as_str()
        .rsplit_once(']')
        .map_or(a.as_str(), |(_, rest)| rest);
    match after_host.rsplit_once(':') {
        Some((_, "")) | None => true,
        Some((_, port)) => port.parse::<u16>().is_ok(),
    }
}

/// Rewrites the request's path to its normalized form (see
/// [`pillion_tls::authz::normalize_path`]); false when it cannot be normalized.
fn normalize_path<B>(req: &mut Request<B>) -> bool {
    let normalized = match pillion_tls::authz::normalize_path(req.uri().path()) {
        None => return false,
        Some(std::borrow::Cow::Borrowed(_)) => return true,
        Some(std::borrow::Cow::Owned(p)) => p,
    };
    let pq = match req.uri().query() {
        Some(q) => format!("{normalized}?{q}"),
        None => normalized,
    };
    let mut parts = std::mem::take(req.uri_mut()).into_parts();
    match http::uri::PathAndQuery::try_from(pq) {
        Ok(pq) => parts.path_and_query = Some(pq),
        Err(_) => return false,
    }
    match http::Uri::from_parts(parts) {
        Ok(uri) => {
            *req.uri_mut() = uri;
            true
        }
        Err(_) => false,
    }
}

/// The start of a request's access-log line (its ids are set once they are known).
fn entry<B>(ctx: &ConnCtx, req: &Request<B>) -> Entry {
    let authority = req.uri().authority().map(|a| a.as_str()).or_else(|| {
        req.headers()
            .get(http::header::HOST)
            .and_then(|h| h.to_str().ok())
    });
    Entry {
        start_time: Some(SystemTime::now()),
        listener: ctx.listener.name.clone(),
        direction: ctx.listener.direction,
        method: Some(req.method().as_str().to_owned()),
        authority: authority.map(str::to_owned),
        path: Some(
            req.uri()
                .path_and_query()
                .map_or("/", |p| p.as_str())
                .to_owned(),
        ),
        protocol: match req.version() {
            http::Version::HTTP_2 => "HTTP/2",
            http::Version::HTTP_10 => "HTTP/1.0",
            _ => "HTTP/1.1",
        },
        response_flags: "-",
        downstream_address: Some(ctx.client),
        peer_identity: ctx.identity.clone(),
        ..Entry::default()
    }
}

async fn forward<B: Into<Downstream>>(
    ctx: &ConnCtx,
    route: &Route,
    target: &Target,
    mut req: Request<B>,
    upgrade: Option<HeaderValue>,
    received: Option<Arc<std::sync::atomic::AtomicU64>>,
    upstream: &mut Upstream,
) -> Result<Response<ProxyBody>, ProxyError> {
    let downstream_upgrade = upgrade.is_some().then(|| hyper::upgrade::on(&mut req));

    let (mut parts, body) = req.into_parts();
    let h = &mut parts.headers;
    if ctx.listener.forwarded_headers {
        headers::set_forwarded(h, &ctx.client_ip, ctx.scheme);
    }
    // NOTE: always removed first, so a client cannot claim an identity it did not prove.
    h.remove(PEER_IDENTITY);
    if let Some(id) = &ctx.identity {
        if let Ok(v) = HeaderValue::from_str(id) {
            h.insert(PEER_IDENTITY, v);
        }
    }
    route.request_headers.apply(h);
    if !h.contains_key(http::header::HOST) {
        if let Some(a) = parts.uri.authority() {
            if let Ok(v) = HeaderValue::from_str(a.as_str()) {
                h.insert(http::header::HOST, v);
            }
        }
    }
    parts.version = match upgrade {
        Some(u) => {
            // An upgrade needs HTTP/1.1 end to end.
            headers::set_upgrade(&mut parts.headers, u);
            http::Version::HTTP_11
        }
        None => target.cluster.upstream_version(parts.version),
    };

    // NOTE: the cluster service points the URI at the endpoint it picks, for every try.
    let logged = received.is_some();
    let mut req = Request::from_parts(
        parts,
        RequestBody::new(body, received).with_idle_timeout(ctx.listener.stream_idle_timeout),
    );
    // NOTE: kept here too: when the route's timeout cuts the retries, the tries it made are
    // known only from it (for the retry count and the access log's upstream host).
    let tried = target.retries.then(crate::cluster::Tried::default);
    if let Some(t) = &tried {
        req.extensions_mut().insert(t.clone());
    }
    // NOTE: the service time is for the access log only; without one, no clock is read.
    let sent = logged.then(Instant::now);
    // NOTE: the route's timeout bounds the whole response; its stack bounds the wait for the head,
    // and the body gets what is left. Only a route with a timeout reads the clock for it.
    let deadline = target.timeout.map(|after| (Instant::now() + after, after));
    let result = if target.direct {
        target.cluster.send_direct(req).await
    } else {
        target.service.clone().oneshot(req).await
    };
    upstream.service_time = sent.map(|t| t.elapsed());
    let mut rsp = match result {
        Ok(rsp) => rsp,
        Err(e) => {
            let (tries, last) = tried.as_ref().map_or((0, None), |t| t.summary());
            upstream.host = find::<UpstreamError>(&*e).map(|u| u.addr).or(last);
            upstream.attempts = pillion_layers::error::attempts(&*e).max(tries);
            target
                .stats
                .record_retries(upstream.attempts.saturating_sub(1));
            return Err(ProxyError::from_error(&*e));
        }
    };
    upstream.host = rsp.body().get_ref().endpoint();
    upstream.attempts = rsp.extensions().get::<Attempts>().map_or(1, |a| a.0);
    target
        .stats
        .record_retries(upstream.attempts.saturating_sub(1));

    if rsp.status() == http::StatusCode::SWITCHING_PROTOCOLS {
        if let Some(downstream) = downstream_upgrade {
            let upstream = hyper::upgrade::on(&mut rsp);
            ctx.tasks
                .spawn(tunnel(downstream, upstream, ctx.listener.idle_timeout));
            let (parts, body) = rsp.into_parts();
            return Ok(Response::from_parts(parts, body.into()));
        }
    }

    let (mut parts, body) = rsp.into_parts();
    headers::strip_hop_by_hop(&mut parts.headers);
    route.response_headers.apply(&mut parts.headers);
    let mut rsp = Response::from_parts(parts, ProxyBody::from(body));
    if let Some((at, after)) = deadline {
        rsp.body_mut().set_deadline(at, after, &target.stats);
    }
    rsp.body_mut()
        .set_idle_timeout(ctx.listener.stream_idle_timeout);
    Ok(rsp)
}

/// Set on a response the proxy retried: how many tries it took.
pub const ATTEMPTS_HEADER: http::HeaderName = http::HeaderName::from_static("x-pillion-attempts");

/// Joins the two halves of an upgraded connection (e.g. a WebSocket) until both sides close,
/// with the TCP relay's buffers (small while quiet, growing under bulk transfer).
///
/// The listener's `idle_timeout` closes a tunnel that moves no byte either way for that long, as
/// it closes any downstream connection.
async fn tunnel(
    downstream: hyper::upgrade::OnUpgrade,
    upstream: hyper::upgrade::OnUpgrade,
    idle_timeout: Duration,
) {
    match tokio::try_join!(downstream, upstream) {
        Ok((d, u)) => {
            let activity = crate::io::Activity::new();
            let mut d = crate::io::IdleIo::new(TokioIo::new(d), activity.clone());
            let mut u = TokioIo::new(u);
            tokio::select! {
                res = crate::tcp::copy_bidirectional(&mut d, &mut u) => match res {
                    Ok((rx, tx)) => debug!(rx, tx, "upgraded connection closed"),
                    Err(err) => debug!(%err, "upgraded connection ended with an error"),
                },
                () = crate::io::idle(&activity, idle_timeout) => {
                    debug!(?idle_timeout, "upgraded connection idle: closing");
                }
            }
        }
        Err(err) => debug!(%err, "upgrade failed"),
    }
}
