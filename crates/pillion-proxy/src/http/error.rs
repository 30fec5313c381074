//! Proxy-side failures and the one place they become HTTP responses.

use super::body::ProxyBody;
use crate::cluster::NoEndpoint;
use http::{header, HeaderName, HeaderValue, Response, StatusCode};
use pillion_layers::{
    error::{
        classify_dyn, find, DownstreamBodyError, Elapsed, FailureKind, FaultAbort, Overloaded,
        RateLimited, TimeoutKind,
    },
    limit,
};

/// The header that marks a response made by the proxy, with the reason.
pub const ERROR_HEADER: HeaderName = HeaderName::from_static("x-pillion-error");

/// Why the proxy answered a request itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ProxyError {
    /// No route matched the request.
    #[error("no route matched the request")]
    NoRoute,
    /// The cluster has no endpoint to send to.
    #[error("the cluster has no healthy endpoint")]
    NoHealthyEndpoint,
    /// Connecting to the endpoint failed or timed out.
    #[error("connecting to the upstream failed")]
    ConnectFailure,
    /// The upstream connection failed after it was established.
    #[error("the upstream connection was reset")]
    UpstreamReset,
    /// The route's timeout (all tries) elapsed.
    #[error("the request timed out")]
    RequestTimeout,
    /// The last try's timeout elapsed.
    #[error("the last try timed out")]
    PerTryTimeout,
    /// A circuit breaker is open: too many requests in flight.
    #[error("too many requests in flight to the cluster")]
    OverflowRequests,
    /// A circuit breaker is open: too many requests waiting for a connection.
    #[error("too many requests waiting for a connection")]
    OverflowPending,
    /// A circuit breaker is open: too many connections.
    #[error("too many connections to the cluster")]
    OverflowConnections,
    /// A rate limit refused the request.
    #[error("rate limited")]
    RateLimited,
    /// Fault injection aborted the request with this status.
    #[error("aborted by fault injection")]
    FaultInjected(StatusCode),
    /// An authorization policy denied the request.
    #[error("denied by policy")]
    Denied,
    /// The TLS handshake with the upstream failed (including a wrong server identity).
    #[error("the TLS handshake with the upstream failed")]
    UpstreamTls,
    /// The request is malformed: no `Host` or several, an invalid one, or a request target its
    /// method does not allow (RFC 9112, section 3).
    #[error("malformed request")]
    BadRequest,
    /// The client's request body was malformed or cut off while it was being sent upstream.
    #[error("the request body was malformed or cut off")]
    BadRequestBody,
    /// `CONNECT`: the proxy opens no tunnels to arbitrary hosts.
    #[error("CONNECT is not supported")]
    ConnectUnsupported,
    /// The client's request body moved no byte for the listener's `stream_idle_timeout`.
    #[error("the request body was idle too long")]
    StreamIdleTimeout,
}

// === impl ProxyError ===

impl ProxyError {
    /// How many reasons there are (see [`ProxyError::index`]).
    pub const COUNT: usize = 17;

    /// Every reason, in [`ProxyError::index`] order.
    pub const REASONS: [&'static str; Self::COUNT] = [
        "no-route",
        "no-healthy-endpoint",
        "upstream-connect-failure",
        "upstream-reset",
        "request-timeout",
        "per-try-timeout",
        "overflow-max-requests",
        "overflow-max-pending",
        "overflow-max-connections",
        "rate-limited",
        "fault-injected",
        "denied",
        "upstream-tls-failure",
        "bad-request",
        "bad-request-body",
        "connect-unsupported",
        "stream-idle-timeout",
    ];

    /// The position of this reason in [`ProxyError::REASONS`], for per-reason counters.
    pub fn index(self) -> usize {
        match self {
            Self::NoRoute => 0,
            Self::NoHealthyEndpoint => 1,
            Self::ConnectFailure => 2,
            Self::UpstreamReset => 3,
            Self::RequestTimeout => 4,
            Self::PerTryTimeout => 5,
            Self::OverflowRequests => 6,
            Self::OverflowPending => 7,
            Self::OverflowConnections => 8,
            Self::RateLimited => 9,
            Self::FaultInjected(_) => 10,
            Self::Denied => 11,
            Self::UpstreamTls => 12,
            Self::BadRequest => 13,
            Self::BadRequestBody => 14,
            Self::ConnectUnsupported => 15,
            Self::StreamIdleTimeout => 16,
        }
    }

    /// Classifies any error of a route's service stack. NOTE: this is the one place where
    /// failures are told apart; local decisions (timeouts, limits) are looked for first, as
    /// they may wrap an upstream error.
    pub fn from_error(err: &(dyn std::error::Error + 'static)) -> Self {
        if find::<DownstreamBodyError>(err).is_some() {
            if find::<super::body::StreamIdle>(err).is_some() {
                return Self::StreamIdleTimeout;
            }
            return Self::BadRequestBody;
        }
        if let Some(e) = find::<Elapsed>(err) {
            return match e.kind {
                TimeoutKind::Request => Self::RequestTimeout,
                TimeoutKind::PerTry => Self::PerTryTimeout,
            };
        }
        if let Some(o) = find::<Overloaded>(err) {
            return match o.limit {
                limit::MAX_CONNECTIONS => Self::OverflowConnections,
                limit::MAX_PENDING => Self::OverflowPending,
                _ => Self::OverflowRequests,
            };
        }
        if find::<RateLimited>(err).is_some() {
            return Self::RateLimited;
        }
        if let Some(f) = find::<FaultAbort>(err) {
            return Self::FaultInjected(f.status);
        }
        if find::<NoEndpoint>(err).is_some() {
            return Self::NoHealthyEndpoint;
        }
        if pillion_tls::find_tls_error(err).is_some() || pillion_tls::find_peer_alert(err).is_some()
        {
            return Self::UpstreamTls;
        }
        match classify_dyn(err) {
            Some(FailureKind::ConnectFailure) => Self::ConnectFailure,
            Some(FailureKind::Timeout) => Self::PerTryTimeout,
            _ => Self::UpstreamReset,
        }
    }

    /// The status code a client sees.
    pub fn status(self) -> StatusCode {
        match self {
            Self::NoRoute => StatusCode::NOT_FOUND,
            Self::NoHealthyEndpoint
            | Self::OverflowRequests
            | Self::OverflowPending
            | Self::OverflowConnections => StatusCode::SERVICE_UNAVAILABLE,
            Self::ConnectFailure | Self::UpstreamReset | Self::UpstreamTls => {
                StatusCode::BAD_GATEWAY
            }
            Self::RequestTimeout | Self::PerTryTimeout => StatusCode::GATEWAY_TIMEOUT,
            Self::RateLimited => StatusCode::TOO_MANY_REQUESTS,
            Self::FaultInjected(s) => s,
            Self::Denied => StatusCode::FORBIDDEN,
            Self::BadRequest | Self::BadRequestBody => StatusCode::BAD_REQUEST,
            Self::ConnectUnsupported => StatusCode::METHOD_NOT_ALLOWED,
            Self::StreamIdleTimeout => StatusCode::REQUEST_TIMEOUT,
        }
    }

    /// The short reason, in the `x-pillion-error` header and the access log.
    pub fn reason(self) -> &'static str {
        Self::REASONS[self.index()]
    }

    /// The access log's response flag (Envoy's short codes).
    pub fn flag(self) -> &'static str {
        match self {
            Self::NoRoute => "NR",
            Self::NoHealthyEndpoint => "NH",
            Self::ConnectFailure | Self::UpstreamTls => "UF",
            Self::UpstreamReset => "UR",
            Self::RequestTimeout | Self::PerTryTimeout => "UT",
            Self::OverflowRequests | Self::OverflowPending | Self::OverflowConnections => "UO",
            Self::RateLimited => "RL",
            Self::FaultInjected(_) => "FI",
            Self::Denied => "DN",
            // Envoy's "downstream protocol error".
            Self::BadRequest | Self::BadRequestBody | Self::ConnectUnsupported => "DPE",
            Self::StreamIdleTimeout => "SI",
        }
    }

    /// The response a client sees.
    pub fn into_response(self) -> Response<ProxyBody> {
        let reason = self.reason();
        let mut rsp = Response::new(ProxyBody::local(format!("{reason}\n")));
        *rsp.status_mut() = self.status();
        let h = rsp.headers_mut();
        h.insert(ERROR_HEADER, HeaderValue::from_static(reason));
        h.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
        rsp
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn responses_carry_status_and_reason() {
        for (e, status, reason) in [
            (ProxyError::NoRoute, 404, "no-route"),
            (ProxyError::NoHealthyEndpoint, 503, "no-healthy-endpoint"),
            (ProxyError::ConnectFailure, 502, "upstream-connect-failure"),
            (ProxyError::UpstreamReset, 502, "upstream-reset"),
            (ProxyError::RequestTimeout, 504, "request-timeout"),
            (ProxyError::OverflowRequests, 503, "overflow-max-requests"),
            (ProxyError::RateLimited, 429, "rate-limited"),
            (
                ProxyError::FaultInjected(StatusCode::IM_A_TEAPOT),
                418,
                "fault-injected",
            ),
            (ProxyError::Denied, 403, "denied"),
            (ProxyError::BadRequest, 400, "bad-request"),
            (ProxyError::BadRequestBody, 400, "bad-request-body"),
            (ProxyError::StreamIdleTimeout, 408, "stream-idle-timeout"),
            (ProxyError::ConnectUnsupported, 405, "connect-unsupported"),
        ] {
            let rsp = e.into_response();
            assert_eq!(rsp.status().as_u16(), status);
            assert_eq!(rsp.headers()[&ERROR_HEADER], reason);
        }
    }

    #[test]
    fn local_decisions_are_found_under_wrappers() {
        let e: pillion_layers::BoxError = Box::new(pillion_layers::error::RequestFailed {
            attempts: 2,
            source: Box::new(Elapsed {
                kind: TimeoutKind::PerTry,
                after: std::time::Duration::from_millis(5),
            }),
        });
        assert_eq!(ProxyError::from_error(&*e), ProxyError::PerTryTimeout);
        let e: pillion_layers::BoxError = Box::new(Overloaded {
            limit: limit::MAX_REQUESTS,
        });
        assert_eq!(ProxyError::from_error(&*e), ProxyError::OverflowRequests);
    }
}
