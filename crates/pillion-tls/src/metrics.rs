//! The `pillion_tls_*` metric families and the per-name handles the data path increments.

use crate::error::HandshakeFailure;
use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{counter::Counter, family::Family, gauge::Gauge},
    registry::Registry,
};
use std::sync::{Arc, OnceLock};

/// The TLS metric families. Cheap to clone (every family is shared).
///
/// - `pillion_tls_handshakes_total{name, side, result}`: `side` is `server` (a listener) or
///   `client` (a cluster); `result` is `ok` or a [`HandshakeFailure`] label.
/// - `pillion_tls_certificate_reloads_total{name, side, result}`: `result` is `ok` or `error`.
/// - `pillion_tls_certificate_expiry_timestamp_seconds{name, side, kind}`: when the leaf
///   certificate (`kind="cert"`) or the first CA of the bundle to expire (`kind="ca"`) expires,
///   in Unix seconds.
/// - `pillion_tls_authz_decisions_total{policy, rule, decision}`: `policy` is the listener or
///   route the policy belongs to, `rule` the name of the allowing rule (empty on `deny`).
#[derive(Clone, Debug, Default)]
pub struct TlsMetrics {
    handshakes: Family<HandshakeLabels, Counter>,
    reloads: Family<ReloadLabels, Counter>,
    expiry: Family<ExpiryLabels, Gauge>,
    authz: Family<AuthzLabels, Counter>,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct HandshakeLabels {
    name: String,
    side: &'static str,
    result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReloadLabels {
    name: String,
    side: &'static str,
    result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ExpiryLabels {
    name: String,
    side: &'static str,
    kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct AuthzLabels {
    policy: String,
    rule: String,
    decision: &'static str,
}

/// Which end of the handshake a TLS context is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Side {
    Server,
    Client,
}

/// Handshake counters of one listener or cluster.
#[derive(Clone, Debug)]
pub(crate) struct HandshakeMetrics {
    ok: Counter,
    /// NOTE: failure series are created on first use, so a healthy proxy does not export ten
    /// zero series per name; after that, counting is one atomic add.
    failed: Arc<[OnceLock<Counter>; HandshakeFailure::ALL.len()]>,
    family: Family<HandshakeLabels, Counter>,
    name: Arc<str>,
    side: Side,
}

/// Reload counters and expiry gauges of one listener or cluster.
#[derive(Clone, Debug)]
pub(crate) struct FileMetrics {
    reload_ok: Counter,
    reload_error: Counter,
    /// NOTE: `None` for a cluster without a client certificate, so no zero (1970) expiry is
    /// exported for a certificate that does not exist.
    cert_expiry: Option<Gauge>,
    ca_expiry: Gauge,
}

// === impl TlsMetrics ===

impl TlsMetrics {
    /// Creates the families and registers them under the `pillion_tls_` prefix.
    pub fn register(registry: &mut Registry) -> Self {
        let m = Self::default();
        let r = registry.sub_registry_with_prefix("pillion_tls");
        r.register(
            "handshakes",
            "TLS handshakes by listener (side=server) or cluster (side=client) and result",
            m.handshakes.clone(),
        );
        r.register(
            "certificate_reloads",
            "Reloads of changed certificate, key and CA files, by result",
            m.reloads.clone(),
        );
        r.register(
            "certificate_expiry_timestamp_seconds",
            "When the loaded certificate (kind=cert) or the first CA to expire (kind=ca) expires, in Unix seconds",
            m.expiry.clone(),
        );
        r.register(
            "authz_decisions",
            "Authorization decisions by policy (listener or route), allowing rule and decision",
            m.authz.clone(),
        );
        m
    }

    pub(crate) fn handshakes(&self, name: &str, side: Side) -> HandshakeMetrics {
        let ok = self
            .handshakes
            .get_or_create(&HandshakeLabels {
                name: name.to_owned(),
                side: side.as_str(),
                result: "ok",
            })
            .clone();
        HandshakeMetrics {
            ok,
            failed: Arc::new(std::array::from_fn(|_| OnceLock::new())),
            family: self.handshakes.clone(),
            name: name.into(),
            side,
        }
    }

    pub(crate) fn files(&self, name: &str, side: Side, has_cert: bool) -> FileMetrics {
        let reload = |result| {
            self.reloads
                .get_or_create(&ReloadLabels {
                    name: name.to_owned(),
                    side: side.as_str(),
                    result,
                })
                .clone()
        };
        let expiry = |kind| {
            self.expiry
                .get_or_create(&ExpiryLabels {
                    name: name.to_owned(),
                    side: side.as_str(),
                    kind,
                })
                .clone()
        };
        FileMetrics {
            reload_ok: reload("ok"),
            reload_error: reload("error"),
            cert_expiry: has_cert.then(|| expiry("cert")),
            ca_expiry: expiry("ca"),
        }
    }

    pub(crate) fn authz(&self, policy: &str, rule: &str, allow: bool) -> Counter {
        self.authz
            .get_or_create(&AuthzLabels {
                policy: policy.to_owned(),
                rule: rule.to_owned(),
                decision: if allow { "allow" } else { "deny" },
            })
            .clone()
    }
}

// === impl Side ===

impl Side {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Self::Server => "server",
            Self::Client => "client",
        }
    }
}

// === impl HandshakeMetrics ===

impl HandshakeMetrics {
    pub(crate) fn ok(&self) {
        self.ok.inc();
    }

    pub(crate) fn failed(&self, reason: HandshakeFailure) {
        let slot = &self.failed[reason.index()];
        slot.get_or_init(|| {
            self.family
                .get_or_create(&HandshakeLabels {
                    name: self.name.to_string(),
                    side: self.side.as_str(),
                    result: reason.as_str(),
                })
                .clone()
        })
        .inc();
    }
}

// === impl FileMetrics ===

impl FileMetrics {
    pub(crate) fn reloaded(&self, ok: bool) {
        if ok {
            self.reload_ok.inc();
        } else {
            self.reload_error.inc();
        }
    }

    pub(crate) fn set_expiry(&self, cert: Option<i64>, ca: Option<i64>) {
        if let (Some(g), Some(t)) = (&self.cert_expiry, cert) {
            g.set(t);
        }
        if let Some(t) = ca {
            self.ca_expiry.set(t);
        }
    }
}

#[cfg(test)]
pub(crate) mod test_util {
    //! Reads metric values back out of a registry, for tests.

    use prometheus_client::{encoding::text::encode, registry::Registry};

    /// The value of the sample whose name and labels contain all of `parts`, if any.
    pub(crate) fn sample(registry: &Registry, parts: &[&str]) -> Option<f64> {
        let mut out = String::new();
        encode(&mut out, registry).ok()?;
        out.lines()
            .filter(|l| !l.starts_with('#'))
            .find(|l| parts.iter().all(|p| l.contains(p)))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn families_and_labels() {
        let mut registry = Registry::default();
        let m = TlsMetrics::register(&mut registry);
        let h = m.handshakes("inbound", Side::Server);
        h.ok();
        h.failed(HandshakeFailure::NoClientCert);
        h.failed(HandshakeFailure::NoClientCert);
        let f = m.files("inbound", Side::Server, true);
        f.reloaded(false);
        f.set_expiry(Some(1_900_000_000), None);
        m.authz("inbound", "mesh", true).inc();

        let get = |parts: &[&str]| test_util::sample(&registry, parts);
        assert_eq!(
            get(&[
                "pillion_tls_handshakes_total{",
                "side=\"server\"",
                "result=\"ok\""
            ]),
            Some(1.0)
        );
        assert_eq!(
            get(&["pillion_tls_handshakes_total{", "result=\"no_client_cert\""]),
            Some(2.0)
        );
        assert_eq!(
            get(&["pillion_tls_certificate_reloads_total{", "result=\"error\""]),
            Some(1.0)
        );
        assert_eq!(
            get(&[
                "pillion_tls_certificate_expiry_timestamp_seconds{",
                "kind=\"cert\""
            ]),
            Some(1_900_000_000.0)
        );
        assert_eq!(
            get(&[
                "pillion_tls_authz_decisions_total{",
                "policy=\"inbound\"",
                "rule=\"mesh\"",
                "decision=\"allow\""
            ]),
            Some(1.0)
        );
    }
}
