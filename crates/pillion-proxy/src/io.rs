//! I/O helpers: a stream with bytes already read put back in front of it, byte counting, and
//! what a downstream connection is doing (idle, or reading a request head).

use bytes::{Buf, BytesMut};
use prometheus_client::metrics::counter::Counter;
use std::{
    io,
    pin::Pin,
    sync::{
        atomic::{AtomicBool, AtomicU8, Ordering},
        Arc,
    },
    task::{Context, Poll},
};
use tokio::{
    io::{AsyncRead, AsyncWrite, Interest, ReadBuf},
    net::TcpStream,
};

pin_project_lite::pin_project! {
    /// Replays `prefix` before reading from `io`; writes go straight to `io`.
    #[derive(Debug)]
    pub struct PrefixedIo<I> {
        prefix: BytesMut,
        #[pin]
        io: I,
    }
}

/// A TCP stream whose vectored writes are `sendmsg` calls.
///
/// NOTE: tokio writes vectors with `writev`, which goes through the file layer (position lock,
/// `rw_verify_area`, file permission hooks) before it reaches the socket; `sendmsg` goes to the
/// socket directly. hyper writes every response head and body as one vector, so this is one
/// system call per response made cheaper in the kernel.
#[derive(Debug)]
pub struct TcpIo(TcpStream);

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
    /// A downstream connection's stream, reporting to its [`Activity`] as bytes move.
    #[derive(Debug)]
    pub struct IdleIo<I> {
        #[pin]
        io: I,
        activity: Arc<Activity>,
    }
}

/// What a downstream connection is doing: whether bytes moved lately (for the idle timeout) and,
/// on HTTP/1, whether a request head is being read (for the head timeout).
///
/// NOTE: flags rather than clock reads or timers, so the data path pays two relaxed atomics per
/// read. A head that arrives whole in one read, the common case, never arms a timer.
#[derive(Debug)]
pub struct Activity {
    touched: AtomicBool,
    phase: AtomicU8,
    /// Whether the request under way has a body not yet read to its end.
    body_open: AtomicBool,
}

/// Between requests: no byte of the next one has come.
const WAITING: u8 = 0;
/// Bytes of a request head have come; it has not been dispatched yet.
const HEAD: u8 = 1;
/// A request is dispatched and its response not finished; bytes read are its body.
const BUSY: u8 = 2;
/// The head took too long: the next read answers 408 and ends the stream.
const CUT: u8 = 3;
/// Cut, and the 408 written.
const CLOSED: u8 = 4;
/// A response ended before its request's body was read to the end (an app that answers an
/// upload early): bytes read are the rest of that body, drained by hyper's server, not a head.
/// The head timeout does not run until the next request starts; the idle timeout does.
const DRAIN: u8 = 5;

/// The answer to a client whose request head did not arrive in time.
const REQUEST_TIMEOUT: &[u8] =
    b"HTTP/1.1 408 Request Timeout\r\nconnection: close\r\ncontent-length: 0\r\n\r\n";

/// Ends a request's [`Activity::request_started`] when dropped (with its response body).
#[derive(Debug)]
pub struct RequestGuard(Arc<Activity>);

/// Told by a request body when it has been read to its end (see [`Activity::request_started`]),
/// and dropped with it: a body dropped unread is hyper's to finish (it reads what is left once
/// and keeps the connection, or closes it), so either way what comes next is a head.
#[derive(Debug)]
pub struct BodyEnd(Arc<Activity>);

/// Resolves once the stream behind `activity` has moved no byte for at least `idle` (and at most
/// twice that): a flag instead of a clock read keeps the data path free of syscalls.
pub async fn idle(activity: &Activity, idle: std::time::Duration) {
    loop {
        tokio::time::sleep(idle).await;
        if !activity.touched.swap(false, Ordering::Relaxed) {
            return;
        }
    }
}

// === impl Activity ===

impl Activity {
    /// A new connection: touched, waiting for its first request.
    pub fn new() -> Arc<Self> {
        Arc::new(Self {
            touched: AtomicBool::new(true),
            phase: AtomicU8::new(WAITING),
            body_open: AtomicBool::new(false),
        })
    }

    /// A request head has been read whole and dispatched; the returned guard ends the request.
    /// With a body, its [`BodyEnd`] (from [`Activity::body_end`]) must be told when the body has
    /// been read whole: a response that ends before then leaves the connection draining it.
    pub fn request_started(self: &Arc<Self>, has_body: bool) -> RequestGuard {
        self.body_open.store(has_body, Ordering::Relaxed);
        self.phase.store(BUSY, Ordering::Relaxed);
        RequestGuard(self.clone())
    }

    /// The handle a request body tells its end through.
    pub fn body_end(self: &Arc<Self>) -> BodyEnd {
        BodyEnd(self.clone())
    }

    /// Whether part of a request head has come and the head is not complete yet.
    pub fn reading_head(&self) -> bool {
        self.phase.load(Ordering::Relaxed) == HEAD
    }

    /// A response ended with bytes of the next request already read (pipelined): its head is
    /// being read from now on, as if those bytes had just come.
    pub fn head_pending(&self) {
        let _ = self
            .phase
            .compare_exchange(WAITING, HEAD, Ordering::Relaxed, Ordering::Relaxed);
    }

    /// The head timeout fired: the stream's next read answers 408 and then reports its end.
    pub fn cut(&self) {
        self.phase.store(CUT, Ordering::Relaxed);
    }

    fn read(&self, n: usize) {
        self.touched.store(true, Ordering::Relaxed);
        // NOTE: bytes after the response, or before the first request, start a head. Bytes of a
        // pipelined head read while the request before it is busy start no timer here: the own
        // HTTP/1 server calls `head_pending` when that response ends. Behind hyper's server (a
        // connection handed over), the idle timeout bounds a client that stops there.
        if n > 0 && self.phase.load(Ordering::Relaxed) == WAITING {
            self.phase.store(HEAD, Ordering::Relaxed);
        }
    }
}

impl Drop for RequestGuard {
    fn drop(&mut self) {
        let a = &self.0;
        let next = if a.body_open.load(Ordering::Relaxed) {
            DRAIN
        } else {
            WAITING
        };
        let _ = a
            .phase
            .compare_exchange(BUSY, next, Ordering::Relaxed, Ordering::Relaxed);
    }
}

// === impl BodyEnd ===

impl BodyEnd {
    /// The request's body has been read to its end: if its response ended first, the
    /// connection waits for the next head again.
    pub fn ended(&self) {
        let a = &self.0;
        if a.body_open.swap(false, Ordering::Relaxed) {
            let _ = a
                .phase
                .compare_exchange(DRAIN, WAITING, Ordering::Relaxed, Ordering::Relaxed);
        }
    }
}

impl Drop for BodyEnd {
    fn drop(&mut self) {
        self.ended();
    }
}

// === impl IdleIo ===

impl<I> IdleIo<I> {
    /// Wraps `io`, reporting reads and writes to `activity`.
    pub fn new(io: I, activity: Arc<Activity>) -> Self {
        Self { io, activity }
    }
}

impl<I: AsyncRead + AsyncWrite> AsyncRead for IdleIo<I> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let mut this = self.project();
        match this.activity.phase.load(Ordering::Relaxed) {
            CUT => {
                // Best effort: if the socket cannot take the whole answer now, the client gets
                // the close alone.
                this.activity.phase.store(CLOSED, Ordering::Relaxed);
                if let Poll::Ready(Ok(n)) = this.io.as_mut().poll_write(cx, REQUEST_TIMEOUT) {
                    if n == REQUEST_TIMEOUT.len() {
                        let _ = this.io.as_mut().poll_flush(cx);
                    }
                }
                return Poll::Ready(Ok(()));
            }
            CLOSED => return Poll::Ready(Ok(())),
            _ => {}
        }
        let before = buf.filled().len();
        let res = this.io.poll_read(cx, buf);
        if res.is_ready() {
            this.activity.read(buf.filled().len() - before);
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
            this.activity.touched.store(true, Ordering::Relaxed);
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
            this.activity.touched.store(true, Ordering::Relaxed);
        }
        res
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }
}

// === impl TcpIo ===

impl TcpIo {
    pub fn new(stream: TcpStream) -> Self {
        Self(stream)
    }
}

impl AsyncRead for TcpIo {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl AsyncWrite for TcpIo {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let stream = &self.0;
        loop {
            std::task::ready!(stream.poll_write_ready(cx))?;
            let sent = stream.try_io(Interest::WRITABLE, || {
                socket2::SockRef::from(stream).send_vectored_with_flags(bufs, libc::MSG_NOSIGNAL)
            });
            match sent {
                // Readiness was stale; `try_io` cleared it, so the next poll waits.
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                res => return Poll::Ready(res),
            }
        }
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
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
        let activity = Activity::new();
        let start = tokio::time::Instant::now();
        idle(&activity, std::time::Duration::from_secs(1)).await;
        // Touched once: the first period does not count, the second is quiet.
        assert_eq!(start.elapsed(), std::time::Duration::from_secs(2));
    }

    #[tokio::test]
    async fn a_head_is_read_from_its_first_byte_until_dispatched() {
        let (a, mut b) = tokio::io::duplex(256);
        let activity = Activity::new();
        let mut io = IdleIo::new(a, activity.clone());
        let mut buf = [0u8; 64];
        assert!(!activity.reading_head(), "no byte yet");

        b.write_all(b"GET / HTTP/1.1\r\n").await.unwrap();
        let _ = io.read(&mut buf).await.unwrap();
        assert!(activity.reading_head(), "part of a head");

        let guard = activity.request_started(true);
        assert!(!activity.reading_head());
        b.write_all(b"body bytes").await.unwrap();
        let _ = io.read(&mut buf).await.unwrap();
        assert!(!activity.reading_head(), "a body is not a head");

        activity.body_end().ended();
        drop(guard);
        assert!(!activity.reading_head(), "between requests");
        b.write_all(b"G").await.unwrap();
        let _ = io.read(&mut buf).await.unwrap();
        assert!(activity.reading_head(), "the next head");
    }

    #[tokio::test]
    async fn bytes_after_an_early_response_are_the_body_not_a_head() {
        let (a, mut b) = tokio::io::duplex(256);
        let activity = Activity::new();
        let mut io = IdleIo::new(a, activity.clone());
        let mut buf = [0u8; 64];
        // The response ends (its guard drops) while the body is still coming.
        let guard = activity.request_started(true);
        drop(guard);
        b.write_all(b"rest of the body").await.unwrap();
        let _ = io.read(&mut buf).await.unwrap();
        assert!(!activity.reading_head(), "still the body: no head timer");

        // Once the body has come whole (or its reader let it go), the next bytes are a head.
        let end = activity.body_end();
        let guard = activity.request_started(true);
        drop(guard);
        drop(end);
        b.write_all(b"G").await.unwrap();
        let _ = io.read(&mut buf).await.unwrap();
        assert!(activity.reading_head(), "the drain ends with the body");

        // The next request starts as usual, and bytes after its end start a head.
        let guard = activity.request_started(false);
        drop(guard);
        b.write_all(b"G").await.unwrap();
        let _ = io.read(&mut buf).await.unwrap();
        assert!(activity.reading_head());
    }

    #[test]
    fn a_pipelined_head_is_pending_only_once_its_request_before_ends() {
        let activity = Activity::new();
        let guard = activity.request_started(false);
        activity.head_pending();
        assert!(!activity.reading_head(), "the request before is still busy");
        drop(guard);
        activity.head_pending();
        assert!(activity.reading_head(), "the buffered head is being read");
        let _next = activity.request_started(false);
        assert!(!activity.reading_head());
    }

    #[tokio::test]
    async fn a_cut_stream_answers_408_then_ends() {
        let (a, mut b) = tokio::io::duplex(256);
        let activity = Activity::new();
        let mut io = IdleIo::new(a, activity.clone());
        b.write_all(b"GET / HT").await.unwrap();
        let mut buf = [0u8; 64];
        let _ = io.read(&mut buf).await.unwrap();
        activity.cut();
        assert_eq!(io.read(&mut buf).await.unwrap(), 0, "the stream ends");
        assert_eq!(io.read(&mut buf).await.unwrap(), 0, "and stays ended");
        drop(io);
        let mut answer = Vec::new();
        b.read_to_end(&mut answer).await.unwrap();
        assert_eq!(answer, REQUEST_TIMEOUT);
    }

    #[tokio::test]
    async fn vectored_writes_through_sendmsg_arrive_whole_and_in_order() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (client, accepted) = tokio::join!(TcpStream::connect(addr), listener.accept());
        let mut io = TcpIo::new(client.unwrap());
        let (mut peer, _) = accepted.unwrap();
        // More than the socket buffers hold, so writes come back short and wait for room.
        let head: Vec<u8> = (0..100u8).collect();
        let body: Vec<u8> = (0..4 * 1024 * 1024).map(|i| (i % 251) as u8).collect();
        let expected = [head.clone(), body.clone()].concat();
        let reader = tokio::spawn(async move {
            let mut got = Vec::new();
            peer.read_to_end(&mut got).await.unwrap();
            got
        });
        let mut sent = 0;
        while sent < expected.len() {
            let (a, b) = if sent < head.len() {
                (&head[sent..], &body[..])
            } else {
                (&body[sent - head.len()..], &[][..])
            };
            let bufs = [io::IoSlice::new(a), io::IoSlice::new(b)];
            let n = io.write_vectored(&bufs).await.unwrap();
            assert!(n > 0);
            sent += n;
        }
        io.shutdown().await.unwrap();
        assert!(io.is_write_vectored());
        assert_eq!(reader.await.unwrap(), expected);
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
