//! Identities in certificates (SPIFFE URI SAN, DNS SAN) and identity patterns.

use std::sync::Arc;
use x509_parser::{certificate::X509Certificate, extensions::GeneralName, prelude::FromDer};

/// What Pillion reads from a leaf certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct LeafInfo {
    /// The first URI SAN that is a SPIFFE ID.
    pub(crate) spiffe_id: Option<String>,
    /// The first DNS SAN that is a well-formed DNS name (see [`is_dns_name`]).
    pub(crate) first_dns: Option<String>,
    /// The start of the validity period, in Unix seconds.
    pub(crate) not_before: i64,
    /// The end of the validity period, in Unix seconds.
    pub(crate) not_after: i64,
}

/// An accepted identity: exact, or a prefix when written with a trailing `*`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum IdentityPattern {
    Exact(Box<str>),
    Prefix(Box<str>),
}

/// Parses a DER certificate and reads its identities and expiry.
pub(crate) fn parse_leaf(der: &[u8]) -> Result<LeafInfo, String> {
    let (_, cert) =
        X509Certificate::from_der(der).map_err(|e| format!("invalid certificate: {e}"))?;
    let mut info = LeafInfo {
        spiffe_id: None,
        first_dns: None,
        not_before: cert.validity().not_before.timestamp(),
        not_after: cert.validity().not_after.timestamp(),
    };
    let san = cert
        .subject_alternative_name()
        .map_err(|e| format!("invalid subjectAltName: {e}"))?;
    for name in san.iter().flat_map(|san| san.value.general_names.iter()) {
        match name {
            GeneralName::URI(uri) if info.spiffe_id.is_none() && is_spiffe(uri) => {
                info.spiffe_id = Some((*uri).to_owned());
            }
            // NOTE: a DNS SAN is never a SPIFFE ID. Only well-formed names are kept, so that
            // no text in a DNS SAN (such as `spiffe://td/ns/prod/sa/admin`, which a CA that
            // checks only DNS names may sign) can pass for one in a policy.
            GeneralName::DNSName(dns) if info.first_dns.is_none() && is_dns_name(dns) => {
                info.first_dns = Some((*dns).to_owned());
            }
            _ => {}
        }
    }
    Ok(info)
}

/// The identity of a peer certificate: its SPIFFE ID (a `spiffe://` URI SAN), else its first
/// well-formed DNS SAN, which cannot contain `:` or `/` and so never matches a SPIFFE pattern.
pub(crate) fn peer_identity(der: &[u8]) -> Option<Arc<str>> {
    let info = parse_leaf(der).ok()?;
    info.spiffe_id.or(info.first_dns).map(Arc::from)
}

/// What Pillion reads from a CA certificate: whom it names, and when it is valid.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct CaInfo {
    /// The subject, as `O=..., CN=...` (empty if the certificate has none).
    pub(crate) subject: String,
    /// The start of the validity period, in Unix seconds.
    pub(crate) not_before: i64,
    /// The end of the validity period, in Unix seconds.
    pub(crate) not_after: i64,
}

/// Parses a DER CA certificate's subject and validity period; `None` if it is not X.509.
pub(crate) fn parse_ca(der: &[u8]) -> Option<CaInfo> {
    let (_, cert) = X509Certificate::from_der(der).ok()?;
    Some(CaInfo {
        subject: cert.subject().to_string(),
        not_before: cert.validity().not_before.timestamp(),
        not_after: cert.validity().not_after.timestamp(),
    })
}

/// Whether `name` is a DNS host name: dot-separated labels of letters, digits, `-` and `_`,
/// each 1 to 63 bytes and not starting or ending with `-`, 253 bytes at most (a trailing dot
/// allowed). Wildcards, `:`, `/` and anything else are not.
fn is_dns_name(name: &str) -> bool {
    let name = name.strip_suffix('.').unwrap_or(name);
    !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        })
}

fn is_spiffe(uri: &str) -> bool {
    uri.len() > "spiffe://".len()
        && uri
            .get(..9)
            .is_some_and(|s| s.eq_ignore_ascii_case("spiffe://"))
}

// === impl IdentityPattern ===

impl IdentityPattern {
    /// Parses `spiffe://td/ns/a/sa/b` (exact) or `spiffe://td/ns/a/*` (prefix).
    pub(crate) fn parse(s: &str) -> Result<Self, String> {
        if s.is_empty() {
            return Err("an identity must not be empty".into());
        }
        match s.strip_suffix('*') {
            Some(prefix) if prefix.contains('*') => Err(format!(
                "identity `{s}`: `*` is only allowed once, at the end"
            )),
            Some(prefix) => Ok(Self::Prefix(prefix.into())),
            None if s.contains('*') => {
                Err(format!("identity `{s}`: `*` is only allowed at the end"))
            }
            None => Ok(Self::Exact(s.into())),
        }
    }

    /// Whether `id` is this identity (or starts with this prefix).
    pub(crate) fn matches(&self, id: &str) -> bool {
        match self {
            Self::Exact(e) => **e == *id,
            Self::Prefix(p) => id.starts_with(&**p),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patterns() {
        let exact = IdentityPattern::parse("spiffe://td/ns/a/sa/b").unwrap();
        assert!(exact.matches("spiffe://td/ns/a/sa/b"));
        assert!(!exact.matches("spiffe://td/ns/a/sa/bc"));
        let prefix = IdentityPattern::parse("spiffe://td/ns/a/*").unwrap();
        assert!(prefix.matches("spiffe://td/ns/a/sa/b"));
        assert!(!prefix.matches("spiffe://td/ns/ab/sa/b"));
        assert!(IdentityPattern::parse("*").unwrap().matches("anything"));
        assert!(IdentityPattern::parse("").is_err());
        assert!(IdentityPattern::parse("spiffe://*/ns").is_err());
        assert!(IdentityPattern::parse("spiffe://*/ns/*").is_err());
    }

    #[test]
    fn dns_names() {
        for ok in [
            "web",
            "web.default.svc",
            "web.default.svc.",
            "a-b.c_d.x1",
            "1.2.3.4",
        ] {
            assert!(is_dns_name(ok), "{ok}");
        }
        for bad in [
            "",
            ".",
            "spiffe://td/ns/a/sa/b",
            "spiffe:td",
            "a/b",
            "*.web.default",
            "-web",
            "web-",
            "a..b",
            "web default",
            &"a".repeat(64),
        ] {
            assert!(!is_dns_name(bad), "{bad}");
        }
    }

    #[test]
    fn spiffe_scheme() {
        assert!(is_spiffe("spiffe://td/x"));
        assert!(is_spiffe("SPIFFE://td/x"));
        assert!(!is_spiffe("spiffe://"));
        assert!(!is_spiffe("https://td/x"));
    }
}
