//! Resilience in endpoint selection: outlier ejection and its end, active health checks (HTTP
//! and TCP, and the all-unhealthy fallback), the peak-EWMA balancer avoiding a slow endpoint, and
//! retries hiding an endpoint killed under load.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use http::StatusCode;
use pillion_tests::{eventually, free_addr, within, Echo, H1Client, Proxy, Reply, STEP};

const ENDPOINTS: &str = "pillion_cluster_endpoints";

/// `text` with every line indented by `n` spaces (for YAML fragments).
fn indent(text: &str, n: usize) -> String {
    let pad = " ".repeat(n);
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| format!("{pad}{l}\n"))
        .collect()
}

fn list(endpoints: &[SocketAddr]) -> String {
    endpoints
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

/// One HTTP listener `in` on `listen` whose only route `r` (prefix `/`) goes to cluster `app`;
/// `route` and `cluster` are extra YAML keys for that route and that cluster.
fn one_route(listen: SocketAddr, endpoints: &[SocketAddr], route: &str, cluster: &str) -> String {
    format!(
        "listeners:\n  - name: in\n    address: {listen}\n    protocol: http\n    cluster: app\n    routes:\n      - name: r\n        match: {{ prefix: / }}\n        cluster: app\n{}clusters:\n  - name: app\n    endpoints: [{}]\n{}",
        indent(route, 8),
        list(endpoints),
        indent(cluster, 4)
    )
}

fn server(reply: &Reply) -> &str {
    reply
        .header("x-echo-server")
        .unwrap_or_else(|| panic!("not an echo answer: {reply:?}"))
}

/// The `/clusters` entry of `address` in `cluster`.
async fn endpoint_state(proxy: &Proxy, cluster: &str, address: SocketAddr) -> serde_json::Value {
    let reply = proxy.admin_get("/clusters").await;
    assert_eq!(reply.status, StatusCode::OK, "{reply:?}");
    let all: serde_json::Value = serde_json::from_slice(&reply.body).expect("/clusters JSON");
    let c = all
        .as_array()
        .expect("/clusters is an array")
        .iter()
        .find(|c| c["name"] == cluster)
        .unwrap_or_else(|| panic!("no cluster {cluster} in {all}"));
    c["endpoints"]
        .as_array()
        .expect("endpoints array")
        .iter()
        .find(|e| e["address"] == address.to_string())
        .unwrap_or_else(|| panic!("no endpoint {address} in {c}"))
        .clone()
}

/// Polls until `pillion_cluster_endpoints{cluster}` reads `want` for each `(state, count)`.
async fn wait_endpoints(proxy: &Proxy, cluster: &str, want: &[(&str, f64)]) {
    eventually(&format!("{cluster} endpoints {want:?}"), || async {
        let m = proxy.metrics().await;
        want.iter()
            .all(|(state, n)| m.sum(ENDPOINTS, &[("cluster", cluster), ("state", state)]) == *n)
            .then_some(())
    })
    .await;
}

// === outlier detection ===

#[tokio::test]
async fn an_endpoint_answering_5xx_is_ejected_then_comes_back() {
    let a = Echo::named("a").await;
    let b = Echo::named("b").await;
    let bad = Echo::start_with_args("bad", &["--status", "500"]).await;
    let listen = free_addr();
    let proxy = Proxy::start(&one_route(
        listen,
        &[a.addr(), b.addr(), bad.addr()],
        "",
        "outlier_detection: { consecutive_5xx: 3, base_ejection_time: 2s, max_ejection_percent: 50 }",
    ))
    .await;
    let mut client = H1Client::connect(listen).await;

    // Round robin: `bad` gets every third request; its third 500 in a row ejects it.
    let mut sent = 0;
    loop {
        for _ in 0..3 {
            let reply = client.get("http://svc/work").await;
            assert!(
                reply.status == StatusCode::OK || server(&reply) == "bad",
                "{reply:?}"
            );
            sent += 1;
        }
        let m = proxy.metrics().await;
        if m.sum("pillion_outlier_ejections_total", &[("cluster", "app")]) >= 1.0 {
            break;
        }
        assert!(
            sent < 60,
            "no ejection after {sent} requests; /metrics:\n{}",
            m.text
        );
    }
    assert_eq!(
        endpoint_state(&proxy, "app", bad.addr()).await["ejected"],
        true
    );
    wait_endpoints(&proxy, "app", &[("ejected", 1.0), ("available", 2.0)]).await;

    // While ejected (2s): no traffic.
    for i in 0..20 {
        let reply = client.get(&format!("http://svc/ejected/{i}")).await;
        assert_eq!(reply.status, StatusCode::OK, "{reply:?}");
        assert_ne!(server(&reply), "bad");
    }

    // After its ejection time it gets requests again.
    let deadline = tokio::time::Instant::now() + STEP;
    loop {
        let reply = client.get("http://svc/later").await;
        if server(&reply) == "bad" {
            assert_eq!(reply.status, StatusCode::INTERNAL_SERVER_ERROR);
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the ejected endpoint never came back"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn ejections_stop_at_max_ejection_percent_and_all_ejected_means_all_serve() {
    let a = Echo::named("a").await;
    let bad1 = Echo::start_with_args("bad1", &["--status", "500"]).await;
    let bad2 = Echo::start_with_args("bad2", &["--status", "500"]).await;
    let lonely = Echo::start_with_args("lonely", &["--status", "500"]).await;
    let (three, one) = (free_addr(), free_addr());
    let outlier = "outlier_detection: { consecutive_5xx: 2, base_ejection_time: 30s";
    let proxy = Proxy::start(&format!(
        r#"
listeners:
  - name: three
    address: {three}
    protocol: http
    cluster: three
  - name: one
    address: {one}
    protocol: http
    cluster: one
clusters:
  - name: three
    endpoints: [{}]
    {outlier}, max_ejection_percent: 50 }}
  - name: one
    endpoints: [{}]
    {outlier}, max_ejection_percent: 100 }}
"#,
        list(&[a.addr(), bad1.addr(), bad2.addr()]),
        lonely.addr()
    ))
    .await;

    // Two of three endpoints fail, but 50% of three allows one ejection only.
    let mut client = H1Client::connect(three).await;
    for i in 0..30 {
        client.get(&format!("http://svc/first/{i}")).await;
    }
    wait_endpoints(&proxy, "three", &[("ejected", 1.0), ("available", 2.0)]).await;
    let mut by: BTreeMap<String, usize> = BTreeMap::new();
    for i in 0..30 {
        let reply = client.get(&format!("http://svc/then/{i}")).await;
        *by.entry(server(&reply).to_string()).or_default() += 1;
    }
    assert_eq!(by.len(), 2, "`a` and the bad endpoint left in: {by:?}");
    let m = proxy.metrics().await;
    assert_eq!(
        m.sum("pillion_outlier_ejections_total", &[("cluster", "three")]),
        1.0,
        "/metrics:\n{}",
        m.text
    );
    assert_eq!(
        m.sum(ENDPOINTS, &[("cluster", "three"), ("state", "ejected")]),
        1.0
    );

    // The only endpoint may be ejected (one always may); with every endpoint ejected the
    // cluster uses them all (panic mode) instead of answering no-healthy-endpoint.
    let mut client = H1Client::connect(one).await;
    for i in 0..3 {
        client.get(&format!("http://svc/one/{i}")).await;
    }
    wait_endpoints(&proxy, "one", &[("ejected", 1.0)]).await;
    assert_eq!(
        endpoint_state(&proxy, "one", lonely.addr()).await["ejected"],
        true
    );
    for i in 0..5 {
        let reply = client.get(&format!("http://svc/panic/{i}")).await;
        assert_eq!(reply.header("x-pillion-error"), None, "{reply:?}");
        assert_eq!(server(&reply), "lonely");
    }
}

#[tokio::test]
async fn an_endpoint_passing_its_health_checks_again_gets_traffic_again() {
    use http_body_util::BodyExt;
    use pillion_tests::client::{empty, full};
    use pillion_tests::upstream::Upstream;

    let a = Echo::named("a").await;
    let healthy = Arc::new(AtomicBool::new(false));
    let flag = healthy.clone();
    let toggle = Upstream::http1(move |req: http::Request<hyper::body::Incoming>| {
        let flag = flag.clone();
        async move {
            let path = req.uri().path().to_string();
            let _ = req.into_body().collect().await;
            if path == "/healthz" {
                let status = if flag.load(Ordering::SeqCst) {
                    200
                } else {
                    503
                };
                return http::Response::builder()
                    .status(status)
                    .body(empty())
                    .expect("response");
            }
            http::Response::builder()
                .header("x-echo-server", "toggle")
                .body(full("ok"))
                .expect("response")
        }
    })
    .await;
    let listen = free_addr();
    let proxy = Proxy::start(&one_route(
        listen,
        &[a.addr(), toggle.addr()],
        "",
        "health_check: { http_path: /healthz, interval: 100ms, healthy_threshold: 2, unhealthy_threshold: 1 }",
    ))
    .await;

    wait_endpoints(&proxy, "app", &[("unhealthy", 1.0), ("available", 1.0)]).await;
    let mut client = H1Client::connect(listen).await;
    for i in 0..10 {
        let reply = client.get(&format!("http://svc/down/{i}")).await;
        assert_eq!(server(&reply), "a");
    }

    healthy.store(true, Ordering::SeqCst);
    wait_endpoints(&proxy, "app", &[("unhealthy", 0.0), ("available", 2.0)]).await;
    let mut by: BTreeMap<String, usize> = BTreeMap::new();
    for i in 0..10 {
        let reply = client.get(&format!("http://svc/up/{i}")).await;
        assert_eq!(reply.status, StatusCode::OK, "{reply:?}");
        *by.entry(server(&reply).to_string()).or_default() += 1;
    }
    assert!(by.contains_key("toggle"), "{by:?}");
}

#[tokio::test]
async fn an_endpoint_refusing_connections_is_ejected_for_gateway_failures() {
    let a = Echo::named("a").await;
    let refusing = tokio::net::TcpSocket::new_v4().expect("socket");
    refusing
        .bind("127.0.0.1:0".parse().expect("addr"))
        .expect("bind");
    let closed = refusing.local_addr().expect("local addr");
    let listen = free_addr();
    let proxy = Proxy::start(&one_route(
        listen,
        &[a.addr(), closed],
        "",
        "outlier_detection: { consecutive_gateway_failure: 2, base_ejection_time: 30s, max_ejection_percent: 50 }",
    ))
    .await;
    let mut client = H1Client::connect(listen).await;
    let mut failed = 0;
    for i in 0..10 {
        let reply = client.get(&format!("http://svc/before/{i}")).await;
        if reply.status != StatusCode::OK {
            assert_eq!(
                reply.header("x-pillion-error"),
                Some("upstream-connect-failure"),
                "{reply:?}"
            );
            failed += 1;
        }
    }
    assert!(
        (1..=3).contains(&failed),
        "two connect failures in a row eject the endpoint: {failed} failed"
    );
    wait_endpoints(&proxy, "app", &[("ejected", 1.0), ("available", 1.0)]).await;
    assert_eq!(endpoint_state(&proxy, "app", closed).await["ejected"], true);
    for i in 0..10 {
        let reply = client.get(&format!("http://svc/after/{i}")).await;
        assert_eq!(reply.status, StatusCode::OK, "{reply:?}");
    }
}

/// A listener that accepts connections and never answers on them.
async fn silent_endpoint() -> (SocketAddr, tokio::task::JoinHandle<()>) {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = l.local_addr().expect("local addr");
    let task = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((s, _)) = l.accept().await {
            held.push(s);
        }
    });
    (addr, task)
}

#[tokio::test]
async fn an_endpoint_that_never_answers_is_ejected_for_its_timeouts() {
    // A timed-out try counts as a gateway failure of its endpoint, as a 504 from it would.
    let a = Echo::named("a").await;
    let (silent, task) = silent_endpoint().await;
    let listen = free_addr();
    let proxy = Proxy::start(&one_route(
        listen,
        &[a.addr(), silent],
        "timeout: 300ms",
        "protocol: http1\noutlier_detection: { consecutive_gateway_failure: 2, base_ejection_time: 30s, max_ejection_percent: 50 }",
    ))
    .await;
    let mut timed_out = 0;
    for i in 0..12 {
        let mut client = H1Client::connect(listen).await;
        let reply = client.get(&format!("http://svc/before/{i}")).await;
        if reply.status != StatusCode::OK {
            assert_eq!(reply.status, StatusCode::GATEWAY_TIMEOUT, "{reply:?}");
            assert_eq!(reply.header("x-pillion-error"), Some("request-timeout"));
            timed_out += 1;
        }
    }
    assert!(
        (1..=3).contains(&timed_out),
        "two timeouts in a row eject the endpoint: {timed_out} timed out"
    );
    wait_endpoints(&proxy, "app", &[("ejected", 1.0), ("available", 1.0)]).await;
    assert_eq!(endpoint_state(&proxy, "app", silent).await["ejected"], true);
    let mut client = H1Client::connect(listen).await;
    for i in 0..10 {
        let reply = client.get(&format!("http://svc/after/{i}")).await;
        assert_eq!(reply.status, StatusCode::OK, "{reply:?}");
    }
    task.abort();
}

#[tokio::test]
async fn requests_the_client_gives_up_on_do_not_eject_the_endpoint() {
    // A try dropped because its client went away, before any timeout, is no failure of the
    // endpoint.
    let a = Echo::named("a").await;
    let listen = free_addr();
    let proxy = Proxy::start(&one_route(
        listen,
        &[a.addr()],
        "timeout: 30s",
        "protocol: http1\noutlier_detection: { consecutive_gateway_failure: 1, base_ejection_time: 30s, max_ejection_percent: 100 }",
    ))
    .await;
    for i in 1..=3 {
        let mut client = H1Client::connect(listen).await;
        let slow = tokio::spawn(async move {
            client.get("http://svc/slow?delay=20s").await;
        });
        proxy
            .wait_metric(
                "pillion_upstream_requests_total",
                &[("cluster", "app")],
                f64::from(i),
            )
            .await;
        slow.abort();
        let _ = slow.await;
    }
    // The proxy has seen the clients leave once no request is in flight on the endpoint.
    eventually("no request in flight", || async {
        (endpoint_state(&proxy, "app", a.addr()).await["in_flight"] == 0).then_some(())
    })
    .await;
    let m = proxy.metrics().await;
    assert_eq!(
        m.sum("pillion_outlier_ejections_total", &[("cluster", "app")]),
        0.0,
        "{}",
        m.text
    );
    let mut client = H1Client::connect(listen).await;
    let reply = client.get("http://svc/after").await;
    assert_eq!(reply.status, StatusCode::OK, "{reply:?}");
}

#[tokio::test]
async fn the_clusters_own_connection_limit_does_not_eject_endpoints() {
    // A refusal by `max_connections` is the proxy's decision, not a failure of the endpoint.
    let (a, b) = (Echo::named("a").await, Echo::named("b").await);
    let listen = free_addr();
    let proxy = Proxy::start(&one_route(
        listen,
        &[a.addr(), b.addr()],
        "",
        "protocol: http1\nlimits: { max_connections: 1 }\noutlier_detection: { consecutive_gateway_failure: 2, base_ejection_time: 30s, max_ejection_percent: 100 }",
    ))
    .await;
    let held = tokio::spawn(async move {
        let mut c = H1Client::connect(listen).await;
        c.get("http://svc/held?delay=3s").await
    });
    proxy
        .wait_metric(
            "pillion_upstream_requests_total",
            &[("cluster", "app")],
            1.0,
        )
        .await;
    let mut client = H1Client::connect(listen).await;
    for i in 0..6 {
        let reply = client.get(&format!("http://svc/refused/{i}")).await;
        assert_eq!(
            reply.header("x-pillion-error"),
            Some("overflow-max-connections"),
            "{reply:?}"
        );
    }
    let m = proxy.metrics().await;
    assert_eq!(
        m.sum("pillion_outlier_ejections_total", &[("cluster", "app")]),
        0.0,
        "{}",
        m.text
    );
    for ep in [a.addr(), b.addr()] {
        assert_eq!(endpoint_state(&proxy, "app", ep).await["ejected"], false);
    }
    let reply = within("the held request", held).await.expect("task");
    assert_eq!(reply.status, StatusCode::OK, "{reply:?}");
}

// === health checks ===

#[tokio::test]
async fn unhealthy_endpoints_get_no_requests_unless_all_are() {
    let a = Echo::named("a").await;
    let b = Echo::named("b").await;
    let sick = Echo::start_with_args("sick", &["--status", "500"]).await;
    let alone = Echo::start_with_args("alone", &["--status", "500"]).await;
    let refusing = tokio::net::TcpSocket::new_v4().expect("socket");
    refusing
        .bind("127.0.0.1:0".parse().expect("addr"))
        .expect("bind");
    let closed = refusing.local_addr().expect("local addr");
    let (web, tcp, solo) = (free_addr(), free_addr(), free_addr());
    let check = "interval: 200ms, timeout: 1s, healthy_threshold: 1, unhealthy_threshold: 1";
    let proxy = Proxy::start(&format!(
        r#"
listeners:
  - name: web
    address: {web}
    protocol: http
    cluster: web
  - name: tcp
    address: {tcp}
    protocol: http
    cluster: tcp
  - name: solo
    address: {solo}
    protocol: http
    cluster: solo
clusters:
  - name: web
    endpoints: [{}]
    health_check: {{ http_path: /healthz, {check} }}
  - name: tcp
    endpoints: [{closed}, {}]
    health_check: {{ {check} }}
  - name: solo
    endpoints: [{}]
    health_check: {{ http_path: /healthz, {check} }}
"#,
        list(&[a.addr(), b.addr(), sick.addr()]),
        a.addr(),
        alone.addr()
    ))
    .await;

    // GET /healthz on `sick` answers 500: unhealthy.
    wait_endpoints(&proxy, "web", &[("unhealthy", 1.0), ("available", 2.0)]).await;
    let state = endpoint_state(&proxy, "web", sick.addr()).await;
    assert_eq!(state["healthy"], false, "{state}");
    assert_eq!(
        endpoint_state(&proxy, "web", a.addr()).await["healthy"],
        true
    );
    let mut client = H1Client::connect(web).await;
    let mut by = BTreeMap::new();
    for i in 0..30 {
        let reply = client.get(&format!("http://svc/hc/{i}")).await;
        assert_eq!(reply.status, StatusCode::OK, "{reply:?}");
        *by.entry(server(&reply).to_string()).or_insert(0) += 1;
    }
    assert!(!by.contains_key("sick"), "{by:?}");
    assert_eq!(by.len(), 2, "both healthy endpoints serve: {by:?}");

    // A TCP check: the refusing endpoint is unhealthy, so nothing is sent there (no 502s).
    wait_endpoints(&proxy, "tcp", &[("unhealthy", 1.0), ("available", 1.0)]).await;
    let mut client = H1Client::connect(tcp).await;
    for i in 0..10 {
        let reply = client.get(&format!("http://svc/tcp/{i}")).await;
        assert_eq!(reply.status, StatusCode::OK, "{reply:?}");
    }

    // Every endpoint unhealthy: traffic still goes to them rather than failing.
    wait_endpoints(&proxy, "solo", &[("unhealthy", 1.0)]).await;
    let mut client = H1Client::connect(solo).await;
    let reply = client.get("http://svc/anyway").await;
    assert_eq!(reply.header("x-pillion-error"), None, "{reply:?}");
    assert_eq!(server(&reply), "alone");
    assert_eq!(reply.status, StatusCode::INTERNAL_SERVER_ERROR);
}

// === load balancing ===

#[tokio::test]
async fn ewma_sends_less_traffic_to_a_slower_endpoint() {
    let f1 = Echo::named("fast1").await;
    let f2 = Echo::named("fast2").await;
    let slow = Echo::start_with_args("slow", &["--delay", "20ms"]).await;
    let listen = free_addr();
    let proxy = Proxy::start(&one_route(
        listen,
        &[f1.addr(), f2.addr(), slow.addr()],
        "",
        "balancer: ewma",
    ))
    .await;

    const CLIENTS: usize = 4;
    const EACH: usize = 60;
    let tasks: Vec<_> = (0..CLIENTS)
        .map(|c| {
            tokio::spawn(async move {
                let mut client = H1Client::connect(listen).await;
                let mut servers = Vec::new();
                for i in 0..EACH {
                    let reply = client.get(&format!("http://svc/c{c}/{i}")).await;
                    assert_eq!(reply.status, StatusCode::OK, "{reply:?}");
                    servers.push(server(&reply).to_string());
                }
                servers
            })
        })
        .collect();
    let mut by: BTreeMap<String, usize> = BTreeMap::new();
    for t in tasks {
        for s in t.await.expect("client task") {
            *by.entry(s).or_default() += 1;
        }
    }
    let total = CLIENTS * EACH;
    let slow_share = by.get("slow").copied().unwrap_or(0);
    assert!(
        slow_share * 4 < total,
        "the slow endpoint got {slow_share} of {total} (round robin would give a third): {by:?}"
    );
    assert!(
        by.contains_key("fast1") && by.contains_key("fast2"),
        "{by:?}"
    );
    // The admin API shows the latency the balancer sees.
    let slow_ms = endpoint_state(&proxy, "app", slow.addr()).await["latency_ms"].clone();
    for fast in [f1.addr(), f2.addr()] {
        let fast_ms = endpoint_state(&proxy, "app", fast).await["latency_ms"].clone();
        assert!(
            slow_ms.as_f64().expect("latency_ms number")
                > fast_ms.as_f64().expect("latency_ms number"),
            "slow {slow_ms} ms vs fast {fast_ms} ms"
        );
    }
}

// === an endpoint dying under load ===

#[tokio::test]
async fn killing_an_endpoint_under_load_loses_no_idempotent_request() {
    let a = Echo::named("a").await;
    let b = Echo::named("b").await;
    let victim = Echo::named("victim").await;
    let listen = free_addr();
    let _proxy = Proxy::start(&one_route(
        listen,
        &[a.addr(), b.addr(), victim.addr()],
        "retry: { retries: 3, on: [connect-failure, reset, gateway-error] }",
        // The test is about retries, not the budget: after the kill a third of requests retry.
        "retry_budget: { ratio: 1.0, min_per_sec: 100 }",
    ))
    .await;

    let done = Arc::new(AtomicUsize::new(0));
    let victim_hits = Arc::new(AtomicUsize::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let clients: Vec<_> = (0..4)
        .map(|c| {
            let (done, victim_hits, stop) = (done.clone(), victim_hits.clone(), stop.clone());
            tokio::spawn(async move {
                let mut client = H1Client::connect(listen).await;
                let mut failures = Vec::new();
                let mut i = 0;
                while !stop.load(Ordering::SeqCst) {
                    let url = format!("http://svc/c{c}/{i}?delay=5ms");
                    match client.try_send(pillion_tests::client::get(&url)).await {
                        Ok(resp) => {
                            let reply = Reply::read(resp).await;
                            if reply.status != StatusCode::OK {
                                failures.push(format!("{url}: {reply:?}"));
                            } else if reply.header("x-echo-server") == Some("victim") {
                                victim_hits.fetch_add(1, Ordering::SeqCst);
                            }
                        }
                        Err(e) => {
                            failures.push(format!("{url}: {e}"));
                            client = H1Client::connect(listen).await;
                        }
                    }
                    done.fetch_add(1, Ordering::SeqCst);
                    i += 1;
                }
                failures
            })
        })
        .collect();

    let count = || done.load(Ordering::SeqCst);
    eventually("150 requests before the kill", || async {
        (count() >= 150).then_some(())
    })
    .await;
    assert!(
        victim_hits.load(Ordering::SeqCst) > 0,
        "the victim served before the kill"
    );
    victim.kill();
    let killed_at = count();
    eventually("300 requests after the kill", || async {
        (count() >= killed_at + 300).then_some(())
    })
    .await;
    stop.store(true, Ordering::SeqCst);

    let mut failures = Vec::new();
    for c in clients {
        failures.extend(c.await.expect("client task"));
    }
    assert!(
        failures.is_empty(),
        "{} of {} requests failed: {failures:#?}",
        failures.len(),
        count()
    );
}
