//! `$metadata`: a tree that mirrors a section's properties and records when
//! (and, for desired, in which `$version`) each node last changed.
//!
//! Every object node, the section root included, holds `$lastUpdated` (plus
//! `$lastUpdatedVersion` in desired) followed by one child node per property;
//! a leaf (scalar or array) gets a node with just those stamps. Property keys
//! can never start with `$`, so stamps and children cannot collide.
//!
//! Rather than tracking writes during the merge, metadata is derived by
//! comparing the old and new document: a leaf's stamps say when its value
//! last changed, and a patch and a replace share one rule. (A write that
//! repeats the current values still stamps the section root: see
//! `Section::write`.)

use serde_json::Value;

use super::Props;
use crate::time::Timestamp;

/// Key of the time a node last changed.
pub(super) const LAST_UPDATED: &str = "$lastUpdated";
/// Key of the desired `$version` of the change that last touched a node.
pub(super) const LAST_UPDATED_VERSION: &str = "$lastUpdatedVersion";
/// Key, in the metadata node of a desired leaf, of the automatic
/// configuration whose write last changed that leaf.
pub const LAST_UPDATED_BY: &str = "$lastUpdatedBy";
/// Key, next to [`LAST_UPDATED_BY`], identifying the version of that
/// configuration's content.
pub const LAST_UPDATED_BY_DIGEST: &str = "$lastUpdatedByDigest";

/// The stamp a change writes into every node it touches.
#[derive(Debug, Clone)]
pub(super) struct Stamp {
    at: Value,
    version: Option<i64>,
}

impl Stamp {
    /// A stamp for a change at `now`; `version` is the section `$version` the
    /// change produces, or `None` for sections without version stamps
    /// (reported).
    pub(super) fn new(now: Timestamp, version: Option<i64>) -> Self {
        Self { at: Value::String(now.to_iso()), version }
    }

    /// Writes the stamp into `node`. Existing keys are overwritten in place,
    /// so they stay ahead of the child nodes.
    pub(super) fn apply(&self, node: &mut Props) {
        node.insert(LAST_UPDATED.to_owned(), self.at.clone());
        if let Some(v) = self.version {
            node.insert(LAST_UPDATED_VERSION.to_owned(), Value::from(v));
        }
    }

    /// A metadata node for a value written wholesale by this change: stamped,
    /// with a stamped child for every property of an object, recursively.
    pub(super) fn fresh_node(&self, value: &Value) -> Props {
        let mut node = Props::new();
        self.apply(&mut node);
        if let Value::Object(props) = value {
            for (key, child) in props {
                node.insert(key.clone(), Value::Object(self.fresh_node(child)));
            }
        }
        node
    }
}

/// Brings the metadata node `meta` of an object from `old` to `new` and says
/// whether anything differs.
///
/// Changed or added leaves get fresh nodes, removed keys lose theirs, objects
/// present on both sides are compared recursively, and every object node on
/// the path to a change is re-stamped. Nodes of unchanged properties are left
/// alone, so siblings keep their own stamps. Comparison is structural (key
/// order does not count as a change).
pub(super) fn restamp(old: &Props, new: &Props, meta: &mut Props, stamp: &Stamp) -> bool {
    let mut changed = false;
    for key in old.keys() {
        if !new.contains_key(key) {
            meta.shift_remove(key);
            changed = true;
        }
    }
    for (key, new_value) in new {
        match (old.get(key), new_value) {
            (Some(Value::Object(o)), Value::Object(n)) => {
                let child = meta.entry(key.clone()).or_insert_with(|| Value::Object(Props::new()));
                if !child.is_object() {
                    // A damaged stored tree: rebuild this node rather than fail.
                    *child = Value::Object(Props::new());
                }
                if let Value::Object(child) = child {
                    changed |= restamp(o, n, child, stamp);
                }
            }
            (Some(old_value), _) if old_value == new_value => {}
            _ => {
                meta.insert(key.clone(), Value::Object(stamp.fresh_node(new_value)));
                changed = true;
            }
        }
    }
    if changed {
        stamp.apply(meta);
    }
    changed
}

/// Records in the metadata node at `path` (keys below the section root) that
/// `by` wrote it, with `digest`. The stamps stay first in the node, so a leaf
/// node reads `$lastUpdated`, `$lastUpdatedVersion`, `$lastUpdatedBy`,
/// `$lastUpdatedByDigest`. Returns `false` (and changes nothing) when there
/// is no node at `path`.
pub(super) fn mark_writer(meta: &mut Props, path: &[String], by: &str, digest: &str) -> bool {
    let Some((last, parents)) = path.split_last() else {
        return false;
    };
    let mut node = meta;
    for key in parents {
        match node.get_mut(key) {
            Some(Value::Object(child)) => node = child,
            _ => return false,
        }
    }
    match node.get_mut(last) {
        Some(Value::Object(leaf)) => {
            leaf.insert(LAST_UPDATED_BY.to_owned(), Value::from(by));
            leaf.insert(LAST_UPDATED_BY_DIGEST.to_owned(), Value::from(digest));
            true
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use serde_json::json;

    use super::*;

    fn props(v: Value) -> Props {
        v.as_object().unwrap().clone()
    }

    fn t(n: i128) -> Timestamp {
        Timestamp::from_unix_nanos(1_700_000_000_000_000_000 + n * 1_000_000_000)
    }

    fn iso(n: i128) -> String {
        t(n).to_iso()
    }

    #[test]
    fn fresh_nodes_mirror_the_object_tree() {
        let node = Stamp::new(t(0), Some(2)).fresh_node(&json!({"a": {"b": 1}, "c": [1, {"x": 1}]}));
        let s = json!({"$lastUpdated": iso(0), "$lastUpdatedVersion": 2});
        assert_eq!(
            Value::Object(node),
            json!({
                "$lastUpdated": iso(0), "$lastUpdatedVersion": 2,
                "a": {"$lastUpdated": iso(0), "$lastUpdatedVersion": 2, "b": s},
                "c": s,
            })
        );
        let reported = Stamp::new(t(0), None).fresh_node(&json!(1));
        assert_eq!(Value::Object(reported), json!({"$lastUpdated": iso(0)}));
    }

    #[test]
    fn a_change_restamps_the_leaf_and_its_ancestors_only() {
        let old = props(json!({"a": {"b": 1, "c": 2}, "d": 3}));
        let mut meta = Stamp::new(t(0), Some(1)).fresh_node(&Value::Object(old.clone()));
        let new = props(json!({"a": {"b": 9, "c": 2}, "d": 3}));
        assert!(restamp(&old, &new, &mut meta, &Stamp::new(t(5), Some(2))));
        let m = Value::Object(meta);
        assert_eq!(m["$lastUpdated"], iso(5));
        assert_eq!(m["$lastUpdatedVersion"], 2);
        assert_eq!(m["a"]["$lastUpdated"], iso(5));
        assert_eq!(m["a"]["b"], json!({"$lastUpdated": iso(5), "$lastUpdatedVersion": 2}));
        assert_eq!(m["a"]["c"], json!({"$lastUpdated": iso(0), "$lastUpdatedVersion": 1}));
        assert_eq!(m["d"], json!({"$lastUpdated": iso(0), "$lastUpdatedVersion": 1}));
    }

    #[test]
    fn removal_drops_the_node_and_restamps_ancestors() {
        let old = props(json!({"a": {"b": {"deep": 1}, "c": 2}}));
        let mut meta = Stamp::new(t(0), None).fresh_node(&Value::Object(old.clone()));
        let new = props(json!({"a": {"c": 2}}));
        assert!(restamp(&old, &new, &mut meta, &Stamp::new(t(7), None)));
        let m = Value::Object(meta);
        assert_eq!(
            m,
            json!({"$lastUpdated": iso(7), "a": {"$lastUpdated": iso(7), "c": {"$lastUpdated": iso(0)}}})
        );
    }

    #[test]
    fn identical_documents_change_nothing() {
        let doc = props(json!({"a": {"b": [1, 2]}, "s": "x"}));
        let mut meta = Stamp::new(t(0), Some(1)).fresh_node(&Value::Object(doc.clone()));
        let before = meta.clone();
        let reordered = props(json!({"s": "x", "a": {"b": [1, 2]}}));
        assert!(!restamp(&doc, &reordered, &mut meta, &Stamp::new(t(9), Some(2))));
        assert_eq!(meta, before);
    }

    #[test]
    fn mark_writer_tags_an_existing_node_only() {
        let doc = props(json!({"a": {"b": 1}}));
        let mut meta = Stamp::new(t(0), Some(2)).fresh_node(&Value::Object(doc));
        let path = ["a".to_owned(), "b".to_owned()];
        assert!(mark_writer(&mut meta, &path, "cfg1", "42"));
        assert_eq!(
            meta["a"]["b"],
            json!({"$lastUpdated": iso(0), "$lastUpdatedVersion": 2, "$lastUpdatedBy": "cfg1", "$lastUpdatedByDigest": "42"})
        );
        let keys: Vec<_> = meta["a"]["b"].as_object().unwrap().keys().cloned().collect();
        assert_eq!(keys, ["$lastUpdated", "$lastUpdatedVersion", "$lastUpdatedBy", "$lastUpdatedByDigest"]);
        let before = meta.clone();
        assert!(!mark_writer(&mut meta, &["a".to_owned(), "zz".to_owned()], "x", "1"));
        assert!(!mark_writer(&mut meta, &["a".to_owned(), "b".to_owned(), "c".to_owned()], "x", "1"));
        assert!(!mark_writer(&mut meta, &[], "x", "1"));
        assert_eq!(meta, before);
    }

    #[test]
    fn type_changes_replace_the_node() {
        let old = props(json!({"a": {"b": 1}, "c": 1}));
        let mut meta = Stamp::new(t(0), None).fresh_node(&Value::Object(old.clone()));
        let new = props(json!({"a": 1, "c": {"x": true}}));
        assert!(restamp(&old, &new, &mut meta, &Stamp::new(t(3), None)));
        assert_eq!(meta["a"], json!({"$lastUpdated": iso(3)}));
        assert_eq!(meta["c"], json!({"$lastUpdated": iso(3), "x": {"$lastUpdated": iso(3)}}));
    }
}
