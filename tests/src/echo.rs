//! `pillion echo` upstreams run as child processes, and the request they report having seen.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::process::Command;
use std::time::Duration;

use serde::Deserialize;
use tempfile::TempDir;

use crate::net::{free_addr, wait_for_port};
use crate::pillion_bin;
use crate::process::ChildGuard;

/// A running `pillion echo --listen ADDR` upstream.
pub struct Echo {
    addr: SocketAddr,
    _child: ChildGuard,
    _dir: TempDir,
}

// === impl Echo ===

impl Echo {
    /// An echo server with the default name (its listen address).
    pub async fn start() -> Self {
        Self::spawn(None).await
    }

    /// An echo server that reports `x-echo-server: NAME`.
    pub async fn named(name: &str) -> Self {
        Self::spawn(Some(name)).await
    }

    async fn spawn(name: Option<&str>) -> Self {
        let addr = free_addr();
        let dir = TempDir::new().expect("tempdir");
        let mut cmd = Command::new(pillion_bin());
        cmd.arg("echo").arg("--listen").arg(addr.to_string());
        if let Some(name) = name {
            cmd.arg("--name").arg(name);
        }
        let child = ChildGuard::spawn(
            &format!("pillion echo {}", name.unwrap_or("")),
            cmd,
            &dir.path().join("echo.log"),
        );
        wait_for_port(addr, Duration::from_secs(20)).await;
        Self {
            addr,
            _child: child,
            _dir: dir,
        }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }
}

/// The request as the echo upstream saw it (its JSON body).
#[derive(Debug, Deserialize)]
pub struct EchoSeen {
    pub server: String,
    pub method: String,
    /// Path and query.
    pub path: String,
    /// "HTTP/1.1" or "HTTP/2.0".
    pub version: String,
    /// Lower-case names; repeated headers joined with ", ".
    pub headers: BTreeMap<String, String>,
    pub body_bytes: u64,
}

// === impl EchoSeen ===

impl EchoSeen {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).map(String::as_str)
    }
}

// === impl Echo (extra flags, killing) ===

impl Echo {
    /// An echo server named `name` started with extra `pillion echo` flags, for example
    /// `&["--status", "503:30"]` or `&["--delay", "20ms"]`.
    pub async fn start_with_args(name: &str, args: &[&str]) -> Self {
        let addr = free_addr();
        let dir = TempDir::new().expect("tempdir");
        let mut cmd = Command::new(pillion_bin());
        cmd.arg("echo")
            .arg("--listen")
            .arg(addr.to_string())
            .arg("--name")
            .arg(name)
            .args(args);
        let child = ChildGuard::spawn(
            &format!("pillion echo {name} {}", args.join(" ")),
            cmd,
            &dir.path().join("echo.log"),
        );
        wait_for_port(addr, Duration::from_secs(20)).await;
        Self {
            addr,
            _child: child,
            _dir: dir,
        }
    }

    /// The echo server's process id.
    pub fn pid(&self) -> u32 {
        self._child.pid()
    }

    /// Kills the echo server at once (SIGKILL by PID); the guard reaps it when dropped.
    pub fn kill(&self) {
        self._child.signal(nix::sys::signal::Signal::SIGKILL);
    }
}
