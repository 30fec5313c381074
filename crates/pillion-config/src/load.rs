//! Reading a configuration: YAML to [`Config`], with errors located in the file.

use crate::model::Config;
use crate::{locate::Locations, ConfigError, ConfigErrors};

/// What [`Config::dump`] shows in place of a secret.
pub const REDACTED: &str = "[redacted]";

impl Config {
    /// Parses and validates a configuration; `file` names it in errors.
    pub fn load(text: &str, file: &str) -> Result<Self, ConfigErrors> {
        let config = Self::from_yaml(text, file)?;
        config.validate(text, file)?;
        Ok(config)
    }

    /// The effective configuration (defaults filled in) as YAML, with secrets replaced by
    /// `[redacted]`.
    ///
    /// Redaction is by field, not by key name: the private key paths of `listeners[].tls` and
    /// `clusters[].tls`, and every header value a route adds (`request_headers.add`,
    /// `response_headers.add`) or matches on (`match.headers[].exact`), since those are where
    /// credentials (`authorization: Bearer ...`, API keys) go. Header names stay, so a header
    /// named `token` shows its name and hides its value like any other; names of listeners,
    /// clusters and routes are shown whatever they are called.
    pub fn dump(&self) -> String {
        match serde_yaml::to_string(&self.redacted()) {
            Ok(text) => text,
            Err(e) => format!("# cannot render: {e}\n"),
        }
    }

    /// A copy with the fields [`Config::dump`] hides replaced by [`REDACTED`].
    pub fn redacted(&self) -> Self {
        let mut c = self.clone();
        for l in &mut c.listeners {
            if let Some(tls) = &mut l.tls {
                tls.key = REDACTED.into();
            }
            for r in &mut l.routes {
                for value in r
                    .request_headers
                    .add
                    .values_mut()
                    .chain(r.response_headers.add.values_mut())
                {
                    *value = REDACTED.into();
                }
                for m in &mut r.matches.headers {
                    if let Some(exact) = &mut m.exact {
                        *exact = REDACTED.into();
                    }
                }
            }
        }
        for cl in &mut c.clusters {
            if let Some(key) = cl.tls.as_mut().and_then(|t| t.key.as_mut()) {
                *key = REDACTED.into();
            }
        }
        c
    }

    /// Parses a configuration without the semantic checks of [`Config::validate`].
    pub fn from_yaml(text: &str, file: &str) -> Result<Self, ConfigErrors> {
        let text = strip_bom(text);
        if text.trim().is_empty() {
            return Err(ConfigError {
                file: file.to_string(),
                line: None,
                column: None,
                path: String::new(),
                message: "the file is empty; expected a mapping with `listeners` and `clusters`"
                    .into(),
            }
            .into());
        }
        let de = serde_yaml::Deserializer::from_str(text);
        serde_path_to_error::deserialize(de).map_err(|e| {
            let path = match e.path().to_string() {
                p if p == "." => String::new(),
                p => p,
            };
            let inner = e.into_inner();
            let (line, column) = match inner.location() {
                Some(l) => (Some(l.line()), Some(l.column())),
                None => match Locations::index(text).find(&path) {
                    Some((l, c)) => (Some(l), Some(c)),
                    None => (None, None),
                },
            };
            ConfigError {
                file: file.to_string(),
                line,
                column,
                path,
                message: clean_message(&inner.to_string()),
            }
            .into()
        })
    }
}

/// The text without a UTF-8 byte order mark, which some Windows editors write first: YAML
/// allows one, but serde_yaml would read it as part of the first key.
pub(crate) fn strip_bom(text: &str) -> &str {
    text.strip_prefix('\u{feff}').unwrap_or(text)
}

/// serde_yaml appends "at line L column C" to its messages; the location is reported separately.
fn clean_message(msg: &str) -> String {
    let msg = match msg.rfind(" at line ") {
        Some(i) => &msg[..i],
        None => msg,
    };
    let msg = msg.trim_end_matches(|c: char| c == '.' || c.is_whitespace());
    // The path prefix serde_yaml adds ("listeners[0].name: ...") duplicates ours.
    match msg.split_once(": ") {
        Some((head, rest)) if !head.contains(' ') && !rest.is_empty() => rest.to_string(),
        _ => msg.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(text: &str) -> ConfigError {
        match Config::load(text, "t.yaml") {
            Ok(c) => panic!("expected an error, got {c:?}"),
            Err(e) => e.0.into_iter().next().unwrap(),
        }
    }

    const GOOD: &str = "\
listeners:
  - name: in
    address: 127.0.0.1:15006
    cluster: app
clusters:
  - name: app
    endpoints: [127.0.0.1:8080]
";

    #[test]
    fn good_config_with_defaults() {
        let c = Config::load(GOOD, "t.yaml").unwrap();
        assert_eq!(c.listeners[0].protocol, crate::Protocol::Auto);
        assert_eq!(c.listeners[0].direction, crate::Direction::Inbound);
        assert_eq!(c.clusters[0].connect_timeout, crate::Duration::from_secs(1));
        assert_eq!(c.admin.address.port(), 15000);
        assert_eq!(c.drain_timeout, crate::Duration::from_secs(5));
    }

    #[test]
    fn syntax_error_has_line() {
        let e = err("listeners:\n  - name: in\n    address: [oops\n");
        assert_eq!(e.file, "t.yaml");
        assert!(e.line.is_some(), "{e}");
    }

    #[test]
    fn unknown_key() {
        let e = err(&GOOD.replace("    cluster: app\n", "    cluster: app\n    bogus: 1\n"));
        assert_eq!(e.line, Some(5), "{e}");
        assert_eq!(e.path, "listeners[0].bogus");
        assert!(e.message.contains("unknown field `bogus`"), "{e}");
    }

    #[test]
    fn wrong_type() {
        let e = err(&GOOD.replace("endpoints: [127.0.0.1:8080]", "endpoints: 7"));
        assert_eq!(e.line, Some(7), "{e}");
        assert_eq!(e.path, "clusters[0].endpoints");
    }

    #[test]
    fn bad_duration() {
        let e = err(&GOOD.replace(
            "    endpoints:",
            "    connect_timeout: 5 seconds\n    endpoints:",
        ));
        assert_eq!(e.line, Some(7), "{e}");
        assert_eq!(e.path, "clusters[0].connect_timeout");
        assert!(e.message.contains("250ms"), "{e}");
    }

    #[test]
    fn bad_address() {
        let e = err(&GOOD.replace("127.0.0.1:15006", "localhost:99999"));
        assert_eq!(e.line, Some(3), "{e}");
        assert_eq!(e.path, "listeners[0].address");
        assert!(e.message.contains("localhost:99999"), "{e}");
    }

    #[test]
    fn bad_enum_value() {
        let e = err(&GOOD.replace(
            "    cluster: app\n",
            "    cluster: app\n    protocol: htp\n",
        ));
        assert_eq!(e.line, Some(5), "{e}");
        assert!(e.message.contains("`http`"), "{e}");
    }

    #[test]
    fn dump_fills_defaults_and_redacts_keys() {
        let text = GOOD.replace(
            "    cluster: app\n",
            "    cluster: app\n    tls: {cert: /c.pem, key: /secret/k.pem}\n",
        );
        let d = Config::from_yaml(&text, "t.yaml").unwrap().dump();
        assert!(d.contains("connect_timeout: 1s"), "{d}");
        assert!(d.contains("key: '[redacted]'"), "{d}");
        assert!(!d.contains("/secret/k.pem"), "{d}");
        assert!(d.contains("/c.pem"), "{d}");
    }

    #[test]
    fn byte_order_mark_is_ignored() {
        let text = format!("\u{feff}{GOOD}");
        let c = Config::load(&text, "t.yaml").unwrap();
        assert_eq!(c.listeners[0].name, "in");
        // Errors still point at the right line and column.
        let e = err(&text.replace("127.0.0.1:15006", "nope"));
        assert_eq!((e.line, e.column), (Some(3), Some(14)), "{e}");
        // A file that is nothing but a mark is empty.
        assert!(err("\u{feff}\n").message.contains("empty"));
    }

    #[test]
    fn retry_on_errors_use_the_users_words() {
        let route = |on: &str| {
            GOOD.replace(
                "    cluster: app\n",
                &format!(
                    "    cluster: app\n    protocol: http\n    routes:\n      - cluster: app\n        retry: {{on: [{on}]}}\n"
                ),
            )
        };
        for (on, shows) in [
            ("true", "boolean `true`"),
            ("5.5", "5.5"),
            ("-1", "`-1`"),
            ("700", "`700`"),
            ("5xxx", "`5xxx`"),
            ("{a: 1}", "map"),
        ] {
            let e = err(&route(on));
            assert_eq!(e.path, "listeners[0].routes[0].retry.on[0]", "{e}");
            assert_eq!(e.line, Some(8), "{on}: {e}");
            assert!(e.message.contains(shows), "{on}: {e}");
            assert!(
                e.message.contains("connect-failure, reset, refused-stream"),
                "{e}"
            );
            assert!(
                !e.message.contains("Raw") && !e.message.contains("untagged"),
                "{e}"
            );
        }
        let c = Config::load(&route("503, \"409\", 5xx"), "t.yaml").unwrap();
        let on = &c.listeners[0].routes[0].retry.as_ref().unwrap().on;
        assert_eq!(on.len(), 3);
    }

    #[test]
    fn a_header_given_twice_is_an_error() {
        // A map would keep the last value only, and `X-Env` and `x-env` are one header.
        for add in ["{x-env: a, x-env: b}", "{x-env: a, X-Env: b}"] {
            let text = GOOD.replace(
                "    cluster: app\n",
                &format!("    cluster: app\n    routes:\n      - cluster: app\n        request_headers: {{add: {add}}}\n"),
            );
            let e = err(&text);
            assert_eq!(e.path, "listeners[0].routes[0].request_headers.add", "{e}");
            assert_eq!(e.line, Some(7), "{e}");
            assert!(e.message.contains("is given twice"), "{e}");
        }
    }

    #[test]
    fn dump_redacts_by_field_not_by_key_name() {
        let text = "\
listeners:
  - name: token
    address: 127.0.0.1:15006
    protocol: http
    tls: {cert: /certs/server.pem, key: /secret/server-key.pem, ca: [/ca.pem]}
    routes:
      - name: password
        match:
          headers:
            - {name: authorization, exact: Bearer match-secret}
            - {name: x-present}
        cluster: secret
        request_headers:
          add: {authorization: Bearer add-secret, token: token-secret, x-env: prod-value}
          remove: [cookie]
        response_headers:
          add: {key: response-secret}
clusters:
  - name: secret
    endpoints: [127.0.0.1:8080]
    tls: {cert: /certs/client.pem, key: /secret/client-key.pem, ca: [/ca.pem], sni: key}
";
        let c = Config::from_yaml(text, "t.yaml").unwrap();
        let d = c.dump();
        for secret in [
            "/secret/server-key.pem",
            "/secret/client-key.pem",
            "match-secret",
            "add-secret",
            "token-secret",
            "prod-value",
            "response-secret",
        ] {
            assert!(!d.contains(secret), "{secret} shown:\n{d}");
        }
        // Names, paths of certificates and conditions that are not values are shown, whatever
        // they are called.
        for shown in [
            "name: token",
            "name: password",
            "cluster: secret",
            "sni: key",
            "/certs/server.pem",
            "/certs/client.pem",
            "authorization:",
            "token:",
            "name: x-present",
            "cookie",
        ] {
            assert!(d.contains(shown), "{shown} missing:\n{d}");
        }
        // The redacted dump is still a config of the same shape.
        let back: Config = serde_yaml::from_str(&d).unwrap();
        assert_eq!(back, c.redacted());
        assert_eq!(
            back.listeners[0].tls.as_ref().unwrap().key,
            std::path::Path::new(REDACTED)
        );
        assert_eq!(
            back.listeners[0].routes[0].request_headers.add["token"],
            REDACTED
        );
    }

    #[test]
    fn empty_file() {
        let e = err("  \n");
        assert!(e.message.contains("empty"), "{e}");
    }

    #[test]
    fn display_names_everything() {
        let e = err(&GOOD.replace("127.0.0.1:15006", "nope"));
        let s = e.to_string();
        assert!(
            s.starts_with("t.yaml:3:14: listeners[0].address: expected an address"),
            "{s}"
        );
    }
}
