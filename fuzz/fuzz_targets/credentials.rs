//! Arbitrary bytes as a SAS token and as a connection string. See
//! `ferrohub_core::fuzz::fuzz_credentials`.

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    ferrohub_core::fuzz::fuzz_credentials(data);
});
