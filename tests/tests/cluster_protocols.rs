//! Upstream protocol per cluster (`http1`, `http2`, `auto` = same as downstream) and endpoints
//! given as DNS names.

use std::net::SocketAddr;

use http::StatusCode;
use pillion_tests::{free_addr, Echo, H1Client, H2Client, Proxy};

/// One listener per cluster protocol, all in front of the same echo upstream.
struct Setup {
    _echo: Echo,
    _proxy: Proxy,
    http1: SocketAddr,
    http2: SocketAddr,
    auto: SocketAddr,
}

async fn setup() -> Setup {
    let echo = Echo::start().await;
    let (http1, http2, auto) = (free_addr(), free_addr(), free_addr());
    let mut yaml = String::from("listeners:\n");
    for (name, addr) in [("http1", http1), ("http2", http2), ("auto", auto)] {
        yaml += &format!(
            "  - name: {name}\n    address: {addr}\n    protocol: http\n    cluster: {name}\n"
        );
    }
    yaml += "clusters:\n";
    for name in ["http1", "http2", "auto"] {
        yaml += &format!(
            "  - name: {name}\n    endpoints: [{}]\n    protocol: {name}\n",
            echo.addr()
        );
    }
    let proxy = Proxy::start(&yaml).await;
    Setup {
        _echo: echo,
        _proxy: proxy,
        http1,
        http2,
        auto,
    }
}

#[tokio::test]
async fn cluster_protocol_decides_the_upstream_http_version() {
    let s = setup().await;
    // (listener, downstream version, version the upstream must see)
    let cases = [
        (s.http1, "h1", "HTTP/1.1"),
        (s.http1, "h2", "HTTP/1.1"),
        (s.http2, "h1", "HTTP/2.0"),
        (s.http2, "h2", "HTTP/2.0"),
        (s.auto, "h1", "HTTP/1.1"),
        (s.auto, "h2", "HTTP/2.0"),
    ];
    for (listen, downstream, want) in cases {
        let url = "http://svc.example:8443/version?from=test";
        let reply = match downstream {
            "h1" => H1Client::connect(listen).await.get(url).await,
            _ => H2Client::connect(listen).await.get(url).await,
        };
        assert_eq!(reply.status, StatusCode::OK, "{reply:?}");
        let seen = reply.echo();
        assert_eq!(
            seen.version, want,
            "{downstream} client via listener {listen}: {seen:?}"
        );
        assert_eq!(seen.path, "/version?from=test");
        // Host (HTTP/1.1) or :authority (HTTP/2), the upstream gets the client's authority.
        let host = seen
            .header("host")
            .or(seen.header(":authority"))
            .unwrap_or_default();
        assert_eq!(host, "svc.example:8443", "{seen:?}");
    }
}

#[tokio::test]
async fn endpoint_given_as_a_dns_name_is_resolved() {
    let echo = Echo::named("by-name").await;
    let listen = free_addr();
    let _proxy = Proxy::start(&format!(
        r#"
listeners:
  - name: in
    address: {listen}
    protocol: http
    cluster: named
clusters:
  - name: named
    endpoints: ["localhost:{}"]
    dns_refresh: 1s
"#,
        echo.addr().port()
    ))
    .await;
    let mut client = H1Client::connect(listen).await;
    for _ in 0..5 {
        let reply = client.get("http://svc/").await;
        assert_eq!(reply.status, StatusCode::OK, "{reply:?}");
        assert_eq!(reply.header("x-echo-server"), Some("by-name"));
    }
}

/// Reads one HTTP/2 frame: its type, flags, stream id and payload; `None` at EOF.
async fn read_frame(tcp: &mut tokio::net::TcpStream) -> Option<(u8, u8, u32, Vec<u8>)> {
    use tokio::io::AsyncReadExt;
    let mut head = [0u8; 9];
    tcp.read_exact(&mut head).await.ok()?;
    let len = u32::from_be_bytes([0, head[0], head[1], head[2]]) as usize;
    let id = u32::from_be_bytes([head[5], head[6], head[7], head[8]]) & 0x7fff_ffff;
    let mut payload = vec![0; len];
    tcp.read_exact(&mut payload).await.ok()?;
    Some((head[3], head[4], id, payload))
}

fn frame(kind: u8, flags: u8, id: u32, payload: &[u8]) -> Vec<u8> {
    let len = (payload.len() as u32).to_be_bytes();
    let mut f = vec![len[1], len[2], len[3], kind, flags];
    f.extend_from_slice(&id.to_be_bytes());
    f.extend_from_slice(payload);
    f
}

const HEADERS: u8 = 1;
const SETTINGS: u8 = 4;
const GOAWAY: u8 = 7;
/// `:status: 200`, entry 8 of HPACK's static table, as the whole header block.
const STATUS_200: &[u8] = &[0x88];
const END_STREAM_AND_HEADERS: u8 = 0x1 | 0x4;

#[tokio::test]
async fn streams_a_graceful_goaway_leaves_unprocessed_are_retried_on_a_new_connection() {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    // A raw HTTP/2 upstream. Its first connection answers a first request, then waits for three
    // more, says GOAWAY with the first of them as the last it will process (NO_ERROR, as a
    // server that restarts), answers that one and closes; every later connection answers every
    // request.
    let conns = Arc::new(AtomicUsize::new(0));
    let seen = conns.clone();
    let upstream = pillion_tests::upstream::Upstream::tcp(move |mut tcp| {
        let first = seen.fetch_add(1, Ordering::SeqCst) == 0;
        async move {
            let mut preface = [0u8; 24];
            if tcp.read_exact(&mut preface).await.is_err() {
                return;
            }
            let _ = tcp.write_all(&frame(SETTINGS, 0, 0, &[])).await;
            let mut streams = Vec::new();
            while let Some((kind, flags, id, _)) = read_frame(&mut tcp).await {
                match kind {
                    SETTINGS if flags & 1 == 0 => {
                        let _ = tcp.write_all(&frame(SETTINGS, 1, 0, &[])).await;
                    }
                    HEADERS if !first || id == 1 => {
                        let done = frame(HEADERS, END_STREAM_AND_HEADERS, id, STATUS_200);
                        let _ = tcp.write_all(&done).await;
                    }
                    HEADERS => {
                        streams.push(id);
                        if streams.len() == 3 {
                            let mut goaway = streams[0].to_be_bytes().to_vec();
                            goaway.extend_from_slice(&0u32.to_be_bytes());
                            let _ = tcp.write_all(&frame(GOAWAY, 0, 0, &goaway)).await;
                            let done =
                                frame(HEADERS, END_STREAM_AND_HEADERS, streams[0], STATUS_200);
                            let _ = tcp.write_all(&done).await;
                            let _ = tcp.shutdown().await;
                            return;
                        }
                    }
                    _ => {}
                }
            }
        }
    })
    .await;
    let listen = free_addr();
    let _proxy = Proxy::start(&format!(
        r#"
listeners:
  - name: in
    address: {listen}
    protocol: http
    routes:
      - match: {{ prefix: / }}
        cluster: app
        retry: {{ retries: 2 }}
clusters:
  - name: app
    endpoints: [{}]
    protocol: http2
"#,
        upstream.addr()
    ))
    .await;

    let client = H2Client::connect(listen).await;
    // The first request opens the upstream connection the next three share.
    let warm = client.get("http://svc/warm").await;
    assert_eq!(warm.status, StatusCode::OK, "{warm:?}");
    let urls: Vec<String> = (0..3).map(|i| format!("http://svc/{i}")).collect();
    let replies = futures_util::future::join_all(urls.iter().map(|url| client.get(url))).await;
    for (i, reply) in replies.iter().enumerate() {
        assert_eq!(reply.status, StatusCode::OK, "request {i}: {reply:?}");
    }
    assert!(
        replies
            .iter()
            .any(|r| r.header("x-pillion-attempts") == Some("2")),
        "the refused ones took a second try: {replies:?}"
    );
    assert!(conns.load(Ordering::SeqCst) >= 2, "a new connection");
}
