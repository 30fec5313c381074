//! gRPC-style trailers pass through an HTTP/2 listener to an `http2` cluster, both ways; an
//! HTTP/1.1 client gets a response's trailers only when it asked for them with `TE: trailers`.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Response, StatusCode};
use http_body::Frame;
use http_body_util::BodyExt;
use pillion_tests::client::{req, stream_body, BoxError};
use pillion_tests::upstream::Upstream;
use pillion_tests::{free_addr, within, H2Client, Proxy};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

fn trailers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
    let mut map = HeaderMap::new();
    for (name, value) in pairs {
        map.insert(*name, HeaderValue::from_static(value));
    }
    map
}

/// A body of `data` followed by `trailers`.
fn body_with_trailers(data: &'static [u8], trailers: HeaderMap) -> pillion_tests::Body {
    stream_body(futures_util::stream::iter([
        Ok::<_, BoxError>(Frame::data(Bytes::from_static(data))),
        Ok(Frame::trailers(trailers)),
    ]))
}

/// What the upstream saw of the request.
#[derive(Default, Debug)]
struct Seen {
    body: Bytes,
    trailers: Option<HeaderMap>,
    content_type: Option<HeaderValue>,
    te: Option<HeaderValue>,
}

#[tokio::test]
async fn grpc_request_and_response_trailers_pass_through_unchanged() {
    let seen = Arc::new(Mutex::new(Seen::default()));
    let record = seen.clone();
    let upstream = Upstream::http2(move |req| {
        let record = record.clone();
        async move {
            let content_type = req.headers().get("content-type").cloned();
            let te = req.headers().get("te").cloned();
            let collected = req.into_body().collect().await.expect("request body");
            *record.lock().unwrap() = Seen {
                trailers: collected.trailers().cloned(),
                body: collected.to_bytes(),
                content_type,
                te,
            };
            let reply = body_with_trailers(
                b"\x00\x00\x00\x00\x02hi",
                trailers(&[("grpc-status", "0"), ("grpc-message", "all%20good")]),
            );
            Response::builder()
                .header("content-type", "application/grpc")
                .body(reply)
                .unwrap()
        }
    })
    .await;
    let listen = free_addr();
    let _proxy = Proxy::start(&format!(
        r#"
listeners:
  - name: grpc
    address: {listen}
    protocol: http
    cluster: grpc
clusters:
  - name: grpc
    endpoints: [{}]
    protocol: http2
"#,
        upstream.addr()
    ))
    .await;

    let client = H2Client::connect(listen).await;
    let request = req("POST", "http://grpc.svc/pkg.Service/Method")
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(body_with_trailers(
            b"\x00\x00\x00\x00\x03abc",
            trailers(&[("x-client-trailer", "sent"), ("grpc-timeout", "5S")]),
        ))
        .unwrap();
    let reply = client.request(request).await;

    assert_eq!(reply.status, StatusCode::OK, "{reply:?}");
    assert_eq!(reply.header("content-type"), Some("application/grpc"));
    assert_eq!(&reply.body[..], b"\x00\x00\x00\x00\x02hi");
    let got = reply.trailers.as_ref().expect("response trailers");
    assert_eq!(got.get("grpc-status").unwrap(), "0", "{got:?}");
    assert_eq!(got.get("grpc-message").unwrap(), "all%20good", "{got:?}");

    let seen = seen.lock().unwrap();
    assert_eq!(&seen.body[..], b"\x00\x00\x00\x00\x03abc");
    assert_eq!(seen.content_type.as_ref().unwrap(), "application/grpc");
    assert_eq!(
        seen.te.as_ref().map(|v| v.as_bytes()),
        Some(&b"trailers"[..])
    );
    let got = seen
        .trailers
        .as_ref()
        .expect("request trailers at the upstream");
    assert_eq!(got.get("x-client-trailer").unwrap(), "sent", "{got:?}");
    assert_eq!(got.get("grpc-timeout").unwrap(), "5S", "{got:?}");
}

/// A chunked HTTP/1.1 response as it came over the wire.
#[derive(Debug)]
struct Chunked {
    head: String,
    body: Vec<u8>,
    /// The trailer section's field lines; empty when the body ended with `0\r\n\r\n`.
    trailer_lines: Vec<String>,
}

/// One CRLF-terminated line, without the CRLF.
async fn line(tcp: &mut BufReader<TcpStream>) -> String {
    let mut line = Vec::new();
    let n = tcp.read_until(b'\n', &mut line).await.expect("read");
    assert!(n > 0, "EOF inside a response");
    let line = String::from_utf8(line).expect("ASCII");
    line.strip_suffix("\r\n")
        .unwrap_or_else(|| panic!("a line without CRLF: {line:?}"))
        .to_owned()
}

/// Reads one response that must be chunked: its head, its data and its trailer section.
async fn read_chunked(tcp: &mut BufReader<TcpStream>) -> Chunked {
    within("reading a chunked response", async {
        let mut head = String::new();
        loop {
            let l = line(tcp).await;
            if l.is_empty() {
                break;
            }
            head.push_str(&l);
            head.push('\n');
        }
        assert!(
            head.to_ascii_lowercase()
                .contains("\ntransfer-encoding: chunked\n"),
            "{head}"
        );
        let mut body = Vec::new();
        loop {
            let size = line(tcp).await;
            let size = usize::from_str_radix(&size, 16).expect("a chunk size");
            if size == 0 {
                break;
            }
            let mut chunk = vec![0; size + 2];
            tcp.read_exact(&mut chunk).await.expect("a chunk");
            assert_eq!(&chunk[size..], b"\r\n");
            body.extend_from_slice(&chunk[..size]);
        }
        let mut trailer_lines = Vec::new();
        loop {
            let l = line(tcp).await;
            if l.is_empty() {
                break;
            }
            trailer_lines.push(l);
        }
        Chunked {
            head,
            body,
            trailer_lines,
        }
    })
    .await
}

async fn connect(addr: SocketAddr) -> BufReader<TcpStream> {
    let tcp = within("connecting to the proxy", TcpStream::connect(addr))
        .await
        .expect("connect to the proxy");
    BufReader::new(tcp)
}

#[tokio::test]
async fn http1_clients_get_response_trailers_only_when_they_send_te_trailers() {
    // An HTTP/2 upstream sends its trailers whatever the request said, as a gRPC server does: the
    // proxy is the one to drop them for an HTTP/1.1 client that did not ask for them (RFC 9110,
    // section 6.5.1), whichever of its two HTTP/1.1 servers serves the request.
    let seen_te = Arc::new(Mutex::new(Vec::new()));
    let record = seen_te.clone();
    let upstream = Upstream::http2(move |req| {
        record
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(req.headers().get("te").cloned());
        async move {
            let reply = body_with_trailers(b"hello", trailers(&[("x-checksum", "abc")]));
            // Announced in `Trailer`: hyper's server (the proxy's for requests with a body)
            // sends no trailer field that was not.
            Response::builder()
                .header("trailer", "x-checksum")
                .body(reply)
                .unwrap()
        }
    })
    .await;
    let (_proxy, listen) = Proxy::in_front_of(upstream.addr(), "http2").await;

    // (TE line, whether the client gets the trailer, the TE the upstream sees)
    let want_lines = |want: bool| {
        if want {
            vec!["x-checksum: abc"]
        } else {
            vec![]
        }
    };
    let cases = [
        ("", false, None),
        ("TE: trailers\r\n", true, Some("trailers")),
        ("te: gzip, Trailers\r\n", true, Some("trailers")),
        ("TE: gzip\r\n", false, None),
    ];
    // Requests without a body, all on one connection: the proxy's own server answers them, and
    // the connection stays in step after a trailer section left out.
    let mut tcp = connect(listen).await;
    for (te, want, _) in cases {
        let request = format!("GET /t HTTP/1.1\r\nHost: svc\r\n{te}\r\n");
        tcp.get_mut().write_all(request.as_bytes()).await.unwrap();
        let rsp = read_chunked(&mut tcp).await;
        assert!(rsp.head.starts_with("HTTP/1.1 200 "), "{te:?}: {rsp:?}");
        assert_eq!(rsp.body, b"hello", "{te:?}: {rsp:?}");
        assert_eq!(rsp.trailer_lines, want_lines(want), "{te:?}: {rsp:?}");
    }
    // A request with a body goes to hyper's server, which behaves the same.
    for (te, want, _) in &cases[..2] {
        let mut tcp = connect(listen).await;
        let request = format!("POST /t HTTP/1.1\r\nHost: svc\r\n{te}content-length: 2\r\n\r\nhi");
        tcp.get_mut().write_all(request.as_bytes()).await.unwrap();
        let rsp = read_chunked(&mut tcp).await;
        assert_eq!(rsp.body, b"hello", "{te:?}: {rsp:?}");
        assert_eq!(rsp.trailer_lines, want_lines(*want), "{te:?}: {rsp:?}");
    }

    // Upstream, `TE` carries `trailers` alone, the one value HTTP/2 allows.
    let seen: Vec<_> = seen_te.lock().unwrap_or_else(|e| e.into_inner()).clone();
    let seen: Vec<_> = seen
        .iter()
        .map(|v| v.as_ref().map(|v| v.to_str().unwrap()))
        .collect();
    let expected: Vec<_> = cases.iter().chain(&cases[..2]).map(|c| c.2).collect();
    assert_eq!(seen, expected);
}
