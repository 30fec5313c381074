//! The TCP relay: bytes both ways between a downstream connection and a cluster endpoint.

use crate::{cluster::Cluster, http::ProxyError, io::CountedIo};
use pillion_layers::outlier::Outcome as EndpointOutcome;
use pillion_telemetry::TcpStats;
use std::{net::SocketAddr, time::Duration};
use tokio::io::{AsyncRead, AsyncWrite};
use tracing::{debug, warn};

/// Relay buffer size per direction: large enough for bulk transfers in few syscalls.
const BUF_SIZE: usize = 64 * 1024;

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
                    let copy = tokio::io::copy_bidirectional_with_sizes(
                        &mut downstream,
                        &mut upstream,
                        BUF_SIZE,
                        BUF_SIZE,
                    );
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
