//! Arbitrary bytes as an automatic device configuration, checked with the
//! query language's parsers as the hub checks them. See
//! `ferrohub_core::fuzz::fuzz_configuration`; crates/core/tests/corpus.rs
//! builds the same checks for the replay.

#![no_main]

use ferrohub_core::configuration::QueryChecks;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let condition = |c: &str| ferrohub_query::parse_condition(c).map(drop).map_err(|e| e.message);
    let metric = |q: &str| ferrohub_query::parse_query(q).map(drop).map_err(|e| e.message);
    ferrohub_core::fuzz::fuzz_configuration(
        data,
        &QueryChecks { target_condition: &condition, metric_query: &metric },
    );
});
