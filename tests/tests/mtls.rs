//! Mutual TLS end to end: two real Pillion processes (a client sidecar originating mTLS, a
//! server sidecar terminating it) in front of a real upstream, over HTTP/1.1, HTTP/2 and TCP;
//! the client's SPIFFE identity handed to the app (and never spoofable); handshakes a strict
//! listener must refuse; permissive listeners; a server presenting the wrong identity.
//!
//! Every certificate is made with the real `pillion cert` commands in a temporary directory.

use std::net::SocketAddr;
use std::path::Path;

use http::StatusCode;
use pillion_tests::mtls::{
    cluster_tls, get_req, listener_tls, read_until_closed, roundtrip, spiffe, yq, Ca, Issued, Pki,
    TlsClient,
};
use pillion_tests::upstream::Upstream;
use pillion_tests::{client, eventually, free_addr, Echo, H1Client, H2Client, Metrics, Proxy};
use tokio::io::AsyncWriteExt;

const PEER: &str = "x-pillion-peer-identity";
const HANDSHAKES: &str = "pillion_tls_handshakes_total";

/// One CA and the two workloads of the mesh: `sa/client` and `sa/server`.
struct Mesh {
    pki: Pki,
    ca: Ca,
    client: Issued,
    server: Issued,
}

fn mesh() -> Mesh {
    let pki = Pki::new();
    let ca = pki.ca("mesh-ca");
    let client = pki.workload(&ca, "client", "client", &spiffe("default", "client"), &[]);
    let server = pki.workload(&ca, "server", "server", &spiffe("default", "server"), &[]);
    Mesh {
        pki,
        ca,
        client,
        server,
    }
}

/// The server sidecar: one inbound listener terminating TLS in front of `app`.
fn server_yaml(
    listen: SocketAddr,
    protocol: &str,
    tls: &str,
    app: SocketAddr,
    app_protocol: &str,
    extra: &str,
) -> String {
    format!(
        r#"{extra}
listeners:
  - name: in
    address: {listen}
    protocol: {protocol}
    cluster: app
    tls: {tls}
clusters:
  - name: app
    endpoints: [{app}]
    protocol: {app_protocol}
"#
    )
}

/// The client sidecar: a plaintext outbound listener whose cluster originates mTLS.
fn client_yaml(
    listen: SocketAddr,
    protocol: &str,
    server: SocketAddr,
    cluster_protocol: &str,
    tls: &str,
) -> String {
    format!(
        r#"
listeners:
  - name: out
    address: {listen}
    direction: outbound
    protocol: {protocol}
    cluster: mesh
clusters:
  - name: mesh
    endpoints: [{server}]
    protocol: {cluster_protocol}
    tls: {tls}
"#
    )
}

/// A TCP upstream that echoes every byte until the client half-closes.
async fn tcp_echo() -> Upstream {
    Upstream::tcp(|mut tcp| async move {
        let (mut r, mut w) = tcp.split();
        let _ = tokio::io::copy(&mut r, &mut w).await;
        let _ = w.shutdown().await;
    })
    .await
}

fn read_json_lines(path: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("access log line {l:?}: {e}")))
        .collect()
}

/// Sum of every `pillion_tls_handshakes_total` series of `name`/`side` whose result is not ok.
fn failed_handshakes(m: &Metrics, name: &str, side: &str) -> f64 {
    m.matching(HANDSHAKES, &[("name", name), ("side", side)])
        .filter(|s| s.labels.get("result").map(String::as_str) != Some("ok"))
        .map(|s| s.value)
        .sum()
}

#[tokio::test]
async fn http1_through_two_sidecars_hands_the_client_identity_to_the_app() {
    let m = mesh();
    let echo = Echo::named("app").await;
    let (inbound, outbound) = (free_addr(), free_addr());
    let access = m.pki.root().join("access.log");
    let server = Proxy::start(&server_yaml(
        inbound,
        "http",
        &listener_tls("strict", &m.server, &[&m.ca.pem], "1s"),
        echo.addr(),
        "http1",
        &format!("access_log:\n  path: {}\n", yq(&access)),
    ))
    .await;
    let client = Proxy::start(&client_yaml(
        outbound,
        "http",
        inbound,
        "http1",
        &cluster_tls(Some(&m.client), &m.ca.pem, &[&spiffe("default", "server")]),
    ))
    .await;

    let mut c = H1Client::connect(outbound).await;
    for i in 0..3 {
        let reply = c
            .request(
                client::req("GET", &format!("http://svc/hello/{i}"))
                    .header(PEER, "spiffe://cluster.local/ns/evil/sa/spoofer")
                    .body(client::empty())
                    .expect("request"),
            )
            .await;
        assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
        let seen = reply.echo();
        assert_eq!(seen.server, "app");
        assert_eq!(seen.path, format!("/hello/{i}"));
        assert_eq!(
            seen.header(PEER),
            Some(spiffe("default", "client").as_str()),
            "the app must see exactly the verified client identity, never the spoofed one: {:?}",
            seen.headers
        );
    }

    // Both ends counted successful handshakes, and no failed ones.
    let sm = server.metrics().await;
    assert!(
        sm.sum(
            HANDSHAKES,
            &[("name", "in"), ("side", "server"), ("result", "ok")]
        ) >= 1.0,
        "{}",
        sm.text
    );
    assert_eq!(failed_handshakes(&sm, "in", "server"), 0.0, "{}", sm.text);
    let cm = client.metrics().await;
    assert!(
        cm.sum(
            HANDSHAKES,
            &[("name", "mesh"), ("side", "client"), ("result", "ok")]
        ) >= 1.0,
        "{}",
        cm.text
    );
    assert_eq!(failed_handshakes(&cm, "mesh", "client"), 0.0, "{}", cm.text);

    // The server sidecar's access log names the peer.
    let lines = eventually("three access-log lines on the server sidecar", || {
        let lines = read_json_lines(&access);
        async move { (lines.len() >= 3).then_some(lines) }
    })
    .await;
    for l in &lines {
        assert_eq!(
            l["peer_identity"],
            spiffe("default", "client").as_str(),
            "{l}"
        );
    }
}

#[tokio::test]
async fn http2_through_two_sidecars_hands_the_client_identity_to_the_app() {
    let m = mesh();
    let echo = Echo::named("app2").await;
    let (inbound, outbound) = (free_addr(), free_addr());
    let _server = Proxy::start(&server_yaml(
        inbound,
        "http",
        &listener_tls("strict", &m.server, &[&m.ca.pem], "1s"),
        echo.addr(),
        "http2",
        "",
    ))
    .await;
    let _client = Proxy::start(&client_yaml(
        outbound,
        "http",
        inbound,
        "http2",
        &cluster_tls(Some(&m.client), &m.ca.pem, &[&spiffe("default", "server")]),
    ))
    .await;

    let c = H2Client::connect(outbound).await;
    for i in 0..3 {
        let reply = c
            .request(
                client::req("POST", &format!("http://svc/h2/{i}"))
                    .header(PEER, "spiffe://cluster.local/ns/evil/sa/spoofer")
                    .body(client::full(vec![b'z'; 1000]))
                    .expect("request"),
            )
            .await;
        assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
        let seen = reply.echo();
        assert_eq!(seen.server, "app2");
        assert_eq!(seen.version, "HTTP/2.0", "the last hop is HTTP/2");
        assert_eq!(seen.body_bytes, 1000);
        assert_eq!(
            seen.header(PEER),
            Some(spiffe("default", "client").as_str()),
            "{:?}",
            seen.headers
        );
    }
}

#[tokio::test]
async fn tcp_through_two_sidecars_relays_the_decrypted_bytes() {
    let m = mesh();
    let app = tcp_echo().await;
    let (inbound, outbound) = (free_addr(), free_addr());
    let server = Proxy::start(&server_yaml(
        inbound,
        "tcp",
        &listener_tls("strict", &m.server, &[&m.ca.pem], "1s"),
        app.addr(),
        "http1",
        "",
    ))
    .await;
    let client = Proxy::start(&client_yaml(
        outbound,
        "tcp",
        inbound,
        "http1",
        &cluster_tls(Some(&m.client), &m.ca.pem, &[&spiffe("default", "server")]),
    ))
    .await;

    let payload: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
    let mut tcp = tokio::net::TcpStream::connect(outbound)
        .await
        .expect("connect");
    let back = roundtrip(&mut tcp, &payload)
        .await
        .unwrap_or_else(|(got, e)| {
            panic!("TCP through both sidecars: {e} after {} bytes", got.len())
        });
    assert_eq!(back.len(), payload.len());
    assert!(back == payload, "the bytes came back changed");
    assert_eq!(app.connections(), 1);

    // The bytes between the sidecars were TLS: both counted the handshake.
    server
        .wait_metric(
            HANDSHAKES,
            &[("name", "in"), ("side", "server"), ("result", "ok")],
            1.0,
        )
        .await;
    client
        .wait_metric(
            HANDSHAKES,
            &[("name", "mesh"), ("side", "client"), ("result", "ok")],
            1.0,
        )
        .await;

    // And the TLS listener speaks TLS only: a plaintext client gets nothing relayed.
    let mut plain = tokio::net::TcpStream::connect(inbound)
        .await
        .expect("connect");
    let _ = plain.write_all(b"plaintext bytes\r\n\r\n").await;
    let (got, _) = read_until_closed(&mut plain).await;
    assert!(
        !got.windows(9).any(|w| w == b"plaintext"),
        "plaintext was relayed by a strict TLS listener: {:?}",
        String::from_utf8_lossy(&got)
    );
    assert_eq!(app.connections(), 1, "nothing reached the app in plaintext");
}

#[tokio::test]
async fn a_tcp_relay_over_mtls_offers_no_alpn_to_an_auto_listener() {
    // With the cluster's ALPN (`h2` here), the server sidecar's `auto` listener would read the
    // relayed bytes as HTTP/2.
    let m = mesh();
    let app = tcp_echo().await;
    let (inbound, outbound) = (free_addr(), free_addr());
    let _server = Proxy::start(&server_yaml(
        inbound,
        "auto",
        &listener_tls("strict", &m.server, &[&m.ca.pem], "1s"),
        app.addr(),
        "http1",
        "",
    ))
    .await;
    let _client = Proxy::start(&client_yaml(
        outbound,
        "tcp",
        inbound,
        "http2",
        &cluster_tls(Some(&m.client), &m.ca.pem, &[&spiffe("default", "server")]),
    ))
    .await;
    let payload = b"opaque bytes, not HTTP\n".to_vec();
    let mut tcp = tokio::net::TcpStream::connect(outbound)
        .await
        .expect("connect");
    let back = roundtrip(&mut tcp, &payload)
        .await
        .unwrap_or_else(|(got, e)| panic!("{e} after {:?}", String::from_utf8_lossy(&got)));
    assert_eq!(back, payload);
}

#[tokio::test]
async fn direct_mtls_clients_get_identity_https_and_both_alpn_protocols() {
    let m = mesh();
    let echo = Echo::named("app").await;
    let inbound = free_addr();
    let _server = Proxy::start(&server_yaml(
        inbound,
        "http",
        &listener_tls("strict", &m.server, &[&m.ca.pem], "1s"),
        echo.addr(),
        "http1",
        "",
    ))
    .await;

    // HTTP/1.1 over TLS (ALPN http/1.1).
    let h1 = TlsClient::new(&m.ca.pem, Some(&m.client));
    let conn = h1.connect(inbound).await.expect("mTLS handshake");
    assert_eq!(conn.alpn().as_deref(), Some(&b"http/1.1"[..]));
    assert_eq!(
        conn.peer_leaf(),
        pillion_tests::mtls::leaf_der(&m.server.cert),
        "the server presents its configured certificate"
    );
    let reply = conn
        .h1_request(get_req(
            "/direct",
            &[
                (PEER, "spiffe://cluster.local/ns/evil/sa/spoofer"),
                (
                    "X-Pillion-Peer-Identity",
                    "spiffe://cluster.local/ns/evil/sa/second",
                ),
            ],
        ))
        .await
        .expect("HTTP/1.1 over mTLS");
    let seen = reply.echo();
    assert_eq!(
        seen.header(PEER),
        Some(spiffe("default", "client").as_str())
    );
    assert_eq!(seen.header("x-forwarded-proto"), Some("https"));

    // HTTP/2 over TLS (ALPN h2 preferred when offered).
    let h2 = TlsClient::with_alpn(&m.ca.pem, Some(&m.client), &[b"h2", b"http/1.1"]);
    let conn = h2.connect(inbound).await.expect("mTLS handshake");
    assert_eq!(conn.alpn().as_deref(), Some(&b"h2"[..]), "ALPN h2 selected");
    let reply = conn
        .h2_request(get_req(
            "/direct-h2",
            &[(PEER, "spiffe://cluster.local/ns/evil/sa/spoofer")],
        ))
        .await
        .expect("HTTP/2 over mTLS");
    assert_eq!(reply.version, http::Version::HTTP_2);
    let seen = reply.echo();
    assert_eq!(seen.path, "/direct-h2");
    assert_eq!(
        seen.header(PEER),
        Some(spiffe("default", "client").as_str())
    );
    assert_eq!(seen.header("x-forwarded-proto"), Some("https"));
}

#[tokio::test]
async fn a_strict_listener_refuses_bad_client_certificates_and_plaintext() {
    let m = mesh();
    let other_ca = m.pki.ca("other-ca");
    let foreign = m.pki.workload(
        &other_ca,
        "foreign",
        "client",
        &spiffe("default", "client"),
        &[],
    );
    let expired = m.pki.workload(
        &m.ca,
        "expired",
        "client",
        &spiffe("default", "client"),
        &["--expired"],
    );
    let echo = Echo::named("app").await;
    let inbound = free_addr();
    let server = Proxy::start(&server_yaml(
        inbound,
        "http",
        &listener_tls("strict", &m.server, &[&m.ca.pem], "1s"),
        echo.addr(),
        "http1",
        "",
    ))
    .await;

    let cases: [(&str, Option<&Issued>, &str); 3] = [
        (
            "a client certificate from another CA",
            Some(&foreign),
            "unknown_ca",
        ),
        (
            "an expired client certificate",
            Some(&expired),
            "cert_expired",
        ),
        ("no client certificate", None, "no_client_cert"),
    ];
    for (what, cert, result) in cases {
        let outcome = TlsClient::new(&m.ca.pem, cert)
            .get(inbound, "/secret")
            .await;
        if let Ok(reply) = outcome {
            panic!(
                "{what}: expected the handshake to be refused, got HTTP {} {}",
                reply.status,
                reply.text()
            );
        }
        server
            .wait_metric(
                HANDSHAKES,
                &[("name", "in"), ("side", "server"), ("result", result)],
                1.0,
            )
            .await;
    }

    // Plaintext HTTP to a strict listener: no HTTP response, the connection ends.
    let mut plain = tokio::net::TcpStream::connect(inbound)
        .await
        .expect("connect");
    plain
        .write_all(b"GET /secret HTTP/1.1\r\nhost: svc\r\n\r\n")
        .await
        .expect("write");
    let (got, _) = read_until_closed(&mut plain).await;
    assert!(
        !got.starts_with(b"HTTP/"),
        "a strict listener answered plaintext HTTP: {:?}",
        String::from_utf8_lossy(&got)
    );
    eventually(
        "the plaintext attempt counted as a failed handshake",
        || {
            let server = &server;
            async move {
                let m = server.metrics().await;
                (failed_handshakes(&m, "in", "server") == 4.0).then_some(())
            }
        },
    )
    .await;

    // The good client still gets through: the refusals were about the clients.
    let reply = TlsClient::new(&m.ca.pem, Some(&m.client))
        .get(inbound, "/secret")
        .await
        .expect("a valid client certificate is accepted");
    assert_eq!(
        reply.echo().header(PEER),
        Some(spiffe("default", "client").as_str())
    );
    server
        .wait_metric(
            HANDSHAKES,
            &[("name", "in"), ("side", "server"), ("result", "ok")],
            1.0,
        )
        .await;
}

#[tokio::test]
async fn a_permissive_listener_takes_plaintext_and_mtls_on_the_same_port() {
    let m = mesh();
    let echo = Echo::named("app").await;
    let inbound = free_addr();
    let server = Proxy::start(&server_yaml(
        inbound,
        "http",
        &listener_tls("permissive", &m.server, &[&m.ca.pem], "1s"),
        echo.addr(),
        "http1",
        "",
    ))
    .await;

    // Plaintext HTTP/1.1: served, with no identity (and a spoofed one removed).
    let mut c = H1Client::connect(inbound).await;
    let reply = c
        .request(
            client::req("GET", "http://svc/plain")
                .header(PEER, spiffe("default", "client"))
                .body(client::empty())
                .expect("request"),
        )
        .await;
    let seen = reply.echo();
    assert_eq!(seen.path, "/plain");
    assert_eq!(
        seen.header(PEER),
        None,
        "a plaintext client must not be able to claim an identity: {:?}",
        seen.headers
    );
    assert_ne!(seen.header("x-forwarded-proto"), Some("https"));

    // Plaintext HTTP/2 (prior knowledge) too.
    let h2 = H2Client::connect(inbound).await;
    let seen = h2.get("http://svc/plain-h2").await.echo();
    assert_eq!(seen.path, "/plain-h2");
    assert_eq!(seen.header(PEER), None);

    // mTLS on the same port: the identity is passed on.
    let reply = TlsClient::new(&m.ca.pem, Some(&m.client))
        .get(inbound, "/tls")
        .await
        .expect("mTLS on a permissive listener");
    let seen = reply.echo();
    assert_eq!(seen.path, "/tls");
    assert_eq!(
        seen.header(PEER),
        Some(spiffe("default", "client").as_str())
    );
    assert_eq!(seen.header("x-forwarded-proto"), Some("https"));
    server
        .wait_metric(
            HANDSHAKES,
            &[("name", "in"), ("side", "server"), ("result", "ok")],
            1.0,
        )
        .await;
}

#[tokio::test]
async fn a_server_rejecting_the_client_sidecars_certificate_is_an_upstream_tls_failure() {
    // TLS 1.3: the server's alert comes after the client finished its handshake, on the first
    // read; it is a TLS failure to show the operator, not an endpoint resetting.
    let m = mesh();
    let other_ca = m.pki.ca("other-ca");
    let stranger = m.pki.workload(
        &other_ca,
        "stranger",
        "client",
        &spiffe("default", "client"),
        &[],
    );
    let echo = Echo::named("app").await;
    let (inbound, outbound) = (free_addr(), free_addr());
    let _server = Proxy::start(&server_yaml(
        inbound,
        "http",
        &listener_tls("strict", &m.server, &[&m.ca.pem], "1s"),
        echo.addr(),
        "http1",
        "",
    ))
    .await;
    let client = Proxy::start(&client_yaml(
        outbound,
        "http",
        inbound,
        "http1",
        &cluster_tls(Some(&stranger), &m.ca.pem, &[&spiffe("default", "server")]),
    ))
    .await;
    let reply = H1Client::connect(outbound)
        .await
        .get("http://svc/rejected")
        .await;
    assert_eq!(reply.status, StatusCode::BAD_GATEWAY, "{reply:?}");
    assert_eq!(
        reply.header("x-pillion-error"),
        Some("upstream-tls-failure"),
        "{reply:?}"
    );
    assert!(
        client.log_text().contains("fatal alert"),
        "a WARN names the alert:\n{}",
        client.log_text()
    );
}

#[tokio::test]
async fn health_checks_of_an_mtls_cluster_speak_its_tls() {
    // A plaintext probe of an mTLS port fails every time: the endpoint would look down.
    let m = mesh();
    let echo = Echo::named("app").await;
    let (inbound, outbound) = (free_addr(), free_addr());
    let server = Proxy::start(&server_yaml(
        inbound,
        "http",
        &listener_tls("strict", &m.server, &[&m.ca.pem], "1s"),
        echo.addr(),
        "http1",
        "",
    ))
    .await;
    let tls = cluster_tls(Some(&m.client), &m.ca.pem, &[&spiffe("default", "server")]);
    let client = Proxy::start(&client_yaml(
        outbound,
        "http",
        inbound,
        "http1",
        &format!("{tls}\n    health_check: {{ http_path: /healthz, interval: 50ms }}"),
    ))
    .await;
    // Probes reached the app through the server sidecar's TLS.
    server
        .wait_metric(
            HANDSHAKES,
            &[("name", "in"), ("side", "server"), ("result", "ok")],
            3.0,
        )
        .await;
    let m = client.metrics().await;
    let state = |s: &str| {
        m.sum(
            "pillion_cluster_endpoints",
            &[("cluster", "mesh"), ("state", s)],
        )
    };
    assert_eq!(state("unhealthy"), 0.0, "{}", m.text);
    assert_eq!(state("available"), 1.0, "{}", m.text);
}

#[tokio::test]
async fn a_client_sidecar_refuses_a_server_with_the_wrong_identity_or_ca() {
    let m = mesh();
    let imposter = m.pki.workload(
        &m.ca,
        "imposter",
        "imposter",
        &spiffe("default", "imposter"),
        &["--dns", "imposter.internal"],
    );
    let other_ca = m.pki.ca("other-ca");
    let foreign = m.pki.workload(
        &other_ca,
        "foreign",
        "server",
        &spiffe("default", "server"),
        &[],
    );
    let echo = Echo::named("app").await;
    let (imposter_addr, foreign_addr, outbound) = (free_addr(), free_addr(), free_addr());
    let _imposter = Proxy::start(&server_yaml(
        imposter_addr,
        "http",
        &listener_tls("strict", &imposter, &[&m.ca.pem], "1s"),
        echo.addr(),
        "http1",
        "",
    ))
    .await;
    let _foreign = Proxy::start(&server_yaml(
        foreign_addr,
        "http",
        &listener_tls("strict", &foreign, &[&m.ca.pem], "1s"),
        echo.addr(),
        "http1",
        "",
    ))
    .await;
    let expect_server = spiffe("default", "server");
    let client = Proxy::start(&format!(
        r#"
listeners:
  - name: out
    address: {outbound}
    direction: outbound
    protocol: http
    routes:
      - match: {{ prefix: /imposter }}
        cluster: imposter
      - match: {{ prefix: /foreign }}
        cluster: foreign
      - match: {{ prefix: /lenient }}
        cluster: lenient
      - match: {{ prefix: /by-name }}
        cluster: by-name
      - match: {{ prefix: /wrong-name }}
        cluster: wrong-name
      - match: {{ prefix: /h2-imposter }}
        cluster: h2-imposter
clusters:
  - name: imposter
    endpoints: [{imposter_addr}]
    tls: {strict_id}
  - name: h2-imposter
    endpoints: [{imposter_addr}]
    protocol: http2
    tls: {strict_id}
  - name: foreign
    endpoints: [{foreign_addr}]
    tls: {strict_id}
  - name: lenient
    endpoints: [{imposter_addr}]
    tls: {lenient}
  - name: by-name
    endpoints: [{imposter_addr}]
    tls: {{ cert: {cc}, key: {ck}, ca: [{ca}], sni: imposter.internal }}
  - name: wrong-name
    endpoints: [{imposter_addr}]
    tls: {{ cert: {cc}, key: {ck}, ca: [{ca}], sni: nope.internal }}
"#,
        cc = yq(&m.client.cert),
        ck = yq(&m.client.key),
        ca = yq(&m.ca.pem),
        strict_id = cluster_tls(Some(&m.client), &m.ca.pem, &[&expect_server]),
        lenient = cluster_tls(
            Some(&m.client),
            &m.ca.pem,
            &["spiffe://cluster.local/ns/default/*"]
        ),
    ))
    .await;

    let mut c = H1Client::connect(outbound).await;
    // Control: the same server is fine for a cluster that accepts its identity (prefix match).
    let ok = c.get("http://svc/lenient").await;
    assert_eq!(ok.status, StatusCode::OK, "{}", ok.text());
    assert_eq!(
        ok.echo().header(PEER),
        Some(spiffe("default", "client").as_str())
    );

    // Without `identities`, the server is checked by hostname against `sni`.
    let ok = c.get("http://svc/by-name").await;
    assert_eq!(ok.status, StatusCode::OK, "{}", ok.text());
    assert_eq!(
        ok.echo().header(PEER),
        Some(spiffe("default", "client").as_str())
    );

    for path in ["/imposter", "/foreign", "/wrong-name"] {
        let reply = c.get(&format!("http://svc{path}")).await;
        assert_eq!(
            reply.status,
            StatusCode::BAD_GATEWAY,
            "{path}: {}",
            reply.text()
        );
        assert_eq!(
            reply.header("x-pillion-error"),
            Some("upstream-tls-failure"),
            "{path}: {:?}",
            reply.headers
        );
    }

    // Requests that wait on one attempt to open a shared HTTP/2 connection fail with its error.
    let waiting = (0..8).map(|i| async move {
        let mut c = H1Client::connect(outbound).await;
        c.get(&format!("http://svc/h2-imposter/{i}")).await
    });
    for reply in futures_util::future::join_all(waiting).await {
        assert_eq!(reply.status, StatusCode::BAD_GATEWAY, "{}", reply.text());
        assert_eq!(
            reply.header("x-pillion-error"),
            Some("upstream-tls-failure"),
            "{:?}",
            reply.headers
        );
    }

    // The log says who the server claimed to be and who was expected.
    let presented = spiffe("default", "imposter");
    eventually("the client sidecar's log names both identities", || {
        let log = client.log_text();
        let found = log
            .lines()
            .any(|l| l.contains(&presented) && l.contains(&expect_server));
        async move { found.then_some(()) }
    })
    .await;

    let cm = client.metrics().await;
    assert!(
        cm.sum(
            HANDSHAKES,
            &[
                ("name", "imposter"),
                ("side", "client"),
                ("result", "identity_mismatch")
            ]
        ) >= 1.0,
        "{}",
        cm.text
    );
    assert!(
        cm.sum(
            HANDSHAKES,
            &[
                ("name", "foreign"),
                ("side", "client"),
                ("result", "unknown_ca")
            ]
        ) >= 1.0,
        "{}",
        cm.text
    );
    assert!(
        cm.sum(
            HANDSHAKES,
            &[
                ("name", "wrong-name"),
                ("side", "client"),
                ("result", "bad_name")
            ]
        ) >= 1.0,
        "{}",
        cm.text
    );
}
