//! The load to generate: a plain config struct, and the parsers for what users type.

use std::str::FromStr;
use std::time::Duration;

use anyhow::{anyhow, bail, Context};
use bytes::Bytes;
use http::header::{self, HeaderName, HeaderValue};
use http::uri::{Authority, PathAndQuery, Scheme};
use http::{HeaderMap, Method, Uri};

/// Everything [`run`](crate::run) needs to generate a load.
///
/// Build one with [`LoadConfig::new`] and adjust its public fields.
#[derive(Debug, Clone)]
pub struct LoadConfig {
    /// Where to send the requests.
    pub target: Target,
    /// HTTP/1.1, or HTTP/2 with prior knowledge (h2c).
    pub protocol: Protocol,
    /// Number of TCP connections, each its own hyper client connection.
    pub connections: usize,
    /// Requests in flight at once on each HTTP/2 connection (HTTP/1.1 always has 1).
    pub streams: usize,
    pub method: Method,
    /// Extra request headers; they override the generated `host` header.
    pub headers: HeaderMap,
    /// Request body, sent with every request.
    pub body: Bytes,
    /// When to stop: after a time, or after a number of requests.
    pub stop: Stop,
    /// Time spent sending requests before measuring; its requests are not counted.
    pub warmup: Duration,
    /// Requests per second over all connections (open loop); `None` for a closed loop.
    pub rate: Option<f64>,
    /// Per request, from sending to the last byte of the response body; also bounds a connect.
    pub timeout: Duration,
    /// Print a progress line on stderr once per second.
    pub progress: bool,
}

/// When a run stops.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stop {
    /// Stop sending after this long (after the warmup); in-flight requests still complete.
    Duration(Duration),
    /// Stop after this many requests (after the warmup), over all connections.
    Requests(u64),
}

/// The wire protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    Http1,
    /// HTTP/2 over cleartext TCP with prior knowledge (no upgrade).
    Http2,
}

/// A parsed `http://host[:port][/path]` URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    uri: Uri,
    authority: Authority,
    host: String,
    port: u16,
}

// === impl LoadConfig ===

impl LoadConfig {
    /// A 10-second closed-loop HTTP/1.1 `GET` over 10 connections with a 5-second timeout.
    pub fn new(target: Target) -> Self {
        Self {
            target,
            protocol: Protocol::Http1,
            connections: 10,
            streams: 10,
            method: Method::GET,
            headers: HeaderMap::new(),
            body: Bytes::new(),
            stop: Stop::Duration(Duration::from_secs(10)),
            warmup: Duration::ZERO,
            rate: None,
            timeout: Duration::from_secs(5),
            progress: false,
        }
    }

    /// Requests in flight at once on one connection.
    pub fn in_flight_per_connection(&self) -> usize {
        match self.protocol {
            Protocol::Http1 => 1,
            Protocol::Http2 => self.streams,
        }
    }

    /// Rejects settings that cannot produce a load.
    pub fn validate(&self) -> anyhow::Result<()> {
        check_body_size(self.body.len())?;
        if self.connections == 0 {
            bail!("--connections must be at least 1");
        }
        if self.connections > MAX_CONNECTIONS {
            bail!(
                "--connections must be at most {MAX_CONNECTIONS}, got {}",
                self.connections
            );
        }
        if self.protocol == Protocol::Http2 && self.streams == 0 {
            bail!("--streams must be at least 1");
        }
        if self.streams > MAX_STREAMS {
            bail!(
                "--streams must be at most {MAX_STREAMS}, got {}",
                self.streams
            );
        }
        match self.stop {
            Stop::Duration(d) if d.is_zero() => bail!("--duration must be more than 0"),
            Stop::Requests(0) => bail!("--requests must be at least 1"),
            _ => {}
        }
        if let Some(rate) = self.rate {
            // NOTE: the bounds keep every scheduled instant representable and exact.
            if !rate.is_finite() || !(MIN_RATE..=MAX_RATE).contains(&rate) {
                bail!("--rate must be between {MIN_RATE} and {MAX_RATE} requests per second, got {rate}");
            }
        }
        if self.timeout < MIN_TIMEOUT {
            bail!(
                "--timeout must be at least 1ms, got {:?} (the timer has a 1 ms resolution)",
                self.timeout
            );
        }
        let mut hosts = self.headers.get_all(header::HOST).iter();
        if let (Some(host), more) = (hosts.next(), hosts.next()) {
            if more.is_some() {
                bail!("-H: more than one Host header");
            }
            if self.protocol == Protocol::Http2 {
                // It becomes the `:authority`, which must be a valid authority.
                host_authority(host)?;
            }
        }
        Ok(())
    }
}

/// A `Host` header read as an authority (`host[:port]`), as HTTP/2 sends it in `:authority`.
pub(crate) fn host_authority(host: &HeaderValue) -> anyhow::Result<Authority> {
    let authority = Authority::try_from(host.as_bytes())
        .ok()
        .filter(|a| !a.host().is_empty() && !a.as_str().contains('@'))
        .ok_or_else(|| {
            anyhow!(
                "invalid Host header {:?}: with --h2 it is the :authority, host[:port]",
                String::from_utf8_lossy(host.as_bytes())
            )
        })?;
    Ok(authority)
}

/// The most connections a run takes (each is a socket, a task and a histogram).
pub const MAX_CONNECTIONS: usize = 1_000_000;

/// The most `--streams` per HTTP/2 connection (HTTP/2 stream ids allow 2^30 per connection).
pub const MAX_STREAMS: usize = 1 << 20;

/// The lowest `--rate`, in requests per second.
pub const MIN_RATE: f64 = 0.001;

pub use crate::schedule::MAX_RATE;

/// The shortest `--timeout`: tokio's timers have a 1 ms resolution.
pub const MIN_TIMEOUT: Duration = Duration::from_millis(1);

/// The largest request body `--body-size` takes: the body is held in memory once, shared by
/// every request.
pub const MAX_BODY_SIZE: usize = 1 << 30;

/// Rejects a `--body-size` above [`MAX_BODY_SIZE`], before anything is allocated for it.
pub fn check_body_size(bytes: usize) -> anyhow::Result<()> {
    if bytes > MAX_BODY_SIZE {
        bail!("--body-size must be at most {MAX_BODY_SIZE} bytes (1 GiB), got {bytes}");
    }
    Ok(())
}

// === impl Target ===

impl Target {
    /// Parses `http://host[:port][/path][?query]`; the port defaults to 80 and the path to `/`.
    pub fn parse(url: &str) -> anyhow::Result<Self> {
        let uri: Uri = url
            .parse()
            .with_context(|| format!("invalid URL {url:?}"))?;
        match uri.scheme() {
            Some(s) if *s == Scheme::HTTP => {}
            Some(s) if *s == Scheme::HTTPS => {
                bail!("invalid URL {url:?}: https is not supported, use http:// (and --h2 for h2c)")
            }
            Some(s) => bail!("invalid URL {url:?}: unsupported scheme {s:?}, expected http://"),
            None => bail!("invalid URL {url:?}: expected http://host:port/path"),
        }
        let authority = uri
            .authority()
            .cloned()
            .ok_or_else(|| anyhow!("invalid URL {url:?}: no host"))?;
        if authority.as_str().contains('@') {
            bail!("invalid URL {url:?}: user info is not supported");
        }
        let host = authority.host();
        if host.is_empty() {
            bail!("invalid URL {url:?}: no host");
        }
        // `Authority::host` keeps the brackets of an IPv6 literal; the resolver wants them off.
        let host = host
            .strip_prefix('[')
            .and_then(|h| h.strip_suffix(']'))
            .unwrap_or(host)
            .to_owned();
        // NOTE: `Authority::port` is `None` both for no port and for one that does not fit
        // in 16 bits, which must not quietly become port 80.
        let port = match authority.as_str()[authority.host().len()..].strip_prefix(':') {
            None | Some("") => 80,
            Some(digits) => match digits.parse::<u16>() {
                Ok(0) => bail!("invalid URL {url:?}: port 0"),
                Ok(port) => port,
                Err(_) => bail!("invalid URL {url:?}: port out of range"),
            },
        };
        let path = uri
            .path_and_query()
            .cloned()
            .unwrap_or_else(|| PathAndQuery::from_static("/"));
        let uri = Uri::builder()
            .scheme(Scheme::HTTP)
            .authority(authority.clone())
            .path_and_query(path)
            .build()
            .with_context(|| format!("invalid URL {url:?}"))?;
        Ok(Self {
            uri,
            authority,
            host,
            port,
        })
    }

    /// The absolute URI, `http://host:port/path`.
    pub fn uri(&self) -> &Uri {
        &self.uri
    }

    /// `host[:port]` as written in the URL: the `host` header and the `:authority`.
    pub fn authority(&self) -> &Authority {
        &self.authority
    }

    /// The host name or address, without IPv6 brackets.
    pub fn host(&self) -> &str {
        &self.host
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// The path and query, `/` if the URL had none.
    pub fn path_and_query(&self) -> &str {
        self.uri.path_and_query().map_or("/", PathAndQuery::as_str)
    }
}

impl FromStr for Target {
    type Err = anyhow::Error;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

impl std::fmt::Display for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.uri.fmt(f)
    }
}

// === parsers ===

/// Parses a duration such as `250ms`, `10s`, `1.5s`, `2m`, `1h` or `500us`; a bare number is
/// seconds.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let (number, unit) = s.split_at(split);
    let scale = match unit.trim() {
        "" | "s" => 1.0,
        "ms" => 1e-3,
        "us" | "µs" => 1e-6,
        "ns" => 1e-9,
        "m" => 60.0,
        "h" => 3600.0,
        other => {
            return Err(format!(
            "invalid duration {s:?}: unknown unit {other:?} (use ms, s, m or h, e.g. 250ms or 10s)"
        ))
        }
    };
    let value: f64 = number
        .parse()
        .map_err(|_| format!("invalid duration {s:?}: expected a number and a unit, e.g. 10s"))?;
    Duration::try_from_secs_f64(value * scale)
        .map_err(|_| format!("invalid duration {s:?}: out of range"))
}

/// Parses a `name: value` header.
pub fn parse_header(s: &str) -> Result<(HeaderName, HeaderValue), String> {
    let (name, value) = s
        .split_once(':')
        .ok_or_else(|| format!("invalid header {s:?}: expected 'name: value'"))?;
    let name = HeaderName::from_bytes(name.trim().as_bytes())
        .map_err(|_| format!("invalid header {s:?}: bad name {:?}", name.trim()))?;
    let value = HeaderValue::from_str(value.trim())
        .map_err(|_| format!("invalid header {s:?}: bad value"))?;
    Ok((name, value))
}

/// Parses a request rate in requests per second, from [`MIN_RATE`] to [`MAX_RATE`].
pub fn parse_rate(s: &str) -> Result<f64, String> {
    match s.trim().parse::<f64>() {
        Ok(r) if r.is_finite() && (MIN_RATE..=MAX_RATE).contains(&r) => Ok(r),
        _ => Err(format!(
            "invalid rate {s:?}: expected requests per second, from {MIN_RATE} to {MAX_RATE}"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("10s"), Ok(Duration::from_secs(10)));
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("1.5s"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("1h"), Ok(Duration::from_secs(3600)));
        assert_eq!(parse_duration("500us"), Ok(Duration::from_micros(500)));
        assert_eq!(parse_duration("3"), Ok(Duration::from_secs(3)));
        assert_eq!(parse_duration("0s"), Ok(Duration::ZERO));
        for bad in ["", "s", "10x", "-1s", "1..2s", "1e400s", "ten seconds"] {
            assert!(parse_duration(bad).is_err(), "{bad:?} should not parse");
        }
    }

    #[test]
    fn headers() {
        let (n, v) = parse_header("X-Test: a b:c ").unwrap();
        assert_eq!(n, "x-test");
        assert_eq!(v, "a b:c");
        let (n, v) = parse_header("empty:").unwrap();
        assert_eq!(n, "empty");
        assert_eq!(v, "");
        assert!(parse_header("no colon").is_err());
        assert!(parse_header("bad name: v").is_err());
        assert!(parse_header(": v").is_err());
        assert!(parse_header("x: a\nb").is_err());
    }

    #[test]
    fn rates() {
        assert_eq!(parse_rate("1000"), Ok(1000.0));
        assert_eq!(parse_rate("0.5"), Ok(0.5));
        assert_eq!(parse_rate("1000000000"), Ok(MAX_RATE));
        for bad in ["0", "-3", "inf", "NaN", "fast", "1e20", "1000000001"] {
            assert!(parse_rate(bad).is_err(), "{bad:?} should not parse");
        }
    }

    #[test]
    fn targets() {
        let t = Target::parse("http://127.0.0.1:8080/a/b?c=d").unwrap();
        assert_eq!(t.host(), "127.0.0.1");
        assert_eq!(t.port(), 8080);
        assert_eq!(t.authority().as_str(), "127.0.0.1:8080");
        assert_eq!(t.path_and_query(), "/a/b?c=d");
        assert_eq!(t.uri().to_string(), "http://127.0.0.1:8080/a/b?c=d");

        let t = Target::parse("http://example.com").unwrap();
        assert_eq!(t.port(), 80);
        assert_eq!(t.path_and_query(), "/");
        assert_eq!(t.uri().to_string(), "http://example.com/");

        let t = Target::parse("http://[::1]:9000/").unwrap();
        assert_eq!(t.host(), "::1");
        assert_eq!(t.authority().as_str(), "[::1]:9000");
        assert_eq!(t.port(), 9000);
        assert_eq!(Target::parse("http://[::1]/").unwrap().port(), 80);
        assert_eq!(Target::parse("http://h:65535/").unwrap().port(), 65535);
        assert_eq!(Target::parse("http://h:/").unwrap().port(), 80);

        // A port that does not fit is an error, not port 80.
        for bad in [
            "http://127.0.0.1:99999/",
            "http://[::1]:65536/",
            "http://h:0/",
        ] {
            let error = format!("{:#}", Target::parse(bad).unwrap_err());
            assert!(
                error.starts_with(&format!("invalid URL {bad:?}: port")),
                "{error}"
            );
        }
        let error = format!(
            "{:#}",
            Target::parse("http://127.0.0.1:99999/").unwrap_err()
        );
        assert_eq!(
            error,
            "invalid URL \"http://127.0.0.1:99999/\": port out of range"
        );

        for bad in [
            "",
            "example.com:80",
            "/path",
            "https://example.com/",
            "ftp://example.com/",
            "http://user@example.com/",
            "http://exa mple.com/",
        ] {
            assert!(Target::parse(bad).is_err(), "{bad:?} should not parse");
        }
    }

    #[test]
    fn validation() {
        let target = Target::parse("http://127.0.0.1:1/").unwrap();
        let ok = LoadConfig::new(target);
        assert!(ok.validate().is_ok());
        let mut two_hosts = HeaderMap::new();
        two_hosts.append(header::HOST, HeaderValue::from_static("a"));
        two_hosts.append(header::HOST, HeaderValue::from_static("b"));
        let mut bad_authority = HeaderMap::new();
        bad_authority.append(header::HOST, HeaderValue::from_static("a b"));
        let huge_rate = LoadConfig {
            rate: Some(1e20),
            ..ok.clone()
        };
        assert_eq!(
            format!("{:#}", huge_rate.validate().unwrap_err()),
            "--rate must be between 0.001 and 1000000000 requests per second, got 100000000000000000000"
        );
        let bad = [
            LoadConfig {
                connections: 0,
                ..ok.clone()
            },
            LoadConfig {
                protocol: Protocol::Http2,
                streams: 0,
                ..ok.clone()
            },
            LoadConfig {
                stop: Stop::Requests(0),
                ..ok.clone()
            },
            LoadConfig {
                stop: Stop::Duration(Duration::ZERO),
                ..ok.clone()
            },
            LoadConfig {
                rate: Some(0.0),
                ..ok.clone()
            },
            LoadConfig {
                rate: Some(1e20),
                ..ok.clone()
            },
            LoadConfig {
                timeout: Duration::ZERO,
                ..ok.clone()
            },
            LoadConfig {
                timeout: Duration::from_micros(999),
                ..ok.clone()
            },
            LoadConfig {
                connections: MAX_CONNECTIONS + 1,
                ..ok.clone()
            },
            LoadConfig {
                protocol: Protocol::Http2,
                streams: MAX_STREAMS + 1,
                ..ok.clone()
            },
            LoadConfig {
                headers: two_hosts,
                ..ok.clone()
            },
            LoadConfig {
                protocol: Protocol::Http2,
                headers: bad_authority,
                ..ok.clone()
            },
        ];
        for config in bad {
            assert!(config.validate().is_err(), "{config:?}");
        }
        assert_eq!(ok.in_flight_per_connection(), 1);
        let h2 = LoadConfig {
            protocol: Protocol::Http2,
            streams: 7,
            ..ok
        };
        assert_eq!(h2.in_flight_per_connection(), 7);
    }
}
