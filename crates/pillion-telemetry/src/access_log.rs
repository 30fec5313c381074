//! The access log: one line per HTTP request and TCP connection, written off the data path.
//!
//! The data path hands an [`Entry`] to a bounded queue and moves on; a writer thread formats and
//! writes it. When the sink falls behind and the queue is full, the line is dropped and counted,
//! never the request. A file sink is reopened after SIGUSR1 ([`AccessLog::reopen`]) and when the
//! file at its path is replaced (logrotate's rename-and-create).

use prometheus_client::metrics::counter::Counter;
use std::{
    fs::{File, OpenOptions},
    io::{self, BufWriter, Write},
    net::SocketAddr,
    os::unix::fs::MetadataExt,
    path::PathBuf,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    time::{Duration, SystemTime},
};
use tokio::sync::mpsc;

/// One access-log line.
#[derive(Debug, Clone, Default)]
pub struct Entry {
    pub start_time: Option<SystemTime>,
    pub duration: Duration,
    pub upstream_service_time: Option<Duration>,
    pub listener: Arc<str>,
    pub direction: &'static str,
    pub route: Option<Arc<str>>,
    pub cluster: Option<Arc<str>>,
    pub method: Option<String>,
    pub authority: Option<String>,
    pub path: Option<String>,
    /// `HTTP/1.1`, `HTTP/2` or `TCP`.
    pub protocol: &'static str,
    pub status: Option<u16>,
    /// Short codes of proxy-side reasons (`UF`, `UT`, `NR`, ...), `-` when none.
    pub response_flags: &'static str,
    pub bytes_received: u64,
    pub bytes_sent: u64,
    pub downstream_address: Option<SocketAddr>,
    pub upstream_host: Option<SocketAddr>,
    pub request_id: Option<String>,
    pub trace_id: Option<String>,
    pub peer_identity: Option<Arc<str>>,
}

/// The handle the data path logs through (cheap to clone).
#[derive(Clone, Debug)]
pub struct AccessLog {
    tx: mpsc::Sender<Entry>,
    dropped: Counter,
    reopen: Arc<AtomicBool>,
}

/// How lines are written.
#[derive(Debug, Clone)]
enum Format {
    Json,
    Template(Vec<Part>),
}

#[derive(Debug, Clone)]
enum Part {
    Text(String),
    Field(&'static str),
}

enum Sink {
    Stdout(BufWriter<io::Stdout>),
    Stderr(BufWriter<io::Stderr>),
    File {
        path: PathBuf,
        out: Option<(BufWriter<File>, u64, u64)>,
        checked: std::time::Instant,
    },
}

// === impl AccessLog ===

impl AccessLog {
    /// Starts the writer for `cfg`; `lines` and `dropped` count what is written and dropped.
    pub fn start(
        cfg: &pillion_config::AccessLog,
        lines: Counter,
        dropped: Counter,
    ) -> Result<Self, String> {
        let format = Format::parse(&cfg.format)?;
        let mut sink = match cfg.path.as_str() {
            "stdout" => Sink::Stdout(BufWriter::new(io::stdout())),
            "stderr" => Sink::Stderr(BufWriter::new(io::stderr())),
            path => Sink::File {
                path: path.into(),
                out: None,
                checked: now(),
            },
        };
        if let Sink::File { path, out, .. } = &mut sink {
            // Opened here so a bad path is an error at start, not a silent loss.
            *out =
                Some(open(path).map_err(|e| format!("access_log.path {}: {e}", path.display()))?);
        }
        let (tx, rx) = mpsc::channel(cfg.buffer.max(1));
        let reopen = Arc::new(AtomicBool::new(false));
        let flag = reopen.clone();
        std::thread::Builder::new()
            .name("access-log".into())
            .spawn(move || write_loop(rx, sink, format, flag, lines))
            .map_err(|e| format!("starting the access-log writer: {e}"))?;
        Ok(Self {
            tx,
            dropped,
            reopen,
        })
    }

    /// Queues a line; drops (and counts) it when the writer is behind.
    pub fn log(&self, entry: Entry) {
        if self.tx.try_send(entry).is_err() {
            self.dropped.inc();
        }
    }

    /// Asks a file sink to reopen its file before the next line (on SIGUSR1).
    pub fn reopen(&self) {
        self.reopen.store(true, Ordering::Release);
    }
}

fn now() -> std::time::Instant {
    // NOTE: the writer thread is outside tokio; wall-clock pacing of rotation checks is right here.
    #[allow(clippy::disallowed_methods)]
    std::time::Instant::now()
}

fn open(path: &PathBuf) -> io::Result<(BufWriter<File>, u64, u64)> {
    let f = OpenOptions::new().create(true).append(true).open(path)?;
    let m = f.metadata()?;
    Ok((BufWriter::new(f), m.dev(), m.ino()))
}

fn write_loop(
    mut rx: mpsc::Receiver<Entry>,
    mut sink: Sink,
    format: Format,
    reopen: Arc<AtomicBool>,
    lines: Counter,
) {
    let mut line = Vec::with_capacity(512);
    while let Some(first) = rx.blocking_recv() {
        let mut next = Some(first);
        while let Some(e) = next {
            line.clear();
            format.write(&e, &mut line);
            line.push(b'\n');
            if sink.write(&line, &reopen).is_ok() {
                lines.inc();
            }
            next = rx.try_recv().ok();
        }
        let _ = sink.flush();
    }
    let _ = sink.flush();
}

// === impl Sink ===

impl Sink {
    fn write(&mut self, line: &[u8], reopen: &AtomicBool) -> io::Result<()> {
        match self {
            Self::Stdout(w) => w.write_all(line),
            Self::Stderr(w) => w.write_all(line),
            Self::File { path, out, checked } => {
                let rotated = checked.elapsed() >= Duration::from_secs(1) && {
                    *checked = now();
                    match (std::fs::metadata(&*path), out.as_ref()) {
                        (Ok(m), Some((_, dev, ino))) => m.dev() != *dev || m.ino() != *ino,
                        _ => true,
                    }
                };
                if reopen.swap(false, Ordering::AcqRel) || rotated || out.is_none() {
                    if let Some((mut w, ..)) = out.take() {
                        let _ = w.flush();
                    }
                    *out = open(path).ok();
                }
                match out {
                    Some((w, ..)) => w.write_all(line),
                    None => Err(io::Error::other("access log file is not open")),
                }
            }
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match self {
            Self::Stdout(w) => w.flush(),
            Self::Stderr(w) => w.flush(),
            Self::File { out, .. } => out.as_mut().map_or(Ok(()), |(w, ..)| w.flush()),
        }
    }
}

// === impl Format ===

impl Format {
    fn parse(format: &str) -> Result<Self, String> {
        if format == "json" {
            return Ok(Self::Json);
        }
        pillion_config::access_log_fields(format)?;
        let mut parts = Vec::new();
        let mut rest = format;
        while let Some(start) = rest.find('%') {
            if start > 0 {
                parts.push(Part::Text(rest[..start].to_string()));
            }
            let after = &rest[start + 1..];
            let end = after.find('%').unwrap_or(after.len());
            let name = &after[..end];
            let field = pillion_config::ACCESS_LOG_FIELDS
                .iter()
                .find(|f| **f == name)
                .copied()
                .ok_or_else(|| format!("unknown access-log field `{name}`"))?;
            parts.push(Part::Field(field));
            rest = after.get(end + 1..).unwrap_or("");
        }
        if !rest.is_empty() {
            parts.push(Part::Text(rest.to_string()));
        }
        Ok(Self::Template(parts))
    }

    fn write(&self, e: &Entry, out: &mut Vec<u8>) {
        match self {
            Self::Json => {
                let mut map =
                    serde_json::Map::with_capacity(pillion_config::ACCESS_LOG_FIELDS.len());
                for f in pillion_config::ACCESS_LOG_FIELDS {
                    map.insert((*f).to_string(), e.json_field(f));
                }
                // NOTE: serializing a Map of plain values into a Vec cannot fail.
                let _ = serde_json::to_writer(&mut *out, &serde_json::Value::Object(map));
            }
            Self::Template(parts) => {
                for p in parts {
                    match p {
                        Part::Text(t) => out.extend_from_slice(t.as_bytes()),
                        Part::Field(f) => match e.json_field(f) {
                            serde_json::Value::Null => out.push(b'-'),
                            serde_json::Value::String(s) => out.extend_from_slice(s.as_bytes()),
                            v => out.extend_from_slice(v.to_string().as_bytes()),
                        },
                    }
                }
            }
        }
    }
}

// === impl Entry ===

impl Entry {
    fn json_field(&self, name: &str) -> serde_json::Value {
        use serde_json::Value::{self, Null};
        let s = |v: &Option<String>| v.as_ref().map_or(Null, |v| Value::String(v.clone()));
        let a = |v: &Option<Arc<str>>| v.as_ref().map_or(Null, |v| Value::String(v.to_string()));
        let ms = |d: Duration| Value::from((d.as_secs_f64() * 1e6).round() / 1e3);
        match name {
            "start_time" => self.start_time.map_or(Null, |t| Value::String(rfc3339(t))),
            "duration_ms" => ms(self.duration),
            "upstream_service_time_ms" => self.upstream_service_time.map_or(Null, ms),
            "listener" => Value::String(self.listener.to_string()),
            "direction" => Value::String(self.direction.into()),
            "route" => a(&self.route),
            "cluster" => a(&self.cluster),
            "method" => s(&self.method),
            "authority" => s(&self.authority),
            "path" => s(&self.path),
            "protocol" => Value::String(self.protocol.into()),
            "status" => self.status.map_or(Null, Value::from),
            "response_flags" => Value::String(self.response_flags.into()),
            "bytes_received" => Value::from(self.bytes_received),
            "bytes_sent" => Value::from(self.bytes_sent),
            "downstream_address" => self
                .downstream_address
                .map_or(Null, |a| Value::String(a.to_string())),
            "upstream_host" => self
                .upstream_host
                .map_or(Null, |a| Value::String(a.to_string())),
            "request_id" => s(&self.request_id),
            "trace_id" => s(&self.trace_id),
            "peer_identity" => a(&self.peer_identity),
            _ => Null,
        }
    }
}

/// Formats a time as RFC 3339 in UTC with milliseconds (`2026-11-25T11:09:01.123Z`).
pub fn rfc3339(t: SystemTime) -> String {
    let d = t.duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default();
    let secs = d.as_secs();
    let (days, rem) = (secs / 86_400, secs % 86_400);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        d.subsec_millis()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(path: &str, format: &str, buffer: usize) -> pillion_config::AccessLog {
        pillion_config::AccessLog {
            path: path.into(),
            format: format.into(),
            buffer,
        }
    }

    fn entry(i: u16) -> Entry {
        Entry {
            start_time: Some(SystemTime::UNIX_EPOCH + Duration::from_millis(1_764_068_941_123)),
            duration: Duration::from_micros(1500),
            listener: "in".into(),
            direction: "inbound",
            method: Some("GET".into()),
            path: Some(format!("/r/{i}")),
            protocol: "HTTP/1.1",
            status: Some(200),
            response_flags: "-",
            ..Entry::default()
        }
    }

    fn wait_lines(path: &std::path::Path, n: usize) -> Vec<String> {
        for _ in 0..500 {
            let text = std::fs::read_to_string(path).unwrap_or_default();
            let lines: Vec<String> = text.lines().map(str::to_owned).collect();
            if lines.len() >= n {
                return lines;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        panic!("fewer than {n} lines in {}", path.display());
    }

    #[test]
    fn times_are_rfc3339() {
        let t = SystemTime::UNIX_EPOCH + Duration::from_millis(1_764_068_941_123);
        assert_eq!(rfc3339(t), "2025-11-25T11:09:01.123Z");
        assert_eq!(rfc3339(SystemTime::UNIX_EPOCH), "1970-01-01T00:00:00.000Z");
    }

    #[test]
    fn json_lines_to_a_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("access.log");
        let log = AccessLog::start(
            &cfg(path.to_str().unwrap(), "json", 16),
            Counter::default(),
            Counter::default(),
        )
        .unwrap();
        log.log(entry(1));
        let lines = wait_lines(&path, 1);
        let v: serde_json::Value = serde_json::from_str(&lines[0]).unwrap();
        assert_eq!(v["path"], "/r/1");
        assert_eq!(v["status"], 200);
        assert_eq!(v["duration_ms"], 1.5);
        assert_eq!(v["start_time"], "2025-11-25T11:09:01.123Z");
        assert_eq!(v["upstream_host"], serde_json::Value::Null);
    }

    #[test]
    fn template_lines_and_reopen_after_rotation() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("access.log");
        let log = AccessLog::start(
            &cfg(
                path.to_str().unwrap(),
                "%method% %path% %status% %upstream_host%",
                16,
            ),
            Counter::default(),
            Counter::default(),
        )
        .unwrap();
        log.log(entry(1));
        assert_eq!(wait_lines(&path, 1), ["GET /r/1 200 -"]);
        // logrotate: rename, then ask for a reopen (SIGUSR1).
        let rotated = dir.path().join("access.log.1");
        std::fs::rename(&path, &rotated).unwrap();
        log.reopen();
        log.log(entry(2));
        assert_eq!(wait_lines(&path, 1), ["GET /r/2 200 -"]);
        assert_eq!(wait_lines(&rotated, 1), ["GET /r/1 200 -"]);
    }

    #[test]
    fn a_full_queue_drops_and_counts() {
        let dir = tempfile::tempdir().unwrap();
        // A queue of one, flooded faster than the writer thread can drain it.
        let path = dir.path().join("access.log");
        let dropped = Counter::default();
        let lines = Counter::default();
        let log = AccessLog::start(
            &cfg(path.to_str().unwrap(), "json", 1),
            lines.clone(),
            dropped.clone(),
        )
        .unwrap();
        for i in 0..10_000 {
            log.log(entry(i as u16));
        }
        let total = 10_000u64;
        for _ in 0..500 {
            if lines.get() + dropped.get() == total {
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        assert_eq!(lines.get() + dropped.get(), total);
        assert!(dropped.get() > 0, "nothing dropped with a queue of 1");
    }

    #[test]
    fn bad_templates_are_refused() {
        assert!(Format::parse("%method").is_err());
        assert!(Format::parse("%nope%").is_err());
        assert!(Format::parse("no fields").is_err());
        assert!(Format::parse("[%start_time%] %method%").is_ok());
    }
}
