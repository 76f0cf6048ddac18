//! IoT Hub's format limits for tags, desired and reported properties.
//!
//! Every check here runs before a twin is changed, so a rejected operation
//! leaves the twin exactly as it was. All violations are 400 ArgumentInvalid
//! (Azure documents only "rejected with an error" for oversized documents; the
//! SDKs map any 400 to their argument error) and the message names the path.
//!
//! Decisions on points the reference leaves open:
//! - Arrays are accepted. Older docs forbid them, but current SDKs model them
//!   (.NET `TwinCollectionArray`), so devices written against those SDKs would
//!   otherwise break. Array elements are values: `null` inside an array is a
//!   value (not a delete), strings and numbers follow the value rules, objects
//!   inside arrays follow the key rules and count as object levels; an array
//!   itself adds no level.
//! - "Control character" means Unicode category Cc (C0, DEL and C1), which is
//!   what .NET's `char.IsControl` (and Rust's `char::is_control`) test.

use serde_json::Value;

use super::Props;
use crate::error::{HubError, HubResult};

/// Longest key, in UTF-8 bytes.
pub const MAX_KEY_BYTES: usize = 1024;
/// Longest string value, in UTF-8 bytes.
pub const MAX_STRING_BYTES: usize = 4096;
/// Deepest object level inside a section; see [`validate_props`].
pub const MAX_DEPTH: usize = 10;
/// Largest `tags` document, in Azure's size units ([`document_size`]).
pub const MAX_TAGS_SIZE: usize = 8 * 1024;
/// Largest `properties.desired` document.
pub const MAX_DESIRED_SIZE: usize = 32 * 1024;
/// Largest `properties.reported` document.
pub const MAX_REPORTED_SIZE: usize = 32 * 1024;
/// Smallest integer a twin may hold (−2^52).
pub const MIN_INT: i64 = -4_503_599_627_370_496;
/// Largest integer a twin may hold (2^52 − 1).
pub const MAX_INT: i64 = 4_503_599_627_370_495;

/// Checks one property key: non-empty, at most [`MAX_KEY_BYTES`], and free of
/// `.`, `$`, space and control characters. `path` is the key's full path, for
/// the message.
pub fn validate_key(key: &str, path: &str) -> HubResult<()> {
    if key.is_empty() {
        return Err(HubError::invalid(format!("Empty property name under '{path}'")));
    }
    if key.len() > MAX_KEY_BYTES {
        return Err(HubError::invalid(format!(
            "Property name '{path}' is {} bytes long; the limit is {MAX_KEY_BYTES} bytes",
            key.len()
        )));
    }
    if let Some(bad) = key.chars().find(|c| matches!(c, '.' | '$' | ' ') || c.is_control()) {
        return Err(HubError::invalid(format!(
            "Property name '{}' contains '{}', which is not allowed (no '.', '$', space or control characters)",
            path.escape_default(),
            bad.escape_default()
        )));
    }
    Ok(())
}

/// Checks every key and value of a patch or document rooted at a section
/// (`path` names the section, e.g. `properties.desired`).
///
/// Depth counting follows the example in Azure's twin guide: a property
/// directly in the section root is at depth 1, and an object held by a
/// property at depth d is object level d. Object levels 1 to [`MAX_DEPTH`]
/// are allowed, so the guide's `one.two.….ten` chain of objects may still
/// hold a leaf (`ten.property`), but an eleventh object is rejected.
///
/// Keys whose value is `null` (deletes) are checked too: a delete of an
/// unwritable key is as malformed as a write.
pub fn validate_props(props: &Props, path: &str) -> HubResult<()> {
    walk_object(props, path, 0)
}

fn walk_object(props: &Props, path: &str, level: usize) -> HubResult<()> {
    for (key, value) in props {
        let child = format!("{path}.{key}");
        validate_key(key, &child)?;
        validate_value(value, &child, level)?;
    }
    Ok(())
}

/// `level` is the object level of the container holding `value`.
fn validate_value(value: &Value, path: &str, level: usize) -> HubResult<()> {
    match value {
        Value::Null | Value::Bool(_) => Ok(()),
        Value::String(s) if s.len() > MAX_STRING_BYTES => Err(HubError::invalid(format!(
            "The string at '{path}' is {} bytes long; the limit is {MAX_STRING_BYTES} bytes",
            s.len()
        ))),
        Value::String(_) => Ok(()),
        Value::Number(n) => {
            // Integers beyond i64/u64 are parsed as floats by serde_json and
            // pass as floats; only values that are integers are range-checked.
            let out_of_range = match (n.as_i64(), n.as_u64()) {
                (Some(i), _) => !(MIN_INT..=MAX_INT).contains(&i),
                (None, Some(_)) => true, // above i64::MAX
                (None, None) => false,   // a float
            };
            if out_of_range {
                Err(HubError::invalid(format!(
                    "The integer {n} at '{path}' is outside {MIN_INT}..={MAX_INT}"
                )))
            } else {
                Ok(())
            }
        }
        Value::Object(o) => {
            if level + 1 > MAX_DEPTH {
                return Err(HubError::invalid(format!(
                    "'{path}' nests objects deeper than {MAX_DEPTH} levels"
                )));
            }
            walk_object(o, path, level + 1)
        }
        Value::Array(items) => {
            for (i, item) in items.iter().enumerate() {
                validate_value(item, &format!("{path}[{i}]"), level)?;
            }
            Ok(())
        }
    }
}

/// Azure's size of a document: the sum over its properties of the key's UTF-8
/// length plus the value's size ([`value_size`]).
pub fn document_size(props: &Props) -> usize {
    props.iter().map(|(k, v)| k.len() + value_size(v)).sum()
}

/// Size of one value: strings count their characters except control
/// characters, numbers 8, booleans 4, `null` 0 (only reachable inside arrays:
/// a stored document never holds a null property), objects the size of their
/// contents, arrays the sum of their elements.
pub fn value_size(value: &Value) -> usize {
    match value {
        Value::Null => 0,
        Value::Bool(_) => 4,
        Value::Number(_) => 8,
        Value::String(s) => s.chars().filter(|c| !c.is_control()).count(),
        Value::Object(o) => document_size(o),
        Value::Array(items) => items.iter().map(value_size).sum(),
    }
}

/// Rejects a (merged) document larger than `limit`.
pub fn check_size(props: &Props, limit: usize, path: &str) -> HubResult<()> {
    let size = document_size(props);
    if size > limit {
        return Err(HubError::invalid(format!("'{path}' would be {size} bytes; the limit is {limit} bytes")));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use serde_json::json;

    use super::*;
    use crate::error::ErrorCode;

    fn props(v: Value) -> Props {
        v.as_object().unwrap().clone()
    }

    fn nested(levels: usize, leaf: Value) -> Value {
        (0..levels).fold(leaf, |inner, i| json!({ format!("l{}", levels - i): inner }))
    }

    #[test]
    fn keys_follow_azure_rules() {
        let at_limit = "k".repeat(MAX_KEY_BYTES);
        assert!(validate_key(&at_limit, "p").is_ok());
        assert!(validate_key("ünïcödé-_~:;", "p").is_ok());
        for bad in ["", "a.b", "$a", "a b", "a\u{0}", "a\u{1f}", "a\u{7f}", "a\u{85}", "a\u{9f}"] {
            let e = validate_key(bad, "p").unwrap_err();
            assert_eq!(e.code, ErrorCode::ArgumentInvalid, "{bad:?}");
        }
        // 1025 bytes, counted in UTF-8 bytes, not characters.
        assert!(validate_key(&"k".repeat(MAX_KEY_BYTES + 1), "p").is_err());
        assert!(validate_key(&"é".repeat(513), "p").is_err());
        assert!(validate_key(&"é".repeat(512), "p").is_ok());
    }

    #[test]
    fn messages_name_the_full_path() {
        let e = validate_props(&props(json!({"a": {"b": {"bad.key": null}}})), "tags").unwrap_err();
        assert!(e.message.contains("tags.a.b.bad.key"), "{}", e.message);
        let e = validate_props(&props(json!({"a": [1, {"x": 1, "y z": 1}]})), "d").unwrap_err();
        assert!(e.message.contains("d.a[1].y z"), "{}", e.message);
    }

    #[test]
    fn depth_allows_ten_object_levels_with_a_leaf_inside() {
        // The guide's example: objects one..ten, then "property": "value".
        let ok = props(nested(10, json!({"property": "value"})));
        assert!(validate_props(&ok, "tags").is_ok());
        assert!(validate_props(&props(nested(10, json!({}))), "tags").is_ok());
        let too_deep = props(nested(11, json!({})));
        let e = validate_props(&too_deep, "tags").unwrap_err();
        assert!(e.message.contains("deeper than 10"), "{}", e.message);
    }

    #[test]
    fn objects_in_arrays_count_as_levels_and_follow_key_rules() {
        // l1..l9 are objects, l10 an array whose object element is level 10.
        let ok = props(nested(10, json!([{"x": 1}])));
        assert!(validate_props(&ok, "p").is_ok());
        let too_deep = props(nested(11, json!([{"x": 1}])));
        assert!(validate_props(&too_deep, "p").is_err());
        assert!(validate_props(&props(json!({"a": [{"$x": 1}]})), "p").is_err());
        assert!(validate_props(&props(json!({"a": [null, [true, "s"]]})), "p").is_ok());
    }

    #[test]
    fn strings_are_limited_in_utf8_bytes() {
        let ok = props(json!({"s": "é".repeat(MAX_STRING_BYTES / 2)}));
        assert!(validate_props(&ok, "p").is_ok());
        let over = props(json!({"s": format!("{}a", "é".repeat(MAX_STRING_BYTES / 2))}));
        assert!(validate_props(&over, "p").is_err());
        assert!(validate_props(&props(json!({"a": ["x".repeat(MAX_STRING_BYTES + 1)]})), "p").is_err());
    }

    #[test]
    fn integers_are_bounded_and_floats_pass() {
        for ok in [json!(MAX_INT), json!(MIN_INT), json!(1.5), json!(-1e300), json!(0)] {
            assert!(validate_props(&props(json!({ "n": ok })), "p").is_ok(), "{ok}");
        }
        for bad in [json!(MAX_INT + 1), json!(MIN_INT - 1), json!(u64::MAX), json!(i64::MIN)] {
            assert!(validate_props(&props(json!({ "n": bad })), "p").is_err(), "{bad}");
        }
    }

    #[test]
    fn size_follows_azures_algorithm() {
        assert_eq!(document_size(&props(json!({"ab": "xyz"}))), 5);
        assert_eq!(document_size(&props(json!({"n": 1, "f": 2.5, "b": true}))), 1 + 8 + 1 + 8 + 1 + 4);
        // Characters, not bytes; control characters are not counted.
        assert_eq!(document_size(&props(json!({"k": "é\u{1}\u{85}a"}))), 1 + 2);
        // Keys count in UTF-8 bytes.
        assert_eq!(document_size(&props(json!({"é": true}))), 2 + 4);
        assert_eq!(document_size(&props(json!({"o": {"in": 1, "x": {}}}))), 1 + (2 + 8) + 1);
        assert_eq!(document_size(&props(json!({"a": [1, "ab", null, {"k": false}]}))), 1 + 8 + 2 + 1 + 4);
    }

    #[test]
    fn check_size_accepts_exactly_the_limit() {
        let doc = props(json!({"k": "x".repeat(99)}));
        assert!(check_size(&doc, 100, "tags").is_ok());
        let e = check_size(&doc, 99, "tags").unwrap_err();
        assert_eq!(e.code, ErrorCode::ArgumentInvalid);
        assert!(e.message.contains("'tags' would be 100 bytes"), "{}", e.message);
    }
}
