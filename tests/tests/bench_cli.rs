//! `pillion bench`, the bundled load generator, run for a moment against the echo app through the
//! proxy: its JSON report is well formed and agrees with what the proxy counted.

use pillion_tests::{free_addr, pillion, Echo, Proxy};
use serde_json::Value;
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
