//! Clusters: named groups of endpoints, their resolution, selection, limits and pooled clients.

use crate::{
    connect::Counted,
    pool::{Connector, EndpointPool, SendBody, UpstreamBody},
};
use arc_swap::ArcSwap;
use http::{uri::Authority, Request, Response, Uri};
use hyper_util::client::legacy::connect::HttpConnector;
use pillion_config as config;
use pillion_layers::{
    balance::{BalanceConfig, Balancer, ClusterSnapshot, EndpointSet, EndpointState},
    error::DownstreamBodyError,
    health::{spawn_health_checks, EndpointSource, HealthCheckConfig, HealthCheckKind},
    limit::{self, Counter},
    outlier::{Outcome, OutlierConfig},
    retry::{Budget, BudgetPolicy},
    BoxError,
};
use pillion_telemetry::{EndpointStats, Metrics, UpstreamStats};
use pillion_tls::{ClientTls, MaybeTls, TlsConnector, TlsMetrics};
use std::{
    collections::HashMap,
    future::Future,
    net::SocketAddr,
    pin::Pin,
    sync::{Arc, Weak},
    task::{Context, Poll},
    time::Duration,
};
use tokio::{net::TcpStream, time::Instant};
use tracing::{debug, info, warn};

/// A named group of upstream endpoints.
pub struct Cluster {
    name: Arc<str>,
    spec: Vec<config::Endpoint>,
    resolved: ArcSwap<Resolved>,
    connect_timeout: Duration,
    dns_refresh: Duration,
    protocol: config::UpstreamProtocol,
    health_check: Option<HealthCheckConfig>,
    /// TLS origination for TCP relays (HTTP/1.1 ALPN), when the cluster has `tls`.
    tcp_tls: Option<Arc<ClientTls>>,
    h1: Connector,
    h2: Connector,
    idle_timeout: Duration,
    upstream: UpstreamStats,
    /// Per-endpoint metrics, when the cluster opts in.
    endpoint_metrics: Option<Arc<Metrics>>,
    /// Circuit breaking: requests in flight (each try counts).
    pub max_requests: Counter,
    /// Circuit breaking: retries in flight.
    pub max_retries: Counter,
    /// The retry budget shared by every route sending here.
    pub budget: Arc<Budget>,
    limits: [Counter; 2],
}

/// The endpoints in use: their live state, and what the data path needs of each address.
struct Resolved {
    set: EndpointSet,
    meta: HashMap<SocketAddr, Arc<Endpoint>>,
}

/// One resolved endpoint.
#[derive(Debug, Clone)]
pub struct Endpoint {
    /// Where to connect.
    pub addr: SocketAddr,
    /// `addr` as a URI authority, built once.
    pub authority: Authority,
    /// `http://addr/`, what the connector is given.
    pub(crate) uri: Uri,
    /// The pooled connections to it.
    pub(crate) pool: Arc<EndpointPool>,
    /// Its metric handles, when the cluster has `endpoint_metrics`.
    pub stats: Option<EndpointStats>,
}

/// The cluster had no endpoint at all (its DNS names resolved to nothing).
#[derive(Debug, Clone, Copy, thiserror::Error)]
#[error("the cluster has no endpoint")]
pub struct NoEndpoint;

/// A request to an endpoint failed; names the endpoint for the access log.
#[derive(Debug, thiserror::Error)]
#[error("upstream {addr}: {source}")]
pub struct UpstreamError {
    /// The endpoint.
    pub addr: SocketAddr,
    /// What failed.
    #[source]
    pub source: BoxError,
}

/// The endpoints a request has tried (a request extension on routes that retry), so that a retry
/// goes to another endpoint when there is one, as Envoy's `previous_hosts` predicate does.
#[derive(Debug, Clone, Default)]
pub struct Tried(Arc<std::sync::Mutex<Vec<SocketAddr>>>);

/// Sends one try of a request to an endpoint of the cluster: the innermost service of a route.
#[derive(Clone)]
pub struct ClusterService {
    cluster: Arc<Cluster>,
}

impl Tried {
    /// How many tries picked an endpoint, and the last one's.
    pub(crate) fn summary(&self) -> (u32, Option<SocketAddr>) {
        match self.0.lock() {
            Ok(t) => (
                u32::try_from(t.len()).unwrap_or(u32::MAX),
                t.last().copied(),
            ),
            Err(_) => (0, None),
        }
    }
}

// === impl Cluster ===

impl Cluster {
    /// Builds a cluster; static endpoints are usable at once, DNS ones after [`Cluster::resolve`].
    pub fn new(
        cfg: &config::Cluster,
        metrics: &Arc<Metrics>,
        tls_metrics: &TlsMetrics,
    ) -> Result<Arc<Self>, String> {
        // NOTE: one ClientTls (one file watcher) with a config per version the cluster speaks.
        let versions: &[bool] = match cfg.protocol {
            config::UpstreamProtocol::Http1 => &[false],
            config::UpstreamProtocol::Http2 => &[true],
            config::UpstreamProtocol::Auto => &[false, true],
        };
        let tls = cfg
            .tls
            .as_ref()
            .map(|t| ClientTls::speaking(&cfg.name, t, versions, tls_metrics))
            .transpose()
            .map_err(|e| e.to_string())?;
        let endpoint_metrics = cfg.endpoint_metrics.then(|| metrics.clone());
        let statics: Vec<SocketAddr> = cfg
            .endpoints
            .iter()
            .filter_map(|e| match e {
                config::Endpoint::Static(a) => Some(*a),
                config::Endpoint::Dns { .. } => None,
            })
            .collect();
        let balance = BalanceConfig {
            balancer: match cfg.balancer {
                config::Balancer::RoundRobin => Balancer::RoundRobin,
                config::Balancer::Random => Balancer::Random,
                config::Balancer::LeastRequest => Balancer::LeastRequest,
                config::Balancer::Ewma => Balancer::PeakEwma,
            },
            ewma: Default::default(),
            outlier: cfg.outlier_detection.map(|o| OutlierConfig {
                consecutive_5xx: (o.consecutive_5xx > 0).then_some(o.consecutive_5xx),
                consecutive_gateway_failure: (o.consecutive_gateway_failure > 0)
                    .then_some(o.consecutive_gateway_failure),
                base_ejection_time: o.base_ejection_time.0,
                max_ejection_time: o.max_ejection_time.0,
                max_ejection_percent: o.max_ejection_percent,
            }),
        };
        let set = EndpointSet::new(cfg.name.as_str(), statics.iter().copied(), balance);
        let meta = statics
            .iter()
            .filter_map(|a| {
                Endpoint::new(
                    *a,
                    &cfg.name,
                    endpoint_metrics.as_deref(),
                    cfg.idle_timeout.0,
                )
            })
            .map(|e| (e.addr, e))
            .collect();
        let upstream = metrics.upstream_stats(&cfg.name);
        let l = &cfg.limits;
        let max_connections = Counter::new(limit::MAX_CONNECTIONS, l.max_connections);
        let max_pending = Counter::new(limit::MAX_PENDING, l.max_pending);
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        connector.set_connect_timeout(Some(cfg.connect_timeout.0));
        let client = |h2: bool| {
            let counted = Counted::new(
                TlsConnector::new(connector.clone(), tls.clone()).speaking(h2),
                upstream.clone(),
                max_connections.clone(),
                max_pending.clone(),
            );
            Connector::new(counted, cfg.connect_timeout.0)
        };
        let health_check = cfg.health_check.as_ref().map(|h| HealthCheckConfig {
            kind: match &h.http_path {
                Some(path) => HealthCheckKind::Http { path: path.clone() },
                None => HealthCheckKind::Tcp,
            },
            interval: h.interval.0,
            timeout: h.timeout.0,
            healthy_threshold: h.healthy_threshold,
            unhealthy_threshold: h.unhealthy_threshold,
        });
        Ok(Arc::new(Self {
            name: cfg.name.as_str().into(),
            spec: cfg.endpoints.clone(),
            resolved: ArcSwap::from_pointee(Resolved { set, meta }),
            connect_timeout: cfg.connect_timeout.0,
            dns_refresh: cfg.dns_refresh.0,
            protocol: cfg.protocol,
            health_check,
            h1: client(false),
            h2: client(true),
            idle_timeout: cfg.idle_timeout.0,
            upstream,
            endpoint_metrics,
            max_requests: Counter::new(limit::MAX_REQUESTS, l.max_requests),
            max_retries: Counter::new(limit::MAX_RETRIES, l.max_retries),
            budget: Arc::new(Budget::new(BudgetPolicy {
                ratio: cfg.retry_budget.ratio,
                min_per_sec: cfg.retry_budget.min_per_sec,
                window: Duration::from_secs(10),
            })),
            limits: [max_connections, max_pending],
            tcp_tls: tls.clone(),
        }))
    }

    /// The cluster's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The cluster's name, shared.
    pub fn name_arc(&self) -> Arc<str> {
        self.name.clone()
    }

    /// The cluster's upstream connection and request handles.
    pub fn upstream_stats(&self) -> &UpstreamStats {
        &self.upstream
    }

    /// Every circuit-breaking counter, for metrics.
    pub fn limit_counters(&self) -> [&Counter; 4] {
        [
            &self.max_requests,
            &self.max_retries,
            &self.limits[0],
            &self.limits[1],
        ]
    }

    /// A view of the endpoints and their state, for the admin endpoint and metrics.
    pub fn snapshot(&self) -> ClusterSnapshot {
        self.resolved.load().set.snapshot()
    }

    /// Whether any endpoint is a DNS name.
    pub fn has_dns(&self) -> bool {
        self.spec
            .iter()
            .any(|e| matches!(e, config::Endpoint::Dns { .. }))
    }

    /// Picks an endpoint for a TCP connection or an HTTP try; `None` when there is none.
    pub fn pick(&self) -> Option<(pillion_layers::balance::Pick, Arc<Endpoint>)> {
        let r = self.resolved.load();
        let pick = r.set.pick_or_panic()?;
        let ep = r.meta.get(&pick.addr())?.clone();
        Some((pick, ep))
    }

    /// Like [`Cluster::pick`], but skips endpoints in `tried` while others are left (a few draws).
    fn pick_untried(
        &self,
        tried: &Tried,
    ) -> Option<(pillion_layers::balance::Pick, Arc<Endpoint>)> {
        // NOTE: a per-request lock, held for a few comparisons; never shared between requests.
        let Ok(mut tried) = tried.0.lock() else {
            return self.pick();
        };
        let n = self.resolved.load().set.len();
        let mut picked = self.pick()?;
        for _ in 0..n.min(8) {
            if !tried.contains(&picked.1.addr) {
                break;
            }
            picked = self.pick()?;
        }
        tried.push(picked.1.addr);
        Some(picked)
    }

    /// The HTTP version a request of `version` is sent with to this cluster.
    pub(crate) fn upstream_version(&self, version: http::Version) -> http::Version {
        let h2 = match self.protocol {
            config::UpstreamProtocol::Http1 => false,
            config::UpstreamProtocol::Http2 => true,
            config::UpstreamProtocol::Auto => version == http::Version::HTTP_2,
        };
        if h2 {
            http::Version::HTTP_2
        } else {
            http::Version::HTTP_11
        }
    }

    /// Opens a connection to `ep` for a TCP relay within the connect timeout, with TLS when the
    /// cluster originates it (the handshake counts in the timeout).
    pub async fn connect(&self, ep: &Endpoint) -> Result<MaybeTls, BoxError> {
        let connect = async {
            let stream = TcpStream::connect(ep.addr).await?;
            stream.set_nodelay(true)?;
            Ok::<_, BoxError>(match &self.tcp_tls {
                None => MaybeTls::Plain(stream),
                Some(tls) => MaybeTls::Tls(Box::new(tls.connect(stream, ep.addr.ip()).await?)),
            })
        };
        tokio::time::timeout(self.connect_timeout, connect)
            .await
            .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "connect timed out"))?
    }

    /// Resolves every endpoint now and publishes the result. A name that fails to resolve keeps
    /// its previous addresses, so a DNS hiccup does not empty a working cluster.
    pub async fn resolve(&self) {
        let previous: Vec<SocketAddr> = self.endpoints();
        let mut next = Vec::with_capacity(self.spec.len());
        for e in &self.spec {
            match e {
                config::Endpoint::Static(a) => next.push(*a),
                config::Endpoint::Dns { host, port } => {
                    let lookup = tokio::net::lookup_host((host.as_str(), *port));
                    let failure = match tokio::time::timeout(Duration::from_secs(5), lookup).await {
                        Ok(Ok(addrs)) => {
                            next.extend(addrs);
                            continue;
                        }
                        Ok(Err(err)) => err.to_string(),
                        Err(_) => "timed out".to_string(),
                    };
                    warn!(cluster = %self.name, %host, error = %failure, "DNS resolution failed; keeping the previous addresses");
                    next.extend(previous.iter().filter(|p| p.port() == *port));
                }
            }
        }
        next.sort();
        next.dedup();
        if next == previous {
            debug!(cluster = %self.name, "endpoints unchanged");
            return;
        }
        info!(cluster = %self.name, endpoints = ?next, "endpoints updated");
        let old = self.resolved.load();
        let meta = next
            .iter()
            .filter_map(|a| match old.meta.get(a) {
                Some(e) => Some(e.clone()),
                None => Endpoint::new(
                    *a,
                    &self.name,
                    self.endpoint_metrics.as_deref(),
                    self.idle_timeout,
                ),
            })
            .map(|e| (e.addr, e))
            .collect();
        let set = old.set.rebuild(next.iter().copied());
        self.resolved.store(Arc::new(Resolved { set, meta }));
    }

    /// Starts the background work: DNS refresh and health checks, until the cluster is dropped.
    pub fn spawn_background(self: &Arc<Self>) {
        if let Some(hc) = &self.health_check {
            spawn_health_checks(Arc::downgrade(self), hc.clone());
        }
        if !self.has_dns() {
            return;
        }
        let weak: Weak<Self> = Arc::downgrade(self);
        let every = self.dns_refresh;
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(every).await;
                match weak.upgrade() {
                    Some(cluster) => cluster.resolve().await,
                    None => return,
                }
            }
        });
    }

    /// The endpoint addresses in use now, sorted.
    pub fn endpoints(&self) -> Vec<SocketAddr> {
        let mut v: Vec<SocketAddr> = self.resolved.load().meta.keys().copied().collect();
        v.sort();
        v
    }

    /// The service sending one try of a request to this cluster.
    pub fn service(self: &Arc<Self>) -> ClusterService {
        ClusterService {
            cluster: self.clone(),
        }
    }

    /// Sends a request of a route without policies: within `max_requests`, one try, with none of
    /// the route stack's layers (the permit is held until the response body ends).
    pub(crate) async fn send_direct(
        &self,
        req: Request<crate::http::RequestBody>,
    ) -> Result<Response<limit::ResponseBody<UpstreamBody>>, BoxError> {
        let permit = self.max_requests.try_acquire()?;
        // NOTE: boxed, as the route stack's cluster service is, so an idle connection's task
        // does not carry the size of an upstream exchange.
        let rsp = Self::send_boxed(
            self,
            req.map(pillion_layers::retry::ReplayBody::passthrough),
        )
        .await?;
        Ok(rsp.map(|body| limit::ResponseBody::holding(body, Some(permit))))
    }

    /// Sends one try: picks an endpoint, points the request at it, and records the outcome.
    ///
    /// NOTE: a plain function doing the synchronous part, so that the boxed future holds only
    /// what crosses the await (the request once, inside the exchange): the boxed `async fn` it
    /// replaces was 1.5 KB, copied into its box for every request. `this` is how the future
    /// holds the cluster: borrowed on the direct path, an `Arc` for the route stack's service,
    /// so that each has one box per try.
    fn send_boxed<'a, C>(
        this: C,
        mut req: Request<SendBody>,
    ) -> Pin<Box<dyn Future<Output = Result<Response<UpstreamBody>, BoxError>> + Send + 'a>>
    where
        C: std::ops::Deref<Target = Self> + Send + 'a,
    {
        let picked = match req.extensions().get::<Tried>() {
            None => this.pick(),
            Some(tried) => this.pick_untried(tried),
        };
        let Some((pick, ep)) = picked else {
            return Box::pin(std::future::ready(Err(NoEndpoint.into())));
        };
        let h2 = req.version() == http::Version::HTTP_2;
        if h2 {
            if let Err(e) = to_h2_form(&mut req, &ep.authority) {
                return Box::pin(std::future::ready(Err(e.into())));
            }
        } else {
            to_origin_form(&mut req);
        }
        this.upstream.requests.inc();
        let deadline = pillion_layers::timeout::Deadline::of(&req);
        let pending = PendingTry::new(pick, ep, deadline);
        if h2 {
            Box::pin(async move {
                let result = this.h2.send_h2(&pending.ep, req).await;
                pending.settle(&this, result)
            })
        } else {
            Box::pin(async move {
                let result = this.h1.send_h1(&pending.ep, req).await;
                pending.settle(&this, result)
            })
        }
    }

    /// Records how a try went (the pick's outcome, the endpoint's stats) and names the endpoint
    /// in an error.
    fn record(
        &self,
        result: Result<Response<UpstreamBody>, BoxError>,
        pick: pillion_layers::balance::Pick,
        ep: &Endpoint,
        started: Instant,
    ) -> Result<Response<UpstreamBody>, BoxError> {
        match result {
            Ok(mut rsp) => {
                let elapsed = pick.record_since(started, Outcome::from_status(rsp.status()));
                if let Some(s) = &ep.stats {
                    s.record(rsp.status().as_u16(), elapsed);
                }
                rsp.body_mut().hold(pick);
                Ok(rsp)
            }
            Err(e)
                if pillion_layers::error::is::<DownstreamBodyError>(&*e)
                    || pillion_layers::error::is::<pillion_layers::error::Overloaded>(&*e) =>
            {
                // The client's body failed, or the cluster's own limits refused the connection:
                // not the endpoint's doing, so the try is not held against it.
                debug!(cluster = %self.name, endpoint = %ep.addr, error = %e, "request failed before the endpoint");
                Err(Box::new(UpstreamError {
                    addr: ep.addr,
                    source: e,
                }))
            }
            Err(e) => {
                let elapsed = pick.record_since(started, Outcome::GatewayError);
                if let Some(s) = &ep.stats {
                    s.record(502, elapsed);
                }
                match pillion_tls::find_tls_error(&*e) {
                    // A TLS failure is a configuration or identity problem an operator must see.
                    Some(tls) => {
                        warn!(cluster = %self.name, endpoint = %ep.addr, error = %tls, "upstream TLS failed")
                    }
                    None => match pillion_tls::find_peer_alert(&*e) {
                        // The endpoint rejected this proxy's certificate (TLS 1.3 says so after
                        // the handshake, on the first read).
                        Some(alert) => {
                            warn!(cluster = %self.name, endpoint = %ep.addr, ?alert, error = %e, "upstream TLS failed: the endpoint sent a fatal alert")
                        }
                        None => {
                            debug!(cluster = %self.name, endpoint = %ep.addr, error = %e, "upstream request failed")
                        }
                    },
                }
                Err(Box::new(UpstreamError {
                    addr: ep.addr,
                    source: e,
                }))
            }
        }
    }
}

/// A try on its way to an endpoint. Dropped before it settles, which happens when a timeout
/// fires or the client goes away, it records the try as a gateway error if its deadline has
/// passed: an endpoint that never answers is then slow to the latency estimate and a failure to
/// outlier detection, as one that answers 504 is. A cancelled try records nothing.
struct PendingTry {
    pick: Option<pillion_layers::balance::Pick>,
    ep: Arc<Endpoint>,
    started: Instant,
    deadline: Option<Instant>,
}

impl PendingTry {
    fn new(
        pick: pillion_layers::balance::Pick,
        ep: Arc<Endpoint>,
        deadline: Option<Instant>,
    ) -> Self {
        Self {
            pick: Some(pick),
            ep,
            started: Instant::now(),
            deadline,
        }
    }

    /// The try ended with `result`: records it.
    fn settle(
        mut self,
        cluster: &Cluster,
        result: Result<Response<UpstreamBody>, BoxError>,
    ) -> Result<Response<UpstreamBody>, BoxError> {
        match self.pick.take() {
            Some(pick) => cluster.record(result, pick, &self.ep, self.started),
            // NOTE: `pick` is only taken here and in `drop`, and `settle` takes `self`.
            None => unreachable!("a try settles once"),
        }
    }
}

impl Drop for PendingTry {
    fn drop(&mut self) {
        let Some(deadline) = self.deadline else {
            return;
        };
        let Some(pick) = self.pick.take() else {
            return;
        };
        if Instant::now() < deadline {
            return;
        }
        let elapsed = pick.record_since(self.started, Outcome::GatewayError);
        if let Some(s) = &self.ep.stats {
            s.record(504, elapsed);
        }
        debug!(endpoint = %pick.addr(), ?elapsed, "try timed out: recorded as a gateway error");
    }
}

impl EndpointSource for Cluster {
    fn current_endpoints(&self) -> Vec<Arc<EndpointState>> {
        self.resolved.load().set.endpoints().to_vec()
    }

    /// With the cluster's TLS (its HTTP/1.1 ALPN), so a probe reaches an mTLS endpoint as
    /// requests do.
    fn dial(
        &self,
        addr: SocketAddr,
    ) -> futures_util::future::BoxFuture<'static, std::io::Result<pillion_layers::health::ProbeIo>>
    {
        let tls = self.tcp_tls.clone();
        Box::pin(async move {
            let stream = TcpStream::connect(addr).await?;
            let _ = stream.set_nodelay(true);
            Ok(match tls {
                None => Box::new(stream) as pillion_layers::health::ProbeIo,
                Some(tls) => Box::new(
                    tls.connect_as(stream, addr.ip(), Some(false))
                        .await
                        .map_err(std::io::Error::other)?,
                ),
            })
        })
    }
}

impl std::fmt::Debug for Cluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cluster")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

// === impl ClusterService ===

impl tower::Service<Request<SendBody>> for ClusterService {
    type Response = Response<UpstreamBody>;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<Response<UpstreamBody>, BoxError>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<SendBody>) -> Self::Future {
        Cluster::send_boxed(self.cluster.clone(), req)
    }
}

// === impl Endpoint ===

impl Endpoint {
    fn new(
        addr: SocketAddr,
        cluster: &str,
        metrics: Option<&Metrics>,
        idle_timeout: Duration,
    ) -> Option<Arc<Self>> {
        // NOTE: a SocketAddr always formats as a valid authority; `None` is unreachable in practice.
        let authority = Authority::try_from(addr.to_string()).ok()?;
        let uri = Uri::builder()
            .scheme(http::uri::Scheme::HTTP)
            .authority(authority.clone())
            .path_and_query("/")
            .build()
            .ok()?;
        let stats = metrics.map(|m| m.endpoint_stats(cluster, &addr.to_string()));
        Some(Arc::new(Self {
            addr,
            authority,
            uri,
            pool: EndpointPool::new(idle_timeout),
            stats,
        }))
    }
}

/// HTTP/1.1 sends the path and query only (origin form); `Host` carries the authority.
fn to_origin_form(req: &mut Request<SendBody>) {
    let uri = req.uri_mut();
    if uri.scheme().is_none() && uri.authority().is_none() {
        return;
    }
    *uri = match uri.path_and_query() {
        Some(pq) if pq.as_str() != "/" => {
            let mut parts = http::uri::Parts::default();
            parts.path_and_query = Some(pq.clone());
            Uri::from_parts(parts).unwrap_or_default()
        }
        _ => Uri::default(),
    };
}

/// HTTP/2 carries the authority in `:authority`: the client's `Host`, else the endpoint's address.
fn to_h2_form(req: &mut Request<SendBody>, endpoint: &Authority) -> Result<(), http::Error> {
    let host = req.headers_mut().remove(http::header::HOST);
    let authority = host
        .and_then(|h| {
            Authority::from_maybe_shared(bytes::Bytes::copy_from_slice(h.as_bytes())).ok()
        })
        .or_else(|| req.uri().authority().cloned())
        .unwrap_or_else(|| endpoint.clone());
    let mut parts = std::mem::take(req.uri_mut()).into_parts();
    parts.scheme = Some(http::uri::Scheme::HTTP);
    parts.authority = Some(authority);
    if parts.path_and_query.is_none() {
        parts.path_and_query = Some(http::uri::PathAndQuery::from_static("/"));
    }
    *req.uri_mut() = Uri::from_parts(parts)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cluster(endpoints: &str) -> Arc<Cluster> {
        let cfg: config::Cluster =
            serde_yaml::from_str(&format!("name: c\nendpoints: {endpoints}")).unwrap();
        let metrics = Arc::new(Metrics::register(&mut Default::default()));
        Cluster::new(&cfg, &metrics, &TlsMetrics::default()).unwrap()
    }

    #[tokio::test]
    async fn round_robin_over_static_endpoints() {
        let c = cluster("[127.0.0.1:1, 127.0.0.1:2, 127.0.0.1:3]");
        let ports: Vec<u16> = (0..6).map(|_| c.pick().unwrap().1.addr.port()).collect();
        assert_eq!(ports, [1, 2, 3, 1, 2, 3]);
    }

    #[tokio::test]
    async fn dns_endpoints_resolve() {
        let c = cluster("[localhost:7, nonexistent.invalid:8]");
        assert!(c.pick().is_none());
        c.resolve().await;
        let eps = c.endpoints();
        assert!(!eps.is_empty());
        assert!(
            eps.iter().all(|a| a.port() == 7 && a.ip().is_loopback()),
            "{eps:?}"
        );
        assert!(c.pick().is_some());
    }
}
