//! Authorization by peer identity, method and normalized path, on mTLS listeners: listener and
//! route policies, default deny, `unauthenticated` peers on a permissive listener, TCP
//! connections closed after the handshake, and the decision metric.
//!
//! Clients are rustls test clients presenting workload certificates made with `pillion cert`.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use http::{Response, StatusCode};
use pillion_tests::client::{full, Body};
use pillion_tests::mtls::{listener_tls, roundtrip, spiffe, Ca, Issued, Pki, TlsClient};
use pillion_tests::upstream::Upstream;
use pillion_tests::{client, free_addr, H1Client, Metrics, Proxy};
use tokio::io::AsyncWriteExt;

const PEER: &str = "x-pillion-peer-identity";
const DECISIONS: &str = "pillion_tls_authz_decisions_total";

/// An HTTP app that records `METHOD path` of every request it gets and answers 200 with the
/// peer identity it was handed in `x-app-peer`.
struct App {
    upstream: Upstream,
    seen: Arc<Mutex<Vec<String>>>,
}

async fn app() -> App {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let log = seen.clone();
    let upstream = Upstream::http1(move |req| {
        let log = log.clone();
        async move {
            let line = format!("{} {}", req.method(), req.uri());
            log.lock().expect("lock").push(line.clone());
            let peer = req
                .headers()
                .get(PEER)
                .map(|v| v.to_str().expect("ascii").to_string())
                .unwrap_or_default();
            Response::builder()
                .header("x-app-peer", peer)
                .body::<Body>(full(line))
                .expect("response")
        }
    })
    .await;
    App { upstream, seen }
}

impl App {
    fn seen(&self) -> Vec<String> {
        self.seen.lock().expect("lock").clone()
    }
}

/// A TCP app echoing bytes until the client half-closes.
async fn tcp_echo() -> Upstream {
    Upstream::tcp(|mut tcp| async move {
        let (mut r, mut w) = tcp.split();
        let _ = tokio::io::copy(&mut r, &mut w).await;
        let _ = w.shutdown().await;
    })
    .await
}

struct Certs {
    _pki: Pki,
    ca: Ca,
    server: Issued,
    /// spiffe://cluster.local/ns/prod/sa/frontend
    frontend: Issued,
    /// spiffe://cluster.local/ns/dev/sa/tester
    tester: Issued,
    /// spiffe://cluster.local/ns/ops/sa/admin
    admin: Issued,
}

fn certs() -> Certs {
    let pki = Pki::new();
    let ca = pki.ca("ca");
    let server = pki.workload(&ca, "certs", "server", &spiffe("default", "server"), &[]);
    let frontend = pki.workload(&ca, "certs", "frontend", &spiffe("prod", "frontend"), &[]);
    let tester = pki.workload(&ca, "certs", "tester", &spiffe("dev", "tester"), &[]);
    let admin = pki.workload(&ca, "certs", "admin", &spiffe("ops", "admin"), &[]);
    Certs {
        _pki: pki,
        ca,
        server,
        frontend,
        tester,
        admin,
    }
}

struct Addrs {
    /// strict HTTP, listener policy by identity, route policy on /admin
    ids: SocketAddr,
    /// strict HTTP, any authenticated peer, GET /public* only
    norm: SocketAddr,
    /// permissive HTTP: unauthenticated /open*, authenticated /members*
    mixed: SocketAddr,
    /// strict TCP, ns/prod only
    raw: SocketAddr,
}

async fn server(c: &Certs, app: SocketAddr, tcp_app: SocketAddr) -> (Proxy, Addrs) {
    let a = Addrs {
        ids: free_addr(),
        norm: free_addr(),
        mixed: free_addr(),
        raw: free_addr(),
    };
    let strict = listener_tls("strict", &c.server, &[&c.ca.pem], "1s");
    let permissive = listener_tls("permissive", &c.server, &[&c.ca.pem], "1s");
    let yaml = format!(
        r#"
listeners:
  - name: ids
    address: {ids}
    protocol: http
    cluster: app
    tls: {strict}
    authz:
      - name: prod
        from: ["spiffe://cluster.local/ns/prod/*"]
      - name: ops
        from: ["spiffe://cluster.local/ns/ops/sa/admin"]
    routes:
      - name: admin
        match: {{ prefix: /admin }}
        cluster: app
        authz:
          - name: only-admin
            from: ["spiffe://cluster.local/ns/ops/sa/admin"]
  - name: norm
    address: {norm}
    protocol: http
    cluster: app
    tls: {strict}
    authz:
      - name: public
        methods: [GET]
        paths: ["/public*"]
  - name: mixed
    address: {mixed}
    protocol: http
    cluster: app
    tls: {permissive}
    authz:
      - name: open
        from: [unauthenticated]
        paths: ["/open*"]
      - name: members
        paths: ["/members*"]
  - name: raw
    address: {raw}
    protocol: tcp
    cluster: tcp-app
    tls: {strict}
    authz:
      - name: prod-tcp
        from: ["spiffe://cluster.local/ns/prod/*"]
clusters:
  - name: app
    endpoints: [{app}]
  - name: tcp-app
    endpoints: [{tcp_app}]
"#,
        ids = a.ids,
        norm = a.norm,
        mixed = a.mixed,
        raw = a.raw,
    );
    (Proxy::start(&yaml).await, a)
}

#[track_caller]
fn assert_denied(what: &str, reply: &pillion_tests::Reply) {
    assert_eq!(
        reply.status,
        StatusCode::FORBIDDEN,
        "{what}: {}",
        reply.text()
    );
    assert_eq!(
        reply.header("x-pillion-error"),
        Some("denied"),
        "{what}: {:?}",
        reply.headers
    );
}

#[track_caller]
fn assert_allowed(what: &str, reply: &pillion_tests::Reply) {
    assert_eq!(reply.status, StatusCode::OK, "{what}: {}", reply.text());
    assert_eq!(reply.header("x-pillion-error"), None, "{what}");
}

fn decisions(m: &Metrics, labels: &[(&str, &str)]) -> f64 {
    m.sum(DECISIONS, labels)
}

#[tokio::test]
async fn identities_are_allowed_or_denied_by_listener_and_route_policies() {
    let c = certs();
    let app = app().await;
    let tcp = tcp_echo().await;
    let (proxy, a) = server(&c, app.upstream.addr(), tcp.addr()).await;
    let frontend = TlsClient::new(&c.ca.pem, Some(&c.frontend));
    let tester = TlsClient::new(&c.ca.pem, Some(&c.tester));
    let admin = TlsClient::new(&c.ca.pem, Some(&c.admin));
    let get = |who: &TlsClient, path: &'static str| {
        let who = who.clone();
        async move {
            who.get(a.ids, path)
                .await
                .unwrap_or_else(|e| panic!("GET {path}: {e}"))
        }
    };

    let r = get(&frontend, "/x").await;
    assert_allowed("ns/prod frontend on the listener", &r);
    assert_eq!(
        r.header("x-app-peer"),
        Some(spiffe("prod", "frontend").as_str())
    );
    assert_denied("ns/dev tester (no rule matches)", &get(&tester, "/x").await);
    assert_denied(
        "frontend on /admin (route policy)",
        &get(&frontend, "/admin/panel").await,
    );
    let r = get(&admin, "/admin/panel").await;
    assert_allowed("ops admin on /admin", &r);
    assert_eq!(
        r.header("x-app-peer"),
        Some(spiffe("ops", "admin").as_str())
    );
    assert_allowed("ops admin elsewhere", &get(&admin, "/x").await);

    assert_eq!(
        app.seen(),
        vec!["GET /x", "GET /admin/panel", "GET /x"],
        "denied requests must never reach the app"
    );

    // Decisions: listener policy `ids` (rules prod, ops) and the route policy (rule only-admin).
    let m = proxy
        .wait_metric(
            DECISIONS,
            &[("rule", "only-admin"), ("decision", "allow")],
            1.0,
        )
        .await;
    let ids = |rule: &str, decision: &str| {
        let mut l = vec![("policy", "ids"), ("decision", decision)];
        if decision == "allow" {
            l.push(("rule", rule));
        }
        decisions(&m, &l)
    };
    assert_eq!(ids("ops", "allow"), 2.0, "{}", m.text);
    assert_eq!(ids("", "deny"), 1.0, "{}", m.text);
    // The frontend's /admin request is allowed by the listener if the listener's policy is
    // checked first (2), or never reaches it if the route's is (1).
    let prod = ids("prod", "allow");
    assert!(prod == 2.0 || prod == 1.0, "{}", m.text);
    let route_policy = m
        .matching(DECISIONS, &[("rule", "only-admin")])
        .next()
        .and_then(|s| s.labels.get("policy").cloned())
        .expect("a series for rule only-admin");
    assert_ne!(route_policy, "ids", "the route policy has its own label");
    assert_eq!(
        decisions(&m, &[("policy", &route_policy), ("decision", "deny")]),
        1.0,
        "{}",
        m.text
    );
    assert_eq!(
        decisions(&m, &[("policy", &route_policy), ("decision", "allow")]),
        1.0,
        "{}",
        m.text
    );
    assert_eq!(decisions(&m, &[("decision", "deny")]), 2.0, "{}", m.text);
}

#[tokio::test]
async fn paths_are_normalized_before_they_are_matched() {
    let c = certs();
    let app = app().await;
    let tcp = tcp_echo().await;
    let (proxy, a) = server(&c, app.upstream.addr(), tcp.addr()).await;
    let peer = TlsClient::new(&c.ca.pem, Some(&c.tester));

    let allowed = [
        "/public",
        "/public/page",
        "/admin/../public",
        "/admin/../public/page",
        "/%70ublic",
        "/./public/./page",
    ];
    let denied = [
        "/admin",
        "/%61dmin",
        "/%61%64%6d%69%6e",
        "//admin",
        "/public/../admin",
        "/public/page/../../admin",
        "/private",
    ];
    for path in allowed {
        let r = peer
            .get(a.norm, path)
            .await
            .unwrap_or_else(|e| panic!("GET {path}: {e}"));
        assert_allowed(&format!("GET {path} (normalizes to /public...)"), &r);
    }
    for path in denied {
        let r = peer
            .get(a.norm, path)
            .await
            .unwrap_or_else(|e| panic!("GET {path}: {e}"));
        assert_denied(&format!("GET {path} (normalizes outside /public)"), &r);
    }
    // Methods are part of the rule.
    let r = peer
        .request(
            a.norm,
            client::req("POST", "/public")
                .header("host", "svc")
                .body(full("x"))
                .expect("request"),
        )
        .await
        .expect("POST /public");
    assert_denied("POST /public (rule allows GET only)", &r);

    let seen = app.seen();
    assert_eq!(
        seen.len(),
        allowed.len(),
        "only allowed requests reach the app: {seen:?}"
    );
    assert!(seen.iter().all(|s| s.starts_with("GET ")), "{seen:?}");
    let m = proxy
        .wait_metric(
            DECISIONS,
            &[("policy", "norm"), ("decision", "deny")],
            (denied.len() + 1) as f64,
        )
        .await;
    assert_eq!(
        decisions(
            &m,
            &[
                ("policy", "norm"),
                ("rule", "public"),
                ("decision", "allow")
            ]
        ),
        allowed.len() as f64,
        "{}",
        m.text
    );
}

#[tokio::test]
async fn unauthenticated_peers_pass_only_where_rules_say_unauthenticated() {
    let c = certs();
    let app = app().await;
    let tcp = tcp_echo().await;
    let (proxy, a) = server(&c, app.upstream.addr(), tcp.addr()).await;

    // Plaintext on the permissive listener: no identity.
    let mut plain = H1Client::connect(a.mixed).await;
    let r = plain
        .request(
            client::req("GET", "http://svc/open/door")
                .header(PEER, spiffe("prod", "frontend"))
                .body(client::empty())
                .expect("request"),
        )
        .await;
    assert_allowed("plaintext GET /open (from: [unauthenticated])", &r);
    assert_eq!(
        r.header("x-app-peer"),
        Some(""),
        "a plaintext peer has no identity, whatever header it sends"
    );
    let r = plain.get("http://svc/members/list").await;
    assert_denied("plaintext GET /members (any authenticated peer only)", &r);
    let r = plain
        .request(
            client::req("GET", "http://svc/members/list")
                .header(PEER, spiffe("prod", "frontend"))
                .body(client::empty())
                .expect("request"),
        )
        .await;
    assert_denied("plaintext GET /members with a spoofed identity header", &r);

    // mTLS on the same port: authenticated.
    let member = TlsClient::new(&c.ca.pem, Some(&c.tester));
    let r = member
        .get(a.mixed, "/members/list")
        .await
        .expect("mTLS GET");
    assert_allowed("mTLS GET /members", &r);
    assert_eq!(
        r.header("x-app-peer"),
        Some(spiffe("dev", "tester").as_str())
    );
    let r = member.get(a.mixed, "/open/door").await.expect("mTLS GET");
    assert_denied(
        "mTLS GET /open (`unauthenticated` is for peers without an identity only)",
        &r,
    );

    assert_eq!(
        app.seen(),
        vec!["GET /open/door", "GET /members/list"],
        "denied requests must never reach the app"
    );
    let m = proxy
        .wait_metric(DECISIONS, &[("policy", "mixed"), ("decision", "deny")], 3.0)
        .await;
    assert_eq!(
        decisions(
            &m,
            &[("policy", "mixed"), ("rule", "open"), ("decision", "allow")]
        ),
        1.0,
        "{}",
        m.text
    );
    assert_eq!(
        decisions(
            &m,
            &[
                ("policy", "mixed"),
                ("rule", "members"),
                ("decision", "allow")
            ]
        ),
        1.0,
        "{}",
        m.text
    );
}

#[tokio::test]
async fn a_denied_tcp_peer_is_closed_right_after_the_handshake() {
    let c = certs();
    let app = app().await;
    let tcp = tcp_echo().await;
    let (proxy, a) = server(&c, app.upstream.addr(), tcp.addr()).await;

    // Allowed: ns/prod.
    let mut conn = TlsClient::new(&c.ca.pem, Some(&c.frontend))
        .connect(a.raw)
        .await
        .expect("mTLS handshake");
    let back = roundtrip(&mut conn.stream, b"hello from prod")
        .await
        .unwrap_or_else(|(got, e)| panic!("allowed TCP peer: {e} after {got:?}"));
    assert_eq!(back, b"hello from prod");

    // Denied: ns/dev. The handshake may complete; then the proxy closes without relaying.
    let denied = TlsClient::new(&c.ca.pem, Some(&c.tester))
        .connect(a.raw)
        .await;
    if let Ok(mut conn) = denied {
        let got = match roundtrip(&mut conn.stream, b"hello from dev").await {
            Ok(got) | Err((got, _)) => got,
        };
        assert!(
            got.is_empty(),
            "a denied TCP peer got bytes back: {:?}",
            String::from_utf8_lossy(&got)
        );
    }
    assert_eq!(
        tcp.connections(),
        1,
        "the denied peer never reached the app"
    );

    let m = proxy
        .wait_metric(DECISIONS, &[("policy", "raw"), ("decision", "deny")], 1.0)
        .await;
    assert_eq!(
        decisions(
            &m,
            &[
                ("policy", "raw"),
                ("rule", "prod-tcp"),
                ("decision", "allow")
            ]
        ),
        1.0,
        "{}",
        m.text
    );
    assert!(app.seen().is_empty());
}

#[tokio::test]
async fn a_route_policy_cannot_be_bypassed_with_an_unnormalized_path() {
    let c = certs();
    let app = app().await;
    let tcp = tcp_echo().await;
    let (_proxy, a) = server(&c, app.upstream.addr(), tcp.addr()).await;
    // ns/prod is allowed by the listener policy but not by the /admin route's policy.
    let frontend = TlsClient::new(&c.ca.pem, Some(&c.frontend));

    let r = frontend.get(a.ids, "/admin/panel").await.expect("GET");
    assert_denied("frontend GET /admin/panel (control)", &r);
    // The same resource spelled differently: whatever the proxy does with these (deny,
    // normalize then route, or refuse as malformed), the frontend must not reach /admin.
    let mut reached = Vec::new();
    for path in [
        "/x/../admin/panel",
        "/./admin/panel",
        "//admin/panel",
        "/%61dmin/panel",
    ] {
        let r = frontend
            .get(a.ids, path)
            .await
            .unwrap_or_else(|e| panic!("GET {path}: {e}"));
        if r.status.is_success() {
            reached.push(format!("{path} -> {} (app saw {})", r.status, r.text()));
        }
    }
    assert!(
        reached.is_empty(),
        "the /admin route policy (only ns/ops/sa/admin) was bypassed by ns/prod/sa/frontend:\n{}",
        reached.join("\n")
    );
    assert!(app.seen().is_empty(), "the app saw {:?}", app.seen());
}
