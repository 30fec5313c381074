//! Pillion's configuration: the YAML model, its defaults, and validation with located errors.
//!
//! The flow is `Config::from_yaml(text, file)` (parse with serde, every key checked) and then
//! `Config::validate()` (cross-references and semantic checks). Both return [`ConfigError`]s that
//! name the file, the line and column, the key path and what was expected. Nothing here runs: the
//! proxy compiles a validated `Config` into its runtime form.

mod error;
mod load;
mod locate;
mod log_filter;
mod model;
mod resilience;
mod tls;
mod validate;
mod value;

pub use self::error::{ConfigError, ConfigErrors};
pub use self::load::REDACTED;
pub use self::log_filter::{check_log_filter, LOG_LEVELS};
pub use self::model::*;
pub use self::resilience::*;
pub use self::tls::*;
pub use self::value::{Duration, Endpoint, HostPattern};

/// The fields an access-log line can carry, by name.
pub const ACCESS_LOG_FIELDS: &[&str] = &[
    "start_time",
    "duration_ms",
    "upstream_service_time_ms",
    "listener",
    "direction",
    "route",
    "cluster",
    "method",
    "authority",
    "path",
    "protocol",
    "status",
    "response_flags",
    "bytes_received",
    "bytes_sent",
    "downstream_address",
    "upstream_host",
    "request_id",
    "trace_id",
    "peer_identity",
];

/// Checks a text access-log template: `%field%` placeholders naming [`ACCESS_LOG_FIELDS`].
/// Returns the placeholders in order.
pub fn access_log_fields(template: &str) -> Result<Vec<&str>, String> {
    let mut fields = Vec::new();
    let mut rest = template;
    while let Some(start) = rest.find('%') {
        let after = &rest[start + 1..];
        let end = after
            .find('%')
            .ok_or_else(|| format!("unclosed `%` in `{template}`; expected `%field%`"))?;
        let name = &after[..end];
        if !ACCESS_LOG_FIELDS.contains(&name) {
            return Err(format!(
                "unknown field `%{name}%`; expected json or a template of {}",
                ACCESS_LOG_FIELDS.join(", ")
            ));
        }
        fields.push(name);
        rest = &after[end + 1..];
    }
    if fields.is_empty() {
        return Err(format!(
            "`{template}` has no `%field%`; expected json or a template"
        ));
    }
    Ok(fields)
}

/// The default configuration, shipped in `config/pillion.yaml` and compiled into the binary.
pub const DEFAULT_CONFIG: &str = include_str!("../../../config/pillion.yaml");

/// The name errors use for [`DEFAULT_CONFIG`].
pub const DEFAULT_CONFIG_NAME: &str = "config/pillion.yaml (built in)";
