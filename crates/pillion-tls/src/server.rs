//! TLS termination on a listener: mutual TLS with client certificates verified against the
//! configured bundles, the peer's identity, and certificate reload.

use crate::{
    error::TlsError,
    identity,
    material::{self, FileRead},
    metrics::{FileMetrics, HandshakeMetrics, Side, TlsMetrics},
    provider,
    reload::{self, Reload, Watcher},
    PROTOCOL_VERSIONS, SERVER_ALPN,
};
use arc_swap::ArcSwap;
use pillion_config::ListenerTls;
use rustls::{server::WebPkiClientVerifier, ServerConfig, ServerConnection};
use std::{path::PathBuf, sync::Arc};
use tokio::io::{AsyncRead, AsyncWrite};
use tracing::debug;

/// A listener's TLS: the current `ServerConfig` (swapped on reload) and its metrics.
///
/// Client certificates are required and must chain to one of the `ca` bundles. ALPN offers
/// `h2` then `http/1.1`. The files are reloaded as [`crate::reload`] describes; handshakes
/// started after a reload use the new files, open connections are untouched.
#[derive(Debug)]
pub struct ServerTls {
    name: Arc<str>,
    cert: PathBuf,
    key: PathBuf,
    ca: Vec<PathBuf>,
    config: ArcSwap<ServerConfig>,
    handshakes: HandshakeMetrics,
    files: FileMetrics,
    _watcher: Option<Watcher>,
}

/// What a completed handshake says about the client.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PeerInfo {
    /// The client certificate's SPIFFE ID (URI SAN), else its first well-formed DNS SAN.
    pub identity: Option<Arc<str>>,
    /// Whether ALPN selected `h2`.
    pub alpn_h2: bool,
}

// === impl ServerTls ===

impl ServerTls {
    /// Loads the files and builds the config; starts the reload watcher when a tokio runtime is
    /// running and `reload_interval` is not zero.
    ///
    /// `name` is the listener's name (logs and the `name` metric label).
    pub fn new(name: &str, cfg: &ListenerTls, metrics: &TlsMetrics) -> Result<Arc<Self>, TlsError> {
        if cfg.ca.is_empty() {
            return Err(TlsError::Config(format!(
                "listener `{name}`: TLS needs at least one `ca` bundle to verify client certificates"
            )));
        }
        let paths = watched_paths(cfg);
        let reads = material::read_files(&paths);
        let files = metrics.files(name, Side::Server, true);
        let config = build(&cfg.cert, &cfg.key, &cfg.ca, &reads, &files)?;
        Ok(Arc::new_cyclic(|weak| Self {
            name: name.into(),
            cert: cfg.cert.clone(),
            key: cfg.key.clone(),
            ca: cfg.ca.clone(),
            config: ArcSwap::from_pointee(config),
            handshakes: metrics.handshakes(name, Side::Server),
            files,
            _watcher: reload::spawn(weak.clone(), paths, reads, cfg.reload_interval.0),
        }))
    }

    /// The listener's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The config new handshakes use now.
    pub fn config(&self) -> Arc<ServerConfig> {
        self.config.load_full()
    }

    /// Runs the server handshake on `io`, counting it, and reports the client's identity.
    ///
    /// No timeout is applied here: wrap the call in one.
    pub async fn accept<IO>(
        &self,
        io: IO,
    ) -> Result<(tokio_rustls::server::TlsStream<IO>, PeerInfo), TlsError>
    where
        IO: AsyncRead + AsyncWrite + Unpin,
    {
        let acceptor = tokio_rustls::TlsAcceptor::from(self.config.load_full());
        match acceptor.accept(io).await {
            Ok(stream) => {
                self.handshakes.ok();
                let peer = PeerInfo::from_connection(stream.get_ref().1);
                Ok((stream, peer))
            }
            Err(e) => {
                let err = TlsError::handshake(e);
                if let Some(reason) = err.handshake_failure() {
                    self.handshakes.failed(reason);
                }
                debug!(listener = %self.name, error = %err, "TLS handshake failed");
                Err(err)
            }
        }
    }
}

impl Reload for ServerTls {
    fn reload(&self, files: &[FileRead]) -> Result<(), TlsError> {
        let config = build(&self.cert, &self.key, &self.ca, files, &self.files)?;
        self.config.store(Arc::new(config));
        Ok(())
    }

    fn file_metrics(&self) -> &FileMetrics {
        &self.files
    }

    fn name(&self) -> &str {
        &self.name
    }

    fn side(&self) -> Side {
        Side::Server
    }
}

/// The files a listener watches, in the order [`build`] expects: cert, key, then the CAs.
fn watched_paths(cfg: &ListenerTls) -> Vec<PathBuf> {
    let mut paths = vec![cfg.cert.clone(), cfg.key.clone()];
    paths.extend(cfg.ca.iter().cloned());
    paths
}

fn build(
    cert: &std::path::Path,
    key: &std::path::Path,
    ca: &[PathBuf],
    reads: &[FileRead],
    metrics: &FileMetrics,
) -> Result<ServerConfig, TlsError> {
    let [cert_read, key_read, ca_reads @ ..] = reads else {
        return Err(TlsError::Config("internal: missing file contents".into()));
    };
    let id = material::identity(cert, cert_read, key, key_read)?;
    let roots = material::roots(ca, ca_reads)?;
    let verifier = WebPkiClientVerifier::builder_with_provider(roots.store.clone(), provider())
        .build()
        .map_err(|e| TlsError::Config(format!("cannot verify client certificates: {e}")))?;
    let mut config = ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(PROTOCOL_VERSIONS)
        .map_err(|e| TlsError::Config(e.to_string()))?
        .with_client_cert_verifier(verifier)
        .with_single_cert(id.chain, id.key)
        .map_err(|e| TlsError::file(cert, e))?;
    config.alpn_protocols = SERVER_ALPN.iter().map(|p| p.to_vec()).collect();
    metrics.set_expiry(Some(id.not_after), roots.first_expiry);
    Ok(config)
}

// === impl PeerInfo ===

impl PeerInfo {
    fn from_connection(conn: &ServerConnection) -> Self {
        Self {
            identity: conn
                .peer_certificates()
                .and_then(|certs| certs.first())
                .and_then(|leaf| identity::peer_identity(leaf)),
            alpn_h2: conn.alpn_protocol() == Some(b"h2"),
        }
    }
}
