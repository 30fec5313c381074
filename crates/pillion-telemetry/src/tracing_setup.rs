//! Installs the tracing subscriber: level from `--log-level` or `RUST_LOG`, plain or JSON lines,
//! and a handle that changes the filter at run time (the admin `/logging` endpoint).

use std::sync::Mutex;
use tracing_subscriber::{
    layer::SubscriberExt, reload, util::SubscriberInitExt, EnvFilter, Registry,
};

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Plain,
    /// One JSON object per line.
    Json,
}

/// Changes the log filter of the running process.
pub struct LogControl {
    handle: reload::Handle<EnvFilter, Registry>,
    current: Mutex<String>,
}

// === impl LogControl ===

impl LogControl {
    /// The filter in force.
    pub fn current(&self) -> String {
        self.current.lock().map(|c| c.clone()).unwrap_or_default()
    }

    /// Replaces the filter (`debug`, `info,pillion_proxy=trace`, ...).
    pub fn set(&self, filter: &str) -> Result<(), String> {
        let new =
            EnvFilter::try_new(filter).map_err(|e| format!("bad log filter `{filter}`: {e}"))?;
        self.handle.reload(new).map_err(|e| e.to_string())?;
        if let Ok(mut c) = self.current.lock() {
            *c = filter.to_string();
        }
        Ok(())
    }
}

/// Installs the global subscriber, writing to stderr. `level` (a level or a full filter such as
/// `info,pillion_proxy=debug`) wins over `RUST_LOG`; the default is `info`.
pub fn init_tracing(level: Option<&str>, format: LogFormat) -> Result<LogControl, String> {
    use std::io::IsTerminal;
    let text = match level {
        Some(l) => l.to_string(),
        None => std::env::var("RUST_LOG")
            .ok()
            .filter(|v| !v.is_empty())
            .unwrap_or_else(|| "info".into()),
    };
    let filter = EnvFilter::try_new(&text).map_err(|e| format!("log level `{text}`: {e}"))?;
    let (filter, handle) = reload::Layer::new(filter);
    let fmt = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        // Colours only for a person at a terminal, never in files or container logs.
        .with_ansi(std::io::stderr().is_terminal());
    let registry = tracing_subscriber::registry().with(filter);
    let res = match format {
        LogFormat::Plain => registry.with(fmt).try_init(),
        LogFormat::Json => registry.with(fmt.json().flatten_event(true)).try_init(),
    };
    res.map_err(|e| format!("installing the log subscriber: {e}"))?;
    Ok(LogControl {
        handle,
        current: Mutex::new(text),
    })
}
