//! The admin endpoints (/ready, /live, /config_dump, /metrics) and structured logs.

use http::StatusCode;
use pillion_tests::{free_addr, Echo, H1Client, Proxy};

async fn proxy_with_echo(args: &[&str]) -> (Echo, Proxy, std::net::SocketAddr) {
    let echo = Echo::start().await;
    let listen = free_addr();
    let proxy = Proxy::start_with_args(
        args,
        &format!(
            r#"
listeners:
  - name: admin-test-listener
    address: {listen}
    protocol: http
    cluster: admin-test-cluster
clusters:
  - name: admin-test-cluster
    endpoints: [{}]
"#,
            echo.addr()
        ),
    )
    .await;
    (echo, proxy, listen)
}

#[tokio::test]
async fn ready_live_and_config_dump_answer() {
    let (echo, proxy, listen) = proxy_with_echo(&[]).await;

    let ready = proxy.admin_get("/ready").await;
    assert_eq!(ready.status, StatusCode::OK);
    assert!(ready.text().contains("ready"), "{ready:?}");

    let live = proxy.admin_get("/live").await;
    assert_eq!(live.status, StatusCode::OK, "{live:?}");

    let dump = proxy.admin_get("/config_dump").await;
    assert_eq!(dump.status, StatusCode::OK, "{dump:?}");
    let text = dump.text();
    for needle in [
        "admin-test-listener".to_string(),
        "admin-test-cluster".to_string(),
        listen.to_string(),
        echo.addr().to_string(),
    ] {
        assert!(
            text.contains(&needle),
            "config_dump lacks {needle}:\n{text}"
        );
    }
    // The dump is YAML with the top-level sections of the config.
    for key in ["listeners:", "clusters:"] {
        assert!(
            text.lines().any(|l| l.starts_with(key)),
            "config_dump lacks {key}:\n{text}"
        );
    }
}

#[tokio::test]
async fn config_dump_hides_header_values_whatever_the_header_is_called() {
    let echo = Echo::start().await;
    let listen = free_addr();
    let proxy = Proxy::start(&format!(
        r#"
listeners:
  - name: token
    address: {listen}
    protocol: http
    routes:
      - name: api
        match: {{headers: [{{name: x-api-key, exact: match-secret-1}}]}}
        cluster: app
        request_headers:
          add: {{authorization: "Bearer add-secret-2", token: add-secret-3}}
    cluster: app
clusters:
  - name: app
    endpoints: [{}]
"#,
        echo.addr()
    ))
    .await;
    let dump = proxy.admin_get("/config_dump").await;
    assert_eq!(dump.status, StatusCode::OK, "{dump:?}");
    let text = dump.text();
    for secret in ["match-secret-1", "add-secret-2", "add-secret-3"] {
        assert!(
            !text.contains(secret),
            "config_dump shows {secret}:\n{text}"
        );
    }
    for shown in [
        "name: token",
        "x-api-key",
        "authorization:",
        "token: '[redacted]'",
    ] {
        assert!(text.contains(shown), "config_dump lacks {shown}:\n{text}");
    }
    // The dump hides values; the proxy still sends them.
    let mut client = H1Client::connect(listen).await;
    let seen = client
        .request(
            http::Request::get("http://svc/")
                .header("x-api-key", "match-secret-1")
                .body(pillion_tests::client::empty())
                .expect("request"),
        )
        .await
        .echo();
    assert_eq!(
        seen.header("authorization"),
        Some("Bearer add-secret-2"),
        "{seen:?}"
    );
}

#[tokio::test]
async fn metrics_are_prometheus_text_with_histogram_series() {
    let (_echo, proxy, listen) = proxy_with_echo(&[]).await;
    let mut client = H1Client::connect(listen).await;
    assert_eq!(client.get("http://svc/").await.status, StatusCode::OK);

    let labels = [("listener", "admin-test-listener"), ("status_class", "2xx")];
    let m = proxy
        .wait_metric("pillion_http_requests_total", &labels, 1.0)
        .await;
    assert!(
        m.text.contains("# TYPE pillion_http_requests"),
        "{}",
        m.text
    );
    let hist = [("listener", "admin-test-listener")];
    let name = "pillion_http_request_duration_seconds";
    assert_eq!(m.sum(&format!("{name}_count"), &hist), 1.0, "{}", m.text);
    assert_eq!(
        m.sum(&format!("{name}_bucket"), &[hist[0], ("le", "+Inf")]),
        1.0,
        "{}",
        m.text
    );
    assert!(m.sum(&format!("{name}_sum"), &hist) > 0.0, "{}", m.text);
    // The histogram carries the request labels minus status_class.
    let bucket_name = format!("{name}_bucket");
    let bucket = m.matching(&bucket_name, &hist).next().expect("a bucket");
    assert!(
        !bucket.labels.contains_key("status_class"),
        "{:?}",
        bucket.labels
    );
    for label in ["direction", "route", "cluster"] {
        assert!(bucket.labels.contains_key(label), "{:?}", bucket.labels);
    }
}

#[tokio::test]
async fn json_log_format_writes_one_json_object_per_line() {
    let (_echo, proxy, listen) = proxy_with_echo(&["--log-format", "json"]).await;
    let mut client = H1Client::connect(listen).await;
    assert_eq!(client.get("http://svc/").await.status, StatusCode::OK);
    let log = proxy.log_text();
    let lines: Vec<&str> = log.lines().filter(|l| !l.trim().is_empty()).collect();
    assert!(!lines.is_empty(), "no startup log line");
    for line in lines {
        let value: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
        assert!(value.is_object(), "{line}");
    }
}

#[tokio::test]
async fn plain_logs_written_to_a_file_have_no_terminal_escape_codes() {
    // The proxy's output goes to a file here, as it does under a container runtime.
    let (_echo, proxy, listen) = proxy_with_echo(&["--log-format", "plain"]).await;
    let mut client = H1Client::connect(listen).await;
    assert_eq!(client.get("http://svc/").await.status, StatusCode::OK);
    let log = proxy.log_text();
    assert!(!log.trim().is_empty(), "no startup log line");
    assert!(
        !log.contains('\u{1b}'),
        "ANSI escape codes in a non-terminal log:\n{log:?}"
    );
}
