//! Tests of configurations: the object's validation and update rules
//! (`model.rs`) and which configuration writes what into a twin (`apply.rs`).

#![allow(clippy::unwrap_used)]

mod apply;
mod model;

use serde_json::Value;

use crate::time::Timestamp;

/// `n` seconds after a fixed instant.
fn t(n: i128) -> Timestamp {
    Timestamp::from_unix_nanos(1_700_000_000_000_000_000 + n * 1_000_000_000)
}

fn props(v: Value) -> crate::twin::Props {
    v.as_object().unwrap().clone()
}
