//! `protocol: auto`: HTTP/1.1, h2c, opaque bytes and silent (server-speaks-first) clients on
//! one listener, and the detection metric.

use std::net::SocketAddr;

use http::StatusCode;
use pillion_tests::upstream::Upstream;
use pillion_tests::{free_addr, within, Echo, H1Client, H2Client, Proxy};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const BANNER: &[u8] = b"220 banner.test ESMTP ready\r\n";

/// Echoes raw bytes until EOF.
async fn tcp_echo() -> Upstream {
    Upstream::tcp(|tcp| async move {
        let (mut rd, mut wr) = tcp.into_split();
        let _ = tokio::io::copy(&mut rd, &mut wr).await;
        let _ = wr.shutdown().await;
    })
    .await
}

/// Speaks first (a banner on accept), then echoes.
async fn banner_server() -> Upstream {
    Upstream::tcp(|mut tcp| async move {
        if tcp.write_all(BANNER).await.is_ok() {
            let (mut rd, mut wr) = tcp.into_split();
            let _ = tokio::io::copy(&mut rd, &mut wr).await;
        }
    })
    .await
}

struct Setup {
    _upstreams: (Echo, Upstream, Upstream),
    proxy: Proxy,
    /// `auto` listener "mixed": HTTP goes to the echo, opaque bytes to the tcp echo.
    mixed: SocketAddr,
    /// `auto` listener "smtp": a banner server behind a 200ms detect timeout.
    smtp: SocketAddr,
}

async fn setup() -> Setup {
    let (echo, raw, banner) = (
        Echo::named("http").await,
        tcp_echo().await,
        banner_server().await,
    );
    let (mixed, smtp) = (free_addr(), free_addr());
    let proxy = Proxy::start(&format!(
        r#"
listeners:
  - name: mixed
    address: {mixed}
    protocol: auto
    detect_timeout: 5s
    cluster: raw
    routes:
      - name: web
        match:
          prefix: /
        cluster: web
  - name: smtp
    address: {smtp}
    protocol: auto
    detect_timeout: 200ms
    cluster: banner
clusters:
  - name: web
    endpoints: [{}]
  - name: raw
    endpoints: [{}]
  - name: banner
    endpoints: [{}]
"#,
        echo.addr(),
        raw.addr(),
        banner.addr()
    ))
    .await;
    Setup {
        _upstreams: (echo, raw, banner),
        proxy,
        mixed,
        smtp,
    }
}

#[tokio::test]
async fn auto_listener_serves_http1_h2c_and_opaque_bytes() {
    let s = setup().await;

    let mut h1 = H1Client::connect(s.mixed).await;
    let reply = h1.get("http://svc/one?via=h1").await;
    assert_eq!(reply.status, StatusCode::OK);
    let seen = reply.echo();
    assert_eq!(seen.server, "http");
    assert_eq!(seen.path, "/one?via=h1");

    let h2 = H2Client::connect(s.mixed).await;
    let reply = h2.get("http://svc/two?via=h2").await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(reply.version, http::Version::HTTP_2);
    let seen = reply.echo();
    assert_eq!(seen.server, "http");
    assert_eq!(seen.path, "/two?via=h2");

    let mut raw = TcpStream::connect(s.mixed).await.unwrap();
    raw.write_all(b"hello\n").await.unwrap();
    let mut back = [0u8; 6];
    within("opaque echo", raw.read_exact(&mut back))
        .await
        .unwrap();
    assert_eq!(&back, b"hello\n");
    // Still a raw relay after detection: more bytes, then half-close.
    raw.write_all(b"GET / HTTP/1.1\r\n\r\n").await.unwrap();
    raw.shutdown().await.unwrap();
    let mut rest = Vec::new();
    within("opaque echo to EOF", raw.read_to_end(&mut rest))
        .await
        .unwrap();
    assert_eq!(rest, b"GET / HTTP/1.1\r\n\r\n");

    let detect = "pillion_protocol_detect_total";
    for result in ["http1", "http2", "opaque"] {
        s.proxy
            .wait_metric(detect, &[("listener", "mixed"), ("result", result)], 1.0)
            .await;
    }
    let m = s.proxy.metrics().await;
    assert_eq!(
        m.sum(detect, &[("listener", "mixed"), ("result", "timeout")]),
        0.0
    );
    assert_eq!(
        m.sum(
            "pillion_tcp_connections_opened_total",
            &[("listener", "mixed"), ("cluster", "raw")]
        ),
        1.0,
        "{}",
        m.text
    );
    assert_eq!(
        m.sum(
            "pillion_http_requests_total",
            &[("listener", "mixed"), ("cluster", "web")]
        ),
        2.0,
        "{}",
        m.text
    );
}

#[tokio::test]
async fn silent_client_gets_the_server_banner_after_detect_timeout() {
    let s = setup().await;
    let mut tcp = TcpStream::connect(s.smtp).await.unwrap();
    let mut banner = vec![0u8; BANNER.len()];
    within("the upstream's banner", tcp.read_exact(&mut banner))
        .await
        .unwrap();
    assert_eq!(banner, BANNER);
    // Then it is an ordinary relay.
    tcp.write_all(b"EHLO client\r\n").await.unwrap();
    let mut back = [0u8; 13];
    within("echo after banner", tcp.read_exact(&mut back))
        .await
        .unwrap();
    assert_eq!(&back, b"EHLO client\r\n");

    s.proxy
        .wait_metric(
            "pillion_protocol_detect_total",
            &[("listener", "smtp"), ("result", "timeout")],
            1.0,
        )
        .await;
}

/// Sends one raw HTTP/1.1 request with `method` and returns the response head (an opaque
/// relay to the tcp echo would return the request itself).
async fn raw_request(addr: SocketAddr, method: &str) -> String {
    let mut tcp = TcpStream::connect(addr).await.unwrap();
    let request = format!("{method} /m HTTP/1.1\r\nHost: svc\r\nConnection: close\r\n\r\n");
    tcp.write_all(request.as_bytes()).await.unwrap();
    pillion_tests::net::read_response_head(&mut tcp).await.0
}

#[tokio::test]
async fn any_token_method_is_detected_as_http1() {
    let s = setup().await;
    // Extension methods are valid request lines (method = token, which allows '-').
    let methods = ["GET", "DELETE", "PURGE", "M-SEARCH"];
    for method in methods {
        let response = raw_request(s.mixed, method).await;
        assert!(
            response.starts_with("HTTP/1.1 200"),
            "{method}: relayed as opaque bytes instead of HTTP:\n{response}"
        );
        assert!(
            response
                .to_ascii_lowercase()
                .contains("x-echo-server: http"),
            "{method}: {response}"
        );
    }
    s.proxy
        .wait_metric(
            "pillion_protocol_detect_total",
            &[("listener", "mixed"), ("result", "http1")],
            methods.len() as f64,
        )
        .await;
}

#[tokio::test]
async fn tls_client_hello_is_relayed_as_opaque_bytes() {
    let s = setup().await;
    // The start of a TLS 1.2 ClientHello record: no TLS termination, so it is opaque.
    let hello: &[u8] = &[
        0x16, 0x03, 0x01, 0x00, 0x2f, 0x01, 0x00, 0x00, 0x2b, 0x03, 0x03, 0xaa, 0xbb,
    ];
    let mut tcp = TcpStream::connect(s.mixed).await.unwrap();
    tcp.write_all(hello).await.unwrap();
    let mut back = vec![0u8; hello.len()];
    within("opaque echo of a ClientHello", tcp.read_exact(&mut back))
        .await
        .unwrap();
    assert_eq!(back, hello);
    s.proxy
        .wait_metric(
            "pillion_protocol_detect_total",
            &[("listener", "mixed"), ("result", "opaque")],
            1.0,
        )
        .await;
}

#[tokio::test]
async fn a_request_line_split_past_the_detect_timeout_is_still_http() {
    // Relayed as opaque bytes, a request dripped past the timeout would reach the app around
    // the routes and their policies; the start of a request keeps it HTTP.
    let (echo, raw) = (Echo::named("http").await, tcp_echo().await);
    let listen = free_addr();
    let proxy = Proxy::start(&format!(
        r#"
listeners:
  - name: auto
    address: {listen}
    protocol: auto
    detect_timeout: 200ms
    cluster: raw
    routes:
      - name: web
        match:
          prefix: /
        cluster: web
clusters:
  - name: web
    endpoints: [{}]
  - name: raw
    endpoints: [{}]
"#,
        echo.addr(),
        raw.addr()
    ))
    .await;
    let mut tcp = TcpStream::connect(listen).await.unwrap();
    tcp.write_all(b"GET /spl").await.unwrap();
    // The rest only once the detect timeout has passed: its verdict is counted then.
    proxy
        .wait_metric(
            "pillion_protocol_detect_total",
            &[("listener", "auto"), ("result", "http1")],
            1.0,
        )
        .await;
    tcp.write_all(b"it HTTP/1.1\r\nHost: svc\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let (head, _) = pillion_tests::net::read_response_head(&mut tcp).await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(
        head.to_ascii_lowercase().contains("x-echo-server: http"),
        "served by the HTTP route, not relayed: {head}"
    );
}

#[tokio::test]
async fn empty_lines_before_a_request_line_are_http() {
    // HTTP servers skip them (RFC 9112, section 2.2); relayed as opaque bytes, the request would
    // reach the app around the routes and their policies.
    let s = setup().await;
    for blank in ["\r\n", "\n\n", "\r\n\r\n"] {
        let mut tcp = TcpStream::connect(s.mixed).await.unwrap();
        let request = format!("{blank}GET /m HTTP/1.1\r\nHost: svc\r\nConnection: close\r\n\r\n");
        tcp.write_all(request.as_bytes()).await.unwrap();
        let (head, _) = pillion_tests::net::read_response_head(&mut tcp).await;
        assert!(head.starts_with("HTTP/1.1 200"), "{blank:?}: {head}");
        assert!(
            head.to_ascii_lowercase().contains("x-echo-server: http"),
            "{blank:?}: served by the HTTP route, not relayed: {head}"
        );
    }
}

#[tokio::test]
async fn a_client_silent_past_the_detect_timeout_that_then_sends_http_is_served_as_http() {
    // The endpoint was connected in case it speaks first; it did not, and the client's request
    // goes to the HTTP route, not through the relay.
    let (echo, raw) = (Echo::named("http").await, tcp_echo().await);
    let listen = free_addr();
    let proxy = Proxy::start(&format!(
        r#"
listeners:
  - name: auto
    address: {listen}
    protocol: auto
    detect_timeout: 200ms
    cluster: raw
    routes:
      - name: web
        match:
          prefix: /
        cluster: web
clusters:
  - name: web
    endpoints: [{}]
  - name: raw
    endpoints: [{}]
"#,
        echo.addr(),
        raw.addr()
    ))
    .await;
    let mut tcp = TcpStream::connect(listen).await.unwrap();
    // Past the detect timeout: the relay's endpoint has been connected.
    within("the relay's endpoint connected", async {
        while raw.connections() == 0 {
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
    })
    .await;
    tcp.write_all(b"GET /late HTTP/1.1\r\nHost: svc\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let (head, _) = pillion_tests::net::read_response_head(&mut tcp).await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(
        head.to_ascii_lowercase().contains("x-echo-server: http"),
        "served by the HTTP route, not relayed: {head}"
    );
    proxy
        .wait_metric(
            "pillion_protocol_detect_total",
            &[("listener", "auto"), ("result", "http1")],
            1.0,
        )
        .await;
}
