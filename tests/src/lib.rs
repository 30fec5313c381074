//! Support code for the end-to-end tests: the real `pillion` binary, echo upstreams, clients.
//!
//! Every helper here drives real processes over real loopback sockets; nothing is mocked.

pub mod binary;
pub mod client;
pub mod echo;
pub mod metrics;
pub mod mtls;
pub mod net;
pub mod process;
pub mod proxy;
pub mod upstream;

use std::future::Future;
use std::time::Duration;

pub use binary::pillion_bin;
pub use client::{Body, H1Client, H2Client, Reply};
pub use echo::{Echo, EchoSeen};
pub use metrics::Metrics;
pub use net::{free_addr, wait_for_port};
pub use proxy::{pillion, Proxy};

/// A generous upper bound on any single step, so a broken proxy fails a test instead of hanging it.
pub const STEP: Duration = Duration::from_secs(30);

/// Awaits `fut`, panicking with `what` if it takes longer than [`STEP`].
pub async fn within<F: Future>(what: &str, fut: F) -> F::Output {
    within_for(STEP, what, fut).await
}

/// Awaits `fut`, panicking with `what` if it takes longer than `limit`.
pub async fn within_for<F: Future>(limit: Duration, what: &str, fut: F) -> F::Output {
    match tokio::time::timeout(limit, fut).await {
        Ok(out) => out,
        Err(_) => panic!("timed out after {limit:?}: {what}"),
    }
}

/// Polls `check` until it returns `Some`, panicking with `what` after [`STEP`].
pub async fn eventually<T, F, Fut>(what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + STEP;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        if tokio::time::Instant::now() > deadline {
            panic!("condition not reached within {STEP:?}: {what}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
