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
            format!(
                "no certificate found (expected PEM `CERTIFICATE` blocks); {}",
                found(bytes, Want::Cert)
            ),
        ));
    }
    Ok(chain)
}

/// What a file was expected to hold.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Want {
    Cert,
    Key,
}

/// What a PEM file holds instead of what was expected, for error messages: its block labels,
/// with a hint for the usual mix-ups.
fn found(bytes: &[u8], want: Want) -> String {
    let labels = pem_labels(bytes);
    if labels.is_empty() {
        return if bytes.iter().all(u8::is_ascii_whitespace) {
            "the file is empty".into()
        } else if bytes.first() == Some(&0x30) {
            "found no PEM blocks: this looks like DER (binary); convert it with `openssl x509 -inform der` or `openssl pkey -inform der`".into()
        } else {
            "found no PEM blocks (`-----BEGIN ...-----` lines)".into()
        };
    }
    let list = labels
        .iter()
        .map(|l| format!("`{l}`"))
        .collect::<Vec<_>>()
        .join(", ");
    let has = |label: &str| labels.iter().any(|l| l == label);
    let any_key = labels.iter().any(|l| l.ends_with("PRIVATE KEY"));
    let hint = match want {
        Want::Key if has("ENCRYPTED PRIVATE KEY") => {
            ": the private key is encrypted, which Pillion does not support; write it out unencrypted (`openssl pkey -in KEY -out KEY.unencrypted`) and keep the file's permissions tight"
        }
        Want::Key if any_key => {
            ": a private key in a format Pillion does not read; convert it to PKCS#8 (`openssl pkcs8 -topk8 -nocrypt -in KEY`)"
        }
        Want::Key if has("CERTIFICATE") => {
            ": a certificate, where a private key is expected (are `cert` and `key` swapped?)"
        }
        Want::Cert if any_key => {
            ": a private key, where a certificate is expected (are `cert` and `key` swapped?)"
        }
        _ => "",
    };
    format!("found {list}{hint}")
}

/// The labels of the `-----BEGIN LABEL-----` lines of a PEM file, in order, without repeats.
fn pem_labels(bytes: &[u8]) -> Vec<String> {
    let text = String::from_utf8_lossy(bytes);
    let mut labels: Vec<String> = Vec::new();
    for line in text.lines() {
        let label = line
            .trim()
            .strip_prefix("-----BEGIN ")
            .and_then(|l| l.strip_suffix("-----"));
        if let Some(label) = label {
            if !labels.iter().any(|l| l == label) {
                labels.push(label.to_owned());
            }
        }
    }
    labels
}

/// Refuses a leaf certificate outside its validity period: serving it would fail every
/// handshake with a peer that checks dates, and loading it is never what was meant.
fn check_validity(path: &Path, info: &identity::LeafInfo) -> Result<(), TlsError> {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX));
    if now > info.not_after {
        return Err(TlsError::file(
            path,
            format!(
                "the certificate expired at {} (notAfter); issue a new one",
                utc(info.not_after)
            ),
        ));
    }
    if now < info.not_before {
        return Err(TlsError::file(
            path,
            format!(
                "the certificate is not valid until {} (notBefore); check the clock or the issuer",
                utc(info.not_before)
            ),
        ));
    }
    Ok(())
}

/// Unix seconds as `YYYY-MM-DD HH:MM:SS UTC`.
fn utc(ts: i64) -> String {
    match time::OffsetDateTime::from_unix_timestamp(ts) {
        Ok(t) => format!(
            "{} {:02}:{:02}:{:02} UTC",
            t.date(),
            t.hour(),
            t.minute(),
            t.second()
        ),
        Err(_) => format!("{ts} (Unix time)"),
    }
}

/// Parses a PEM private key (PKCS#8, PKCS#1 or SEC1).
pub(crate) fn key(path: &Path, read: &FileRead) -> Result<PrivateKeyDer<'static>, TlsError> {
    let bytes = contents(path, read)?;
    PrivateKeyDer::from_pem_slice(bytes).map_err(|e| match e {
        rustls::pki_types::pem::Error::NoItemsFound => TlsError::file(
            path,
            format!(
                "no private key found (expected a PEM `PRIVATE KEY`, `RSA PRIVATE KEY` or `EC PRIVATE KEY` block); {}",
                found(bytes, Want::Key)
            ),
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
    check_validity(cert_path, &info)?;
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn what_was_found_instead() {
        let enc =
            b"-----BEGIN ENCRYPTED PRIVATE KEY-----\nMIIB\n-----END ENCRYPTED PRIVATE KEY-----\n";
        let msg = found(enc, Want::Key);
        assert!(msg.contains("`ENCRYPTED PRIVATE KEY`"), "{msg}");
        assert!(msg.contains("encrypted"), "{msg}");
        let cert = b"-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n";
        assert_eq!(
            found(cert, Want::Key),
            "found `CERTIFICATE`: a certificate, where a private key is expected (are `cert` and `key` swapped?)"
        );
        assert!(found(b"hello", Want::Key).contains("no PEM blocks"));
        assert!(found(&[0x30, 0x82, 0x01], Want::Cert).contains("DER"));
        assert!(found(b"  \n", Want::Cert).contains("empty"));
        assert_eq!(
            found(
                b"-----BEGIN X509 CRL-----\n-----END X509 CRL-----\n",
                Want::Cert
            ),
            "found `X509 CRL`"
        );
        let key = b"-----BEGIN PRIVATE KEY-----\nMIIB\n-----END PRIVATE KEY-----\n";
        assert!(found(key, Want::Cert).contains("are `cert` and `key` swapped?"));
        let ssh = b"-----BEGIN OPENSSH PRIVATE KEY-----\nb3Bl\n-----END OPENSSH PRIVATE KEY-----\n";
        assert!(
            found(ssh, Want::Key).contains("PKCS#8"),
            "{}",
            found(ssh, Want::Key)
        );
    }

    #[test]
    fn dates() {
        assert_eq!(utc(0), "1970-01-01 00:00:00 UTC");
        assert_eq!(utc(1_700_000_000), "2023-11-14 22:13:20 UTC");
    }
}
