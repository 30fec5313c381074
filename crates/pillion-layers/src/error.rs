//! The leaf errors the request layers produce, and helpers that find them in a boxed error chain.
//!
//! The proxy maps errors to responses in one place: it walks the chain with [`find`] (errors may
//! be wrapped, e.g. in [`RequestFailed`] by the retry layer) and picks a status and reason from
//! the first leaf it recognises. [`classify`] says what kind of upstream failure an error is.

use std::{error::Error as StdError, fmt, time::Duration};

use crate::BoxError;

/// Opening a connection to the upstream failed (TCP, TLS or the HTTP handshake): nothing of
/// the request was sent.
#[derive(Debug, thiserror::Error)]
#[error("connecting to the upstream failed: {0}")]
pub struct ConnectFailed(#[source] pub BoxError);

/// The upstream closed its connection before the whole response arrived: hyper's "incomplete
/// message", as the proxy's own HTTP/1.1 client reports it. On a reused connection with nothing
/// of the response read, it is usually the keep-alive race (see [`is_incomplete_message`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("the upstream closed the connection before the response was complete")]
pub struct IncompleteResponse;

/// The client's request body failed while it was being sent upstream: malformed framing (a bad
/// chunk), or the client went away before all of it arrived. The client's doing, not the
/// endpoint's: never retried, never counted against the endpoint, and answered 400.
#[derive(Debug, thiserror::Error)]
#[error("the client's request body failed: {0}")]
pub struct DownstreamBodyError(#[source] pub BoxError);

/// Which timeout fired.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum TimeoutKind {
    /// The whole request, including every retry and backoff.
    Request,
    /// One attempt (try) of the request.
    PerTry,
}

/// A timeout fired before the response headers arrived (the proxy answers 504).
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{kind} timeout elapsed after {after:?}")]
pub struct Elapsed {
    /// Which timeout fired.
    pub kind: TimeoutKind,
    /// The configured duration that elapsed.
    pub after: Duration,
}

/// A fail-fast limit (circuit breaker) rejected the request (the proxy answers 503).
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("overloaded: {limit} limit reached")]
pub struct Overloaded {
    /// Which limit: `"max_requests"`, `"max_pending"`, `"max_retries"` or `"max_connections"`
    /// (see the constants in [`crate::limit`]).
    pub limit: &'static str,
}

/// The local rate limit has no token left (the proxy answers 429).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, thiserror::Error)]
#[error("rate limited")]
pub struct RateLimited;

/// Fault injection aborted the request (the proxy answers `status`, reason `fault-injected`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("fault injected: aborted with {status}")]
pub struct FaultAbort {
    /// The status the proxy should answer with.
    pub status: http::StatusCode,
}

/// The retry layer's final error: how many attempts were made, and the last attempt's error.
///
/// NOTE: this wraps the leaf error, so look for leaves with [`find`], never by downcasting the
/// top-level error only.
#[derive(Debug, thiserror::Error)]
#[error("request failed after {attempts} attempt(s)")]
pub struct RequestFailed {
    /// Attempts made, the first one included (`1` means no retry).
    pub attempts: u32,
    /// The last attempt's error.
    #[source]
    pub source: BoxError,
}

/// What kind of upstream failure an error is, as far as retries are concerned.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum FailureKind {
    /// No connection could be made: nothing reached the upstream.
    ConnectFailure,
    /// The connection was reset or closed under the request (it may have been processed).
    Reset,
    /// HTTP/2 `REFUSED_STREAM`: the upstream refused the stream before processing it.
    RefusedStream,
    /// The per-try timeout fired.
    Timeout,
    /// Any other transport or upstream error.
    Other,
}

// === helpers ===

/// Finds the first error of type `E` in `err`'s chain (`err` itself, then its `source()`s).
pub fn find<'a, E: StdError + 'static>(err: &'a (dyn StdError + 'static)) -> Option<&'a E> {
    chain(err).find_map(|e| e.downcast_ref::<E>())
}

/// Returns true if `err`'s chain contains an error of type `E`.
pub fn is<E: StdError + 'static>(err: &(dyn StdError + 'static)) -> bool {
    find::<E>(err).is_some()
}

/// The number of attempts recorded on an error by the retry layer (`1` if it records none).
pub fn attempts(err: &(dyn StdError + 'static)) -> u32 {
    find::<RequestFailed>(err).map_or(1, |f| f.attempts)
}

/// Iterates over `err` and its `source()`s.
pub fn chain<'a>(
    err: &'a (dyn StdError + 'static),
) -> impl Iterator<Item = &'a (dyn StdError + 'static)> {
    std::iter::successors(Some(err), |e: &&'a (dyn StdError + 'static)| (*e).source())
}

/// Classifies an upstream error for retries, walking its `source()` chain.
///
/// Returns `None` for errors that are local decisions or the client's, not upstream failures
/// ([`Overloaded`], [`RateLimited`], [`FaultAbort`], a request-level [`Elapsed`],
/// [`DownstreamBodyError`]): those are never retried.
///
/// - [`ConnectFailed`] or hyper-util's `legacy::Error::is_connect()` →
///   [`FailureKind::ConnectFailure`];
/// - our own `Elapsed { kind: PerTry }` (or hyper's `is_timeout()`) → [`FailureKind::Timeout`];
/// - an `h2::Error` carrying `REFUSED_STREAM` → [`FailureKind::RefusedStream`]. This crate cannot
///   name `h2::Error` (h2 is not a direct dependency and hyper 1 keeps `h2_reason()` private), so
///   the h2 error is recognised by its `Display` text, which h2 builds from the reason's fixed
///   description (`"stream error received: refused stream before processing any application
///   logic"`). With `h2` added to Cargo.toml this becomes a `downcast_ref::<h2::Error>()`;
/// - io `ConnectionReset`/`ConnectionAborted`/`BrokenPipe`/`UnexpectedEof`, hyper's
///   `is_incomplete_message()`/`is_canceled()`/`is_closed()`, [`IncompleteResponse`] →
///   [`FailureKind::Reset`];
/// - anything else → [`FailureKind::Other`].
pub fn classify(err: &BoxError) -> Option<FailureKind> {
    classify_dyn(&**err)
}

/// [`classify`] for a borrowed error.
pub fn classify_dyn(err: &(dyn StdError + 'static)) -> Option<FailureKind> {
    let mut reset = false;
    let mut timeout = false;
    let mut refused = false;
    for e in chain(err) {
        if e.is::<DownstreamBodyError>() {
            // NOTE: looked for before the errors it wraps (a cut-off body reads as an incomplete
            // message, which would otherwise be an upstream reset).
            return None;
        } else if e.is::<ConnectFailed>() {
            return Some(FailureKind::ConnectFailure);
        } else if let Some(e) = e.downcast_ref::<hyper_util::client::legacy::Error>() {
            if e.is_connect() {
                // NOTE: the connect error wraps io errors (refused, reset during TLS...), which
                // must not be read as a reset of a request: nothing was sent.
                return Some(FailureKind::ConnectFailure);
            }
        } else if let Some(e) = e.downcast_ref::<Elapsed>() {
            match e.kind {
                TimeoutKind::PerTry => timeout = true,
                TimeoutKind::Request => return None,
            }
        } else if e.is::<Overloaded>() || e.is::<RateLimited>() || e.is::<FaultAbort>() {
            return None;
        } else if e.is::<IncompleteResponse>() {
            reset = true;
        } else if let Some(e) = e.downcast_ref::<hyper::Error>() {
            if e.is_timeout() {
                timeout = true;
            } else if e.is_incomplete_message() || e.is_canceled() || e.is_closed() {
                reset = true;
            }
        } else if let Some(e) = e.downcast_ref::<std::io::Error>() {
            use std::io::ErrorKind::*;
            match e.kind() {
                ConnectionReset | ConnectionAborted | BrokenPipe | UnexpectedEof => reset = true,
                TimedOut => timeout = true,
                _ => {}
            }
            // NOTE: `io::Error::source()` skips a custom inner error, so look at it here (h2
            // errors are sometimes carried inside an io::Error).
            if e.get_ref().is_some_and(|inner| is_refused_stream(inner)) {
                refused = true;
            }
        } else if is_refused_stream(e) {
            refused = true;
        }
    }
    Some(if refused {
        FailureKind::RefusedStream
    } else if timeout {
        FailureKind::Timeout
    } else if reset {
        FailureKind::Reset
    } else {
        FailureKind::Other
    })
}

/// Returns true if the failure certainly happened before any byte of the request was sent on a
/// pooled connection, so that it may be retried once whatever the method (the retry layer's
/// transparent rule): hyper's `is_canceled()` (the request was never dispatched, which includes
/// hyper-util's retry-able "canceled" errors) anywhere in the chain.
///
/// hyper's `is_incomplete_message()` ("connection closed before message completed") is reported
/// separately by [`is_incomplete_message`]: on a reused HTTP/1 connection it is usually the
/// keep-alive race (the upstream closed the idle connection as the request went out), but hyper
/// cannot tell whether the upstream read the request, so the retry layer applies it to idempotent
/// requests only unless configured otherwise.
pub fn is_unsent(err: &(dyn StdError + 'static)) -> bool {
    chain(err).any(|e| {
        e.downcast_ref::<hyper::Error>()
            .is_some_and(|e| e.is_canceled())
    })
}

/// Returns true if the chain holds hyper's "connection closed before message completed" or an
/// [`IncompleteResponse`].
pub fn is_incomplete_message(err: &(dyn StdError + 'static)) -> bool {
    chain(err).any(|e| {
        e.is::<IncompleteResponse>()
            || e.downcast_ref::<hyper::Error>()
                .is_some_and(|e| e.is_incomplete_message())
    })
}

/// Recognises an `h2::Error` for a `REFUSED_STREAM` reset by its text (see [`classify`]).
fn is_refused_stream(e: &(dyn StdError + 'static)) -> bool {
    // NOTE: h2 formats `Reason::REFUSED_STREAM` with this fixed description (h2 0.4
    // `frame/reason.rs`); this only runs on the error path. A graceful GOAWAY (`NO_ERROR`) fails
    // just the streams past its last stream id, which the upstream did not process (RFC 9113,
    // section 6.8), and the ones opened after it, which were not sent: refused as well. Streams
    // it did take fail otherwise (a broken pipe if it closes before answering them), and a
    // GOAWAY with an error code, which fails every stream, is not read as a refusal.
    let text = e.to_string();
    text.contains("refused stream before processing any application logic")
        || text.starts_with("connection error received: not a result of an error")
}

impl fmt::Display for TimeoutKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            TimeoutKind::Request => "request",
            TimeoutKind::PerTry => "per-try",
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("stream error received: refused stream before processing any application logic")]
    struct FakeH2Refused;

    #[derive(Debug, thiserror::Error)]
    #[error("http2 error")]
    struct Wrap(#[source] BoxError);

    #[test]
    fn find_walks_the_chain() {
        let err: BoxError = Box::new(RequestFailed {
            attempts: 3,
            source: Box::new(Elapsed {
                kind: TimeoutKind::PerTry,
                after: Duration::from_secs(1),
            }),
        });
        let elapsed = find::<Elapsed>(&*err).unwrap();
        assert_eq!(elapsed.kind, TimeoutKind::PerTry);
        assert_eq!(attempts(&*err), 3);
        assert_eq!(classify(&err), Some(FailureKind::Timeout));
    }

    #[derive(Debug, thiserror::Error)]
    #[error("connection error received: not a result of an error")]
    struct FakeH2GracefulGoAway;

    #[derive(Debug, thiserror::Error)]
    #[error("connection error received: unspecific protocol error detected")]
    struct FakeH2GoAwayWithError;

    #[test]
    fn streams_a_graceful_goaway_fails_were_refused() {
        let err: BoxError = Box::new(Wrap(Box::new(FakeH2GracefulGoAway)));
        assert_eq!(classify(&err), Some(FailureKind::RefusedStream));
        let err: BoxError = Box::new(Wrap(Box::new(FakeH2GoAwayWithError)));
        assert_eq!(classify(&err), Some(FailureKind::Other));
    }

    #[test]
    fn a_failed_client_body_is_not_an_upstream_failure() {
        // A cut-off body is an unexpected EOF underneath, which alone would read as a reset.
        let eof = std::io::Error::from(std::io::ErrorKind::UnexpectedEof);
        let err: BoxError = Box::new(Wrap(Box::new(DownstreamBodyError(Box::new(eof)))));
        assert_eq!(classify(&err), None);
        assert!(is::<DownstreamBodyError>(&*err));
    }

    #[test]
    fn classify_local_and_io_errors() {
        let err: BoxError = Box::new(Overloaded {
            limit: "max_requests",
        });
        assert_eq!(classify(&err), None);
        let err: BoxError = Box::new(Elapsed {
            kind: TimeoutKind::Request,
            after: Duration::from_secs(1),
        });
        assert_eq!(classify(&err), None);
        let err: BoxError = Box::new(Wrap(Box::new(std::io::Error::from(
            std::io::ErrorKind::ConnectionReset,
        ))));
        assert_eq!(classify(&err), Some(FailureKind::Reset));
        let err: BoxError = Box::new(Wrap(Box::new(FakeH2Refused)));
        assert_eq!(classify(&err), Some(FailureKind::RefusedStream));
        let err: BoxError = "something else".into();
        assert_eq!(classify(&err), Some(FailureKind::Other));
    }
}
