//! Proxy-side failures and the one place they become HTTP responses.

use super::body::ProxyBody;
use http::{header, HeaderName, HeaderValue, Response, StatusCode};

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
}

// === impl ProxyError ===

impl ProxyError {
    /// Every reason, in [`ProxyError::index`] order.
    pub const ALL: [ProxyError; 4] = [
        Self::NoRoute,
        Self::NoHealthyEndpoint,
        Self::ConnectFailure,
        Self::UpstreamReset,
    ];

    /// The position in [`ProxyError::ALL`], for per-reason counters.
    pub fn index(self) -> usize {
        self as usize
    }

    /// The access log's response flag (Envoy's short codes where Envoy has one).
    pub fn flag(self) -> &'static str {
        match self {
            Self::NoRoute => "NR",
            Self::NoHealthyEndpoint => "NH",
            Self::ConnectFailure => "UF",
            Self::UpstreamReset => "UR",
        }
    }

    /// Classifies an error of the pooled HTTP client.
    pub fn from_client(err: &hyper_util::client::legacy::Error) -> Self {
        if err.is_connect() {
            Self::ConnectFailure
        } else {
            Self::UpstreamReset
        }
    }

    /// The status code a client sees.
    pub fn status(self) -> StatusCode {
        match self {
            Self::NoRoute => StatusCode::NOT_FOUND,
            Self::NoHealthyEndpoint => StatusCode::SERVICE_UNAVAILABLE,
            Self::ConnectFailure | Self::UpstreamReset => StatusCode::BAD_GATEWAY,
        }
    }

    /// The short reason, in the `x-pillion-error` header and the access log.
    pub fn reason(self) -> &'static str {
        match self {
            Self::NoRoute => "no-route",
            Self::NoHealthyEndpoint => "no-healthy-endpoint",
            Self::ConnectFailure => "upstream-connect-failure",
            Self::UpstreamReset => "upstream-reset",
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
        ] {
            let rsp = e.into_response();
            assert_eq!(rsp.status().as_u16(), status);
            assert_eq!(rsp.headers()[&ERROR_HEADER], reason);
            assert_eq!(ProxyError::ALL[e.index()], e);
        }
    }
}
