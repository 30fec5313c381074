//! A retry budget shared by a cluster: retries may add at most `ratio` of the requests, plus a
//! reserve of `min_per_sec`, over a sliding window.
//!
//! Lock-free: a ring of per-second buckets of atomics. Under races a count may be lost or a
//! retry let through over the limit by a few; the budget is a guard against retry storms, not an
//! exact quota.

use std::{
    sync::atomic::{AtomicU64, Ordering},
    time::Duration,
};

use tokio::time::Instant;

/// How large a retry budget is.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct BudgetPolicy {
    /// Retries allowed as a fraction of the requests seen over the window (e.g. 0.2).
    pub ratio: f64,
    /// Retries always allowed per second of the window, whatever the traffic (e.g. 10).
    pub min_per_sec: u32,
    /// The sliding window, rounded up to whole seconds (at least one).
    pub window: Duration,
}

impl Default for BudgetPolicy {
    fn default() -> Self {
        Self {
            ratio: 0.2,
            min_per_sec: 10,
            window: Duration::from_secs(10),
        }
    }
}

/// A retry budget, shared (in an `Arc`) by every route to one cluster.
#[derive(Debug)]
pub struct Budget {
    ratio: f64,
    reserve: f64,
    start: Instant,
    buckets: Box<[Bucket]>,
    retries: AtomicU64,
    exhausted: AtomicU64,
}

#[derive(Debug, Default)]
struct Bucket {
    /// The second this bucket counts, plus one (zero: never used).
    epoch: AtomicU64,
    requests: AtomicU64,
    retries: AtomicU64,
}

// === impl Budget ===

impl Budget {
    /// A budget for `policy`, starting empty of requests (only the reserve is available).
    pub fn new(policy: BudgetPolicy) -> Self {
        let secs = policy
            .window
            .as_secs()
            .saturating_add(u64::from(policy.window.subsec_nanos() > 0))
            .max(1);
        let ratio = if policy.ratio.is_finite() {
            policy.ratio.max(0.0)
        } else {
            0.0
        };
        Self {
            ratio,
            reserve: f64::from(policy.min_per_sec) * secs as f64,
            start: Instant::now(),
            buckets: (0..secs).map(|_| Bucket::default()).collect(),
            retries: AtomicU64::new(0),
            exhausted: AtomicU64::new(0),
        }
    }

    /// Records a request (called once per original request, not per retry).
    pub fn deposit(&self) {
        self.bucket(self.now())
            .requests
            .fetch_add(1, Ordering::Relaxed);
    }

    /// Takes one retry from the budget; `false` (and a count in [`Budget::exhausted_total`]) when
    /// the budget is spent.
    pub fn try_withdraw(&self) -> bool {
        let now = self.now();
        let (requests, retries) = self.window_totals(now);
        if (retries as f64) < self.ratio * requests as f64 + self.reserve {
            self.bucket(now).retries.fetch_add(1, Ordering::Relaxed);
            self.retries.fetch_add(1, Ordering::Relaxed);
            true
        } else {
            self.exhausted.fetch_add(1, Ordering::Relaxed);
            false
        }
    }

    /// Retries allowed so far.
    pub fn retries_total(&self) -> u64 {
        self.retries.load(Ordering::Relaxed)
    }

    /// Retries refused because the budget was spent (`budget_exhausted`).
    pub fn exhausted_total(&self) -> u64 {
        self.exhausted.load(Ordering::Relaxed)
    }

    fn now(&self) -> u64 {
        self.start.elapsed().as_secs()
    }

    fn bucket(&self, sec: u64) -> &Bucket {
        // NOTE: `buckets` has at least one element (see `new`).
        let b = &self.buckets[(sec % self.buckets.len() as u64) as usize];
        let epoch = b.epoch.load(Ordering::Acquire);
        if epoch != sec + 1
            && b.epoch
                .compare_exchange(epoch, sec + 1, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
        {
            b.requests.store(0, Ordering::Relaxed);
            b.retries.store(0, Ordering::Relaxed);
        }
        b
    }

    fn window_totals(&self, now: u64) -> (u64, u64) {
        let oldest = (now + 1).saturating_sub(self.buckets.len() as u64);
        self.buckets
            .iter()
            .filter(|b| {
                let epoch = b.epoch.load(Ordering::Acquire);
                epoch > oldest && epoch <= now + 1
            })
            .fold((0, 0), |(req, ret), b| {
                (
                    req + b.requests.load(Ordering::Relaxed),
                    ret + b.retries.load(Ordering::Relaxed),
                )
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn ratio_plus_reserve() {
        let budget = Budget::new(BudgetPolicy {
            ratio: 0.2,
            min_per_sec: 10,
            window: Duration::from_secs(1),
        });
        for _ in 0..1000 {
            budget.deposit();
        }
        let allowed = (0..10_000).filter(|_| budget.try_withdraw()).count();
        assert_eq!(allowed, 210);
        assert_eq!(budget.exhausted_total(), 10_000 - 210);

        // The window slides: a second later, only the reserve is left.
        tokio::time::advance(Duration::from_secs(1)).await;
        assert_eq!((0..100).filter(|_| budget.try_withdraw()).count(), 10);
    }

    #[tokio::test(start_paused = true)]
    async fn sliding_window_counts_recent_seconds() {
        let budget = Budget::new(BudgetPolicy {
            ratio: 0.5,
            min_per_sec: 0,
            window: Duration::from_secs(3),
        });
        for _ in 0..10 {
            budget.deposit();
        }
        tokio::time::advance(Duration::from_secs(2)).await;
        // Still within the 3 s window.
        assert_eq!((0..100).filter(|_| budget.try_withdraw()).count(), 5);
        tokio::time::advance(Duration::from_secs(1)).await;
        for _ in 0..2 {
            budget.deposit();
        }
        // The first second left the window, and with it its requests; the retries of second 2
        // still count against the 2 new requests.
        assert_eq!((0..100).filter(|_| budget.try_withdraw()).count(), 0);
        tokio::time::advance(Duration::from_secs(2)).await;
        assert_eq!((0..100).filter(|_| budget.try_withdraw()).count(), 1);
    }
}
