//! Observability: the metric catalogue counted exactly after a known mix of traffic (read with a
//! real Prometheus text-format parser), access-log lines, request ids and trace context.

use futures_util::StreamExt as _;
use http::StatusCode;
use pillion_tests::upstream::Upstream;
use pillion_tests::{client, eventually, free_addr, Echo, H1Client, Proxy};
use prometheus_parse::{Scrape, Value};
use std::{net::SocketAddr, path::Path};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A TCP upstream that echoes every byte until the client half-closes.
async fn tcp_echo() -> Upstream {
    Upstream::tcp(|mut tcp| async move {
        let (mut r, mut w) = tcp.split();
        let _ = tokio::io::copy(&mut r, &mut w).await;
        let _ = w.shutdown().await;
    })
    .await
}

fn config(
    http: SocketAddr,
    tcp: SocketAddr,
    app: SocketAddr,
    raw: SocketAddr,
    extra: &str,
) -> String {
    let closed = free_addr();
    format!(
        r#"{extra}
listeners:
  - name: web
    address: {http}
    protocol: http
    cluster: app
    routes:
      - name: dead
        match: {{ prefix: /dead }}
        cluster: dead
  - name: raw
    address: {tcp}
    protocol: tcp
    cluster: raw
clusters:
  - name: app
    endpoints: [{app}]
    endpoint_metrics: true
  - name: dead
    endpoints: [{closed}]
  - name: raw
    endpoints: [{raw}]
"#
    )
}

fn scrape(text: &str) -> Scrape {
    Scrape::parse(text.lines().map(|l| Ok(l.to_owned()))).expect("valid Prometheus text format")
}

/// The value of the one sample of `name` whose labels include all of `labels`.
fn value(s: &Scrape, name: &str, labels: &[(&str, &str)]) -> f64 {
    let found: Vec<f64> = s
        .samples
        .iter()
        .filter(|x| x.metric == name && labels.iter().all(|(k, v)| x.labels.get(k) == Some(*v)))
        .map(|x| match &x.value {
            Value::Counter(v) | Value::Gauge(v) | Value::Untyped(v) => *v,
            other => panic!("{name}: not a scalar: {other:?}"),
        })
        .collect();
    assert_eq!(
        found.len(),
        1,
        "{name}{labels:?}: want one sample, got {found:?}"
    );
    found[0]
}

async fn tcp_roundtrip(addr: SocketAddr, n: usize) {
    let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
    s.write_all(&vec![b'x'; n]).await.expect("write");
    s.shutdown().await.expect("shutdown");
    let mut back = Vec::new();
    s.read_to_end(&mut back).await.expect("read");
    assert_eq!(back.len(), n);
}

#[tokio::test]
async fn metrics_count_a_known_mix_of_traffic_exactly() {
    let echo = Echo::start().await;
    let raw = tcp_echo().await;
    let (http, tcp) = (free_addr(), free_addr());
    let proxy = Proxy::start(&config(http, tcp, echo.addr(), raw.addr(), "")).await;

    let mut c = H1Client::connect(http).await;
    for _ in 0..5 {
        assert_eq!(c.get("http://svc/ok").await.status, StatusCode::OK);
    }
    for _ in 0..3 {
        assert_eq!(
            c.get("http://svc/missing?status=404").await.status,
            StatusCode::NOT_FOUND
        );
    }
    for _ in 0..2 {
        let r = c.get("http://svc/dead").await;
        assert_eq!(r.status, StatusCode::BAD_GATEWAY);
    }
    tcp_roundtrip(tcp, 1000).await;

    // TCP metrics land when the relay closes; poll until they do.
    proxy
        .wait_metric(
            "pillion_tcp_connections_closed_total",
            &[("listener", "raw")],
            1.0,
        )
        .await;
    let text = proxy.admin_get("/metrics").await.text();
    let s = scrape(&text);
    let web = [("direction", "inbound"), ("listener", "web")];
    let req = |extra: &[(&'static str, &'static str)]| {
        let mut l = web.to_vec();
        l.extend_from_slice(extra);
        value(&s, "pillion_http_requests_total", &l)
    };
    assert_eq!(
        req(&[
            ("route", "default"),
            ("cluster", "app"),
            ("status_code", "200"),
            ("status_class", "2xx")
        ]),
        5.0
    );
    assert_eq!(
        req(&[
            ("route", "default"),
            ("cluster", "app"),
            ("status_code", "404"),
            ("status_class", "4xx")
        ]),
        3.0
    );
    assert_eq!(
        req(&[
            ("route", "dead"),
            ("cluster", "dead"),
            ("status_code", "502"),
            ("status_class", "5xx")
        ]),
        2.0
    );
    assert_eq!(
        value(
            &s,
            "pillion_http_proxy_responses_total",
            &[("listener", "web"), ("reason", "upstream-connect-failure")]
        ),
        2.0
    );
    assert_eq!(
        value(
            &s,
            "pillion_upstream_connections_failed_total",
            &[("cluster", "dead")]
        ),
        2.0
    );
    assert_eq!(
        value(&s, "pillion_upstream_requests_total", &[("cluster", "app")]),
        8.0
    );
    let opened = value(
        &s,
        "pillion_upstream_connections_opened_total",
        &[("cluster", "app")],
    );
    assert!(
        (1.0..=2.0).contains(&opened),
        "pooled: {opened} connections for 8 requests"
    );
    assert_eq!(
        value(
            &s,
            "pillion_upstream_connections_active",
            &[("cluster", "app")]
        ),
        opened
    );
    let ep = echo.addr().to_string();
    assert_eq!(
        value(
            &s,
            "pillion_endpoint_requests_total",
            &[
                ("cluster", "app"),
                ("endpoint", ep.as_str()),
                ("status_class", "2xx")
            ]
        ),
        5.0
    );
    // The histogram counts every request of the route.
    let hist = s
        .samples
        .iter()
        .find(|x| {
            x.metric == "pillion_http_request_duration_seconds"
                && x.labels.get("listener") == Some("web")
                && x.labels.get("route") == Some("default")
        })
        .expect("duration histogram");
    match &hist.value {
        Value::Histogram(buckets) => {
            let inf = buckets
                .iter()
                .find(|b| b.less_than.is_infinite())
                .expect("+Inf bucket");
            assert_eq!(inf.count, 8.0);
        }
        other => panic!("not a histogram: {other:?}"),
    }
    let tcp_l = [("listener", "raw"), ("cluster", "raw")];
    assert_eq!(
        value(&s, "pillion_tcp_connections_opened_total", &tcp_l),
        1.0
    );
    assert_eq!(value(&s, "pillion_tcp_connections_active", &tcp_l), 0.0);
    assert_eq!(value(&s, "pillion_tcp_rx_bytes_total", &tcp_l), 1000.0);
    assert_eq!(value(&s, "pillion_tcp_tx_bytes_total", &tcp_l), 1000.0);
    // Process and build metrics.
    assert!(value(&s, "pillion_process_resident_memory_bytes", &[]) > 1e6);
    assert!(value(&s, "pillion_process_open_fds", &[]) > 3.0);
    assert!(value(&s, "pillion_process_start_time_seconds", &[]) > 1.6e9);
    assert_eq!(
        value(
            &s,
            "pillion_build_info",
            &[("version", env!("CARGO_PKG_VERSION"))]
        ),
        1.0
    );
}

fn read_json_lines(path: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect()
}

#[tokio::test]
async fn access_log_has_one_json_line_per_request_and_connection() {
    let echo = Echo::start().await;
    let raw = tcp_echo().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let log = dir.path().join("access.log");
    let (http, tcp) = (free_addr(), free_addr());
    let extra = format!("access_log:\n  path: {}\n", log.display());
    let _proxy = Proxy::start(&config(http, tcp, echo.addr(), raw.addr(), &extra)).await;

    let mut c = H1Client::connect(http).await;
    let ok = c
        .request(
            client::req("POST", "http://svc/ok?q=1")
                .header("x-request-id", "req-123")
                .header(
                    "traceparent",
                    "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
                )
                .body(client::full(vec![b'a'; 300]))
                .expect("request"),
        )
        .await;
    assert_eq!(ok.status, StatusCode::OK);
    assert_eq!(
        c.get("http://svc/dead").await.status,
        StatusCode::BAD_GATEWAY
    );
    tcp_roundtrip(tcp, 777).await;

    let lines = eventually("three access-log lines", || {
        let lines = read_json_lines(&log);
        async move { (lines.len() >= 3).then_some(lines) }
    })
    .await;
    assert_eq!(lines.len(), 3, "{lines:#?}");
    let find = |pred: &dyn Fn(&serde_json::Value) -> bool| {
        lines
            .iter()
            .find(|l| pred(l))
            .cloned()
            .unwrap_or_else(|| panic!("no such line in {lines:#?}"))
    };
    let first = find(&|l| l["path"] == "/ok?q=1");
    assert_eq!(first["method"], "POST");
    assert_eq!(first["authority"], "svc");
    assert_eq!(first["protocol"], "HTTP/1.1");
    assert_eq!(first["status"], 200);
    assert_eq!(first["response_flags"], "-");
    assert_eq!(first["listener"], "web");
    assert_eq!(first["route"], "default");
    assert_eq!(first["cluster"], "app");
    assert_eq!(first["bytes_received"], 300);
    assert_eq!(first["bytes_sent"].as_u64(), Some(ok.body.len() as u64));
    assert_eq!(first["upstream_host"], echo.addr().to_string());
    assert_eq!(first["request_id"], "req-123");
    assert_eq!(first["trace_id"], "4bf92f3577b34da6a3ce929d0e0e4736");
    assert!(
        first["upstream_service_time_ms"].as_f64().is_some(),
        "{first}"
    );
    assert!(first["duration_ms"].as_f64().is_some(), "{first}");
    assert!(
        first["start_time"]
            .as_str()
            .is_some_and(|t| t.ends_with('Z')),
        "{first}"
    );
    assert!(first.get("peer_identity").is_some(), "{first}");

    let dead = find(&|l| l["path"] == "/dead");
    assert_eq!(dead["status"], 502);
    assert_eq!(dead["response_flags"], "UF");
    assert_eq!(dead["cluster"], "dead");

    let conn = find(&|l| l["protocol"] == "TCP");
    assert_eq!(conn["listener"], "raw");
    assert_eq!(conn["bytes_received"], 777);
    assert_eq!(conn["bytes_sent"], 777);
    assert_eq!(conn["upstream_host"], raw.addr().to_string());
    assert_eq!(conn["status"], serde_json::Value::Null);
}

#[tokio::test]
async fn a_slow_access_log_sink_drops_lines_never_requests() {
    let echo = Echo::start().await;
    let raw = tcp_echo().await;
    let dir = tempfile::tempdir().expect("tempdir");
    // A FIFO whose reader never reads: once the pipe buffer (64 KiB) is full, the writer blocks.
    let fifo = dir.path().join("slow.log");
    let made = std::process::Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .expect("mkfifo");
    assert!(made.success());
    // O_NONBLOCK (0o4000 on Linux) so opening the read end does not wait for a writer.
    use std::os::unix::fs::OpenOptionsExt;
    let _reader = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(0o4000)
        .open(&fifo)
        .expect("open fifo");
    let (http, tcp) = (free_addr(), free_addr());
    let extra = format!("access_log:\n  path: {}\n  buffer: 8\n", fifo.display());
    let proxy = Proxy::start(&config(http, tcp, echo.addr(), raw.addr(), &extra)).await;

    let mut c = H1Client::connect(http).await;
    let padding = "p".repeat(2000);
    for i in 0..200 {
        let r = c.get(&format!("http://svc/r/{i}?{padding}")).await;
        assert_eq!(r.status, StatusCode::OK, "request {i}");
    }
    let m = proxy.metrics().await;
    assert!(
        m.sum("pillion_access_log_dropped_total", &[]) > 0.0,
        "{}",
        m.text
    );
    assert_eq!(
        m.sum("pillion_http_requests_total", &[("status_class", "2xx")]),
        200.0
    );
}

#[tokio::test]
async fn request_ids_and_trace_context() {
    let echo = Echo::start().await;
    let raw = tcp_echo().await;
    let (http, tcp) = (free_addr(), free_addr());
    let _proxy = Proxy::start(&config(http, tcp, echo.addr(), raw.addr(), "")).await;
    let mut c = H1Client::connect(http).await;

    // Generated: a UUID v4, forwarded upstream and returned to the client.
    let r = c.get("http://svc/a").await;
    let id = r
        .header("x-request-id")
        .expect("x-request-id on the response")
        .to_owned();
    let seen = r.echo();
    assert_eq!(seen.header("x-request-id"), Some(id.as_str()));
    assert_eq!(id.len(), 36, "{id}");
    assert_eq!(&id[14..15], "4", "{id}");
    // A new trace is started.
    let tp = seen.header("traceparent").expect("traceparent started");
    assert_eq!(tp.len(), 55, "{tp}");
    assert!(tp.starts_with("00-"), "{tp}");

    // Kept: the incoming id, and the trace id with a new parent id; tracestate untouched.
    let incoming = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let r = c
        .request(
            client::req("GET", "http://svc/b")
                .header("x-request-id", "from-client")
                .header("traceparent", incoming)
                .header("tracestate", "congo=t61rcWkgMzE")
                .body(client::empty())
                .expect("request"),
        )
        .await;
    assert_eq!(r.header("x-request-id"), Some("from-client"));
    let seen = r.echo();
    assert_eq!(seen.header("x-request-id"), Some("from-client"));
    let tp = seen.header("traceparent").expect("traceparent");
    assert_eq!(&tp[..36], &incoming[..36], "same version and trace id");
    assert_ne!(&tp[36..52], &incoming[36..52], "a new parent id");
    assert_eq!(&tp[52..], "-01");
    assert_eq!(seen.header("tracestate"), Some("congo=t61rcWkgMzE"));
}

#[tokio::test]
async fn request_ids_and_tracing_can_be_turned_off() {
    let echo = Echo::start().await;
    let http = free_addr();
    let _proxy = Proxy::start(&format!(
        "listeners:\n  - name: in\n    address: {http}\n    protocol: http\n    request_id: false\n    trace_context: false\n    cluster: app\nclusters:\n  - name: app\n    endpoints: [{}]\n",
        echo.addr()
    ))
    .await;
    let mut c = H1Client::connect(http).await;
    let r = c.get("http://svc/a").await;
    assert_eq!(r.header("x-request-id"), None);
    let seen = r.echo();
    assert_eq!(seen.header("x-request-id"), None);
    assert_eq!(seen.header("traceparent"), None);
}

#[tokio::test]
async fn sigusr1_reopens_a_rotated_access_log() {
    let echo = Echo::start().await;
    let raw = tcp_echo().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let log = dir.path().join("access.log");
    let (http, tcp) = (free_addr(), free_addr());
    let extra = format!(
        "access_log:\n  path: {}\n  format: \"%method% %path% %status%\"\n",
        log.display()
    );
    let proxy = Proxy::start(&config(http, tcp, echo.addr(), raw.addr(), &extra)).await;
    let mut c = H1Client::connect(http).await;

    assert_eq!(c.get("http://svc/before").await.status, StatusCode::OK);
    let lines = |p: &Path| {
        std::fs::read_to_string(p)
            .unwrap_or_default()
            .lines()
            .map(str::to_owned)
            .collect::<Vec<_>>()
    };
    eventually("the first line", || {
        let got = lines(&log);
        async move { (got == ["GET /before 200"]).then_some(()) }
    })
    .await;

    // logrotate: rename the file, then tell the proxy (postrotate: kill -USR1).
    let rotated = dir.path().join("access.log.1");
    std::fs::rename(&log, &rotated).expect("rename");
    proxy.signal(nix::sys::signal::Signal::SIGUSR1);
    // Signals arrive asynchronously: wait until the proxy has acted on this one.
    eventually("the proxy reopening its access log", || {
        let text = proxy.log_text();
        async move { text.contains("reopening the access log").then_some(()) }
    })
    .await;
    // Lines written from now on go to the new file; keep sending until one lands.
    eventually("a line in the new file", || {
        let log = log.clone();
        async move {
            let mut client = H1Client::connect(http).await;
            assert_eq!(client.get("http://svc/after").await.status, StatusCode::OK);
            lines(&log)
                .iter()
                .any(|l| l == "GET /after 200")
                .then_some(())
        }
    })
    .await;
    assert_eq!(
        lines(&rotated),
        ["GET /before 200"],
        "the rotated file keeps only the old lines"
    );
    assert!(
        proxy.try_admin_get("/ready").await.is_some(),
        "SIGUSR1 must not stop the proxy"
    );
    drop(c);
}

/// A proxy logging JSON to a file in front of an HTTP/1.1 upstream that tells `seen` the path of
/// every request it has read whole (body included), then: `/hold` never answers; `/cut` sends its
/// head and a first chunk (`first`), then never ends its body; anything else is `200 ok`.
struct ClientGone {
    proxy: Proxy,
    http: SocketAddr,
    log: std::path::PathBuf,
    seen: tokio::sync::mpsc::UnboundedReceiver<String>,
    _dir: tempfile::TempDir,
    _app: Upstream,
}

impl ClientGone {
    async fn start() -> Self {
        use bytes::Bytes;
        use http_body_util::BodyExt;
        let (tx, seen) = tokio::sync::mpsc::unbounded_channel();
        let handler = move |req: http::Request<hyper::body::Incoming>| {
            let tx = tx.clone();
            async move {
                let path = req.uri().path().to_owned();
                let _ = req.into_body().collect().await;
                let _ = tx.send(path.clone());
                match path.as_str() {
                    "/hold" => std::future::pending().await,
                    "/cut" => {
                        let first = futures_util::stream::once(async {
                            Ok::<_, client::BoxError>(http_body::Frame::data(Bytes::from_static(
                                b"first",
                            )))
                        });
                        let frames = first.chain(futures_util::stream::pending());
                        http::Response::new(client::stream_body(frames))
                    }
                    _ => http::Response::new(client::full("ok")),
                }
            }
        };
        let app = Upstream::http1(handler).await;
        let dir = tempfile::tempdir().expect("tempdir");
        let log = dir.path().join("access.log");
        let http = free_addr();
        let proxy = Proxy::start(&format!(
            "access_log:\n  path: {}\nlisteners:\n  - name: web\n    address: {http}\n    \
             protocol: http\n    cluster: app\nclusters:\n  - name: app\n    endpoints: [{}]\n",
            log.display(),
            app.addr()
        ))
        .await;
        Self {
            proxy,
            http,
            log,
            seen,
            _dir: dir,
            _app: app,
        }
    }

    /// Waits until the upstream has read the request for `path`.
    async fn upstream_got(&mut self, path: &str) {
        let got = pillion_tests::within("the upstream to get the request", self.seen.recv()).await;
        assert_eq!(got.as_deref(), Some(path));
    }

    /// The access-log line of the request for `path`, once written.
    async fn line(&self, path: &str) -> serde_json::Value {
        eventually(&format!("the access-log line of {path}"), || {
            let line = read_json_lines(&self.log)
                .into_iter()
                .find(|l| l["path"] == path);
            async move { line }
        })
        .await
    }
}

#[tokio::test]
async fn a_client_gone_before_the_response_head_is_logged_dc_with_status_0() {
    let mut s = ClientGone::start().await;
    // A GET (the proxy's own HTTP/1.1 server), then a POST with a body (hyper's server).
    for (method, head) in [
        ("GET", "GET /hold HTTP/1.1\r\nhost: svc\r\n\r\n"),
        (
            "POST",
            "POST /hold HTTP/1.1\r\nhost: svc\r\ncontent-length: 5\r\n\r\nhello",
        ),
    ] {
        let mut tcp = tokio::net::TcpStream::connect(s.http)
            .await
            .expect("connect");
        tcp.write_all(head.as_bytes()).await.expect("write");
        s.upstream_got("/hold").await;
        drop(tcp);
        let line = eventually(&format!("the access-log line of the {method}"), || {
            let line = read_json_lines(&s.log)
                .into_iter()
                .find(|l| l["method"] == method);
            async move { line }
        })
        .await;
        assert_eq!(line["response_flags"], "DC", "{line}");
        assert_eq!(line["status"], 0, "{line}");
        assert_eq!(line["protocol"], "HTTP/1.1", "{line}");
        assert_eq!(line["bytes_sent"], 0, "{line}");
        let body = if method == "POST" { 5 } else { 0 };
        assert_eq!(line["bytes_received"], body, "{line}");
        assert_eq!(line["route"], "default", "{line}");
        assert_eq!(line["cluster"], "app", "{line}");
    }
    // No response, so no status to count it under.
    let m = s.proxy.metrics().await;
    assert_eq!(m.sum("pillion_http_requests_total", &[]), 0.0);
}

#[tokio::test]
async fn a_client_gone_mid_body_is_logged_dc_with_the_status_it_got() {
    let mut s = ClientGone::start().await;
    let mut tcp = tokio::net::TcpStream::connect(s.http)
        .await
        .expect("connect");
    tcp.write_all(b"GET /cut HTTP/1.1\r\nhost: svc\r\n\r\n")
        .await
        .expect("write");
    s.upstream_got("/cut").await;
    // The head and the first chunk come through; the rest never does.
    let mut got = Vec::new();
    pillion_tests::within("the head and the first chunk", async {
        while !got.windows(5).any(|w| w == b"first") {
            let mut buf = [0; 1024];
            let n = tcp.read(&mut buf).await.expect("read");
            assert!(n > 0, "closed early: {:?}", String::from_utf8_lossy(&got));
            got.extend_from_slice(&buf[..n]);
        }
    })
    .await;
    assert!(got.starts_with(b"HTTP/1.1 200 "), "{got:?}");
    drop(tcp);
    let line = s.line("/cut").await;
    assert_eq!(line["response_flags"], "DC", "{line}");
    assert_eq!(line["status"], 200, "{line}");
    assert_eq!(line["bytes_sent"], 5, "{line}");
    // The head was sent, so the request counts with its status.
    let m = s.proxy.metrics().await;
    assert_eq!(
        m.sum("pillion_http_requests_total", &[("status_code", "200")]),
        1.0
    );
}

#[tokio::test]
async fn an_http2_stream_reset_by_the_client_is_logged_dc_and_its_neighbour_is_not() {
    let mut s = ClientGone::start().await;
    let tcp = tokio::net::TcpStream::connect(s.http)
        .await
        .expect("connect");
    let (h2, conn) = h2::client::handshake(tcp).await.expect("h2 handshake");
    let conn = tokio::spawn(conn);
    let mut h2 = h2.ready().await.expect("ready");
    let req = |path: &str| {
        http::Request::get(format!("http://svc{path}"))
            .body(())
            .expect("request")
    };
    let (held, mut stream) = h2.send_request(req("/hold"), true).expect("send /hold");
    s.upstream_got("/hold").await;
    stream.send_reset(h2::Reason::CANCEL);
    drop(held);

    // The connection stays open: the next stream on it completes.
    let mut h2 = h2.ready().await.expect("ready");
    let (rsp, _) = h2.send_request(req("/ok"), true).expect("send /ok");
    let rsp = pillion_tests::within("the /ok response", rsp)
        .await
        .expect("/ok response");
    assert_eq!(rsp.status(), StatusCode::OK);
    let mut body = rsp.into_body();
    while let Some(data) = pillion_tests::within("the /ok body", body.data()).await {
        data.expect("/ok body");
    }

    let line = s.line("/hold").await;
    assert_eq!(line["response_flags"], "DC", "{line}");
    assert_eq!(line["status"], 0, "{line}");
    assert_eq!(line["protocol"], "HTTP/2", "{line}");
    let ok = s.line("/ok").await;
    assert_eq!(ok["response_flags"], "-", "{ok}");
    assert_eq!(ok["status"], 200, "{ok}");
    assert_eq!(ok["protocol"], "HTTP/2", "{ok}");
    conn.abort();
}

#[tokio::test]
async fn a_response_sent_whole_before_its_upstream_end_of_stream_is_not_dc() {
    // An HTTP/2 upstream that sends all of its `Content-Length` but holds its END_STREAM back
    // (some servers send it in a frame of its own, later): hyper's server, which has written the
    // whole length, drops the body without waiting for it. The client got everything.
    let app = Upstream::tcp(|tcp| async move {
        let Ok(mut conn) = h2::server::handshake(tcp).await else {
            return;
        };
        let mut held = Vec::new();
        while let Some(Ok((_req, mut respond))) = conn.accept().await {
            let rsp = http::Response::builder()
                .header("content-length", "5")
                .body(())
                .expect("response");
            if let Ok(mut body) = respond.send_response(rsp, false) {
                let _ = body.send_data(bytes::Bytes::from_static(b"whole"), false);
                held.push(body);
            }
        }
    })
    .await;
    let dir = tempfile::tempdir().expect("tempdir");
    let log = dir.path().join("access.log");
    let http = free_addr();
    let _proxy = Proxy::start(&format!(
        "access_log:\n  path: {}\nlisteners:\n  - name: web\n    address: {http}\n    \
         protocol: http\n    cluster: app\nclusters:\n  - name: app\n    protocol: http2\n    \
         endpoints: [{}]\n",
        log.display(),
        app.addr()
    ))
    .await;

    // A POST with a body, so hyper's server answers it.
    let mut tcp = tokio::net::TcpStream::connect(http).await.expect("connect");
    tcp.write_all(b"POST /whole HTTP/1.1\r\nhost: svc\r\ncontent-length: 2\r\n\r\nhi")
        .await
        .expect("write");
    let mut got = Vec::new();
    pillion_tests::within("the whole response", async {
        while !got.ends_with(b"\r\n\r\nwhole") {
            let mut buf = [0; 1024];
            let n = tcp.read(&mut buf).await.expect("read");
            assert!(n > 0, "closed early: {:?}", String::from_utf8_lossy(&got));
            got.extend_from_slice(&buf[..n]);
        }
    })
    .await;
    let line = eventually("the access-log line", || {
        let line = read_json_lines(&log).into_iter().next();
        async move { line }
    })
    .await;
    assert_eq!(line["response_flags"], "-", "{line}");
    assert_eq!(line["status"], 200, "{line}");
    assert_eq!(line["bytes_sent"], 5, "{line}");
    // The client is still there.
    drop(tcp);
}
