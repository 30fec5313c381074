//! The proxy's runtime: compiled listeners, the accept pipeline, and draining on shutdown.

use crate::{
    cluster::Cluster,
    detect::{detect, detect_from, read_http_version, Detected},
    h1_server,
    http::{ConnCtx, HttpListener, ProxyError, RouteTable},
    io::{Activity, IdleIo, PrefixedIo, TcpIo},
    tcp,
    wake::OnWake,
};
use arc_swap::ArcSwap;
use bytes::BytesMut;
use hyper::server::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use pillion_config::{self as config, Config, Protocol, TlsMode};
use pillion_layers::BoxError;
use pillion_telemetry::{access_log::AccessLog, Metrics, TcpLabels, TcpStats};
use pillion_tls::{authz::Policy, PeerInfo, ServerTls, TlsMetrics};
use prometheus_client::metrics::counter::Counter;
use std::{
    collections::HashMap,
    future::Future,
    net::SocketAddr,
    pin::Pin,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    task::Poll,
    time::Duration,
};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::{sync::CancellationToken, task::TaskTracker};
use tracing::{debug, info, warn};

/// The compiled data path: listeners with their route tables, and clusters.
pub struct Proxy {
    listeners: Vec<Arc<Listener>>,
    clusters: Vec<Arc<Cluster>>,
}

/// A compiled listener.
struct Listener {
    name: String,
    address: SocketAddr,
    protocol: Protocol,
    detect_timeout: Duration,
    idle_timeout: Duration,
    /// NOTE: swapped whole on reload; each connection keeps the table it started with.
    table: ArcSwap<RouteTable>,
    /// TLS termination, unless off.
    tls: Option<(TlsMode, Arc<ServerTls>)>,
    /// How long a TLS handshake, or an HTTP/1 request head from its first byte, may take.
    head_timeout: Duration,
    /// Where opaque traffic goes.
    tcp: Option<(Arc<Cluster>, TcpStats)>,
    /// Detection results, indexed like [`Detected`].
    detected: [Counter; 4],
    h1: http1::Builder,
    h2: http2::Builder<TokioExecutor>,
    /// What every HTTP request on this listener shares.
    shared: Arc<HttpListener>,
}

/// What the admin endpoint shows of a listener.
#[derive(Debug, Clone)]
pub struct ListenerInfo {
    pub name: String,
    pub address: SocketAddr,
    pub protocol: Protocol,
    pub routes: usize,
}

/// The config could not be compiled (validation should have caught it).
#[derive(Debug, thiserror::Error)]
#[error("{what}: {message}")]
pub struct BuildError {
    what: String,
    message: String,
}

/// A listener's address could not be bound.
#[derive(Debug, thiserror::Error)]
#[error("cannot listen on {address} (listener `{listener}`): {source}")]
pub struct BindError {
    listener: String,
    address: SocketAddr,
    #[source]
    source: std::io::Error,
}

/// Binds a listening socket at `addr`, the same way on every host.
///
/// NOTE: an IPv6 address is bound with `IPV6_V6ONLY` off, whatever the host's
/// `net.ipv6.bindv6only` says, so `[::]:P` takes IPv4 connections on P too; config validation
/// counts on it when it looks for addresses that collide.
pub fn listen(addr: SocketAddr) -> std::io::Result<TcpListener> {
    use socket2::{Domain, Protocol, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    // As tokio's `TcpListener::bind`: a restarted proxy binds again while the connections of
    // the one before are in TIME_WAIT.
    socket.set_reuse_address(true)?;
    if addr.is_ipv6() {
        socket.set_only_v6(false)?;
    }
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(1024)?;
    TcpListener::from_std(socket.into())
}

// === impl Proxy ===

impl Proxy {
    /// Compiles a validated config, resolving every metric handle the data path will use.
    pub fn build(
        cfg: &Config,
        metrics: &Arc<Metrics>,
        tls: &TlsMetrics,
        access_log: Option<AccessLog>,
    ) -> Result<Self, BuildError> {
        let clusters: HashMap<String, Arc<Cluster>> = cfg
            .clusters
            .iter()
            .map(|c| {
                Cluster::new(c, metrics, tls)
                    .map(|cl| (c.name.clone(), cl))
                    .map_err(|message| BuildError {
                        what: format!("cluster `{}`", c.name),
                        message,
                    })
            })
            .collect::<Result<_, _>>()?;
        let listeners = cfg
            .listeners
            .iter()
            .map(|l| Listener::build(l, &clusters, metrics, tls, access_log.clone()).map(Arc::new))
            .collect::<Result<_, _>>()?;
        // Config order, so the admin endpoint lists clusters as the file does.
        let clusters = cfg
            .clusters
            .iter()
            .filter_map(|c| clusters.get(&c.name).cloned())
            .collect();
        Ok(Self {
            listeners,
            clusters,
        })
    }

    /// Resolves DNS endpoints once, then starts each cluster's background work (DNS refresh,
    /// health checks).
    pub async fn resolve(&self) {
        let dns = self.clusters.iter().filter(|c| c.has_dns());
        futures_util::future::join_all(dns.map(|c| c.resolve())).await;
        for c in &self.clusters {
            c.spawn_background();
        }
    }

    /// Binds every listener, in config order; fails on the first address that cannot be bound.
    pub fn bind(&self) -> Result<Vec<TcpListener>, BindError> {
        let mut bound = Vec::with_capacity(self.listeners.len());
        for l in &self.listeners {
            let sock = listen(l.address).map_err(|source| BindError {
                listener: l.name.clone(),
                address: l.address,
                source,
            })?;
            bound.push(sock);
        }
        Ok(bound)
    }

    /// The clusters, for the admin endpoint.
    pub fn clusters(&self) -> Vec<Arc<Cluster>> {
        self.clusters.clone()
    }

    /// The listeners, for the admin endpoint.
    pub fn listeners(&self) -> Vec<ListenerInfo> {
        self.listeners
            .iter()
            .map(|l| ListenerInfo {
                name: l.name.clone(),
                address: l.address,
                protocol: l.protocol,
                routes: l.table.load().len(),
            })
            .collect()
    }

    /// Serves until `shutdown` fires, then stops accepting and lets in-flight requests and
    /// connections finish for up to `drain`. HTTP/2 clients get a GOAWAY; idle HTTP/1
    /// connections are closed. Returns whether everything finished within `drain`.
    pub async fn serve(
        self,
        bound: Vec<TcpListener>,
        shutdown: CancellationToken,
        drain: Duration,
    ) -> bool {
        let tasks = TaskTracker::new();
        let mut accepting = Vec::with_capacity(bound.len());
        for (l, sock) in self.listeners.iter().zip(bound) {
            accepting.push(tokio::spawn(accept_loop(
                l.clone(),
                sock,
                shutdown.clone(),
                tasks.clone(),
            )));
        }
        shutdown.cancelled().await;
        for a in accepting {
            // NOTE: an accept loop only ends by seeing the cancellation; a join error means it
            // panicked, which is logged by the runtime.
            let _ = a.await;
        }
        info!(active = tasks.len(), timeout = ?drain, "draining");
        tasks.close();
        // Every HTTP connection saw `shutdown` and is closing gracefully (GOAWAY for HTTP/2,
        // close after the response in flight for HTTP/1).
        let drained = tokio::time::timeout(drain, tasks.wait()).await;
        match drained {
            Ok(()) => {
                info!("drained");
                true
            }
            Err(_) => {
                warn!(
                    left = tasks.len(),
                    "drain timeout: closing the remaining connections"
                );
                false
            }
        }
    }
}

async fn accept_loop(
    l: Arc<Listener>,
    sock: TcpListener,
    shutdown: CancellationToken,
    tasks: TaskTracker,
) {
    info!(listener = %l.name, address = %l.address, protocol = ?l.protocol, "listening");
    loop {
        let accepted = tokio::select! {
            _ = shutdown.cancelled() => return,
            a = sock.accept() => a,
        };
        match accepted {
            Ok((stream, peer)) => {
                if let Err(err) = stream.set_nodelay(true) {
                    debug!(%err, "TCP_NODELAY");
                }
                let t = tasks.clone();
                tasks.spawn(serve_connection(
                    l.clone(),
                    stream,
                    peer,
                    shutdown.clone(),
                    t,
                ));
            }
            Err(err) => {
                // Out of file descriptors or similar: back off instead of spinning.
                warn!(listener = %l.name, %err, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

/// One connection's pipeline: detect (on `auto`), then HTTP or the TCP relay.
async fn serve_connection(
    l: Arc<Listener>,
    mut stream: TcpStream,
    peer: SocketAddr,
    shutdown: CancellationToken,
    tasks: TaskTracker,
) {
    let Some((mode, server)) = &l.tls else {
        let io = TcpIo::new(stream);
        return serve_stream(l.clone(), io, peer, None, shutdown, tasks).await;
    };
    let (tls, prefix) = match mode {
        TlsMode::Permissive => match sniff(&mut stream, l.detect_timeout).await {
            Ok(prefix) => (pillion_tls::is_client_hello(&prefix), prefix),
            Err(err) => {
                debug!(listener = %l.name, %peer, %err, "connection failed before TLS");
                return;
            }
        },
        // NOTE: `Disabled` builds no ServerTls, so `l.tls` is None for it.
        _ => (true, BytesMut::new()),
    };
    let io = PrefixedIo::new(prefix, TcpIo::new(stream));
    // NOTE: boxed so that the plaintext path, the common one, keeps a small task.
    if !tls {
        return Box::pin(serve_stream(l.clone(), io, peer, None, shutdown, tasks)).await;
    }
    let server = server.clone();
    Box::pin(async move {
        match tokio::time::timeout(l.head_timeout, server.accept(io)).await {
            Ok(Ok((tls, info))) => {
                serve_stream(l.clone(), tls, peer, Some(info), shutdown, tasks).await
            }
            Ok(Err(err)) => debug!(listener = %l.name, %peer, %err, "TLS handshake failed"),
            Err(_) => debug!(listener = %l.name, %peer, "TLS handshake timed out"),
        }
    })
    .await
}

/// Reads a connection's first bytes (at least 3, enough to spot a TLS ClientHello), or what came
/// before the timeout or EOF; the caller replays them.
async fn sniff(stream: &mut TcpStream, timeout: Duration) -> std::io::Result<BytesMut> {
    use tokio::io::AsyncReadExt;
    let mut buf = BytesMut::with_capacity(512);
    let deadline = tokio::time::Instant::now() + timeout;
    while buf.len() < 3 {
        match tokio::time::timeout_at(deadline, stream.read_buf(&mut buf)).await {
            Ok(Ok(0)) | Err(_) => break,
            Ok(Ok(_)) => {}
            Ok(Err(e)) => return Err(e),
        }
    }
    Ok(buf)
}

/// A connection after TLS (if any): detect the protocol (on `auto`), then HTTP or the TCP relay.
async fn serve_stream<I>(
    l: Arc<Listener>,
    mut io: I,
    peer: SocketAddr,
    tls: Option<PeerInfo>,
    shutdown: CancellationToken,
    tasks: TaskTracker,
) where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let identity = tls.as_ref().and_then(|t| t.identity.clone());
    let activity = Activity::new();
    let alpn_h2 = tls.as_ref().is_some_and(|t| t.alpn_h2);
    // The relay's endpoint, when it was connected during detection.
    let mut opened = None;
    let (detected, prefix) = match l.protocol {
        Protocol::Tcp => (Detected::Opaque, BytesMut::new()),
        Protocol::Http | Protocol::Auto if alpn_h2 => (Detected::Http2, BytesMut::new()),
        Protocol::Http => {
            let version = tokio::select! {
                v = read_http_version(&mut io, l.head_timeout) => v,
                _ = crate::io::idle(&activity, l.idle_timeout) => return,
                _ = shutdown.cancelled() => return,
            };
            match version {
                Ok((true, prefix)) => (Detected::Http2, prefix),
                Ok((false, prefix)) => (Detected::Http1, prefix),
                Err(err) => {
                    debug!(listener = %l.name, %peer, %err, "connection failed before a request");
                    return;
                }
            }
        }
        Protocol::Auto => match detect(&mut io, l.detect_timeout, l.head_timeout).await {
            Ok((Detected::Timeout, _)) => {
                match after_silence(&l, &mut io, identity.as_deref(), &activity, &shutdown).await {
                    AfterSilence::Http(d, prefix) => {
                        l.detected[d as usize].inc();
                        (d, prefix)
                    }
                    AfterSilence::Relay(prefix, upstream) => {
                        l.detected[Detected::Timeout as usize].inc();
                        opened = upstream;
                        (Detected::Timeout, prefix)
                    }
                    AfterSilence::Done => return,
                }
            }
            Ok((d, prefix)) => {
                l.detected[d as usize].inc();
                (d, prefix)
            }
            Err(err) => {
                debug!(listener = %l.name, %peer, %err, "connection failed during detection");
                return;
            }
        },
    };
    let io = IdleIo::new(PrefixedIo::new(prefix, io), activity.clone());
    match detected {
        Detected::Http1 | Detected::Http2 => {
            let http1 = detected == Detected::Http1;
            let ctx = Arc::new(ConnCtx {
                listener: l.shared.clone(),
                table: l.table.load_full(),
                client: peer,
                client_ip: crate::http::headers::client_ip(peer.ip()),
                tasks,
                scheme: if tls.is_some() { "https" } else { "http" },
                identity,
            });
            let result = if !http1 {
                let svc = hyper::service::service_fn(move |req| {
                    crate::http::handle(ctx.clone(), req, None)
                });
                // NOTE: boxed; HTTP/2 state is large and an HTTP/1 connection needs none of it.
                Box::pin(async {
                    let conn = std::pin::pin!(l.h2.serve_connection(TokioIo::new(io), svc));
                    drive(
                        conn,
                        |c| c.graceful_shutdown(),
                        &l,
                        &activity,
                        None,
                        &shutdown,
                    )
                    .await
                })
                .await
                .map_err(BoxError::from)
            } else {
                // NOTE: an HTTP/1 request is under way from its dispatch to its response's end,
                // so that the head timeout counts only bytes of a head.
                let closing = Arc::new(AtomicBool::new(false));
                let server = h1_server::Server {
                    ctx,
                    activity: activity.clone(),
                    closing: closing.clone(),
                    fallback: l.h1.clone(),
                };
                drive(
                    std::pin::pin!(h1_server::serve(io, server)),
                    |_| closing.store(true, Ordering::Relaxed),
                    &l,
                    &activity,
                    Some(l.head_timeout),
                    &shutdown,
                )
                .await
            };
            if let Err(err) = result {
                debug!(listener = %l.name, %peer, %err, "HTTP connection ended with an error");
            }
        }
        Detected::Opaque | Detected::Timeout => {
            Box::pin(serve_tcp(&l, io, peer, identity, &activity, opened)).await;
        }
    }
}

/// Runs an HTTP connection to its end; on shutdown or when idle, closes it gracefully (GOAWAY,
/// or `Connection: close` after the request in flight). With `head_timeout` (HTTP/1), a request
/// head must arrive whole within it of its first byte, or the client gets a 408 and the close.
///
/// NOTE: `conn` is pinned by the caller, where it was made: an async fn that takes a future and
/// pins it holds two copies of its state (the argument and the pinned local), which for an
/// HTTP/1 connection was 4 KB more per connection.
async fn drive<C, E>(
    mut conn: Pin<&mut C>,
    graceful: impl Fn(Pin<&mut C>),
    l: &Listener,
    activity: &Activity,
    head_timeout: Option<Duration>,
    shutdown: &CancellationToken,
) -> Result<(), E>
where
    C: Future<Output = Result<(), E>>,
{
    // NOTE: polled only when their own wakers fire, not on every wake-up of the connection.
    let cancelled = OnWake::new(shutdown.cancelled());
    let idle = OnWake::new(crate::io::idle(activity, l.idle_timeout));
    tokio::pin!(cancelled, idle);
    let mut closing = false;
    // NOTE: armed only when the connection waits in the middle of a head, so a head that comes
    // in one read costs no timer.
    let mut head: Option<Pin<Box<tokio::time::Sleep>>> = None;
    std::future::poll_fn(|cx| loop {
        if let Poll::Ready(res) = conn.as_mut().poll(cx) {
            return Poll::Ready(res);
        }
        if !closing {
            let why = if cancelled.as_mut().poll(cx).is_ready() {
                Some("shutdown")
            } else if idle.as_mut().poll(cx).is_ready() {
                Some("idle timeout")
            } else {
                None
            };
            if let Some(why) = why {
                debug!(listener = %l.name, "{why}: closing");
                graceful(conn.as_mut());
                closing = true;
                continue;
            }
        }
        match head_timeout {
            Some(after) if activity.reading_head() => {
                let timer = head.get_or_insert_with(|| Box::pin(tokio::time::sleep(after)));
                if timer.as_mut().poll(cx).is_ready() {
                    debug!(listener = %l.name, ?after, "request head timeout: answering 408");
                    activity.cut();
                    head = None;
                    continue;
                }
            }
            _ => head = None,
        }
        return Poll::Pending;
    })
    .await
}

/// What a client silent past `detect_timeout` turned out to speak.
enum AfterSilence {
    /// HTTP after all, with the bytes read.
    Http(Detected, BytesMut),
    /// Anything else, or the endpoint spoke first: relayed, with the client's bytes read and the
    /// endpoint's connection if one was opened.
    Relay(BytesMut, Option<Result<tcp::Opened, tcp::Failed>>),
    /// The connection ended or idled out, or the proxy is shutting down.
    Done,
}

/// A client that sent nothing within `detect_timeout` may speak a server-first protocol, so the
/// relay's endpoint is connected for it to speak. Whoever speaks first decides: the endpoint's
/// bytes make it a relay; the client's are classified, and HTTP is served as HTTP and its endpoint
/// connection closed. A client that waits before its first request (a preconnect, a slow one)
/// must not reach the app as opaque bytes around the routes and their policies.
///
/// Where the relay would be refused (no cluster, or the listener's policy denies the peer), the
/// client has the head timeout to speak HTTP.
async fn after_silence<I>(
    l: &Listener,
    io: &mut I,
    identity: Option<&str>,
    activity: &Activity,
    shutdown: &CancellationToken,
) -> AfterSilence
where
    I: tokio::io::AsyncRead + Unpin,
{
    use tokio::io::AsyncReadExt;
    let mut buf = BytesMut::with_capacity(1024);
    let mut up = None;
    let read = match l.tcp.as_ref().filter(|_| !denied(l, identity)) {
        Some((cluster, _)) => {
            let opened = match tcp::open(cluster).await {
                Ok(opened) => up.insert(opened),
                Err(failed) => return AfterSilence::Relay(buf, Some(Err(failed))),
            };
            tokio::select! {
                read = io.read_buf(&mut buf) => read,
                // The endpoint spoke (or closed) first: a server-first protocol.
                _ = opened.io.read_buf(&mut opened.early) => Ok(0),
                _ = crate::io::idle(activity, l.idle_timeout) => return AfterSilence::Done,
                _ = shutdown.cancelled() => return AfterSilence::Done,
            }
        }
        None => tokio::select! {
            read = tokio::time::timeout(l.head_timeout, io.read_buf(&mut buf)) => {
                read.unwrap_or(Ok(0))
            }
            _ = shutdown.cancelled() => return AfterSilence::Done,
        },
    };
    if !matches!(read, Ok(n) if n > 0) {
        // Silent, closed or failed: relayed (or refused) as it would have been, the relay
        // passing the close on.
        return AfterSilence::Relay(buf, up.map(Ok));
    }
    match detect_from(io, buf, l.head_timeout, l.head_timeout).await {
        // HTTP: the endpoint connection (dropped here) is not needed.
        Ok((d @ (Detected::Http1 | Detected::Http2), buf)) => AfterSilence::Http(d, buf),
        Ok((_, buf)) => AfterSilence::Relay(buf, up.map(Ok)),
        Err(_) => AfterSilence::Done,
    }
}

/// Whether the listener's policy refuses to relay a peer's connection.
fn denied(l: &Listener, identity: Option<&str>) -> bool {
    l.shared
        .policy
        .as_ref()
        .is_some_and(|p| !p.check(identity, None).is_allowed())
}

/// Relays an opaque connection to the listener's cluster, within its authorization policy, on
/// `opened` if its endpoint was connected already.
async fn serve_tcp<I>(
    l: &Listener,
    io: I,
    peer: SocketAddr,
    identity: Option<Arc<str>>,
    activity: &Activity,
    opened: Option<Result<tcp::Opened, tcp::Failed>>,
) where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let Some((cluster, stats)) = &l.tcp else {
        debug!(listener = %l.name, %peer, "not HTTP and no cluster to relay to; closing");
        return;
    };
    let mut entry = l
        .shared
        .access_log
        .as_ref()
        .map(|_| pillion_telemetry::access_log::Entry {
            start_time: Some(std::time::SystemTime::now()),
            listener: l.shared.name.clone(),
            direction: l.shared.direction,
            cluster: Some(cluster.name_arc()),
            protocol: "TCP",
            response_flags: "-",
            downstream_address: Some(peer),
            peer_identity: identity.clone(),
            ..Default::default()
        });
    let started = tokio::time::Instant::now();
    let outcome = if denied(l, identity.as_deref()) {
        debug!(listener = %l.name, %peer, identity = ?identity, "connection denied by policy; closing");
        tcp::Outcome {
            error: Some(ProxyError::Denied),
            ..Default::default()
        }
    } else {
        let idle = crate::io::idle(activity, l.idle_timeout);
        let upstream = async {
            match opened {
                Some(opened) => opened,
                None => tcp::open(cluster).await,
            }
        };
        tcp::relay(io, cluster, upstream, stats, idle).await
    };
    if let (Some(log), Some(mut e)) = (&l.shared.access_log, entry.take()) {
        e.duration = started.elapsed();
        e.upstream_host = outcome.upstream;
        e.bytes_received = outcome.rx;
        e.bytes_sent = outcome.tx;
        e.response_flags = outcome.flag();
        log.log(e);
    }
}

// === impl Listener ===

impl Listener {
    fn build(
        cfg: &config::Listener,
        clusters: &HashMap<String, Arc<Cluster>>,
        metrics: &Metrics,
        tls_metrics: &TlsMetrics,
        access_log: Option<AccessLog>,
    ) -> Result<Self, BuildError> {
        let err = |message: String| BuildError {
            what: format!("listener `{}`", cfg.name),
            message,
        };
        let direction = match cfg.direction {
            config::Direction::Inbound => "inbound",
            config::Direction::Outbound => "outbound",
        };
        let table =
            RouteTable::compile(cfg, clusters, metrics, tls_metrics, direction).map_err(err)?;
        let tls = match &cfg.tls {
            Some(t) if t.mode != TlsMode::Disabled => Some((
                t.mode,
                ServerTls::new(&cfg.name, t, tls_metrics).map_err(|e| err(e.to_string()))?,
            )),
            _ => None,
        };
        let policy = cfg
            .authz
            .as_ref()
            .map(|rules| Policy::compile(&cfg.name, rules, tls_metrics))
            .transpose()
            .map_err(err)?;
        let tcp = match (&cfg.cluster, cfg.protocol) {
            (Some(name), Protocol::Tcp | Protocol::Auto) => {
                let cluster = clusters
                    .get(name)
                    .cloned()
                    .ok_or_else(|| err(format!("no cluster named `{name}`")))?;
                let stats = metrics.tcp_stats(&TcpLabels {
                    listener: cfg.name.clone(),
                    cluster: name.clone(),
                });
                Some((cluster, stats))
            }
            _ => None,
        };
        // NOTE: no timer, so hyper keeps no head timeout of its own: its timer runs from the
        // end of one request to the next (cutting idle keep-alive connections at the head
        // timeout) and is armed and dropped for every request. `drive` keeps the head timeout.
        let h1 = http1::Builder::new();
        let mut h2 = http2::Builder::new(TokioExecutor::new());
        h2.timer(TokioTimer::new())
            .initial_stream_window_size(1 << 20)
            .initial_connection_window_size(4 << 20);
        let shared = Arc::new(HttpListener {
            name: cfg.name.as_str().into(),
            direction,
            request_id: cfg.request_id,
            trace_context: cfg.trace_context,
            forwarded_headers: cfg.forwarded_headers,
            idle_timeout: cfg.idle_timeout.0,
            stream_idle_timeout: cfg.stream_idle_timeout.0,
            access_log,
            policy,
            rate_limit: cfg.rate_limit.map(|r| {
                Arc::new(pillion_layers::ratelimit::Bucket::new(
                    crate::http::rate_policy(&r),
                ))
            }),
            proxy_responses: ProxyError::REASONS
                .map(|reason| metrics.proxy_response(direction, &cfg.name, reason)),
        });
        Ok(Self {
            shared,
            tls,
            head_timeout: cfg.header_timeout.0,
            name: cfg.name.clone(),
            address: cfg.address,
            protocol: cfg.protocol,
            detect_timeout: cfg.detect_timeout.0,
            idle_timeout: cfg.idle_timeout.0,
            table: ArcSwap::from_pointee(table),
            tcp,
            detected: metrics.detect_stats(&cfg.name),
            h1,
            h2,
        })
    }
}
