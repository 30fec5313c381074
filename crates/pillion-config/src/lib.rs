//! Pillion's configuration: the YAML model, its defaults, and validation with located errors.
//!
//! The flow is `Config::from_yaml(text, file)` (parse with serde, every key checked) and then
//! `Config::validate()` (cross-references and semantic checks). Both return [`ConfigError`]s that
//! name the file, the line and column, the key path and what was expected. Nothing here runs: the
//! proxy compiles a validated `Config` into its runtime form.

mod error;
mod load;
mod locate;
mod model;
mod tls;
mod validate;
mod value;

pub use self::error::{ConfigError, ConfigErrors};
pub use self::model::*;
pub use self::tls::*;
pub use self::value::{Duration, Endpoint, HostPattern};

/// The default configuration, shipped in `config/pillion.yaml` and compiled into the binary.
pub const DEFAULT_CONFIG: &str = include_str!("../../../config/pillion.yaml");

/// The name errors use for [`DEFAULT_CONFIG`].
pub const DEFAULT_CONFIG_NAME: &str = "config/pillion.yaml (built in)";
