//! The log filter (`--log-level`, `RUST_LOG`), checked before logging starts.
//!
//! tracing's `EnvFilter` reads a word that is not a level as a target (`inof` enables every
//! level of a target called `inof`, and so nothing of Pillion's): a typo would silently turn
//! logging off. Each directive here must be a level, or `target=level`.

/// The levels a filter may name, quietest first.
pub const LOG_LEVELS: [&str; 6] = ["off", "error", "warn", "info", "debug", "trace"];

/// Checks a filter such as `info` or `info,pillion_proxy=debug,hyper=off`.
pub fn check_log_filter(filter: &str) -> Result<(), String> {
    let is_level = |l: &str| LOG_LEVELS.iter().any(|k| k.eq_ignore_ascii_case(l.trim()));
    let expected = || {
        format!(
            "expected a level ({}) or target=level directives such as info,pillion_proxy=debug",
            LOG_LEVELS.join(", ")
        )
    };
    let mut directives = filter.split(',').map(str::trim).filter(|d| !d.is_empty());
    let Some(first) = directives.next() else {
        return Err(format!("the log filter is empty; {}", expected()));
    };
    for directive in std::iter::once(first).chain(directives) {
        match directive.rsplit_once('=') {
            None if is_level(directive) => {}
            None => {
                return Err(format!(
                    "`{directive}` is not a log level; {} (a target alone is written {directive}=trace)",
                    expected()
                ))
            }
            Some((target, level)) => {
                if target.trim().is_empty() || !is_level(level) {
                    return Err(format!(
                        "`{directive}` is not a log directive; {}",
                        expected()
                    ));
                }
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn levels_and_directives() {
        for ok in [
            "info",
            "DEBUG",
            "off",
            "info,pillion_proxy=debug",
            " warn , hyper=off ,",
            "pillion_proxy::http=trace",
            "pillion[conn{peer=x}]=debug",
        ] {
            assert_eq!(check_log_filter(ok), Ok(()), "{ok}");
        }
        for (bad, says) in [
            ("inof", "`inof` is not a log level"),
            ("info,debgu", "`debgu` is not a log level"),
            ("pillion_proxy", "written pillion_proxy=trace"),
            (
                "pillion_proxy=verbose",
                "`pillion_proxy=verbose` is not a log directive",
            ),
            ("=debug", "`=debug` is not a log directive"),
            ("", "empty"),
            (" , ", "empty"),
        ] {
            let e = check_log_filter(bad).unwrap_err();
            assert!(e.contains(says), "{bad}: {e}");
            assert!(
                bad.trim().is_empty() || e.contains("off, error, warn, info, debug, trace"),
                "{e}"
            );
        }
    }
}
