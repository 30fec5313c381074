//! A whole run: resolve, connect, start one task per connection, merge their measurements.

use std::future::Future;
use std::io::Write;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, bail, Context};
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio::time::{timeout, Instant};

use crate::config::{LoadConfig, Protocol, Stop};
use crate::report::{Report, Stats};
use crate::transport::{Connection, Connector, HyperConnection, HyperConnector};
use crate::worker::{drive, Budget, Halt, Plan, Progress};

/// After an interrupt, how long requests in flight may still finish and be counted (at most the
/// `--timeout`); the ones still in flight then are dropped.
pub const INTERRUPT_GRACE: Duration = Duration::from_secs(1);

/// File descriptors kept aside for the runtime and stdio, beyond one per connection.
const SPARE_FDS: u64 = 32;

/// A load ready to run: the config is valid, the target resolved and a first connection open.
pub struct Load {
    config: LoadConfig,
    connector: Arc<HyperConnector>,
    first: HyperConnection,
}

// === impl Load ===

impl Load {
    /// Validates `config`, resolves the target and opens a first connection.
    ///
    /// Fails if the config is invalid, the process may not open that many connections, the
    /// host does not resolve or the first connection cannot be made.
    pub async fn connect(config: LoadConfig) -> anyhow::Result<Self> {
        config.validate()?;
        check_open_files(config.connections, open_files_limit())?;
        let addr = resolve(&config).await?;
        let connector = Arc::new(HyperConnector::new(addr, &config));
        let first = connect_first(&*connector, &config).await?;
        Ok(Self {
            config,
            connector,
            first,
        })
    }

    /// What may make the numbers mean less than they seem, known from the first connection.
    pub fn warnings(&self) -> Vec<String> {
        warnings(&self.config, self.first.max_streams())
    }

    /// Generates the load and reports what it measured. If `interrupt` completes first, sending
    /// stops, requests in flight get [`INTERRUPT_GRACE`], and the report (marked `interrupted`)
    /// covers what was measured until then.
    pub async fn run(self, interrupt: impl Future<Output = ()>) -> anyhow::Result<Report> {
        run_from(self.connector, &self.config, self.first, interrupt).await
    }
}

/// Generates the load `config` describes and reports what it measured.
///
/// Fails, before sending anything measured, if the config is invalid, the host does not resolve
/// or the first connection cannot be made. Errors after that are counted in the report.
pub async fn run(config: LoadConfig) -> anyhow::Result<Report> {
    Load::connect(config)
        .await?
        .run(std::future::pending())
        .await
}

async fn resolve(config: &LoadConfig) -> anyhow::Result<SocketAddr> {
    let target = &config.target;
    let mut addrs = tokio::net::lookup_host((target.host(), target.port()))
        .await
        .with_context(|| format!("cannot resolve {}", target.host()))?;
    addrs
        .next()
        .ok_or_else(|| anyhow!("cannot resolve {}: no addresses", target.host()))
}

/// The soft limit on open files (`ulimit -n`), if it can be read.
fn open_files_limit() -> Option<u64> {
    // NOTE: read from procfs, as the workspace forbids the `unsafe` of `getrlimit`; elsewhere
    // the limit is not checked, and connects past it fail (and are counted) instead.
    let limits = std::fs::read_to_string("/proc/self/limits").ok()?;
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    match line.split_whitespace().nth(3)? {
        "unlimited" => None,
        soft => soft.parse().ok(),
    }
}

/// Rejects more connections than the open-file limit allows, before any is opened.
fn check_open_files(connections: usize, limit: Option<u64>) -> anyhow::Result<()> {
    let Some(limit) = limit else {
        return Ok(());
    };
    let needed = (connections as u64).saturating_add(SPARE_FDS);
    if needed > limit {
        bail!(
            "--connections {connections} needs about {needed} open files, but this process may \
             open {limit} (raise it with `ulimit -n`, or use fewer connections)"
        );
    }
    Ok(())
}

fn warnings(config: &LoadConfig, server_max_streams: Option<usize>) -> Vec<String> {
    match server_max_streams {
        Some(max) if config.protocol == Protocol::Http2 && max < config.streams => vec![format!(
            "the server allows {max} concurrent streams per connection \
             (SETTINGS_MAX_CONCURRENT_STREAMS), fewer than --streams {}: at most {} are in \
             flight on each",
            config.streams,
            max.max(1)
        )],
        _ => Vec::new(),
    }
}

/// One connection first: if it fails, the rest will too, so say so rather than count errors.
async fn connect_first<C: Connector>(
    connector: &C,
    config: &LoadConfig,
) -> anyhow::Result<C::Conn> {
    let target = &config.target;
    timeout(config.timeout, connector.connect())
        .await
        .map_err(|_| {
            anyhow!(
                "cannot connect to {target}: timed out after {:?}",
                config.timeout
            )
        })?
        .with_context(|| format!("cannot connect to {target}"))
}

#[cfg(test)]
pub(crate) async fn run_with<C: Connector>(
    connector: Arc<C>,
    config: &LoadConfig,
) -> anyhow::Result<Report> {
    run_until(connector, config, std::future::pending()).await
}

#[cfg(test)]
pub(crate) async fn run_until<C: Connector>(
    connector: Arc<C>,
    config: &LoadConfig,
    interrupt: impl Future<Output = ()>,
) -> anyhow::Result<Report> {
    config.validate()?;
    let first = connect_first(&*connector, config).await?;
    run_from(connector, config, first, interrupt).await
}

async fn run_from<C: Connector>(
    connector: Arc<C>,
    config: &LoadConfig,
    first: C::Conn,
    interrupt: impl Future<Output = ()>,
) -> anyhow::Result<Report> {
    let origin = Instant::now();
    let measure_start = origin
        .checked_add(config.warmup)
        .context("--warmup is too long")?;
    let (deadline, budget) = match config.stop {
        Stop::Duration(d) => {
            let deadline = measure_start
                .checked_add(d)
                .context("--duration is too long")?;
            (Some(deadline), None)
        }
        Stop::Requests(n) => (None, Some(Budget::new(n))),
    };
    let plan = Arc::new(Plan {
        per_connection: config.in_flight_per_connection(),
        connections: config.connections,
        timeout: config.timeout,
        rate: config.rate,
        origin,
        measure_start,
        deadline,
        budget,
        halt: watch::Sender::new(Halt::Running),
    });

    // NOTE: dropping the sets (if this future is dropped) aborts the tasks.
    let mut tasks = JoinSet::new();
    let mut counters = Vec::with_capacity(config.connections);
    let mut first = Some(first);
    for slot in 0..config.connections {
        let progress = Arc::new(Progress::default());
        counters.push(progress.clone());
        tasks.spawn(drive(
            connector.clone(),
            plan.clone(),
            slot,
            first.take(),
            progress,
        ));
    }
    let mut progress_line = JoinSet::new();
    if config.progress {
        progress_line.spawn(show_progress(counters, plan.clone(), config.stop));
    }

    let mut total = Stats::new();
    let mut interrupt = std::pin::pin!(interrupt);
    let mut interrupted_at = None;
    loop {
        tokio::select! {
            joined = tasks.join_next() => match joined {
                Some(stats) => total.merge(&stats.context("a connection task failed")?)?,
                None => break,
            },
            () = &mut interrupt, if interrupted_at.is_none() => {
                interrupted_at = Some(Instant::now());
                plan.interrupt(INTERRUPT_GRACE.min(config.timeout));
            }
        }
    }
    if config.progress {
        progress_line.abort_all();
        // Erase the progress line.
        let _ = write!(std::io::stderr(), "\r\x1b[2K");
    }

    // The window runs until sending stopped (the end of `--duration`, or the interrupt), or
    // until the last measured request completed if that is later: responses counted are
    // divided by the time they took to come, not by the `--duration` asked for.
    let sending_ended = match (deadline, interrupted_at) {
        (Some(d), Some(i)) => Some(d.min(i)),
        (d, i) => d.or(i),
    };
    let end = sending_ended.max(total.last_end()).unwrap_or(measure_start);
    let duration = end.saturating_duration_since(measure_start);
    let mut report = total.report(duration, config.connections, config.rate);
    report.interrupted = interrupted_at.is_some();
    report.warnings = warnings(config, total.server_max_streams());
    Ok(report)
}

/// Rewrites one line on stderr each second: elapsed time, requests, current rate, errors.
async fn show_progress(counters: Vec<Arc<Progress>>, plan: Arc<Plan>, stop: Stop) {
    let second = Duration::from_secs(1);
    let mut tick = tokio::time::interval_at(plan.origin + second, second);
    let mut last = 0;
    loop {
        let now = tick.tick().await;
        let line = if now < plan.measure_start {
            let left = plan.measure_start - now;
            format!("warming up, {:.0}s left", left.as_secs_f64().ceil())
        } else {
            let (mut responses, mut errors) = (0, 0);
            for c in &counters {
                responses += c.responses.load(Ordering::Relaxed);
                errors += c.errors.load(Ordering::Relaxed);
            }
            let elapsed = (now - plan.measure_start).as_secs_f64();
            let of = match stop {
                Stop::Duration(d) => format!("{elapsed:.0}s/{:.0}s", d.as_secs_f64()),
                Stop::Requests(n) => format!("{elapsed:.0}s, {}/{n}", responses + errors),
            };
            let rate = responses.saturating_sub(last);
            last = responses;
            format!("[{of}] {responses} requests, {rate} req/s, {errors} errors")
        };
        // A closed or full stderr is no reason to stop the run.
        let _ = write!(std::io::stderr(), "\r\x1b[2K{line}");
    }
}

#[cfg(test)]
mod tests;
