//! HTTP/1.1 edge cases on both sides of the proxy, seen on the wire: odd upstream status lines
//! and framings, lost keep-alive races, request bodies that fail to parse, `Host` and request
//! target validation, hop-by-hop names that would strip what the proxy adds, and headers that
//! must not survive as trailers or on a bodiless status.
//!
//! Clients write exact bytes over raw TCP, and upstreams are raw TCP servers that record every
//! request they read and answer with scripted bytes, so neither side normalizes anything away.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use http::StatusCode;
use pillion_tests::client::{full, req};
use pillion_tests::upstream::Upstream;
use pillion_tests::{free_addr, within, H1Client, Proxy, Reply};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

// === upstream side: a recording, scripted raw server ===

/// One request as an upstream read it off the wire.
#[derive(Debug, Clone)]
struct Seen {
    /// The request line and header lines, as sent (CRLFs included).
    head: String,
    /// The body, with any chunked framing removed.
    body: Vec<u8>,
}

impl Seen {
    fn request_line(&self) -> &str {
        self.head.lines().next().unwrap_or_default()
    }

    /// Every value of header `name`, one per header line.
    fn headers(&self, name: &str) -> Vec<&str> {
        self.head
            .lines()
            .skip(1)
            .filter_map(|l| l.split_once(':'))
            .filter(|(n, _)| n.trim().eq_ignore_ascii_case(name))
            .map(|(_, v)| v.trim())
            .collect()
    }
}

/// What an upstream has read so far, in order, across all its connections.
type Log = Arc<Mutex<Vec<Seen>>>;

fn seen(log: &Log) -> Vec<Seen> {
    log.lock().unwrap_or_else(|e| e.into_inner()).clone()
}

/// One line including its `\n`; `None` at EOF or on an error.
async fn read_line(tcp: &mut BufReader<TcpStream>) -> Option<Vec<u8>> {
    let mut line = Vec::new();
    match tcp.read_until(b'\n', &mut line).await {
        Ok(0) | Err(_) => None,
        Ok(_) => Some(line),
    }
}

/// Reads one whole request (head and a content-length or chunked body); `None` when the peer
/// closed or sent something that is not a complete request.
async fn read_request(tcp: &mut BufReader<TcpStream>) -> Option<Seen> {
    let mut head = Vec::new();
    loop {
        let line = read_line(tcp).await?;
        head.extend_from_slice(&line);
        if line == b"\r\n" {
            break;
        }
    }
    let mut seen = Seen {
        head: String::from_utf8_lossy(&head).into_owned(),
        body: Vec::new(),
    };
    let chunked = seen
        .headers("transfer-encoding")
        .iter()
        .any(|v| v.eq_ignore_ascii_case("chunked"));
    if chunked {
        loop {
            let size = read_line(tcp).await?;
            let size = String::from_utf8_lossy(&size);
            let size = usize::from_str_radix(size.split(';').next()?.trim(), 16).ok()?;
            if size == 0 {
                while read_line(tcp).await? != b"\r\n" {}
                break;
            }
            let mut chunk = vec![0; size + 2];
            tcp.read_exact(&mut chunk).await.ok()?;
            seen.body.extend_from_slice(&chunk[..size]);
        }
    } else if let Some(len) = seen.headers("content-length").first() {
        let mut body = vec![0; len.parse().ok()?];
        tcp.read_exact(&mut body).await.ok()?;
        seen.body = body;
    }
    Some(seen)
}

/// A raw upstream that records every request it reads and answers with `answer(n, request)`,
/// `n` counting the requests on that connection from 0; `None` closes the connection unanswered.
async fn scripted<F>(answer: F) -> (Upstream, Log)
where
    F: Fn(usize, &Seen) -> Option<Vec<u8>> + Send + Sync + 'static,
{
    let log = Log::default();
    let record = log.clone();
    let answer = Arc::new(answer);
    let upstream = Upstream::tcp(move |tcp| {
        let (record, answer) = (record.clone(), answer.clone());
        async move {
            let mut tcp = BufReader::new(tcp);
            for n in 0.. {
                let Some(request) = read_request(&mut tcp).await else {
                    return;
                };
                record
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .push(request.clone());
                let Some(reply) = answer(n, &request) else {
                    return;
                };
                if tcp.get_mut().write_all(&reply).await.is_err() {
                    return;
                }
            }
        }
    })
    .await;
    (upstream, log)
}

const OK: &[u8] = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok";

/// An upstream answering every request `200 ok`.
async fn ok_upstream() -> (Upstream, Log) {
    scripted(|_, _| Some(OK.to_vec())).await
}

/// An upstream answering every request with `reply`.
async fn always(reply: &'static [u8]) -> (Upstream, Log) {
    scripted(move |_, _| Some(reply.to_vec())).await
}

// === downstream side: a raw client ===

/// A response as it came over the wire.
#[derive(Debug)]
struct Raw {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
    trailers: Vec<(String, String)>,
}

impl Raw {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    fn all(&self, name: &str) -> Vec<&str> {
        self.headers
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
            .collect()
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// A client connection that writes raw requests and reads responses one by one.
struct Client {
    tcp: BufReader<TcpStream>,
}

impl Client {
    async fn connect(addr: SocketAddr) -> Self {
        let tcp = within("connecting to the proxy", TcpStream::connect(addr))
            .await
            .expect("connect to the proxy");
        Self {
            tcp: BufReader::new(tcp),
        }
    }

    async fn send(&mut self, bytes: &[u8]) {
        self.tcp.get_mut().write_all(bytes).await.expect("write");
    }

    async fn line(&mut self) -> String {
        let line = read_line(&mut self.tcp)
            .await
            .expect("a response line before EOF");
        String::from_utf8_lossy(&line)
            .trim_end_matches("\r\n")
            .to_owned()
    }

    async fn fields(&mut self) -> Vec<(String, String)> {
        let mut fields = Vec::new();
        loop {
            let line = self.line().await;
            if line.is_empty() {
                return fields;
            }
            let (name, value) = line
                .split_once(':')
                .unwrap_or_else(|| panic!("bad header line {line:?}"));
            fields.push((name.to_owned(), value.trim().to_owned()));
        }
    }

    /// Reads one response (chunked framing wins over a content-length, as RFC 9112 says).
    async fn response(&mut self) -> Raw {
        within("reading a response", self.read_response()).await
    }

    async fn read_response(&mut self) -> Raw {
        let status_line = self.line().await;
        let status = status_line
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("bad status line {status_line:?}"));
        let headers = self.fields().await;
        let mut raw = Raw {
            status,
            headers,
            body: Vec::new(),
            trailers: Vec::new(),
        };
        if matches!(status, 100..=199 | 204 | 304) {
            return raw;
        }
        if raw.header("transfer-encoding") == Some("chunked") {
            loop {
                let size = self.line().await;
                let size = usize::from_str_radix(size.split(';').next().unwrap_or(""), 16)
                    .unwrap_or_else(|_| panic!("bad chunk size {size:?}"));
                if size == 0 {
                    raw.trailers = self.fields().await;
                    break;
                }
                let mut chunk = vec![0; size + 2];
                self.tcp.read_exact(&mut chunk).await.expect("a chunk");
                raw.body.extend_from_slice(&chunk[..size]);
            }
        } else if let Some(len) = raw.header("content-length") {
            let mut body = vec![0; len.parse().expect("a numeric content-length")];
            self.tcp.read_exact(&mut body).await.expect("the body");
            raw.body = body;
        } else {
            self.tcp.read_to_end(&mut raw.body).await.expect("the body");
        }
        raw
    }
}

/// Sends `request` on a new connection and reads the one response.
async fn exchange(addr: SocketAddr, request: &[u8]) -> Raw {
    let mut client = Client::connect(addr).await;
    client.send(request).await;
    client.response().await
}

/// A proxy with one `http1` cluster in front of `upstream`.
async fn proxy_to(upstream: &Upstream) -> (Proxy, SocketAddr) {
    Proxy::in_front_of(upstream.addr(), "http1").await
}

fn post(path: &str, body: &'static [u8]) -> http::Request<pillion_tests::Body> {
    req("POST", &format!("http://svc{path}"))
        .body(full(body))
        .expect("a POST request")
}

fn assert_pillion_error(reply: &Reply, status: StatusCode, reason: &str) {
    assert_eq!(reply.status, status, "{reply:?}");
    assert_eq!(reply.header("x-pillion-error"), Some(reason), "{reply:?}");
}

// === upstream responses ===

#[tokio::test]
async fn status_lines_without_a_reason_or_with_obs_text_are_read() {
    // RFC 9112 allows an empty reason phrase and obs-text (bytes 0x80-0xFF) in it; neither may
    // trip up the proxy, let alone panic a connection task.
    let (upstream, _log) = scripted(|_, req| {
        Some(if req.request_line().starts_with("GET /bare ") {
            b"HTTP/1.1 404\r\ncontent-length: 2\r\n\r\nno".to_vec()
        } else {
            b"HTTP/1.1 200 Tr\xe9s bien\r\ncontent-length: 2\r\n\r\nok".to_vec()
        })
    })
    .await;
    let (proxy, listen) = proxy_to(&upstream).await;
    let mut client = H1Client::connect(listen).await;
    for _ in 0..2 {
        let bare = client.get("http://svc/bare").await;
        assert_eq!(bare.status, StatusCode::NOT_FOUND, "{bare:?}");
        assert_eq!(bare.text(), "no");
        let accented = client.get("http://svc/accented").await;
        assert_eq!(accented.status, StatusCode::OK, "{accented:?}");
        assert_eq!(accented.text(), "ok");
    }
    let log = proxy.log_text();
    assert!(!log.contains("panicked"), "the proxy panicked:\n{log}");
}

#[tokio::test]
async fn a_response_with_content_length_and_chunked_is_read_as_chunked() {
    // Both framings: transfer-encoding wins (RFC 9112, 6.3), and the stale length must not reach
    // the client, which would otherwise stop after 3 bytes and read the rest as a response.
    const BOTH: &[u8] =
        b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n\
                          5\r\nhello\r\n0\r\n\r\n";
    let requests: [(&str, &[u8]); 2] = [
        // Pillion's own client.
        ("GET", b"GET /both HTTP/1.1\r\nHost: svc\r\n\r\n"),
        // Hyper's client.
        (
            "POST",
            b"POST /both HTTP/1.1\r\nHost: svc\r\nContent-Length: 3\r\n\r\nabc",
        ),
    ];
    for (method, request) in requests {
        // A fresh proxy each: a connection pooled by one client could be used by the other.
        let (upstream, _log) = always(BOTH).await;
        let (_proxy, listen) = proxy_to(&upstream).await;
        let rsp = exchange(listen, request).await;
        assert_eq!(rsp.status, 200, "{method}: {rsp:?}");
        assert_eq!(rsp.text(), "hello", "{method}: {rsp:?}");
        assert!(
            !rsp.all("content-length").contains(&"3"),
            "{method}: the conflicting content-length reached the client: {rsp:?}"
        );
    }
}

#[tokio::test]
async fn an_unrequested_101_to_a_post_is_502_upstream_reset() {
    // The request asked for no upgrade, so a 101 is a broken response, not a tunnel.
    let (upstream, _log) = always(
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n",
    )
    .await;
    let (_proxy, listen) = proxy_to(&upstream).await;
    let mut client = H1Client::connect(listen).await;
    let reply = client.request(post("/upload", b"hello")).await;
    assert_pillion_error(&reply, StatusCode::BAD_GATEWAY, "upstream-reset");
}

/// An upstream that answers the first request of each connection (keep-alive) and then, on the
/// same connection, reads the next one and closes without a byte of response: the race of a
/// pooled connection the server closes just as the proxy reuses it.
async fn one_answer_per_connection() -> (Upstream, Log) {
    scripted(|n, _| (n == 0).then(|| OK.to_vec())).await
}

#[tokio::test]
async fn a_request_lost_on_a_closing_pooled_connection_is_resent_unless_it_has_a_body() {
    let (upstream, log) = one_answer_per_connection().await;
    let (_proxy, listen) = proxy_to(&upstream).await;
    let mut client = H1Client::connect(listen).await;
    for i in 0..4 {
        let reply = client.get(&format!("http://svc/get/{i}")).await;
        assert_eq!(reply.status, StatusCode::OK, "GET {i}: {reply:?}");
        assert_eq!(reply.text(), "ok", "GET {i}");
    }
    let got = seen(&log);
    assert!(
        got.len() > 4,
        "each GET after the first was lost once and resent: {} requests upstream",
        got.len()
    );
    assert!(upstream.connections() > 1, "resent on new connections");

    // A body is not replayed without a retry policy: the POST lost on the pooled connection
    // (hyper's, since the first request had a body too) fails.
    let (upstream, log) = one_answer_per_connection().await;
    let (_proxy, listen) = proxy_to(&upstream).await;
    let mut client = H1Client::connect(listen).await;
    let first = client.request(post("/first", b"one")).await;
    assert_eq!(first.status, StatusCode::OK, "{first:?}");
    let second = client.request(post("/second", b"two")).await;
    assert_pillion_error(&second, StatusCode::BAD_GATEWAY, "upstream-reset");
    let got = seen(&log);
    assert_eq!(
        got.iter()
            .filter(|s| s.request_line().starts_with("POST /second "))
            .count(),
        1,
        "the second POST was sent once: {got:?}"
    );

    // A GET after a POST goes out on the connection hyper's client pooled for the POST; lost
    // there, it is sent again too.
    let (upstream, log) = one_answer_per_connection().await;
    let (_proxy, listen) = proxy_to(&upstream).await;
    let mut client = H1Client::connect(listen).await;
    let first = client.request(post("/first", b"one")).await;
    assert_eq!(first.status, StatusCode::OK, "{first:?}");
    let get = client.get("http://svc/after-post").await;
    assert_eq!(get.status, StatusCode::OK, "{get:?}");
    let got = seen(&log);
    assert_eq!(
        got.iter()
            .filter(|s| s.request_line().starts_with("GET /after-post "))
            .count(),
        2,
        "lost once on the pooled connection, then answered on a new one: {got:?}"
    );
}

// === request bodies ===

#[tokio::test]
async fn a_bad_chunked_request_body_is_400_and_ejects_no_endpoint() {
    // The client's body is broken, not the endpoints: with ejection after a single gateway
    // failure (and nothing holding an ejection back), a body error blamed on the upstream would
    // eject an endpoint at the first bad request.
    let (a, _a_log) = ok_upstream().await;
    let (b, _b_log) = ok_upstream().await;
    let listen = free_addr();
    let proxy = Proxy::start(&format!(
        r#"
listeners:
  - name: in
    address: {listen}
    protocol: http
    cluster: app
clusters:
  - name: app
    endpoints: [{}, {}]
    outlier_detection: {{ consecutive_gateway_failure: 1, base_ejection_time: 30s, max_ejection_percent: 100 }}
"#,
        a.addr(),
        b.addr()
    ))
    .await;

    for i in 0..5 {
        let rsp = exchange(
            listen,
            b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
        )
        .await;
        assert_eq!(rsp.status, 400, "bad body {i}: {rsp:?}");
        assert_eq!(
            rsp.header("x-pillion-error"),
            Some("bad-request-body"),
            "bad body {i}: {rsp:?}"
        );
    }
    // Both endpoints still serve (round robin reaches each).
    for i in 0..4 {
        let rsp = exchange(listen, b"GET /after HTTP/1.1\r\nHost: a\r\n\r\n").await;
        assert_eq!(rsp.status, 200, "GET {i} after the bad bodies: {rsp:?}");
    }
    let m = proxy.metrics().await;
    assert_eq!(
        m.sum("pillion_outlier_ejections_total", &[("cluster", "app")]),
        0.0,
        "/metrics:\n{}",
        m.text
    );
    assert_eq!(
        m.sum(
            "pillion_cluster_endpoints",
            &[("cluster", "app"), ("state", "ejected")]
        ),
        0.0,
        "/metrics:\n{}",
        m.text
    );
    let clusters = proxy.admin_get("/clusters").await;
    let all: serde_json::Value = serde_json::from_slice(&clusters.body).expect("/clusters JSON");
    let app = all
        .as_array()
        .expect("/clusters is an array")
        .iter()
        .find(|c| c["name"] == "app")
        .unwrap_or_else(|| panic!("no cluster app in {all}"));
    let endpoints = app["endpoints"].as_array().expect("an endpoints array");
    assert_eq!(endpoints.len(), 2, "{app}");
    for e in endpoints {
        assert_eq!(e["ejected"], false, "{app}");
    }
}

#[tokio::test]
async fn a_get_with_a_chunked_body_forwards_the_body() {
    // A body on a GET has no defined meaning, but it is framed, so it must be forwarded rather
    // than left on the connection to be read as the next request.
    let (upstream, log) = ok_upstream().await;
    let (_proxy, listen) = proxy_to(&upstream).await;
    let rsp = exchange(
        listen,
        b"GET /search HTTP/1.1\r\nHost: svc\r\nTransfer-Encoding: chunked\r\n\r\n\
          7\r\n{\"q\":1}\r\n0\r\n\r\n",
    )
    .await;
    assert_eq!(rsp.status, 200, "{rsp:?}");
    let got = seen(&log);
    assert_eq!(got.len(), 1, "{got:?}");
    assert!(got[0].request_line().starts_with("GET /search "), "{got:?}");
    assert_eq!(
        String::from_utf8_lossy(&got[0].body),
        r#"{"q":1}"#,
        "{got:?}"
    );
}

// === what a request may be ===

#[tokio::test]
async fn host_must_be_present_once_and_valid_and_an_absolute_target_wins() {
    let (upstream, log) = ok_upstream().await;
    let (_proxy, listen) = proxy_to(&upstream).await;

    let missing = exchange(listen, b"GET /x HTTP/1.1\r\n\r\n").await;
    assert_eq!(missing.status, 400, "no Host: {missing:?}");
    assert_eq!(missing.header("x-pillion-error"), Some("bad-request"));
    let bad: [(&str, &[u8]); 2] = [
        (
            "two Host lines",
            b"GET /x HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
        ),
        ("Host: a/b", b"GET /x HTTP/1.1\r\nHost: a/b\r\n\r\n"),
    ];
    for (what, request) in bad {
        let rsp = exchange(listen, request).await;
        assert_eq!(rsp.status, 400, "{what}: {rsp:?}");
    }
    assert!(seen(&log).is_empty(), "forwarded: {:?}", seen(&log));

    // The absolute form's authority is the host (RFC 9112, 3.2.2): routing, policies and the app
    // must all see the same one, so the Host header is replaced, not duplicated.
    let rsp = exchange(
        listen,
        b"GET http://public.example/x HTTP/1.1\r\nHost: admin.example\r\n\r\n",
    )
    .await;
    assert_eq!(rsp.status, 200, "absolute form: {rsp:?}");
    let got = seen(&log);
    assert_eq!(got.len(), 1, "{got:?}");
    assert_eq!(
        got[0].headers("host"),
        ["public.example"],
        "{}",
        got[0].head
    );
    assert!(!got[0].head.contains("admin.example"), "{}", got[0].head);

    // HTTP/1.0 does not require Host.
    let rsp = exchange(listen, b"GET /x HTTP/1.0\r\n\r\n").await;
    assert_eq!(rsp.status, 200, "HTTP/1.0 without Host: {rsp:?}");
    assert_eq!(seen(&log).len(), 2);
}

#[tokio::test]
async fn connect_is_405_and_opens_nothing_upstream() {
    let (upstream, log) = ok_upstream().await;
    let (_proxy, listen) = proxy_to(&upstream).await;
    let rsp = exchange(
        listen,
        b"CONNECT other.example:443 HTTP/1.1\r\nHost: other.example:443\r\n\r\n",
    )
    .await;
    assert_eq!(rsp.status, 405, "{rsp:?}");
    assert_eq!(
        rsp.header("x-pillion-error"),
        Some("connect-unsupported"),
        "{rsp:?}"
    );
    assert_eq!(upstream.connections(), 0, "{:?}", seen(&log));

    // A request after it is the first, and only, thing the upstream sees.
    let rsp = exchange(listen, b"GET /after HTTP/1.1\r\nHost: svc\r\n\r\n").await;
    assert_eq!(rsp.status, 200, "{rsp:?}");
    let got = seen(&log);
    assert_eq!(got.len(), 1, "{got:?}");
    assert!(got[0].request_line().starts_with("GET /after "), "{got:?}");
}

#[tokio::test]
async fn request_targets_other_than_origin_absolute_http_and_options_star_are_400() {
    let (upstream, log) = ok_upstream().await;
    let (_proxy, listen) = proxy_to(&upstream).await;
    let bad: [&[u8]; 5] = [
        b"GET * HTTP/1.1\r\nHost: svc\r\n\r\n",
        b"GET other.example:80 HTTP/1.1\r\nHost: other.example:80\r\n\r\n",
        b"GET http://user:pw@other/x HTTP/1.1\r\nHost: other\r\n\r\n",
        b"GET ftp://other/x HTTP/1.1\r\nHost: other\r\n\r\n",
        b"GET http://other:99999/x HTTP/1.1\r\nHost: other\r\n\r\n",
    ];
    for request in bad {
        let what = String::from_utf8_lossy(request);
        let what = what.lines().next().unwrap_or_default();
        let rsp = exchange(listen, request).await;
        assert_eq!(rsp.status, 400, "{what}: {rsp:?}");
    }
    assert!(seen(&log).is_empty(), "forwarded: {:?}", seen(&log));

    let rsp = exchange(listen, b"OPTIONS * HTTP/1.1\r\nHost: svc\r\n\r\n").await;
    assert_eq!(rsp.status, 200, "OPTIONS *: {rsp:?}");
    let got = seen(&log);
    assert_eq!(got.len(), 1, "{got:?}");
    assert!(got[0].request_line().starts_with("OPTIONS * "), "{got:?}");
}

// === headers ===

#[tokio::test]
async fn connection_cannot_name_away_host_or_the_request_id() {
    // Hop-by-hop names are removed before the proxy sets its own headers, and Host is not
    // hop-by-hop whatever Connection says.
    let (upstream, log) = ok_upstream().await;
    let (_proxy, listen) = proxy_to(&upstream).await;
    let rsp = exchange(
        listen,
        b"GET /x HTTP/1.1\r\nHost: svc\r\nConnection: host, x-request-id\r\n\r\n",
    )
    .await;
    assert_eq!(rsp.status, 200, "{rsp:?}");
    let got = seen(&log);
    assert_eq!(got.len(), 1, "{got:?}");
    assert_eq!(got[0].headers("host"), ["svc"], "{}", got[0].head);
    let ids = got[0].headers("x-request-id");
    assert_eq!(ids.len(), 1, "one x-request-id upstream: {}", got[0].head);
    assert!(!ids[0].is_empty(), "{}", got[0].head);
    assert_eq!(
        rsp.header("x-request-id"),
        Some(ids[0]),
        "the client gets the id the upstream got: {rsp:?}"
    );
}

#[tokio::test]
async fn a_repeated_content_length_reaches_the_upstream_once() {
    // Identical values are allowed (RFC 9112, 6.3) but are one length; forwarding both lines
    // would hand the next hop a message it may reject or read differently.
    let (upstream, log) = ok_upstream().await;
    let (_proxy, listen) = proxy_to(&upstream).await;
    let rsp = exchange(
        listen,
        b"GET /x HTTP/1.1\r\nHost: svc\r\nContent-Length: 0\r\nContent-Length: 0\r\n\r\n",
    )
    .await;
    assert_eq!(rsp.status, 200, "{rsp:?}");
    let got = seen(&log);
    assert_eq!(got.len(), 1, "{got:?}");
    assert_eq!(
        got[0].headers("content-length").len(),
        1,
        "content-length lines upstream: {}",
        got[0].head
    );
}

#[tokio::test]
async fn framing_and_routing_fields_are_dropped_from_trailers_and_bodiless_statuses() {
    // A trailer may not carry framing, routing or other fields a recipient would act on as if
    // they were headers (RFC 9110, 6.5.1); and a 204 has no body, so no content-length.
    let (upstream, _log) = scripted(|_, req| {
        Some(if req.request_line().starts_with("GET /trailers ") {
            b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n\
              5\r\nhello\r\n0\r\ncontent-length: 99\r\nhost: evil\r\nx-checksum: abc\r\n\r\n"
                .to_vec()
        } else if req.request_line().starts_with("GET /empty ") {
            b"HTTP/1.1 204 No Content\r\nContent-Length: 5\r\n\r\n".to_vec()
        } else {
            OK.to_vec()
        })
    })
    .await;
    let (_proxy, listen) = proxy_to(&upstream).await;
    let mut client = Client::connect(listen).await;

    client
        .send(b"GET /trailers HTTP/1.1\r\nHost: svc\r\nTE: trailers\r\n\r\n")
        .await;
    let rsp = client.response().await;
    assert_eq!(rsp.status, 200, "{rsp:?}");
    assert_eq!(rsp.text(), "hello", "{rsp:?}");
    let trailer = |name: &str| {
        rsp.trailers
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
            .collect::<Vec<_>>()
    };
    assert_eq!(trailer("x-checksum"), ["abc"], "{rsp:?}");
    assert!(trailer("content-length").is_empty(), "{rsp:?}");
    assert!(trailer("host").is_empty(), "{rsp:?}");

    client
        .send(b"GET /empty HTTP/1.1\r\nHost: svc\r\n\r\n")
        .await;
    let rsp = client.response().await;
    assert_eq!(rsp.status, 204, "{rsp:?}");
    assert_eq!(rsp.header("content-length"), None, "{rsp:?}");
    // The connection is still in step: the next response is read whole after it.
    client.send(b"GET /ok HTTP/1.1\r\nHost: svc\r\n\r\n").await;
    let rsp = client.response().await;
    assert_eq!((rsp.status, rsp.text().as_str()), (200, "ok"), "{rsp:?}");
}

// === timers and routing after the review of these cases ===

#[tokio::test]
async fn a_head_dripped_after_a_locally_answered_post_still_gets_its_408() {
    // A POST answered by the proxy itself (no route) never has its body read upstream; the
    // next head on the connection is still bound by `header_timeout`.
    let (upstream, _log) = ok_upstream().await;
    let listen = free_addr();
    let _proxy = Proxy::start(&format!(
        r#"
listeners:
  - name: in
    address: {listen}
    protocol: http
    header_timeout: 1s
    routes:
      - match: {{ prefix: /ok }}
        cluster: app
clusters:
  - name: app
    endpoints: [{}]
"#,
        upstream.addr()
    ))
    .await;
    let mut client = Client::connect(listen).await;
    client
        .send(b"POST /nope HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nhello")
        .await;
    assert_eq!(client.response().await.status, 404);
    // Part of the next head, then nothing more: 408 within a few head timeouts, not never.
    client.send(b"GET /ok HTTP/1.1\r\nHo").await;
    let rsp = client.response().await;
    assert_eq!(rsp.status, 408, "{rsp:?}");
}
