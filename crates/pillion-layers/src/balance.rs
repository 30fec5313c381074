//! Endpoint selection: a cluster's endpoints with their live state, and the balancer that picks one.
//!
//! An [`EndpointSet`] is an immutable list of [`EndpointState`]s plus the cluster-wide state
//! (balancer counter, outlier detector, counters) they share. The cluster keeps the current set
//! behind an `ArcSwap` and, when DNS changes the addresses, publishes
//! [`EndpointSet::rebuild`]: endpoints whose address stays keep their state (in-flight count,
//! latency estimate, health, ejection). Picking takes no lock and allocates nothing beyond the
//! reference count of the [`Pick`] it returns.
//!
//! ```text
//! let set = EndpointSet::new("web", addrs, BalanceConfig::default());   // config load
//! let pick = set.pick().ok_or(NoHealthyEndpoint)?;                      // per request: 503 if None
//! let start = Instant::now();
//! let result = client.request(to(pick.addr())).await;
//! pick.record_since(start, Outcome::from_status(status));               // or GatewayError
//! drop(pick);                                                           // when the body ends
//! ```

mod endpoint;
mod ewma;
#[cfg(test)]
mod tests;

pub use self::endpoint::{EndpointSnapshot, EndpointState};
pub use crate::outlier::{Outcome, OutlierConfig};

use crate::outlier::Detector;
use std::{
    collections::HashMap,
    net::SocketAddr,
    sync::{
        atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed},
        Arc,
    },
    time::Duration,
};
use tokio::time::Instant;

/// How a cluster picks an endpoint for each request.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Balancer {
    /// Each endpoint in turn (skipping unavailable ones: the next one takes their turn).
    #[default]
    RoundRobin,
    /// Uniformly at random.
    Random,
    /// Power of two random choices: of two random endpoints, the one with fewer requests in flight.
    LeastRequest,
    /// Power of two random choices by peak-EWMA cost, `latency_estimate * (in_flight + 1)`
    /// (linkerd2-proxy and Finagle's balancer).
    PeakEwma,
}

/// Settings of the peak-EWMA latency estimate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EwmaConfig {
    /// Time constant of the decay: a lower sample moves the estimate by `1 - e^(-elapsed/decay)`.
    pub decay: Duration,
    /// The estimate of an endpoint with no sample yet (linkerd2-proxy uses 30ms).
    pub default_rtt: Duration,
}

/// Everything an [`EndpointSet`] needs besides its addresses.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BalanceConfig {
    /// The balancing policy.
    pub balancer: Balancer,
    /// The latency estimate (kept for every policy, shown in snapshots; used by `PeakEwma`).
    pub ewma: EwmaConfig,
    /// Outlier detection; `None` never ejects.
    pub outlier: Option<OutlierConfig>,
}

/// The endpoints of a cluster at one moment, with their live state.
#[derive(Debug)]
pub struct EndpointSet {
    endpoints: Box<[Arc<EndpointState>]>,
    shared: Arc<Shared>,
}

/// An endpoint chosen for one request. Counts as in flight on that endpoint until dropped.
#[derive(Debug)]
pub struct Pick {
    ep: Arc<EndpointState>,
}

/// A point-in-time view of a cluster, for the admin `/clusters` endpoint and metrics.
#[derive(Debug, Clone, PartialEq)]
pub struct ClusterSnapshot {
    /// The cluster's name.
    pub cluster: Arc<str>,
    /// The balancing policy.
    pub balancer: Balancer,
    /// One entry per endpoint, in the set's order.
    pub endpoints: Vec<EndpointSnapshot>,
    /// Outlier ejections since the cluster was built.
    pub ejections_total: u64,
    /// Ejections skipped because `max_ejection_percent` endpoints were already ejected.
    pub ejections_overflow_total: u64,
    /// Picks that found no available endpoint (answered in panic mode by
    /// [`EndpointSet::pick_or_panic`], or a 503 no-healthy-endpoint by [`EndpointSet::pick`]).
    pub no_endpoint_total: u64,
}

/// Cluster-wide state, shared by every endpoint and kept across rebuilds.
#[derive(Debug)]
pub(crate) struct Shared {
    cluster: Arc<str>,
    balancer: Balancer,
    next: AtomicUsize,
    clock: Clock,
    /// The EWMA time constant in nanoseconds, at least 1.
    ewma_decay_ns: f64,
    ewma_default_rtt: Duration,
    detector: Option<Detector>,
    no_endpoint_total: AtomicU64,
}

/// Monotonic nanoseconds since the cluster was built, so instants fit in an `AtomicU64`.
#[derive(Debug)]
pub(crate) struct Clock {
    epoch: Instant,
}

/// Reads the clock at most once per pick, and only when a candidate needs it.
struct LazyNow<'a> {
    clock: &'a Clock,
    ns: Option<u64>,
}

// === impl Balancer ===

impl Balancer {
    /// The policy's name, as in the config.
    pub fn name(&self) -> &'static str {
        match self {
            Self::RoundRobin => "round_robin",
            Self::Random => "random",
            Self::LeastRequest => "least_request",
            Self::PeakEwma => "ewma",
        }
    }
}

// === impl EwmaConfig ===

impl Default for EwmaConfig {
    fn default() -> Self {
        Self {
            decay: Duration::from_secs(10),
            default_rtt: Duration::from_millis(30),
        }
    }
}

// === impl EndpointSet ===

impl EndpointSet {
    /// Builds the first set of a cluster named `cluster` (the name is only for logs and snapshots).
    pub fn new(
        cluster: impl Into<Arc<str>>,
        addrs: impl IntoIterator<Item = SocketAddr>,
        cfg: BalanceConfig,
    ) -> Self {
        let shared = Arc::new(Shared {
            cluster: cluster.into(),
            balancer: cfg.balancer,
            next: AtomicUsize::new(0),
            clock: Clock::new(),
            ewma_decay_ns: (cfg.ewma.decay.as_nanos() as f64).max(1.0),
            ewma_default_rtt: cfg.ewma.default_rtt,
            detector: cfg.outlier.map(Detector::new),
            no_endpoint_total: AtomicU64::new(0),
        });
        Self::build(shared, addrs, |_| None)
    }

    /// A new set for `addrs` sharing this one's cluster state: an address present in both keeps
    /// its [`EndpointState`] (the same `Arc`), a new one starts fresh. Duplicates are dropped.
    ///
    /// NOTE: the new set becomes the one outlier detection counts for `max_ejection_percent`,
    /// so publish it (and only build one when publishing it).
    pub fn rebuild(&self, addrs: impl IntoIterator<Item = SocketAddr>) -> Self {
        let old: HashMap<SocketAddr, &Arc<EndpointState>> =
            self.endpoints.iter().map(|e| (e.addr(), e)).collect();
        Self::build(self.shared.clone(), addrs, |a| {
            old.get(&a).map(|e| (*e).clone())
        })
    }

    fn build(
        shared: Arc<Shared>,
        addrs: impl IntoIterator<Item = SocketAddr>,
        existing: impl Fn(SocketAddr) -> Option<Arc<EndpointState>>,
    ) -> Self {
        let mut endpoints: Vec<Arc<EndpointState>> = Vec::new();
        for addr in addrs {
            if endpoints.iter().any(|e| e.addr() == addr) {
                continue;
            }
            let ep = existing(addr).unwrap_or_else(|| Arc::new(EndpointState::new(addr, &shared)));
            endpoints.push(ep);
        }
        if let Some(d) = &shared.detector {
            d.set_members(&endpoints);
        }
        Self {
            endpoints: endpoints.into_boxed_slice(),
            shared,
        }
    }

    /// Picks an endpoint that is healthy and not ejected; `None` when there is none (answer 503).
    pub fn pick(&self) -> Option<Pick> {
        let chosen = self.choose();
        if chosen.is_none() {
            self.shared.no_endpoint_total.fetch_add(1, Relaxed);
        }
        chosen.map(|ep| Pick::new(ep.clone()))
    }

    /// Like [`EndpointSet::pick`], but when no endpoint is available and the set is not empty,
    /// picks among all of them at random (Envoy's panic mode): a cluster whose every endpoint
    /// is ejected or failing its health check still gets traffic rather than a 503 for
    /// everything, so a single-endpoint cluster cannot black-hole itself.
    pub fn pick_or_panic(&self) -> Option<Pick> {
        self.pick().or_else(|| {
            let n = self.endpoints.len();
            (n > 0).then(|| Pick::new(self.endpoints[fastrand::usize(..n)].clone()))
        })
    }

    fn choose(&self) -> Option<&Arc<EndpointState>> {
        let eps = &*self.endpoints;
        let n = eps.len();
        let mut now = LazyNow::new(&self.shared.clock);
        match (n, self.shared.balancer) {
            (0, _) => None,
            (1, _) => eps.first().filter(|e| e.available(&mut now)),
            (_, Balancer::RoundRobin) => {
                let turn = self.shared.next.fetch_add(1, Relaxed);
                let ep = &eps[turn % n];
                if ep.available(&mut now) {
                    return Some(ep);
                }
                // An unavailable endpoint's turn goes to the available ones in turn, one per
                // round, rather than always to its successor (which would take double traffic).
                let available = eps.iter().filter(|e| e.available(&mut now)).count();
                if available == 0 {
                    return None;
                }
                let nth = (turn / n) % available;
                eps.iter().filter(|e| e.available(&mut now)).nth(nth)
            }
            (_, Balancer::Random) => {
                // A few fresh draws keep the choice uniform over the available endpoints; the
                // scan is only a fallback when most are unavailable.
                for _ in 0..n.min(4) {
                    let ep = &eps[fastrand::usize(..n)];
                    if ep.available(&mut now) {
                        return Some(ep);
                    }
                }
                Self::scan(eps, fastrand::usize(..n), &mut now)
            }
            (_, policy) => {
                let ewma = policy == Balancer::PeakEwma;
                let a = fastrand::usize(..n);
                let mut b = fastrand::usize(..n - 1);
                if b >= a {
                    b += 1;
                }
                let (a, b) = (&eps[a], &eps[b]);
                match (a.available(&mut now), b.available(&mut now)) {
                    (true, true) => {
                        if b.cost(ewma, &mut now) < a.cost(ewma, &mut now) {
                            Some(b)
                        } else {
                            Some(a)
                        }
                    }
                    (true, false) => Some(a),
                    (false, true) => Some(b),
                    // Both unavailable: the cheapest of all that are available.
                    (false, false) => {
                        let mut best: Option<(f64, &Arc<EndpointState>)> = None;
                        for e in eps {
                            if !e.available(&mut now) {
                                continue;
                            }
                            let cost = e.cost(ewma, &mut now);
                            if best.is_none_or(|(c, _)| cost < c) {
                                best = Some((cost, e));
                            }
                        }
                        best.map(|(_, e)| e)
                    }
                }
            }
        }
    }

    fn scan<'a>(
        eps: &'a [Arc<EndpointState>],
        start: usize,
        now: &mut LazyNow<'_>,
    ) -> Option<&'a Arc<EndpointState>> {
        let n = eps.len();
        (0..n)
            .map(|i| &eps[(start.wrapping_add(i)) % n])
            .find(|e| e.available(now))
    }

    /// The endpoints, in the order given.
    pub fn endpoints(&self) -> &[Arc<EndpointState>] {
        &self.endpoints
    }

    /// How many endpoints the set has (available or not).
    pub fn len(&self) -> usize {
        self.endpoints.len()
    }

    /// Whether the set has no endpoint at all.
    pub fn is_empty(&self) -> bool {
        self.endpoints.is_empty()
    }

    /// The cluster's name.
    pub fn cluster(&self) -> &str {
        &self.shared.cluster
    }

    /// A view of every endpoint and the cluster's counters, for the admin endpoint and metrics.
    pub fn snapshot(&self) -> ClusterSnapshot {
        let now = Instant::now();
        let detector = self.shared.detector.as_ref();
        ClusterSnapshot {
            cluster: self.shared.cluster.clone(),
            balancer: self.shared.balancer,
            endpoints: self.endpoints.iter().map(|e| e.snapshot(now)).collect(),
            ejections_total: detector.map_or(0, Detector::ejections_total),
            ejections_overflow_total: detector.map_or(0, Detector::overflow_total),
            no_endpoint_total: self.shared.no_endpoint_total.load(Relaxed),
        }
    }
}

// === impl Pick ===

impl Pick {
    /// Marks one more request in flight on `ep`.
    pub(crate) fn new(ep: Arc<EndpointState>) -> Self {
        ep.in_flight_counter().fetch_add(1, Relaxed);
        Self { ep }
    }

    /// Where to send the request.
    pub fn addr(&self) -> SocketAddr {
        self.ep.addr()
    }

    /// The endpoint's shared state.
    pub fn endpoint(&self) -> &Arc<EndpointState> {
        &self.ep
    }

    /// Records how the request went: feeds the latency estimate and outlier detection.
    ///
    /// Call it once, when the response head arrives (or the request fails); keep the `Pick`
    /// until the response body ends so the endpoint's in-flight count covers the whole exchange.
    /// NOTE: the latency of a gateway error is not fed to the estimate: a connection refused
    /// in a millisecond would otherwise make a dead endpoint look like the fastest one.
    pub fn record(&self, latency: Duration, outcome: Outcome) {
        self.ep.record(Instant::now(), latency, outcome);
    }

    /// [`Pick::record`] for a request sent at `started`, reading the clock once; returns the
    /// latency it recorded.
    pub fn record_since(&self, started: Instant, outcome: Outcome) -> Duration {
        let now = Instant::now();
        let latency = now.saturating_duration_since(started);
        self.ep.record(now, latency, outcome);
        latency
    }
}

impl Drop for Pick {
    fn drop(&mut self) {
        self.ep.in_flight_counter().fetch_sub(1, Relaxed);
    }
}

// === impl Shared ===

impl Shared {
    pub(crate) fn cluster(&self) -> &Arc<str> {
        &self.cluster
    }

    pub(crate) fn clock(&self) -> &Clock {
        &self.clock
    }

    pub(crate) fn ewma_decay_ns(&self) -> f64 {
        self.ewma_decay_ns
    }

    pub(crate) fn ewma_default_rtt(&self) -> Duration {
        self.ewma_default_rtt
    }

    pub(crate) fn detector(&self) -> Option<&Detector> {
        self.detector.as_ref()
    }
}

// === impl Clock ===

impl Clock {
    fn new() -> Self {
        Self {
            epoch: Instant::now(),
        }
    }

    /// Nanoseconds from the epoch to `at` (0 for instants before it).
    pub(crate) fn ns(&self, at: Instant) -> u64 {
        u64::try_from(at.saturating_duration_since(self.epoch).as_nanos()).unwrap_or(u64::MAX)
    }

    /// Nanoseconds from the epoch to now.
    pub(crate) fn now_ns(&self) -> u64 {
        self.ns(Instant::now())
    }
}

// === impl LazyNow ===

impl<'a> LazyNow<'a> {
    fn new(clock: &'a Clock) -> Self {
        Self { clock, ns: None }
    }

    pub(crate) fn get(&mut self) -> u64 {
        *self.ns.get_or_insert_with(|| self.clock.now_ns())
    }
}
