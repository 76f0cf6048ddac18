//! Arbitrary bytes as a twin PATCH, PUT and reported patch. See
//! `ferrohub_core::fuzz::fuzz_twin`.

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    ferrohub_core::fuzz::fuzz_twin(data);
});
