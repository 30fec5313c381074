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
        let offset = self.first_ns + self.next as f64 * self.interval_ns;
        // NOTE: `as` saturates; a rate of at least 0.001/s keeps this far from the limit.
        self.origin + Duration::from_nanos(offset as u64)
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
