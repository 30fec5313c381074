//! Errors the proxy generates itself: connect failure 502, no endpoint 503, reset 502.

use std::net::SocketAddr;

use http::StatusCode;
use pillion_tests::upstream::Upstream;
use pillion_tests::{free_addr, H1Client, H2Client, Proxy};
use tokio::io::AsyncReadExt;

async fn proxy_to(endpoint: &str) -> (Proxy, SocketAddr) {
    let listen = free_addr();
    let proxy = Proxy::start(&format!(
        r#"
listeners:
  - name: in
    address: {listen}
    protocol: http
    cluster: broken
clusters:
  - name: broken
    endpoints: ["{endpoint}"]
    connect_timeout: 2s
"#
    ))
    .await;
    (proxy, listen)
}

#[tokio::test]
async fn closed_upstream_port_is_502_upstream_connect_failure() {
    // Bound but never listening: the port stays ours for the whole test (no other test can take
    // it) and connecting to it is refused.
    let reserved = tokio::net::TcpSocket::new_v4().expect("socket");
    reserved
        .bind("127.0.0.1:0".parse().expect("addr"))
        .expect("bind");
    let closed = reserved.local_addr().expect("local addr");
    let (proxy, listen) = proxy_to(&closed.to_string()).await;

    let mut h1 = H1Client::connect(listen).await;
    let reply = h1.get("http://svc/x").await;
    assert_eq!(reply.status, StatusCode::BAD_GATEWAY, "{reply:?}");
    assert_eq!(
        reply.header("x-pillion-error"),
        Some("upstream-connect-failure")
    );
    // The downstream connection survives a proxy-generated error.
    let again = h1.get("http://svc/y").await;
    assert_eq!(again.status, StatusCode::BAD_GATEWAY);

    let h2 = H2Client::connect(listen).await;
    let reply = h2.get("http://svc/z").await;
    assert_eq!(reply.status, StatusCode::BAD_GATEWAY, "{reply:?}");
    assert_eq!(
        reply.header("x-pillion-error"),
        Some("upstream-connect-failure")
    );

    proxy
        .wait_metric(
            "pillion_http_requests_total",
            &[("cluster", "broken"), ("status_class", "5xx")],
            3.0,
        )
        .await;
}

#[tokio::test]
async fn unresolvable_endpoint_is_503_no_healthy_endpoint() {
    let (_proxy, listen) = proxy_to("nonexistent.invalid:80").await;
    let mut h1 = H1Client::connect(listen).await;
    let reply = h1.get("http://svc/x").await;
    assert_eq!(reply.status, StatusCode::SERVICE_UNAVAILABLE, "{reply:?}");
    assert_eq!(reply.header("x-pillion-error"), Some("no-healthy-endpoint"));
}

#[tokio::test]
async fn upstream_closing_mid_request_is_502_upstream_reset() {
    // Accepts, reads the start of the request, then closes without answering.
    let upstream = Upstream::tcp(|mut tcp| async move {
        let mut buf = [0u8; 1024];
        let _ = tcp.read(&mut buf).await;
        drop(tcp);
    })
    .await;
    let (_proxy, listen) = proxy_to(&upstream.addr().to_string()).await;
    let mut h1 = H1Client::connect(listen).await;
    let reply = h1.get("http://svc/x").await;
    assert_eq!(reply.status, StatusCode::BAD_GATEWAY, "{reply:?}");
    assert_eq!(reply.header("x-pillion-error"), Some("upstream-reset"));
    assert!(upstream.connections() >= 1);
}

/// An upstream that starts a 200 response (head + some body) and then closes the connection.
async fn truncating_upstream(head: &'static str, partial_body: &'static [u8]) -> Upstream {
    use tokio::io::AsyncWriteExt;
    Upstream::tcp(move |mut tcp| async move {
        let mut buf = [0u8; 4096];
        let _ = tcp.read(&mut buf).await;
        let _ = tcp.write_all(head.as_bytes()).await;
        let _ = tcp.write_all(partial_body).await;
        let _ = tcp.flush().await;
    })
    .await
}

/// Reads the body of a response whose upstream died mid-body: the client must see an error,
/// not a clean (truncated) end of body.
async fn assert_body_fails(resp: http::Response<hyper::body::Incoming>, what: &str) {
    use http_body_util::BodyExt;
    let mut body = resp.into_body();
    let mut got = 0usize;
    let outcome = pillion_tests::within("reading a truncated body", async {
        while let Some(frame) = body.frame().await {
            match frame {
                Ok(f) => got += f.data_ref().map_or(0, |d| d.len()),
                Err(e) => return Err(e),
            }
        }
        Ok(())
    })
    .await;
    assert!(
        outcome.is_err(),
        "{what}: truncated upstream body ({got} bytes) ended cleanly at the client"
    );
}

#[tokio::test]
async fn truncated_upstream_response_body_is_not_passed_off_as_complete() {
    let cases: [(&str, &'static str, &'static [u8]); 2] = [
        (
            "content-length",
            "HTTP/1.1 200 OK\r\ncontent-length: 100000\r\n\r\n",
            &[b'a'; 1000],
        ),
        (
            "chunked",
            "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n",
            b"5\r\nhello\r\n",
        ),
    ];
    for (framing, head, partial) in cases {
        let upstream = truncating_upstream(head, partial).await;
        let (_proxy, listen) = proxy_to(&upstream.addr().to_string()).await;

        // HTTP/1.1 has no way to signal an error after the head; the proxy aborts the
        // connection, before or after the head depending on when the upstream's EOF is seen.
        let mut h1 = H1Client::connect(listen).await;
        match h1
            .try_send(pillion_tests::client::get("http://svc/x"))
            .await
        {
            Ok(resp) => {
                assert_eq!(resp.status(), StatusCode::OK);
                assert_body_fails(resp, &format!("{framing}, HTTP/1.1 client")).await;
            }
            Err(e) => assert!(e.is_incomplete_message(), "{framing}: {e}"),
        }

        // HTTP/2 resets the stream. When the reset follows the head closely, the client may
        // report it for the request itself rather than for the body.
        let h2 = H2Client::connect(listen).await;
        match h2
            .try_send(pillion_tests::client::get("http://svc/x"))
            .await
        {
            Ok(resp) => {
                assert_eq!(resp.status(), StatusCode::OK);
                assert_body_fails(resp, &format!("{framing}, HTTP/2 client")).await;
            }
            Err(e) => {
                let e = format!("{e:?}");
                assert!(
                    e.contains("Reset") && e.contains("INTERNAL_ERROR"),
                    "{framing}: {e}"
                );
            }
        }
    }
}

#[tokio::test]
async fn http2_upstream_that_never_speaks_is_a_connect_failure_within_the_connect_timeout() {
    // Accepts and reads everything, and never sends a byte (no SETTINGS): without a route
    // timeout, the request would wait as long as the connection stays open.
    let upstream = Upstream::tcp(|mut tcp| async move {
        let mut buf = [0u8; 4096];
        while matches!(tcp.read(&mut buf).await, Ok(n) if n > 0) {}
    })
    .await;
    let listen = free_addr();
    let _proxy = Proxy::start(&format!(
        r#"
listeners:
  - name: in
    address: {listen}
    protocol: http
    cluster: silent
clusters:
  - name: silent
    endpoints: ["{}"]
    protocol: http2
    connect_timeout: 300ms
"#,
        upstream.addr()
    ))
    .await;
    let mut h1 = H1Client::connect(listen).await;
    let reply = h1.get("http://svc/x").await;
    assert_eq!(reply.status, StatusCode::BAD_GATEWAY, "{reply:?}");
    assert_eq!(
        reply.header("x-pillion-error"),
        Some("upstream-connect-failure")
    );
    assert!(upstream.connections() >= 1);
    // The next request opens a new connection rather than waiting on the silent one.
    let again = h1.get("http://svc/y").await;
    assert_eq!(again.status, StatusCode::BAD_GATEWAY, "{again:?}");
    assert!(upstream.connections() >= 2, "{}", upstream.connections());
}
