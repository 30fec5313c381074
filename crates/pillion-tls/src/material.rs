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
use tracing::warn;

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

/// A certificate outside its validity period, and the date that puts it there.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum OutOfDate {
    /// Past its notAfter.
    Expired { not_after: i64 },
    /// Before its notBefore.
    NotYetValid { not_before: i64 },
}

// === impl OutOfDate ===

impl OutOfDate {
    /// Where `now` falls against a validity period (all in Unix seconds); `None` within it.
    /// NOTE: both ends are inclusive, as in X.509 (RFC 5280, section 4.1.2.5).
    fn at(now: i64, not_before: i64, not_after: i64) -> Option<Self> {
        if now > not_after {
            Some(Self::Expired { not_after })
        } else if now < not_before {
            Some(Self::NotYetValid { not_before })
        } else {
            None
        }
    }
}

impl std::fmt::Display for OutOfDate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match *self {
            Self::Expired { not_after } => write!(f, "expired at {} (notAfter)", utc(not_after)),
            Self::NotYetValid { not_before } => {
                write!(f, "is not valid until {} (notBefore)", utc(not_before))
            }
        }
    }
}

/// The wall clock in Unix seconds (0 if it is before 1970).
fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

/// Refuses a leaf certificate outside its validity period: serving it would fail every
/// handshake with a peer that checks dates, and loading it is never what was meant.
fn check_validity(path: &Path, info: &identity::LeafInfo) -> Result<(), TlsError> {
    let Some(when) = OutOfDate::at(unix_now(), info.not_before, info.not_after) else {
        return Ok(());
    };
    let hint = match when {
        OutOfDate::Expired { .. } => "issue a new one",
        OutOfDate::NotYetValid { .. } => "check the clock or the issuer",
    };
    Err(TlsError::file(
        path,
        format!("the certificate {when}; {hint}"),
    ))
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

/// A CA certificate outside its validity period: which file, which certificate, and when.
struct StaleCa<'a> {
    path: &'a Path,
    /// Its place in the file, from 1.
    number: usize,
    subject: String,
    when: OutOfDate,
}

/// Builds one trust bundle from several PEM files of CA certificates.
///
/// Bundles in which no certificate is within its validity period are refused, as an expired
/// leaf is: the current CA never reached the files, what the old one issued has expired with
/// it or soon will, and peers that check the root's dates (OpenSSL does) refuse its chains.
/// Bundles with some out-of-date certificates beside valid ones (a CA rotation under way) are
/// loaded, with a WARN naming each out-of-date one.
///
/// NOTE: rustls does not check a trust anchor's dates, so this proxy's own handshakes would
/// not notice such a bundle; the failures would come later, from what it issued or from peers.
pub(crate) fn roots(paths: &[PathBuf], reads: &[FileRead]) -> Result<Roots, TlsError> {
    let now = unix_now();
    let mut store = RootCertStore::empty();
    let mut first_expiry: Option<i64> = None;
    let mut any_in_date = false;
    let mut stale = Vec::new();
    for (path, read) in paths.iter().zip(reads) {
        let certs = chain(path, read)?;
        for (i, der) in certs.into_iter().enumerate() {
            match identity::parse_ca(&der) {
                Some(ca) => {
                    first_expiry = Some(first_expiry.map_or(ca.not_after, |f| f.min(ca.not_after)));
                    match OutOfDate::at(now, ca.not_before, ca.not_after) {
                        None => any_in_date = true,
                        Some(when) => stale.push(StaleCa {
                            path,
                            number: i + 1,
                            subject: ca.subject,
                            when,
                        }),
                    }
                }
                // NOTE: dates that cannot be read are not held against the bundle; whether
                // rustls can use the certificate at all is decided just below.
                None => any_in_date = true,
            }
            store.add(der).map_err(|e| {
                TlsError::file(path, format!("CA certificate #{} is unusable: {e}", i + 1))
            })?;
        }
    }
    if store.is_empty() {
        return Err(TlsError::Config("no CA certificates configured".into()));
    }
    if !any_in_date {
        return Err(no_ca_in_date(&stale));
    }
    for s in &stale {
        warn!(
            file = %s.path.display(),
            certificate = s.number,
            subject = %s.subject,
            "CA certificate #{} {}; loading the bundle for its other, valid certificates",
            s.number,
            s.when
        );
    }
    Ok(Roots {
        store: Arc::new(store),
        first_expiry,
    })
}

/// The error for a bundle with no certificate within its validity period: every one of them,
/// with its date. Named by its file when it is one file (as it usually is).
fn no_ca_in_date(stale: &[StaleCa<'_>]) -> TlsError {
    let one_file = stale
        .first()
        .map(|s| s.path)
        .filter(|p| stale.iter().all(|s| s.path == *p));
    let list = stale
        .iter()
        .map(|s| {
            let file = match one_file {
                Some(_) => String::new(),
                None => format!("{}: ", s.path.display()),
            };
            let subject = if s.subject.is_empty() {
                String::new()
            } else {
                format!(" ({})", s.subject)
            };
            format!("{file}certificate #{}{subject} {}", s.number, s.when)
        })
        .collect::<Vec<_>>()
        .join("; ");
    let reason = format!(
        "no CA certificate is within its validity period: {list}; put the current CA in the bundle"
    );
    match one_file {
        Some(path) => TlsError::file(path, reason),
        None => TlsError::Config(reason),
    }
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

    #[test]
    fn validity_periods_include_both_ends() {
        assert_eq!(OutOfDate::at(5, 5, 10), None);
        assert_eq!(OutOfDate::at(10, 5, 10), None);
        assert_eq!(
            OutOfDate::at(11, 5, 10),
            Some(OutOfDate::Expired { not_after: 10 })
        );
        assert_eq!(
            OutOfDate::at(4, 5, 10),
            Some(OutOfDate::NotYetValid { not_before: 5 })
        );
        assert_eq!(
            OutOfDate::Expired { not_after: 0 }.to_string(),
            "expired at 1970-01-01 00:00:00 UTC (notAfter)"
        );
        assert_eq!(
            OutOfDate::NotYetValid { not_before: 0 }.to_string(),
            "is not valid until 1970-01-01 00:00:00 UTC (notBefore)"
        );
    }

    use crate::cert::{make_ca_with, Ca, Validity};

    /// A CA bundle file's contents: the CAs' certificates one after the other.
    fn bundle(cas: &[&Ca]) -> FileRead {
        let pem: String = cas.iter().map(|ca| ca.cert_pem.as_str()).collect();
        Ok(Arc::from(pem.into_bytes()))
    }

    fn info(ca: &Ca) -> identity::CaInfo {
        let der = CertificateDer::from_pem_slice(ca.cert_pem.as_bytes()).unwrap();
        identity::parse_ca(&der).unwrap()
    }

    #[derive(Clone, Default)]
    struct Logs(Arc<std::sync::Mutex<Vec<u8>>>);

    impl std::io::Write for Logs {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    /// Runs `f` with this thread's logs captured; returns its result and what was logged.
    fn logged<T>(f: impl FnOnce() -> T) -> (T, String) {
        let logs = Logs::default();
        let writer = logs.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_writer(move || writer.clone())
            .with_ansi(false)
            .finish();
        let out = tracing::subscriber::with_default(subscriber, f);
        let text = String::from_utf8_lossy(&logs.0.lock().unwrap()).into_owned();
        (out, text)
    }

    #[test]
    fn a_bundle_with_no_ca_within_its_validity_is_refused_naming_each() {
        let expired = make_ca_with("td", Validity::Expired).unwrap();
        let future = make_ca_with("td", Validity::NotYetValid).unwrap();
        let (old, new) = (info(&expired), info(&future));
        assert!(old.subject.contains("CN=Pillion CA td"), "{}", old.subject);
        let path = PathBuf::from("/etc/pillion/ca.pem");

        let err = roots(std::slice::from_ref(&path), &[bundle(&[&expired, &future])])
            .err()
            .unwrap();
        let TlsError::File {
            path: named,
            reason,
        } = &err
        else {
            panic!("not a file error: {err}");
        };
        assert_eq!(named, &path);
        assert!(
            reason.starts_with("no CA certificate is within its validity period: "),
            "{reason}"
        );
        let first = format!(
            "certificate #1 ({}) expired at {} (notAfter)",
            old.subject,
            utc(old.not_after)
        );
        let second = format!(
            "certificate #2 ({}) is not valid until {} (notBefore)",
            new.subject,
            utc(new.not_before)
        );
        assert!(reason.contains(&first), "{reason}");
        assert!(reason.contains(&second), "{reason}");

        // Spread over several files, each certificate is named with its file.
        let other = PathBuf::from("/etc/pillion/next-ca.pem");
        let err = roots(
            &[path.clone(), other.clone()],
            &[bundle(&[&expired]), bundle(&[&future])],
        )
        .err()
        .unwrap();
        assert!(matches!(err, TlsError::Config(_)), "{err}");
        let err = err.to_string();
        assert!(
            err.contains(&format!("/etc/pillion/ca.pem: {}", first)),
            "{err}"
        );
        assert!(
            err.contains(&format!(
                "/etc/pillion/next-ca.pem: certificate #1 ({}) is not valid until",
                new.subject
            )),
            "{err}"
        );
    }

    #[test]
    fn a_bundle_in_rotation_loads_and_warns_about_its_out_of_date_cas() {
        let current = make_ca_with("td", Validity::Days(30)).unwrap();
        let expired = make_ca_with("td", Validity::Expired).unwrap();
        let future = make_ca_with("td", Validity::NotYetValid).unwrap();
        let path = PathBuf::from("/etc/pillion/ca.pem");

        let (loaded, log) = logged(|| {
            roots(
                std::slice::from_ref(&path),
                &[bundle(&[&expired, &current])],
            )
        });
        let loaded = loaded.unwrap();
        assert_eq!(loaded.store.len(), 2);
        let old = info(&expired);
        let line = log
            .lines()
            .find(|l| l.contains("CA certificate #1 expired at"))
            .unwrap_or_else(|| panic!("no warning in {log:?}"));
        assert!(line.contains("WARN"), "{line}");
        assert!(line.contains("/etc/pillion/ca.pem"), "{line}");
        assert!(line.contains(&utc(old.not_after)), "{line}");
        assert!(line.contains(&old.subject), "{line}");
        assert_eq!(log.lines().count(), 1, "{log}");

        // The valid CA need not come first, nor be in the same file.
        let next = PathBuf::from("/etc/pillion/next-ca.pem");
        let (loaded, log) = logged(|| {
            roots(
                &[path.clone(), next.clone()],
                &[bundle(&[&future]), bundle(&[&expired, &current])],
            )
        });
        assert_eq!(loaded.unwrap().store.len(), 3);
        assert!(
            log.contains("CA certificate #1 is not valid until"),
            "{log}"
        );
        assert_eq!(
            log.lines().filter(|l| l.contains("WARN")).count(),
            2,
            "{log}"
        );

        // A bundle of current CAs says nothing.
        let (loaded, log) = logged(|| roots(std::slice::from_ref(&path), &[bundle(&[&current])]));
        assert_eq!(loaded.unwrap().store.len(), 1);
        assert_eq!(log, "");
    }
}
