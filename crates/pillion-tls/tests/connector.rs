//! `TlsConnector` under hyper-util's pooled legacy client, against an in-process hyper server
#![allow(clippy::unwrap_used)] // helpers outside #[test] functions fail the test loudly
//! behind `ServerTls`.

mod common;

use bytes::Bytes;
use common::*;
use http_body_util::{BodyExt, Empty, Full};
use hyper::{body::Incoming, service::service_fn, Request, Response};
use hyper_util::{
    client::legacy::{connect::HttpConnector, Client},
    rt::{TokioExecutor, TokioIo},
    server::conn::auto,
};
use pillion_tls::{find_tls_error, ClientTls, ServerTls, TlsConnector, TlsError, TlsMetrics};
use prometheus_client::registry::Registry;
use std::{convert::Infallible, net::SocketAddr, sync::Arc, time::Duration};
use tokio::net::TcpListener;

/// Answers every request with the client's identity and the HTTP version it used.
async fn respond(
    peer: Option<Arc<str>>,
    req: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let body = format!(
        "{} {:?}",
        peer.as_deref().unwrap_or("anonymous"),
        req.version()
    );
    Ok(Response::new(Full::new(Bytes::from(body))))
}

/// An HTTP server (HTTP/1.1 and h2) behind `tls`, or plaintext without it.
async fn http_server(tls: Option<Arc<ServerTls>>) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let tls = tls.clone();
            tokio::spawn(async move {
                let builder = auto::Builder::new(TokioExecutor::new());
                match tls {
                    Some(tls) => {
                        let Ok((stream, peer)) = tls.accept(tcp).await else {
                            return;
                        };
                        let svc = service_fn(move |req| respond(peer.identity.clone(), req));
                        let _ = builder.serve_connection(TokioIo::new(stream), svc).await;
                    }
                    None => {
                        let svc = service_fn(|req| respond(None, req));
                        let _ = builder.serve_connection(TokioIo::new(tcp), svc).await;
                    }
                }
            });
        }
    });
    addr
}

fn http() -> HttpConnector {
    let mut http = HttpConnector::new();
    http.set_nodelay(true);
    http.set_connect_timeout(Some(Duration::from_secs(5)));
    http
}

fn client(tls: Option<Arc<ClientTls>>) -> Client<TlsConnector, Empty<Bytes>> {
    Client::builder(TokioExecutor::new()).build(TlsConnector::new(http(), tls))
}

async fn get(
    client: &Client<TlsConnector, Empty<Bytes>>,
    addr: SocketAddr,
) -> Result<String, hyper_util::client::legacy::Error> {
    let uri = format!("http://{addr}/").parse().unwrap();
    let rsp = tokio::time::timeout(STEP, client.get(uri)).await.unwrap()?;
    assert_eq!(rsp.status(), 200);
    let body = rsp.into_body().collect().await.unwrap().to_bytes();
    Ok(String::from_utf8(body.to_vec()).unwrap())
}

struct Setup {
    pki: Pki,
    addr: SocketAddr,
    metrics: TlsMetrics,
    registry: Registry,
}

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
    let addr = http_server(Some(tls)).await;
    Setup {
        pki,
        addr,
        metrics,
        registry,
    }
}

fn cluster(s: &Setup, name: &str, identities: &[&str], h2: bool) -> Arc<ClientTls> {
    let (cert, key) = s.pki.workload(name, &id(name));
    let cfg = cluster_tls(Some((&cert, &key)), &[s.pki.ca_path()], identities);
    ClientTls::new(name, &cfg, h2, &s.metrics).unwrap()
}

fn client_handshakes(s: &Setup, name: &str) -> Option<f64> {
    sample(
        &s.registry,
        &[
            "handshakes_total{",
            &format!("name=\"{name}\""),
            "side=\"client\"",
            "result=\"ok\"",
        ],
    )
}

#[tokio::test]
async fn h2_over_mtls_with_a_pooled_client() {
    let s = setup().await;
    let c = client(Some(cluster(&s, "web", &[&id("server")], true)));
    let want = format!("{} HTTP/2.0", id("web"));
    assert_eq!(get(&c, s.addr).await.unwrap(), want);
    assert_eq!(get(&c, s.addr).await.unwrap(), want);
    // Both requests went over one pooled connection.
    assert_eq!(client_handshakes(&s, "web"), Some(1.0));
}

#[tokio::test]
async fn http1_over_mtls_with_a_pooled_client() {
    let s = setup().await;
    let c = client(Some(cluster(&s, "api", &["spiffe://td.test/ns/*"], false)));
    let want = format!("{} HTTP/1.1", id("api"));
    assert_eq!(get(&c, s.addr).await.unwrap(), want);
    assert_eq!(get(&c, s.addr).await.unwrap(), want);
    assert_eq!(client_handshakes(&s, "api"), Some(1.0));
}

#[tokio::test]
async fn one_client_tls_speaks_both_versions() {
    let s = setup().await;
    let (cert, key) = s.pki.workload("both", &id("both"));
    let cfg = cluster_tls(Some((&cert, &key)), &[s.pki.ca_path()], &[&id("server")]);
    // One set of files and one watcher for both versions (a `protocol: auto` cluster).
    let tls = ClientTls::speaking("both", &cfg, &[false, true], &s.metrics).unwrap();
    let build = |h2| {
        Client::builder(TokioExecutor::new())
            .build(TlsConnector::new(http(), Some(tls.clone())).speaking(h2))
    };
    let want = |version| format!("{} {version}", id("both"));
    assert_eq!(get(&build(true), s.addr).await.unwrap(), want("HTTP/2.0"));
    assert_eq!(get(&build(false), s.addr).await.unwrap(), want("HTTP/1.1"));
    // Without a version asked for, the first one given is offered.
    assert_eq!(
        get(&client(Some(tls.clone())), s.addr).await.unwrap(),
        want("HTTP/1.1")
    );
}

#[tokio::test]
async fn plaintext_without_tls() {
    let addr = http_server(None).await;
    let c = client(None);
    assert_eq!(get(&c, addr).await.unwrap(), "anonymous HTTP/1.1");
}

#[tokio::test]
async fn tls_failures_are_told_apart_from_connect_failures() {
    let s = setup().await;

    // Wrong server identity: a TlsError under the client's error.
    let c = client(Some(cluster(&s, "web", &[&id("db")], false)));
    let err = get(&c, s.addr).await.unwrap_err();
    assert!(err.is_connect());
    match find_tls_error(&err) {
        Some(TlsError::IdentityMismatch(m)) => {
            assert_eq!(m.presented.as_deref(), Some(id("server").as_str()));
            assert_eq!(m.expected, vec![id("db")]);
        }
        other => panic!("expected an identity mismatch, got {other:?} from {err:?}"),
    }

    // Nothing listening: a connect error with no TlsError in it.
    let closed = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = closed.local_addr().unwrap();
    drop(closed);
    let err = get(&c, addr).await.unwrap_err();
    assert!(err.is_connect());
    assert!(find_tls_error(&err).is_none(), "{err:?}");

    // A plaintext server when TLS is expected: a TLS error too.
    let plain = http_server(None).await;
    let err = get(&c, plain).await.unwrap_err();
    assert!(find_tls_error(&err).is_some(), "{err:?}");
}
