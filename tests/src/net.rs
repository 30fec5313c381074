//! Loopback addresses for configs, and waiting for a port to accept connections.

use std::net::{SocketAddr, TcpListener};
use std::sync::Mutex;
use std::time::Duration;

/// A loopback port chosen by the OS (port 0) and kept reserved for the life of the test process.
///
/// The reservation is a socket bound with `SO_REUSEADDR` that never listens: the proxy (whose
/// listeners also set `SO_REUSEADDR`) can still bind and listen on the port, but the kernel
/// no longer hands it out as the local port of an outgoing connection, and no other
/// `free_addr()` returns it. Releasing the port at once instead would race with both.
pub fn free_addr() -> SocketAddr {
    use socket2::{Domain, Socket, Type};
    static RESERVED: Mutex<Vec<Socket>> = Mutex::new(Vec::new());
    let socket = Socket::new(Domain::IPV4, Type::STREAM, None).expect("socket");
    socket.set_reuse_address(true).expect("SO_REUSEADDR");
    let any: SocketAddr = "127.0.0.1:0".parse().expect("address");
    socket.bind(&any.into()).expect("bind 127.0.0.1:0");
    let addr = socket
        .local_addr()
        .ok()
        .and_then(|a| a.as_socket())
        .expect("local_addr");
    RESERVED
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .push(socket);
    addr
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
