//! Active health checks: probe every endpoint of a cluster periodically and flip its healthy flag.
//!
//! One task per cluster ([`spawn_health_checks`]) probes all current endpoints concurrently
//! every `interval`: an HTTP/1.1 `GET path` on a fresh connection expecting a 2xx, or a bare TCP
//! connect. An endpoint turns unhealthy after `unhealthy_threshold` failures in a row and healthy
//! again after `healthy_threshold` passes; unhealthy endpoints are skipped by picks.
//!
//! NOTE: endpoints start healthy, and the first result of an endpoint never checked before
//! decides its state at once (one failure marks it unhealthy, one pass keeps it healthy); the
//! thresholds apply from then on. Envoy instead holds new hosts out until their first pass:
//! for a sidecar without a control plane that would turn every start and every DNS change
//! into up to one interval of 503s. Starting healthy risks a few requests to a dead endpoint
//! before the first probe, which retries and outlier detection absorb; deciding on the first
//! result keeps that window to one interval (the first round runs as soon as the task starts).

use crate::balance::{EndpointSet, EndpointState};
use bytes::Bytes;
use futures_util::future::{self, Either};
use http::{header, Request, StatusCode};
use http_body_util::Empty;
use hyper_util::rt::TokioIo;
use std::{
    net::SocketAddr,
    sync::{
        atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering::Relaxed},
        Arc, Weak,
    },
    time::Duration,
};
use tokio::{net::TcpStream, task::JoinHandle, time::MissedTickBehavior};
use tracing::{debug, info, warn};

/// Active health check settings for one cluster.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HealthCheckConfig {
    /// What a probe does.
    pub kind: HealthCheckKind,
    /// Time between two rounds of probes.
    pub interval: Duration,
    /// How long one probe may take, connect included.
    pub timeout: Duration,
    /// Passes in a row that turn an unhealthy endpoint healthy.
    pub healthy_threshold: u32,
    /// Failures in a row that turn a healthy endpoint unhealthy.
    pub unhealthy_threshold: u32,
}

/// What a health probe does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HealthCheckKind {
    /// `GET path` over a fresh HTTP/1.1 connection, `Host` set to the endpoint's address; 2xx passes.
    Http {
        /// The request path (and query), for example `/healthz`.
        path: String,
    },
    /// A TCP connect; an accepted connection passes.
    Tcp,
}

/// Why a health probe failed.
#[derive(Debug, thiserror::Error)]
pub enum HealthCheckError {
    /// The TCP connection could not be opened.
    #[error("connect failed: {0}")]
    Connect(#[source] std::io::Error),
    /// The probe took longer than the timeout.
    #[error("timed out after {0:?}")]
    Timeout(Duration),
    /// The request could not be built (an invalid path).
    #[error("invalid health check request: {0}")]
    Request(#[source] http::Error),
    /// The HTTP exchange failed.
    #[error("HTTP error: {0}")]
    Http(#[source] hyper::Error),
    /// The endpoint answered with a status other than 2xx.
    #[error("unhealthy status {0}")]
    Status(StatusCode),
}

/// Where the health checker finds the endpoints to probe; the cluster implements it over its
/// current [`EndpointSet`] (for example `self.endpoints.load().endpoints().to_vec()`).
pub trait EndpointSource: Send + Sync + 'static {
    /// The endpoints to probe this round.
    fn current_endpoints(&self) -> Vec<Arc<EndpointState>>;

    /// Opens a probe's connection to `addr`, as the cluster's requests would reach it (TLS when
    /// the cluster originates it). A plain TCP connect by default.
    fn dial(&self, addr: SocketAddr) -> future::BoxFuture<'static, std::io::Result<ProbeIo>> {
        Box::pin(dial_tcp(addr))
    }
}

/// A plain TCP connection for a probe.
async fn dial_tcp(addr: SocketAddr) -> std::io::Result<ProbeIo> {
    let stream = TcpStream::connect(addr).await?;
    let _ = stream.set_nodelay(true);
    Ok(Box::new(stream))
}

/// A probe's connection.
pub type ProbeIo = Box<dyn ProbeStream>;

/// What a probe's connection must be: a byte stream.
pub trait ProbeStream: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin {}

impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin> ProbeStream for T {}

/// Per-endpoint health state, atomics written only by the checker (and operators).
#[derive(Debug)]
pub(crate) struct EndpointHealth {
    healthy: AtomicBool,
    checked: AtomicBool,
    passes: AtomicU32,
    failures: AtomicU32,
    failures_total: AtomicU64,
}

/// Spawns the task probing `source`'s endpoints every `cfg.interval`; it ends once `source` is
/// dropped (checked before each round).
pub fn spawn_health_checks<S: EndpointSource>(
    source: Weak<S>,
    cfg: HealthCheckConfig,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        let mut ticker = tokio::time::interval(cfg.interval.max(Duration::from_millis(1)));
        ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
        loop {
            ticker.tick().await;
            let Some(source) = source.upgrade() else {
                return;
            };
            let endpoints = source.current_endpoints();
            future::join_all(endpoints.iter().map(|ep| async {
                let dial = source.dial(ep.addr());
                let result = check_on(ep.addr(), dial, &cfg.kind, cfg.timeout).await;
                ep.health().on_probe(ep, result, &cfg);
            }))
            .await;
        }
    })
}

/// Probes `addr` once, within `timeout`.
pub async fn check_endpoint(
    addr: SocketAddr,
    kind: &HealthCheckKind,
    timeout: Duration,
) -> Result<(), HealthCheckError> {
    check_on(addr, dial_tcp(addr), kind, timeout).await
}

/// Probes over the connection `dial` opens, within `timeout` (the connect included).
async fn check_on(
    addr: SocketAddr,
    dial: impl std::future::Future<Output = std::io::Result<ProbeIo>>,
    kind: &HealthCheckKind,
    timeout: Duration,
) -> Result<(), HealthCheckError> {
    tokio::time::timeout(timeout, probe(addr, dial, kind))
        .await
        .map_err(|_| HealthCheckError::Timeout(timeout))?
}

async fn probe(
    addr: SocketAddr,
    dial: impl std::future::Future<Output = std::io::Result<ProbeIo>>,
    kind: &HealthCheckKind,
) -> Result<(), HealthCheckError> {
    let stream = dial.await.map_err(HealthCheckError::Connect)?;
    let HealthCheckKind::Http { path } = kind else {
        return Ok(());
    };
    let request = Request::get(path.as_str())
        .header(header::HOST, addr.to_string())
        .header(header::USER_AGENT, "pillion-health-check")
        .header(header::CONNECTION, "close")
        .body(Empty::<Bytes>::new())
        .map_err(HealthCheckError::Request)?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(HealthCheckError::Http)?;
    // The connection is driven here rather than spawned, so a timeout drops all of it.
    let send = std::pin::pin!(sender.send_request(request));
    let conn = std::pin::pin!(conn);
    let response = match future::select(send, conn).await {
        Either::Left((response, _conn)) => response,
        // The connection ended first: the response, if any, is already queued for `send`.
        Either::Right((closed, send)) => {
            closed.map_err(HealthCheckError::Http)?;
            send.await
        }
    }
    .map_err(HealthCheckError::Http)?;
    if response.status().is_success() {
        Ok(())
    } else {
        Err(HealthCheckError::Status(response.status()))
    }
}

// === impl HealthCheckConfig ===

impl HealthCheckConfig {
    /// HTTP checks of `path` with the default interval, timeout and thresholds.
    pub fn http(path: impl Into<String>) -> Self {
        Self {
            kind: HealthCheckKind::Http { path: path.into() },
            ..Self::tcp()
        }
    }

    /// TCP connect checks with the default interval (5s), timeout (1s) and thresholds (2 and 3).
    pub fn tcp() -> Self {
        Self {
            kind: HealthCheckKind::Tcp,
            interval: Duration::from_secs(5),
            timeout: Duration::from_secs(1),
            healthy_threshold: 2,
            unhealthy_threshold: 3,
        }
    }
}

impl Default for HealthCheckConfig {
    /// TCP connect checks: the one kind that needs nothing from the app.
    fn default() -> Self {
        Self::tcp()
    }
}

// === impl EndpointSource ===

impl EndpointSource for EndpointSet {
    fn current_endpoints(&self) -> Vec<Arc<EndpointState>> {
        self.endpoints().to_vec()
    }
}

// === impl EndpointHealth ===

impl Default for EndpointHealth {
    fn default() -> Self {
        Self {
            healthy: AtomicBool::new(true),
            checked: AtomicBool::new(false),
            passes: AtomicU32::new(0),
            failures: AtomicU32::new(0),
            failures_total: AtomicU64::new(0),
        }
    }
}

impl EndpointHealth {
    #[inline]
    pub(crate) fn is_healthy(&self) -> bool {
        self.healthy.load(Relaxed)
    }

    pub(crate) fn set_healthy(&self, healthy: bool) -> bool {
        self.healthy.swap(healthy, Relaxed)
    }

    pub(crate) fn failures_total(&self) -> u64 {
        self.failures_total.load(Relaxed)
    }

    fn on_probe(
        &self,
        ep: &EndpointState,
        result: Result<(), HealthCheckError>,
        cfg: &HealthCheckConfig,
    ) {
        let first = !self.checked.swap(true, Relaxed);
        match result {
            Ok(()) => {
                self.failures.store(0, Relaxed);
                let passes = self.passes.fetch_add(1, Relaxed).saturating_add(1);
                if (first || passes >= cfg.healthy_threshold) && !self.set_healthy(true) {
                    info!(cluster = %ep.cluster(), endpoint = %ep.addr(), passes, "endpoint healthy");
                }
            }
            Err(error) => {
                self.passes.store(0, Relaxed);
                self.failures_total.fetch_add(1, Relaxed);
                let failures = self.failures.fetch_add(1, Relaxed).saturating_add(1);
                if (first || failures >= cfg.unhealthy_threshold) && self.set_healthy(false) {
                    warn!(cluster = %ep.cluster(), endpoint = %ep.addr(), failures, %error, "endpoint unhealthy");
                } else {
                    debug!(cluster = %ep.cluster(), endpoint = %ep.addr(), failures, %error, "health check failed");
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::balance::BalanceConfig;
    use http::Response;
    use hyper::{body::Incoming, service::service_fn};
    use std::{convert::Infallible, sync::Mutex};
    use tokio::net::TcpListener;

    /// An in-process HTTP/1.1 server on 127.0.0.1:0 answering `status` to `GET /healthz` with
    /// the right `Host`, 404 to anything else.
    async fn server(status: StatusCode) -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let svc = service_fn(move |req: Request<Incoming>| async move {
                    let host_ok = req
                        .headers()
                        .get(header::HOST)
                        .is_some_and(|h| h.as_bytes() == addr.to_string().as_bytes());
                    let status = if req.uri().path() == "/healthz" && host_ok {
                        status
                    } else {
                        StatusCode::NOT_FOUND
                    };
                    let mut res = Response::new(Empty::<Bytes>::new());
                    *res.status_mut() = status;
                    Ok::<_, Infallible>(res)
                });
                tokio::spawn(
                    hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), svc),
                );
            }
        });
        addr
    }

    /// A listener that accepts and never answers.
    async fn silent() -> (TcpListener, SocketAddr) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        (listener, addr)
    }

    async fn closed_port() -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        listener.local_addr().unwrap()
    }

    fn fast(kind: HealthCheckKind) -> HealthCheckConfig {
        HealthCheckConfig {
            kind,
            interval: Duration::from_millis(20),
            timeout: Duration::from_millis(500),
            healthy_threshold: 2,
            unhealthy_threshold: 2,
        }
    }

    fn http() -> HealthCheckKind {
        HealthCheckKind::Http {
            path: "/healthz".into(),
        }
    }

    /// Polls `cond` every 10ms for at most 10s.
    async fn eventually(what: &str, mut cond: impl FnMut() -> bool) {
        for _ in 0..1000 {
            if cond() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("timed out waiting for {what}");
    }

    fn health_of(set: &EndpointSet) -> Vec<bool> {
        set.endpoints().iter().map(|e| e.is_healthy()).collect()
    }

    #[tokio::test]
    async fn probes_report_what_the_endpoint_does() {
        let ok = server(StatusCode::OK).await;
        let bad = server(StatusCode::INTERNAL_SERVER_ERROR).await;
        let closed = closed_port().await;
        let (_silent, hang) = silent().await;
        let t = Duration::from_millis(300);

        check_endpoint(ok, &http(), t).await.unwrap();
        let wrong_path = HealthCheckKind::Http { path: "/".into() };
        assert!(matches!(
            check_endpoint(ok, &wrong_path, t).await,
            Err(HealthCheckError::Status(StatusCode::NOT_FOUND))
        ));
        assert!(matches!(
            check_endpoint(bad, &http(), t).await,
            Err(HealthCheckError::Status(StatusCode::INTERNAL_SERVER_ERROR))
        ));
        assert!(matches!(
            check_endpoint(closed, &http(), t).await,
            Err(HealthCheckError::Connect(_))
        ));
        assert!(matches!(
            check_endpoint(hang, &http(), t).await,
            Err(HealthCheckError::Timeout(_))
        ));
        // A TCP check only needs the connection.
        check_endpoint(bad, &HealthCheckKind::Tcp, t).await.unwrap();
        check_endpoint(hang, &HealthCheckKind::Tcp, t)
            .await
            .unwrap();
        assert!(check_endpoint(closed, &HealthCheckKind::Tcp, t)
            .await
            .is_err());
    }

    #[tokio::test]
    async fn http_checks_mark_endpoints_healthy_and_unhealthy() {
        let ok = server(StatusCode::OK).await;
        let bad = server(StatusCode::INTERNAL_SERVER_ERROR).await;
        let closed = closed_port().await;
        let set = Arc::new(EndpointSet::new(
            "test",
            [ok, bad, closed],
            BalanceConfig::default(),
        ));
        // Everything starts healthy.
        assert_eq!(health_of(&set), [true, true, true]);
        let task = spawn_health_checks(Arc::downgrade(&set), fast(http()));

        eventually("the failing endpoints to turn unhealthy", || {
            health_of(&set) == [true, false, false]
        })
        .await;
        // Picks now go to the one healthy endpoint.
        for _ in 0..6 {
            assert_eq!(set.pick().unwrap().addr(), ok);
        }
        let snap = set.snapshot();
        assert_eq!(snap.endpoints[0].health_check_failures_total, 0);
        assert!(snap.endpoints[1].health_check_failures_total >= 1);

        // An endpoint marked down comes back after healthy_threshold passes.
        set.endpoints()[0].set_healthy(false);
        eventually("the good endpoint to recover", || {
            set.endpoints()[0].is_healthy()
        })
        .await;

        // The task ends once the set is gone.
        drop(set);
        tokio::time::timeout(Duration::from_secs(10), task)
            .await
            .unwrap()
            .unwrap();
    }

    #[tokio::test]
    async fn tcp_checks_follow_the_current_endpoints() {
        struct Swappable(Mutex<Arc<EndpointSet>>);
        impl EndpointSource for Swappable {
            fn current_endpoints(&self) -> Vec<Arc<EndpointState>> {
                self.0.lock().unwrap().endpoints().to_vec()
            }
        }

        let ok = server(StatusCode::INTERNAL_SERVER_ERROR).await;
        let closed = closed_port().await;
        let first = Arc::new(EndpointSet::new("test", [ok], BalanceConfig::default()));
        let source = Arc::new(Swappable(Mutex::new(first.clone())));
        let _task = spawn_health_checks(Arc::downgrade(&source), fast(HealthCheckKind::Tcp));

        // A rebuilt set with a dead endpoint: the checker picks it up on its next round.
        let next = Arc::new(first.rebuild([ok, closed]));
        *source.0.lock().unwrap() = next.clone();
        eventually("the closed port to turn unhealthy", || {
            health_of(&next) == [true, false]
        })
        .await;
        assert!(
            next.endpoints()[1]
                .snapshot(tokio::time::Instant::now())
                .health_check_failures_total
                >= 1
        );
    }
}
