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
            locations: Locations::index(text),
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

        let mut clusters = HashSet::new();
        for (i, cl) in self.clusters.iter().enumerate() {
            let at = format!("clusters[{i}]");
            if cl.name.is_empty() {
                c.error(&format!("{at}.name"), "expected a non-empty name");
            } else if !clusters.insert(cl.name.as_str()) {
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

        let mut names = HashSet::new();
        let mut bound: Vec<(SocketAddr, String)> =
            vec![(self.admin.address, "admin.address".into())];
        for (i, l) in self.listeners.iter().enumerate() {
            let at = format!("listeners[{i}]");
            if l.name.is_empty() {
                c.error(&format!("{at}.name"), "expected a non-empty name");
            } else if !names.insert(l.name.as_str()) {
                c.error(
                    &format!("{at}.name"),
                    format!("a listener named `{}` is already defined", l.name),
                );
            }
            if let Some((_, other)) = bound.iter().find(|(a, _)| conflicts(*a, l.address)) {
                c.error(
                    &format!("{at}.address"),
                    format!("{} is already used by {other}", l.address),
                );
            }
            bound.push((l.address, format!("{at}.address")));
            for (key, d) in [
                ("idle_timeout", l.idle_timeout),
                ("header_timeout", l.header_timeout),
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
                Protocol::Tcp if !l.routes.is_empty() => c.error(
                    &format!("{at}.routes"),
                    "a tcp listener has no routes; use protocol http or auto",
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
            let mut route_names = HashSet::new();
            for (j, r) in l.routes.iter().enumerate() {
                let rat = format!("{at}.routes[{j}]");
                let name = r.name.clone().unwrap_or_else(|| j.to_string());
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

impl Route {
    fn check(&self, c: &mut Checker<'_>, at: &str, clusters: &HashSet<&str>) {
        match (&self.cluster, self.split.is_empty()) {
            (Some(cluster), true) => c.cluster_ref(clusters, &format!("{at}.cluster"), cluster),
            (None, false) => {
                if self.split.iter().map(|w| u64::from(w.weight)).sum::<u64>() == 0 {
                    c.error(
                        &format!("{at}.split"),
                        "expected at least one weight above 0",
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
        for (key, rw) in [
            ("request_headers", &self.request_headers),
            ("response_headers", &self.response_headers),
        ] {
            for (name, value) in &rw.add {
                let p = format!("{at}.{key}.add.{name}");
                c.header_name(&p, name);
                c.header_value(&p, value);
            }
            for (k, name) in rw.remove.iter().enumerate() {
                c.header_name(&format!("{at}.{key}.remove[{k}]"), name);
            }
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

fn percent(c: &mut Checker<'_>, path: &str, p: f64) {
    if !(0.0..=100.0).contains(&p) {
        c.error(
            path,
            format!("expected a percentage from 0 to 100, got {p}"),
        );
    }
}

/// Whether two listening addresses would collide when bound.
fn conflicts(a: SocketAddr, b: SocketAddr) -> bool {
    a.port() == b.port()
        && a.port() != 0
        && a.is_ipv4() == b.is_ipv4()
        && (a.ip() == b.ip() || a.ip().is_unspecified() || b.ip().is_unspecified())
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

    fn header_name(&mut self, path: &str, name: &str) {
        if http::HeaderName::from_bytes(name.as_bytes()).is_err() {
            self.error(path, format!("`{name}` is not a valid header name"));
        }
    }

    fn header_value(&mut self, path: &str, value: &str) {
        if http::HeaderValue::from_str(value).is_err() {
            self.error(path, format!("`{value}` is not a valid header value"));
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
}
