//! Config validation through the CLI: `pillion check` and `pillion run --config` reject bad
//! files with `FILE:LINE:` errors and exit 2 before binding anything; shipped configs pass.

use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::Duration;

use pillion_tests::free_addr;
use pillion_tests::net::is_bindable;
use pillion_tests::proxy::pillion;
use tempfile::TempDir;

const LIMIT: Duration = Duration::from_secs(30);

/// A bad config and what its error must say.
struct Case {
    name: &'static str,
    yaml: String,
    /// The 1-based line the error must point at: the first line containing this text.
    line_of: Option<&'static str>,
    /// The error must mention at least one of these (key path or bad value).
    mentions: Vec<String>,
    /// The listener address in the config (must stay unbound).
    listen: SocketAddr,
}

/// 1-based number of the first line of `yaml` containing `needle`.
fn line_number(yaml: &str, needle: &str) -> usize {
    yaml.lines()
        .position(|l| l.contains(needle))
        .unwrap_or_else(|| panic!("{needle:?} not in config:\n{yaml}"))
        + 1
}

fn cases() -> Vec<Case> {
    let listen = free_addr();
    let admin = free_addr();
    let other = free_addr();
    // Every config starts with an admin address of its own, never the default fixed port.
    let head = format!("admin:\n  address: {admin}\n");
    let case = |name, body: String, line_of, mentions: &[&str]| Case {
        name,
        yaml: format!("{head}{body}"),
        line_of,
        mentions: mentions.iter().map(|m| m.to_string()).collect(),
        listen,
    };
    let listener = format!("listeners:\n  - name: in\n    address: {listen}\n    cluster: app\n");
    let cluster = "clusters:\n  - name: app\n    endpoints: [127.0.0.1:9]\n";
    vec![
        case(
            "bad yaml syntax",
            format!("{listener}    protocol: http: oops\n{cluster}"),
            Some("http: oops"),
            &[],
        ),
        case(
            "unknown key",
            format!("{listener}{cluster}    nmae: extra\n"),
            Some("nmae"),
            &["nmae"],
        ),
        case(
            "wrong type",
            format!(
                "{listener}    routes:\n      - split:\n          - cluster: app\n            weight: heavy\n{cluster}"
            ),
            Some("weight: heavy"),
            &["weight", "heavy"],
        ),
        case(
            "bad duration",
            format!("drain_timeout: 5 parsecs\n{listener}{cluster}"),
            Some("parsecs"),
            &["drain_timeout", "5 parsecs"],
        ),
        case(
            "bad detect_timeout",
            format!("{listener}    detect_timeout: soon\n{cluster}"),
            Some("soon"),
            &["detect_timeout", "soon"],
        ),
        case(
            "bad listener address",
            format!(
                "listeners:\n  - name: in\n    address: 127.0.0.1:99999\n    cluster: app\n{cluster}"
            ),
            Some("99999"),
            &["address", "127.0.0.1:99999"],
        ),
        case(
            "bad endpoint address",
            format!("{listener}clusters:\n  - name: app\n    endpoints: [\"no port here\"]\n"),
            Some("no port here"),
            &["endpoints", "no port here"],
        ),
        case(
            "route names an unknown cluster",
            format!("{listener}    routes:\n      - cluster: nope\n{cluster}"),
            Some("cluster: nope"),
            &["nope"],
        ),
        case(
            "listener names an unknown cluster",
            format!(
                "listeners:\n  - name: in\n    address: {listen}\n    cluster: ghost\n{cluster}"
            ),
            Some("ghost"),
            &["ghost"],
        ),
        case(
            "path and prefix together",
            format!("{listener}    routes:\n      - match: {{ path: /a, prefix: /b }}\n        cluster: app\n{cluster}"),
            Some("path: /a"),
            &["path", "prefix"],
        ),
        case(
            "unknown key in a route match",
            format!("{listener}    routes:\n      - match:\n          prefx: /a\n        cluster: app\n{cluster}"),
            Some("prefx"),
            &["prefx"],
        ),
        case(
            "two listeners on one address",
            // The duplicate's item starts on its address line, so either is "the line".
            format!("{listener}  - address: {listen}\n    name: again\n    cluster: app\n{cluster}"),
            Some("- address:"),
            &["address", &listen.to_string()],
        ),
        case(
            "duplicate cluster names",
            format!("{listener}{cluster}  - name: app  # again\n    endpoints: [127.0.0.1:10]\n"),
            Some("# again"),
            &["app"],
        ),
        case(
            "auto listener without cluster",
            format!("listeners:\n  - protocol: auto\n    name: mixed\n    address: {listen}\n{cluster}"),
            Some("protocol: auto"),
            &["cluster"],
        ),
        case(
            "duplicate listener names",
            format!("{listener}  - name: in  # again\n    address: {other}\n    cluster: app\n{cluster}"),
            Some("# again"),
            &["name"],
        ),
        case(
            "unknown protocol",
            format!("{listener}    protocol: quic\n{cluster}"),
            Some("quic"),
            &["protocol", "quic"],
        ),
        case(
            "tcp listener without cluster",
            format!("listeners:\n  - protocol: tcp\n    name: raw\n    address: {listen}\n{cluster}"),
            Some("protocol: tcp"),
            &["cluster"],
        ),
        case(
            "listener name unfit for a metric label",
            format!("listeners:\n  - name: \"in bound\"\n    address: {listen}\n    cluster: app\n{cluster}"),
            Some("in bound"),
            &["listeners[0].name: the listener name `in bound`"],
        ),
        case(
            "route named like the catch-all",
            format!("{listener}    routes:\n      - name: default\n        cluster: app\n{cluster}"),
            Some("name: default"),
            &["`default` is reserved"],
        ),
        case(
            "split weights past u32",
            format!("{listener}    routes:\n      - split: [{{cluster: app, weight: 4294967295}}, {{cluster: app, weight: 1}}]\n{cluster}"),
            Some("split:"),
            &["add up to 4294967296"],
        ),
        case(
            "rewrite of a framing header",
            format!("{listener}    routes:\n      - cluster: app\n        request_headers: {{add: {{content-length: \"0\"}}}}\n{cluster}"),
            Some("content-length"),
            &["request_headers.add.content-length"],
        ),
        case(
            "pseudo-header rewrite",
            format!("{listener}    routes:\n      - cluster: app\n        response_headers:\n          remove: [\":status\"]\n{cluster}"),
            Some(":status"),
            &["pseudo-header"],
        ),
        case(
            "header added twice",
            format!("{listener}    routes:\n      - cluster: app\n        request_headers:\n          add: {{x-env: a, X-Env: b}}\n{cluster}"),
            Some("X-Env"),
            &["given twice"],
        ),
        case(
            "absurd duration",
            format!("drain_timeout: 1000000h\n{listener}{cluster}"),
            Some("1000000h"),
            &["drain_timeout", "at most 8760h"],
        ),
        case(
            "zero fault delay",
            format!("{listener}    routes:\n      - cluster: app\n        fault: {{delay: {{percent: 1, duration: 0ms}}}}\n{cluster}"),
            Some("fault:"),
            &["fault.delay.duration"],
        ),
        case(
            "access log template with an unknown field",
            format!("access_log:\n  format: \"%method% %colour%\"\n{listener}{cluster}"),
            Some("%colour%"),
            &["%colour%"],
        ),
        case(
            "access log buffer of zero",
            format!("access_log:\n  buffer: 0\n{listener}{cluster}"),
            Some("buffer: 0"),
            &["access_log.buffer: expected 1 to 1048576"],
        ),
        case(
            "access log in a directory that does not exist",
            format!("access_log:\n  path: /nonexistent-pillion/access.log\n{listener}{cluster}"),
            Some("path:"),
            &["`/nonexistent-pillion` does not exist"],
        ),
        case(
            "health address on a listener's",
            // `head` ends inside `admin:`, so this line is part of it.
            format!("  health_address: {listen}\n{listener}{cluster}"),
            Some("    address: "),
            &["already used by admin.health_address"],
        ),
        case(
            "dual-stack wildcard beside an IPv4 wildcard",
            format!("listeners:\n  - name: v6\n    address: \"[::]:{port}\"\n    cluster: app\n  - name: v4\n    address: 0.0.0.0:{port}\n    cluster: app\n{cluster}", port = listen.port()),
            Some("0.0.0.0:"),
            &["already used by listeners[0].address"],
        ),
        case(
            "retry condition of the wrong type",
            format!("{listener}    routes:\n      - cluster: app\n        retry: {{on: [true]}}\n{cluster}"),
            Some("retry:"),
            &["retry.on[0]: invalid type: boolean `true`, expected connect-failure, reset"],
        ),
        case(
            "http-only key on a tcp listener",
            format!("{listener}    protocol: tcp\n    request_id: false\n{cluster}"),
            Some("request_id"),
            &["`request_id` applies only to http and auto listeners"],
        ),
    ]
}

/// Writes `yaml` to `DIR/STEM.yaml` (stems say nothing, so the path cannot satisfy a check).
fn write(dir: &TempDir, stem: &str, yaml: &str) -> PathBuf {
    let path = dir.path().join(format!("{stem}.yaml"));
    std::fs::write(&path, yaml).unwrap();
    path
}

/// The checks every rejection must pass.
fn assert_rejected(case: &Case, path: &Path, out: &Output, how: &str) {
    let stderr = String::from_utf8_lossy(&out.stderr);
    let ctx = format!(
        "{how} [{}]\nconfig:\n{}\nstderr:\n{stderr}",
        case.name, case.yaml
    );
    assert_eq!(out.status.code(), Some(2), "exit code; {ctx}");
    let path = path.display().to_string();
    assert!(stderr.contains(&path), "names the file; {ctx}");
    if let Some(needle) = case.line_of {
        let at = format!("{path}:{}:", line_number(&case.yaml, needle));
        assert!(stderr.contains(&at), "points at {at}; {ctx}");
    }
    if !case.mentions.is_empty() {
        let message = stderr.replace(&path, "");
        assert!(
            case.mentions.iter().any(|m| message.contains(m.as_str())),
            "mentions one of {:?}; {ctx}",
            case.mentions
        );
    }
    let lower = stderr.to_lowercase();
    assert!(
        !lower.contains("panicked") && !lower.contains("backtrace"),
        "no panic; {ctx}"
    );
}

#[test]
fn check_rejects_each_bad_config_with_file_line_and_key() {
    let dir = TempDir::new().unwrap();
    for (i, case) in cases().into_iter().enumerate() {
        let path = write(&dir, &format!("c{i}"), &case.yaml);
        let out = pillion(&["check", path.to_str().unwrap()], LIMIT);
        assert_rejected(&case, &path, &out, "pillion check");
        assert!(
            !String::from_utf8_lossy(&out.stdout).contains(": ok"),
            "[{}] check printed ok",
            case.name
        );
    }
}

#[test]
fn run_rejects_each_bad_config_without_binding() {
    let dir = TempDir::new().unwrap();
    for (i, case) in cases().into_iter().enumerate() {
        let path = write(&dir, &format!("c{i}"), &case.yaml);
        let out = pillion(&["run", "--config", path.to_str().unwrap()], LIMIT);
        assert_rejected(&case, &path, &out, "pillion run --config");
        assert!(
            is_bindable(case.listen),
            "[{}] {} left bound",
            case.name,
            case.listen
        );
    }
}

#[test]
fn run_validates_before_binding_even_when_the_port_is_taken() {
    // Holding the listener's port: a proxy that bound before validating would report
    // "address in use" instead of the config error.
    let case = cases()
        .into_iter()
        .find(|c| c.name == "route names an unknown cluster")
        .unwrap();
    let _held = TcpListener::bind(case.listen).unwrap();
    let dir = TempDir::new().unwrap();
    let path = write(&dir, "c", &case.yaml);
    let out = pillion(&["run", "--config", path.to_str().unwrap()], LIMIT);
    assert_rejected(&case, &path, &out, "pillion run --config (port held)");
    let stderr = String::from_utf8_lossy(&out.stderr).to_lowercase();
    assert!(!stderr.contains("in use"), "{stderr}");
}

#[test]
fn check_accepts_a_file_that_starts_with_a_byte_order_mark() {
    let dir = TempDir::new().unwrap();
    let yaml = format!(
        "\u{feff}admin:\n  address: {}\nlisteners:\n  - name: in\n    address: {}\n    cluster: app\nclusters:\n  - name: app\n    endpoints: [127.0.0.1:9]\n",
        free_addr(),
        free_addr()
    );
    let path = write(&dir, "bom", &yaml);
    let out = pillion(&["check", path.to_str().unwrap()], LIMIT);
    assert_eq!(
        out.status.code(),
        Some(0),
        "stderr:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn check_accepts_a_good_config() {
    let dir = TempDir::new().unwrap();
    let yaml = format!(
        r#"admin:
  address: {admin}
drain_timeout: 2s
listeners:
  - name: in
    address: {inbound}
    direction: inbound
    protocol: auto
    detect_timeout: 250ms
    cluster: app
    routes:
      - name: api
        match:
          host: "*.api.local"
          prefix: /v1
          headers:
            - name: x-canary
              exact: "1"
            - name: x-present
        split:
          - cluster: app
            weight: 90
          - cluster: other
            weight: 10
        request_headers: {{ add: {{ x-env: prod }}, remove: [x-internal] }}
        response_headers: {{ add: {{ x-served-by: pillion }}, remove: [server] }}
  - name: out
    address: {outbound}
    direction: outbound
    protocol: http
    routes:
      - match:
          path: /exact
        cluster: other
  - name: raw
    address: {raw}
    protocol: tcp
    cluster: other
clusters:
  - name: app
    endpoints: [127.0.0.1:8080, "localhost:9000"]
    connect_timeout: 1s
    protocol: http2
    dns_refresh: 1m
  - name: other
    endpoints: [127.0.0.1:9001]
"#,
        admin = free_addr(),
        inbound = free_addr(),
        outbound = free_addr(),
        raw = free_addr(),
    );
    let path = write(&dir, "good", &yaml);
    let out = pillion(&["check", path.to_str().unwrap()], LIMIT);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(0),
        "stdout:\n{stdout}\nstderr:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains(&format!("{}: ok", path.display())),
        "{stdout}"
    );
}

#[test]
fn shipped_configs_pass_check() {
    let config_dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../config");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&config_dir)
        .unwrap_or_else(|e| panic!("{}: {e}", config_dir.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "yaml" || x == "yml"))
        .collect();
    files.sort();
    assert!(
        files.iter().any(|p| p.ends_with("pillion.yaml")),
        "config/pillion.yaml missing: {files:?}"
    );
    for file in files {
        let out = pillion(&["check", file.to_str().unwrap()], LIMIT);
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert_eq!(
            out.status.code(),
            Some(0),
            "{}: stdout:\n{stdout}\nstderr:\n{}",
            file.display(),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(stdout.contains(": ok"), "{}: {stdout}", file.display());
    }
}

#[test]
fn check_loads_tls_files_and_policies() {
    let dir = TempDir::new().unwrap();
    let missing = dir.path().join("missing.pem");
    let garbage = dir.path().join("garbage.pem");
    std::fs::write(&garbage, "not a certificate\n").unwrap();
    let yaml = format!(
        "listeners:\n  - name: in\n    address: {listen}\n    protocol: http\n    cluster: app\n    tls: {{cert: {missing}, key: {garbage}, ca: [{garbage}]}}\n    authz:\n      - {{from: ['spiffe://x/*/bad']}}\nclusters:\n  - name: app\n    endpoints: [127.0.0.1:1]\n    tls: {{ca: [{garbage}]}}\n",
        listen = free_addr(),
        missing = missing.display(),
        garbage = garbage.display(),
    );
    let path = write(&dir, "tls", &yaml);
    let out = pillion(&["check", path.to_str().unwrap()], LIMIT);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    // Located like every other error: the line of the key.
    let file = path.display();
    assert!(
        stderr.contains(&format!("{file}:6:10: listeners[0].tls")),
        "{stderr}"
    );
    assert!(stderr.contains("missing.pem"), "{stderr}");
    assert!(
        stderr.contains(&format!("{file}:8:7: listeners[0].authz")),
        "{stderr}"
    );
    assert!(
        stderr.contains(&format!("{file}:12:10: clusters[0].tls")),
        "{stderr}"
    );
    assert!(!stderr.contains("panicked"), "{stderr}");
}

#[test]
fn run_rejects_a_log_level_typo_without_binding() {
    let dir = TempDir::new().unwrap();
    let listen = free_addr();
    let yaml = format!(
        "admin:\n  address: {}\n  health_address: null\nlisteners:\n  - name: in\n    address: {listen}\n    cluster: app\nclusters:\n  - name: app\n    endpoints: [127.0.0.1:9]\n",
        free_addr()
    );
    let path = write(&dir, "c", &yaml);
    for (level, says) in [
        ("inof", "`inof` is not a log level"),
        (
            "info,pillion_proxy=verbose",
            "`pillion_proxy=verbose` is not a log directive",
        ),
    ] {
        let out = pillion(
            &[
                "run",
                "--config",
                path.to_str().unwrap(),
                "--log-level",
                level,
            ],
            LIMIT,
        );
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{level}: {stderr}");
        assert!(stderr.contains(&format!("--log-level: {says}")), "{stderr}");
        assert!(
            stderr.contains("off, error, warn, info, debug, trace"),
            "{stderr}"
        );
        assert!(is_bindable(listen), "{level}: {listen} left bound");
    }
}

#[test]
fn run_refuses_unusable_certificates_and_keys_naming_the_file_and_what_it_holds() {
    use pillion_tests::mtls::{spiffe, yq, Pki};
    let pki = Pki::new();
    let ca = pki.ca("ca");
    let good = pki.workload(&ca, "good", "server", &spiffe("default", "server"), &[]);
    let expired = pki.workload(
        &ca,
        "old",
        "server",
        &spiffe("default", "server"),
        &["--expired"],
    );
    let encrypted = pki.root().join("encrypted-key.pem");
    std::fs::write(
        &encrypted,
        "-----BEGIN ENCRYPTED PRIVATE KEY-----\nMIIFHDBOBgkqhkiG9w0BBQ0wQTApBgkqhkiG9w0BBQwwHAQI\n-----END ENCRYPTED PRIVATE KEY-----\n",
    )
    .unwrap();
    let cases = [
        (
            "an expired certificate",
            &expired.cert,
            &expired.key,
            &expired.cert,
            "the certificate expired at",
        ),
        (
            "an encrypted key",
            &good.cert,
            &encrypted,
            &encrypted,
            "found `ENCRYPTED PRIVATE KEY`",
        ),
        (
            "a certificate as the key",
            &good.cert,
            &good.cert,
            &good.cert,
            "found `CERTIFICATE`",
        ),
        (
            "a key as the certificate",
            &good.key,
            &good.key,
            &good.key,
            "found `PRIVATE KEY`",
        ),
    ];
    for (what, cert, key, named, says) in cases {
        let listen = free_addr();
        let yaml = format!(
            "admin:\n  address: {admin}\n  health_address: null\nlisteners:\n  - name: in\n    address: {listen}\n    protocol: http\n    cluster: app\n    tls: {{cert: {cert}, key: {key}, ca: [{ca}]}}\nclusters:\n  - name: app\n    endpoints: [127.0.0.1:1]\n",
            admin = free_addr(),
            cert = yq(cert),
            key = yq(key),
            ca = yq(&ca.pem),
        );
        let path = pki.root().join("pillion.yaml");
        std::fs::write(&path, &yaml).unwrap();
        let out = pillion(&["run", "--config", path.to_str().unwrap()], LIMIT);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{what}: {stderr}");
        let line = stderr
            .lines()
            .find(|l| l.contains("listeners[0].tls"))
            .unwrap_or_else(|| panic!("{what}: no error for listeners[0].tls in {stderr}"));
        assert!(
            line.contains(&named.display().to_string()),
            "{what}: {line}"
        );
        assert!(line.contains(says), "{what}: {line}");
        assert!(is_bindable(listen), "{what}: {listen} was bound");
    }
}

#[test]
fn a_ca_bundle_with_no_certificate_in_date_is_refused_naming_the_file() {
    use pillion_tests::mtls::{spiffe, yq, Pki};
    let pki = Pki::new();
    let ca = pki.ca("ca");
    let server = pki.workload(&ca, "certs", "server", &spiffe("default", "server"), &[]);
    let expired = pki.expired_ca("old-ca");
    let listen = free_addr();
    let config = |bundle: &str| {
        format!(
            "admin:\n  address: {admin}\n  health_address: null\nlisteners:\n  - name: in\n    address: {listen}\n    protocol: http\n    cluster: app\n    tls: {{cert: {cert}, key: {key}, ca: [{bundle}]}}\nclusters:\n  - name: app\n    endpoints: [127.0.0.1:1]\n    tls: {{ca: [{bundle}]}}\n",
            admin = free_addr(),
            cert = yq(&server.cert),
            key = yq(&server.key),
        )
    };
    let path = pki.root().join("pillion.yaml");
    let file = path.to_str().unwrap();
    std::fs::write(&path, config(&yq(&expired.pem))).unwrap();
    for args in [vec!["check", file], vec!["run", "--config", file]] {
        let out = pillion(&args, LIMIT);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
        for key in ["listeners[0].tls", "clusters[0].tls"] {
            let line = stderr
                .lines()
                .find(|l| l.contains(key))
                .unwrap_or_else(|| panic!("{args:?}: no error for {key} in {stderr}"));
            assert!(
                line.contains(&format!(
                    "{}: no CA certificate is within its validity period",
                    expired.pem.display()
                )),
                "{args:?}: {line}"
            );
            assert!(
                line.contains(
                    "certificate #1 (CN=Expired test CA old-ca) expired at 2021-01-01 00:00:00 UTC (notAfter)"
                ),
                "{args:?}: {line}"
            );
        }
        assert!(is_bindable(listen), "{args:?}: {listen} was bound");
    }

    // A CA rotation: the expired CA beside the current one is a usable bundle.
    std::fs::write(
        &path,
        config(&format!("{}, {}", yq(&expired.pem), yq(&ca.pem))),
    )
    .unwrap();
    let out = pillion(&["check", file], LIMIT);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
