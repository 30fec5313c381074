//! Upstream connection pooling: HTTP/1.1 keep-alive reuse and HTTP/2 multiplexing.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use http::{Response, StatusCode};
use pillion_tests::client::full;
use pillion_tests::upstream::Upstream;
use pillion_tests::{free_addr, within, H1Client, Proxy};
use tokio::sync::Notify;

async fn proxy_to(upstream: &Upstream, cluster_protocol: &str) -> (Proxy, std::net::SocketAddr) {
    let listen = free_addr();
    let proxy = Proxy::start(&format!(
        r#"
listeners:
  - name: in
    address: {listen}
    protocol: http
    cluster: up
clusters:
  - name: up
    endpoints: [{}]
    protocol: {cluster_protocol}
"#,
        upstream.addr()
    ))
    .await;
    (proxy, listen)
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
    // Requests wait (up to a shared deadline) until all N are in flight at once.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
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
            match tokio::time::timeout_at(deadline, notified).await {
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
