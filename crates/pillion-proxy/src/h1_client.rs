//! The proxy's own HTTP/1.1 client, for the common upstream exchange: a request without a body.
//!
//! hyper's client runs each connection as a task of its own, hands it every request over a
//! channel and the response back over another: per request, a second task to wake and two
//! channel hops, on top of the downstream connection's task that already waits for the answer.
//! Here the requesting task writes the request head and reads the response head itself, and the
//! response body reads the rest from the connection as the downstream side pulls it, so an
//! exchange costs one task and no channel.
//!
//! A request with a body (which must be sent while the response may already be coming back), an
//! upgrade, `CONNECT` or HTTP/1.0 goes through hyper's client instead ([`can_send`]); the pool
//! keeps the two kinds of connection apart.
//!
//! The response is read as hyper's client reads it: at most [`MAX_HEADERS`] headers in at most
//! [`MAX_HEAD`] bytes, interim (1xx) responses skipped, a body framed by `Transfer-Encoding:
//! chunked` (with trailers), `Content-Length` or the connection's end. A connection goes back
//! to the pool when its response has been read to the end and nothing else arrived.

use crate::{
    ascii::eq_lower,
    pool::{Conn, EndpointPool, SendBody},
};
use bytes::{Buf, Bytes, BytesMut};
use http::{header, HeaderMap, HeaderName, HeaderValue, Method, Request, StatusCode, Version};
use http_body::{Frame, SizeHint};
use pillion_layers::{error::IncompleteResponse, BoxError};
use std::{
    future::poll_fn,
    io,
    mem::MaybeUninit,
    pin::Pin,
    sync::Arc,
    task::{ready, Context, Poll},
};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// The most headers a head may have (hyper's default), in a response here and in a request on
/// the own server.
pub(crate) const MAX_HEADERS: usize = 100;
/// The most bytes a head (or a trailer block) may take (hyper's default buffer limit), in a
/// response here and in a request on the own server.
pub(crate) const MAX_HEAD: usize = 8192 + 4096 * 100;
/// A chunk-size line longer than this (with its extensions) is refused.
const MAX_CHUNK_LINE: usize = 4096;
/// The read buffer grows by at least this much when less than [`MIN_SPARE`] is left. Exchanges
/// share a buffer until it is used up, so small responses cost no allocation each.
const READ_SIZE: usize = 16 * 1024;
/// A connection whose reads fill the buffer (a large body) reads up to this much at a time.
const MAX_READ_SIZE: usize = 256 * 1024;
const MIN_SPARE: usize = 2 * 1024;
/// How many header names of the last response a connection keeps for the next.
const KEPT_NAMES: usize = 32;

/// A response the proxy cannot pass on.
#[derive(Debug, thiserror::Error)]
pub enum Malformed {
    /// The head does not parse.
    #[error("malformed upstream response head: {0}")]
    Head(httparse::Error),
    /// A status code outside 100-999 or a header name or value `http` refuses.
    #[error("malformed upstream response head: invalid {0}")]
    Invalid(&'static str),
    /// The head (or a trailer block) is larger than [`MAX_HEAD`].
    #[error("upstream response head larger than {MAX_HEAD} bytes")]
    TooLarge,
    /// `Content-Length` is not a number, or two of them disagree.
    #[error("malformed upstream response: invalid content-length")]
    ContentLength,
    /// A chunk of a chunked body is not framed as one.
    #[error("malformed upstream response: invalid chunked encoding")]
    Chunk,
    /// `101 Switching Protocols` to a request that asked for no upgrade.
    #[error("the upstream switched protocols unasked")]
    UnaskedUpgrade,
}

/// An HTTP/1.1 connection to an endpoint, with the buffers it keeps between exchanges.
pub(crate) struct H1Conn {
    io: Conn,
    /// Bytes read and not yet consumed; empty between exchanges.
    buf: BytesMut,
    /// The request head being written.
    head: Vec<u8>,
    /// How much the read buffer grows by: doubled while reads fill it.
    read_size: usize,
    /// The header names of the last response, in order: an upstream tends to answer with the
    /// same headers each time, and a kept name is compared, not parsed (nor allocated again).
    names: Vec<HeaderName>,
}

/// Why [`H1Conn::send`] did not produce a response.
pub(crate) enum SendError {
    /// A reused connection failed before any byte of the request was written: it had closed,
    /// and the request may go on another.
    Unsent,
    /// A reused connection ended or was reset after the request went out and before any byte of
    /// the response: the upstream closed it while idle, as the request arrived (the keep-alive
    /// race). Only for an idempotent request (RFC 9110, section 9.2.2), which may go again once.
    Lost,
    /// Anything else.
    Failed(BoxError),
}

/// What [`parse_head`] found at the start of the buffer.
enum Parsed {
    /// Not all of a head yet.
    Partial,
    /// An interim (1xx) response, consumed.
    Interim,
    Final(Head),
}

/// The response head, read.
struct Head {
    status: StatusCode,
    version: Version,
    reason: Option<Bytes>,
    headers: HeaderMap,
    framing: Framing,
    keep_alive: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Framing {
    Length(u64),
    Chunked,
    /// Until the upstream closes the connection.
    Eof,
}

/// The framing headers of a head, as they are read.
#[derive(Default)]
struct Scan {
    length: Option<u64>,
    transfer_encoding: bool,
    chunked: bool,
    close: bool,
    keep_alive: bool,
}

/// The body of a response read by [`H1Conn`].
pub(crate) struct Body {
    /// Data read with the head (all of a small body), not yet yielded.
    data: Option<Bytes>,
    decode: Decode,
    /// The connection, while the body is being read from it.
    conn: Option<Box<H1Conn>>,
    /// Where the connection goes when the body ends, if it may be reused.
    pool: Option<Arc<EndpointPool>>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Decode {
    /// Bytes left of a `Content-Length` body.
    Length(u64),
    /// Until the connection ends.
    Eof,
    /// A chunk-size line is next.
    Size,
    /// Bytes left of the current chunk.
    Data(u64),
    /// The CRLF after a chunk's data is next.
    DataEnd,
    /// The trailer block after the last chunk is next.
    Trailers,
}

/// Whether [`H1Conn`] can send `req`: HTTP/1.1, no body, no upgrade.
pub(crate) fn can_send(req: &Request<SendBody>) -> bool {
    use http_body::Body as _;
    req.version() == Version::HTTP_11
        && req.method() != Method::CONNECT
        && req.body().is_end_stream()
        && !req.headers().contains_key(header::UPGRADE)
}

// === impl H1Conn ===

impl H1Conn {
    /// A connection of the own client, boxed: it moves into every response it reads (the body
    /// reads from it), and a pointer moves cheaper than the connection and its buffers.
    pub(crate) fn new(io: Conn) -> Box<Self> {
        Box::new(Self {
            io,
            buf: BytesMut::new(),
            head: Vec::new(),
            read_size: READ_SIZE,
            names: Vec::new(),
        })
    }

    /// The connection, for hyper's client.
    pub(crate) fn into_io(self) -> Conn {
        self.io
    }

    /// Whether a connection that waited in the pool is still usable: the upstream has neither
    /// closed it nor sent anything. With nothing new from the upstream this reads nothing (the
    /// runtime knows the socket has no data), so it costs no system call.
    pub(crate) fn is_usable(&mut self) -> bool {
        let mut cx = Context::from_waker(std::task::Waker::noop());
        let mut byte = [0u8; 1];
        let mut probe = ReadBuf::new(&mut byte);
        Pin::new(&mut self.io)
            .poll_read(&mut cx, &mut probe)
            .is_pending()
    }

    /// Returns the connection to `pool` after its exchange, unless more than the response
    /// arrived: an upstream that sends what it was not asked for gets no other request.
    fn release(self: Box<Self>, pool: &Arc<EndpointPool>) {
        if self.buf.is_empty() {
            pool.checkin_h1_own(self);
        }
    }

    /// Sends `req` (which [`can_send`]) and reads the response head. The body reads the rest and
    /// returns the connection to `pool` at its end; a response without one returns it now.
    pub(crate) async fn send(
        mut self: Box<Self>,
        req: &Request<SendBody>,
        reused: bool,
        may_lose: bool,
        pool: &Arc<EndpointPool>,
    ) -> Result<http::Response<Body>, SendError> {
        encode_head(&mut self.head, req);
        let mut written = 0;
        let sent = poll_fn(|cx| {
            while written < self.head.len() {
                match ready!(Pin::new(&mut self.io).poll_write(cx, &self.head[written..])) {
                    Ok(0) => return Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
                    Ok(n) => written += n,
                    Err(e) => return Poll::Ready(Err(e)),
                }
            }
            Pin::new(&mut self.io).poll_flush(cx)
        })
        .await;
        if let Err(e) = sent {
            return Err(if reused && written == 0 {
                SendError::Unsent
            } else {
                SendError::Failed(e.into())
            });
        }

        let is_head = req.method() == Method::HEAD;
        // Whether the connection may be given up for another when it ends with no answer.
        let mut resend = reused && may_lose && req.method().is_idempotent();
        let head = loop {
            if !self.buf.is_empty() {
                match parse_head(&mut self.buf, is_head, &mut self.names) {
                    Ok(Parsed::Final(head)) => break head,
                    // What follows an interim response may be all there.
                    Ok(Parsed::Interim) => continue,
                    Ok(Parsed::Partial) => {}
                    Err(e) => return Err(SendError::Failed(Box::new(e))),
                }
            }
            if self.buf.len() >= MAX_HEAD {
                return Err(SendError::Failed(Box::new(Malformed::TooLarge)));
            }
            match poll_fn(|cx| self.poll_fill(cx)).await {
                Ok(0) if resend => return Err(SendError::Lost),
                Ok(0) => return Err(SendError::Failed(Box::new(IncompleteResponse))),
                Ok(_) => resend = false,
                Err(e) if resend && e.kind() == io::ErrorKind::ConnectionReset => {
                    return Err(SendError::Lost)
                }
                Err(e) => return Err(SendError::Failed(e.into())),
            }
        };

        let mut rsp = http::Response::new(Body::start(self, head.framing, head.keep_alive, pool));
        *rsp.status_mut() = head.status;
        *rsp.version_mut() = head.version;
        *rsp.headers_mut() = head.headers;
        if let Some(reason) = head.reason {
            if let Ok(reason) = hyper::ext::ReasonPhrase::try_from(reason) {
                rsp.extensions_mut().insert(reason);
            }
        }
        Ok(rsp)
    }

    /// Reads more into the buffer; `Ok(0)` is the end of the connection.
    fn poll_fill(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        if self.buf.capacity() - self.buf.len() < MIN_SPARE {
            self.buf.reserve(self.read_size);
        }
        let spare = self.buf.capacity() - self.buf.len();
        let n = ready!(tokio_util::io::poll_read_buf(
            Pin::new(&mut self.io),
            cx,
            &mut self.buf
        ))?;
        if n == spare {
            self.read_size = (self.read_size * 2).min(MAX_READ_SIZE);
        }
        Poll::Ready(Ok(n))
    }

    /// Reads more into the buffer; the end of the connection is an [`IncompleteResponse`].
    fn poll_more(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        match ready!(self.poll_fill(cx)) {
            Ok(0) => Poll::Ready(Err(Box::new(IncompleteResponse))),
            Ok(_) => Poll::Ready(Ok(())),
            Err(e) => Poll::Ready(Err(e.into())),
        }
    }
}

impl std::fmt::Debug for H1Conn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("H1Conn")
            .field("buffered", &self.buf.len())
            .finish_non_exhaustive()
    }
}

/// Writes `req`'s head into `out`: the request line with the URI as given (origin form), and
/// the headers as they are, but `Transfer-Encoding` (there is no body).
fn encode_head<B>(out: &mut Vec<u8>, req: &Request<B>) {
    out.clear();
    out.extend_from_slice(req.method().as_str().as_bytes());
    out.push(b' ');
    let target = req
        .uri()
        .path_and_query()
        .map_or_else(|| req.uri().path(), |pq| pq.as_str());
    out.extend_from_slice(if target.is_empty() { "/" } else { target }.as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\n");
    for (name, value) in req.headers() {
        if name == header::TRANSFER_ENCODING {
            continue;
        }
        put_header(out, name.as_str().as_bytes(), value.as_bytes());
    }
    out.extend_from_slice(b"\r\n");
}

/// Writes one header line.
pub(crate) fn put_header(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    out.extend_from_slice(name);
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

/// Parses a response head from the start of `buf` and consumes it (a partial one stays).
/// `names` are the header names of the previous response, reused where they match.
fn parse_head(
    buf: &mut BytesMut,
    is_head: bool,
    names: &mut Vec<HeaderName>,
) -> Result<Parsed, Malformed> {
    // Where each header's name and value, and the reason, sit in the head: the head becomes
    // shared bytes only once parsed, and the values are slices of it.
    let mut spans = [(0u32, 0u32, 0u32, 0u32); MAX_HEADERS];
    let base = buf.as_ptr() as usize;
    let at = |s: &[u8]| ((s.as_ptr() as usize - base) as u32, s.len() as u32);
    let mut scan = Scan::default();
    let (len, code, minor, reason, count) = {
        let mut slots = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_HEADERS];
        let mut rsp = httparse::Response::new(&mut []);
        let len = match httparse::ParserConfig::default()
            .parse_response_with_uninit_headers(&mut rsp, buf, &mut slots)
        {
            Ok(httparse::Status::Complete(len)) => len,
            Ok(httparse::Status::Partial) => return Ok(Parsed::Partial),
            Err(httparse::Error::TooManyHeaders) => return Err(Malformed::TooLarge),
            Err(e) => return Err(Malformed::Head(e)),
        };
        for (span, h) in spans.iter_mut().zip(rsp.headers.iter()) {
            let (ns, nl) = at(h.name.as_bytes());
            let (vs, vl) = at(h.value);
            *span = (ns, nl, vs, vl);
            scan.header(h.name, h.value)?;
        }
        (
            len,
            rsp.code.unwrap_or(0),
            rsp.version.unwrap_or(1),
            // NOTE: a status line without a reason, or with obs-text in it, gets a static empty
            // string from httparse, not a slice of the head: the canonical reason goes instead.
            rsp.reason
                .filter(|r| !r.is_empty())
                .map(|r| at(r.as_bytes())),
            rsp.headers.len(),
        )
    };
    let status = StatusCode::from_u16(code).map_err(|_| Malformed::Invalid("status code"))?;
    if status.is_informational() {
        if status == StatusCode::SWITCHING_PROTOCOLS {
            return Err(Malformed::UnaskedUpgrade);
        }
        buf.advance(len);
        return Ok(Parsed::Interim);
    }

    let head = buf.split_to(len).freeze();
    let slice = |(start, len): (u32, u32)| head.slice(start as usize..(start + len) as usize);
    let mut headers = HeaderMap::with_capacity(count);
    for (i, &(ns, nl, vs, vl)) in spans[..count].iter().enumerate() {
        let raw = &head[ns as usize..(ns + nl) as usize];
        let name = match names.get(i) {
            // NOTE: a kept name is valid and lower-case, so bytes equal to it but for case are
            // the same name.
            Some(kept) if eq_lower(raw, kept.as_str().as_bytes()) => kept.clone(),
            _ => {
                let name =
                    HeaderName::from_bytes(raw).map_err(|_| Malformed::Invalid("header name"))?;
                match names.get_mut(i) {
                    Some(kept) => *kept = name.clone(),
                    None if i < KEPT_NAMES => names.push(name.clone()),
                    None => {}
                }
                name
            }
        };
        let value = HeaderValue::from_maybe_shared(slice((vs, vl)))
            .map_err(|_| Malformed::Invalid("header value"))?;
        headers.append(name, value);
    }
    let reason = reason
        .map(slice)
        .filter(|r| status.canonical_reason().map(str::as_bytes) != Some(&r[..]));

    let version = if minor == 0 {
        Version::HTTP_10
    } else {
        Version::HTTP_11
    };
    let keep_alive = !scan.close && (minor != 0 || scan.keep_alive);
    let (framing, keep_alive) =
        if is_head || status == StatusCode::NO_CONTENT || status == StatusCode::NOT_MODIFIED {
            (Framing::Length(0), keep_alive)
        } else if scan.transfer_encoding {
            if scan.chunked {
                // NOTE: a length beside chunked framing is ignored, but such a peer is not trusted
                // with another request.
                (Framing::Chunked, keep_alive && scan.length.is_none())
            } else {
                (Framing::Eof, false)
            }
        } else {
            match scan.length {
                Some(n) => (Framing::Length(n), keep_alive),
                None => (Framing::Eof, false),
            }
        };
    Ok(Parsed::Final(Head {
        status,
        version,
        reason,
        headers,
        framing,
        keep_alive,
    }))
}

// === impl Scan ===

impl Scan {
    fn header(&mut self, name: &str, value: &[u8]) -> Result<(), Malformed> {
        let name = name.as_bytes();
        if eq_lower(name, b"content-length") {
            // Repeated (or listed) lengths must agree.
            for part in value.split(|&b| b == b',') {
                let n = parse_decimal(part.trim_ascii()).ok_or(Malformed::ContentLength)?;
                if self.length.is_some_and(|m| m != n) {
                    return Err(Malformed::ContentLength);
                }
                self.length = Some(n);
            }
        } else if eq_lower(name, b"transfer-encoding") {
            self.transfer_encoding = true;
            // Chunked must be the last coding applied.
            self.chunked = value
                .rsplit(|&b| b == b',')
                .next()
                .is_some_and(|last| eq_lower(last.trim_ascii(), b"chunked"));
        } else if eq_lower(name, b"connection") {
            for token in value.split(|&b| b == b',') {
                let token = token.trim_ascii();
                self.close |= eq_lower(token, b"close");
                self.keep_alive |= eq_lower(token, b"keep-alive");
            }
        }
        Ok(())
    }
}

pub(crate) fn parse_decimal(digits: &[u8]) -> Option<u64> {
    if digits.is_empty() || digits.len() > 19 {
        return None;
    }
    digits.iter().try_fold(0u64, |n, &d| {
        d.is_ascii_digit().then(|| n * 10 + u64::from(d - b'0'))
    })
}

/// The size of a chunk from its size line (without CRLF): hex digits, then optional white
/// space and extensions (`;` ...), nothing else.
fn parse_chunk_size(line: &[u8]) -> Option<u64> {
    let end = line
        .iter()
        .position(|&b| !b.is_ascii_hexdigit())
        .unwrap_or(line.len());
    let (digits, rest) = line.split_at(end);
    let rest = rest.trim_ascii_start();
    if digits.is_empty() || digits.len() > 15 || !(rest.is_empty() || rest[0] == b';') {
        return None;
    }
    digits.iter().try_fold(0u64, |n, &d| {
        char::from(d).to_digit(16).map(|v| n * 16 + u64::from(v))
    })
}

// === impl Body ===

impl Body {
    /// The body after the head: done at once (the connection back in `pool` if it may be reused)
    /// when all of it came with the head.
    fn start(
        mut conn: Box<H1Conn>,
        framing: Framing,
        keep_alive: bool,
        pool: &Arc<EndpointPool>,
    ) -> Self {
        let decode = match framing {
            Framing::Length(n) if n <= conn.buf.len() as u64 => {
                let data = conn.buf.split_to(n as usize).freeze();
                if keep_alive {
                    conn.release(pool);
                }
                return Self {
                    data: (!data.is_empty()).then_some(data),
                    decode: Decode::Length(0),
                    conn: None,
                    pool: None,
                };
            }
            Framing::Length(n) => Decode::Length(n),
            Framing::Chunked => Decode::Size,
            Framing::Eof => Decode::Eof,
        };
        Self {
            data: None,
            decode,
            conn: Some(conn),
            pool: keep_alive.then(|| pool.clone()),
        }
    }

    /// The body has ended: the connection goes back to the pool if it may be reused and holds
    /// nothing more.
    fn finish(&mut self) {
        if let (Some(conn), Some(pool)) = (self.conn.take(), self.pool.take()) {
            conn.release(&pool);
        }
    }

    /// Reads the next frame from `conn` in the state `self.decode`.
    fn poll_decode(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        loop {
            let Some(conn) = self.conn.as_mut() else {
                return Poll::Ready(None);
            };
            match self.decode {
                Decode::Length(left) | Decode::Data(left) => {
                    if conn.buf.is_empty() {
                        ready!(conn.poll_more(cx))?;
                    }
                    let n = left.min(conn.buf.len() as u64);
                    let data = conn.buf.split_to(n as usize).freeze();
                    let left = left - n;
                    match self.decode {
                        Decode::Length(_) if left == 0 => self.finish(),
                        Decode::Length(_) => self.decode = Decode::Length(left),
                        _ if left == 0 => self.decode = Decode::DataEnd,
                        _ => self.decode = Decode::Data(left),
                    }
                    return Poll::Ready(Some(Ok(Frame::data(data))));
                }
                Decode::Eof => {
                    if conn.buf.is_empty() && ready!(conn.poll_fill(cx))? == 0 {
                        self.conn = None;
                        return Poll::Ready(None);
                    }
                    return Poll::Ready(Some(Ok(Frame::data(conn.buf.split().freeze()))));
                }
                Decode::Size => match conn.buf.iter().position(|&b| b == b'\n') {
                    Some(lf) => {
                        // A bare LF ends no chunk-size line: refused, not waited past.
                        let end = lf.checked_sub(1).filter(|&cr| conn.buf[cr] == b'\r');
                        let end = end.ok_or(Malformed::Chunk)?;
                        let size = parse_chunk_size(&conn.buf[..end]).ok_or(Malformed::Chunk)?;
                        conn.buf.advance(lf + 1);
                        self.decode = if size == 0 {
                            Decode::Trailers
                        } else {
                            Decode::Data(size)
                        };
                    }
                    None if conn.buf.len() > MAX_CHUNK_LINE => {
                        return Poll::Ready(Some(Err(Box::new(Malformed::Chunk))))
                    }
                    None => ready!(conn.poll_more(cx))?,
                },
                Decode::DataEnd => {
                    if conn.buf.len() < 2 {
                        ready!(conn.poll_more(cx))?;
                        continue;
                    }
                    if &conn.buf[..2] != b"\r\n" {
                        return Poll::Ready(Some(Err(Box::new(Malformed::Chunk))));
                    }
                    conn.buf.advance(2);
                    self.decode = Decode::Size;
                }
                Decode::Trailers => {
                    if conn.buf.starts_with(b"\r\n") {
                        conn.buf.advance(2);
                        self.finish();
                        return Poll::Ready(None);
                    }
                    match parse_trailers(&conn.buf)? {
                        Some((len, trailers)) => {
                            conn.buf.advance(len);
                            self.finish();
                            return Poll::Ready(Some(Ok(Frame::trailers(trailers))));
                        }
                        None if conn.buf.len() >= MAX_HEAD => {
                            return Poll::Ready(Some(Err(Box::new(Malformed::TooLarge))))
                        }
                        None => ready!(conn.poll_more(cx))?,
                    }
                }
            }
        }
    }
}

/// Parses a trailer block (headers and the empty line) from the start of `buf`: its length and
/// the trailers, or `None` if it is not all there yet.
fn parse_trailers(buf: &[u8]) -> Result<Option<(usize, HeaderMap)>, Malformed> {
    let mut slots = [httparse::EMPTY_HEADER; MAX_HEADERS];
    match httparse::parse_headers(buf, &mut slots) {
        Ok(httparse::Status::Complete((len, fields))) => {
            let mut trailers = HeaderMap::with_capacity(fields.len());
            for f in fields {
                let name = HeaderName::from_bytes(f.name.as_bytes())
                    .map_err(|_| Malformed::Invalid("trailer name"))?;
                let value =
                    HeaderValue::from_bytes(f.value).map_err(|_| Malformed::Invalid("trailer"))?;
                trailers.append(name, value);
            }
            Ok(Some((len, trailers)))
        }
        Ok(httparse::Status::Partial) => Ok(None),
        Err(httparse::Error::TooManyHeaders) => Err(Malformed::TooLarge),
        Err(e) => Err(Malformed::Head(e)),
    }
}

impl http_body::Body for Body {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        if let Some(data) = self.data.take() {
            return Poll::Ready(Some(Ok(Frame::data(data))));
        }
        let polled = self.poll_decode(cx);
        if let Poll::Ready(Some(Err(_))) = polled {
            // A broken response leaves the connection mid-message: it is closed.
            self.conn = None;
            self.pool = None;
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.data.is_none() && self.conn.is_none()
    }

    fn size_hint(&self) -> SizeHint {
        let buffered = self.data.as_ref().map_or(0, |d| d.len() as u64);
        match (&self.conn, self.decode) {
            (None, _) => SizeHint::with_exact(buffered),
            (Some(_), Decode::Length(left)) => SizeHint::with_exact(buffered + left),
            (Some(_), _) => SizeHint::default(),
        }
    }
}

impl std::fmt::Debug for Body {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Body")
            .field("decode", &self.decode)
            .field("reading", &self.conn.is_some())
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(raw: &str, is_head: bool) -> (Result<Parsed, Malformed>, BytesMut) {
        let mut buf = BytesMut::from(raw.as_bytes());
        let head = parse_head(&mut buf, is_head, &mut Vec::new());
        (head, buf)
    }

    fn head(raw: &str, is_head: bool) -> Head {
        match parse(raw, is_head).0 {
            Ok(Parsed::Final(head)) => head,
            Ok(_) => panic!("incomplete: {raw:?}"),
            Err(e) => panic!("{e}: {raw:?}"),
        }
    }

    #[test]
    fn a_head_with_a_length_is_parsed_and_consumed() {
        let raw = "HTTP/1.1 200 OK\r\ncontent-length: 5\r\nx-a: 1\r\nx-a: 2\r\n\r\nhello";
        let (_, rest) = parse(raw, false);
        let head = head(raw, false);
        assert_eq!(head.status, StatusCode::OK);
        assert_eq!(head.framing, Framing::Length(5));
        assert!(head.keep_alive);
        assert!(head.reason.is_none(), "the canonical reason is not kept");
        let all: Vec<_> = head.headers.get_all("x-a").iter().collect();
        assert_eq!(all, ["1", "2"]);
        assert_eq!(&rest[..], b"hello");
    }

    #[test]
    fn a_partial_head_waits_for_more() {
        let raw = "HTTP/1.1 200 OK\r\ncontent-len";
        let (head, rest) = parse(raw, false);
        assert!(matches!(head, Ok(Parsed::Partial)));
        assert_eq!(&rest[..], raw.as_bytes(), "nothing consumed");
    }

    #[test]
    fn interim_responses_are_skipped_and_an_unasked_upgrade_is_refused() {
        let (head, rest) = parse(
            "HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 204 No Content\r\n\r\n",
            false,
        );
        assert!(matches!(head, Ok(Parsed::Interim)));
        assert_eq!(&rest[..], b"HTTP/1.1 204 No Content\r\n\r\n");
        let (head, _) = parse("HTTP/1.1 101 Switching Protocols\r\n\r\n", false);
        assert!(matches!(head, Err(Malformed::UnaskedUpgrade)));
    }

    #[test]
    fn framing_follows_the_headers_the_status_and_the_method() {
        let framing = |raw: &str, is_head: bool| {
            let head = head(raw, is_head);
            (head.framing, head.keep_alive)
        };
        let chunked = "HTTP/1.1 200 OK\r\ntransfer-encoding: gzip, chunked\r\n\r\n";
        assert_eq!(framing(chunked, false), (Framing::Chunked, true));
        let both = "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\ncontent-length: 3\r\n\r\n";
        assert_eq!(framing(both, false), (Framing::Chunked, false));
        let gzip = "HTTP/1.1 200 OK\r\ntransfer-encoding: gzip\r\n\r\n";
        assert_eq!(framing(gzip, false), (Framing::Eof, false));
        let neither = "HTTP/1.1 200 OK\r\n\r\n";
        assert_eq!(framing(neither, false), (Framing::Eof, false));
        let head = "HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\n";
        assert_eq!(framing(head, true), (Framing::Length(0), true));
        let not_modified = "HTTP/1.1 304 Not Modified\r\ncontent-length: 10\r\n\r\n";
        assert_eq!(framing(not_modified, false), (Framing::Length(0), true));
        let close = "HTTP/1.1 200 OK\r\nconnection: close\r\ncontent-length: 0\r\n\r\n";
        assert_eq!(framing(close, false), (Framing::Length(0), false));
        let old = "HTTP/1.0 200 OK\r\ncontent-length: 0\r\n\r\n";
        assert_eq!(framing(old, false), (Framing::Length(0), false));
        let old_kept = "HTTP/1.0 200 OK\r\nconnection: keep-alive\r\ncontent-length: 0\r\n\r\n";
        assert_eq!(framing(old_kept, false), (Framing::Length(0), true));
    }

    #[test]
    fn bad_heads_are_refused() {
        for raw in [
            "HTTP/1.1 200 OK\r\ncontent-length: 5x\r\n\r\n",
            "HTTP/1.1 200 OK\r\ncontent-length: 5\r\ncontent-length: 6\r\n\r\n",
            "HTTP/1.1 200 OK\r\ncontent-length: 99999999999999999999\r\n\r\n",
            "HTTP/1.1 2000 OK\r\n\r\n",
            "HTTP/1.1 099 Low\r\n\r\n",
            "HTTP/1.1 200 OK\r\nbad header\r\n\r\n",
            "SMTP ready\r\n\r\n",
        ] {
            assert!(parse(raw, false).0.is_err(), "{raw:?}");
        }
        let repeated = "HTTP/1.1 200 OK\r\ncontent-length: 5, 5\r\n\r\n";
        let head = head(repeated, false);
        assert_eq!(head.framing, Framing::Length(5), "equal lengths agree");
        let many = format!(
            "HTTP/1.1 200 OK\r\n{}\r\n",
            "x: y\r\n".repeat(MAX_HEADERS + 1)
        );
        assert!(matches!(parse(&many, false).0, Err(Malformed::TooLarge)));
    }

    #[test]
    fn header_names_of_the_last_response_are_reused_where_they_match() {
        let mut names = Vec::new();
        let mut buf =
            BytesMut::from(&b"HTTP/1.1 200 OK\r\nX-Server: a\r\ncontent-length: 0\r\n\r\n"[..]);
        assert!(matches!(
            parse_head(&mut buf, false, &mut names),
            Ok(Parsed::Final(_))
        ));
        assert_eq!(names, ["x-server", "content-length"]);

        // Same names (one in another case), then a different one in second place.
        let mut buf = BytesMut::from(
            &b"HTTP/1.1 200 OK\r\nx-server: b\r\nx-other: c\r\ncontent-length: 0\r\n\r\n"[..],
        );
        let Ok(Parsed::Final(head)) = parse_head(&mut buf, false, &mut names) else {
            panic!("parses");
        };
        assert_eq!(head.headers["x-server"], "b");
        assert_eq!(head.headers["x-other"], "c");
        assert_eq!(head.headers["content-length"], "0");
        assert_eq!(head.headers.len(), 3);
        assert_eq!(names, ["x-server", "x-other", "content-length"]);

        // A name unlike the kept one is parsed, and a bad one still refused.
        let mut buf = BytesMut::from(&b"HTTP/1.1 200 OK\r\nx-server: d\r\nbad name: e\r\n\r\n"[..]);
        assert!(parse_head(&mut buf, false, &mut names).is_err());
    }

    #[test]
    fn an_uncommon_reason_is_kept() {
        let head = head(
            "HTTP/1.1 200 Fine Thanks\r\ncontent-length: 0\r\n\r\n",
            false,
        );
        assert_eq!(head.reason.as_deref(), Some(&b"Fine Thanks"[..]));
    }

    #[test]
    fn a_missing_or_obs_text_reason_gives_way_to_the_canonical_one() {
        for raw in [
            &b"HTTP/1.1 404\r\ncontent-length: 0\r\n\r\n"[..],
            b"HTTP/1.1 200 \r\ncontent-length: 0\r\n\r\n",
            b"HTTP/1.1 200 Tr\xe9s bien\r\ncontent-length: 0\r\n\r\n",
            "HTTP/1.1 200 Très bien ✓\r\ncontent-length: 0\r\n\r\n".as_bytes(),
        ] {
            let mut buf = BytesMut::from(raw);
            let Ok(Parsed::Final(head)) = parse_head(&mut buf, false, &mut Vec::new()) else {
                panic!("{raw:?} parses");
            };
            assert_eq!(head.reason, None, "{raw:?}");
            assert_eq!(head.framing, Framing::Length(0));
        }
    }

    #[test]
    fn a_length_beside_a_transfer_coding_frames_nothing() {
        // NOTE: the length itself goes with the hop-by-hop fields (`strip_hop_by_hop`), for
        // both clients' responses.
        for raw in [
            "HTTP/1.1 200 OK\r\nContent-Length: 3\r\ntransfer-encoding: chunked\r\n\r\n",
            "HTTP/1.1 200 OK\r\ntransfer-encoding: identity\r\ncontent-length: 5\r\n\r\n",
        ] {
            let head = head(raw, false);
            assert_ne!(head.framing, Framing::Length(3), "{raw:?}");
            assert_ne!(head.framing, Framing::Length(5), "{raw:?}");
            assert!(head.headers.contains_key("transfer-encoding"));
            assert!(
                !head.keep_alive,
                "{raw:?}: not trusted with another request"
            );
        }
    }

    #[test]
    fn chunk_sizes_parse_with_extensions_and_refuse_garbage() {
        assert_eq!(parse_chunk_size(b"1a"), Some(26));
        assert_eq!(parse_chunk_size(b"A;name=value"), Some(10));
        assert_eq!(parse_chunk_size(b"0"), Some(0));
        assert_eq!(parse_chunk_size(b""), None);
        assert_eq!(parse_chunk_size(b"xyz"), None);
        assert_eq!(parse_chunk_size(b"ffffffffffffffff"), None, "too large");
        assert_eq!(parse_chunk_size(b"5 ;ext"), Some(5));
        assert_eq!(parse_chunk_size(b"5\t"), Some(5));
        assert_eq!(parse_chunk_size(b"5 garbage"), None);
        assert_eq!(parse_chunk_size(b"5x"), None);
        assert_eq!(parse_chunk_size(b";ext"), None);
    }

    #[test]
    fn trailers_parse_once_complete() {
        assert!(matches!(parse_trailers(b"grpc-status: 0\r\n"), Ok(None)));
        let (len, t) = parse_trailers(b"grpc-status: 0\r\nx: y\r\n\r\nrest")
            .expect("parses")
            .expect("complete");
        assert_eq!(len, 24);
        assert_eq!(t["grpc-status"], "0");
        assert_eq!(t["x"], "y");
    }

    #[test]
    fn the_request_head_is_written_in_origin_form_without_transfer_encoding() {
        let req = Request::builder()
            .method("GET")
            .uri("/a?b=c")
            .header("host", "svc")
            .header("transfer-encoding", "chunked")
            .header("x-k", "v")
            .body(())
            .expect("request");
        let mut out = Vec::new();
        encode_head(&mut out, &req);
        assert_eq!(out, b"GET /a?b=c HTTP/1.1\r\nhost: svc\r\nx-k: v\r\n\r\n");
    }
}
