//! Shared helpers of the integration tests: a PKI in a tempdir, TLS settings, a test server.
#![allow(dead_code)]

use pillion_config::{ClusterTls, Duration as CfgDuration, ListenerTls, TlsMode};
use pillion_tls::{
    cert::{self, Validity, WorkloadSpec},
    PeerInfo, ServerTls, TlsError,
};
use prometheus_client::{encoding::text::encode, registry::Registry};
use std::{
    net::{IpAddr, SocketAddr},
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
    sync::mpsc,
};

/// How long any single step of a test may take.
pub const STEP: Duration = Duration::from_secs(10);

pub const TD: &str = "td.test";

pub fn id(name: &str) -> String {
    format!("spiffe://{TD}/ns/default/sa/{name}")
}

/// A CA (and its files) in a temporary directory.
pub struct Pki {
    pub dir: tempfile::TempDir,
    pub ca: cert::Ca,
}

impl Pki {
    pub fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let ca = cert::make_ca(TD, 30).unwrap();
        std::fs::write(dir.path().join("ca.pem"), &ca.cert_pem).unwrap();
        Self { dir, ca }
    }

    pub fn path(&self, file: &str) -> PathBuf {
        self.dir.path().join(file)
    }

    pub fn ca_path(&self) -> PathBuf {
        self.path("ca.pem")
    }

    /// Issues a workload certificate as PEM.
    pub fn issue(&self, spiffe_id: &str, validity: Validity) -> cert::Workload {
        let spec = WorkloadSpec {
            spiffe_id: spiffe_id.to_owned(),
            dns: vec!["server.td.test".into()],
            ip: vec!["127.0.0.1".parse().unwrap()],
            common_name: "test".into(),
            validity,
        };
        cert::issue_workload(&self.ca.cert_pem, &self.ca.key_pem, &spec).unwrap()
    }

    /// Issues a workload certificate into `<stem>.pem` and `<stem>-key.pem`.
    pub fn workload(&self, stem: &str, spiffe_id: &str) -> (PathBuf, PathBuf) {
        self.workload_with(stem, spiffe_id, Validity::Days(1))
    }

    pub fn workload_with(&self, stem: &str, spiffe_id: &str, v: Validity) -> (PathBuf, PathBuf) {
        let w = self.issue(spiffe_id, v);
        let cert = self.path(&format!("{stem}.pem"));
        let key = self.path(&format!("{stem}-key.pem"));
        std::fs::write(&cert, &w.chain_pem).unwrap();
        std::fs::write(&key, &w.key_pem).unwrap();
        (cert, key)
    }
}

pub fn listener_tls(cert: &Path, key: &Path, ca: &[PathBuf]) -> ListenerTls {
    ListenerTls {
        mode: TlsMode::Strict,
        cert: cert.to_owned(),
        key: key.to_owned(),
        ca: ca.to_vec(),
        reload_interval: CfgDuration::from_millis(20),
    }
}

pub fn cluster_tls(
    cert_key: Option<(&Path, &Path)>,
    ca: &[PathBuf],
    identities: &[&str],
) -> ClusterTls {
    ClusterTls {
        cert: cert_key.map(|(c, _)| c.to_owned()),
        key: cert_key.map(|(_, k)| k.to_owned()),
        ca: ca.to_vec(),
        sni: None,
        identities: identities.iter().map(|s| s.to_string()).collect(),
        reload_interval: CfgDuration::from_millis(20),
    }
}

/// A TCP server on 127.0.0.1:0 that runs `ServerTls::accept` on every connection, reports
/// the result, then echoes what it reads.
pub struct TestServer {
    pub addr: SocketAddr,
    pub results: mpsc::UnboundedReceiver<Result<PeerInfo, TlsError>>,
}

impl TestServer {
    pub async fn start(tls: Arc<ServerTls>) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (tx, results) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let tls = tls.clone();
                let tx = tx.clone();
                tokio::spawn(async move {
                    match tls.accept(tcp).await {
                        Ok((mut stream, peer)) => {
                            let _ = tx.send(Ok(peer));
                            let mut buf = [0u8; 1024];
                            while let Ok(n) = stream.read(&mut buf).await {
                                if n == 0 || stream.write_all(&buf[..n]).await.is_err() {
                                    break;
                                }
                                let _ = stream.flush().await;
                            }
                        }
                        Err(e) => {
                            let _ = tx.send(Err(e));
                        }
                    }
                });
            }
        });
        Self { addr, results }
    }

    /// The result of the next handshake the server ran.
    pub async fn next(&mut self) -> Result<PeerInfo, TlsError> {
        tokio::time::timeout(STEP, self.results.recv())
            .await
            .expect("the server reports a handshake in time")
            .expect("the server is running")
    }

    pub async fn tcp(&self) -> TcpStream {
        tokio::time::timeout(STEP, TcpStream::connect(self.addr))
            .await
            .unwrap()
            .unwrap()
    }

    pub fn ip(&self) -> IpAddr {
        self.addr.ip()
    }
}

/// The SPIFFE ID in the server certificate of a client connection.
pub fn server_identity(stream: &tokio_rustls::client::TlsStream<TcpStream>) -> Option<String> {
    let certs = stream.get_ref().1.peer_certificates()?;
    uri_san(certs.first()?)
}

pub fn uri_san(der: &[u8]) -> Option<String> {
    use x509_parser::{extensions::GeneralName, prelude::FromDer};
    let (_, cert) = x509_parser::certificate::X509Certificate::from_der(der).ok()?;
    let san = cert.subject_alternative_name().ok()??;
    san.value.general_names.iter().find_map(|n| match n {
        GeneralName::URI(u) => Some((*u).to_owned()),
        _ => None,
    })
}

/// The value of the sample whose line contains all of `parts`.
pub fn sample(registry: &Registry, parts: &[&str]) -> Option<f64> {
    let mut out = String::new();
    encode(&mut out, registry).unwrap();
    out.lines()
        .filter(|l| !l.starts_with('#'))
        .find(|l| parts.iter().all(|p| l.contains(p)))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

/// Polls `$cond` (which may `.await`) every 10ms until it is true, failing after [`STEP`].
#[allow(unused_macros)]
macro_rules! eventually {
    ($what:expr, $cond:expr) => {{
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
        loop {
            if $cond {
                break;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "timed out waiting for {}",
                $what
            );
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
    }};
}
