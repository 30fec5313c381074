//! `pillion bench`, the bundled load generator, run for a moment against the echo app through the
//! proxy: its JSON report is well formed and agrees with what the proxy counted.

use pillion_tests::client::full;
use pillion_tests::upstream::Upstream;
use pillion_tests::{eventually, free_addr, pillion, pillion_bin, within, Echo, Proxy};
use serde_json::Value;
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

fn run_bench(args: &[&str]) -> Value {
    let out = pillion(args, Duration::from_secs(30));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "pillion {args:?} failed: {stderr}");
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "bench --json output is not JSON ({e}): {}",
            String::from_utf8_lossy(&out.stdout)
        )
    })
}

fn n(v: &Value, path: &[&str]) -> f64 {
    let mut cur = v;
    for p in path {
        cur = &cur[*p];
    }
    cur.as_f64()
        .unwrap_or_else(|| panic!("report field {path:?} is not a number: {v}"))
}

#[tokio::test]
async fn closed_and_open_loop_reports_are_well_formed() {
    let echo = Echo::start().await;
    let listen = free_addr();
    let proxy = Proxy::start(&format!(
        "listeners:\n  - name: in\n    address: {listen}\n    protocol: http\n    cluster: app\nclusters:\n  - name: app\n    endpoints: [{}]\n",
        echo.addr()
    ))
    .await;
    let url = format!("http://{listen}/bench");

    // Closed loop, HTTP/1.1, stopped by a request count so the proxy's count is exact.
    let closed = run_bench(&["bench", "--json", "-c", "4", "-n", "500", &url]);
    assert_eq!(closed["mode"], "closed", "{closed}");
    assert_eq!(n(&closed, &["requests"]), 500.0, "{closed}");
    assert_eq!(n(&closed, &["status", "2xx"]), 500.0, "{closed}");
    assert_eq!(n(&closed, &["connections"]), 4.0, "{closed}");
    for kind in ["connect", "timeout", "other"] {
        assert_eq!(n(&closed, &["errors", kind]), 0.0, "{closed}");
    }
    let lat = |r: &Value, q: &str| n(r, &["latency_us", q]);
    assert!(lat(&closed, "p50") > 0.0, "{closed}");
    assert!(lat(&closed, "p50") <= lat(&closed, "p99"), "{closed}");
    assert!(lat(&closed, "p99") <= lat(&closed, "p999"), "{closed}");
    assert!(lat(&closed, "p999") <= lat(&closed, "max"), "{closed}");
    assert!(n(&closed, &["rps"]) > 0.0, "{closed}");
    proxy
        .wait_metric(
            "pillion_http_requests_total",
            &[("cluster", "app"), ("status_class", "2xx")],
            500.0,
        )
        .await;

    // Open loop over HTTP/2 for a second at a modest rate.
    let open = run_bench(&[
        "bench", "--json", "--h2", "-c", "2", "--rate", "200", "-d", "1s", &url,
    ]);
    assert_eq!(open["mode"], "open", "{open}");
    assert_eq!(n(&open, &["rate"]), 200.0, "{open}");
    let requests = n(&open, &["requests"]);
    assert!((100.0..=260.0).contains(&requests), "{open}");
    assert_eq!(n(&open, &["status", "2xx"]), requests, "{open}");
}

#[tokio::test]
async fn bench_reports_connect_errors_clearly() {
    let closed = free_addr();
    let out = pillion(
        &["bench", "-n", "5", &format!("http://{closed}/")],
        Duration::from_secs(30),
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.starts_with("error: "), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    // The banner says what is about to run, so nothing is said before the run can start.
    assert!(
        out.stdout.is_empty(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
}

#[tokio::test]
async fn bad_input_is_one_line_and_exit_code_2() {
    let echo = Echo::start().await;
    let url = format!("http://{}/", echo.addr());
    let cases: &[(&[&str], &str)] = &[
        (&["--rate", "1e20"], "invalid rate \"1e20\""),
        (
            &["-c", "100000000"],
            "--connections must be at most 1000000",
        ),
        (
            &["-c", "18446744073709551615"],
            "--connections must be at most",
        ),
        (
            &["--threads", "100000000"],
            "--threads must be at most 1024",
        ),
        (&["--streams", "5"], "--streams needs --h2"),
        (&["--timeout", "500us"], "--timeout must be at least 1ms"),
        (&["--h2", "-H", "host: a b"], "invalid Host header"),
    ];
    for (args, want) in cases {
        let out = pillion(
            &[&["bench", "-n", "1"], *args, &[url.as_str()]].concat(),
            Duration::from_secs(30),
        );
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
        assert!(stderr.contains(want), "{args:?}: {stderr}");
        assert!(!stderr.contains("panicked"), "{args:?}: {stderr}");
        assert!(out.stdout.is_empty(), "{args:?}");
    }
    // A port that does not fit in 16 bits is not quietly port 80.
    let out = pillion(
        &["bench", "-n", "1", "http://127.0.0.1:99999/"],
        Duration::from_secs(30),
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert_eq!(
        stderr.trim_end(),
        "error: invalid URL \"http://127.0.0.1:99999/\": port out of range"
    );
}

#[tokio::test]
async fn an_open_loop_the_target_cannot_keep_up_with_ends_on_time_and_counts_the_shortfall() {
    // One HTTP/1.1 connection at 2,000 req/s for 1 s, to an upstream that takes 50 ms a request:
    // about 20 can be answered. The rest are counted as missed rather than sent after the window
    // (which would stretch a 1 s run to 100 s, past `run_bench`'s limit), and the reported rate
    // is what was answered, not the rate asked for.
    let echo = Echo::start().await;
    let url = format!("http://{}/slow?delay=50ms", echo.addr());
    let run = ["bench", "-c", "1", "--rate", "2000", "-d", "1s", &url];
    let report = run_bench(&[&run[..], &["--json"]].concat());
    let requests = n(&report, &["requests"]);
    let missed = n(&report, &["missed"]);
    assert!((5.0..=21.0).contains(&requests), "{report}");
    assert!(n(&report, &["rps"]) <= 21.0, "{report}");
    // Every request due in the window was either sent (and answered or failed) or missed.
    let failed: f64 = ["connect", "timeout", "other"]
        .iter()
        .map(|kind| n(&report, &["errors", kind]))
        .sum();
    assert_eq!(requests + failed + missed, 2000.0, "{report}");

    // The table says so too.
    let out = pillion(
        &[&run[..], &["--no-progress"]].concat(),
        Duration::from_secs(30),
    );
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{table}");
    assert!(
        table.contains("requests fell due but were never sent: the target fell behind 2000 req/s"),
        "{table}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_in_which_no_request_got_a_response_exits_1_with_its_report() {
    // A target that accepts every connection and closes it at once: the load starts, and every
    // request fails. The report is still printed (it says why), but the exit code says that the
    // run measured nothing.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("local addr");
    let server = tokio::spawn(async move {
        while let Ok((conn, _)) = listener.accept().await {
            drop(conn);
        }
    });
    let url = format!("http://{addr}/");
    let out = tokio::task::spawn_blocking(move || {
        pillion(
            &["bench", "--json", "-c", "1", "-d", "1s", &url],
            Duration::from_secs(30),
        )
    })
    .await
    .expect("bench thread");
    server.abort();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.starts_with("error: no request got a response: all "),
        "{stderr}"
    );
    let report: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "no JSON report ({e}): {}",
            String::from_utf8_lossy(&out.stdout)
        )
    });
    assert_eq!(n(&report, &["requests"]), 0.0, "{report}");
    // No response, no latency: null, not a latency of 0.
    for q in ["p50", "p99", "max", "mean"] {
        assert!(report["latency_us"][q].is_null(), "{report}");
    }
    let failed: f64 = ["connect", "timeout", "other"]
        .iter()
        .map(|kind| n(&report, &["errors", kind]))
        .sum();
    assert!(failed >= 1.0, "{report}");
    assert!(
        stderr.contains(&format!("all {failed} requests")),
        "{stderr}"
    );
}

/// Runs `pillion bench ARGS` in the background, signals it with `signal` once `ready` says so,
/// and returns what it printed.
async fn interrupted(
    args: &[&str],
    signal: nix::sys::signal::Signal,
    ready: impl Fn() -> bool,
) -> Output {
    let mut child = Command::new(pillion_bin())
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn pillion bench");
    let pid = nix::unistd::Pid::from_raw(i32::try_from(child.id()).expect("pid"));
    // NOTE: killed by pid if the test fails before the signal is sent.
    struct Kill(nix::unistd::Pid);
    impl Drop for Kill {
        fn drop(&mut self) {
            let _ = nix::sys::signal::kill(self.0, nix::sys::signal::Signal::SIGKILL);
        }
    }
    let guard = Kill(pid);
    eventually("the run is under way", || {
        let go = ready();
        async move { go.then_some(()) }
    })
    .await;
    nix::sys::signal::kill(pid, signal).expect("signal pillion bench");
    // NOTE: its output (a report) fits in the pipes, so they are read after it exits.
    eventually("pillion bench exits after the signal", || {
        let exited = child.try_wait().expect("try_wait").is_some();
        async move { exited.then_some(()) }
    })
    .await;
    std::mem::forget(guard);
    child.wait_with_output().expect("output")
}

/// An HTTP/1.1 upstream that counts the requests it answered.
async fn counting_upstream() -> (Upstream, Arc<AtomicUsize>) {
    let count = Arc::new(AtomicUsize::new(0));
    let seen = count.clone();
    let upstream = Upstream::http1(move |_req| {
        let seen = seen.clone();
        async move {
            seen.fetch_add(1, Ordering::SeqCst);
            http::Response::new(full("ok"))
        }
    })
    .await;
    (upstream, count)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ctrl_c_prints_the_report_of_what_was_measured() {
    // A run of 10 minutes, stopped by SIGINT once the upstream has answered some requests: the
    // JSON report is printed, marked interrupted, and covers what was measured.
    let (upstream, count) = counting_upstream().await;
    let url = format!("http://{}/", upstream.addr());
    let args = ["bench", "--json", "-c", "2", "-d", "600s", &url];
    let out = interrupted(&args, nix::sys::signal::Signal::SIGINT, || {
        count.load(Ordering::SeqCst) >= 20
    })
    .await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(130), "{stderr}");
    assert!(
        stderr.starts_with("interrupted: the report covers the "),
        "{stderr}"
    );
    let report: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "no JSON report ({e}): {}",
            String::from_utf8_lossy(&out.stdout)
        )
    });
    assert_eq!(report["interrupted"], true, "{report}");
    let requests = n(&report, &["requests"]);
    assert!(requests >= 18.0, "{report}");
    assert!(requests <= count.load(Ordering::SeqCst) as f64, "{report}");
    assert_eq!(n(&report, &["status", "2xx"]), requests, "{report}");
    assert!(n(&report, &["duration_secs"]) < 600.0, "{report}");
    assert!(n(&report, &["rps"]) > 0.0, "{report}");

    // SIGTERM does the same, and the table says it was interrupted.
    let before = count.load(Ordering::SeqCst);
    let args = ["bench", "-c", "1", "--rate", "500", "-d", "600s", &url];
    let out = interrupted(&args, nix::sys::signal::Signal::SIGTERM, || {
        count.load(Ordering::SeqCst) >= before + 20
    })
    .await;
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(143), "{stdout}");
    assert!(stdout.starts_with("Running 600s @ "), "{stdout}");
    assert!(
        stdout.contains("\nInterrupted: stopped by a signal"),
        "{stdout}"
    );
    assert!(stdout.contains("\nRequests:   "), "{stdout}");
    assert!(stdout.contains("\nStatus:     2xx "), "{stdout}");
}

#[tokio::test]
async fn low_rates_end_at_the_deadline_or_the_request_count() {
    // One request every 100 s, for 1 s: the next request falls due after the end, so the run
    // ends with the first response instead of waiting 100 s for it (past `pillion`'s limit).
    let echo = Echo::start().await;
    let url = format!("http://{}/", echo.addr());
    let report = run_bench(&[
        "bench", "--json", "-c", "1", "--rate", "0.01", "-d", "1s", &url,
    ]);
    assert_eq!(n(&report, &["requests"]), 1.0, "{report}");
    assert_eq!(n(&report, &["missed"]), 0.0, "{report}");
    assert!(n(&report, &["duration_secs"]) >= 1.0, "{report}");
    // 100 connections sharing 1 req/s, two requests: connection k is due at k seconds. Once the
    // two are sent the other 98 stop too, rather than wait up to 99 s for their turn.
    let report = run_bench(&[
        "bench", "--json", "-c", "100", "--rate", "1", "-n", "2", &url,
    ]);
    assert_eq!(n(&report, &["requests"]), 2.0, "{report}");
    assert_eq!(n(&report, &["status", "2xx"]), 2.0, "{report}");
}

#[tokio::test]
async fn a_closed_loop_counts_its_rate_over_the_time_its_responses_took() {
    // One connection, 300 ms a response, 1 s: each request goes out when the previous one is
    // answered, so the last of N is answered at least N * 300 ms in. All N count, so the rate
    // is over that time, not over the 1 s of sending.
    let echo = Echo::start().await;
    let url = format!("http://{}/slow?delay=300ms", echo.addr());
    let report = run_bench(&["bench", "--json", "-c", "1", "-d", "1s", &url]);
    let requests = n(&report, &["requests"]);
    let secs = n(&report, &["duration_secs"]);
    assert!(requests >= 1.0, "{report}");
    assert!(secs >= requests * 0.3, "{report}");
    assert!(
        (n(&report, &["rps"]) - requests / secs).abs() < 1e-6,
        "{report}"
    );
}

// NOTE: `run_bench` blocks its thread; the upstream runs on the other.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_empty_post_says_content_length_0() {
    let lengths = Arc::new(Mutex::new(Vec::new()));
    let seen = lengths.clone();
    let upstream = Upstream::http1(move |req| {
        let length = req
            .headers()
            .get("content-length")
            .map(|v| v.to_str().unwrap_or("?").to_owned());
        seen.lock().unwrap_or_else(|e| e.into_inner()).push(length);
        async { http::Response::new(full("ok")) }
    })
    .await;
    let url = format!("http://{}/", upstream.addr());
    run_bench(&["bench", "--json", "-c", "1", "-n", "3", "-m", "POST", &url]);
    let lengths = lengths.lock().unwrap_or_else(|e| e.into_inner()).clone();
    assert_eq!(lengths, vec![Some("0".to_owned()); 3]);
}

// NOTE: `run_bench` blocks its thread; the upstream runs on the other.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_h2_a_host_header_is_the_authority() {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let record = seen.clone();
    let upstream = Upstream::http2(move |req| {
        let authority = req.uri().authority().map(|a| a.to_string());
        let hosts = req.headers().get_all("host").iter().count();
        record
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push((authority, hosts));
        async { http::Response::new(full("ok")) }
    })
    .await;
    let url = format!("http://{}/", upstream.addr());
    let report = run_bench(&[
        "bench",
        "--json",
        "--h2",
        "-c",
        "1",
        "-n",
        "2",
        "-H",
        "Host: svc.example:81",
        &url,
    ]);
    assert_eq!(n(&report, &["status", "2xx"]), 2.0, "{report}");
    let seen = seen.lock().unwrap_or_else(|e| e.into_inner()).clone();
    assert_eq!(seen, vec![(Some("svc.example:81".to_owned()), 0); 2]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_allowing_fewer_streams_gets_a_warning_and_no_more() {
    // The server allows 2 concurrent streams; the run asks for 8. It says so (stderr and JSON)
    // and keeps to 2, so that no request waits inside the client as if the server were slow.
    let busy = Arc::new(AtomicUsize::new(0));
    let peak = Arc::new(AtomicUsize::new(0));
    let (b, p) = (busy.clone(), peak.clone());
    let upstream = Upstream::tcp(move |tcp| {
        let (busy, peak) = (b.clone(), p.clone());
        async move {
            let svc = hyper::service::service_fn(move |_req| {
                let (busy, peak) = (busy.clone(), peak.clone());
                async move {
                    let now = busy.fetch_add(1, Ordering::SeqCst) + 1;
                    peak.fetch_max(now, Ordering::SeqCst);
                    tokio::time::sleep(Duration::from_millis(2)).await;
                    busy.fetch_sub(1, Ordering::SeqCst);
                    Ok::<_, std::convert::Infallible>(http::Response::new(full("ok")))
                }
            });
            let _ = hyper::server::conn::http2::Builder::new(hyper_util::rt::TokioExecutor::new())
                .max_concurrent_streams(2)
                .serve_connection(hyper_util::rt::TokioIo::new(tcp), svc)
                .await;
        }
    })
    .await;
    let url = format!("http://{}/", upstream.addr());
    let out = tokio::task::spawn_blocking(move || {
        pillion(
            &[
                "bench",
                "--json",
                "--h2",
                "-c",
                "1",
                "--streams",
                "8",
                "-n",
                "100",
                &url,
            ],
            Duration::from_secs(30),
        )
    })
    .await
    .expect("bench thread");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stderr.contains("warning: the server allows 2 concurrent streams per connection"),
        "{stderr}"
    );
    let report: Value = serde_json::from_slice(&out.stdout).expect("JSON report");
    assert_eq!(n(&report, &["status", "2xx"]), 100.0, "{report}");
    assert_eq!(
        report["warnings"].as_array().map(Vec::len),
        Some(1),
        "{report}"
    );
    assert_eq!(peak.load(Ordering::SeqCst), 2);
}

const DATA: u8 = 0;
const HEADERS: u8 = 1;
const SETTINGS: u8 = 4;
const GOAWAY: u8 = 7;
const END_STREAM: u8 = 0x1;
const END_HEADERS: u8 = 0x4;
/// HPACK: `:status: 200`, from the static table.
const STATUS_200: &[u8] = &[0x88];

fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = u32::try_from(payload.len())
        .expect("small frame")
        .to_be_bytes();
    let mut f = vec![len[1], len[2], len[3], kind, flags];
    f.extend_from_slice(&stream.to_be_bytes());
    f.extend_from_slice(payload);
    f
}

async fn read_frame(tcp: &mut tokio::net::TcpStream) -> Option<(u8, u8, u32)> {
    use tokio::io::AsyncReadExt;
    let mut head = [0u8; 9];
    tcp.read_exact(&mut head).await.ok()?;
    let len = u32::from_be_bytes([0, head[0], head[1], head[2]]) as usize;
    let mut payload = vec![0u8; len];
    tcp.read_exact(&mut payload).await.ok()?;
    let id = u32::from_be_bytes([head[5], head[6], head[7], head[8]]) & 0x7fff_ffff;
    Some((head[3], head[4], id))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_left_unprocessed_by_a_graceful_goaway_are_sent_again() {
    // A raw HTTP/2 server that, like nginx's keepalive_requests, takes 3 requests per
    // connection: at the third it sends GOAWAY (NO_ERROR) naming it as the last, answers it,
    // and ignores any later stream. The requests it never processed are sent again on a new
    // connection: every request is answered, and none is an error.
    let unprocessed = Arc::new(AtomicUsize::new(0));
    let ignored = unprocessed.clone();
    let upstream = Upstream::tcp(move |mut tcp| {
        let ignored = ignored.clone();
        async move {
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            let mut preface = [0u8; 24];
            if tcp.read_exact(&mut preface).await.is_err() {
                return;
            }
            let _ = tcp.write_all(&frame(SETTINGS, 0, 0, &[])).await;
            let (mut taken, mut last) = (0, None);
            while let Some((kind, flags, id)) = read_frame(&mut tcp).await {
                match kind {
                    SETTINGS if flags & 1 == 0 => {
                        let _ = tcp.write_all(&frame(SETTINGS, 1, 0, &[])).await;
                    }
                    HEADERS if last.is_some_and(|last| id > last) => {
                        ignored.fetch_add(1, Ordering::SeqCst);
                    }
                    HEADERS => {
                        taken += 1;
                        let mut out = Vec::new();
                        if taken == 3 {
                            last = Some(id);
                            let mut goaway = id.to_be_bytes().to_vec();
                            goaway.extend_from_slice(&0u32.to_be_bytes());
                            out.extend(frame(GOAWAY, 0, 0, &goaway));
                        }
                        out.extend(frame(HEADERS, END_HEADERS, id, STATUS_200));
                        out.extend(frame(DATA, END_STREAM, id, b"ok"));
                        let _ = tcp.write_all(&out).await;
                    }
                    _ => {}
                }
            }
        }
    })
    .await;
    let url = format!("http://{}/", upstream.addr());
    let out = within(
        "bench against a server that sends GOAWAY",
        tokio::task::spawn_blocking(move || {
            pillion(
                &[
                    "bench",
                    "--json",
                    "--h2",
                    "-c",
                    "1",
                    "--streams",
                    "4",
                    "-n",
                    "30",
                    &url,
                ],
                Duration::from_secs(30),
            )
        }),
    )
    .await
    .expect("bench thread");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let report: Value = serde_json::from_slice(&out.stdout).expect("JSON report");
    assert_eq!(n(&report, &["status", "2xx"]), 30.0, "{report}");
    for kind in ["connect", "timeout", "other"] {
        assert_eq!(n(&report, &["errors", kind]), 0.0, "{report}");
    }
    // The test means something only if some streams were left unprocessed.
    assert!(unprocessed.load(Ordering::SeqCst) >= 1);
    assert!(upstream.connections() >= 10, "{}", upstream.connections());
}
