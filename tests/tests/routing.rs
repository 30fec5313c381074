//! Routing: host, path, prefix and header matches, the catch-all cluster, 404 no-route,
//! weighted splits and request/response header rewriting.

use std::collections::BTreeMap;

use http::StatusCode;
use pillion_tests::client::{empty, req};
use pillion_tests::{free_addr, Echo, H1Client, Proxy, Reply};

/// A request (url, headers) and the cluster expected to answer it.
type Case = (
    &'static str,
    &'static [(&'static str, &'static str)],
    &'static str,
);

/// Which echo server answered.
fn served_by(reply: &Reply) -> &str {
    assert_eq!(reply.status, StatusCode::OK, "{reply:?}");
    reply.header("x-echo-server").expect("x-echo-server")
}

async fn get_with(client: &mut H1Client, url: &str, headers: &[(&str, &str)]) -> Reply {
    let mut builder = req("GET", url);
    for (name, value) in headers {
        builder = builder.header(*name, *value);
    }
    client.request(builder.body(empty()).unwrap()).await
}

#[tokio::test]
async fn routes_match_host_path_prefix_and_headers_first_match_wins() {
    let names = [
        "canary", "flag", "api", "wild", "exact", "prefix", "fallback",
    ];
    let mut echoes = BTreeMap::new();
    for name in names {
        echoes.insert(name, Echo::named(name).await);
    }
    let clusters: String = names
        .iter()
        .map(|n| format!("  - name: {n}\n    endpoints: [{}]\n", echoes[n].addr()))
        .collect();
    let listen = free_addr();
    let proxy = Proxy::start(&format!(
        r#"
listeners:
  - name: web
    address: {listen}
    protocol: http
    cluster: fallback
    routes:
      - match:
          headers:
            - name: x-canary
              exact: "1"
        cluster: canary
      - match:
          headers:
            - name: x-flag
        cluster: flag
      - match:
          host: api.local
        cluster: api
      - match:
          host: "*.wild.test"
        cluster: wild
      - match:
          path: /exact
        cluster: exact
      - match:
          prefix: /pre
        cluster: prefix
clusters:
{clusters}"#
    ))
    .await;

    // (url, request headers, cluster expected to answer)
    type Case = (
        &'static str,
        &'static [(&'static str, &'static str)],
        &'static str,
    );
    let cases: &[Case] = &[
        ("http://api.local/anything", &[], "api"),
        ("http://api.local:8080/x", &[], "api"),
        ("http://API.Local/x", &[], "api"),
        ("http://a.wild.test/x", &[], "wild"),
        ("http://b.c.wild.test/x", &[], "wild"),
        ("http://other.test/exact", &[], "exact"),
        ("http://other.test/exact?q=1", &[], "exact"),
        ("http://other.test/exact/more", &[], "fallback"),
        ("http://other.test/pre", &[], "prefix"),
        ("http://other.test/pre/x/y", &[], "prefix"),
        ("http://other.test/x", &[("x-canary", "1")], "canary"),
        ("http://api.local/exact", &[("x-canary", "1")], "canary"),
        ("http://other.test/x", &[("x-canary", "2")], "fallback"),
        ("http://other.test/x", &[("x-flag", "anything")], "flag"),
        ("http://other.test/x", &[("x-flag", "")], "flag"),
        ("http://api.local/pre", &[], "api"),
        ("http://other.test/", &[], "fallback"),
        ("http://wild.test.example/x", &[], "fallback"),
    ];
    let mut client = H1Client::connect(listen).await;
    for (url, headers, want) in cases {
        let reply = get_with(&mut client, url, headers).await;
        assert_eq!(served_by(&reply), *want, "GET {url} with {headers:?}");
    }
    let m = proxy
        .wait_metric(
            "pillion_http_requests_total",
            &[("listener", "web")],
            cases.len() as f64,
        )
        .await;
    // Unnamed routes are labelled by their index: the canary route is "0", the flag route "1".
    assert_eq!(
        m.sum(
            "pillion_http_requests_total",
            &[("listener", "web"), ("route", "0"), ("cluster", "canary")]
        ),
        2.0,
        "{}",
        m.text
    );
    assert_eq!(
        m.sum(
            "pillion_http_requests_total",
            &[("listener", "web"), ("route", "1"), ("cluster", "flag")]
        ),
        2.0,
        "{}",
        m.text
    );
}

#[tokio::test]
async fn unmatched_request_without_catch_all_is_404_no_route() {
    let echo = Echo::named("api").await;
    let listen = free_addr();
    let proxy = Proxy::start(&format!(
        r#"
listeners:
  - name: strict
    address: {listen}
    protocol: http
    routes:
      - match:
          prefix: /api
        cluster: api
clusters:
  - name: api
    endpoints: [{}]
"#,
        echo.addr()
    ))
    .await;
    let mut client = H1Client::connect(listen).await;
    let routed = client.get("http://svc/api/users").await;
    assert_eq!(served_by(&routed), "api");
    let missed = client.get("http://svc/other").await;
    assert_eq!(missed.status, StatusCode::NOT_FOUND, "{missed:?}");
    assert_eq!(missed.header("x-pillion-error"), Some("no-route"));
    assert_eq!(missed.header("x-echo-server"), None);
    proxy
        .wait_metric(
            "pillion_http_requests_total",
            &[
                ("listener", "strict"),
                ("route", ""),
                ("cluster", ""),
                ("status_class", "4xx"),
            ],
            1.0,
        )
        .await;
}

#[tokio::test]
async fn weighted_split_sends_a_share_to_each_cluster() {
    let (v1, v2) = (Echo::named("v1").await, Echo::named("v2").await);
    let listen = free_addr();
    let proxy = Proxy::start(&format!(
        r#"
listeners:
  - name: split
    address: {listen}
    protocol: http
    routes:
      - name: halves
        split:
          - cluster: v1
            weight: 50
          - cluster: v2
            weight: 50
clusters:
  - name: v1
    endpoints: [{}]
  - name: v2
    endpoints: [{}]
"#,
        v1.addr(),
        v2.addr()
    ))
    .await;
    let mut counts = BTreeMap::<String, u32>::new();
    let mut client = H1Client::connect(listen).await;
    for _ in 0..200 {
        let reply = client.get("http://svc/").await;
        *counts.entry(served_by(&reply).to_string()).or_default() += 1;
    }
    // Binomial(200, 0.5) falls below 40 with probability around 1e-18.
    assert_eq!(counts.len(), 2, "{counts:?}");
    assert!(counts["v1"] >= 40 && counts["v2"] >= 40, "{counts:?}");
    // Metrics name the route and the cluster each request actually went to.
    for (cluster, n) in &counts {
        proxy
            .wait_metric(
                "pillion_http_requests_total",
                &[("route", "halves"), ("cluster", cluster.as_str())],
                f64::from(*n),
            )
            .await;
    }
}

#[tokio::test]
async fn route_adds_and_removes_request_and_response_headers() {
    let echo = Echo::named("app").await;
    let listen = free_addr();
    let _proxy = Proxy::start(&format!(
        r#"
listeners:
  - name: rewrite
    address: {listen}
    protocol: http
    cluster: app
    routes:
      - match:
          prefix: /rewrite
        cluster: app
        request_headers:
          add:
            x-env: prod
          remove: [x-internal]
        response_headers:
          add:
            x-served-by: pillion
          remove: [x-echo-server]
clusters:
  - name: app
    endpoints: [{}]
"#,
        echo.addr()
    ))
    .await;
    let mut client = H1Client::connect(listen).await;
    let headers = [("x-internal", "secret"), ("x-keep", "yes")];

    let reply = get_with(&mut client, "http://svc/rewrite/a", &headers).await;
    assert_eq!(reply.header("x-served-by"), Some("pillion"), "{reply:?}");
    assert_eq!(reply.header("x-echo-server"), None, "{reply:?}");
    let seen = reply.echo();
    assert_eq!(seen.header("x-env"), Some("prod"), "{seen:?}");
    assert_eq!(seen.header("x-internal"), None, "{seen:?}");
    assert_eq!(seen.header("x-keep"), Some("yes"), "{seen:?}");

    // The catch-all path has no rewriting.
    let plain = get_with(&mut client, "http://svc/other", &headers).await;
    assert_eq!(plain.header("x-served-by"), None);
    assert_eq!(plain.header("x-echo-server"), Some("app"));
    let seen = plain.echo();
    assert_eq!(seen.header("x-env"), None, "{seen:?}");
    assert_eq!(seen.header("x-internal"), Some("secret"), "{seen:?}");
}

#[tokio::test]
async fn a_route_may_rewrite_the_host_for_http1_and_http2_upstreams() {
    let echo = Echo::named("app").await;
    let listen = free_addr();
    let _proxy = Proxy::start(&format!(
        r#"
listeners:
  - name: rewrite
    address: {listen}
    protocol: http
    routes:
      - match: {{prefix: /h1}}
        cluster: h1
        request_headers: {{add: {{host: "api.internal:8443"}}}}
      - match: {{prefix: /h2}}
        cluster: h2
        request_headers: {{add: {{host: "api.internal:8443"}}}}
clusters:
  - name: h1
    endpoints: [{addr}]
  - name: h2
    endpoints: [{addr}]
    protocol: http2
"#,
        addr = echo.addr()
    ))
    .await;
    let mut client = H1Client::connect(listen).await;
    let seen = get_with(&mut client, "http://svc/h1", &[]).await.echo();
    assert_eq!(seen.version, "HTTP/1.1", "{seen:?}");
    assert_eq!(seen.header("host"), Some("api.internal:8443"), "{seen:?}");
    let seen = get_with(&mut client, "http://svc/h2", &[]).await.echo();
    assert_eq!(seen.version, "HTTP/2.0", "{seen:?}");
    assert_eq!(
        seen.header(":authority"),
        Some("api.internal:8443"),
        "{seen:?}"
    );
    assert_eq!(seen.header("host"), None, "{seen:?}");
}

#[tokio::test]
async fn every_condition_of_a_match_must_hold() {
    let (both, fallback) = (Echo::named("both").await, Echo::named("fallback").await);
    let listen = free_addr();
    let _proxy = Proxy::start(&format!(
        r#"
listeners:
  - name: web
    address: {listen}
    protocol: http
    cluster: fallback
    routes:
      - match:
          host: api.local
          prefix: /v1
          headers:
            - name: x-tenant
              exact: blue
            - name: x-debug
        cluster: both
clusters:
  - name: both
    endpoints: [{}]
  - name: fallback
    endpoints: [{}]
"#,
        both.addr(),
        fallback.addr()
    ))
    .await;
    const ALL: &[(&str, &str)] = &[("x-tenant", "blue"), ("x-debug", "on")];
    let cases: [Case; 5] = [
        ("http://api.local/v1/users", ALL, "both"),
        ("http://other.local/v1/users", ALL, "fallback"),
        ("http://api.local/v2/users", ALL, "fallback"),
        (
            "http://api.local/v1/users",
            &[("x-tenant", "blue")],
            "fallback",
        ),
        (
            "http://api.local/v1/users",
            &[("x-tenant", "green"), ("x-debug", "on")],
            "fallback",
        ),
    ];
    let mut h1 = H1Client::connect(listen).await;
    let h2 = pillion_tests::H2Client::connect(listen).await;
    for (url, headers, want) in cases {
        let reply = get_with(&mut h1, url, headers).await;
        assert_eq!(served_by(&reply), want, "HTTP/1.1 GET {url} {headers:?}");
        // HTTP/2 carries the host in :authority; routing must see it the same way.
        let mut builder = req("GET", url);
        for (name, value) in headers {
            builder = builder.header(*name, *value);
        }
        let reply = h2.request(builder.body(empty()).unwrap()).await;
        assert_eq!(served_by(&reply), want, "HTTP/2 GET {url} {headers:?}");
    }
}
