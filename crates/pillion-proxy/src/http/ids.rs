//! Request IDs (`x-request-id`) and W3C trace context (`traceparent`, `tracestate`).

use http::{HeaderMap, HeaderName, HeaderValue};
use std::fmt::Write;

/// The request id header.
pub const X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
const TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");

/// The ids a request carries after [`apply`].
#[derive(Debug, Clone, Default)]
pub struct Ids {
    /// The request id, kept or generated.
    pub request_id: Option<HeaderValue>,
    /// The trace id (32 lower-case hex digits), kept or started.
    pub trace_id: Option<[u8; 32]>,
}

/// Keeps or generates `x-request-id`; keeps or starts a trace, recording this hop as the new
/// parent. `tracestate` is passed on untouched.
pub fn apply(headers: &mut HeaderMap, request_id: bool, trace: bool) -> Ids {
    let mut ids = Ids::default();
    if request_id {
        let id = match headers.get(&X_REQUEST_ID) {
            Some(v) if !v.is_empty() => v.clone(),
            _ => {
                let v = uuid_v4();
                headers.insert(X_REQUEST_ID, v.clone());
                v
            }
        };
        ids.request_id = Some(id);
    }
    if trace {
        let parsed = headers
            .get(&TRACEPARENT)
            .and_then(|v| parse_traceparent(v.as_bytes()));
        let (trace_id, flags) = match parsed {
            Some((t, f)) => (t, f),
            None => (random_hex::<32>(), *b"01"),
        };
        let span = random_hex::<16>();
        let mut v = [0u8; 55];
        v[..3].copy_from_slice(b"00-");
        v[3..35].copy_from_slice(&trace_id);
        v[35] = b'-';
        v[36..52].copy_from_slice(&span);
        v[52] = b'-';
        v[53..].copy_from_slice(&flags);
        // NOTE: every byte is ASCII hex or '-', always a valid header value.
        if let Ok(v) = HeaderValue::from_bytes(&v) {
            headers.insert(TRACEPARENT, v);
        }
        ids.trace_id = Some(trace_id);
    }
    ids
}

/// Parses `00-<32 hex trace id>-<16 hex parent id>-<2 hex flags>`; rejects all-zero ids.
fn parse_traceparent(v: &[u8]) -> Option<([u8; 32], [u8; 2])> {
    if v.len() < 55
        || &v[..3] != b"00-"
        || v[35] != b'-'
        || v[52] != b'-'
        || (v.len() > 55 && v[55] != b'-')
    {
        return None;
    }
    let hex = |s: &[u8]| {
        s.iter()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(b))
    };
    let (trace, parent, flags) = (&v[3..35], &v[36..52], &v[53..55]);
    if !hex(trace)
        || !hex(parent)
        || !hex(flags)
        || trace.iter().all(|b| *b == b'0')
        || parent.iter().all(|b| *b == b'0')
    {
        return None;
    }
    let mut t = [0u8; 32];
    t.copy_from_slice(trace);
    Some((t, [flags[0], flags[1]]))
}

fn random_hex<const N: usize>() -> [u8; N] {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut out = [0u8; N];
    let mut bits = 0u64;
    for (i, b) in out.iter_mut().enumerate() {
        if i % 16 == 0 {
            bits = fastrand::u64(..);
        }
        *b = HEX[(bits & 0xf) as usize];
        bits >>= 4;
    }
    out
}

/// A random (version 4) UUID, formatted `xxxxxxxx-xxxx-4xxx-yxxx-xxxxxxxxxxxx`.
pub fn uuid_v4() -> HeaderValue {
    let mut b = fastrand::u128(..).to_be_bytes();
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let mut s = String::with_capacity(36);
    for (i, byte) in b.iter().enumerate() {
        if matches!(i, 4 | 6 | 8 | 10) {
            s.push('-');
        }
        let _ = write!(s, "{byte:02x}");
    }
    // NOTE: hex digits and dashes are always a valid header value.
    HeaderValue::from_str(&s).unwrap_or(HeaderValue::from_static("invalid"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_id_is_kept_or_generated() {
        let mut h = HeaderMap::new();
        let ids = apply(&mut h, true, false);
        let id = ids.request_id.unwrap();
        assert_eq!(h[&X_REQUEST_ID], id);
        let s = id.to_str().unwrap();
        assert_eq!(s.len(), 36);
        assert_eq!(&s[14..15], "4");
        assert!(matches!(&s[19..20], "8" | "9" | "a" | "b"), "{s}");
        let mut h = HeaderMap::new();
        h.insert(X_REQUEST_ID, HeaderValue::from_static("abc"));
        assert_eq!(apply(&mut h, true, false).request_id.unwrap(), "abc");
        let mut h = HeaderMap::new();
        assert!(apply(&mut h, false, false).request_id.is_none());
        assert!(h.is_empty());
    }

    #[test]
    fn trace_is_continued_with_a_new_parent() {
        let incoming = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let mut h = HeaderMap::new();
        h.insert(TRACEPARENT, HeaderValue::from_static(incoming));
        h.insert("tracestate", HeaderValue::from_static("congo=t61rcWkgMzE"));
        let ids = apply(&mut h, false, true);
        assert_eq!(&ids.trace_id.unwrap(), b"4bf92f3577b34da6a3ce929d0e0e4736");
        let out = h[&TRACEPARENT].to_str().unwrap();
        assert_eq!(&out[..36], &incoming[..36]);
        assert_ne!(&out[36..52], &incoming[36..52]);
        assert_eq!(&out[52..], "-01");
        assert_eq!(h["tracestate"], "congo=t61rcWkgMzE");
    }

    #[test]
    fn invalid_or_absent_trace_starts_a_new_one() {
        for bad in [
            "",
            "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
        ] {
            let mut h = HeaderMap::new();
            if !bad.is_empty() {
                h.insert(TRACEPARENT, HeaderValue::from_str(bad).unwrap());
            }
            let ids = apply(&mut h, false, true);
            let t = ids.trace_id.unwrap();
            assert!(
                parse_traceparent(h[&TRACEPARENT].as_bytes()).is_some(),
                "{bad}"
            );
            assert_ne!(&t[..], &b"4bf92f3577b34da6a3ce929d0e0e4736"[..], "{bad}");
        }
    }
}
