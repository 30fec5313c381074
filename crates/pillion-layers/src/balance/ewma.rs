//! A peak-sensitive EWMA of an endpoint's latency, kept in two atomics.
//!
//! As in linkerd2-proxy and Finagle: a sample above the estimate replaces it at once (so a
//! slowing endpoint loses traffic immediately), a lower one moves it by `1 - e^(-elapsed/τ)`.
//! Between samples the estimate read for balancing decays toward zero with the same τ, so an
//! endpoint that stopped getting traffic because it was slow is tried again after a while.
//!
//! NOTE: the two atomics are updated without a lock; two samples recorded at the same moment
//! may blend imperfectly (the later one sees almost no elapsed time). It is an estimate: losing
//! a little of one sample is cheaper than a lock on every response.

use std::{
    sync::atomic::{AtomicU64, Ordering::Relaxed},
    time::Duration,
};

/// The estimate: `f64` nanoseconds as bits, and when the last sample arrived.
#[derive(Debug)]
pub(crate) struct PeakEwma {
    rtt_ns: AtomicU64,
    stamp_ns: AtomicU64,
}

// === impl PeakEwma ===

impl PeakEwma {
    /// Starts at `initial`, as of `now_ns`.
    pub(crate) fn new(initial: Duration, now_ns: u64) -> Self {
        Self {
            rtt_ns: AtomicU64::new((initial.as_nanos() as f64).to_bits()),
            stamp_ns: AtomicU64::new(now_ns),
        }
    }

    /// The estimate at `now_ns` in nanoseconds, decayed toward zero since the last sample.
    #[inline]
    pub(crate) fn estimate_ns(&self, now_ns: u64, decay_ns: f64) -> f64 {
        let rtt = f64::from_bits(self.rtt_ns.load(Relaxed));
        let elapsed = now_ns.saturating_sub(self.stamp_ns.load(Relaxed)) as f64;
        if elapsed == 0.0 {
            rtt
        } else {
            rtt * (-elapsed / decay_ns).exp()
        }
    }

    /// Feeds one latency sample taken at `now_ns`.
    pub(crate) fn observe(&self, now_ns: u64, sample: Duration, decay_ns: f64) {
        let sample = sample.as_nanos() as f64;
        let previous = self.stamp_ns.fetch_max(now_ns, Relaxed);
        let elapsed = now_ns.saturating_sub(previous) as f64;
        let decay = (-elapsed / decay_ns).exp();
        // NOTE: the closure always returns `Some`, so this cannot fail.
        let _ = self.rtt_ns.fetch_update(Relaxed, Relaxed, |bits| {
            let current = f64::from_bits(bits);
            let next = if sample > current {
                sample
            } else {
                current * decay + sample * (1.0 - decay)
            };
            Some(next.to_bits())
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TAU: f64 = 10e9;
    const MS: u64 = 1_000_000;

    fn ms(ns: f64) -> f64 {
        ns / MS as f64
    }

    #[test]
    fn a_peak_replaces_the_estimate_at_once() {
        let e = PeakEwma::new(Duration::from_millis(10), 0);
        e.observe(MS, Duration::from_millis(100), TAU);
        assert!((ms(e.estimate_ns(MS, TAU)) - 100.0).abs() < 1e-6);
    }

    #[test]
    fn a_lower_sample_decays_with_the_time_constant() {
        let e = PeakEwma::new(Duration::from_millis(100), 0);
        // One time constant later, the estimate has moved 1 - 1/e of the way to the sample.
        e.observe(10_000 * MS, Duration::from_millis(10), TAU);
        let expected = 100.0 / std::f64::consts::E + 10.0 * (1.0 - 1.0 / std::f64::consts::E);
        assert!((ms(e.estimate_ns(10_000 * MS, TAU)) - expected).abs() < 1e-6);
        // A sample right after barely moves it.
        e.observe(10_000 * MS + 1, Duration::from_millis(1), TAU);
        assert!((ms(e.estimate_ns(10_000 * MS + 1, TAU)) - expected).abs() < 1e-3);
    }

    #[test]
    fn the_estimate_fades_without_samples() {
        let e = PeakEwma::new(Duration::from_millis(30), 0);
        assert!((ms(e.estimate_ns(0, TAU)) - 30.0).abs() < 1e-9);
        assert!(ms(e.estimate_ns(20_000 * MS, TAU)) < 30.0 / 7.0);
    }
}
