//! Upstream protocol per cluster (`http1`, `http2`, `auto` = same as downstream) and endpoints
//! given as DNS names.

use std::net::SocketAddr;

use http::StatusCode;
use pillion_tests::{free_addr, Echo, H1Client, H2Client, Proxy};

/// One listener per cluster protocol, all in front of the same echo upstream.
struct Setup {
    _echo: Echo,
    _proxy: Proxy,
    http1: SocketAddr,
    http2: SocketAddr,
    auto: SocketAddr,
}

async fn setup() -> Setup {
    let echo = Echo::start().await;
    let (http1, http2, auto) = (free_addr(), free_addr(), free_addr());
    let mut yaml = String::from("listeners:\n");
    for (name, addr) in [("http1", http1), ("http2", http2), ("auto", auto)] {
        yaml += &format!(
            "  - name: {name}\n    address: {addr}\n    protocol: http\n    cluster: {name}\n"
        );
    }
    yaml += "clusters:\n";
    for name in ["http1", "http2", "auto"] {
        yaml += &format!(
            "  - name: {name}\n    endpoints: [{}]\n    protocol: {name}\n",
            echo.addr()
        );
    }
    let proxy = Proxy::start(&yaml).await;
    Setup {
        _echo: echo,
        _proxy: proxy,
        http1,
        http2,
        auto,
    }
}

#[tokio::test]
async fn cluster_protocol_decides_the_upstream_http_version() {
    let s = setup().await;
    // (listener, downstream version, version the upstream must see)
    let cases = [
        (s.http1, "h1", "HTTP/1.1"),
        (s.http1, "h2", "HTTP/1.1"),
        (s.http2, "h1", "HTTP/2.0"),
        (s.http2, "h2", "HTTP/2.0"),
        (s.auto, "h1", "HTTP/1.1"),
        (s.auto, "h2", "HTTP/2.0"),
    ];
    for (listen, downstream, want) in cases {
        let url = "http://svc.example:8443/version?from=test";
        let reply = match downstream {
            "h1" => H1Client::connect(listen).await.get(url).await,
            _ => H2Client::connect(listen).await.get(url).await,
        };
        assert_eq!(reply.status, StatusCode::OK, "{reply:?}");
        let seen = reply.echo();
        assert_eq!(
            seen.version, want,
            "{downstream} client via listener {listen}: {seen:?}"
        );
        assert_eq!(seen.path, "/version?from=test");
        // Host (HTTP/1.1) or :authority (HTTP/2), the upstream gets the client's authority.
        let host = seen
            .header("host")
            .or(seen.header(":authority"))
            .unwrap_or_default();
        assert_eq!(host, "svc.example:8443", "{seen:?}");
    }
}

#[tokio::test]
async fn endpoint_given_as_a_dns_name_is_resolved() {
    let echo = Echo::named("by-name").await;
    let listen = free_addr();
    let _proxy = Proxy::start(&format!(
        r#"
listeners:
  - name: in
    address: {listen}
    protocol: http
    cluster: named
clusters:
  - name: named
    endpoints: ["localhost:{}"]
    dns_refresh: 1s
"#,
        echo.addr().port()
    ))
    .await;
    let mut client = H1Client::connect(listen).await;
    for _ in 0..5 {
        let reply = client.get("http://svc/").await;
        assert_eq!(reply.status, StatusCode::OK, "{reply:?}");
        assert_eq!(reply.header("x-echo-server"), Some("by-name"));
    }
}
