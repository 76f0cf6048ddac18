//! Field rules of a configuration: id, labels, priority and custom metric
//! names. Content rules are in `content.rs`, condition and query syntax are
//! checked by the caller's [`QueryChecks`](super::QueryChecks).

use std::collections::BTreeMap;

use serde_json::Value;

use crate::error::{ErrorCode, HubError, HubResult};
use crate::twin::Props;

/// Longest configuration id.
pub const MAX_ID_LEN: usize = 128;
/// Longest label key or value.
pub const MAX_LABEL_LEN: usize = 128;
/// Longest custom metric name.
pub const MAX_METRIC_NAME_LEN: usize = 128;
/// Most custom metrics one configuration may define.
pub const MAX_CUSTOM_METRICS: usize = 5;
/// Most configurations a hub holds (Azure's limit for paid hubs).
pub const MAX_CONFIGURATIONS: usize = 100;
/// Highest priority: the SDKs model priority as a 32-bit integer (.NET `int`).
pub const MAX_PRIORITY: i64 = i32::MAX as i64;

/// Characters besides lowercase ASCII letters and digits allowed in an id: the
/// set the hub names in its own error text ("Up to 128 lowercase letters,
/// numbers and the following characters are allowed [ -:+%_#*?!(),=@;' ]").
const ID_EXTRA: &str = "-:+%_#*?!(),=@;'";
/// Characters besides ASCII letters and digits allowed in label keys and
/// values (and, by ferrohub's choice, custom metric names).
const LABEL_EXTRA: &str = "-:.+%_#*?!(),=@;'";

/// Checks a configuration id: 1 to 128 characters, each a lowercase ASCII
/// letter, a digit or one of `- : + % _ # * ? ! ( ) , = @ ; '`. Uppercase,
/// `.`, `/`, `$`, spaces and everything else are refused (400
/// ArgumentInvalid).
pub fn validate_configuration_id(id: &str) -> HubResult<()> {
    if id.is_empty() || id.chars().count() > MAX_ID_LEN {
        return Err(HubError::invalid(format!(
            "The configuration id must be 1 to {MAX_ID_LEN} characters long"
        )));
    }
    let allowed = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit() || ID_EXTRA.contains(c);
    if let Some(bad) = id.chars().find(|c| !allowed(*c)) {
        return Err(HubError::invalid(format!(
            "The configuration id '{}' contains '{}'; up to {MAX_ID_LEN} lowercase letters, numbers and the \
             characters [-:+%_#*?!(),=@;'] are allowed",
            id.escape_default(),
            bad.escape_default()
        )));
    }
    Ok(())
}

fn label_text_ok(text: &str) -> bool {
    text.chars().all(|c| c.is_ascii_alphanumeric() || LABEL_EXTRA.contains(c))
}

/// Checks labels as a client sent them and returns them as strings: keys 1
/// to 128 and values 0 to 128 ASCII letters, digits or
/// `- : . + % _ # * ? ! ( ) , = @ ; '` (so `$`, reserved by Azure, never
/// passes). Values must be strings. 400 ArgumentInvalid otherwise.
pub fn validate_labels(labels: &Props) -> HubResult<BTreeMap<String, String>> {
    let mut out = BTreeMap::new();
    for (key, value) in labels {
        if key.is_empty() || key.len() > MAX_LABEL_LEN || !label_text_ok(key) {
            return Err(HubError::invalid(format!(
                "Label key '{}' is invalid: 1 to {MAX_LABEL_LEN} ASCII letters, digits or [-:.+%_#*?!(),=@;'] \
                 ('$' is reserved)",
                key.escape_default()
            )));
        }
        let Value::String(value) = value else {
            return Err(HubError::invalid(format!("The value of label '{key}' must be a string")));
        };
        if value.len() > MAX_LABEL_LEN || !label_text_ok(value) {
            return Err(HubError::invalid(format!(
                "The value of label '{key}' is invalid: at most {MAX_LABEL_LEN} ASCII letters, digits or \
                 [-:.+%_#*?!(),=@;']"
            )));
        }
        out.insert(key.clone(), value.clone());
    }
    Ok(out)
}

/// Checks a priority: an integer from 0 to [`MAX_PRIORITY`]. Azure documents
/// "a positive integer"; 0 is accepted because SDKs send 0 for an unset
/// priority (.NET's default). `null` means 0. 400 ArgumentInvalid otherwise.
pub fn validate_priority(priority: &Value) -> HubResult<i64> {
    match priority {
        Value::Null => Ok(0),
        Value::Number(n) => match n.as_i64() {
            Some(p) if (0..=MAX_PRIORITY).contains(&p) => Ok(p),
            _ => Err(HubError::invalid(format!(
                "priority must be an integer from 0 to {MAX_PRIORITY}, not {n}"
            ))),
        },
        other => Err(HubError::invalid(format!("priority must be an integer, not {other}"))),
    }
}

/// Checks custom metric definitions as sent (`name → query`): at most
/// [`MAX_CUSTOM_METRICS`], names like label keys, queries non-empty strings
/// accepted by `check`. Errors are 400 InvalidConfigurationCustomMetricsQuery.
pub fn validate_metric_queries(queries: &Props, check: &dyn Fn(&str) -> Result<(), String>) -> HubResult<()> {
    let err = |m: String| HubError::new(ErrorCode::InvalidConfigurationCustomMetricsQuery, m);
    if queries.len() > MAX_CUSTOM_METRICS {
        return Err(err(format!(
            "A configuration may define at most {MAX_CUSTOM_METRICS} custom metrics, not {}",
            queries.len()
        )));
    }
    for (name, query) in queries {
        if name.is_empty() || name.len() > MAX_METRIC_NAME_LEN || !label_text_ok(name) {
            return Err(err(format!(
                "Metric name '{}' is invalid: 1 to {MAX_METRIC_NAME_LEN} ASCII letters, digits or \
                 [-:.+%_#*?!(),=@;']",
                name.escape_default()
            )));
        }
        let Value::String(query) = query else {
            return Err(err(format!("The query of metric '{name}' must be a string")));
        };
        if query.trim().is_empty() {
            return Err(err(format!("The query of metric '{name}' is empty")));
        }
        check(query).map_err(|e| err(format!("The query of metric '{name}' is invalid: {e}")))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use serde_json::json;

    use super::*;

    fn props(v: Value) -> Props {
        v.as_object().unwrap().clone()
    }

    #[test]
    fn ids_are_lowercase_with_azures_specials() {
        for ok in ["firmware285", "a", "x-y:z+1%_#*?!(),=@;'", &"a".repeat(128)] {
            assert!(validate_configuration_id(ok).is_ok(), "{ok}");
        }
        for bad in ["", "Firmware", "has space", "a.b", "a/b", "a$b", "ü", "a[b]", &"a".repeat(129)] {
            let e = validate_configuration_id(bad).unwrap_err();
            assert_eq!(e.code, ErrorCode::ArgumentInvalid, "{bad}");
        }
    }

    #[test]
    fn labels_follow_the_documented_alphabet() {
        let ok =
            props(json!({"HostPlatform": "Linux", "Version": "3.0.1", "k-:.+%_#*?!(),=@;'": "", "x": "A"}));
        assert_eq!(validate_labels(&ok).unwrap().len(), 4);
        for bad in [
            json!({"$reserved": "x"}),
            json!({"": "x"}),
            json!({"sp ace": "x"}),
            json!({"k": "sp ace"}),
            json!({"k": 1}),
            json!({"k": null}),
            json!({"k": "é"}),
            json!({ "k".repeat(129): "x" }),
            json!({"k": "v".repeat(129)}),
        ] {
            assert_eq!(
                validate_labels(&props(bad.clone())).unwrap_err().code,
                ErrorCode::ArgumentInvalid,
                "{bad}"
            );
        }
    }

    #[test]
    fn priority_is_a_non_negative_32_bit_integer() {
        assert_eq!(validate_priority(&json!(20)).unwrap(), 20);
        assert_eq!(validate_priority(&json!(0)).unwrap(), 0);
        assert_eq!(validate_priority(&json!(null)).unwrap(), 0);
        assert_eq!(validate_priority(&json!(MAX_PRIORITY)).unwrap(), MAX_PRIORITY);
        for bad in [json!(-1), json!(1.5), json!("10"), json!(MAX_PRIORITY + 1), json!(true)] {
            assert_eq!(validate_priority(&bad).unwrap_err().code, ErrorCode::ArgumentInvalid, "{bad}");
        }
    }

    #[test]
    fn metrics_are_limited_named_and_checked() {
        let accept = |_: &str| Ok(());
        let five = props(json!({"a": "q", "b": "q", "c": "q", "d": "q", "e": "q"}));
        assert!(validate_metric_queries(&five, &accept).is_ok());
        let mut six = five.clone();
        six.insert("f".into(), json!("q"));
        let code = |q: &Props, check: &dyn Fn(&str) -> Result<(), String>| {
            validate_metric_queries(q, check).unwrap_err().code
        };
        assert_eq!(code(&six, &accept), ErrorCode::InvalidConfigurationCustomMetricsQuery);
        for bad in
            [json!({"": "q"}), json!({"$x": "q"}), json!({"a": ""}), json!({"a": 1}), json!({"a": null})]
        {
            assert_eq!(
                code(&props(bad.clone()), &accept),
                ErrorCode::InvalidConfigurationCustomMetricsQuery,
                "{bad}"
            );
        }
        let reject = |q: &str| Err(format!("bad token in {q}"));
        let e = validate_metric_queries(&props(json!({"m": "SELECT"})), &reject).unwrap_err();
        assert_eq!(e.code, ErrorCode::InvalidConfigurationCustomMetricsQuery);
        assert!(e.message.contains("'m'") && e.message.contains("bad token in SELECT"), "{}", e.message);
    }
}
