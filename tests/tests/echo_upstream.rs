//! The bundled test upstream `pillion echo`, which the other suites rely on.

use http::{StatusCode, Version};
use pillion_tests::{Echo, H1Client, H2Client};

#[tokio::test]
async fn echo_reports_the_request_it_saw() {
    let echo = Echo::start().await;
    let mut client = H1Client::connect(echo.addr()).await;
    let request = pillion_tests::client::req("POST", "http://echo.test/a/b?c=d")
        .header("x-one", "1")
        .header("x-rep", "a")
        .header("x-rep", "b")
        .body(pillion_tests::client::full(vec![7u8; 1234]))
        .unwrap();
    let reply = client.request(request).await;
    assert_eq!(reply.header("x-echo-body-bytes"), Some("1234"));
    // Default name: the listen address.
    let name = echo.addr().to_string();
    assert_eq!(reply.header("x-echo-server"), Some(name.as_str()));
    let seen = reply.echo();
    assert_eq!(seen.server, name);
    assert_eq!(seen.method, "POST");
    assert_eq!(seen.path, "/a/b?c=d");
    assert_eq!(seen.version, "HTTP/1.1");
    assert_eq!(seen.body_bytes, 1234);
    assert_eq!(seen.header("x-one"), Some("1"));
    assert_eq!(seen.header("x-rep"), Some("a, b"));
    assert_eq!(seen.header("host"), Some("echo.test"));

    let h2 = H2Client::connect(echo.addr()).await;
    let reply = h2.get("http://echo.test/h2").await;
    assert_eq!(reply.version, Version::HTTP_2);
    assert_eq!(reply.echo().version, "HTTP/2.0");
}

#[tokio::test]
async fn echo_query_overrides_status_size_and_delay() {
    let echo = Echo::named("knobs").await;
    let mut client = H1Client::connect(echo.addr()).await;

    let reply = client.get("http://e/?status=503").await;
    assert_eq!(reply.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(reply.header("x-echo-server"), Some("knobs"));

    for _ in 0..5 {
        let always = client.get("http://e/?status=418:100").await;
        assert_eq!(always.status, StatusCode::IM_A_TEAPOT);
        let never = client.get("http://e/?status=418:0").await;
        assert_eq!(never.status, StatusCode::OK);
    }

    let sized = client.get("http://e/?size=100000").await;
    assert_eq!(sized.status, StatusCode::OK);
    assert_eq!(sized.body.len(), 100_000);

    let delayed = client.get("http://e/slow?delay=50ms").await;
    assert_eq!(delayed.echo().path, "/slow?delay=50ms");
}
