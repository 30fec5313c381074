//! I/O helpers: a stream with bytes already read put back in front of it, byte counting, and
//! idle detection.

use bytes::{Buf, BytesMut};
use prometheus_client::metrics::counter::Counter;
use std::{
    io,
    pin::Pin,
    task::{Context, Poll},
};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

pin_project_lite::pin_project! {
    /// Replays `prefix` before reading from `io`; writes go straight to `io`.
    #[derive(Debug)]
    pub struct PrefixedIo<I> {
        prefix: BytesMut,
        #[pin]
        io: I,
    }
}

pin_project_lite::pin_project! {
    /// Counts the bytes read from and written to `io` as they pass.
    #[derive(Debug)]
    pub struct CountedIo<I> {
        #[pin]
        io: I,
        read: Counter,
        written: Counter,
        total_read: u64,
        total_written: u64,
    }
}

pin_project_lite::pin_project! {
    /// Marks `touched` whenever bytes move, so an idle check can tell a quiet connection.
    #[derive(Debug)]
    pub struct IdleIo<I> {
        #[pin]
        io: I,
        touched: std::sync::Arc<std::sync::atomic::AtomicBool>,
    }
}

/// Resolves once the stream behind `touched` has moved no byte for at least `idle` (and at most
/// twice that): a flag instead of a clock read keeps the data path free of syscalls.
pub async fn idle(touched: &std::sync::atomic::AtomicBool, idle: std::time::Duration) {
    use std::sync::atomic::Ordering;
    loop {
        tokio::time::sleep(idle).await;
        if !touched.swap(false, Ordering::Relaxed) {
            return;
        }
    }
}

// === impl IdleIo ===

impl<I> IdleIo<I> {
    /// Wraps `io`, setting `touched` on every read or write.
    pub fn new(io: I, touched: std::sync::Arc<std::sync::atomic::AtomicBool>) -> Self {
        Self { io, touched }
    }
}

impl<I: AsyncRead> AsyncRead for IdleIo<I> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.project();
        let res = this.io.poll_read(cx, buf);
        if res.is_ready() {
            this.touched
                .store(true, std::sync::atomic::Ordering::Relaxed);
        }
        res
    }
}

impl<I: AsyncWrite> AsyncWrite for IdleIo<I> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.project();
        let res = this.io.poll_write(cx, buf);
        if res.is_ready() {
            this.touched
                .store(true, std::sync::atomic::Ordering::Relaxed);
        }
        res
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.project().io.poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.project().io.poll_shutdown(cx)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.project();
        let res = this.io.poll_write_vectored(cx, bufs);
        if res.is_ready() {
            this.touched
                .store(true, std::sync::atomic::Ordering::Relaxed);
        }
        res
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }
}

// === impl PrefixedIo ===

impl<I> PrefixedIo<I> {
    /// Wraps `io`, to be read after `prefix`.
    pub fn new(prefix: BytesMut, io: I) -> Self {
        Self { prefix, io }
    }

    /// The wrapped stream.
    pub fn get_ref(&self) -> &I {
        &self.io
    }
}

impl<I: AsyncRead> AsyncRead for PrefixedIo<I> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.project();
        if !this.prefix.is_empty() {
            let n = this.prefix.len().min(buf.remaining());
            buf.put_slice(&this.prefix[..n]);
            this.prefix.advance(n);
            if this.prefix.is_empty() {
                // Replayed: free the buffer rather than keep it for the connection's life.
                *this.prefix = BytesMut::new();
            }
            return Poll::Ready(Ok(()));
        }
        this.io.poll_read(cx, buf)
    }
}

impl<I: AsyncWrite> AsyncWrite for PrefixedIo<I> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.project().io.poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.project().io.poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.project().io.poll_shutdown(cx)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        self.project().io.poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }
}

// === impl CountedIo ===

impl<I> CountedIo<I> {
    /// Wraps `io`, adding to `read` and `written` as bytes pass.
    pub fn new(io: I, read: Counter, written: Counter) -> Self {
        Self {
            io,
            read,
            written,
            total_read: 0,
            total_written: 0,
        }
    }

    /// Bytes read and written through this stream so far.
    pub fn totals(&self) -> (u64, u64) {
        (self.total_read, self.total_written)
    }
}

impl<I: AsyncRead> AsyncRead for CountedIo<I> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.project();
        let before = buf.filled().len();
        let res = this.io.poll_read(cx, buf);
        let n = (buf.filled().len() - before) as u64;
        this.read.inc_by(n);
        *this.total_read += n;
        res
    }
}

impl<I: AsyncWrite> AsyncWrite for CountedIo<I> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.project();
        let res = this.io.poll_write(cx, buf);
        if let Poll::Ready(Ok(n)) = res {
            this.written.inc_by(n as u64);
            *this.total_written += n as u64;
        }
        res
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.project().io.poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.project().io.poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn replays_prefix_then_reads_stream() {
        let (a, mut b) = tokio::io::duplex(64);
        b.write_all(b" world").await.unwrap();
        drop(b);
        let mut io = PrefixedIo::new(BytesMut::from(&b"hello"[..]), a);
        let mut out = String::new();
        io.read_to_string(&mut out).await.unwrap();
        assert_eq!(out, "hello world");
    }

    #[tokio::test(start_paused = true)]
    async fn idle_fires_only_after_a_quiet_period() {
        use std::sync::{atomic::AtomicBool, Arc};
        let touched = Arc::new(AtomicBool::new(true));
        let start = tokio::time::Instant::now();
        idle(&touched, std::time::Duration::from_secs(1)).await;
        // Touched once: the first period does not count, the second is quiet.
        assert_eq!(start.elapsed(), std::time::Duration::from_secs(2));
    }

    #[tokio::test]
    async fn counts_both_directions() {
        let (a, mut b) = tokio::io::duplex(64);
        let (read, written) = (Counter::default(), Counter::default());
        let mut io = CountedIo::new(a, read.clone(), written.clone());
        b.write_all(b"12345").await.unwrap();
        let mut buf = [0u8; 5];
        io.read_exact(&mut buf).await.unwrap();
        io.write_all(b"abc").await.unwrap();
        assert_eq!((read.get(), written.get()), (5, 3));
    }
}
