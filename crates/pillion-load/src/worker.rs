//! One connection's loop: sends requests, closed or open loop, and records what comes back.

use std::collections::VecDeque;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures_util::stream::{FuturesUnordered, StreamExt};
use tokio::sync::watch;
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

/// How many times a request the server did not process (see [`Failure::unprocessed`]) is sent
/// again before it counts as failed.
const MAX_RESENDS: u8 = 3;

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
    /// Whether the tasks may go on sending; every task watches it.
    pub(crate) halt: watch::Sender<Halt>,
}

/// Whether a run goes on sending.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Halt {
    /// Send as the plan says.
    Running,
    /// The `--requests` budget is spent: send nothing new, finish what is in flight.
    Finish,
    /// Interrupted (a signal) at `at`: send nothing more, and give up on whatever is still in
    /// flight at `abandon_at`.
    Interrupt { at: Instant, abandon_at: Instant },
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

/// One request to send (or to send again).
#[derive(Debug, Clone, Copy)]
struct Attempt {
    /// Its latency counts from here: when it was due (open loop) or first sent.
    intended: Instant,
    measured: bool,
    /// How many times it was sent before and left unprocessed by the server.
    resends: u8,
}

/// A request that has finished, one way or the other.
struct Done {
    result: Result<Exchange, Failure>,
    latency: Duration,
    attempt: Attempt,
}

/// What the schedule says about the next new request.
enum Next {
    Send(Attempt),
    /// Not due yet.
    Wait,
    /// Nothing more is to be sent.
    Stop,
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
        match self.budget.as_ref().map(Budget::take) {
            Some(None) => Admit::Stop,
            Some(Some(last)) => {
                if last {
                    // Connections waiting for a due time need not wait for it any more.
                    self.halt.send_if_modified(|halt| {
                        let running = *halt == Halt::Running;
                        if running {
                            *halt = Halt::Finish;
                        }
                        running
                    });
                }
                Admit::Measured
            }
            None => Admit::Measured,
        }
    }

    /// Stops the run at once: nothing more is sent, and what is in flight is given `grace`.
    pub(crate) fn interrupt(&self, grace: Duration) {
        let at = Instant::now();
        self.halt.send_if_modified(|halt| {
            let first = !matches!(halt, Halt::Interrupt { .. });
            if first {
                *halt = Halt::Interrupt {
                    at,
                    abandon_at: at + grace,
                };
            }
            first
        });
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

    /// Takes one request: `None` if none is left, else whether it was the last.
    fn take(&self) -> Option<bool> {
        let n = self.taken.fetch_add(1, Ordering::Relaxed);
        (n < self.limit).then(|| n + 1 == self.limit)
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
/// request has finished (or, interrupted, until its grace is over). `conn` is an already open
/// connection to start with, if any.
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
    // Requests the server did not process, to send again before any new one.
    let mut resend: VecDeque<Attempt> = VecDeque::new();
    let mut backoff = Backoff::default();
    let mut sending = true;
    // Whether the connection in use (or the one just lost) has answered anything. A target
    // that takes connections and then fails every request on them (h2c to an HTTP/1.1-only
    // server) is reconnected to with the backoff of a failed connect, not as fast as it fails.
    let mut answered = true;
    let mut halt = plan.halt.subscribe();

    loop {
        let state = *halt.borrow_and_update();
        let mut abandon_at = None;
        match state {
            Halt::Running => {}
            Halt::Finish => sending = false,
            Halt::Interrupt {
                at,
                abandon_at: at_most,
            } => {
                if sending {
                    sending = false;
                    if let Some(s) = &schedule {
                        // What fell due before the interrupt and was never sent.
                        let until = plan.deadline.map_or(at, |d| d.min(at));
                        stats.record_missed(s.unsent_between(plan.measure_start, until));
                    }
                }
                resend.clear();
                if in_flight.is_empty() || Instant::now() >= at_most {
                    return stats;
                }
                abandon_at = Some(at_most);
            }
        }

        // Send whatever may be sent now: first what the server left unprocessed, then new
        // requests as the plan says.
        while in_flight.len() < capacity(&plan, conn.as_ref(), &mut stats) {
            if !sending && resend.is_empty() {
                break;
            }
            if !answered && conn.as_ref().is_none_or(|c| c.is_closed()) {
                // NOTE: once per lost connection; the next one starts unanswered again.
                answered = true;
                plan.pause(backoff.next()).await;
            }
            let attempt = match resend.pop_front() {
                Some(attempt) => attempt,
                None => match next_request(&plan, schedule.as_mut()) {
                    Next::Send(attempt) => attempt,
                    Next::Wait => break,
                    Next::Stop => {
                        sending = false;
                        if let (Some(s), Some(deadline)) = (&schedule, plan.deadline) {
                            // The window is over. Whatever fell due in it and is still unsent
                            // (the connection was busy: the target fell behind the rate) is
                            // not sent now, which would stretch the run without end, but
                            // counted, so the shortfall shows.
                            stats.record_missed(s.unsent_between(plan.measure_start, deadline));
                        }
                        break;
                    }
                },
            };

            match ensure_ready(&*connector, conn.take(), plan.timeout).await {
                Ok((c, fresh)) => {
                    if fresh {
                        answered = false;
                    }
                    let c = conn.insert(c);
                    in_flight.push(timed(c.send(), attempt, plan.timeout));
                }
                Err(error) => {
                    if attempt.measured {
                        stats.record_failure(Failure {
                            kind: ErrorKind::Connect,
                            message: Some(format!("{error:#}")),
                            unprocessed: false,
                        });
                        stats.record_end(Instant::now());
                        progress.record(false);
                    }
                    plan.pause(backoff.next()).await;
                }
            }
        }

        if !sending && in_flight.is_empty() && resend.is_empty() {
            return stats;
        }

        // Wait for a response, for the next request to fall due, or for the run to halt.
        let room = in_flight.len() < capacity(&plan, conn.as_ref(), &mut stats);
        let wake = match &schedule {
            Some(s) if sending && room => {
                let due = s.due().checked_sub(EARLY).unwrap_or(s.due());
                Some(plan.deadline.map_or(due, |d| d.min(due)))
            }
            _ => None,
        };
        tokio::select! {
            biased;
            Some(done) = in_flight.next(), if !in_flight.is_empty() => {
                let measured = done.attempt.measured;
                match done.result {
                    Ok(exchange) => {
                        answered = true;
                        backoff.reset();
                        if measured {
                            stats.record_response(exchange.status, exchange.body_bytes, done.latency);
                            stats.record_end(Instant::now());
                            progress.record(true);
                        }
                    }
                    Err(failure) if failure.unprocessed
                        && done.attempt.resends < MAX_RESENDS
                        && abandon_at.is_none() =>
                    {
                        // The server never saw it (a refused stream, or one past a graceful
                        // GOAWAY): not an error of the server's, send it again, still timed
                        // from when it was first meant to go.
                        resend.push_back(Attempt {
                            resends: done.attempt.resends + 1,
                            ..done.attempt
                        });
                    }
                    Err(failure) => {
                        if measured {
                            stats.record_failure(failure);
                            stats.record_end(Instant::now());
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
            Ok(()) = halt.changed() => {}
            () = sleep_until(abandon_at.unwrap_or_else(Instant::now)), if abandon_at.is_some() => {
                // The grace after an interrupt is over: what is still in flight is dropped,
                // neither answered nor failed.
                return stats;
            }
            () = sleep_until(wake.unwrap_or_else(Instant::now)), if wake.is_some() => {}
            // NOTE: unreachable: the halt channel lives as long as the plan.
            else => return stats,
        }
    }
}

/// How many requests may be in flight at once on this task's connection: the plan's, or fewer
/// if the HTTP/2 server allows fewer concurrent streams (more would wait inside the client and
/// count as the server's latency).
fn capacity<T: Connection>(plan: &Plan, conn: Option<&T>, stats: &mut Stats) -> usize {
    match conn.and_then(Connection::max_streams) {
        Some(max) => {
            stats.record_server_max_streams(max);
            plan.per_connection.min(max.max(1))
        }
        None => plan.per_connection,
    }
}

/// The next new request, if the plan has one now.
fn next_request(plan: &Plan, schedule: Option<&mut Schedule>) -> Next {
    let now = Instant::now();
    if plan.deadline.is_some_and(|deadline| now >= deadline) {
        return Next::Stop;
    }
    // Open loop: a request sent late (its connection was busy, or stalled) counts its latency
    // from when it was due, so the stall shows up in the latency instead of being hidden by
    // sending less. One sent early (see `EARLY`) counts from the send.
    let (due, intended) = match &schedule {
        Some(s) => {
            let due = s.due();
            // NOTE: checked before waiting for it, so a run whose next request falls due after
            // its end (a low rate) ends at `--duration`, not when that request would be due.
            if plan.deadline.is_some_and(|deadline| due >= deadline) {
                return Next::Stop;
            }
            if due > now + EARLY {
                return Next::Wait;
            }
            (due, due.min(now))
        }
        None => (now, now),
    };
    let measured = match plan.admit(due) {
        Admit::Stop => return Next::Stop,
        Admit::Warmup => false,
        Admit::Measured => true,
    };
    if let Some(s) = schedule {
        s.advance();
    }
    Next::Send(Attempt {
        intended,
        measured,
        resends: 0,
    })
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
async fn timed<F>(exchange: F, attempt: Attempt, limit: Duration) -> Done
where
    F: Future<Output = Result<Exchange, Failure>>,
{
    let result = timeout(limit, exchange)
        .await
        .unwrap_or_else(|_| Err(ErrorKind::Timeout.into()));
    Done {
        result,
        latency: attempt.intended.elapsed(),
        attempt,
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
            halt: watch::Sender::new(Halt::Running),
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
        assert_eq!(*plan.halt.borrow(), Halt::Running);
        assert_eq!(plan.admit(hot), Admit::Measured);
        // The last one tells every connection to stop sending.
        assert_eq!(*plan.halt.borrow(), Halt::Finish);
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
