//! Case-insensitive comparison of header names and tokens, eight bytes at a time.
//!
//! `<[u8]>::eq_ignore_ascii_case` lower-cases both sides byte by byte; on the HTTP/1 paths every
//! header name of every head is compared so (with the names of the last response, and with
//! `content-length`, `connection`, ...), and that loop was a twentieth of the instructions of a
//! proxied request. One side is always lower-case already, which leaves one question per byte:
//! is the difference zero, or 0x20 where the lower-case side has a letter.

/// Whether `bytes` equals `lower` but for ASCII case, where `lower` has no upper-case letter
/// (a [`http::HeaderName`]'s bytes, or a literal such as `b"content-length"`).
pub(crate) fn eq_lower(bytes: &[u8], lower: &[u8]) -> bool {
    debug_assert!(!lower.iter().any(u8::is_ascii_uppercase), "{lower:?}");
    let len = bytes.len();
    if len != lower.len() {
        return false;
    }
    if len < 8 {
        return eq_word(short_word(bytes), short_word(lower));
    }
    let mut at = 0;
    while at + 8 <= len {
        if !eq_word(word(bytes, at), word(lower, at)) {
            return false;
        }
        at += 8;
    }
    // The last partial word, read as the eight bytes that end the slice (some compared twice).
    at == len || eq_word(word(bytes, len - 8), word(lower, len - 8))
}

/// Whether the comma-separated list `value` (a `Connection` or `TE` value) holds `token` but for
/// ASCII case, where `token` has no upper-case letter.
pub(crate) fn has_token(value: &[u8], token: &[u8]) -> bool {
    value
        .split(|&b| b == b',')
        .any(|t| eq_lower(t.trim_ascii(), token))
}

/// Whether the words `x` and `y` hold the same bytes but for ASCII case, where `y` has no
/// upper-case letter: each byte either is equal or differs by 0x20 where `y`'s is `a`-`z`.
fn eq_word(x: u64, y: u64) -> bool {
    const ONES: u64 = u64::from_ne_bytes([1; 8]);
    const HIGH: u64 = ONES * 0x80;
    // Per byte of `y` below 0x80, the high bit set where it is >= 'a' and where it is > 'z';
    // no byte carries into the next (at most 0x7f + 0x1f).
    let low7 = y & !HIGH;
    let from_a = low7 + ONES * (0x80 - u64::from(b'a'));
    let past_z = low7 + ONES * (0x80 - u64::from(b'z') - 1);
    let letter = from_a & !past_z & !y & HIGH;
    (x ^ y) & !(letter >> 2) == 0
}

/// Eight bytes of `s` from `at` (which must have them).
fn word(s: &[u8], at: usize) -> u64 {
    let mut w = [0; 8];
    w.copy_from_slice(&s[at..at + 8]);
    u64::from_le_bytes(w)
}

/// The bytes of a slice shorter than eight, zero-padded.
fn short_word(s: &[u8]) -> u64 {
    s.iter()
        .enumerate()
        .fold(0, |w, (i, &b)| w | u64::from(b) << (8 * i))
}

#[cfg(test)]
mod tests {
    use super::{eq_lower, has_token};

    /// Every pair of bytes in every position of slices of several lengths: `eq_lower` agrees
    /// with the standard library wherever its precondition holds.
    #[test]
    fn agrees_with_eq_ignore_ascii_case() {
        for len in [1, 5, 7, 8, 9, 14, 16, 17, 23] {
            let base: Vec<u8> = (0..len).map(|i| b"content-length-x"[i % 16]).collect();
            for at in 0..len {
                for l in 0..=255u8 {
                    if l.is_ascii_uppercase() {
                        continue;
                    }
                    let mut lower = base.clone();
                    lower[at] = l;
                    let mut bytes = lower.clone();
                    for b in 0..=255u8 {
                        bytes[at] = b;
                        assert_eq!(
                            eq_lower(&bytes, &lower),
                            bytes.eq_ignore_ascii_case(&lower),
                            "len {len}, byte {at}: {b:#x} against {l:#x}"
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn lengths_and_case() {
        assert!(eq_lower(b"", b""));
        assert!(eq_lower(b"Content-Length", b"content-length"));
        assert!(eq_lower(b"X-ECHO-BODY-BYTES", b"x-echo-body-bytes"));
        assert!(!eq_lower(b"content-lengtH ", b"content-length"));
        assert!(!eq_lower(b"content-lengtg", b"content-length"));
        // '^' and '~' differ by 0x20 but are not letters.
        assert!(!eq_lower(b"x^y", b"x~y"));
        assert!(!eq_lower(b"x~y", b"x^y"));
        // '@' / '`' and '[' / '{' sit just outside the letters.
        assert!(!eq_lower(b"@", b"`"));
        assert!(!eq_lower(b"[", b"{"));
    }

    #[test]
    fn tokens_of_a_list() {
        assert!(has_token(b"trailers", b"trailers"));
        assert!(has_token(b"gzip, Trailers", b"trailers"));
        assert!(has_token(b"gzip,trailers ,deflate", b"trailers"));
        assert!(!has_token(b"gzip", b"trailers"));
        assert!(!has_token(b"", b"trailers"));
        assert!(!has_token(b"trailers;q=0.5", b"trailers"));
        assert!(!has_token(b"x-trailers", b"trailers"));
    }
}
