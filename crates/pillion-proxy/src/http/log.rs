//! The access-log line of one request, filled in as the request goes and written on drop.

use pillion_telemetry::access_log::{AccessLog, Entry};
use std::sync::{
    atomic::{AtomicU64, Ordering},
    Arc,
};
use tokio::time::Instant;

/// The response flag of a request whose client went away before its response was complete
/// (downstream connection termination, as in Envoy, and as the TCP relay flags a client gone
/// while its endpoint was connecting).
pub(crate) const DOWNSTREAM_GONE: &str = "DC";

/// A request's access-log line; written when dropped (when the response body ends, or when
/// the response is abandoned).
///
/// NOTE: the line gets its status when the response head is made, so a line dropped without one
/// belongs to a request whose client went away (an HTTP/1 hang-up, an HTTP/2 `RST_STREAM`) while
/// it was in flight: nothing was sent to the client. It is logged as Envoy logs it, status `0`
/// and flag `DC`.
pub struct PendingLog {
    pub(crate) entry: Entry,
    pub(crate) started: Instant,
    pub(crate) received: Arc<AtomicU64>,
    log: AccessLog,
}

// === impl PendingLog ===

impl PendingLog {
    pub(crate) fn new(log: AccessLog, entry: Entry, started: Instant) -> Self {
        Self {
            entry,
            started,
            received: Arc::new(AtomicU64::new(0)),
            log,
        }
    }
}

impl Drop for PendingLog {
    fn drop(&mut self) {
        let mut entry = std::mem::take(&mut self.entry);
        if entry.status.is_none() {
            entry.status = Some(0);
            entry.response_flags = DOWNSTREAM_GONE;
        }
        entry.duration = self.started.elapsed();
        entry.bytes_received = self.received.load(Ordering::Relaxed);
        self.log.log(entry);
    }
}
