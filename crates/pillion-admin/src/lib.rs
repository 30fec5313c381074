//! The admin endpoint (everything, loopback only) and the read-only health port (`/ready`,
//! `/live`, `/metrics`, for kubelet and Prometheus).
//!
//! Endpoints that change state answer POST only; GET on them is 405 (with `Allow`), as on
//! Envoy's admin, and a browser's cross-origin POST (an `Origin` that is not the admin's own
//! address) is 403, so a web page cannot drive the admin through the operator's browser.
//! Every request on the admin port must also be addressed to an IP literal or (on loopback)
//! `localhost` in its `Host`, else it is 403: a page whose DNS name is rebound to the admin's
//! address cannot read it either.
//!
//! Both ports bound what a client can hold: a request head must arrive within the header
//! timeout, a connection with no new request is closed after the idle timeout, and at most
//! `max_connections` are open per port (more are closed at once and counted).

use bytes::Bytes;
use http::{header, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{counter::Counter, family::Family, gauge::Gauge},
    registry::Registry,
};
use std::{
    convert::Infallible,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    sync::{
        atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering},
        Arc,
    },
    time::Duration,
};
use tokio::{net::TcpListener, sync::Semaphore, time::Instant};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

/// Where the proxy is in its life, as `/ready` reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Phase {
    /// Listeners are not bound yet.
    Starting = 0,
    /// Every listener is bound and serving.
    Ready = 1,
    /// Draining: no new connections.
    Draining = 2,
}

/// Which port a request came in on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Port {
    /// The admin port: every endpoint.
    Admin,
    /// The health port: `/ready`, `/live` and `/metrics` only.
    Health,
}

/// What one admin or health connection may hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// The longest wait for a whole request head (the first bytes of a connection included;
    /// on HTTP/1.1 also the wait for the next request on a kept-alive connection).
    pub header_timeout: Duration,
    /// A connection with no new request for this long is closed.
    pub idle_timeout: Duration,
    /// Connections open at once on one port; more are closed as soon as they are accepted.
    pub max_connections: usize,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PortLabels {
    port: &'static str,
}

/// A JSON view the admin shows (`/clusters`, `/listeners`).
pub type View = Box<dyn Fn() -> serde_json::Value + Send + Sync>;

/// Sets the log filter; returns the filter now in force.
pub type SetLogFilter = Box<dyn Fn(&str) -> Result<String, String> + Send + Sync>;

/// What the admin endpoint can show and do.
pub struct Controls {
    /// The effective config, rendered and redacted.
    pub config_dump: String,
    /// `/clusters`.
    pub clusters: View,
    /// `/listeners`.
    pub listeners: View,
    /// The current log filter, for `/logging` with only per-module changes.
    pub log_filter: Box<dyn Fn() -> String + Send + Sync>,
    /// `/logging`.
    pub set_log_filter: SetLogFilter,
    /// Cancelled by `/drain`: stop accepting and drain, without exiting.
    pub drain: CancellationToken,
    /// Cancelled by `/shutdown`: drain, then exit.
    pub shutdown: CancellationToken,
}

/// The admin state shared by both ports.
pub struct Admin {
    phase: AtomicU8,
    failed_by_hand: AtomicBool,
    registry: Registry,
    controls: Controls,
    connections: Family<PortLabels, Gauge>,
    rejected: Family<PortLabels, Counter>,
}

// === impl Admin ===

impl Admin {
    /// Builds the admin state, registering its own metric families in `registry`:
    /// `pillion_admin_connections{port}` (open now) and
    /// `pillion_admin_connections_rejected_total{port}` (closed at once: too many open).
    pub fn new(mut registry: Registry, controls: Controls) -> Arc<Self> {
        let connections = Family::<PortLabels, Gauge>::default();
        let rejected = Family::<PortLabels, Counter>::default();
        let r = registry.sub_registry_with_prefix("pillion");
        r.register(
            "admin_connections",
            "Connections open now on the admin and health ports",
            connections.clone(),
        );
        r.register(
            "admin_connections_rejected",
            "Connections to the admin and health ports closed at once because max_connections were open",
            rejected.clone(),
        );
        Arc::new(Self {
            phase: AtomicU8::new(Phase::Starting as u8),
            failed_by_hand: AtomicBool::new(false),
            registry,
            controls,
            connections,
            rejected,
        })
    }

    /// Sets the phase `/ready` reports.
    pub fn set_phase(&self, phase: Phase) {
        self.phase.store(phase as u8, Ordering::Release);
    }

    /// The phase `/ready` reports.
    pub fn phase(&self) -> Phase {
        match self.phase.load(Ordering::Acquire) {
            1 => Phase::Ready,
            2 => Phase::Draining,
            _ => Phase::Starting,
        }
    }

    /// Serves `port` on `listener` for as long as the process runs.
    pub async fn serve(self: Arc<Self>, listener: TcpListener, port: Port, limits: Limits) {
        if let Ok(addr) = listener.local_addr() {
            info!(address = %addr, ?port, "admin listening");
        }
        let label = PortLabels { port: port.name() };
        let open = self.connections.get_or_create(&label).clone();
        let rejected = self.rejected.get_or_create(&label).clone();
        let mut http = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
        // NOTE: hyper's HTTP/1 head timer runs whenever a head is awaited: from the first byte
        // the connection is known to be HTTP/1, and between kept-alive requests.
        http.http1()
            .timer(TokioTimer::new())
            .header_read_timeout(limits.header_timeout);
        http.http2()
            .timer(TokioTimer::new())
            .max_concurrent_streams(16);
        let slots = Arc::new(Semaphore::new(limits.max_connections.max(1)));
        loop {
            let (stream, peer) = match listener.accept().await {
                Ok(a) => a,
                Err(err) => {
                    warn!(%err, "admin accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            let Ok(slot) = slots.clone().try_acquire_owned() else {
                rejected.inc();
                debug!(%peer, ?port, max = limits.max_connections, "too many admin connections; closing");
                drop(stream);
                continue;
            };
            let local = match stream.local_addr() {
                Ok(a) => a,
                Err(err) => {
                    debug!(%peer, %err, "admin connection without a local address; closing");
                    continue;
                }
            };
            let conn_start = Instant::now();
            let seen = Arc::new(AtomicU64::new(NO_REQUEST));
            let admin = self.clone();
            let svc = {
                let seen = seen.clone();
                hyper::service::service_fn(move |req| {
                    seen.store(millis_since(conn_start), Ordering::Relaxed);
                    let admin = admin.clone();
                    async move { Ok::<_, Infallible>(admin.handle(&req, port, local)) }
                })
            };
            let conn = http
                .serve_connection(TokioIo::new(stream), svc)
                .into_owned();
            let open = open.clone();
            open.inc();
            tokio::spawn(async move {
                let _slot = slot;
                tokio::select! {
                    res = conn => if let Err(err) = res {
                        debug!(%peer, %err, "admin connection error");
                    },
                    () = idle(conn_start, &seen, limits) => {
                        debug!(%peer, "admin connection idle or too slow; closing");
                    }
                }
                open.dec();
            });
        }
    }

    fn handle(
        &self,
        req: &Request<Incoming>,
        port: Port,
        local: SocketAddr,
    ) -> Response<Full<Bytes>> {
        let path = req.uri().path();
        let read_only = matches!(path, "/ready" | "/live" | "/metrics");
        let reads = matches!(path, "/config_dump" | "/clusters" | "/listeners");
        let writes = matches!(
            path,
            "/logging" | "/healthcheck/fail" | "/healthcheck/ok" | "/drain" | "/shutdown"
        );
        if port == Port::Health && !read_only {
            return text(
                StatusCode::NOT_FOUND,
                "not found: this port serves /ready, /live and /metrics only\n",
            );
        }
        // NOTE: the health port is not checked: kubelet and Prometheus reach it by the pod IP
        // or a service name, with whatever Host they like, and it shows nothing worth stealing.
        if port == Port::Admin && !addressed_to_admin(req, local) {
            return refuse(Refusal::ForeignHost, req);
        }
        let get = req.method() == Method::GET || req.method() == Method::HEAD;
        if (read_only || reads) && !get {
            return not_allowed("GET, HEAD", "method not allowed: use GET\n");
        }
        if writes && req.method() != Method::POST {
            return not_allowed("POST", "method not allowed: use POST\n");
        }
        if writes && !same_origin(req.headers(), local) {
            return refuse(Refusal::CrossOrigin, req);
        }
        let c = &self.controls;
        match path {
            "/ready" => match (self.phase(), self.failed_by_hand.load(Ordering::Acquire)) {
                (Phase::Ready, false) => text(StatusCode::OK, "ready\n"),
                (Phase::Ready, true) => text(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "failed by /healthcheck/fail\n",
                ),
                (Phase::Starting, _) => text(StatusCode::SERVICE_UNAVAILABLE, "starting\n"),
                (Phase::Draining, _) => text(StatusCode::SERVICE_UNAVAILABLE, "draining\n"),
            },
            "/live" => text(StatusCode::OK, "live\n"),
            "/metrics" => with_type(
                text(StatusCode::OK, pillion_telemetry::encode(&self.registry)),
                "text/plain; version=0.0.4; charset=utf-8",
            ),
            "/config_dump" => with_type(
                text(StatusCode::OK, c.config_dump.clone()),
                "application/yaml",
            ),
            "/clusters" => json(&(c.clusters)()),
            "/listeners" => json(&(c.listeners)()),
            "/logging" => self.logging(req.uri().query().unwrap_or("")),
            "/healthcheck/fail" => {
                self.failed_by_hand.store(true, Ordering::Release);
                info!("readiness failed by hand (/healthcheck/fail)");
                text(StatusCode::OK, "/ready now answers 503\n")
            }
            "/healthcheck/ok" => {
                self.failed_by_hand.store(false, Ordering::Release);
                info!("readiness restored by hand (/healthcheck/ok)");
                text(
                    StatusCode::OK,
                    "/ready answers by the proxy's state again\n",
                )
            }
            "/drain" => {
                info!("drain requested (/drain)");
                // NOTE: not ready from this answer on, before the listeners stop.
                self.set_phase(Phase::Draining);
                c.drain.cancel();
                text(
                    StatusCode::OK,
                    "draining: listeners stop accepting; the process keeps running\n",
                )
            }
            "/shutdown" => {
                info!("shutdown requested (/shutdown)");
                self.set_phase(Phase::Draining);
                c.shutdown.cancel();
                text(StatusCode::OK, "shutting down after the drain\n")
            }
            _ => text(
                StatusCode::NOT_FOUND,
                "not found; GET /ready /live /metrics /config_dump /clusters /listeners; \
                 POST /logging /healthcheck/fail /healthcheck/ok /drain /shutdown\n",
            ),
        }
    }

    /// `POST /logging?level=debug` sets every module; `?pillion_proxy=debug` one module.
    fn logging(&self, query: &str) -> Response<Full<Bytes>> {
        let c = &self.controls;
        let mut base = None;
        let mut modules = Vec::new();
        for (k, v) in query.split('&').filter_map(|kv| kv.split_once('=')) {
            if k == "level" {
                base = Some(v.to_string());
            } else {
                modules.push(format!("{k}={v}"));
            }
        }
        if base.is_none() && modules.is_empty() {
            return text(
                StatusCode::BAD_REQUEST,
                format!(
                    "expected ?level=LEVEL and/or ?MODULE=LEVEL; now: {}\n",
                    (c.log_filter)()
                ),
            );
        }
        let mut filter = base.unwrap_or_else(|| (c.log_filter)());
        for m in modules {
            filter.push(',');
            filter.push_str(&m);
        }
        match (c.set_log_filter)(&filter) {
            Ok(now) => {
                info!(filter = %now, "log filter changed (/logging)");
                text(StatusCode::OK, format!("{now}\n"))
            }
            Err(e) => text(StatusCode::BAD_REQUEST, format!("{e}\n")),
        }
    }
}

// === impl Port ===

impl Port {
    fn name(self) -> &'static str {
        match self {
            Self::Admin => "admin",
            Self::Health => "health",
        }
    }
}

/// Why the admin port refuses a request (403): what a web page in the operator's browser could
/// send, and curl or a script does not.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Refusal {
    /// A state-changing request whose `Origin` is not the admin's own address.
    CrossOrigin,
    /// A `Host` (or `:authority`) that names neither an IP address nor, on loopback,
    /// `localhost`: a DNS name that may have been rebound to the admin's address.
    ForeignHost,
}

// === impl Refusal ===

impl Refusal {
    fn body(self) -> &'static str {
        match self {
            Self::CrossOrigin => "forbidden: a request with an Origin other than the admin's own address cannot change state\n",
            Self::ForeignHost => "forbidden: the admin answers only requests whose Host is an IP address or localhost\n",
        }
    }

    fn log(self) -> &'static str {
        match self {
            Self::CrossOrigin => "refused a cross-origin admin request",
            Self::ForeignHost => "refused an admin request for another host",
        }
    }
}

/// The one answer to a refused admin request: a WARN with what the request carried, and 403.
fn refuse(why: Refusal, req: &Request<Incoming>) -> Response<Full<Bytes>> {
    warn!(
        path = req.uri().path(),
        host = ?req.headers().get(header::HOST),
        authority = ?req.uri().authority(),
        origin = ?req.headers().get(header::ORIGIN),
        "{}",
        why.log()
    );
    text(StatusCode::FORBIDDEN, why.body())
}

/// `seen` before the first request.
const NO_REQUEST: u64 = u64::MAX;

fn millis_since(start: Instant) -> u64 {
    u64::try_from(start.elapsed().as_millis()).unwrap_or(NO_REQUEST - 1)
}

/// Completes when the connection must be closed: no request within `header_timeout` of its
/// opening (a client that sends nothing, or drips its first request), or none within
/// `idle_timeout` of the last one. `seen` is when the last request arrived (ms after `start`).
async fn idle(start: Instant, seen: &AtomicU64, limits: Limits) {
    let mut deadline = start + limits.header_timeout;
    loop {
        tokio::time::sleep_until(deadline).await;
        let next = match seen.load(Ordering::Relaxed) {
            NO_REQUEST => return,
            ms => start + Duration::from_millis(ms) + limits.idle_timeout,
        };
        if next <= Instant::now() {
            return;
        }
        deadline = next;
    }
}

/// Whether a state-changing request may proceed: no `Origin` (curl, scripts; browsers send one
/// on every cross-origin POST), or an `Origin` naming the address the request came in on
/// (`localhost` too, on loopback). A page on another origin, `Origin: null` (a sandboxed page)
/// and a rebound DNS name (`http://evil.example:15000`) are all refused.
fn same_origin(headers: &http::HeaderMap, local: SocketAddr) -> bool {
    let Some(origin) = headers.get(header::ORIGIN) else {
        return true;
    };
    // NOTE: an Origin is scheme, host and port only; user info or a path is not a browser's,
    // and `split_host` refuses both.
    let Some((host, port)) = origin
        .to_str()
        .ok()
        .and_then(|o| o.strip_prefix("http://"))
        .and_then(split_host)
    else {
        return false;
    };
    if port.unwrap_or(80) != local.port() {
        return false;
    }
    match host {
        Host::Ip(ip) => ip == local.ip(),
        Host::Name(name) => local.ip().is_loopback() && name.eq_ignore_ascii_case("localhost"),
    }
}

/// Whether a request on the admin port was sent to a name DNS rebinding cannot produce: every
/// `Host` header and the URI's authority (HTTP/2's `:authority`, or an absolute-form target)
/// must pass [`is_admin_host`]. A request with neither (HTTP/1.0 from a script) passes:
/// rebinding needs a browser, and browsers always send one.
fn addressed_to_admin<B>(req: &Request<B>, local: SocketAddr) -> bool {
    let authority = req.uri().authority().map(|a| a.as_str().as_bytes());
    let hosts = req.headers().get_all(header::HOST).iter();
    authority
        .into_iter()
        .chain(hosts.map(HeaderValue::as_bytes))
        .all(|name| is_admin_host(name, local))
}

/// Whether a `Host` value (`host[:port]`) names the admin in a way a web page cannot take over:
/// an IP literal (any address and port, so that `kubectl port-forward` and NAT keep working),
/// or `localhost` or a name under `.localhost` when the admin is reached over loopback
/// (browsers resolve those to loopback themselves, RFC 6761). An empty value is what HTTP/1.1
/// sends when there is no authority, like no Host at all.
fn is_admin_host(value: &[u8], local: SocketAddr) -> bool {
    if value.is_empty() {
        return true;
    }
    match std::str::from_utf8(value).ok().and_then(split_host) {
        Some((Host::Ip(_), _)) => true,
        Some((Host::Name(name), _)) => local.ip().is_loopback() && is_localhost(name),
        None => false,
    }
}

/// `localhost`, or a name ending in `.localhost`, in any case.
fn is_localhost(name: &str) -> bool {
    const SUFFIX: &[u8] = b".localhost";
    let name = name.as_bytes();
    name.eq_ignore_ascii_case(&SUFFIX[1..])
        || (name.len() > SUFFIX.len()
            && name[name.len() - SUFFIX.len()..].eq_ignore_ascii_case(SUFFIX))
}

/// The host part of a `Host` header or of an Origin after its scheme.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Host<'a> {
    /// A dotted-quad IPv4 address, or an IPv6 address in brackets.
    Ip(IpAddr),
    /// A DNS name: letters, digits, `-`, `_` and `.`.
    Name(&'a str),
}

/// Splits `host[:port]` (IPv6 in brackets). `None` when the port is not a number, or the host
/// is neither an IP address nor a DNS name (empty, user info, a path, an unbracketed IPv6).
fn split_host(s: &str) -> Option<(Host<'_>, Option<u16>)> {
    let port = |p: &str| {
        p.parse::<u16>()
            .ok()
            .filter(|_| p.bytes().all(|b| b.is_ascii_digit()))
    };
    if let Some(rest) = s.strip_prefix('[') {
        let (ip, after) = rest.split_once(']')?;
        let ip = ip.parse::<Ipv6Addr>().ok()?;
        let port = match after {
            "" => None,
            p => Some(port(p.strip_prefix(':')?)?),
        };
        return Some((Host::Ip(IpAddr::V6(ip)), port));
    }
    let (host, port) = match s.rsplit_once(':') {
        Some((host, p)) => (host, Some(port(p)?)),
        None => (s, None),
    };
    if let Ok(ip) = host.parse::<Ipv4Addr>() {
        return Some((Host::Ip(IpAddr::V4(ip)), port));
    }
    let name = !host.is_empty()
        && host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
    name.then_some((Host::Name(host), port))
}

fn not_allowed(allow: &'static str, body: &'static str) -> Response<Full<Bytes>> {
    let mut rsp = text(StatusCode::METHOD_NOT_ALLOWED, body);
    rsp.headers_mut()
        .insert(header::ALLOW, HeaderValue::from_static(allow));
    rsp
}

fn text(status: StatusCode, body: impl Into<Bytes>) -> Response<Full<Bytes>> {
    let mut rsp = Response::new(Full::new(body.into()));
    *rsp.status_mut() = status;
    with_type(rsp, "text/plain")
}

fn json(v: &serde_json::Value) -> Response<Full<Bytes>> {
    let body = serde_json::to_vec_pretty(v).unwrap_or_default();
    with_type(text(StatusCode::OK, body), "application/json")
}

fn with_type(mut rsp: Response<Full<Bytes>>, content_type: &'static str) -> Response<Full<Bytes>> {
    rsp.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    rsp
}

#[cfg(test)]
mod tests {
    use super::*;

    fn origin(value: &str) -> http::HeaderMap {
        let mut h = http::HeaderMap::new();
        h.insert(header::ORIGIN, HeaderValue::from_str(value).unwrap());
        h
    }

    #[test]
    fn origins() {
        let lo: SocketAddr = "127.0.0.1:15000".parse().unwrap();
        let pod: SocketAddr = "10.1.2.3:15000".parse().unwrap();
        assert!(same_origin(&http::HeaderMap::new(), lo));
        for ok in [
            "http://127.0.0.1:15000",
            "http://localhost:15000",
            "http://LOCALHOST:15000",
        ] {
            assert!(same_origin(&origin(ok), lo), "{ok}");
        }
        assert!(same_origin(&origin("http://10.1.2.3:15000"), pod));
        for bad in [
            "http://evil.example:15000",
            "http://evil.example",
            "http://127.0.0.1:15001",
            "http://127.0.0.1",
            "https://127.0.0.1:15000",
            "http://127.0.0.1:15000/x",
            "http://user@127.0.0.1:15000",
            "null",
            "",
        ] {
            assert!(!same_origin(&origin(bad), lo), "{bad}");
        }
        assert!(!same_origin(&origin("http://localhost:15000"), pod));
        let v6: SocketAddr = "[::1]:15000".parse().unwrap();
        assert!(same_origin(&origin("http://[::1]:15000"), v6));
    }

    #[test]
    fn hosts() {
        let lo: SocketAddr = "127.0.0.1:15000".parse().unwrap();
        let lo6: SocketAddr = "[::1]:15000".parse().unwrap();
        let pod: SocketAddr = "10.1.2.3:15000".parse().unwrap();
        for ok in [
            "127.0.0.1:15000",
            "127.0.0.1",
            // `kubectl port-forward` and NAT: another address or port than the listener's.
            "127.0.0.1:8080",
            "10.1.2.3",
            "[::1]:15000",
            "[::1]",
            "localhost",
            "localhost:15000",
            "LocalHost:15000",
            "app.localhost:15000",
            "",
        ] {
            assert!(is_admin_host(ok.as_bytes(), lo), "{ok:?}");
            assert!(is_admin_host(ok.as_bytes(), lo6), "{ok:?} on [::1]");
        }
        for bad in [
            "evil.example:15000",
            "evil.example",
            "localhost.evil.example:15000",
            "evillocalhost:15000",
            ".localhost",
            "127.0.0.1.evil.example",
            // Not literals a browser sends (it would write 127.0.0.1); names to DNS.
            "127.1",
            "2130706433",
            "::1",
            "[evil.example]:15000",
            "[::1]x",
            "[::1]:",
            "localhost:",
            "localhost:+80",
            "localhost:99999",
            "user@127.0.0.1",
            "localhost/x",
            "x/.localhost",
        ] {
            assert!(!is_admin_host(bad.as_bytes(), lo), "{bad:?}");
        }
        assert!(!is_admin_host(b"\xfflocalhost", lo));
        // Off loopback only IP literals: `localhost` there is not the admin's own address.
        assert!(is_admin_host(b"10.1.2.3:15000", pod));
        assert!(is_admin_host(b"[fd00::1]:15000", pod));
        for bad in ["localhost:15000", "app.localhost", "evil.example"] {
            assert!(!is_admin_host(bad.as_bytes(), pod), "{bad:?}");
        }
    }

    #[test]
    fn every_name_a_request_carries_is_checked() {
        let lo: SocketAddr = "127.0.0.1:15000".parse().unwrap();
        let req = |uri: &str, hosts: &[&str]| {
            let mut b = Request::builder().uri(uri);
            for h in hosts {
                b = b.header(header::HOST, *h);
            }
            b.body(()).unwrap()
        };
        assert!(addressed_to_admin(
            &req("/config_dump", &["127.0.0.1:15000"]),
            lo
        ));
        assert!(addressed_to_admin(
            &req("/config_dump", &["localhost:15000"]),
            lo
        ));
        // HTTP/1.0 from a script: no Host at all.
        assert!(addressed_to_admin(&req("/config_dump", &[]), lo));
        assert!(addressed_to_admin(
            &req("http://[::1]:15000/clusters", &[]),
            lo
        ));
        assert!(!addressed_to_admin(
            &req("/config_dump", &["evil.example:15000"]),
            lo
        ));
        // HTTP/2's `:authority`, or an absolute-form target, is a name too.
        assert!(!addressed_to_admin(
            &req("http://evil.example:15000/config_dump", &[]),
            lo
        ));
        assert!(!addressed_to_admin(
            &req(
                "http://evil.example:15000/config_dump",
                &["127.0.0.1:15000"]
            ),
            lo
        ));
        assert!(!addressed_to_admin(
            &req(
                "http://127.0.0.1:15000/config_dump",
                &["evil.example:15000"]
            ),
            lo
        ));
        // A second Host header cannot hide a rebound name behind a good one.
        assert!(!addressed_to_admin(
            &req("/config_dump", &["127.0.0.1:15000", "evil.example:15000"]),
            lo
        ));
    }

    fn limits() -> Limits {
        Limits {
            header_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
            max_connections: 4,
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_connection_without_a_request_ends_at_the_header_timeout() {
        let start = Instant::now();
        let seen = AtomicU64::new(NO_REQUEST);
        idle(start, &seen, limits()).await;
        assert_eq!(start.elapsed(), Duration::from_secs(10));
    }

    #[tokio::test(start_paused = true)]
    async fn a_connection_ends_idle_timeout_after_its_last_request() {
        let start = Instant::now();
        let seen = AtomicU64::new(NO_REQUEST);
        let done = idle(start, &seen, limits());
        tokio::pin!(done);
        tokio::select! {
            () = &mut done => panic!("ended before the header timeout"),
            () = tokio::time::sleep(Duration::from_secs(5)) => {}
        }
        seen.store(millis_since(start), Ordering::Relaxed);
        done.await;
        assert_eq!(start.elapsed(), Duration::from_secs(65));
    }
}
