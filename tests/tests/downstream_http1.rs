//! Pillion's own HTTP/1.1 server (requests without a body), seen from a client writing raw bytes:
//! pipelining, `Connection: close`, `HEAD`, how responses are framed, and the hand-over to
//! hyper's server for what it does not take (bodies, `Expect`, HTTP/1.0, bad or huge heads).

use std::net::SocketAddr;

use pillion_tests::upstream::Upstream;
use pillion_tests::{free_addr, within, Echo, EchoSeen, Proxy};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

/// A response as it came over the wire.
#[derive(Debug)]
struct Raw {
    status: u16,
    version: String,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Raw {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    fn echo(&self) -> EchoSeen {
        serde_json::from_slice(&self.body).expect("echo JSON body")
    }
}

/// A client connection that writes raw requests and reads responses one by one.
struct Client {
    tcp: BufReader<TcpStream>,
}

impl Client {
    async fn connect(addr: SocketAddr) -> Self {
        let tcp = TcpStream::connect(addr).await.expect("connect");
        Self {
            tcp: BufReader::new(tcp),
        }
    }

    async fn send(&mut self, bytes: &[u8]) {
        self.tcp.get_mut().write_all(bytes).await.expect("write");
    }

    async fn line(&mut self) -> String {
        let mut line = String::new();
        self.tcp.read_line(&mut line).await.expect("read line");
        line.trim_end_matches("\r\n").to_owned()
    }

    /// Reads one response; `head_only` for the answer to a `HEAD`.
    async fn response(&mut self, head_only: bool) -> Raw {
        within("a response", self.read_response(head_only)).await
    }

    async fn read_response(&mut self, head_only: bool) -> Raw {
        let status_line = self.line().await;
        let mut parts = status_line.splitn(3, ' ');
        let version = parts.next().unwrap_or_default().to_owned();
        let status = parts
            .next()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("bad status line {status_line:?}"));
        let mut headers = Vec::new();
        loop {
            let line = self.line().await;
            if line.is_empty() {
                break;
            }
            let (name, value) = line.split_once(':').expect("header line");
            headers.push((name.to_owned(), value.trim().to_owned()));
        }
        let mut raw = Raw {
            status,
            version,
            headers,
            body: Vec::new(),
        };
        if head_only || status == 100 || status == 204 || status == 304 {
            return raw;
        }
        if raw.header("transfer-encoding") == Some("chunked") {
            loop {
                let size = self.line().await;
                let size = usize::from_str_radix(size.split(';').next().unwrap_or(""), 16)
                    .expect("chunk size");
                if size == 0 {
                    while !self.line().await.is_empty() {}
                    break;
                }
                let mut chunk = vec![0; size + 2];
                self.tcp.read_exact(&mut chunk).await.expect("chunk");
                raw.body.extend_from_slice(&chunk[..size]);
            }
        } else if let Some(len) = raw.header("content-length") {
            let mut body = vec![0; len.parse().expect("content-length")];
            self.tcp.read_exact(&mut body).await.expect("body");
            raw.body = body;
        } else {
            self.tcp.read_to_end(&mut raw.body).await.expect("body");
        }
        raw
    }

    /// Whether the proxy closed the connection (reads EOF).
    async fn closed(&mut self) -> bool {
        let mut byte = [0u8; 1];
        matches!(
            within("the connection's end", self.tcp.read(&mut byte)).await,
            Ok(0) | Err(_)
        )
    }
}

fn get(path: &str, extra: &str) -> String {
    format!("GET {path} HTTP/1.1\r\nhost: svc\r\n{extra}\r\n")
}

#[tokio::test]
async fn pipelined_requests_are_answered_in_order_on_one_connection() {
    let echo = Echo::start().await;
    let (_proxy, listen) = Proxy::in_front_of(echo.addr(), "http1").await;
    let mut client = Client::connect(listen).await;

    let batch = [get("/a", ""), get("/b?x=1", ""), get("/c", "")].concat();
    client.send(batch.as_bytes()).await;
    for path in ["/a", "/b?x=1", "/c"] {
        let rsp = client.response(false).await;
        assert_eq!((rsp.status, rsp.version.as_str()), (200, "HTTP/1.1"));
        assert!(rsp.header("date").is_some(), "{rsp:?}");
        let seen = rsp.echo();
        assert_eq!(seen.path, path);
        assert_eq!(seen.header("x-forwarded-for"), Some("127.0.0.1"));
        assert_eq!(seen.header("x-forwarded-proto"), Some("http"));
    }

    // An absolute-form target (as a client sends it to a forward proxy) reaches the app in
    // origin form.
    client
        .send(b"GET http://svc.example/abs?q=1 HTTP/1.1\r\nhost: svc.example\r\n\r\n")
        .await;
    let seen = client.response(false).await.echo();
    assert_eq!(seen.path, "/abs?q=1");
    assert_eq!(seen.header("host"), Some("svc.example"));

    // A head split over several writes is read whole.
    let head = get("/split", "x-one: 1\r\n");
    for piece in head.as_bytes().chunks(5) {
        client.send(piece).await;
        tokio::task::yield_now().await;
    }
    let rsp = client.response(false).await;
    assert_eq!(rsp.echo().path, "/split");
    assert_eq!(rsp.echo().header("x-one"), Some("1"));
}

#[tokio::test]
async fn connection_close_ends_the_connection_after_the_response() {
    let echo = Echo::start().await;
    let (_proxy, listen) = Proxy::in_front_of(echo.addr(), "http1").await;
    let mut client = Client::connect(listen).await;

    client.send(get("/first", "").as_bytes()).await;
    let rsp = client.response(false).await;
    assert_eq!(rsp.header("connection"), None, "keep-alive by default");

    client
        .send(get("/last", "connection: close\r\n").as_bytes())
        .await;
    let rsp = client.response(false).await;
    assert_eq!(rsp.echo().path, "/last");
    assert_eq!(rsp.header("connection"), Some("close"));
    assert!(client.closed().await);
}

#[tokio::test]
async fn a_head_response_has_no_body_and_the_next_response_follows_it() {
    let echo = Echo::start().await;
    let (_proxy, listen) = Proxy::in_front_of(echo.addr(), "http1").await;
    let mut client = Client::connect(listen).await;

    let batch = [
        "HEAD /?size=1000 HTTP/1.1\r\nhost: svc\r\n\r\n".to_owned(),
        get("/after", ""),
    ]
    .concat();
    client.send(batch.as_bytes()).await;
    let head = client.response(true).await;
    assert_eq!(head.status, 200);
    assert_eq!(head.header("content-length"), Some("1000"));
    let next = client.response(false).await;
    assert_eq!(next.echo().path, "/after");
}

#[tokio::test]
async fn requests_with_bodies_expect_and_http10_are_served_mid_connection() {
    let echo = Echo::start().await;
    let (_proxy, listen) = Proxy::in_front_of(echo.addr(), "http1").await;
    let mut client = Client::connect(listen).await;

    // A bodyless request, one with a body, then bodyless ones again, all on one connection.
    let batch = [
        get("/1", ""),
        "POST /2 HTTP/1.1\r\nhost: svc\r\ncontent-length: 5\r\n\r\nhello".to_owned(),
        get("/3", ""),
    ]
    .concat();
    client.send(batch.as_bytes()).await;
    assert_eq!(client.response(false).await.echo().path, "/1");
    let post = client.response(false).await.echo();
    assert_eq!((post.method.as_str(), post.body_bytes), ("POST", 5));
    assert_eq!(client.response(false).await.echo().path, "/3");

    // `Expect: 100-continue`: the interim answer, then the body, then the response.
    client
        .send(b"PUT /4 HTTP/1.1\r\nhost: svc\r\ncontent-length: 3\r\nexpect: 100-continue\r\n\r\n")
        .await;
    let interim = client.response(false).await;
    assert_eq!(interim.status, 100);
    client.send(b"abc").await;
    let put = client.response(false).await.echo();
    assert_eq!((put.method.as_str(), put.body_bytes), ("PUT", 3));

    // A chunked request body.
    client
        .send(b"POST /5 HTTP/1.1\r\nhost: svc\r\ntransfer-encoding: chunked\r\n\r\n2\r\nab\r\n0\r\n\r\n")
        .await;
    assert_eq!(client.response(false).await.echo().body_bytes, 2);

    // HTTP/1.0 on a fresh connection.
    let mut old = Client::connect(listen).await;
    old.send(b"GET /old HTTP/1.0\r\nhost: svc\r\n\r\n").await;
    let rsp = old.response(false).await;
    assert_eq!(rsp.status, 200);
    assert_eq!(rsp.echo().path, "/old");
}

#[tokio::test]
async fn malformed_and_oversized_heads_get_400_and_431() {
    let echo = Echo::start().await;
    let (_proxy, listen) = Proxy::in_front_of(echo.addr(), "http1").await;

    let mut client = Client::connect(listen).await;
    client.send(get("/fine", "").as_bytes()).await;
    assert_eq!(client.response(false).await.status, 200);
    client.send(b"NOT A REQUEST\r\n\r\n").await;
    assert_eq!(client.response(false).await.status, 400);
    assert!(client.closed().await);

    let mut client = Client::connect(listen).await;
    client
        .send(b"GET /bad\x01path HTTP/1.1\r\nhost: svc\r\n\r\n")
        .await;
    assert_eq!(client.response(false).await.status, 400);

    let mut client = Client::connect(listen).await;
    let huge = format!("x-huge: {}\r\n", "a".repeat(500 * 1024));
    client.send(get("/huge", &huge).as_bytes()).await;
    assert_eq!(client.response(false).await.status, 431);
}

/// An upstream answering `/chunked` in chunks and anything else with a body that runs until it
/// closes the connection.
async fn unframed_upstream() -> Upstream {
    Upstream::tcp(|tcp| async move {
        let mut tcp = BufReader::new(tcp);
        let mut head = String::new();
        loop {
            let mut line = String::new();
            match tcp.read_line(&mut line).await {
                Ok(0) | Err(_) => return,
                Ok(_) if line == "\r\n" => break,
                Ok(_) => head.push_str(&line),
            }
        }
        let tcp = tcp.get_mut();
        if head.starts_with("GET /chunked ") {
            let _ = tcp
                .write_all(
                    b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n\
                      6\r\nhello \r\n5\r\nworld\r\n0\r\n\r\n",
                )
                .await;
        } else {
            let _ = tcp
                .write_all(b"HTTP/1.1 200 OK\r\n\r\nuntil the upstream closes")
                .await;
        }
        // One response per connection: the close ends the second kind.
    })
    .await
}

#[tokio::test]
async fn a_body_of_unknown_length_is_chunked_to_the_client() {
    let upstream = unframed_upstream().await;
    let (_proxy, listen) = Proxy::in_front_of(upstream.addr(), "http1").await;
    let mut client = Client::connect(listen).await;

    for path in ["/chunked", "/until-close", "/chunked"] {
        client.send(get(path, "").as_bytes()).await;
        let rsp = client.response(false).await;
        assert_eq!(rsp.status, 200, "{path}");
        assert_eq!(rsp.header("transfer-encoding"), Some("chunked"), "{path}");
        assert_eq!(rsp.header("content-length"), None, "{path}");
        let want: &[u8] = if path == "/chunked" {
            b"hello world"
        } else {
            b"until the upstream closes"
        };
        assert_eq!(rsp.body, want, "{path}");
    }
}

#[tokio::test]
async fn proxy_replies_carry_a_date_and_a_length_and_keep_the_connection() {
    // Nothing listens upstream: every request gets the proxy's own 502.
    let (_proxy, listen) = Proxy::in_front_of(free_addr(), "http1").await;
    let mut client = Client::connect(listen).await;
    for _ in 0..2 {
        client.send(get("/", "").as_bytes()).await;
        let rsp = client.response(false).await;
        assert_eq!(rsp.status, 502, "{rsp:?}");
        assert_eq!(
            rsp.header("x-pillion-error"),
            Some("upstream-connect-failure")
        );
        assert!(rsp.header("date").is_some(), "{rsp:?}");
        let len: usize = rsp
            .header("content-length")
            .expect("content-length")
            .parse()
            .expect("number");
        assert_eq!(len, rsp.body.len());
    }
}
