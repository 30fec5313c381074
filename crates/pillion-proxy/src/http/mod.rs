//! The HTTP proxy: serves HTTP/1.1 and HTTP/2 on a connection and forwards each request.

mod body;
mod error;
pub mod headers;
mod router;

pub use self::body::ProxyBody;
pub use self::error::{ProxyError, ERROR_HEADER};
pub use self::router::{Route, RouteTable};

use self::router::Target;
use http::{uri, Request, Response, Uri};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use std::{convert::Infallible, net::SocketAddr, sync::Arc};
use tokio::time::Instant;
use tokio_util::task::TaskTracker;
use tracing::debug;

/// What every request on one downstream connection shares.
#[derive(Debug)]
pub struct ConnCtx {
    /// The route table in force when the connection was accepted.
    pub table: Arc<RouteTable>,
    /// The downstream peer.
    pub client: SocketAddr,
    /// Upgraded tunnels are tracked so shutdown can wait for them.
    pub tasks: TaskTracker,
}

/// Handles one request: route, forward, and map any failure to a response.
pub async fn handle(
    ctx: Arc<ConnCtx>,
    req: Request<Incoming>,
) -> Result<Response<ProxyBody>, Infallible> {
    let start = Instant::now();
    let Some(route) = ctx.table.route(&req) else {
        let rsp = ProxyError::NoRoute.into_response();
        ctx.table
            .no_route
            .record(rsp.status().as_u16(), start.elapsed());
        return Ok(rsp);
    };
    let target = route.target();
    let rsp = match forward(&ctx, route, target, req).await {
        Ok(rsp) => rsp,
        Err(e) => {
            debug!(route = route.name(), cluster = target.cluster.name(), error = %e, "proxy error");
            e.into_response()
        }
    };
    target.stats.record(rsp.status().as_u16(), start.elapsed());
    Ok(rsp)
}

async fn forward(
    ctx: &ConnCtx,
    route: &Route,
    target: &Target,
    mut req: Request<Incoming>,
) -> Result<Response<ProxyBody>, ProxyError> {
    let cluster = &target.cluster;
    let ep = cluster.pick().ok_or(ProxyError::NoHealthyEndpoint)?;

    let upgrade = match req.version() {
        http::Version::HTTP_11 => headers::upgrade_request(req.headers()),
        _ => None,
    };
    let downstream_upgrade = upgrade.is_some().then(|| hyper::upgrade::on(&mut req));

    let (mut parts, body) = req.into_parts();
    let h = &mut parts.headers;
    headers::strip_hop_by_hop(h);
    headers::set_forwarded(h, ctx.client.ip(), "http");
    route.request_headers.apply(h);
    if !h.contains_key(http::header::HOST) {
        if let Some(a) = parts.uri.authority() {
            if let Ok(v) = http::HeaderValue::from_str(a.as_str()) {
                h.insert(http::header::HOST, v);
            }
        }
    }

    let client = match upgrade {
        Some(u) => {
            headers::set_upgrade(&mut parts.headers, u);
            parts.version = http::Version::HTTP_11;
            cluster.http1_client()
        }
        None => {
            let (client, version) = cluster.http_client(parts.version);
            parts.version = version;
            client
        }
    };

    let mut uri = uri::Parts::default();
    uri.scheme = Some(uri::Scheme::HTTP);
    uri.authority = Some(ep.authority);
    uri.path_and_query = Some(
        parts
            .uri
            .path_and_query()
            .cloned()
            .unwrap_or_else(|| uri::PathAndQuery::from_static("/")),
    );
    // NOTE: scheme, authority and path are all set, so the parts always form a valid URI.
    parts.uri = Uri::from_parts(uri).map_err(|_| ProxyError::UpstreamReset)?;

    let mut rsp = client
        .request(Request::from_parts(parts, body))
        .await
        .map_err(|e| {
            debug!(endpoint = %ep.addr, error = %e, "upstream request failed");
            ProxyError::from_client(&e)
        })?;

    if rsp.status() == http::StatusCode::SWITCHING_PROTOCOLS {
        if let Some(downstream) = downstream_upgrade {
            let upstream = hyper::upgrade::on(&mut rsp);
            ctx.tasks.spawn(tunnel(downstream, upstream));
            let (parts, body) = rsp.into_parts();
            return Ok(Response::from_parts(parts, body.into()));
        }
    }

    let (mut parts, body) = rsp.into_parts();
    headers::strip_hop_by_hop(&mut parts.headers);
    route.response_headers.apply(&mut parts.headers);
    Ok(Response::from_parts(parts, body.into()))
}

/// Joins the two halves of an upgraded connection (e.g. a WebSocket) until both sides close.
async fn tunnel(downstream: hyper::upgrade::OnUpgrade, upstream: hyper::upgrade::OnUpgrade) {
    match tokio::try_join!(downstream, upstream) {
        Ok((d, u)) => {
            let (mut d, mut u) = (TokioIo::new(d), TokioIo::new(u));
            match tokio::io::copy_bidirectional(&mut d, &mut u).await {
                Ok((rx, tx)) => debug!(rx, tx, "upgraded connection closed"),
                Err(err) => debug!(%err, "upgraded connection ended with an error"),
            }
        }
        Err(err) => debug!(%err, "upgrade failed"),
    }
}
