//! Every limit at its boundary, through the public operations: exactly at
//! the limit is accepted, one over is 400 ArgumentInvalid and leaves the twin
//! exactly as it was.

use serde_json::{json, Value};

use super::{desired, populated, t};
use crate::error::ErrorCode;
use crate::twin::limits::{
    MAX_DEPTH, MAX_DESIRED_SIZE, MAX_INT, MAX_KEY_BYTES, MAX_REPORTED_SIZE, MAX_STRING_BYTES, MAX_TAGS_SIZE,
    MIN_INT,
};
use crate::twin::{Props, TwinState};

#[derive(Clone, Copy, Debug)]
enum Op {
    Patch,
    Replace,
    Reported,
}

fn run(twin: &mut TwinState, op: Op, body: &Value) -> crate::HubResult<()> {
    match op {
        Op::Patch => twin.apply_service_patch(body, t(5)).map(drop),
        Op::Replace => twin.replace(body, t(5)).map(drop),
        Op::Reported => twin.apply_reported_patch(body, t(5)).map(drop),
    }
}

fn accepted(op: Op, body: Value) {
    let mut twin = populated();
    if let Err(e) = run(&mut twin, op, &body) {
        panic!("{op:?} rejected at the limit: {e}");
    }
}

/// Asserts rejection with ArgumentInvalid and an untouched twin; returns the
/// message.
fn rejected(op: Op, body: Value) -> String {
    let mut twin = populated();
    let before = twin.clone();
    let e = run(&mut twin, op, &body).expect_err("over the limit must be rejected");
    assert_eq!(e.code, ErrorCode::ArgumentInvalid, "{op:?}: {e}");
    assert_eq!(twin, before, "{op:?}: a rejected operation must not change the twin");
    e.message
}

/// `tags`, desired or reported bodies holding `props`, for each operation.
fn bodies(props: Value) -> [(Op, Value); 5] {
    [
        (Op::Patch, json!({"tags": props})),
        (Op::Patch, desired(props.clone())),
        (Op::Replace, json!({"tags": props})),
        (Op::Replace, desired(props.clone())),
        (Op::Reported, props),
    ]
}

/// Properties of exactly `size` in Azure's units, in strings of at most
/// 4096 characters under one-byte keys.
fn filler(size: usize) -> Value {
    let mut out = Props::new();
    let mut left = size;
    for key in ('a'..='z').chain('A'..='Z') {
        if left == 0 {
            break;
        }
        let n = (left - 1).min(MAX_STRING_BYTES);
        out.insert(key.to_string(), json!("x".repeat(n)));
        left -= 1 + n;
    }
    assert_eq!(left, 0, "filler too small for {size}");
    Value::Object(out)
}

fn nested(levels: usize, leaf: Value) -> Value {
    (0..levels).fold(leaf, |inner, i| json!({ format!("l{}", levels - i): inner }))
}

#[test]
fn key_length_is_limited_at_every_level() {
    let ok = "k".repeat(MAX_KEY_BYTES);
    let over = "k".repeat(MAX_KEY_BYTES + 1);
    for (op, body) in bodies(json!({ "n": { ok.clone(): 1 } })) {
        accepted(op, body);
    }
    for (op, body) in bodies(json!({ "n": { over.clone(): 1 } })) {
        assert!(rejected(op, body).contains("1025 bytes"));
    }
}

#[test]
fn forbidden_key_characters_are_rejected_even_in_deletes() {
    for bad in ["a.b", "$x", "a b", "tab\t", "nul\u{0}", "c1\u{90}", ""] {
        for (op, body) in bodies(json!({ "ok": { bad: null } })) {
            rejected(op, body);
        }
        for (op, body) in bodies(json!({ bad: 1 })) {
            rejected(op, body);
        }
    }
}

#[test]
fn depth_is_limited_to_ten_object_levels() {
    for (op, body) in bodies(nested(MAX_DEPTH, json!({"property": "value"}))) {
        accepted(op, body);
    }
    for (op, body) in bodies(nested(MAX_DEPTH + 1, json!({}))) {
        assert!(rejected(op, body).contains("deeper than 10"));
    }
}

#[test]
fn strings_are_limited_to_4_kb() {
    for (op, body) in bodies(json!({"s": "x".repeat(MAX_STRING_BYTES)})) {
        accepted(op, body);
    }
    for (op, body) in bodies(json!({"s": "x".repeat(MAX_STRING_BYTES + 1)})) {
        rejected(op, body);
    }
}

#[test]
fn integers_are_limited_to_53_bit_range() {
    for (op, body) in bodies(json!({"max": MAX_INT, "min": MIN_INT, "f": 1e300})) {
        accepted(op, body);
    }
    for n in [MAX_INT + 1, MIN_INT - 1] {
        for (op, body) in bodies(json!({"o": {"n": n}})) {
            assert!(rejected(op, body).contains(&n.to_string()));
        }
    }
}

#[test]
fn arrays_are_accepted_and_checked_inside() {
    for (op, body) in bodies(json!({"a": [1, "s", null, {"k": true}, [2.5]]})) {
        accepted(op, body);
    }
    for (op, body) in bodies(json!({"a": [{"bad.key": 1}]})) {
        rejected(op, body);
    }
}

/// Starts from a fresh twin so the filler is the whole section; sizing
/// against existing content is covered by the next test.
fn size_case(op: Op, section: &str, limit: usize) {
    let wrap = |props: Value| match section {
        "tags" => json!({ "tags": props }),
        "desired" => desired(props),
        _ => props,
    };
    let mut twin = TwinState::new(t(0));
    run(&mut twin, op, &wrap(filler(limit))).unwrap_or_else(|e| panic!("{section} at {limit}: {e}"));

    let mut twin = TwinState::new(t(0));
    let before = twin.clone();
    let e = run(&mut twin, op, &wrap(filler(limit + 1))).unwrap_err();
    assert_eq!(e.code, ErrorCode::ArgumentInvalid);
    assert!(e.message.contains(&format!("{} bytes", limit + 1)), "{}", e.message);
    assert_eq!(twin, before);
}

#[test]
fn section_sizes_are_limited() {
    for op in [Op::Patch, Op::Replace] {
        size_case(op, "tags", MAX_TAGS_SIZE);
        size_case(op, "desired", MAX_DESIRED_SIZE);
    }
    size_case(Op::Reported, "reported", MAX_REPORTED_SIZE);
}

#[test]
fn size_counts_the_merged_document_and_deletes_make_room() {
    let mut twin = TwinState::new(t(0));
    twin.apply_service_patch(&json!({"tags": filler(MAX_TAGS_SIZE - 5)}), t(1)).unwrap();
    let before = twin.clone();
    // "z" + 8 (number) = 9 > 5 bytes left.
    let e = twin.apply_service_patch(&json!({"tags": {"z": 1}}), t(2)).unwrap_err();
    assert_eq!(e.code, ErrorCode::ArgumentInvalid);
    assert_eq!(twin, before);
    // "z" + 4 (boolean) = 5 fits exactly.
    twin.apply_service_patch(&json!({"tags": {"z": true}}), t(2)).unwrap();
    // Deleting in the same patch frees room for the new value.
    twin.apply_service_patch(&json!({"tags": {"a": null, "y": "x".repeat(4000)}}), t(3)).unwrap();

    let mut twin = TwinState::new(t(0));
    twin.apply_reported_patch(&filler(MAX_REPORTED_SIZE), t(1)).unwrap();
    let before = twin.clone();
    assert!(twin.apply_reported_patch(&json!({"b": "y".repeat(MAX_STRING_BYTES)}), t(2)).is_ok());
    assert_ne!(twin, before, "same-size replacement of one value is fine");
    let before = twin.clone();
    assert!(twin.apply_reported_patch(&json!({"more": false}), t(3)).is_err());
    assert_eq!(twin, before);
}
