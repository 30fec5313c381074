//! Reading certificate, key and CA files, and turning their bytes into rustls types.
//!
//! NOTE: files are read once per (re)load and parsed from those bytes, so what the watcher
//! compared is exactly what gets loaded.

use crate::{error::TlsError, identity, provider};
use rustls::{
    pki_types::{pem::PemObject, CertificateDer, PrivateKeyDer},
    sign::CertifiedKey,
    RootCertStore,
};
use std::{
    path::{Path, PathBuf},
    sync::Arc,
};

/// The contents of one file, or why it could not be read.
pub(crate) type FileRead = Result<Arc<[u8]>, String>;

/// The workload's own certificate chain and private key, checked to belong together.
pub(crate) struct Identity {
    pub(crate) chain: Vec<CertificateDer<'static>>,
    pub(crate) key: PrivateKeyDer<'static>,
    /// When the leaf expires (Unix seconds).
    pub(crate) not_after: i64,
}

/// A trust bundle built from one or more CA files.
pub(crate) struct Roots {
    pub(crate) store: Arc<RootCertStore>,
    /// When the first CA of the bundle expires (Unix seconds).
    pub(crate) first_expiry: Option<i64>,
}

/// Reads every file (blocking; used when a config is first built).
pub(crate) fn read_files(paths: &[PathBuf]) -> Vec<FileRead> {
    paths
        .iter()
        .map(|p| std::fs::read(p).map(Arc::from).map_err(|e| e.to_string()))
        .collect()
}

/// Reads every file without blocking the runtime (used by the reload watcher).
pub(crate) async fn read_files_async(paths: &[PathBuf]) -> Vec<FileRead> {
    let mut out = Vec::with_capacity(paths.len());
    for p in paths {
        out.push(
            tokio::fs::read(p)
                .await
                .map(Arc::from)
                .map_err(|e| e.to_string()),
        );
    }
    out
}

fn contents<'a>(path: &Path, read: &'a FileRead) -> Result<&'a [u8], TlsError> {
    match read {
        Ok(bytes) => Ok(bytes),
        Err(e) => Err(TlsError::file(path, format!("cannot read: {e}"))),
    }
}

/// Parses a PEM certificate chain (leaf first).
pub(crate) fn chain(
    path: &Path,
    read: &FileRead,
) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let bytes = contents(path, read)?;
    let chain = CertificateDer::pem_slice_iter(bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError::file(path, format!("invalid PEM: {e}")))?;
    if chain.is_empty() {
        return Err(TlsError::file(
            path,
            "no certificate found (expected PEM `CERTIFICATE` blocks)",
        ));
    }
    Ok(chain)
}

/// Parses a PEM private key (PKCS#8, PKCS#1 or SEC1).
pub(crate) fn key(path: &Path, read: &FileRead) -> Result<PrivateKeyDer<'static>, TlsError> {
    let bytes = contents(path, read)?;
    PrivateKeyDer::from_pem_slice(bytes).map_err(|e| match e {
        rustls::pki_types::pem::Error::NoItemsFound => TlsError::file(
            path,
            "no private key found (expected a PEM `PRIVATE KEY`, `RSA PRIVATE KEY` or `EC PRIVATE KEY` block)",
        ),
        e => TlsError::file(path, format!("invalid PEM: {e}")),
    })
}

/// Loads a certificate chain and its key, checking that the key matches the leaf.
pub(crate) fn identity(
    cert_path: &Path,
    cert: &FileRead,
    key_path: &Path,
    key_read: &FileRead,
) -> Result<Identity, TlsError> {
    let chain = chain(cert_path, cert)?;
    let key = key(key_path, key_read)?;
    let leaf = chain
        .first()
        .ok_or_else(|| TlsError::file(cert_path, "no certificate found"))?;
    let info = identity::parse_leaf(leaf).map_err(|e| TlsError::file(cert_path, e))?;
    let signing_key = provider()
        .key_provider
        .load_private_key(key.clone_key())
        .map_err(|e| TlsError::file(key_path, format!("unusable private key: {e}")))?;
    match CertifiedKey::new(chain.clone(), signing_key).keys_match() {
        // NOTE: `Unknown` means the key type cannot tell its public key; rustls would then
        // fail the first handshake, which is the best that can be done.
        Ok(()) | Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::Unknown)) => {}
        Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::KeyMismatch)) => {
            return Err(TlsError::file(
                key_path,
                format!(
                    "private key does not match the certificate in {}",
                    cert_path.display()
                ),
            ))
        }
        Err(e) => return Err(TlsError::file(key_path, e)),
    }
    Ok(Identity {
        chain,
        key,
        not_after: info.not_after,
    })
}

/// Builds one trust bundle from several PEM files of CA certificates.
pub(crate) fn roots(paths: &[PathBuf], reads: &[FileRead]) -> Result<Roots, TlsError> {
    let mut store = RootCertStore::empty();
    let mut first_expiry: Option<i64> = None;
    for (path, read) in paths.iter().zip(reads) {
        let certs = chain(path, read)?;
        for (i, der) in certs.into_iter().enumerate() {
            if let Some(t) = identity::not_after(&der) {
                first_expiry = Some(first_expiry.map_or(t, |f| f.min(t)));
            }
            store.add(der).map_err(|e| {
                TlsError::file(path, format!("CA certificate #{} is unusable: {e}", i + 1))
            })?;
        }
    }
    if store.is_empty() {
        return Err(TlsError::Config("no CA certificates configured".into()));
    }
    Ok(Roots {
        store: Arc::new(store),
        first_expiry,
    })
}
