//! Clusters: named groups of endpoints, their resolution, selection and pooled HTTP clients.

use crate::{connect::Counted, http::RequestBody};
use arc_swap::ArcSwap;
use http::uri::Authority;
use hyper_util::{
    client::legacy::{connect::HttpConnector, Client},
    rt::{TokioExecutor, TokioTimer},
};
use pillion_config as config;
use pillion_telemetry::{EndpointStats, Metrics, UpstreamStats};
use std::{
    net::SocketAddr,
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc, Weak,
    },
    time::Duration,
};
use tokio::net::TcpStream;
use tracing::{debug, info, warn};

/// How long an idle pooled upstream connection is kept. Below the 5s keep-alive of common app
/// servers (Node.js, Go's default is longer), so the proxy drops a connection before the app does.
const UPSTREAM_IDLE_TIMEOUT: Duration = Duration::from_secs(4);

/// The pooled HTTP client of a cluster.
pub(crate) type HttpClient = Client<Counted<HttpConnector>, RequestBody>;

/// A named group of upstream endpoints.
pub struct Cluster {
    name: Arc<str>,
    spec: Vec<config::Endpoint>,
    endpoints: ArcSwap<Vec<Endpoint>>,
    next: AtomicUsize,
    connect_timeout: Duration,
    dns_refresh: Duration,
    protocol: config::UpstreamProtocol,
    h1: HttpClient,
    h2: HttpClient,
    upstream: UpstreamStats,
    /// Per-endpoint metrics, when the cluster opts in.
    endpoint_metrics: Option<Arc<Metrics>>,
}

/// One resolved endpoint.
#[derive(Debug, Clone)]
pub struct Endpoint {
    /// Where to connect.
    pub addr: SocketAddr,
    /// `addr` as a URI authority, built once.
    pub authority: Authority,
    /// Its metric handles, when the cluster has `endpoint_metrics`.
    pub stats: Option<EndpointStats>,
}

// === impl Cluster ===

impl Cluster {
    /// Builds a cluster; static endpoints are usable at once, DNS ones after [`Cluster::resolve`].
    pub fn new(cfg: &config::Cluster, metrics: &Arc<Metrics>) -> Arc<Self> {
        let endpoint_metrics = cfg.endpoint_metrics.then(|| metrics.clone());
        let statics = cfg
            .endpoints
            .iter()
            .filter_map(|e| match e {
                config::Endpoint::Static(a) => {
                    Endpoint::new(*a, &cfg.name, endpoint_metrics.as_deref())
                }
                config::Endpoint::Dns { .. } => None,
            })
            .collect();
        let upstream = metrics.upstream_stats(&cfg.name);
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        connector.set_connect_timeout(Some(cfg.connect_timeout.0));
        let client = |h2: bool| {
            Client::builder(TokioExecutor::new())
                .pool_timer(TokioTimer::new())
                .timer(TokioTimer::new())
                .pool_idle_timeout(UPSTREAM_IDLE_TIMEOUT)
                .http2_only(h2)
                .http2_initial_stream_window_size(1 << 20)
                .http2_initial_connection_window_size(4 << 20)
                .build(Counted::new(connector.clone(), upstream.clone()))
        };
        Arc::new(Self {
            name: cfg.name.as_str().into(),
            spec: cfg.endpoints.clone(),
            endpoints: ArcSwap::from_pointee(statics),
            next: AtomicUsize::new(0),
            connect_timeout: cfg.connect_timeout.0,
            dns_refresh: cfg.dns_refresh.0,
            protocol: cfg.protocol,
            h1: client(false),
            h2: client(true),
            upstream,
            endpoint_metrics,
        })
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

    /// Whether any endpoint is a DNS name.
    pub fn has_dns(&self) -> bool {
        self.spec
            .iter()
            .any(|e| matches!(e, config::Endpoint::Dns { .. }))
    }

    /// Picks the next endpoint, round robin; `None` when the cluster has none.
    pub fn pick(&self) -> Option<Endpoint> {
        let eps = self.endpoints.load();
        match eps.len() {
            0 => None,
            1 => Some(eps[0].clone()),
            n => Some(eps[self.next.fetch_add(1, Ordering::Relaxed) % n].clone()),
        }
    }

    /// The HTTP client for a request of `version`.
    pub(crate) fn http_client(&self, version: http::Version) -> (&HttpClient, http::Version) {
        let h2 = match self.protocol {
            config::UpstreamProtocol::Http1 => false,
            config::UpstreamProtocol::Http2 => true,
            config::UpstreamProtocol::Auto => version == http::Version::HTTP_2,
        };
        if h2 {
            (&self.h2, http::Version::HTTP_2)
        } else {
            (&self.h1, http::Version::HTTP_11)
        }
    }

    /// The HTTP/1.1 client (for upgrades, which HTTP/2 cannot carry).
    pub(crate) fn http1_client(&self) -> &HttpClient {
        &self.h1
    }

    /// Opens a TCP connection to `ep` within the connect timeout.
    pub async fn connect(&self, ep: &Endpoint) -> std::io::Result<TcpStream> {
        let stream = tokio::time::timeout(self.connect_timeout, TcpStream::connect(ep.addr))
            .await
            .map_err(|_| {
                std::io::Error::new(std::io::ErrorKind::TimedOut, "connect timed out")
            })??;
        stream.set_nodelay(true)?;
        Ok(stream)
    }

    /// Resolves every endpoint now and publishes the result. A name that fails to resolve keeps
    /// its previous addresses, so a DNS hiccup does not empty a working cluster.
    pub async fn resolve(&self) {
        let previous = self.endpoints.load_full();
        let mut next = Vec::with_capacity(self.spec.len());
        for e in &self.spec {
            match e {
                config::Endpoint::Static(a) => next.extend(self.endpoint(*a, &previous)),
                config::Endpoint::Dns { host, port } => {
                    let lookup = tokio::net::lookup_host((host.as_str(), *port));
                    match tokio::time::timeout(Duration::from_secs(5), lookup).await {
                        Ok(Ok(addrs)) => {
                            next.extend(addrs.filter_map(|a| self.endpoint(a, &previous)))
                        }
                        Ok(Err(err)) => {
                            warn!(cluster = %self.name, %host, %err, "DNS resolution failed");
                            next.extend(
                                previous.iter().filter(|p| p.addr.port() == *port).cloned(),
                            );
                        }
                        Err(_) => {
                            warn!(cluster = %self.name, %host, "DNS resolution timed out");
                            next.extend(
                                previous.iter().filter(|p| p.addr.port() == *port).cloned(),
                            );
                        }
                    }
                }
            }
        }
        next.sort_by_key(|e| e.addr);
        next.dedup_by_key(|e| e.addr);
        let changed = next.len() != previous.len()
            || next
                .iter()
                .zip(previous.iter())
                .any(|(a, b)| a.addr != b.addr);
        if changed {
            info!(cluster = %self.name, endpoints = ?next.iter().map(|e| e.addr).collect::<Vec<_>>(), "endpoints updated");
            self.endpoints.store(Arc::new(next));
        } else {
            debug!(cluster = %self.name, "endpoints unchanged");
        }
    }

    /// Re-resolves DNS endpoints every `dns_refresh` until the cluster is dropped.
    pub fn spawn_refresh(self: &Arc<Self>) {
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

    /// An endpoint for `addr`, reusing the one in `previous` (and so its metric handles).
    fn endpoint(&self, addr: SocketAddr, previous: &[Endpoint]) -> Option<Endpoint> {
        match previous.iter().find(|e| e.addr == addr) {
            Some(e) => Some(e.clone()),
            None => Endpoint::new(addr, &self.name, self.endpoint_metrics.as_deref()),
        }
    }

    /// The endpoints in use now.
    pub fn endpoints(&self) -> Vec<SocketAddr> {
        self.endpoints.load().iter().map(|e| e.addr).collect()
    }
}

impl std::fmt::Debug for Cluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cluster")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

// === impl Endpoint ===

impl Endpoint {
    fn new(addr: SocketAddr, cluster: &str, metrics: Option<&Metrics>) -> Option<Self> {
        // NOTE: a SocketAddr always formats as a valid authority; `None` is unreachable in practice.
        let authority = Authority::try_from(addr.to_string()).ok()?;
        let stats = metrics.map(|m| m.endpoint_stats(cluster, &addr.to_string()));
        Some(Self {
            addr,
            authority,
            stats,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cluster(endpoints: &str) -> Arc<Cluster> {
        let cfg: config::Cluster =
            serde_yaml::from_str(&format!("name: c\nendpoints: {endpoints}")).unwrap();
        let metrics = Arc::new(Metrics::register(&mut Default::default()));
        Cluster::new(&cfg, &metrics)
    }

    #[tokio::test]
    async fn round_robin_over_static_endpoints() {
        let c = cluster("[127.0.0.1:1, 127.0.0.1:2, 127.0.0.1:3]");
        let ports: Vec<u16> = (0..6).map(|_| c.pick().unwrap().addr.port()).collect();
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
    }
}
