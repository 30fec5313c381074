//! Header handling: hop-by-hop removal (RFC 9110, section 7.6.1), forwarding headers, rewrites.

use http::{header, HeaderMap, HeaderName, HeaderValue};
use std::net::IpAddr;

const KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");
const PROXY_CONNECTION: HeaderName = HeaderName::from_static("proxy-connection");
const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");

/// Hop-by-hop headers removed whatever `Connection` says (HTTP/2 forbids them all).
const ALWAYS_HOP: [HeaderName; 4] = [
    KEEP_ALIVE,
    PROXY_CONNECTION,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
];

/// Headers to set and remove, compiled from the config.
#[derive(Debug, Clone, Default)]
pub struct Rewrite {
    add: Vec<(HeaderName, HeaderValue)>,
    remove: Vec<HeaderName>,
}

/// Removes the hop-by-hop headers: those named in `Connection` and the fixed set that HTTP/2
/// forbids. `TE: trailers` is kept, as gRPC needs it end to end (a `TE` that lists `trailers`
/// among other codings becomes it), and so is `Host` whatever `Connection` names (a request
/// without it is malformed). A `Content-Length` beside a `Transfer-Encoding` goes too: it does
/// not describe the body passed on (RFC 9112, section 6.3).
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    // Most messages carry none of these: one pass over the names (standard names compare
    // without hashing) avoids the hashed removals.
    let hop = |k: &HeaderName| k == header::CONNECTION || k == header::TE || ALWAYS_HOP.contains(k);
    if !headers.keys().any(hop) {
        return;
    }
    if headers.contains_key(header::CONNECTION) {
        let listed: Vec<HeaderName> = headers
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .filter_map(|n| HeaderName::from_bytes(n.trim().as_bytes()).ok())
            .collect();
        headers.remove(header::CONNECTION);
        for name in listed {
            if name != header::TE && name != header::HOST {
                headers.remove(name);
            }
        }
    }
    if headers.contains_key(header::TRANSFER_ENCODING) {
        headers.remove(header::CONTENT_LENGTH);
    }
    for name in &ALWAYS_HOP {
        headers.remove(name);
    }
    if headers.contains_key(header::TE) {
        let te = headers.get_all(header::TE);
        let trailers = te
            .iter()
            .any(|v| crate::ascii::has_token(v.as_bytes(), b"trailers"));
        let mut values = te.iter();
        let as_is = matches!((values.next(), values.next()), (Some(v), None) if v == "trailers");
        // NOTE: only `trailers` goes on, alone and in lower case: it is the one value HTTP/2
        // allows (RFC 9113, section 8.2.2; the h2 crate compares it byte for byte), and it tells
        // the upstream the client takes trailers whatever else its `TE` listed.
        if !trailers {
            headers.remove(header::TE);
        } else if !as_is {
            headers.insert(header::TE, HeaderValue::from_static("trailers"));
        }
    }
}

/// Whether a field may not be sent as a trailer: framing, routing, request modifiers,
/// authentication and content handling (RFC 9110, section 6.5.1; the list hyper's server
/// filters), and the hop-by-hop fields.
pub fn forbidden_trailer(name: &HeaderName) -> bool {
    use header::*;
    [
        AUTHORIZATION,
        CACHE_CONTROL,
        CONTENT_ENCODING,
        CONTENT_LENGTH,
        CONTENT_RANGE,
        CONTENT_TYPE,
        HOST,
        MAX_FORWARDS,
        SET_COOKIE,
        TRAILER,
        TRANSFER_ENCODING,
        TE,
        CONNECTION,
        UPGRADE,
        KEEP_ALIVE,
        PROXY_CONNECTION,
    ]
    .contains(name)
}

/// Whether a `Host` value is `uri-host [":" port]`: the characters of a registered name, an
/// IPv4 or a bracketed IPv6 address and a port (RFC 3986); no space, `/`, `@`, `?` or `#`.
pub fn valid_host(value: &[u8]) -> bool {
    // NOTE: a table, one load per byte: this runs on every HTTP/1 request.
    const HOST_BYTES: [bool; 256] = {
        let mut t = [false; 256];
        let mut b = 0;
        while b < 256 {
            t[b] = (b as u8).is_ascii_alphanumeric();
            b += 1;
        }
        let extra = b"-._~%!$&'()*+,;=:[]";
        let mut i = 0;
        while i < extra.len() {
            t[extra[i] as usize] = true;
            i += 1;
        }
        t
    };
    value.iter().all(|&b| HOST_BYTES[usize::from(b)])
}

/// Whether a request asks for an HTTP/1.1 upgrade; returns the `Upgrade` value to pass on.
pub fn upgrade_request(headers: &HeaderMap) -> Option<HeaderValue> {
    let upgrade = headers.get(header::UPGRADE)?;
    let asks = headers.get_all(header::CONNECTION).iter().any(|v| {
        v.to_str()
            .map(|s| {
                s.split(',')
                    .any(|t| t.trim().eq_ignore_ascii_case("upgrade"))
            })
            .unwrap_or(false)
    });
    asks.then(|| upgrade.clone())
}

/// Restores the upgrade headers after [`strip_hop_by_hop`].
pub fn set_upgrade(headers: &mut HeaderMap, upgrade: HeaderValue) {
    headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    headers.insert(header::UPGRADE, upgrade);
}

/// The client address as a header value, made once per connection.
pub fn client_ip(client: IpAddr) -> HeaderValue {
    // NOTE: an IP address always formats as a valid header value.
    HeaderValue::try_from(client.to_string()).unwrap_or(HeaderValue::from_static("unknown"))
}

/// Appends the client address to `x-forwarded-for`; sets `x-forwarded-proto` when absent.
pub fn set_forwarded(headers: &mut HeaderMap, client: &HeaderValue, proto: &'static str) {
    use http::header::Entry;
    // NOTE: one lookup per header through the entry API; the common case allocates nothing.
    match headers.entry(X_FORWARDED_FOR) {
        Entry::Vacant(e) => {
            e.insert(client.clone());
        }
        Entry::Occupied(mut e) => {
            // Earlier hops may arrive as several header lines; fold them all into one list.
            let mut v = Vec::with_capacity(64);
            for prev in e.iter() {
                let prev = prev.as_bytes().trim_ascii();
                if !prev.is_empty() {
                    v.extend_from_slice(prev);
                    v.extend_from_slice(b", ");
                }
            }
            v.extend_from_slice(client.as_bytes());
            if let Ok(value) = HeaderValue::from_bytes(&v) {
                e.insert(value);
            }
        }
    }
    if let Entry::Vacant(e) = headers.entry(X_FORWARDED_PROTO) {
        e.insert(HeaderValue::from_static(proto));
    }
}

// === impl Rewrite ===

impl Rewrite {
    /// Compiles a config rewrite; fails on names or values validation would have rejected.
    pub fn compile(cfg: &pillion_config::HeaderRewrite) -> Result<Self, String> {
        let add = cfg
            .add
            .iter()
            .map(|(n, v)| {
                let name = HeaderName::from_bytes(n.as_bytes()).map_err(|e| format!("{n}: {e}"))?;
                let value = HeaderValue::from_str(v).map_err(|e| format!("{n}: {e}"))?;
                Ok((name, value))
            })
            .collect::<Result<_, String>>()?;
        let remove = cfg
            .remove
            .iter()
            .map(|n| HeaderName::from_bytes(n.as_bytes()).map_err(|e| format!("{n}: {e}")))
            .collect::<Result<_, String>>()?;
        Ok(Self { add, remove })
    }

    /// Whether it does nothing.
    pub fn is_empty(&self) -> bool {
        self.add.is_empty() && self.remove.is_empty()
    }

    /// Applies the removals, then the additions.
    pub fn apply(&self, headers: &mut HeaderMap) {
        for name in &self.remove {
            headers.remove(name);
        }
        for (name, value) in &self.add {
            headers.insert(name.clone(), value.clone());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (n, v) in pairs {
            h.append(
                HeaderName::from_bytes(n.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        h
    }

    #[test]
    fn hop_by_hop_headers_are_removed() {
        let mut h = map(&[
            ("connection", "keep-alive, x-hop"),
            ("connection", "x-other"),
            ("x-hop", "1"),
            ("x-other", "1"),
            ("keep-alive", "timeout=5"),
            ("proxy-connection", "keep-alive"),
            ("transfer-encoding", "chunked"),
            ("upgrade", "websocket"),
            ("te", "gzip"),
            ("host", "example.com"),
            ("x-end-to-end", "kept"),
        ]);
        strip_hop_by_hop(&mut h);
        let mut left: Vec<&str> = h.keys().map(|k| k.as_str()).collect();
        left.sort_unstable();
        assert_eq!(left, ["host", "x-end-to-end"]);
    }

    #[test]
    fn host_survives_connection_and_a_length_goes_with_a_transfer_coding() {
        let mut h = map(&[
            ("connection", "host, x-hop"),
            ("host", "example.com"),
            ("x-hop", "1"),
            ("transfer-encoding", "chunked"),
            ("content-length", "3"),
        ]);
        strip_hop_by_hop(&mut h);
        let left: Vec<&str> = h.keys().map(|k| k.as_str()).collect();
        assert_eq!(left, ["host"]);
    }

    #[test]
    fn framing_and_routing_fields_are_no_trailers() {
        for name in [
            "content-length",
            "host",
            "transfer-encoding",
            "connection",
            "trailer",
        ] {
            assert!(forbidden_trailer(&HeaderName::from_static(name)), "{name}");
        }
        for name in ["grpc-status", "grpc-message", "x-checksum"] {
            assert!(!forbidden_trailer(&HeaderName::from_static(name)), "{name}");
        }
    }

    #[test]
    fn host_values() {
        for ok in [
            "example.com",
            "example.com:8080",
            "127.0.0.1:1",
            "[::1]:80",
            "a_b-c.d",
            "",
        ] {
            assert!(valid_host(ok.as_bytes()), "{ok:?}");
        }
        for bad in [
            "a b", "a/b", "u@host", "host?x", "host#f", "h\tx", "h\u{e9}",
        ] {
            assert!(!valid_host(bad.as_bytes()), "{bad:?}");
        }
    }

    #[test]
    fn te_trailers_is_kept() {
        let mut h = map(&[("te", "trailers"), ("connection", "te")]);
        strip_hop_by_hop(&mut h);
        assert_eq!(h["te"], "trailers");
    }

    #[test]
    fn te_keeps_only_its_trailers_token() {
        for (te, want) in [
            (&[("te", "gzip, Trailers")][..], Some("trailers")),
            (&[("te", "Trailers")], Some("trailers")),
            (&[("te", "gzip"), ("te", "trailers")], Some("trailers")),
            (&[("te", "trailers"), ("te", "deflate")], Some("trailers")),
            (&[("te", "gzip")], None),
            (&[("te", "gzip;q=0.5, deflate")], None),
        ] {
            let mut h = map(te);
            strip_hop_by_hop(&mut h);
            let got: Vec<_> = h.get_all(header::TE).iter().collect();
            assert_eq!(got, want.into_iter().collect::<Vec<_>>(), "{te:?}");
        }
    }

    #[test]
    fn upgrade_detection() {
        let h = map(&[
            ("connection", "keep-alive, Upgrade"),
            ("upgrade", "websocket"),
        ]);
        assert_eq!(upgrade_request(&h).unwrap(), "websocket");
        assert!(upgrade_request(&map(&[("upgrade", "websocket")])).is_none());
    }

    #[test]
    fn forwarded_headers() {
        let mut h = map(&[("x-forwarded-for", "10.0.0.1")]);
        set_forwarded(&mut h, &client_ip("127.0.0.1".parse().unwrap()), "http");
        assert_eq!(h["x-forwarded-for"], "10.0.0.1, 127.0.0.1");
        assert_eq!(h["x-forwarded-proto"], "http");
        let mut h = map(&[
            ("x-forwarded-for", "1.1.1.1"),
            ("x-forwarded-for", "2.2.2.2, 3.3.3.3"),
        ]);
        set_forwarded(&mut h, &client_ip("127.0.0.1".parse().unwrap()), "http");
        assert_eq!(h["x-forwarded-for"], "1.1.1.1, 2.2.2.2, 3.3.3.3, 127.0.0.1");
        let mut h = map(&[("x-forwarded-proto", "https")]);
        set_forwarded(&mut h, &client_ip("::1".parse().unwrap()), "http");
        assert_eq!(h["x-forwarded-for"], "::1");
        assert_eq!(h["x-forwarded-proto"], "https");
    }

    #[test]
    fn rewrite_removes_then_adds() {
        let cfg: pillion_config::HeaderRewrite =
            serde_yaml::from_str("add: {x-env: prod}\nremove: [x-internal, x-env]").unwrap();
        let rw = Rewrite::compile(&cfg).unwrap();
        let mut h = map(&[("x-internal", "1"), ("x-env", "dev")]);
        rw.apply(&mut h);
        assert_eq!(h.len(), 1);
        assert_eq!(h["x-env"], "prod");
    }
}
