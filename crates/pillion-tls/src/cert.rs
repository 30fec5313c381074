//! `pillion cert`: makes a CA and workload certificates carrying SPIFFE IDs, for tests, demos
//! and small meshes without a certificate manager.
//!
//! ```text
//! pillion cert ca --out certs/ --trust-domain cluster.local
//! pillion cert workload --ca certs/ --out certs/ --spiffe-id spiffe://cluster.local/ns/default/sa/web
//! ```
//!
//! Keys are ECDSA P-256. Workload certificates are valid as both server and client
//! certificates (EKU serverAuth and clientAuth). Key files are written with mode 0600.

use rcgen::{
    BasicConstraints, Certificate, CertificateParams, DistinguishedName, DnType,
    ExtendedKeyUsagePurpose, Ia5String, IsCa, KeyPair, KeyUsagePurpose, SanType,
};
use std::{
    io::Write as _,
    net::IpAddr,
    path::{Path, PathBuf},
    process::ExitCode,
};
use time::{Duration, OffsetDateTime};

/// `pillion cert`: make a CA or a workload certificate.
#[derive(Debug, clap::Args)]
pub struct CertArgs {
    #[command(subcommand)]
    pub action: CertAction,
}

/// What to make.
#[derive(Debug, clap::Subcommand)]
pub enum CertAction {
    /// Make a CA: writes DIR/ca.pem and DIR/ca-key.pem.
    Ca(CaArgs),
    /// Issue a workload certificate signed by a CA made with `pillion cert ca`: writes
    /// DIR/NAME.pem (the chain: certificate then CA) and DIR/NAME-key.pem.
    Workload(WorkloadArgs),
}

/// Arguments of `pillion cert ca`.
#[derive(Debug, Clone, clap::Args)]
pub struct CaArgs {
    /// The directory to write ca.pem and ca-key.pem to (created if missing).
    #[arg(long, value_name = "DIR")]
    pub out: PathBuf,
    /// The SPIFFE trust domain; the CA carries `spiffe://<trust domain>` as its URI SAN.
    #[arg(long, value_name = "DOMAIN", default_value = "cluster.local")]
    pub trust_domain: String,
    /// How many days the CA is valid.
    #[arg(long, default_value_t = 365)]
    pub days: u32,
    /// Replace an existing CA in DIR.
    #[arg(long)]
    pub force: bool,
}

/// Arguments of `pillion cert workload`.
#[derive(Debug, Clone, clap::Args)]
pub struct WorkloadArgs {
    /// The directory holding ca.pem and ca-key.pem.
    #[arg(long, value_name = "DIR")]
    pub ca: PathBuf,
    /// The directory to write NAME.pem and NAME-key.pem to (created if missing).
    #[arg(long, value_name = "DIR")]
    pub out: PathBuf,
    /// The workload's SPIFFE ID, e.g. spiffe://cluster.local/ns/default/sa/web.
    #[arg(long, value_name = "ID")]
    pub spiffe_id: String,
    /// A DNS name to add as a SAN (repeatable).
    #[arg(long = "dns", value_name = "NAME")]
    pub dns: Vec<String>,
    /// An IP address to add as a SAN (repeatable).
    #[arg(long = "ip", value_name = "ADDR")]
    pub ip: Vec<IpAddr>,
    /// How many days the certificate is valid (capped at the CA's expiry).
    #[arg(long, default_value_t = 30)]
    pub days: u32,
    /// The file name stem; defaults to the last segment of the SPIFFE ID.
    #[arg(long)]
    pub name: Option<String>,
    /// Make a certificate that expired yesterday (to test that peers reject it).
    #[arg(long, conflicts_with = "days")]
    pub expired: bool,
}

/// A CA as PEM text.
#[derive(Debug, Clone)]
pub struct Ca {
    /// The self-signed CA certificate.
    pub cert_pem: String,
    /// Its private key (PKCS#8).
    pub key_pem: String,
}

/// A workload certificate as PEM text.
#[derive(Debug, Clone)]
pub struct Workload {
    /// The certificate followed by the CA certificate.
    pub chain_pem: String,
    /// Its private key (PKCS#8).
    pub key_pem: String,
}

/// What a workload certificate says.
#[derive(Debug, Clone)]
pub struct WorkloadSpec {
    /// The SPIFFE ID (URI SAN).
    pub spiffe_id: String,
    /// DNS SANs.
    pub dns: Vec<String>,
    /// IP SANs.
    pub ip: Vec<IpAddr>,
    /// The subject's common name.
    pub common_name: String,
    /// How long it is valid.
    pub validity: Validity,
}

/// How long a certificate is valid.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Validity {
    /// From a few minutes ago (clock skew) for this many days.
    Days(u32),
    /// It expired yesterday.
    Expired,
    /// It becomes valid tomorrow (to test that it is refused until then).
    NotYetValid,
}

/// Why `pillion cert` failed.
#[derive(Debug, thiserror::Error)]
pub enum CertError {
    /// Bad arguments or unusable input files (exit status 2).
    #[error("{0}")]
    Input(String),
    /// The output could not be written, or signing failed (exit status 1).
    #[error("{0}")]
    Output(String),
}

/// Runs `pillion cert`; prints `error: ...` and returns status 2 on bad input, 1 when the
/// output cannot be written.
pub fn main(args: CertArgs) -> ExitCode {
    let result = match args.action {
        CertAction::Ca(a) => run_ca(&a),
        CertAction::Workload(a) => run_workload(&a),
    };
    match result {
        Ok(msg) => {
            println!("{msg}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(match e {
                CertError::Input(_) => 2,
                CertError::Output(_) => 1,
            })
        }
    }
}

fn run_ca(a: &CaArgs) -> Result<String, CertError> {
    validate_trust_domain(&a.trust_domain)?;
    validate_days(a.days)?;
    let cert_path = a.out.join("ca.pem");
    let key_path = a.out.join("ca-key.pem");
    if !a.force && (cert_path.exists() || key_path.exists()) {
        return Err(CertError::Input(format!(
            "{} already holds a CA; pass --force to replace it (every certificate it signed stops being trusted)",
            a.out.display()
        )));
    }
    let ca = make_ca(&a.trust_domain, a.days)?;
    create_dir(&a.out)?;
    write_file(&key_path, &ca.key_pem, 0o600)?;
    write_file(&cert_path, &ca.cert_pem, 0o644)?;
    Ok(format!(
        "wrote {} and {} (trust domain {}, valid {} days)",
        cert_path.display(),
        key_path.display(),
        a.trust_domain,
        a.days
    ))
}

fn run_workload(a: &WorkloadArgs) -> Result<String, CertError> {
    let validity = if a.expired {
        Validity::Expired
    } else {
        validate_days(a.days)?;
        Validity::Days(a.days)
    };
    validate_spiffe_id(&a.spiffe_id)?;
    for d in &a.dns {
        validate_dns(d)?;
    }
    let name = match &a.name {
        Some(n) => {
            validate_name(n)?;
            n.clone()
        }
        None => default_name(&a.spiffe_id),
    };
    let ca_cert_path = a.ca.join("ca.pem");
    let ca_key_path = a.ca.join("ca-key.pem");
    let read = |p: &Path| {
        std::fs::read_to_string(p).map_err(|e| {
            CertError::Input(format!(
                "cannot read {}: {e} (make a CA with `pillion cert ca --out {}`)",
                p.display(),
                a.ca.display()
            ))
        })
    };
    let ca_cert = read(&ca_cert_path)?;
    let ca_key = read(&ca_key_path)?;
    let spec = WorkloadSpec {
        spiffe_id: a.spiffe_id.clone(),
        dns: a.dns.clone(),
        ip: a.ip.clone(),
        common_name: name.clone(),
        validity,
    };
    let w = issue_workload(&ca_cert, &ca_key, &spec)?;
    let cert_path = a.out.join(format!("{name}.pem"));
    let key_path = a.out.join(format!("{name}-key.pem"));
    create_dir(&a.out)?;
    // NOTE: key first, then chain: a reloader that sees the new chain sees its key too.
    write_file(&key_path, &w.key_pem, 0o600)?;
    write_file(&cert_path, &w.chain_pem, 0o644)?;
    Ok(format!(
        "wrote {} and {} for {}{}",
        cert_path.display(),
        key_path.display(),
        a.spiffe_id,
        if a.expired { " (already expired)" } else { "" }
    ))
}

/// Makes a self-signed CA for `trust_domain`, valid for `days`.
pub fn make_ca(trust_domain: &str, days: u32) -> Result<Ca, CertError> {
    make_ca_with(trust_domain, Validity::Days(days))
}

/// Makes a self-signed CA for `trust_domain` with the given validity (an expired or a
/// not-yet-valid one too, to test that it is refused).
pub fn make_ca_with(trust_domain: &str, validity: Validity) -> Result<Ca, CertError> {
    validate_trust_domain(trust_domain)?;
    if let Validity::Days(days) = validity {
        validate_days(days)?;
    }
    let key = KeyPair::generate().map_err(signing)?;
    let mut params = CertificateParams::default();
    // A short key fingerprint tells apart CAs made for the same trust domain.
    let fingerprint: String = key
        .public_key_raw()
        .iter()
        .skip(1)
        .take(4)
        .map(|b| format!("{b:02x}"))
        .collect();
    params.distinguished_name = dn(&format!("Pillion CA {trust_domain} {fingerprint}"));
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    params.subject_alt_names = vec![SanType::URI(ia5(&format!("spiffe://{trust_domain}"))?)];
    let (not_before, not_after) = self::validity(validity);
    params.not_before = not_before;
    params.not_after = not_after;
    let cert = params.self_signed(&key).map_err(signing)?;
    Ok(Ca {
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
    })
}

/// Issues a workload certificate signed by the CA given as PEM text.
pub fn issue_workload(
    ca_cert_pem: &str,
    ca_key_pem: &str,
    spec: &WorkloadSpec,
) -> Result<Workload, CertError> {
    validate_spiffe_id(&spec.spiffe_id)?;
    let (issuer, issuer_key, ca_not_after, ca_trust_domain) = load_ca(ca_cert_pem, ca_key_pem)?;
    if let Some(td) = ca_trust_domain {
        if trust_domain_of(&spec.spiffe_id) != Some(td.as_str()) {
            return Err(CertError::Input(format!(
                "SPIFFE ID {} is not in the CA's trust domain `{td}`",
                spec.spiffe_id
            )));
        }
    }
    let key = KeyPair::generate().map_err(signing)?;
    let mut params = CertificateParams::default();
    params.distinguished_name = dn(&spec.common_name);
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    params.use_authority_key_identifier_extension = true;
    let mut sans = vec![SanType::URI(ia5(&spec.spiffe_id)?)];
    for d in &spec.dns {
        validate_dns(d)?;
        sans.push(SanType::DnsName(ia5(&d.to_ascii_lowercase())?));
    }
    sans.extend(spec.ip.iter().map(|ip| SanType::IpAddress(*ip)));
    params.subject_alt_names = sans;
    let (not_before, not_after) = validity(spec.validity);
    params.not_before = not_before;
    params.not_after = match spec.validity {
        Validity::Days(_) => not_after.min(ca_not_after),
        Validity::Expired | Validity::NotYetValid => not_after,
    };
    let cert = params
        .signed_by(&key, &issuer, &issuer_key)
        .map_err(signing)?;
    let mut chain_pem = cert.pem();
    if !chain_pem.ends_with('\n') {
        chain_pem.push('\n');
    }
    chain_pem.push_str(ca_cert_pem.trim_end());
    chain_pem.push('\n');
    Ok(Workload {
        chain_pem,
        key_pem: key.serialize_pem(),
    })
}

/// Parses the CA and its key; returns an issuer to sign with, the CA's expiry and its trust
/// domain (from its `spiffe://` URI SAN, if it has one).
fn load_ca(
    cert_pem: &str,
    key_pem: &str,
) -> Result<(Certificate, KeyPair, OffsetDateTime, Option<String>), CertError> {
    let bad =
        |what: &str, e: rcgen::Error| CertError::Input(format!("the CA {what} is unusable: {e}"));
    let key = KeyPair::from_pem(key_pem).map_err(|e| bad("key", e))?;
    let params =
        CertificateParams::from_ca_cert_pem(cert_pem).map_err(|e| bad("certificate", e))?;
    if !matches!(params.is_ca, IsCa::Ca(_)) {
        return Err(CertError::Input(
            "the CA certificate is not a CA (no basicConstraints CA:TRUE)".into(),
        ));
    }
    let not_after = params.not_after;
    let trust_domain = params.subject_alt_names.iter().find_map(|san| match san {
        SanType::URI(uri) => uri
            .as_str()
            .strip_prefix("spiffe://")
            .map(|td| td.trim_end_matches('/').to_owned()),
        _ => None,
    });
    // NOTE: re-signing the parsed params with the CA key yields a certificate with the CA's
    // subject and key, which is all rcgen takes from an issuer.
    let spki_matches = {
        let (_, parsed) = x509_parser::pem::parse_x509_pem(cert_pem.as_bytes())
            .map_err(|e| CertError::Input(format!("the CA certificate is not PEM: {e}")))?;
        let cert = parsed
            .parse_x509()
            .map_err(|e| CertError::Input(format!("the CA certificate is unusable: {e}")))?;
        cert.public_key().raw == key.public_key_der().as_slice()
    };
    if !spki_matches {
        return Err(CertError::Input(
            "the CA key does not match the CA certificate".into(),
        ));
    }
    let issuer = params.self_signed(&key).map_err(signing)?;
    Ok((issuer, key, not_after, trust_domain))
}

fn validity(v: Validity) -> (OffsetDateTime, OffsetDateTime) {
    let now = OffsetDateTime::now_utc();
    match v {
        Validity::Days(days) => (
            now - Duration::minutes(5),
            now + Duration::days(i64::from(days)),
        ),
        Validity::Expired => (now - Duration::days(2), now - Duration::days(1)),
        Validity::NotYetValid => (now + Duration::days(1), now + Duration::days(2)),
    }
}

fn dn(common_name: &str) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, "Pillion");
    dn.push(DnType::CommonName, common_name);
    dn
}

fn ia5(s: &str) -> Result<Ia5String, CertError> {
    Ia5String::try_from(s).map_err(|_| CertError::Input(format!("`{s}` is not ASCII")))
}

fn signing(e: rcgen::Error) -> CertError {
    CertError::Output(format!("cannot make the certificate: {e}"))
}

fn create_dir(dir: &Path) -> Result<(), CertError> {
    std::fs::create_dir_all(dir)
        .map_err(|e| CertError::Output(format!("cannot create {}: {e}", dir.display())))
}

/// Writes `contents` to `path` atomically (a temporary file renamed over it) with `mode`.
fn write_file(path: &Path, contents: &str, mode: u32) -> Result<(), CertError> {
    let err =
        |e: std::io::Error| CertError::Output(format!("cannot write {}: {e}", path.display()));
    let file_name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = path.with_file_name(format!(".{file_name}.tmp"));
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(mode);
    }
    #[cfg(not(unix))]
    let _ = mode;
    let write = || -> std::io::Result<()> {
        let mut f = opts.open(&tmp)?;
        // NOTE: `mode` only applies to a newly created file; a stale temporary file may have
        // other permissions.
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            f.set_permissions(std::fs::Permissions::from_mode(mode))?;
        }
        f.write_all(contents.as_bytes())?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    };
    write().map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        err(e)
    })
}

// === validation ===

fn validate_days(days: u32) -> Result<(), CertError> {
    if days == 0 || days > 36_500 {
        return Err(CertError::Input(format!(
            "--days must be between 1 and 36500, got {days} (use --expired for an expired certificate)"
        )));
    }
    Ok(())
}

fn validate_trust_domain(td: &str) -> Result<(), CertError> {
    let ok = !td.is_empty()
        && td.len() <= 255
        && td.bytes().all(|b| {
            b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'.' | b'-' | b'_')
        });
    if ok {
        Ok(())
    } else {
        Err(CertError::Input(format!(
            "trust domain `{td}` must be lower-case letters, digits, `.`, `-` and `_`"
        )))
    }
}

fn trust_domain_of(id: &str) -> Option<&str> {
    let rest = id.strip_prefix("spiffe://")?;
    Some(rest.split('/').next().unwrap_or(rest))
}

fn validate_spiffe_id(id: &str) -> Result<(), CertError> {
    let bad = |why: &str| {
        CertError::Input(format!(
            "SPIFFE ID `{id}` {why} (expected spiffe://<trust domain>/<path>, e.g. spiffe://cluster.local/ns/default/sa/web)"
        ))
    };
    let rest = id
        .strip_prefix("spiffe://")
        .ok_or_else(|| bad("must start with spiffe://"))?;
    if id.len() > 2048 {
        return Err(bad("is longer than 2048 bytes"));
    }
    let (td, path) = rest.split_once('/').ok_or_else(|| bad("has no path"))?;
    validate_trust_domain(td).map_err(|_| bad("has an invalid trust domain"))?;
    for seg in path.split('/') {
        if seg.is_empty() || seg == "." || seg == ".." {
            return Err(bad("has an empty, `.` or `..` path segment"));
        }
        if !seg
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_'))
        {
            return Err(bad(
                "may only use letters, digits, `.`, `-` and `_` in its path",
            ));
        }
    }
    Ok(())
}

fn validate_dns(name: &str) -> Result<(), CertError> {
    let bad = || {
        CertError::Input(format!(
            "`{name}` is not a DNS name (use --ip for addresses)"
        ))
    };
    if name.parse::<IpAddr>().is_ok() || name.is_empty() || name.len() > 253 {
        return Err(bad());
    }
    let body = name.strip_prefix("*.").unwrap_or(name);
    let label_ok = |l: &str| {
        !l.is_empty()
            && l.len() <= 63
            && !l.starts_with('-')
            && !l.ends_with('-')
            && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
    };
    if body.split('.').all(label_ok) {
        Ok(())
    } else {
        Err(bad())
    }
}

fn validate_name(name: &str) -> Result<(), CertError> {
    let ok = !name.is_empty()
        && !name.starts_with('.')
        && name.len() <= 200
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_'));
    if !ok {
        return Err(CertError::Input(format!(
            "--name `{name}` must be letters, digits, `.`, `-` and `_`"
        )));
    }
    if name == "ca" || name == "ca-key" {
        return Err(CertError::Input(format!(
            "--name `{name}` would overwrite the CA's files"
        )));
    }
    Ok(())
}

fn default_name(spiffe_id: &str) -> String {
    let last = spiffe_id.rsplit('/').next().unwrap_or_default();
    if validate_name(last).is_ok() {
        last.to_owned()
    } else {
        "workload".to_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Debug, Parser)]
    struct Cli {
        #[command(flatten)]
        cert: CertArgs,
    }

    fn parse(args: &[&str]) -> CertArgs {
        Cli::try_parse_from(std::iter::once("cert").chain(args.iter().copied()))
            .unwrap()
            .cert
    }

    #[test]
    fn ca_then_workload_files() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().to_str().unwrap();
        assert_eq!(main(parse(&["ca", "--out", d])), ExitCode::SUCCESS);
        // A second CA needs --force.
        assert_eq!(main(parse(&["ca", "--out", d])), ExitCode::from(2));
        let id = "spiffe://cluster.local/ns/default/sa/web";
        let args = [
            "workload",
            "--ca",
            d,
            "--out",
            d,
            "--spiffe-id",
            id,
            "--dns",
            "web.default",
        ];
        assert_eq!(main(parse(&args)), ExitCode::SUCCESS);

        let chain = std::fs::read_to_string(dir.path().join("web.pem")).unwrap();
        assert_eq!(chain.matches("BEGIN CERTIFICATE").count(), 2);
        let ca = std::fs::read_to_string(dir.path().join("ca.pem")).unwrap();
        assert!(chain.ends_with(&ca));
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            for f in ["ca-key.pem", "web-key.pem"] {
                let mode = std::fs::metadata(dir.path().join(f))
                    .unwrap()
                    .permissions()
                    .mode();
                assert_eq!(mode & 0o777, 0o600, "{f}");
            }
        }
        let der = rustls::pki_types::CertificateDer::from(
            x509_parser::pem::parse_x509_pem(chain.as_bytes())
                .unwrap()
                .1
                .contents,
        );
        let info = crate::identity::parse_leaf(&der).unwrap();
        assert_eq!(info.spiffe_id.as_deref(), Some(id));
        assert_eq!(info.first_dns.as_deref(), Some("web.default"));
    }

    #[test]
    fn bad_input_exits_2() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().to_str().unwrap();
        assert_eq!(
            main(parse(&["ca", "--out", d, "--trust-domain", "Bad Domain"])),
            ExitCode::from(2)
        );
        assert_eq!(
            main(parse(&["ca", "--out", d, "--days", "0"])),
            ExitCode::from(2)
        );
        let missing = [
            "workload",
            "--ca",
            d,
            "--out",
            d,
            "--spiffe-id",
            "spiffe://cluster.local/a",
        ];
        assert_eq!(main(parse(&missing)), ExitCode::from(2));
        assert_eq!(main(parse(&["ca", "--out", d])), ExitCode::SUCCESS);
        for bad in [
            vec!["--spiffe-id", "http://cluster.local/a"],
            vec!["--spiffe-id", "spiffe://cluster.local"],
            vec!["--spiffe-id", "spiffe://cluster.local/a/../b"],
            vec!["--spiffe-id", "spiffe://other.domain/a"],
            vec![
                "--spiffe-id",
                "spiffe://cluster.local/a",
                "--dns",
                "bad name",
            ],
            vec!["--spiffe-id", "spiffe://cluster.local/a", "--name", "ca"],
            vec!["--spiffe-id", "spiffe://cluster.local/a", "--name", "../x"],
        ] {
            let mut args = vec!["workload", "--ca", d, "--out", d];
            args.extend(bad.iter().copied());
            assert_eq!(main(parse(&args)), ExitCode::from(2), "{bad:?}");
        }
    }

    #[test]
    fn expired_and_names() {
        let ca = make_ca("td", 10).unwrap();
        let spec = WorkloadSpec {
            spiffe_id: "spiffe://td/ns/a/sa/b".into(),
            dns: vec![],
            ip: vec!["127.0.0.1".parse().unwrap()],
            common_name: "b".into(),
            validity: Validity::Expired,
        };
        let w = issue_workload(&ca.cert_pem, &ca.key_pem, &spec).unwrap();
        let (_, pem) = x509_parser::pem::parse_x509_pem(w.chain_pem.as_bytes()).unwrap();
        let cert = pem.parse_x509().unwrap();
        assert!(!cert.validity().is_valid());
        // A long-lived leaf is capped at the CA's expiry.
        let spec = WorkloadSpec {
            validity: Validity::Days(1000),
            ..spec
        };
        let w = issue_workload(&ca.cert_pem, &ca.key_pem, &spec).unwrap();
        let (_, pem) = x509_parser::pem::parse_x509_pem(w.chain_pem.as_bytes()).unwrap();
        let leaf = pem.parse_x509().unwrap();
        let (_, pem) = x509_parser::pem::parse_x509_pem(ca.cert_pem.as_bytes()).unwrap();
        let ca_cert = pem.parse_x509().unwrap();
        assert!(leaf.validity().not_after <= ca_cert.validity().not_after);

        assert_eq!(default_name("spiffe://td/ns/a/sa/web"), "web");
        assert_eq!(default_name("spiffe://td/ns/a/sa/ca"), "workload");
        // A CA key that is not the CA's.
        let other = make_ca("td", 10).unwrap();
        let err = issue_workload(&ca.cert_pem, &other.key_pem, &spec).unwrap_err();
        assert_eq!(
            err.to_string(),
            "the CA key does not match the CA certificate"
        );
    }
}
