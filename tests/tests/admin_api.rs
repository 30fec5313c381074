//! The admin API (everything, on the admin port) and the read-only health port: every endpoint,
//! wrong methods, readiness by hand, log levels at run time, drain, and shutdown.

use http::StatusCode;
use pillion_tests::{client, eventually, free_addr, Echo, H1Client, Proxy, Reply};
use std::net::SocketAddr;

async fn call(addr: SocketAddr, method: &str, path: &str) -> Reply {
    let mut c = H1Client::connect(addr).await;
    c.request(
        client::req(method, &format!("http://{addr}{path}"))
            .body(client::empty())
            .expect("request"),
    )
    .await
}

async fn start() -> (Echo, Proxy, SocketAddr) {
    let echo = Echo::start().await;
    let listen = free_addr();
    let proxy = Proxy::start(&format!(
        "drain_timeout: 10s\nlisteners:\n  - name: web\n    address: {listen}\n    protocol: http\n    cluster: app\n    routes:\n      - {{name: dead, match: {{prefix: /dead}}, cluster: dead}}\nclusters:\n  - name: app\n    endpoints: [{}]\n  - name: dead\n    endpoints: [{}]\n",
        echo.addr(),
        free_addr()
    ))
    .await;
    (echo, proxy, listen)
}

#[tokio::test]
async fn every_admin_endpoint_answers_and_wrong_methods_get_405() {
    let (echo, proxy, listen) = start().await;
    let admin = proxy.admin_addr();
    assert_eq!(call(admin, "GET", "/ready").await.status, StatusCode::OK);
    assert_eq!(call(admin, "GET", "/live").await.status, StatusCode::OK);
    let metrics = call(admin, "GET", "/metrics").await;
    assert_eq!(metrics.status, StatusCode::OK);
    assert!(metrics.text().contains("pillion_process_open_fds"));
    let dump = call(admin, "GET", "/config_dump").await;
    assert_eq!(dump.status, StatusCode::OK);
    assert!(
        dump.text().contains("connect_timeout: 1s"),
        "{}",
        dump.text()
    );

    let clusters: serde_json::Value =
        serde_json::from_slice(&call(admin, "GET", "/clusters").await.body).expect("json");
    assert_eq!(clusters[0]["name"], "app", "{clusters}");
    assert_eq!(
        clusters[0]["endpoints"][0]["address"],
        echo.addr().to_string(),
        "{clusters}"
    );
    let listeners: serde_json::Value =
        serde_json::from_slice(&call(admin, "GET", "/listeners").await.body).expect("json");
    assert_eq!(listeners[0]["name"], "web", "{listeners}");
    assert_eq!(listeners[0]["address"], listen.to_string(), "{listeners}");

    for path in [
        "/logging",
        "/healthcheck/fail",
        "/healthcheck/ok",
        "/drain",
        "/shutdown",
    ] {
        let r = call(admin, "GET", path).await;
        assert_eq!(r.status, StatusCode::METHOD_NOT_ALLOWED, "GET {path}");
    }
    for path in ["/ready", "/metrics", "/config_dump", "/clusters"] {
        let r = call(admin, "POST", path).await;
        assert_eq!(r.status, StatusCode::METHOD_NOT_ALLOWED, "POST {path}");
    }
    assert_eq!(
        call(admin, "GET", "/nope").await.status,
        StatusCode::NOT_FOUND
    );
    // Nothing above changed state: still ready, still serving.
    assert_eq!(call(admin, "GET", "/ready").await.status, StatusCode::OK);
    assert_eq!(call(listen, "GET", "/x").await.status, StatusCode::OK);
}

#[tokio::test]
async fn the_health_port_is_read_only() {
    let (_echo, mut proxy, listen) = start().await;
    let health = proxy.health_addr();
    assert_eq!(call(health, "GET", "/ready").await.status, StatusCode::OK);
    assert_eq!(call(health, "GET", "/live").await.status, StatusCode::OK);
    assert!(call(health, "GET", "/metrics")
        .await
        .text()
        .contains("pillion_process_open_fds"));
    for (method, path) in [
        ("POST", "/shutdown"),
        ("POST", "/drain"),
        ("POST", "/healthcheck/fail"),
        ("POST", "/logging?level=debug"),
        ("GET", "/config_dump"),
        ("GET", "/clusters"),
    ] {
        let r = call(health, method, path).await;
        assert_eq!(
            r.status,
            StatusCode::NOT_FOUND,
            "{method} {path} on the health port"
        );
    }
    assert!(
        proxy.try_wait().is_none(),
        "the health port must not be able to stop the proxy"
    );
    assert_eq!(call(health, "GET", "/ready").await.status, StatusCode::OK);
    assert_eq!(call(listen, "GET", "/x").await.status, StatusCode::OK);
}

#[tokio::test]
async fn readiness_can_be_failed_and_restored_by_hand() {
    let (_echo, proxy, listen) = start().await;
    let (admin, health) = (proxy.admin_addr(), proxy.health_addr());
    assert_eq!(
        call(admin, "POST", "/healthcheck/fail").await.status,
        StatusCode::OK
    );
    assert_eq!(
        call(admin, "GET", "/ready").await.status,
        StatusCode::SERVICE_UNAVAILABLE
    );
    assert_eq!(
        call(health, "GET", "/ready").await.status,
        StatusCode::SERVICE_UNAVAILABLE
    );
    // Failing readiness by hand does not stop traffic.
    assert_eq!(call(listen, "GET", "/x").await.status, StatusCode::OK);
    assert_eq!(
        call(admin, "POST", "/healthcheck/ok").await.status,
        StatusCode::OK
    );
    assert_eq!(call(health, "GET", "/ready").await.status, StatusCode::OK);
}

#[tokio::test]
async fn log_levels_change_at_run_time() {
    let (_echo, proxy, listen) = start().await;
    let admin = proxy.admin_addr();
    // At the default level (info), a proxy error is not logged (it is logged at debug).
    assert_eq!(
        call(listen, "GET", "/dead").await.status,
        StatusCode::BAD_GATEWAY
    );
    assert!(!proxy.log_text().contains("DEBUG"), "{}", proxy.log_text());

    let r = call(admin, "POST", "/logging?level=info&pillion_proxy=debug").await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    assert_eq!(r.text().trim(), "info,pillion_proxy=debug");
    let r = call(admin, "POST", "/logging?level=[bad").await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST, "{}", r.text());
    // A typo is refused, not taken for a target that would silence every log.
    let r = call(admin, "POST", "/logging?level=inof").await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST, "{}", r.text());
    assert!(r.text().contains("not a log level"), "{}", r.text());
    let r = call(admin, "POST", "/logging").await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST, "{}", r.text());
    assert!(
        r.text().contains("info,pillion_proxy=debug"),
        "{}",
        r.text()
    );

    // A proxy error is logged at debug by pillion_proxy now.
    assert_eq!(
        call(listen, "GET", "/dead").await.status,
        StatusCode::BAD_GATEWAY
    );
    eventually("a DEBUG line from pillion_proxy", || {
        let log = proxy.log_text();
        async move {
            log.lines()
                .any(|l| l.contains("DEBUG") && l.contains("pillion_proxy"))
                .then_some(())
        }
    })
    .await;
}

#[tokio::test]
async fn drain_stops_accepting_without_exiting_then_shutdown_exits_0() {
    let (_echo, mut proxy, listen) = start().await;
    let admin = proxy.admin_addr();
    assert_eq!(call(admin, "POST", "/drain").await.status, StatusCode::OK);
    assert_eq!(
        call(admin, "GET", "/ready").await.status,
        StatusCode::SERVICE_UNAVAILABLE
    );
    eventually("the listener refuses new connections", || async move {
        tokio::net::TcpStream::connect(listen)
            .await
            .is_err()
            .then_some(())
    })
    .await;
    assert_eq!(call(admin, "GET", "/live").await.status, StatusCode::OK);
    assert!(proxy.try_wait().is_none(), "/drain must not exit");

    assert_eq!(
        call(admin, "POST", "/shutdown").await.status,
        StatusCode::OK
    );
    let status = proxy.wait_exit().await;
    assert_eq!(status.code(), Some(0), "{}", proxy.log_text());
}

#[tokio::test]
async fn shutdown_lets_an_in_flight_request_finish_then_exits_0() {
    let (_echo, mut proxy, listen) = start().await;
    let admin = proxy.admin_addr();
    let slow = tokio::spawn(async move { call(listen, "GET", "/slow?delay=1500ms").await });
    // The request is in flight once it has been sent upstream.
    proxy
        .wait_metric(
            "pillion_upstream_requests_total",
            &[("cluster", "app")],
            1.0,
        )
        .await;
    assert_eq!(
        call(admin, "POST", "/shutdown").await.status,
        StatusCode::OK
    );
    let reply = slow.await.expect("slow request task");
    assert_eq!(reply.status, StatusCode::OK);
    let status = proxy.wait_exit().await;
    assert_eq!(status.code(), Some(0), "{}", proxy.log_text());
}
