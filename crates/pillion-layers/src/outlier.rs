//! Envoy-style outlier detection: endpoints that fail N times in a row are ejected for a while.
//!
//! Each endpoint keeps two consecutive-failure counters in atomics, fed by [`Pick::record`]:
//! any 5xx (and any gateway failure) counts toward `consecutive_5xx`; a 502, 503, 504, connect
//! failure or reset counts toward `consecutive_gateway_failure`; a non-5xx response resets
//! both, and a non-gateway 5xx resets the gateway counter (as Envoy does).
//!
//! Ejection lasts `base_ejection_time * multiplier`, capped at `max_ejection_time`, where the
//! multiplier grows by one with each ejection. There is no timer task: an ejected endpoint
//! returns by itself once its `ejected_until` instant passes, which every pick checks. While an
//! endpoint is back in service the multiplier decays by one for every `base_ejection_time`
//! that passes (Envoy decrements it once per detection interval while the host is not ejected;
//! Pillion has no interval timer, so it computes the decay lazily at the next ejection).
//!
//! [`Pick::record`]: crate::balance::Pick::record

use crate::balance::EndpointState;
use http::StatusCode;
use std::{
    sync::{
        atomic::{AtomicU32, AtomicU64, Ordering::Relaxed},
        Arc, Mutex, PoisonError, Weak,
    },
    time::Duration,
};
use tracing::{debug, warn};

/// Outlier detection settings for one cluster (Envoy's names and defaults).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutlierConfig {
    /// Eject after this many consecutive 5xx responses (gateway failures included); `None` disables.
    pub consecutive_5xx: Option<u32>,
    /// Eject after this many consecutive 502/503/504 or connect failures; `None` disables.
    pub consecutive_gateway_failure: Option<u32>,
    /// How long the first ejection lasts; the n-th lasts n times this.
    pub base_ejection_time: Duration,
    /// The longest an ejection lasts, however often the endpoint was ejected.
    pub max_ejection_time: Duration,
    /// The most endpoints, in percent of the cluster, that may be ejected at once.
    ///
    /// NOTE: as in Envoy, one endpoint may always be ejected when this is above 0, even when
    /// one endpoint is more than this percentage of the cluster (say 1 of 3 at 10%): otherwise
    /// a small cluster could never eject anything. 0 disables ejection altogether.
    pub max_ejection_percent: u8,
}

/// What became of a request sent to an endpoint, as far as balancing and outlier detection care.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Any response that is not a 5xx (a 4xx is the client's fault, not the endpoint's).
    Success,
    /// A 5xx response other than a gateway error.
    Error5xx(StatusCode),
    /// A 502, 503 or 504 response, or no response at all: connect failure, reset, refused.
    GatewayError,
}

/// Per-endpoint outlier state, all atomics so recording needs no lock.
#[derive(Debug, Default)]
pub(crate) struct EndpointOutlier {
    consecutive_5xx: AtomicU32,
    consecutive_gateway: AtomicU32,
    /// Nanoseconds since the cluster clock's epoch until which the endpoint is ejected; 0 when it
    /// never was. NOTE: left in place after the ejection ends, so the next ejection knows how
    /// long the endpoint has been back (for the multiplier's decay).
    ejected_until: AtomicU64,
    /// The multiplier of the last ejection (Envoy's "ejection time backoff").
    multiplier: AtomicU32,
    /// How many times this endpoint was ejected.
    ejections_total: AtomicU64,
}

/// The cluster-wide half of outlier detection: settings, membership and counters.
#[derive(Debug)]
pub(crate) struct Detector {
    cfg: OutlierConfig,
    /// The endpoints of the newest set, to count how many are ejected. NOTE: taken only when an
    /// endpoint crosses a threshold and when the set is rebuilt, never per request; it also
    /// serialises ejections so two endpoints cannot both take the last allowed slot.
    members: Mutex<Vec<Weak<EndpointState>>>,
    ejections_total: AtomicU64,
    overflow_total: AtomicU64,
}

// === impl OutlierConfig ===

impl Default for OutlierConfig {
    fn default() -> Self {
        Self {
            consecutive_5xx: Some(5),
            consecutive_gateway_failure: Some(5),
            base_ejection_time: Duration::from_secs(30),
            max_ejection_time: Duration::from_secs(300),
            max_ejection_percent: 10,
        }
    }
}

// === impl Outcome ===

impl Outcome {
    /// Classifies a response status: 502/503/504 are gateway errors, other 5xx are errors.
    pub fn from_status(status: StatusCode) -> Self {
        match status.as_u16() {
            502..=504 => Self::GatewayError,
            500..=599 => Self::Error5xx(status),
            _ => Self::Success,
        }
    }

    /// Whether this outcome counts toward `consecutive_gateway_failure`.
    pub fn is_gateway_error(&self) -> bool {
        match self {
            Self::GatewayError => true,
            Self::Error5xx(s) => matches!(s.as_u16(), 502..=504),
            Self::Success => false,
        }
    }
}

// === impl EndpointOutlier ===

impl EndpointOutlier {
    /// Whether the endpoint is ejected at `now_ns` (nanoseconds since the cluster's epoch).
    #[inline]
    pub(crate) fn is_ejected_at(&self, now_ns: u64) -> bool {
        self.ejected_until.load(Relaxed) > now_ns
    }

    /// Whether the endpoint was ever ejected (so a pick must read the clock to check it).
    #[inline]
    pub(crate) fn ever_ejected(&self) -> bool {
        self.ejected_until.load(Relaxed) != 0
    }

    /// How many times the endpoint was ejected.
    pub(crate) fn ejections_total(&self) -> u64 {
        self.ejections_total.load(Relaxed)
    }

    /// How long the endpoint stays ejected after `now_ns`, if it is.
    pub(crate) fn remaining(&self, now_ns: u64) -> Option<Duration> {
        let until = self.ejected_until.load(Relaxed);
        (until > now_ns).then(|| Duration::from_nanos(until - now_ns))
    }
}

// === impl Detector ===

impl Detector {
    /// A detector with no members yet.
    pub(crate) fn new(cfg: OutlierConfig) -> Self {
        Self {
            cfg,
            members: Mutex::new(Vec::new()),
            ejections_total: AtomicU64::new(0),
            overflow_total: AtomicU64::new(0),
        }
    }

    /// Replaces the membership used to enforce `max_ejection_percent`.
    pub(crate) fn set_members(&self, endpoints: &[Arc<EndpointState>]) {
        let members = endpoints.iter().map(Arc::downgrade).collect();
        *self.members.lock().unwrap_or_else(PoisonError::into_inner) = members;
    }

    /// How many ejections happened in the cluster.
    pub(crate) fn ejections_total(&self) -> u64 {
        self.ejections_total.load(Relaxed)
    }

    /// How many ejections were skipped because `max_ejection_percent` was reached.
    pub(crate) fn overflow_total(&self) -> u64 {
        self.overflow_total.load(Relaxed)
    }

    /// Feeds one outcome of `ep` at `now_ns`; ejects the endpoint when a threshold is crossed.
    pub(crate) fn observe(&self, ep: &EndpointState, outcome: Outcome, now_ns: u64) {
        let state = ep.outlier();
        if outcome == Outcome::Success {
            // NOTE: load before store, so the common all-good path only reads shared lines.
            if state.consecutive_5xx.load(Relaxed) != 0 {
                state.consecutive_5xx.store(0, Relaxed);
            }
            if state.consecutive_gateway.load(Relaxed) != 0 {
                state.consecutive_gateway.store(0, Relaxed);
            }
            return;
        }
        // Answers to requests sent before the ejection do not count toward the next one.
        if state.is_ejected_at(now_ns) {
            return;
        }
        let mut reason = None;
        if outcome.is_gateway_error() {
            let n = state.consecutive_gateway.fetch_add(1, Relaxed) + 1;
            if crossed(n, self.cfg.consecutive_gateway_failure) {
                reason = Some("consecutive gateway failures");
            }
        } else if state.consecutive_gateway.load(Relaxed) != 0 {
            state.consecutive_gateway.store(0, Relaxed);
        }
        let n = state.consecutive_5xx.fetch_add(1, Relaxed) + 1;
        if crossed(n, self.cfg.consecutive_5xx) {
            reason = reason.or(Some("consecutive 5xx"));
        }
        if let Some(reason) = reason {
            self.try_eject(ep, reason, now_ns);
        }
    }

    fn try_eject(&self, ep: &EndpointState, reason: &'static str, now_ns: u64) {
        let members = self.members.lock().unwrap_or_else(PoisonError::into_inner);
        let state = ep.outlier();
        if state.is_ejected_at(now_ns) {
            return; // Another thread got here first.
        }
        let (mut total, mut ejected) = (0usize, 0usize);
        for m in members.iter().filter_map(Weak::upgrade) {
            total += 1;
            ejected += usize::from(m.outlier().is_ejected_at(now_ns));
        }
        let percent = usize::from(self.cfg.max_ejection_percent.min(100));
        let allowed = percent > 0 && (ejected == 0 || (ejected + 1) * 100 <= percent * total);
        if !allowed {
            self.overflow_total.fetch_add(1, Relaxed);
            debug!(
                cluster = %ep.cluster(),
                endpoint = %ep.addr(),
                reason,
                ejected,
                total,
                "outlier not ejected: max_ejection_percent reached"
            );
            return;
        }

        let base = self.cfg.base_ejection_time;
        let max = self.cfg.max_ejection_time.max(base);
        let previous_until = state.ejected_until.load(Relaxed);
        let mut multiplier = state.multiplier.load(Relaxed);
        if previous_until != 0 {
            // One step of decay per base_ejection_time spent back in service.
            let back_for = now_ns.saturating_sub(previous_until);
            let steps = match u64::try_from(base.as_nanos()) {
                Ok(b) if b > 0 => back_for / b,
                _ => u64::MAX,
            };
            multiplier = multiplier.saturating_sub(u32::try_from(steps).unwrap_or(u32::MAX));
        }
        // NOTE: capped where base * multiplier reaches max, so a flapping endpoint's multiplier
        // does not climb so high that it takes hours to decay.
        let cap = if base.is_zero() {
            1
        } else {
            u32::try_from(max.as_nanos().div_ceil(base.as_nanos())).unwrap_or(u32::MAX)
        };
        let multiplier = (multiplier + 1).min(cap.max(1));
        let duration = base.saturating_mul(multiplier).min(max);
        let until = now_ns
            .saturating_add(u64::try_from(duration.as_nanos()).unwrap_or(u64::MAX))
            .max(1);
        state.multiplier.store(multiplier, Relaxed);
        state.ejected_until.store(until, Relaxed);
        state.consecutive_5xx.store(0, Relaxed);
        state.consecutive_gateway.store(0, Relaxed);
        state.ejections_total.fetch_add(1, Relaxed);
        self.ejections_total.fetch_add(1, Relaxed);
        drop(members);
        warn!(
            cluster = %ep.cluster(),
            endpoint = %ep.addr(),
            reason,
            ejected_for = ?duration,
            "outlier ejected"
        );
    }
}

/// Whether the n-th consecutive failure crosses `threshold`. NOTE: true again at every multiple
/// of the threshold, so an endpoint whose ejection was refused (max percent reached) is retried
/// after another N failures, while a failing endpoint does not take the lock on every request.
fn crossed(n: u32, threshold: Option<u32>) -> bool {
    match threshold {
        Some(t) if t > 0 => n.is_multiple_of(t),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::balance::{BalanceConfig, Balancer, EndpointSet};
    use std::net::SocketAddr;
    use tokio::time::{advance, Instant};

    fn addrs(n: u16) -> Vec<SocketAddr> {
        (1..=n)
            .map(|p| SocketAddr::from(([127, 0, 0, 1], p)))
            .collect()
    }

    fn set(n: u16, cfg: OutlierConfig) -> EndpointSet {
        let cfg = BalanceConfig {
            balancer: Balancer::RoundRobin,
            outlier: Some(cfg),
            ..Default::default()
        };
        EndpointSet::new("test", addrs(n), cfg)
    }

    fn fail(set: &EndpointSet, i: usize, n: usize, outcome: Outcome) {
        let ep = &set.endpoints()[i];
        for _ in 0..n {
            crate::balance::Pick::new(ep.clone()).record(Duration::from_millis(1), outcome);
        }
    }

    fn ejected(set: &EndpointSet) -> Vec<bool> {
        let now = Instant::now();
        set.endpoints().iter().map(|e| e.is_ejected(now)).collect()
    }

    fn err500() -> Outcome {
        Outcome::Error5xx(StatusCode::INTERNAL_SERVER_ERROR)
    }

    fn all_percent() -> OutlierConfig {
        OutlierConfig {
            max_ejection_percent: 100,
            ..Default::default()
        }
    }

    #[test]
    fn classifies_statuses() {
        assert_eq!(Outcome::from_status(StatusCode::OK), Outcome::Success);
        assert_eq!(
            Outcome::from_status(StatusCode::NOT_FOUND),
            Outcome::Success
        );
        assert_eq!(
            Outcome::from_status(StatusCode::BAD_GATEWAY),
            Outcome::GatewayError
        );
        assert_eq!(
            Outcome::from_status(StatusCode::INTERNAL_SERVER_ERROR),
            err500()
        );
        assert!(Outcome::Error5xx(StatusCode::SERVICE_UNAVAILABLE).is_gateway_error());
        assert!(!err500().is_gateway_error());
    }

    #[tokio::test(start_paused = true)]
    async fn ejects_after_consecutive_5xx_and_returns_after_the_ejection_time() {
        let s = set(3, all_percent());
        fail(&s, 0, 4, err500());
        assert_eq!(ejected(&s), [false, false, false]);
        fail(&s, 0, 1, err500());
        assert_eq!(ejected(&s), [true, false, false]);
        assert_eq!(s.snapshot().ejections_total, 1);
        // Picks skip it while ejected.
        for _ in 0..10 {
            assert_ne!(s.pick().unwrap().addr().port(), 1);
        }
        advance(Duration::from_secs(29)).await;
        assert_eq!(ejected(&s), [true, false, false]);
        advance(Duration::from_secs(1)).await;
        assert_eq!(ejected(&s), [false, false, false]);
        let ports: Vec<u16> = (0..3).map(|_| s.pick().unwrap().addr().port()).collect();
        assert!(ports.contains(&1), "{ports:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn a_success_resets_the_count() {
        let s = set(3, all_percent());
        fail(&s, 0, 4, err500());
        fail(&s, 0, 1, Outcome::Success);
        fail(&s, 0, 4, err500());
        assert_eq!(ejected(&s), [false, false, false]);
        fail(&s, 0, 1, err500());
        assert_eq!(ejected(&s), [true, false, false]);
    }

    #[tokio::test(start_paused = true)]
    async fn gateway_failures_have_their_own_count() {
        let cfg = OutlierConfig {
            consecutive_5xx: None,
            ..all_percent()
        };
        let s = set(3, cfg);
        // A plain 500 resets the gateway count (and the 5xx detector is off).
        fail(&s, 0, 4, Outcome::GatewayError);
        fail(&s, 0, 1, err500());
        fail(&s, 0, 4, Outcome::GatewayError);
        assert_eq!(ejected(&s), [false, false, false]);
        fail(&s, 0, 1, Outcome::GatewayError);
        assert_eq!(ejected(&s), [true, false, false]);

        // With the 5xx detector on, gateway failures count as 5xx too.
        let s = set(3, all_percent());
        fail(&s, 1, 4, Outcome::GatewayError);
        fail(&s, 1, 1, err500());
        assert_eq!(ejected(&s), [false, true, false]);
    }

    #[tokio::test(start_paused = true)]
    async fn repeated_ejections_last_longer_up_to_the_max() {
        let cfg = OutlierConfig {
            base_ejection_time: Duration::from_secs(10),
            max_ejection_time: Duration::from_secs(25),
            ..all_percent()
        };
        let s = set(3, cfg);
        let ep = s.endpoints()[0].clone();
        let now = || Instant::now();

        fail(&s, 0, 5, err500());
        assert_eq!(ep.ejected_for(now()), Some(Duration::from_secs(10)));
        advance(Duration::from_secs(10)).await;
        assert!(!ep.is_ejected(now()));

        fail(&s, 0, 5, err500());
        assert_eq!(ep.ejected_for(now()), Some(Duration::from_secs(20)));
        advance(Duration::from_secs(20)).await;

        fail(&s, 0, 5, err500());
        assert_eq!(ep.ejected_for(now()), Some(Duration::from_secs(25)));
        advance(Duration::from_secs(25)).await;

        fail(&s, 0, 5, err500());
        assert_eq!(ep.ejected_for(now()), Some(Duration::from_secs(25)));
        advance(Duration::from_secs(25)).await;

        // Back in service for one base time: the multiplier (3, capped) drops by one.
        advance(Duration::from_secs(10)).await;
        fail(&s, 0, 5, err500());
        assert_eq!(ep.ejected_for(now()), Some(Duration::from_secs(25)));
        advance(Duration::from_secs(25)).await;

        // Back in service long enough: the multiplier decays to zero, the next ejection is short.
        advance(Duration::from_secs(60)).await;
        fail(&s, 0, 5, err500());
        assert_eq!(ep.ejected_for(now()), Some(Duration::from_secs(10)));
        assert_eq!(s.snapshot().ejections_total, 6);
    }

    #[tokio::test(start_paused = true)]
    async fn failures_answered_while_ejected_do_not_count() {
        let s = set(3, all_percent());
        fail(&s, 0, 5, err500());
        fail(&s, 0, 20, err500());
        advance(Duration::from_secs(30)).await;
        assert_eq!(ejected(&s), [false, false, false]);
        fail(&s, 0, 4, err500());
        assert_eq!(ejected(&s), [false, false, false]);
        assert_eq!(s.snapshot().ejections_total, 1);
    }

    #[tokio::test(start_paused = true)]
    async fn max_ejection_percent_is_respected() {
        // 10% of 10: one endpoint.
        let s = set(10, OutlierConfig::default());
        for i in 0..10 {
            fail(&s, i, 5, err500());
        }
        assert_eq!(ejected(&s).iter().filter(|e| **e).count(), 1);
        let snap = s.snapshot();
        assert_eq!(snap.ejections_total, 1);
        assert_eq!(snap.ejections_overflow_total, 9);
        // A refused endpoint is retried after another N failures, once there is room.
        advance(Duration::from_secs(30)).await;
        fail(&s, 5, 5, err500());
        assert!(s.endpoints()[5].is_ejected(Instant::now()));

        // 10% of 3 is less than one endpoint, yet one may be ejected (as in Envoy).
        let s = set(3, OutlierConfig::default());
        for i in 0..3 {
            fail(&s, i, 5, err500());
        }
        assert_eq!(ejected(&s), [true, false, false]);

        // 50% of 4: two.
        let cfg = OutlierConfig {
            max_ejection_percent: 50,
            ..Default::default()
        };
        let s = set(4, cfg);
        for i in 0..4 {
            fail(&s, i, 5, err500());
        }
        assert_eq!(ejected(&s), [true, true, false, false]);

        // 0% disables ejection.
        let cfg = OutlierConfig {
            max_ejection_percent: 0,
            ..Default::default()
        };
        let s = set(2, cfg);
        fail(&s, 0, 5, err500());
        assert_eq!(ejected(&s), [false, false]);

        // 100% may eject all: the set then has nothing to pick.
        let s = set(2, all_percent());
        fail(&s, 0, 5, err500());
        fail(&s, 1, 5, err500());
        assert!(s.pick().is_none());
        assert_eq!(s.snapshot().no_endpoint_total, 1);
    }

    #[tokio::test(start_paused = true)]
    async fn no_detection_without_config() {
        let s = EndpointSet::new("test", addrs(2), BalanceConfig::default());
        fail(&s, 0, 50, err500());
        assert_eq!(ejected(&s), [false, false]);
    }
}
