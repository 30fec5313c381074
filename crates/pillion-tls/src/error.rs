//! Errors of loading TLS files and of handshakes, and the reasons handshakes fail.

use std::{error::Error as StdError, fmt, io, path::PathBuf};

/// What went wrong setting up TLS or during a handshake.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A file could not be read, or does not hold what it should.
    #[error("{}: {reason}", path.display())]
    File {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// The settings or files do not make a usable configuration.
    #[error("{0}")]
    Config(String),
    /// The server presented a certificate for an identity not in the cluster's list.
    #[error(transparent)]
    IdentityMismatch(IdentityMismatch),
    /// The handshake failed.
    #[error("TLS handshake failed ({reason}): {source}")]
    Handshake {
        /// Why, as in the `result` label of the handshake metric.
        reason: HandshakeFailure,
        /// The underlying error (a `rustls::Error` inside an `io::Error`, or an I/O error).
        #[source]
        source: io::Error,
    },
}

/// A server certificate whose SPIFFE identity is not one the cluster accepts.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct IdentityMismatch {
    /// The identity in the certificate's URI SAN, if it had one.
    pub presented: Option<String>,
    /// The accepted identities, as configured.
    pub expected: Vec<String>,
}

/// Why a handshake failed; a bounded set, used as a metric label.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum HandshakeFailure {
    /// The client sent no certificate.
    NoClientCert,
    /// The peer's certificate is expired or not yet valid.
    CertExpired,
    /// The peer's certificate does not chain to a trusted CA.
    UnknownCa,
    /// The server's certificate is not valid for the expected name.
    BadName,
    /// The server's SPIFFE identity is not one the cluster accepts.
    IdentityMismatch,
    /// The peer's certificate was rejected for another reason.
    BadCert,
    /// The peer aborted the handshake with an alert (it rejected us).
    PeerAlert,
    /// No common protocol version, cipher suite or ALPN protocol.
    Incompatible,
    /// The peer broke the TLS protocol (for example it did not speak TLS at all).
    Protocol,
    /// The connection failed or closed during the handshake.
    Io,
}

// === impl TlsError ===

impl TlsError {
    /// Builds a [`TlsError::File`].
    pub(crate) fn file(path: impl Into<PathBuf>, reason: impl fmt::Display) -> Self {
        Self::File {
            path: path.into(),
            reason: reason.to_string(),
        }
    }

    /// Turns a failed handshake into an error, recognising an identity mismatch.
    pub(crate) fn handshake(source: io::Error) -> Self {
        let reason = HandshakeFailure::classify(&source);
        if reason == HandshakeFailure::IdentityMismatch {
            if let Some(m) = rustls_error(&source).and_then(identity_mismatch) {
                return Self::IdentityMismatch(m.clone());
            }
        }
        Self::Handshake { reason, source }
    }

    /// Why the handshake failed, if this is a handshake error.
    pub fn handshake_failure(&self) -> Option<HandshakeFailure> {
        match self {
            Self::Handshake { reason, .. } => Some(*reason),
            Self::IdentityMismatch(_) => Some(HandshakeFailure::IdentityMismatch),
            Self::File { .. } | Self::Config(_) => None,
        }
    }
}

/// Finds a [`TlsError`] in an error's `source()` chain (for example under a connect
/// error), to tell a TLS failure from a TCP connect failure.
pub fn find_tls_error<'a>(err: &'a (dyn StdError + 'static)) -> Option<&'a TlsError> {
    let mut cur = Some(err);
    while let Some(e) = cur {
        if let Some(tls) = e.downcast_ref::<TlsError>() {
            return Some(tls);
        }
        cur = e.source();
    }
    None
}

/// Finds a fatal TLS alert received from the peer in an error's `source()` chain. With TLS 1.3
/// a server that rejects the client's certificate says so only after the client finished its
/// handshake, on the first read: the request fails with this, not a [`TlsError`].
pub fn find_peer_alert(err: &(dyn StdError + 'static)) -> Option<rustls::AlertDescription> {
    let mut cur = Some(err);
    while let Some(e) = cur {
        let rustls = e
            .downcast_ref::<rustls::Error>()
            .or_else(|| e.downcast_ref::<io::Error>().and_then(rustls_error));
        if let Some(rustls::Error::AlertReceived(alert)) = rustls {
            return Some(*alert);
        }
        cur = e.source();
    }
    None
}

fn rustls_error(err: &io::Error) -> Option<&rustls::Error> {
    err.get_ref()?.downcast_ref::<rustls::Error>()
}

fn identity_mismatch(err: &rustls::Error) -> Option<&IdentityMismatch> {
    match err {
        rustls::Error::InvalidCertificate(rustls::CertificateError::Other(other)) => {
            other.0.downcast_ref::<IdentityMismatch>()
        }
        _ => None,
    }
}

// === impl IdentityMismatch ===

impl fmt::Display for IdentityMismatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.presented {
            Some(id) => write!(f, "server identity {id} is not one of [")?,
            None => write!(
                f,
                "server certificate has no SPIFFE identity (URI SAN); expected one of ["
            )?,
        }
        for (i, e) in self.expected.iter().enumerate() {
            if i > 0 {
                f.write_str(", ")?;
            }
            f.write_str(e)?;
        }
        f.write_str("]")
    }
}

// === impl HandshakeFailure ===

impl HandshakeFailure {
    /// Every reason, in the order of [`HandshakeFailure::index`].
    pub const ALL: [Self; 10] = [
        Self::NoClientCert,
        Self::CertExpired,
        Self::UnknownCa,
        Self::BadName,
        Self::IdentityMismatch,
        Self::BadCert,
        Self::PeerAlert,
        Self::Incompatible,
        Self::Protocol,
        Self::Io,
    ];

    /// The metric label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::NoClientCert => "no_client_cert",
            Self::CertExpired => "cert_expired",
            Self::UnknownCa => "unknown_ca",
            Self::BadName => "bad_name",
            Self::IdentityMismatch => "identity_mismatch",
            Self::BadCert => "bad_cert",
            Self::PeerAlert => "peer_alert",
            Self::Incompatible => "incompatible",
            Self::Protocol => "protocol",
            Self::Io => "io",
        }
    }

    pub(crate) fn index(self) -> usize {
        self as usize
    }

    /// Classifies the error a tokio-rustls handshake returned.
    pub fn classify(err: &io::Error) -> Self {
        use rustls::CertificateError as C;
        let Some(e) = rustls_error(err) else {
            return Self::Io;
        };
        match e {
            rustls::Error::NoCertificatesPresented => Self::NoClientCert,
            rustls::Error::InvalidCertificate(c) => match c {
                C::Expired
                | C::ExpiredContext { .. }
                | C::NotValidYet
                | C::NotValidYetContext { .. } => Self::CertExpired,
                // NOTE: webpki finds the issuer by name, so a certificate from another CA with
                // the same name fails its signature check rather than as an unknown issuer.
                C::UnknownIssuer | C::BadSignature => Self::UnknownCa,
                C::NotValidForName | C::NotValidForNameContext { .. } => Self::BadName,
                C::Other(_) if identity_mismatch(e).is_some() => Self::IdentityMismatch,
                _ => Self::BadCert,
            },
            rustls::Error::AlertReceived(_) => Self::PeerAlert,
            rustls::Error::PeerIncompatible(_) | rustls::Error::NoApplicationProtocol => {
                Self::Incompatible
            }
            _ => Self::Protocol,
        }
    }
}

impl fmt::Display for HandshakeFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reasons_are_indexed_in_order() {
        for (i, r) in HandshakeFailure::ALL.iter().enumerate() {
            assert_eq!(r.index(), i);
        }
    }

    #[test]
    fn mismatch_names_both_sides() {
        let m = IdentityMismatch {
            presented: Some("spiffe://x/ns/a/sa/b".into()),
            expected: vec!["spiffe://x/ns/a/sa/c".into(), "spiffe://y/*".into()],
        };
        assert_eq!(
            m.to_string(),
            "server identity spiffe://x/ns/a/sa/b is not one of [spiffe://x/ns/a/sa/c, spiffe://y/*]"
        );
    }

    #[test]
    fn classify_io_and_rustls_errors() {
        let eof = io::Error::from(io::ErrorKind::UnexpectedEof);
        assert_eq!(HandshakeFailure::classify(&eof), HandshakeFailure::Io);
        let none = io::Error::new(
            io::ErrorKind::InvalidData,
            rustls::Error::NoCertificatesPresented,
        );
        assert_eq!(
            HandshakeFailure::classify(&none),
            HandshakeFailure::NoClientCert
        );
        let mismatch = rustls::Error::InvalidCertificate(rustls::CertificateError::Other(
            rustls::OtherError(std::sync::Arc::new(IdentityMismatch {
                presented: None,
                expected: vec!["a".into()],
            })),
        ));
        let err = TlsError::handshake(io::Error::new(io::ErrorKind::InvalidData, mismatch));
        assert!(matches!(err, TlsError::IdentityMismatch(_)));
        assert_eq!(
            err.handshake_failure(),
            Some(HandshakeFailure::IdentityMismatch)
        );
    }
}
