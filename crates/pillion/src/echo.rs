//! `pillion echo`: the bundled test upstream. It answers every request with a chosen status, body
//! size and delay, and echoes the method, path and headers it saw.
//!
//! Per-request overrides come from the query string, as fortio's echo server takes them:
//! `?status=503`, `?status=503:30` (503 for 30% of requests), `?delay=100ms`, `?size=1000`.

use bytes::Bytes;
use clap::Args;
use http::{header, HeaderValue, Request, Response, StatusCode};
use http_body::{Body, Frame, SizeHint};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use pillion_config::Duration;
use std::{
    convert::Infallible,
    net::SocketAddr,
    pin::Pin,
    process::ExitCode,
    sync::Arc,
    task::{Context, Poll},
};
use tokio::net::TcpListener;

/// `pillion echo` options.
#[derive(Debug, Args)]
pub struct EchoArgs {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:8080")]
    listen: SocketAddr,
    /// Status of every response, or `CODE:PERCENT` for a share of them (`503:30`); overridden
    /// by `?status=`.
    #[arg(long, default_value = "200")]
    status: String,
    /// Response body size in bytes; 0 answers with the JSON echo (overridden by `?size=`).
    #[arg(long, default_value_t = 0)]
    body_size: u64,
    /// Delay before answering, like 100ms (overridden by `?delay=`).
    #[arg(long, default_value = "0ms")]
    delay: Duration,
    /// Name in the `x-echo-server` header and the JSON; default: the listen address.
    #[arg(long)]
    name: Option<String>,
}

/// What a request gets unless its query says otherwise.
#[derive(Debug, Clone)]
pub struct Defaults {
    status: StatusCode,
    /// With `status`: the share of requests that get it (the rest get 200).
    status_percent: f64,
    body_size: u64,
    delay: std::time::Duration,
    name: HeaderValue,
}

// === impl Defaults ===

impl Defaults {
    /// Status 200, the JSON echo, no delay.
    pub fn named(name: &str) -> Self {
        Self {
            status: StatusCode::OK,
            status_percent: 100.0,
            body_size: 0,
            delay: std::time::Duration::ZERO,
            name: HeaderValue::from_str(name).unwrap_or(HeaderValue::from_static("echo")),
        }
    }
}

/// `pillion echo`.
pub fn main(args: EchoArgs) -> ExitCode {
    let Some((status, status_percent)) = parse_status(&args.status) else {
        eprintln!(
            "error: --status {}: expected a status code (100 to 999) or CODE:PERCENT like 503:30",
            args.status
        );
        return ExitCode::from(2);
    };
    let name = args.name.unwrap_or_else(|| args.listen.to_string());
    let Ok(name) = HeaderValue::from_str(&name) else {
        eprintln!("error: --name {name:?}: not usable in a header");
        return ExitCode::from(2);
    };
    let defaults = Defaults {
        status,
        status_percent,
        body_size: args.body_size,
        delay: args.delay.0,
        name,
    };
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: starting the runtime: {e}");
            return ExitCode::from(1);
        }
    };
    rt.block_on(async {
        let listener = match TcpListener::bind(args.listen).await {
            Ok(l) => l,
            Err(e) => {
                eprintln!("error: cannot listen on {}: {e}", args.listen);
                return ExitCode::from(1);
            }
        };
        eprintln!("echo listening on {}", args.listen);
        serve(listener, defaults).await;
        ExitCode::SUCCESS
    })
}

/// Serves the echo app on `listener` (HTTP/1.1 and h2c) until the process ends.
pub async fn serve(listener: TcpListener, defaults: Defaults) {
    let defaults = Arc::new(defaults);
    let mut http = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
    http.http1().timer(TokioTimer::new());
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            continue;
        };
        let _ = stream.set_nodelay(true);
        let defaults = defaults.clone();
        let svc = hyper::service::service_fn(move |req| handle(defaults.clone(), req));
        let conn = http
            .serve_connection_with_upgrades(TokioIo::new(stream), svc)
            .into_owned();
        tokio::spawn(async move {
            let _ = conn.await;
        });
    }
}

/// `503` or `503:30` (503 for 30% of requests).
fn parse_status(v: &str) -> Option<(StatusCode, f64)> {
    let (code, pct) = match v.split_once(':') {
        Some((c, p)) => (
            c,
            p.parse::<f64>()
                .ok()
                .filter(|p| (0.0..=100.0).contains(p))?,
        ),
        None => (v, 100.0),
    };
    let code = StatusCode::from_u16(code.parse().ok()?).ok()?;
    Some((code, pct))
}

/// `status` for `percent` of requests, 200 for the rest.
fn roll(status: StatusCode, percent: f64) -> StatusCode {
    if percent >= 100.0 || fastrand::f64() * 100.0 < percent {
        status
    } else {
        StatusCode::OK
    }
}

async fn handle(
    d: Arc<Defaults>,
    req: Request<Incoming>,
) -> Result<Response<EchoBody>, Infallible> {
    let mut status = roll(d.status, d.status_percent);
    let mut size = d.body_size;
    let mut delay = d.delay;
    for (k, v) in req
        .uri()
        .query()
        .unwrap_or("")
        .split('&')
        .filter_map(|kv| kv.split_once('='))
    {
        match k {
            "status" => {
                if let Some((s, pct)) = parse_status(v) {
                    status = roll(s, pct);
                }
            }
            "size" => size = v.parse().unwrap_or(size),
            "delay" => delay = v.parse::<Duration>().map(|d| d.0).unwrap_or(delay),
            _ => {}
        }
    }

    let (parts, mut body) = req.into_parts();
    // Read the body as it streams, counting it; never hold it whole.
    let mut body_bytes = 0u64;
    while let Some(frame) = body.frame().await {
        match frame {
            Ok(f) => body_bytes += f.data_ref().map_or(0, |d| d.len() as u64),
            Err(_) => break,
        }
    }
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }

    let mut rsp = if size > 0 {
        Response::new(EchoBody::Filler { left: size })
    } else {
        let mut headers: serde_json::Map<String, serde_json::Value> = parts
            .headers
            .keys()
            .map(|k| {
                let joined = parts
                    .headers
                    .get_all(k)
                    .iter()
                    .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
                    .collect::<Vec<_>>()
                    .join(", ");
                (k.as_str().to_string(), serde_json::Value::String(joined))
            })
            .collect();
        if let Some(a) = parts.uri.authority() {
            // HTTP/2 carries the host as `:authority`, not a `Host` header.
            headers.insert(":authority".into(), a.as_str().into());
        }
        let json = serde_json::json!({
            "server": String::from_utf8_lossy(d.name.as_bytes()),
            "method": parts.method.as_str(),
            "path": parts.uri.path_and_query().map_or("/", |p| p.as_str()),
            "version": format!("{:?}", parts.version),
            "headers": headers,
            "body_bytes": body_bytes,
        });
        let mut body = json.to_string();
        body.push('\n');
        let mut rsp = Response::new(EchoBody::Whole {
            data: Some(Bytes::from(body)),
        });
        rsp.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        rsp
    };
    *rsp.status_mut() = status;
    let h = rsp.headers_mut();
    h.insert("x-echo-server", d.name.clone());
    h.insert("x-echo-body-bytes", HeaderValue::from(body_bytes));
    Ok(rsp)
}

/// Zero-copy filler: slices of one static buffer.
static FILL: [u8; 64 * 1024] = [b'a'; 64 * 1024];

/// The echo app's response body.
enum EchoBody {
    Whole { data: Option<Bytes> },
    Filler { left: u64 },
}

impl Body for EchoBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        let this = self.get_mut();
        Poll::Ready(match this {
            Self::Whole { data } => data.take().map(|d| Ok(Frame::data(d))),
            Self::Filler { left } if *left == 0 => None,
            Self::Filler { left } => {
                let n = (*left).min(FILL.len() as u64) as usize;
                *left -= n as u64;
                Some(Ok(Frame::data(Bytes::from_static(&FILL[..n]))))
            }
        })
    }

    fn is_end_stream(&self) -> bool {
        match self {
            Self::Whole { data } => data.is_none(),
            Self::Filler { left } => *left == 0,
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            Self::Whole { data } => {
                SizeHint::with_exact(data.as_ref().map_or(0, |d| d.len() as u64))
            }
            Self::Filler { left } => SizeHint::with_exact(*left),
        }
    }
}
