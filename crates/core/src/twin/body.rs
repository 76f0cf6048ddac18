//! Reading the parts of a twin request body that an operation uses.
//!
//! Clients often send back (parts of) a twin they read, so bodies carry
//! fields the hub writes itself (`deviceId`, `etag`, `version`, `status`, …).
//! Those are ignored; only the shape of the parts used is checked, and a
//! wrong shape is a 400 IotHubFormatError, never a panic.

use serde_json::Value;

use super::Props;
use crate::error::{HubError, HubResult};

/// Section keys the hub writes. A twin read over REST carries them inside
/// `properties.desired`/`reported`, so a body echoing a twin back has them
/// too; they are dropped, not treated as (invalid) property names.
const SYSTEM_KEYS: [&str; 2] = ["$metadata", "$version"];

/// The used parts of a service-side twin body (PATCH or PUT).
#[derive(Debug, Default)]
pub(super) struct ServiceBody {
    /// `tags`, when present and not `null`.
    pub(super) tags: Option<Props>,
    /// `properties.desired` without `$metadata`/`$version`, when present and
    /// not `null`.
    pub(super) desired: Option<Props>,
    /// Whether `properties.reported` holds anything but `$metadata`/`$version`
    /// (any non-object, non-null value counts as content).
    pub(super) reported_has_content: bool,
}

/// Splits a service twin body. `null` for `tags`, `properties` or
/// `properties.desired` means "not given".
pub(super) fn service_body(body: &Value) -> HubResult<ServiceBody> {
    let root = body.as_object().ok_or_else(|| HubError::format("The twin body must be a JSON object"))?;
    let tags = optional_object(root.get("tags"), "tags")?;
    let Some(properties) = optional_object(root.get("properties"), "properties")? else {
        return Ok(ServiceBody { tags, ..ServiceBody::default() });
    };
    let desired = optional_object(properties.get("desired"), "properties.desired")?.map(strip_system_keys);
    let reported_has_content = match properties.get("reported") {
        None | Some(Value::Null) => false,
        Some(Value::Object(r)) => r.keys().any(|k| !SYSTEM_KEYS.contains(&k.as_str())),
        Some(_) => true,
    };
    Ok(ServiceBody { tags, desired, reported_has_content })
}

/// A device's reported-properties patch: must be an object. System keys are
/// not stripped here: a device sends a bare patch, never a twin it read, so a
/// `$`-key is an invalid property name and the limits reject it.
pub(super) fn reported_patch(patch: &Value) -> HubResult<Props> {
    patch
        .as_object()
        .cloned()
        .ok_or_else(|| HubError::format("The reported properties patch must be a JSON object"))
}

fn optional_object(value: Option<&Value>, name: &str) -> HubResult<Option<Props>> {
    match value {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Object(o)) => Ok(Some(o.clone())),
        Some(_) => Err(HubError::format(format!("'{name}' must be a JSON object"))),
    }
}

fn strip_system_keys(mut props: Props) -> Props {
    for key in SYSTEM_KEYS {
        props.shift_remove(key);
    }
    props
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use serde_json::json;

    use super::*;
    use crate::error::ErrorCode;

    #[test]
    fn reads_tags_and_desired_and_ignores_read_only_fields() {
        let b = service_body(&json!({
            "deviceId": "d1", "etag": "AAAAAAAAAAE=", "version": 4, "status": "enabled",
            "tags": {"t": 1},
            "properties": {"desired": {"d": 2, "$metadata": {}, "$version": 3}},
        }))
        .unwrap();
        assert_eq!(Value::Object(b.tags.unwrap()), json!({"t": 1}));
        assert_eq!(Value::Object(b.desired.unwrap()), json!({"d": 2}));
        assert!(!b.reported_has_content);
    }

    #[test]
    fn missing_and_null_parts_are_not_given() {
        for body in [json!({}), json!({"tags": null, "properties": null}), json!({"properties": {}})] {
            let b = service_body(&body).unwrap();
            assert!(b.tags.is_none() && b.desired.is_none() && !b.reported_has_content, "{body}");
        }
    }

    #[test]
    fn reported_content_is_anything_but_system_keys() {
        let has =
            |r: Value| service_body(&json!({"properties": {"reported": r}})).unwrap().reported_has_content;
        assert!(!has(json!(null)));
        assert!(!has(json!({})));
        assert!(!has(json!({"$metadata": {"$lastUpdated": "x"}, "$version": 1})));
        assert!(has(json!({"temp": 1})));
        assert!(has(json!("x")));
    }

    #[test]
    fn wrong_shapes_are_format_errors() {
        for body in [
            json!([]),
            json!("twin"),
            json!({"tags": []}),
            json!({"properties": 1}),
            json!({"properties": {"desired": "x"}}),
        ] {
            assert_eq!(service_body(&body).unwrap_err().code, ErrorCode::IotHubFormatError, "{body}");
        }
        assert_eq!(reported_patch(&json!(null)).unwrap_err().code, ErrorCode::IotHubFormatError);
        assert!(reported_patch(&json!({"a": 1})).is_ok());
    }
}
