//! The admin endpoint (everything, loopback only) and the read-only health port (`/ready`,
//! `/live`, `/metrics`, for kubelet and Prometheus).
//!
//! Endpoints that change state answer POST only; GET on them is 405, as on Envoy's admin.

use bytes::Bytes;
use http::{header, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use prometheus_client::registry::Registry;
use std::{
    convert::Infallible,
    sync::{
        atomic::{AtomicBool, AtomicU8, Ordering},
        Arc,
    },
};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

/// Where the proxy is in its life, as `/ready` reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Phase {
    /// Listeners are not bound yet.
    Starting = 0,
    /// Every listener is bound and serving.
    Ready = 1,
    /// Draining: no new connections.
    Draining = 2,
}

/// Which port a request came in on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Port {
    /// The admin port: every endpoint.
    Admin,
    /// The health port: `/ready`, `/live` and `/metrics` only.
    Health,
}

/// A JSON view the admin shows (`/clusters`, `/listeners`).
pub type View = Box<dyn Fn() -> serde_json::Value + Send + Sync>;

/// Sets the log filter; returns the filter now in force.
pub type SetLogFilter = Box<dyn Fn(&str) -> Result<String, String> + Send + Sync>;

/// What the admin endpoint can show and do.
pub struct Controls {
    /// The effective config, rendered and redacted.
    pub config_dump: String,
    /// `/clusters`.
    pub clusters: View,
    /// `/listeners`.
    pub listeners: View,
    /// The current log filter, for `/logging` with only per-module changes.
    pub log_filter: Box<dyn Fn() -> String + Send + Sync>,
    /// `/logging`.
    pub set_log_filter: SetLogFilter,
    /// Cancelled by `/drain`: stop accepting and drain, without exiting.
    pub drain: CancellationToken,
    /// Cancelled by `/shutdown`: drain, then exit.
    pub shutdown: CancellationToken,
}

/// The admin state shared by both ports.
pub struct Admin {
    phase: AtomicU8,
    failed_by_hand: AtomicBool,
    registry: Registry,
    controls: Controls,
}

// === impl Admin ===

impl Admin {
    /// Builds the admin state.
    pub fn new(registry: Registry, controls: Controls) -> Arc<Self> {
        Arc::new(Self {
            phase: AtomicU8::new(Phase::Starting as u8),
            failed_by_hand: AtomicBool::new(false),
            registry,
            controls,
        })
    }

    /// Sets the phase `/ready` reports.
    pub fn set_phase(&self, phase: Phase) {
        self.phase.store(phase as u8, Ordering::Release);
    }

    /// The phase `/ready` reports.
    pub fn phase(&self) -> Phase {
        match self.phase.load(Ordering::Acquire) {
            1 => Phase::Ready,
            2 => Phase::Draining,
            _ => Phase::Starting,
        }
    }

    /// Serves `port` on `listener` for as long as the process runs.
    pub async fn serve(self: Arc<Self>, listener: TcpListener, port: Port) {
        if let Ok(addr) = listener.local_addr() {
            info!(address = %addr, ?port, "admin listening");
        }
        let http = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
        loop {
            let (stream, peer) = match listener.accept().await {
                Ok(a) => a,
                Err(err) => {
                    warn!(%err, "admin accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            };
            let admin = self.clone();
            let svc = hyper::service::service_fn(move |req| {
                let admin = admin.clone();
                async move { Ok::<_, Infallible>(admin.handle(&req, port)) }
            });
            let conn = http
                .serve_connection(TokioIo::new(stream), svc)
                .into_owned();
            tokio::spawn(async move {
                if let Err(err) = conn.await {
                    debug!(%peer, %err, "admin connection error");
                }
            });
        }
    }

    fn handle(&self, req: &Request<Incoming>, port: Port) -> Response<Full<Bytes>> {
        let path = req.uri().path();
        let read_only = matches!(path, "/ready" | "/live" | "/metrics");
        let reads = matches!(path, "/config_dump" | "/clusters" | "/listeners");
        let writes = matches!(
            path,
            "/logging" | "/healthcheck/fail" | "/healthcheck/ok" | "/drain" | "/shutdown"
        );
        if port == Port::Health && !read_only {
            return text(
                StatusCode::NOT_FOUND,
                "not found: this port serves /ready, /live and /metrics only\n",
            );
        }
        let get = req.method() == Method::GET || req.method() == Method::HEAD;
        if (read_only || reads) && !get {
            return text(
                StatusCode::METHOD_NOT_ALLOWED,
                "method not allowed: use GET\n",
            );
        }
        if writes && req.method() != Method::POST {
            return text(
                StatusCode::METHOD_NOT_ALLOWED,
                "method not allowed: use POST\n",
            );
        }
        let c = &self.controls;
        match path {
            "/ready" => match (self.phase(), self.failed_by_hand.load(Ordering::Acquire)) {
                (Phase::Ready, false) => text(StatusCode::OK, "ready\n"),
                (Phase::Ready, true) => text(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "failed by /healthcheck/fail\n",
                ),
                (Phase::Starting, _) => text(StatusCode::SERVICE_UNAVAILABLE, "starting\n"),
                (Phase::Draining, _) => text(StatusCode::SERVICE_UNAVAILABLE, "draining\n"),
            },
            "/live" => text(StatusCode::OK, "live\n"),
            "/metrics" => with_type(
                text(StatusCode::OK, pillion_telemetry::encode(&self.registry)),
                "text/plain; version=0.0.4; charset=utf-8",
            ),
            "/config_dump" => with_type(
                text(StatusCode::OK, c.config_dump.clone()),
                "application/yaml",
            ),
            "/clusters" => json(&(c.clusters)()),
            "/listeners" => json(&(c.listeners)()),
            "/logging" => self.logging(req.uri().query().unwrap_or("")),
            "/healthcheck/fail" => {
                self.failed_by_hand.store(true, Ordering::Release);
                info!("readiness failed by hand (/healthcheck/fail)");
                text(StatusCode::OK, "/ready now answers 503\n")
            }
            "/healthcheck/ok" => {
                self.failed_by_hand.store(false, Ordering::Release);
                info!("readiness restored by hand (/healthcheck/ok)");
                text(
                    StatusCode::OK,
                    "/ready answers by the proxy's state again\n",
                )
            }
            "/drain" => {
                info!("drain requested (/drain)");
                // NOTE: not ready from this answer on, before the listeners stop.
                self.set_phase(Phase::Draining);
                c.drain.cancel();
                text(
                    StatusCode::OK,
                    "draining: listeners stop accepting; the process keeps running\n",
                )
            }
            "/shutdown" => {
                info!("shutdown requested (/shutdown)");
                self.set_phase(Phase::Draining);
                c.shutdown.cancel();
                text(StatusCode::OK, "shutting down after the drain\n")
            }
            _ => text(
                StatusCode::NOT_FOUND,
                "not found; GET /ready /live /metrics /config_dump /clusters /listeners; \
                 POST /logging /healthcheck/fail /healthcheck/ok /drain /shutdown\n",
            ),
        }
    }

    /// `POST /logging?level=debug` sets every module; `?pillion_proxy=debug` one module.
    fn logging(&self, query: &str) -> Response<Full<Bytes>> {
        let c = &self.controls;
        let mut base = None;
        let mut modules = Vec::new();
        for (k, v) in query.split('&').filter_map(|kv| kv.split_once('=')) {
            if k == "level" {
                base = Some(v.to_string());
            } else {
                modules.push(format!("{k}={v}"));
            }
        }
        if base.is_none() && modules.is_empty() {
            return text(
                StatusCode::BAD_REQUEST,
                format!(
                    "expected ?level=LEVEL and/or ?MODULE=LEVEL; now: {}\n",
                    (c.log_filter)()
                ),
            );
        }
        let mut filter = base.unwrap_or_else(|| (c.log_filter)());
        for m in modules {
            filter.push(',');
            filter.push_str(&m);
        }
        match (c.set_log_filter)(&filter) {
            Ok(now) => {
                info!(filter = %now, "log filter changed (/logging)");
                text(StatusCode::OK, format!("{now}\n"))
            }
            Err(e) => text(StatusCode::BAD_REQUEST, format!("{e}\n")),
        }
    }
}

fn text(status: StatusCode, body: impl Into<Bytes>) -> Response<Full<Bytes>> {
    let mut rsp = Response::new(Full::new(body.into()));
    *rsp.status_mut() = status;
    with_type(rsp, "text/plain")
}

fn json(v: &serde_json::Value) -> Response<Full<Bytes>> {
    let body = serde_json::to_vec_pretty(v).unwrap_or_default();
    with_type(text(StatusCode::OK, body), "application/json")
}

fn with_type(mut rsp: Response<Full<Bytes>>, content_type: &'static str) -> Response<Full<Bytes>> {
    rsp.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    rsp
}
