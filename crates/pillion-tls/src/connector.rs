//! A hyper-util connector that opens TCP and, for clusters with TLS, runs the client handshake.

use crate::{client::ClientTls, error::HandshakeFailure, TlsError};
use http::Uri;
use hyper_util::{
    client::legacy::connect::{Connected, Connection, HttpConnector},
    rt::TokioIo,
};
use std::{
    future::Future,
    io,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
};
use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    net::TcpStream,
};

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Connects like `HttpConnector`, then runs the cluster's TLS handshake when it has one.
///
/// TLS is decided by the cluster config, not the URI scheme (`http://` URIs are fine). A TCP
/// connect failure is `HttpConnector`'s error; a handshake failure is a [`TlsError`] (find it
/// under the errors that wrap it with [`crate::find_tls_error`]).
#[derive(Clone, Debug)]
pub struct TlsConnector {
    http: HttpConnector,
    tls: Option<Arc<ClientTls>>,
    /// The version whose ALPN the handshake offers (`None`: the TLS config's default).
    h2: Option<bool>,
}

/// A client connection: plaintext TCP, or TLS over TCP.
#[derive(Debug)]
pub enum MaybeTls {
    /// No TLS.
    Plain(TcpStream),
    /// TLS originated by Pillion.
    Tls(Box<tokio_rustls::client::TlsStream<TcpStream>>),
}

// === impl TlsConnector ===

impl TlsConnector {
    /// Wraps `http`, configured by the caller (nodelay, connect timeout); `tls: None` makes
    /// plaintext connections.
    pub fn new(mut http: HttpConnector, tls: Option<Arc<ClientTls>>) -> Self {
        // NOTE: TLS comes from the cluster, so the scheme must not be policed.
        http.enforce_http(false);
        Self {
            http,
            tls,
            h2: None,
        }
    }

    /// Offers the ALPN of HTTP/2 (`true`) or HTTP/1.1 in the handshake, for a cluster whose TLS
    /// speaks both ([`ClientTls::speaking`]).
    pub fn speaking(mut self, h2: bool) -> Self {
        self.h2 = Some(h2);
        self
    }

    /// The cluster's TLS, if any.
    pub fn tls(&self) -> Option<&Arc<ClientTls>> {
        self.tls.as_ref()
    }
}

impl tower::Service<Uri> for TlsConnector {
    type Response = TokioIo<MaybeTls>;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        tower::Service::<Uri>::poll_ready(&mut self.http, cx).map_err(Into::into)
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        let connecting = tower::Service::<Uri>::call(&mut self.http, uri);
        let (tls, h2) = (self.tls.clone(), self.h2);
        Box::pin(async move {
            let tcp = connecting.await?.into_inner();
            let Some(tls) = tls else {
                return Ok(TokioIo::new(MaybeTls::Plain(tcp)));
            };
            let ip = tcp
                .peer_addr()
                .map_err(|source| TlsError::Handshake {
                    reason: HandshakeFailure::Io,
                    source,
                })?
                .ip();
            let stream = tls.connect_as(tcp, ip, h2).await?;
            Ok(TokioIo::new(MaybeTls::Tls(Box::new(stream))))
        })
    }
}

// === impl MaybeTls ===

impl MaybeTls {
    /// Whether ALPN selected `h2`.
    pub fn is_h2(&self) -> bool {
        match self {
            Self::Plain(_) => false,
            Self::Tls(s) => s.get_ref().1.alpn_protocol() == Some(b"h2"),
        }
    }
}

impl Connection for MaybeTls {
    fn connected(&self) -> Connected {
        match self {
            Self::Plain(tcp) => tcp.connected(),
            Self::Tls(s) if self.is_h2() => s.get_ref().0.connected().negotiated_h2(),
            Self::Tls(s) => s.get_ref().0.connected(),
        }
    }
}

impl AsyncRead for MaybeTls {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Self::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Self::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for MaybeTls {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Self::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Self::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Self::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            Self::Tls(s) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            Self::Plain(s) => s.is_write_vectored(),
            Self::Tls(s) => s.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Self::Plain(s) => Pin::new(s).poll_flush(cx),
            Self::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Self::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Self::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}
