//! Configuration errors that say where (file, line, column, key path) and what was expected.

use std::fmt;

/// One problem in a configuration file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// The file the configuration came from.
    pub file: String,
    /// 1-based line, where known.
    pub line: Option<usize>,
    /// 1-based column, where known.
    pub column: Option<usize>,
    /// The key path, such as `listeners[0].address`; empty for the document itself.
    pub path: String,
    /// What is wrong and what was expected.
    pub message: String,
}

/// Every problem found in one configuration file (never empty).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigErrors(pub Vec<ConfigError>);

// === impl ConfigError ===

impl ConfigError {
    /// An error about `path` (such as `listeners[0].tls`) found outside this crate, for example
    /// when a certificate it names does not load, located in `text` like every other.
    pub fn located(text: &str, file: &str, path: &str, message: impl Into<String>) -> Self {
        let at = crate::locate::Locations::index(crate::load::strip_bom(text)).find(path);
        Self {
            file: file.to_string(),
            line: at.map(|(l, _)| l),
            column: at.map(|(_, c)| c),
            path: path.to_string(),
            message: message.into(),
        }
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file)?;
        if let Some(line) = self.line {
            write!(f, ":{line}")?;
            if let Some(column) = self.column {
                write!(f, ":{column}")?;
            }
        }
        if self.path.is_empty() {
            write!(f, ": {}", self.message)
        } else {
            write!(f, ": {}: {}", self.path, self.message)
        }
    }
}

impl std::error::Error for ConfigError {}

// === impl ConfigErrors ===

impl ConfigErrors {
    /// The errors, in file order.
    pub fn iter(&self) -> impl Iterator<Item = &ConfigError> {
        self.0.iter()
    }
}

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

impl From<ConfigError> for ConfigErrors {
    fn from(e: ConfigError) -> Self {
        Self(vec![e])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn located_errors_point_at_their_key() {
        let text = "\u{feff}listeners:\n  - name: a\n    tls: {cert: c.pem, key: k.pem}\n";
        let e = ConfigError::located(text, "t.yaml", "listeners[0].tls", "cannot read c.pem");
        assert_eq!(
            e.to_string(),
            "t.yaml:3:10: listeners[0].tls: cannot read c.pem"
        );
        let e = ConfigError::located("", "t.yaml", "clusters[0].tls", "x");
        assert_eq!(e.to_string(), "t.yaml: clusters[0].tls: x");
    }
}
