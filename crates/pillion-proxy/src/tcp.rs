//! The TCP relay: bytes both ways between a downstream connection and a cluster endpoint.

use crate::{cluster::Cluster, http::ProxyError, io::CountedIo};
use pillion_layers::outlier::Outcome as EndpointOutcome;
use pillion_telemetry::TcpStats;
use std::{net::SocketAddr, time::Duration};
use tokio::io::{AsyncRead, AsyncWrite};
use tracing::{debug, warn};

/// A direction's first buffer: small, so the many quiet connections of a sidecar stay cheap.
const BUF_START: usize = 16 * 1024;
/// The largest buffer a direction grows to when its reads keep filling the buffer (bulk
/// transfers). Reading everything the kernel has queued in one call halves the relay's CPU per
/// byte against 256 KiB; 1 MiB is also Envoy's default per-connection buffer limit.
const BUF_MAX: usize = 1024 * 1024;

/// How a relay went, for the access log.
#[derive(Debug, Default, Clone, Copy)]
pub struct Outcome {
    /// The endpoint relayed to.
    pub upstream: Option<SocketAddr>,
    /// Bytes received from the downstream client.
    pub rx: u64,
    /// Bytes sent to the downstream client.
    pub tx: u64,
    /// Why the relay did not happen.
    pub error: Option<ProxyError>,
}

/// Relays `downstream` to an endpoint of `cluster` until both directions are done. A FIN from
/// one side is passed on as a write shutdown while the other direction keeps flowing.
///
/// The relay ends early when `idle` resolves (the downstream moved no byte for the listener's
/// idle timeout).
pub async fn relay<I>(
    downstream: I,
    cluster: &Cluster,
    stats: &TcpStats,
    idle: impl std::future::Future<Output = ()>,
) -> Outcome
where
    I: AsyncRead + AsyncWrite + Unpin,
{
    let mut outcome = Outcome::default();
    // NOTE: counted as bytes pass, so a relay cut short still reports what it moved.
    let mut downstream = CountedIo::new(downstream, stats.rx_bytes.clone(), stats.tx_bytes.clone());
    stats.opened.inc();
    stats.active.inc();
    // NOTE: the pick is held for the whole relay, so the balancer counts the connection in flight.
    match cluster.pick() {
        None => {
            warn!(cluster = cluster.name(), "no endpoint to relay to; closing");
            outcome.error = Some(ProxyError::NoHealthyEndpoint);
        }
        Some((pick, ep)) => {
            outcome.upstream = Some(ep.addr);
            match cluster.connect(&ep).await {
                Err(err) => {
                    warn!(cluster = cluster.name(), endpoint = %ep.addr, %err, "connect failed; closing");
                    pick.record(Duration::ZERO, EndpointOutcome::GatewayError);
                    outcome.error = Some(ProxyError::ConnectFailure);
                }
                Ok(mut upstream) => {
                    let copy = copy_bidirectional(&mut downstream, &mut upstream);
                    tokio::select! {
                        copied = copy => match copied {
                            Ok((rx, tx)) => debug!(cluster = cluster.name(), rx, tx, "relay done"),
                            Err(err) => {
                                debug!(cluster = cluster.name(), %err, "relay ended with an error");
                                outcome.error = Some(ProxyError::UpstreamReset);
                            }
                        },
                        _ = idle => debug!(cluster = cluster.name(), "idle timeout: closing the relay"),
                    }
                }
            }
        }
    }
    (outcome.rx, outcome.tx) = downstream.totals();
    stats.active.dec();
    stats.closed.inc();
    outcome
}

/// Copies both ways until both directions reached EOF, passing each EOF on as a write shutdown
/// while the other direction keeps flowing. Returns the bytes copied (a to b, b to a).
pub async fn copy_bidirectional<A, B>(a: &mut A, b: &mut B) -> std::io::Result<(u64, u64)>
where
    A: AsyncRead + AsyncWrite + Unpin,
    B: AsyncRead + AsyncWrite + Unpin,
{
    let (mut ar, mut aw) = tokio::io::split(a);
    let (mut br, mut bw) = tokio::io::split(b);
    tokio::try_join!(
        copy_one_way(&mut ar, &mut bw),
        copy_one_way(&mut br, &mut aw)
    )
}

/// Copies `r` to `w` until EOF, then shuts `w` down. The buffer starts at [`BUF_START`] and
/// doubles, up to [`BUF_MAX`], each time a read fills it; it halves again each time a read
/// uses less than an eighth of it, so a bulk transfer that turns quiet gives its memory back.
async fn copy_one_way<R, W>(r: &mut R, w: &mut W) -> std::io::Result<u64>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut buf = vec![0u8; BUF_START];
    let mut total = 0u64;
    loop {
        let n = r.read(&mut buf).await?;
        if n == 0 {
            w.shutdown().await?;
            return Ok(total);
        }
        w.write_all(&buf[..n]).await?;
        total += n as u64;
        let next = next_buf_len(buf.len(), n);
        if next != buf.len() {
            buf.resize(next, 0);
            buf.shrink_to_fit();
        }
    }
}

/// The buffer size after a read of `n` bytes into a buffer of `len`.
fn next_buf_len(len: usize, n: usize) -> usize {
    if n == len && len < BUF_MAX {
        len * 2
    } else if n < len / 8 && len > BUF_START {
        len / 2
    } else {
        len
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buffers_grow_under_bulk_reads_and_shrink_when_reads_turn_small() {
        let mut len = BUF_START;
        while len < BUF_MAX {
            let next = next_buf_len(len, len);
            assert_eq!(next, len * 2);
            len = next;
        }
        assert_eq!(next_buf_len(BUF_MAX, BUF_MAX), BUF_MAX, "capped");
        assert_eq!(
            next_buf_len(BUF_MAX, BUF_MAX / 2),
            BUF_MAX,
            "half full: kept"
        );
        let mut len = BUF_MAX;
        while len > BUF_START {
            len = next_buf_len(len, 100);
        }
        assert_eq!(
            len, BUF_START,
            "small reads bring it back to the start size"
        );
        assert_eq!(next_buf_len(BUF_START, 1), BUF_START);
    }
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn copies_both_ways_and_passes_half_close_on() {
        // client <-> (a | b) <-> server
        let (mut client, mut a) = tokio::io::duplex(4096);
        let (mut b, mut server) = tokio::io::duplex(4096);
        let relay = tokio::spawn(async move { copy_bidirectional(&mut a, &mut b).await });
        let big = vec![7u8; 1 << 20];
        let sent = big.clone();
        let writer = tokio::spawn(async move {
            client.write_all(&sent).await.unwrap();
            client.shutdown().await.unwrap();
            let mut back = Vec::new();
            client.read_to_end(&mut back).await.unwrap();
            back
        });
        // The server sees all of it, then EOF (the half-close), and can still answer.
        let mut got = Vec::new();
        server.read_to_end(&mut got).await.unwrap();
        assert_eq!(got, big);
        server.write_all(b"done").await.unwrap();
        server.shutdown().await.unwrap();
        assert_eq!(writer.await.unwrap(), b"done");
        assert_eq!(relay.await.unwrap().unwrap(), (1 << 20, 4));
    }
}
