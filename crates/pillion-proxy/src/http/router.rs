//! The route table: compiled once from a listener's config, matched per request without lookups
//! by name or allocation.

use super::{headers::Rewrite, RequestBody};
use crate::cluster::Cluster;
use crate::pool::UpstreamBody;
use http::{header, HeaderName, HeaderValue, Request, Response};
use pillion_config::{self as config, HostPattern};
use pillion_layers::{
    fault::{FaultAbortPolicy, FaultDelay, FaultLayer, FaultPolicy},
    limit::{self, LimitLayer},
    ratelimit::{Bucket, RateLimitLayer, RateLimitPolicy},
    retry::{Backoff, RetryLayer, RetryOn, RetryPolicy, Transparent},
    timeout::TimeoutLayer,
    BoxError,
};
use pillion_telemetry::{HttpStats, Metrics, RouteLabels};
use std::{collections::HashMap, sync::Arc, time::Duration};
use tower::{util::BoxCloneSyncService, ServiceBuilder};

/// A listener's routes, in order, and its catch-all.
#[derive(Debug)]
pub struct RouteTable {
    routes: Vec<Route>,
    /// Stats for requests no route matched (none on TCP listeners, which serve no HTTP).
    pub no_route: Option<HttpStats>,
    /// Whether paths are normalized before routing: when any policy guards the listener or a
    /// route, routing and authorization must see the same path.
    pub normalize_paths: bool,
}

/// One compiled route.
#[derive(Debug)]
pub struct Route {
    name: Arc<str>,
    matcher: Matcher,
    targets: Targets,
    /// Applied to the request before it goes upstream.
    pub request_headers: Rewrite,
    /// Applied to the response before it goes back.
    pub response_headers: Rewrite,
    /// The route's authorization policy, on top of the listener's.
    pub policy: Option<pillion_tls::authz::Policy>,
}

/// A route's service stack towards one cluster: rate limit, request timeout, fault injection,
/// retries (with the cluster's budget), the cluster's request limit, then the cluster.
pub type RouteService = BoxCloneSyncService<
    Request<RequestBody>,
    Response<limit::ResponseBody<UpstreamBody>>,
    BoxError,
>;

/// Where a route sends a request: a cluster, the stack in front of it, and its stats handles.
pub struct Target {
    /// The cluster.
    pub cluster: Arc<Cluster>,
    /// The route's metric handles for this cluster.
    pub stats: HttpStats,
    /// The route's middleware towards this cluster, built when the config loaded.
    pub service: RouteService,
    /// Whether the route retries (so tries should spread over endpoints).
    pub retries: bool,
    /// Whether the route has no policy at all, so requests skip `service` and go straight to the
    /// cluster (within its `max_requests`).
    pub direct: bool,
    /// The route's `timeout`: `service` bounds the wait for the response head with it, and the
    /// response body must end within what is left of it.
    pub timeout: Option<Duration>,
}

impl std::fmt::Debug for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Target")
            .field("cluster", &self.cluster.name())
            .finish_non_exhaustive()
    }
}

#[derive(Debug)]
enum Targets {
    One(Target),
    /// Cumulative weights and their targets; `total` is the last cumulative weight.
    /// NOTE: u64, so the sum of any number of u32 weights cannot overflow (nor saturate, which
    /// would starve the clusters past the overflow).
    Split {
        targets: Vec<(u64, Target)>,
        total: u64,
    },
}

#[derive(Debug, Default)]
struct Matcher {
    host: Option<HostPattern>,
    path: Option<PathMatch>,
    headers: Vec<(HeaderName, Option<HeaderValue>)>,
}

#[derive(Debug)]
enum PathMatch {
    Exact(String),
    Prefix(String),
}

/// Naming the labels a route's metrics carry.
pub struct LabelCtx<'a> {
    /// The listener's direction label.
    pub direction: &'static str,
    /// The listener's name.
    pub listener: &'a str,
}

// === impl RouteTable ===

impl RouteTable {
    /// Compiles a listener's routes (and its catch-all `cluster` as a last route).
    pub fn compile(
        listener: &config::Listener,
        clusters: &HashMap<String, Arc<Cluster>>,
        metrics: &Metrics,
        tls: &pillion_tls::TlsMetrics,
        direction: &'static str,
    ) -> Result<Self, String> {
        if listener.protocol == config::Protocol::Tcp {
            return Ok(Self {
                routes: Vec::new(),
                no_route: None,
                normalize_paths: false,
            });
        }
        let labels = LabelCtx {
            direction,
            listener: &listener.name,
        };
        let mut routes = listener
            .routes
            .iter()
            .enumerate()
            .map(|(i, r)| Route::compile(i, r, clusters, metrics, tls, &labels))
            .collect::<Result<Vec<_>, _>>()?;
        if let Some(name) = &listener.cluster {
            let catch_all = config::Route {
                name: Some("default".into()),
                matches: Default::default(),
                cluster: Some(name.clone()),
                split: Vec::new(),
                request_headers: Default::default(),
                response_headers: Default::default(),
                timeout: None,
                retry: None,
                rate_limit: None,
                fault: None,
                authz: None,
            };
            routes.push(Route::compile(
                routes.len(),
                &catch_all,
                clusters,
                metrics,
                tls,
                &labels,
            )?);
        }
        let no_route = Some(metrics.http_stats(RouteLabels {
            direction,
            listener: listener.name.clone(),
            route: String::new(),
            cluster: String::new(),
        }));
        let normalize_paths =
            listener.authz.is_some() || listener.routes.iter().any(|r| r.authz.is_some());
        Ok(Self {
            routes,
            no_route,
            normalize_paths,
        })
    }

    /// The first route matching `req`.
    pub fn route<B>(&self, req: &Request<B>) -> Option<&Route> {
        let host = request_host(req);
        let path = req.uri().path();
        self.routes
            .iter()
            .find(|r| r.matcher.matches(host, path, req.headers()))
    }

    /// The number of routes, the catch-all included.
    pub fn len(&self) -> usize {
        self.routes.len()
    }

    /// Whether there are no routes.
    pub fn is_empty(&self) -> bool {
        self.routes.is_empty()
    }
}

/// The request's host without its port: the URI authority (HTTP/2, absolute-form), else `Host`.
fn request_host<B>(req: &Request<B>) -> &str {
    let raw = match req.uri().authority() {
        Some(a) => a.as_str(),
        None => req
            .headers()
            .get(header::HOST)
            .and_then(|h| h.to_str().ok())
            .unwrap_or(""),
    };
    strip_port(raw)
}

fn strip_port(host: &str) -> &str {
    if let Some(rest) = host.strip_prefix('[') {
        // An IPv6 literal: `[::1]:80`.
        return rest.split(']').next().unwrap_or(rest);
    }
    match host.rsplit_once(':') {
        Some((h, port)) if port.bytes().all(|b| b.is_ascii_digit()) => h,
        _ => host,
    }
}

// === impl Route ===

impl Route {
    fn compile(
        index: usize,
        cfg: &config::Route,
        clusters: &HashMap<String, Arc<Cluster>>,
        metrics: &Metrics,
        tls: &pillion_tls::TlsMetrics,
        labels: &LabelCtx<'_>,
    ) -> Result<Self, String> {
        let name: Arc<str> = cfg.name.clone().unwrap_or_else(|| index.to_string()).into();
        let policies = Policies::compile(cfg).map_err(|e| format!("route `{name}`: {e}"))?;
        let target = |cluster: &str| -> Result<Target, String> {
            let cluster = clusters
                .get(cluster)
                .cloned()
                .ok_or_else(|| format!("route `{name}`: no cluster named `{cluster}`"))?;
            let stats = metrics.http_stats(RouteLabels {
                direction: labels.direction,
                listener: labels.listener.to_string(),
                route: name.to_string(),
                cluster: cluster.name().to_string(),
            });
            let service = policies.stack(&cluster);
            Ok(Target {
                cluster,
                stats,
                service,
                retries: policies.retry.is_some(),
                direct: policies.rate_limit.is_none()
                    && policies.fault.is_none()
                    && policies.timeout.is_none()
                    && policies.retry.is_none(),
                timeout: policies.timeout,
            })
        };
        let targets = match &cfg.cluster {
            Some(c) => Targets::One(target(c)?),
            None => {
                let mut total = 0u64;
                let mut targets = Vec::with_capacity(cfg.split.len());
                for w in cfg.split.iter().filter(|w| w.weight > 0) {
                    total += u64::from(w.weight);
                    targets.push((total, target(&w.cluster)?));
                }
                if total == 0 {
                    return Err(format!("route `{name}`: no cluster with a weight above 0"));
                }
                Targets::Split { targets, total }
            }
        };
        let m = &cfg.matches;
        let path = match (&m.path, &m.prefix) {
            (Some(p), _) => Some(PathMatch::Exact(p.clone())),
            (None, Some(p)) => Some(PathMatch::Prefix(p.clone())),
            (None, None) => None,
        };
        let headers = m
            .headers
            .iter()
            .map(|h| {
                let name = HeaderName::from_bytes(h.name.as_bytes()).map_err(|e| e.to_string())?;
                let value = h
                    .exact
                    .as_deref()
                    .map(HeaderValue::from_str)
                    .transpose()
                    .map_err(|e| e.to_string())?;
                Ok((name, value))
            })
            .collect::<Result<_, String>>()?;
        Ok(Self {
            matcher: Matcher {
                host: m.host.clone().filter(|h| *h != HostPattern::Any),
                path,
                headers,
            },
            targets,
            request_headers: Rewrite::compile(&cfg.request_headers)?,
            response_headers: Rewrite::compile(&cfg.response_headers)?,
            policy: cfg
                .authz
                .as_ref()
                .map(|rules| {
                    pillion_tls::authz::Policy::compile(
                        &format!("{}/{name}", labels.listener),
                        rules,
                        tls,
                    )
                })
                .transpose()?,
            name,
        })
    }

    /// The route's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The route's name, shared.
    pub fn name_arc(&self) -> Arc<str> {
        self.name.clone()
    }

    /// Picks the target for one request (weighted at random for a split).
    pub fn target(&self) -> &Target {
        match &self.targets {
            Targets::One(t) => t,
            Targets::Split { targets, total } => {
                let r = fastrand::u64(0..*total);
                let i = targets.partition_point(|(cum, _)| *cum <= r);
                // NOTE: r < total = last cumulative weight, so i is always in bounds.
                &targets[i.min(targets.len() - 1)].1
            }
        }
    }
}

/// A route's policies, compiled once and shared by its targets.
struct Policies {
    rate_limit: Option<Arc<Bucket>>,
    fault: Option<FaultPolicy>,
    timeout: Option<Duration>,
    retry: Option<RetryPolicy>,
}

// === impl Policies ===

impl Policies {
    fn compile(cfg: &config::Route) -> Result<Self, String> {
        use config::RetryOn as On;
        let retry = cfg.retry.as_ref().map(|r| RetryPolicy {
            retries: r.retries,
            on: RetryOn {
                connect_failure: r.on.contains(&On::ConnectFailure),
                reset: r.on.contains(&On::Reset),
                refused_stream: r.on.contains(&On::RefusedStream),
                status_5xx: r.on.contains(&On::Status5xx),
                gateway_error: r.on.contains(&On::GatewayError),
                statuses: r
                    .on
                    .iter()
                    .filter_map(|o| match o {
                        On::Status(c) => Some(*c),
                        _ => None,
                    })
                    .collect(),
            },
            backoff: Backoff {
                base: r.backoff.base.0,
                max: r.backoff.max.0,
            },
            per_try_timeout: r.per_try_timeout.map(|d| d.0),
            buffer_cap: r.buffer_bytes,
        });
        let fault = match &cfg.fault {
            None => None,
            Some(f) => Some(FaultPolicy {
                delay: f.delay.map(|d| FaultDelay {
                    percent: d.percent,
                    duration: d.duration.0,
                }),
                abort: match f.abort {
                    None => None,
                    Some(a) => Some(FaultAbortPolicy {
                        percent: a.percent,
                        status: http::StatusCode::from_u16(a.status).map_err(|_| {
                            format!("fault.abort.status {} is not a status", a.status)
                        })?,
                    }),
                },
            }),
        };
        Ok(Self {
            rate_limit: cfg
                .rate_limit
                .map(|r| Arc::new(Bucket::new(rate_policy(&r)))),
            fault,
            timeout: cfg.timeout.map(|d| d.0),
            retry,
        })
    }

    /// The stack in front of `cluster`; the first layer sees the request first.
    fn stack(&self, cluster: &Arc<Cluster>) -> RouteService {
        let svc = ServiceBuilder::new()
            // NOTE: layers a route does not configure are left out, not passed through.
            .option_layer(self.rate_limit.clone().map(RateLimitLayer::shared))
            // NOTE: the timeout above the fault, so that it bounds an injected delay as it
            // bounds a slow upstream, from when the request was routed (the response body's
            // deadline is counted from then too).
            .option_layer(self.timeout.map(TimeoutLayer::request))
            .option_layer(self.fault.clone().map(|f| FaultLayer::new(Some(f))))
            .layer(
                // NOTE: the transparent retry of requests nothing of which was sent is made by the
                // endpoint pool itself (a reused connection that refuses a request), so this
                // layer's copy is off: without a policy the layer passes requests straight through.
                RetryLayer::new(self.retry.clone())
                    .with_transparent(Transparent {
                        enabled: false,
                        ..Transparent::default()
                    })
                    .with_budget(cluster.budget.clone())
                    .with_retry_limit(cluster.max_retries.clone()),
            )
            .layer(LimitLayer::shared(cluster.max_requests.clone()))
            .service(cluster.service());
        BoxCloneSyncService::new(svc)
    }
}

/// A token bucket from the config: `burst` defaults to one second's worth.
pub fn rate_policy(r: &config::RateLimit) -> RateLimitPolicy {
    RateLimitPolicy {
        per_second: r.rps,
        burst: r.burst.unwrap_or_else(|| (r.rps.ceil() as u32).max(1)),
    }
}

// === impl Matcher ===

impl Matcher {
    fn matches(&self, host: &str, path: &str, headers: &http::HeaderMap) -> bool {
        if let Some(h) = &self.host {
            let ok = match h {
                HostPattern::Any => true,
                HostPattern::Exact(e) => host.eq_ignore_ascii_case(e),
                HostPattern::Suffix(s) => {
                    host.len() > s.len()
                        && host.as_bytes()[host.len() - s.len()..]
                            .eq_ignore_ascii_case(s.as_bytes())
                }
            };
            if !ok {
                return false;
            }
        }
        match &self.path {
            Some(PathMatch::Exact(p)) if path != p => return false,
            Some(PathMatch::Prefix(p)) if !path.starts_with(p.as_str()) => return false,
            _ => {}
        }
        self.headers.iter().all(|(name, want)| match want {
            None => headers.contains_key(name),
            Some(v) => headers.get_all(name).iter().any(|got| got == v),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use pillion_config::Config;
    use prometheus_client::registry::Registry;

    fn table(routes: &str) -> RouteTable {
        table_of(routes, true)
    }

    /// With `validate` false, a table of what validation would reject.
    fn table_of(routes: &str, validate: bool) -> RouteTable {
        let text = format!(
            "listeners:\n  - name: l\n    address: 127.0.0.1:1\n    protocol: http\n    routes:\n{routes}\nclusters:\n  - {{name: a, endpoints: [127.0.0.1:1]}}\n  - {{name: b, endpoints: [127.0.0.1:2]}}\n  - {{name: c, endpoints: [127.0.0.1:3]}}\n"
        );
        let cfg = if validate {
            Config::load(&text, "t").unwrap()
        } else {
            Config::from_yaml(&text, "t").unwrap()
        };
        let metrics = std::sync::Arc::new(Metrics::register(&mut Registry::default()));
        let clusters = cfg
            .clusters
            .iter()
            .map(|c| {
                (
                    c.name.clone(),
                    Cluster::new(c, &metrics, &Default::default()).unwrap(),
                )
            })
            .collect();
        RouteTable::compile(
            &cfg.listeners[0],
            &clusters,
            &metrics,
            &Default::default(),
            "inbound",
        )
        .unwrap()
    }

    fn req(host: &str, path: &str, headers: &[(&str, &str)]) -> Request<()> {
        let mut b = Request::builder().uri(path).header("host", host);
        for (n, v) in headers {
            b = b.header(*n, *v);
        }
        b.body(()).unwrap()
    }

    fn routed(t: &RouteTable, r: &Request<()>) -> Option<String> {
        t.route(r).map(|r| r.name().to_string())
    }

    #[test]
    fn matches_host_path_and_headers_in_order() {
        let t = table(
            "      - {name: exact-host, match: {host: api.local}, cluster: a}
      - {name: wild, match: {host: '*.example.com', prefix: /v1}, cluster: a}
      - {name: exact-path, match: {path: /health}, cluster: b}
      - {name: hdr, match: {headers: [{name: x-canary, exact: '1'}]}, cluster: b}
      - {name: present, match: {headers: [{name: x-debug}]}, cluster: c}",
        );
        assert_eq!(
            routed(&t, &req("API.local:8080", "/x", &[])).as_deref(),
            Some("exact-host")
        );
        assert_eq!(
            routed(&t, &req("a.example.com", "/v1/users", &[])).as_deref(),
            Some("wild")
        );
        assert_eq!(routed(&t, &req("a.example.com", "/v2", &[])), None);
        assert_eq!(routed(&t, &req("example.com", "/v1", &[])), None);
        assert_eq!(
            routed(&t, &req("x", "/health", &[])).as_deref(),
            Some("exact-path")
        );
        assert_eq!(routed(&t, &req("x", "/health/deep", &[])), None);
        assert_eq!(
            routed(&t, &req("x", "/", &[("x-canary", "1")])).as_deref(),
            Some("hdr")
        );
        assert_eq!(routed(&t, &req("x", "/", &[("x-canary", "2")])), None);
        assert_eq!(
            routed(&t, &req("x", "/", &[("x-debug", "")])).as_deref(),
            Some("present")
        );
    }

    #[test]
    fn authority_wins_over_host_header() {
        let t = table("      - {match: {host: api.local}, cluster: a}");
        let r = Request::builder()
            .uri("http://api.local/x")
            .header("host", "other")
            .body(())
            .unwrap();
        assert_eq!(routed(&t, &r).as_deref(), Some("0"));
        assert_eq!(strip_port("[::1]:80"), "::1");
        assert_eq!(strip_port("host"), "host");
    }

    #[test]
    fn split_follows_weights() {
        let t = table(
            "      - split: [{cluster: a, weight: 75}, {cluster: b, weight: 25}, {cluster: c, weight: 0}]",
        );
        let route = t.route(&req("x", "/", &[])).unwrap();
        let mut counts = HashMap::new();
        for _ in 0..10_000 {
            *counts
                .entry(route.target().cluster.name().to_string())
                .or_insert(0) += 1;
        }
        let a = counts["a"];
        assert!((7_000..8_000).contains(&a), "{counts:?}");
        assert!(!counts.contains_key("c"), "{counts:?}");
    }

    #[test]
    fn split_weights_near_u32_max_do_not_overflow() {
        // Validation caps the total at u32::MAX; the router's sums are u64 whatever it gets, so
        // no cluster past a u32 overflow is starved.
        let t = table_of(
            "      - split: [{cluster: a, weight: 4294967295}, {cluster: b, weight: 4294967295}, {cluster: c, weight: 4294967295}]",
            false,
        );
        let route = t.route(&req("x", "/", &[])).unwrap();
        let mut counts = HashMap::new();
        for _ in 0..9_000 {
            *counts
                .entry(route.target().cluster.name().to_string())
                .or_insert(0) += 1;
        }
        for c in ["a", "b", "c"] {
            let n = counts.get(c).copied().unwrap_or(0);
            assert!((2_500..3_500).contains(&n), "{counts:?}");
        }
    }
}
