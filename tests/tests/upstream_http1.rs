//! Pillion's own HTTP/1.1 upstream client (requests without a body): the response framings and
//! interim responses it reads, what it refuses, and how its connections are pooled alongside
//! hyper's (requests with a body).

use bytes::Bytes;
use http::{Response, StatusCode};
use http_body_util::BodyExt;
use pillion_tests::client::{full, req};
use pillion_tests::upstream::Upstream;
use pillion_tests::{H1Client, Proxy};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

async fn proxy_to(upstream: &Upstream) -> (Proxy, std::net::SocketAddr) {
    Proxy::in_front_of(upstream.addr(), "http1").await
}

/// A body of `len` bytes that is not one byte repeated, so a lost or repeated piece shows.
fn pattern(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i % 251) as u8).collect()
}

/// Reads one request head (the requests here have no body); `None` when the peer closed.
async fn read_head(tcp: &mut TcpStream) -> Option<String> {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        match tcp.read(&mut byte).await {
            Ok(1) => head.push(byte[0]),
            _ => return None,
        }
    }
    Some(String::from_utf8_lossy(&head).into_owned())
}

/// Writes `bytes` a few at a time, so the proxy reads heads and chunks in pieces.
async fn dribble(tcp: &mut TcpStream, bytes: &[u8]) -> std::io::Result<()> {
    for piece in bytes.chunks(7) {
        tcp.write_all(piece).await?;
        tcp.flush().await?;
        tokio::task::yield_now().await;
    }
    Ok(())
}

/// An upstream answering each request by its path with a hand-written response.
async fn scripted_upstream() -> Upstream {
    Upstream::tcp(|mut tcp| async move {
        while let Some(head) = read_head(&mut tcp).await {
            let path = head.split(' ').nth(1).unwrap_or("/").to_owned();
            let written = match path.as_str() {
                "/chunked" => dribble(
                    &mut tcp,
                    b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\ntrailer: x-checksum\r\n\r\n\
                          5;ext=1\r\nhello\r\n6\r\n world\r\n0\r\nx-checksum: abc\r\n\r\n",
                )
                .await,
                "/interim" => dribble(
                    &mut tcp,
                    b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nlink: </a>\r\n\r\n\
                          HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok",
                )
                .await,
                "/big" => {
                    let body = pattern(1 << 20);
                    let head = format!("HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n", body.len());
                    match tcp.write_all(head.as_bytes()).await {
                        Ok(()) => tcp.write_all(&body).await,
                        Err(e) => Err(e),
                    }
                }
                "/until-close" => {
                    let _ = tcp
                        .write_all(b"HTTP/1.1 200 OK\r\n\r\nall of this, until the end")
                        .await;
                    return;
                }
                "/bad-length" => {
                    tcp.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 12x\r\n\r\n")
                        .await
                }
                "/not-http" => tcp.write_all(b"SSH-2.0-OpenSSH_9.2\r\n\r\n").await,
                "/upgrade" => {
                    tcp.write_all(b"HTTP/1.1 101 Switching Protocols\r\nupgrade: x\r\n\r\n")
                        .await
                }
                _ => {
                    tcp.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
                        .await
                }
            };
            if written.is_err() {
                return;
            }
        }
    })
    .await
}

#[tokio::test]
async fn chunked_trailers_interim_and_close_delimited_responses_pass_through() {
    let upstream = scripted_upstream().await;
    let (_proxy, listen) = proxy_to(&upstream).await;
    let mut client = H1Client::connect(listen).await;

    for round in 0..3 {
        let reply = client
            .request(
                req("GET", "http://svc/chunked")
                    .header("te", "trailers")
                    .body(pillion_tests::client::empty())
                    .expect("request"),
            )
            .await;
        assert_eq!(reply.status, StatusCode::OK, "round {round}: {reply:?}");
        assert_eq!(reply.text(), "hello world");
        let trailers = reply.trailers.as_ref().expect("trailers passed on");
        assert_eq!(trailers["x-checksum"], "abc");

        let reply = client.get("http://svc/interim").await;
        assert_eq!(
            reply.status,
            StatusCode::OK,
            "interim responses are skipped"
        );
        assert_eq!(reply.text(), "ok");
    }
    // A chunked body read to its end leaves the connection reusable.
    assert_eq!(
        upstream.connections(),
        1,
        "one upstream connection for all six"
    );

    let reply = client.get("http://svc/until-close").await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(reply.text(), "all of this, until the end");
    // That connection ended with its body; the next request opens another.
    let reply = client.get("http://svc/ok").await;
    assert_eq!(reply.text(), "ok");
    assert_eq!(upstream.connections(), 2);

    let reply = client.get("http://svc/big").await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(
        reply.body,
        Bytes::from(pattern(1 << 20)),
        "1 MiB body intact"
    );
}

#[tokio::test]
async fn malformed_upstream_responses_are_502_and_the_client_connection_survives() {
    let upstream = scripted_upstream().await;
    let (_proxy, listen) = proxy_to(&upstream).await;
    let mut client = H1Client::connect(listen).await;

    for path in ["/bad-length", "/not-http", "/upgrade"] {
        let reply = client.get(&format!("http://svc{path}")).await;
        assert_eq!(reply.status, StatusCode::BAD_GATEWAY, "{path}: {reply:?}");
        assert_eq!(
            reply.header("x-pillion-error"),
            Some("upstream-reset"),
            "{path}"
        );
    }
    // The client's connection survives each, and a good response still comes through.
    assert_eq!(client.get("http://svc/ok").await.text(), "ok");
}

#[tokio::test]
async fn requests_with_and_without_a_body_share_one_upstream_connection() {
    let upstream = Upstream::http1(|req| async move {
        let method = req.method().clone();
        let body = req.into_body().collect().await.map(|b| b.to_bytes());
        let len = body.map_or(0, |b| b.len());
        Response::new(full(format!("{method} {len}")))
    })
    .await;
    let (_proxy, listen) = proxy_to(&upstream).await;
    let mut client = H1Client::connect(listen).await;
    for i in 0..6 {
        let reply = if i % 3 == 2 {
            client
                .request(
                    req("POST", "http://svc/upload")
                        .body(full(vec![b'x'; 1000]))
                        .expect("request"),
                )
                .await
        } else {
            client.get("http://svc/read").await
        };
        let want = if i % 3 == 2 { "POST 1000" } else { "GET 0" };
        assert_eq!(reply.text(), want, "request {i}");
    }
    assert_eq!(
        upstream.connections(),
        1,
        "a connection of one client is taken over by the other, not duplicated"
    );
}
