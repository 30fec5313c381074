//! The admin endpoint: readiness, liveness, Prometheus metrics, and the effective config.

use bytes::Bytes;
use http::{header, Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use prometheus_client::registry::Registry;
use std::{
    convert::Infallible,
    sync::{
        atomic::{AtomicU8, Ordering},
        Arc,
    },
};
use tokio::net::TcpListener;
use tracing::{debug, info, warn};

/// Where the proxy is in its life, as `/ready` reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Phase {
    /// Listeners are not bound yet.
    Starting = 0,
    /// Every listener is bound and serving.
    Ready = 1,
    /// Shutting down: no new connections.
    Draining = 2,
}

/// What the admin endpoint serves.
pub struct Admin {
    phase: AtomicU8,
    registry: Registry,
    config_dump: String,
}

// === impl Admin ===

impl Admin {
    /// `config_dump` is the effective config, already rendered.
    pub fn new(registry: Registry, config_dump: String) -> Arc<Self> {
        Arc::new(Self {
            phase: AtomicU8::new(Phase::Starting as u8),
            registry,
            config_dump,
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

    /// Serves the admin endpoint on `listener` for as long as the process runs.
    pub async fn serve(self: Arc<Self>, listener: TcpListener) {
        if let Ok(addr) = listener.local_addr() {
            info!(address = %addr, "admin listening");
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
                async move { Ok::<_, Infallible>(admin.handle(&req)) }
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

    fn handle(&self, req: &Request<Incoming>) -> Response<Full<Bytes>> {
        let path = req.uri().path();
        let known = matches!(path, "/ready" | "/live" | "/metrics" | "/config_dump");
        if known && req.method() != Method::GET && req.method() != Method::HEAD {
            return text(
                StatusCode::METHOD_NOT_ALLOWED,
                "method not allowed: use GET\n",
            );
        }
        match path {
            "/ready" => match self.phase() {
                Phase::Ready => text(StatusCode::OK, "ready\n"),
                Phase::Starting => text(StatusCode::SERVICE_UNAVAILABLE, "starting\n"),
                Phase::Draining => text(StatusCode::SERVICE_UNAVAILABLE, "draining\n"),
            },
            "/live" => text(StatusCode::OK, "live\n"),
            "/metrics" => {
                let mut rsp = text(StatusCode::OK, pillion_telemetry::encode(&self.registry));
                rsp.headers_mut().insert(
                    header::CONTENT_TYPE,
                    header::HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
                );
                rsp
            }
            "/config_dump" => {
                let mut rsp = text(StatusCode::OK, self.config_dump.clone());
                rsp.headers_mut().insert(
                    header::CONTENT_TYPE,
                    header::HeaderValue::from_static("application/yaml"),
                );
                rsp
            }
            _ => text(
                StatusCode::NOT_FOUND,
                "not found; try /ready, /live, /metrics or /config_dump\n",
            ),
        }
    }
}

fn text(status: StatusCode, body: impl Into<Bytes>) -> Response<Full<Bytes>> {
    let mut rsp = Response::new(Full::new(body.into()));
    *rsp.status_mut() = status;
    rsp.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("text/plain"),
    );
    rsp
}
