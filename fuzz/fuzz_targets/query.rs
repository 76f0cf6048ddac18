//! Arbitrary bytes as a query and as a condition, run over a few fixed
//! twins. See `ferrohub_query::fuzz_query`.

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    ferrohub_query::fuzz_query(data);
});
