//! Mutual-TLS support for the end-to-end tests: certificates made with the real `pillion cert`
//! commands (and an expired CA, which they do not make), config fragments that use them, a
//! rustls test client (with or without a client certificate) speaking HTTP/1.1, HTTP/2 or raw
//! bytes, and a Kubernetes-style secret directory whose files are swapped through a `..data`
//! symlink.

use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use http::{Request, Version};
use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{
    CertificateError, ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme,
};
use tempfile::TempDir;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;

use crate::client::{get, Body, Reply};
use crate::proxy::pillion;
use crate::STEP;

/// The trust domain every test certificate uses.
pub const TRUST_DOMAIN: &str = "cluster.local";

/// `spiffe://cluster.local/ns/NS/sa/SA`.
pub fn spiffe(ns: &str, sa: &str) -> String {
    format!("spiffe://{TRUST_DOMAIN}/ns/{ns}/sa/{sa}")
}

/// Runs `pillion ARGS` (a `cert` subcommand) and panics with its output unless it succeeds.
pub fn pillion_cert(args: &[&str]) {
    let out = pillion(args, Duration::from_secs(30));
    assert!(
        out.status.success(),
        "pillion {args:?} failed ({}):\nstdout:\n{}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A CA made by `pillion cert ca`: its directory and `ca.pem`.
#[derive(Debug, Clone)]
pub struct Ca {
    pub dir: PathBuf,
    pub pem: PathBuf,
}

/// A workload certificate chain and key made by `pillion cert workload`.
#[derive(Debug, Clone)]
pub struct Issued {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// A temporary directory of CAs and workload certificates, all made with `pillion cert`.
pub struct Pki {
    dir: TempDir,
}

// === impl Pki ===

impl Pki {
    pub fn new() -> Self {
        Self {
            dir: TempDir::new().expect("tempdir"),
        }
    }

    /// The temporary directory everything is written under.
    pub fn root(&self) -> &Path {
        self.dir.path()
    }

    /// `pillion cert ca --out ROOT/NAME --trust-domain cluster.local`.
    pub fn ca(&self, name: &str) -> Ca {
        let dir = self.root().join(name);
        pillion_cert(&[
            "cert",
            "ca",
            "--out",
            path_str(&dir),
            "--trust-domain",
            TRUST_DOMAIN,
        ]);
        let pem = dir.join("ca.pem");
        assert!(pem.exists(), "{} missing", pem.display());
        Self::assert_exists(&dir.join("ca-key.pem"));
        Ca { dir, pem }
    }

    /// `pillion cert workload --ca CA --out ROOT/OUT --spiffe-id ID --name NAME EXTRA...`.
    pub fn workload(&self, ca: &Ca, out: &str, name: &str, id: &str, extra: &[&str]) -> Issued {
        let out = self.root().join(out);
        let mut args = vec![
            "cert",
            "workload",
            "--ca",
            path_str(&ca.dir),
            "--out",
            path_str(&out),
            "--spiffe-id",
            id,
            "--name",
            name,
        ];
        args.extend_from_slice(extra);
        pillion_cert(&args);
        let issued = Issued {
            cert: out.join(format!("{name}.pem")),
            key: out.join(format!("{name}-key.pem")),
        };
        Self::assert_exists(&issued.cert);
        Self::assert_exists(&issued.key);
        issued
    }

    /// A CA valid from 2020-01-01 to 2021-01-01 only, written as ROOT/NAME/ca.pem and
    /// ca-key.pem. `pillion cert ca` makes only current CAs, so rcgen makes this one.
    pub fn expired_ca(&self, name: &str) -> Ca {
        use rcgen::{date_time_ymd, BasicConstraints, CertificateParams, DnType, IsCa, KeyPair};
        let key = KeyPair::generate().expect("CA key");
        let mut params = CertificateParams::default();
        params
            .distinguished_name
            .push(DnType::CommonName, format!("Expired test CA {name}"));
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.not_before = date_time_ymd(2020, 1, 1);
        params.not_after = date_time_ymd(2021, 1, 1);
        let cert = params.self_signed(&key).expect("self-signed CA");
        let dir = self.root().join(name);
        std::fs::create_dir_all(&dir).expect("create the CA directory");
        let pem = dir.join("ca.pem");
        std::fs::write(dir.join("ca-key.pem"), key.serialize_pem()).expect("write ca-key.pem");
        std::fs::write(&pem, cert.pem()).expect("write ca.pem");
        Ca { dir, pem }
    }

    fn assert_exists(path: &Path) {
        assert!(path.exists(), "{} missing", path.display());
    }
}

impl Default for Pki {
    fn default() -> Self {
        Self::new()
    }
}

/// A path as UTF-8 (temporary paths always are).
pub fn path_str(p: &Path) -> &str {
    p.to_str().expect("UTF-8 path")
}

/// A path as a double-quoted YAML scalar.
pub fn yq(p: &Path) -> String {
    serde_json::to_string(path_str(p)).expect("quote")
}

/// A listener's `tls:` value in YAML flow style, e.g.
/// `{ mode: strict, cert: "...", key: "...", ca: ["..."], reload_interval: 1s }`.
pub fn listener_tls(mode: &str, server: &Issued, cas: &[&Path], reload: &str) -> String {
    let cas: Vec<String> = cas.iter().map(|p| yq(p)).collect();
    format!(
        "{{ mode: {mode}, cert: {}, key: {}, ca: [{}], reload_interval: {reload} }}",
        yq(&server.cert),
        yq(&server.key),
        cas.join(", ")
    )
}

/// A cluster's `tls:` value in YAML flow style.
pub fn cluster_tls(client: Option<&Issued>, ca: &Path, identities: &[&str]) -> String {
    let mut parts = Vec::new();
    if let Some(c) = client {
        parts.push(format!("cert: {}", yq(&c.cert)));
        parts.push(format!("key: {}", yq(&c.key)));
    }
    parts.push(format!("ca: [{}]", yq(ca)));
    let ids: Vec<String> = identities
        .iter()
        .map(|i| serde_json::to_string(i).expect("quote"))
        .collect();
    parts.push(format!("identities: [{}]", ids.join(", ")));
    format!("{{ {} }}", parts.join(", "))
}

/// All certificates of a PEM file, in order.
pub fn read_certs(path: &Path) -> Vec<CertificateDer<'static>> {
    CertificateDer::pem_file_iter(path)
        .unwrap_or_else(|e| panic!("open {}: {e}", path.display()))
        .collect::<Result<Vec<_>, _>>()
        .unwrap_or_else(|e| panic!("parse {}: {e}", path.display()))
}

/// The DER of the first (leaf) certificate of a PEM chain file.
pub fn leaf_der(path: &Path) -> Vec<u8> {
    read_certs(path)
        .first()
        .unwrap_or_else(|| panic!("no certificate in {}", path.display()))
        .to_vec()
}

/// A certificate's notAfter, in Unix seconds.
pub fn not_after(der: &[u8]) -> i64 {
    use x509_parser::prelude::FromDer;
    let (_, cert) = x509_parser::certificate::X509Certificate::from_der(der).expect("X.509 DER");
    cert.validity().not_after.timestamp()
}

/// A certificate's serial number, as hex.
pub fn serial_hex(der: &[u8]) -> String {
    use x509_parser::prelude::FromDer;
    let (_, cert) = x509_parser::certificate::X509Certificate::from_der(der).expect("X.509 DER");
    cert.raw_serial_as_string()
}

/// A certificate's URI SANs.
pub fn uri_sans(der: &[u8]) -> Vec<String> {
    use x509_parser::extensions::GeneralName;
    use x509_parser::prelude::FromDer;
    let (_, cert) = x509_parser::certificate::X509Certificate::from_der(der).expect("X.509 DER");
    let Ok(Some(san)) = cert.subject_alternative_name() else {
        return Vec::new();
    };
    san.value
        .general_names
        .iter()
        .filter_map(|n| match n {
            GeneralName::URI(u) => Some((*u).to_string()),
            _ => None,
        })
        .collect()
}

/// Verifies the server's chain against the test CA but not its name: Pillion's certificates carry
/// a SPIFFE URI SAN and no DNS name for 127.0.0.1.
#[derive(Debug)]
struct ChainOnly(Arc<WebPkiServerVerifier>);

impl ServerCertVerifier for ChainOnly {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        match self
            .0
            .verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
        {
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_verify_schemes()
    }
}

/// A rustls client (ring provider) trusting one CA, optionally presenting a client certificate.
#[derive(Clone)]
pub struct TlsClient {
    config: Arc<ClientConfig>,
}

/// A TLS connection the test made, with what the server presented.
pub struct TlsConn {
    pub stream: TlsStream<TcpStream>,
}

// === impl TlsClient ===

impl TlsClient {
    /// Trusts `ca`; presents `identity` when given; offers ALPN `http/1.1`.
    pub fn new(ca: &Path, identity: Option<&Issued>) -> Self {
        Self::with_alpn(ca, identity, &[b"http/1.1"])
    }

    /// Like [`TlsClient::new`] with the given ALPN protocols (empty: no ALPN extension).
    pub fn with_alpn(ca: &Path, identity: Option<&Issued>, alpn: &[&[u8]]) -> Self {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut roots = RootCertStore::empty();
        for c in read_certs(ca) {
            roots.add(c).expect("add CA");
        }
        let webpki = WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider.clone())
            .build()
            .expect("server verifier");
        let builder = ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("protocol versions")
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(ChainOnly(webpki)));
        let mut config = match identity {
            Some(id) => {
                let key = PrivateKeyDer::from_pem_file(&id.key)
                    .unwrap_or_else(|e| panic!("key {}: {e}", id.key.display()));
                builder
                    .with_client_auth_cert(read_certs(&id.cert), key)
                    .expect("client certificate")
            }
            None => builder.with_no_client_auth(),
        };
        config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        // NOTE: no session resumption, so every connection is a full handshake that shows the
        // certificate the server presents now.
        config.resumption = rustls::client::Resumption::disabled();
        Self {
            config: Arc::new(config),
        }
    }

    /// TCP connect and TLS handshake (SNI `localhost`).
    pub async fn connect(&self, addr: SocketAddr) -> io::Result<TlsConn> {
        let fut = async {
            let tcp = TcpStream::connect(addr).await?;
            let connector = tokio_rustls::TlsConnector::from(self.config.clone());
            let name = ServerName::try_from("localhost").expect("server name");
            let stream = connector.connect(name, tcp).await?;
            Ok(TlsConn { stream })
        };
        crate::within("a TLS handshake", fut).await
    }

    /// One HTTP/1.1 request on a new TLS connection; `Err` describes where it failed
    /// (connect, handshake, or no response).
    pub async fn request(&self, addr: SocketAddr, req: Request<Body>) -> Result<Reply, String> {
        let conn = self
            .connect(addr)
            .await
            .map_err(|e| format!("TLS handshake: {e}"))?;
        conn.h1_request(req).await
    }

    /// GET `path` (origin form, sent as-is) with Host `svc` on a new TLS connection.
    pub async fn get(&self, addr: SocketAddr, path: &str) -> Result<Reply, String> {
        self.request(addr, get_req(path, &[])).await
    }

    /// The leaf certificate a new handshake with `addr` is shown.
    pub async fn server_leaf(&self, addr: SocketAddr) -> io::Result<Vec<u8>> {
        let conn = self.connect(addr).await?;
        Ok(conn.peer_leaf())
    }
}

/// A GET request for origin-form `path` with Host `svc` and the extra headers.
pub fn get_req(path: &str, headers: &[(&str, &str)]) -> Request<Body> {
    let mut req = get(path);
    req.headers_mut()
        .insert(http::header::HOST, http::HeaderValue::from_static("svc"));
    for (k, v) in headers {
        req.headers_mut().append(
            http::HeaderName::from_bytes(k.as_bytes()).expect("header name"),
            http::HeaderValue::from_str(v).expect("header value"),
        );
    }
    req
}

// === impl TlsConn ===

impl TlsConn {
    /// The DER of the server's leaf certificate.
    pub fn peer_leaf(&self) -> Vec<u8> {
        self.stream
            .get_ref()
            .1
            .peer_certificates()
            .and_then(|c| c.first())
            .expect("server presented a certificate")
            .to_vec()
    }

    /// The ALPN protocol the server selected.
    pub fn alpn(&self) -> Option<Vec<u8>> {
        self.stream.get_ref().1.alpn_protocol().map(<[u8]>::to_vec)
    }

    /// The negotiated TLS version.
    pub fn version(&self) -> Option<rustls::ProtocolVersion> {
        self.stream.get_ref().1.protocol_version()
    }

    /// Sends one HTTP/1.1 request over this connection and reads the whole response.
    pub async fn h1_request(self, req: Request<Body>) -> Result<Reply, String> {
        let fut = async move {
            let (mut sender, conn) = http1::handshake::<_, Body>(TokioIo::new(self.stream))
                .await
                .map_err(|e| format!("HTTP/1.1 handshake: {e}"))?;
            let conn = tokio::spawn(conn);
            let resp = sender
                .send_request(req)
                .await
                .map_err(|e| format!("HTTP/1.1 request: {e:?}"))?;
            let reply = Reply::read(resp).await;
            conn.abort();
            Ok(reply)
        };
        crate::within("an HTTP/1.1 request over TLS", fut).await
    }

    /// Sends one HTTP/2 request over this connection (ALPN `h2` must have been selected).
    pub async fn h2_request(self, mut req: Request<Body>) -> Result<Reply, String> {
        *req.version_mut() = Version::HTTP_2;
        // HTTP/2 needs an absolute URI for :scheme and :authority.
        let path = req
            .uri()
            .path_and_query()
            .map_or("/", |p| p.as_str())
            .to_string();
        *req.uri_mut() = format!("https://svc{path}").parse().expect("uri");
        req.headers_mut().remove(http::header::HOST);
        let fut = async move {
            let (mut sender, conn) =
                http2::handshake::<_, _, Body>(TokioExecutor::new(), TokioIo::new(self.stream))
                    .await
                    .map_err(|e| format!("HTTP/2 handshake: {e}"))?;
            let conn = tokio::spawn(conn);
            let resp = sender
                .send_request(req)
                .await
                .map_err(|e| format!("HTTP/2 request: {e:?}"))?;
            let reply = Reply::read(resp).await;
            conn.abort();
            Ok(reply)
        };
        crate::within("an HTTP/2 request over TLS", fut).await
    }
}

/// Writes `payload`, half-closes, and reads until the peer closes: the bytes that came back, or
/// the error that ended the read (bytes read before it are kept in the `Err` too).
pub async fn roundtrip<S>(stream: &mut S, payload: &[u8]) -> Result<Vec<u8>, (Vec<u8>, String)>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let fut = async {
        if let Err(e) = stream.write_all(payload).await {
            return Err((Vec::new(), format!("write: {e}")));
        }
        if let Err(e) = stream.shutdown().await {
            return Err((Vec::new(), format!("shutdown: {e}")));
        }
        let mut back = Vec::new();
        match stream.read_to_end(&mut back).await {
            Ok(_) => Ok(back),
            Err(e) => Err((back, format!("read: {e}"))),
        }
    };
    crate::within_for(STEP, "a TCP round trip", fut).await
}

/// Reads from `stream` until EOF or an error, returning what was read and how it ended.
pub async fn read_until_closed<S>(stream: &mut S) -> (Vec<u8>, Option<io::Error>)
where
    S: tokio::io::AsyncRead + Unpin,
{
    let fut = async {
        let mut got = Vec::new();
        let mut buf = [0u8; 4096];
        loop {
            match stream.read(&mut buf).await {
                Ok(0) => return (got, None),
                Ok(n) => got.extend_from_slice(&buf[..n]),
                Err(e) => return (got, Some(e)),
            }
        }
    };
    crate::within("the peer to close the connection", fut).await
}

/// A Kubernetes-style projected secret directory: the files the proxy is configured with are
/// symlinks `DIR/NAME -> ..data/NAME`, `..data` is a symlink to a timestamped directory, and
/// an update writes a new timestamped directory and renames a new `..data` symlink over the old
/// one (one atomic step), then removes the old directory, as the kubelet's atomic writer does.
pub struct SecretDir {
    dir: PathBuf,
    current: Option<String>,
}

// === impl SecretDir ===

impl SecretDir {
    /// Creates `dir` holding `files` (name, contents to copy from) under `..<version>`.
    pub fn create(dir: &Path, version: &str, files: &[(&str, &Path)]) -> Self {
        std::fs::create_dir_all(dir).expect("create secret dir");
        let mut me = Self {
            dir: dir.to_path_buf(),
            current: None,
        };
        me.update(version, files);
        for (name, _) in files {
            std::os::unix::fs::symlink(format!("..data/{name}"), dir.join(name))
                .expect("symlink NAME -> ..data/NAME");
        }
        me
    }

    /// The path the proxy should be configured with for `name`.
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    /// Writes the files into `..<version>`, swaps `..data` to it atomically, removes the old
    /// version's directory.
    pub fn update(&mut self, version: &str, files: &[(&str, &Path)]) {
        let versioned = format!("..{version}");
        let vdir = self.dir.join(&versioned);
        std::fs::create_dir(&vdir).expect("create version dir");
        for (name, src) in files {
            std::fs::copy(src, vdir.join(name)).expect("copy into version dir");
        }
        let tmp = self.dir.join("..data_tmp");
        std::os::unix::fs::symlink(&versioned, &tmp).expect("symlink ..data_tmp");
        std::fs::rename(&tmp, self.dir.join("..data")).expect("rename ..data_tmp over ..data");
        if let Some(old) = self.current.replace(versioned) {
            std::fs::remove_dir_all(self.dir.join(old)).expect("remove old version dir");
        }
    }
}

/// An in-process HTTP/1.1-over-mTLS upstream on 127.0.0.1:0: requires a client certificate
/// chaining to `ca`, records the client's leaf certificate of every connection, and closes each
/// connection after one response, so every request the proxy sends needs a new handshake.
pub struct TlsUpstream {
    addr: SocketAddr,
    leaves: Arc<std::sync::Mutex<Vec<Vec<u8>>>>,
    task: tokio::task::JoinHandle<()>,
}

// === impl TlsUpstream ===

impl TlsUpstream {
    pub async fn start(ca: &Path, server: &Issued) -> Self {
        use hyper::server::conn::http1 as server_http1;
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut roots = RootCertStore::empty();
        for c in read_certs(ca) {
            roots.add(c).expect("add CA");
        }
        let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
            Arc::new(roots),
            provider.clone(),
        )
        .build()
        .expect("client verifier");
        let key = PrivateKeyDer::from_pem_file(&server.key).expect("server key");
        let mut config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("versions")
            .with_client_cert_verifier(verifier)
            .with_single_cert(read_certs(&server.cert), key)
            .expect("server config");
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("local_addr");
        let leaves = Arc::new(std::sync::Mutex::new(Vec::new()));
        let seen = leaves.clone();
        let task = tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let (acceptor, seen) = (acceptor.clone(), seen.clone());
                tokio::spawn(async move {
                    let Ok(tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let leaf = tls
                        .get_ref()
                        .1
                        .peer_certificates()
                        .and_then(|c| c.first())
                        .map(|c| c.to_vec())
                        .unwrap_or_default();
                    seen.lock().expect("lock").push(leaf);
                    let svc = hyper::service::service_fn(|_req| async {
                        Ok::<_, std::convert::Infallible>(
                            http::Response::builder()
                                .header(http::header::CONNECTION, "close")
                                .body(crate::client::full("tls upstream"))
                                .expect("response"),
                        )
                    });
                    let _ = server_http1::Builder::new()
                        .serve_connection(TokioIo::new(tls), svc)
                        .await;
                });
            }
        });
        Self { addr, leaves, task }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The client leaf certificates of every accepted connection, in order.
    pub fn client_leaves(&self) -> Vec<Vec<u8>> {
        self.leaves.lock().expect("lock").clone()
    }
}

impl Drop for TlsUpstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}
