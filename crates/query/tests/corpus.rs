//! Replays the checked-in fuzz corpus (`fuzz/corpus/query/`) through
//! `fuzz_query`, the entry point the `query` target calls, so CI runs every
//! input the fuzzer kept on stable Rust. See docs/fuzzing.md.

#![allow(clippy::unwrap_used)]

use std::fs;
use std::path::PathBuf;

#[test]
fn query_corpus_replays() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../fuzz/corpus/query");
    let mut entries: Vec<_> = fs::read_dir(dir).unwrap().map(|e| e.unwrap().path()).collect();
    entries.sort();
    assert!(entries.len() >= 5, "query corpus has {} files", entries.len());
    for path in entries {
        ferrohub_query::fuzz_query(&fs::read(&path).unwrap());
    }
}
