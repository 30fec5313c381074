//! Real handshakes between `ServerTls` and `ClientTls` over 127.0.0.1 with generated certs.
#![allow(clippy::unwrap_used)] // helpers outside #[test] functions fail the test loudly

mod common;

use common::*;
use pillion_tls::{
    cert::Validity, ClientTls, HandshakeFailure, ServerTls, TlsError, TlsMetrics, PROTOCOL_VERSIONS,
};
use prometheus_client::registry::Registry;
use std::sync::Arc;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

struct Setup {
    pki: Pki,
    server: TestServer,
    metrics: TlsMetrics,
    registry: Registry,
}

/// A listener presenting `server`'s identity and trusting `pki`'s CA.
async fn setup() -> Setup {
    let pki = Pki::new();
    let (cert, key) = pki.workload("server", &id("server"));
    let mut registry = Registry::default();
    let metrics = TlsMetrics::register(&mut registry);
    let tls = ServerTls::new(
        "inbound",
        &listener_tls(&cert, &key, &[pki.ca_path()]),
        &metrics,
    )
    .unwrap();
    let server = TestServer::start(tls).await;
    Setup {
        pki,
        server,
        metrics,
        registry,
    }
}

fn client(s: &Setup, stem: &str, identities: &[&str], h2: bool) -> Arc<ClientTls> {
    let (cert, key) = s.pki.workload(stem, &id(stem));
    let cfg = cluster_tls(Some((&cert, &key)), &[s.pki.ca_path()], identities);
    ClientTls::new(stem, &cfg, h2, &s.metrics).unwrap()
}

#[tokio::test]
async fn mtls_ok_identity_and_alpn() {
    let mut s = setup().await;
    let c = client(&s, "web", &[&id("server")], true);
    let mut stream = c
        .connect_as(s.server.tcp().await, s.server.ip(), None)
        .await
        .unwrap();
    let peer = s.server.next().await.unwrap();
    assert_eq!(peer.identity.as_deref(), Some(id("web").as_str()));
    assert!(peer.alpn_h2);
    assert_eq!(stream.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    assert_eq!(server_identity(&stream), Some(id("server")));
    assert_eq!(
        stream.get_ref().1.protocol_version(),
        Some(rustls::ProtocolVersion::TLSv1_3)
    );

    // Data flows both ways.
    stream.write_all(b"ping").await.unwrap();
    let mut buf = [0u8; 4];
    tokio::time::timeout(STEP, stream.read_exact(&mut buf))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&buf, b"ping");

    // Without h2, ALPN picks http/1.1.
    let c = client(&s, "api", &["spiffe://td.test/ns/default/*"], false);
    let stream = c
        .connect_as(s.server.tcp().await, s.server.ip(), None)
        .await
        .unwrap();
    let peer = s.server.next().await.unwrap();
    assert_eq!(peer.identity.as_deref(), Some(id("api").as_str()));
    assert!(!peer.alpn_h2);
    assert_eq!(stream.get_ref().1.alpn_protocol(), Some(&b"http/1.1"[..]));

    // An opaque (TCP relay) connection offers no ALPN at all.
    let stream = c
        .connect(s.server.tcp().await, s.server.ip())
        .await
        .unwrap();
    let peer = s.server.next().await.unwrap();
    assert!(!peer.alpn_h2);
    assert_eq!(stream.get_ref().1.alpn_protocol(), None);

    let ok = |side: &str, name: &str| {
        sample(
            &s.registry,
            &[
                "pillion_tls_handshakes_total{",
                &format!("name=\"{name}\""),
                &format!("side=\"{side}\""),
                "result=\"ok\"",
            ],
        )
    };
    assert_eq!(ok("server", "inbound"), Some(3.0));
    assert_eq!(ok("client", "web"), Some(1.0));
    assert!(sample(
        &s.registry,
        &[
            "certificate_expiry_timestamp_seconds{",
            "name=\"inbound\"",
            "kind=\"cert\""
        ]
    )
    .is_some_and(|t| t > 1.7e9));
    assert!(sample(
        &s.registry,
        &[
            "certificate_expiry_timestamp_seconds{",
            "name=\"inbound\"",
            "kind=\"ca\""
        ]
    )
    .is_some_and(|t| t > 1.7e9));
}

/// Runs a client handshake that the server must reject, and returns the server's reason.
async fn server_rejects(s: &mut Setup, c: &ClientTls) -> HandshakeFailure {
    // In TLS 1.3 the client may finish before the server has checked its certificate, so
    // only the server's verdict is asserted; the stream is held until it is known.
    let _stream = c.connect(s.server.tcp().await, s.server.ip()).await;
    let err = s.server.next().await.unwrap_err();
    err.handshake_failure()
        .unwrap_or_else(|| panic!("not a handshake failure: {err}"))
}

#[tokio::test]
async fn client_cert_from_another_ca_rejected() {
    let mut s = setup().await;
    let other = Pki::new();
    let (cert, key) = other.workload("intruder", &id("web"));
    // It trusts the right CA for the server, but its own cert is from another CA.
    let cfg = cluster_tls(Some((&cert, &key)), &[s.pki.ca_path()], &[&id("server")]);
    let c = ClientTls::new("intruder", &cfg, false, &s.metrics).unwrap();
    assert_eq!(
        server_rejects(&mut s, &c).await,
        HandshakeFailure::UnknownCa
    );
    assert_eq!(
        sample(
            &s.registry,
            &[
                "handshakes_total{",
                "side=\"server\"",
                "result=\"unknown_ca\""
            ]
        ),
        Some(1.0)
    );
}

#[tokio::test]
async fn expired_client_cert_rejected() {
    let mut s = setup().await;
    let (cert, key) = s.pki.workload_with("old", &id("web"), Validity::Expired);
    // Pillion refuses to load an expired certificate of its own, so a plain rustls client
    // presents it.
    let mut roots = rustls::RootCertStore::empty();
    roots.add(pem_certs(&s.pki.ca_path()).remove(0)).unwrap();
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_protocol_versions(PROTOCOL_VERSIONS)
    .unwrap()
    .with_root_certificates(roots)
    .with_client_auth_cert(pem_certs(&cert), pem_key(&key))
    .unwrap();
    let _stream = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect("server.td.test".try_into().unwrap(), s.server.tcp().await)
        .await;
    let err = s.server.next().await.unwrap_err();
    assert_eq!(
        err.handshake_failure(),
        Some(HandshakeFailure::CertExpired),
        "{err}"
    );
}

#[tokio::test]
async fn no_client_cert_rejected() {
    let mut s = setup().await;
    let cfg = cluster_tls(None, &[s.pki.ca_path()], &[&id("server")]);
    let c = ClientTls::new("anonymous", &cfg, false, &s.metrics).unwrap();
    assert_eq!(
        server_rejects(&mut s, &c).await,
        HandshakeFailure::NoClientCert
    );
    assert_eq!(
        sample(
            &s.registry,
            &[
                "handshakes_total{",
                "side=\"server\"",
                "result=\"no_client_cert\""
            ]
        ),
        Some(1.0)
    );
}

#[tokio::test]
async fn only_tls12_and_tls13() {
    assert_eq!(PROTOCOL_VERSIONS.len(), 2);
    assert!(PROTOCOL_VERSIONS.iter().all(|v| matches!(
        v.version,
        rustls::ProtocolVersion::TLSv1_2 | rustls::ProtocolVersion::TLSv1_3
    )));

    let mut s = setup().await;

    // The client offers exactly TLS 1.3 and 1.2 (read from its ClientHello).
    let c = client(&s, "web", &[], false);
    let raw = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = raw.local_addr().unwrap();
    let connecting = tokio::spawn(async move {
        let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
        let _ = c.connect(tcp, addr.ip()).await;
    });
    let (mut peer, _) = tokio::time::timeout(STEP, raw.accept())
        .await
        .unwrap()
        .unwrap();
    let mut header = [0u8; 5];
    peer.read_exact(&mut header).await.unwrap();
    let mut body = vec![0u8; usize::from(u16::from_be_bytes([header[3], header[4]]))];
    peer.read_exact(&mut body).await.unwrap();
    assert_eq!(offered_versions(&body), vec![0x0304, 0x0303]);
    drop(peer);
    let _ = tokio::time::timeout(STEP, connecting).await;

    // A TLS 1.1 ClientHello (no supported_versions extension) is refused by the server.
    let mut hello = vec![
        0x01, 0x00, 0x00, 0x00, // ClientHello, length patched below
        0x03, 0x02, // client_version TLS 1.1
    ];
    hello.extend_from_slice(&[7u8; 32]); // random
    hello.extend_from_slice(&[0x00]); // session id
    hello.extend_from_slice(&[0x00, 0x04, 0x00, 0x2f, 0x00, 0x35]); // AES-CBC-SHA suites
    hello.extend_from_slice(&[0x01, 0x00]); // null compression
    let body_len = hello.len() - 4;
    hello[3] = u8::try_from(body_len).unwrap();
    let mut record = vec![0x16, 0x03, 0x02, 0x00, u8::try_from(hello.len()).unwrap()];
    record.extend_from_slice(&hello);
    assert!(pillion_tls::is_client_hello(&record));
    let mut tcp = s.server.tcp().await;
    tcp.write_all(&record).await.unwrap();
    let err = s.server.next().await.unwrap_err();
    assert_eq!(
        err.handshake_failure(),
        Some(HandshakeFailure::Incompatible),
        "{err}"
    );

    // A TLS 1.2-only client is served.
    let (cert, key) = s.pki.workload("tls12", &id("tls12"));
    let mut roots = rustls::RootCertStore::empty();
    roots.add(pem_certs(&s.pki.ca_path()).remove(0)).unwrap();
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_protocol_versions(&[&rustls::version::TLS12])
    .unwrap()
    .with_root_certificates(roots)
    .with_client_auth_cert(pem_certs(&cert), pem_key(&key))
    .unwrap();
    let stream = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect("server.td.test".try_into().unwrap(), s.server.tcp().await)
        .await
        .unwrap();
    assert_eq!(
        stream.get_ref().1.protocol_version(),
        Some(rustls::ProtocolVersion::TLSv1_2)
    );
    let peer = s.server.next().await.unwrap();
    assert_eq!(peer.identity.as_deref(), Some(id("tls12").as_str()));
}

/// The versions in the supported_versions extension of a ClientHello handshake message.
fn offered_versions(hello: &[u8]) -> Vec<u16> {
    let u16_at = |i: usize| usize::from(u16::from_be_bytes([hello[i], hello[i + 1]]));
    assert_eq!(hello[0], 0x01, "a ClientHello");
    let mut i = 4 + 2 + 32; // header, legacy version, random
    i += 1 + usize::from(hello[i]); // session id
    i += 2 + u16_at(i); // cipher suites
    i += 1 + usize::from(hello[i]); // compression methods
    let end = i + 2 + u16_at(i);
    i += 2;
    while i < end {
        let (ty, len) = (u16_at(i), u16_at(i + 2));
        if ty == 0x002b {
            let list = &hello[i + 5..i + 5 + usize::from(hello[i + 4])];
            return list
                .chunks(2)
                .map(|v| u16::from_be_bytes([v[0], v[1]]))
                .filter(|v| v & 0x0f0f != 0x0a0a) // GREASE
                .collect();
        }
        i += 4 + len;
    }
    panic!("no supported_versions extension");
}

fn pem_certs(path: &std::path::Path) -> Vec<rustls::pki_types::CertificateDer<'static>> {
    use rustls::pki_types::pem::PemObject;
    rustls::pki_types::CertificateDer::pem_file_iter(path)
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap()
}

fn pem_key(path: &std::path::Path) -> rustls::pki_types::PrivateKeyDer<'static> {
    use rustls::pki_types::pem::PemObject;
    rustls::pki_types::PrivateKeyDer::from_pem_file(path).unwrap()
}

#[tokio::test]
async fn server_identity_mismatch_names_both() {
    let mut s = setup().await;
    let c = client(
        &s,
        "web",
        &[
            "spiffe://td.test/ns/default/sa/db",
            "spiffe://td.test/ns/prod/*",
        ],
        false,
    );
    let err = c
        .connect(s.server.tcp().await, s.server.ip())
        .await
        .unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, TlsError::IdentityMismatch(_)), "{err:?}");
    assert_eq!(
        msg,
        format!(
            "server identity {} is not one of [spiffe://td.test/ns/default/sa/db, spiffe://td.test/ns/prod/*]",
            id("server")
        )
    );
    // The server sees the client's rejection as an alert.
    let server_err = s.server.next().await.unwrap_err();
    assert_eq!(
        server_err.handshake_failure(),
        Some(HandshakeFailure::PeerAlert)
    );
    assert_eq!(
        sample(
            &s.registry,
            &[
                "handshakes_total{",
                "name=\"web\"",
                "result=\"identity_mismatch\""
            ]
        ),
        Some(1.0)
    );
}

#[tokio::test]
async fn hostname_verification_without_identities() {
    let mut s = setup().await;
    let (cert, key) = s.pki.workload("web", &id("web"));
    let mut cfg = cluster_tls(Some((&cert, &key)), &[s.pki.ca_path()], &[]);

    // No `sni`: the endpoint IP is verified (the cert has IP SAN 127.0.0.1).
    let c = ClientTls::new("by-ip", &cfg, false, &s.metrics).unwrap();
    c.connect(s.server.tcp().await, s.server.ip())
        .await
        .unwrap();
    s.server.next().await.unwrap();

    cfg.sni = Some("server.td.test".into());
    let c = ClientTls::new("by-name", &cfg, false, &s.metrics).unwrap();
    c.connect(s.server.tcp().await, s.server.ip())
        .await
        .unwrap();
    s.server.next().await.unwrap();

    cfg.sni = Some("other.td.test".into());
    let c = ClientTls::new("wrong-name", &cfg, false, &s.metrics).unwrap();
    let err = c
        .connect(s.server.tcp().await, s.server.ip())
        .await
        .unwrap_err();
    assert_eq!(
        err.handshake_failure(),
        Some(HandshakeFailure::BadName),
        "{err}"
    );
}

#[tokio::test]
async fn server_from_untrusted_ca_rejected_by_client() {
    let mut s = setup().await;
    let other = Pki::new();
    let (cert, key) = s.pki.workload("web", &id("web"));
    let cfg = cluster_tls(Some((&cert, &key)), &[other.ca_path()], &[&id("server")]);
    let c = ClientTls::new("web", &cfg, false, &s.metrics).unwrap();
    let err = c
        .connect(s.server.tcp().await, s.server.ip())
        .await
        .unwrap_err();
    assert_eq!(
        err.handshake_failure(),
        Some(HandshakeFailure::UnknownCa),
        "{err}"
    );
    let _ = s.server.next().await;
}

#[tokio::test]
async fn certificates_outside_their_validity_are_refused_at_startup() {
    let pki = Pki::new();
    let metrics = TlsMetrics::default();
    for (validity, stem, reason) in [
        (Validity::Expired, "expired", "the certificate expired at"),
        (
            Validity::NotYetValid,
            "future",
            "the certificate is not valid until",
        ),
    ] {
        let (cert, key) = pki.workload_with(stem, &id(stem), validity);
        let err = ServerTls::new("l", &listener_tls(&cert, &key, &[pki.ca_path()]), &metrics)
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with(&format!("{}: {reason}", cert.display())),
            "{err}"
        );
        let cfg = cluster_tls(Some((&cert, &key)), &[pki.ca_path()], &[]);
        let err = ClientTls::new("c", &cfg, false, &metrics)
            .unwrap_err()
            .to_string();
        assert!(err.contains(reason), "{err}");
    }
}

#[tokio::test]
async fn several_ca_bundles() {
    let a = Pki::new();
    let b = Pki::new();
    let (cert, key) = a.workload("server", &id("server"));
    let metrics = TlsMetrics::default();
    let tls = ServerTls::new(
        "inbound",
        &listener_tls(&cert, &key, &[a.ca_path(), b.ca_path()]),
        &metrics,
    )
    .unwrap();
    let mut server = TestServer::start(tls).await;
    for pki in [&a, &b] {
        let (cert, key) = pki.workload("client", &id("client"));
        let cfg = cluster_tls(Some((&cert, &key)), &[a.ca_path()], &[&id("server")]);
        let c = ClientTls::new("c", &cfg, false, &metrics).unwrap();
        let _stream = c.connect(server.tcp().await, server.ip()).await.unwrap();
        assert_eq!(
            server.next().await.unwrap().identity.as_deref(),
            Some(id("client").as_str())
        );
    }
}

#[tokio::test]
async fn bad_files_are_reported_with_their_path() {
    let pki = Pki::new();
    let metrics = TlsMetrics::default();
    let (cert, key) = pki.workload("server", &id("server"));
    let (_, other_key) = pki.workload("other", &id("other"));

    let err = ServerTls::new(
        "l",
        &listener_tls(&cert, &other_key, &[pki.ca_path()]),
        &metrics,
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("other-key.pem"), "{err}");
    assert!(err.contains("does not match the certificate"), "{err}");

    let garbage = pki.path("garbage.pem");
    std::fs::write(&garbage, "not a certificate").unwrap();
    let err = ServerTls::new(
        "l",
        &listener_tls(&garbage, &key, &[pki.ca_path()]),
        &metrics,
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("garbage.pem: no certificate found"), "{err}");

    // What was found instead is named: a certificate where the key goes, an encrypted key, a
    // file with no PEM at all.
    let err = ServerTls::new("l", &listener_tls(&cert, &cert, &[pki.ca_path()]), &metrics)
        .unwrap_err()
        .to_string();
    assert!(
        err.starts_with(&format!("{}: no private key found", cert.display())),
        "{err}"
    );
    assert!(err.contains("found `CERTIFICATE`"), "{err}");
    assert!(err.contains("swapped"), "{err}");
    let encrypted = pki.path("encrypted-key.pem");
    std::fs::write(
        &encrypted,
        "-----BEGIN ENCRYPTED PRIVATE KEY-----\nMIIFHDBOBgkqhkiG9w0BBQ0wQTApBgkqhkiG9w0BBQwwHAQI\n-----END ENCRYPTED PRIVATE KEY-----\n",
    )
    .unwrap();
    let err = ServerTls::new(
        "l",
        &listener_tls(&cert, &encrypted, &[pki.ca_path()]),
        &metrics,
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("encrypted-key.pem"), "{err}");
    assert!(err.contains("found `ENCRYPTED PRIVATE KEY`"), "{err}");
    assert!(
        err.contains("encrypted, which Pillion does not support"),
        "{err}"
    );
    let err = ServerTls::new(
        "l",
        &listener_tls(&cert, &garbage, &[pki.ca_path()]),
        &metrics,
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("garbage.pem: no private key found"), "{err}");
    assert!(err.contains("found no PEM blocks"), "{err}");
    let err = ServerTls::new("l", &listener_tls(&key, &key, &[pki.ca_path()]), &metrics)
        .unwrap_err()
        .to_string();
    assert!(err.contains("no certificate found"), "{err}");
    assert!(
        err.contains("found `PRIVATE KEY`: a private key, where a certificate is expected"),
        "{err}"
    );

    let missing = pki.path("missing.pem");
    let err = ServerTls::new("l", &listener_tls(&cert, &key, &[missing]), &metrics)
        .unwrap_err()
        .to_string();
    assert!(err.contains("missing.pem: cannot read"), "{err}");

    let err = ServerTls::new("l", &listener_tls(&cert, &key, &[]), &metrics)
        .unwrap_err()
        .to_string();
    assert!(err.contains("at least one `ca`"), "{err}");

    let mut cfg = cluster_tls(Some((&cert, &key)), &[pki.ca_path()], &[]);
    cfg.key = None;
    let err = ClientTls::new("c", &cfg, false, &metrics)
        .unwrap_err()
        .to_string();
    assert!(err.contains("go together"), "{err}");
    let cfg = cluster_tls(None, &[pki.ca_path()], &["spiffe://*/x"]);
    let err = ClientTls::new("c", &cfg, false, &metrics)
        .unwrap_err()
        .to_string();
    assert!(err.contains("only allowed at the end"), "{err}");
}

/// A client certificate signed by `pki`'s CA with exactly these SANs (no SPIFFE ID unless one
/// is given), written to `<stem>.pem` (with the CA) and `<stem>-key.pem`.
fn signed_with_sans(
    pki: &Pki,
    stem: &str,
    sans: Vec<rcgen::SanType>,
) -> (std::path::PathBuf, std::path::PathBuf) {
    let ca_key = rcgen::KeyPair::from_pem(&pki.ca.key_pem).unwrap();
    let issuer = rcgen::CertificateParams::from_ca_cert_pem(&pki.ca.cert_pem)
        .unwrap()
        .self_signed(&ca_key)
        .unwrap();
    let key = rcgen::KeyPair::generate().unwrap();
    let mut params = rcgen::CertificateParams::default();
    params.subject_alt_names = sans;
    params.extended_key_usages = vec![
        rcgen::ExtendedKeyUsagePurpose::ServerAuth,
        rcgen::ExtendedKeyUsagePurpose::ClientAuth,
    ];
    params.use_authority_key_identifier_extension = true;
    let cert = params.signed_by(&key, &issuer, &ca_key).unwrap();
    let (cert_path, key_path) = (
        pki.path(&format!("{stem}.pem")),
        pki.path(&format!("{stem}-key.pem")),
    );
    std::fs::write(&cert_path, format!("{}{}", cert.pem(), pki.ca.cert_pem)).unwrap();
    std::fs::write(&key_path, key.serialize_pem()).unwrap();
    (cert_path, key_path)
}

/// The identity the server reports for a client presenting a certificate with `sans`.
async fn identity_of(s: &mut Setup, stem: &str, sans: Vec<rcgen::SanType>) -> Option<String> {
    let (cert, key) = signed_with_sans(&s.pki, stem, sans);
    let cfg = cluster_tls(Some((&cert, &key)), &[s.pki.ca_path()], &[&id("server")]);
    let c = ClientTls::new(stem, &cfg, false, &s.metrics).unwrap();
    let _stream = c
        .connect(s.server.tcp().await, s.server.ip())
        .await
        .unwrap();
    let peer = s.server.next().await.unwrap();
    peer.identity.as_deref().map(str::to_owned)
}

#[tokio::test]
async fn a_dns_san_is_never_taken_for_a_spiffe_id() {
    use pillion_config::AuthzRule;
    use pillion_tls::authz::{Decision, Policy};
    use rcgen::SanType;
    let mut s = setup().await;
    let admin = id("admin");
    let ia5 = |s: &str| SanType::DnsName(s.try_into().unwrap());
    let rule = |name: &str, from: &str| AuthzRule {
        name: Some(name.into()),
        from: vec![from.into()],
        methods: vec![],
        paths: vec![],
    };
    let policy = Policy::compile(
        "inbound",
        &[
            rule("admins", &admin),
            rule("mesh", "spiffe://td.test/*"),
            rule("dns", "web.td.test"),
        ],
        &s.metrics,
    )
    .unwrap();
    let decide = |id: Option<&str>| policy.check(id, None);

    // A DNS SAN spelling a SPIFFE ID, and no URI SAN: no identity at all, so denied.
    let fake = identity_of(&mut s, "fake", vec![ia5(&admin)]).await;
    assert_eq!(fake, None);
    assert_eq!(decide(fake.as_deref()), Decision::Deny);

    // With a real DNS name after it, that name is the identity: it matches DNS rules only.
    let fake_then_dns =
        identity_of(&mut s, "fake-dns", vec![ia5(&admin), ia5("web.td.test")]).await;
    assert_eq!(fake_then_dns.as_deref(), Some("web.td.test"));
    assert_eq!(
        decide(fake_then_dns.as_deref()),
        Decision::Allow { rule: "dns".into() }
    );

    // A URI SAN with the spiffe scheme is the SPIFFE ID, whatever DNS SANs come first.
    let real = identity_of(
        &mut s,
        "real",
        vec![
            ia5("web.td.test"),
            SanType::URI(admin.as_str().try_into().unwrap()),
        ],
    )
    .await;
    assert_eq!(real.as_deref(), Some(admin.as_str()));
    assert_eq!(
        decide(real.as_deref()),
        Decision::Allow {
            rule: "admins".into()
        }
    );
}
