//! One connection's loop: sends requests, closed or open loop, and records what comes back.

use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures_util::stream::{FuturesUnordered, StreamExt};
use tokio::time::{sleep_until, timeout, Instant};

use crate::report::{ErrorKind, Failure, Stats};
use crate::schedule::Schedule;
use crate::transport::{Connection, Connector, Exchange};

/// How early an open-loop request may be sent.
///
/// NOTE: tokio's timers round deadlines up to a millisecond tick and the I/O driver waits in
/// whole milliseconds, so a request sent on its timer could be up to ~2 ms late, and that
/// lateness of the generator's own clock would count as latency. Waking up to 2 ms early and
/// counting such a request from its send keeps the schedule's average rate exact and the
/// generator's timer out of the latencies.
const EARLY: Duration = Duration::from_millis(2);

/// What every connection task shares: fixed before the tasks start.
#[derive(Debug)]
pub(crate) struct Plan {
    /// Requests in flight at once on one connection.
    pub(crate) per_connection: usize,
    pub(crate) connections: usize,
    pub(crate) timeout: Duration,
    /// Total requests per second (open loop), or `None` (closed loop).
    pub(crate) rate: Option<f64>,
    /// When the run began: the warmup, then the measured window.
    pub(crate) origin: Instant,
    /// Requests meant to start before this are warmup: sent, not counted.
    pub(crate) measure_start: Instant,
    /// Requests meant to start at or after this are not sent (`--duration`).
    pub(crate) deadline: Option<Instant>,
    /// How many measured requests may be sent, over all connections (`--requests`).
    pub(crate) budget: Option<Budget>,
}

/// A shared count of measured requests left to send.
#[derive(Debug)]
pub(crate) struct Budget {
    limit: u64,
    taken: AtomicU64,
}

/// Live counts of one task, read by the progress line.
///
/// NOTE: one per task and aligned to a cache line, so tasks on different threads do not contend.
#[derive(Debug, Default)]
#[repr(align(64))]
pub(crate) struct Progress {
    pub(crate) responses: AtomicU64,
    pub(crate) errors: AtomicU64,
}

/// What to do with a request meant to start at some instant.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Admit {
    Warmup,
    Measured,
    Stop,
}

/// A request that has finished, one way or the other.
struct Done {
    result: Result<Exchange, Failure>,
    latency: Duration,
    measured: bool,
}

/// Pauses between failed connects, so a refused port does not spin.
#[derive(Debug, Default)]
struct Backoff {
    failures: u32,
}

// === impl Plan ===

impl Plan {
    /// Waits `pause`, or until the deadline if that comes first.
    async fn pause(&self, pause: Duration) {
        if !pause.is_zero() {
            let until = Instant::now() + pause;
            sleep_until(self.deadline.map_or(until, |d| d.min(until))).await;
        }
    }

    fn admit(&self, intended: Instant) -> Admit {
        if self.deadline.is_some_and(|deadline| intended >= deadline) {
            return Admit::Stop;
        }
        if intended < self.measure_start {
            return Admit::Warmup;
        }
        match &self.budget {
            Some(budget) if !budget.take() => Admit::Stop,
            _ => Admit::Measured,
        }
    }
}

// === impl Budget ===

impl Budget {
    pub(crate) fn new(limit: u64) -> Self {
        Self {
            limit,
            taken: AtomicU64::new(0),
        }
    }

    fn take(&self) -> bool {
        self.taken.fetch_add(1, Ordering::Relaxed) < self.limit
    }
}

// === impl Progress ===

impl Progress {
    fn record(&self, ok: bool) {
        let counter = if ok { &self.responses } else { &self.errors };
        counter.fetch_add(1, Ordering::Relaxed);
    }
}

// === impl Backoff ===

impl Backoff {
    /// No pause after the first failure, then 1 ms doubling up to 256 ms.
    fn next(&mut self) -> Duration {
        let pause = match self.failures {
            0 => Duration::ZERO,
            n => Duration::from_millis(1 << (n - 1).min(8)),
        };
        self.failures = self.failures.saturating_add(1);
        pause
    }

    fn reset(&mut self) {
        self.failures = 0;
    }
}

/// Runs one connection (`slot` of `plan.connections`) until the plan says stop and its last
/// request has finished. `conn` is an already open connection to start with, if any.
pub(crate) async fn drive<C: Connector>(
    connector: Arc<C>,
    plan: Arc<Plan>,
    slot: usize,
    mut conn: Option<C::Conn>,
    progress: Arc<Progress>,
) -> Stats {
    let mut stats = Stats::new();
    let mut schedule = plan
        .rate
        .map(|rate| Schedule::new(plan.origin, rate, slot, plan.connections));
    let mut in_flight = FuturesUnordered::new();
    let mut backoff = Backoff::default();
    let mut sending = true;
    // Whether the connection in use (or the one just lost) has answered anything. A target
    // that takes connections and then fails every request on them (h2c to an HTTP/1.1-only
    // server) is reconnected to with the backoff of a failed connect, not as fast as it fails.
    let mut answered = true;

    loop {
        // Send whatever may be sent now.
        while sending && in_flight.len() < plan.per_connection {
            if !answered && conn.as_ref().is_none_or(|c| c.is_closed()) {
                // NOTE: once per lost connection; the next one starts unanswered again.
                answered = true;
                plan.pause(backoff.next()).await;
            }
            let now = Instant::now();
            // Open loop: a request sent late (its connection was busy, or stalled) counts its
            // latency from when it was due, so the stall shows up in the latency instead of
            // being hidden by sending less. One sent early (see `EARLY`) counts from the send.
            let (due, intended) = match &schedule {
                Some(s) if s.due() > now + EARLY => break,
                Some(s) => (s.due(), s.due().min(now)),
                None => (now, now),
            };
            if let (Some(s), Some(deadline)) = (&schedule, plan.deadline) {
                if now >= deadline {
                    // The window is over. Whatever fell due in it and is still unsent (the
                    // connection was busy: the target fell behind the rate) is not sent now,
                    // which would stretch the run without end, but counted, so the shortfall
                    // shows.
                    stats.record_missed(s.unsent_between(plan.measure_start, deadline));
                    sending = false;
                    break;
                }
            }
            let measured = match plan.admit(due) {
                Admit::Stop => {
                    sending = false;
                    break;
                }
                Admit::Warmup => false,
                Admit::Measured => true,
            };
            if let Some(s) = &mut schedule {
                s.advance();
            }

            match ensure_ready(&*connector, conn.take(), plan.timeout).await {
                Ok((c, fresh)) => {
                    if fresh {
                        answered = false;
                    }
                    let c = conn.insert(c);
                    in_flight.push(timed(c.send(), intended, measured, plan.timeout));
                }
                Err(error) => {
                    if measured {
                        stats.record_failure(Failure {
                            kind: ErrorKind::Connect,
                            message: Some(format!("{error:#}")),
                        });
                        progress.record(false);
                    }
                    plan.pause(backoff.next()).await;
                }
            }
        }

        if !sending && in_flight.is_empty() {
            return stats;
        }

        // Wait for a response, or for the next request to fall due.
        let wake = if sending && in_flight.len() < plan.per_connection {
            schedule
                .as_ref()
                .map(|s| s.due().checked_sub(EARLY).unwrap_or(s.due()))
        } else {
            None
        };
        tokio::select! {
            biased;
            Some(done) = in_flight.next(), if !in_flight.is_empty() => {
                match done.result {
                    Ok(exchange) => {
                        answered = true;
                        backoff.reset();
                        if done.measured {
                            stats.record_response(exchange.status, exchange.body_bytes, done.latency);
                            progress.record(true);
                        }
                    }
                    Err(failure) => {
                        if done.measured {
                            stats.record_failure(failure);
                            progress.record(false);
                        }
                        // An HTTP/1.1 connection that lost a request may still deliver its
                        // response later: start afresh. HTTP/2 resets just the stream.
                        if conn.as_ref().is_some_and(|c| !c.multiplexed()) {
                            conn = None;
                        }
                    }
                }
            }
            () = sleep_until(wake.unwrap_or(Instant::now())), if wake.is_some() => {}
            // NOTE: unreachable: with nothing in flight and nothing scheduled, the loop above
            // either sent a request or stopped sending.
            else => return stats,
        }
    }
}

/// A connection ready for a request: `conn` if it is still usable, else a new one (`true`).
async fn ensure_ready<C: Connector>(
    connector: &C,
    conn: Option<C::Conn>,
    limit: Duration,
) -> anyhow::Result<(C::Conn, bool)> {
    if let Some(mut c) = conn {
        // A peer that closes an idle or `connection: close` connection is not an error.
        if !c.is_closed() && matches!(timeout(limit, c.ready()).await, Ok(Ok(()))) {
            return Ok((c, false));
        }
    }
    let fresh = timeout(limit, connector.connect())
        .await
        .map_err(|_| anyhow::anyhow!("connect timed out after {limit:?}"))??;
    Ok((fresh, true))
}

/// Bounds one exchange by the timeout, and measures it from when it was meant to start.
async fn timed<F>(exchange: F, intended: Instant, measured: bool, limit: Duration) -> Done
where
    F: Future<Output = Result<Exchange, Failure>>,
{
    let result = timeout(limit, exchange)
        .await
        .unwrap_or_else(|_| Err(ErrorKind::Timeout.into()));
    Done {
        result,
        latency: intended.elapsed(),
        measured,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan(origin: Instant) -> Plan {
        Plan {
            per_connection: 1,
            connections: 1,
            timeout: Duration::from_secs(1),
            rate: None,
            origin,
            measure_start: origin + Duration::from_secs(1),
            deadline: Some(origin + Duration::from_secs(2)),
            budget: None,
        }
    }

    #[test]
    fn admission_follows_warmup_and_deadline() {
        let origin = Instant::now();
        let plan = plan(origin);
        let at = |ms| origin + Duration::from_millis(ms);
        assert_eq!(plan.admit(at(0)), Admit::Warmup);
        assert_eq!(plan.admit(at(999)), Admit::Warmup);
        assert_eq!(plan.admit(at(1000)), Admit::Measured);
        assert_eq!(plan.admit(at(1999)), Admit::Measured);
        assert_eq!(plan.admit(at(2000)), Admit::Stop);
    }

    #[test]
    fn admission_spends_the_budget_on_measured_requests_only() {
        let origin = Instant::now();
        let plan = Plan {
            deadline: None,
            budget: Some(Budget::new(2)),
            ..plan(origin)
        };
        let warm = origin;
        let hot = origin + Duration::from_secs(1);
        assert_eq!(plan.admit(warm), Admit::Warmup);
        assert_eq!(plan.admit(hot), Admit::Measured);
        assert_eq!(plan.admit(warm), Admit::Warmup);
        assert_eq!(plan.admit(hot), Admit::Measured);
        assert_eq!(plan.admit(hot), Admit::Stop);
        assert_eq!(plan.admit(hot), Admit::Stop);
    }

    #[test]
    fn backoff_grows_and_resets() {
        let mut b = Backoff::default();
        let ms = Duration::from_millis;
        let pauses: Vec<_> = (0..12).map(|_| b.next()).collect();
        assert_eq!(
            pauses,
            [
                ms(0),
                ms(1),
                ms(2),
                ms(4),
                ms(8),
                ms(16),
                ms(32),
                ms(64),
                ms(128),
                ms(256),
                ms(256),
                ms(256)
            ]
        );
        b.reset();
        assert_eq!(b.next(), Duration::ZERO);
    }
}
