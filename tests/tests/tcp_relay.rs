//! Opaque TCP relay (`protocol: tcp`): bytes both ways, half-close, the tcp metrics, and a client
//! that leaves while the relay's endpoint is still being connected.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use pillion_tests::mtls::{cluster_tls, read_certs, spiffe, Pki};
use pillion_tests::upstream::Upstream;
use pillion_tests::{eventually, free_addr, within, Proxy};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::PrivateKeyDer;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::Semaphore;

/// Reads until EOF, then answers with the number of bytes read and closes.
async fn count_then_reply() -> Upstream {
    Upstream::tcp(|mut tcp| async move {
        let mut n = 0usize;
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            match tcp.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(k) => n += k,
            }
        }
        let _ = tcp.write_all(format!("read {n} bytes").as_bytes()).await;
        let _ = tcp.shutdown().await;
    })
    .await
}

#[tokio::test]
async fn half_close_reaches_upstream_which_still_answers() {
    let upstream = count_then_reply().await;
    let listen = free_addr();
    let proxy = Proxy::start(&format!(
        r#"
listeners:
  - name: db
    address: {listen}
    protocol: tcp
    cluster: db
clusters:
  - name: db
    endpoints: [{}]
"#,
        upstream.addr()
    ))
    .await;

    const SENT: usize = 300_000;
    let mut tcp = TcpStream::connect(listen).await.unwrap();
    let payload: Vec<u8> = (0..SENT).map(|i| (i % 256) as u8).collect();
    tcp.write_all(&payload).await.unwrap();
    tcp.shutdown().await.unwrap();
    let mut answer = String::new();
    within("reading the answer to EOF", tcp.read_to_string(&mut answer))
        .await
        .unwrap();
    let expected = format!("read {SENT} bytes");
    assert_eq!(answer, expected);
    drop(tcp);

    let labels = [("listener", "db"), ("cluster", "db")];
    let m = proxy
        .wait_metric("pillion_tcp_connections_closed_total", &labels, 1.0)
        .await;
    assert_eq!(
        m.sum("pillion_tcp_connections_opened_total", &labels),
        1.0,
        "{}",
        m.text
    );
    assert_eq!(
        m.sum("pillion_tcp_rx_bytes_total", &labels),
        SENT as f64,
        "{}",
        m.text
    );
    assert_eq!(
        m.sum("pillion_tcp_tx_bytes_total", &labels),
        expected.len() as f64,
        "{}",
        m.text
    );
    assert_eq!(upstream.connections(), 1);
}

#[tokio::test]
async fn interactive_bytes_flow_both_ways_on_several_connections() {
    // An echo upstream: whatever arrives goes straight back, until EOF.
    let upstream = Upstream::tcp(|tcp| async move {
        let (mut rd, mut wr) = tcp.into_split();
        let _ = tokio::io::copy(&mut rd, &mut wr).await;
        let _ = wr.shutdown().await;
    })
    .await;
    let listen = free_addr();
    let proxy = Proxy::start(&format!(
        r#"
listeners:
  - name: echo
    address: {listen}
    protocol: tcp
    cluster: echo
clusters:
  - name: echo
    endpoints: [{}]
"#,
        upstream.addr()
    ))
    .await;

    let mut total = 0usize;
    for c in 0..3 {
        let mut tcp = TcpStream::connect(listen).await.unwrap();
        for i in 0..4 {
            let line = format!("conn {c} line {i}\n");
            tcp.write_all(line.as_bytes()).await.unwrap();
            let mut back = vec![0u8; line.len()];
            within("echoed line", tcp.read_exact(&mut back))
                .await
                .unwrap();
            assert_eq!(back, line.as_bytes());
            total += line.len();
        }
        tcp.shutdown().await.unwrap();
        let mut rest = Vec::new();
        within("EOF after half-close", tcp.read_to_end(&mut rest))
            .await
            .unwrap();
        assert!(rest.is_empty(), "{rest:?}");
    }

    let labels = [("listener", "echo"), ("cluster", "echo")];
    let m = proxy
        .wait_metric("pillion_tcp_connections_closed_total", &labels, 3.0)
        .await;
    assert_eq!(m.sum("pillion_tcp_connections_opened_total", &labels), 3.0);
    assert_eq!(m.sum("pillion_tcp_rx_bytes_total", &labels), total as f64);
    assert_eq!(m.sum("pillion_tcp_tx_bytes_total", &labels), total as f64);
}

#[tokio::test]
async fn upstream_half_close_leaves_the_client_direction_open() {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    // Says hello, half-closes, then keeps reading what the client sends until EOF.
    let received = Arc::new(AtomicUsize::new(usize::MAX));
    let record = received.clone();
    let upstream = Upstream::tcp(move |mut tcp| {
        let record = record.clone();
        async move {
            let _ = tcp.write_all(b"hello, then silence").await;
            let _ = tcp.shutdown().await;
            let mut all = Vec::new();
            let _ = tcp.read_to_end(&mut all).await;
            record.store(all.len(), Ordering::SeqCst);
        }
    })
    .await;
    let listen = free_addr();
    let _proxy = Proxy::start(&format!(
        r#"
listeners:
  - name: rev
    address: {listen}
    protocol: tcp
    cluster: rev
clusters:
  - name: rev
    endpoints: [{}]
"#,
        upstream.addr()
    ))
    .await;

    let mut tcp = TcpStream::connect(listen).await.unwrap();
    let mut greeting = String::new();
    within(
        "the upstream's half-close reaching the client",
        tcp.read_to_string(&mut greeting),
    )
    .await
    .unwrap();
    assert_eq!(greeting, "hello, then silence");
    // The other direction is still open: the upstream gets all of this.
    let payload = vec![b'z'; 50_000];
    tcp.write_all(&payload).await.unwrap();
    tcp.shutdown().await.unwrap();
    pillion_tests::eventually("the upstream reading the client's bytes to EOF", || async {
        (received.load(Ordering::SeqCst) != usize::MAX).then_some(())
    })
    .await;
    assert_eq!(received.load(Ordering::SeqCst), payload.len());
}

// === a client that leaves while the endpoint is being connected ===
//
// An endpoint reached over TLS (the cluster originates it) that accepts TCP and holds the
// handshake keeps the relay's connect pending for as long as a test likes, deterministically.

/// The identity the held endpoints' certificates name.
fn endpoint_id() -> String {
    spiffe("default", "endpoint")
}

/// A proxy whose `tcp` and `auto` listeners relay to one endpoint.
struct RelayProxy {
    proxy: Proxy,
    tcp: SocketAddr,
    auto: SocketAddr,
}

/// A proxy with a `tcp` and an `auto` listener relaying to `endpoint` over TLS, with a JSON access
/// log at `log` and a connect timeout far longer than any test step.
async fn relay_over_tls(endpoint: SocketAddr, ca: &Path, log: &Path) -> RelayProxy {
    let (tcp, auto) = (free_addr(), free_addr());
    let tls = cluster_tls(None, ca, &[&endpoint_id()]);
    let proxy = Proxy::start(&format!(
        r#"
access_log:
  path: {log}
listeners:
  - name: tcp
    address: {tcp}
    protocol: tcp
    cluster: held
  - name: auto
    address: {auto}
    protocol: auto
    cluster: held
clusters:
  - name: held
    endpoints: [{endpoint}]
    connect_timeout: 10m
    tls: {tls}
"#,
        log = log.display()
    ))
    .await;
    RelayProxy { proxy, tcp, auto }
}

/// The TCP lines of the access log.
fn tcp_lines(path: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .filter(|l: &serde_json::Value| l["protocol"] == "TCP")
        .collect()
}

#[tokio::test]
async fn a_client_gone_while_the_endpoint_is_connecting_cancels_the_connect() {
    let pki = Pki::new();
    let ca = pki.ca("ca");
    // Reads the proxy's ClientHello and never answers; counts the connections the proxy closed.
    let closed = Arc::new(AtomicUsize::new(0));
    let count = closed.clone();
    let endpoint = Upstream::tcp(move |mut tcp| {
        let count = count.clone();
        async move {
            let mut buf = [0u8; 4096];
            while let Ok(1..) = tcp.read(&mut buf).await {}
            count.fetch_add(1, Ordering::SeqCst);
        }
    })
    .await;
    let dir = tempfile::tempdir().expect("tempdir");
    let log = dir.path().join("access.log");
    let relay = relay_over_tls(endpoint.addr(), &ca.pem, &log).await;

    // A client that closes (FIN), then one that resets (RST), each while its relay waits for
    // the endpoint's handshake, without having sent a byte.
    for (n, reset) in [(1, false), (2, true)] {
        let client = TcpStream::connect(relay.tcp).await.expect("connect");
        eventually("the relay connecting to its endpoint", || async {
            (endpoint.connections() == n).then_some(())
        })
        .await;
        if reset {
            socket2::SockRef::from(&client)
                .set_linger(Some(Duration::ZERO))
                .expect("SO_LINGER 0");
        }
        drop(client);
        // Without the cancel, the connect would go on to its 10 minute timeout.
        eventually("the relay dropping its pending connect", || async {
            (closed.load(Ordering::SeqCst) == n).then_some(())
        })
        .await;
        let lines = eventually("the connection's access-log line", || {
            let lines = tcp_lines(&log);
            async move { (lines.len() == n).then_some(lines) }
        })
        .await;
        let line = &lines[n - 1];
        assert_eq!(line["response_flags"], "DC", "reset: {reset}: {line}");
        assert_eq!(line["bytes_received"], 0, "{line}");
        assert_eq!(line["bytes_sent"], 0, "{line}");
        assert!(line["upstream_host"].is_null(), "{line}");
    }
    let labels = [("listener", "tcp"), ("cluster", "held")];
    let m = relay
        .proxy
        .wait_metric("pillion_tcp_connections_closed_total", &labels, 2.0)
        .await;
    assert_eq!(m.sum("pillion_tcp_connections_active", &labels), 0.0);
}

#[tokio::test]
async fn bytes_and_a_half_close_sent_while_the_endpoint_is_connecting_are_still_relayed() {
    let pki = Pki::new();
    let ca = pki.ca("ca");
    let cert = pki.workload(&ca, "endpoint", "endpoint", &endpoint_id(), &[]);
    let key = PrivateKeyDer::from_pem_file(&cert.key).expect("endpoint key");
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("versions")
    .with_no_client_auth()
    .with_single_cert(read_certs(&cert.cert), key)
    .expect("server config");
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    // Accepts TCP, holds the handshake until the test releases it, then reads to EOF and
    // answers with what it read.
    let release = Arc::new(Semaphore::new(0));
    let held = release.clone();
    let endpoint = Upstream::tcp(move |tcp| {
        let (held, acceptor) = (held.clone(), acceptor.clone());
        async move {
            let Ok(permit) = held.acquire().await else {
                return;
            };
            permit.forget();
            let Ok(mut tls) = acceptor.accept(tcp).await else {
                return;
            };
            let mut got = Vec::new();
            if tls.read_to_end(&mut got).await.is_err() {
                return;
            }
            let answer = format!("read {:?}", String::from_utf8_lossy(&got));
            let _ = tls.write_all(answer.as_bytes()).await;
            let _ = tls.shutdown().await;
        }
    })
    .await;
    let dir = tempfile::tempdir().expect("tempdir");
    let log = dir.path().join("access.log");
    let relay = relay_over_tls(endpoint.addr(), &ca.pem, &log).await;

    // On the `auto` listener the bytes were read by protocol detection first.
    for (n, (listener, addr)) in [("tcp", relay.tcp), ("auto", relay.auto)]
        .into_iter()
        .enumerate()
    {
        let mut client = TcpStream::connect(addr).await.expect("connect");
        client.write_all(b"hello\n").await.expect("write");
        client.shutdown().await.expect("half-close");
        eventually("the relay connecting to its endpoint", || async {
            (endpoint.connections() == n + 1).then_some(())
        })
        .await;
        let labels = [("listener", listener), ("cluster", "held")];
        // The relay has read the bytes while its connect is pending (the EOF came right behind).
        relay
            .proxy
            .wait_metric("pillion_tcp_rx_bytes_total", &labels, 6.0)
            .await;
        release.add_permits(1);
        let mut answer = String::new();
        within("the answer, to EOF", client.read_to_string(&mut answer))
            .await
            .expect("read");
        assert_eq!(answer, r#"read "hello\n""#, "{listener}");
        let lines = eventually("the connection's access-log line", || {
            let lines = tcp_lines(&log);
            async move { (lines.len() == n + 1).then_some(lines) }
        })
        .await;
        let line = &lines[n];
        assert_eq!(line["listener"], listener, "{line}");
        assert_eq!(line["response_flags"], "-", "{line}");
        assert_eq!(line["bytes_received"], 6, "{line}");
        assert_eq!(line["upstream_host"], endpoint.addr().to_string(), "{line}");
    }
}

// === a reset mid-relay, flagged by the side that reset ===

/// Drops `tcp` with SO_LINGER 0: the peer gets a reset, not a FIN.
fn reset(tcp: TcpStream) {
    socket2::SockRef::from(&tcp)
        .set_linger(Some(Duration::ZERO))
        .expect("SO_LINGER 0");
    drop(tcp);
}

#[tokio::test]
async fn a_reset_mid_relay_is_logged_against_the_side_that_reset_it() {
    // Echoes one message; then, on the second connection, resets its end.
    let endpoint = Upstream::tcp(|mut tcp| async move {
        let mut buf = [0u8; 64];
        let Ok(n @ 1..) = tcp.read(&mut buf).await else {
            return;
        };
        let _ = tcp.write_all(&buf[..n]).await;
        if &buf[..n] == b"then reset" {
            reset(tcp);
        } else {
            while let Ok(1..) = tcp.read(&mut buf).await {}
        }
    })
    .await;
    let dir = tempfile::tempdir().expect("tempdir");
    let log = dir.path().join("access.log");
    let listen = free_addr();
    let _proxy = Proxy::start(&format!(
        "access_log:\n  path: {}\nlisteners:\n  - name: db\n    address: {listen}\n    protocol: tcp\n    cluster: db\nclusters:\n  - name: db\n    endpoints: [{}]\n",
        log.display(),
        endpoint.addr()
    ))
    .await;

    // The client resets a relay in full flow: its own doing, `DC`, not the endpoint's `UR`.
    // The endpoint resets the next one: `UR`.
    for (n, message, flag) in [(1, &b"hello"[..], "DC"), (2, b"then reset", "UR")] {
        let mut client = TcpStream::connect(listen).await.expect("connect");
        client.write_all(message).await.expect("write");
        let mut echoed = vec![0u8; message.len()];
        within("the echo through the relay", client.read_exact(&mut echoed))
            .await
            .expect("echo");
        assert_eq!(echoed, message);
        if flag == "DC" {
            reset(client);
        } else {
            // The endpoint's reset reaches the client as the end of its connection.
            let mut rest = Vec::new();
            let _ = within("the relay closing", client.read_to_end(&mut rest)).await;
        }
        let lines = eventually("the connection's access-log line", || {
            let lines = tcp_lines(&log);
            async move { (lines.len() == n).then_some(lines) }
        })
        .await;
        let line = &lines[n - 1];
        assert_eq!(line["response_flags"], flag, "{line}");
        assert_eq!(line["upstream_host"], endpoint.addr().to_string(), "{line}");
        assert_eq!(line["bytes_received"], message.len(), "{line}");
    }
}
