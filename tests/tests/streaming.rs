//! Bodies stream through the proxy: 100 MB up and down without the proxy's memory growing.

use std::net::SocketAddr;

use bytes::Bytes;
use http::StatusCode;
use http_body::Frame;
use http_body_util::BodyExt;
use pillion_tests::client::{req, stream_body, BoxError};
use pillion_tests::{free_addr, within, Echo, H1Client, H2Client, Proxy};

const SIZE: u64 = 100 * 1024 * 1024;
const CHUNK: usize = 64 * 1024;
/// A proxy that buffered a 100 MB body would exceed this peak RSS.
const PEAK_RSS_LIMIT: u64 = 60 * 1024 * 1024;

/// A `size`-byte body generated chunk by chunk (never held whole in memory).
fn generated_body(size: u64) -> pillion_tests::Body {
    let chunk = Bytes::from(vec![b'x'; CHUNK]);
    let full_chunks = size / CHUNK as u64;
    let tail = (size % CHUNK as u64) as usize;
    let frames = futures_util::stream::iter(
        std::iter::repeat_n(chunk.clone(), full_chunks as usize)
            .chain((tail > 0).then(|| chunk.slice(..tail)))
            .map(|b| Ok::<_, BoxError>(Frame::data(b))),
    );
    stream_body(frames)
}

/// Reads a response body to the end, counting bytes without keeping them.
async fn drain(body: hyper::body::Incoming) -> u64 {
    let mut body = body;
    let mut n = 0u64;
    while let Some(frame) = body.frame().await {
        if let Ok(data) = frame.expect("body frame").into_data() {
            n += data.len() as u64;
        }
    }
    n
}

async fn setup() -> (Echo, Proxy, SocketAddr) {
    let echo = Echo::start().await;
    let listen = free_addr();
    let proxy = Proxy::start(&format!(
        r#"
listeners:
  - name: in
    address: {listen}
    protocol: http
    cluster: echo
clusters:
  - name: echo
    endpoints: [{}]
"#,
        echo.addr()
    ))
    .await;
    (echo, proxy, listen)
}

fn assert_peak_rss_bounded(proxy: &Proxy) {
    let peak = proxy.peak_rss_bytes();
    assert!(
        peak < PEAK_RSS_LIMIT,
        "proxy peak RSS {} MiB after moving 100 MiB bodies (limit {} MiB)",
        peak >> 20,
        PEAK_RSS_LIMIT >> 20
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http1_100mb_upload_and_download_stream_without_buffering() {
    let (_echo, proxy, listen) = setup().await;
    let mut client = H1Client::connect(listen).await;

    let upload = req("POST", "http://svc/upload")
        .body(generated_body(SIZE))
        .unwrap();
    let resp = client.send(upload).await;
    assert_eq!(resp.status(), StatusCode::OK);
    let echoed = resp.headers()["x-echo-body-bytes"].to_str().unwrap();
    assert_eq!(echoed, SIZE.to_string());
    within("reading the upload reply", drain(resp.into_body())).await;

    let url = format!("http://svc/download?size={SIZE}");
    let resp = client.send(pillion_tests::client::get(&url)).await;
    assert_eq!(resp.status(), StatusCode::OK);
    let got = within("downloading 100 MiB", drain(resp.into_body())).await;
    assert_eq!(got, SIZE);

    assert_peak_rss_bounded(&proxy);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2_100mb_upload_and_download_stream_without_buffering() {
    let (_echo, proxy, listen) = setup().await;
    let client = H2Client::connect(listen).await;

    let upload = req("POST", "http://svc/upload")
        .body(generated_body(SIZE))
        .unwrap();
    let resp = client.send(upload).await;
    assert_eq!(resp.status(), StatusCode::OK);
    let echoed = resp.headers()["x-echo-body-bytes"].to_str().unwrap();
    assert_eq!(echoed, SIZE.to_string());
    within("reading the upload reply", drain(resp.into_body())).await;

    let url = format!("http://svc/download?size={SIZE}");
    let resp = client.send(pillion_tests::client::get(&url)).await;
    assert_eq!(resp.status(), StatusCode::OK);
    let got = within("downloading 100 MiB", drain(resp.into_body())).await;
    assert_eq!(got, SIZE);

    assert_peak_rss_bounded(&proxy);
}

/// An upstream that answers with an endless-looking 100 MiB body, counting the bytes it has
/// handed to the connection so far.
async fn counting_download_upstream(
    produced: std::sync::Arc<std::sync::atomic::AtomicU64>,
) -> pillion_tests::upstream::Upstream {
    use std::sync::atomic::Ordering;
    pillion_tests::upstream::Upstream::http1(move |_req| {
        let produced = produced.clone();
        async move {
            let chunk = Bytes::from(vec![b'y'; CHUNK]);
            let frames = futures_util::stream::unfold(0u64, move |sent| {
                let (chunk, produced) = (chunk.clone(), produced.clone());
                async move {
                    if sent >= SIZE {
                        return None;
                    }
                    produced.fetch_add(CHUNK as u64, Ordering::SeqCst);
                    Some((Ok::<_, BoxError>(Frame::data(chunk)), sent + CHUNK as u64))
                }
            });
            http::Response::new(stream_body(frames))
        }
    })
    .await
}

/// Waits until `produced` stops growing (or reaches `SIZE`) and returns it.
async fn settled(produced: &std::sync::atomic::AtomicU64) -> u64 {
    use std::sync::atomic::Ordering;
    let (mut last, mut still) = (u64::MAX, 0);
    pillion_tests::eventually("the upstream stopping (backpressure) or finishing", || {
        let now = produced.load(Ordering::SeqCst);
        still = if now == last { still + 1 } else { 0 };
        last = now;
        async move { (now >= SIZE || still >= 10).then_some(now) }
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_reader_pushes_back_on_the_upstream_instead_of_buffering() {
    use std::sync::atomic::AtomicU64;
    use std::sync::Arc;
    let produced = Arc::new(AtomicU64::new(0));
    let upstream = counting_download_upstream(produced.clone()).await;
    let (proxy, listen) = Proxy::in_front_of(upstream.addr(), "http1").await;

    for downstream in ["h1", "h2"] {
        produced.store(0, std::sync::atomic::Ordering::SeqCst);
        let mut h1 = None;
        let mut h2 = None;
        let resp = if downstream == "h1" {
            h1.insert(H1Client::connect(listen).await)
                .send(pillion_tests::client::get("http://svc/big"))
                .await
        } else {
            h2.insert(H2Client::connect(listen).await)
                .send(pillion_tests::client::get("http://svc/big"))
                .await
        };
        assert_eq!(resp.status(), StatusCode::OK);
        // The client reads nothing yet: the proxy must stop reading from the upstream once
        // socket and stream buffers are full, not pull the whole body into memory.
        let before_reading = settled(&produced).await;
        assert!(
            before_reading < 50 * 1024 * 1024,
            "{downstream}: upstream could push {} MiB to a client that read nothing",
            before_reading >> 20
        );
        assert_peak_rss_bounded(&proxy);
        let got = within("reading the body after all", drain(resp.into_body())).await;
        assert_eq!(got, SIZE, "{downstream}");
    }
}
