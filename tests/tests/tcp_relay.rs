//! Opaque TCP relay (`protocol: tcp`): bytes both ways, half-close, and the tcp metrics.

use pillion_tests::upstream::Upstream;
use pillion_tests::{free_addr, within, Proxy};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

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
