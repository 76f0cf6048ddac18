//! Device twins: the stored document, the service's PATCH/PUT, the device's
//! reported patch, versions, etags, `$metadata` and IoT Hub's limits.
//!
//! Every operation validates and computes on copies first and commits only
//! at the end, so a rejected operation leaves the twin untouched.
//!
//! What counts as an update: every accepted service PATCH or PUT that
//! carries a desired section (one with at least one property once echoed
//! `$metadata`/`$version` are dropped) and every accepted reported patch is
//! one, even when no value differs — the section's `$version`, the root
//! `version` and the etag move, the section root's `$metadata` is stamped,
//! and a desired write is pushed to the device. A client that writes and
//! then waits for the next `$version` must never wait forever. Everything
//! else counts only when something differs: a tags-only PATCH that changes
//! no tag, a PUT whose omitted desired was already empty, and the hub's own
//! configuration evaluations ([`TwinState::apply_hub_desired`]), which
//! would otherwise bump every targeted twin on every pass.
//!
//! Files: `body.rs` reads request bodies, `merge.rs` merges patches,
//! `metadata.rs` derives `$metadata`, `section.rs` holds a desired/reported
//! section, `limits.rs` checks keys, values, depth and sizes, `render.rs`
//! produces the REST and MQTT JSON.

mod body;
pub mod limits;
mod merge;
mod metadata;
mod render;
mod section;

use base64::Engine as _;
use serde::{Deserialize, Serialize};
use serde_json::Value;

pub(crate) use merge::{merge_into, replacement_notification};
pub use metadata::{LAST_UPDATED_BY, LAST_UPDATED_BY_DIGEST};
pub use section::{Section, SectionKind};

use crate::error::{HubError, HubResult};
use crate::time::Timestamp;

/// A JSON object of twin properties (key order is kept).
pub type Props = serde_json::Map<String, Value>;

/// A twin as stored (the store saves it as JSON; these names are internal).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TwinState {
    /// Service-only tags (no metadata, no version of their own).
    pub tags: Props,
    /// `properties.desired`.
    pub desired: Section,
    /// `properties.reported`.
    pub reported: Section,
    /// Root twin `version`: 1 when created, +1 per accepted change of any
    /// kind (one PATCH touching tags and desired counts once).
    pub version: i64,
    /// Counter behind the twin etag; +1 whenever `version` moves.
    pub etag_seq: u64,
    /// `{configId: {"status": "Applied"|"Targeted"}}`, written by automatic
    /// configurations; shown only when non-empty.
    #[serde(default)]
    pub configurations: Props,
}

/// What an accepted operation did.
#[derive(Debug, Clone, PartialEq)]
pub struct TwinChange {
    /// Whether the operation was an update (see the module documentation):
    /// the twin must be stored. `false` means nothing was bumped.
    pub changed: bool,
    /// When desired was written: the notification body for the device (the
    /// desired-properties patch plus `"$version"`).
    pub desired_patch: Option<Value>,
}

impl TwinChange {
    const NONE: Self = Self { changed: false, desired_patch: None };
}

/// A desired leaf that an automatic configuration wrote (see
/// [`TwinState::apply_hub_desired`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WrittenLeaf<'a> {
    /// Keys below `properties.desired`.
    pub path: &'a [String],
    /// The configuration id, for `$lastUpdatedBy`.
    pub by: &'a str,
    /// The value for `$lastUpdatedByDigest`.
    pub digest: &'a str,
}

/// What the hub itself writes into a twin when it evaluates automatic
/// configurations: a whole new desired document, the leaves configurations
/// wrote in it, the new `configurations` map and the device notification.
#[derive(Debug, Clone, PartialEq)]
pub struct HubDesired<'a> {
    /// The complete new desired properties.
    pub desired: Props,
    /// Leaves written by a configuration, in write order (a later entry for
    /// the same path wins).
    pub written: Vec<WrittenLeaf<'a>>,
    /// The new `configurations` map.
    pub configurations: Props,
    /// The desired patch to push if desired changes (without `$version`);
    /// merged into the old desired it must give the new one.
    pub notification: Props,
}

impl TwinState {
    /// A fresh twin: no tags, empty sections at `$version` 1 stamped with
    /// `now`, root version 1, etag sequence 1 (`AAAAAAAAAAE=`). Azure's
    /// initial values are not documented (reference Unverified 5); starting
    /// both at 1 keeps "0" free to mean "no twin" in callers.
    pub fn new(now: Timestamp) -> Self {
        Self {
            tags: Props::new(),
            desired: Section::new(now, SectionKind::Desired),
            reported: Section::new(now, SectionKind::Reported),
            version: 1,
            etag_seq: 1,
            configurations: Props::new(),
        }
    }

    /// The twin etag: base64 of the 8-byte big-endian etag counter, the form
    /// observed on Azure (`AAAAAAAAAAQ=` = 4).
    ///
    /// Decision (reference Unverified 4): the etag moves on every twin change,
    /// reported patches included. A service holding an etag from before a
    /// device report then gets 412 on a conditional write, which is the safe
    /// side of an If-Match check.
    pub fn etag(&self) -> String {
        base64::engine::general_purpose::STANDARD.encode(self.etag_seq.to_be_bytes())
    }

    /// `PATCH /twins/{id}`: `{"tags":{..}?, "properties":{"desired":{..}?}?}`.
    ///
    /// Tags and desired merge recursively (`null` deletes). Other top-level
    /// fields a client echoes from a GET (`deviceId`, `etag`, `version`,
    /// `status`, …) are ignored, as are `$metadata`/`$version` inside
    /// desired. `properties.reported` with any property is 400
    /// ArgumentInvalid: the service may not write reported properties.
    /// Limits are checked before anything changes.
    ///
    /// A desired section with at least one property is an update even when
    /// every value equals the current one (desired `$version`, root version
    /// and etag move, and the device is notified); tags count only when they
    /// differ. The desired notification holds every key of the desired
    /// patch, even ones whose value did not change (Azure forwards the
    /// patch, not a diff), plus the new `$version`.
    pub fn apply_service_patch(&mut self, body: &Value, now: Timestamp) -> HubResult<TwinChange> {
        let body = body::service_body(body)?;
        if body.reported_has_content {
            return Err(HubError::invalid("properties.reported cannot be updated by the service"));
        }
        let tags = match &body.tags {
            Some(patch) => Some(merged("tags", &self.tags, patch, limits::MAX_TAGS_SIZE)?),
            None => None,
        };
        // An empty desired object (or one that held only echoed system keys)
        // writes nothing, so it is no desired section at all.
        let patch = body.desired.filter(|patch| !patch.is_empty());
        let desired = match &patch {
            Some(patch) => Some((
                merged("properties.desired", &self.desired.props, patch, limits::MAX_DESIRED_SIZE)?,
                Write::Always,
            )),
            None => None,
        };
        Ok(self.commit(tags, desired, now, patch.unwrap_or_default()))
    }

    /// `PUT /twins/{id}`: tags and desired are replaced wholesale.
    ///
    /// Decision (reference Unverified: PUT with omitted tags): an omitted or
    /// `null` `tags` or `properties.desired` means *empty*, so a PUT always
    /// describes the whole service-writable twin. `properties.reported` in the
    /// body is ignored (SDKs send back the whole twin they read), as are the
    /// read-only fields and `$metadata`/`$version` inside desired. The new
    /// documents are built by merging the body into an empty one, so a `null`
    /// in a PUT means "absent" and stored documents never hold null
    /// properties.
    ///
    /// The desired notification is the new desired plus `null` for every
    /// removed key (at every level where old and new both hold an object),
    /// plus the new `$version`, so a device merging it ends up with the new
    /// desired.
    ///
    /// A body whose desired holds at least one property is a desired update
    /// even when it equals the current desired (as [`Self::apply_service_patch`]);
    /// an omitted or empty desired is one only if it removes something.
    pub fn replace(&mut self, body: &Value, now: Timestamp) -> HubResult<TwinChange> {
        let body = body::service_body(body)?;
        let empty = Props::new();
        let tags = merged("tags", &empty, &body.tags.unwrap_or_default(), limits::MAX_TAGS_SIZE)?;
        let patch = body.desired.unwrap_or_default();
        let write = if patch.is_empty() { Write::IfChanged } else { Write::Always };
        let desired = merged("properties.desired", &empty, &patch, limits::MAX_DESIRED_SIZE)?;
        let notification = merge::replacement_notification(&self.desired.props, &desired);
        Ok(self.commit(Some(tags), Some((desired, write)), now, notification))
    }

    /// A device's reported-properties patch (MQTT `$iothub/twin/PATCH/properties/reported/`):
    /// recursive merge, `null` deletes, same limits as the service side.
    /// Every accepted patch is an update, even one that repeats the current
    /// values (or is `{}`): reported `$version`, the root version and the
    /// etag each move by one, so the device's acknowledgement always carries
    /// a new `$version`.
    pub fn apply_reported_patch(&mut self, patch: &Value, now: Timestamp) -> HubResult<TwinChange> {
        let patch = body::reported_patch(patch)?;
        let reported =
            merged("properties.reported", &self.reported.props, &patch, limits::MAX_REPORTED_SIZE)?;
        self.reported.write(reported, now, SectionKind::Reported);
        self.bump();
        Ok(TwinChange { changed: true, desired_patch: None })
    }

    /// Stores what an evaluation of automatic configurations computed.
    ///
    /// The new desired document is checked against the limits first (a
    /// rejected write changes nothing). Desired changes are stamped like any
    /// other write (`$version` + 1, `$lastUpdated`/`$lastUpdatedVersion` on
    /// what changed), and then each written leaf whose value differs from
    /// before — and is still a leaf (a scalar, an array or an empty object) —
    /// gets `$lastUpdatedBy`/`$lastUpdatedByDigest` in its metadata node.
    /// Leaves whose value did not change keep their metadata as it was, so
    /// `$lastUpdatedBy` names the configuration that last *changed* a value.
    ///
    /// A change of desired or of `configurations` (compared as maps, key
    /// order aside) moves the root version and the etag once; nothing
    /// changed means nothing moves. Unlike a service write, an evaluation
    /// that repeats the current values is not an update: the engine
    /// re-evaluates twins after every change and on every full pass, and
    /// each of those would otherwise bump and notify every targeted twin.
    pub fn apply_hub_desired(&mut self, write: HubDesired<'_>, now: Timestamp) -> HubResult<TwinChange> {
        limits::validate_props(&write.desired, "properties.desired")?;
        limits::check_size(&write.desired, limits::MAX_DESIRED_SIZE, "properties.desired")?;
        let to_mark: Vec<&WrittenLeaf<'_>> = write
            .written
            .iter()
            .filter(|leaf| {
                let new = value_at(&write.desired, leaf.path);
                let is_leaf = match new {
                    Some(Value::Object(o)) => o.is_empty(),
                    Some(_) => true,
                    None => false,
                };
                is_leaf && new != value_at(&self.desired.props, leaf.path)
            })
            .collect();
        let desired_changed = self.desired.update(write.desired, now, SectionKind::Desired);
        if desired_changed {
            for leaf in to_mark {
                metadata::mark_writer(&mut self.desired.metadata, leaf.path, leaf.by, leaf.digest);
            }
        }
        let configurations_changed = write.configurations != self.configurations;
        if configurations_changed {
            self.configurations = write.configurations;
        }
        if !desired_changed && !configurations_changed {
            return Ok(TwinChange::NONE);
        }
        self.bump();
        let desired_patch = desired_changed.then(|| {
            let mut notification = write.notification;
            notification.insert("$version".to_owned(), Value::from(self.desired.version));
            Value::Object(notification)
        });
        Ok(TwinChange { changed: true, desired_patch })
    }

    /// Stores validated new tags/desired (`None` = not part of the
    /// operation) and bumps what changed — desired also when it is written
    /// with [`Write::Always`]. `notification` is the desired patch to send
    /// if desired was written.
    fn commit(
        &mut self,
        tags: Option<Props>,
        desired: Option<(Props, Write)>,
        now: Timestamp,
        mut notification: Props,
    ) -> TwinChange {
        let tags_changed = tags.is_some_and(|t| {
            let differs = t != self.tags;
            if differs {
                self.tags = t;
            }
            differs
        });
        let desired_changed = desired.is_some_and(|(d, write)| match write {
            Write::IfChanged => self.desired.update(d, now, SectionKind::Desired),
            Write::Always => {
                self.desired.write(d, now, SectionKind::Desired);
                true
            }
        });
        if !tags_changed && !desired_changed {
            return TwinChange::NONE;
        }
        self.bump();
        let desired_patch = desired_changed.then(|| {
            notification.insert("$version".to_owned(), Value::from(self.desired.version));
            Value::Object(notification)
        });
        TwinChange { changed: true, desired_patch }
    }

    /// One accepted change: root version and etag move by exactly one.
    fn bump(&mut self) {
        self.version += 1;
        self.etag_seq += 1;
    }
}

/// Whether a section write counts when it changes no value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Write {
    /// Only a difference is an update (an omitted desired in a PUT).
    IfChanged,
    /// Always an update (a desired section the client sent).
    Always,
}

/// `current` with `patch` merged in, after checking the patch's keys, values
/// and depth and the merged document's size. Validating the patch is enough
/// for depth: the stored document already passed, and a merge puts each
/// patch value at the same path it has in the patch.
fn merged(path: &str, current: &Props, patch: &Props, max_size: usize) -> HubResult<Props> {
    limits::validate_props(patch, path)?;
    let mut out = current.clone();
    merge::merge_into(&mut out, patch);
    limits::check_size(&out, max_size, path)?;
    Ok(out)
}

/// The value at `path` (keys from the root of `props`), if there is one.
pub(crate) fn value_at<'a>(props: &'a Props, path: &[String]) -> Option<&'a Value> {
    let (first, rest) = path.split_first()?;
    let mut value = props.get(first)?;
    for key in rest {
        value = value.as_object()?.get(key)?;
    }
    Some(value)
}

#[cfg(test)]
mod tests;
