//! A configuration's content map (`deviceContent`, `moduleContent`): twin
//! paths such as `properties.desired.firmware.fwVersion` mapped to the value
//! written there.

use serde_json::Value;

use crate::error::{ErrorCode, HubError, HubResult};
use crate::twin::{limits, Props};

/// Every content path starts with this.
pub const DESIRED_PREFIX: &str = "properties.desired.";

/// One setting: a desired property path and the value written there.
#[derive(Debug, Clone, PartialEq)]
pub struct Setting {
    /// Keys below `properties.desired` (`["firmware", "fwVersion"]`).
    pub path: Vec<String>,
    /// The value. `null` removes the property; an object is merged into
    /// what is there (see the module documentation of
    /// [`configuration`](super)).
    pub value: Value,
}

/// The validated settings of one content map, in the order they were sent.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct DeviceContent {
    settings: Vec<Setting>,
}

fn invalid(message: String) -> HubError {
    HubError::new(ErrorCode::InvalidConfigurationContent, message)
}

impl DeviceContent {
    /// Reads and checks a content map (400 InvalidConfigurationContent
    /// naming the path on any violation):
    /// - every key is `properties.desired.` followed by one or more property
    ///   names joined by `.`, each a valid twin key (no `$`, space or control
    ///   character, at most 1 KB);
    /// - no path is a prefix of another (`…firmware` and
    ///   `…firmware.fwVersion` in one configuration would make it its own
    ///   rival);
    /// - each value, placed at its path, passes the twin limits (key rules
    ///   inside objects, string length, integer range, at most 10 object
    ///   levels counted from the desired root), and all settings together fit
    ///   the 32 KB desired document.
    pub fn parse(content: &Props) -> HubResult<Self> {
        let mut settings = Vec::with_capacity(content.len());
        for (key, value) in content {
            let rest = key.strip_prefix(DESIRED_PREFIX).ok_or_else(|| {
                invalid(format!(
                    "Content path '{key}' must start with '{DESIRED_PREFIX}' and name a property"
                ))
            })?;
            let path: Vec<String> = rest.split('.').map(str::to_owned).collect();
            let nested = nest(&path, value.clone());
            limits::validate_props(&nested, "properties.desired")
                .map_err(|e| invalid(format!("Content path '{key}': {}", e.message)))?;
            settings.push(Setting { path, value: value.clone() });
        }
        let mut sorted: Vec<&Vec<String>> = settings.iter().map(|s| &s.path).collect();
        sorted.sort();
        // Sorted, every extension of a path follows it directly.
        if let Some(pair) = sorted.windows(2).find(|w| w[1].starts_with(w[0])) {
            return Err(invalid(format!(
                "Content paths 'properties.desired.{}' and 'properties.desired.{}' overlap; one configuration \
                 may set a property or properties inside it, not both",
                pair[0].join("."),
                pair[1].join(".")
            )));
        }
        let mut whole = Props::new();
        for s in &settings {
            crate::twin::merge_into(&mut whole, &nest(&s.path, s.value.clone()));
        }
        limits::check_size(&whole, limits::MAX_DESIRED_SIZE, "properties.desired")
            .map_err(|e| invalid(format!("The content is too large: {}", e.message)))?;
        Ok(Self { settings })
    }

    /// The settings, in the order they were sent.
    pub fn settings(&self) -> &[Setting] {
        &self.settings
    }

    /// Whether there are no settings.
    pub fn is_empty(&self) -> bool {
        self.settings.is_empty()
    }
}

/// `{path[0]: {path[1]: … value}}`.
fn nest(path: &[String], value: Value) -> Props {
    let mut out = Props::new();
    match path.split_first() {
        None => {}
        Some((first, [])) => {
            out.insert(first.clone(), value);
        }
        Some((first, rest)) => {
            out.insert(first.clone(), Value::Object(nest(rest, value)));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use serde_json::json;

    use super::*;

    fn parse(v: Value) -> HubResult<DeviceContent> {
        DeviceContent::parse(v.as_object().unwrap())
    }

    #[test]
    fn paths_become_keys_and_values_are_kept() {
        let c = parse(json!({
            "properties.desired.firmware": {"fwVersion": "2.8.5", "fwPackageURI": "https://x"},
            "properties.desired.chiller-water.temperature": 66,
            "properties.desired.gone": null,
            "properties.desired.list": [1, {"a": 2}],
        }))
        .unwrap();
        let paths: Vec<_> = c.settings().iter().map(|s| s.path.join("/")).collect();
        assert_eq!(paths, ["firmware", "chiller-water/temperature", "gone", "list"]);
        assert_eq!(c.settings()[0].value, json!({"fwVersion": "2.8.5", "fwPackageURI": "https://x"}));
        assert_eq!(c.settings()[2].value, json!(null));
        assert!(parse(json!({})).unwrap().is_empty());
    }

    #[test]
    fn bad_paths_are_invalid_content() {
        for bad in [
            json!({"properties.reported.x": 1}),
            json!({"properties.desired": {"x": 1}}),
            json!({"properties.desired.": 1}),
            json!({"properties.desired.a..b": 1}),
            json!({"properties.desired.$version": 1}),
            json!({"properties.desired.a b": 1}),
            json!({"tags.x": 1}),
            json!({"x": 1}),
        ] {
            let e = parse(bad.clone()).unwrap_err();
            assert_eq!(e.code, ErrorCode::InvalidConfigurationContent, "{bad}");
        }
    }

    #[test]
    fn values_follow_the_twin_limits_from_the_desired_root() {
        let e = parse(json!({"properties.desired.a": {"b c": 1}})).unwrap_err();
        assert_eq!(e.code, ErrorCode::InvalidConfigurationContent);
        assert!(e.message.contains("properties.desired.a.b c"), "{}", e.message);
        // l1..l9 hold object levels 1..9, the value's inner object is level
        // 10: fine; one more level is not.
        let nine = (1..=9).map(|i| format!("l{i}")).collect::<Vec<_>>().join(".");
        assert!(parse(json!({ format!("properties.desired.{nine}"): {"x": {"y": 1}} })).is_ok());
        assert!(parse(json!({ format!("properties.desired.{nine}"): {"x": {"y": {"z": 1}}} })).is_err());
        assert!(parse(json!({"properties.desired.s": "x".repeat(limits::MAX_STRING_BYTES + 1)})).is_err());
        let big: Props =
            (0..9).map(|i| (format!("properties.desired.k{i}"), json!("x".repeat(4000)))).collect();
        let e = DeviceContent::parse(&big).unwrap_err();
        assert_eq!(e.code, ErrorCode::InvalidConfigurationContent);
        assert!(e.message.contains("too large"), "{}", e.message);
    }

    #[test]
    fn overlapping_paths_in_one_configuration_are_refused() {
        let e = parse(json!({
            "properties.desired.firmware": {"fwVersion": "1"},
            "properties.desired.other": 1,
            "properties.desired.firmware.fwVersion": "2",
        }))
        .unwrap_err();
        assert_eq!(e.code, ErrorCode::InvalidConfigurationContent);
        assert!(e.message.contains("overlap"), "{}", e.message);
        // Siblings and shared prefixes of names are fine.
        assert!(parse(
            json!({"properties.desired.a.b": 1, "properties.desired.a.c": 2, "properties.desired.ab": 3})
        )
        .is_ok());
    }
}
