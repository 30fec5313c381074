//! The configuration model: plain structs read from YAML, with their defaults.

use crate::resilience::*;
use crate::tls::{AuthzRule, ClusterTls, ListenerTls};
use crate::value::{header_map, opt_socket_addr, socket_addr, Duration, Endpoint, HostPattern};
use serde::{Deserialize, Serialize};
use std::{collections::BTreeMap, net::SocketAddr};

/// The whole configuration file.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// The admin endpoint (`/ready`, `/metrics`, ...).
    #[serde(default)]
    pub admin: Admin,
    /// How long shutdown waits for in-flight requests and connections.
    #[serde(default = "defaults::drain_timeout")]
    pub drain_timeout: Duration,
    /// The ports Pillion accepts traffic on.
    #[serde(default)]
    pub listeners: Vec<Listener>,
    /// Named groups of upstream endpoints.
    #[serde(default)]
    pub clusters: Vec<Cluster>,
    /// One line per HTTP request and TCP connection; off when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub access_log: Option<AccessLog>,
}

/// The access log.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct AccessLog {
    /// `stdout`, `stderr`, or a file path (reopened on SIGUSR1 and when rotated away).
    #[serde(default = "defaults::access_log_path")]
    pub path: String,
    /// `json` (one object per line), or a text template with `%field%` placeholders.
    #[serde(default = "defaults::access_log_format")]
    pub format: String,
    /// Lines queued for the writer; past this, lines are dropped (and counted), never requests.
    #[serde(default = "defaults::access_log_buffer")]
    pub buffer: usize,
}

/// The admin endpoint.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Admin {
    /// Where it listens; loopback by default because it can change state.
    #[serde(default = "defaults::admin_address", deserialize_with = "socket_addr")]
    pub address: SocketAddr,
    /// The read-only health and metrics listener (`/ready`, `/live`, `/metrics`) for kubelet and
    /// Prometheus; `null` turns it off.
    #[serde(
        default = "defaults::health_address",
        deserialize_with = "opt_socket_addr"
    )]
    pub health_address: Option<SocketAddr>,
    /// The longest wait for a whole request head on either port; on HTTP/1.1 it also bounds
    /// the wait for the next request on a kept-alive connection. Slow clients are cut off.
    #[serde(default = "defaults::admin_header_timeout")]
    pub header_timeout: Duration,
    /// A connection on which no new request arrives for this long is closed (HTTP/2 included).
    #[serde(default = "defaults::admin_idle_timeout")]
    pub idle_timeout: Duration,
    /// Connections open at once on each port; more are closed as soon as they are accepted.
    #[serde(default = "defaults::admin_max_connections")]
    pub max_connections: usize,
}

/// One port Pillion accepts traffic on.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Listener {
    /// Unique name, used in logs and metric labels.
    pub name: String,
    /// The address to bind.
    #[serde(deserialize_with = "socket_addr")]
    pub address: SocketAddr,
    /// Which way traffic flows through this listener.
    #[serde(default)]
    pub direction: Direction,
    /// What the listener expects to receive.
    #[serde(default)]
    pub protocol: Protocol,
    /// With `auto`: a client that sends nothing for this long is relayed as opaque TCP.
    #[serde(default = "defaults::detect_timeout")]
    pub detect_timeout: Duration,
    /// Close a downstream connection idle this long.
    #[serde(default = "defaults::idle_timeout")]
    pub idle_timeout: Duration,
    /// Answer 408 and cut off an HTTP/1 client whose request head has not come whole within
    /// this of its first byte (and a TLS handshake that takes longer).
    #[serde(default = "defaults::header_timeout")]
    pub header_timeout: Duration,
    /// Cut a request or response body that moves no byte for this long (Envoy's
    /// `stream_idle_timeout`).
    #[serde(default = "defaults::stream_idle_timeout")]
    pub stream_idle_timeout: Duration,
    /// A rate limit over every HTTP request on this listener.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limit: Option<RateLimit>,
    /// Keep or generate `x-request-id` on every request and return it on the response.
    #[serde(default = "defaults::yes")]
    pub request_id: bool,
    /// Keep or start a W3C trace (`traceparent`), recording this hop as the new parent.
    #[serde(default = "defaults::yes")]
    pub trace_context: bool,
    /// Append the client's address to `x-forwarded-for` and set `x-forwarded-proto`.
    #[serde(default = "defaults::yes")]
    pub forwarded_headers: bool,
    /// The catch-all cluster: HTTP requests no route matched, and TCP (or undetected) traffic.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster: Option<String>,
    /// HTTP routes, tried in order; the first match wins.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub routes: Vec<Route>,
    /// TLS termination (mutual TLS with `ca`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<ListenerTls>,
    /// Authorization policy for every connection and request on this listener.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub authz: Option<Vec<AuthzRule>>,
}

/// Which way traffic flows through a listener.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Direction {
    /// From clients to the local app.
    #[default]
    Inbound,
    /// From the local app to other services.
    Outbound,
}

/// What a listener expects to receive.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    /// HTTP/1.1 and HTTP/2 (prior knowledge) on the same port.
    Http,
    /// Opaque bytes relayed to the listener's cluster.
    Tcp,
    /// Detected per connection: HTTP/2, HTTP/1, or else opaque TCP.
    #[default]
    Auto,
}

/// An HTTP route: a match and where matching requests go.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Route {
    /// Name used in metric labels; defaults to the route's index in its listener.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Conditions that must all hold; none means every request matches.
    #[serde(default, rename = "match")]
    pub matches: RouteMatch,
    /// The cluster that serves matching requests.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster: Option<String>,
    /// Weighted clusters: traffic split in proportion to the weights.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub split: Vec<WeightedCluster>,
    /// Headers added to or removed from the request before it goes upstream.
    #[serde(default, skip_serializing_if = "HeaderRewrite::is_empty")]
    pub request_headers: HeaderRewrite,
    /// Headers added to or removed from the response before it goes back.
    #[serde(default, skip_serializing_if = "HeaderRewrite::is_empty")]
    pub response_headers: HeaderRewrite,
    /// The time the whole exchange may take, retries and the response body included; off when
    /// absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<Duration>,
    /// Retry policy; no retries when absent (but see the transparent retry in the reference).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry: Option<Retry>,
    /// A rate limit on this route.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limit: Option<RateLimit>,
    /// Fault injection on this route.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fault: Option<Fault>,
    /// Authorization policy for this route (on top of the listener's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub authz: Option<Vec<AuthzRule>>,
}

/// A route's conditions.
#[derive(Debug, Clone, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RouteMatch {
    /// The request's host (port ignored): exact, `*.suffix` or `*`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<HostPattern>,
    /// The exact path (without the query).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    /// A path prefix.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prefix: Option<String>,
    /// Header conditions.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub headers: Vec<HeaderMatch>,
}

/// A header condition: present, or equal to a value.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct HeaderMatch {
    /// The header name (case-insensitive).
    pub name: String,
    /// The exact value; without it the header need only be present.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exact: Option<String>,
}

/// One cluster of a traffic split.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct WeightedCluster {
    /// The cluster's name.
    pub cluster: String,
    /// Its relative weight (percentages when the weights add up to 100).
    pub weight: u32,
}

/// Headers to add and remove.
#[derive(Debug, Clone, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct HeaderRewrite {
    /// Set these headers, replacing any value already there.
    #[serde(
        default,
        deserialize_with = "header_map",
        skip_serializing_if = "BTreeMap::is_empty"
    )]
    pub add: BTreeMap<String, String>,
    /// Remove these headers.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub remove: Vec<String>,
}

/// A named group of upstream endpoints.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Cluster {
    /// Unique name, referenced by listeners and routes.
    pub name: String,
    /// `ip:port` or `host:port` (re-resolved every `dns_refresh`).
    pub endpoints: Vec<Endpoint>,
    /// How long a connection attempt may take.
    #[serde(default = "defaults::connect_timeout")]
    pub connect_timeout: Duration,
    /// The HTTP version spoken to the endpoints.
    #[serde(default)]
    pub protocol: UpstreamProtocol,
    /// How often DNS endpoints are resolved again.
    #[serde(default = "defaults::dns_refresh")]
    pub dns_refresh: Duration,
    /// How an endpoint is picked.
    #[serde(default)]
    pub balancer: Balancer,
    /// How long an idle pooled connection is kept (below common app keep-alive settings).
    #[serde(default = "defaults::upstream_idle_timeout")]
    pub idle_timeout: Duration,
    /// Circuit breaking.
    #[serde(default)]
    pub limits: Limits,
    /// The retry budget shared by every route sending to this cluster.
    #[serde(default)]
    pub retry_budget: RetryBudget,
    /// Outlier detection; off when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outlier_detection: Option<OutlierDetection>,
    /// Active health checks; off when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health_check: Option<HealthCheck>,
    /// Export requests, errors and latency per endpoint (one label set per endpoint address).
    #[serde(default)]
    pub endpoint_metrics: bool,
    /// TLS origination towards the endpoints.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<ClusterTls>,
}

/// The HTTP version a cluster speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum UpstreamProtocol {
    /// HTTP/1.1 with keep-alive.
    #[default]
    Http1,
    /// HTTP/2 with prior knowledge, requests multiplexed on one connection.
    Http2,
    /// The version the request arrived with.
    Auto,
}

// === impl HeaderRewrite ===

impl HeaderRewrite {
    /// Whether it changes nothing.
    pub fn is_empty(&self) -> bool {
        self.add.is_empty() && self.remove.is_empty()
    }
}

impl Default for Admin {
    fn default() -> Self {
        Self {
            address: defaults::admin_address(),
            health_address: defaults::health_address(),
            header_timeout: defaults::admin_header_timeout(),
            idle_timeout: defaults::admin_idle_timeout(),
            max_connections: defaults::admin_max_connections(),
        }
    }
}

impl Default for Config {
    fn default() -> Self {
        Self {
            admin: Admin::default(),
            drain_timeout: defaults::drain_timeout(),
            listeners: Vec::new(),
            clusters: Vec::new(),
            access_log: None,
        }
    }
}

/// The defaults, in one place so the README can be checked against them.
pub mod defaults {
    use super::*;

    /// `admin.address`.
    pub fn admin_address() -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], 15000))
    }
    /// `admin.health_address`.
    pub fn health_address() -> Option<SocketAddr> {
        Some(SocketAddr::from(([0, 0, 0, 0], 15020)))
    }
    /// `admin.header_timeout`.
    pub fn admin_header_timeout() -> Duration {
        Duration::from_secs(10)
    }
    /// `admin.idle_timeout`.
    pub fn admin_idle_timeout() -> Duration {
        Duration::from_secs(60)
    }
    /// `admin.max_connections`.
    pub fn admin_max_connections() -> usize {
        64
    }
    /// `access_log.path`.
    pub fn access_log_path() -> String {
        "stdout".into()
    }
    /// `access_log.format`.
    pub fn access_log_format() -> String {
        "json".into()
    }
    /// `access_log.buffer`.
    pub fn access_log_buffer() -> usize {
        4096
    }
    /// Switches that are on unless turned off.
    pub fn yes() -> bool {
        true
    }
    /// `drain_timeout`.
    pub fn drain_timeout() -> Duration {
        Duration::from_secs(5)
    }
    /// `listeners[].detect_timeout`.
    pub fn detect_timeout() -> Duration {
        Duration::from_millis(500)
    }
    /// `listeners[].idle_timeout`.
    pub fn idle_timeout() -> Duration {
        Duration::from_secs(3600)
    }
    /// `listeners[].stream_idle_timeout`: Envoy's default.
    pub fn stream_idle_timeout() -> Duration {
        Duration::from_secs(300)
    }
    /// `listeners[].header_timeout`.
    pub fn header_timeout() -> Duration {
        Duration::from_secs(10)
    }
    /// `clusters[].idle_timeout`.
    pub fn upstream_idle_timeout() -> Duration {
        Duration::from_secs(4)
    }
    /// `clusters[].connect_timeout`.
    pub fn connect_timeout() -> Duration {
        Duration::from_secs(1)
    }
    /// `clusters[].dns_refresh`.
    pub fn dns_refresh() -> Duration {
        Duration::from_secs(5)
    }
}
