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
    /// Requests (counting from 0 over the run) the server refuses without processing them.
    refused: fn(u64) -> bool,
    /// The server's SETTINGS_MAX_CONCURRENT_STREAMS.
    max_streams: Option<usize>,
    /// Requests in flight now, and the most there were at once.
    in_flight: Arc<AtomicU64>,
    peak: Arc<AtomicU64>,
}

struct ScriptedConn {
    latency: Arc<Script>,
    multiplexed: bool,
    sent: Arc<AtomicU64>,
    mine: u64,
    limit: u64,
    closed: Arc<AtomicBool>,
    refused: fn(u64) -> bool,
    max_streams: Option<usize>,
    in_flight: Arc<AtomicU64>,
    peak: Arc<AtomicU64>,
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
            refused: |_| false,
            max_streams: None,
            in_flight: Arc::default(),
            peak: Arc::default(),
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
                refused: this.refused,
                max_streams: this.max_streams,
                in_flight: this.in_flight.clone(),
                peak: this.peak.clone(),
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

    fn max_streams(&self) -> Option<usize> {
        self.max_streams
    }

    fn send(&mut self) -> impl Future<Output = Result<Exchange, Failure>> + Send + 'static {
        let n = self.sent.fetch_add(1, Ordering::Relaxed);
        let latency = (self.latency)(n);
        let refused = (self.refused)(n);
        self.mine += 1;
        let closes = self.mine >= self.limit;
        let closed = self.closed.clone();
        let in_flight = self.in_flight.clone();
        let now = in_flight.fetch_add(1, Ordering::Relaxed) + 1;
        self.peak.fetch_max(now, Ordering::Relaxed);
        async move {
            tokio::time::sleep(latency).await;
            in_flight.fetch_sub(1, Ordering::Relaxed);
            if refused {
                return Err(Failure {
                    kind: crate::report::ErrorKind::Other,
                    message: Some("refused stream (scripted)".into()),
                    unprocessed: true,
                });
            }
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
        (3_000..=4_100).contains(&report.latency_us.max.unwrap()),
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
    assert!(l.max.unwrap() >= 500_000, "{l:?}");
    // A closed loop (or a loop that measures from the send) would report ~1 ms at p90.
    assert!(l.p90.unwrap() >= 300_000, "{l:?}");
    assert!(l.p50.unwrap() >= 2_000, "{l:?}");
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
    assert!(report.latency_us.max.unwrap() >= 800_000, "{report:?}");
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
    // 250 requests at 1000/s: the last is due at 249 ms, sent up to 2 ms early (`EARLY`), and
    // answered 2 ms later; the window ends with it.
    let secs = report.duration_secs;
    assert!((0.248..=0.252).contains(&secs), "{secs}");
}

#[tokio::test(start_paused = true)]
async fn a_low_rate_per_connection_ends_at_the_deadline() {
    // One request every 10 s for 1 s: the first goes out at 0, the next would be due at 10 s,
    // after the end. The run ends with the first response, not at 10 s.
    let mut config = config();
    config.rate = Some(0.1);
    let started = Instant::now();
    let (report, scripted) = run_scripted(Scripted::fixed(Duration::from_millis(5)), &config).await;
    assert!(
        started.elapsed() <= Duration::from_secs(1),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(scripted.sent.load(Ordering::Relaxed), 1);
    assert_eq!(report.requests, 1, "{report:?}");
    assert_eq!(report.missed, 0, "{report:?}");
    assert_eq!(report.duration_secs, 1.0, "{report:?}");
}

#[tokio::test(start_paused = true)]
async fn a_spent_request_budget_stops_every_connection() {
    // 10 connections at 1 req/s in all: connection k is due at k seconds. Two requests: the
    // ones due at 0 and 1 s; the eight others must not wait for their due times to stop.
    let mut config = config();
    config.connections = 10;
    config.rate = Some(1.0);
    config.stop = Stop::Requests(2);
    let started = Instant::now();
    let (report, scripted) = run_scripted(Scripted::fixed(Duration::from_millis(5)), &config).await;
    assert!(
        started.elapsed() <= Duration::from_millis(1_010),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(scripted.sent.load(Ordering::Relaxed), 2);
    assert_eq!(report.requests, 2, "{report:?}");
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

#[tokio::test(start_paused = true)]
async fn a_closed_loop_divides_by_the_time_its_responses_took() {
    // 300 ms a response, 1 s: requests go out at 0, 300, 600 and 900 ms, and the last is
    // answered at 1.2 s. All four are counted, over 1.2 s, not over the 1 s asked for.
    let mut config = config();
    let (report, _) = run_scripted(Scripted::fixed(Duration::from_millis(300)), &config).await;
    assert_eq!(report.requests, 4, "{report:?}");
    assert!((1.2..=1.21).contains(&report.duration_secs), "{report:?}");
    assert!(
        (report.rps - 4.0 / report.duration_secs).abs() < 1e-9,
        "{report:?}"
    );
    // A run whose responses all came in before the end still lasted as long as it sent.
    config.stop = Stop::Duration(Duration::from_secs(2));
    config.rate = Some(1.0);
    let (report, _) = run_scripted(Scripted::fixed(Duration::from_millis(1)), &config).await;
    assert_eq!(report.requests, 2, "{report:?}");
    assert_eq!(report.duration_secs, 2.0, "{report:?}");
}

// === interrupts ===

#[tokio::test(start_paused = true)]
async fn an_interrupt_stops_the_run_and_reports_what_was_measured() {
    let mut config = config();
    config.stop = Stop::Duration(Duration::from_secs(60));
    let scripted = Arc::new(Scripted::fixed(Duration::from_millis(10)));
    let interrupt = tokio::time::sleep(Duration::from_millis(505));
    let report = run_until(Arc::new(scripted.clone()), &config, interrupt)
        .await
        .unwrap();
    assert!(report.interrupted, "{report:?}");
    // Sent at 0, 10, ..., 500 ms; the one sent at 500 ms is answered in the grace.
    assert_eq!(report.requests, 51, "{report:?}");
    assert_eq!(scripted.sent.load(Ordering::Relaxed), 51);
    assert!(
        (0.505..=0.511).contains(&report.duration_secs),
        "{report:?}"
    );
    assert!(report.to_string().starts_with("Interrupted: "), "{report}");
}

#[tokio::test(start_paused = true)]
async fn an_interrupt_abandons_what_is_still_in_flight_after_the_grace() {
    // Every response takes 30 s; interrupted at 100 ms, the run ends after the grace with
    // nothing answered, and says so, rather than wait for the timeout.
    let mut config = config();
    config.connections = 2;
    config.timeout = Duration::from_secs(60);
    config.rate = Some(100.0);
    config.stop = Stop::Duration(Duration::from_secs(60));
    let started = Instant::now();
    let interrupt = tokio::time::sleep(Duration::from_millis(100));
    let scripted = Arc::new(Scripted::fixed(Duration::from_secs(30)));
    let report = run_until(Arc::new(scripted), &config, interrupt)
        .await
        .unwrap();
    let took = started.elapsed();
    assert!(
        took <= Duration::from_millis(100) + INTERRUPT_GRACE + Duration::from_millis(5),
        "{took:?}"
    );
    assert!(report.interrupted);
    assert_eq!(report.requests, 0, "{report:?}");
    assert_eq!(report.error_count(), 0, "{report:?}");
    // Each connection sent its first request and missed the ones due until the interrupt.
    assert_eq!(report.missed, 8, "{report:?}");
    assert_eq!(report.latency_us, crate::Latency::default());
}

// === HTTP/2 servers ===

#[tokio::test(start_paused = true)]
async fn requests_the_server_did_not_process_are_sent_again() {
    // Requests 3, 4 and 7 are refused (as past a graceful GOAWAY): sent again, they are
    // answered, and they count as answered, timed from their first send.
    let mut config = config();
    config.protocol = Protocol::Http2;
    config.streams = 2;
    config.stop = Stop::Requests(20);
    let scripted = Scripted {
        multiplexed: true,
        refused: |n| [3, 4, 7].contains(&n),
        ..Scripted::fixed(Duration::from_millis(10))
    };
    let (report, scripted) = run_scripted(scripted, &config).await;
    assert_eq!(report.requests, 20, "{report:?}");
    assert_eq!(report.error_count(), 0, "{report:?}");
    assert_eq!(scripted.sent.load(Ordering::Relaxed), 23);
    assert!(report.latency_us.max.unwrap() >= 20_000, "{report:?}");
}

#[tokio::test(start_paused = true)]
async fn a_request_refused_every_time_counts_as_failed() {
    let mut config = config();
    config.protocol = Protocol::Http2;
    config.stop = Stop::Requests(1);
    let scripted = Scripted {
        multiplexed: true,
        refused: |_| true,
        ..Scripted::fixed(Duration::from_millis(1))
    };
    let (report, scripted) = run_scripted(scripted, &config).await;
    assert_eq!(report.requests, 0, "{report:?}");
    assert_eq!(report.errors.other, 1, "{report:?}");
    assert_eq!(scripted.sent.load(Ordering::Relaxed), 4);
}

#[tokio::test(start_paused = true)]
async fn in_flight_requests_keep_to_the_servers_stream_limit() {
    let mut config = config();
    config.protocol = Protocol::Http2;
    config.streams = 10;
    let scripted = Scripted {
        multiplexed: true,
        max_streams: Some(3),
        ..Scripted::fixed(Duration::from_millis(10))
    };
    let (report, scripted) = run_scripted(scripted, &config).await;
    assert_eq!(scripted.peak.load(Ordering::Relaxed), 3);
    assert!((290..=300).contains(&report.requests), "{report:?}");
    assert_eq!(report.warnings.len(), 1, "{report:?}");
    assert!(
        report.warnings[0].starts_with("the server allows 3 concurrent streams per connection"),
        "{report:?}"
    );
    // A server that allows as many says nothing.
    config.streams = 3;
    let scripted = Scripted {
        multiplexed: true,
        max_streams: Some(3),
        ..Scripted::fixed(Duration::from_millis(10))
    };
    let (report, _) = run_scripted(scripted, &config).await;
    assert!(report.warnings.is_empty(), "{report:?}");
}

#[test]
fn connections_are_bounded_by_the_open_file_limit() {
    assert!(check_open_files(100, Some(1024)).is_ok());
    assert!(check_open_files(1_000_000, None).is_ok());
    let error = check_open_files(5000, Some(1024)).unwrap_err().to_string();
    assert_eq!(
        error,
        "--connections 5000 needs about 5032 open files, but this process may open 1024 \
         (raise it with `ulimit -n`, or use fewer connections)"
    );
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
    assert!(report.latency_us.max.unwrap() < 100_000, "{report:?}");
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
    assert!(report.latency_us.max.unwrap() > 0);
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
