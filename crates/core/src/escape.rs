//! Strict percent-decoding, shared by every parser of outside text that
//! must refuse a malformed escape rather than pass it through (SAS tokens,
//! request paths).

/// Decodes `%XX` escapes (either hex case); every other byte, `+` included,
/// stays literal. `None` when a `%` is not followed by two hex digits —
/// the `percent-encoding` crate keeps such a `%` as it is, which would let
/// `a%ZZ` name a device.
pub fn percent_decode_strict(s: &str) -> Option<Vec<u8>> {
    let bytes = s.as_bytes();
    let well_formed = bytes
        .iter()
        .enumerate()
        .filter(|(_, b)| **b == b'%')
        .all(|(i, _)| bytes.get(i + 1..i + 3).is_some_and(|hex| hex.iter().all(u8::is_ascii_hexdigit)));
    well_formed.then(|| percent_encoding::percent_decode(bytes).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_decode_and_malformed_ones_are_refused() {
        assert_eq!(percent_decode_strict("a%2Fb%2f+c"), Some(b"a/b/+c".to_vec()));
        assert_eq!(percent_decode_strict("plain"), Some(b"plain".to_vec()));
        for bad in ["a%ZZ", "a%", "a%4", "%+1", "%-1", "x%4g"] {
            assert_eq!(percent_decode_strict(bad), None, "{bad}");
        }
    }
}
