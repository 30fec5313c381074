//! The access-log line of one request, filled in as the request goes and written on drop.

use pillion_telemetry::access_log::{AccessLog, Entry};
use std::sync::{
    atomic::{AtomicU64, Ordering},
    Arc,
};
use tokio::time::Instant;

/// A request's access-log line; written when dropped (when the response body ends, or when
/// the response is abandoned).
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
        entry.duration = self.started.elapsed();
        entry.bytes_received = self.received.load(Ordering::Relaxed);
        self.log.log(entry);
    }
}
