//! Tests of endpoint selection: policies, availability, rebuilds and snapshots.

use super::*;
use http::StatusCode;
use tokio::time::advance;

fn addr(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

fn addrs(n: u16) -> Vec<SocketAddr> {
    (1..=n).map(addr).collect()
}

fn set(n: u16, balancer: Balancer) -> EndpointSet {
    let cfg = BalanceConfig {
        balancer,
        outlier: Some(OutlierConfig {
            max_ejection_percent: 100,
            ..Default::default()
        }),
        ..Default::default()
    };
    EndpointSet::new("test", addrs(n), cfg)
}

/// How many of `picks` picks (each dropped at once) go to each endpoint, by port - 1.
fn spread(set: &EndpointSet, picks: usize) -> Vec<usize> {
    let mut counts = vec![0; set.len()];
    for _ in 0..picks {
        counts[usize::from(set.pick().unwrap().addr().port()) - 1] += 1;
    }
    counts
}

const ALL: [Balancer; 4] = [
    Balancer::RoundRobin,
    Balancer::Random,
    Balancer::LeastRequest,
    Balancer::PeakEwma,
];

#[test]
fn round_robin_goes_in_order() {
    let s = set(3, Balancer::RoundRobin);
    let ports: Vec<u16> = (0..7).map(|_| s.pick().unwrap().addr().port()).collect();
    assert_eq!(ports, [1, 2, 3, 1, 2, 3, 1]);
}

#[test]
fn random_spreads_evenly() {
    fastrand::seed(1);
    let s = set(4, Balancer::Random);
    let counts = spread(&s, 4000);
    assert!(counts.iter().all(|c| (800..1200).contains(c)), "{counts:?}");
}

#[test]
fn least_request_prefers_the_less_loaded_endpoint() {
    fastrand::seed(2);
    let s = set(3, Balancer::LeastRequest);
    let _busy: Vec<Pick> = (0..10)
        .map(|_| Pick::new(s.endpoints()[0].clone()))
        .collect();
    assert_eq!(s.endpoints()[0].in_flight(), 10);
    let counts = spread(&s, 300);
    assert_eq!(counts[0], 0, "{counts:?}");

    // Picks held open spread the load evenly.
    let s = set(3, Balancer::LeastRequest);
    let held: Vec<Pick> = (0..300).map(|_| s.pick().unwrap()).collect();
    let loads: Vec<usize> = s.endpoints().iter().map(|e| e.in_flight()).collect();
    assert!(loads.iter().all(|l| (95..=105).contains(l)), "{loads:?}");
    drop(held);
    assert!(s.endpoints().iter().all(|e| e.in_flight() == 0));
}

#[tokio::test(start_paused = true)]
async fn ewma_avoids_the_slow_endpoint() {
    fastrand::seed(3);
    let s = set(3, Balancer::PeakEwma);
    let slow = addr(3);
    let mut counts = [0usize; 3];
    for _ in 0..3000 {
        advance(Duration::from_millis(1)).await;
        let pick = s.pick().unwrap();
        let latency = if pick.addr() == slow { 30 } else { 10 };
        pick.record(Duration::from_millis(latency), Outcome::Success);
        counts[usize::from(pick.addr().port()) - 1] += 1;
    }
    assert!(counts[2] < 3000 / 4, "{counts:?}");
    assert!(counts[0] > 1000 && counts[1] > 1000, "{counts:?}");
    // Lower samples pull the estimate down from the 30ms default with the 10s time constant:
    // after 3s, 10 + 20 * e^-0.3 = 24.8ms.
    let snap = s.snapshot();
    assert!((snap.endpoints[0].ewma_ms - 24.8).abs() < 0.1, "{snap:?}");
}

#[tokio::test(start_paused = true)]
async fn ewma_avoids_an_endpoint_that_fails_fast() {
    // A refused connect is answered in no time; it must not make the endpoint the cheapest.
    fastrand::seed(5);
    let cfg = BalanceConfig {
        balancer: Balancer::PeakEwma,
        ..Default::default()
    };
    let s = EndpointSet::new("test", addrs(3), cfg);
    let dead = addr(1);
    let mut counts = [0usize; 3];
    for _ in 0..3000 {
        advance(Duration::from_millis(1)).await;
        let pick = s.pick().unwrap();
        if pick.addr() == dead {
            pick.record(Duration::from_micros(50), Outcome::GatewayError);
        } else {
            pick.record(Duration::from_millis(10), Outcome::Success);
        }
        counts[usize::from(pick.addr().port()) - 1] += 1;
    }
    assert!(counts[0] < 3000 / 20, "{counts:?}");
}

#[tokio::test(start_paused = true)]
async fn ewma_weighs_latency_by_load() {
    fastrand::seed(4);
    let s = set(2, Balancer::PeakEwma);
    for ep in s.endpoints() {
        Pick::new(ep.clone()).record(Duration::from_millis(10), Outcome::Success);
    }
    // Same latency, but endpoint 1 has requests in flight: endpoint 2 costs less.
    let _busy = Pick::new(s.endpoints()[0].clone());
    assert_eq!(spread(&s, 50), [0, 50]);
}

#[test]
fn round_robin_spreads_an_unavailable_endpoints_turns_over_the_others() {
    let s = set(4, Balancer::RoundRobin);
    s.endpoints()[0].set_healthy(false);
    let counts = spread(&s, 1200);
    assert_eq!(counts, [0, 400, 400, 400]);
}

#[tokio::test(start_paused = true)]
async fn picks_skip_unhealthy_and_ejected_endpoints() {
    for balancer in ALL {
        fastrand::seed(5);
        let s = set(4, balancer);
        s.endpoints()[0].set_healthy(false);
        let ejected = Pick::new(s.endpoints()[2].clone());
        for _ in 0..5 {
            ejected.record(Duration::from_millis(1), Outcome::GatewayError);
        }
        drop(ejected);
        assert!(s.endpoints()[2].is_ejected(Instant::now()));
        let counts = spread(&s, 400);
        assert_eq!((counts[0], counts[2]), (0, 0), "{balancer:?}: {counts:?}");
        assert!(
            counts[1] > 100 && counts[3] > 100,
            "{balancer:?}: {counts:?}"
        );

        // With every endpoint unavailable there is nothing to pick.
        s.endpoints()[1].set_healthy(false);
        s.endpoints()[3].set_healthy(false);
        assert!(s.pick().is_none(), "{balancer:?}");
        assert_eq!(s.snapshot().no_endpoint_total, 1);

        // The ejection ends by itself.
        advance(Duration::from_secs(30)).await;
        assert_eq!(s.pick().unwrap().addr(), addr(3), "{balancer:?}");
    }
}

#[test]
fn empty_and_single_sets() {
    for balancer in ALL {
        let s = EndpointSet::new(
            "test",
            [],
            BalanceConfig {
                balancer,
                ..Default::default()
            },
        );
        assert!(s.is_empty());
        assert!(s.pick().is_none());
        let s = set(1, balancer);
        assert_eq!(s.pick().unwrap().addr(), addr(1));
        s.endpoints()[0].set_healthy(false);
        assert!(s.pick().is_none());
    }
}

#[tokio::test(start_paused = true)]
async fn rebuilds_keep_the_state_of_endpoints_that_stay() {
    let s = set(3, Balancer::RoundRobin);
    let kept = s.endpoints()[1].clone();
    let in_flight = s.pick().unwrap(); // endpoint 1, about to be removed
    let held = Pick::new(kept.clone());
    held.record(Duration::from_millis(80), Outcome::Success);
    for _ in 0..5 {
        held.record(
            Duration::from_millis(1),
            Outcome::Error5xx(StatusCode::INTERNAL_SERVER_ERROR),
        );
    }
    s.endpoints()[2].set_healthy(false);

    let next = s.rebuild([addr(3), addr(2), addr(4), addr(2)]);
    assert_eq!(
        next.endpoints()
            .iter()
            .map(|e| e.addr().port())
            .collect::<Vec<_>>(),
        [3, 2, 4]
    );
    assert!(Arc::ptr_eq(&next.endpoints()[1], &kept));
    assert_eq!(kept.in_flight(), 1);
    assert!(kept.is_ejected(Instant::now()));
    assert!(!next.endpoints()[0].is_healthy());
    let fresh = &next.endpoints()[2];
    assert!(fresh.is_healthy() && !fresh.is_ejected(Instant::now()));
    assert_eq!(fresh.in_flight(), 0);
    assert_eq!(next.snapshot().ejections_total, 1);
    assert_eq!(next.cluster(), "test");

    // Only the new endpoint is available; a removed endpoint's pick still drops cleanly.
    assert_eq!(next.pick().unwrap().addr(), addr(4));
    drop(in_flight);
    drop(held);
    assert_eq!(kept.in_flight(), 0);
}

#[test]
fn round_robin_continues_across_rebuilds() {
    let s = set(2, Balancer::RoundRobin);
    assert_eq!(s.pick().unwrap().addr(), addr(1));
    let next = s.rebuild(addrs(2));
    assert_eq!(next.pick().unwrap().addr(), addr(2));
}

#[tokio::test(start_paused = true)]
async fn snapshot_shows_every_endpoint() {
    let s = set(2, Balancer::LeastRequest);
    let a = Pick::new(s.endpoints()[0].clone());
    a.record(Duration::from_millis(40), Outcome::Success);
    a.record(
        Duration::from_millis(5),
        Outcome::Error5xx(StatusCode::INTERNAL_SERVER_ERROR),
    );
    a.record(Duration::from_millis(1), Outcome::GatewayError);
    let snap = s.snapshot();
    assert_eq!(&*snap.cluster, "test");
    assert_eq!(snap.balancer.name(), "least_request");
    let e = &snap.endpoints[0];
    assert_eq!(e.addr, addr(1));
    assert!(e.healthy && !e.ejected && e.ejected_for.is_none());
    assert_eq!(e.in_flight, 1);
    assert_eq!(
        (
            e.successes_total,
            e.errors_5xx_total,
            e.gateway_errors_total
        ),
        (1, 1, 1)
    );
    // The peak (40ms) held through the 5ms sample (no time elapsed); the gateway error counts as
    // a 1s answer, a new peak.
    assert!((e.ewma_ms - 1000.0).abs() < 0.01, "{e:?}");
    let idle = &snap.endpoints[1];
    assert_eq!(idle.in_flight, 0);
    assert!((idle.ewma_ms - 30.0).abs() < 0.01, "{idle:?}");
}

#[tokio::test(start_paused = true)]
async fn panic_mode_picks_among_all_when_none_is_available() {
    let set = EndpointSet::new("c", [addr(1), addr(2)], BalanceConfig::default());
    for e in set.endpoints() {
        e.set_healthy(false);
    }
    assert!(set.pick().is_none());
    let picked: Vec<u16> = (0..64)
        .map(|_| set.pick_or_panic().expect("panic pick").addr().port())
        .collect();
    assert!(picked.contains(&1) && picked.contains(&2), "{picked:?}");
    let empty = EndpointSet::new("c", [], BalanceConfig::default());
    assert!(empty.pick_or_panic().is_none());
}
