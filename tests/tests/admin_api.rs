//! The admin API (everything, on the admin port) and the read-only health port: every endpoint,
//! wrong methods, readiness by hand, log levels at run time, drain, and shutdown.

use http::StatusCode;
use pillion_tests::{
    client, eventually, free_addr, within, within_for, Echo, H1Client, H2Client, Metrics, Proxy,
    Reply,
};
use std::net::SocketAddr;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

async fn call(addr: SocketAddr, method: &str, path: &str) -> Reply {
    call_with(addr, method, path, &[]).await
}

async fn call_with(addr: SocketAddr, method: &str, path: &str, headers: &[(&str, &str)]) -> Reply {
    let mut c = H1Client::connect(addr).await;
    let mut req = client::req(method, &format!("http://{addr}{path}"));
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    c.request(req.body(client::empty()).expect("request")).await
}

/// A scrape of `/metrics` on the health port (its connections do not count against the admin
/// port's `max_connections`).
async fn health_metrics(proxy: &Proxy) -> Metrics {
    let r = call(proxy.health_addr(), "GET", "/metrics").await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    Metrics::parse(&r.text())
}

/// Writes `drip` one byte every 100ms (nothing if empty) until the server closes the
/// connection (EOF or reset), panicking after `limit`; whatever the server answers first
/// (a 408, say) is read and ignored.
async fn wait_closed(mut tcp: TcpStream, drip: &[u8], limit: Duration, what: &str) {
    within_for(limit, what, async move {
        let mut buf = [0u8; 1024];
        let mut tick = tokio::time::interval(Duration::from_millis(100));
        let mut sent = 0;
        loop {
            tokio::select! {
                r = tcp.read(&mut buf) => match r {
                    Ok(0) | Err(_) => return,
                    Ok(_) => {}
                },
                _ = tick.tick(), if !drip.is_empty() => {
                    let byte = [drip[sent % drip.len()]];
                    sent += 1;
                    if tcp.write_all(&byte).await.is_err() {
                        return;
                    }
                }
            }
        }
    })
    .await;
}

async fn start() -> (Echo, Proxy, SocketAddr) {
    start_with_args(&[]).await
}

async fn start_with_args(args: &[&str]) -> (Echo, Proxy, SocketAddr) {
    let echo = Echo::start().await;
    let listen = free_addr();
    let proxy = Proxy::start_with_args(args, &format!(
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
        for method in ["GET", "PUT", "DELETE"] {
            let r = call(admin, method, path).await;
            assert_eq!(r.status, StatusCode::METHOD_NOT_ALLOWED, "{method} {path}");
            assert_eq!(r.header("allow"), Some("POST"), "{method} {path}");
        }
    }
    for path in [
        "/ready",
        "/live",
        "/metrics",
        "/config_dump",
        "/clusters",
        "/listeners",
    ] {
        let r = call(admin, "POST", path).await;
        assert_eq!(r.status, StatusCode::METHOD_NOT_ALLOWED, "POST {path}");
        assert_eq!(r.header("allow"), Some("GET, HEAD"), "POST {path}");
    }
    let r = call(proxy.health_addr(), "DELETE", "/ready").await;
    assert_eq!(r.status, StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(r.header("allow"), Some("GET, HEAD"));
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

/// A request to the dead route gets the proxy's 502, which pillion_proxy logs at debug.
async fn proxy_error_logged_at_debug(proxy: &Proxy, listen: SocketAddr) {
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
    proxy_error_logged_at_debug(&proxy, listen).await;
}

#[tokio::test]
async fn a_bare_target_in_the_log_filter_logs_every_level_of_it() {
    // As with RUST_LOG=hyper: a word that is no level's near miss names a target.
    let (_echo, proxy, listen) = start_with_args(&["--log-level", "warn,pillion_proxy"]).await;
    proxy_error_logged_at_debug(&proxy, listen).await;
    let log = proxy.log_text();
    assert!(
        !log.lines()
            .any(|l| l.contains(" INFO ") && !l.contains("pillion_proxy")),
        "{log}"
    );
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

#[tokio::test]
async fn cross_origin_posts_are_refused_and_same_origin_ones_allowed() {
    let (_echo, mut proxy, _listen) = start().await;
    let admin = proxy.admin_addr();
    // What a web page in the operator's browser sends: another origin, an opaque one, or a
    // DNS name rebound to the admin's address.
    let rebound = format!("http://evil.example:{}", admin.port());
    for origin in ["http://evil.example", "null", rebound.as_str()] {
        for path in [
            "/healthcheck/fail",
            "/logging?level=trace",
            "/drain",
            "/shutdown",
        ] {
            let r = call_with(admin, "POST", path, &[("origin", origin)]).await;
            assert_eq!(r.status, StatusCode::FORBIDDEN, "POST {path} from {origin}");
        }
    }
    assert_eq!(call(admin, "GET", "/ready").await.status, StatusCode::OK);
    assert!(!proxy.log_text().contains("TRACE"), "{}", proxy.log_text());
    assert!(
        proxy.try_wait().is_none(),
        "a cross-origin /shutdown stopped the proxy"
    );

    // The admin's own origin (and none at all, as curl sends) may change state.
    let own = format!("http://{admin}");
    let r = call_with(admin, "POST", "/healthcheck/fail", &[("origin", &own)]).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    assert_eq!(
        call(admin, "GET", "/ready").await.status,
        StatusCode::SERVICE_UNAVAILABLE
    );
    let localhost = format!("http://localhost:{}", admin.port());
    let r = call_with(admin, "POST", "/healthcheck/ok", &[("origin", &localhost)]).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    assert_eq!(call(admin, "GET", "/ready").await.status, StatusCode::OK);
    // Reads are not state changes: an Origin does not matter to them.
    let r = call_with(admin, "GET", "/ready", &[("origin", "http://evil.example")]).await;
    assert_eq!(r.status, StatusCode::OK);
}

/// Sends `request` as written on a new connection and reads until the server closes it;
/// returns the status line and the body.
async fn raw(addr: SocketAddr, request: &str) -> (String, String) {
    let mut tcp = TcpStream::connect(addr).await.expect("connect");
    tcp.write_all(request.as_bytes()).await.expect("write");
    let mut out = Vec::new();
    within(
        "the server closes the connection",
        tcp.read_to_end(&mut out),
    )
    .await
    .expect("read");
    let text = String::from_utf8_lossy(&out).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head.lines().next().unwrap_or_default().to_owned();
    (status, body.to_owned())
}

#[tokio::test]
async fn the_admin_port_refuses_hosts_a_dns_rebinding_page_would_send() {
    let (_echo, mut proxy, _listen) = start().await;
    let admin = proxy.admin_addr();
    let port = admin.port();
    // What the operator's browser sends once a page's DNS name is rebound to 127.0.0.1.
    let evil = format!("evil.example:{port}");
    for path in [
        "/config_dump",
        "/clusters",
        "/listeners",
        "/metrics",
        "/ready",
    ] {
        let (status, body) = raw(
            admin,
            &format!("GET {path} HTTP/1.1\r\nHost: {evil}\r\nConnection: close\r\n\r\n"),
        )
        .await;
        assert!(
            status.starts_with("HTTP/1.1 403"),
            "GET {path}: {status}\n{body}"
        );
        assert!(body.contains("Host"), "GET {path}: {body}");
        assert!(!body.contains("listeners"), "GET {path} leaked: {body}");
    }
    // HTTP/2 names the host in `:authority`.
    let h2 = H2Client::connect(admin).await;
    let r = h2.get(&format!("http://{evil}/config_dump")).await;
    assert_eq!(r.status, StatusCode::FORBIDDEN, "{}", r.text());
    // Nor can such a page change state (it need not send an Origin on a simple POST).
    let (status, _) = raw(
        admin,
        &format!("POST /shutdown HTTP/1.1\r\nHost: {evil}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"),
    )
    .await;
    assert!(status.starts_with("HTTP/1.1 403"), "{status}");
    assert!(
        proxy.try_wait().is_none(),
        "/shutdown with a foreign Host stopped the proxy"
    );
    eventually("a WARN naming the refusal", || {
        let log = proxy.log_text();
        async move {
            log.lines()
                .any(|l| {
                    l.contains("WARN") && l.contains("refused an admin request for another host")
                })
                .then_some(())
        }
    })
    .await;

    // curl by address or by `localhost`, `kubectl port-forward` (its own local port), and a
    // script's HTTP/1.0 request with no Host at all.
    let forwarded = "127.0.0.1:9000";
    let localhost = format!("localhost:{port}");
    let by_address = admin.to_string();
    for host in [by_address.as_str(), localhost.as_str(), forwarded] {
        let (status, body) = raw(
            admin,
            &format!("GET /config_dump HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"),
        )
        .await;
        assert!(
            status.starts_with("HTTP/1.1 200"),
            "Host: {host}: {status}\n{body}"
        );
        assert!(body.contains("listeners:"), "Host: {host}: {body}");
    }
    let (status, body) = raw(admin, "GET /config_dump HTTP/1.0\r\n\r\n").await;
    assert!(
        status.starts_with("HTTP/1.0 200"),
        "no Host: {status}\n{body}"
    );
    assert!(body.contains("listeners:"), "no Host: {body}");
    let r = h2.get(&format!("http://{by_address}/config_dump")).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());

    // The health port is reached by the pod IP or a service name: any Host will do.
    let (status, body) = raw(
        proxy.health_addr(),
        &format!("GET /ready HTTP/1.1\r\nHost: {evil}\r\nConnection: close\r\n\r\n"),
    )
    .await;
    assert!(status.starts_with("HTTP/1.1 200"), "{status}\n{body}");
}

#[tokio::test]
async fn slow_and_silent_clients_are_cut_off_on_both_ports() {
    let echo = Echo::start().await;
    let listen = free_addr();
    let proxy = Proxy::start_with_admin(
        &[],
        &[("header_timeout", "500ms"), ("idle_timeout", "2s")],
        &format!(
            "listeners:\n  - name: web\n    address: {listen}\n    protocol: http\n    cluster: app\nclusters:\n  - name: app\n    endpoints: [{}]\n",
            echo.addr()
        ),
    )
    .await;
    // Far above the timeouts, far below "forever": a broken server fails instead of hanging.
    let limit = Duration::from_secs(15);
    for (port, addr) in [
        ("admin", proxy.admin_addr()),
        ("health", proxy.health_addr()),
    ] {
        // Slowloris: a request line and then a header byte every 100ms, never the blank line.
        let mut tcp = TcpStream::connect(addr).await.expect("connect");
        tcp.write_all(b"GET /ready HTTP/1.1\r\nhost: x\r\n")
            .await
            .expect("write");
        wait_closed(
            tcp,
            b"x-slow: y\r\n",
            limit,
            &format!("{port}: a dripping request head is cut off"),
        )
        .await;

        // A partial request line, then nothing.
        let mut tcp = TcpStream::connect(addr).await.expect("connect");
        tcp.write_all(b"GET /rea").await.expect("write");
        wait_closed(
            tcp,
            b"",
            limit,
            &format!("{port}: a partial request line is cut off"),
        )
        .await;

        // A connection that never sends a byte.
        let tcp = TcpStream::connect(addr).await.expect("connect");
        wait_closed(
            tcp,
            b"",
            limit,
            &format!("{port}: a silent connection is closed"),
        )
        .await;

        // A kept-alive connection that goes quiet after a request.
        let mut tcp = TcpStream::connect(addr).await.expect("connect");
        tcp.write_all(format!("GET /live HTTP/1.1\r\nhost: {addr}\r\n\r\n").as_bytes())
            .await
            .expect("write");
        let (head, _) = pillion_tests::net::read_response_head(&mut tcp).await;
        assert!(head.starts_with("HTTP/1.1 200"), "{head}");
        wait_closed(
            tcp,
            b"",
            limit,
            &format!("{port}: an idle kept-alive connection is closed"),
        )
        .await;
    }
    // Whoever is quick is still served.
    assert_eq!(
        call(proxy.admin_addr(), "GET", "/ready").await.status,
        StatusCode::OK
    );
    assert_eq!(
        call(proxy.health_addr(), "GET", "/ready").await.status,
        StatusCode::OK
    );
}

#[tokio::test]
async fn connections_beyond_max_connections_are_closed_at_once() {
    let echo = Echo::start().await;
    let listen = free_addr();
    let proxy = Proxy::start_with_admin(
        &[],
        &[("max_connections", "2"), ("header_timeout", "60s"), ("idle_timeout", "60s")],
        &format!(
            "listeners:\n  - name: web\n    address: {listen}\n    protocol: http\n    cluster: app\nclusters:\n  - name: app\n    endpoints: [{}]\n",
            echo.addr()
        ),
    )
    .await;
    let admin = proxy.admin_addr();
    let p = &proxy;
    let open = |m: &Metrics| m.sum("pillion_admin_connections", &[("port", "admin")]);
    // The readiness probes' connections are gone first.
    eventually("no admin connection open", || async move {
        (open(&health_metrics(p).await) == 0.0).then_some(())
    })
    .await;
    let held = [
        TcpStream::connect(admin).await.expect("connect"),
        TcpStream::connect(admin).await.expect("connect"),
    ];
    eventually("two admin connections open", || async move {
        (open(&health_metrics(p).await) == 2.0).then_some(())
    })
    .await;
    // Closed at once: long before the 60s timeouts could.
    let third = TcpStream::connect(admin).await.expect("connect");
    wait_closed(
        third,
        b"",
        Duration::from_secs(10),
        "a third admin connection is closed",
    )
    .await;
    let m = health_metrics(&proxy).await;
    assert_eq!(
        m.sum(
            "pillion_admin_connections_rejected_total",
            &[("port", "admin")]
        ),
        1.0,
        "{}",
        m.text
    );
    // The cap is per port: the health port still answers, and the admin port once a slot frees.
    drop(held);
    eventually("the admin port answers again", || async move {
        p.try_admin_get("/ready")
            .await
            .filter(|r| r.status == StatusCode::OK)
    })
    .await;
}
