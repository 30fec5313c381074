//! Protocol detection: reads a connection's first bytes to tell HTTP/2, HTTP/1 and opaque TCP apart.
//!
//! Bytes are read (not peeked) into a buffer that is then replayed in front of the stream with
//! [`PrefixedIo`](crate::io::PrefixedIo), so waiting for more bytes never spins.

use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncReadExt};

/// The HTTP/2 connection preface (RFC 9113, section 3.4).
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// The longest HTTP/1 request line detection waits for: a longer one that is a method and a
/// target so far is HTTP (served, or 414 past the HTTP server's limit), not opaque.
const MAX_REQUEST_LINE: usize = 8 * 1024;

/// What a connection speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Detected {
    /// HTTP/1.x.
    Http1,
    /// HTTP/2 with prior knowledge.
    Http2,
    /// Anything else, relayed as bytes.
    Opaque,
    /// The client sent nothing before the timeout; relayed as bytes.
    Timeout,
}

/// The verdict on a buffer so far.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// The protocol is known.
    Known(Detected),
    /// More bytes are needed.
    NeedMore,
}

/// Judges the first bytes of a connection.
pub fn classify(buf: &[u8]) -> Verdict {
    if buf.is_empty() {
        return Verdict::NeedMore;
    }
    // Empty lines before a request line are ignored by HTTP servers (RFC 9112, section 2.2), so
    // they must not turn a request into opaque bytes that reach the app around the routes.
    let blank = buf
        .iter()
        .take_while(|&&b| b == b'\r' || b == b'\n')
        .count();
    if blank > 0 {
        return match &buf[blank..] {
            [] if blank < MAX_REQUEST_LINE => Verdict::NeedMore,
            [] => Verdict::Known(Detected::Http1),
            rest => classify_http1(rest),
        };
    }
    let n = buf.len().min(H2_PREFACE.len());
    if buf[..n] == H2_PREFACE[..n] {
        return if n == H2_PREFACE.len() {
            Verdict::Known(Detected::Http2)
        } else {
            Verdict::NeedMore
        };
    }
    classify_http1(buf)
}

/// An HTTP/1 request line: `METHOD SP request-target SP HTTP/1.x CRLF`.
fn classify_http1(buf: &[u8]) -> Verdict {
    let opaque = Verdict::Known(Detected::Opaque);
    // The method is a token (RFC 9110, section 5.6.2): `M-SEARCH` and `get` are methods too.
    let method_len = buf.iter().take_while(|&&b| is_tchar(b)).count();
    if method_len == buf.len() {
        return if method_len <= 16 {
            Verdict::NeedMore
        } else {
            opaque
        };
    }
    if method_len == 0 || buf[method_len] != b' ' {
        return opaque;
    }
    let Some(eol) = buf.iter().position(|&b| b == b'\n') else {
        // A request target has no control characters; wait for the rest of the line.
        let bad = buf[method_len + 1..]
            .iter()
            .any(|&b| b.is_ascii_control() && b != b'\r');
        return if bad {
            opaque
        } else if buf.len() >= MAX_REQUEST_LINE {
            // NOTE: not opaque, or a long enough request line would reach the app around the
            // routes and their policies.
            Verdict::Known(Detected::Http1)
        } else {
            Verdict::NeedMore
        };
    };
    let line = &buf[..eol];
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    let ok = line.len() > method_len + 10
        && (line.ends_with(b" HTTP/1.1") || line.ends_with(b" HTTP/1.0"))
        && !line[method_len + 1..line.len() - 9].contains(&b' ');
    if ok {
        Verdict::Known(Detected::Http1)
    } else {
        opaque
    }
}

/// A token character: letters, digits and ``!#$%&'*+-.^_`|~``.
fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// Reads from `io` until its protocol is known or `timeout` passes. Returns the verdict and the
/// bytes read, which the caller must replay in front of the stream.
///
/// At the timeout, a client that sent nothing is [`Detected::Timeout`] (a server-speaks-first
/// protocol), and one whose bytes so far start an HTTP request (a method, a target) is HTTP/1:
/// its head timeout bounds the rest. A client that splits or drips its request line must not get
/// around the routes and their policies as opaque bytes. Part of the HTTP/2 preface gets
/// `head_timeout` more for the rest of it (and is HTTP/1, which refuses it, if that passes).
pub async fn detect<I: AsyncRead + Unpin>(
    io: &mut I,
    timeout: std::time::Duration,
    head_timeout: std::time::Duration,
) -> std::io::Result<(Detected, BytesMut)> {
    detect_from(io, BytesMut::with_capacity(1024), timeout, head_timeout).await
}

/// [`detect`], with `buf` the bytes already read from `io`.
pub async fn detect_from<I: AsyncRead + Unpin>(
    io: &mut I,
    mut buf: BytesMut,
    timeout: std::time::Duration,
    head_timeout: std::time::Duration,
) -> std::io::Result<(Detected, BytesMut)> {
    if let Verdict::Known(d) = classify(&buf) {
        return Ok((d, buf));
    }
    let mut deadline = tokio::time::Instant::now() + timeout;
    let mut extended = false;
    loop {
        if buf.len() == buf.capacity() {
            buf.reserve(buf.len());
        }
        match tokio::time::timeout_at(deadline, io.read_buf(&mut buf)).await {
            Err(_elapsed) => {
                // NOTE: bytes that settled the question returned below; what is here is empty or
                // the start of an HTTP request.
                if !extended && !buf.is_empty() && H2_PREFACE.starts_with(&buf) {
                    extended = true;
                    deadline = tokio::time::Instant::now() + head_timeout;
                    continue;
                }
                let d = if buf.is_empty() {
                    Detected::Timeout
                } else {
                    Detected::Http1
                };
                return Ok((d, buf));
            }
            Ok(Err(e)) => return Err(e),
            // The client closed before we could tell: relay whatever it sent.
            Ok(Ok(0)) => return Ok((Detected::Opaque, buf)),
            Ok(Ok(_)) => {
                if let Verdict::Known(d) = classify(&buf) {
                    return Ok((d, buf));
                }
            }
        }
    }
}

/// Reads until an HTTP connection's version is known: HTTP/2 with prior knowledge opens with the
/// preface, anything else is HTTP/1 (whose parser answers what is not HTTP). Returns whether it
/// is HTTP/2, and the bytes read, to replay in front of the stream.
///
/// The first read waits as long as the caller lets it; the bytes after it must come within
/// `head_timeout` (a client that stalls inside the HTTP/2 preface gets a `TimedOut` error).
///
/// NOTE: reads with room for a typical request head, so the HTTP/1 parser finds the head whole
/// in its first read and its buffer stays at its initial size.
pub async fn read_http_version<I: AsyncRead + Unpin>(
    io: &mut I,
    head_timeout: std::time::Duration,
) -> std::io::Result<(bool, BytesMut)> {
    let mut buf = BytesMut::with_capacity(4096);
    let mut deadline = None;
    loop {
        let read = match deadline {
            None => io.read_buf(&mut buf).await?,
            Some(at) => tokio::time::timeout_at(at, io.read_buf(&mut buf))
                .await
                .map_err(|_| {
                    std::io::Error::new(
                        std::io::ErrorKind::TimedOut,
                        "the HTTP/2 preface did not arrive in time",
                    )
                })??,
        };
        if read == 0 {
            return Ok((false, buf));
        }
        deadline.get_or_insert_with(|| tokio::time::Instant::now() + head_timeout);
        let n = buf.len().min(H2_PREFACE.len());
        if buf[..n] != H2_PREFACE[..n] {
            return Ok((false, buf));
        }
        if n == H2_PREFACE.len() {
            return Ok((true, buf));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use Detected::*;

    fn known(b: &[u8]) -> Option<Detected> {
        match classify(b) {
            Verdict::Known(d) => Some(d),
            Verdict::NeedMore => None,
        }
    }

    #[test]
    fn http2_preface() {
        assert_eq!(known(H2_PREFACE), Some(Http2));
        assert_eq!(known(&H2_PREFACE[..10]), None);
        assert_eq!(known(b"PRI * HTTP/2.0\r\n\r\nXX"), Some(Opaque));
    }

    #[test]
    fn http1_request_line() {
        assert_eq!(known(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"), Some(Http1));
        assert_eq!(known(b"POST /a?b=c HTTP/1.0\r\n"), Some(Http1));
        assert_eq!(known(b"OPTIONS * HTTP/1.1\n"), Some(Http1));
        assert_eq!(known(b"GET"), None);
        assert_eq!(known(b"GET /partial"), None);
        assert_eq!(known(b"M-SEARCH * HTTP/1.1\r\n"), Some(Http1));
        assert_eq!(known(b"get / HTTP/1.1\r\n"), Some(Http1));
        assert_eq!(known(b"GET / HTTP/2.0\r\n"), Some(Opaque));
        assert_eq!(known(b"GET a b HTTP/1.1\r\n"), Some(Opaque));
    }

    #[test]
    fn empty_lines_before_a_request_line_are_http() {
        assert_eq!(known(b"\r\nGET /admin HTTP/1.1\r\n"), Some(Http1));
        assert_eq!(known(b"\n\nGET /admin HTTP/1.1\r\n"), Some(Http1));
        assert_eq!(known(b"\r\n"), None);
        assert_eq!(known(b"\r\nGET /ad"), None);
        assert_eq!(known(b"\r\nhello\n"), Some(Opaque));
        // Neither the HTTP/2 preface nor anything but a request line follows them.
        assert_eq!(known(b"\r\nPRI * HTTP/2.0\r\n"), Some(Opaque));
        assert_eq!(known(&[b'\n'; MAX_REQUEST_LINE]), Some(Http1));
    }

    #[test]
    fn opaque_bytes() {
        assert_eq!(known(b"\x16\x03\x01\x02\x00"), Some(Opaque)); // a TLS ClientHello
        assert_eq!(known(b"hello\n"), Some(Opaque));
        assert_eq!(known(b"SSH-2.0-OpenSSH\r\n"), Some(Opaque));
        assert_eq!(known(b"HELO x\r\n"), Some(Opaque));
        assert_eq!(known(&[b'A'; 40]), Some(Opaque));
    }

    #[tokio::test]
    async fn http_version_from_the_first_bytes() {
        use tokio::io::AsyncWriteExt;
        let (mut a, mut b) = tokio::io::duplex(64);
        b.write_all(&H2_PREFACE[..5]).await.unwrap();
        let reader = tokio::spawn(async move { read_http_version(&mut a, SECOND).await.unwrap() });
        tokio::task::yield_now().await;
        b.write_all(&H2_PREFACE[5..]).await.unwrap();
        let (h2, buf) = reader.await.unwrap();
        assert!(h2);
        assert_eq!(&buf[..], H2_PREFACE);

        let (mut a, mut b) = tokio::io::duplex(64);
        b.write_all(b"PUT / HTTP/1.1\r\n").await.unwrap();
        let (h2, buf) = read_http_version(&mut a, SECOND).await.unwrap();
        assert!(!h2, "PUT is not PRI");
        assert_eq!(&buf[..], b"PUT / HTTP/1.1\r\n");

        let (mut a, b) = tokio::io::duplex(64);
        drop(b);
        let (h2, buf) = read_http_version(&mut a, SECOND).await.unwrap();
        assert!(!h2 && buf.is_empty(), "EOF first");
    }

    const SECOND: std::time::Duration = std::time::Duration::from_secs(1);

    #[tokio::test(start_paused = true)]
    async fn a_stalled_http2_preface_times_out_from_its_first_byte() {
        use tokio::io::AsyncWriteExt;
        let (mut a, mut b) = tokio::io::duplex(64);
        let reader = tokio::spawn(async move { read_http_version(&mut a, SECOND).await });
        // Silence before the first byte is the idle timeout's business, not this one's.
        tokio::time::sleep(10 * SECOND).await;
        assert!(!reader.is_finished());
        b.write_all(&H2_PREFACE[..5]).await.unwrap();
        let start = tokio::time::Instant::now();
        let err = reader.await.unwrap().unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::TimedOut);
        assert_eq!(start.elapsed(), SECOND);
    }

    #[tokio::test(start_paused = true)]
    async fn silent_client_times_out() {
        let (mut client, _server) = tokio::io::duplex(64);
        let ms = std::time::Duration::from_millis;
        let (d, buf) = detect(&mut client, ms(500), ms(1000)).await.unwrap();
        assert_eq!(d, Timeout);
        assert!(buf.is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn slow_request_line_is_waited_for() {
        use tokio::io::AsyncWriteExt;
        let (mut a, mut b) = tokio::io::duplex(64);
        let writer = tokio::spawn(async move {
            b.write_all(b"GET /x").await.unwrap();
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            b.write_all(b" HTTP/1.1\r\n").await.unwrap();
            b
        });
        let s = std::time::Duration::from_secs;
        let (d, buf) = detect(&mut a, s(1), s(1)).await.unwrap();
        assert_eq!(d, Http1);
        assert_eq!(&buf[..], b"GET /x HTTP/1.1\r\n");
        drop(writer.await.unwrap());
    }

    #[tokio::test(start_paused = true)]
    async fn the_start_of_a_request_then_silence_is_http() {
        use tokio::io::AsyncWriteExt;
        // A request line split or dripped past the timeout stays HTTP (its head timeout bounds
        // it), so it cannot reach the app as opaque bytes around the routes' policies.
        let ms = std::time::Duration::from_millis;
        for start in [&b"GET"[..], b"GET /admin/sec"] {
            let (mut a, mut b) = tokio::io::duplex(64);
            b.write_all(start).await.unwrap();
            let (d, buf) = detect(&mut a, ms(200), ms(1000)).await.unwrap();
            assert_eq!(d, Http1, "{start:?}");
            assert_eq!(&buf[..], start);
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_slow_http2_preface_gets_the_head_timeout_for_the_rest() {
        use tokio::io::AsyncWriteExt;
        let ms = std::time::Duration::from_millis;
        let (mut a, mut b) = tokio::io::duplex(64);
        let writer = tokio::spawn(async move {
            b.write_all(&H2_PREFACE[..10]).await.unwrap();
            tokio::time::sleep(ms(500)).await;
            b.write_all(&H2_PREFACE[10..]).await.unwrap();
            b
        });
        let (d, buf) = detect(&mut a, ms(200), ms(1000)).await.unwrap();
        assert_eq!(d, Http2);
        assert_eq!(&buf[..], H2_PREFACE);
        drop(writer.await.unwrap());
    }

    #[test]
    fn a_long_request_line_is_http_and_not_opaque() {
        let mut line = b"GET /".to_vec();
        line.resize(MAX_REQUEST_LINE + 1, b'a');
        assert_eq!(known(&line), Some(Http1));
        line.push(0);
        assert_eq!(known(&line), Some(Opaque), "a control byte in the target");
    }
}
