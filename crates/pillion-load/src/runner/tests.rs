//! Runs against a scripted transport under paused time, and against real in-process servers.

use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, Response};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;

use super::*;
use crate::config::{Protocol, Target};
use crate::report::Failure;
use crate::transport::{Connection, Exchange};

// === scripted transport ===

/// How long the n-th request (counting from 0 over the whole run) takes to answer.
type Script = dyn Fn(u64) -> Duration + Send + Sync;

/// A transport whose every response takes the time the script says, with timers only, so
/// paused time makes runs exact and instant.
struct Scripted {
    latency: Box<Script>,
    multiplexed: bool,
    sent: Arc<AtomicU64>,
    connects: AtomicU64,
    /// Connect attempts (counting from 0) that fail.
    failing_connects: std::ops::Range<u64>,
    /// A connection closes itself after this many requests.
    requests_per_connection: u64,
}

struct ScriptedConn {
    latency: Arc<Script>,
    multiplexed: bool,
    sent: Arc<AtomicU64>,
    mine: u64,
    limit: u64,
    closed: Arc<AtomicBool>,
}

impl Scripted {
    fn new(latency: impl Fn(u64) -> Duration + Send + Sync + 'static) -> Self {
        Self {
            latency: Box::new(latency),
            multiplexed: false,
            sent: Arc::default(),
            connects: AtomicU64::new(0),
            failing_connects: 0..0,
            requests_per_connection: u64::MAX,
        }
    }

    fn fixed(latency: Duration) -> Self {
        Self::new(move |_| latency)
    }
}

impl Connector for Arc<Scripted> {
    type Conn = ScriptedConn;

    fn connect(&self) -> impl Future<Output = anyhow::Result<ScriptedConn>> + Send {
        let attempt = self.connects.fetch_add(1, Ordering::Relaxed);
        let this = self.clone();
        async move {
            if this.failing_connects.contains(&attempt) {
                anyhow::bail!("connection refused (scripted)");
            }
            let script = this.clone();
            Ok(ScriptedConn {
                latency: Arc::new(move |n| (script.latency)(n)),
                multiplexed: this.multiplexed,
                sent: this.sent.clone(),
                mine: 0,
                limit: this.requests_per_connection,
                closed: Arc::default(),
            })
        }
    }
}

impl Connection for ScriptedConn {
    fn multiplexed(&self) -> bool {
        self.multiplexed
    }

    fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Relaxed)
    }

    async fn ready(&mut self) -> anyhow::Result<()> {
        Ok(())
    }

    fn send(&mut self) -> impl Future<Output = Result<Exchange, Failure>> + Send + 'static {
        let n = self.sent.fetch_add(1, Ordering::Relaxed);
        let latency = (self.latency)(n);
        self.mine += 1;
        let closes = self.mine >= self.limit;
        let closed = self.closed.clone();
        async move {
            tokio::time::sleep(latency).await;
            if closes {
                closed.store(true, Ordering::Relaxed);
            }
            Ok(Exchange {
                status: 200,
                body_bytes: 2,
            })
        }
    }
}

fn config() -> LoadConfig {
    let mut config = LoadConfig::new(Target::parse("http://scripted:80/").unwrap());
    config.connections = 1;
    config.stop = Stop::Duration(Duration::from_secs(1));
    config
}

async fn run_scripted(scripted: Scripted, config: &LoadConfig) -> (Report, Arc<Scripted>) {
    let scripted = Arc::new(scripted);
    let report = run_with(Arc::new(scripted.clone()), config).await.unwrap();
    (report, scripted)
}

// === open loop ===

#[tokio::test(start_paused = true)]
async fn open_loop_sends_at_the_rate() {
    let mut config = config();
    config.connections = 4;
    config.rate = Some(200.0);
    let (report, scripted) = run_scripted(Scripted::fixed(Duration::from_millis(3)), &config).await;
    assert_eq!(report.requests, 200);
    assert_eq!(scripted.sent.load(Ordering::Relaxed), 200);
    assert_eq!(report.status.s2xx, 200);
    assert_eq!(report.error_count(), 0);
    assert_eq!(report.mode, crate::Mode::Open);
    assert_eq!(report.rate, Some(200.0));
    assert_eq!(report.rps, 200.0);
    // Nothing waits: every latency is the server's 3 ms (give or take the timer's 1 ms tick).
    assert!(
        (3_000..=4_100).contains(&report.latency_us.max),
        "{report:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn open_loop_measures_a_stall_from_when_requests_were_due() {
    // 100 req/s on one HTTP/1.1 connection; the request due at 100 ms takes 500 ms. The 50 or
    // so requests due during the stall go out late, and their latency counts the wait.
    let mut config = config();
    config.rate = Some(100.0);
    let stall = |n| {
        if n == 10 {
            Duration::from_millis(500)
        } else {
            Duration::from_millis(1)
        }
    };
    let (report, _) = run_scripted(Scripted::new(stall), &config).await;
    assert_eq!(report.requests, 100, "{report:?}");
    assert_eq!(report.error_count(), 0);
    let l = report.latency_us;
    assert!(l.max >= 500_000, "{l:?}");
    // A closed loop (or a loop that measures from the send) would report ~1 ms at p90.
    assert!(l.p90 >= 300_000, "{l:?}");
    assert!(l.p50 >= 2_000, "{l:?}");
}

#[tokio::test(start_paused = true)]
async fn open_loop_ends_at_the_deadline_and_counts_what_it_never_sent() {
    // 100 req/s for 1 s on one HTTP/1.1 connection, against a server that takes 50 ms a
    // request: it can answer 20. The 80 due after those are not sent after the window (which
    // would take 4 s more), they are counted as missed, and the rate reported is the real one.
    let mut config = config();
    config.rate = Some(100.0);
    let started = Instant::now();
    let (report, scripted) =
        run_scripted(Scripted::fixed(Duration::from_millis(50)), &config).await;
    let took = started.elapsed();
    assert!(took <= Duration::from_millis(1_010), "{took:?}");
    assert_eq!(scripted.sent.load(Ordering::Relaxed), 20);
    assert_eq!(report.requests, 20, "{report:?}");
    assert_eq!(report.missed, 80, "{report:?}");
    assert_eq!(report.rps, 20.0);
    assert_eq!(report.error_count(), 0);
    // The backlog still shows in the latency of what was sent: the last, due at 190 ms, went out
    // at 950 ms.
    assert!(report.latency_us.max >= 800_000, "{report:?}");
}

#[tokio::test(start_paused = true)]
async fn open_loop_that_keeps_up_misses_nothing() {
    let mut config = config();
    config.connections = 2;
    config.rate = Some(500.0);
    config.warmup = Duration::from_millis(200);
    let (report, _) = run_scripted(Scripted::fixed(Duration::from_millis(1)), &config).await;
    assert_eq!(report.requests, 500, "{report:?}");
    assert_eq!(report.missed, 0, "{report:?}");
}

#[tokio::test(start_paused = true)]
async fn open_loop_with_a_request_count() {
    let mut config = config();
    config.connections = 3;
    config.rate = Some(1000.0);
    config.stop = Stop::Requests(250);
    let (report, _) = run_scripted(Scripted::fixed(Duration::from_millis(2)), &config).await;
    assert_eq!(report.requests, 250);
    // 250 requests at 1000/s: the last is due at 249 ms and answered 2 ms later.
    let secs = report.duration_secs;
    assert!((0.250..=0.253).contains(&secs), "{secs}");
}

// === closed loop ===

#[tokio::test(start_paused = true)]
async fn closed_loop_sends_the_exact_number_of_requests() {
    let mut config = config();
    config.connections = 3;
    config.stop = Stop::Requests(50);
    let (report, scripted) = run_scripted(Scripted::fixed(Duration::from_millis(5)), &config).await;
    assert_eq!(report.requests, 50);
    assert_eq!(report.status.s2xx, 50);
    assert_eq!(report.bytes, 100);
    assert_eq!(scripted.sent.load(Ordering::Relaxed), 50);
    assert_eq!(report.mode, crate::Mode::Closed);
    // One connect per connection, nothing more.
    assert_eq!(scripted.connects.load(Ordering::Relaxed), 3);
}

#[tokio::test(start_paused = true)]
async fn closed_loop_keeps_every_stream_busy() {
    // 10 ms per response, 1 s, 2 connections of 4 streams: about 2 * 4 * 100 responses.
    let mut config = config();
    config.protocol = Protocol::Http2;
    config.connections = 2;
    config.streams = 4;
    let scripted = Scripted {
        multiplexed: true,
        ..Scripted::fixed(Duration::from_millis(10))
    };
    let (report, _) = run_scripted(scripted, &config).await;
    assert!((720..=800).contains(&report.requests), "{report:?}");
    assert_eq!(report.error_count(), 0);
}

#[tokio::test(start_paused = true)]
async fn warmup_is_not_counted() {
    let mut config = config();
    config.warmup = Duration::from_secs(1);
    let (report, scripted) =
        run_scripted(Scripted::fixed(Duration::from_millis(10)), &config).await;
    let sent = scripted.sent.load(Ordering::Relaxed);
    assert!((90..=100).contains(&report.requests), "{report:?}");
    assert!(sent >= 2 * report.requests - 10, "{sent} sent");
    assert_eq!(report.duration_secs, 1.0);
}

// === errors ===

#[tokio::test(start_paused = true)]
async fn timeouts_are_counted_and_spoil_an_http1_connection() {
    let mut config = config();
    config.timeout = Duration::from_millis(100);
    config.stop = Stop::Requests(10);
    let slow_fourth = |n| {
        if n == 3 {
            Duration::from_secs(10)
        } else {
            Duration::from_millis(1)
        }
    };
    let (report, scripted) = run_scripted(Scripted::new(slow_fourth), &config).await;
    assert_eq!(report.requests, 9);
    assert_eq!(report.errors.timeout, 1);
    assert_eq!(report.errors.connect + report.errors.other, 0);
    assert_eq!(scripted.connects.load(Ordering::Relaxed), 2);
    // Failed requests are not in the latency histogram.
    assert!(report.latency_us.max < 100_000, "{report:?}");
}

#[tokio::test(start_paused = true)]
async fn a_timeout_on_http2_keeps_the_connection() {
    let mut config = config();
    config.protocol = Protocol::Http2;
    config.timeout = Duration::from_millis(100);
    config.stop = Stop::Requests(10);
    let scripted = Scripted {
        multiplexed: true,
        ..Scripted::new(|n| Duration::from_millis(if n == 3 { 10_000 } else { 1 }))
    };
    let (report, scripted) = run_scripted(scripted, &config).await;
    assert_eq!(report.requests, 9);
    assert_eq!(report.errors.timeout, 1);
    assert_eq!(scripted.connects.load(Ordering::Relaxed), 1);
}

#[tokio::test(start_paused = true)]
async fn reconnects_and_counts_failed_connects() {
    // Each connection closes after 5 requests; connect attempts 2, 3 and 4 are refused.
    let mut config = config();
    config.stop = Stop::Requests(20);
    let scripted = Scripted {
        failing_connects: 2..5,
        requests_per_connection: 5,
        ..Scripted::fixed(Duration::from_millis(1))
    };
    let (report, scripted) = run_scripted(scripted, &config).await;
    assert_eq!(report.errors.connect, 3);
    assert_eq!(report.requests, 17);
    assert_eq!(report.errors.timeout + report.errors.other, 0);
    assert_eq!(scripted.connects.load(Ordering::Relaxed), 7);
}

#[tokio::test(start_paused = true)]
async fn the_first_connect_failing_fails_the_run() {
    let scripted = Arc::new(Scripted {
        failing_connects: 0..1,
        ..Scripted::fixed(Duration::from_millis(1))
    });
    let error = run_with(Arc::new(scripted), &config()).await.unwrap_err();
    let message = format!("{error:#}");
    assert!(
        message.contains("cannot connect to http://scripted:80/"),
        "{message}"
    );
    assert!(message.contains("refused"), "{message}");
}

#[tokio::test]
async fn invalid_configs_fail_the_run() {
    let mut config = config();
    config.connections = 0;
    let error = run(config).await.unwrap_err();
    assert!(format!("{error:#}").contains("--connections"), "{error:#}");
}

// === real servers ===

/// A hello-world server on 127.0.0.1:0 that reads each request body to its end.
async fn serve(protocol: Protocol, keep_alive: bool) -> std::net::SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            let service = service_fn(|req: Request<Incoming>| async move {
                let body = req.into_body().collect().await?.to_bytes();
                let reply = if body.is_empty() {
                    Bytes::from_static(b"hello")
                } else {
                    Bytes::from(format!("got {}", body.len()))
                };
                Ok::<_, hyper::Error>(Response::new(Full::new(reply)))
            });
            let io = TokioIo::new(stream);
            tokio::spawn(async move {
                let _ = match protocol {
                    Protocol::Http1 => {
                        hyper::server::conn::http1::Builder::new()
                            .keep_alive(keep_alive)
                            .serve_connection(io, service)
                            .await
                    }
                    Protocol::Http2 => {
                        hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                            .serve_connection(io, service)
                            .await
                    }
                };
            });
        }
    });
    addr
}

fn real(addr: std::net::SocketAddr, protocol: Protocol) -> LoadConfig {
    let mut config = LoadConfig::new(Target::parse(&format!("http://{addr}/hello")).unwrap());
    config.protocol = protocol;
    config.connections = 2;
    config.streams = 4;
    config.stop = Stop::Requests(200);
    config
}

#[tokio::test]
async fn http1_against_a_real_server() {
    let addr = serve(Protocol::Http1, true).await;
    let report = run(real(addr, Protocol::Http1)).await.unwrap();
    assert_eq!(report.requests, 200, "{report:?}");
    assert_eq!(report.status.s2xx, 200);
    assert_eq!(report.error_count(), 0);
    assert_eq!(report.bytes, 200 * 5);
    assert_eq!(report.connections, 2);
    assert!(report.latency_us.max > 0);
}

#[tokio::test]
async fn http2_against_a_real_server() {
    let addr = serve(Protocol::Http2, true).await;
    let report = run(real(addr, Protocol::Http2)).await.unwrap();
    assert_eq!(report.requests, 200, "{report:?}");
    assert_eq!(report.status.s2xx, 200);
    assert_eq!(report.error_count(), 0);
    assert_eq!(report.bytes, 200 * 5);
}

#[tokio::test]
async fn request_bodies_are_sent_over_both_protocols() {
    for protocol in [Protocol::Http1, Protocol::Http2] {
        let addr = serve(protocol, true).await;
        let mut config = real(addr, protocol);
        config.method = Method::POST;
        config.body = Bytes::from(vec![b'x'; 1000]);
        config.stop = Stop::Requests(20);
        let report = run(config).await.unwrap();
        assert_eq!(report.status.s2xx, 20, "{protocol:?}: {report:?}");
        assert_eq!(report.error_count(), 0, "{protocol:?}: {report:?}");
        assert_eq!(report.bytes, 20 * "got 1000".len() as u64);
    }
}

#[tokio::test]
async fn a_server_closing_each_connection_is_not_an_error() {
    let addr = serve(Protocol::Http1, false).await;
    let report = run(real(addr, Protocol::Http1)).await.unwrap();
    assert_eq!(report.status.s2xx, 200, "{report:?}");
    assert_eq!(report.error_count(), 0, "{report:?}");
}

#[tokio::test]
async fn open_loop_against_a_real_server() {
    let addr = serve(Protocol::Http1, true).await;
    let mut config = real(addr, Protocol::Http1);
    config.rate = Some(2000.0);
    config.stop = Stop::Requests(100);
    let report = run(config).await.unwrap();
    assert_eq!(report.status.s2xx, 100, "{report:?}");
    assert_eq!(report.error_count(), 0);
}

#[tokio::test]
async fn h2c_to_an_http1_only_server_backs_off_and_says_why() {
    // Every connection opens, and every request on it fails: without a backoff the generator
    // reconnected tens of thousands of times a second, with errors that said nothing.
    let addr = serve(Protocol::Http1, true).await;
    let mut config = real(addr, Protocol::Http2);
    config.connections = 1;
    config.stop = Stop::Duration(Duration::from_secs(1));
    let report = run(config).await.unwrap();
    assert_eq!(report.requests, 0, "{report:?}");
    let failed = report.error_count();
    assert!((1..200).contains(&failed), "{report:?}");
    let message = &report.error_messages[0];
    assert_eq!(message.kind, "other", "{report:?}");
    assert!(message.message.contains("connection"), "{report:?}");
    assert_eq!(message.count, report.errors.other, "{report:?}");
}

#[tokio::test]
async fn nothing_listening_fails_the_run() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    let error = run(real(addr, Protocol::Http1)).await.unwrap_err();
    let message = format!("{error:#}");
    assert!(
        message.contains(&format!("cannot connect to http://{addr}/hello")),
        "{message}"
    );
}
