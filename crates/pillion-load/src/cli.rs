//! `pillion bench`: its arguments, its runtime, and how it prints the report.

use std::io::{IsTerminal, Write};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use bytes::Bytes;
use http::header::{HeaderName, HeaderValue};
use http::{HeaderMap, Method};

use crate::config::{
    check_body_size, parse_duration, parse_header, parse_rate, LoadConfig, Protocol, Stop, Target,
};

/// Arguments of `pillion bench`.
#[derive(Debug, Clone, clap::Args)]
pub struct BenchArgs {
    /// Target URL: http://host:port/path
    #[arg(value_name = "URL")]
    pub url: String,

    /// Number of TCP connections, each its own HTTP client connection
    #[arg(short = 'c', long, default_value_t = 10, value_name = "N")]
    pub connections: usize,

    /// Speak HTTP/2 with prior knowledge (h2c)
    #[arg(long)]
    pub h2: bool,

    /// Concurrent streams per HTTP/2 connection (with --h2) [default: 10]
    #[arg(long, value_name = "M")]
    pub streams: Option<usize>,

    /// Request method
    #[arg(short = 'm', long, default_value = "GET")]
    pub method: String,

    /// Request header, 'name: value' (repeatable)
    #[arg(short = 'H', long = "header", value_name = "HEADER", value_parser = parse_header)]
    pub headers: Vec<(HeaderName, HeaderValue)>,

    /// Send a request body of this many bytes
    #[arg(long, default_value_t = 0, value_name = "BYTES")]
    pub body_size: usize,

    /// How long to measure, e.g. 10s, 1m [default: 10s]
    #[arg(short = 'd', long, value_parser = parse_duration, conflicts_with = "requests")]
    pub duration: Option<Duration>,

    /// Stop after this many requests instead of after a duration
    #[arg(short = 'n', long, value_name = "N")]
    pub requests: Option<u64>,

    /// Send requests this long before measuring, e.g. 1s; they are not counted
    #[arg(long, default_value = "0s", value_parser = parse_duration)]
    pub warmup: Duration,

    /// Total requests per second (open loop, latency measured from when each was due);
    /// without it, each connection sends as soon as its previous response arrives
    #[arg(long, value_name = "R", value_parser = parse_rate)]
    pub rate: Option<f64>,

    /// Per-request timeout, from sending to the end of the response body
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    pub timeout: Duration,

    /// Print the report as JSON
    #[arg(long)]
    pub json: bool,

    /// Do not print the progress line on stderr
    #[arg(long)]
    pub no_progress: bool,

    /// Worker threads of the load generator's runtime
    #[arg(long, default_value_t = 1, value_name = "N")]
    pub threads: usize,
}

/// The most `--threads`: more would only contend for the cores.
pub const MAX_THREADS: usize = 1024;

/// How a run that printed a report ended.
#[derive(Debug)]
struct Outcome {
    report: crate::Report,
    /// The exit code for the signal that stopped it (128 + its number), if one did.
    signal: Option<u8>,
}

// === impl BenchArgs ===

impl BenchArgs {
    /// The library config these arguments describe.
    pub fn to_config(&self) -> anyhow::Result<LoadConfig> {
        let target = Target::parse(&self.url)?;
        let method = Method::from_bytes(self.method.as_bytes())
            .with_context(|| format!("invalid method {:?}", self.method))?;
        let mut headers = HeaderMap::with_capacity(self.headers.len());
        for (name, value) in &self.headers {
            headers.append(name.clone(), value.clone());
        }
        check_body_size(self.body_size)?;
        if self.streams.is_some() && !self.h2 {
            anyhow::bail!(
                "--streams needs --h2 (an HTTP/1.1 connection has one request in flight)"
            );
        }
        let stop = match (self.duration, self.requests) {
            (_, Some(n)) => Stop::Requests(n),
            (Some(d), None) => Stop::Duration(d),
            (None, None) => Stop::Duration(Duration::from_secs(10)),
        };
        let config = LoadConfig {
            protocol: if self.h2 {
                Protocol::Http2
            } else {
                Protocol::Http1
            },
            connections: self.connections,
            streams: self.streams.unwrap_or(10),
            method,
            headers,
            body: Bytes::from(vec![b'x'; self.body_size]),
            stop,
            warmup: self.warmup,
            rate: self.rate,
            timeout: self.timeout,
            progress: !self.no_progress && std::io::stderr().is_terminal(),
            ..LoadConfig::new(target)
        };
        config.validate()?;
        Ok(config)
    }

    /// One line that says what is about to run.
    fn banner(&self, config: &LoadConfig) -> String {
        let what = match config.stop {
            Stop::Duration(d) => format!("{}s", d.as_secs_f64()),
            Stop::Requests(n) => format!("{n} requests"),
        };
        let protocol = match config.protocol {
            Protocol::Http1 => "HTTP/1.1".to_owned(),
            Protocol::Http2 => format!("h2c, {} streams each", config.streams),
        };
        let pace = match config.rate {
            Some(rate) => format!("open loop at {rate} req/s"),
            None => "closed loop".to_owned(),
        };
        let warmup = if config.warmup.is_zero() {
            String::new()
        } else {
            format!(", after {}s of warm-up", config.warmup.as_secs_f64())
        };
        format!(
            "Running {what} @ {}: {} connections ({protocol}), {pace}{warmup}",
            config.target, config.connections
        )
    }
}

/// Runs `pillion bench`: exit code 0 with a report, 1 with a report in which no request got a
/// response (so a script cannot take a run that measured nothing for a result), 2 if the load
/// could not start, 128 + the signal's number (130 for Ctrl-C) with the report of a run a signal
/// stopped.
pub fn main(args: BenchArgs) -> ExitCode {
    match bench(&args) {
        Ok(Outcome {
            signal: Some(code),
            report,
        }) => {
            let _ = writeln!(
                std::io::stderr(),
                "interrupted: the report covers the {:.2}s measured before the signal",
                report.duration_secs
            );
            ExitCode::from(code)
        }
        Ok(Outcome { report, .. }) if report.requests == 0 => {
            let failed = report.error_count();
            let why = if failed > 0 {
                format!("all {failed} requests sent failed (see the errors in the report)")
            } else {
                "none was answered in the measured window".to_owned()
            };
            let _ = writeln!(std::io::stderr(), "error: no request got a response: {why}");
            ExitCode::from(1)
        }
        Ok(_) => ExitCode::SUCCESS,
        Err(error) => {
            // One line: the error and its causes.
            let _ = writeln!(std::io::stderr(), "error: {error:#}");
            ExitCode::from(2)
        }
    }
}

fn bench(args: &BenchArgs) -> anyhow::Result<Outcome> {
    let config = args.to_config()?;
    if args.threads == 0 {
        anyhow::bail!("--threads must be at least 1");
    }
    if args.threads > MAX_THREADS {
        anyhow::bail!(
            "--threads must be at most {MAX_THREADS}, got {}",
            args.threads
        );
    }
    let runtime = build_runtime(args.threads)?;
    runtime.block_on(async {
        let mut signals = Signals::new()?;
        // Ctrl-C while connecting stops here too: there is nothing to report yet.
        let load = tokio::select! {
            load = crate::Load::connect(config.clone()) => load?,
            code = signals.next() => anyhow::bail!("interrupted (signal {}) before the load started", code - 128),
        };
        // A closed stdout (`| head`) is not worth a panic: writes to it are allowed to fail.
        if !args.json {
            let mut out = std::io::stdout().lock();
            let _ = writeln!(out, "{}", args.banner(&config));
            let _ = out.flush();
        }
        let mut stderr = std::io::stderr();
        let early = load.warnings();
        for warning in &early {
            let _ = writeln!(stderr, "warning: {warning}");
        }
        let signal = std::cell::Cell::new(None);
        let report = load
            .run(async {
                signal.set(Some(signals.next().await));
            })
            .await?;
        // Warnings seen only later in the run (the first connection said nothing of them).
        for warning in &report.warnings {
            if !early.contains(warning) {
                let _ = writeln!(stderr, "warning: {warning}");
            }
        }
        let mut out = std::io::stdout().lock();
        if args.json {
            let json = serde_json::to_string_pretty(&report).context("cannot write the report")?;
            let _ = writeln!(out, "{json}");
        } else {
            let _ = writeln!(out, "{report}");
        }
        Ok(Outcome {
            report,
            signal: signal.get(),
        })
    })
}

/// The load generator's runtime: one thread, or `threads` workers.
fn build_runtime(threads: usize) -> anyhow::Result<tokio::runtime::Runtime> {
    let mut builder = if threads == 1 {
        tokio::runtime::Builder::new_current_thread()
    } else {
        let mut builder = tokio::runtime::Builder::new_multi_thread();
        builder.worker_threads(threads);
        builder
    };
    builder
        .enable_all()
        .build()
        .with_context(|| format!("cannot start the runtime with {threads} threads"))
}

/// SIGINT (Ctrl-C) and SIGTERM, which stop a run early with a report.
struct Signals {
    interrupt: tokio::signal::unix::Signal,
    terminate: tokio::signal::unix::Signal,
}

// === impl Signals ===

impl Signals {
    fn new() -> anyhow::Result<Self> {
        use tokio::signal::unix::{signal, SignalKind};
        Ok(Self {
            interrupt: signal(SignalKind::interrupt()).context("cannot listen for SIGINT")?,
            terminate: signal(SignalKind::terminate()).context("cannot listen for SIGTERM")?,
        })
    }

    /// Waits for one; returns the exit code that reports it (128 + its number).
    async fn next(&mut self) -> u8 {
        tokio::select! {
            _ = self.interrupt.recv() => 130,
            _ = self.terminate.recv() => 143,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Debug, Parser)]
    struct Cli {
        #[command(flatten)]
        bench: BenchArgs,
    }

    fn parse(args: &[&str]) -> Result<BenchArgs, clap::Error> {
        Cli::try_parse_from(std::iter::once("bench").chain(args.iter().copied())).map(|c| c.bench)
    }

    #[test]
    fn defaults() {
        let args = parse(&["http://127.0.0.1:8080/"]).unwrap();
        let config = args.to_config().unwrap();
        assert_eq!(config.connections, 10);
        assert_eq!(config.protocol, Protocol::Http1);
        assert_eq!(config.method, Method::GET);
        assert_eq!(config.stop, Stop::Duration(Duration::from_secs(10)));
        assert_eq!(config.warmup, Duration::ZERO);
        assert_eq!(config.timeout, Duration::from_secs(5));
        assert_eq!(config.rate, None);
        assert!(config.body.is_empty());
        assert_eq!(args.threads, 1);
        assert!(!args.json);
    }

    #[test]
    fn everything() {
        let args = parse(&[
            "-c",
            "4",
            "--h2",
            "--streams",
            "8",
            "-m",
            "POST",
            "-H",
            "x-a: 1",
            "-H",
            "x-a: 2",
            "--header",
            "x-b:3",
            "--body-size",
            "64",
            "-n",
            "1000",
            "--warmup",
            "1s",
            "--rate",
            "500",
            "--timeout",
            "250ms",
            "--json",
            "--no-progress",
            "--threads",
            "2",
            "http://localhost:9000/p",
        ])
        .unwrap();
        let config = args.to_config().unwrap();
        assert_eq!(config.connections, 4);
        assert_eq!(config.protocol, Protocol::Http2);
        assert_eq!(config.streams, 8);
        assert_eq!(config.method, Method::POST);
        let a: Vec<_> = config.headers.get_all("x-a").iter().collect();
        assert_eq!(a, ["1", "2"]);
        assert_eq!(config.headers["x-b"], "3");
        assert_eq!(config.body.len(), 64);
        assert_eq!(config.stop, Stop::Requests(1000));
        assert_eq!(config.warmup, Duration::from_secs(1));
        assert_eq!(config.rate, Some(500.0));
        assert_eq!(config.timeout, Duration::from_millis(250));
        assert!(!config.progress);
        assert!(args.json);
        assert_eq!(args.threads, 2);
        let banner = args.banner(&config);
        assert!(banner.contains("open loop at 500 req/s"), "{banner}");
        assert!(banner.ends_with(", after 1s of warm-up"), "{banner}");
    }

    #[test]
    fn duration_and_requests_conflict() {
        assert!(parse(&["-d", "1s", "-n", "5", "http://h/"]).is_err());
        let args = parse(&["-d", "1m", "http://h/"]).unwrap();
        assert_eq!(
            args.to_config().unwrap().stop,
            Stop::Duration(Duration::from_secs(60))
        );
    }

    #[test]
    fn bad_input_is_rejected() {
        assert!(parse(&["-H", "nocolon", "http://h/"]).is_err());
        assert!(parse(&["-d", "soon", "http://h/"]).is_err());
        assert!(parse(&["--rate", "0", "http://h/"]).is_err());
        assert!(parse(&[]).is_err());
        let bad_config = |args: &[&str]| parse(args).unwrap().to_config().unwrap_err();
        assert!(format!("{:#}", bad_config(&["https://h/"])).contains("https"));
        assert!(format!("{:#}", bad_config(&["-m", "GE T", "http://h/"])).contains("method"));
        assert!(format!("{:#}", bad_config(&["-c", "0", "http://h/"])).contains("connections"));
        // Rejected before a byte of it is allocated: this size would abort the process.
        let huge = bad_config(&["--body-size", "99999999999999", "http://h/"]);
        assert!(
            format!("{huge:#}").contains("--body-size must be at most"),
            "{huge:#}"
        );
        assert!(check_body_size(crate::config::MAX_BODY_SIZE).is_ok());
        assert!(check_body_size(crate::config::MAX_BODY_SIZE + 1).is_err());
    }

    #[test]
    fn errors_are_one_line() {
        let error = bench(&parse(&["not a url"]).unwrap()).unwrap_err();
        assert_eq!(
            format!("{error:#}"),
            "invalid URL \"not a url\": invalid uri character"
        );
        let error = bench(&parse(&["--threads", "0", "http://127.0.0.1:1/"]).unwrap()).unwrap_err();
        assert_eq!(format!("{error:#}"), "--threads must be at least 1");
    }
}
