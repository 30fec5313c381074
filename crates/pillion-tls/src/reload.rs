//! Polls certificate, key and CA files and rebuilds the TLS config that uses them on change.
//!
//! Every `reload_interval`, each watched file is read in full (they are a few KiB) and compared
//! with what was last seen. Reading through the path follows symlinks, so both a file rewritten
//! in place and the Kubernetes atomic swap (`cert.pem -> ..data/cert.pem`, `..data -> ..new`)
//! are seen; comparing contents rather than inode/mtime/size also catches two rewrites within
//! the filesystem's timestamp granularity that happen to keep the size.
//!
//! A change is applied once the files stop changing (two reads `settle` apart agree), so a
//! certificate and key rewritten one after the other load together instead of being rejected
//! as mismatched in between. A rejected change (a malformed or mismatched file, a certificate
//! outside its validity period, or CA bundles with no certificate within it) is logged at ERROR
//! and counted once; the old config keeps serving until the files change again.
//!
//! The task holds only a `Weak` to its owner and is also aborted when the owner is dropped.

use crate::{
    error::TlsError,
    material::{self, FileRead},
    metrics::{FileMetrics, Side},
};
use std::{path::PathBuf, sync::Weak, time::Duration};
use tokio::time::MissedTickBehavior;
use tracing::{debug, error, info};

/// The longest pause between the reads that confirm a change has settled.
const MAX_SETTLE: Duration = Duration::from_millis(100);

/// The shortest polling interval; anything shorter only burns CPU.
const MIN_INTERVAL: Duration = Duration::from_millis(10);

/// How many times a change may keep changing before it is loaded anyway.
const SETTLE_ROUNDS: usize = 10;

/// A TLS context whose config can be rebuilt from new file contents.
pub(crate) trait Reload: Send + Sync + 'static {
    /// Builds a config from the files (in the watcher's order) and swaps it in.
    fn reload(&self, files: &[FileRead]) -> Result<(), TlsError>;

    /// Its reload counters.
    fn file_metrics(&self) -> &FileMetrics;

    /// The listener or cluster name, for logs.
    fn name(&self) -> &str;

    /// Which side it is, for logs.
    fn side(&self) -> Side;
}

/// Owns the watcher task; dropping it stops the task.
#[derive(Debug)]
pub(crate) struct Watcher(tokio::task::AbortHandle);

/// Starts watching `paths`, whose contents were `loaded`, for the context behind `target`.
///
/// Returns `None` (no reloading) when `interval` is zero or when there is no tokio runtime
/// (for example when only validating a config). Intervals under 10ms count as 10ms.
pub(crate) fn spawn<T: Reload>(
    target: Weak<T>,
    paths: Vec<PathBuf>,
    loaded: Vec<FileRead>,
    interval: Duration,
) -> Option<Watcher> {
    if interval.is_zero() {
        return None;
    }
    let Ok(rt) = tokio::runtime::Handle::try_current() else {
        debug!("no tokio runtime; TLS files will not be reloaded");
        return None;
    };
    let task = rt.spawn(watch(target, paths, loaded, interval.max(MIN_INTERVAL)));
    Some(Watcher(task.abort_handle()))
}

/// The watcher loop; ends when `target` is gone.
pub(crate) async fn watch<T: Reload>(
    target: Weak<T>,
    paths: Vec<PathBuf>,
    mut last: Vec<FileRead>,
    interval: Duration,
) {
    let settle = interval.min(MAX_SETTLE);
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    // The first tick completes at once; the files were just loaded.
    tick.tick().await;
    loop {
        tick.tick().await;
        if target.strong_count() == 0 {
            return;
        }
        let mut now = material::read_files_async(&paths).await;
        if now == last {
            continue;
        }
        for _ in 0..SETTLE_ROUNDS {
            tokio::time::sleep(settle).await;
            let again = material::read_files_async(&paths).await;
            if again == now {
                break;
            }
            now = again;
        }
        if now == last {
            continue;
        }
        let Some(this) = target.upgrade() else {
            return;
        };
        match this.reload(&now) {
            Ok(()) => {
                info!(
                    tls = this.name(),
                    side = this.side().as_str(),
                    "reloaded changed TLS files"
                );
                this.file_metrics().reloaded(true);
            }
            Err(err) => {
                error!(
                    tls = this.name(),
                    side = this.side().as_str(),
                    error = %err,
                    "rejected changed TLS files; still using the previous ones"
                );
                this.file_metrics().reloaded(false);
            }
        }
        last = now;
    }
}

// === impl Watcher ===

impl Drop for Watcher {
    fn drop(&mut self) {
        self.0.abort();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::TlsMetrics;
    use std::sync::{
        atomic::{AtomicUsize, Ordering},
        Arc,
    };

    struct Counting {
        reloads: AtomicUsize,
        metrics: FileMetrics,
    }

    impl Reload for Counting {
        fn reload(&self, files: &[FileRead]) -> Result<(), TlsError> {
            self.reloads.fetch_add(1, Ordering::SeqCst);
            match &files[0] {
                Ok(b) if &**b == b"bad" => Err(TlsError::Config("bad".into())),
                _ => Ok(()),
            }
        }
        fn file_metrics(&self) -> &FileMetrics {
            &self.metrics
        }
        fn name(&self) -> &str {
            "test"
        }
        fn side(&self) -> Side {
            Side::Server
        }
    }

    async fn wait_for(mut f: impl FnMut() -> bool) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while !f() {
            assert!(tokio::time::Instant::now() < deadline, "timed out");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    #[tokio::test]
    async fn reloads_on_change_once_and_ends_when_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        std::fs::write(&path, b"one").unwrap();
        let paths = vec![path.clone()];
        let target = Arc::new(Counting {
            reloads: AtomicUsize::new(0),
            metrics: TlsMetrics::default().files("test", Side::Server, true),
        });
        let loaded = material::read_files(&paths);
        let task = tokio::spawn(watch(
            Arc::downgrade(&target),
            paths,
            loaded,
            Duration::from_millis(10),
        ));

        std::fs::write(&path, b"two").unwrap();
        wait_for(|| target.reloads.load(Ordering::SeqCst) == 1).await;
        // A rejected change is tried once, not on every tick.
        std::fs::write(&path, b"bad").unwrap();
        wait_for(|| target.reloads.load(Ordering::SeqCst) == 2).await;
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(target.reloads.load(Ordering::SeqCst), 2);
        // A vanished file is a change too.
        std::fs::remove_file(&path).unwrap();
        wait_for(|| target.reloads.load(Ordering::SeqCst) == 3).await;

        drop(target);
        tokio::time::timeout(Duration::from_secs(10), task)
            .await
            .expect("the watcher ends once its target is dropped")
            .unwrap();
    }
}
