//! Micro-benches of the per-request and per-connection work: route matching, protocol detection,
//! header rewriting, and config loading.

use criterion::{black_box, criterion_group, criterion_main, BenchmarkId, Criterion};
use http::{HeaderMap, HeaderValue, Request};
use pillion_config::Config;
use pillion_proxy::{cluster::Cluster, detect, http::headers, http::RouteTable};
use pillion_telemetry::Metrics;
use prometheus_client::registry::Registry;
use std::{collections::HashMap, fmt::Write};

/// A config with `n` routes by host and prefix; the last one matches `svc-{n-1}.local/api`.
fn config_with_routes(n: usize) -> String {
    let mut y = String::from(
        "listeners:\n  - name: l\n    address: 127.0.0.1:15006\n    protocol: http\n    routes:\n",
    );
    for i in 0..n {
        let _ = writeln!(
            y,
            "      - {{name: r{i}, match: {{host: svc-{i}.local, prefix: /api}}, cluster: c}}"
        );
    }
    y.push_str("clusters:\n  - {name: c, endpoints: [127.0.0.1:8080]}\n");
    y
}

fn table(n: usize) -> RouteTable {
    let text = config_with_routes(n);
    let cfg = Config::load(&text, "bench").expect("bench config is valid");
    let metrics = std::sync::Arc::new(Metrics::register(&mut Registry::default()));
    let clusters: HashMap<_, _> = cfg
        .clusters
        .iter()
        .map(|c| {
            let cluster = Cluster::new(c, &metrics, &Default::default()).expect("bench cluster");
            (c.name.clone(), cluster)
        })
        .collect();
    RouteTable::compile(
        &cfg.listeners[0],
        &clusters,
        &metrics,
        &Default::default(),
        "inbound",
    )
    .expect("compiles")
}

fn route_matching(c: &mut Criterion) {
    // Clusters own pooled clients whose timers need a runtime context.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let _guard = rt.enter();
    let mut g = c.benchmark_group("route_match_last");
    for n in [1usize, 100, 1000] {
        let t = table(n);
        let req = Request::builder()
            .uri("/api/users/42")
            .header("host", format!("svc-{}.local:8080", n - 1))
            .body(())
            .expect("request");
        g.bench_with_input(BenchmarkId::from_parameter(n), &req, |b, req| {
            b.iter(|| black_box(t.route(black_box(req)).is_some()))
        });
    }
    g.finish();
}

fn protocol_detection(c: &mut Criterion) {
    let mut g = c.benchmark_group("detect");
    let cases: [(&str, &[u8]); 3] = [
        (
            "http1",
            b"GET /api/users/42 HTTP/1.1\r\nHost: svc.local\r\n\r\n",
        ),
        ("http2", b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"),
        ("tls", b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03"),
    ];
    for (name, bytes) in cases {
        g.bench_function(name, |b| {
            b.iter(|| black_box(detect::classify(black_box(bytes))))
        });
    }
    g.finish();
}

fn header_rewriting(c: &mut Criterion) {
    let mut base = HeaderMap::new();
    for (n, v) in [
        ("host", "svc.local"),
        ("user-agent", "bench/1.0"),
        ("accept", "*/*"),
        ("connection", "keep-alive"),
        ("x-request-id", "0f8c1e4e-5d3a-4b7e-9d1e-2c6f7a8b9c0d"),
        ("content-type", "application/json"),
    ] {
        base.insert(n, HeaderValue::from_static(v));
    }
    let client = headers::client_ip("10.1.2.3".parse().expect("ip"));
    c.bench_function("headers/strip_and_forward", |b| {
        b.iter_batched_ref(
            || base.clone(),
            |h| {
                headers::strip_hop_by_hop(h);
                headers::set_forwarded(h, &client, "http");
            },
            criterion::BatchSize::SmallInput,
        )
    });
}

fn config_loading(c: &mut Criterion) {
    let mut g = c.benchmark_group("config_load");
    for n in [1usize, 100, 1000] {
        let text = config_with_routes(n);
        g.bench_with_input(BenchmarkId::from_parameter(n), &text, |b, text| {
            b.iter(|| black_box(Config::load(black_box(text), "bench").is_ok()))
        });
    }
    g.finish();
}

criterion_group!(
    benches,
    route_matching,
    protocol_detection,
    header_rewriting,
    config_loading
);
criterion_main!(benches);
