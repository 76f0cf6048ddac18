//! Percent-encoding as the device SDKs expect it.

use std::borrow::Cow;

use percent_encoding::{percent_decode_str, utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};

/// Everything but RFC 3986 "unreserved" characters is encoded: the same set
/// as Python's `urllib.parse.quote(s, safe="")`, which the Python device SDK
/// uses for ids in topics and for property bags. Node decodes it with
/// `decodeURIComponent`, so the one form suits both. `+` becomes `%2B` and a
/// space `%20` (never form encoding).
const QUOTE: &AsciiSet = &NON_ALPHANUMERIC.remove(b'-').remove(b'.').remove(b'_').remove(b'~');

/// Percent-encodes `s` like Python's `quote(s, safe="")`.
pub(crate) fn quote(s: &str) -> Cow<'_, str> {
    utf8_percent_encode(s, QUOTE).into()
}

/// Appends `s`, percent-encoded like [`quote`], to `out`.
pub(crate) fn push_quoted(out: &mut String, s: &str) {
    out.extend(utf8_percent_encode(s, QUOTE));
}

/// Percent-decodes `s` without form decoding (`+` stays `+`). Malformed
/// escapes are kept literally; bytes that are not UTF-8 after decoding become
/// U+FFFD. Borrows when `s` holds no `%`.
pub(crate) fn decode_lossy(s: &str) -> Cow<'_, str> {
    if !s.contains('%') {
        return Cow::Borrowed(s);
    }
    percent_decode_str(s).decode_utf8_lossy()
}

/// Strict decoding for comparisons: `None` when the decoded bytes are not UTF-8.
pub(crate) fn decode_strict(s: &str) -> Option<Cow<'_, str>> {
    if !s.contains('%') {
        return Some(Cow::Borrowed(s));
    }
    percent_decode_str(s).decode_utf8().ok()
}

/// True when `segment`, as found in a topic, names the device `device_id`:
/// either raw (Node) or percent-encoded (Python). Only the authenticated id is
/// ever compared, so accepting both forms cannot address another device.
pub(crate) fn names_device(segment: &str, device_id: &str) -> bool {
    if segment == device_id {
        return true;
    }
    segment.contains('%') && decode_strict(segment).is_some_and(|d| d == device_id)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn quote_matches_python_safe_empty() {
        assert_eq!(quote("a-b_c.d~e"), "a-b_c.d~e");
        assert_eq!(quote("$.mid"), "%24.mid");
        assert_eq!(quote("a b+c/d?e=f&g#h%i"), "a%20b%2Bc%2Fd%3Fe%3Df%26g%23h%25i");
        assert_eq!(quote("$'()*:@=!,"), "%24%27%28%29%2A%3A%40%3D%21%2C");
        assert_eq!(quote("é"), "%C3%A9");
    }

    #[test]
    fn decode_keeps_plus_and_bad_escapes() {
        assert_eq!(decode_lossy("a+b%20c"), "a+b c");
        assert_eq!(decode_lossy("100%"), "100%");
        assert_eq!(decode_lossy("%zz%4"), "%zz%4");
        assert_eq!(decode_lossy("%ff"), "\u{FFFD}");
        assert!(decode_strict("%ff").is_none());
        assert!(matches!(decode_lossy("plain"), Cow::Borrowed(_)));
    }

    #[test]
    fn device_names_raw_or_encoded() {
        assert!(names_device("d1", "d1"));
        assert!(names_device("a%24b", "a$b"));
        assert!(names_device("a$b", "a$b"));
        // An id that itself contains '%' still matches raw.
        assert!(names_device("a%20b", "a%20b"));
        assert!(names_device("a%2520b", "a%20b"));
        assert!(!names_device("d2", "d1"));
        assert!(!names_device("%ff", "\u{FFFD}"));
    }
}
