//! Semantic checks that serde cannot make: references, uniqueness, exclusive keys.

use crate::{locate::Locations, model::*, resilience::RateLimit, ConfigError, ConfigErrors};
use std::{collections::HashSet, net::SocketAddr};

/// Collects errors with their locations.
struct Checker<'a> {
    file: &'a str,
    locations: Locations,
    errors: Vec<ConfigError>,
}

impl Config {
    /// Checks what parsing cannot: every name resolves, nothing collides, exclusive keys are
    /// exclusive. `text` is the file the config came from, used to locate errors.
    pub fn validate(&self, text: &str, file: &str) -> Result<(), ConfigErrors> {
        let mut c = Checker {
            file,
            locations: Locations::index(crate::load::strip_bom(text)),
            errors: Vec::new(),
        };
        self.check(&mut c);
        if c.errors.is_empty() {
            Ok(())
        } else {
            c.errors.sort_by_key(|e| (e.line, e.column));
            Err(ConfigErrors(c.errors))
        }
    }

    fn check(&self, c: &mut Checker<'_>) {
        if self.listeners.is_empty() {
            c.error("listeners", "expected at least one listener");
        }
        if let Some(log) = &self.access_log {
            log.check(c);
        }

        let mut clusters = HashSet::new();
        for (i, cl) in self.clusters.iter().enumerate() {
            let at = format!("clusters[{i}]");
            if c.name(&format!("{at}.name"), "cluster", &cl.name)
                && !clusters.insert(cl.name.as_str())
            {
                c.error(
                    &format!("{at}.name"),
                    format!("a cluster named `{}` is already defined", cl.name),
                );
            }
            if cl.endpoints.is_empty() {
                c.error(&format!("{at}.endpoints"), "expected at least one endpoint");
            }
            if cl.connect_timeout.0.is_zero() {
                c.error(
                    &format!("{at}.connect_timeout"),
                    "expected a duration above 0",
                );
            }
            cl.check_resilience(c, &at);
            if cl.dns_refresh.0 < std::time::Duration::from_millis(100) {
                c.error(&format!("{at}.dns_refresh"), "expected at least 100ms");
            }
        }

        for (key, d) in [
            ("admin.header_timeout", self.admin.header_timeout),
            ("admin.idle_timeout", self.admin.idle_timeout),
        ] {
            if d.0.is_zero() {
                c.error(key, "expected a duration above 0");
            }
        }
        if self.admin.max_connections == 0 {
            c.error("admin.max_connections", "expected at least 1");
        }

        let mut names = HashSet::new();
        let mut bound: Vec<(SocketAddr, String)> =
            vec![(self.admin.address, "admin.address".into())];
        if let Some(health) = self.admin.health_address {
            c.address(&mut bound, health, "admin.health_address".into());
        }
        for (i, l) in self.listeners.iter().enumerate() {
            let at = format!("listeners[{i}]");
            if c.name(&format!("{at}.name"), "listener", &l.name) && !names.insert(l.name.as_str())
            {
                c.error(
                    &format!("{at}.name"),
                    format!("a listener named `{}` is already defined", l.name),
                );
            }
            c.address(&mut bound, l.address, format!("{at}.address"));
            for (key, d) in [
                ("idle_timeout", l.idle_timeout),
                ("header_timeout", l.header_timeout),
                ("stream_idle_timeout", l.stream_idle_timeout),
            ] {
                if d.0.is_zero() {
                    c.error(&format!("{at}.{key}"), "expected a duration above 0");
                }
            }
            if let Some(rl) = &l.rate_limit {
                rl.check(c, &format!("{at}.rate_limit"));
            }
            if l.detect_timeout.0.is_zero() {
                c.error(
                    &format!("{at}.detect_timeout"),
                    "expected a duration above 0",
                );
            }
            if let Some(cluster) = &l.cluster {
                c.cluster_ref(&clusters, &format!("{at}.cluster"), cluster);
            }
            match l.protocol {
                Protocol::Tcp if l.cluster.is_none() => c.error(
                    &at,
                    "a tcp listener needs `cluster`: where its connections go",
                ),
                Protocol::Auto if l.cluster.is_none() => c.error(
                    &at,
                    "an auto listener needs `cluster`: where traffic that is not HTTP goes",
                ),
                Protocol::Http if l.cluster.is_none() && l.routes.is_empty() => c.error(
                    &at,
                    "an http listener needs `routes` or a catch-all `cluster`",
                ),
                _ => {}
            }
            if l.protocol == Protocol::Tcp {
                for key in HTTP_ONLY_LISTENER_KEYS {
                    let path = format!("{at}.{key}");
                    // NOTE: most have defaults, so whether the file gives them is asked of the
                    // text (`routes: []` included); the values are asked too, for good measure.
                    let set = match key {
                        "routes" => !l.routes.is_empty(),
                        "rate_limit" => l.rate_limit.is_some(),
                        _ => false,
                    };
                    if set || c.locations.has(&path) {
                        c.error(
                            &path,
                            format!(
                                "`{key}` applies only to http and auto listeners; this listener is tcp (it relays bytes and sees no HTTP)"
                            ),
                        );
                    }
                }
            }
            if let Some(rules) = &l.authz {
                c.authz(&format!("{at}.authz"), rules, l.protocol == Protocol::Tcp);
            }
            let mut route_names = HashSet::new();
            for (j, r) in l.routes.iter().enumerate() {
                let rat = format!("{at}.routes[{j}]");
                let name = match &r.name {
                    Some(n) => {
                        if c.name(&format!("{rat}.name"), "route", n) && n == CATCH_ALL_ROUTE {
                            c.error(
                                &format!("{rat}.name"),
                                format!(
                                    "the route name `{CATCH_ALL_ROUTE}` is reserved: it labels the listener's catch-all `cluster`; expected another name"
                                ),
                            );
                        }
                        n.clone()
                    }
                    None => j.to_string(),
                };
                if !route_names.insert(name.clone()) {
                    c.error(
                        &format!("{rat}.name"),
                        format!("a route named `{name}` is already defined in this listener"),
                    );
                }
                r.check(c, &rat, &clusters);
            }
        }
    }
}

/// The route name of a listener's catch-all `cluster`, in metric labels and the access log.
pub const CATCH_ALL_ROUTE: &str = "default";

/// The longest name of a listener, cluster, route or authorization rule.
pub const NAME_MAX_LEN: usize = 128;

/// The most lines an access log may queue.
pub const ACCESS_LOG_BUFFER_MAX: usize = 1 << 20;

/// Listener keys about HTTP requests, which a tcp listener never sees.
const HTTP_ONLY_LISTENER_KEYS: [&str; 6] = [
    "routes",
    "stream_idle_timeout",
    "rate_limit",
    "request_id",
    "trace_context",
    "forwarded_headers",
];

/// Framing and hop-by-hop headers (RFC 9110, section 7.6.1): the proxy removes and sets these
/// itself on every message, so a rewrite of them would be lost or would break the framing.
const MANAGED_HEADERS: [&str; 7] = [
    "connection",
    "content-length",
    "keep-alive",
    "proxy-connection",
    "te",
    "transfer-encoding",
    "upgrade",
];

impl AccessLog {
    fn check(&self, c: &mut Checker<'_>) {
        if self.format != "json" {
            if let Err(e) = crate::access_log_fields(&self.format) {
                c.error("access_log.format", e);
            }
        }
        if !(1..=ACCESS_LOG_BUFFER_MAX).contains(&self.buffer) {
            c.error(
                "access_log.buffer",
                format!(
                    "expected 1 to {ACCESS_LOG_BUFFER_MAX} lines, got {}",
                    self.buffer
                ),
            );
        }
        match self.path.as_str() {
            "stdout" | "stderr" => {}
            "" => c.error("access_log.path", "expected stdout, stderr or a file path"),
            path => {
                let path = std::path::Path::new(path);
                // NOTE: a bare file name lives in the working directory, which exists.
                let dir = path.parent().filter(|d| !d.as_os_str().is_empty());
                if path.is_dir() {
                    c.error(
                        "access_log.path",
                        format!("`{}` is a directory; expected a file path", path.display()),
                    );
                } else if let Some(dir) = dir.filter(|d| !d.is_dir()) {
                    c.error(
                        "access_log.path",
                        format!(
                            "the directory `{}` does not exist; expected an existing directory for `{}`",
                            dir.display(),
                            path.display()
                        ),
                    );
                }
            }
        }
    }
}

impl Route {
    fn check(&self, c: &mut Checker<'_>, at: &str, clusters: &HashSet<&str>) {
        match (&self.cluster, self.split.is_empty()) {
            (Some(cluster), true) => c.cluster_ref(clusters, &format!("{at}.cluster"), cluster),
            (None, false) => {
                let total = self.split.iter().map(|w| u64::from(w.weight)).sum::<u64>();
                if total == 0 {
                    c.error(
                        &format!("{at}.split"),
                        "expected at least one weight above 0",
                    );
                } else if total > u64::from(u32::MAX) {
                    c.error(
                        &format!("{at}.split"),
                        format!(
                            "the weights add up to {total}; expected a total of at most {}",
                            u32::MAX
                        ),
                    );
                }
                for (k, w) in self.split.iter().enumerate() {
                    c.cluster_ref(clusters, &format!("{at}.split[{k}].cluster"), &w.cluster);
                }
            }
            (Some(_), false) => c.error(at, "expected either `cluster` or `split`, not both"),
            (None, true) => c.error(
                at,
                "expected `cluster` or `split`: where matching requests go",
            ),
        }
        if self.timeout.is_some_and(|t| t.0.is_zero()) {
            c.error(
                &format!("{at}.timeout"),
                "expected a duration above 0 (leave it out for none)",
            );
        }
        if let Some(r) = &self.retry {
            let rat = format!("{at}.retry");
            if r.on.is_empty() {
                c.error(
                    &format!("{rat}.on"),
                    "expected at least one retry condition",
                );
            }
            if r.per_try_timeout.is_some_and(|t| t.0.is_zero()) {
                c.error(
                    &format!("{rat}.per_try_timeout"),
                    "expected a duration above 0",
                );
            }
            if r.backoff.base > r.backoff.max {
                c.error(&format!("{rat}.backoff"), "expected base <= max");
            }
        }
        if let Some(rl) = &self.rate_limit {
            rl.check(c, &format!("{at}.rate_limit"));
        }
        if let Some(f) = &self.fault {
            let fat = format!("{at}.fault");
            if let Some(d) = &f.delay {
                percent(c, &format!("{fat}.delay.percent"), d.percent);
                if d.duration.0.is_zero() {
                    c.error(
                        &format!("{fat}.delay.duration"),
                        "expected a duration above 0",
                    );
                }
            }
            if let Some(a) = &f.abort {
                percent(c, &format!("{fat}.abort.percent"), a.percent);
                if !(200..=599).contains(&a.status) {
                    c.error(
                        &format!("{fat}.abort.status"),
                        format!("expected a status from 200 to 599, got {}", a.status),
                    );
                }
            }
        }
        let m = &self.matches;
        if m.path.is_some() && m.prefix.is_some() {
            c.error(
                &format!("{at}.match"),
                "expected either `path` or `prefix`, not both",
            );
        }
        for (key, p) in [("path", &m.path), ("prefix", &m.prefix)] {
            if let Some(p) = p {
                if !p.starts_with('/') {
                    c.error(
                        &format!("{at}.match.{key}"),
                        format!("expected a path starting with `/`, got `{p}`"),
                    );
                }
            }
        }
        for (k, h) in m.headers.iter().enumerate() {
            c.header_name(&format!("{at}.match.headers[{k}].name"), &h.name);
            if let Some(v) = &h.exact {
                c.header_value(&format!("{at}.match.headers[{k}].exact"), v);
            }
        }
        c.header_rewrite(
            &format!("{at}.request_headers"),
            &self.request_headers,
            true,
        );
        c.header_rewrite(
            &format!("{at}.response_headers"),
            &self.response_headers,
            false,
        );
        if let Some(rules) = &self.authz {
            c.authz(&format!("{at}.authz"), rules, false);
        }
    }
}

impl Cluster {
    fn check_resilience(&self, c: &mut Checker<'_>, at: &str) {
        let l = &self.limits;
        for (key, v) in [
            ("max_connections", l.max_connections),
            ("max_pending", l.max_pending),
            ("max_requests", l.max_requests),
            ("max_retries", l.max_retries),
        ] {
            if v == 0 {
                c.error(&format!("{at}.limits.{key}"), "expected at least 1");
            }
        }
        if self.idle_timeout.0.is_zero() {
            c.error(&format!("{at}.idle_timeout"), "expected a duration above 0");
        }
        let b = &self.retry_budget;
        if !(b.ratio >= 0.0 && b.ratio <= 1000.0) {
            c.error(
                &format!("{at}.retry_budget.ratio"),
                "expected a number from 0 up",
            );
        }
        if let Some(o) = &self.outlier_detection {
            if o.max_ejection_percent > 100 {
                c.error(
                    &format!("{at}.outlier_detection.max_ejection_percent"),
                    "expected 0 to 100",
                );
            }
            if o.base_ejection_time.0.is_zero() || o.base_ejection_time > o.max_ejection_time {
                c.error(
                    &format!("{at}.outlier_detection.base_ejection_time"),
                    "expected a duration above 0 and at most max_ejection_time",
                );
            }
        }
        if let Some(h) = &self.health_check {
            let hat = format!("{at}.health_check");
            if let Some(p) = &h.http_path {
                if !p.starts_with('/') {
                    c.error(
                        &format!("{hat}.http_path"),
                        format!("expected a path starting with `/`, got `{p}`"),
                    );
                }
            }
            if h.interval.0.is_zero() || h.timeout.0.is_zero() {
                c.error(&hat, "expected interval and timeout above 0");
            }
            if h.healthy_threshold == 0 || h.unhealthy_threshold == 0 {
                c.error(&hat, "expected thresholds of at least 1");
            }
        }
    }
}

impl RateLimit {
    fn check(&self, c: &mut Checker<'_>, at: &str) {
        if !(self.rps > 0.0 && self.rps.is_finite()) {
            c.error(&format!("{at}.rps"), "expected a rate above 0");
        }
        if self.burst == Some(0) {
            c.error(&format!("{at}.burst"), "expected at least 1");
        }
    }
}

/// Whether `value` is `host[:port]`, as a `Host` header (no user info, path or spaces).
fn valid_authority(value: &str) -> bool {
    !value.is_empty()
        && !value.contains('@')
        && value
            .parse::<http::uri::Authority>()
            .is_ok_and(|a| a.as_str() == value)
}

fn percent(c: &mut Checker<'_>, path: &str, p: f64) {
    if !(0.0..=100.0).contains(&p) {
        c.error(
            path,
            format!("expected a percentage from 0 to 100, got {p}"),
        );
    }
}

/// Whether two listening addresses would collide when bound (port 0 never does: the system
/// picks a free port).
///
/// NOTE: listeners are bound with `IPV6_V6ONLY` off (`pillion_proxy::listen`), whatever the
/// host's `net.ipv6.bindv6only`, so `[::]:P` is dual-stack and also takes every IPv4 address on P.
fn conflicts(a: SocketAddr, b: SocketAddr) -> bool {
    use std::net::IpAddr;
    // `[::ffff:127.0.0.1]` is 127.0.0.1 to the kernel.
    let ip = |a: SocketAddr| match a.ip() {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4),
        v4 => v4,
    };
    let (x, y) = (ip(a), ip(b));
    let dual_stack = |x: IpAddr, y: IpAddr| x.is_ipv6() && x.is_unspecified() && y.is_ipv4();
    a.port() == b.port()
        && a.port() != 0
        && (dual_stack(x, y)
            || dual_stack(y, x)
            || (x.is_ipv4() == y.is_ipv4() && (x == y || x.is_unspecified() || y.is_unspecified())))
}

// === impl Checker ===

impl Checker<'_> {
    fn error(&mut self, path: &str, message: impl Into<String>) {
        let (line, column) = match self.locations.find(path) {
            Some((l, c)) => (Some(l), Some(c)),
            None => (None, None),
        };
        self.errors.push(ConfigError {
            file: self.file.to_string(),
            line,
            column,
            path: path.to_string(),
            message: message.into(),
        });
    }

    fn cluster_ref(&mut self, clusters: &HashSet<&str>, path: &str, name: &str) {
        if !clusters.contains(name) {
            let mut known: Vec<_> = clusters.iter().copied().collect();
            known.sort_unstable();
            let known = if known.is_empty() {
                "none are defined".to_string()
            } else {
                format!("defined: {}", known.join(", "))
            };
            self.error(path, format!("no cluster named `{name}` ({known})"));
        }
    }

    /// Checks a listener, cluster, route or rule name; whether it is good.
    fn name(&mut self, path: &str, kind: &str, name: &str) -> bool {
        let problem = if name.is_empty() {
            Some("expected a non-empty name".to_string())
        } else if name.chars().count() > NAME_MAX_LEN {
            Some(format!(
                "the {kind} name `{}...` has {} characters; expected at most {NAME_MAX_LEN}",
                name.chars().take(32).collect::<String>(),
                name.chars().count()
            ))
        } else {
            name.chars()
                .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | ':' | '-')))
                .map(|bad| {
                    format!(
                        "the {kind} name `{}` has {bad:?}; expected letters, digits, `_`, `.`, `:` and `-` only (names go into metric labels and logs)",
                        name.escape_debug()
                    )
                })
        };
        match problem {
            Some(p) => {
                self.error(path, p);
                false
            }
            None => true,
        }
    }

    /// Records `addr` as bound by `what`, unless something bound before collides with it.
    fn address(&mut self, bound: &mut Vec<(SocketAddr, String)>, addr: SocketAddr, what: String) {
        if let Some((other_addr, other)) = bound.iter().find(|(a, _)| conflicts(*a, addr)) {
            let why = if *other_addr == addr {
                String::new()
            } else {
                format!(" ({other_addr} on the same port)")
            };
            let dual = [addr, *other_addr]
                .iter()
                .any(|a| a.is_ipv6() && a.ip().is_unspecified())
                && addr.is_ipv4() != other_addr.is_ipv4();
            let note = if dual {
                "; `[::]` takes IPv4 connections too"
            } else {
                ""
            };
            let msg = format!("{addr} is already used by {other}{why}{note}");
            self.error(&what, msg);
        }
        bound.push((addr, what));
    }

    fn header_name(&mut self, path: &str, name: &str) -> bool {
        if http::HeaderName::from_bytes(name.as_bytes()).is_err() {
            self.error(path, format!("`{name}` is not a valid header name"));
            return false;
        }
        true
    }

    fn header_value(&mut self, path: &str, value: &str) {
        if http::HeaderValue::from_str(value).is_err() {
            self.error(
                path,
                format!(
                    "`{}` is not a valid header value (visible ASCII, spaces and tabs only)",
                    value.escape_debug()
                ),
            );
        } else if value.trim_matches([' ', '\t']) != value {
            self.error(
                path,
                format!("`{value}` starts or ends with whitespace, which HTTP drops from values"),
            );
        }
    }

    /// Checks a rewrite: valid names and values, and no header the proxy owns.
    fn header_rewrite(&mut self, at: &str, rw: &HeaderRewrite, request: bool) {
        for (name, value) in &rw.add {
            let path = format!("{at}.add.{name}");
            if self.rewritable(&path, name, request) {
                let lower = name.to_ascii_lowercase();
                if lower.starts_with("x-pillion-") {
                    self.error(
                        &path,
                        format!("`{name}` is one of the proxy's own `x-pillion-*` headers; expected another name"),
                    );
                } else if request && lower == "host" && !valid_authority(value) {
                    self.error(
                        &path,
                        format!("`{value}` is not a host; expected a name or address with an optional port, such as api.internal:8080"),
                    );
                }
                self.header_value(&path, value);
            }
        }
        for (k, name) in rw.remove.iter().enumerate() {
            let path = format!("{at}.remove[{k}]");
            if self.rewritable(&path, name, request) && request && name.eq_ignore_ascii_case("host")
            {
                self.error(
                    &path,
                    "a request needs `host`; expected another name (to rewrite it, give it in `add`)",
                );
            }
        }
    }

    /// Whether a rewrite may name this header; reports why not.
    fn rewritable(&mut self, path: &str, name: &str, request: bool) -> bool {
        if name.starts_with(':') {
            let hint = if request {
                " (to change the authority, set `host`)"
            } else {
                ""
            };
            self.error(
                path,
                format!("`{name}` is a pseudo-header, which cannot be rewritten{hint}"),
            );
            return false;
        }
        if !self.header_name(path, name) {
            return false;
        }
        let lower = name.to_ascii_lowercase();
        if MANAGED_HEADERS.contains(&lower.as_str()) {
            self.error(
                path,
                format!("`{name}` is a framing or hop-by-hop header that the proxy manages on every message; it cannot be rewritten"),
            );
            return false;
        }
        true
    }

    /// Checks a policy's rules: their names, and rules that could never match.
    fn authz(&mut self, at: &str, rules: &[crate::AuthzRule], tcp: bool) {
        for (k, r) in rules.iter().enumerate() {
            let rat = format!("{at}[{k}]");
            if let Some(n) = &r.name {
                self.name(&format!("{rat}.name"), "rule", n);
            }
            if tcp && !(r.methods.is_empty() && r.paths.is_empty()) {
                self.error(
                    &rat,
                    "`methods` and `paths` apply only to HTTP requests; on a tcp listener this rule would never match",
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn errors(text: &str) -> Vec<ConfigError> {
        let c = Config::from_yaml(text, "t.yaml").unwrap();
        match c.validate(text, "t.yaml") {
            Ok(()) => Vec::new(),
            Err(e) => e.0,
        }
    }

    #[test]
    fn unknown_cluster_is_located() {
        let e = errors(
            "listeners:\n  - name: a\n    address: 127.0.0.1:1\n    protocol: http\n    routes:\n      - cluster: nope\nclusters:\n  - name: app\n    endpoints: [127.0.0.1:2]\n",
        );
        assert_eq!(e.len(), 1, "{e:?}");
        assert_eq!(e[0].line, Some(6));
        assert_eq!(e[0].path, "listeners[0].routes[0].cluster");
        assert!(e[0].message.contains("no cluster named `nope`"));
        assert!(e[0].message.contains("defined: app"));
    }

    #[test]
    fn duplicate_address() {
        let e = errors(
            "listeners:\n  - name: a\n    address: 0.0.0.0:80\n    cluster: c\n  - name: b\n    address: 127.0.0.1:80\n    cluster: c\nclusters:\n  - name: c\n    endpoints: [127.0.0.1:2]\n",
        );
        assert_eq!(e.len(), 1, "{e:?}");
        assert_eq!(e[0].line, Some(6));
        assert!(e[0]
            .message
            .contains("already used by listeners[0].address"));
    }

    #[test]
    fn listener_conflicts_with_admin() {
        let e = errors(
            "listeners:\n  - name: a\n    address: 127.0.0.1:15000\n    cluster: c\nclusters:\n  - name: c\n    endpoints: [127.0.0.1:2]\n",
        );
        assert!(e[0].message.contains("admin.address"), "{e:?}");
    }

    #[test]
    fn exclusive_and_required_keys() {
        let e = errors(
            "listeners:\n  - name: a\n    address: 127.0.0.1:1\n    protocol: tcp\n  - name: a\n    address: 127.0.0.1:2\n    protocol: http\n    routes:\n      - cluster: c\n        split: [{cluster: c, weight: 1}]\n        match: {path: x, prefix: /y, headers: [{name: 'bad name'}]}\n      - {}\nclusters:\n  - name: c\n    endpoints: []\n",
        );
        let msgs: Vec<String> = e
            .iter()
            .map(|e| format!("{}: {}", e.path, e.message))
            .collect();
        let want = [
            "listeners[0]: a tcp listener needs `cluster`",
            "listeners[1].name: a listener named `a`",
            "listeners[1].routes[0]: expected either `cluster` or `split`",
            "listeners[1].routes[0].match: expected either `path` or `prefix`",
            "listeners[1].routes[0].match.path: expected a path starting",
            "listeners[1].routes[0].match.headers[0].name: `bad name` is not a valid header name",
            "listeners[1].routes[1]: expected `cluster` or `split`",
            "clusters[0].endpoints: expected at least one endpoint",
        ];
        for w in want {
            assert!(
                msgs.iter().any(|m| m.starts_with(w)),
                "missing {w:?} in {msgs:#?}"
            );
        }
        assert_eq!(msgs.len(), want.len(), "{msgs:#?}");
    }

    /// A valid config with `extra` lines appended to its only listener (indented 4).
    fn listener_with(extra: &str) -> String {
        format!(
            "listeners:\n  - name: a\n    address: 127.0.0.1:1\n    cluster: c\n{extra}clusters:\n  - name: c\n    endpoints: [127.0.0.1:2]\n"
        )
    }

    /// A valid config whose only route has `extra` lines (indented 8).
    fn route_with(extra: &str) -> String {
        listener_with(&format!("    routes:\n      - cluster: c\n{extra}"))
    }

    fn messages(text: &str) -> Vec<String> {
        errors(text)
            .iter()
            .map(|e| format!("{}:{}: {}", e.line.unwrap_or(0), e.path, e.message))
            .collect()
    }

    #[test]
    fn names_are_label_safe() {
        for good in ["in", "api-v1.internal:8080", "A_b-9", &"x".repeat(128)] {
            let text = listener_with("").replace("name: a", &format!("name: '{good}'"));
            assert_eq!(messages(&text), Vec::<String>::new(), "{good}");
        }
        for (bad, says) in [
            ("'a b'", "has ' '"),
            ("'a\"b'", "has '\"'"),
            ("'a{b}'", "has '{'"),
            ("'caf\u{e9}'", "has '\u{e9}'"),
            ("''", "non-empty"),
            (
                &format!("'{}'", "x".repeat(129)),
                "129 characters; expected at most 128",
            ),
        ] {
            let m = messages(&listener_with("").replace("name: a", &format!("name: {bad}")));
            assert_eq!(m.len(), 1, "{bad}: {m:?}");
            assert!(m[0].starts_with("2:listeners[0].name: "), "{m:?}");
            assert!(m[0].contains(says), "{bad}: {m:?}");
        }
        let m = messages(&listener_with("").replace("- name: c", "- name: 'c/d'"));
        assert!(
            m.iter()
                .any(|m| m.contains("clusters[0].name: the cluster name `c/d` has '/'")),
            "{m:?}"
        );
        let m = messages(&route_with("        name: 'v 1'\n"));
        assert_eq!(m, ["7:listeners[0].routes[0].name: the route name `v 1` has ' '; expected letters, digits, `_`, `.`, `:` and `-` only (names go into metric labels and logs)"]);
        let m = messages(&route_with("        authz: [{name: 'rule#1'}]\n"));
        assert_eq!(m.len(), 1, "{m:?}");
        assert!(
            m[0].starts_with("7:listeners[0].routes[0].authz[0].name: the rule name `rule#1`"),
            "{m:?}"
        );
        let m = messages(&listener_with("    authz: [{name: \"a\\nb\"}]\n"));
        assert!(
            m[0].contains("listeners[0].authz[0].name: the rule name `a\\nb` has '\\n'"),
            "{m:?}"
        );
    }

    #[test]
    fn the_catch_all_route_name_is_reserved() {
        let m = messages(&route_with("        name: default\n"));
        assert_eq!(m.len(), 1, "{m:?}");
        assert!(
            m[0].starts_with("7:listeners[0].routes[0].name: the route name `default` is reserved"),
            "{m:?}"
        );
    }

    #[test]
    fn split_weights_fit_a_u32() {
        let split = |a: u64, b: u64| {
            listener_with(&format!(
                "    routes:\n      - split: [{{cluster: c, weight: {a}}}, {{cluster: c, weight: {b}}}]\n"
            ))
        };
        assert!(messages(&split(u64::from(u32::MAX) - 1, 1)).is_empty());
        let m = messages(&split(u64::from(u32::MAX), 1));
        assert_eq!(m, ["6:listeners[0].routes[0].split: the weights add up to 4294967296; expected a total of at most 4294967295"]);
    }

    #[test]
    fn header_rewrites_leave_the_proxys_headers_alone() {
        let rw = |key: &str, body: &str| route_with(&format!("        {key}: {body}\n"));
        // Plain rewrites, and `host` set on requests (a documented rewrite), pass.
        for ok in [
            "{add: {x-env: prod, host: api.internal:8080}, remove: [x-internal]}",
            "{add: {Host: '10.0.0.1'}}",
            "{remove: [x-pillion-peer-identity]}",
        ] {
            assert_eq!(
                messages(&rw("request_headers", ok)),
                Vec::<String>::new(),
                "{ok}"
            );
        }
        assert!(messages(&rw("response_headers", "{add: {host: x}, remove: [host]}")).is_empty());
        for (key, body, says) in [
            ("request_headers", "{add: {content-length: '5'}}", "add.content-length: `content-length` is a framing or hop-by-hop header"),
            ("response_headers", "{add: {Transfer-Encoding: chunked}}", "add.Transfer-Encoding: `Transfer-Encoding` is a framing"),
            ("request_headers", "{remove: [connection]}", "remove[0]: `connection` is a framing"),
            ("request_headers", "{add: {te: trailers}}", "add.te: `te` is a framing"),
            ("request_headers", "{add: {keep-alive: '1'}}", "add.keep-alive: `keep-alive`"),
            ("request_headers", "{remove: [proxy-connection]}", "remove[0]: `proxy-connection`"),
            ("response_headers", "{remove: [upgrade]}", "remove[0]: `upgrade`"),
            ("request_headers", "{add: {':authority': x}}", "add.:authority: `:authority` is a pseudo-header, which cannot be rewritten (to change the authority, set `host`)"),
            ("response_headers", "{remove: [':status']}", "remove[0]: `:status` is a pseudo-header"),
            ("request_headers", "{remove: [Host]}", "remove[0]: a request needs `host`"),
            ("request_headers", "{add: {host: 'u@h'}}", "add.host: `u@h` is not a host"),
            ("request_headers", "{add: {host: 'h/p'}}", "add.host: `h/p` is not a host"),
            ("request_headers", "{add: {x-pillion-peer-identity: 'spiffe://x'}}", "add.x-pillion-peer-identity: `x-pillion-peer-identity` is one of the proxy's own `x-pillion-*` headers"),
            ("response_headers", "{add: {X-Pillion-Error: no-route}}", "add.X-Pillion-Error: `X-Pillion-Error` is one of the proxy's own"),
            ("request_headers", "{add: {'bad name': x}}", "add.bad name: `bad name` is not a valid header name"),
            ("request_headers", "{add: {x-a: \"a\\u0001b\"}}", "add.x-a: `a\\u{1}b` is not a valid header value"),
            ("request_headers", "{add: {x-a: ' padded'}}", "add.x-a: ` padded` starts or ends with whitespace"),
            ("request_headers", "{remove: ['x y']}", "remove[0]: `x y` is not a valid header name"),
        ] {
            let m = messages(&rw(key, body));
            assert_eq!(m.len(), 1, "{body}: {m:?}");
            let want = format!("7:listeners[0].routes[0].{key}.{says}");
            assert!(m[0].starts_with(&want), "{body}: {m:?} does not start with {want:?}");
        }
    }

    #[test]
    fn tcp_listeners_reject_http_only_keys() {
        let tcp = |extra: &str| listener_with(&format!("    protocol: tcp\n{extra}"));
        assert!(messages(&tcp("    idle_timeout: 1m\n    header_timeout: 2s\n")).is_empty());
        for (key, value) in [
            ("routes", "[]"),
            ("routes", "[{cluster: c}]"),
            ("rate_limit", "{rps: 10}"),
            ("request_id", "false"),
            ("trace_context", "true"),
            ("forwarded_headers", "false"),
            ("stream_idle_timeout", "1m"),
        ] {
            let m = messages(&tcp(&format!("    {key}: {value}\n")));
            assert_eq!(m.len(), 1, "{key}: {m:?}");
            let want = format!("6:listeners[0].{key}: `{key}` applies only to http and auto listeners; this listener is tcp");
            assert!(m[0].starts_with(&want), "{m:?}");
        }
        let m = messages(&tcp(
            "    authz: [{from: ['spiffe://x/*']}, {methods: [GET]}]\n",
        ));
        assert_eq!(m.len(), 1, "{m:?}");
        assert!(
            m[0].starts_with("6:listeners[0].authz[1]: `methods` and `paths` apply only to HTTP"),
            "{m:?}"
        );
        // The same keys on an auto listener are fine.
        assert!(messages(&listener_with(
            "    request_id: false\n    authz: [{paths: ['/x']}]\n"
        ))
        .is_empty());
    }

    #[test]
    fn durations_that_make_no_sense() {
        let m = messages(&route_with(
            "        fault: {delay: {percent: 5, duration: 0s}}\n",
        ));
        assert_eq!(
            m,
            ["7:listeners[0].routes[0].fault.delay.duration: expected a duration above 0"]
        );
        // Too long for any duration key: the parse rejects it where it stands.
        for key in [
            "drain_timeout: 8761h",
            "admin: {address: '127.0.0.1:9'}\ndrain_timeout: 9999999999999h",
        ] {
            let text = format!("{key}\n{}", listener_with(""));
            let e = Config::from_yaml(&text, "t.yaml").unwrap_err().0.remove(0);
            assert_eq!(e.path, "drain_timeout", "{e}");
            assert!(e.message.contains("at most 8760h"), "{e}");
        }
        let text = route_with("        timeout: 100000h\n");
        let e = Config::from_yaml(&text, "t.yaml").unwrap_err().0.remove(0);
        assert_eq!(
            (e.path.as_str(), e.line),
            ("listeners[0].routes[0].timeout", Some(7)),
            "{e}"
        );
    }

    #[test]
    fn access_log_is_checked_whole() {
        let dir = std::env::temp_dir();
        let log = |body: &str| format!("access_log: {body}\n{}", listener_with(""));
        for ok in [
            "{path: stderr, format: '%method% %path%', buffer: 1}".to_string(),
            "{buffer: 1048576}".to_string(),
            format!("{{path: '{}'}}", dir.join("pillion-access.log").display()),
            "{path: relative.log}".to_string(),
        ] {
            assert_eq!(messages(&log(&ok)), Vec::<String>::new(), "{ok}");
        }
        for (body, says) in [
            (
                "{format: '%method% %nope%'}",
                "access_log.format: unknown field `%nope%`",
            ),
            ("{format: '%method'}", "access_log.format: unclosed `%`"),
            (
                "{format: 'plain text'}",
                "access_log.format: `plain text` has no `%field%`",
            ),
            (
                "{buffer: 0}",
                "access_log.buffer: expected 1 to 1048576 lines, got 0",
            ),
            (
                "{buffer: 1048577}",
                "access_log.buffer: expected 1 to 1048576 lines, got 1048577",
            ),
            (
                "{path: ''}",
                "access_log.path: expected stdout, stderr or a file path",
            ),
            (
                "{path: /nonexistent-pillion-dir/a.log}",
                "access_log.path: the directory `/nonexistent-pillion-dir` does not exist",
            ),
        ] {
            let m = messages(&log(body));
            assert_eq!(m.len(), 1, "{body}: {m:?}");
            assert!(m[0].starts_with(&format!("1:{says}")), "{body}: {m:?}");
        }
        let m = messages(&log(&format!("{{path: '{}'}}", dir.display())));
        assert!(m[0].contains("is a directory"), "{m:?}");
    }

    #[test]
    fn address_collisions() {
        let two = |a: &str, b: &str| {
            format!(
                "admin: {{address: '127.0.0.1:9000', health_address: null}}\nlisteners:\n  - name: a\n    address: '{a}'\n    cluster: c\n  - name: b\n    address: '{b}'\n    cluster: c\nclusters:\n  - name: c\n    endpoints: [127.0.0.1:2]\n"
            )
        };
        for (a, b) in [
            ("0.0.0.0:80", "10.1.2.3:80"),
            ("10.1.2.3:80", "0.0.0.0:80"),
            ("[::]:80", "[::1]:80"),
            ("[::1]:80", "[::1]:80"),
            ("[::]:80", "0.0.0.0:80"),
            ("127.0.0.1:80", "[::]:80"),
            ("127.0.0.1:80", "[::ffff:127.0.0.1]:80"),
        ] {
            let m = messages(&two(a, b));
            assert_eq!(m.len(), 1, "{a} {b}: {m:?}");
            assert!(
                m[0].starts_with(&format!(
                    "7:listeners[1].address: {b} is already used by listeners[0].address"
                )),
                "{m:?}"
            );
        }
        assert!(messages(&two("[::]:80", "0.0.0.0:80"))[0]
            .contains("`[::]` takes IPv4 connections too"));
        for (a, b) in [
            ("0.0.0.0:80", "0.0.0.0:81"),
            ("127.0.0.1:80", "127.0.0.2:80"),
            ("0.0.0.0:80", "[::1]:80"),
            ("127.0.0.1:0", "127.0.0.1:0"),
        ] {
            assert_eq!(messages(&two(a, b)), Vec::<String>::new(), "{a} {b}");
        }
        // The health port too, against the admin port and the listeners.
        let text = listener_with("").replace("127.0.0.1:1", "127.0.0.1:15020");
        let m = messages(&text);
        assert_eq!(m, ["3:listeners[0].address: 127.0.0.1:15020 is already used by admin.health_address (0.0.0.0:15020 on the same port)"]);
        let text = format!(
            "admin: {{health_address: '127.0.0.1:15000'}}\n{}",
            listener_with("")
        );
        let m = messages(&text);
        assert_eq!(
            m,
            ["1:admin.health_address: 127.0.0.1:15000 is already used by admin.address"]
        );
    }
}
