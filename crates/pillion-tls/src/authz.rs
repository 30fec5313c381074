//! Authorization by peer identity, HTTP method and normalized path.
//!
//! A policy is the list of rules of one listener or route. Any matching rule allows; a policy
//! that exists denies everything no rule allows (an empty list denies everything). A rule
//! matches when all of its conditions do:
//!
//! - `from`: exact identities or prefix patterns ending in `*`; `unauthenticated` matches a
//!   peer without an identity; an empty `from` matches any authenticated peer.
//! - `methods`: empty matches any method.
//! - `paths`: exact or prefix patterns ending in `*`, compared with the request path after
//!   [`normalize_path`]; empty matches any path. A path that cannot be normalized is denied.
//!
//! TCP connections have no method or path: a rule with `methods` or `paths` never matches one.

use crate::{identity::IdentityPattern, metrics::TlsMetrics};
use http::Method;
use pillion_config::AuthzRule;
use prometheus_client::metrics::counter::Counter;
use std::{borrow::Cow, collections::HashSet, sync::Arc};

/// The `from` value that matches peers without an identity.
pub const UNAUTHENTICATED: &str = "unauthenticated";

/// The compiled rules of one listener or route.
#[derive(Debug, Clone)]
pub struct Policy {
    scope: Arc<str>,
    rules: Arc<[Rule]>,
    denied: Counter,
}

/// What a policy decided.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Allowed by the rule with this name.
    Allow {
        /// The rule's name (its index when unnamed).
        rule: Arc<str>,
    },
    /// No rule allows it.
    Deny,
}

#[derive(Debug)]
struct Rule {
    name: Arc<str>,
    peers: Peers,
    methods: Box<[Method]>,
    paths: Box<[PathPattern]>,
    allowed: Counter,
}

#[derive(Debug)]
enum Peers {
    AnyAuthenticated,
    Listed {
        unauthenticated: bool,
        identities: Box<[IdentityPattern]>,
    },
}

#[derive(Debug, PartialEq, Eq)]
enum PathPattern {
    Exact(Box<str>),
    Prefix(Box<str>),
}

// === impl Policy ===

impl Policy {
    /// Compiles the rules of `scope` (the listener or route name, the `policy` metric label).
    ///
    /// Errors name the rule and the offending value.
    pub fn compile(scope: &str, rules: &[AuthzRule], metrics: &TlsMetrics) -> Result<Self, String> {
        let mut names = HashSet::new();
        let rules = rules
            .iter()
            .enumerate()
            .map(|(i, rule)| {
                let name = rule.name.clone().unwrap_or_else(|| i.to_string());
                if !names.insert(name.clone()) {
                    return Err(format!("authz of `{scope}`: two rules are named `{name}`"));
                }
                Rule::compile(&name, rule, metrics.authz(scope, &name, true))
                    .map_err(|e| format!("authz of `{scope}`, rule `{name}`: {e}"))
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Self {
            scope: scope.into(),
            rules: rules.into(),
            denied: metrics.authz(scope, "", false),
        })
    }

    /// The listener or route this policy belongs to.
    pub fn scope(&self) -> &str {
        &self.scope
    }

    /// Decides for a peer (`None`: no verified identity) and an HTTP request's method and path
    /// (`None` for a TCP connection), counting the decision.
    pub fn check(&self, identity: Option<&str>, request: Option<(&Method, &str)>) -> Decision {
        match self.find(identity, request) {
            Some(rule) => {
                rule.allowed.inc();
                Decision::Allow {
                    rule: rule.name.clone(),
                }
            }
            None => {
                self.denied.inc();
                Decision::Deny
            }
        }
    }

    /// The first rule that allows, if any.
    fn find(&self, identity: Option<&str>, request: Option<(&Method, &str)>) -> Option<&Rule> {
        let request = match request {
            Some((method, path)) => Some((method, normalize_path(path)?)),
            None => None,
        };
        let request = request.as_ref().map(|(m, p)| (*m, &**p));
        self.rules.iter().find(|r| r.matches(identity, request))
    }
}

// === impl Decision ===

impl Decision {
    /// Whether the request is allowed.
    pub fn is_allowed(&self) -> bool {
        matches!(self, Self::Allow { .. })
    }
}

// === impl Rule ===

impl Rule {
    fn compile(name: &str, rule: &AuthzRule, allowed: Counter) -> Result<Self, String> {
        let peers = if rule.from.is_empty() {
            Peers::AnyAuthenticated
        } else {
            let mut unauthenticated = false;
            let mut identities = Vec::new();
            for f in &rule.from {
                if f == UNAUTHENTICATED {
                    unauthenticated = true;
                } else {
                    identities.push(IdentityPattern::parse(f)?);
                }
            }
            Peers::Listed {
                unauthenticated,
                identities: identities.into(),
            }
        };
        let methods = rule
            .methods
            .iter()
            .map(|m| {
                Method::from_bytes(m.to_ascii_uppercase().as_bytes())
                    .map_err(|_| format!("`{m}` is not an HTTP method"))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let paths = rule
            .paths
            .iter()
            .map(|p| PathPattern::parse(p))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Self {
            name: name.into(),
            peers,
            methods: methods.into(),
            paths: paths.into(),
            allowed,
        })
    }

    fn matches(&self, identity: Option<&str>, request: Option<(&Method, &str)>) -> bool {
        let peer = match (&self.peers, identity) {
            (Peers::AnyAuthenticated, id) => id.is_some(),
            (Peers::Listed { identities, .. }, Some(id)) => {
                identities.iter().any(|p| p.matches(id))
            }
            (
                Peers::Listed {
                    unauthenticated, ..
                },
                None,
            ) => *unauthenticated,
        };
        if !peer {
            return false;
        }
        let method = self.methods.is_empty()
            || request.is_some_and(|(m, _)| self.methods.iter().any(|x| x == m));
        let path = self.paths.is_empty()
            || request.is_some_and(|(_, p)| self.paths.iter().any(|x| x.matches(p)));
        method && path
    }
}

// === impl PathPattern ===

impl PathPattern {
    fn parse(p: &str) -> Result<Self, String> {
        if p.contains(['?', '#']) {
            return Err(format!("path `{p}` must not have a query or fragment"));
        }
        let (literal, prefix) = match p.strip_suffix('*') {
            Some(l) => (l, true),
            None => (p, false),
        };
        if literal.contains('*') {
            return Err(format!("path `{p}`: `*` is only allowed at the end"));
        }
        if literal.is_empty() && prefix {
            return Ok(Self::Prefix("".into()));
        }
        if !literal.starts_with('/') {
            return Err(format!("path `{p}` must start with `/`"));
        }
        let normalized =
            normalize_path(literal).ok_or_else(|| format!("path `{p}` cannot be normalized"))?;
        Ok(if prefix {
            Self::Prefix(normalized.into())
        } else {
            Self::Exact(normalized.into())
        })
    }

    fn matches(&self, path: &str) -> bool {
        match self {
            Self::Exact(e) => **e == *path,
            Self::Prefix(p) => path.starts_with(&**p),
        }
    }
}

// === normalize_path ===

/// Normalizes a request path for matching: drops the query (and fragment), decodes
/// percent-encoded unreserved characters (`A-Z a-z 0-9 - . _ ~`) while keeping every other
/// escape (such as `%2F`) encoded with upper-case hex, collapses repeated slashes and resolves
/// `.` and `..` segments, never above the root.
///
/// `None` (deny) for a path that cannot be normalized safely: one that does not start with
/// `/` (such as `*`), has a malformed escape, or contains control characters. An empty path
/// is `/`.
pub fn normalize_path(path: &str) -> Option<Cow<'_, str>> {
    let path = path.find(['?', '#']).map_or(path, |end| &path[..end]);
    if path.is_empty() {
        return Some(Cow::Borrowed("/"));
    }
    if !path.starts_with('/') || path.bytes().any(|b| b.is_ascii_control()) {
        return None;
    }
    if is_normal(path) {
        return Some(Cow::Borrowed(path));
    }
    let decoded = decode_unreserved(path)?;
    let segments: Vec<&str> = decoded.split('/').skip(1).collect();
    let mut out: Vec<&str> = Vec::with_capacity(segments.len());
    let mut trailing_slash = false;
    for (i, seg) in segments.iter().enumerate() {
        let last = i + 1 == segments.len();
        match *seg {
            "" | "." => trailing_slash |= last,
            ".." => {
                out.pop();
                trailing_slash |= last;
            }
            s => out.push(s),
        }
    }
    let mut normalized = String::with_capacity(decoded.len());
    for seg in &out {
        normalized.push('/');
        normalized.push_str(seg);
    }
    if normalized.is_empty() || trailing_slash {
        normalized.push('/');
    }
    Some(Cow::Owned(normalized))
}

/// Whether `path` (starting with `/`, without a query) is already normal.
fn is_normal(path: &str) -> bool {
    if path.contains('%') || path.contains("//") {
        return false;
    }
    !path.split('/').any(|s| s == "." || s == "..")
}

fn decode_unreserved(path: &str) -> Option<String> {
    let bytes = path.as_bytes();
    let mut out = String::with_capacity(path.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] != b'%' {
            // NOTE: copying char by char keeps any non-ASCII input intact.
            let ch = path[i..].chars().next()?;
            out.push(ch);
            i += ch.len_utf8();
            continue;
        }
        let hi = hex(*bytes.get(i + 1)?)?;
        let lo = hex(*bytes.get(i + 2)?)?;
        let byte = hi << 4 | lo;
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(byte));
        } else {
            out.push('%');
            out.push(char::from(b"0123456789ABCDEF"[usize::from(hi)]));
            out.push(char::from(b"0123456789ABCDEF"[usize::from(lo)]));
        }
        i += 3;
    }
    Some(out)
}

fn hex(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::test_util::sample;
    use prometheus_client::registry::Registry;

    fn rule(name: &str, from: &[&str], methods: &[&str], paths: &[&str]) -> AuthzRule {
        let v = |xs: &[&str]| xs.iter().map(|s| s.to_string()).collect();
        AuthzRule {
            name: Some(name.into()),
            from: v(from),
            methods: v(methods),
            paths: v(paths),
        }
    }

    #[test]
    fn normalization_table() {
        let cases: &[(&str, Option<&str>)] = &[
            ("/", Some("/")),
            ("", Some("/")),
            ("/public", Some("/public")),
            ("/admin/../public", Some("/public")),
            ("/%61dmin", Some("/admin")),
            ("//admin", Some("/admin")),
            ("/a/./b", Some("/a/b")),
            ("/a/b/", Some("/a/b/")),
            ("/a//b///c", Some("/a/b/c")),
            ("/a/b/..", Some("/a/")),
            ("/a/b/.", Some("/a/b/")),
            ("/..", Some("/")),
            ("/../../etc/passwd", Some("/etc/passwd")),
            ("/a/../../b", Some("/b")),
            ("/%2e%2e/admin", Some("/admin")),
            ("/public/%2E%2E/admin", Some("/admin")),
            ("/a%2Fb", Some("/a%2Fb")),
            ("/a%2fb", Some("/a%2Fb")),
            ("/a%20b", Some("/a%20b")),
            ("/%7Euser", Some("/~user")),
            ("/%41%5a%30-%5F", Some("/AZ0-_")),
            ("/admin?x=/../y", Some("/admin")),
            ("/a/../b?q#f", Some("/b")),
            ("/a#frag", Some("/a")),
            ("/%", None),
            ("/%4", None),
            ("/%zz", None),
            ("*", None),
            ("admin", None),
            ("/a\tb", None),
            ("/é", Some("/é")),
        ];
        for (input, want) in cases {
            assert_eq!(
                normalize_path(input).as_deref(),
                *want,
                "normalize {input:?}"
            );
        }
        assert!(matches!(normalize_path("/a/b"), Some(Cow::Borrowed(_))));
        assert!(matches!(
            normalize_path("/a/b?q"),
            Some(Cow::Borrowed("/a/b"))
        ));
    }

    #[test]
    fn semantics() {
        let rules = [
            rule(
                "mesh-read",
                &["spiffe://td/ns/prod/*"],
                &["get", "HEAD"],
                &["/api/*"],
            ),
            rule(
                "web",
                &["spiffe://td/ns/web/sa/web"],
                &[],
                &["/public", "/static/*"],
            ),
            rule("health", &[UNAUTHENTICATED], &["GET"], &["/health"]),
            rule("any-authenticated", &[], &[], &["/whoami"]),
        ];
        let p = Policy::compile("inbound", &rules, &TlsMetrics::default()).unwrap();
        let get = Method::GET;
        let post = Method::POST;
        let prod = Some("spiffe://td/ns/prod/sa/x");
        let web = Some("spiffe://td/ns/web/sa/web");
        let allow = |name: &str| Decision::Allow { rule: name.into() };

        assert_eq!(
            p.check(prod, Some((&get, "/api/users"))),
            allow("mesh-read")
        );
        assert_eq!(
            p.check(prod, Some((&Method::HEAD, "/api/"))),
            allow("mesh-read")
        );
        assert_eq!(p.check(prod, Some((&post, "/api/users"))), Decision::Deny);
        assert_eq!(p.check(prod, Some((&get, "/apix"))), Decision::Deny);
        // Normalization happens before matching.
        assert_eq!(p.check(prod, Some((&get, "/%61pi/x"))), allow("mesh-read"));
        assert_eq!(p.check(prod, Some((&get, "//api//x"))), allow("mesh-read"));
        assert_eq!(
            p.check(web, Some((&post, "/static/../api/x"))),
            Decision::Deny
        );
        assert_eq!(p.check(web, Some((&post, "/public"))), allow("web"));
        assert_eq!(p.check(web, Some((&post, "/public/"))), Decision::Deny);
        assert_eq!(p.check(web, Some((&get, "/static/a.css"))), allow("web"));
        assert_eq!(p.check(web, Some((&get, "/api/x"))), Decision::Deny);
        assert_eq!(p.check(web, Some((&get, "/%zz"))), Decision::Deny);
        // `unauthenticated` is for peers without an identity only.
        assert_eq!(p.check(None, Some((&get, "/health"))), allow("health"));
        assert_eq!(p.check(None, Some((&get, "/health?full"))), allow("health"));
        assert_eq!(p.check(web, Some((&get, "/health"))), Decision::Deny);
        // An empty `from` is any authenticated peer.
        assert_eq!(
            p.check(web, Some((&get, "/whoami"))),
            allow("any-authenticated")
        );
        assert_eq!(p.check(None, Some((&get, "/whoami"))), Decision::Deny);
        // Default deny.
        assert_eq!(p.check(prod, Some((&get, "/other"))), Decision::Deny);
        assert_eq!(p.check(None, Some((&get, "/"))), Decision::Deny);
    }

    #[test]
    fn tcp_connections() {
        let rules = [
            rule("http-only", &["spiffe://td/a"], &["GET"], &[]),
            rule("paths-only", &["spiffe://td/b"], &[], &["/*"]),
            rule("tcp", &["spiffe://td/c", UNAUTHENTICATED], &[], &[]),
        ];
        let p = Policy::compile("db", &rules, &TlsMetrics::default()).unwrap();
        assert_eq!(p.check(Some("spiffe://td/a"), None), Decision::Deny);
        assert_eq!(p.check(Some("spiffe://td/b"), None), Decision::Deny);
        assert!(p.check(Some("spiffe://td/c"), None).is_allowed());
        assert!(p.check(None, None).is_allowed());
        assert!(p
            .check(Some("spiffe://td/a"), Some((&Method::GET, "/x")))
            .is_allowed());
    }

    #[test]
    fn empty_policy_denies_everything() {
        let p = Policy::compile("r", &[], &TlsMetrics::default()).unwrap();
        assert_eq!(
            p.check(Some("x"), Some((&Method::GET, "/"))),
            Decision::Deny
        );
        assert_eq!(p.check(None, None), Decision::Deny);
    }

    #[test]
    fn unnamed_rules_are_named_by_index() {
        let mut r = rule("", &[], &[], &[]);
        r.name = None;
        let p = Policy::compile("r", &[r.clone(), r], &TlsMetrics::default()).unwrap();
        assert_eq!(
            p.check(Some("x"), None),
            Decision::Allow { rule: "0".into() }
        );
    }

    #[test]
    fn compile_errors() {
        let m = TlsMetrics::default();
        let err = |r: AuthzRule| Policy::compile("inbound", &[r], &m).unwrap_err();
        assert_eq!(
            err(rule("a", &["spiffe://*/x"], &[], &[])),
            "authz of `inbound`, rule `a`: identity `spiffe://*/x`: `*` is only allowed at the end"
        );
        assert!(err(rule("a", &[""], &[], &[])).contains("must not be empty"));
        assert!(err(rule("a", &[], &["GE T"], &[])).contains("`GE T` is not an HTTP method"));
        assert!(err(rule("a", &[], &[], &["api/*"])).contains("must start with `/`"));
        assert!(err(rule("a", &[], &[], &["/a*/b"])).contains("only allowed at the end"));
        assert!(err(rule("a", &[], &[], &["/a?b"])).contains("query"));
        let dup = Policy::compile(
            "r",
            &[rule("x", &[], &[], &[]), rule("x", &[], &[], &[])],
            &m,
        );
        assert_eq!(dup.unwrap_err(), "authz of `r`: two rules are named `x`");
    }

    #[test]
    fn patterns_are_normalized_too() {
        let p = Policy::compile(
            "r",
            &[rule("a", &[], &[], &["/a/./b/../c/*", "/%78"])],
            &TlsMetrics::default(),
        )
        .unwrap();
        assert!(p
            .check(Some("x"), Some((&Method::GET, "/a/c/d")))
            .is_allowed());
        assert!(p.check(Some("x"), Some((&Method::GET, "/x"))).is_allowed());
        let all =
            Policy::compile("r", &[rule("a", &[], &[], &["*"])], &TlsMetrics::default()).unwrap();
        assert!(all
            .check(Some("x"), Some((&Method::GET, "/any")))
            .is_allowed());
    }

    #[test]
    fn decisions_are_counted() {
        let mut registry = Registry::default();
        let m = TlsMetrics::register(&mut registry);
        let p = Policy::compile("inbound", &[rule("mesh", &[], &[], &[])], &m).unwrap();
        p.check(Some("x"), None);
        p.check(Some("x"), None);
        p.check(None, None);
        let get = |parts: &[&str]| sample(&registry, parts);
        assert_eq!(
            get(&[
                "authz_decisions_total{",
                "rule=\"mesh\"",
                "decision=\"allow\""
            ]),
            Some(2.0)
        );
        assert_eq!(
            get(&[
                "authz_decisions_total{",
                "policy=\"inbound\"",
                "decision=\"deny\""
            ]),
            Some(1.0)
        );
    }
}
