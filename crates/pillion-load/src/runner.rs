//! A whole run: resolve, connect, start one task per connection, merge their measurements.

use std::io::Write;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, Context};
use tokio::task::JoinSet;
use tokio::time::{timeout, Instant};

use crate::config::{LoadConfig, Stop};
use crate::report::{Report, Stats};
use crate::transport::{Connector, HyperConnector};
use crate::worker::{drive, Budget, Plan, Progress};

/// Generates the load `config` describes and reports what it measured.
///
/// Fails, before sending anything measured, if the config is invalid, the host does not resolve
/// or the first connection cannot be made. Errors after that are counted in the report.
pub async fn run(config: LoadConfig) -> anyhow::Result<Report> {
    config.validate()?;
    let addr = resolve(&config).await?;
    run_with(Arc::new(HyperConnector::new(addr, &config)), &config).await
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

pub(crate) async fn run_with<C: Connector>(
    connector: Arc<C>,
    config: &LoadConfig,
) -> anyhow::Result<Report> {
    config.validate()?;
    let target = &config.target;
    // One connection first: if it fails, the rest will too, so say so rather than count errors.
    let first = timeout(config.timeout, connector.connect())
        .await
        .map_err(|_| {
            anyhow!(
                "cannot connect to {target}: timed out after {:?}",
                config.timeout
            )
        })?
        .with_context(|| format!("cannot connect to {target}"))?;

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
    while let Some(stats) = tasks.join_next().await {
        total.merge(&stats.context("a connection task failed")?)?;
    }
    let end = Instant::now();
    if config.progress {
        progress_line.abort_all();
        // Erase the progress line.
        let _ = write!(std::io::stderr(), "\r\x1b[2K");
    }

    let duration = match config.stop {
        Stop::Duration(d) => d,
        Stop::Requests(_) => end.saturating_duration_since(measure_start),
    };
    Ok(total.report(duration, config.connections, config.rate))
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
