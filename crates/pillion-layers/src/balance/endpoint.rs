//! The live state of one endpoint: load, latency estimate, health and ejection, all atomics.

use super::{ewma::PeakEwma, LazyNow, Outcome, Shared};
use crate::{health::EndpointHealth, outlier::EndpointOutlier};
use std::{
    net::SocketAddr,
    sync::{
        atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed},
        Arc,
    },
    time::Duration,
};
use tokio::time::Instant;

/// The latency a gateway error counts as in the peak-EWMA estimate.
const FAILURE_PENALTY: Duration = Duration::from_secs(1);

/// One endpoint's state, shared by every [`EndpointSet`] it belongs to and every [`Pick`] of it.
///
/// [`EndpointSet`]: super::EndpointSet
/// [`Pick`]: super::Pick
#[derive(Debug)]
pub struct EndpointState {
    addr: SocketAddr,
    shared: Arc<Shared>,
    in_flight: AtomicUsize,
    ewma: PeakEwma,
    health: EndpointHealth,
    outlier: EndpointOutlier,
    successes_total: AtomicU64,
    errors_5xx_total: AtomicU64,
    gateway_errors_total: AtomicU64,
}

/// A point-in-time view of one endpoint.
#[derive(Debug, Clone, PartialEq)]
pub struct EndpointSnapshot {
    /// The endpoint's address.
    pub addr: SocketAddr,
    /// Whether health checks (or an operator) consider it healthy.
    pub healthy: bool,
    /// Whether outlier detection has ejected it right now.
    pub ejected: bool,
    /// How much longer the ejection lasts, if ejected.
    pub ejected_for: Option<Duration>,
    /// Requests picked for it and not finished.
    pub in_flight: usize,
    /// The peak-EWMA latency estimate, in milliseconds.
    pub ewma_ms: f64,
    /// Responses recorded as [`Outcome::Success`].
    pub successes_total: u64,
    /// Responses recorded as [`Outcome::Error5xx`].
    pub errors_5xx_total: u64,
    /// Requests recorded as [`Outcome::GatewayError`].
    pub gateway_errors_total: u64,
    /// How many times outlier detection ejected it.
    pub ejections_total: u64,
    /// Failed active health checks.
    pub health_check_failures_total: u64,
}

// === impl EndpointState ===

impl EndpointState {
    pub(super) fn new(addr: SocketAddr, shared: &Arc<Shared>) -> Self {
        let now_ns = shared.clock().now_ns();
        Self {
            addr,
            ewma: PeakEwma::new(shared.ewma_default_rtt(), now_ns),
            shared: shared.clone(),
            in_flight: AtomicUsize::new(0),
            health: EndpointHealth::default(),
            outlier: EndpointOutlier::default(),
            successes_total: AtomicU64::new(0),
            errors_5xx_total: AtomicU64::new(0),
            gateway_errors_total: AtomicU64::new(0),
        }
    }

    /// The endpoint's address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The name of the cluster it belongs to.
    pub fn cluster(&self) -> &str {
        self.shared.cluster()
    }

    /// Requests picked for it and not finished.
    pub fn in_flight(&self) -> usize {
        self.in_flight.load(Relaxed)
    }

    /// Whether health checks (or an operator) consider it healthy.
    pub fn is_healthy(&self) -> bool {
        self.health.is_healthy()
    }

    /// Marks it healthy or not, as health checks do; returns the previous value.
    pub fn set_healthy(&self, healthy: bool) -> bool {
        self.health.set_healthy(healthy)
    }

    /// Whether outlier detection has ejected it at `now`.
    pub fn is_ejected(&self, now: Instant) -> bool {
        self.outlier.is_ejected_at(self.shared.clock().ns(now))
    }

    /// How much longer its ejection lasts after `now`, if it is ejected.
    pub fn ejected_for(&self, now: Instant) -> Option<Duration> {
        self.outlier.remaining(self.shared.clock().ns(now))
    }

    /// The peak-EWMA latency estimate at `now`.
    pub fn latency_estimate(&self, now: Instant) -> Duration {
        let ns = self
            .ewma
            .estimate_ns(self.shared.clock().ns(now), self.shared.ewma_decay_ns());
        Duration::from_nanos(ns as u64)
    }

    /// A view of its state at `now`.
    pub fn snapshot(&self, now: Instant) -> EndpointSnapshot {
        let now_ns = self.shared.clock().ns(now);
        EndpointSnapshot {
            addr: self.addr,
            healthy: self.is_healthy(),
            ejected: self.outlier.is_ejected_at(now_ns),
            ejected_for: self.outlier.remaining(now_ns),
            in_flight: self.in_flight(),
            ewma_ms: self.ewma.estimate_ns(now_ns, self.shared.ewma_decay_ns()) / 1e6,
            successes_total: self.successes_total.load(Relaxed),
            errors_5xx_total: self.errors_5xx_total.load(Relaxed),
            gateway_errors_total: self.gateway_errors_total.load(Relaxed),
            ejections_total: self.outlier.ejections_total(),
            health_check_failures_total: self.health.failures_total(),
        }
    }

    pub(crate) fn outlier(&self) -> &EndpointOutlier {
        &self.outlier
    }

    pub(crate) fn health(&self) -> &EndpointHealth {
        &self.health
    }

    pub(super) fn in_flight_counter(&self) -> &AtomicUsize {
        &self.in_flight
    }

    /// Whether a pick may choose it: healthy and not ejected.
    #[inline]
    pub(super) fn available(&self, now: &mut LazyNow<'_>) -> bool {
        self.health.is_healthy()
            && (!self.outlier.ever_ejected() || !self.outlier.is_ejected_at(now.get()))
    }

    /// The balancing cost: requests in flight, times the latency estimate for peak EWMA.
    #[inline]
    pub(super) fn cost(&self, ewma: bool, now: &mut LazyNow<'_>) -> f64 {
        let load = self.in_flight() as f64;
        if ewma {
            self.ewma
                .estimate_ns(now.get(), self.shared.ewma_decay_ns())
                * (load + 1.0)
        } else {
            load
        }
    }

    pub(super) fn record(&self, now: Instant, latency: Duration, outcome: Outcome) {
        let now_ns = self.shared.clock().ns(now);
        let counter = match outcome {
            Outcome::Success => &self.successes_total,
            Outcome::Error5xx(_) => &self.errors_5xx_total,
            Outcome::GatewayError => &self.gateway_errors_total,
        };
        counter.fetch_add(1, Relaxed);
        // NOTE: a gateway error is fast (a refused connect, a reset): as a plain sample it would
        // make a dead endpoint the cheapest. It counts as a slow answer instead, decaying from
        // there like any other.
        let sample = match outcome {
            Outcome::GatewayError => latency.max(FAILURE_PENALTY),
            _ => latency,
        };
        self.ewma
            .observe(now_ns, sample, self.shared.ewma_decay_ns());
        if let Some(detector) = self.shared.detector() {
            detector.observe(self, outcome, now_ns);
        }
    }
}
