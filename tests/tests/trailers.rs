//! gRPC-style trailers pass through an HTTP/2 listener to an `http2` cluster, both ways.

use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Response, StatusCode};
use http_body::Frame;
use http_body_util::BodyExt;
use pillion_tests::client::{req, stream_body, BoxError};
use pillion_tests::upstream::Upstream;
use pillion_tests::{free_addr, H2Client, Proxy};

fn trailers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
    let mut map = HeaderMap::new();
    for (name, value) in pairs {
        map.insert(*name, HeaderValue::from_static(value));
    }
    map
}

/// A body of `data` followed by `trailers`.
fn body_with_trailers(data: &'static [u8], trailers: HeaderMap) -> pillion_tests::Body {
    stream_body(futures_util::stream::iter([
        Ok::<_, BoxError>(Frame::data(Bytes::from_static(data))),
        Ok(Frame::trailers(trailers)),
    ]))
}

/// What the upstream saw of the request.
#[derive(Default, Debug)]
struct Seen {
    body: Bytes,
    trailers: Option<HeaderMap>,
    content_type: Option<HeaderValue>,
    te: Option<HeaderValue>,
}

#[tokio::test]
async fn grpc_request_and_response_trailers_pass_through_unchanged() {
    let seen = Arc::new(Mutex::new(Seen::default()));
    let record = seen.clone();
    let upstream = Upstream::http2(move |req| {
        let record = record.clone();
        async move {
            let content_type = req.headers().get("content-type").cloned();
            let te = req.headers().get("te").cloned();
            let collected = req.into_body().collect().await.expect("request body");
            *record.lock().unwrap() = Seen {
                trailers: collected.trailers().cloned(),
                body: collected.to_bytes(),
                content_type,
                te,
            };
            let reply = body_with_trailers(
                b"\x00\x00\x00\x00\x02hi",
                trailers(&[("grpc-status", "0"), ("grpc-message", "all%20good")]),
            );
            Response::builder()
                .header("content-type", "application/grpc")
                .body(reply)
                .unwrap()
        }
    })
    .await;
    let listen = free_addr();
    let _proxy = Proxy::start(&format!(
        r#"
listeners:
  - name: grpc
    address: {listen}
    protocol: http
    cluster: grpc
clusters:
  - name: grpc
    endpoints: [{}]
    protocol: http2
"#,
        upstream.addr()
    ))
    .await;

    let client = H2Client::connect(listen).await;
    let request = req("POST", "http://grpc.svc/pkg.Service/Method")
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(body_with_trailers(
            b"\x00\x00\x00\x00\x03abc",
            trailers(&[("x-client-trailer", "sent"), ("grpc-timeout", "5S")]),
        ))
        .unwrap();
    let reply = client.request(request).await;

    assert_eq!(reply.status, StatusCode::OK, "{reply:?}");
    assert_eq!(reply.header("content-type"), Some("application/grpc"));
    assert_eq!(&reply.body[..], b"\x00\x00\x00\x00\x02hi");
    let got = reply.trailers.as_ref().expect("response trailers");
    assert_eq!(got.get("grpc-status").unwrap(), "0", "{got:?}");
    assert_eq!(got.get("grpc-message").unwrap(), "all%20good", "{got:?}");

    let seen = seen.lock().unwrap();
    assert_eq!(&seen.body[..], b"\x00\x00\x00\x00\x03abc");
    assert_eq!(seen.content_type.as_ref().unwrap(), "application/grpc");
    assert_eq!(
        seen.te.as_ref().map(|v| v.as_bytes()),
        Some(&b"trailers"[..])
    );
    let got = seen
        .trailers
        .as_ref()
        .expect("request trailers at the upstream");
    assert_eq!(got.get("x-client-trailer").unwrap(), "sent", "{got:?}");
    assert_eq!(got.get("grpc-timeout").unwrap(), "5S", "{got:?}");
}
