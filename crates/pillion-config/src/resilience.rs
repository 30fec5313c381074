//! Resilience settings: timeouts, retries, limits, outlier detection, health checks, rate limits
//! and fault injection.

use crate::value::Duration;
use serde::{Deserialize, Serialize};

/// How a cluster picks an endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Balancer {
    /// In turn.
    #[default]
    RoundRobin,
    /// At random.
    Random,
    /// The less loaded of two random endpoints (fewest requests in flight).
    LeastRequest,
    /// The cheaper of two random endpoints by peak-EWMA latency times load.
    Ewma,
}

/// A route's retry policy.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Retry {
    /// How many times a request may be retried (attempts = 1 + retries).
    #[serde(default = "resilience_defaults::retries")]
    pub retries: u32,
    /// What is retried: `connect-failure`, `reset`, `refused-stream`, `5xx`, `gateway-error`
    /// (502, 503, 504), or a status code such as `409`.
    #[serde(default = "resilience_defaults::retry_on")]
    pub on: Vec<RetryOn>,
    /// A timeout for each try.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub per_try_timeout: Option<Duration>,
    /// Exponential backoff with full jitter between tries.
    #[serde(default)]
    pub backoff: Backoff,
    /// Request bodies up to this many bytes are kept for replay; larger ones are sent once.
    #[serde(default = "resilience_defaults::retry_buffer")]
    pub buffer_bytes: usize,
}

/// A retry condition.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RetryOn {
    /// The connection to the endpoint failed.
    ConnectFailure,
    /// The connection was reset or closed before a response.
    Reset,
    /// HTTP/2 REFUSED_STREAM.
    RefusedStream,
    /// Any 5xx response.
    Status5xx,
    /// 502, 503 or 504.
    GatewayError,
    /// This status code.
    Status(u16),
}

/// Backoff between retries: a random wait in [0, min(max, base * 2^attempt)].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Backoff {
    /// The first try's ceiling.
    #[serde(default = "resilience_defaults::backoff_base")]
    pub base: Duration,
    /// The largest ceiling.
    #[serde(default = "resilience_defaults::backoff_max")]
    pub max: Duration,
}

/// A cluster's retry budget: retries allowed as a share of requests, plus a floor.
#[derive(Debug, Clone, Copy, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RetryBudget {
    /// Retries per request over the last 10 seconds (0.2 = one retry per five requests).
    #[serde(default = "resilience_defaults::budget_ratio")]
    pub ratio: f64,
    /// Retries always allowed per second, whatever the ratio.
    #[serde(default = "resilience_defaults::budget_min")]
    pub min_per_sec: u32,
}

/// Circuit breaking: fail fast with 503 above these, nothing queues.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Limits {
    /// Connections open to the cluster's endpoints.
    #[serde(default = "resilience_defaults::limit")]
    pub max_connections: usize,
    /// Requests waiting for a connection to be established.
    #[serde(default = "resilience_defaults::limit")]
    pub max_pending: usize,
    /// Requests in flight.
    #[serde(default = "resilience_defaults::limit")]
    pub max_requests: usize,
    /// Retries in flight.
    #[serde(default = "resilience_defaults::max_retries")]
    pub max_retries: usize,
}

/// Outlier detection: eject endpoints that keep failing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct OutlierDetection {
    /// Eject after this many 5xx in a row (0 turns it off).
    #[serde(default = "resilience_defaults::consecutive")]
    pub consecutive_5xx: u32,
    /// Eject after this many gateway failures (502, 503, 504, connect failure, reset) in a row.
    #[serde(default = "resilience_defaults::consecutive")]
    pub consecutive_gateway_failure: u32,
    /// The first ejection's length; each further ejection is longer by as much.
    #[serde(default = "resilience_defaults::base_ejection")]
    pub base_ejection_time: Duration,
    /// The longest ejection.
    #[serde(default = "resilience_defaults::max_ejection")]
    pub max_ejection_time: Duration,
    /// Never eject more than this share of the cluster (one endpoint may always be ejected).
    #[serde(default = "resilience_defaults::max_ejection_percent")]
    pub max_ejection_percent: u8,
}

/// Active health checking of a cluster's endpoints.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct HealthCheck {
    /// GET this path, expecting 2xx; without it, a TCP connect.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http_path: Option<String>,
    /// How often each endpoint is checked.
    #[serde(default = "resilience_defaults::hc_interval")]
    pub interval: Duration,
    /// How long one check may take.
    #[serde(default = "resilience_defaults::hc_timeout")]
    pub timeout: Duration,
    /// Passes in a row that make an unhealthy endpoint healthy.
    #[serde(default = "resilience_defaults::hc_healthy")]
    pub healthy_threshold: u32,
    /// Failures in a row that make a healthy endpoint unhealthy.
    #[serde(default = "resilience_defaults::hc_unhealthy")]
    pub unhealthy_threshold: u32,
}

/// A local token-bucket rate limit.
#[derive(Debug, Clone, Copy, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimit {
    /// Requests per second, sustained.
    pub rps: f64,
    /// Requests allowed in a burst above the rate (default: one second's worth).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub burst: Option<u32>,
}

/// Fault injection, for chaos and load tests.
#[derive(Debug, Clone, Copy, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Fault {
    /// Delay a share of requests.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delay: Option<FaultDelay>,
    /// Answer a share of requests with a status, without sending them upstream.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub abort: Option<FaultAbort>,
}

/// A delay fault.
#[derive(Debug, Clone, Copy, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct FaultDelay {
    /// The share of requests delayed, 0 to 100.
    pub percent: f64,
    /// How long.
    pub duration: Duration,
}

/// An abort fault.
#[derive(Debug, Clone, Copy, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct FaultAbort {
    /// The share of requests aborted, 0 to 100.
    pub percent: f64,
    /// The status they get.
    pub status: u16,
}

// === impl RetryOn ===

impl std::str::FromStr for RetryOn {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        Ok(match s {
            "connect-failure" => Self::ConnectFailure,
            "reset" => Self::Reset,
            "refused-stream" => Self::RefusedStream,
            "5xx" => Self::Status5xx,
            "gateway-error" => Self::GatewayError,
            code => match code.parse::<u16>() {
                Ok(c) if (100..=599).contains(&c) => Self::Status(c),
                _ => return Err(format!("expected {RETRY_ON_EXPECTED}, got `{s}`")),
            },
        })
    }
}

impl std::fmt::Display for RetryOn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::ConnectFailure => f.write_str("connect-failure"),
            Self::Reset => f.write_str("reset"),
            Self::RefusedStream => f.write_str("refused-stream"),
            Self::Status5xx => f.write_str("5xx"),
            Self::GatewayError => f.write_str("gateway-error"),
            Self::Status(c) => write!(f, "{c}"),
        }
    }
}

impl<'de> Deserialize<'de> for RetryOn {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        // NOTE: a visitor rather than an untagged enum, so that a value of the wrong type gets
        // this message and not serde's "did not match any variant of untagged enum ...".
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = RetryOn;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(RETRY_ON_EXPECTED)
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<RetryOn, E> {
                v.parse().map_err(E::custom)
            }
            // `503` written as a number as well as a string.
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<RetryOn, E> {
                v.to_string().parse().map_err(E::custom)
            }
            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<RetryOn, E> {
                v.to_string().parse().map_err(E::custom)
            }
        }
        d.deserialize_any(V)
    }
}

/// What `retry.on` accepts, in the user's words.
const RETRY_ON_EXPECTED: &str =
    "connect-failure, reset, refused-stream, 5xx, gateway-error or a status code (100 to 599)";

impl Serialize for RetryOn {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl Default for Backoff {
    fn default() -> Self {
        Self {
            base: resilience_defaults::backoff_base(),
            max: resilience_defaults::backoff_max(),
        }
    }
}

impl Default for RetryBudget {
    fn default() -> Self {
        Self {
            ratio: resilience_defaults::budget_ratio(),
            min_per_sec: resilience_defaults::budget_min(),
        }
    }
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_connections: resilience_defaults::limit(),
            max_pending: resilience_defaults::limit(),
            max_requests: resilience_defaults::limit(),
            max_retries: resilience_defaults::max_retries(),
        }
    }
}

/// Defaults of the resilience settings.
pub mod resilience_defaults {
    use crate::value::Duration;

    pub fn retries() -> u32 {
        2
    }
    pub fn retry_on() -> Vec<super::RetryOn> {
        vec![
            super::RetryOn::ConnectFailure,
            super::RetryOn::RefusedStream,
            super::RetryOn::GatewayError,
        ]
    }
    pub fn retry_buffer() -> usize {
        64 * 1024
    }
    pub fn backoff_base() -> Duration {
        Duration::from_millis(25)
    }
    pub fn backoff_max() -> Duration {
        Duration::from_millis(250)
    }
    pub fn budget_ratio() -> f64 {
        0.2
    }
    pub fn budget_min() -> u32 {
        10
    }
    pub fn limit() -> usize {
        1024
    }
    pub fn max_retries() -> usize {
        // NOTE: the retry budget is the main guard; this only caps retries in flight at once.
        1024
    }
    pub fn consecutive() -> u32 {
        5
    }
    pub fn base_ejection() -> Duration {
        Duration::from_secs(30)
    }
    pub fn max_ejection() -> Duration {
        Duration::from_secs(300)
    }
    pub fn max_ejection_percent() -> u8 {
        10
    }
    pub fn hc_interval() -> Duration {
        Duration::from_secs(5)
    }
    pub fn hc_timeout() -> Duration {
        Duration::from_secs(1)
    }
    pub fn hc_healthy() -> u32 {
        2
    }
    pub fn hc_unhealthy() -> u32 {
        3
    }
}
