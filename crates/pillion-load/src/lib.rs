//! Pillion's HTTP load generator, run as `pillion bench` or in-process with [`run`].
//!
//! Each connection is its own hyper client connection (HTTP/1.1, or h2c with several streams),
//! driven by its own task that records latency into its own HdrHistogram; the histograms are
//! merged at the end. Without `--rate` the load is a closed loop (send when the previous response
//! is in); with it, an open loop whose latencies count from when each request was due, so stalls
//! are not hidden (coordinated omission correction, as in wrk2).

mod cli;
mod config;
mod report;
mod runner;
mod schedule;
mod transport;
mod worker;

pub use cli::{main, BenchArgs};
pub use config::{
    parse_duration, parse_header, parse_rate, LoadConfig, Protocol, Stop, Target, MAX_CONNECTIONS,
    MAX_RATE,
};
pub use report::{Errors, Latency, Mode, Report, StatusClasses};
pub use runner::{run, Load, INTERRUPT_GRACE};
