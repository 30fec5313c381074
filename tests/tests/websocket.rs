//! HTTP/1.1 Upgrade (WebSocket): after 101 the proxy relays a raw bidirectional byte stream.

use std::sync::{Arc, Mutex};

use http::{Response, StatusCode};
use hyper_util::rt::TokioIo;
use pillion_tests::client::{empty, full};
use pillion_tests::net::read_response_head;
use pillion_tests::upstream::Upstream;
use pillion_tests::{free_addr, within, Proxy};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// An upstream that accepts `Upgrade: websocket` with 101 and then echoes bytes until EOF.
async fn websocket_echo(seen: Arc<Mutex<Vec<String>>>) -> Upstream {
    Upstream::http1(move |req| {
        let seen = seen.clone();
        async move {
            let header = |name: &str| {
                req.headers()
                    .get(name)
                    .map(|v| v.to_str().unwrap().to_string())
                    .unwrap_or_default()
            };
            seen.lock().unwrap().push(format!(
                "{} upgrade={} connection={} key={}",
                req.uri().path(),
                header("upgrade").to_ascii_lowercase(),
                header("connection").to_ascii_lowercase(),
                header("sec-websocket-key"),
            ));
            if !header("upgrade").eq_ignore_ascii_case("websocket") {
                return Response::builder()
                    .status(StatusCode::BAD_REQUEST)
                    .body(full("expected an upgrade"))
                    .unwrap();
            }
            let accept = format!("accept-for-{}", header("sec-websocket-key"));
            tokio::spawn(async move {
                let upgraded = hyper::upgrade::on(req).await.expect("upgrade");
                let (mut rd, mut wr) = tokio::io::split(TokioIo::new(upgraded));
                let _ = tokio::io::copy(&mut rd, &mut wr).await;
                let _ = wr.shutdown().await;
            });
            Response::builder()
                .status(StatusCode::SWITCHING_PROTOCOLS)
                .header("upgrade", "websocket")
                .header("connection", "Upgrade")
                .header("sec-websocket-accept", accept)
                .body(empty())
                .unwrap()
        }
    })
    .await
}

#[tokio::test]
async fn websocket_upgrade_becomes_a_bidirectional_byte_stream() {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let upstream = websocket_echo(seen.clone()).await;
    let listen = free_addr();
    let _proxy = Proxy::start(&format!(
        r#"
listeners:
  - name: ws
    address: {listen}
    protocol: http
    cluster: ws
clusters:
  - name: ws
    endpoints: [{}]
"#,
        upstream.addr()
    ))
    .await;

    let mut tcp = TcpStream::connect(listen).await.unwrap();
    tcp.write_all(
        b"GET /chat HTTP/1.1\r\n\
          Host: ws.local\r\n\
          Upgrade: websocket\r\n\
          Connection: Upgrade\r\n\
          Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
          Sec-WebSocket-Version: 13\r\n\r\n",
    )
    .await
    .unwrap();
    let (head, rest) = read_response_head(&mut tcp).await;
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    let lower = head.to_ascii_lowercase();
    assert!(lower.contains("upgrade: websocket"), "{head}");
    assert!(
        lower.contains("sec-websocket-accept: accept-for-dghlihnhbxbszsbub25jzq=="),
        "{head}"
    );
    assert!(rest.is_empty(), "unexpected bytes after 101: {rest:?}");

    let seen_req = seen.lock().unwrap().clone();
    assert_eq!(
        seen_req,
        ["/chat upgrade=websocket connection=upgrade key=dGhlIHNhbXBsZSBub25jZQ=="],
        "the upstream must see the upgrade request's Upgrade and Connection headers"
    );

    // Small messages, one at a time, in both directions.
    for i in 0..5 {
        let msg = format!("ping-{i}");
        tcp.write_all(msg.as_bytes()).await.unwrap();
        let mut back = vec![0u8; msg.len()];
        within("reading an echoed message", tcp.read_exact(&mut back))
            .await
            .unwrap();
        assert_eq!(back, msg.as_bytes());
    }

    // A larger stream written and read concurrently; then half-close ends the echo.
    let payload: Vec<u8> = (0..1_000_000u32).map(|i| (i % 251) as u8).collect();
    let (mut rd, mut wr) = tcp.into_split();
    let to_send = payload.clone();
    let writer = tokio::spawn(async move {
        wr.write_all(&to_send).await.unwrap();
        wr.shutdown().await.unwrap();
        wr
    });
    let mut echoed = Vec::new();
    within(
        "reading the echoed stream to EOF",
        rd.read_to_end(&mut echoed),
    )
    .await
    .unwrap();
    within("writer", writer).await.unwrap();
    assert_eq!(echoed.len(), payload.len());
    assert!(echoed == payload, "echoed bytes differ");
}

#[tokio::test]
async fn plain_request_to_an_upgrade_capable_upstream_stays_plain_http() {
    // The same upstream answers a plain request (no Upgrade) with 400: the proxy must not turn
    // ordinary requests into tunnels.
    let seen = Arc::new(Mutex::new(Vec::new()));
    let upstream = websocket_echo(seen.clone()).await;
    let listen = free_addr();
    let _proxy = Proxy::start(&format!(
        r#"
listeners:
  - name: ws
    address: {listen}
    protocol: http
    cluster: ws
clusters:
  - name: ws
    endpoints: [{}]
"#,
        upstream.addr()
    ))
    .await;
    let mut client = pillion_tests::H1Client::connect(listen).await;
    let reply = client.get("http://ws.local/plain").await;
    assert_eq!(reply.status, StatusCode::BAD_REQUEST);
    assert_eq!(reply.text(), "expected an upgrade");
    // The connection stays usable for more requests.
    let again = client.get("http://ws.local/plain2").await;
    assert_eq!(again.status, StatusCode::BAD_REQUEST);
    assert_eq!(seen.lock().unwrap().len(), 2);
}

#[tokio::test]
async fn declined_upgrade_keeps_the_connection_as_plain_http() {
    // Answers every request, upgrade or not, with an ordinary 200.
    let upstream =
        Upstream::http1(
            |req| async move { Response::new(full(format!("plain {}", req.uri().path()))) },
        )
        .await;
    let listen = free_addr();
    let _proxy = Proxy::start(&format!(
        r#"
listeners:
  - name: ws
    address: {listen}
    protocol: http
    cluster: ws
clusters:
  - name: ws
    endpoints: [{}]
"#,
        upstream.addr()
    ))
    .await;
    let mut tcp = TcpStream::connect(listen).await.unwrap();
    tcp.write_all(
        b"GET /first HTTP/1.1\r\nHost: ws.local\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
          Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
    )
    .await
    .unwrap();
    let (head, mut rest) = read_response_head(&mut tcp).await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    let body = "plain /first";
    while rest.len() < body.len() {
        let mut chunk = [0u8; 256];
        let n = within("declined upgrade body", tcp.read(&mut chunk))
            .await
            .unwrap();
        assert!(n > 0, "EOF in body");
        rest.extend_from_slice(&chunk[..n]);
    }
    assert_eq!(rest, body.as_bytes());

    // Still HTTP on the same connection.
    tcp.write_all(b"GET /second HTTP/1.1\r\nHost: ws.local\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut all = Vec::new();
    within("second response", tcp.read_to_end(&mut all))
        .await
        .unwrap();
    let all = String::from_utf8_lossy(&all);
    assert!(all.starts_with("HTTP/1.1 200"), "{all}");
    assert!(all.ends_with("plain /second"), "{all}");
}

#[tokio::test]
async fn an_upgraded_connection_that_moves_nothing_is_closed_at_the_idle_timeout() {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let upstream = websocket_echo(seen).await;
    let listen = free_addr();
    let _proxy = Proxy::start(&format!(
        r#"
listeners:
  - name: ws
    address: {listen}
    protocol: http
    idle_timeout: 1s
    cluster: ws
clusters:
  - name: ws
    endpoints: [{}]
"#,
        upstream.addr()
    ))
    .await;

    let mut tcp = TcpStream::connect(listen).await.unwrap();
    tcp.write_all(
        b"GET /chat HTTP/1.1\r\nHost: ws.local\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
          Sec-WebSocket-Key: a2V5\r\nSec-WebSocket-Version: 13\r\n\r\n",
    )
    .await
    .unwrap();
    let (head, _) = read_response_head(&mut tcp).await;
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");

    // Traffic every 100ms (ten to an idle period, so a stalled test machine does not close the
    // tunnel) for well past two idle periods: the tunnel stays open.
    let started = tokio::time::Instant::now();
    let mut ticks = tokio::time::interval(std::time::Duration::from_millis(100));
    let mut i = 0;
    while started.elapsed() < std::time::Duration::from_millis(2500) {
        ticks.tick().await;
        let msg = format!("ping-{i}");
        i += 1;
        tcp.write_all(msg.as_bytes()).await.unwrap();
        let mut back = vec![0u8; msg.len()];
        within("an echo while traffic flows", tcp.read_exact(&mut back))
            .await
            .unwrap();
        assert_eq!(back, msg.as_bytes());
    }

    // Then silence: the proxy closes the tunnel (EOF) within two idle periods or so.
    let mut buf = [0u8; 16];
    let n = within("the proxy closing the idle tunnel", tcp.read(&mut buf))
        .await
        .unwrap_or(0);
    assert_eq!(n, 0, "closed, nothing sent: {:?}", &buf[..n]);
}

#[tokio::test]
async fn a_route_can_match_the_upgrade_header() {
    // `Upgrade` is hop-by-hop, but routes see the request as sent: a WebSocket handshake goes
    // to the route that matches it, not to the catch-all.
    let seen = Arc::new(Mutex::new(Vec::new()));
    let ws = websocket_echo(seen.clone()).await;
    let other =
        Upstream::http1(|_| async move { Response::new(full("not the websocket route")) }).await;
    let listen = free_addr();
    let _proxy = Proxy::start(&format!(
        r#"
listeners:
  - name: ws
    address: {listen}
    protocol: http
    routes:
      - name: ws
        match:
          headers: [{{ name: upgrade, exact: websocket }}]
        cluster: ws
      - name: rest
        match: {{ prefix: / }}
        cluster: other
clusters:
  - name: ws
    endpoints: [{}]
  - name: other
    endpoints: [{}]
"#,
        ws.addr(),
        other.addr()
    ))
    .await;
    let mut tcp = TcpStream::connect(listen).await.unwrap();
    tcp.write_all(
        b"GET /chat HTTP/1.1\r\nHost: ws.local\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
          Sec-WebSocket-Key: a2V5\r\nSec-WebSocket-Version: 13\r\n\r\n",
    )
    .await
    .unwrap();
    let (head, _) = read_response_head(&mut tcp).await;
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    assert_eq!(
        seen.lock().unwrap().len(),
        1,
        "the websocket upstream took it"
    );
}
