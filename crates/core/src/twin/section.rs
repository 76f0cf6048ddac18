//! One properties section (desired or reported): its properties, their
//! `$metadata` tree and the section `$version`.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::metadata::{restamp, Stamp};
use super::Props;
use crate::time::Timestamp;

/// Which section; desired metadata carries `$lastUpdatedVersion`, reported
/// metadata does not.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SectionKind {
    /// `properties.desired`, written by the service.
    Desired,
    /// `properties.reported`, written by the device.
    Reported,
}

impl SectionKind {
    /// The version stamped into metadata for a change producing `version`.
    fn stamp_version(self, version: i64) -> Option<i64> {
        match self {
            Self::Desired => Some(version),
            Self::Reported => None,
        }
    }
}

/// A properties section as stored.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Section {
    /// The properties, without `$metadata` and `$version`.
    pub props: Props,
    /// The `$metadata` tree (see `metadata.rs`).
    pub metadata: Props,
    /// The section `$version`: 1 when created, +1 per accepted change.
    pub version: i64,
}

impl Section {
    /// An empty section created at `now`: no properties, `$version` 1, and
    /// root metadata stamped with the creation time (and version 1 in
    /// desired).
    ///
    /// Decision: Azure prints `0001-01-01T00:00:00Z` for never-written
    /// sections in some places; ferrohub uses the twin's creation time, a real
    /// instant that SDKs parse like any other and that orders correctly before
    /// every later write.
    pub fn new(now: Timestamp, kind: SectionKind) -> Self {
        let metadata = Stamp::new(now, kind.stamp_version(1)).fresh_node(&Value::Object(Props::new()));
        Self { props: Props::new(), metadata, version: 1 }
    }

    /// Replaces the properties with `new_props` if they differ, bumping
    /// `$version` by exactly one and stamping the metadata of what changed.
    /// Returns whether anything changed; if not, nothing is touched.
    pub fn update(&mut self, new_props: Props, now: Timestamp, kind: SectionKind) -> bool {
        let next_version = self.version + 1;
        let stamp = Stamp::new(now, kind.stamp_version(next_version));
        // Work on a copy so an unchanged document leaves the stored tree
        // byte-for-byte as it was.
        let mut metadata = self.metadata.clone();
        if !restamp(&self.props, &new_props, &mut metadata, &stamp) {
            return false;
        }
        self.props = new_props;
        self.metadata = metadata;
        self.version = next_version;
        true
    }

    /// An accepted write of `new_props` that counts as an update even when no
    /// value differs: `$version` moves by exactly one either way. When values
    /// differ this is [`Section::update`]; when none does, only the root
    /// metadata node is stamped (`$lastUpdated`, and `$lastUpdatedVersion`
    /// in desired), so every leaf keeps the stamps of the change that last
    /// set its value — and with them a configuration's `$lastUpdatedBy`.
    pub fn write(&mut self, new_props: Props, now: Timestamp, kind: SectionKind) {
        if self.update(new_props, now, kind) {
            return;
        }
        self.version += 1;
        Stamp::new(now, kind.stamp_version(self.version)).apply(&mut self.metadata);
    }

    /// The section as JSON: properties, then `$metadata` when asked for
    /// (REST), then `$version`. MQTT twin reads leave the metadata out.
    pub fn to_json(&self, with_metadata: bool) -> Value {
        let mut out = self.props.clone();
        if with_metadata {
            out.insert("$metadata".to_owned(), Value::Object(self.metadata.clone()));
        }
        out.insert("$version".to_owned(), Value::from(self.version));
        Value::Object(out)
    }

    /// As [`Section::to_json`], taking the section apart instead of
    /// copying it.
    pub fn into_json(self, with_metadata: bool) -> Value {
        let mut out = self.props;
        if with_metadata {
            out.insert("$metadata".to_owned(), Value::Object(self.metadata));
        }
        out.insert("$version".to_owned(), Value::from(self.version));
        Value::Object(out)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use serde_json::json;

    use super::*;

    fn t(n: i128) -> Timestamp {
        Timestamp::from_unix_nanos(1_700_000_000_000_000_000 + n * 1_000_000_000)
    }

    #[test]
    fn new_sections_are_empty_at_version_one() {
        let d = Section::new(t(0), SectionKind::Desired);
        assert_eq!(
            d.to_json(true),
            json!({"$metadata": {"$lastUpdated": t(0).to_iso(), "$lastUpdatedVersion": 1}, "$version": 1})
        );
        let r = Section::new(t(0), SectionKind::Reported);
        assert_eq!(r.to_json(true), json!({"$metadata": {"$lastUpdated": t(0).to_iso()}, "$version": 1}));
        assert_eq!(r.to_json(false), json!({"$version": 1}));
    }

    #[test]
    fn update_bumps_version_by_one_only_on_change() {
        let mut s = Section::new(t(0), SectionKind::Desired);
        let doc = json!({"a": 1}).as_object().unwrap().clone();
        assert!(s.update(doc.clone(), t(1), SectionKind::Desired));
        assert_eq!(s.version, 2);
        assert_eq!(s.metadata["a"]["$lastUpdatedVersion"], 2);
        let before = s.clone();
        assert!(!s.update(doc, t(2), SectionKind::Desired));
        assert_eq!(s, before);
        assert!(s.update(Props::new(), t(3), SectionKind::Desired));
        assert_eq!(s.version, 3);
        assert_eq!(
            Value::Object(s.metadata),
            json!({"$lastUpdated": t(3).to_iso(), "$lastUpdatedVersion": 3})
        );
    }

    #[test]
    fn write_bumps_version_and_stamps_the_root_even_without_a_difference() {
        let mut s = Section::new(t(0), SectionKind::Desired);
        let doc = json!({"a": 1}).as_object().unwrap().clone();
        s.write(doc.clone(), t(1), SectionKind::Desired);
        assert_eq!(s.version, 2);
        s.write(doc.clone(), t(2), SectionKind::Desired);
        assert_eq!(s.version, 3, "the same values are still an update");
        assert_eq!(s.props, doc);
        assert_eq!(
            Value::Object(s.metadata.clone()),
            json!({
                "$lastUpdated": t(2).to_iso(), "$lastUpdatedVersion": 3,
                "a": {"$lastUpdated": t(1).to_iso(), "$lastUpdatedVersion": 2},
            }),
            "the root moves; the leaf keeps the stamps of the write that set its value"
        );
        let mut r = Section::new(t(0), SectionKind::Reported);
        r.write(Props::new(), t(3), SectionKind::Reported);
        assert_eq!((r.version, Value::Object(r.metadata)), (2, json!({"$lastUpdated": t(3).to_iso()})));
    }

    #[test]
    fn json_puts_metadata_and_version_after_the_properties() {
        let mut s = Section::new(t(0), SectionKind::Reported);
        s.update(json!({"z": 1, "a": 2}).as_object().unwrap().clone(), t(1), SectionKind::Reported);
        let keys: Vec<_> = s.to_json(true).as_object().unwrap().keys().cloned().collect();
        assert_eq!(keys, ["z", "a", "$metadata", "$version"]);
    }
}
