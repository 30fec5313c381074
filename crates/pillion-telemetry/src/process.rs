//! Process metrics read from /proc on each scrape, and the build info.

use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, EncodeMetric},
    metrics::{counter::ConstCounter, gauge::ConstGauge, MetricType},
    registry::Registry,
};

/// Linux's USER_HZ: the unit of the CPU times in /proc/self/stat (100 on every mainstream arch).
const TICKS_PER_SEC: f64 = 100.0;

/// Reads /proc/self on every scrape.
#[derive(Debug)]
struct ProcessCollector {
    version: &'static str,
    commit: &'static str,
}

/// Registers `pillion_process_*` and `pillion_build_info`.
pub fn register_process_metrics(
    registry: &mut Registry,
    version: &'static str,
    commit: &'static str,
) {
    registry.register_collector(Box::new(ProcessCollector { version, commit }));
}

/// A snapshot of the process, from /proc.
#[derive(Debug, Default, Clone, Copy, PartialEq)]
pub struct ProcessStats {
    /// Resident memory in bytes.
    pub rss_bytes: u64,
    /// Open file descriptors.
    pub open_fds: u64,
    /// User plus system CPU time in seconds.
    pub cpu_seconds: f64,
    /// Start time in seconds since the Unix epoch.
    pub start_time_seconds: f64,
}

// === impl ProcessStats ===

impl ProcessStats {
    /// Reads /proc/self; fields that cannot be read stay 0.
    pub fn read() -> Self {
        let mut s = Self::default();
        if let Ok(status) = std::fs::read_to_string("/proc/self/status") {
            if let Some(kb) = status
                .lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.split_whitespace().next())
                .and_then(|v| v.parse::<u64>().ok())
            {
                s.rss_bytes = kb * 1024;
            }
        }
        if let Ok(dir) = std::fs::read_dir("/proc/self/fd") {
            s.open_fds = dir.count() as u64;
        }
        if let Ok(stat) = std::fs::read_to_string("/proc/self/stat") {
            // The command name (field 2) may hold spaces; fields after its ')' are plain.
            if let Some(rest) = stat.rsplit_once(')').map(|(_, r)| r) {
                let f: Vec<&str> = rest.split_whitespace().collect();
                // rest starts at field 3 (state); utime is field 14, stime 15, starttime 22.
                let field = |n: usize| f.get(n - 3).and_then(|v| v.parse::<f64>().ok());
                if let (Some(u), Some(st)) = (field(14), field(15)) {
                    s.cpu_seconds = (u + st) / TICKS_PER_SEC;
                }
                if let (Some(start), Some(btime)) = (field(22), boot_time()) {
                    s.start_time_seconds = btime + start / TICKS_PER_SEC;
                }
            }
        }
        s
    }
}

fn boot_time() -> Option<f64> {
    std::fs::read_to_string("/proc/stat")
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix("btime "))
        .and_then(|v| v.trim().parse().ok())
}

// === impl ProcessCollector ===

impl Collector for ProcessCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let s = ProcessStats::read();
        let gauge = |enc: &mut DescriptorEncoder, name: &str, help: &str, v: f64| {
            let m = ConstGauge::new(v);
            m.encode(enc.encode_descriptor(name, help, None, m.metric_type())?)
        };
        gauge(
            &mut encoder,
            "pillion_process_resident_memory_bytes",
            "Resident memory size in bytes",
            s.rss_bytes as f64,
        )?;
        gauge(
            &mut encoder,
            "pillion_process_open_fds",
            "Open file descriptors",
            s.open_fds as f64,
        )?;
        gauge(
            &mut encoder,
            "pillion_process_start_time_seconds",
            "Start time of the process since the Unix epoch, in seconds",
            s.start_time_seconds,
        )?;
        let cpu = ConstCounter::new(s.cpu_seconds);
        cpu.encode(encoder.encode_descriptor(
            "pillion_process_cpu_seconds",
            "User and system CPU time spent, in seconds",
            None,
            MetricType::Counter,
        )?)?;
        let info = ConstGauge::new(1i64);
        let labels = [("version", self.version), ("commit", self.commit)];
        let mut family = encoder.encode_descriptor(
            "pillion_build_info",
            "The running build: version and commit (always 1)",
            None,
            MetricType::Gauge,
        )?;
        info.encode(family.encode_family(&labels)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_this_process() {
        let s = ProcessStats::read();
        assert!(s.rss_bytes > 1024 * 1024, "{s:?}");
        assert!(s.open_fds >= 3, "{s:?}");
        assert!(s.start_time_seconds > 1.6e9, "{s:?}");
    }

    #[test]
    fn encodes_families() {
        let mut r = Registry::default();
        register_process_metrics(&mut r, "1.2.3", "abc123");
        let text = crate::encode(&r);
        for name in [
            "pillion_process_resident_memory_bytes ",
            "pillion_process_open_fds ",
            "pillion_process_start_time_seconds ",
            "pillion_process_cpu_seconds_total ",
            "pillion_build_info{version=\"1.2.3\",commit=\"abc123\"} 1",
        ] {
            assert!(text.contains(name), "{name} missing in\n{text}");
        }
    }
}
