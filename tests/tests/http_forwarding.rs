//! Plain HTTP/1.1 and h2c forwarding through inbound and outbound listeners to an echo upstream.

use std::net::SocketAddr;

use http::{StatusCode, Version};
use pillion_tests::client::{full, req};
use pillion_tests::{free_addr, Echo, EchoSeen, H1Client, H2Client, Proxy};

/// A proxy with an inbound and an outbound HTTP listener, both sending everything to `echo`.
struct Setup {
    _echo: Echo,
    proxy: Proxy,
    inbound: SocketAddr,
    outbound: SocketAddr,
}

async fn setup() -> Setup {
    let echo = Echo::start().await;
    let (inbound, outbound) = (free_addr(), free_addr());
    let proxy = Proxy::start(&format!(
        r#"
listeners:
  - name: in
    address: {inbound}
    direction: inbound
    protocol: http
    cluster: echo
  - name: out
    address: {outbound}
    direction: outbound
    protocol: http
    cluster: echo
clusters:
  - name: echo
    endpoints: [{echo}]
"#,
        echo = echo.addr()
    ))
    .await;
    Setup {
        _echo: echo,
        proxy,
        inbound,
        outbound,
    }
}

/// The headers every forwarded request must arrive with.
fn assert_forwarding_headers(seen: &EchoSeen, host: &str) {
    assert_eq!(seen.header("host"), Some(host), "Host kept: {seen:?}");
    let xff = seen.header("x-forwarded-for").unwrap_or_default();
    assert!(xff.contains("127.0.0.1"), "x-forwarded-for: {seen:?}");
    assert_eq!(seen.header("x-forwarded-proto"), Some("http"), "{seen:?}");
}

#[tokio::test]
async fn http1_request_reaches_echo_through_both_directions() {
    let s = setup().await;
    for (addr, listener) in [(s.inbound, "in"), (s.outbound, "out")] {
        let mut client = H1Client::connect(addr).await;
        let request = req("POST", "http://svc.example:1234/hello/world?x=1")
            .header("connection", "keep-alive, x-hop")
            .header("x-hop", "1")
            .header("keep-alive", "timeout=5")
            .header("proxy-connection", "keep-alive")
            .header("x-end-to-end", "kept")
            .body(full("abc"))
            .unwrap();
        let reply = client.request(request).await;
        assert_eq!(reply.status, StatusCode::OK, "via {listener}: {reply:?}");
        assert_eq!(reply.version, Version::HTTP_11);
        let seen = reply.echo();
        assert_eq!(seen.method, "POST");
        assert_eq!(seen.path, "/hello/world?x=1");
        assert_eq!(seen.version, "HTTP/1.1");
        assert_eq!(seen.body_bytes, 3);
        assert_eq!(reply.header("x-echo-body-bytes"), Some("3"));
        assert_forwarding_headers(&seen, "svc.example:1234");
        assert_eq!(seen.header("x-end-to-end"), Some("kept"), "{seen:?}");
        for hop in ["x-hop", "keep-alive", "proxy-connection"] {
            assert_eq!(
                seen.header(hop),
                None,
                "hop-by-hop {hop} forwarded: {seen:?}"
            );
        }
        let connection = seen.header("connection").unwrap_or_default();
        assert!(
            !connection.contains("x-hop"),
            "Connection forwarded: {seen:?}"
        );
    }
    for direction in ["inbound", "outbound"] {
        let labels = [
            ("direction", direction),
            ("cluster", "echo"),
            ("status_class", "2xx"),
        ];
        s.proxy
            .wait_metric("pillion_http_requests_total", &labels, 1.0)
            .await;
    }
    let m = s.proxy.metrics().await;
    assert_eq!(
        m.sum("pillion_http_requests_total", &[("listener", "in")]),
        1.0
    );
    assert_eq!(
        m.sum("pillion_http_requests_total", &[("listener", "out")]),
        1.0
    );
    assert_eq!(
        m.sum(
            "pillion_http_request_duration_seconds_count",
            &[("direction", "inbound"), ("cluster", "echo")]
        ),
        1.0,
        "{}",
        m.text
    );
}

#[tokio::test]
async fn h2c_request_reaches_echo_through_both_directions() {
    let s = setup().await;
    for (addr, listener) in [(s.inbound, "in"), (s.outbound, "out")] {
        let client = H2Client::connect(addr).await;
        let request = req("PUT", "http://svc.example:1234/h2/path?y=2")
            .header("x-end-to-end", "kept")
            .body(full("hello"))
            .unwrap();
        let reply = client.request(request).await;
        assert_eq!(reply.status, StatusCode::OK, "via {listener}: {reply:?}");
        assert_eq!(reply.version, Version::HTTP_2);
        let seen = reply.echo();
        assert_eq!(seen.method, "PUT");
        assert_eq!(seen.path, "/h2/path?y=2");
        // The cluster speaks HTTP/1.1 (the default), so :authority becomes Host.
        assert_eq!(seen.version, "HTTP/1.1");
        assert_eq!(seen.body_bytes, 5);
        assert_forwarding_headers(&seen, "svc.example:1234");
        assert_eq!(seen.header("x-end-to-end"), Some("kept"), "{seen:?}");
    }
    for direction in ["inbound", "outbound"] {
        let labels = [
            ("direction", direction),
            ("cluster", "echo"),
            ("status_class", "2xx"),
        ];
        s.proxy
            .wait_metric("pillion_http_requests_total", &labels, 1.0)
            .await;
    }
}

#[tokio::test]
async fn x_forwarded_headers_are_appended_not_replaced() {
    let s = setup().await;
    let mut client = H1Client::connect(s.inbound).await;
    let request = req("GET", "http://svc.example/")
        .header("x-forwarded-for", "10.1.2.3")
        .header("x-forwarded-proto", "https")
        .body(pillion_tests::client::empty())
        .unwrap();
    let seen = client.request(request).await.echo();
    let xff = seen.header("x-forwarded-for").unwrap_or_default();
    let hops: Vec<&str> = xff.split(',').map(str::trim).collect();
    assert_eq!(hops, ["10.1.2.3", "127.0.0.1"], "{seen:?}");
    assert_eq!(seen.header("x-forwarded-proto"), Some("https"), "{seen:?}");
}

#[tokio::test]
async fn forwarded_headers_false_passes_them_as_the_client_sent_them() {
    let echo = Echo::start().await;
    let (_proxy, listen) =
        Proxy::in_front_of_with(echo.addr(), "http1", "", "forwarded_headers: false").await;
    let mut client = H1Client::connect(listen).await;
    let seen = client.get("http://svc.example/").await.echo();
    assert_eq!(seen.header("x-forwarded-for"), None, "{seen:?}");
    assert_eq!(seen.header("x-forwarded-proto"), None, "{seen:?}");

    let request = req("GET", "http://svc.example/")
        .header("x-forwarded-for", "10.1.2.3")
        .body(pillion_tests::client::empty())
        .unwrap();
    let seen = client.request(request).await.echo();
    assert_eq!(seen.header("x-forwarded-for"), Some("10.1.2.3"), "{seen:?}");
}

#[tokio::test]
async fn many_requests_on_one_client_connection_are_counted_per_status_class() {
    let s = setup().await;
    let mut client = H1Client::connect(s.inbound).await;
    for _ in 0..3 {
        let reply = client.get("http://svc/ok").await;
        assert_eq!(reply.status, StatusCode::OK);
    }
    for _ in 0..2 {
        let reply = client.get("http://svc/fail?status=503").await;
        assert_eq!(reply.status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(
            reply.header("x-pillion-error"),
            None,
            "an app error, not a proxy error"
        );
    }
    let labels = |class| {
        [
            ("listener", "in"),
            ("cluster", "echo"),
            ("status_class", class),
        ]
    };
    s.proxy
        .wait_metric("pillion_http_requests_total", &labels("2xx"), 3.0)
        .await;
    s.proxy
        .wait_metric("pillion_http_requests_total", &labels("5xx"), 2.0)
        .await;
}

/// Runs curl against `url` and returns (HTTP version, status, JSON body).
async fn curl(args: &[&str], url: &str) -> (String, u16, serde_json::Value) {
    let out = pillion_tests::within(
        "curl",
        tokio::process::Command::new("curl")
            .args([
                "-sS",
                "--max-time",
                "20",
                "-w",
                "\n%{http_version} %{http_code}",
            ])
            .args(args)
            .arg(url)
            .kill_on_drop(true)
            .output(),
    )
    .await
    .expect("run curl");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "curl {args:?} {url}: {stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (body, meta) = stdout.rsplit_once('\n').expect("curl -w line");
    let (version, code) = meta.split_once(' ').expect("version and code");
    let json = serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {body}"));
    (version.to_string(), code.parse().unwrap(), json)
}

#[tokio::test]
async fn curl_http1_and_h2c_prior_knowledge_reach_echo() {
    let s = setup().await;
    let url = format!("http://{}/curl/path?q=1", s.inbound);
    let host = format!("{}", s.inbound);
    for (args, version) in [
        (&["--http1.1"][..], "1.1"),
        (&["--http2-prior-knowledge"][..], "2"),
    ] {
        let (got_version, code, seen) = curl(args, &url).await;
        assert_eq!((got_version.as_str(), code), (version, 200), "{seen}");
        assert_eq!(seen["path"], "/curl/path?q=1");
        assert_eq!(seen["method"], "GET");
        assert_eq!(seen["headers"]["host"], host.as_str(), "{seen}");
        assert_eq!(
            seen["headers"]["user-agent"]
                .as_str()
                .map(|ua| ua.starts_with("curl/")),
            Some(true)
        );
    }
    s.proxy
        .wait_metric(
            "pillion_http_requests_total",
            &[("listener", "in"), ("status_class", "2xx")],
            2.0,
        )
        .await;
}

#[tokio::test]
async fn hop_by_hop_response_headers_do_not_reach_the_client() {
    use http::Response;
    use pillion_tests::upstream::Upstream;
    let upstream = Upstream::http1(|_req| async {
        Response::builder()
            .header("connection", "x-resp-hop")
            .header("x-resp-hop", "1")
            .header("keep-alive", "timeout=5")
            .header("x-end-to-end", "kept")
            .body(full("body"))
            .unwrap()
    })
    .await;
    let (_proxy, listen) = Proxy::in_front_of(upstream.addr(), "http1").await;
    let mut client = H1Client::connect(listen).await;
    for _ in 0..2 {
        let reply = client.get("http://svc/").await;
        assert_eq!(reply.status, StatusCode::OK);
        assert_eq!(reply.text(), "body");
        assert_eq!(reply.header("x-end-to-end"), Some("kept"), "{reply:?}");
        assert_eq!(reply.header("x-resp-hop"), None, "{reply:?}");
        assert_eq!(reply.header("keep-alive"), None, "{reply:?}");
        let connection = reply.header("connection").unwrap_or_default();
        assert!(!connection.contains("x-resp-hop"), "{reply:?}");
    }
}

#[tokio::test]
async fn repeated_x_forwarded_for_headers_keep_every_hop() {
    let s = setup().await;
    let mut client = H1Client::connect(s.inbound).await;
    let request = req("GET", "http://svc.example/")
        .header("x-forwarded-for", "10.0.0.1")
        .header("x-forwarded-for", "10.0.0.2, 10.0.0.3")
        .body(pillion_tests::client::empty())
        .unwrap();
    let seen = client.request(request).await.echo();
    let xff = seen.header("x-forwarded-for").unwrap_or_default();
    let hops: Vec<&str> = xff.split(',').map(str::trim).collect();
    assert_eq!(
        hops,
        ["10.0.0.1", "10.0.0.2", "10.0.0.3", "127.0.0.1"],
        "x-forwarded-for must append to all earlier hops: {seen:?}"
    );
}

#[tokio::test]
async fn http2_names_its_host_once_and_validly_and_authority_wins() {
    let s = setup().await;
    // hyper's client sends no request without `:authority`; the h2 crate's does.
    let tcp = tokio::net::TcpStream::connect(s.inbound).await.unwrap();
    let (mut raw, conn) = h2::client::handshake(tcp).await.expect("h2 handshake");
    let conn = tokio::spawn(conn);
    // No `:authority`, and no Host (nothing names the host); two Host fields; one that is no
    // host.
    // And an asterisk target, which is for OPTIONS only.
    for (path, hosts) in [
        ("/x", &[][..]),
        ("/x", &["a.test", "b.test"]),
        ("/x", &["b.test/evil"]),
        ("*", &["a.test"]),
    ] {
        let mut r = http::Request::get(path);
        for h in hosts {
            r = r.header("host", *h);
        }
        raw = raw.ready().await.expect("ready");
        let (rsp, _) = raw.send_request(r.body(()).unwrap(), true).expect("send");
        let rsp = pillion_tests::within("a response", rsp)
            .await
            .expect("response");
        assert_eq!(
            rsp.status(),
            StatusCode::BAD_REQUEST,
            "{path} {hosts:?}: {rsp:?}"
        );
        assert_eq!(rsp.headers()["x-pillion-error"], "bad-request");
    }
    drop(raw);
    conn.abort();

    let h2 = H2Client::connect(s.inbound).await;
    // `:authority` and a Host that disagrees: routing and the app both get the authority.
    let reply = h2
        .request(
            req("GET", "http://a.test/x")
                .header("host", "b.test")
                .body(full(""))
                .unwrap(),
        )
        .await;
    assert_eq!(reply.echo().header("host"), Some("a.test"), "{reply:?}");
}
