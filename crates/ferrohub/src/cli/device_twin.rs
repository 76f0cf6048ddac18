//! `ferrohub device-twin show|update|replace`.

use std::path::Path;

use anyhow::{bail, Context as _};
use serde_json::{Map, Value};

use super::args::{DeviceTwinCommand, TwinReplaceArgs, TwinUpdateArgs};
use super::context::Context;
use super::generic_update::{apply_set, parse_set, SetOp, Step};
use super::Outcome;

/// Runs one `device-twin` subcommand.
pub(crate) async fn run(command: DeviceTwinCommand) -> anyhow::Result<Outcome> {
    match command {
        DeviceTwinCommand::Show(args) => {
            let ctx = Context::resolve(&args.common)?;
            let twin = ctx.client()?.get_twin(&args.device_id).await?;
            Outcome::value(&ctx, &twin)
        }
        DeviceTwinCommand::Update(args) => update(args).await,
        DeviceTwinCommand::Replace(args) => replace(args).await,
    }
}

/// Which writable section of a twin a `--set` path lands in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Section {
    Tags,
    Desired,
}

fn section_of(op: &SetOp) -> anyhow::Result<Section> {
    let key = |i: usize| match op.path.get(i) {
        Some(Step::Key(k)) => Some(k.to_ascii_lowercase()),
        _ => None,
    };
    match (key(0).as_deref(), key(1).as_deref()) {
        (Some("tags"), _) => Ok(Section::Tags),
        (Some("properties"), Some("desired")) => Ok(Section::Desired),
        _ => bail!("--set can only change tags and properties.desired of a twin"),
    }
}

fn parse_object(flag: &str, text: &str) -> anyhow::Result<Map<String, Value>> {
    match serde_json::from_str(text) {
        Ok(Value::Object(map)) => Ok(map),
        Ok(_) => bail!("{flag} must be a JSON object"),
        Err(e) => bail!("{flag} is not valid JSON: {e}"),
    }
}

/// Merges `from` into `into` recursively (objects merge, anything else
/// replaces).
fn merge(into: &mut Map<String, Value>, from: Map<String, Value>) {
    for (k, v) in from {
        match (into.get_mut(&k), v) {
            (Some(Value::Object(existing)), Value::Object(incoming)) => merge(existing, incoming),
            (_, v) => {
                into.insert(k, v);
            }
        }
    }
}

/// A twin section without the hub-maintained `$metadata`/`$version`.
fn without_metadata(section: &Value) -> Value {
    match section {
        Value::Object(map) => Value::Object(
            map.iter().filter(|(k, _)| !k.starts_with('$')).map(|(k, v)| (k.clone(), v.clone())).collect(),
        ),
        other => other.clone(),
    }
}

/// The PATCH body for `device-twin update`: az's generic update applied to
/// the current twin (sections touched by `--set` are sent whole), then
/// `--tags` and `--desired` merged on top.
pub(crate) fn build_patch(
    current: Option<&Value>,
    ops: &[SetOp],
    tags: Option<Map<String, Value>>,
    desired: Option<Map<String, Value>>,
) -> anyhow::Result<Value> {
    let mut patch_tags: Option<Map<String, Value>> = None;
    let mut patch_desired: Option<Map<String, Value>> = None;
    if !ops.is_empty() {
        let mut twin = current.cloned().unwrap_or_else(|| Value::Object(Map::new()));
        let mut touched = Vec::new();
        for op in ops {
            touched.push(section_of(op)?);
            apply_set(&mut twin, op)?;
        }
        if touched.contains(&Section::Tags) {
            patch_tags = Some(match &twin["tags"] {
                Value::Object(map) => map.clone(),
                Value::Null => Map::new(),
                _ => bail!("tags must be a JSON object"),
            });
        }
        if touched.contains(&Section::Desired) {
            patch_desired = Some(match without_metadata(&twin["properties"]["desired"]) {
                Value::Object(map) => map,
                Value::Null => Map::new(),
                _ => bail!("properties.desired must be a JSON object"),
            });
        }
    }
    if let Some(t) = tags {
        merge(patch_tags.get_or_insert_with(Map::new), t);
    }
    if let Some(d) = desired {
        merge(patch_desired.get_or_insert_with(Map::new), d);
    }
    let mut patch = Map::new();
    if let Some(t) = patch_tags {
        patch.insert("tags".into(), Value::Object(t));
    }
    if let Some(d) = patch_desired {
        let mut props = Map::new();
        props.insert("desired".into(), Value::Object(d));
        patch.insert("properties".into(), Value::Object(props));
    }
    if patch.is_empty() {
        bail!("nothing to update: give --set, --tags or --desired");
    }
    Ok(Value::Object(patch))
}

async fn update(args: TwinUpdateArgs) -> anyhow::Result<Outcome> {
    let ctx = Context::resolve(&args.common)?;
    let ops = args.set.iter().map(|s| parse_set(s)).collect::<anyhow::Result<Vec<_>>>()?;
    for op in &ops {
        section_of(op)?;
    }
    let tags = args.tags.as_deref().map(|t| parse_object("--tags", t)).transpose()?;
    let desired = args.desired.as_deref().map(|d| parse_object("--desired", d)).transpose()?;
    let client = ctx.client()?;
    let current = if ops.is_empty() { None } else { Some(client.get_twin(&args.device_id).await?) };
    let patch = build_patch(current.as_ref(), &ops, tags, desired)?;
    let twin = client.update_twin(&args.device_id, &patch, args.etag.as_deref().unwrap_or("*")).await?;
    Outcome::value(&ctx, &twin)
}

/// `--json FILE|JSON`: a readable file's contents, else the text itself.
pub(crate) fn read_json_arg(arg: &str) -> anyhow::Result<Value> {
    let path = Path::new(arg);
    let text = if path.is_file() {
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?
    } else {
        arg.to_owned()
    };
    let value: Value =
        serde_json::from_str(&text).context("--json is neither a readable file nor valid JSON")?;
    if !value.is_object() {
        bail!("--json must be a JSON object (a twin)");
    }
    Ok(value)
}

async fn replace(args: TwinReplaceArgs) -> anyhow::Result<Outcome> {
    let ctx = Context::resolve(&args.common)?;
    let twin = read_json_arg(&args.json)?;
    let replaced =
        ctx.client()?.replace_twin(&args.device_id, &twin, args.etag.as_deref().unwrap_or("*")).await?;
    Outcome::value(&ctx, &replaced)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use serde_json::json;

    fn ops(exprs: &[&str]) -> Vec<SetOp> {
        exprs.iter().map(|e| parse_set(e).unwrap()).collect()
    }

    fn current() -> Value {
        json!({
            "deviceId": "d1", "etag": "AAAA", "version": 3,
            "tags": {"location": "lab"},
            "properties": {
                "desired": {"fw": "1.0", "$metadata": {"$lastUpdated": "x"}, "$version": 2},
                "reported": {"fw": "1.0"}
            }
        })
    }

    #[test]
    fn tutorial_set_tags_sends_the_tags_only() {
        let patch =
            build_patch(Some(&current()), &ops(&[r#"tags={"devicetype":"chiller"}"#]), None, None).unwrap();
        assert_eq!(patch, json!({"tags": {"devicetype": "chiller"}}));
    }

    #[test]
    fn set_desired_sends_desired_without_metadata() {
        let patch =
            build_patch(Some(&current()), &ops(&["properties.desired.interval=30"]), None, None).unwrap();
        assert_eq!(patch, json!({"properties": {"desired": {"fw": "1.0", "interval": 30}}}));
    }

    #[test]
    fn flags_merge_on_top_of_set() {
        let patch = build_patch(
            Some(&current()),
            &ops(&["tags.location=roof"]),
            Some(parse_object("--tags", r#"{"floor": 2}"#).unwrap()),
            Some(parse_object("--desired", r#"{"a": {"b": null}}"#).unwrap()),
        )
        .unwrap();
        assert_eq!(
            patch,
            json!({"tags": {"location": "roof", "floor": 2}, "properties": {"desired": {"a": {"b": null}}}})
        );
    }

    #[test]
    fn reported_and_empty_updates_are_refused() {
        assert!(build_patch(Some(&current()), &ops(&["properties.reported.fw=2"]), None, None).is_err());
        assert!(build_patch(Some(&current()), &ops(&["status=disabled"]), None, None).is_err());
        assert!(build_patch(None, &[], None, None).is_err());
        assert!(parse_object("--tags", "[1]").is_err());
        assert!(parse_object("--tags", "{oops").is_err());
    }

    #[test]
    fn json_arg_is_a_file_or_inline_json() {
        assert_eq!(read_json_arg(r#"{"tags":{}}"#).unwrap(), json!({"tags": {}}));
        let file = std::env::temp_dir().join(format!("ferrohub-twin-{}.json", std::process::id()));
        std::fs::write(&file, r#"{"tags":{"a":1}}"#).unwrap();
        assert_eq!(read_json_arg(file.to_str().unwrap()).unwrap(), json!({"tags": {"a": 1}}));
        let _ = std::fs::remove_file(&file);
        assert!(read_json_arg("not json").is_err());
        assert!(read_json_arg("[]").is_err());
    }
}
