//! Upstream connections: a connector wrapper that counts connections opened, failed and active,
//! and enforces the cluster's `max_connections` and `max_pending` limits (failing fast).

use hyper::rt::{Read, ReadBufCursor, Write};
use hyper_util::client::legacy::connect::{Connected, Connection};
use hyper_util::rt::TokioIo;
use pillion_layers::{
    limit::{Counter, Permit},
    BoxError,
};
use pillion_telemetry::UpstreamStats;
use std::{
    future::Future,
    io,
    pin::Pin,
    task::{Context, Poll},
};

/// Wraps a connector `C` so every connection it makes is counted.
#[derive(Clone, Debug)]
pub struct Counted<C> {
    inner: C,
    stats: UpstreamStats,
    /// Connections open or being opened.
    max_connections: Counter,
    /// Connections being opened: the requests waiting for one.
    max_pending: Counter,
}

/// A connection whose end decrements the active gauge and frees its `max_connections` slot.
#[derive(Debug)]
pub struct CountedConn<T> {
    io: T,
    stats: UpstreamStats,
    _slot: Permit,
}

// === impl Counted ===

impl<C> Counted<C> {
    /// Counts the connections `inner` makes into `stats`, within the two limits.
    pub fn new(
        inner: C,
        stats: UpstreamStats,
        max_connections: Counter,
        max_pending: Counter,
    ) -> Self {
        Self {
            inner,
            stats,
            max_connections,
            max_pending,
        }
    }
}

impl<C> tower::Service<http::Uri> for Counted<C>
where
    C: tower::Service<http::Uri>,
    C::Future: Send + 'static,
    C::Error: Into<BoxError>,
{
    type Response = CountedConn<C::Response>;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, uri: http::Uri) -> Self::Future {
        // NOTE: boxed, but only once per new connection, never per request.
        let permits = self.max_connections.try_acquire().and_then(|slot| {
            self.max_pending
                .try_acquire()
                .map(|pending| (slot, pending))
        });
        let (slot, pending) = match permits {
            Ok(p) => p,
            Err(overloaded) => return Box::pin(async move { Err(overloaded.into()) }),
        };
        let connecting = self.inner.call(uri);
        let stats = self.stats.clone();
        Box::pin(async move {
            let result = connecting.await;
            drop(pending);
            match result {
                Ok(io) => {
                    stats.cx_opened.inc();
                    stats.cx_active.inc();
                    Ok(CountedConn {
                        io,
                        stats,
                        _slot: slot,
                    })
                }
                Err(e) => {
                    stats.cx_failed.inc();
                    Err(e.into())
                }
            }
        })
    }
}

// === impl CountedConn ===

impl<T> Drop for CountedConn<T> {
    fn drop(&mut self) {
        self.stats.cx_active.dec();
    }
}

impl<T: Connection> Connection for CountedConn<T> {
    fn connected(&self) -> Connected {
        self.io.connected()
    }
}

impl<T: Read + Unpin> Read for CountedConn<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: ReadBufCursor<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_read(cx, buf)
    }
}

impl<T: Write + Unpin> Write for CountedConn<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write_vectored(cx, bufs)
    }
}

/// The tokio side of a counted connection, for the proxy's own HTTP/1.1 client.
impl<T: tokio::io::AsyncRead + Unpin> tokio::io::AsyncRead for CountedConn<TokioIo<T>> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(self.get_mut().io.inner_mut()).poll_read(cx, buf)
    }
}

impl<T: tokio::io::AsyncWrite + Unpin> tokio::io::AsyncWrite for CountedConn<TokioIo<T>> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(self.get_mut().io.inner_mut()).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(self.get_mut().io.inner_mut()).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(self.get_mut().io.inner_mut()).poll_shutdown(cx)
    }
}
