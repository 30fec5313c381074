//! Scalar values with their own syntax: durations, endpoints and host patterns.

use serde::{de, Deserialize, Deserializer, Serialize, Serializer};
use std::{fmt, net::SocketAddr, str::FromStr};

/// A duration written as a string: `250ms`, `2s`, `1m`, `1h` (a whole number and a unit), at
/// most [`Duration::MAX`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default)]
pub struct Duration(pub std::time::Duration);

/// Where a cluster sends traffic: an `ip:port`, or a `host:port` resolved by DNS.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Endpoint {
    /// A literal socket address.
    Static(SocketAddr),
    /// A DNS name and a port, resolved at start and re-resolved periodically.
    Dns { host: String, port: u16 },
}

/// A route's host condition: an exact name, `*.suffix`, or `*` for any host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostPattern {
    /// Any host at all.
    Any,
    /// This host exactly (stored lower-case, without a port).
    Exact(String),
    /// Any host ending in this suffix (stored lower-case, with its leading dot).
    Suffix(String),
}

// === impl Duration ===

impl Duration {
    /// The longest duration a config may give: 8760h (a year). Longer ones are typos, and
    /// NOTE: the cap keeps `Instant + duration` from overflowing (a panic) at run time.
    pub const MAX: Self = Self::from_secs(8760 * 3600);

    /// Builds from milliseconds.
    pub const fn from_millis(ms: u64) -> Self {
        Self(std::time::Duration::from_millis(ms))
    }

    /// Builds from seconds.
    pub const fn from_secs(s: u64) -> Self {
        Self(std::time::Duration::from_secs(s))
    }
}

impl FromStr for Duration {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let expected = || format!("expected a duration like 250ms, 2s or 1m, got `{s}`");
        let t = s.trim();
        let split = t.find(|c: char| !c.is_ascii_digit()).ok_or_else(expected)?;
        let (n, unit) = t.split_at(split);
        let n: u64 = n.parse().map_err(|_| expected())?;
        let d = match unit {
            "us" => std::time::Duration::from_micros(n),
            "ms" => std::time::Duration::from_millis(n),
            "s" => std::time::Duration::from_secs(n),
            "m" => std::time::Duration::from_secs(n.saturating_mul(60)),
            "h" => std::time::Duration::from_secs(n.saturating_mul(3600)),
            _ => return Err(expected()),
        };
        if d > Self::MAX.0 {
            return Err(format!(
                "expected a duration of at most 8760h (a year), got `{s}`"
            ));
        }
        Ok(Self(d))
    }
}

impl fmt::Display for Duration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let d = self.0;
        if d.subsec_nanos() == 0 && d.as_secs() > 0 {
            let s = d.as_secs();
            if s.is_multiple_of(3600) {
                write!(f, "{}h", s / 3600)
            } else if s.is_multiple_of(60) {
                write!(f, "{}m", s / 60)
            } else {
                write!(f, "{s}s")
            }
        } else if d.as_nanos().is_multiple_of(1_000_000) {
            write!(f, "{}ms", d.as_millis())
        } else {
            write!(f, "{}us", d.as_micros())
        }
    }
}

impl<'de> Deserialize<'de> for Duration {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        from_str_visitor(d, "a duration like 250ms, 2s or 1m")
    }
}

impl Serialize for Duration {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

// === impl Endpoint ===

impl FromStr for Endpoint {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if let Ok(addr) = s.parse::<SocketAddr>() {
            return Ok(Self::Static(addr));
        }
        let expected =
            || format!("expected an endpoint like 127.0.0.1:8080 or my-svc:80, got `{s}`");
        let (host, port) = s.rsplit_once(':').ok_or_else(expected)?;
        let port: u16 = port.parse().map_err(|_| expected())?;
        let valid_host = !host.is_empty()
            && host.len() <= 253
            && host
                .split('.')
                .all(|l| !l.is_empty() && l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-'));
        if !valid_host || port == 0 {
            return Err(expected());
        }
        Ok(Self::Dns {
            host: host.to_ascii_lowercase(),
            port,
        })
    }
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Static(a) => write!(f, "{a}"),
            Self::Dns { host, port } => write!(f, "{host}:{port}"),
        }
    }
}

impl<'de> Deserialize<'de> for Endpoint {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        from_str_visitor(d, "an endpoint like 127.0.0.1:8080 or my-svc:80")
    }
}

impl Serialize for Endpoint {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

// === impl HostPattern ===

impl HostPattern {
    /// Whether `host` (lower-case, no port) matches.
    pub fn matches(&self, host: &str) -> bool {
        match self {
            Self::Any => true,
            Self::Exact(h) => h == host,
            Self::Suffix(s) => host.len() > s.len() && host.ends_with(s.as_str()),
        }
    }
}

impl FromStr for HostPattern {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let expected = || format!("expected a host like api.local, *.example.com or *, got `{s}`");
        let valid = |h: &str| {
            !h.is_empty()
                && h.split('.').all(|l| {
                    !l.is_empty()
                        && l.chars()
                            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
                })
        };
        let lower = s.trim().to_ascii_lowercase();
        if lower == "*" {
            Ok(Self::Any)
        } else if let Some(rest) = lower.strip_prefix("*.") {
            if valid(rest) {
                Ok(Self::Suffix(format!(".{rest}")))
            } else {
                Err(expected())
            }
        } else if valid(&lower) {
            Ok(Self::Exact(lower))
        } else {
            Err(expected())
        }
    }
}

impl fmt::Display for HostPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Any => f.write_str("*"),
            Self::Exact(h) => f.write_str(h),
            Self::Suffix(s) => write!(f, "*{s}"),
        }
    }
}

impl<'de> Deserialize<'de> for HostPattern {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        from_str_visitor(d, "a host like api.local, *.example.com or *")
    }
}

impl Serialize for HostPattern {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

// === helpers ===

/// Deserializes a `FromStr` type from a YAML string, reporting its own message on failure.
fn from_str_visitor<'de, D, T>(d: D, what: &'static str) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: FromStr<Err = String>,
{
    struct V<T>(&'static str, std::marker::PhantomData<T>);
    impl<T: FromStr<Err = String>> de::Visitor<'_> for V<T> {
        type Value = T;
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str(self.0)
        }
        fn visit_str<E: de::Error>(self, v: &str) -> Result<T, E> {
            v.parse().map_err(E::custom)
        }
    }
    d.deserialize_str(V(what, std::marker::PhantomData))
}

/// Deserializes a listening address (`ip:port`) with a message that says what was expected.
pub(crate) fn socket_addr<'de, D: Deserializer<'de>>(d: D) -> Result<SocketAddr, D::Error> {
    struct Addr(SocketAddr);
    impl FromStr for Addr {
        type Err = String;
        fn from_str(s: &str) -> Result<Self, String> {
            s.trim().parse().map(Addr).map_err(|_| {
                format!("expected an address like 127.0.0.1:15006 or [::1]:15006, got `{s}`")
            })
        }
    }
    from_str_visitor::<D, Addr>(d, "an address like 127.0.0.1:15006").map(|a| a.0)
}

/// Like [`socket_addr`], with `null` for "off".
pub(crate) fn opt_socket_addr<'de, D: Deserializer<'de>>(
    d: D,
) -> Result<Option<SocketAddr>, D::Error> {
    #[derive(Deserialize)]
    struct Wrap(#[serde(deserialize_with = "socket_addr")] SocketAddr);
    Option::<Wrap>::deserialize(d).map(|o| o.map(|w| w.0))
}

/// Deserializes header names to values, rejecting a name given twice: a map would keep only
/// the last value, and header names are case-insensitive (`X-Env` and `x-env` are one header).
pub(crate) fn header_map<'de, D: Deserializer<'de>>(
    d: D,
) -> Result<std::collections::BTreeMap<String, String>, D::Error> {
    struct V;
    impl<'de> de::Visitor<'de> for V {
        type Value = std::collections::BTreeMap<String, String>;
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a mapping of header names to values")
        }
        fn visit_map<A: de::MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
            let mut out = std::collections::BTreeMap::new();
            let mut seen = std::collections::HashSet::new();
            while let Some((name, value)) = map.next_entry::<String, String>()? {
                if !seen.insert(name.to_ascii_lowercase()) {
                    return Err(de::Error::custom(format!(
                        "header `{name}` is given twice (names are case-insensitive); expected each header once"
                    )));
                }
                out.insert(name, value);
            }
            Ok(out)
        }
    }
    d.deserialize_map(V)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!("250ms".parse::<Duration>(), Ok(Duration::from_millis(250)));
        assert_eq!("2s".parse::<Duration>(), Ok(Duration::from_secs(2)));
        assert_eq!("1m".parse::<Duration>(), Ok(Duration::from_secs(60)));
        assert_eq!("1h".parse::<Duration>(), Ok(Duration::from_secs(3600)));
        assert!("2".parse::<Duration>().is_err());
        assert!("s".parse::<Duration>().is_err());
        assert!("2 days".parse::<Duration>().is_err());
        assert!("-1s".parse::<Duration>().is_err());
        assert_eq!("8760h".parse::<Duration>(), Ok(Duration::MAX));
        for long in [
            "8761h",
            "525601m",
            "31536001s",
            "99999999999999999h",
            "31536000001ms",
        ] {
            let e = long.parse::<Duration>().unwrap_err();
            assert!(e.contains("at most 8760h") && e.contains(long), "{e}");
        }
        // Too many digits for a number at all: still a duration error, not a panic.
        assert!("999999999999999999999999s".parse::<Duration>().is_err());
        for s in ["250ms", "2s", "1m", "1h", "90s", "1500ms", "5us"] {
            assert_eq!(
                s.parse::<Duration>().map(|d| d.to_string()),
                Ok(s.to_string())
            );
        }
    }

    #[test]
    fn endpoints() {
        assert_eq!(
            "127.0.0.1:80".parse::<Endpoint>(),
            Ok(Endpoint::Static(SocketAddr::from(([127, 0, 0, 1], 80))))
        );
        assert!(matches!(
            "[::1]:80".parse::<Endpoint>(),
            Ok(Endpoint::Static(_))
        ));
        assert_eq!(
            "My-Svc.ns.svc:8080".parse::<Endpoint>(),
            Ok(Endpoint::Dns {
                host: "my-svc.ns.svc".into(),
                port: 8080
            })
        );
        for bad in [
            "nope",
            "host:",
            ":80",
            "host:99999",
            "bad host:80",
            "h..x:1",
            "h:0",
        ] {
            assert!(bad.parse::<Endpoint>().is_err(), "{bad}");
        }
    }

    #[test]
    fn host_patterns() {
        let exact: HostPattern = "API.local".parse().unwrap();
        assert!(exact.matches("api.local"));
        assert!(!exact.matches("x.api.local"));
        let suffix: HostPattern = "*.example.com".parse().unwrap();
        assert!(suffix.matches("a.example.com"));
        assert!(suffix.matches("a.b.example.com"));
        assert!(!suffix.matches("example.com"));
        assert!(!suffix.matches("badexample.com"));
        assert!("*".parse::<HostPattern>().unwrap().matches("anything"));
        for bad in ["", "*.", "a b", "*x.com", "a..b"] {
            assert!(bad.parse::<HostPattern>().is_err(), "{bad}");
        }
    }
}
