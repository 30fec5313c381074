//! What a run measured: per-connection counters, merged into a serializable report.

use std::fmt;
use std::time::Duration;

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};
use tokio::time::Instant;

/// The result of a run. Its JSON field names are stable: scripts read them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Report {
    /// Responses received (any status) to measured requests.
    pub requests: u64,
    /// The measured window: from the end of the warmup until the last measured request
    /// completed, or until sending stopped (the end of `--duration`, or the interrupt) if that
    /// is later.
    pub duration_secs: f64,
    /// `requests / duration_secs`.
    pub rps: f64,
    /// Response body bytes received.
    pub bytes: u64,
    /// Latency of the responses, in microseconds; every field is `null` if there were none.
    pub latency_us: Latency,
    /// Requests that got no response.
    pub errors: Errors,
    /// What went wrong, message by message, most frequent first: up to
    /// [`MAX_ERROR_MESSAGES`] distinct messages (any further ones are counted in `errors` only).
    pub error_messages: Vec<ErrorMessage>,
    /// Open loop with `--duration`: requests that fell due in the measured window but were never
    /// sent, because their connection was still waiting on earlier responses when it ended.
    /// Anything above 0 means the target did not keep up with the rate.
    pub missed: u64,
    /// Responses by status class.
    pub status: StatusClasses,
    pub connections: usize,
    pub mode: Mode,
    /// The `--rate` of an open loop.
    pub rate: Option<f64>,
    /// The run was stopped by a signal (Ctrl-C): this is what was measured until then.
    pub interrupted: bool,
    /// What may make the numbers mean less than they seem (also printed on stderr).
    pub warnings: Vec<String>,
}

/// Latency percentiles in microseconds, from an HdrHistogram with 3 significant digits; `None`
/// (`null` in JSON) when no response was measured, rather than a latency of 0.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Latency {
    pub p50: Option<u64>,
    pub p90: Option<u64>,
    pub p99: Option<u64>,
    pub p999: Option<u64>,
    pub max: Option<u64>,
    pub mean: Option<f64>,
}

/// Requests that failed, by kind.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Errors {
    /// The TCP connect or the HTTP handshake failed (or took longer than the timeout).
    pub connect: u64,
    /// No complete response within the timeout.
    pub timeout: u64,
    /// I/O or protocol errors, including a connection closed mid-request.
    pub other: u64,
}

/// How many distinct error messages a report keeps.
pub const MAX_ERROR_MESSAGES: usize = 8;

/// One error message and how many requests failed with it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorMessage {
    /// `connect`, `timeout` or `other`, as in [`Errors`].
    pub kind: String,
    pub message: String,
    pub count: u64,
}

/// Responses by status class.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatusClasses {
    #[serde(rename = "2xx")]
    pub s2xx: u64,
    #[serde(rename = "3xx")]
    pub s3xx: u64,
    #[serde(rename = "4xx")]
    pub s4xx: u64,
    #[serde(rename = "5xx")]
    pub s5xx: u64,
}

/// How requests were paced.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Each connection sends its next request when the previous response has arrived.
    Closed,
    /// Requests are sent at a fixed rate; latency counts from when each was due.
    Open,
}

/// Why a request got no response.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ErrorKind {
    Connect,
    Timeout,
    Other,
}

/// A request that got no response: the kind, and what went wrong where there is more to say.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Failure {
    pub(crate) kind: ErrorKind,
    pub(crate) message: Option<String>,
    /// The server certainly did not process the request (an HTTP/2 stream it refused, or left
    /// unprocessed by a graceful GOAWAY), so it may be sent again.
    pub(crate) unprocessed: bool,
}

/// What one connection task measured; merged into a [`Report`] at the end.
///
/// NOTE: each task owns one, so recording takes no lock.
#[derive(Debug, Clone)]
pub(crate) struct Stats {
    latency: Histogram<u64>,
    responses: u64,
    bytes: u64,
    errors: Errors,
    /// Distinct messages with their counts, at most [`MAX_ERROR_MESSAGES`].
    messages: Vec<ErrorMessage>,
    missed: u64,
    status: StatusClasses,
    /// When the last measured request completed, answered or not.
    last_end: Option<Instant>,
    /// The lowest SETTINGS_MAX_CONCURRENT_STREAMS an HTTP/2 server announced, if any.
    server_max_streams: Option<usize>,
}

// === impl ErrorKind ===

impl ErrorKind {
    fn name(self) -> &'static str {
        match self {
            ErrorKind::Connect => "connect",
            ErrorKind::Timeout => "timeout",
            ErrorKind::Other => "other",
        }
    }
}

// === impl Failure ===

impl Failure {
    /// A failure with the message of `error` and each of its sources, joined by `: `.
    pub(crate) fn with_error(kind: ErrorKind, error: &(dyn std::error::Error + 'static)) -> Self {
        let mut message = error.to_string();
        let mut source = error.source();
        while let Some(e) = source {
            let next = e.to_string();
            // Some errors repeat their source's message in their own; say it once.
            if !message.ends_with(&next) {
                message.push_str(": ");
                message.push_str(&next);
            }
            source = e.source();
        }
        Self {
            kind,
            message: Some(message),
            unprocessed: false,
        }
    }
}

impl From<ErrorKind> for Failure {
    fn from(kind: ErrorKind) -> Self {
        Self {
            kind,
            message: None,
            unprocessed: false,
        }
    }
}

// === impl Stats ===

impl Stats {
    pub(crate) fn new() -> Self {
        // NOTE: 3 significant digits is in hdrhistogram's range (0..=5), and `new` starts with
        // bounds 1..2 that always satisfy its checks, so this cannot fail. The histogram
        // resizes itself as larger values are recorded.
        let latency = Histogram::new(3).expect("3 significant digits are valid");
        Self {
            latency,
            responses: 0,
            bytes: 0,
            errors: Errors::default(),
            messages: Vec::new(),
            missed: 0,
            status: StatusClasses::default(),
            last_end: None,
            server_max_streams: None,
        }
    }

    /// Notes that a measured request completed (answered or not) at `at`.
    pub(crate) fn record_end(&mut self, at: Instant) {
        self.last_end = self.last_end.max(Some(at));
    }

    /// When the last measured request completed.
    pub(crate) fn last_end(&self) -> Option<Instant> {
        self.last_end
    }

    /// Notes a server's SETTINGS_MAX_CONCURRENT_STREAMS.
    pub(crate) fn record_server_max_streams(&mut self, max: usize) {
        self.server_max_streams = Some(self.server_max_streams.map_or(max, |m| m.min(max)));
    }

    /// The lowest SETTINGS_MAX_CONCURRENT_STREAMS a server announced.
    pub(crate) fn server_max_streams(&self) -> Option<usize> {
        self.server_max_streams
    }

    pub(crate) fn record_response(&mut self, status: u16, bytes: u64, latency: Duration) {
        self.responses += 1;
        self.bytes += bytes;
        match status {
            200..=299 => self.status.s2xx += 1,
            300..=399 => self.status.s3xx += 1,
            400..=499 => self.status.s4xx += 1,
            500..=599 => self.status.s5xx += 1,
            _ => {}
        }
        let us = u64::try_from(latency.as_micros()).unwrap_or(u64::MAX);
        if self.latency.record(us).is_err() {
            // Only a value too large to resize for; keep it, at the top of the range.
            self.latency.saturating_record(us);
        }
    }

    pub(crate) fn record_error(&mut self, kind: ErrorKind) {
        match kind {
            ErrorKind::Connect => self.errors.connect += 1,
            ErrorKind::Timeout => self.errors.timeout += 1,
            ErrorKind::Other => self.errors.other += 1,
        }
    }

    /// Counts a failed request, and its message among the first few distinct ones.
    pub(crate) fn record_failure(&mut self, failure: Failure) {
        self.record_error(failure.kind);
        if let Some(message) = failure.message {
            self.count_message(failure.kind.name(), message, 1);
        }
    }

    fn count_message(&mut self, kind: &str, message: String, count: u64) {
        if let Some(m) = self
            .messages
            .iter_mut()
            .find(|m| m.kind == kind && m.message == message)
        {
            m.count += count;
        } else if self.messages.len() < MAX_ERROR_MESSAGES {
            self.messages.push(ErrorMessage {
                kind: kind.to_owned(),
                message,
                count,
            });
        }
    }

    /// Counts open-loop requests that fell due in the window and were never sent.
    pub(crate) fn record_missed(&mut self, n: u64) {
        self.missed = self.missed.saturating_add(n);
    }

    pub(crate) fn merge(&mut self, other: &Stats) -> anyhow::Result<()> {
        self.latency
            .add(&other.latency)
            .map_err(|e| anyhow::anyhow!("cannot merge latency histograms: {e:?}"))?;
        self.responses += other.responses;
        self.bytes += other.bytes;
        self.errors.connect += other.errors.connect;
        self.errors.timeout += other.errors.timeout;
        self.errors.other += other.errors.other;
        self.missed = self.missed.saturating_add(other.missed);
        self.last_end = self.last_end.max(other.last_end);
        if let Some(max) = other.server_max_streams {
            self.record_server_max_streams(max);
        }
        for m in &other.messages {
            self.count_message(&m.kind, m.message.clone(), m.count);
        }
        self.status.s2xx += other.status.s2xx;
        self.status.s3xx += other.status.s3xx;
        self.status.s4xx += other.status.s4xx;
        self.status.s5xx += other.status.s5xx;
        Ok(())
    }

    pub(crate) fn report(
        &self,
        duration: Duration,
        connections: usize,
        rate: Option<f64>,
    ) -> Report {
        let secs = duration.as_secs_f64();
        let h = &self.latency;
        let latency = if h.is_empty() {
            Latency::default()
        } else {
            Latency {
                p50: Some(h.value_at_quantile(0.50)),
                p90: Some(h.value_at_quantile(0.90)),
                p99: Some(h.value_at_quantile(0.99)),
                p999: Some(h.value_at_quantile(0.999)),
                max: Some(h.max()),
                mean: Some(h.mean()),
            }
        };
        Report {
            requests: self.responses,
            duration_secs: secs,
            rps: if secs > 0.0 {
                self.responses as f64 / secs
            } else {
                0.0
            },
            bytes: self.bytes,
            latency_us: latency,
            errors: self.errors,
            error_messages: {
                let mut messages = self.messages.clone();
                messages.sort_by_key(|m| std::cmp::Reverse(m.count));
                messages
            },
            missed: self.missed,
            status: self.status,
            connections,
            mode: if rate.is_some() {
                Mode::Open
            } else {
                Mode::Closed
            },
            rate,
            interrupted: false,
            warnings: Vec::new(),
        }
    }
}

// === impl Report ===

impl Report {
    /// Requests that got no response, of any kind.
    pub fn error_count(&self) -> u64 {
        self.errors.connect + self.errors.timeout + self.errors.other
    }
}

/// The table for people.
impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let l = &self.latency_us;
        if self.interrupted {
            writeln!(
                f,
                "Interrupted: stopped by a signal; this is what was measured until then"
            )?;
        }
        match self.rate {
            Some(rate) => writeln!(
                f,
                "Mode:       open loop at {rate} req/s, {} connections",
                self.connections
            )?,
            None => writeln!(
                f,
                "Mode:       closed loop, {} connections",
                self.connections
            )?,
        }
        writeln!(
            f,
            "Requests:   {} in {:.2}s, {:.2} req/s, {} received",
            self.requests,
            self.duration_secs,
            self.rps,
            Bytes(self.bytes)
        )?;
        writeln!(
            f,
            "Latency:    {:>9} {:>9} {:>9} {:>9} {:>9} {:>9}",
            "p50", "p90", "p99", "p99.9", "max", "mean"
        )?;
        writeln!(
            f,
            "            {:>9} {:>9} {:>9} {:>9} {:>9} {:>9}",
            Micros(l.p50.map(|v| v as f64)),
            Micros(l.p90.map(|v| v as f64)),
            Micros(l.p99.map(|v| v as f64)),
            Micros(l.p999.map(|v| v as f64)),
            Micros(l.max.map(|v| v as f64)),
            Micros(l.mean),
        )?;
        let s = &self.status;
        writeln!(
            f,
            "Status:     2xx {}  3xx {}  4xx {}  5xx {}",
            s.s2xx, s.s3xx, s.s4xx, s.s5xx
        )?;
        let e = &self.errors;
        write!(
            f,
            "Errors:     connect {}  timeout {}  other {}",
            e.connect, e.timeout, e.other
        )?;
        for m in &self.error_messages {
            write!(f, "\n            {} {}: {}", m.count, m.kind, m.message)?;
        }
        match self.rate {
            Some(rate) if self.missed > 0 => write!(
                f,
                "\nMissed:     {} requests fell due but were never sent: the target fell behind {rate} req/s",
                self.missed
            ),
            _ => Ok(()),
        }
    }
}

/// A latency in microseconds, shown in the unit that suits it; `-` if there is none.
struct Micros(Option<f64>);

impl fmt::Display for Micros {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let Some(us) = self.0 else {
            return f.pad("-");
        };
        let s = if us < 1_000.0 {
            format!("{us:.0}us")
        } else if us < 1_000_000.0 {
            format!("{:.2}ms", us / 1e3)
        } else {
            format!("{:.2}s", us / 1e6)
        };
        f.pad(&s)
    }
}

/// A byte count in binary units.
struct Bytes(u64);

impl fmt::Display for Bytes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
        let mut value = self.0 as f64;
        let mut unit = 0;
        while value >= 1024.0 && unit + 1 < UNITS.len() {
            value /= 1024.0;
            unit += 1;
        }
        if unit == 0 {
            write!(f, "{} B", self.0)
        } else {
            write!(f, "{value:.2} {}", UNITS[unit])
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn us(n: u64) -> Duration {
        Duration::from_micros(n)
    }

    #[test]
    fn percentiles_of_a_uniform_spread() {
        let mut stats = Stats::new();
        for i in 1..=10_000 {
            stats.record_response(200, 10, us(i));
        }
        let r = stats.report(Duration::from_secs(2), 4, None);
        assert_eq!(r.requests, 10_000);
        assert_eq!(r.rps, 5_000.0);
        assert_eq!(r.bytes, 100_000);
        // 3 significant digits: each value is within 0.1% of the exact percentile.
        let close = |got: u64, want: u64| got.abs_diff(want) * 1000 <= want;
        let l = r.latency_us;
        assert!(close(l.p50.unwrap(), 5_000), "{l:?}");
        assert!(close(l.p90.unwrap(), 9_000), "{l:?}");
        assert!(close(l.p99.unwrap(), 9_900), "{l:?}");
        assert!(close(l.p999.unwrap(), 9_990), "{l:?}");
        assert!(close(l.max.unwrap(), 10_000), "{l:?}");
        assert!((l.mean.unwrap() - 5_000.5).abs() < 5.0, "{l:?}");
    }

    #[test]
    fn the_tail_shows_a_few_slow_requests() {
        let mut stats = Stats::new();
        for _ in 0..990 {
            stats.record_response(200, 0, us(100));
        }
        for _ in 0..10 {
            stats.record_response(200, 0, Duration::from_secs(1));
        }
        let l = stats.report(Duration::from_secs(1), 1, None).latency_us;
        assert_eq!(l.p50.unwrap(), 100);
        assert_eq!(l.p90.unwrap(), 100);
        assert_eq!(l.p99.unwrap(), 100);
        assert!(l.p999.unwrap().abs_diff(1_000_000) <= 1_000, "{l:?}");
        assert!(l.max.unwrap().abs_diff(1_000_000) <= 1_000, "{l:?}");
    }

    #[test]
    fn status_classes_and_errors() {
        let mut stats = Stats::new();
        for status in [200, 204, 301, 404, 429, 500, 503, 101] {
            stats.record_response(status, 0, us(1));
        }
        stats.record_error(ErrorKind::Connect);
        stats.record_error(ErrorKind::Timeout);
        stats.record_error(ErrorKind::Timeout);
        stats.record_error(ErrorKind::Other);
        let r = stats.report(Duration::from_secs(1), 1, Some(10.0));
        assert_eq!(r.requests, 8);
        assert_eq!(
            r.status,
            StatusClasses {
                s2xx: 2,
                s3xx: 1,
                s4xx: 2,
                s5xx: 2
            }
        );
        assert_eq!(
            r.errors,
            Errors {
                connect: 1,
                timeout: 2,
                other: 1
            }
        );
        assert_eq!(r.error_count(), 4);
        assert_eq!(r.mode, Mode::Open);
    }

    #[test]
    fn merging_adds_everything() {
        let mut a = Stats::new();
        let mut b = Stats::new();
        for i in 1..=100 {
            a.record_response(200, 1, us(i));
        }
        // Larger values than `a` has seen: `a` must grow to take them.
        for _ in 0..100 {
            b.record_response(500, 2, Duration::from_secs(30));
        }
        b.record_error(ErrorKind::Other);
        a.merge(&b).unwrap();
        let r = a.report(Duration::from_secs(4), 2, None);
        assert_eq!(r.requests, 200);
        assert_eq!(r.rps, 50.0);
        assert_eq!(r.bytes, 300);
        assert_eq!(r.status.s2xx, 100);
        assert_eq!(r.status.s5xx, 100);
        assert_eq!(r.errors.other, 1);
        assert!(r.latency_us.p50.unwrap() <= 100, "{:?}", r.latency_us);
        assert!(r.latency_us.p90.unwrap().abs_diff(30_000_000) <= 30_000);
        assert_eq!(r.mode, Mode::Closed);
    }

    #[test]
    fn missed_requests_are_merged_and_shown() {
        let mut a = Stats::new();
        let mut b = Stats::new();
        a.record_response(200, 0, us(10));
        a.record_missed(30);
        b.record_missed(12);
        a.merge(&b).unwrap();
        let open = a.report(Duration::from_secs(1), 2, Some(100.0));
        assert_eq!(open.missed, 42);
        // Not sent is not failed: the server never saw them.
        assert_eq!(open.error_count(), 0);
        let table = open.to_string();
        assert!(
            table.contains("Missed:     42 requests fell due but were never sent"),
            "{table}"
        );
        assert!(table.contains("fell behind 100 req/s"), "{table}");
        // A run that kept up says nothing of it.
        let mut kept_up = Stats::new();
        kept_up.record_response(200, 0, us(10));
        let table = kept_up
            .report(Duration::from_secs(1), 1, Some(100.0))
            .to_string();
        assert!(!table.contains("Missed"), "{table}");
    }

    #[test]
    fn error_messages_are_counted_merged_and_capped() {
        #[derive(Debug)]
        struct Leaf;
        impl fmt::Display for Leaf {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("frame with invalid size")
            }
        }
        impl std::error::Error for Leaf {}
        #[derive(Debug)]
        struct Outer(Leaf);
        impl fmt::Display for Outer {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("http2 error")
            }
        }
        impl std::error::Error for Outer {
            fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
                Some(&self.0)
            }
        }

        let mut a = Stats::new();
        let h2 = Failure::with_error(ErrorKind::Other, &Outer(Leaf));
        assert_eq!(
            h2.message.as_deref(),
            Some("http2 error: frame with invalid size")
        );
        a.record_failure(h2.clone());
        a.record_failure(h2.clone());
        a.record_failure(ErrorKind::Timeout.into());
        let mut b = Stats::new();
        b.record_failure(h2);
        for i in 0..20 {
            b.record_failure(Failure {
                kind: ErrorKind::Connect,
                message: Some(format!("refused {i}")),
                unprocessed: false,
            });
        }
        a.merge(&b).unwrap();
        let r = a.report(Duration::from_secs(1), 1, None);
        // Every failure is counted by kind, whether or not its message was kept.
        assert_eq!(
            (r.errors.connect, r.errors.timeout, r.errors.other),
            (20, 1, 3)
        );
        assert_eq!(r.error_messages.len(), MAX_ERROR_MESSAGES);
        assert_eq!(
            r.error_messages[0],
            ErrorMessage {
                kind: "other".into(),
                message: "http2 error: frame with invalid size".into(),
                count: 3
            }
        );
        assert!(r.error_messages[1..]
            .iter()
            .all(|m| m.kind == "connect" && m.count == 1));
        let table = r.to_string();
        assert!(
            table.contains("\n            3 other: http2 error: frame with invalid size"),
            "{table}"
        );
    }

    #[test]
    fn an_empty_run() {
        let r = Stats::new().report(Duration::ZERO, 1, None);
        assert_eq!(r.requests, 0);
        assert_eq!(r.rps, 0.0);
        assert_eq!(r.latency_us, Latency::default());
        // No latency is not a latency of 0: JSON says null, the table says "-".
        let json = serde_json::to_value(&r).unwrap();
        for field in ["p50", "p90", "p99", "p999", "max", "mean"] {
            assert!(json["latency_us"][field].is_null(), "{json}");
        }
        let table = r.to_string();
        assert!(table.contains("        -         -"), "{table}");
    }

    #[test]
    fn json_field_names_are_stable() {
        let mut stats = Stats::new();
        stats.record_response(200, 5, us(1_500));
        let r = stats.report(Duration::from_secs(1), 3, Some(100.0));
        let json = serde_json::to_value(&r).unwrap();
        let keys = |v: &serde_json::Value| {
            let mut k: Vec<String> = v.as_object().unwrap().keys().cloned().collect();
            k.sort();
            k
        };
        assert_eq!(
            keys(&json),
            [
                "bytes",
                "connections",
                "duration_secs",
                "error_messages",
                "errors",
                "interrupted",
                "latency_us",
                "missed",
                "mode",
                "rate",
                "requests",
                "rps",
                "status",
                "warnings"
            ]
        );
        assert_eq!(
            keys(&json["latency_us"]),
            ["max", "mean", "p50", "p90", "p99", "p999"]
        );
        assert_eq!(keys(&json["errors"]), ["connect", "other", "timeout"]);
        assert_eq!(keys(&json["status"]), ["2xx", "3xx", "4xx", "5xx"]);
        assert_eq!(json["mode"], "open");
        assert_eq!(json["rate"], 100.0);
        assert_eq!(json["status"]["2xx"], 1);
        let back: Report = serde_json::from_value(json).unwrap();
        assert_eq!(back, r);

        let closed = Stats::new().report(Duration::from_secs(1), 1, None);
        let json = serde_json::to_value(&closed).unwrap();
        assert_eq!(json["mode"], "closed");
        assert!(json["rate"].is_null());
    }

    #[test]
    fn the_table_reads_well() {
        let mut stats = Stats::new();
        stats.record_response(200, 3 * 1024 * 1024, us(850));
        stats.record_response(200, 0, us(2_500));
        let table = stats.report(Duration::from_secs(2), 10, None).to_string();
        assert!(table.contains("closed loop, 10 connections"), "{table}");
        assert!(
            table.contains("2 in 2.00s, 1.00 req/s, 3.00 MiB received"),
            "{table}"
        );
        assert!(table.contains("850us"), "{table}");
        assert!(table.contains("2.50ms"), "{table}");
        assert!(table.contains("2xx 2  3xx 0"), "{table}");
        assert_eq!(Micros(Some(2_500_000.0)).to_string(), "2.50s");
        assert_eq!(format!("{:>4}", Micros(None)), "   -");
        assert_eq!(Bytes(10).to_string(), "10 B");
        assert_eq!(Bytes(1536).to_string(), "1.50 KiB");
    }
}
