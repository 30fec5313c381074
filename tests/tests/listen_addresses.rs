//! Listening addresses: an IPv6 wildcard takes IPv4 connections too, whatever the host's
//! `net.ipv6.bindv6only` (config validation counts on it to find colliding addresses).
//!
//! The proxy runs in a network namespace of the test's own (`unshare --net`), where
//! `net.ipv6.bindv6only` is 1 (a per-namespace setting); curl reaches it there with `nsenter`.

use pillion_tests::{free_addr, pillion_bin, process::ChildGuard};
use std::process::Command;
use tempfile::TempDir;

/// What `args` prints, run inside the network namespace of `pid`.
async fn in_namespace(pid: u32, args: &[&str]) -> String {
    let out = tokio::process::Command::new("nsenter")
        .arg(format!("--net=/proc/{pid}/ns/net"))
        .args(args)
        .output()
        .await
        .expect("running nsenter (util-linux, and curl, which .ci/run installs)");
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// The status curl gets from `url` inside the network namespace of `pid` ("000": no answer).
async fn status_in_namespace(pid: u32, url: &str) -> String {
    let curl = ["curl", "-sS", "-o", "/dev/null", "-w", "%{http_code}"];
    in_namespace(pid, &[&curl[..], &["--max-time", "5", url]].concat()).await
}

#[tokio::test]
async fn an_ipv6_wildcard_takes_ipv4_connections_where_bindv6only_is_set() {
    let dir = TempDir::new().expect("tempdir");
    // Ports the OS handed out here; the namespace is new, so they are free there too.
    let (listen, admin, dead) = (free_addr().port(), free_addr().port(), free_addr().port());
    let config = dir.path().join("pillion.yaml");
    std::fs::write(
        &config,
        format!(
            "admin:\n  address: \"[::]:{admin}\"\n  health_address: null\nlisteners:\n  - name: web\n    address: \"[::]:{listen}\"\n    protocol: http\n    cluster: app\nclusters:\n  - name: app\n    endpoints: [127.0.0.1:{dead}]\n"
        ),
    )
    .expect("write config");
    let mut cmd = Command::new("unshare");
    cmd.args(["--net", "sh", "-ec"])
        .arg("ip link set lo up; echo 1 > /proc/sys/net/ipv6/bindv6only; exec \"$0\" run --config \"$1\"")
        .arg(pillion_bin())
        .arg(&config);
    let mut proxy = ChildGuard::spawn(
        "pillion in its own network namespace",
        cmd,
        &dir.path().join("log"),
    );
    let pid = proxy.pid();

    // The admin port, bound at [::], answers on IPv4 loopback.
    let ready = format!("http://127.0.0.1:{admin}/ready");
    let deadline = tokio::time::Instant::now() + pillion_tests::STEP;
    while status_in_namespace(pid, &ready).await != "200" {
        if let Some(status) = proxy.try_wait() {
            panic!("pillion exited ({status}):\n{}", proxy.log_text());
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{ready} did not answer 200:\n{}",
            proxy.log_text()
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let v6only = in_namespace(pid, &["cat", "/proc/sys/net/ipv6/bindv6only"]).await;
    assert_eq!(v6only, "1", "the namespace's net.ipv6.bindv6only");
    // The listener at [::] takes both families: its answer is the proxy's own 502 (no app).
    for url in [
        format!("http://127.0.0.1:{listen}/"),
        format!("http://[::1]:{listen}/"),
    ] {
        assert_eq!(
            status_in_namespace(pid, &url).await,
            "502",
            "{url}\n{}",
            proxy.log_text()
        );
    }
}
