//! TLS origination from a cluster: the workload's client certificate, the trust bundle, and
//! server verification by SPIFFE identity (or by DNS name), with certificate reload.

use crate::{
    error::{IdentityMismatch, TlsError},
    identity::{self, IdentityPattern},
    material::{self, FileRead},
    metrics::{FileMetrics, HandshakeMetrics, Side, TlsMetrics},
    provider,
    reload::{self, Reload, Watcher},
    PROTOCOL_VERSIONS,
};
use arc_swap::ArcSwap;
use pillion_config::ClusterTls;
use rustls::{
    client::{
        danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier},
        WebPkiServerVerifier,
    },
    crypto::CryptoProvider,
    pki_types::{CertificateDer, ServerName, UnixTime},
    server::ParsedCertificate,
    CertificateError, ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme,
};
use std::{net::IpAddr, path::PathBuf, sync::Arc};
use tokio::io::{AsyncRead, AsyncWrite};
use tracing::debug;

/// A cluster's TLS: the current `ClientConfig` (swapped on reload) and how to name the server.
///
/// The server's chain must verify against the `ca` bundles. With `identities`, the server
/// certificate's SPIFFE ID must match one of them and the hostname is not checked; without,
/// the certificate must be valid for `sni` (or the endpoint's IP).
#[derive(Debug)]
pub struct ClientTls {
    name: Arc<str>,
    ca: Vec<PathBuf>,
    cert_key: Option<(PathBuf, PathBuf)>,
    sni: Option<ServerName<'static>>,
    verify: Verify,
    /// The config of the default version (whether it offers `h2`).
    config: (bool, ArcSwap<ClientConfig>),
    /// The config of the other version, for a cluster that speaks both.
    ///
    /// NOTE: kept here rather than in a second `ClientTls`, so one watcher reloads both and its
    /// reloads are counted once.
    other: Option<(bool, ArcSwap<ClientConfig>)>,
    handshakes: HandshakeMetrics,
    files: FileMetrics,
    _watcher: Option<Watcher>,
}

/// How the server certificate is checked beyond its chain.
#[derive(Debug, Clone)]
enum Verify {
    Hostname,
    Identities {
        patterns: Arc<[IdentityPattern]>,
        expected: Arc<[String]>,
    },
}

/// Verifies the chain like webpki but checks the SPIFFE ID instead of the hostname.
#[derive(Debug)]
struct SpiffeVerifier {
    webpki: Arc<WebPkiServerVerifier>,
    roots: Arc<RootCertStore>,
    provider: Arc<CryptoProvider>,
    patterns: Arc<[IdentityPattern]>,
    expected: Arc<[String]>,
}

// === impl ClientTls ===

impl ClientTls {
    /// Loads the files and builds the config; starts the reload watcher when a tokio runtime is
    /// running and `reload_interval` is not zero.
    ///
    /// `name` is the cluster's name (logs and the `name` metric label). ALPN offers `h2` when
    /// `h2` is set, else `http/1.1`.
    pub fn new(
        name: &str,
        cfg: &ClusterTls,
        h2: bool,
        metrics: &TlsMetrics,
    ) -> Result<Arc<Self>, TlsError> {
        Self::speaking(name, cfg, &[h2], metrics)
    }

    /// Like [`ClientTls::new`], with a config for each version in `h2s` (ALPN `h2` for `true`,
    /// `http/1.1` for `false`) over the same files and watcher; the first is the default.
    pub fn speaking(
        name: &str,
        cfg: &ClusterTls,
        h2s: &[bool],
        metrics: &TlsMetrics,
    ) -> Result<Arc<Self>, TlsError> {
        let err = |msg: String| TlsError::Config(format!("cluster `{name}`: {msg}"));
        if cfg.ca.is_empty() {
            return Err(err(
                "TLS needs at least one `ca` bundle to verify servers".into()
            ));
        }
        let cert_key = match (&cfg.cert, &cfg.key) {
            (Some(c), Some(k)) => Some((c.clone(), k.clone())),
            (None, None) => None,
            _ => return Err(err("TLS `cert` and `key` go together".into())),
        };
        let sni = cfg
            .sni
            .as_deref()
            .map(|s| {
                ServerName::try_from(s.to_owned())
                    .map_err(|_| err(format!("`sni: {s}` is not a valid DNS name or IP address")))
            })
            .transpose()?;
        let verify = if cfg.identities.is_empty() {
            Verify::Hostname
        } else {
            let patterns = cfg
                .identities
                .iter()
                .map(|s| IdentityPattern::parse(s))
                .collect::<Result<Vec<_>, _>>()
                .map_err(err)?;
            Verify::Identities {
                patterns: patterns.into(),
                expected: cfg.identities.clone().into(),
            }
        };
        let (default, other) = match h2s {
            [] => (false, None),
            [h2, rest @ ..] => (*h2, rest.iter().copied().find(|v| v != h2)),
        };
        let paths = watched_paths(&cfg.ca, cert_key.as_ref());
        let reads = material::read_files(&paths);
        let files = metrics.files(name, Side::Client, cert_key.is_some());
        let config = build(&cfg.ca, cert_key.as_ref(), &verify, &reads, &files)?;
        let version = |h2: bool| (h2, ArcSwap::from_pointee(with_alpn(&config, h2)));
        let (config, other) = (version(default), other.map(version));
        Ok(Arc::new_cyclic(|weak| Self {
            name: name.into(),
            ca: cfg.ca.clone(),
            cert_key,
            sni,
            verify,
            config,
            other,
            handshakes: metrics.handshakes(name, Side::Client),
            files,
            _watcher: reload::spawn(weak.clone(), paths, reads, cfg.reload_interval.0),
        }))
    }

    /// The cluster's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The config new connections use now (the default version's).
    pub fn config(&self) -> Arc<ClientConfig> {
        self.config_for(None)
    }

    /// The config for `h2` (the default's when the cluster does not speak that version).
    fn config_for(&self, h2: Option<bool>) -> Arc<ClientConfig> {
        match (&self.other, h2) {
            (Some((v, other)), Some(h2)) if *v == h2 => other.load_full(),
            _ => self.config.1.load_full(),
        }
    }

    /// The name sent as SNI (and verified, without `identities`) for an endpoint at `ip`.
    pub fn server_name(&self, ip: IpAddr) -> ServerName<'static> {
        self.sni.clone().unwrap_or(ServerName::IpAddress(ip.into()))
    }

    /// Runs the client handshake of an opaque (TCP) relay on a connected stream, counting it,
    /// offering no ALPN. `sni_fallback` (the endpoint's IP) names the server when no `sni` is
    /// configured.
    ///
    /// No timeout is applied here: wrap the call in one.
    pub async fn connect<IO>(
        &self,
        io: IO,
        sni_fallback: IpAddr,
    ) -> Result<tokio_rustls::client::TlsStream<IO>, TlsError>
    where
        IO: AsyncRead + AsyncWrite + Unpin,
    {
        // NOTE: no ALPN: these are opaque bytes, and a peer that trusts ALPN (an `auto` listener)
        // must not read them as HTTP/2 or HTTP/1.1.
        let mut config = (*self.config()).clone();
        config.alpn_protocols.clear();
        self.handshake(Arc::new(config), io, sni_fallback).await
    }

    /// [`ClientTls::connect`] offering the ALPN of `h2` (`None`: the default version's).
    pub async fn connect_as<IO>(
        &self,
        io: IO,
        sni_fallback: IpAddr,
        h2: Option<bool>,
    ) -> Result<tokio_rustls::client::TlsStream<IO>, TlsError>
    where
        IO: AsyncRead + AsyncWrite + Unpin,
    {
        self.handshake(self.config_for(h2), io, sni_fallback).await
    }

    async fn handshake<IO>(
        &self,
        config: Arc<ClientConfig>,
        io: IO,
        sni_fallback: IpAddr,
    ) -> Result<tokio_rustls::client::TlsStream<IO>, TlsError>
    where
        IO: AsyncRead + AsyncWrite + Unpin,
    {
        let connector = tokio_rustls::TlsConnector::from(config);
        match connector.connect(self.server_name(sni_fallback), io).await {
            Ok(stream) => {
                self.handshakes.ok();
                Ok(stream)
            }
            Err(e) => {
                let err = TlsError::handshake(e);
                if let Some(reason) = err.handshake_failure() {
                    self.handshakes.failed(reason);
                }
                debug!(cluster = %self.name, error = %err, "TLS handshake failed");
                Err(err)
            }
        }
    }
}

impl Reload for ClientTls {
    fn reload(&self, files: &[FileRead]) -> Result<(), TlsError> {
        let config = build(
            &self.ca,
            self.cert_key.as_ref(),
            &self.verify,
            files,
            &self.files,
        )?;
        for (h2, current) in std::iter::once(&self.config).chain(&self.other) {
            current.store(Arc::new(with_alpn(&config, *h2)));
        }
        Ok(())
    }

    fn file_metrics(&self) -> &FileMetrics {
        &self.files
    }

    fn name(&self) -> &str {
        &self.name
    }

    fn side(&self) -> Side {
        Side::Client
    }
}

/// The files a cluster watches, in the order [`build`] expects: the CAs, then cert and key.
fn watched_paths(ca: &[PathBuf], cert_key: Option<&(PathBuf, PathBuf)>) -> Vec<PathBuf> {
    let mut paths = ca.to_vec();
    if let Some((c, k)) = cert_key {
        paths.push(c.clone());
        paths.push(k.clone());
    }
    paths
}

/// `config` offering `h2` or `http/1.1` by ALPN.
fn with_alpn(config: &ClientConfig, h2: bool) -> ClientConfig {
    let mut config = config.clone();
    config.alpn_protocols = vec![if h2 {
        b"h2".to_vec()
    } else {
        b"http/1.1".to_vec()
    }];
    config
}

fn build(
    ca: &[PathBuf],
    cert_key: Option<&(PathBuf, PathBuf)>,
    verify: &Verify,
    reads: &[FileRead],
    metrics: &FileMetrics,
) -> Result<ClientConfig, TlsError> {
    let (ca_reads, rest) = reads.split_at(ca.len().min(reads.len()));
    let roots = material::roots(ca, ca_reads)?;
    let id = match (cert_key, rest) {
        (Some((cert, key)), [cert_read, key_read]) => {
            Some(material::identity(cert, cert_read, key, key_read)?)
        }
        (None, []) => None,
        _ => return Err(TlsError::Config("internal: missing file contents".into())),
    };
    let webpki = WebPkiServerVerifier::builder_with_provider(roots.store.clone(), provider())
        .build()
        .map_err(|e| TlsError::Config(format!("cannot verify server certificates: {e}")))?;
    let builder = ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(PROTOCOL_VERSIONS)
        .map_err(|e| TlsError::Config(e.to_string()))?;
    let builder = match verify {
        Verify::Hostname => builder.with_webpki_verifier(webpki),
        Verify::Identities { patterns, expected } => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(SpiffeVerifier {
                webpki,
                roots: roots.store.clone(),
                provider: provider(),
                patterns: patterns.clone(),
                expected: expected.clone(),
            })),
    };
    let not_after = id.as_ref().map(|id| id.not_after);
    let config = match (id, cert_key) {
        (Some(id), Some((cert, _))) => builder
            .with_client_auth_cert(id.chain, id.key)
            .map_err(|e| TlsError::file(cert, e))?,
        _ => builder.with_no_client_auth(),
    };
    metrics.set_expiry(not_after, roots.first_expiry);
    Ok(config)
}

// === impl SpiffeVerifier ===

impl SpiffeVerifier {
    fn mismatch(&self, presented: Option<String>) -> rustls::Error {
        rustls::Error::InvalidCertificate(CertificateError::Other(rustls::OtherError(Arc::new(
            IdentityMismatch {
                presented,
                expected: self.expected.to_vec(),
            },
        ))))
    }
}

impl ServerCertVerifier for SpiffeVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        // The chain (signatures, validity, serverAuth usage) as webpki checks it; the
        // hostname check is replaced by the identity check below.
        let cert = ParsedCertificate::try_from(end_entity)?;
        rustls::client::verify_server_cert_signed_by_trust_anchor(
            &cert,
            &self.roots,
            intermediates,
            now,
            self.provider.signature_verification_algorithms.all,
        )?;
        let presented = identity::parse_leaf(end_entity)
            .map_err(|_| rustls::Error::InvalidCertificate(CertificateError::BadEncoding))?
            .spiffe_id;
        match &presented {
            Some(id) if self.patterns.iter().any(|p| p.matches(id)) => {
                Ok(ServerCertVerified::assertion())
            }
            _ => Err(self.mismatch(presented)),
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.webpki.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.webpki.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.webpki.supported_verify_schemes()
    }
}
