//! The open-loop schedule: when each request of one connection is due.

use std::time::Duration;

use tokio::time::Instant;

/// The highest `--rate` accepted, in requests per second.
pub const MAX_RATE: f64 = 1e9;

/// Rates are kept in millionths of a request per second, so that due times are integer
/// arithmetic: exact, and free of drift and float truncation.
const MICRO: u128 = 1_000_000;
const NANOS_PER_SEC: u128 = 1_000_000_000;

/// A due time further out than any run (about 30 years), for offsets an `Instant` cannot hold.
const FAR: Duration = Duration::from_secs(30 * 365 * 24 * 3600);

/// The due times of one connection's requests in an open loop.
///
/// Request `g` of the whole run (counting over all connections) is due `g / rate` seconds after
/// the origin, rounded down to the nanosecond; connection `slot` of `slots` sends requests
/// `slot`, `slot + slots`, `slot + 2 * slots`, ..., so the requests of all connections together
/// are evenly spaced `1 / rate` apart, and exactly `rate * d` of them fall due in `d` seconds
/// (when that is a whole number). Due times are computed from the origin, not by adding
/// intervals, so they do not drift.
#[derive(Debug, Clone)]
pub(crate) struct Schedule {
    origin: Instant,
    /// The rate in millionths of a request per second, at least 1.
    micro_rate: u128,
    slot: u128,
    slots: u128,
    next: u64,
}

// === impl Schedule ===

impl Schedule {
    /// NOTE: the rate is clamped to what validation allows (0.001 to [`MAX_RATE`]), so the
    /// arithmetic below stays far from `u128`'s limits.
    pub(crate) fn new(origin: Instant, rate: f64, slot: usize, slots: usize) -> Self {
        let micro_rate = (rate.clamp(0.001, MAX_RATE) * MICRO as f64).round() as u128;
        Self {
            origin,
            micro_rate: micro_rate.max(1),
            slot: slot as u128,
            slots: (slots as u128).max(1),
            next: 0,
        }
    }

    /// When the next request is due.
    pub(crate) fn due(&self) -> Instant {
        self.due_at(self.next)
    }

    /// When request `k` of this connection is due.
    fn due_at(&self, k: u64) -> Instant {
        // Checked: a `k` no run reaches would overflow, and is then simply far away.
        u128::from(k)
            .checked_mul(self.slots)
            .and_then(|g| g.checked_add(self.slot))
            .and_then(|g| g.checked_mul(NANOS_PER_SEC * MICRO))
            .and_then(|n| u64::try_from(n / self.micro_rate).ok())
            .and_then(|n| self.origin.checked_add(Duration::from_nanos(n)))
            .unwrap_or(self.origin + FAR)
    }

    /// The index of the first request of this connection due at or after `at`.
    fn first_due_from(&self, at: Instant) -> u64 {
        let offset = at.saturating_duration_since(self.origin).as_nanos();
        // Request g is due at floor(g * 1e15 / micro_rate) ns, which is at or after `offset`
        // exactly when g * 1e15 >= offset * micro_rate.
        let scale = NANOS_PER_SEC * MICRO;
        let g = (offset.saturating_mul(self.micro_rate)).div_ceil(scale);
        let k = g.saturating_sub(self.slot).div_ceil(self.slots);
        u64::try_from(k).unwrap_or(u64::MAX)
    }

    /// How many requests not yet sent (the next one on) fall due in `[from, until)`.
    ///
    /// Counted without stepping through them, so a high rate that fell far behind costs nothing.
    pub(crate) fn unsent_between(&self, from: Instant, until: Instant) -> u64 {
        let start = self.next.max(self.first_due_from(from));
        self.first_due_from(until).saturating_sub(start)
    }

    /// Moves on to the request after the one [`due`](Self::due) returned.
    pub(crate) fn advance(&mut self) {
        self.next = self.next.saturating_add(1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dues(schedule: &mut Schedule, n: usize) -> Vec<Duration> {
        let origin = schedule.origin;
        (0..n)
            .map(|_| {
                let due = schedule.due() - origin;
                schedule.advance();
                due
            })
            .collect()
    }

    #[test]
    fn one_connection_is_evenly_spaced() {
        let mut s = Schedule::new(Instant::now(), 100.0, 0, 1);
        let ms = Duration::from_millis;
        assert_eq!(dues(&mut s, 4), vec![ms(0), ms(10), ms(20), ms(30)]);
    }

    #[test]
    fn connections_interleave_to_the_total_rate() {
        // 1000 req/s over 4 connections: each sends every 4 ms, offset 1 ms from the previous.
        let origin = Instant::now();
        let mut all: Vec<Duration> = (0..4)
            .flat_map(|slot| dues(&mut Schedule::new(origin, 1000.0, slot, 4), 250))
            .collect();
        all.sort();
        let expected: Vec<Duration> = (0..1000).map(Duration::from_millis).collect();
        assert_eq!(all, expected);
    }

    #[test]
    fn counts_the_unsent_requests_of_a_window() {
        // Every 10 ms from 0; the window [1 s, 2 s) holds requests 100 to 199.
        let origin = Instant::now();
        let at = |ms| origin + Duration::from_millis(ms);
        let mut s = Schedule::new(origin, 100.0, 0, 1);
        assert_eq!(s.unsent_between(at(1000), at(2000)), 100);
        // Requests already sent do not count; the window's edges are [from, until).
        for _ in 0..150 {
            s.advance();
        }
        assert_eq!(s.unsent_between(at(1000), at(2000)), 50);
        assert_eq!(s.unsent_between(at(1000), at(1990)), 49);
        assert_eq!(s.unsent_between(at(1000), at(1991)), 50);
        assert_eq!(s.unsent_between(at(2000), at(1000)), 0);
        // One of four interleaved connections, offset 1 ms: requests at 1, 5, 9, ... ms.
        let s = Schedule::new(origin, 1000.0, 1, 4);
        assert_eq!(s.unsent_between(at(0), at(100)), 25);
        assert_eq!(s.unsent_between(at(2), at(6)), 1);
        // A rate far above what was sent, counted without stepping through it.
        let s = Schedule::new(origin, 1e9, 0, 1);
        assert_eq!(s.unsent_between(at(0), at(10_000)), 10_000_000_000);
    }

    #[test]
    fn exactly_rate_times_duration_fall_due() {
        // 3000 req/s over 7 connections for 2 s: 1/3 ms does not add up in floats, and a
        // truncated due time used to let a 6001st request into the window.
        let origin = Instant::now();
        let end = origin + Duration::from_secs(2);
        let due: u64 = (0..7)
            .map(|slot| Schedule::new(origin, 3000.0, slot, 7).unsent_between(origin, end))
            .sum();
        assert_eq!(due, 6000);
        let mut stepped = 0;
        for slot in 0..7 {
            let mut s = Schedule::new(origin, 3000.0, slot, 7);
            while s.due() < end {
                stepped += 1;
                s.advance();
            }
        }
        assert_eq!(stepped, 6000);
    }

    #[test]
    fn huge_rates_and_offsets_do_not_overflow() {
        let origin = Instant::now();
        let far = origin + Duration::from_secs(100 * 365 * 24 * 3600);
        // Out of the validated range: clamped, and the arithmetic stays finite.
        let s = Schedule::new(origin, 1e20, 3, 1_000_000);
        assert_eq!(s.due(), origin + Duration::from_nanos(3));
        assert!(s.unsent_between(origin, far) > 0);
        let mut s = Schedule::new(origin, MAX_RATE, 0, 1);
        s.next = u64::MAX;
        assert!(s.due() > origin);
        s.advance();
        assert_eq!(s.unsent_between(origin, far), 0);
    }

    #[test]
    fn does_not_drift() {
        // 1/3 ms does not add up exactly; the millionth request must still be on time.
        let mut s = Schedule::new(Instant::now(), 3000.0, 0, 1);
        for _ in 0..1_000_000 {
            s.advance();
        }
        let offset = (s.due() - s.origin).as_secs_f64();
        assert!((offset - 1e6 / 3000.0).abs() < 1e-6, "{offset}");
    }
}
