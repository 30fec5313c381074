//! Protocol versions, checked with a client that is not rustls: `openssl s_client` is refused
//! with TLS 1.0 and 1.1 (offered for real, `SECLEVEL=0`, so the refusal is the proxy's) and
//! served with TLS 1.2 and 1.3 when it presents a client certificate.

use std::net::SocketAddr;
use std::process::Stdio;

use pillion_tests::mtls::{listener_tls, spiffe, Pki};
use pillion_tests::{free_addr, within, Echo, Metrics, Proxy};
use tokio::io::AsyncWriteExt;
use tokio::process::Command;

const OPENSSL: &str = "/usr/bin/openssl";
const HANDSHAKES: &str = "pillion_tls_handshakes_total";

struct SClient {
    success: bool,
    stdout: String,
    stderr: String,
}

/// Runs `openssl s_client -connect ADDR ARGS -quiet`, sends one HTTP/1.1 request with
/// `Connection: close` and collects the output until the server closes (bounded).
async fn s_client(addr: SocketAddr, args: &[&str]) -> SClient {
    let mut child = Command::new(OPENSSL)
        .arg("s_client")
        .arg("-connect")
        .arg(addr.to_string())
        .args(args)
        .arg("-quiet")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap_or_else(|e| panic!("spawn {OPENSSL}: {e}"));
    let mut stdin = child.stdin.take().expect("stdin");
    // The request may not be read at all when the handshake fails: ignore a broken pipe.
    let _ = stdin
        .write_all(b"GET /versions HTTP/1.1\r\nhost: svc\r\nconnection: close\r\n\r\n")
        .await;
    // -quiet implies -ign_eof: s_client keeps running until the server closes.
    let out = within(
        &format!("openssl s_client {args:?}"),
        child.wait_with_output(),
    )
    .await
    .expect("openssl output");
    drop(stdin);
    SClient {
        success: out.status.success(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

fn failed_handshakes(m: &Metrics) -> f64 {
    m.matching(HANDSHAKES, &[("name", "in"), ("side", "server")])
        .filter(|s| s.labels.get("result").map(String::as_str) != Some("ok"))
        .map(|s| s.value)
        .sum()
}

#[tokio::test]
async fn tls_1_0_and_1_1_are_refused_and_1_2_and_1_3_served() {
    assert!(
        std::path::Path::new(OPENSSL).exists(),
        "{OPENSSL} is required (CI installs it)"
    );
    let pki = Pki::new();
    let ca = pki.ca("ca");
    let server = pki.workload(&ca, "certs", "server", &spiffe("default", "server"), &[]);
    let client = pki.workload(&ca, "certs", "client", &spiffe("default", "client"), &[]);
    let echo = Echo::named("app").await;
    let inbound = free_addr();
    let proxy = Proxy::start(&format!(
        r#"
listeners:
  - name: in
    address: {inbound}
    protocol: http
    cluster: app
    tls: {tls}
clusters:
  - name: app
    endpoints: [{app}]
"#,
        tls = listener_tls("strict", &server, &[&ca.pem], "1s"),
        app = echo.addr(),
    ))
    .await;
    let identity = [
        "-cert",
        client.cert.to_str().expect("utf-8"),
        "-key",
        client.key.to_str().expect("utf-8"),
        "-CAfile",
        ca.pem.to_str().expect("utf-8"),
    ];

    for version in ["-tls1", "-tls1_1"] {
        let mut args = vec![version, "-cipher", "DEFAULT@SECLEVEL=0"];
        args.extend_from_slice(&identity);
        let out = s_client(inbound, &args).await;
        assert!(
            !out.success && !out.stdout.contains("HTTP/1.1"),
            "{version}: expected a refused handshake, got success={}:\n{}\n{}",
            out.success,
            out.stdout,
            out.stderr
        );
        // The refusal is the server's: openssl offered the version and received an alert
        // (rustls answers protocol_version or handshake_failure), rather than declining to
        // offer it ("no protocols available", "no ciphers available").
        assert!(
            !out.stderr.contains("no protocols available")
                && !out.stderr.contains("no ciphers available"),
            "{version}: openssl did not offer the version at all:\n{}",
            out.stderr
        );
        assert!(
            out.stderr.contains("SSL alert number"),
            "{version}: no alert from the server:\n{}",
            out.stderr
        );
    }
    let m = proxy.metrics().await;
    assert_eq!(
        failed_handshakes(&m),
        2.0,
        "both old-version handshakes counted as failures: {}",
        m.text
    );

    for (version, shown) in [("-tls1_2", "TLSv1.2"), ("-tls1_3", "TLSv1.3")] {
        let mut args = vec![version];
        args.extend_from_slice(&identity);
        let out = s_client(inbound, &args).await;
        assert!(
            out.stdout.starts_with("HTTP/1.1 200"),
            "{version}: expected HTTP/1.1 200 over {shown}, got success={}:\n{}\n{}",
            out.success,
            out.stdout,
            out.stderr
        );
        assert!(
            out.stdout.contains(&spiffe("default", "client")),
            "{version}: the app saw the client identity:\n{}",
            out.stdout
        );
    }
    let m = proxy.metrics().await;
    assert_eq!(
        m.sum(
            HANDSHAKES,
            &[("name", "in"), ("side", "server"), ("result", "ok")]
        ),
        2.0,
        "{}",
        m.text
    );
    assert_eq!(failed_handshakes(&m), 2.0, "{}", m.text);
}
