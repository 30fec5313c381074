//! Pillion's telemetry: the Prometheus metric families and the tracing subscriber.
//!
//! Families are registered once at start. The data path never looks a metric up by label at
//! request time: the proxy resolves the label sets it needs when the config is compiled and keeps
//! the returned handles (atomic counters), so a request only increments.

pub mod access_log;
mod metrics;
mod process;
mod tracing_setup;

pub use self::metrics::*;
pub use self::process::{register_process_metrics, ProcessStats};
pub use self::tracing_setup::{init_tracing, LogControl, LogFormat};
