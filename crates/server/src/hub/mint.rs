//! Fresh random values the core asks for: keys, etags, generation ids.
//! Randomness is IO for the pure core, so it is drawn here and passed in.

use ferrohub_core::identity::Minted;
use ferrohub_core::time::Timestamp;
use rand::Rng;

/// A fresh random symmetric key: 32 bytes, base64 (what Azure issues).
pub(crate) fn new_key() -> String {
    use base64::Engine as _;
    let bytes: [u8; 32] = rand::thread_rng().gen();
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// A fresh identity etag. Azure's are base64 text of a number; random
/// numbers keep an etag from a deleted device from matching its successor.
pub(crate) fn new_etag() -> String {
    use base64::Engine as _;
    let n: u64 = rand::thread_rng().gen_range(100_000_000..u64::MAX / 2);
    base64::engine::general_purpose::STANDARD.encode(n.to_string())
}

/// A fresh `generationId`: Azure's are 18-digit decimal numbers.
pub(crate) fn new_generation_id() -> String {
    rand::thread_rng().gen_range(100_000_000_000_000_000u64..1_000_000_000_000_000_000).to_string()
}

/// Everything an identity create or update may need to mint.
pub(crate) fn minted(now: Timestamp, key: &mut dyn FnMut() -> String) -> Minted<'_> {
    Minted { now, etag: new_etag(), generation_id: new_generation_id(), new_key: key }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn keys_are_32_random_bytes_and_etags_differ() {
        use base64::Engine as _;
        assert_eq!(base64::engine::general_purpose::STANDARD.decode(new_key()).unwrap().len(), 32);
        assert_ne!(new_key(), new_key());
        assert_ne!(new_etag(), new_etag());
        assert_eq!(new_generation_id().len(), 18);
    }
}
