//! The JSON side of twin updates: merging a patch into a document and
//! building the desired-property notification for a wholesale replace.
//!
//! Both work on plain property maps; versions and `$metadata` are derived
//! afterwards by comparing the old and new document (see `metadata.rs`), so
//! a patch and a replace stamp metadata the same way.

use serde_json::Value;

use super::Props;

/// Merges `patch` into `target` the way IoT Hub (and RFC 7396) does: objects
/// merge key by key, any other value replaces, `null` deletes the key and its
/// subtree, keys absent from the patch stay. A `null` for a missing key does
/// nothing.
///
/// An object patched onto a missing or non-object value starts from an empty
/// object, so `{"a":{"b":null}}` on `{}` yields `{"a":{}}` (RFC 7396
/// behaviour). Deleted keys are removed with `shift_remove` so the remaining
/// keys keep their order.
pub(crate) fn merge_into(target: &mut Props, patch: &Props) {
    for (key, value) in patch {
        match value {
            Value::Null => {
                target.shift_remove(key);
            }
            Value::Object(sub) => match target.get_mut(key) {
                Some(Value::Object(existing)) => merge_into(existing, sub),
                _ => {
                    let mut fresh = Props::new();
                    merge_into(&mut fresh, sub);
                    target.insert(key.clone(), Value::Object(fresh));
                }
            },
            other => {
                target.insert(key.clone(), other.clone());
            }
        }
    }
}

/// What a device must merge into its copy of the desired properties to end up
/// with `new` when it holds `old`: `new` itself, plus `null` for every key
/// that `old` had and `new` lacks. This is applied at every level where both
/// sides hold an object, because devices merge notifications recursively and
/// would otherwise keep nested keys the replace removed.
pub(crate) fn replacement_notification(old: &Props, new: &Props) -> Props {
    let mut out = Props::new();
    for (key, value) in new {
        let entry = match (old.get(key), value) {
            (Some(Value::Object(o)), Value::Object(n)) => Value::Object(replacement_notification(o, n)),
            _ => value.clone(),
        };
        out.insert(key.clone(), entry);
    }
    for key in old.keys() {
        if !new.contains_key(key) {
            out.insert(key.clone(), Value::Null);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use serde_json::json;

    use super::*;

    fn props(v: Value) -> Props {
        v.as_object().unwrap().clone()
    }

    fn merged(base: Value, patch: Value) -> Value {
        let mut target = props(base);
        merge_into(&mut target, &props(patch));
        Value::Object(target)
    }

    #[test]
    fn objects_merge_key_by_key_and_other_values_replace() {
        let out = merged(
            json!({"a": {"x": 1, "y": 2}, "b": 1, "c": [1, 2]}),
            json!({"a": {"y": 3, "z": 4}, "b": {"new": true}, "c": [3]}),
        );
        assert_eq!(out, json!({"a": {"x": 1, "y": 3, "z": 4}, "b": {"new": true}, "c": [3]}));
        // An object value is replaced by a scalar wholesale.
        assert_eq!(merged(json!({"a": {"x": 1}}), json!({"a": 5})), json!({"a": 5}));
    }

    #[test]
    fn null_deletes_a_key_and_its_subtree() {
        let out = merged(json!({"a": {"x": {"deep": 1}, "y": 2}, "b": 1}), json!({"a": {"x": null}}));
        assert_eq!(out, json!({"a": {"y": 2}, "b": 1}));
        assert_eq!(merged(json!({"a": {"x": 1}, "b": 1}), json!({"a": null})), json!({"b": 1}));
    }

    #[test]
    fn null_for_a_missing_key_is_a_no_op() {
        let base = json!({"a": {"x": 1}});
        assert_eq!(merged(base.clone(), json!({"nope": null})), base);
        assert_eq!(merged(base.clone(), json!({"a": {"nope": null}})), base);
        // RFC 7396: the object is created, the null inside it does nothing.
        assert_eq!(merged(json!({}), json!({"n": {"x": null}})), json!({"n": {}}));
    }

    #[test]
    fn deletion_keeps_the_order_of_remaining_keys() {
        let out = merged(json!({"a": 1, "b": 2, "c": 3, "d": 4}), json!({"b": null}));
        let keys: Vec<_> = out.as_object().unwrap().keys().cloned().collect();
        assert_eq!(keys, ["a", "c", "d"]);
    }

    #[test]
    fn replacement_notification_nulls_removed_keys_at_every_level() {
        let old = props(json!({"keep": 1, "gone": {"x": 1}, "o": {"a": 1, "b": 2}, "s": {"q": 1}}));
        let new = props(json!({"keep": 1, "o": {"a": 5}, "s": 3, "added": true}));
        let n = replacement_notification(&old, &new);
        assert_eq!(
            Value::Object(n),
            json!({"keep": 1, "o": {"a": 5, "b": null}, "s": 3, "added": true, "gone": null})
        );
        // Merging the notification into the old document gives the new one.
        let mut device = old.clone();
        merge_into(&mut device, &replacement_notification(&old, &new));
        assert_eq!(device, new);
    }
}
