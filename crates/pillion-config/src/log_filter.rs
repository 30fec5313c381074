//! The log filter (`--log-level`, `RUST_LOG`), checked before logging starts.
//!
//! tracing's `EnvFilter` reads a word that is not a level as a target (`inof` enables every
//! level of a target called `inof`, and so nothing of Pillion's): a typo would silently turn
//! logging off. Each directive here is a level, `target=level`, or a bare target (every level of
//! it, as in `RUST_LOG=hyper`) that is not a near miss of a level's name.

/// The levels a filter may name, quietest first.
pub const LOG_LEVELS: [&str; 6] = ["off", "error", "warn", "info", "debug", "trace"];

/// Checks a filter such as `info`, `info,pillion_proxy=debug,hyper=off` or `hyper`.
pub fn check_log_filter(filter: &str) -> Result<(), String> {
    let is_level = |l: &str| LOG_LEVELS.iter().any(|k| k.eq_ignore_ascii_case(l.trim()));
    let expected = || {
        format!(
            "expected a level ({}), a target, or target=level directives such as info,pillion_proxy=debug",
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
                if let Some(level) = near_level(directive) {
                    return Err(format!(
                        "`{directive}` is not a log level (did you mean `{level}`?); {} (a target of that name is written {directive}=trace)",
                        expected()
                    ));
                }
                if !is_target(directive) {
                    return Err(format!(
                        "`{directive}` is not a log level or a target; {}",
                        expected()
                    ));
                }
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

/// A level whose name `word` misses by at most two edits (`inof`, `debgu`, `warning`), if any.
fn near_level(word: &str) -> Option<&'static str> {
    let word = word.to_ascii_lowercase();
    // NOTE: `warning` is how several tools spell `warn`; seven letters are three edits from it.
    if word == "warning" {
        return Some("warn");
    }
    LOG_LEVELS
        .into_iter()
        .find(|level| edit_distance(word.as_bytes(), level.as_bytes()) <= 2)
}

/// Whether `word` reads as a module path such as `hyper` or `pillion_proxy::http`.
fn is_target(word: &str) -> bool {
    word.split("::").all(|part| {
        !part.is_empty()
            && part
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
    })
}

/// The edit distance between two short words, counting a swap of neighbours as one edit.
fn edit_distance(a: &[u8], b: &[u8]) -> usize {
    // Rows of the optimal string alignment table; the words are a few letters long.
    let mut before: Vec<usize> = vec![0; b.len() + 1];
    let mut last: Vec<usize> = (0..=b.len()).collect();
    for i in 1..=a.len() {
        let mut row = vec![i; b.len() + 1];
        for j in 1..=b.len() {
            let cost = usize::from(a[i - 1] != b[j - 1]);
            row[j] = (last[j] + 1).min(row[j - 1] + 1).min(last[j - 1] + cost);
            if i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1] {
                row[j] = row[j].min(before[j - 2] + 1);
            }
        }
        before = std::mem::replace(&mut last, row);
    }
    last[b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn levels_directives_and_bare_targets() {
        for ok in [
            "info",
            "DEBUG",
            "off",
            "info,pillion_proxy=debug",
            " warn , hyper=off ,",
            "pillion_proxy::http=trace",
            "pillion[conn{peer=x}]=debug",
            "hyper",
            "info,h2",
            "pillion_proxy::http",
            "tokio-util",
        ] {
            assert_eq!(check_log_filter(ok), Ok(()), "{ok}");
        }
        for (bad, says) in [
            ("inof", "`inof` is not a log level (did you mean `info`?)"),
            (
                "info,debgu",
                "`debgu` is not a log level (did you mean `debug`?)",
            ),
            ("Warning", "(did you mean `warn`?)"),
            ("trce", "(did you mean `trace`?)"),
            ("of", "(did you mean `off`?)"),
            ("inof", "written inof=trace"),
            (
                "pillion proxy",
                "`pillion proxy` is not a log level or a target",
            ),
            ("hyper::", "`hyper::` is not a log level or a target"),
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

    #[test]
    fn edit_distance_counts_swaps_as_one() {
        for (a, b, d) in [
            ("info", "info", 0),
            ("inof", "info", 1),
            ("debgu", "debug", 1),
            ("trce", "trace", 1),
            ("", "off", 3),
            ("hyper", "error", 4),
            ("errror", "error", 1),
        ] {
            assert_eq!(edit_distance(a.as_bytes(), b.as_bytes()), d, "{a} {b}");
        }
    }
}
