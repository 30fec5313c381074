//! Certificate reload: in-place rewrites, Kubernetes-style symlink swaps, rejected files.
#![allow(clippy::unwrap_used)] // helpers outside #[test] functions fail the test loudly

#[macro_use]
mod common;

use common::*;
use pillion_tls::{ClientTls, ServerTls, TlsMetrics};
use prometheus_client::registry::Registry;
use std::{
    io::Write,
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A client that accepts any server identity of the trust domain and reports which it saw.
fn prober(pki: &Pki, metrics: &TlsMetrics) -> Arc<ClientTls> {
    let (cert, key) = pki.workload("prober", &id("prober"));
    let cfg = cluster_tls(
        Some((&cert, &key)),
        &[pki.ca_path()],
        &["spiffe://td.test/*"],
    );
    ClientTls::new("prober", &cfg, false, metrics).unwrap()
}

async fn presented(server: &mut TestServer, client: &ClientTls) -> Option<String> {
    let stream = client.connect(server.tcp().await, server.ip()).await.ok()?;
    server.next().await.ok()?;
    server_identity(&stream)
}

fn reloads(registry: &Registry, result: &str) -> f64 {
    sample(
        registry,
        &[
            "pillion_tls_certificate_reloads_total{",
            "name=\"inbound\"",
            &format!("result=\"{result}\""),
        ],
    )
    .unwrap_or(0.0)
}

struct Setup {
    pki: Pki,
    cert: PathBuf,
    key: PathBuf,
    server: TestServer,
    prober: Arc<ClientTls>,
    registry: Registry,
}

async fn setup() -> Setup {
    let pki = Pki::new();
    let (cert, key) = pki.workload("server", &id("a"));
    let mut registry = Registry::default();
    let metrics = TlsMetrics::register(&mut registry);
    let tls = ServerTls::new(
        "inbound",
        &listener_tls(&cert, &key, &[pki.ca_path()]),
        &metrics,
    )
    .unwrap();
    let server = TestServer::start(tls).await;
    let prober = prober(&pki, &metrics);
    Setup {
        pki,
        cert,
        key,
        server,
        prober,
        registry,
    }
}

/// Overwrites a file in place (same inode).
fn rewrite(path: &Path, contents: &str) {
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .truncate(true)
        .open(path)
        .unwrap();
    f.write_all(contents.as_bytes()).unwrap();
}

#[tokio::test]
async fn in_place_rewrite_is_picked_up() {
    let mut s = setup().await;
    assert_eq!(presented(&mut s.server, &s.prober).await, Some(id("a")));

    // A connection opened before the reload.
    let mut open = s
        .prober
        .connect(s.server.tcp().await, s.server.ip())
        .await
        .unwrap();
    s.server.next().await.unwrap();

    let inode = std::os::unix::fs::MetadataExt::ino(&std::fs::metadata(&s.cert).unwrap());
    let new = s.pki.issue(&id("b"), pillion_tls::cert::Validity::Days(1));
    rewrite(&s.cert, &new.chain_pem);
    rewrite(&s.key, &new.key_pem);
    assert_eq!(
        std::os::unix::fs::MetadataExt::ino(&std::fs::metadata(&s.cert).unwrap()),
        inode
    );

    eventually!(
        "the new certificate",
        presented(&mut s.server, &s.prober).await == Some(id("b"))
    );
    assert_eq!(reloads(&s.registry, "ok"), 1.0);
    assert_eq!(reloads(&s.registry, "error"), 0.0);

    // The old connection still works, on the old session.
    assert_eq!(server_identity(&open), Some(id("a")));
    open.write_all(b"still here").await.unwrap();
    let mut buf = [0u8; 10];
    tokio::time::timeout(STEP, open.read_exact(&mut buf))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&buf, b"still here");
}

#[tokio::test]
async fn kubernetes_symlink_swap_is_picked_up() {
    let pki = Pki::new();
    let mount = pki.path("mount");
    std::fs::create_dir(&mount).unwrap();
    let write_version = |version: &str, spiffe: &str| {
        let dir = mount.join(version);
        std::fs::create_dir(&dir).unwrap();
        let w = pki.issue(spiffe, pillion_tls::cert::Validity::Days(1));
        std::fs::write(dir.join("tls.crt"), &w.chain_pem).unwrap();
        std::fs::write(dir.join("tls.key"), &w.key_pem).unwrap();
        std::fs::write(dir.join("ca.crt"), &pki.ca.cert_pem).unwrap();
    };
    // The layout a Kubernetes Secret volume has.
    write_version("..2024_01_01_00_00_00.1", &id("a"));
    std::os::unix::fs::symlink("..2024_01_01_00_00_00.1", mount.join("..data")).unwrap();
    for f in ["tls.crt", "tls.key", "ca.crt"] {
        std::os::unix::fs::symlink(format!("..data/{f}"), mount.join(f)).unwrap();
    }

    let mut registry = Registry::default();
    let metrics = TlsMetrics::register(&mut registry);
    let cfg = listener_tls(
        &mount.join("tls.crt"),
        &mount.join("tls.key"),
        &[mount.join("ca.crt")],
    );
    let tls = ServerTls::new("inbound", &cfg, &metrics).unwrap();
    let mut server = TestServer::start(tls).await;
    let prober = prober(&pki, &metrics);
    assert_eq!(presented(&mut server, &prober).await, Some(id("a")));

    // The atomic swap: a new directory, a new `..data` link renamed over the old one.
    write_version("..2024_01_02_00_00_00.2", &id("b"));
    std::os::unix::fs::symlink("..2024_01_02_00_00_00.2", mount.join("..data_tmp")).unwrap();
    std::fs::rename(mount.join("..data_tmp"), mount.join("..data")).unwrap();
    std::fs::remove_dir_all(mount.join("..2024_01_01_00_00_00.1")).unwrap();

    eventually!(
        "the swapped certificate",
        presented(&mut server, &prober).await == Some(id("b"))
    );
    assert_eq!(reloads(&registry, "error"), 0.0);
}

/// Collects log lines, to check what a rejected reload says.
#[derive(Clone, Default)]
struct Logs(Arc<Mutex<Vec<u8>>>);

impl Write for Logs {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Logs {
    /// Captures what this thread logs until the guard drops.
    ///
    /// NOTE: the test runtime is single-threaded, so the watcher task logs on this thread.
    fn capture() -> (Self, tracing::subscriber::DefaultGuard) {
        let logs = Logs::default();
        let writer = logs.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_writer(move || writer.clone())
            .with_ansi(false)
            .finish();
        (logs, tracing::subscriber::set_default(subscriber))
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }
}

#[tokio::test]
async fn garbage_keeps_the_old_cert_and_counts_an_error() {
    let (logs, _guard) = Logs::capture();

    let mut s = setup().await;
    assert_eq!(presented(&mut s.server, &s.prober).await, Some(id("a")));

    rewrite(
        &s.cert,
        "-----BEGIN CERTIFICATE-----\nnot base64 at all!\n-----END CERTIFICATE-----\n",
    );
    eventually!("a reload error", reloads(&s.registry, "error") == 1.0);
    assert_eq!(presented(&mut s.server, &s.prober).await, Some(id("a")));
    let text = logs.text();
    let line = text
        .lines()
        .find(|l| l.contains("rejected changed TLS files"))
        .unwrap_or_else(|| panic!("no error line in {text}"));
    assert!(line.contains("ERROR"), "{line}");
    assert!(line.contains(&s.cert.display().to_string()), "{line}");
    assert!(line.contains("invalid PEM"), "{line}");

    // A key that does not match the certificate is rejected too.
    let other = s.pki.issue(&id("b"), pillion_tls::cert::Validity::Days(1));
    rewrite(&s.cert, &other.chain_pem);
    eventually!(
        "a second reload error",
        reloads(&s.registry, "error") == 2.0
    );
    assert_eq!(presented(&mut s.server, &s.prober).await, Some(id("a")));
    assert!(logs.text().contains("does not match the certificate"));

    // Fixing the key completes the change.
    rewrite(&s.key, &other.key_pem);
    eventually!(
        "the fixed certificate",
        presented(&mut s.server, &s.prober).await == Some(id("b"))
    );
    assert_eq!(reloads(&s.registry, "ok"), 1.0);
}

#[tokio::test]
async fn expired_or_not_yet_valid_certificates_are_refused_and_the_old_one_kept() {
    let (logs, _guard) = Logs::capture();

    let mut s = setup().await;
    assert_eq!(presented(&mut s.server, &s.prober).await, Some(id("a")));
    let cases = [
        (pillion_tls::cert::Validity::Expired, "b", "expired at"),
        (
            pillion_tls::cert::Validity::NotYetValid,
            "c",
            "not valid until",
        ),
    ];
    for (n, (validity, name, reason)) in cases.into_iter().enumerate() {
        let bad = s.pki.issue(&id(name), validity);
        // Key first, then the certificate: the pair is consistent once both are written.
        rewrite(&s.key, &bad.key_pem);
        rewrite(&s.cert, &bad.chain_pem);
        let errors = 1.0 + n as f64;
        eventually!(
            format!("reload error #{errors}"),
            reloads(&s.registry, "error") >= errors
        );
        assert_eq!(
            presented(&mut s.server, &s.prober).await,
            Some(id("a")),
            "{validity:?}: the previous certificate keeps serving"
        );
        let text = logs.text();
        let line = text
            .lines()
            .filter(|l| l.contains("rejected changed TLS files"))
            .find(|l| l.contains(reason))
            .unwrap_or_else(|| panic!("{validity:?}: no error line saying {reason:?} in {text}"));
        assert!(line.contains("ERROR"), "{line}");
        assert!(line.contains(&s.cert.display().to_string()), "{line}");
    }
    assert_eq!(reloads(&s.registry, "ok"), 0.0);

    // A valid certificate is loaded again.
    let good = s.pki.issue(&id("d"), pillion_tls::cert::Validity::Days(1));
    rewrite(&s.key, &good.key_pem);
    rewrite(&s.cert, &good.chain_pem);
    eventually!(
        "the valid certificate",
        presented(&mut s.server, &s.prober).await == Some(id("d"))
    );
}

#[tokio::test]
async fn a_ca_bundle_with_no_certificate_in_date_is_refused_and_a_rotation_bundle_loaded() {
    let (logs, _guard) = Logs::capture();

    let mut s = setup().await;
    assert_eq!(presented(&mut s.server, &s.prober).await, Some(id("a")));
    let ca = s.pki.ca_path();
    let expired =
        pillion_tls::cert::make_ca_with(TD, pillion_tls::cert::Validity::Expired).unwrap();
    rewrite(&ca, &expired.cert_pem);
    eventually!(
        "the expired bundle refused",
        reloads(&s.registry, "error") >= 1.0
    );
    // The previous bundle still verifies the prober's certificate, which the expired CA did
    // not sign.
    assert_eq!(presented(&mut s.server, &s.prober).await, Some(id("a")));
    let text = logs.text();
    let line = text
        .lines()
        .find(|l| l.contains("rejected changed TLS files") && l.contains("tls=\"inbound\""))
        .unwrap_or_else(|| panic!("no error line in {text}"));
    assert!(line.contains("ERROR"), "{line}");
    assert!(line.contains(&ca.display().to_string()), "{line}");
    assert!(
        line.contains("no CA certificate is within its validity period"),
        "{line}"
    );
    assert!(line.contains("certificate #1"), "{line}");
    assert!(line.contains("expired at"), "{line}");
    assert_eq!(reloads(&s.registry, "ok"), 0.0);

    // A CA rotation: the expired CA beside the current one is loaded, with a WARN.
    rewrite(&ca, &format!("{}{}", expired.cert_pem, s.pki.ca.cert_pem));
    eventually!(
        "the rotation bundle loaded",
        reloads(&s.registry, "ok") >= 1.0
    );
    assert_eq!(presented(&mut s.server, &s.prober).await, Some(id("a")));
    let text = logs.text();
    let line = text
        .lines()
        .find(|l| l.contains("WARN") && l.contains("CA certificate #1 expired at"))
        .unwrap_or_else(|| panic!("no warning in {text}"));
    assert!(line.contains(&ca.display().to_string()), "{line}");
    assert_eq!(reloads(&s.registry, "error"), 1.0);
}

#[tokio::test]
async fn client_certificate_is_reloaded() {
    let mut s = setup().await;
    let (cert, key) = s.pki.workload("web", &id("web-1"));
    let metrics = TlsMetrics::default();
    let cfg = cluster_tls(Some((&cert, &key)), &[s.pki.ca_path()], &[&id("a")]);
    let client = ClientTls::new("web", &cfg, false, &metrics).unwrap();

    let new = s
        .pki
        .issue(&id("web-2"), pillion_tls::cert::Validity::Days(1));
    rewrite(&key, &new.key_pem);
    rewrite(&cert, &new.chain_pem);
    eventually!("the new client certificate", {
        let _stream = client.connect(s.server.tcp().await, s.server.ip()).await;
        let peer = s.server.next().await;
        peer.is_ok_and(|p| p.identity.as_deref() == Some(id("web-2").as_str()))
    });
}

#[tokio::test]
async fn the_watcher_does_not_keep_the_context_alive() {
    let pki = Pki::new();
    let (cert, key) = pki.workload("server", &id("a"));
    let metrics = TlsMetrics::default();
    let server =
        ServerTls::new("l", &listener_tls(&cert, &key, &[pki.ca_path()]), &metrics).unwrap();
    let client = ClientTls::new(
        "c",
        &cluster_tls(None, &[pki.ca_path()], &[]),
        false,
        &metrics,
    )
    .unwrap();
    let (server_weak, client_weak) = (Arc::downgrade(&server), Arc::downgrade(&client));
    drop((server, client));
    assert!(server_weak.upgrade().is_none());
    assert!(client_weak.upgrade().is_none());
}
