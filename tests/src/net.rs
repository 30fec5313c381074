//! Loopback addresses for configs, and waiting for a port to accept connections.

use std::net::{SocketAddr, TcpListener};
use std::time::Duration;

/// A loopback address whose port was free a moment ago: bind port 0, read it, release it.
pub fn free_addr() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    l.local_addr().expect("local_addr")
}

/// Whether `addr` can be bound right now (nobody is listening on it).
pub fn is_bindable(addr: SocketAddr) -> bool {
    TcpListener::bind(addr).is_ok()
}

/// Polls until a TCP connection to `addr` succeeds, panicking after `limit`.
pub async fn wait_for_port(addr: SocketAddr, limit: Duration) {
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        if tokio::net::TcpStream::connect(addr).await.is_ok() {
            return;
        }
        if tokio::time::Instant::now() > deadline {
            panic!("{addr} did not accept connections within {limit:?}");
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Reads an HTTP/1.x response head (up to the blank line) from a raw stream.
///
/// Returns the head as text and any bytes read past it.
pub async fn read_response_head(
    stream: &mut (impl tokio::io::AsyncRead + Unpin),
) -> (String, Vec<u8>) {
    use tokio::io::AsyncReadExt;
    let mut buf = Vec::new();
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let rest = buf.split_off(end + 4);
            return (String::from_utf8_lossy(&buf).into_owned(), rest);
        }
        let mut chunk = [0u8; 1024];
        let n = crate::within("reading a response head", stream.read(&mut chunk))
            .await
            .expect("read response head");
        assert!(
            n > 0,
            "EOF before the end of the response head: {:?}",
            String::from_utf8_lossy(&buf)
        );
        buf.extend_from_slice(&chunk[..n]);
    }
}
