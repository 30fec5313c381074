//! HTTP/1.1 and HTTP/2 (h2c prior knowledge) clients over a single real TCP connection each.

use std::convert::Infallible;
use std::net::SocketAddr;

use bytes::Bytes;
use futures_util::Stream;
use http::header::HOST;
use http::{HeaderMap, HeaderValue, Request, Response, StatusCode, Uri, Version};
use http_body::Frame;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Empty, Full, StreamBody};
use hyper::body::Incoming;
use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpStream;
use tokio::task::JoinHandle;

use crate::echo::EchoSeen;
use crate::within;

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The request and response body type used by the tests' clients and in-process upstreams.
pub type Body = BoxBody<Bytes, BoxError>;

/// An empty body.
pub fn empty() -> Body {
    Empty::new().map_err(|e: Infallible| match e {}).boxed()
}

/// A body of the given bytes.
pub fn full(bytes: impl Into<Bytes>) -> Body {
    Full::new(bytes.into())
        .map_err(|e: Infallible| match e {})
        .boxed()
}

/// A body streamed frame by frame (data and/or trailers).
pub fn stream_body<S>(frames: S) -> Body
where
    S: Stream<Item = Result<Frame<Bytes>, BoxError>> + Send + Sync + 'static,
{
    BodyExt::boxed(StreamBody::new(frames))
}

/// A request builder for `url` (`http://host[:port]/path`); the host becomes the Host header
/// (HTTP/1.1) or `:authority` (HTTP/2).
pub fn req(method: &str, url: &str) -> http::request::Builder {
    Request::builder().method(method).uri(url)
}

/// A GET request with an empty body.
pub fn get(url: &str) -> Request<Body> {
    req("GET", url).body(empty()).expect("valid request")
}

/// A response read to its end.
#[derive(Debug)]
pub struct Reply {
    pub status: StatusCode,
    pub version: Version,
    pub headers: HeaderMap,
    pub body: Bytes,
    pub trailers: Option<HeaderMap>,
}

// === impl Reply ===

impl Reply {
    /// Reads `resp` to the end, keeping its trailers.
    pub async fn read(resp: Response<Incoming>) -> Reply {
        let (parts, body) = resp.into_parts();
        let collected = within("reading the response body", body.collect())
            .await
            .expect("response body");
        let trailers = collected.trailers().cloned();
        Reply {
            status: parts.status,
            version: parts.version,
            headers: parts.headers,
            body: collected.to_bytes(),
            trailers,
        }
    }

    /// A response header as text.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .get(name)
            .map(|v| v.to_str().expect("ascii header"))
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// The request as the `pillion echo` upstream saw it (its JSON reply).
    pub fn echo(&self) -> EchoSeen {
        assert_eq!(self.status, StatusCode::OK, "echo reply: {}", self.text());
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("echo JSON ({e}): {}", self.text()))
    }
}

/// An HTTP/1.1 client connection.
pub struct H1Client {
    sender: http1::SendRequest<Body>,
    /// The connection task; it ends when the connection closes.
    pub conn: JoinHandle<hyper::Result<()>>,
}

// === impl H1Client ===

impl H1Client {
    pub async fn connect(addr: SocketAddr) -> Self {
        let tcp = within("connecting", TcpStream::connect(addr))
            .await
            .unwrap_or_else(|e| panic!("connect {addr}: {e}"));
        Self::handshake(tcp).await
    }

    /// Speaks HTTP/1.1 over an already connected stream.
    pub async fn handshake(tcp: TcpStream) -> Self {
        let (sender, conn) = http1::handshake(TokioIo::new(tcp))
            .await
            .expect("http1 handshake");
        let conn = tokio::spawn(conn.with_upgrades());
        Self { sender, conn }
    }

    /// Sends `req` (absolute URLs are sent in origin form with a Host header).
    pub async fn try_send(&mut self, mut req: Request<Body>) -> hyper::Result<Response<Incoming>> {
        if let Some(authority) = req.uri().authority().cloned() {
            if !req.headers().contains_key(HOST) {
                let host = HeaderValue::from_str(authority.as_str()).expect("host value");
                req.headers_mut().insert(HOST, host);
            }
            let path = req
                .uri()
                .path_and_query()
                .map_or("/", |p| p.as_str())
                .to_string();
            *req.uri_mut() = path.parse::<Uri>().expect("origin-form URI");
        }
        within("waiting for the connection", self.sender.ready()).await?;
        within("sending an HTTP/1.1 request", self.sender.send_request(req)).await
    }

    /// Sends `req` and returns the response head (body unread).
    pub async fn send(&mut self, req: Request<Body>) -> Response<Incoming> {
        self.try_send(req).await.expect("HTTP/1.1 request")
    }

    /// Sends `req` and reads the whole response.
    pub async fn request(&mut self, req: Request<Body>) -> Reply {
        let resp = self.send(req).await;
        Reply::read(resp).await
    }

    /// GET `url` and read the whole response.
    pub async fn get(&mut self, url: &str) -> Reply {
        self.request(get(url)).await
    }
}

/// An HTTP/2 client connection with prior knowledge (h2c).
pub struct H2Client {
    sender: http2::SendRequest<Body>,
    /// The connection task; it ends when the server closes the connection (e.g. after GOAWAY).
    pub conn: JoinHandle<hyper::Result<()>>,
}

// === impl H2Client ===

impl H2Client {
    pub async fn connect(addr: SocketAddr) -> Self {
        let tcp = within("connecting", TcpStream::connect(addr))
            .await
            .unwrap_or_else(|e| panic!("connect {addr}: {e}"));
        let (sender, conn) = http2::handshake(TokioExecutor::new(), TokioIo::new(tcp))
            .await
            .expect("h2 handshake");
        let conn = tokio::spawn(conn);
        Self { sender, conn }
    }

    /// Sends `req` on a new stream (may be called concurrently through clones of the client).
    pub async fn try_send(&self, mut req: Request<Body>) -> hyper::Result<Response<Incoming>> {
        *req.version_mut() = Version::HTTP_2;
        let mut sender = self.sender.clone();
        within("waiting for the connection", sender.ready()).await?;
        within("sending an HTTP/2 request", sender.send_request(req)).await
    }

    pub async fn send(&self, req: Request<Body>) -> Response<Incoming> {
        self.try_send(req).await.expect("HTTP/2 request")
    }

    pub async fn request(&self, req: Request<Body>) -> Reply {
        let resp = self.send(req).await;
        Reply::read(resp).await
    }

    pub async fn get(&self, url: &str) -> Reply {
        self.request(get(url)).await
    }

    /// A handle for sending more requests on the same connection.
    pub fn sender(&self) -> http2::SendRequest<Body> {
        self.sender.clone()
    }
}
