//! Reads an HTTP/2 server's frame headers as they pass, for what hyper does not expose: the
//! SETTINGS_MAX_CONCURRENT_STREAMS it announced, and whether it sent a GOAWAY.
//!
//! Only the 9-byte frame headers (and the payload of SETTINGS frames, a few bytes) are looked
//! at; every other payload is skipped by length, so this costs next to nothing per byte.

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::Notify;

const SETTINGS: u8 = 0x4;
const GOAWAY: u8 = 0x7;
const ACK: u8 = 0x1;
const SETTINGS_MAX_CONCURRENT_STREAMS: u16 = 0x3;
/// A SETTINGS payload larger than this (a hundred settings) is not parsed.
const MAX_SETTINGS_PAYLOAD: usize = 600;
/// `max_streams` before the server has announced a limit.
const UNLIMITED: u64 = u64::MAX;

/// What the server's frames said so far; shared by the connection and its I/O.
#[derive(Debug)]
pub(crate) struct Seen {
    max_streams: AtomicU64,
    goaway: AtomicBool,
    settled: AtomicBool,
    settled_notify: Notify,
}

/// An I/O stream whose incoming bytes are read as HTTP/2 frames into a [`Seen`].
#[derive(Debug)]
pub(crate) struct Watched<T> {
    inner: T,
    parser: Parser,
    seen: Arc<Seen>,
}

#[derive(Debug)]
struct Parser {
    header: [u8; 9],
    /// Bytes of `header` read so far.
    have: usize,
    /// Payload bytes of the current frame still to come.
    skip: usize,
    /// The payload of the current SETTINGS frame, as it comes.
    settings: Option<Vec<u8>>,
    first: bool,
    /// The server does not speak HTTP/2 (its first frame is no SETTINGS): stop reading.
    done: bool,
}

// === impl Seen ===

impl Default for Seen {
    fn default() -> Self {
        Self {
            max_streams: AtomicU64::new(UNLIMITED),
            goaway: AtomicBool::new(false),
            settled: AtomicBool::new(false),
            settled_notify: Notify::new(),
        }
    }
}

impl Seen {
    /// The server's SETTINGS_MAX_CONCURRENT_STREAMS, if it announced one.
    pub(crate) fn max_streams(&self) -> Option<usize> {
        match self.max_streams.load(Ordering::Relaxed) {
            UNLIMITED => None,
            n => Some(usize::try_from(n).unwrap_or(usize::MAX)),
        }
    }

    /// Whether the server sent a GOAWAY: the connection takes no new streams.
    pub(crate) fn goaway(&self) -> bool {
        self.goaway.load(Ordering::Relaxed)
    }

    /// Waits until the server's first SETTINGS arrived, or it is clear that none will (the
    /// connection ended, or the server answered something other than HTTP/2).
    pub(crate) async fn settled(&self) {
        if !self.settled.load(Ordering::Acquire) {
            // NOTE: `notify_one` leaves a permit if nobody waits yet, so this cannot miss it.
            self.settled_notify.notified().await;
        }
    }

    fn settle(&self) {
        if !self.settled.swap(true, Ordering::Release) {
            self.settled_notify.notify_one();
        }
    }
}

// === impl Watched ===

impl<T> Watched<T> {
    pub(crate) fn new(inner: T) -> (Self, Arc<Seen>) {
        let seen = Arc::new(Seen::default());
        let watched = Self {
            inner,
            parser: Parser {
                header: [0; 9],
                have: 0,
                skip: 0,
                settings: None,
                first: true,
                done: false,
            },
            seen: seen.clone(),
        };
        (watched, seen)
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Watched<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let room = buf.remaining() > 0;
        let result = Pin::new(&mut this.inner).poll_read(cx, buf);
        match &result {
            Poll::Ready(Ok(())) => {
                let read = &buf.filled()[before..];
                if read.is_empty() && room {
                    this.seen.settle();
                } else if !this.parser.done {
                    this.parser.feed(read, &this.seen);
                }
            }
            Poll::Ready(Err(_)) => this.seen.settle(),
            Poll::Pending => {}
        }
        result
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Watched<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

// === impl Parser ===

impl Parser {
    fn feed(&mut self, mut bytes: &[u8], seen: &Seen) {
        while !bytes.is_empty() && !self.done {
            if self.skip > 0 {
                let n = self.skip.min(bytes.len());
                if let Some(payload) = &mut self.settings {
                    payload.extend_from_slice(&bytes[..n]);
                }
                bytes = &bytes[n..];
                self.skip -= n;
                if self.skip == 0 {
                    self.end_of_frame(seen);
                }
                continue;
            }
            let n = (9 - self.have).min(bytes.len());
            self.header[self.have..self.have + n].copy_from_slice(&bytes[..n]);
            self.have += n;
            bytes = &bytes[n..];
            if self.have < 9 {
                continue;
            }
            self.have = 0;
            let h = self.header;
            let len = u32::from_be_bytes([0, h[0], h[1], h[2]]) as usize;
            let (kind, flags) = (h[3], h[4]);
            if std::mem::take(&mut self.first) && kind != SETTINGS {
                // An HTTP/2 server starts with SETTINGS (RFC 9113, section 3.4).
                self.done = true;
                seen.settle();
                return;
            }
            match kind {
                GOAWAY => seen.goaway.store(true, Ordering::Relaxed),
                SETTINGS if flags & ACK == 0 => {
                    self.settings = Some(Vec::with_capacity(len.min(MAX_SETTINGS_PAYLOAD)));
                }
                _ => {}
            }
            self.skip = len;
            if len == 0 {
                self.end_of_frame(seen);
            }
        }
    }

    fn end_of_frame(&mut self, seen: &Seen) {
        let Some(payload) = self.settings.take() else {
            return;
        };
        if payload.len() <= MAX_SETTINGS_PAYLOAD {
            for setting in payload.chunks_exact(6) {
                let id = u16::from_be_bytes([setting[0], setting[1]]);
                let value = u32::from_be_bytes([setting[2], setting[3], setting[4], setting[5]]);
                if id == SETTINGS_MAX_CONCURRENT_STREAMS {
                    seen.max_streams.store(u64::from(value), Ordering::Relaxed);
                }
            }
        }
        seen.settle();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
        let len = u32::try_from(payload.len()).unwrap().to_be_bytes();
        let mut f = vec![len[1], len[2], len[3], kind, flags];
        f.extend_from_slice(&stream.to_be_bytes());
        f.extend_from_slice(payload);
        f
    }

    fn parser() -> Parser {
        Watched::new(()).0.parser
    }

    #[test]
    fn reads_the_stream_limit_and_a_goaway_across_reads_of_any_size() {
        let mut setting = SETTINGS_MAX_CONCURRENT_STREAMS.to_be_bytes().to_vec();
        setting.extend_from_slice(&7u32.to_be_bytes());
        let mut other = 0x4u16.to_be_bytes().to_vec();
        other.extend_from_slice(&65_535u32.to_be_bytes());
        let mut wire = frame(SETTINGS, 0, 0, &[other, setting].concat());
        wire.extend(frame(SETTINGS, ACK, 0, &[]));
        wire.extend(frame(0x1, 0x4, 1, &[0x88]));
        wire.extend(frame(0x0, 0x1, 1, &[b'x'; 1000]));
        let before_goaway = wire.len();
        wire.extend(frame(GOAWAY, 0, 0, &[0, 0, 0, 1, 0, 0, 0, 0]));
        for chunk in [1, 2, 5, 9, 10, 4096] {
            let mut p = parser();
            let seen = Seen::default();
            for (i, piece) in wire.chunks(chunk).enumerate() {
                p.feed(piece, &seen);
                if (i + 1) * chunk <= before_goaway {
                    assert!(!seen.goaway(), "chunk {chunk}");
                }
            }
            assert_eq!(seen.max_streams(), Some(7), "chunk {chunk}");
            assert!(seen.settled.load(Ordering::Relaxed));
            assert!(seen.goaway(), "chunk {chunk}");
        }
    }

    #[test]
    fn a_server_that_is_not_http2_settles_with_no_limit() {
        let mut p = parser();
        let seen = Seen::default();
        p.feed(b"HTTP/1.1 400 Bad Request\r\n\r\n", &seen);
        assert!(p.done);
        assert!(seen.settled.load(Ordering::Relaxed));
        assert_eq!(seen.max_streams(), None);
        assert!(!seen.goaway());
        // An empty SETTINGS frame: no limit either.
        let mut p = parser();
        let seen = Seen::default();
        p.feed(&frame(SETTINGS, 0, 0, &[]), &seen);
        assert!(seen.settled.load(Ordering::Relaxed));
        assert_eq!(seen.max_streams(), None);
    }
}
