//! Tests of the retry layer with tower-test mocks and paused time.

use super::*;
use crate::{error::Elapsed, limit::MAX_RETRIES};
use bytes::Bytes;
use http::HeaderMap;
use http_body::Frame;
use http_body_util::{BodyExt, Full, StreamBody};
use std::convert::Infallible;
use tokio::time::Instant;
use tower_test::mock;

type ReqBody = Full<Bytes>;
type Rsp = Response<&'static str>;
type Handle<B> = mock::Handle<Request<ReplayBody<B>>, Rsp>;
type Svc<B> = mock::Spawn<Retry<mock::Mock<Request<ReplayBody<B>>, Rsp>>>;

fn policy(retries: u32, on: RetryOn) -> RetryPolicy {
    RetryPolicy {
        retries,
        on,
        backoff: Backoff {
            base: Duration::from_millis(10),
            max: Duration::from_millis(100),
        },
        per_try_timeout: None,
        buffer_cap: 64,
    }
}

fn gateway() -> RetryOn {
    RetryOn {
        gateway_error: true,
        ..RetryOn::default()
    }
}

fn everything() -> RetryOn {
    RetryOn {
        connect_failure: true,
        reset: true,
        refused_stream: true,
        status_5xx: true,
        gateway_error: true,
        statuses: vec![429],
    }
}

fn req(method: Method, body: &'static str) -> Request<ReqBody> {
    Request::builder()
        .method(method)
        .uri("http://cluster/path")
        .header("x-test", "1")
        .body(Full::new(Bytes::from_static(body.as_bytes())))
        .unwrap()
}

fn status(code: u16) -> Rsp {
    Response::builder().status(code).body("").unwrap()
}

/// Starts `req`, answers each attempt with the next of `answers`, returns the result and the
/// bodies the upstream saw.
async fn run<B>(
    svc: &mut Svc<B>,
    handle: &mut Handle<B>,
    req: Request<B>,
    answers: Vec<Result<Rsp, BoxError>>,
) -> (Result<Rsp, BoxError>, Vec<Bytes>)
where
    B: Body + Unpin + Send + 'static,
    B::Data: Send,
    B::Error: Into<BoxError>,
{
    assert!(svc.poll_ready().is_ready());
    let mut fut = tokio::spawn(svc.call(req));
    let mut answers = answers.into_iter();
    let mut seen = Vec::new();
    loop {
        tokio::select! {
            res = &mut fut => return (res.unwrap(), seen),
            Some((req, tx)) = handle.next_request() => {
                assert_eq!(req.headers()["x-test"], "1");
                assert_eq!(req.uri(), "http://cluster/path");
                seen.push(req.into_body().collect().await.unwrap().to_bytes());
                match answers.next().expect("more attempts than answers") {
                    Ok(rsp) => tx.send_response(rsp),
                    Err(e) => tx.send_error(e),
                }
            }
        }
    }
}

fn attempts(rsp: &Rsp) -> u32 {
    rsp.extensions().get::<Attempts>().unwrap().0
}

/// A real connect failure from hyper-util's client (a port nobody listens on).
async fn connect_error() -> BoxError {
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http::<http_body_util::Empty<Bytes>>();
    let uri: http::Uri = format!("http://127.0.0.1:{port}/").parse().unwrap();
    let err = client.get(uri).await.unwrap_err();
    assert!(err.is_connect());
    Box::new(err)
}

/// A real hyper "canceled" error: the request was never written (the connection went away).
async fn canceled_error() -> BoxError {
    let (io, _peer) = tokio::io::duplex(64);
    let (mut tx, conn) = hyper::client::conn::http1::handshake::<_, http_body_util::Empty<Bytes>>(
        hyper_util::rt::TokioIo::new(io),
    )
    .await
    .unwrap();
    let fut = tx.send_request(Request::new(http_body_util::Empty::new()));
    drop(conn);
    let err = fut.await.unwrap_err();
    assert!(err.is_canceled(), "{err:?}");
    Box::new(err)
}

/// A real hyper "connection closed before message completed" error.
async fn incomplete_error() -> BoxError {
    use tokio::io::AsyncReadExt;
    let (io, mut peer) = tokio::io::duplex(1024);
    let (mut tx, conn) = hyper::client::conn::http1::handshake::<_, http_body_util::Empty<Bytes>>(
        hyper_util::rt::TokioIo::new(io),
    )
    .await
    .unwrap();
    let conn = tokio::spawn(conn);
    let fut = tokio::spawn(tx.send_request(Request::new(http_body_util::Empty::new())));
    let mut buf = [0u8; 1024];
    let _ = peer.read(&mut buf).await.unwrap();
    drop(peer);
    let err = fut.await.unwrap().unwrap_err();
    let _ = conn.await;
    assert!(err.is_incomplete_message(), "{err:?}");
    Box::new(err)
}

#[derive(Debug, thiserror::Error)]
#[error("stream error received: refused stream before processing any application logic")]
struct FakeH2RefusedStream;

fn refused_stream() -> BoxError {
    Box::new(FakeH2RefusedStream)
}

fn reset() -> BoxError {
    Box::new(std::io::Error::from(std::io::ErrorKind::ConnectionReset))
}

#[tokio::test(start_paused = true)]
async fn get_503_is_retried_up_to_n_times_then_the_last_response_returns() {
    let (mut svc, mut handle) = mock::spawn_layer(RetryLayer::new(Some(policy(3, gateway()))));
    let answers = (0..4).map(|_| Ok(status(503))).collect();
    let (res, seen) = run(&mut svc, &mut handle, req(Method::GET, ""), answers).await;
    let rsp = res.unwrap();
    assert_eq!(rsp.status(), 503);
    assert_eq!(attempts(&rsp), 4);
    assert_eq!(seen.len(), 4);
}

#[tokio::test(start_paused = true)]
async fn a_success_stops_the_retries() {
    let (mut svc, mut handle) = mock::spawn_layer(RetryLayer::new(Some(policy(3, everything()))));
    let answers = vec![
        Ok(status(503)),
        Err(reset()),
        Ok(status(429)),
        Ok(status(200)),
    ];
    let (res, _) = run(&mut svc, &mut handle, req(Method::PUT, "x"), answers).await;
    let rsp = res.unwrap();
    assert_eq!(rsp.status(), 200);
    assert_eq!(attempts(&rsp), 4);
}

#[tokio::test(start_paused = true)]
async fn unlisted_statuses_are_not_retried() {
    let (mut svc, mut handle) = mock::spawn_layer(RetryLayer::new(Some(policy(3, gateway()))));
    let (res, _) = run(
        &mut svc,
        &mut handle,
        req(Method::GET, ""),
        vec![Ok(status(500))],
    )
    .await;
    assert_eq!(attempts(&res.unwrap()), 1);
}

#[tokio::test(start_paused = true)]
async fn post_is_not_retried_after_a_reset_or_a_5xx() {
    let (mut svc, mut handle) = mock::spawn_layer(RetryLayer::new(Some(policy(3, everything()))));
    let (res, seen) = run(
        &mut svc,
        &mut handle,
        req(Method::POST, "b"),
        vec![Ok(status(503))],
    )
    .await;
    assert_eq!(attempts(&res.unwrap()), 1);
    assert_eq!(seen.len(), 1);

    let (res, _) = run(
        &mut svc,
        &mut handle,
        req(Method::POST, "b"),
        vec![Err(reset())],
    )
    .await;
    let err = res.unwrap_err();
    assert_eq!(error::attempts(&*err), 1);
    assert!(error::is::<std::io::Error>(&*err));

    let (res, _) = run(
        &mut svc,
        &mut handle,
        req(Method::PATCH, "b"),
        vec![Err(incomplete_error().await)],
    )
    .await;
    assert_eq!(error::attempts(&*res.unwrap_err()), 1);
}

#[tokio::test(start_paused = true)]
async fn post_is_retried_on_connect_failure_and_refused_stream() {
    let (mut svc, mut handle) = mock::spawn_layer(RetryLayer::new(Some(policy(3, everything()))));
    let answers = vec![
        Err(connect_error().await),
        Err(refused_stream()),
        Ok(status(201)),
    ];
    let (res, seen) = run(&mut svc, &mut handle, req(Method::POST, "payload"), answers).await;
    let rsp = res.unwrap();
    assert_eq!(rsp.status(), 201);
    assert_eq!(attempts(&rsp), 3);
    assert_eq!(seen, vec![Bytes::from_static(b"payload"); 3]);
}

#[tokio::test(start_paused = true)]
async fn connect_failures_are_not_retried_unless_configured() {
    let on = RetryOn {
        reset: true,
        statuses: vec![503],
        ..RetryOn::default()
    };
    let (mut svc, mut handle) = mock::spawn_layer(RetryLayer::new(Some(policy(3, on))));
    let (res, _) = run(
        &mut svc,
        &mut handle,
        req(Method::GET, ""),
        vec![Err(connect_error().await)],
    )
    .await;
    let err = res.unwrap_err();
    assert_eq!(error::attempts(&*err), 1);
    assert_eq!(classify(&err), Some(FailureKind::ConnectFailure));
}

#[test]
fn backoff_stays_within_full_jitter_bounds() {
    let backoff = Backoff {
        base: Duration::from_millis(10),
        max: Duration::from_millis(300),
    };
    let mut rng = fastrand::Rng::with_seed(7);
    for n in 0..40 {
        let ceiling = Duration::from_millis(10)
            .saturating_mul(2u32.saturating_pow(n))
            .min(Duration::from_millis(300));
        assert_eq!(backoff.ceiling(n), ceiling);
        let mut max_seen = Duration::ZERO;
        for _ in 0..500 {
            let d = backoff.delay(n, &mut rng);
            assert!(d <= ceiling, "retry {n}: {d:?} > {ceiling:?}");
            max_seen = max_seen.max(d);
        }
        // Full jitter spreads over the whole range.
        assert!(max_seen > ceiling / 2);
    }
}

#[tokio::test(start_paused = true)]
async fn retries_wait_a_backoff_within_bounds() {
    let (mut svc, mut handle) = mock::spawn_layer(RetryLayer::new(Some(policy(4, gateway()))));
    assert!(svc.poll_ready().is_ready());
    let fut = tokio::spawn(svc.call(req(Method::GET, "")));
    let mut last = Instant::now();
    for n in 0..5u32 {
        let (_, tx) = handle.next_request().await.unwrap();
        let waited = last.elapsed();
        if n > 0 {
            let ceiling =
                Duration::from_millis(10 * 2u64.pow(n - 1)).min(Duration::from_millis(100));
            assert!(
                waited <= ceiling,
                "retry {n}: waited {waited:?} > {ceiling:?}"
            );
        }
        last = Instant::now();
        tx.send_response(status(502));
    }
    assert_eq!(attempts(&fut.await.unwrap().unwrap()), 5);
}

#[tokio::test(start_paused = true)]
async fn per_try_timeout_is_retried_like_a_504() {
    let mut p = policy(2, gateway());
    p.per_try_timeout = Some(Duration::from_secs(1));
    p.backoff = Backoff {
        base: Duration::ZERO,
        max: Duration::ZERO,
    };
    let (mut svc, mut handle) =
        mock::spawn_layer::<Request<ReplayBody<ReqBody>>, Rsp, _>(RetryLayer::new(Some(p)));
    assert!(svc.poll_ready().is_ready());
    let start = Instant::now();
    let fut = tokio::spawn(svc.call(req(Method::GET, "")));
    let mut pending = Vec::new();
    for _ in 0..3 {
        pending.push(handle.next_request().await.unwrap());
    }
    let err = fut.await.unwrap().unwrap_err();
    assert_eq!(start.elapsed(), Duration::from_secs(3));
    assert_eq!(error::attempts(&*err), 3);
    assert_eq!(
        error::find::<Elapsed>(&*err).unwrap().kind,
        TimeoutKind::PerTry
    );
}

#[tokio::test(start_paused = true)]
async fn budget_bounds_retries_under_total_failure() {
    let budget = Arc::new(Budget::new(BudgetPolicy {
        ratio: 0.2,
        min_per_sec: 10,
        window: Duration::from_secs(1),
    }));
    let mut p = policy(3, gateway());
    p.backoff = Backoff {
        base: Duration::ZERO,
        max: Duration::ZERO,
    };
    let layer = RetryLayer::new(Some(p)).with_budget(budget.clone());
    let (mut svc, mut handle) = mock::spawn_layer(layer);
    let mut retries = 0;
    for _ in 0..1000 {
        let answers = (0..4).map(|_| Ok(status(503))).collect();
        let (res, _) = run(&mut svc, &mut handle, req(Method::GET, ""), answers).await;
        retries += attempts(&res.unwrap()) - 1;
    }
    // 20% of 1000 requests plus 10 per second of a 1 s window.
    assert!((205..=215).contains(&retries), "{retries} retries");
    assert_eq!(u64::from(retries), budget.retries_total());
    assert!(budget.exhausted_total() >= 790);
}

#[tokio::test(start_paused = true)]
async fn retry_limit_refuses_retries_over_it() {
    let limit = Counter::new(MAX_RETRIES, 1);
    let layer = RetryLayer::new(Some(policy(1, gateway()))).with_retry_limit(limit.clone());
    let (mut svc, mut handle) = mock::spawn_layer::<Request<ReplayBody<ReqBody>>, Rsp, _>(layer);
    assert!(svc.poll_ready().is_ready());
    let a = tokio::spawn(svc.call(req(Method::GET, "")));
    assert!(svc.poll_ready().is_ready());
    let b = tokio::spawn(svc.call(req(Method::GET, "")));
    let (_, tx_a) = handle.next_request().await.unwrap();
    let (_, tx_b) = handle.next_request().await.unwrap();
    tx_a.send_response(status(503));
    // `a` retries and holds the only retry permit; `b` cannot retry.
    let (_, tx_a2) = handle.next_request().await.unwrap();
    tx_b.send_response(status(503));
    assert_eq!(attempts(&b.await.unwrap().unwrap()), 1);
    assert_eq!(limit.rejected_total(), 1);
    tx_a2.send_response(status(200));
    assert_eq!(attempts(&a.await.unwrap().unwrap()), 2);
    assert_eq!(limit.in_flight(), 0);
}

type Chunks =
    StreamBody<futures_util::stream::Iter<std::vec::IntoIter<Result<Frame<Bytes>, Infallible>>>>;

fn chunked(parts: &[&'static str]) -> Request<Chunks> {
    let mut frames: Vec<Result<Frame<Bytes>, Infallible>> = parts
        .iter()
        .map(|p| Ok(Frame::data(Bytes::from_static(p.as_bytes()))))
        .collect();
    let mut trailers = HeaderMap::new();
    trailers.insert("grpc-status", "0".parse().unwrap());
    frames.push(Ok(Frame::trailers(trailers)));
    Request::builder()
        .method(Method::PUT)
        .uri("http://cluster/path")
        .header("x-test", "1")
        .body(StreamBody::new(futures_util::stream::iter(frames)))
        .unwrap()
}

#[tokio::test(start_paused = true)]
async fn bodies_and_trailers_are_replayed_under_the_cap() {
    let (mut svc, mut handle) = mock::spawn_layer::<Request<ReplayBody<Chunks>>, Rsp, _>(
        RetryLayer::new(Some(policy(2, gateway()))),
    );
    assert!(svc.poll_ready().is_ready());
    let fut = tokio::spawn(svc.call(chunked(&["abc", "def"])));
    for i in 0..2 {
        let (req, tx) = handle.next_request().await.unwrap();
        let collected = req.into_body().collect().await.unwrap();
        assert_eq!(collected.trailers().unwrap()["grpc-status"], "0");
        assert_eq!(&collected.to_bytes()[..], b"abcdef");
        tx.send_response(status(if i == 0 { 503 } else { 200 }));
    }
    assert_eq!(attempts(&fut.await.unwrap().unwrap()), 2);
}

#[tokio::test(start_paused = true)]
async fn bodies_over_the_cap_are_sent_once() {
    // 70 bytes in chunks (no size hint), over the cap of 64.
    let parts = ["0123456789"; 7];
    let (mut svc, mut handle) = mock::spawn_layer::<Request<ReplayBody<Chunks>>, Rsp, _>(
        RetryLayer::new(Some(policy(2, gateway()))),
    );
    assert!(svc.poll_ready().is_ready());
    let fut = tokio::spawn(svc.call(chunked(&parts)));
    let (req, tx) = handle.next_request().await.unwrap();
    let body = req.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(body.len(), 70);
    tx.send_response(status(503));
    let rsp = fut.await.unwrap().unwrap();
    assert_eq!(rsp.status(), 503);
    assert_eq!(attempts(&rsp), 1);
}

#[tokio::test(start_paused = true)]
async fn a_request_body_known_to_be_too_large_is_not_retried() {
    let (mut svc, mut handle) = mock::spawn_layer(RetryLayer::new(Some(policy(2, gateway()))));
    assert!(svc.poll_ready().is_ready());
    let big = "x".repeat(100).leak();
    let fut = svc.call(req(Method::GET, big));
    assert!(!fut.is_retrying());
    let fut = tokio::spawn(fut);
    let (req, tx) = handle.next_request().await.unwrap();
    assert_eq!(
        req.into_body().collect().await.unwrap().to_bytes().len(),
        100
    );
    tx.send_response(status(503));
    let rsp = fut.await.unwrap().unwrap();
    assert_eq!(rsp.status(), 503);
    assert!(rsp.extensions().get::<Attempts>().is_none());
}

#[tokio::test(start_paused = true)]
async fn transparent_retry_once_even_for_post_without_policy() {
    let (mut svc, mut handle) = mock::spawn_layer(RetryLayer::new(None));
    let answers = vec![Err(canceled_error().await), Ok(status(200))];
    let (res, seen) = run(&mut svc, &mut handle, req(Method::POST, "once"), answers).await;
    assert_eq!(attempts(&res.unwrap()), 2);
    assert_eq!(seen, vec![Bytes::from_static(b"once"); 2]);

    // Only once.
    let answers = vec![Err(canceled_error().await), Err(canceled_error().await)];
    let (res, _) = run(&mut svc, &mut handle, req(Method::POST, "once"), answers).await;
    assert_eq!(error::attempts(&*res.unwrap_err()), 2);

    // The keep-alive race (connection closed before message completed): the upstream may have
    // read the request, so it is not retried transparently by default.
    let answers = vec![Err(incomplete_error().await)];
    let (res, _) = run(&mut svc, &mut handle, req(Method::GET, ""), answers).await;
    assert_eq!(error::attempts(&*res.unwrap_err()), 1);
}

#[tokio::test(start_paused = true)]
async fn incomplete_messages_are_retried_when_opted_in() {
    let layer = RetryLayer::new(None).with_transparent(Transparent {
        enabled: true,
        incomplete_message: true,
        incomplete_message_any_method: false,
    });
    let (mut svc, mut handle) = mock::spawn_layer(layer);
    let answers = vec![Err(incomplete_error().await), Ok(status(200))];
    let (res, _) = run(&mut svc, &mut handle, req(Method::GET, ""), answers).await;
    assert_eq!(attempts(&res.unwrap()), 2);
    let answers = vec![Err(incomplete_error().await)];
    let (res, _) = run(&mut svc, &mut handle, req(Method::POST, "x"), answers).await;
    assert_eq!(error::attempts(&*res.unwrap_err()), 1);
}

#[tokio::test(start_paused = true)]
async fn transparent_retry_comes_on_top_of_the_policy() {
    let (mut svc, mut handle) = mock::spawn_layer(RetryLayer::new(Some(policy(1, gateway()))));
    let answers = vec![
        Ok(status(503)),
        Err(canceled_error().await),
        Ok(status(503)),
    ];
    let (res, _) = run(&mut svc, &mut handle, req(Method::GET, ""), answers).await;
    let rsp = res.unwrap();
    assert_eq!(rsp.status(), 503);
    assert_eq!(attempts(&rsp), 3);
}

#[tokio::test(start_paused = true)]
async fn no_policy_and_no_transparent_retry_is_a_passthrough() {
    let layer = RetryLayer::new(None).with_transparent(Transparent {
        enabled: false,
        incomplete_message: false,
        ..Transparent::default()
    });
    let (mut svc, mut handle) = mock::spawn_layer::<Request<ReplayBody<ReqBody>>, Rsp, _>(layer);
    assert!(svc.poll_ready().is_ready());
    let fut = svc.call(req(Method::GET, ""));
    assert!(!fut.is_retrying());
    let fut = tokio::spawn(fut);
    let (_, tx) = handle.next_request().await.unwrap();
    tx.send_error(canceled_error().await);
    let err = fut.await.unwrap().unwrap_err();
    assert!(error::is::<hyper::Error>(&*err));
    assert!(!error::is::<RequestFailed>(&*err));
}

/// The layer over hyper-util's real pooled client and a real local HTTP/1 server: a PUT with a
/// body gets a 503, is retried with the same body, and succeeds.
#[tokio::test]
async fn over_the_real_client() {
    use std::sync::atomic::{AtomicU32, Ordering};
    use tower::ServiceExt;

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let hits = Arc::new(AtomicU32::new(0));
    let server_hits = hits.clone();
    tokio::spawn(async move {
        loop {
            let (io, _) = listener.accept().await.unwrap();
            let hits = server_hits.clone();
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
                    let hits = hits.clone();
                    async move {
                        let body = req.into_body().collect().await?.to_bytes();
                        assert_eq!(&body[..], b"hello");
                        let n = hits.fetch_add(1, Ordering::SeqCst);
                        let code = if n == 0 { 503 } else { 200 };
                        Ok::<_, hyper::Error>(
                            Response::builder()
                                .status(code)
                                .body(Full::new(Bytes::from_static(b"done")))
                                .unwrap(),
                        )
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(io), svc)
                    .await;
            });
        }
    });

    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http::<ReplayBody<ReqBody>>();
    let upstream = tower::service_fn(move |req: Request<ReplayBody<ReqBody>>| {
        let client = client.clone();
        async move { client.request(req).await.map_err(BoxError::from) }
    });
    let mut p = policy(2, gateway());
    p.backoff = Backoff {
        base: Duration::ZERO,
        max: Duration::ZERO,
    };
    let svc = RetryLayer::new(Some(p)).layer(upstream);
    let req = Request::builder()
        .method(Method::PUT)
        .uri(format!("http://{addr}/"))
        .body(Full::new(Bytes::from_static(b"hello")))
        .unwrap();
    let rsp = svc.oneshot(req).await.unwrap();
    assert_eq!(rsp.status(), 200);
    assert_eq!(rsp.extensions().get::<Attempts>(), Some(&Attempts(2)));
    assert_eq!(hits.load(Ordering::SeqCst), 2);
}

#[tokio::test(start_paused = true)]
async fn status_5xx_and_gateway_error_retry_no_response_at_all() {
    // As in Envoy: an upstream that does not answer is a gateway error too.
    for on in [
        RetryOn {
            status_5xx: true,
            ..RetryOn::default()
        },
        gateway(),
    ] {
        for (what, failure) in [
            ("connect failure", connect_error().await),
            ("reset", reset()),
            ("refused stream", refused_stream()),
        ] {
            let (mut svc, mut handle) =
                mock::spawn_layer(RetryLayer::new(Some(policy(1, on.clone()))));
            let (res, _) = run(
                &mut svc,
                &mut handle,
                req(Method::GET, ""),
                vec![Err(failure), Ok(status(200))],
            )
            .await;
            let rsp = res.unwrap_or_else(|e| panic!("{what} on {on:?} not retried: {e}"));
            assert_eq!(attempts(&rsp), 2, "{what} on {on:?}");
        }
        // A POST the upstream may have read is still not retried after a reset.
        let (mut svc, mut handle) = mock::spawn_layer(RetryLayer::new(Some(policy(1, on.clone()))));
        let (res, _) = run(
            &mut svc,
            &mut handle,
            req(Method::POST, "x"),
            vec![Err(reset()), Ok(status(200))],
        )
        .await;
        let err = res.expect_err("a POST reset is not retried");
        assert_eq!(error::attempts(&*err), 1);
    }
}
