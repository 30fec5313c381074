//! The TCP relay: bytes both ways between a downstream connection and a cluster endpoint.

use crate::{
    cluster::Cluster,
    http::ProxyError,
    io::{CountedIo, PrefixedIo},
};
use bytes::BytesMut;
use pillion_layers::{balance::Pick, outlier::Outcome as EndpointOutcome};
use pillion_telemetry::TcpStats;
use pillion_tls::MaybeTls;
use std::{
    future::{poll_fn, Future},
    mem::MaybeUninit,
    net::SocketAddr,
    pin::{pin, Pin},
    task::Poll,
    time::Duration,
};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Instant;
use tracing::{debug, warn};

/// A direction's first buffer: small, so the many quiet connections of a sidecar stay cheap.
const BUF_START: usize = 16 * 1024;
/// The largest buffer a direction grows to when its reads keep filling the buffer (bulk
/// transfers). Reading everything the kernel has queued in one call halves the relay's CPU per
/// byte against 256 KiB; 1 MiB is also Envoy's default per-connection buffer limit.
const BUF_MAX: usize = 1024 * 1024;
/// The most a client's bytes kept while its endpoint is being connected; past it the relay stops
/// reading (and so watching) the client until the endpoint is connected.
const EARLY_MAX: usize = BUF_START;

/// How a relay went, for the access log.
#[derive(Debug, Default, Clone, Copy)]
pub struct Outcome {
    /// The endpoint relayed to.
    pub upstream: Option<SocketAddr>,
    /// Bytes received from the downstream client.
    pub rx: u64,
    /// Bytes sent to the downstream client.
    pub tx: u64,
    /// Why the relay did not happen, or was cut by the endpoint's side.
    pub error: Option<ProxyError>,
    /// The client went away: it closed before sending a byte, or reset, while its endpoint was
    /// being connected (and the connect was dropped), or its connection failed mid-relay.
    pub downstream_closed: bool,
}

/// Which of the two connections given to [`copy_bidirectional`] an I/O error came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    /// The first (the downstream client, in a relay).
    A,
    /// The second (the endpoint).
    B,
}

/// An I/O error that ended a [`copy_bidirectional`], and the side whose read or write failed.
#[derive(Debug, thiserror::Error)]
#[error("{side:?} side: {source}")]
pub struct CopyError {
    pub side: Side,
    #[source]
    pub source: std::io::Error,
}

/// A connection to an endpoint of a relay's cluster, and the bytes already read from it.
pub struct Opened {
    /// Held for the whole relay, so the balancer counts the connection in flight.
    _pick: Pick,
    addr: SocketAddr,
    /// The endpoint's connection.
    pub io: MaybeTls,
    /// Bytes read from the endpoint before the relay began, sent to the client first.
    pub early: BytesMut,
}

/// Why no endpoint connection could be opened.
#[derive(Debug, Clone, Copy)]
pub struct Failed {
    upstream: Option<SocketAddr>,
    error: ProxyError,
}

// === impl Outcome ===

impl Outcome {
    /// The access log's response flag (Envoy's short codes): `DC` (downstream connection
    /// termination) for a client gone before its endpoint was connected or reset mid-relay.
    pub fn flag(&self) -> &'static str {
        if self.downstream_closed {
            return "DC";
        }
        self.error.map_or("-", ProxyError::flag)
    }
}

/// Picks an endpoint of `cluster` and connects to it within its connect timeout.
pub async fn open(cluster: &Cluster) -> Result<Opened, Failed> {
    let Some((pick, ep)) = cluster.pick() else {
        warn!(cluster = cluster.name(), "no endpoint to relay to; closing");
        return Err(Failed {
            upstream: None,
            error: ProxyError::NoHealthyEndpoint,
        });
    };
    match cluster.connect(&ep).await {
        Ok(io) => Ok(Opened {
            _pick: pick,
            addr: ep.addr,
            io,
            early: BytesMut::new(),
        }),
        Err(err) => {
            warn!(cluster = cluster.name(), endpoint = %ep.addr, %err, "connect failed; closing");
            pick.record(Duration::ZERO, EndpointOutcome::GatewayError);
            Err(Failed {
                upstream: Some(ep.addr),
                error: ProxyError::ConnectFailure,
            })
        }
    }
}

/// Relays `downstream` to an endpoint of `cluster` (connected by `upstream`, usually [`open`])
/// until both directions are done. A FIN from one side is passed on as a write shutdown while
/// the other direction keeps flowing.
///
/// While the endpoint is being connected, the client is watched (see [`connect_watching`]): one
/// that goes away first (closes before sending a byte, or resets) drops the connect and ends the
/// relay, as Envoy does, rather than reach the app as a connection opened and closed at once.
///
/// The relay ends early when `idle` resolves (the downstream moved no byte for the listener's
/// idle timeout).
pub async fn relay<I>(
    downstream: I,
    cluster: &Cluster,
    upstream: impl Future<Output = Result<Opened, Failed>>,
    stats: &TcpStats,
    idle: impl Future<Output = ()>,
) -> Outcome
where
    I: AsyncRead + AsyncWrite + Unpin,
{
    let mut outcome = Outcome::default();
    // NOTE: counted as bytes pass, so a relay cut short still reports what it moved.
    let mut downstream = CountedIo::new(downstream, stats.rx_bytes.clone(), stats.tx_bytes.clone());
    stats.opened.inc();
    stats.active.inc();
    let mut early = BytesMut::new();
    match connect_watching(&mut downstream, upstream, &mut early).await {
        None => {
            debug!(
                cluster = cluster.name(),
                "the client left before its endpoint was connected: connect dropped"
            );
            outcome.downstream_closed = true;
        }
        Some(Err(failed)) => {
            outcome.upstream = failed.upstream;
            outcome.error = Some(failed.error);
        }
        Some(Ok(opened)) => {
            outcome.upstream = Some(opened.addr);
            let mut upstream = PrefixedIo::new(opened.early, opened.io);
            // What the client sent while the endpoint was being connected goes first.
            let mut downstream = PrefixedIo::new(early, &mut downstream);
            let copy = copy_bidirectional(&mut downstream, &mut upstream);
            tokio::select! {
                copied = copy => match copied {
                    Ok((rx, tx)) => debug!(cluster = cluster.name(), rx, tx, "relay done"),
                    Err(err) => {
                        debug!(cluster = cluster.name(), %err, "relay ended with an error");
                        // NOTE: a client's reset is its own doing, not the endpoint's.
                        match err.side {
                            Side::A => outcome.downstream_closed = true,
                            Side::B => outcome.error = Some(ProxyError::UpstreamReset),
                        }
                    }
                },
                _ = idle => debug!(cluster = cluster.name(), "idle timeout: closing the relay"),
            }
        }
    }
    (outcome.rx, outcome.tx) = downstream.totals();
    stats.active.dec();
    stats.closed.inc();
    outcome
}

/// Awaits `connect` while watching `downstream`: `None` when the client closes its connection
/// before sending a byte, or fails, first; `connect` is dropped then.
///
/// Watching is reading: the bytes the client sends meanwhile (those of protocol detection
/// first, replayed by the stream) are kept in `early`, up to [`EARLY_MAX`], for the relay to send
/// first. An EOF after bytes is a half-close, which the relay passes on once connected.
///
/// NOTE: `connect` is polled first, so an endpoint connected already (during detection) costs
/// no read here. The downstream is read, not peeked: it may be TLS, or carry detection bytes.
async fn connect_watching<I, T>(
    downstream: &mut I,
    connect: impl Future<Output = T>,
    early: &mut BytesMut,
) -> Option<T>
where
    I: AsyncRead + Unpin,
{
    let mut connect = pin!(connect);
    let mut watching = true;
    poll_fn(|cx| {
        if let Poll::Ready(done) = connect.as_mut().poll(cx) {
            return Poll::Ready(Some(done));
        }
        while watching {
            // NOTE: on the stack, so a client that sends nothing costs no allocation.
            let mut scratch = [MaybeUninit::<u8>::uninit(); 4096];
            let mut buf = ReadBuf::uninit(&mut scratch);
            match Pin::new(&mut *downstream).poll_read(cx, &mut buf) {
                Poll::Pending => break,
                Poll::Ready(Err(err)) => {
                    debug!(%err, "the client's connection failed during the endpoint's connect");
                    return Poll::Ready(None);
                }
                Poll::Ready(Ok(())) if buf.filled().is_empty() => {
                    if early.is_empty() {
                        return Poll::Ready(None);
                    }
                    // NOTE: the relay reads this EOF again after `early`: a TCP or TLS stream
                    // that ended stays ended.
                    watching = false;
                }
                Poll::Ready(Ok(())) => {
                    early.extend_from_slice(buf.filled());
                    watching = early.len() < EARLY_MAX;
                }
            }
        }
        Poll::Pending
    })
    .await
}

/// Copies both ways until both directions reached EOF, passing each EOF on as a write shutdown
/// while the other direction keeps flowing. Returns the bytes copied (a to b, b to a), or the
/// first error and whose it was.
pub async fn copy_bidirectional<A, B>(a: &mut A, b: &mut B) -> Result<(u64, u64), CopyError>
where
    A: AsyncRead + AsyncWrite + Unpin,
    B: AsyncRead + AsyncWrite + Unpin,
{
    let (mut ar, mut aw) = tokio::io::split(a);
    let (mut br, mut bw) = tokio::io::split(b);
    tokio::try_join!(
        copy_one_way(&mut ar, &mut bw, [Side::A, Side::B]),
        copy_one_way(&mut br, &mut aw, [Side::B, Side::A])
    )
}

/// How long a grown buffer is kept after the last read that filled it.
///
/// NOTE: in a bulk transfer most reads are partial (whatever arrived since the last one), so
/// the buffer is not shrunk on a small read but only once no read has filled it for this long.
/// Shrinking on every small read resized the buffers of a 1 GB transfer about 130 times, and a
/// large buffer is memory of its own (mmap): each shrink gave pages back that the next growth
/// faulted in again, 6,400 page faults on a process's first transfer.
const SHRINK_AFTER: Duration = Duration::from_secs(1);

/// Copies `r` to `w` until EOF, then shuts `w` down. The buffer starts at [`BUF_START`] and
/// doubles, up to [`BUF_MAX`], each time a read fills it; it goes back to [`BUF_START`] at the
/// first small read once no read has filled it for [`SHRINK_AFTER`], so a bulk transfer that
/// turns quiet gives its memory back. An error is `r`'s or `w`'s, named by `[reader, writer]`.
async fn copy_one_way<R, W>(
    r: &mut R,
    w: &mut W,
    [reader, writer]: [Side; 2],
) -> Result<u64, CopyError>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let failed = |side| move |source| CopyError { side, source };
    let mut buf = vec![0u8; BUF_START];
    let mut sizer = BufSizer::default();
    let mut total = 0u64;
    loop {
        let n = r.read(&mut buf).await.map_err(failed(reader))?;
        if n == 0 {
            w.shutdown().await.map_err(failed(writer))?;
            return Ok(total);
        }
        w.write_all(&buf[..n]).await.map_err(failed(writer))?;
        total += n as u64;
        let len = buf.len();
        let next = sizer.next_len(len, n);
        if next > len {
            // Exactly the size asked for: `resize` alone would round the allocation up.
            buf.reserve_exact(next - len);
            buf.resize(next, 0);
        } else if next < len {
            buf.truncate(next);
            buf.shrink_to_fit();
        }
    }
}

/// Decides a direction's buffer size from the reads it sees.
#[derive(Debug, Default)]
struct BufSizer {
    /// When a read last filled the buffer.
    last_full: Option<Instant>,
}

// === impl BufSizer ===

impl BufSizer {
    /// The buffer size after a read of `n` bytes into a buffer of `len`.
    fn next_len(&mut self, len: usize, n: usize) -> usize {
        // NOTE: the clock is read only for reads into a grown buffer, and for full ones.
        self.next_len_at(len, n, Instant::now)
    }

    fn next_len_at(&mut self, len: usize, n: usize, now: impl FnOnce() -> Instant) -> usize {
        if n == len {
            self.last_full = Some(now());
            return if len < BUF_MAX { len * 2 } else { len };
        }
        if len == BUF_START || n >= len / 8 {
            return len;
        }
        // NOTE: a buffer above BUF_START was grown by a full read, so `last_full` is set.
        let now = now();
        let recent = self
            .last_full
            .is_some_and(|full| now.saturating_duration_since(full) < SHRINK_AFTER);
        if recent {
            len
        } else {
            BUF_START
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buffers_grow_under_bulk_reads_and_shrink_once_reads_stop_filling_them() {
        let t0 = Instant::now();
        let at = |ms| move || t0 + Duration::from_millis(ms);
        let mut sizer = BufSizer::default();
        let mut len = BUF_START;
        while len < BUF_MAX {
            let next = sizer.next_len_at(len, len, at(0));
            assert_eq!(next, len * 2);
            len = next;
        }
        assert_eq!(
            sizer.next_len_at(BUF_MAX, BUF_MAX, at(0)),
            BUF_MAX,
            "capped"
        );
        // Partial and small reads, as in any bulk transfer, keep it while reads still fill it.
        assert_eq!(sizer.next_len_at(BUF_MAX, BUF_MAX / 2, at(10)), BUF_MAX);
        for ms in 10..999 {
            assert_eq!(sizer.next_len_at(BUF_MAX, 100, at(ms)), BUF_MAX);
        }
        assert_eq!(sizer.next_len_at(BUF_MAX, BUF_MAX, at(999)), BUF_MAX);
        assert_eq!(sizer.next_len_at(BUF_MAX, 100, at(1998)), BUF_MAX);
        // A second without a full read: the next small read takes it back to the start size,
        // while one of an eighth or more still keeps it.
        assert_eq!(sizer.next_len_at(BUF_MAX, BUF_MAX / 8, at(2500)), BUF_MAX);
        assert_eq!(sizer.next_len_at(BUF_MAX, 100, at(2500)), BUF_START);
        assert_eq!(sizer.next_len_at(BUF_START, 1, at(2600)), BUF_START);
        // And it grows again from there.
        assert_eq!(
            sizer.next_len_at(BUF_START, BUF_START, at(2700)),
            BUF_START * 2
        );
        // A buffer grown and then left without a full read shrinks too.
        let mut sizer = BufSizer::default();
        assert_eq!(
            sizer.next_len_at(BUF_START, BUF_START, at(0)),
            BUF_START * 2
        );
        assert_eq!(sizer.next_len_at(BUF_START * 2, 1, at(1000)), BUF_START);
    }

    #[test]
    fn the_clock_is_not_read_for_small_buffers() {
        let mut sizer = BufSizer::default();
        let never = || -> Instant { panic!("clock read") };
        assert_eq!(sizer.next_len_at(BUF_START, 100, never), BUF_START);
        assert_eq!(sizer.next_len_at(BUF_MAX, BUF_MAX / 2, never), BUF_MAX);
    }
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn a_client_gone_before_its_endpoint_is_connected_drops_the_connect() {
        // Closed without a byte.
        let (client, mut downstream) = tokio::io::duplex(64);
        drop(client);
        let (connected, connect) = tokio::sync::oneshot::channel::<()>();
        let mut early = BytesMut::new();
        assert!(connect_watching(&mut downstream, connect, &mut early)
            .await
            .is_none());
        assert!(connected.is_closed(), "the connect is dropped");

        // Reset.
        struct Reset;
        impl AsyncRead for Reset {
            fn poll_read(
                self: Pin<&mut Self>,
                _: &mut std::task::Context<'_>,
                _: &mut ReadBuf<'_>,
            ) -> Poll<std::io::Result<()>> {
                Poll::Ready(Err(std::io::ErrorKind::ConnectionReset.into()))
            }
        }
        let (connected, connect) = tokio::sync::oneshot::channel::<()>();
        assert!(connect_watching(&mut Reset, connect, &mut early)
            .await
            .is_none());
        assert!(connected.is_closed(), "the connect is dropped");
    }

    #[tokio::test]
    async fn bytes_and_a_half_close_before_the_endpoint_is_connected_wait_for_it() {
        let (mut client, mut downstream) = tokio::io::duplex(64);
        client.write_all(b"hello").await.unwrap();
        client.shutdown().await.unwrap();
        let (connected, connect) = tokio::sync::oneshot::channel::<u8>();
        let mut early = BytesMut::new();
        let got = {
            let mut watching = pin!(connect_watching(&mut downstream, connect, &mut early));
            // The bytes and the EOF are read; the connect goes on.
            assert!(futures_util::poll!(&mut watching).is_pending());
            connected.send(7).unwrap();
            watching.await
        };
        assert_eq!(got, Some(Ok(7)));
        assert_eq!(&early[..], b"hello", "kept for the relay to send first");
    }

    #[tokio::test]
    async fn an_endpoint_connected_already_costs_no_read() {
        let (mut client, mut downstream) = tokio::io::duplex(64);
        client.write_all(b"hello").await.unwrap();
        let mut early = BytesMut::new();
        let connected = connect_watching(&mut downstream, async { 7 }, &mut early).await;
        assert_eq!(connected, Some(7));
        assert!(early.is_empty());
        let mut unread = [0; 5];
        downstream.read_exact(&mut unread).await.unwrap();
        assert_eq!(&unread, b"hello");
    }

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
