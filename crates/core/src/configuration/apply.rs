//! Which configuration wins which desired path of a twin, and what that
//! writes. The rules are in the documentation of [`apply_configurations`].

use std::cmp::Ordering;
use std::collections::{BTreeMap, BTreeSet, HashSet};

use serde::{Deserialize, Serialize};
use serde_json::Value;
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

use super::content::DeviceContent;
use crate::error::{HubError, HubResult};
use crate::time::Timestamp;
use crate::twin::{
    merge_into, replacement_notification, value_at, HubDesired, Props, TwinChange, TwinState, WrittenLeaf,
    LAST_UPDATED_BY,
};

/// A configuration's standing on one twin, as shown in
/// `configurations.{id}.status` (PascalCase, as Azure writes it).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum ConfigStatus {
    /// At least one of the configuration's settings is in effect on this
    /// twin.
    Applied,
    /// The configuration targets this twin but higher-ranked configurations
    /// took every one of its settings (or it has none).
    Targeted,
}

impl ConfigStatus {
    /// The text in the twin.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Applied => "Applied",
            Self::Targeted => "Targeted",
        }
    }
}

/// A configuration whose target condition currently matches the twin.
#[derive(Debug, Clone, Copy)]
pub struct TargetingConfig<'a> {
    /// The configuration id.
    pub id: &'a str,
    /// Higher wins.
    pub priority: i64,
    /// `createdTimeUtc`: among equal priorities the most recent wins.
    pub created: Timestamp,
    /// The parsed `deviceContent`.
    pub content: &'a DeviceContent,
}

/// The outcome of one evaluation of a twin.
#[derive(Debug, Clone, PartialEq)]
pub struct Evaluation {
    /// What changed on the twin (store it and push `desired_patch` when
    /// `changed`).
    pub change: TwinChange,
    /// The status of every targeting configuration on this twin.
    pub statuses: BTreeMap<String, ConfigStatus>,
}

/// The value Azure-style twins carry in `$lastUpdatedByDigest`: observed
/// values are 18-digit numbers that read as .NET ticks (100 ns since
/// 0001-01-01) of a moment shortly before the write. ferrohub uses the ticks
/// of the configuration's `createdTimeUtc`, which identifies the (immutable)
/// content version: a configuration deleted and created again under the same
/// id gets a new digest.
pub fn content_digest(created: Timestamp) -> String {
    const TICKS_AT_UNIX_EPOCH: i128 = 621_355_968_000_000_000;
    let nanos = OffsetDateTime::parse(&created.to_iso(), &Rfc3339).map_or(0, |t| t.unix_timestamp_nanos());
    (nanos / 100 + TICKS_AT_UNIX_EPOCH).to_string()
}

/// Ascending rank: the last of a sorted list wins. Priority first, then
/// creation time, then (a tie no client can produce on purpose) the id, so
/// the outcome never depends on the order of `targeting`.
fn rank(a: &TargetingConfig<'_>, b: &TargetingConfig<'_>) -> Ordering {
    (a.priority, a.created, a.id).cmp(&(b.priority, b.created, b.id))
}

/// Evaluates the automatic configurations that currently target `twin` and
/// writes the result into it.
///
/// `targeting` is the complete list of configurations whose target condition
/// matches the twin now (in any order); everything the twin carries from
/// earlier evaluations is read from the twin itself. The rules:
///
/// 1. **Winner per path.** For each desired path named in any targeting
///    configuration's `deviceContent`, the winner is the configuration with
///    the highest priority; ties go to the most recently created
///    (`createdTimeUtc`), then to the greater id. Only the winner's value is
///    used at that path.
/// 2. **Overlapping paths** (one configuration sets
///    `properties.desired.firmware`, another
///    `properties.desired.firmware.fwVersion`) are different paths, each with
///    its own winner. The winners' writes are applied in ascending rank, so
///    where they overlap the higher-ranked configuration's value is the one
///    left: a higher-ranked `firmware.fwVersion` overrides that key inside a
///    lower-ranked `firmware` object, and a higher-ranked `firmware` object
///    overrides a lower-ranked `firmware.fwVersion` (a non-object `firmware`
///    replaces it entirely).
/// 3. **How a value is written.** A value is merged into what is at its
///    path the way a service PATCH would be: an object merges key by key
///    (keys the configuration does not name stay), any other value replaces,
///    `null` removes the property (Azure: "to remove a property, specify the
///    property value to `null`"). Missing or non-object parents are created
///    as objects.
/// 4. **Ownership.** A configuration owns the *leaves* it writes (scalars,
///    arrays and empty objects; for an object value, each leaf inside it, as
///    Azure's own twins show), marked with `$lastUpdatedBy: <id>` and
///    `$lastUpdatedByDigest` ([`content_digest`]) in desired `$metadata`.
///    Every evaluation starts from the current desired document with all
///    configuration-owned leaves taken out (objects left empty by that are
///    removed too) and applies the current winners again. So:
///    - when a twin **stops matching** a configuration, or the configuration
///      is **deleted**, its settings are removed and the next configuration
///      in rank for each path applies (its value, owned by it); if no other
///      configuration sets the path, the property is gone (Azure's automatic
///      device management docs: "the settings from the configuration will be
///      removed and the device twin will be modified by the next highest
///      priority configuration"; the reference lists this as unverified);
///    - **drift**: a service write to a leaf a winning configuration sets is
///      overwritten by the next evaluation (the caller evaluates right after
///      service writes); the service's write made the leaf service-owned (a
///      service write gives it fresh metadata without `$lastUpdatedBy`), the
///      winner's write makes it configuration-owned again;
///    - properties nobody's configuration sets are **left alone**, also
///      service-written keys inside a configuration's object.
/// 5. **Only differences are written.** A leaf whose value is unchanged is
///    not rewritten: no `$version` bump, no metadata change, no notification,
///    even if its owner would now be another configuration
///    (`$lastUpdatedBy` names who last *changed* the value). A configuration
///    whose value equals what the service wrote leaves the leaf
///    service-owned.
/// 6. **Status.** `configurations.{id}.status` is `Applied` for a targeting
///    configuration with at least one setting in effect — it won the path and
///    no higher-ranked overlapping write replaced its value (for a `null`
///    setting: the property is absent; for an empty object: the property is
///    an object) — so partial wins count, as Azure
///    counts them in `appliedCount`; whether the value had to be written or
///    was already there does not matter. Otherwise (every path lost, or no
///    settings) it is `Targeted`. Configurations no longer targeting are
///    removed from `configurations`; existing entries keep their order, new
///    ones follow.
/// 7. **Notification.** The desired patch holds, for every winning path with
///    a change at or below it, the whole new value at that path (with `null`
///    for keys removed inside it), and elsewhere only what changed (`null` for
///    removed properties), plus `$version`. Devices that hand the patch
///    fragment to a listener (the Node SDK's `properties.desired.firmware`
///    event) thus see a configuration's complete object, not a fragment.
///
/// A change to desired bumps desired `$version`; a change to desired or to
/// `configurations` bumps the twin `version` and etag once. An evaluation
/// that changes nothing leaves the twin byte-for-byte as it was.
///
/// Errors: the same configuration id twice in `targeting` (500, a caller
/// bug), or a resulting desired document over the 32 KB limit (400
/// ArgumentInvalid; the twin is left untouched).
pub fn apply_configurations(
    twin: &mut TwinState,
    targeting: &[TargetingConfig<'_>],
    now: Timestamp,
) -> HubResult<Evaluation> {
    let mut seen = HashSet::new();
    if let Some(dup) = targeting.iter().find(|c| !seen.insert(c.id)) {
        return Err(HubError::internal(format!("configuration '{}' is listed twice", dup.id)));
    }
    let mut order: Vec<usize> = (0..targeting.len()).collect();
    order.sort_by(|&a, &b| rank(&targeting[a], &targeting[b]));

    // 1. The winner of every path: later (higher-ranked) entries replace.
    let mut winners: BTreeMap<&[String], usize> = BTreeMap::new();
    for &i in &order {
        for setting in targeting[i].content.settings() {
            winners.insert(&setting.path, i);
        }
    }

    // 2. The new desired document.
    let old = &twin.desired.props;
    let mut doc = old.clone();
    strip_owned(&mut doc, &twin.desired.metadata);
    let digests: Vec<String> = targeting.iter().map(|c| content_digest(c.created)).collect();
    // Leaf → the configuration that wrote it last (and whether it wrote an
    // empty object there); removals by winner.
    let mut writers: BTreeMap<Vec<String>, (usize, bool)> = BTreeMap::new();
    let mut removals: Vec<(&[String], usize)> = Vec::new();
    for &i in &order {
        for setting in targeting[i].content.settings() {
            if winners.get(setting.path.as_slice()) != Some(&i) {
                continue;
            }
            write_setting(&mut doc, &setting.path, &setting.value);
            if setting.value.is_null() {
                removals.push((&setting.path, i));
            }
            let mut path = setting.path.clone();
            leaves(&mut path, &setting.value, &mut |leaf, value| {
                writers.insert(leaf.to_vec(), (i, value.is_object()));
            });
        }
    }
    let doc = ordered_like(doc, old);

    // 3. Which configurations have a setting in effect: a written leaf is
    // still there (a higher-ranked overlapping write can replace it), an
    // empty object written is still an object (others may have filled it), a
    // removed property is still absent.
    let mut won = vec![false; targeting.len()];
    for (path, &(i, object)) in &writers {
        let current = value_at(&doc, path);
        let in_effect = if object { current.is_some_and(Value::is_object) } else { is_leaf(current) };
        if in_effect {
            won[i] = true;
        }
    }
    for (path, i) in removals {
        if value_at(&doc, path).is_none() {
            won[i] = true;
        }
    }

    // 4. Statuses and the notification.
    let status_of = |i: usize| if won[i] { ConfigStatus::Applied } else { ConfigStatus::Targeted };
    let statuses: BTreeMap<String, ConfigStatus> =
        targeting.iter().enumerate().map(|(i, c)| (c.id.to_owned(), status_of(i))).collect();
    let mut configurations = Props::new();
    for id in twin.configurations.keys() {
        if let Some(status) = statuses.get(id) {
            configurations.insert(id.clone(), status_json(*status));
        }
    }
    for c in targeting {
        if !configurations.contains_key(c.id) {
            configurations.insert(c.id.to_owned(), status_json(statuses[c.id]));
        }
    }
    let whole: BTreeSet<&[String]> = winners.keys().copied().collect();
    let notification = diff(old, &doc, &mut Vec::new(), &whole);

    let write = HubDesired {
        desired: doc,
        written: writers
            .iter()
            .map(|(path, &(i, _))| WrittenLeaf { path, by: targeting[i].id, digest: &digests[i] })
            .collect(),
        configurations,
        notification,
    };
    let change = twin.apply_hub_desired(write, now)?;
    Ok(Evaluation { change, statuses })
}

/// A leaf: a scalar, an array or an empty object.
fn is_leaf(value: Option<&Value>) -> bool {
    match value {
        Some(Value::Object(o)) => o.is_empty(),
        Some(_) => true,
        None => false,
    }
}

fn status_json(status: ConfigStatus) -> Value {
    let mut o = Props::new();
    o.insert("status".to_owned(), Value::from(status.as_str()));
    Value::Object(o)
}

/// Takes every configuration-owned leaf (its metadata node carries
/// `$lastUpdatedBy`) out of `doc`, and every object that this leaves empty.
/// A marker on a non-empty object (an empty object a configuration wrote,
/// into which the service later put keys) is ignored: its keys are looked at
/// one by one.
fn strip_owned(doc: &mut Props, meta: &Props) {
    let keys: Vec<String> = doc.keys().cloned().collect();
    for key in keys {
        let Some(Value::Object(node)) = meta.get(&key) else {
            continue;
        };
        let remove = match doc.get_mut(&key) {
            Some(Value::Object(child)) if !child.is_empty() => {
                strip_owned(child, node);
                child.is_empty()
            }
            Some(_) => node.contains_key(LAST_UPDATED_BY),
            None => false,
        };
        if remove {
            doc.shift_remove(&key);
        }
    }
}

/// Writes `value` at `path` with merge semantics (rule 3).
fn write_setting(doc: &mut Props, path: &[String], value: &Value) {
    match path {
        [] => {}
        [last] => {
            let mut patch = Props::new();
            patch.insert(last.clone(), value.clone());
            merge_into(doc, &patch);
        }
        [first, rest @ ..] => {
            if value.is_null() {
                // Removing below a missing or non-object parent removes
                // nothing; do not create the parents.
                if let Some(Value::Object(child)) = doc.get_mut(first) {
                    write_setting(child, rest, value);
                }
                return;
            }
            let entry = doc.entry(first.clone()).or_insert_with(|| Value::Object(Props::new()));
            if !entry.is_object() {
                *entry = Value::Object(Props::new());
            }
            if let Value::Object(child) = entry {
                write_setting(child, rest, value);
            }
        }
    }
}

/// Calls `out` with the path and value of every leaf `value` writes at
/// `path`: the path itself for a scalar or array, each leaf inside for an
/// object (the object's own path when it contributes no leaf, i.e. it is
/// empty or holds only `null`s), nothing for `null`.
fn leaves(path: &mut Vec<String>, value: &Value, out: &mut dyn FnMut(&[String], &Value)) {
    match value {
        Value::Null => {}
        Value::Object(o) if o.values().any(|v| !v.is_null()) => {
            for (key, child) in o {
                path.push(key.clone());
                leaves(path, child, out);
                path.pop();
            }
        }
        _ => out(path, value),
    }
}

/// `new` with its keys in `old`'s order wherever both have them (recursively
/// for objects on both sides), new keys after, so re-applying a setting does
/// not move it to the end of its object.
fn ordered_like(mut new: Props, old: &Props) -> Props {
    let mut out = Props::new();
    for (key, old_value) in old {
        if let Some(value) = new.shift_remove(key) {
            let value = match (value, old_value) {
                (Value::Object(n), Value::Object(o)) => Value::Object(ordered_like(n, o)),
                (v, _) => v,
            };
            out.insert(key.clone(), value);
        }
    }
    out.extend(new);
    out
}

/// The desired notification (rule 7): what a device must merge into `old` to
/// hold `new`, with whole values at the winning paths in `whole`.
fn diff(old: &Props, new: &Props, prefix: &mut Vec<String>, whole: &BTreeSet<&[String]>) -> Props {
    let mut out = Props::new();
    for (key, new_value) in new {
        let old_value = old.get(key);
        if old_value == Some(new_value) {
            continue;
        }
        prefix.push(key.clone());
        let entry = match (old_value, new_value) {
            (Some(Value::Object(o)), Value::Object(n)) if whole.contains(prefix.as_slice()) => {
                Value::Object(replacement_notification(o, n))
            }
            (Some(Value::Object(o)), Value::Object(n)) => Value::Object(diff(o, n, prefix, whole)),
            _ => new_value.clone(),
        };
        prefix.pop();
        out.insert(key.clone(), entry);
    }
    for key in old.keys() {
        if !new.contains_key(key) {
            out.insert(key.clone(), Value::Null);
        }
    }
    out
}
