//! Certificate rotation under load: while requests flow through a client sidecar to a server
//! sidecar (and fresh mTLS handshakes hit the server sidecar directly), the server sidecar's
//! certificate is replaced, by rewriting the files in place and the Kubernetes way (a `..data`
//! symlink swapped atomically). No request may fail; new handshakes must present the new
//! certificate; reloads are counted; a garbage file is refused and the last good certificate
//! keeps serving.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use http::StatusCode;
use pillion_tests::mtls::{
    cluster_tls, leaf_der, not_after, serial_hex, spiffe, uri_sans, yq, Ca, Issued, Pki, SecretDir,
    TlsClient,
};
use pillion_tests::{eventually, free_addr, Echo, H1Client, Proxy};
use tokio::task::JoinHandle;

const RELOADS: &str = "pillion_tls_certificate_reloads_total";
const EXPIRY: &str = "pillion_tls_certificate_expiry_timestamp_seconds";

struct Setup {
    pki: Pki,
    ca: Ca,
    client: Issued,
    /// Three generations of the server certificate (same identity, different serial/expiry).
    generations: [Issued; 3],
}

fn setup() -> Setup {
    let pki = Pki::new();
    let ca = pki.ca("ca");
    let client = pki.workload(&ca, "client", "client", &spiffe("default", "client"), &[]);
    let server_id = spiffe("default", "server");
    let generations = [("v1", "30"), ("v2", "20"), ("v3", "10")]
        .map(|(dir, days)| pki.workload(&ca, dir, "server", &server_id, &["--days", days]));
    Setup {
        pki,
        ca,
        client,
        generations,
    }
}

/// Counts of a steady request loop.
#[derive(Default)]
struct Tally {
    ok: AtomicUsize,
    failed: AtomicUsize,
    errors: Mutex<Vec<String>>,
}

impl Tally {
    fn record(&self, outcome: Result<(), String>) {
        match outcome {
            Ok(()) => {
                self.ok.fetch_add(1, Ordering::SeqCst);
            }
            Err(e) => {
                self.failed.fetch_add(1, Ordering::SeqCst);
                let mut errors = self.errors.lock().expect("lock");
                if errors.len() < 10 {
                    errors.push(e);
                }
            }
        }
    }

    fn ok(&self) -> usize {
        self.ok.load(Ordering::SeqCst)
    }
}

/// Two request loops running until stopped: HTTP/1.1 through the client sidecar (one keep-alive
/// connection), and one-request mTLS connections straight to the server sidecar (a new
/// handshake each).
struct Load {
    stop: Arc<AtomicBool>,
    via_sidecar: Arc<Tally>,
    direct: Arc<Tally>,
    tasks: Vec<JoinHandle<()>>,
}

impl Load {
    fn start(outbound: SocketAddr, inbound: SocketAddr, direct_client: TlsClient) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let via_sidecar = Arc::new(Tally::default());
        let direct = Arc::new(Tally::default());
        let mut tasks = Vec::new();
        {
            let (stop, tally) = (stop.clone(), via_sidecar.clone());
            tasks.push(tokio::spawn(async move {
                let mut c = H1Client::connect(outbound).await;
                let mut i = 0u64;
                while !stop.load(Ordering::SeqCst) {
                    i += 1;
                    let outcome = match c
                        .try_send(pillion_tests::client::get(&format!("http://svc/loop/{i}")))
                        .await
                    {
                        Ok(resp) => {
                            let reply = pillion_tests::Reply::read(resp).await;
                            if reply.status == StatusCode::OK {
                                Ok(())
                            } else {
                                Err(format!(
                                    "request {i}: HTTP {} {:?} {}",
                                    reply.status,
                                    reply.header("x-pillion-error"),
                                    reply.text()
                                ))
                            }
                        }
                        Err(e) => {
                            let err = Err(format!("request {i}: {e}"));
                            c = H1Client::connect(outbound).await;
                            err
                        }
                    };
                    tally.record(outcome);
                }
            }));
        }
        {
            let (stop, tally) = (stop.clone(), direct.clone());
            tasks.push(tokio::spawn(async move {
                let mut i = 0u64;
                while !stop.load(Ordering::SeqCst) {
                    i += 1;
                    let outcome = match direct_client.get(inbound, &format!("/direct/{i}")).await {
                        Ok(r) if r.status == StatusCode::OK => Ok(()),
                        Ok(r) => Err(format!("direct {i}: HTTP {} {}", r.status, r.text())),
                        Err(e) => Err(format!("direct {i}: {e}")),
                    };
                    tally.record(outcome);
                }
            }));
        }
        Self {
            stop,
            via_sidecar,
            direct,
            tasks,
        }
    }

    /// Waits until both loops have made `n` more successful requests.
    async fn progress(&self, n: usize, what: &str) {
        let (a, b) = (self.via_sidecar.ok(), self.direct.ok());
        eventually(&format!("{n} more successful requests {what}"), || {
            let done = self.via_sidecar.ok() >= a + n && self.direct.ok() >= b + n;
            async move { done.then_some(()) }
        })
        .await;
    }

    /// Stops the loops and asserts that not one request failed.
    async fn finish(self) {
        self.stop.store(true, Ordering::SeqCst);
        for t in self.tasks {
            pillion_tests::within("the load loops to stop", t)
                .await
                .expect("load loop task");
        }
        for (what, t) in [
            ("via the client sidecar", &self.via_sidecar),
            ("direct mTLS", &self.direct),
        ] {
            let failed = t.failed.load(Ordering::SeqCst);
            assert_eq!(
                failed,
                0,
                "{what}: {failed} of {} requests failed during rotation; first errors: {:#?}",
                failed + t.ok(),
                t.errors.lock().expect("lock")
            );
            assert!(t.ok() > 20, "{what}: only {} requests ran", t.ok());
        }
    }
}

/// Starts the echo app, the server sidecar (TLS files at `cert`, `key`, `ca`, polled every
/// 100ms) and the client sidecar.
async fn sidecars(
    s: &Setup,
    cert: &Path,
    key: &Path,
    ca: &Path,
) -> (Echo, Proxy, Proxy, SocketAddr, SocketAddr) {
    let echo = Echo::named("app").await;
    let (inbound, outbound) = (free_addr(), free_addr());
    let server = Proxy::start(&format!(
        r#"
listeners:
  - name: in
    address: {inbound}
    protocol: http
    cluster: app
    tls:
      mode: strict
      cert: {cert}
      key: {key}
      ca: [{ca}]
      reload_interval: 100ms
clusters:
  - name: app
    endpoints: [{app}]
"#,
        cert = yq(cert),
        key = yq(key),
        ca = yq(ca),
        app = echo.addr(),
    ))
    .await;
    let client = Proxy::start(&format!(
        r#"
listeners:
  - name: out
    address: {outbound}
    direction: outbound
    protocol: http
    cluster: mesh
clusters:
  - name: mesh
    endpoints: [{inbound}]
    tls: {tls}
"#,
        tls = cluster_tls(Some(&s.client), &s.ca.pem, &[&spiffe("default", "server")]),
    ))
    .await;
    (echo, server, client, inbound, outbound)
}

/// Polls until a new handshake with `addr` presents `want` (the leaf of a PEM chain file).
async fn wait_served(probe: &TlsClient, addr: SocketAddr, want: &Path) {
    let want_der = leaf_der(want);
    let want_serial = serial_hex(&want_der);
    let last = Mutex::new(String::new());
    let found = tokio::time::timeout(pillion_tests::STEP, async {
        loop {
            let got = probe
                .server_leaf(addr)
                .await
                .unwrap_or_else(|e| panic!("probe handshake failed: {e}"));
            if got == want_der {
                return;
            }
            *last.lock().expect("lock") = serial_hex(&got);
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    })
    .await;
    assert!(
        found.is_ok(),
        "new handshakes never presented serial {want_serial} ({}); still serial {}",
        want.display(),
        last.lock().expect("lock")
    );
}

async fn assert_expiry(server: &Proxy, cert: &Path) {
    let want = not_after(&leaf_der(cert)) as f64;
    server
        .wait_metric(
            EXPIRY,
            &[("name", "in"), ("side", "server"), ("kind", "cert")],
            want,
        )
        .await;
}

/// Ways the server sidecar's files get replaced.
enum Files {
    /// The configured files are rewritten in place (cert, then key).
    InPlace { cert: PathBuf, key: PathBuf },
    /// A Kubernetes secret volume: `..data` swapped to a new directory.
    Kube {
        dir: SecretDir,
        ca: PathBuf,
        n: usize,
    },
}

impl Files {
    fn install(&mut self, cert: &Path, key: &Path) {
        match self {
            Files::InPlace { cert: c, key: k } => {
                std::fs::write(&*c, std::fs::read(cert).expect("read cert")).expect("write cert");
                std::fs::write(&*k, std::fs::read(key).expect("read key")).expect("write key");
            }
            Files::Kube { dir, ca, n } => {
                *n += 1;
                dir.update(
                    &format!("2026_11_25_{n:02}"),
                    &[("tls.pem", cert), ("tls-key.pem", key), ("ca.pem", ca)],
                );
            }
        }
    }
}

/// The rotation scenario, the same for both ways of replacing files.
async fn rotate_under_load(s: &Setup, files: &mut Files, cert: &Path, key: &Path, ca: &Path) {
    let [v1, v2, v3] = &s.generations;
    let (_echo, server, _client, inbound, outbound) = sidecars(s, cert, key, ca).await;
    let probe = TlsClient::new(&s.ca.pem, Some(&s.client));
    assert_eq!(
        uri_sans(&probe.server_leaf(inbound).await.expect("probe")),
        vec![spiffe("default", "server")]
    );
    wait_served(&probe, inbound, &v1.cert).await;
    assert_expiry(&server, &v1.cert).await;

    let load = Load::start(
        outbound,
        inbound,
        TlsClient::new(&s.ca.pem, Some(&s.client)),
    );
    load.progress(10, "before the rotation").await;

    // Rotate to v2.
    files.install(&v2.cert, &v2.key);
    wait_served(&probe, inbound, &v2.cert).await;
    server
        .wait_metric(
            RELOADS,
            &[("name", "in"), ("side", "server"), ("result", "ok")],
            1.0,
        )
        .await;
    assert_expiry(&server, &v2.cert).await;
    load.progress(10, "after the rotation to v2").await;

    // Garbage: refused, counted, and v2 keeps serving new handshakes.
    let garbage = s.pki.root().join("garbage.pem");
    std::fs::write(
        &garbage,
        "-----BEGIN CERTIFICATE-----\nnot base64 at all!\n-----END CERTIFICATE-----\n",
    )
    .expect("write garbage");
    files.install(&garbage, &v2.key);
    let m = server
        .wait_metric(
            RELOADS,
            &[("name", "in"), ("side", "server"), ("result", "error")],
            1.0,
        )
        .await;
    assert_eq!(
        m.sum(
            RELOADS,
            &[("name", "in"), ("side", "server"), ("result", "ok")]
        ),
        1.0,
        "{}",
        m.text
    );
    load.progress(10, "after the garbage certificate").await;
    assert_eq!(
        probe
            .server_leaf(inbound)
            .await
            .expect("probe after garbage"),
        leaf_der(&v2.cert),
        "the last good certificate keeps serving"
    );
    assert_expiry(&server, &v2.cert).await;

    // And a good certificate after the garbage is picked up again.
    files.install(&v3.cert, &v3.key);
    wait_served(&probe, inbound, &v3.cert).await;
    server
        .wait_metric(
            RELOADS,
            &[("name", "in"), ("side", "server"), ("result", "ok")],
            2.0,
        )
        .await;
    assert_expiry(&server, &v3.cert).await;
    load.progress(10, "after the rotation to v3").await;
    load.finish().await;

    let m = server.metrics().await;
    assert_eq!(
        m.sum(
            RELOADS,
            &[("name", "in"), ("side", "server"), ("result", "error")]
        ),
        1.0,
        "only the garbage was refused: {}",
        m.text
    );
}

#[tokio::test]
async fn rewriting_the_files_in_place_rotates_without_failing_a_request() {
    let s = setup();
    let live = s.pki.root().join("live");
    std::fs::create_dir(&live).expect("mkdir");
    let (cert, key) = (live.join("server.pem"), live.join("server-key.pem"));
    std::fs::copy(&s.generations[0].cert, &cert).expect("copy");
    std::fs::copy(&s.generations[0].key, &key).expect("copy");
    let mut files = Files::InPlace {
        cert: cert.clone(),
        key: key.clone(),
    };
    rotate_under_load(&s, &mut files, &cert, &key, &s.ca.pem).await;
}

#[tokio::test]
async fn a_kubernetes_symlink_swap_rotates_without_failing_a_request() {
    let s = setup();
    let v1 = &s.generations[0];
    let dir = SecretDir::create(
        &s.pki.root().join("secret"),
        "2026_11_25_00",
        &[
            ("tls.pem", &v1.cert),
            ("tls-key.pem", &v1.key),
            ("ca.pem", &s.ca.pem),
        ],
    );
    let (cert, key, ca) = (
        dir.path("tls.pem"),
        dir.path("tls-key.pem"),
        dir.path("ca.pem"),
    );
    assert!(
        std::fs::symlink_metadata(&cert)
            .expect("lstat")
            .file_type()
            .is_symlink(),
        "the configured file is a symlink"
    );
    let mut files = Files::Kube {
        dir,
        ca: s.ca.pem.clone(),
        n: 0,
    };
    rotate_under_load(&s, &mut files, &cert, &key, &ca).await;
}

#[tokio::test]
async fn a_client_sidecar_reloads_its_own_certificate_for_new_connections() {
    let s = setup();
    let v2 = s.pki.workload(
        &s.ca,
        "client-v2",
        "client",
        &spiffe("default", "client"),
        &["--days", "5"],
    );
    let live = s.pki.root().join("client-live");
    std::fs::create_dir(&live).expect("mkdir");
    let (cert, key) = (live.join("client.pem"), live.join("client-key.pem"));
    std::fs::copy(&s.client.cert, &cert).expect("copy");
    std::fs::copy(&s.client.key, &key).expect("copy");
    // The upstream closes every connection after one response: each request is a new handshake.
    let upstream = pillion_tests::mtls::TlsUpstream::start(&s.ca.pem, &s.generations[0]).await;
    let outbound = free_addr();
    let client = Proxy::start(&format!(
        r#"
listeners:
  - name: out
    address: {outbound}
    direction: outbound
    protocol: http
    cluster: mesh
clusters:
  - name: mesh
    endpoints: [{up}]
    tls:
      cert: {cert}
      key: {key}
      ca: [{ca}]
      identities: ["{server}"]
      reload_interval: 100ms
"#,
        up = upstream.addr(),
        cert = yq(&cert),
        key = yq(&key),
        ca = yq(&s.ca.pem),
        server = spiffe("default", "server"),
    ))
    .await;
    let client_labels = |result| [("name", "mesh"), ("side", "client"), ("result", result)];
    let expiry_labels = [("name", "mesh"), ("side", "client"), ("kind", "cert")];

    let mut c = H1Client::connect(outbound).await;
    assert_eq!(last_leaf(&mut c, &upstream).await, leaf_der(&s.client.cert));
    client
        .wait_metric(
            EXPIRY,
            &expiry_labels,
            not_after(&leaf_der(&s.client.cert)) as f64,
        )
        .await;

    std::fs::write(&cert, std::fs::read(&v2.cert).expect("read")).expect("write cert");
    std::fs::write(&key, std::fs::read(&v2.key).expect("read")).expect("write key");
    at_least(&client, &client_labels("ok"), 1.0).await;
    assert_eq!(
        serial_hex(&last_leaf(&mut c, &upstream).await),
        serial_hex(&leaf_der(&v2.cert)),
        "a new upstream handshake after the reload presents the new client certificate"
    );
    client
        .wait_metric(
            EXPIRY,
            &expiry_labels,
            not_after(&leaf_der(&v2.cert)) as f64,
        )
        .await;

    std::fs::write(&cert, "garbage\n").expect("write garbage");
    at_least(&client, &client_labels("error"), 1.0).await;
    assert_eq!(
        serial_hex(&last_leaf(&mut c, &upstream).await),
        serial_hex(&leaf_der(&v2.cert)),
        "the last good client certificate keeps being used"
    );
    // One change, one reload: each counted once.
    let m = client.metrics().await;
    assert_eq!(
        (
            m.sum(RELOADS, &client_labels("ok")),
            m.sum(RELOADS, &client_labels("error"))
        ),
        (1.0, 1.0),
        "one good rewrite and one garbage rewrite of the client certificate: {}",
        m.text
    );
}

/// Polls until the reload counter `labels` reaches at least `want`.
async fn at_least(proxy: &Proxy, labels: &[(&str, &str)], want: f64) {
    eventually(&format!("{RELOADS}{labels:?} >= {want}"), || async move {
        (proxy.metrics().await.sum(RELOADS, labels) >= want).then_some(())
    })
    .await;
}

/// One request through the client sidecar; the client certificate the upstream saw for it.
async fn last_leaf(c: &mut H1Client, upstream: &pillion_tests::mtls::TlsUpstream) -> Vec<u8> {
    let r = c.get("http://svc/rotate").await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    assert_eq!(r.text(), "tls upstream");
    upstream
        .client_leaves()
        .last()
        .cloned()
        .expect("a handshake")
}
