//! The proxy's own HTTP/1.1 server, for the common downstream exchange: a request without a body.
//!
//! hyper's server reads every request head into a buffer of its own (8 KiB, allocated per
//! request), and writes every response through a dispatcher built for bodies in both directions,
//! upgrades and `Expect`. A proxied request without a body needs none of that: here the head is
//! parsed where it was read (header values are slices of the read buffer, which the connection
//! keeps), and the response head and a small body go out in one write.
//!
//! A connection starts here. The first request this server does not take — one with a body, an
//! upgrade, `Expect`, `CONNECT`, HTTP/1.0, or a head it cannot parse or that is too large — hands
//! the connection, with every byte read and not yet used, to hyper's server for the rest of its
//! life ([`fallback`]). hyper then answers it as it answers any connection, errors included (400,
//! 431), so this server only ever serves what it fully understands.
//!
//! What it keeps of hyper's behaviour: responses are framed by their `Content-Length`, else by
//! the body's exact size, else chunked (with trailers for a client that sent `TE: trailers`); a
//! `date` header is added when missing; `Connection: close` from the client, or a graceful close,
//! ends the connection after the response; a client that hangs up while its request is in flight
//! cancels that request; a body that fails mid-way aborts the connection.

use crate::{
    ascii::{eq_lower, has_token},
    h1_client::{parse_decimal, put_header, MAX_HEAD, MAX_HEADERS},
    http::{handle, ConnCtx, Downstream, NoBody, ProxyBody},
    io::{Activity, PrefixedIo},
};
use bytes::{Buf, Bytes, BytesMut};
use http::{header, HeaderMap, HeaderName, HeaderValue, Method, Request, StatusCode, Uri, Version};
use http_body::Body as _;
use hyper::server::conn::http1;
use hyper_util::rt::TokioIo;
use pillion_layers::BoxError;
use std::{
    future::{poll_fn, Future},
    io,
    mem::MaybeUninit,
    pin::Pin,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    task::{ready, Context, Poll},
    time::{SystemTime, UNIX_EPOCH},
};
use tokio::io::{AsyncRead, AsyncWrite};

/// The read buffer grows by this much when less than [`MIN_SPARE`] is left.
const READ_SIZE: usize = 8 * 1024;
const MIN_SPARE: usize = 1024;
/// Response data up to this size is copied beside what is queued (the head) and goes out with it
/// in one write; a larger frame is written from where it is, beside the queue (one `sendmsg`).
const COPY_MAX: usize = 4 * 1024;
/// A write queue that grew past this (large headers, or small frames of a streamed body) is
/// freed after its response, so an idle connection keeps little.
const OUT_KEEP: usize = 2 * COPY_MAX;

/// What a downstream HTTP/1 connection is served with.
pub(crate) struct Server {
    pub ctx: Arc<ConnCtx>,
    pub activity: Arc<Activity>,
    /// Set to close the connection gracefully: at once between requests, else after the
    /// response in flight (which says `Connection: close`).
    pub closing: Arc<AtomicBool>,
    /// hyper's server, for a connection that sends a request this one does not take.
    pub fallback: http1::Builder,
}

/// What came next on the connection.
// NOTE: the request is the common case; boxing it would cost an allocation per request.
#[allow(clippy::large_enum_variant)]
enum Next {
    Request(Request<NoBody>, Wants),
    /// The client closed the connection, or it is closing, between requests.
    End,
    /// A request for hyper's server.
    Other,
}

/// What a request's head asks of its response.
#[derive(Debug, Clone, Copy, Default)]
struct Wants {
    /// `Connection: close`: the connection ends after the response.
    close: bool,
    /// `TE: trailers`: the client takes a trailer section.
    trailers: bool,
}

/// How a response body is framed on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Framing {
    /// No body is sent (`HEAD`, 204, 304).
    None,
    /// Bytes left of a `Content-Length` body.
    Length(u64),
    Chunked,
}

/// The connection: its stream, the bytes read and not yet used, and what is queued to write.
struct Conn<I> {
    io: I,
    buf: BytesMut,
    /// Bytes to write, from `pos`.
    out: Vec<u8>,
    pos: usize,
    /// A large data frame to write after `out`, and whether a chunk's CRLF follows it.
    big: Option<(Bytes, bool)>,
    /// Where each header's name and value sit in the head being parsed.
    spans: Vec<(u32, u32, u32, u32)>,
    date: CachedDate,
}

/// The `date` header value, formatted once a second.
#[derive(Default)]
struct CachedDate {
    second: u64,
    value: Option<HeaderValue>,
}

/// Serves an HTTP/1 connection until the client closes it, it closes gracefully, or it fails.
pub(crate) async fn serve<I>(io: I, s: Server) -> Result<(), BoxError>
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let mut conn = Conn {
        io,
        buf: BytesMut::new(),
        out: Vec::new(),
        pos: 0,
        big: None,
        spans: Vec::new(),
        date: CachedDate::default(),
    };
    loop {
        let (req, wants) = match conn.read_head(&s.closing).await? {
            Next::Request(req, wants) => (req, wants),
            Next::End => return Ok(()),
            // NOTE: boxed; hyper's connection state is large and the common connection never
            // needs it.
            Next::Other => return Box::pin(fallback(conn.io, conn.buf, s)).await,
        };
        let is_head = req.method() == Method::HEAD;
        let exchange = handle(s.ctx.clone(), req, Some(s.activity.request_started(false)));
        tokio::pin!(exchange);
        let rsp = poll_fn(|cx| {
            if let Poll::Ready(Ok(rsp)) = exchange.as_mut().poll(cx) {
                return Poll::Ready(Some(rsp));
            }
            conn.poll_hangup(cx).map(|()| None)
        })
        .await;
        // The client hung up: dropping the exchange cancels the request upstream.
        let Some(rsp) = rsp else { return Ok(()) };
        let close = wants.close || s.closing.load(Ordering::Relaxed);
        conn.respond(rsp, is_head, close, wants.trailers).await?;
        if !conn.buf.is_empty() {
            // Part of a pipelined request came while this one was served: its head timeout
            // runs from now.
            s.activity.head_pending();
        }
        if conn.out.capacity() > OUT_KEEP {
            conn.out = Vec::new();
        }
        if close {
            poll_fn(|cx| Pin::new(&mut conn.io).poll_shutdown(cx)).await?;
            return Ok(());
        }
    }
}

/// Serves the rest of the connection with hyper's server, from the bytes read and not used.
async fn fallback<I>(io: I, buf: BytesMut, s: Server) -> Result<(), BoxError>
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let Server {
        ctx,
        activity,
        closing,
        fallback,
    } = s;
    let svc = hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
        use http_body::Body as _;
        let guard = activity.request_started(!req.body().is_end_stream());
        let req = req.map(|body| Downstream::watched(body, activity.body_end()));
        handle(ctx.clone(), req, Some(guard))
    });
    let conn = fallback
        .serve_connection(TokioIo::new(PrefixedIo::new(buf, io)), svc)
        .with_upgrades();
    tokio::pin!(conn);
    let mut graceful = false;
    poll_fn(|cx| {
        if !graceful && closing.load(Ordering::Relaxed) {
            conn.as_mut().graceful_shutdown();
            graceful = true;
        }
        conn.as_mut().poll(cx)
    })
    .await
    .map_err(Into::into)
}

// === impl Conn ===

impl<I: AsyncRead + AsyncWrite + Unpin> Conn<I> {
    /// Reads until a request head is complete, the connection ends, or hyper must take over.
    async fn read_head(&mut self, closing: &AtomicBool) -> io::Result<Next> {
        loop {
            if !self.buf.is_empty() {
                match self.parse() {
                    Some(next) => return Ok(next),
                    None if self.buf.len() >= MAX_HEAD => return Ok(Next::Other),
                    None => {}
                }
            }
            let n = poll_fn(|cx| {
                if self.buf.is_empty() && closing.load(Ordering::Relaxed) {
                    return Poll::Ready(Ok(0));
                }
                self.poll_fill(cx)
            })
            .await?;
            if n == 0 {
                // NOTE: a head cut by the head timeout ends here too; the stream wrote the 408.
                return Ok(Next::End);
            }
        }
    }

    /// Parses a request head at the start of the buffer; `None` while it is incomplete. A head
    /// this server takes is consumed; one it does not take stays for hyper.
    fn parse(&mut self) -> Option<Next> {
        let base = self.buf.as_ptr() as usize;
        let at = |s: &[u8]| ((s.as_ptr() as usize - base) as u32, s.len() as u32);
        self.spans.clear();
        let (len, method, target, wants) = {
            let mut slots = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_HEADERS];
            let mut req = httparse::Request::new(&mut []);
            let len = match httparse::ParserConfig::default()
                .parse_request_with_uninit_headers(&mut req, &self.buf, &mut slots)
            {
                // NOTE: a head larger than hyper's limit is hyper's to refuse (431), however it
                // arrived.
                Ok(httparse::Status::Complete(len)) if len <= MAX_HEAD => len,
                Ok(httparse::Status::Partial) => return None,
                _ => return Some(Next::Other),
            };
            let (Some(method), Some(path), Some(1)) = (req.method, req.path, req.version) else {
                return Some(Next::Other);
            };
            let mut wants = Wants::default();
            let mut length = false;
            for h in req.headers.iter() {
                match simple_header(h.name, h.value) {
                    None => return Some(Next::Other),
                    Some(Simple::Close) => wants.close = true,
                    Some(Simple::Trailers) => wants.trailers = true,
                    // NOTE: a `0` length, repeated, goes upstream once (as hyper does).
                    Some(Simple::Length) if std::mem::replace(&mut length, true) => continue,
                    Some(_) => {}
                }
                let (ns, nl) = at(h.name.as_bytes());
                let (vs, vl) = at(h.value);
                self.spans.push((ns, nl, vs, vl));
            }
            (len, at(method.as_bytes()), at(path.as_bytes()), wants)
        };
        let method = &self.buf[method.0 as usize..(method.0 + method.1) as usize];
        let method = match Method::from_bytes(method) {
            Ok(m) if m != Method::CONNECT => m,
            _ => return Some(Next::Other),
        };

        let head = self.buf.split_to(len).freeze();
        if len > READ_SIZE && self.buf.is_empty() {
            // A large head grew the buffer: let that allocation go with the request, and read the
            // next one into a buffer of the usual size.
            self.buf = BytesMut::new();
        }
        let slice = |(start, len): (u32, u32)| head.slice(start as usize..(start + len) as usize);
        match build(&head, &self.spans, slice, target) {
            Some((uri, headers)) => {
                let mut req = Request::new(NoBody);
                *req.method_mut() = method;
                *req.uri_mut() = uri;
                *req.version_mut() = Version::HTTP_11;
                *req.headers_mut() = headers;
                Some(Next::Request(req, wants))
            }
            None => {
                // Put the head back for hyper, which answers it (400). Rare: a copy is fine.
                let mut whole = BytesMut::with_capacity(head.len() + self.buf.len());
                whole.extend_from_slice(&head);
                whole.extend_from_slice(&self.buf);
                self.buf = whole;
                Some(Next::Other)
            }
        }
    }

    /// Reads more into the buffer; `Ok(0)` is the end of the connection.
    fn poll_fill(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        if self.buf.capacity() - self.buf.len() < MIN_SPARE {
            self.buf.reserve(READ_SIZE);
        }
        tokio_util::io::poll_read_buf(Pin::new(&mut self.io), cx, &mut self.buf)
    }

    /// While a request is in flight: reads what the client sends next (a pipelined request, up
    /// to the head limit) and resolves when the client hangs up or the connection fails.
    fn poll_hangup(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        while self.buf.len() < MAX_HEAD {
            match ready!(self.poll_fill(cx)) {
                Ok(0) | Err(_) => return Poll::Ready(()),
                Ok(_) => {}
            }
        }
        Poll::Pending
    }

    /// Writes the response: its head, then its body as the body yields it, with its trailers
    /// when the client takes them (`trailers`).
    async fn respond(
        &mut self,
        rsp: http::Response<ProxyBody>,
        is_head: bool,
        close: bool,
        trailers: bool,
    ) -> Result<(), BoxError> {
        let (parts, body) = rsp.into_parts();
        tokio::pin!(body);
        let status = parts.status;
        let bodyless = is_head
            || status.is_informational()
            || status == StatusCode::NO_CONTENT
            || status == StatusCode::NOT_MODIFIED;
        let out = &mut self.out;
        out.clear();
        self.pos = 0;
        out.extend_from_slice(b"HTTP/1.1 ");
        out.extend_from_slice(status.as_str().as_bytes());
        out.push(b' ');
        match parts.extensions.get::<hyper::ext::ReasonPhrase>() {
            Some(reason) => out.extend_from_slice(reason.as_bytes()),
            None => out.extend_from_slice(status.canonical_reason().unwrap_or("<none>").as_bytes()),
        }
        out.extend_from_slice(b"\r\n");
        let mut length = None;
        let mut date = false;
        // NOTE: a 204 or 1xx has no length to state (RFC 9110, section 8.6).
        let lengthless = status == StatusCode::NO_CONTENT || status.is_informational();
        for (name, value) in &parts.headers {
            if name == header::CONTENT_LENGTH {
                if lengthless {
                    continue;
                }
                match parse_decimal(value.as_bytes().trim_ascii()) {
                    Some(n) if length.is_none_or(|m| m == n) => {
                        if length.is_some() {
                            continue;
                        }
                        length = Some(n);
                    }
                    // NOTE: the clients refuse an upstream's bad or conflicting lengths, so this
                    // is the proxy's own response: a bad length is dropped (the body's size frames
                    // it instead), and a second one that disagrees with the first.
                    _ => continue,
                }
            } else if name == header::TRANSFER_ENCODING || (close && name == header::CONNECTION) {
                continue;
            } else if name == header::DATE {
                date = true;
            }
            put_header(out, name.as_str().as_bytes(), value.as_bytes());
        }
        let mut framing = match length {
            _ if bodyless => Framing::None,
            Some(n) => Framing::Length(n),
            None if body.is_end_stream() => {
                put_header(out, b"content-length", b"0");
                Framing::Length(0)
            }
            None => match body.size_hint().exact() {
                Some(n) => {
                    put_header(out, b"content-length", decimal(n, &mut [0; 20]));
                    Framing::Length(n)
                }
                None => {
                    put_header(out, b"transfer-encoding", b"chunked");
                    Framing::Chunked
                }
            },
        };
        if !date {
            let value = self.date.get();
            put_header(&mut self.out, b"date", value.as_bytes());
        }
        if close {
            put_header(&mut self.out, b"connection", b"close");
        }
        self.out.extend_from_slice(b"\r\n");
        if framing == Framing::None {
            return Ok(poll_fn(|cx| self.poll_write_out(cx)).await?);
        }

        let mut ended = false;
        poll_fn(|cx| loop {
            let queued = self.out.len() - self.pos;
            if ended || self.big.is_some() || queued >= COPY_MAX {
                ready!(self.poll_write_out(cx))?;
                if ended {
                    return Poll::Ready(Ok(()));
                }
            }
            let frame = match body.as_mut().poll_frame(cx) {
                Poll::Ready(Some(Ok(frame))) => frame,
                Poll::Ready(Some(Err(e))) => return Poll::Ready(Err(e)),
                Poll::Ready(None) => {
                    match framing {
                        Framing::Chunked => self.out.extend_from_slice(b"0\r\n\r\n"),
                        Framing::Length(0) | Framing::None => {}
                        Framing::Length(_) => {
                            return Poll::Ready(Err("response body shorter than its length".into()))
                        }
                    }
                    ended = true;
                    continue;
                }
                Poll::Pending if self.out.len() > self.pos => {
                    ready!(self.poll_write_out(cx))?;
                    continue;
                }
                Poll::Pending => {
                    ready!(self.poll_hangup(cx));
                    return Poll::Ready(Err("the client closed the connection".into()));
                }
            };
            let data = match frame.into_data() {
                Ok(data) => data,
                Err(frame) => {
                    if let (Framing::Chunked, Ok(fields)) = (framing, frame.into_trailers()) {
                        self.out.extend_from_slice(b"0\r\n");
                        // NOTE: a client that did not send `TE: trailers` gets the body without
                        // them, as from hyper's server: a sender does not generate trailers the
                        // recipient did not ask for (RFC 9110, section 6.5.1).
                        let sent = fields.iter().filter(|_| trailers);
                        for (name, value) in sent {
                            if crate::http::headers::forbidden_trailer(name) {
                                continue;
                            }
                            put_header(&mut self.out, name.as_str().as_bytes(), value.as_bytes());
                        }
                        self.out.extend_from_slice(b"\r\n");
                        framing = Framing::None;
                    }
                    continue;
                }
            };
            if data.is_empty() {
                continue;
            }
            match &mut framing {
                Framing::Length(left) => match left.checked_sub(data.len() as u64) {
                    Some(rest) => *left = rest,
                    None => return Poll::Ready(Err("response body longer than its length".into())),
                },
                Framing::Chunked => put_chunk_size(&mut self.out, data.len()),
                // Trailers were sent: nothing may follow.
                Framing::None => continue,
            }
            let chunked = framing == Framing::Chunked;
            if data.len() <= COPY_MAX {
                self.out.extend_from_slice(&data);
                if chunked {
                    self.out.extend_from_slice(b"\r\n");
                }
            } else {
                self.big = Some((data, chunked));
            }
        })
        .await
    }

    /// Writes everything queued (`out` from `pos`, then the large frame) and flushes.
    fn poll_write_out(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        loop {
            let queued = &self.out[self.pos..];
            let big = self.big.as_ref().map_or(&[][..], |(b, _)| &b[..]);
            if queued.is_empty() && big.is_empty() {
                match self.big.take() {
                    Some((_, true)) => {
                        self.out.clear();
                        self.pos = 0;
                        self.out.extend_from_slice(b"\r\n");
                        continue;
                    }
                    _ => break,
                }
            }
            let io = Pin::new(&mut self.io);
            let n = ready!(if big.is_empty() {
                io.poll_write(cx, queued)
            } else if queued.is_empty() {
                io.poll_write(cx, big)
            } else {
                io.poll_write_vectored(cx, &[io::IoSlice::new(queued), io::IoSlice::new(big)])
            })?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            let from_queued = n.min(queued.len());
            self.pos += from_queued;
            if let Some((b, _)) = &mut self.big {
                b.advance(n - from_queued);
            }
        }
        self.out.clear();
        self.pos = 0;
        Pin::new(&mut self.io).poll_flush(cx)
    }
}

/// A header of a request this server takes.
enum Simple {
    /// `Content-Length: 0`.
    Length,
    /// `Connection` with `close`.
    Close,
    /// `TE` with `trailers`.
    Trailers,
    Other,
}

/// What this header is, if this server takes a request with it. A body (a length but 0, any
/// transfer coding), `Expect` or an upgrade is hyper's to serve.
fn simple_header(name: &str, value: &[u8]) -> Option<Simple> {
    let is = |n: &[u8]| eq_lower(name.as_bytes(), n);
    if is(b"content-length") {
        return (value.trim_ascii() == b"0").then_some(Simple::Length);
    }
    if is(b"transfer-encoding") || is(b"expect") || is(b"upgrade") {
        return None;
    }
    if is(b"connection") && has_token(value, b"close") {
        return Some(Simple::Close);
    }
    if is(b"te") && has_token(value, b"trailers") {
        return Some(Simple::Trailers);
    }
    Some(Simple::Other)
}

/// The request target and headers of a parsed head; `None` when `http` refuses one.
fn build(
    head: &Bytes,
    spans: &[(u32, u32, u32, u32)],
    slice: impl Fn((u32, u32)) -> Bytes,
    target: (u32, u32),
) -> Option<(Uri, HeaderMap)> {
    let uri = Uri::from_maybe_shared(slice(target)).ok()?;
    // NOTE: room for the forwarding headers the proxy adds, so adding them does not regrow it.
    let mut headers = HeaderMap::with_capacity(spans.len() + 2);
    for &(ns, nl, vs, vl) in spans {
        let name = HeaderName::from_bytes(&head[ns as usize..(ns + nl) as usize]).ok()?;
        let value = HeaderValue::from_maybe_shared(slice((vs, vl))).ok()?;
        headers.append(name, value);
    }
    Some((uri, headers))
}

/// `n` in decimal, written at the end of `buf`.
fn decimal(mut n: u64, buf: &mut [u8; 20]) -> &[u8] {
    let mut at = buf.len();
    loop {
        at -= 1;
        buf[at] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            return &buf[at..];
        }
    }
}

/// Writes a chunk-size line.
fn put_chunk_size(out: &mut Vec<u8>, n: usize) {
    let digits = (usize::BITS - n.leading_zeros()).div_ceil(4).max(1);
    for i in (0..digits).rev() {
        out.push(b"0123456789ABCDEF"[(n >> (i * 4)) & 0xF]);
    }
    out.extend_from_slice(b"\r\n");
}

// === impl CachedDate ===

impl CachedDate {
    fn get(&mut self) -> HeaderValue {
        let now = SystemTime::now();
        let second = now.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
        match &self.value {
            Some(v) if second == self.second => v.clone(),
            _ => {
                let v = HeaderValue::from_str(&httpdate::fmt_http_date(now))
                    .unwrap_or(HeaderValue::from_static("Thu, 01 Jan 1970 00:00:00 GMT"));
                self.second = second;
                self.value = Some(v.clone());
                v
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn conn(bytes: &[u8]) -> Conn<tokio::io::DuplexStream> {
        let (io, _) = tokio::io::duplex(64);
        Conn {
            io,
            buf: BytesMut::from(bytes),
            out: Vec::new(),
            pos: 0,
            big: None,
            spans: Vec::new(),
            date: CachedDate::default(),
        }
    }

    #[test]
    fn a_bodyless_head_is_taken_and_what_follows_stays() {
        let mut c =
            conn(b"GET /a?b=1 HTTP/1.1\r\nHost: svc\r\nX-One: 1\r\nx-one: 2\r\n\r\nGET /next");
        let Some(Next::Request(req, wants)) = c.parse() else {
            panic!("a request")
        };
        assert!(!wants.close && !wants.trailers);
        assert_eq!(req.method(), Method::GET);
        assert_eq!(req.uri(), "/a?b=1");
        assert_eq!(req.version(), Version::HTTP_11);
        assert_eq!(req.headers()["host"], "svc");
        let ones: Vec<_> = req.headers().get_all("x-one").iter().collect();
        assert_eq!(ones, ["1", "2"]);
        assert_eq!(&c.buf[..], b"GET /next");
        assert!(c.parse().is_none(), "a partial head waits");

        let mut c = conn(b"OPTIONS * HTTP/1.1\r\nconnection: keep-alive, Close\r\n\r\n");
        let Some(Next::Request(req, wants)) = c.parse() else {
            panic!("a request")
        };
        assert!(wants.close);
        assert_eq!(req.uri(), "*");
    }

    #[test]
    fn te_trailers_is_read_among_other_codings() {
        for (te, trailers) in [
            ("TE: trailers\r\n", true),
            ("te: gzip, Trailers\r\n", true),
            ("TE: gzip\r\nTE: trailers\r\n", true),
            ("TE: gzip\r\n", false),
            ("x-te: trailers\r\n", false),
            ("", false),
        ] {
            let head = format!("GET / HTTP/1.1\r\nhost: svc\r\n{te}\r\n");
            let mut c = conn(head.as_bytes());
            let Some(Next::Request(_, wants)) = c.parse() else {
                panic!("a request: {head:?}")
            };
            assert_eq!(wants.trailers, trailers, "{head:?}");
        }
    }

    #[test]
    fn what_this_server_does_not_take_is_left_whole_for_hyper() {
        for head in [
            &b"POST / HTTP/1.1\r\ncontent-length: 5\r\n\r\nhello"[..],
            b"POST / HTTP/1.1\r\ntransfer-encoding: chunked\r\n\r\n0\r\n\r\n",
            b"PUT / HTTP/1.1\r\nexpect: 100-continue\r\ncontent-length: 1\r\n\r\n",
            b"GET / HTTP/1.1\r\nupgrade: websocket\r\nconnection: upgrade\r\n\r\n",
            b"CONNECT svc:443 HTTP/1.1\r\nhost: svc:443\r\n\r\n",
            b"GET / HTTP/1.0\r\n\r\n",
            b"NOT HTTP\r\n\r\n",
        ] {
            let mut c = conn(head);
            assert!(
                matches!(c.parse(), Some(Next::Other)),
                "{}",
                String::from_utf8_lossy(head)
            );
            assert_eq!(&c.buf[..], head, "the bytes stay for hyper");
        }
        // httparse takes this target; `http` refuses it (too long): the head goes back whole.
        let long = format!(
            "GET /{} HTTP/1.1\r\nhost: svc\r\n\r\nGET /next",
            "a".repeat(70_000)
        );
        let mut c = conn(long.as_bytes());
        assert!(matches!(c.parse(), Some(Next::Other)));
        assert_eq!(&c.buf[..], long.as_bytes());

        // A length of zero is no body.
        let mut c = conn(b"POST / HTTP/1.1\r\ncontent-length: 0\r\n\r\n");
        assert!(matches!(c.parse(), Some(Next::Request(..))));
    }

    #[test]
    fn a_large_head_does_not_stay_in_the_connection_buffer() {
        let head = format!(
            "GET / HTTP/1.1\r\ncookie: {}\r\n\r\n",
            "c".repeat(64 * 1024)
        );
        let mut c = conn(head.as_bytes());
        let Some(Next::Request(req, _)) = c.parse() else {
            panic!("a request")
        };
        assert_eq!(req.headers()["cookie"].len(), 64 * 1024);
        assert_eq!(
            c.buf.capacity(),
            0,
            "the next head gets a buffer of the usual size"
        );

        let mut c = conn(b"GET / HTTP/1.1\r\n\r\n");
        let cap = c.buf.capacity();
        assert!(matches!(c.parse(), Some(Next::Request(..))));
        assert_eq!(
            c.buf.capacity(),
            cap - 18,
            "a small head leaves the buffer in use"
        );
    }

    #[test]
    fn lengths_are_decimal() {
        for n in [0, 7, 10, 128, u64::MAX] {
            assert_eq!(decimal(n, &mut [0; 20]), n.to_string().as_bytes());
        }
    }

    #[test]
    fn chunk_sizes_are_hex() {
        for (n, want) in [
            (0, "0\r\n"),
            (9, "9\r\n"),
            (255, "FF\r\n"),
            (4096, "1000\r\n"),
        ] {
            let mut out = Vec::new();
            put_chunk_size(&mut out, n);
            assert_eq!(out, want.as_bytes());
        }
    }

    #[test]
    fn the_date_is_an_http_date() {
        let v = CachedDate::default().get();
        let parsed = httpdate::parse_http_date(v.to_str().expect("ascii")).expect("a date");
        let age = SystemTime::now().duration_since(parsed).unwrap_or_default();
        assert!(age.as_secs() < 5, "{v:?}");
    }
}
