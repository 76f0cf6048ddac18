//! Replays the checked-in fuzz corpora of this crate's targets
//! (`fuzz/corpus/{credentials,twin,configuration}/`) through the same entry
//! points the targets call, so CI runs every input the fuzzer kept (and
//! every crash it found, once fixed) on stable Rust. See docs/fuzzing.md.

#![allow(clippy::unwrap_used)]

use std::fs;
use std::path::PathBuf;

use ferrohub_core::configuration::QueryChecks;
use ferrohub_core::fuzz::{fuzz_configuration, fuzz_credentials, fuzz_twin};

fn replay(target: &str, run: impl Fn(&[u8])) {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../fuzz/corpus").join(target);
    let mut entries: Vec<_> = fs::read_dir(&dir).unwrap().map(|e| e.unwrap().path()).collect();
    entries.sort();
    assert!(entries.len() >= 5, "{target} corpus has {} files", entries.len());
    for path in entries {
        run(&fs::read(&path).unwrap());
    }
}

#[test]
fn credentials_corpus_replays() {
    replay("credentials", fuzz_credentials);
}

#[test]
fn twin_corpus_replays() {
    replay("twin", fuzz_twin);
}

#[test]
fn configuration_corpus_replays() {
    // The checks the hub and the fuzz target use: the query language's.
    let condition = |c: &str| ferrohub_query::parse_condition(c).map(drop).map_err(|e| e.message);
    let metric = |q: &str| ferrohub_query::parse_query(q).map(drop).map_err(|e| e.message);
    let checks = QueryChecks { target_condition: &condition, metric_query: &metric };
    replay("configuration", |data| fuzz_configuration(data, &checks));
}
