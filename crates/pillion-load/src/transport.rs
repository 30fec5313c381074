//! Connections that carry the load: one hyper client connection per TCP connection, no pool.

mod frames;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context;
use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{HeaderMap, Method, Request, Uri, Version};
use http_body_util::{BodyExt, Full};
use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpStream;

use crate::config::{host_authority, LoadConfig, Protocol};
use crate::report::{ErrorKind, Failure};
use frames::{Seen, Watched};

/// A response, read to its end.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Exchange {
    pub(crate) status: u16,
    pub(crate) body_bytes: u64,
}

/// Opens connections to the target. The worker is generic over it so that tests can drive the
/// scheduling with a scripted transport under paused time.
pub(crate) trait Connector: Send + Sync + 'static {
    type Conn: Connection;

    fn connect(&self) -> impl Future<Output = anyhow::Result<Self::Conn>> + Send;
}

/// One open connection.
pub(crate) trait Connection: Send + 'static {
    /// Whether requests run concurrently on it (HTTP/2), so a lost request does not spoil it.
    fn multiplexed(&self) -> bool;

    /// Whether the peer or an error has closed it, or it takes no new requests (HTTP/2
    /// GOAWAY).
    fn is_closed(&self) -> bool;

    /// The most concurrent requests the server allows on it (HTTP/2
    /// SETTINGS_MAX_CONCURRENT_STREAMS), if it set a limit.
    fn max_streams(&self) -> Option<usize> {
        None
    }

    /// Waits until it can take a request; an error means it is no longer usable.
    fn ready(&mut self) -> impl Future<Output = anyhow::Result<()>> + Send;

    /// Sends one request; the future completes when the whole response body has been read.
    fn send(&mut self) -> impl Future<Output = Result<Exchange, Failure>> + Send + 'static;
}

/// The request every connection sends, built once.
#[derive(Debug, Clone)]
pub(crate) struct RequestTemplate {
    method: Method,
    uri: Uri,
    version: Version,
    headers: HeaderMap,
    body: Bytes,
}

/// Connects to one resolved address with TCP_NODELAY and an HTTP/1.1 or h2c handshake.
#[derive(Debug)]
pub(crate) struct HyperConnector {
    addr: SocketAddr,
    protocol: Protocol,
    template: RequestTemplate,
}

/// An HTTP/1.1 or HTTP/2 client connection; its driver runs on its own task.
pub(crate) struct HyperConnection {
    sender: Sender,
    template: RequestTemplate,
    /// What an HTTP/2 server's frames said.
    seen: Option<Arc<Seen>>,
}

enum Sender {
    Http1(http1::SendRequest<Full<Bytes>>),
    Http2(http2::SendRequest<Full<Bytes>>),
}

// === impl RequestTemplate ===

impl RequestTemplate {
    pub(crate) fn new(config: &LoadConfig) -> Self {
        let target = &config.target;
        let mut headers = HeaderMap::with_capacity(config.headers.len() + 2);
        let mut authority = target.authority().clone();
        for (name, value) in &config.headers {
            if config.protocol == Protocol::Http2 && name == header::HOST {
                // HTTP/2 carries the host in `:authority`; a `host` header beside it that says
                // otherwise makes the request malformed (RFC 9113, section 8.3.1).
                // NOTE: `validate` has checked that it parses.
                if let Ok(host) = host_authority(value) {
                    authority = host;
                }
                continue;
            }
            if config.protocol == Protocol::Http2 && is_connection_specific(name) {
                // HTTP/2 forbids these (RFC 9113 §8.2.2); h2 would refuse every request.
                continue;
            }
            headers.append(name.clone(), value.clone());
        }
        let (uri, version) = match config.protocol {
            Protocol::Http1 => {
                // HTTP/1.1 to an origin: origin-form request target and a `host` header.
                if !headers.contains_key(header::HOST) {
                    if let Ok(host) = HeaderValue::from_str(target.authority().as_str()) {
                        headers.insert(header::HOST, host);
                    }
                }
                let uri = Uri::builder()
                    .path_and_query(target.path_and_query())
                    .build()
                    .unwrap_or_else(|_| target.uri().clone());
                (uri, Version::HTTP_11)
            }
            // HTTP/2 takes `:scheme` and `:authority` from an absolute URI.
            Protocol::Http2 => {
                let uri = Uri::builder()
                    .scheme(http::uri::Scheme::HTTP)
                    .authority(authority)
                    .path_and_query(target.path_and_query())
                    .build()
                    .unwrap_or_else(|_| target.uri().clone());
                (uri, Version::HTTP_2)
            }
        };
        if config.body.is_empty()
            && [Method::POST, Method::PUT, Method::PATCH].contains(&config.method)
            && !headers.contains_key(header::CONTENT_LENGTH)
        {
            // A method that defines a body says that it is empty, as curl does; hyper sends no
            // length for an empty body.
            headers.insert(header::CONTENT_LENGTH, HeaderValue::from_static("0"));
        }
        Self {
            method: config.method.clone(),
            uri,
            version,
            headers,
            body: config.body.clone(),
        }
    }

    /// A fresh request; the body is shared, not copied.
    pub(crate) fn build(&self) -> Request<Full<Bytes>> {
        let mut req = Request::new(Full::new(self.body.clone()));
        *req.method_mut() = self.method.clone();
        *req.uri_mut() = self.uri.clone();
        *req.version_mut() = self.version;
        *req.headers_mut() = self.headers.clone();
        req
    }
}

fn is_connection_specific(name: &header::HeaderName) -> bool {
    name == header::CONNECTION
        || name == header::TRANSFER_ENCODING
        || name == header::UPGRADE
        || name == "keep-alive"
        || name == "proxy-connection"
}

// === impl HyperConnector ===

impl HyperConnector {
    pub(crate) fn new(addr: SocketAddr, config: &LoadConfig) -> Self {
        Self {
            addr,
            protocol: config.protocol,
            template: RequestTemplate::new(config),
        }
    }
}

impl Connector for HyperConnector {
    type Conn = HyperConnection;

    async fn connect(&self) -> anyhow::Result<HyperConnection> {
        let stream = TcpStream::connect(self.addr)
            .await
            .with_context(|| format!("cannot connect to {}", self.addr))?;
        stream.set_nodelay(true).context("cannot set TCP_NODELAY")?;
        let mut seen = None;
        let sender = match self.protocol {
            Protocol::Http1 => {
                let (sender, conn) = http1::handshake(TokioIo::new(stream))
                    .await
                    .context("HTTP/1.1 handshake failed")?;
                // Errors surface through the requests; the driver ends with the sender.
                tokio::spawn(async move {
                    if let Err(error) = conn.await {
                        tracing::debug!(%error, "connection ended");
                    }
                });
                Sender::Http1(sender)
            }
            Protocol::Http2 => {
                let (io, frames) = Watched::new(stream);
                let (sender, conn) = http2::Builder::new(TokioExecutor::new())
                    // Larger windows than the 64 KiB default, so big bodies are not held back
                    // by flow control on a fast link.
                    .initial_stream_window_size(1 << 20)
                    .initial_connection_window_size(16 << 20)
                    .handshake(TokioIo::new(io))
                    .await
                    .context("HTTP/2 handshake failed")?;
                tokio::spawn(async move {
                    if let Err(error) = conn.await {
                        tracing::debug!(%error, "connection ended");
                    }
                });
                // The server's SETTINGS come first (or never, from a server that is not
                // HTTP/2, which says so in other ways): with them, its stream limit is known
                // before a request goes out. The caller's connect timeout bounds the wait.
                frames.settled().await;
                seen = Some(frames);
                Sender::Http2(sender)
            }
        };
        Ok(HyperConnection {
            sender,
            template: self.template.clone(),
            seen,
        })
    }
}

// === impl HyperConnection ===

impl Connection for HyperConnection {
    fn multiplexed(&self) -> bool {
        matches!(self.sender, Sender::Http2(_))
    }

    fn is_closed(&self) -> bool {
        match &self.sender {
            Sender::Http1(s) => s.is_closed(),
            Sender::Http2(s) => s.is_closed() || self.seen.as_ref().is_some_and(|s| s.goaway()),
        }
    }

    fn max_streams(&self) -> Option<usize> {
        self.seen.as_ref().and_then(|s| s.max_streams())
    }

    async fn ready(&mut self) -> anyhow::Result<()> {
        match &mut self.sender {
            Sender::Http1(s) => s.ready().await?,
            Sender::Http2(s) => s.ready().await?,
        }
        Ok(())
    }

    fn send(&mut self) -> impl Future<Output = Result<Exchange, Failure>> + Send + 'static {
        let req = self.template.build();
        let response = match &mut self.sender {
            Sender::Http1(s) => futures_util::future::Either::Left(s.send_request(req)),
            Sender::Http2(s) => futures_util::future::Either::Right(s.send_request(req)),
        };
        async move {
            let response = response.await.map_err(|error| {
                let mut failure = Failure::with_error(ErrorKind::Other, &error);
                failure.unprocessed = error.is_canceled()
                    || failure
                        .message
                        .as_deref()
                        .is_some_and(is_unprocessed_stream);
                failure
            })?;
            let status = response.status().as_u16();
            let mut body = response.into_body();
            let mut body_bytes = 0;
            while let Some(frame) = body.frame().await {
                let frame = frame.map_err(|error| {
                    let mut failure = Failure::with_error(ErrorKind::Other, &error);
                    failure.message = failure.message.map(|m| format!("response body: {m}"));
                    failure
                })?;
                if let Some(data) = frame.data_ref() {
                    body_bytes += data.len() as u64;
                }
            }
            Ok(Exchange { status, body_bytes })
        }
    }
}

/// Whether an HTTP/2 stream failed in a way that says the server did not process it: reset
/// with REFUSED_STREAM, or past the last stream id of a graceful GOAWAY (NO_ERROR) (RFC 9113,
/// sections 8.7 and 6.8).
///
/// NOTE: read from the message: hyper does not expose the `h2::Error` it wraps, and h2 builds
/// these messages from fixed descriptions of the reasons (h2 0.4 `frame/reason.rs`), as the
/// proxy's retry classification does (`pillion-layers`, `error.rs`). A GOAWAY with an error
/// code fails every stream and is not read as a refusal.
fn is_unprocessed_stream(message: &str) -> bool {
    message
        .contains("stream error received: refused stream before processing any application logic")
        || message.contains("connection error received: not a result of an error")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Target;

    #[test]
    fn http1_requests_are_origin_form_with_a_host() {
        let mut config = LoadConfig::new(Target::parse("http://localhost:8080/x?y=1").unwrap());
        config.method = Method::POST;
        config.body = Bytes::from_static(b"abc");
        config
            .headers
            .append("x-test", HeaderValue::from_static("1"));
        config
            .headers
            .append("x-test", HeaderValue::from_static("2"));
        let req = RequestTemplate::new(&config).build();
        assert_eq!(req.method(), Method::POST);
        let values: Vec<_> = req.headers().get_all("x-test").iter().collect();
        assert_eq!(values, ["1", "2"]);
        assert_eq!(req.uri(), "/x?y=1");
        assert_eq!(req.version(), Version::HTTP_11);
        assert_eq!(req.headers()["host"], "localhost:8080");
        assert_eq!(req.headers()["x-test"], "1");
    }

    #[test]
    fn a_host_header_overrides_the_url() {
        let mut config = LoadConfig::new(Target::parse("http://127.0.0.1:8080/").unwrap());
        config
            .headers
            .insert(header::HOST, HeaderValue::from_static("svc.local"));
        let req = RequestTemplate::new(&config).build();
        assert_eq!(req.headers()["host"], "svc.local");
        assert_eq!(req.headers().get_all("host").iter().count(), 1);
    }

    #[test]
    fn http2_requests_are_absolute_without_connection_headers() {
        let mut config = LoadConfig::new(Target::parse("http://localhost:8080/x").unwrap());
        config.protocol = Protocol::Http2;
        config
            .headers
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
        config
            .headers
            .insert("x-test", HeaderValue::from_static("1"));
        let req = RequestTemplate::new(&config).build();
        assert_eq!(req.uri(), "http://localhost:8080/x");
        assert_eq!(req.version(), Version::HTTP_2);
        assert!(req.headers().get("host").is_none());
        assert!(req.headers().get("connection").is_none());
        assert_eq!(req.headers()["x-test"], "1");
    }

    #[test]
    fn a_host_header_is_the_http2_authority() {
        let mut config = LoadConfig::new(Target::parse("http://127.0.0.1:8080/x?y").unwrap());
        config.protocol = Protocol::Http2;
        config
            .headers
            .insert(header::HOST, HeaderValue::from_static("svc.local:81"));
        config.validate().unwrap();
        let req = RequestTemplate::new(&config).build();
        assert_eq!(req.uri(), "http://svc.local:81/x?y");
        assert!(req.headers().get("host").is_none());
    }

    #[test]
    fn empty_bodies_of_methods_with_a_body_have_a_length() {
        let target = Target::parse("http://h/").unwrap();
        for protocol in [Protocol::Http1, Protocol::Http2] {
            for (method, length) in [
                (Method::POST, Some("0")),
                (Method::PUT, Some("0")),
                (Method::PATCH, Some("0")),
                (Method::GET, None),
                (Method::DELETE, None),
            ] {
                let mut config = LoadConfig::new(target.clone());
                config.protocol = protocol;
                config.method = method.clone();
                let req = RequestTemplate::new(&config).build();
                let got = req.headers().get(header::CONTENT_LENGTH);
                assert_eq!(
                    got.map(|v| v.to_str().unwrap()),
                    length,
                    "{method} {protocol:?}"
                );
            }
        }
    }

    #[test]
    fn unprocessed_streams_are_recognised() {
        assert!(is_unprocessed_stream(
            "http2 error: stream error received: refused stream before processing any application logic"
        ));
        assert!(is_unprocessed_stream(
            "http2 error: connection error received: not a result of an error"
        ));
        assert!(!is_unprocessed_stream(
            "http2 error: connection error received: protocol error"
        ));
        assert!(!is_unprocessed_stream(
            "connection closed before message completed"
        ));
    }
}
