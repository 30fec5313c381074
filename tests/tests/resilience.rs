//! Resilience on the request path: retries (conditions, idempotency, budget), request and
//! per-try timeouts, the circuit breaker, rate limits, fault injection, and the downstream
//! header and idle timeouts. Endpoint selection (outliers, health, EWMA, a dying endpoint) is
//! in `resilience_endpoints.rs`.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use http::{Response, StatusCode};
use http_body_util::BodyExt;
use pillion_tests::client::{empty, full, req};
use pillion_tests::upstream::Upstream;
use pillion_tests::{eventually, free_addr, within_for, Echo, H1Client, H2Client, Proxy, Reply};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const UPSTREAM_REQUESTS: &str = "pillion_upstream_requests_total";

/// `text` with every line indented by `n` spaces (for YAML fragments).
fn indent(text: &str, n: usize) -> String {
    let pad = " ".repeat(n);
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| format!("{pad}{l}\n"))
        .collect()
}

/// One HTTP listener `in` on `listen` whose only route `r` (prefix `/`) goes to cluster `app`;
/// `route` and `cluster` are extra YAML keys for that route and that cluster.
fn one_route(listen: SocketAddr, endpoints: &[SocketAddr], route: &str, cluster: &str) -> String {
    let eps = endpoints
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(", ");
    format!(
        "listeners:\n  - name: in\n    address: {listen}\n    protocol: http\n    cluster: app\n    routes:\n      - name: r\n        match: {{ prefix: / }}\n        cluster: app\n{}clusters:\n  - name: app\n    endpoints: [{eps}]\n{}",
        indent(route, 8),
        indent(cluster, 4)
    )
}

/// A loopback port that refuses connections: bound but never listening, and kept bound (so no
/// other test takes it) for as long as the returned socket lives.
fn refusing_port() -> (tokio::net::TcpSocket, SocketAddr) {
    let socket = tokio::net::TcpSocket::new_v4().expect("socket");
    socket
        .bind("127.0.0.1:0".parse().expect("addr"))
        .expect("bind");
    let addr = socket.local_addr().expect("local addr");
    (socket, addr)
}

/// The sum of `name{labels}` in one scrape.
async fn metric(proxy: &Proxy, name: &str, labels: &[(&str, &str)]) -> f64 {
    proxy.metrics().await.sum(name, labels)
}

/// The `x-pillion-attempts` header as a number (1 when absent: the request was not retried).
fn attempts(reply: &Reply) -> u32 {
    reply.header("x-pillion-attempts").map_or(1, |v| {
        v.parse()
            .unwrap_or_else(|_| panic!("x-pillion-attempts: {v:?}"))
    })
}

fn assert_proxy_error(reply: &Reply, status: StatusCode, reason: &str) {
    assert_eq!(reply.status, status, "{reply:?}");
    assert_eq!(reply.header("x-pillion-error"), Some(reason), "{reply:?}");
    assert!(
        reply.header("x-echo-server").is_none(),
        "a proxy-generated answer, not the upstream's: {reply:?}"
    );
}

/// An HTTP/1.1 upstream counting the requests it received and answering each with `status`.
async fn counting_upstream(status: u16) -> (Upstream, Arc<AtomicUsize>) {
    let seen = Arc::new(AtomicUsize::new(0));
    let count = seen.clone();
    let upstream = Upstream::http1(move |req: http::Request<hyper::body::Incoming>| {
        let count = count.clone();
        async move {
            let _ = req.into_body().collect().await;
            count.fetch_add(1, Ordering::SeqCst);
            Response::builder()
                .status(status)
                .body(empty())
                .expect("response")
        }
    })
    .await;
    (upstream, seen)
}

// === cancellation ===

/// Sends on its channel when dropped: the handler holding it was cancelled.
struct DropSignal(tokio::sync::mpsc::UnboundedSender<()>);

impl Drop for DropSignal {
    fn drop(&mut self) {
        let _ = self.0.send(());
    }
}

#[tokio::test]
async fn a_client_that_hangs_up_cancels_its_upstream_request() {
    let (started_tx, mut started) = tokio::sync::mpsc::unbounded_channel();
    let (cancelled_tx, mut cancelled) = tokio::sync::mpsc::unbounded_channel();
    // An upstream that never answers, and tells when its handler is dropped.
    let upstream = Upstream::http1(move |_req: http::Request<hyper::body::Incoming>| {
        let (started, cancelled) = (started_tx.clone(), cancelled_tx.clone());
        async move {
            let _signal = DropSignal(cancelled);
            let _ = started.send(());
            std::future::pending::<Response<pillion_tests::Body>>().await
        }
    })
    .await;
    let listen = free_addr();
    let _proxy = Proxy::start(&one_route(listen, &[upstream.addr()], "", "")).await;

    let mut tcp = tokio::net::TcpStream::connect(listen)
        .await
        .expect("connect");
    tcp.write_all(b"GET /hang HTTP/1.1\r\nHost: svc\r\n\r\n")
        .await
        .expect("write");
    within_for(
        Duration::from_secs(5),
        "the request reaching the upstream",
        started.recv(),
    )
    .await
    .expect("the upstream saw the request");

    // The client goes away while the upstream is still working on its request.
    drop(tcp);
    within_for(
        Duration::from_secs(5),
        "the proxy cancelling the upstream request of a client that hung up",
        cancelled.recv(),
    )
    .await
    .expect("the upstream handler was dropped");
}

// === retries ===

#[tokio::test]
async fn retries_hide_a_flaky_endpoint_from_get_clients() {
    let a = Echo::named("a").await;
    let b = Echo::named("b").await;
    let flaky = Echo::start_with_args("flaky", &["--status", "503:30"]).await;
    let listen = free_addr();
    let proxy = Proxy::start(&one_route(
        listen,
        &[a.addr(), b.addr(), flaky.addr()],
        "retry: { retries: 3, on: [gateway-error] }",
        "",
    ))
    .await;

    let mut client = H1Client::connect(listen).await;
    let mut retried = 0;
    let mut from_flaky = 0;
    for i in 0..300 {
        let reply = client.get(&format!("http://svc/get/{i}")).await;
        assert_eq!(
            reply.status,
            StatusCode::OK,
            "request {i} reached the client as an error: {reply:?}"
        );
        let n = attempts(&reply);
        assert!((1..=4).contains(&n), "1 + 3 retries at most: {reply:?}");
        if n > 1 {
            retried += 1;
        }
        if reply.header("x-echo-server") == Some("flaky") {
            from_flaky += 1;
        }
    }
    assert!(
        retried > 0,
        "~30 of the flaky endpoint's ~100 requests fail: some answers must be retried ones"
    );
    assert!(from_flaky > 0, "the flaky endpoint still serves its 200s");
    let m = proxy.metrics().await;
    let retries = m.sum("pillion_http_retries_total", &[("cluster", "app")]);
    assert!(
        retries >= f64::from(retried),
        "pillion_http_retries_total {retries} < {retried} retried responses; /metrics:\n{}",
        m.text
    );
    assert!(
        m.sum(UPSTREAM_REQUESTS, &[("cluster", "app")]) >= 300.0 + retries,
        "every try is an upstream request; /metrics:\n{}",
        m.text
    );
}

#[tokio::test]
async fn the_retry_budget_caps_retries_against_a_failing_upstream() {
    let down = Echo::start_with_args("down", &["--status", "503"]).await;
    let listen = free_addr();
    let proxy = Proxy::start(&one_route(
        listen,
        &[down.addr()],
        "retry: { retries: 3, on: [5xx], backoff: { base: 1ms, max: 2ms } }",
        "retry_budget: { ratio: 0.2, min_per_sec: 1 }",
    ))
    .await;

    const N: usize = 100;
    let mut client = H1Client::connect(listen).await;
    for i in 0..N {
        let reply = client.get(&format!("http://svc/down/{i}")).await;
        assert_eq!(reply.status, StatusCode::SERVICE_UNAVAILABLE, "{reply:?}");
        assert_eq!(reply.header("x-echo-server"), Some("down"), "{reply:?}");
    }
    let upstream = eventually("every request counted upstream", || async {
        let n = metric(&proxy, UPSTREAM_REQUESTS, &[("cluster", "app")]).await;
        (n >= N as f64).then_some(n)
    })
    .await;
    let m = proxy.metrics().await;
    // Without a budget: 4 tries each, 400. With it: 20% of requests plus min_per_sec over the
    // 10s window.
    assert!(
        upstream <= 1.2 * N as f64 + 10.0,
        "{upstream} upstream requests for {N} client requests; /metrics:\n{}",
        m.text
    );
    assert!(
        upstream > N as f64,
        "the budget still allows some retries; /metrics:\n{}",
        m.text
    );
    assert!(
        m.sum(
            "pillion_retry_budget_exhausted_total",
            &[("cluster", "app")]
        ) > 0.0,
        "/metrics:\n{}",
        m.text
    );
}

#[tokio::test]
async fn only_idempotent_methods_are_retried_once_the_upstream_got_the_request() {
    let (upstream, seen) = counting_upstream(503).await;
    let listen = free_addr();
    let _proxy = Proxy::start(&one_route(
        listen,
        &[upstream.addr()],
        "retry: { retries: 2, on: [5xx, reset, connect-failure], backoff: { base: 1ms, max: 2ms } }",
        "",
    ))
    .await;

    let mut client = H1Client::connect(listen).await;
    for (method, tries) in [
        ("POST", 1),
        ("PATCH", 1),
        ("GET", 3),
        ("PUT", 3),
        ("DELETE", 3),
    ] {
        let before = seen.load(Ordering::SeqCst);
        let reply = client
            .request(
                req(method, "http://svc/thing")
                    .body(full("payload"))
                    .expect("request"),
            )
            .await;
        assert_eq!(
            reply.status,
            StatusCode::SERVICE_UNAVAILABLE,
            "{method}: {reply:?}"
        );
        assert_eq!(
            seen.load(Ordering::SeqCst) - before,
            tries,
            "{method}: requests the upstream received"
        );
        assert_eq!(attempts(&reply), tries as u32, "{method}: {reply:?}");
    }
}

#[tokio::test]
async fn a_post_is_not_retried_after_a_reset_once_the_upstream_read_it() {
    // Reads the request head, then closes the connection without answering.
    let heads = Arc::new(AtomicUsize::new(0));
    let count = heads.clone();
    let upstream = Upstream::tcp(move |mut tcp| {
        let count = count.clone();
        async move {
            let mut buf = Vec::new();
            let mut chunk = [0u8; 4096];
            while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                match tcp.read(&mut chunk).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => buf.extend_from_slice(&chunk[..n]),
                }
            }
            count.fetch_add(1, Ordering::SeqCst);
            drop(tcp);
        }
    })
    .await;
    let listen = free_addr();
    let _proxy = Proxy::start(&one_route(
        listen,
        &[upstream.addr()],
        "retry: { retries: 2, on: [reset, connect-failure, 5xx], backoff: { base: 1ms, max: 2ms } }",
        "",
    ))
    .await;

    let mut client = H1Client::connect(listen).await;
    let post = client
        .request(
            req("POST", "http://svc/order")
                .body(full("buy"))
                .expect("request"),
        )
        .await;
    assert_proxy_error(&post, StatusCode::BAD_GATEWAY, "upstream-reset");
    assert_eq!(
        heads.load(Ordering::SeqCst),
        1,
        "the POST reached the upstream once"
    );
    assert_eq!(attempts(&post), 1, "{post:?}");

    let get = client.get("http://svc/order").await;
    assert_proxy_error(&get, StatusCode::BAD_GATEWAY, "upstream-reset");
    assert_eq!(
        heads.load(Ordering::SeqCst),
        1 + 3,
        "the GET was tried 1 + 2 times"
    );
    assert_eq!(attempts(&get), 3, "{get:?}");
}

#[tokio::test]
async fn a_post_is_retried_when_nothing_reached_the_upstream() {
    let (_refusing, closed) = refusing_port();
    let (upstream, seen) = counting_upstream(200).await;
    let listen = free_addr();
    let _proxy = Proxy::start(&one_route(
        listen,
        &[closed, upstream.addr()],
        "retry: { retries: 2, on: [connect-failure], backoff: { base: 1ms, max: 2ms } }",
        "",
    ))
    .await;

    let mut client = H1Client::connect(listen).await;
    let mut retried = 0;
    for i in 0..4 {
        let reply = client
            .request(
                req("POST", &format!("http://svc/order/{i}"))
                    .body(full("buy"))
                    .expect("request"),
            )
            .await;
        assert_eq!(reply.status, StatusCode::OK, "POST {i}: {reply:?}");
        if attempts(&reply) > 1 {
            retried += 1;
        }
    }
    assert_eq!(
        seen.load(Ordering::SeqCst),
        4,
        "each POST reached the app once"
    );
    assert!(
        retried > 0,
        "round robin over [refusing, ok]: some POST first went to the refusing endpoint"
    );
}

#[tokio::test]
async fn retry_on_selects_the_statuses_that_are_retried() {
    let echo = Echo::named("app").await;
    let listen = free_addr();
    let proxy = Proxy::start(&one_route(
        listen,
        &[echo.addr()],
        "retry: { retries: 2, on: [409, gateway-error], backoff: { base: 1ms, max: 2ms } }",
        "",
    ))
    .await;
    let mut client = H1Client::connect(listen).await;
    let mut sent = 0.0;
    for (status, tries) in [(409, 3), (503, 3), (502, 3), (500, 1), (404, 1), (200, 1)] {
        let reply = client.get(&format!("http://svc/s?status={status}")).await;
        assert_eq!(reply.status.as_u16(), status, "{reply:?}");
        assert_eq!(reply.header("x-echo-server"), Some("app"), "{reply:?}");
        assert_eq!(attempts(&reply), tries, "status {status}: {reply:?}");
        sent += f64::from(tries);
        proxy
            .wait_metric(UPSTREAM_REQUESTS, &[("cluster", "app")], sent)
            .await;
    }
}

#[tokio::test]
async fn retried_bodies_are_replayed_whole_and_large_ones_are_sent_once() {
    // Answers 503 to the first two requests after each reset of `count`, then 200; records
    // the body length of every request.
    let count = Arc::new(AtomicUsize::new(0));
    let bodies = Arc::new(std::sync::Mutex::new(Vec::new()));
    let (c, b) = (count.clone(), bodies.clone());
    let upstream = Upstream::http1(move |req: http::Request<hyper::body::Incoming>| {
        let (c, b) = (c.clone(), b.clone());
        async move {
            let body = req.into_body().collect().await.expect("body").to_bytes();
            b.lock().expect("lock").push(body.len());
            let status = if c.fetch_add(1, Ordering::SeqCst) < 2 {
                503
            } else {
                200
            };
            Response::builder()
                .status(status)
                .body(empty())
                .expect("response")
        }
    })
    .await;
    let listen = free_addr();
    let _proxy = Proxy::start(&one_route(
        listen,
        &[upstream.addr()],
        "retry: { retries: 2, on: [5xx], buffer_bytes: 1024, backoff: { base: 1ms, max: 2ms } }",
        "",
    ))
    .await;
    let mut client = H1Client::connect(listen).await;

    let reply = client
        .request(
            req("PUT", "http://svc/small")
                .body(full(vec![b'x'; 1000]))
                .expect("request"),
        )
        .await;
    assert_eq!(reply.status, StatusCode::OK, "{reply:?}");
    assert_eq!(attempts(&reply), 3, "{reply:?}");
    assert_eq!(*bodies.lock().expect("lock"), vec![1000, 1000, 1000]);

    count.store(0, Ordering::SeqCst);
    bodies.lock().expect("lock").clear();
    let reply = client
        .request(
            req("PUT", "http://svc/large")
                .body(full(vec![b'y'; 4096]))
                .expect("request"),
        )
        .await;
    assert_eq!(
        reply.status,
        StatusCode::SERVICE_UNAVAILABLE,
        "a body above buffer_bytes is not replayable: {reply:?}"
    );
    assert_eq!(attempts(&reply), 1, "{reply:?}");
    assert_eq!(*bodies.lock().expect("lock"), vec![4096]);
}

#[tokio::test]
async fn an_early_answer_to_a_request_whose_body_is_still_coming_is_not_retried() {
    // The upstream answers 503 as soon as it has the head and reads nothing more: the first try
    // still holds the body (its connection is sending it), so a retry would wait for it forever.
    let upstream = Upstream::tcp(|mut tcp| async move {
        let mut head = Vec::new();
        let mut buf = [0u8; 1024];
        while !head.windows(4).any(|w| w == b"\r\n\r\n") {
            match tcp.read(&mut buf).await {
                Ok(n) if n > 0 => head.extend_from_slice(&buf[..n]),
                _ => return,
            }
        }
        let _ = tcp
            .write_all(b"HTTP/1.1 503 Busy\r\ncontent-length: 4\r\n\r\nbusy")
            .await;
        std::future::pending::<()>().await;
    })
    .await;
    let listen = free_addr();
    let size = 8 << 20;
    let _proxy = Proxy::start(&one_route(
        listen,
        &[upstream.addr()],
        &format!(
            "retry: {{ retries: 1, on: [5xx], buffer_bytes: {}, backoff: {{ base: 1ms, max: 1ms }} }}",
            2 * size
        ),
        "",
    ))
    .await;
    let tcp = tokio::net::TcpStream::connect(listen)
        .await
        .expect("connect");
    let (mut rd, mut wr) = tcp.into_split();
    // The body goes out beside the wait for the answer; the kernel's buffers take only part of it.
    let writer = tokio::spawn(async move {
        let head = format!("PUT /big HTTP/1.1\r\nhost: svc\r\ncontent-length: {size}\r\n\r\n");
        wr.write_all(head.as_bytes()).await?;
        wr.write_all(&vec![b'p'; size]).await
    });
    let mut got = Vec::new();
    let mut buf = [0u8; 1024];
    within_for(Duration::from_secs(10), "the early 503", async {
        while !got.windows(4).any(|w| w == b"\r\n\r\n") {
            match rd.read(&mut buf).await {
                Ok(n) if n > 0 => got.extend_from_slice(&buf[..n]),
                other => panic!("no answer: {other:?}"),
            }
        }
    })
    .await;
    let head = String::from_utf8_lossy(&got);
    assert!(head.starts_with("HTTP/1.1 503"), "{head}");
    assert_eq!(upstream.connections(), 1, "not retried");
    writer.abort();
}

#[tokio::test]
async fn idle_pooled_upstream_connections_are_closed_after_the_cluster_idle_timeout() {
    let closed = Arc::new(AtomicUsize::new(0));
    let ended = closed.clone();
    let upstream = Upstream::tcp(move |tcp| {
        let ended = ended.clone();
        async move {
            let svc = hyper::service::service_fn(|_req| async {
                Ok::<_, std::convert::Infallible>(Response::new(empty()))
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(hyper_util::rt::TokioIo::new(tcp), svc)
                .await;
            ended.fetch_add(1, Ordering::SeqCst);
        }
    })
    .await;
    let listen = free_addr();
    let _proxy = Proxy::start(&one_route(
        listen,
        &[upstream.addr()],
        "",
        "idle_timeout: 300ms",
    ))
    .await;

    let mut client = H1Client::connect(listen).await;
    assert_eq!(client.get("http://svc/one").await.status, StatusCode::OK);
    assert_eq!(upstream.connections(), 1);
    // The downstream connection stays open; the pooled upstream one is closed when idle.
    within_for(
        Duration::from_secs(5),
        "the proxy closing its idle pooled connection (cluster idle_timeout 300ms)",
        eventually("upstream connection closed", || async {
            (closed.load(Ordering::SeqCst) == 1).then_some(())
        }),
    )
    .await;
    assert_eq!(client.get("http://svc/two").await.status, StatusCode::OK);
    assert_eq!(
        upstream.connections(),
        2,
        "a new connection after the idle one closed"
    );
}

// === timeouts ===

#[tokio::test]
async fn request_and_per_try_timeouts_answer_504_before_a_slow_upstream() {
    let slow = Echo::named("slow").await;
    let listen = free_addr();
    let ep = slow.addr();
    let proxy = Proxy::start(&format!(
        r#"
listeners:
  - name: in
    address: {listen}
    protocol: http
    cluster: total
    routes:
      - name: total
        match: {{ prefix: /total }}
        cluster: total
        timeout: 300ms
      - name: per-try
        match: {{ prefix: /per-try }}
        cluster: per-try
        retry: {{ retries: 2, per_try_timeout: 200ms, on: [gateway-error], backoff: {{ base: 1ms, max: 2ms }} }}
      - name: both
        match: {{ prefix: /both }}
        cluster: both
        timeout: 500ms
        retry: {{ retries: 5, per_try_timeout: 200ms, on: [gateway-error], backoff: {{ base: 1ms, max: 2ms }} }}
clusters:
  - name: total
    endpoints: [{ep}]
  - name: per-try
    endpoints: [{ep}]
  - name: both
    endpoints: [{ep}]
"#
    ))
    .await;
    let mut client = H1Client::connect(listen).await;

    // The route timeout.
    let start = Instant::now();
    let reply = client.get("http://svc/total?delay=3s").await;
    let took = start.elapsed();
    assert_proxy_error(&reply, StatusCode::GATEWAY_TIMEOUT, "request-timeout");
    assert!(took < Duration::from_secs(2), "answered after {took:?}");
    proxy
        .wait_metric(UPSTREAM_REQUESTS, &[("cluster", "total")], 1.0)
        .await;

    // The per-try timeout, retried: three tries of 200ms each.
    let start = Instant::now();
    let reply = client.get("http://svc/per-try?delay=3s").await;
    let took = start.elapsed();
    assert_proxy_error(&reply, StatusCode::GATEWAY_TIMEOUT, "per-try-timeout");
    assert!(
        took < Duration::from_millis(2500),
        "answered after {took:?}"
    );
    proxy
        .wait_metric(UPSTREAM_REQUESTS, &[("cluster", "per-try")], 3.0)
        .await;
    assert_eq!(attempts(&reply), 3, "{reply:?}");

    // The route timeout bounds the retries: 500ms allows three 200ms tries at most, not six.
    let start = Instant::now();
    let reply = client.get("http://svc/both?delay=3s").await;
    let took = start.elapsed();
    assert_proxy_error(&reply, StatusCode::GATEWAY_TIMEOUT, "request-timeout");
    assert!(took < Duration::from_secs(2), "answered after {took:?}");
    let tries = metric(&proxy, UPSTREAM_REQUESTS, &[("cluster", "both")]).await;
    assert!((2.0..=3.0).contains(&tries), "{tries} tries within 500ms");
    // The retries the route's timeout cut short are counted.
    let retries = metric(&proxy, "pillion_http_retries_total", &[("route", "both")]).await;
    assert_eq!(retries, tries - 1.0, "retries of the timed-out request");

    // The connection survives the 504s, and a fast request on a timed route succeeds.
    let ok = client.get("http://svc/total/fast").await;
    assert_eq!(ok.echo().server, "slow");
    let m = proxy.metrics().await;
    for reason in ["request-timeout", "per-try-timeout"] {
        assert!(
            m.sum(
                "pillion_http_proxy_responses_total",
                &[("listener", "in"), ("reason", reason)]
            ) >= 1.0,
            "{reason}; /metrics:\n{}",
            m.text
        );
    }
}

/// An upstream whose `/stall` answers its head and a first chunk at once and then never ends
/// its body, whose `/drip` sends three chunks 20ms apart, and whose other paths answer `ok`.
/// (The drip's delay is what it serves, not a wait for anything: 60ms in all, well within the
/// test route's 400ms timeout.)
async fn stalling_body_upstream() -> Upstream {
    use bytes::Bytes;
    use futures_util::StreamExt;
    use hyper::body::Frame;
    use pillion_tests::client::stream_body;
    Upstream::http1(|req| async move {
        let chunk = |b: &'static [u8]| {
            Ok::<_, pillion_tests::client::BoxError>(Frame::data(Bytes::from_static(b)))
        };
        match req.uri().path() {
            "/stall" => Response::new(stream_body(
                futures_util::stream::iter([chunk(b"first")])
                    .chain(futures_util::stream::pending()),
            )),
            "/drip" => Response::new(stream_body(
                futures_util::stream::iter([b"a", b"b", b"c"]).then(
                    move |b: &'static [u8; 1]| async move {
                        tokio::time::sleep(Duration::from_millis(20)).await;
                        chunk(b)
                    },
                ),
            )),
            _ => Response::new(full("ok")),
        }
    })
    .await
}

/// Reads `body` frame by frame: the data before it failed, or `None` if it ended whole.
async fn read_until_error(mut body: hyper::body::Incoming) -> (Vec<u8>, Option<String>) {
    let mut got = Vec::new();
    let read = async {
        while let Some(frame) = body.frame().await {
            match frame {
                Ok(f) => got.extend_from_slice(f.data_ref().map_or(&[][..], |d| &d[..])),
                Err(e) => return Some(e.to_string()),
            }
        }
        None
    };
    let error = within_for(
        Duration::from_secs(10),
        "the response body to end or fail",
        read,
    )
    .await;
    (got, error)
}

#[tokio::test]
async fn the_route_timeout_cuts_a_response_body_that_outlasts_it() {
    let upstream = stalling_body_upstream().await;
    let listen = free_addr();
    let dir = tempfile::tempdir().expect("tempdir");
    let log = dir.path().join("access.log");
    let mut config = one_route(listen, &[upstream.addr()], "timeout: 400ms", "");
    config.push_str(&format!(
        "access_log:\n  path: {}\n  format: \"%path% %status% %response_flags%\"\n",
        log.display()
    ));
    let proxy = Proxy::start(&config).await;

    // HTTP/1.1: the head and the first chunk arrive at once; the rest never comes, and at the
    // route's deadline the proxy cuts the response (here: closes the connection mid-body).
    let mut h1 = H1Client::connect(listen).await;
    let start = Instant::now();
    let rsp = h1
        .send(pillion_tests::client::get("http://svc/stall"))
        .await;
    assert_eq!(rsp.status(), StatusCode::OK);
    let (got, error) = read_until_error(rsp.into_body()).await;
    let took = start.elapsed();
    assert_eq!(got, b"first");
    assert!(error.is_some(), "the stalled body ended whole");
    assert!(
        took >= Duration::from_millis(350),
        "cut after {took:?}, before the timeout"
    );

    // HTTP/2: the stream is reset, and the connection goes on serving.
    let h2 = H2Client::connect(listen).await;
    let rsp = h2
        .send(pillion_tests::client::get("http://svc/stall"))
        .await;
    assert_eq!(rsp.status(), StatusCode::OK);
    let (got, error) = read_until_error(rsp.into_body()).await;
    assert_eq!(got, b"first");
    assert!(error.is_some(), "the stalled body ended whole");
    assert_eq!(h2.get("http://svc/after").await.text(), "ok");

    // A body that streams for a while but ends within the timeout is whole.
    let drip = H1Client::connect(listen).await.get("http://svc/drip").await;
    assert_eq!(drip.text(), "abc");

    // The cut upstream connections were dropped, not pooled: the two stalled requests and the
    // ones after them took three connections at least (the drip may reuse the `/after` one).
    assert!(
        upstream.connections() >= 3,
        "{} upstream connections",
        upstream.connections()
    );

    // Both cuts are counted for the route, and flagged UT (upstream request timeout) in the
    // access log, as Envoy does.
    proxy
        .wait_metric(
            "pillion_http_response_body_timeouts_total",
            &[("route", "r"), ("cluster", "app")],
            2.0,
        )
        .await;
    eventually("the access log lines", || {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        let ok = text.lines().filter(|l| *l == "/stall 200 UT").count() == 2
            && text.lines().any(|l| l == "/after 200 -")
            && text.lines().any(|l| l == "/drip 200 -");
        async move { ok.then_some(()) }
    })
    .await;
    drop(proxy);
}

// === circuit breaking ===

#[tokio::test]
async fn circuit_breakers_fail_fast_above_max_requests_and_max_connections() {
    let slow = Echo::named("slow").await;
    let listen = free_addr();
    let ep = slow.addr();
    let proxy = Proxy::start(&format!(
        r#"
listeners:
  - name: in
    address: {listen}
    protocol: http
    cluster: reqs
    routes:
      - name: conns
        match: {{ prefix: /conns }}
        cluster: conns
clusters:
  - name: reqs
    endpoints: [{ep}]
    limits: {{ max_requests: 10 }}
  - name: conns
    endpoints: [{ep}]
    protocol: http1
    limits: {{ max_connections: 2 }}
"#
    ))
    .await;

    // Ten requests held 3s by the upstream on `reqs`, two on `conns` (HTTP/1: a connection
    // each).
    let hold = |path: String| {
        tokio::spawn(async move {
            let mut c = H1Client::connect(listen).await;
            c.get(&format!("http://svc{path}?delay=3s")).await
        })
    };
    let held: Vec<_> = (0..10)
        .map(|i| hold(format!("/held/{i}")))
        .chain((0..2).map(|i| hold(format!("/conns/held/{i}"))))
        .collect();
    proxy
        .wait_metric(UPSTREAM_REQUESTS, &[("cluster", "reqs")], 10.0)
        .await;
    proxy
        .wait_metric(UPSTREAM_REQUESTS, &[("cluster", "conns")], 2.0)
        .await;
    let state = proxy.admin_get("/clusters").await;
    let clusters: serde_json::Value = serde_json::from_slice(&state.body).expect("/clusters JSON");
    let reqs = clusters
        .as_array()
        .expect("array")
        .iter()
        .find(|c| c["name"] == "reqs")
        .unwrap_or_else(|| panic!("{clusters}"));
    assert_eq!(reqs["endpoints"][0]["in_flight"], 10, "{clusters}");

    // The 11th request fails at once: nothing queues (the held ones take 3s).
    let mut c = H1Client::connect(listen).await;
    let start = Instant::now();
    let reply = c.get("http://svc/eleventh").await;
    let took = start.elapsed();
    assert_proxy_error(
        &reply,
        StatusCode::SERVICE_UNAVAILABLE,
        "overflow-max-requests",
    );
    assert!(
        took < Duration::from_millis(1500),
        "answered after {took:?}"
    );

    // A third concurrent HTTP/1 request on `conns` needs a third connection: refused at once.
    let start = Instant::now();
    let reply = c.get("http://svc/conns/third").await;
    let took = start.elapsed();
    assert_proxy_error(
        &reply,
        StatusCode::SERVICE_UNAVAILABLE,
        "overflow-max-connections",
    );
    assert!(
        took < Duration::from_millis(1500),
        "answered after {took:?}"
    );

    let m = proxy.metrics().await;
    for (cluster, limit) in [("reqs", "max_requests"), ("conns", "max_connections")] {
        assert_eq!(
            m.sum(
                "pillion_cluster_limit_rejections_total",
                &[("cluster", cluster), ("limit", limit)]
            ),
            1.0,
            "{cluster} {limit}; /metrics:\n{}",
            m.text
        );
    }
    assert_eq!(
        m.sum(UPSTREAM_REQUESTS, &[("cluster", "reqs")]),
        10.0,
        "the rejected request never went upstream"
    );

    for h in held {
        let reply = h.await.expect("held request task");
        assert_eq!(reply.echo().server, "slow");
    }
    // Slots are released when requests finish.
    for path in ["/after", "/conns/after"] {
        let again = c.get(&format!("http://svc{path}")).await;
        assert_eq!(again.status, StatusCode::OK, "{path}: {again:?}");
    }
}

// === rate limits ===

#[tokio::test]
async fn rate_limits_answer_429_above_the_rate() {
    let echo = Echo::named("app").await;
    let (routed, wide) = (free_addr(), free_addr());
    let ep = echo.addr();
    let proxy = Proxy::start(&format!(
        r#"
listeners:
  - name: routed
    address: {routed}
    protocol: http
    cluster: app
    routes:
      - name: limited
        match: {{ prefix: / }}
        cluster: app
        rate_limit: {{ rps: 5, burst: 5 }}
  - name: wide
    address: {wide}
    protocol: http
    rate_limit: {{ rps: 2, burst: 3 }}
    cluster: app
clusters:
  - name: app
    endpoints: [{ep}]
"#
    ))
    .await;

    for (listen, rps, burst) in [(routed, 5.0, 5.0), (wide, 2.0, 3.0)] {
        let mut client = H1Client::connect(listen).await;
        let start = Instant::now();
        let (mut ok, mut limited) = (0u32, 0u32);
        for i in 0..30 {
            let reply = client.get(&format!("http://svc/r/{i}")).await;
            if reply.status == StatusCode::TOO_MANY_REQUESTS {
                assert_proxy_error(&reply, StatusCode::TOO_MANY_REQUESTS, "rate-limited");
                limited += 1;
            } else {
                assert_eq!(reply.status, StatusCode::OK, "{reply:?}");
                ok += 1;
            }
        }
        let secs = start.elapsed().as_secs_f64();
        let allowed = burst + rps * secs + 1.0;
        assert!(
            f64::from(ok) <= allowed,
            "{listen}: {ok} of 30 passed in {secs:.2}s (burst {burst}, {rps}/s)"
        );
        assert!(f64::from(ok) >= burst, "{listen}: the burst passes: {ok}");
        assert!(limited > 0, "{listen}: {limited} limited");
        assert_eq!(ok + limited, 30);
    }
    let m = proxy.metrics().await;
    assert!(
        m.sum(
            "pillion_http_proxy_responses_total",
            &[("reason", "rate-limited")]
        ) >= 2.0,
        "/metrics:\n{}",
        m.text
    );
}

// === fault injection ===

#[tokio::test]
async fn fault_injection_aborts_without_the_upstream_and_delays() {
    let echo = Echo::named("app").await;
    let listen = free_addr();
    let ep = echo.addr();
    let proxy = Proxy::start(&format!(
        r#"
listeners:
  - name: in
    address: {listen}
    protocol: http
    cluster: app
    routes:
      - name: abort
        match: {{ prefix: /abort }}
        cluster: aborted
        fault: {{ abort: {{ percent: 100, status: 418 }} }}
      - name: delay
        match: {{ prefix: /delay }}
        cluster: app
        fault: {{ delay: {{ percent: 100, duration: 300ms }} }}
      - name: late
        match: {{ prefix: /late }}
        cluster: app
        timeout: 200ms
        fault: {{ delay: {{ percent: 100, duration: 5s }} }}
      - name: half
        match: {{ prefix: /half }}
        cluster: app
        fault: {{ abort: {{ percent: 50, status: 503 }} }}
clusters:
  - name: aborted
    endpoints: [{ep}]
  - name: app
    endpoints: [{ep}]
"#
    ))
    .await;
    let mut client = H1Client::connect(listen).await;

    for i in 0..5 {
        let reply = client.get(&format!("http://svc/abort/{i}")).await;
        assert_proxy_error(&reply, StatusCode::IM_A_TEAPOT, "fault-injected");
    }

    let start = Instant::now();
    let reply = client.get("http://svc/delay").await;
    let took = start.elapsed();
    assert_eq!(reply.echo().server, "app");
    assert!(
        took >= Duration::from_millis(300),
        "a 300ms delay fault, answered in {took:?}"
    );

    // The route's timeout covers an injected delay, as it covers a slow upstream: a delay
    // longer than the timeout is a 504, not an empty 200 cut at once.
    let start = Instant::now();
    let reply = client.get("http://svc/late").await;
    assert_proxy_error(&reply, StatusCode::GATEWAY_TIMEOUT, "request-timeout");
    assert!(
        start.elapsed() < Duration::from_secs(5),
        "answered at the 200ms timeout, not after the 5s delay: {:?}",
        start.elapsed()
    );

    let mut aborted = 0;
    for i in 0..200 {
        let reply = client.get(&format!("http://svc/half/{i}")).await;
        if reply.status == StatusCode::SERVICE_UNAVAILABLE {
            assert_proxy_error(&reply, StatusCode::SERVICE_UNAVAILABLE, "fault-injected");
            aborted += 1;
        } else {
            assert_eq!(reply.echo().server, "app");
        }
    }
    assert!(
        (50..=150).contains(&aborted),
        "{aborted} of 200 aborted at 50%"
    );

    // 1 delayed + the half that were not aborted reached the upstream; the aborted never did.
    let m = proxy
        .wait_metric(
            UPSTREAM_REQUESTS,
            &[("cluster", "app")],
            f64::from(1 + 200 - aborted),
        )
        .await;
    assert_eq!(
        m.sum(UPSTREAM_REQUESTS, &[("cluster", "aborted")]),
        0.0,
        "/metrics:\n{}",
        m.text
    );
    assert!(
        m.sum(
            "pillion_http_proxy_responses_total",
            &[("listener", "in"), ("reason", "fault-injected")]
        ) >= f64::from(5 + aborted),
        "/metrics:\n{}",
        m.text
    );
}

// === downstream connection timeouts ===

/// Reads until the peer closes the connection (EOF or reset); returns what was read.
async fn read_until_closed(tcp: &mut tokio::net::TcpStream) -> Vec<u8> {
    let mut got = Vec::new();
    let mut chunk = [0u8; 1024];
    loop {
        match tcp.read(&mut chunk).await {
            Ok(0) | Err(_) => return got,
            Ok(n) => got.extend_from_slice(&chunk[..n]),
        }
    }
}

/// A proxy with two listeners: `slow-head` (header_timeout 300ms) and `idle` (idle_timeout
/// 300ms), both in front of an echo server named `app`.
async fn timeouts_proxy() -> (Echo, Proxy, SocketAddr, SocketAddr) {
    let echo = Echo::named("app").await;
    let (slow_head, idle) = (free_addr(), free_addr());
    let ep = echo.addr();
    let proxy = Proxy::start(&format!(
        r#"
listeners:
  - name: slow-head
    address: {slow_head}
    protocol: http
    header_timeout: 300ms
    cluster: app
  - name: idle
    address: {idle}
    protocol: http
    idle_timeout: 300ms
    cluster: app
clusters:
  - name: app
    endpoints: [{ep}]
"#
    ))
    .await;
    (echo, proxy, slow_head, idle)
}

/// Half a request head on a new connection to `listen`, then nothing: what the proxy sends before
/// it closes the connection (within 5s). It returns after the head timeout has run once.
async fn stalled_head(listen: SocketAddr) -> String {
    stalled_after(listen, b"GET /slow HTTP/1.1\r\nHost: svc\r\nX-Partial: ").await
}

/// `sent` on a new connection to `listen`, then nothing: what the proxy sends before it closes
/// the connection (within 5s).
async fn stalled_after(listen: SocketAddr, sent: &[u8]) -> String {
    let mut tcp = tokio::net::TcpStream::connect(listen)
        .await
        .expect("connect");
    tcp.write_all(sent).await.expect("write");
    let got = within_for(
        Duration::from_secs(5),
        "the proxy closing a connection stuck in its request head",
        read_until_closed(&mut tcp),
    )
    .await;
    String::from_utf8_lossy(&got).into_owned()
}

#[tokio::test]
async fn header_timeout_cuts_off_a_client_stuck_in_its_request_head() {
    let (_echo, _proxy, slow_head, _) = timeouts_proxy().await;

    // Cut off after header_timeout (the default is 10s), with a 408.
    let text = stalled_head(slow_head).await;
    assert!(
        text.starts_with("HTTP/1.1 408"),
        "a 408 before the close: {text:?}"
    );

    // A complete request on the same listener is served.
    let mut client = H1Client::connect(slow_head).await;
    assert_eq!(client.get("http://svc/ok").await.echo().server, "app");
}

#[tokio::test]
async fn header_timeout_leaves_idle_keep_alive_connections_open() {
    let (_echo, _proxy, slow_head, _) = timeouts_proxy().await;
    let mut client = H1Client::connect(slow_head).await;
    assert_eq!(client.get("http://svc/first").await.echo().server, "app");
    // A head stalled after that request is cut: the kept-alive connection has now been quiet for
    // longer than the head timeout, which runs from a head's first byte (as Envoy's does).
    let text = stalled_head(slow_head).await;
    assert!(text.starts_with("HTTP/1.1 408"), "{text:?}");
    assert!(!client.conn.is_finished(), "the idle connection was closed");
    let again = client.try_send(req("GET", "http://svc/second").body(empty()).unwrap());
    let reply = Reply::read(again.await.expect("the kept-alive connection still serves")).await;
    assert_eq!(reply.echo().path, "/second");
}

#[tokio::test]
async fn header_timeout_cuts_off_a_pipelined_head_left_half_sent() {
    let (_echo, _proxy, slow_head, _) = timeouts_proxy().await;
    // A whole request and, in the same write, half of the next one; then nothing.
    let text = stalled_after(
        slow_head,
        b"GET /first HTTP/1.1\r\nHost: svc\r\n\r\nGET /second HTTP/1.1\r\nHost: s",
    )
    .await;
    let first = text
        .find("HTTP/1.1 200")
        .expect("the first request is answered");
    let cut = text
        .find("HTTP/1.1 408")
        .expect("a 408 for the stalled head");
    assert!(first < cut, "{text:?}");
    assert!(
        text.contains("/first") && !text.contains("/second"),
        "{text:?}"
    );
}

#[tokio::test]
async fn header_timeout_does_not_cut_a_slow_request_body() {
    let (_echo, _proxy, slow_head, _) = timeouts_proxy().await;
    // A 30-byte body in two parts, with a whole head timeout between them.
    let (parts, rx) = tokio::sync::mpsc::unbounded_channel::<&'static [u8]>();
    let frames = futures_util::stream::unfold(rx, |mut rx| async move {
        let part = rx.recv().await?;
        let frame = http_body::Frame::data(bytes::Bytes::from_static(part));
        Some((Ok::<_, pillion_tests::client::BoxError>(frame), rx))
    });
    let body = pillion_tests::client::stream_body(frames);
    let mut client = H1Client::connect(slow_head).await;
    let upload = tokio::spawn(async move {
        client
            .request(
                req("POST", "http://svc/upload")
                    .header("content-length", "30")
                    .body(body)
                    .unwrap(),
            )
            .await
    });
    parts.send(b"first half-of-the-body").expect("send");
    let text = stalled_head(slow_head).await;
    assert!(text.starts_with("HTTP/1.1 408"), "{text:?}");
    parts.send(b"the rest").expect("send");
    drop(parts);
    let reply = within_for(Duration::from_secs(5), "the upload's response", upload)
        .await
        .expect("the upload task");
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(reply.echo().body_bytes, 30);
}

/// One listener `in` with a `stream_idle_timeout` of 1s in front of `ep`, logging
/// `path status flags` to `log`.
async fn stream_idle_proxy(ep: SocketAddr, log: &std::path::Path) -> (Proxy, SocketAddr) {
    let listen = free_addr();
    let proxy = Proxy::start(&format!(
        r#"
listeners:
  - name: in
    address: {listen}
    protocol: http
    stream_idle_timeout: 1s
    cluster: app
clusters:
  - name: app
    endpoints: [{ep}]
access_log:
  path: {}
  format: "%path% %status% %response_flags%"
"#,
        log.display()
    ))
    .await;
    (proxy, listen)
}

#[tokio::test]
async fn stream_idle_timeout_fails_a_request_whose_body_stalls() {
    let echo = Echo::named("app").await;
    let dir = tempfile::tempdir().expect("tempdir");
    let log = dir.path().join("access.log");
    let (_proxy, listen) = stream_idle_proxy(echo.addr(), &log).await;

    // Two bytes of a ten-byte body, then nothing: 408, and the connection is closed.
    let text = stalled_after(
        listen,
        b"POST /upload HTTP/1.1\r\nHost: svc\r\nContent-Length: 10\r\n\r\nab",
    )
    .await;
    assert!(text.starts_with("HTTP/1.1 408"), "{text:?}");
    assert!(text.contains("stream-idle-timeout"), "{text:?}");

    // A body that keeps moving, a part every 100ms, is never idle for 1s: it arrives whole,
    // though it takes longer than the timeout in all. (The 100ms is the pace of the upload, not a
    // wait for the proxy; ten times under the timeout, so a loaded machine does not make a gap
    // of it.)
    let (parts, rx) = tokio::sync::mpsc::unbounded_channel::<&'static [u8]>();
    let frames = futures_util::stream::unfold(rx, |mut rx| async move {
        let part = rx.recv().await?;
        let frame = http_body::Frame::data(bytes::Bytes::from_static(part));
        Some((Ok::<_, pillion_tests::client::BoxError>(frame), rx))
    });
    let mut client = H1Client::connect(listen).await;
    let upload = tokio::spawn(async move {
        client
            .request(
                req("POST", "http://svc/upload")
                    .body(pillion_tests::client::stream_body(frames))
                    .unwrap(),
            )
            .await
    });
    let start = Instant::now();
    let mut sent = 0;
    while start.elapsed() < Duration::from_millis(1500) {
        parts.send(b"x").expect("send");
        sent += 1;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    drop(parts);
    let reply = within_for(Duration::from_secs(5), "the upload's response", upload)
        .await
        .expect("the upload task");
    assert_eq!(reply.status, StatusCode::OK, "{reply:?}");
    assert_eq!(reply.echo().body_bytes, sent);

    eventually("the access log lines", || {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        let ok = text.lines().any(|l| l == "/upload 408 SI")
            && text.lines().any(|l| l == "/upload 200 -");
        async move { ok.then_some(()) }
    })
    .await;
}

#[tokio::test]
async fn stream_idle_timeout_cuts_a_response_body_that_stalls() {
    let upstream = stalling_body_upstream().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let log = dir.path().join("access.log");
    let (_proxy, listen) = stream_idle_proxy(upstream.addr(), &log).await;

    // The head and a first chunk, then nothing: the route has no timeout, the listener's
    // stream_idle_timeout cuts the body.
    let mut h1 = H1Client::connect(listen).await;
    let rsp = h1
        .send(pillion_tests::client::get("http://svc/stall"))
        .await;
    assert_eq!(rsp.status(), StatusCode::OK);
    let (got, error) = read_until_error(rsp.into_body()).await;
    assert_eq!(got, b"first");
    assert!(error.is_some(), "the stalled body ended whole");

    // A body whose chunks come 20ms apart is never idle for 1s.
    let drip = H1Client::connect(listen).await.get("http://svc/drip").await;
    assert_eq!(drip.text(), "abc");

    eventually("the access log lines", || {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        let ok =
            text.lines().any(|l| l == "/stall 200 SI") && text.lines().any(|l| l == "/drip 200 -");
        async move { ok.then_some(()) }
    })
    .await;
}

#[tokio::test]
async fn idle_timeout_closes_an_idle_http1_keep_alive_connection() {
    let (_echo, _proxy, _, idle) = timeouts_proxy().await;
    let mut client = H1Client::connect(idle).await;
    assert_eq!(client.get("http://svc/once").await.echo().server, "app");
    let closed = within_for(
        Duration::from_secs(5),
        "the proxy closing an idle HTTP/1.1 connection (idle_timeout 300ms)",
        client.conn,
    )
    .await;
    assert!(closed.is_ok(), "a clean close: {closed:?}");
}

#[tokio::test]
async fn idle_timeout_closes_an_idle_http2_connection() {
    let (_echo, _proxy, _, idle) = timeouts_proxy().await;
    let h2 = H2Client::connect(idle).await;
    assert_eq!(h2.get("http://svc/once").await.echo().server, "app");
    let closed = within_for(
        Duration::from_secs(5),
        "the proxy closing an idle HTTP/2 connection (idle_timeout 300ms)",
        h2.conn,
    )
    .await;
    assert!(closed.is_ok(), "the h2 connection task ended: {closed:?}");
}
