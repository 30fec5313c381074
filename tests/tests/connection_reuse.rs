//! Upstream connection pooling: HTTP/1.1 keep-alive reuse and HTTP/2 multiplexing.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use http::{Response, StatusCode};
use pillion_tests::client::full;
use pillion_tests::upstream::Upstream;
use pillion_tests::{within, H1Client, Proxy};
use tokio::sync::Notify;

async fn proxy_to(upstream: &Upstream, cluster_protocol: &str) -> (Proxy, std::net::SocketAddr) {
    Proxy::in_front_of(upstream.addr(), cluster_protocol).await
}

async fn ok_upstream() -> Upstream {
    Upstream::http1(|_req| async { Response::new(full("ok")) }).await
}

#[tokio::test]
async fn sequential_requests_on_one_client_connection_reuse_the_upstream_connection() {
    let upstream = ok_upstream().await;
    let (_proxy, listen) = proxy_to(&upstream, "http1").await;
    let mut client = H1Client::connect(listen).await;
    for i in 0..50 {
        let reply = client.get(&format!("http://svc/{i}")).await;
        assert_eq!(reply.status, StatusCode::OK);
        assert_eq!(reply.text(), "ok");
    }
    let conns = upstream.connections();
    assert!(
        conns <= 2,
        "50 requests opened {conns} upstream connections"
    );
}

#[tokio::test]
async fn requests_from_many_client_connections_share_pooled_upstream_connections() {
    let upstream = ok_upstream().await;
    let (_proxy, listen) = proxy_to(&upstream, "http1").await;
    for c in 0..10 {
        // A new downstream connection each time; requests stay sequential.
        let mut client = H1Client::connect(listen).await;
        for i in 0..5 {
            let reply = client.get(&format!("http://svc/{c}/{i}")).await;
            assert_eq!(reply.status, StatusCode::OK);
        }
    }
    let conns = upstream.connections();
    assert!(
        conns <= 2,
        "50 requests opened {conns} upstream connections"
    );
}

#[tokio::test]
async fn concurrent_requests_to_an_http2_cluster_share_one_connection() {
    const N: usize = 20;
    let arrived = Arc::new(AtomicUsize::new(0));
    let all_arrived = Arc::new(Notify::new());
    // Each request waits (up to 10s from its arrival) until all N are in flight at once.
    let (count, notify) = (arrived.clone(), all_arrived.clone());
    let upstream = Upstream::http2(move |_req| {
        let (count, notify) = (count.clone(), notify.clone());
        async move {
            let notified = notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if count.fetch_add(1, Ordering::SeqCst) + 1 == N {
                notify.notify_waiters();
                return Response::new(full("together"));
            }
            match tokio::time::timeout(Duration::from_secs(10), notified).await {
                Ok(()) => Response::new(full("together")),
                Err(_) => Response::new(full("alone")),
            }
        }
    })
    .await;
    let (_proxy, listen) = proxy_to(&upstream, "http2").await;

    let mut tasks = Vec::new();
    for i in 0..N {
        tasks.push(tokio::spawn(async move {
            let mut client = H1Client::connect(listen).await;
            client.get(&format!("http://svc/{i}")).await
        }));
    }
    for task in tasks {
        let reply = within("concurrent request", task).await.unwrap();
        assert_eq!(reply.status, StatusCode::OK, "{reply:?}");
        assert_eq!(
            reply.text(),
            "together",
            "all {N} requests were in flight at once"
        );
    }
    assert_eq!(arrived.load(Ordering::SeqCst), N);
    assert_eq!(
        upstream.connections(),
        1,
        "{N} concurrent requests to an http2 cluster"
    );
}

/// An upstream that answers one request per connection, then closes it without saying so
/// (no `Connection: close`), as a server whose keep-alive timeout just fired does.
async fn one_shot_upstream() -> Upstream {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    Upstream::tcp(|mut tcp| async move {
        let mut head = Vec::new();
        let mut buf = [0u8; 1024];
        while !head.windows(4).any(|w| w == b"\r\n\r\n") {
            match tcp.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => head.extend_from_slice(&buf[..n]),
            }
        }
        let _ = tcp
            .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
            .await;
    })
    .await
}

#[tokio::test]
async fn a_pooled_connection_the_upstream_closed_costs_no_request() {
    let upstream = one_shot_upstream().await;
    let (_proxy, listen) = proxy_to(&upstream, "http1").await;
    let mut client = H1Client::connect(listen).await;
    for i in 0..20 {
        let reply = client.get(&format!("http://svc/{i}")).await;
        assert_eq!(reply.status, StatusCode::OK, "request {i}: {reply:?}");
        assert_eq!(reply.text(), "ok");
    }
    assert_eq!(upstream.connections(), 20, "one connection per request");
}

#[tokio::test]
async fn responses_without_a_body_return_the_connection_to_the_pool() {
    let upstream = Upstream::http1(|req| async move {
        let status = if req.method() == http::Method::HEAD {
            StatusCode::OK
        } else {
            StatusCode::NO_CONTENT
        };
        let mut rsp = Response::new(full(""));
        *rsp.status_mut() = status;
        rsp
    })
    .await;
    let (_proxy, listen) = proxy_to(&upstream, "http1").await;
    let mut client = H1Client::connect(listen).await;
    for i in 0..20 {
        let mut req = pillion_tests::client::get(&format!("http://svc/{i}"));
        let want = if i % 2 == 0 {
            *req.method_mut() = http::Method::HEAD;
            StatusCode::OK
        } else {
            StatusCode::NO_CONTENT
        };
        let reply = client.request(req).await;
        assert_eq!(reply.status, want, "request {i}: {reply:?}");
    }
    let conns = upstream.connections();
    assert!(
        conns <= 2,
        "20 requests opened {conns} upstream connections"
    );
}
