//! az's generic update, `--set path=value`: the value is JSON when it parses
//! as JSON (or as Python's `True`/`False`/`None`), else a string; the path is
//! dot-separated keys with optional `[index]` into lists. Existing keys match
//! case-insensitively or by their snake_case spelling, as az's does;
//! missing objects along the way are created.

use anyhow::{anyhow, bail};
use serde_json::{Map, Value};

/// One step of a `--set` path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Step {
    /// An object key.
    Key(String),
    /// A list index.
    Index(usize),
}

/// A parsed `--set path=value`.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct SetOp {
    /// Where.
    pub(crate) path: Vec<Step>,
    /// What.
    pub(crate) value: Value,
}

/// Parses `path=value`.
pub(crate) fn parse_set(expression: &str) -> anyhow::Result<SetOp> {
    let (path, value) =
        expression.split_once('=').ok_or_else(|| anyhow!("--set expects PATH=VALUE, got '{expression}'"))?;
    let path = parse_path(path.trim())?;
    Ok(SetOp { path, value: parse_value(value) })
}

fn parse_value(text: &str) -> Value {
    if let Ok(v) = serde_json::from_str(text) {
        return v;
    }
    match text {
        "True" => Value::Bool(true),
        "False" => Value::Bool(false),
        "None" => Value::Null,
        _ => Value::String(text.to_owned()),
    }
}

fn parse_path(path: &str) -> anyhow::Result<Vec<Step>> {
    if path.is_empty() {
        bail!("--set needs a property path before '='");
    }
    let mut steps = Vec::new();
    for part in path.split('.') {
        let (key, mut rest) = match part.find('[') {
            Some(i) => (&part[..i], &part[i..]),
            None => (part, ""),
        };
        if key.is_empty() && (steps.is_empty() || rest.is_empty()) {
            bail!("--set path '{path}' has an empty property name");
        }
        if !key.is_empty() {
            steps.push(Step::Key(key.to_owned()));
        }
        while !rest.is_empty() {
            let close = rest.find(']').ok_or_else(|| anyhow!("--set path '{path}': missing ']'"))?;
            let index = rest[1..close]
                .trim()
                .parse()
                .map_err(|_| anyhow!("--set path '{path}': '{}' is not a list index", &rest[1..close]))?;
            steps.push(Step::Index(index));
            rest = &rest[close + 1..];
            if !rest.is_empty() && !rest.starts_with('[') {
                bail!("--set path '{path}': unexpected '{rest}'");
            }
        }
    }
    Ok(steps)
}

fn camel_from_snake(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut upper = false;
    for c in s.chars() {
        if c == '_' {
            upper = true;
        } else if upper {
            out.extend(c.to_uppercase());
            upper = false;
        } else {
            out.push(c);
        }
    }
    out
}

/// The existing key `wanted` refers to, if any.
fn existing_key(map: &Map<String, Value>, wanted: &str) -> Option<String> {
    if map.contains_key(wanted) {
        return Some(wanted.to_owned());
    }
    let camel = camel_from_snake(wanted);
    map.keys().find(|k| k.eq_ignore_ascii_case(wanted) || k.eq_ignore_ascii_case(&camel)).cloned()
}

/// Applies one `--set` to `target`.
pub(crate) fn apply_set(target: &mut Value, op: &SetOp) -> anyhow::Result<()> {
    let Some((last, parents)) = op.path.split_last() else { bail!("--set needs a property path") };
    let mut here = target;
    let mut walked = String::new();
    for step in parents {
        here = child(here, step, &walked, true)?;
        describe(&mut walked, step);
    }
    match last {
        Step::Key(key) => {
            let Value::Object(map) = here else { bail!("cannot set '{key}': '{walked}' is not an object") };
            let key = existing_key(map, key).unwrap_or_else(|| key.clone());
            map.insert(key, op.value.clone());
        }
        Step::Index(_) => *child(here, last, &walked, false)? = op.value.clone(),
    }
    Ok(())
}

fn child<'a>(here: &'a mut Value, step: &Step, walked: &str, create: bool) -> anyhow::Result<&'a mut Value> {
    let place = if walked.is_empty() { "the top level".to_owned() } else { format!("'{walked}'") };
    match step {
        Step::Key(key) => {
            if here.is_null() && create {
                *here = Value::Object(Map::new());
            }
            let Value::Object(map) = here else { bail!("cannot set below {place}: it is not an object") };
            let key = existing_key(map, key).unwrap_or_else(|| key.clone());
            Ok(map.entry(key).or_insert_with(|| Value::Object(Map::new())))
        }
        Step::Index(i) => {
            let Value::Array(items) = here else { bail!("cannot index {place}: it is not a list") };
            let len = items.len();
            items.get_mut(*i).ok_or_else(|| anyhow!("index {i} is out of range for {place} (length {len})"))
        }
    }
}

fn describe(walked: &mut String, step: &Step) {
    match step {
        Step::Key(k) => {
            if !walked.is_empty() {
                walked.push('.');
            }
            walked.push_str(k);
        }
        Step::Index(i) => walked.push_str(&format!("[{i}]")),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use serde_json::json;

    fn set(target: &mut Value, expr: &str) -> anyhow::Result<()> {
        apply_set(target, &parse_set(expr)?)
    }

    #[test]
    fn values_are_json_else_strings() {
        assert_eq!(
            parse_set(r#"tags={"devicetype":"chiller"}"#).unwrap().value,
            json!({"devicetype": "chiller"})
        );
        assert_eq!(parse_set("a=1").unwrap().value, json!(1));
        assert_eq!(parse_set("a=true").unwrap().value, json!(true));
        assert_eq!(parse_set("a=True").unwrap().value, json!(true));
        assert_eq!(parse_set("a=null").unwrap().value, Value::Null);
        assert_eq!(parse_set("a=disabled").unwrap().value, json!("disabled"));
        assert_eq!(parse_set("a=x=y").unwrap().value, json!("x=y"));
        assert_eq!(parse_set("a=").unwrap().value, json!(""));
        assert!(parse_set("novalue").is_err());
        assert!(parse_set("=1").is_err());
    }

    #[test]
    fn sets_existing_keys_matching_case_or_snake_case() {
        let mut device =
            json!({"status": "enabled", "statusReason": null, "capabilities": {"iotEdge": false}});
        set(&mut device, "status=disabled").unwrap();
        set(&mut device, "status_reason=maintenance").unwrap();
        set(&mut device, "capabilities.IotEdge=true").unwrap();
        assert_eq!(
            device,
            json!({"status": "disabled", "statusReason": "maintenance", "capabilities": {"iotEdge": true}})
        );
    }

    #[test]
    fn creates_missing_objects_and_indexes_lists() {
        let mut twin = json!({"properties": {"desired": {"list": [1, 2]}}});
        set(&mut twin, "properties.desired.fw.version=\"1.2\"").unwrap();
        set(&mut twin, "properties.desired.list[1]=5").unwrap();
        assert_eq!(twin, json!({"properties": {"desired": {"list": [1, 5], "fw": {"version": "1.2"}}}}));
        assert!(set(&mut twin, "properties.desired.list[7]=1").is_err());
        assert!(set(&mut twin, "properties.desired.list.x=1").is_err());
        assert!(set(&mut twin, "properties.desired.fw.version.deeper=1").is_err());
    }
}
