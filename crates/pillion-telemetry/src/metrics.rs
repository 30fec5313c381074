//! The metric catalogue (prefix `pillion_`) and its label sets.

use prometheus_client::{
    encoding::{EncodeLabelSet, EncodeLabelValue, LabelValueEncoder},
    metrics::{counter::Counter, family::Family, gauge::Gauge, histogram::Histogram},
    registry::Registry,
};

/// Labels of HTTP request counters.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct HttpLabels {
    pub direction: &'static str,
    pub listener: String,
    pub route: String,
    pub cluster: String,
    pub status_class: StatusClass,
    pub status_code: u16,
}

/// Labels of responses the proxy generated itself.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ProxyResponseLabels {
    pub direction: &'static str,
    pub listener: String,
    pub reason: &'static str,
}

/// Labels of per-cluster upstream metrics.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ClusterLabels {
    pub cluster: String,
}

/// Labels of per-endpoint metrics (only for clusters that opt in).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct EndpointLabels {
    pub cluster: String,
    pub endpoint: String,
}

/// Labels of per-endpoint request counters.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct EndpointStatusLabels {
    pub cluster: String,
    pub endpoint: String,
    pub status_class: StatusClass,
}

/// Labels of the HTTP request duration histogram.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RouteLabels {
    pub direction: &'static str,
    pub listener: String,
    pub route: String,
    pub cluster: String,
}

/// Labels of TCP relay metrics.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TcpLabels {
    pub listener: String,
    pub cluster: String,
}

/// Labels of protocol detection results.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DetectLabels {
    pub listener: String,
    pub result: DetectResult,
}

/// The class of an HTTP status code.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub enum StatusClass {
    Informational,
    Success,
    Redirection,
    ClientError,
    ServerError,
}

/// What protocol detection concluded for a connection.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub enum DetectResult {
    Http1,
    Http2,
    Opaque,
    Timeout,
}

/// Every metric family Pillion exports.
pub struct Metrics {
    pub http_requests: Family<HttpLabels, Counter>,
    pub http_retries: Family<RouteLabels, Counter>,
    pub http_body_timeouts: Family<RouteLabels, Counter>,
    pub proxy_responses: Family<ProxyResponseLabels, Counter>,
    pub upstream_cx_opened: Family<ClusterLabels, Counter>,
    pub upstream_cx_failed: Family<ClusterLabels, Counter>,
    pub upstream_cx_active: Family<ClusterLabels, Gauge>,
    pub upstream_requests: Family<ClusterLabels, Counter>,
    pub endpoint_requests: Family<EndpointStatusLabels, Counter>,
    pub endpoint_duration: Family<EndpointLabels, Histogram>,
    pub access_log_lines: Counter,
    pub access_log_dropped: Counter,
    pub http_duration: Family<RouteLabels, Histogram>,
    pub tcp_opened: Family<TcpLabels, Counter>,
    pub tcp_closed: Family<TcpLabels, Counter>,
    pub tcp_active: Family<TcpLabels, Gauge>,
    pub tcp_rx_bytes: Family<TcpLabels, Counter>,
    pub tcp_tx_bytes: Family<TcpLabels, Counter>,
    pub detect: Family<DetectLabels, Counter>,
}

/// Per-route handles: request counters by status code (resolved on first use of each code, then
/// cached) and the duration histogram.
#[derive(Clone, Debug)]
pub struct HttpStats {
    inner: std::sync::Arc<HttpStatsInner>,
}

#[derive(Debug)]
struct HttpStatsInner {
    family: Family<HttpLabels, Counter>,
    labels: RouteLabels,
    /// Indexed by status code - 100 (codes 100..=599).
    by_code: Box<[std::sync::OnceLock<Counter>]>,
    duration: Histogram,
    retries: Counter,
    body_timeouts: Counter,
}

/// Per-cluster upstream connection and request handles.
#[derive(Clone, Debug)]
pub struct UpstreamStats {
    pub cx_opened: Counter,
    pub cx_failed: Counter,
    pub cx_active: Gauge,
    pub requests: Counter,
}

/// Per-endpoint handles, for clusters with `endpoint_metrics: true`.
#[derive(Clone, Debug)]
pub struct EndpointStats {
    by_class: [Counter; 5],
    duration: Histogram,
}

/// Per-listener-and-cluster TCP handles.
#[derive(Clone, Debug)]
pub struct TcpStats {
    pub opened: Counter,
    pub closed: Counter,
    pub active: Gauge,
    pub rx_bytes: Counter,
    pub tx_bytes: Counter,
}

// === impl StatusClass ===

impl EncodeLabelValue for StatusClass {
    fn encode(&self, enc: &mut LabelValueEncoder<'_>) -> Result<(), std::fmt::Error> {
        use std::fmt::Write;
        enc.write_str(match self {
            Self::Informational => "1xx",
            Self::Success => "2xx",
            Self::Redirection => "3xx",
            Self::ClientError => "4xx",
            Self::ServerError => "5xx",
        })
    }
}

impl EncodeLabelValue for DetectResult {
    fn encode(&self, enc: &mut LabelValueEncoder<'_>) -> Result<(), std::fmt::Error> {
        use std::fmt::Write;
        enc.write_str(match self {
            Self::Http1 => "http1",
            Self::Http2 => "http2",
            Self::Opaque => "opaque",
            Self::Timeout => "timeout",
        })
    }
}

impl StatusClass {
    const ALL: [StatusClass; 5] = [
        Self::Informational,
        Self::Success,
        Self::Redirection,
        Self::ClientError,
        Self::ServerError,
    ];

    fn index(code: u16) -> usize {
        usize::from((code / 100).clamp(1, 5) - 1)
    }

    /// The class of `code` (codes outside 100..=599 count as the nearest class).
    pub fn of(code: u16) -> Self {
        Self::ALL[Self::index(code)]
    }
}

// === impl Metrics ===

/// Request duration buckets in seconds: 1ms to 30s.
const DURATION_BUCKETS: [f64; 14] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

impl Metrics {
    /// Creates the families and registers them.
    pub fn register(registry: &mut Registry) -> Self {
        let m = Self {
            http_requests: Family::default(),
            http_retries: Family::default(),
            http_body_timeouts: Family::default(),
            proxy_responses: Family::default(),
            upstream_cx_opened: Family::default(),
            upstream_cx_failed: Family::default(),
            upstream_cx_active: Family::default(),
            upstream_requests: Family::default(),
            endpoint_requests: Family::default(),
            endpoint_duration: Family::new_with_constructor(|| {
                Histogram::new(DURATION_BUCKETS.iter().copied())
            }),
            access_log_lines: Counter::default(),
            access_log_dropped: Counter::default(),
            http_duration: Family::new_with_constructor(|| {
                Histogram::new(DURATION_BUCKETS.iter().copied())
            }),
            tcp_opened: Family::default(),
            tcp_closed: Family::default(),
            tcp_active: Family::default(),
            tcp_rx_bytes: Family::default(),
            tcp_tx_bytes: Family::default(),
            detect: Family::default(),
        };
        let r = registry.sub_registry_with_prefix("pillion");
        r.register(
            "http_requests",
            "HTTP requests by listener, route, cluster and status class",
            m.http_requests.clone(),
        );
        r.register(
            "http_retries",
            "Retries made by the proxy (tries after the first), by route and cluster",
            m.http_retries.clone(),
        );
        r.register(
            "http_response_body_timeouts",
            "Responses cut because the route's timeout elapsed while their body was streaming, by route and cluster",
            m.http_body_timeouts.clone(),
        );
        r.register(
            "http_proxy_responses",
            "HTTP responses generated by the proxy itself, by reason",
            m.proxy_responses.clone(),
        );
        r.register(
            "upstream_connections_opened",
            "Upstream connections established",
            m.upstream_cx_opened.clone(),
        );
        r.register(
            "upstream_connections_failed",
            "Upstream connection attempts that failed or timed out",
            m.upstream_cx_failed.clone(),
        );
        r.register(
            "upstream_connections_active",
            "Upstream connections open now (pooled or in use)",
            m.upstream_cx_active.clone(),
        );
        r.register(
            "upstream_requests",
            "HTTP requests sent upstream; minus connections opened, the requests that reused a pooled connection",
            m.upstream_requests.clone(),
        );
        r.register(
            "endpoint_requests",
            "HTTP requests per endpoint, for clusters with endpoint_metrics",
            m.endpoint_requests.clone(),
        );
        r.register(
            "endpoint_request_duration_seconds",
            "HTTP request duration per endpoint, for clusters with endpoint_metrics",
            m.endpoint_duration.clone(),
        );
        r.register(
            "access_log_lines",
            "Access log lines written",
            m.access_log_lines.clone(),
        );
        r.register(
            "access_log_dropped",
            "Access log lines dropped because the sink fell behind",
            m.access_log_dropped.clone(),
        );
        r.register(
            "http_request_duration_seconds",
            "Time from receiving an HTTP request to sending its response headers",
            m.http_duration.clone(),
        );
        r.register(
            "tcp_connections_opened",
            "TCP relay connections opened",
            m.tcp_opened.clone(),
        );
        r.register(
            "tcp_connections_closed",
            "TCP relay connections closed",
            m.tcp_closed.clone(),
        );
        r.register(
            "tcp_connections_active",
            "TCP relay connections open now",
            m.tcp_active.clone(),
        );
        r.register(
            "tcp_rx_bytes",
            "Bytes received from downstream clients on TCP relays",
            m.tcp_rx_bytes.clone(),
        );
        r.register(
            "tcp_tx_bytes",
            "Bytes sent to downstream clients on TCP relays",
            m.tcp_tx_bytes.clone(),
        );
        r.register(
            "protocol_detect",
            "Connections on auto listeners by detected protocol",
            m.detect.clone(),
        );
        m
    }

    /// Resolves the handles for one route and cluster (done when the config is compiled).
    pub fn http_stats(&self, labels: RouteLabels) -> HttpStats {
        let duration = self.http_duration.get_or_create(&labels).clone();
        let retries = self.http_retries.get_or_create(&labels).clone();
        let body_timeouts = self.http_body_timeouts.get_or_create(&labels).clone();
        HttpStats {
            inner: std::sync::Arc::new(HttpStatsInner {
                family: self.http_requests.clone(),
                labels,
                by_code: (100..=599).map(|_| std::sync::OnceLock::new()).collect(),
                duration,
                retries,
                body_timeouts,
            }),
        }
    }

    /// Resolves the counter of proxy-generated responses for one listener and reason.
    pub fn proxy_response(
        &self,
        direction: &'static str,
        listener: &str,
        reason: &'static str,
    ) -> Counter {
        self.proxy_responses
            .get_or_create(&ProxyResponseLabels {
                direction,
                listener: listener.to_string(),
                reason,
            })
            .clone()
    }

    /// Resolves the upstream handles of one cluster.
    pub fn upstream_stats(&self, cluster: &str) -> UpstreamStats {
        let l = ClusterLabels {
            cluster: cluster.to_string(),
        };
        UpstreamStats {
            cx_opened: self.upstream_cx_opened.get_or_create(&l).clone(),
            cx_failed: self.upstream_cx_failed.get_or_create(&l).clone(),
            cx_active: self.upstream_cx_active.get_or_create(&l).clone(),
            requests: self.upstream_requests.get_or_create(&l).clone(),
        }
    }

    /// Resolves the per-endpoint handles of one endpoint.
    pub fn endpoint_stats(&self, cluster: &str, endpoint: &str) -> EndpointStats {
        let by_class = StatusClass::ALL.map(|status_class| {
            self.endpoint_requests
                .get_or_create(&EndpointStatusLabels {
                    cluster: cluster.to_string(),
                    endpoint: endpoint.to_string(),
                    status_class,
                })
                .clone()
        });
        let duration = self
            .endpoint_duration
            .get_or_create(&EndpointLabels {
                cluster: cluster.to_string(),
                endpoint: endpoint.to_string(),
            })
            .clone();
        EndpointStats { by_class, duration }
    }

    /// Resolves the handles for a TCP relay from one listener to one cluster.
    pub fn tcp_stats(&self, labels: &TcpLabels) -> TcpStats {
        TcpStats {
            opened: self.tcp_opened.get_or_create(labels).clone(),
            closed: self.tcp_closed.get_or_create(labels).clone(),
            active: self.tcp_active.get_or_create(labels).clone(),
            rx_bytes: self.tcp_rx_bytes.get_or_create(labels).clone(),
            tx_bytes: self.tcp_tx_bytes.get_or_create(labels).clone(),
        }
    }

    /// Resolves the detection counters of one listener, indexed by [`DetectResult`].
    pub fn detect_stats(&self, listener: &str) -> [Counter; 4] {
        [
            DetectResult::Http1,
            DetectResult::Http2,
            DetectResult::Opaque,
            DetectResult::Timeout,
        ]
        .map(|result| {
            self.detect
                .get_or_create(&DetectLabels {
                    listener: listener.to_string(),
                    result,
                })
                .clone()
        })
    }
}

// === impl HttpStats ===

impl HttpStats {
    /// Records one response.
    pub fn record(&self, status: u16, elapsed: std::time::Duration) {
        let code = status.clamp(100, 599);
        let i = usize::from(code - 100);
        let s = &*self.inner;
        // NOTE: the family's lock is taken once per code, the first time it is seen.
        s.by_code[i]
            .get_or_init(|| {
                s.family
                    .get_or_create(&HttpLabels {
                        direction: s.labels.direction,
                        listener: s.labels.listener.clone(),
                        route: s.labels.route.clone(),
                        cluster: s.labels.cluster.clone(),
                        status_class: StatusClass::of(code),
                        status_code: code,
                    })
                    .clone()
            })
            .inc();
        s.duration.observe(elapsed.as_secs_f64());
    }

    /// Records the retries of one request (tries after the first).
    pub fn record_retries(&self, retries: u32) {
        if retries > 0 {
            self.inner.retries.inc_by(u64::from(retries));
        }
    }

    /// Records a response cut because the route's timeout elapsed while its body streamed.
    pub fn record_body_timeout(&self) {
        self.inner.body_timeouts.inc();
    }
}

// === impl EndpointStats ===

impl EndpointStats {
    /// Records one response from this endpoint.
    pub fn record(&self, status: u16, elapsed: std::time::Duration) {
        self.by_class[StatusClass::index(status)].inc();
        self.duration.observe(elapsed.as_secs_f64());
    }
}

/// Encodes a registry in the Prometheus text format.
pub fn encode(registry: &Registry) -> String {
    let mut out = String::with_capacity(16 * 1024);
    // NOTE: writing to a String cannot fail.
    let _ = prometheus_client::encoding::text::encode(&mut out, registry);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_by_class() {
        let mut registry = Registry::default();
        let m = Metrics::register(&mut registry);
        let s = m.http_stats(RouteLabels {
            direction: "inbound",
            listener: "in".into(),
            route: "0".into(),
            cluster: "app".into(),
        });
        s.record(200, std::time::Duration::from_millis(3));
        s.record(204, std::time::Duration::from_millis(3));
        s.record(503, std::time::Duration::from_millis(3));
        s.record(999, std::time::Duration::from_millis(3));
        let text = encode(&registry);
        assert!(text.contains("pillion_http_requests_total{direction=\"inbound\",listener=\"in\",route=\"0\",cluster=\"app\",status_class=\"2xx\",status_code=\"200\"} 1"), "{text}");
        assert!(
            text.contains("status_class=\"2xx\",status_code=\"204\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("status_class=\"5xx\",status_code=\"503\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("status_class=\"5xx\",status_code=\"599\"} 1"),
            "{text}"
        );
        assert!(text.contains("pillion_http_request_duration_seconds_count{direction=\"inbound\",listener=\"in\",route=\"0\",cluster=\"app\"} 4"), "{text}");
    }
}
