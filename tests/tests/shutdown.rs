//! Graceful shutdown on SIGTERM/SIGINT: drain in-flight requests, /ready 503, stop accepting,
//! GOAWAY to h2 clients, exit 0.

use std::net::SocketAddr;
use std::sync::Arc;

use http::{Response, StatusCode};
use nix::sys::signal::Signal;
use pillion_tests::client::full;
use pillion_tests::upstream::Upstream;
use pillion_tests::{eventually, within, H1Client, H2Client, Proxy, Reply};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, Notify};

/// An upstream whose `/slow` requests report their arrival and then wait for `release`.
struct Gated {
    upstream: Upstream,
    arrived: mpsc::UnboundedReceiver<String>,
    release: Arc<Notify>,
}

async fn gated_upstream() -> Gated {
    let (tx, arrived) = mpsc::unbounded_channel();
    let release = Arc::new(Notify::new());
    let gate = release.clone();
    let upstream = Upstream::http1(move |req| {
        let (tx, gate) = (tx.clone(), gate.clone());
        async move {
            let path = req.uri().path().to_string();
            if path.starts_with("/slow") {
                let released = gate.notified();
                tokio::pin!(released);
                released.as_mut().enable();
                let _ = tx.send(path.clone());
                released.await;
            }
            Response::new(full(format!("done {path}")))
        }
    })
    .await;
    Gated {
        upstream,
        arrived,
        release,
    }
}

async fn proxy_to(upstream: &Upstream, drain_timeout: &str) -> (Proxy, SocketAddr) {
    let top = format!("drain_timeout: {drain_timeout}");
    Proxy::in_front_of_with(upstream.addr(), "http1", &top, "").await
}

#[tokio::test]
async fn sigterm_drains_in_flight_requests_and_exits_zero() {
    let mut gated = gated_upstream().await;
    let (mut proxy, listen) = proxy_to(&gated.upstream, "30s").await;

    // An idle h2 client connection, known to work.
    let h2 = H2Client::connect(listen).await;
    assert_eq!(h2.get("http://svc/fast").await.status, StatusCode::OK);

    // A slow request, in flight at the upstream when SIGTERM arrives.
    let slow = tokio::spawn(async move {
        let mut client = H1Client::connect(listen).await;
        client.get("http://svc/slow").await
    });
    let path = within(
        "the slow request reaching the upstream",
        gated.arrived.recv(),
    )
    .await;
    assert_eq!(path.as_deref(), Some("/slow"));

    proxy.sigterm();

    let draining = eventually("/ready turns 503", || async {
        let reply = proxy.try_admin_get("/ready").await?;
        (reply.status == StatusCode::SERVICE_UNAVAILABLE).then_some(reply)
    })
    .await;
    assert!(draining.text().contains("draining"), "{draining:?}");

    eventually("the listener refuses new connections", || async {
        TcpStream::connect(listen).await.is_err().then_some(())
    })
    .await;

    // The idle h2 connection is told to go away (and closed) while the drain is still going.
    let closed = within("h2 client connection ending after GOAWAY", h2.conn).await;
    assert!(closed.is_ok(), "h2 connection task panicked: {closed:?}");
    assert!(
        proxy.try_wait().is_none(),
        "the proxy exited before the in-flight request finished"
    );

    gated.release.notify_waiters();
    let reply: Reply = within("the slow request", slow).await.unwrap();
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(reply.text(), "done /slow");

    let status = proxy.wait_exit().await;
    assert_eq!(status.code(), Some(0), "{status}\n{}", proxy.log_text());
}

#[tokio::test]
async fn drain_timeout_bounds_the_wait_for_a_stuck_request() {
    let mut gated = gated_upstream().await;
    let (mut proxy, listen) = proxy_to(&gated.upstream, "300ms").await;
    let stuck = tokio::spawn(async move {
        let mut client = H1Client::connect(listen).await;
        client
            .try_send(pillion_tests::client::get("http://svc/slow/forever"))
            .await
            .is_ok()
    });
    within(
        "the stuck request reaching the upstream",
        gated.arrived.recv(),
    )
    .await;

    proxy.sigterm();
    // Never released: the proxy must give up after drain_timeout and still exit cleanly.
    let status = proxy.wait_exit().await;
    assert_eq!(status.code(), Some(0), "{status}\n{}", proxy.log_text());
    stuck.abort();
}

#[tokio::test]
async fn sigint_on_an_idle_proxy_exits_zero() {
    let gated = gated_upstream().await;
    let (mut proxy, listen) = proxy_to(&gated.upstream, "5s").await;
    let mut client = H1Client::connect(listen).await;
    assert_eq!(client.get("http://svc/fast").await.status, StatusCode::OK);
    proxy.signal(Signal::SIGINT);
    let status = proxy.wait_exit().await;
    assert_eq!(status.code(), Some(0), "{status}\n{}", proxy.log_text());
}

#[tokio::test]
async fn sighup_is_logged_and_ignored() {
    let gated = gated_upstream().await;
    let (mut proxy, listen) = proxy_to(&gated.upstream, "5s").await;
    let mut client = H1Client::connect(listen).await;
    proxy.signal(Signal::SIGHUP);
    eventually("the proxy logging the SIGHUP", || {
        let text = proxy.log_text();
        async move { text.contains("SIGHUP ignored").then_some(()) }
    })
    .await;
    assert!(proxy.try_wait().is_none(), "SIGHUP stopped the proxy");
    // The connection opened before the signal still works, and the proxy is still ready.
    assert_eq!(client.get("http://svc/fast").await.status, StatusCode::OK);
    assert_eq!(
        proxy.try_admin_get("/ready").await.map(|r| r.status),
        Some(StatusCode::OK)
    );
    proxy.sigterm();
    let status = proxy.wait_exit().await;
    assert_eq!(status.code(), Some(0), "{status}\n{}", proxy.log_text());
}

#[tokio::test]
async fn sigterm_lets_an_in_flight_h2_stream_finish_after_goaway() {
    let mut gated = gated_upstream().await;
    let (mut proxy, listen) = proxy_to(&gated.upstream, "30s").await;
    let h2 = H2Client::connect(listen).await;
    let sender = h2.sender();
    let in_flight = tokio::spawn(async move {
        let mut sender = sender;
        let resp = sender
            .send_request(pillion_tests::client::get("http://svc/slow/h2"))
            .await
            .expect("in-flight h2 request");
        Reply::read(resp).await
    });
    let path = within("the h2 request reaching the upstream", gated.arrived.recv()).await;
    assert_eq!(path.as_deref(), Some("/slow/h2"));

    proxy.sigterm();
    eventually("/ready turns 503", || async {
        let reply = proxy.try_admin_get("/ready").await?;
        (reply.status == StatusCode::SERVICE_UNAVAILABLE).then_some(())
    })
    .await;
    // After GOAWAY the client may not open new streams on this connection.
    let refused = eventually("new streams refused after GOAWAY", || async {
        match h2
            .try_send(pillion_tests::client::get("http://svc/fast"))
            .await
        {
            Err(e) => Some(e.to_string()),
            Ok(_) => None,
        }
    })
    .await;
    assert!(!refused.is_empty());

    gated.release.notify_waiters();
    let reply = within("the in-flight h2 request", in_flight).await.unwrap();
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(reply.text(), "done /slow/h2");
    within("h2 connection closing after the last stream", h2.conn)
        .await
        .unwrap()
        .ok();
    let status = proxy.wait_exit().await;
    assert_eq!(status.code(), Some(0), "{status}\n{}", proxy.log_text());
}
