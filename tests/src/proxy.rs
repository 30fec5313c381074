//! The proxy under test: `pillion run --config FILE` as a child process, and its admin API.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Output, Stdio};
use std::time::Duration;

use http::StatusCode;
use nix::sys::signal::Signal;
use tempfile::TempDir;

use crate::client::{get, H1Client, Reply};
use crate::metrics::Metrics;
use crate::net::free_addr;
use crate::process::ChildGuard;
use crate::{pillion_bin, STEP};

/// A running `pillion run` with a temporary config file.
pub struct Proxy {
    child: ChildGuard,
    admin: SocketAddr,
    health: SocketAddr,
    config: PathBuf,
    _dir: TempDir,
}

// === impl Proxy ===

impl Proxy {
    /// Writes `yaml` (plus an `admin:` section on a free port) to a temporary file, starts
    /// `pillion run --config FILE` and waits until admin `/ready` answers 200.
    pub async fn start(yaml: &str) -> Self {
        Self::start_with_args(&[], yaml).await
    }

    /// A proxy with one HTTP listener on a free port (returned) whose requests all go to
    /// `endpoint`, a cluster speaking `protocol` (`http1`, `http2` or `auto`).
    pub async fn in_front_of(endpoint: SocketAddr, protocol: &str) -> (Self, SocketAddr) {
        Self::in_front_of_with(endpoint, protocol, "", "").await
    }

    /// Like [`Proxy::in_front_of`], with extra top-level settings (`top`, YAML lines such as
    /// `drain_timeout: 1s`) and extra settings of the listener (`listener`, unindented lines).
    pub async fn in_front_of_with(
        endpoint: SocketAddr,
        protocol: &str,
        top: &str,
        listener: &str,
    ) -> (Self, SocketAddr) {
        let listen = free_addr();
        let listener: String = listener
            .lines()
            .map(|l| format!("    {}\n", l.trim()))
            .collect();
        let proxy = Self::start(&format!(
            r#"
{top}
listeners:
  - name: in
    address: {listen}
    protocol: http
{listener}    cluster: up
clusters:
  - name: up
    endpoints: [{endpoint}]
    protocol: {protocol}
"#
        ))
        .await;
        (proxy, listen)
    }

    /// Like [`Proxy::start`], with extra `pillion run` arguments (e.g. `--log-format json`).
    pub async fn start_with_args(args: &[&str], yaml: &str) -> Self {
        Self::start_with_admin(args, &[], yaml).await
    }

    /// Like [`Proxy::start_with_args`], with extra keys of the `admin:` section (such as
    /// `("header_timeout", "500ms")`).
    pub async fn start_with_admin(args: &[&str], admin_keys: &[(&str, &str)], yaml: &str) -> Self {
        assert!(
            !yaml.lines().any(|l| l.starts_with("admin:")),
            "Proxy::start adds the admin section itself"
        );
        let admin = free_addr();
        let health = free_addr();
        let extra: String = admin_keys
            .iter()
            .map(|(k, v)| format!("  {k}: {v}\n"))
            .collect();
        let yaml = format!("admin:\n  address: {admin}\n  health_address: {health}\n{extra}{yaml}");
        let dir = TempDir::new().expect("tempdir");
        let config = dir.path().join("pillion.yaml");
        std::fs::write(&config, &yaml).expect("write config");
        let mut cmd = Command::new(pillion_bin());
        cmd.arg("run").arg("--config").arg(&config).args(args);
        let child = ChildGuard::spawn("pillion run", cmd, &dir.path().join("pillion.log"));
        let mut proxy = Self {
            child,
            admin,
            health,
            config,
            _dir: dir,
        };
        proxy.wait_ready(&yaml).await;
        proxy
    }

    async fn wait_ready(&mut self, yaml: &str) {
        let deadline = tokio::time::Instant::now() + STEP;
        loop {
            if let Some(status) = self.child.try_wait() {
                panic!(
                    "pillion run exited early ({status}); config:\n{yaml}\nlog:\n{}",
                    self.child.log_text()
                );
            }
            if let Some(reply) = self.try_admin_get("/ready").await {
                if reply.status == StatusCode::OK {
                    return;
                }
            }
            if tokio::time::Instant::now() > deadline {
                panic!("pillion never became ready; config:\n{yaml}");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.pid()
    }

    /// The read-only health and metrics listener.
    pub fn health_addr(&self) -> SocketAddr {
        self.health
    }

    pub fn admin_addr(&self) -> SocketAddr {
        self.admin
    }

    pub fn config_path(&self) -> &Path {
        &self.config
    }

    /// GET `path` on the admin address, or `None` if the admin port does not answer.
    pub async fn try_admin_get(&self, path: &str) -> Option<Reply> {
        let tcp = tokio::time::timeout(STEP, tokio::net::TcpStream::connect(self.admin))
            .await
            .ok()?
            .ok()?;
        let mut client = H1Client::handshake(tcp).await;
        let url = format!("http://{}{path}", self.admin);
        let resp = client.try_send(get(&url)).await.ok()?;
        Some(Reply::read(resp).await)
    }

    /// GET `path` on the admin address.
    pub async fn admin_get(&self, path: &str) -> Reply {
        self.try_admin_get(path)
            .await
            .unwrap_or_else(|| panic!("admin GET {path} failed"))
    }

    /// A scrape of `/metrics`.
    pub async fn metrics(&self) -> Metrics {
        let reply = self.admin_get("/metrics").await;
        assert_eq!(reply.status, StatusCode::OK, "/metrics: {}", reply.text());
        Metrics::parse(&reply.text())
    }

    /// Polls `/metrics` until the sum of `name{labels}` equals `want`, and returns that scrape.
    ///
    /// Metrics may be recorded just after the response reaches the client, hence the polling.
    pub async fn wait_metric(&self, name: &str, labels: &[(&str, &str)], want: f64) -> Metrics {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            let m = self.metrics().await;
            let got = m.sum(name, labels);
            if got == want {
                return m;
            }
            if tokio::time::Instant::now() > deadline {
                panic!(
                    "metric {name}{labels:?}: want {want}, got {got}; /metrics:\n{}",
                    m.text
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Sends SIGTERM to the proxy by PID.
    pub fn sigterm(&self) {
        self.signal(Signal::SIGTERM);
    }

    /// Sends `sig` to the proxy by PID.
    pub fn signal(&self, sig: Signal) {
        self.child.signal(sig);
    }

    /// The exit status if the proxy has exited.
    pub fn try_wait(&mut self) -> Option<ExitStatus> {
        self.child.try_wait()
    }

    /// Waits for the proxy to exit (bounded).
    pub async fn wait_exit(&mut self) -> ExitStatus {
        self.child.wait_exit(STEP).await
    }

    /// Peak resident set size (VmHWM from /proc/PID/status) in bytes.
    pub fn peak_rss_bytes(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid()))
            .expect("read /proc/PID/status");
        let line = status
            .lines()
            .find(|l| l.starts_with("VmHWM:"))
            .expect("VmHWM line");
        let kb: u64 = line
            .split_whitespace()
            .nth(1)
            .and_then(|n| n.parse().ok())
            .expect("VmHWM value");
        kb * 1024
    }

    /// Everything the proxy logged so far.
    pub fn log_text(&self) -> String {
        self.child.log_text()
    }
}

/// Runs `pillion ARGS...` to completion (killing it after `limit`) and returns its output.
pub fn pillion(args: &[&str], limit: Duration) -> Output {
    let mut child = Command::new(pillion_bin())
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn pillion");
    // NOTE: the pipes are read only after exit; pillion's output here is a few lines at most.
    let mut waited = Duration::ZERO;
    loop {
        if child.try_wait().expect("try_wait").is_some() {
            return child.wait_with_output().expect("output");
        }
        if waited > limit {
            let _ = child.kill();
            let out = child.wait_with_output().expect("output");
            panic!(
                "pillion {args:?} still running after {limit:?}; stderr:\n{}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(10));
        waited += Duration::from_millis(10);
    }
}
