//! TLS and authorization settings: listener termination (mTLS), cluster origination, policies.

use crate::value::Duration;
use serde::{Deserialize, Serialize};
use std::path::PathBuf;

/// How often the certificate, key and CA files are checked for changes by default.
pub const DEFAULT_TLS_RELOAD_INTERVAL: Duration = Duration::from_secs(1);

fn default_reload_interval() -> Duration {
    DEFAULT_TLS_RELOAD_INTERVAL
}

/// TLS on a listener: terminates TLS, verifying client certificates against `ca`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ListenerTls {
    /// `strict`: TLS with a client certificate is required. `permissive`: mTLS and plaintext
    /// accepted on the same port. `disabled`: plaintext only.
    #[serde(default)]
    pub mode: TlsMode,
    /// The certificate chain (PEM).
    pub cert: PathBuf,
    /// The private key (PEM).
    pub key: PathBuf,
    /// Trust bundles (PEM files, several CAs allowed) that client certificates must chain to.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ca: Vec<PathBuf>,
    /// How often `cert`, `key` and `ca` are checked for changes (rewritten in place or swapped
    /// by a symlink, as Kubernetes does); `0s` turns reloading off.
    #[serde(default = "default_reload_interval")]
    pub reload_interval: Duration,
}

/// How a listener treats TLS.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum TlsMode {
    /// TLS with a verified client certificate is required.
    #[default]
    Strict,
    /// TLS (with a verified client certificate) or plaintext, told apart per connection.
    Permissive,
    /// Plaintext only; the TLS files are not loaded.
    Disabled,
}

/// TLS originated by a cluster towards its endpoints.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterTls {
    /// The workload's own certificate chain (PEM), presented as the client certificate.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cert: Option<PathBuf>,
    /// Its private key (PEM).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<PathBuf>,
    /// Trust bundles (PEM) the server certificate must chain to.
    pub ca: Vec<PathBuf>,
    /// The SNI name to send; also the DNS name verified when `identities` is empty.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sni: Option<String>,
    /// Accepted server identities (SPIFFE IDs, `*` suffix patterns allowed).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub identities: Vec<String>,
    /// How often `cert`, `key` and `ca` are checked for changes; `0s` turns reloading off.
    #[serde(default = "default_reload_interval")]
    pub reload_interval: Duration,
}

/// One authorization rule; a request is allowed when any rule of the policy matches it.
/// A listener or route with a policy denies everything no rule allows.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct AuthzRule {
    /// Name, the `rule` label of the authorization metric; defaults to the rule's index.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Peer identities: exact SPIFFE IDs or prefix patterns ending in `*`
    /// (`spiffe://cluster.local/ns/prod/*`); `unauthenticated` allows peers without a
    /// certificate. Empty: any authenticated peer.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub from: Vec<String>,
    /// HTTP methods; empty: any.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub methods: Vec<String>,
    /// Paths, matched after normalization: exact, or a prefix ending in `*`; empty: any.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub paths: Vec<String>,
}
