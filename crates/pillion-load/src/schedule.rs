//! The open-loop schedule: when each request of one connection is due.

use std::time::Duration;

use tokio::time::Instant;

/// The due times of one connection's requests in an open loop.
///
/// With `slots` connections sharing a total `rate`, connection `slot` sends every `slots / rate`
/// seconds, offset by `slot / rate`, so the requests of all connections together are evenly
/// spaced `1 / rate` apart. Due times are computed from the origin, not by adding intervals, so
/// they do not drift.
#[derive(Debug, Clone)]
pub(crate) struct Schedule {
    origin: Instant,
    first_ns: f64,
    interval_ns: f64,
    next: u64,
}

// === impl Schedule ===

impl Schedule {
    pub(crate) fn new(origin: Instant, rate: f64, slot: usize, slots: usize) -> Self {
        let per_request_ns = 1e9 / rate;
        Self {
            origin,
            first_ns: slot as f64 * per_request_ns,
            interval_ns: slots as f64 * per_request_ns,
            next: 0,
        }
    }

    /// When the next request is due.
    pub(crate) fn due(&self) -> Instant {
        self.due_at(self.next)
    }

    /// When request `k` of this connection is due.
    fn due_at(&self, k: u64) -> Instant {
        let offset = self.first_ns + k as f64 * self.interval_ns;
        // NOTE: `as` saturates; a rate of at least 0.001/s keeps this far from the limit.
        self.origin + Duration::from_nanos(offset as u64)
    }

    /// The index of the first request due at or after `at`.
    fn first_due_from(&self, at: Instant) -> u64 {
        let offset = at.saturating_duration_since(self.origin).as_nanos() as f64;
        // The estimate can be off by one either way where `due_at` rounds; settle it exactly.
        let mut k = ((offset - self.first_ns) / self.interval_ns)
            .ceil()
            .max(0.0) as u64;
        while k > 0 && self.due_at(k - 1) >= at {
            k -= 1;
        }
        while self.due_at(k) < at {
            k += 1;
        }
        k
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
        self.next += 1;
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
