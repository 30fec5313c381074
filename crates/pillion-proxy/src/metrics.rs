//! Cluster state read at scrape time: retry budgets, outlier ejections, endpoint states and
//! circuit-breaker rejections.

use crate::cluster::Cluster;
use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, EncodeMetric},
    metrics::{counter::ConstCounter, gauge::ConstGauge, MetricType},
};
use std::sync::Arc;

/// Reads every cluster's state on each scrape.
#[derive(Debug)]
pub struct ClusterCollector {
    clusters: Vec<Arc<Cluster>>,
}

// === impl ClusterCollector ===

impl ClusterCollector {
    /// Collects `clusters`.
    pub fn new(clusters: Vec<Arc<Cluster>>) -> Self {
        Self { clusters }
    }
}

impl Collector for ClusterCollector {
    fn encode(&self, mut enc: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let snapshots: Vec<_> = self.clusters.iter().map(|c| (c, c.snapshot())).collect();

        let mut f = enc.encode_descriptor(
            "pillion_retry_budget_exhausted",
            "Retries not made because the cluster's retry budget was spent",
            None,
            MetricType::Counter,
        )?;
        for (c, _) in &snapshots {
            ConstCounter::new(c.budget.exhausted_total())
                .encode(f.encode_family(&[("cluster", c.name())])?)?;
        }

        let mut f = enc.encode_descriptor(
            "pillion_outlier_ejections",
            "Endpoints ejected by outlier detection",
            None,
            MetricType::Counter,
        )?;
        for (c, s) in &snapshots {
            ConstCounter::new(s.ejections_total)
                .encode(f.encode_family(&[("cluster", c.name())])?)?;
        }

        let mut f = enc.encode_descriptor(
            "pillion_cluster_endpoints",
            "Endpoints by state: available, unhealthy (failing health checks) or ejected (outlier detection)",
            None,
            MetricType::Gauge,
        )?;
        for (c, s) in &snapshots {
            let (mut available, mut unhealthy, mut ejected) = (0i64, 0i64, 0i64);
            for e in &s.endpoints {
                if !e.healthy {
                    unhealthy += 1;
                } else if e.ejected {
                    ejected += 1;
                } else {
                    available += 1;
                }
            }
            for (state, n) in [
                ("available", available),
                ("unhealthy", unhealthy),
                ("ejected", ejected),
            ] {
                ConstGauge::new(n)
                    .encode(f.encode_family(&[("cluster", c.name()), ("state", state)])?)?;
            }
        }

        let mut f = enc.encode_descriptor(
            "pillion_cluster_limit_rejections",
            "Requests and retries refused by a circuit-breaking limit",
            None,
            MetricType::Counter,
        )?;
        for (c, _) in &snapshots {
            for counter in c.limit_counters() {
                ConstCounter::new(counter.rejected_total()).encode(
                    f.encode_family(&[("cluster", c.name()), ("limit", counter.limit())])?,
                )?;
            }
        }

        let mut f = enc.encode_descriptor(
            "pillion_upstream_requests_active",
            "Requests (tries) in flight to the cluster",
            None,
            MetricType::Gauge,
        )?;
        for (c, _) in &snapshots {
            ConstGauge::new(c.max_requests.in_flight() as i64)
                .encode(f.encode_family(&[("cluster", c.name())])?)?;
        }
        Ok(())
    }
}
