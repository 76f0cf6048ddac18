//! Every twin's query document, in memory: what queries, target conditions
//! and metrics read, so none of them touches the store or re-renders twins.
//!
//! The registry updates it after each committed write, under the device's
//! write lock, and tells the observer (the configuration engine) the old and
//! new document, so metric counts move by deltas instead of full recounts.
//! Lock order: the index lock, then whatever the observer takes.
//!
//! Equality lookups: the first query that filters on `path = constant` (as
//! one of the terms ANDed at the top of its WHERE) builds a value index for
//! that path, kept current by every later write; queries then evaluate only
//! the documents in the smallest matching posting list. Values are read with
//! the query crate's own evaluator, so the index agrees with it on case,
//! types and missing properties.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, OnceLock, RwLock};

use ferrohub_query::{BinaryOp, Expr, Literal, Path};
use ferrohub_store::DeviceRecord;
use serde_json::Value;

/// Most paths with a value index (each costs memory per twin).
const MAX_INDEXES: usize = 32;

/// The key of a primitive value, equal exactly when the query language
/// calls two values equal (same type; numbers by value).
fn value_key(v: &Value) -> Option<String> {
    match v {
        Value::Null => Some("z".into()),
        Value::Bool(b) => Some(format!("b{b}")),
        Value::Number(n) => n.as_f64().map(|f| format!("n{}", if f == 0.0 { 0.0 } else { f })),
        Value::String(s) => Some(format!("s{s}")),
        _ => None,
    }
}

fn literal_key(l: &Literal) -> Option<String> {
    match l {
        Literal::Null => Some("z".into()),
        Literal::Bool(b) => Some(format!("b{b}")),
        Literal::Number(f) => Some(format!("n{}", if *f == 0.0 { 0.0 } else { *f })),
        Literal::String(s) => Some(format!("s{s}")),
        _ => None,
    }
}

/// The `path = constant` terms ANDed at the top of a condition: every row
/// the condition accepts satisfies each of them.
fn equality_terms(e: &Expr, out: &mut Vec<(Path, String)>) {
    if let Expr::Binary { op, left, right } = e {
        match (op, left.as_ref(), right.as_ref()) {
            (BinaryOp::And, l, r) => {
                equality_terms(l, out);
                equality_terms(r, out);
            }
            (BinaryOp::Eq, Expr::Path(p), Expr::Literal(l))
            | (BinaryOp::Eq, Expr::Literal(l), Expr::Path(p)) => {
                if let Some(k) = literal_key(l) {
                    out.push((p.clone(), k));
                }
            }
            _ => {}
        }
    }
}

/// True when the condition is nothing but ANDed `path = constant` terms,
/// so the posting lists alone decide it.
fn only_equalities(e: &Expr) -> bool {
    match e {
        Expr::Binary { op: BinaryOp::And, left, right } => only_equalities(left) && only_equalities(right),
        Expr::Binary { op: BinaryOp::Eq, left, right } => match (left.as_ref(), right.as_ref()) {
            (Expr::Path(_), Expr::Literal(l)) | (Expr::Literal(l), Expr::Path(_)) => literal_key(l).is_some(),
            _ => false,
        },
        _ => false,
    }
}

/// Device ids by value key, for one path.
#[derive(Default)]
struct ValueIndex {
    by_value: HashMap<String, HashSet<String>>,
}

impl ValueIndex {
    fn key_of(path: &Path, doc: &Value) -> Option<String> {
        ferrohub_query::evaluate(&Expr::Path(path.clone()), doc).as_ref().and_then(value_key)
    }

    fn insert(&mut self, path: &Path, id: &str, doc: &Value) {
        if let Some(k) = Self::key_of(path, doc) {
            self.by_value.entry(k).or_default().insert(id.to_owned());
        }
    }

    fn remove(&mut self, path: &Path, id: &str, doc: &Value) {
        if let Some(k) = Self::key_of(path, doc) {
            if let Some(set) = self.by_value.get_mut(&k) {
                set.remove(id);
                if set.is_empty() {
                    self.by_value.remove(&k);
                }
            }
        }
    }
}

#[derive(Default)]
struct Inner {
    docs: HashMap<String, Arc<Value>>,
    indexes: HashMap<Path, ValueIndex>,
}

/// Called with (old, new) documents of one device on every change.
pub(crate) type Observer = Arc<dyn Fn(Option<&Value>, Option<&Value>) + Send + Sync>;

/// The documents by device id.
#[derive(Default)]
pub(crate) struct TwinIndex {
    inner: RwLock<Inner>,
    observer: OnceLock<Observer>,
}

impl TwinIndex {
    fn write(&self) -> std::sync::RwLockWriteGuard<'_, Inner> {
        self.inner.write().unwrap_or_else(|p| p.into_inner())
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Inner> {
        self.inner.read().unwrap_or_else(|p| p.into_inner())
    }

    /// Sets the observer (once, by the engine).
    pub(crate) fn set_observer(&self, observer: Observer) {
        let _ = self.observer.set(observer);
    }

    /// Fills the index from stored records (at start; no observer calls).
    pub(crate) fn load(&self, records: &[DeviceRecord]) {
        let mut inner = self.write();
        for r in records {
            inner.docs.insert(r.device.device_id.clone(), Arc::new(r.twin.to_json(&r.device)));
        }
    }

    /// Records a device's current state.
    pub(crate) fn put(&self, record: &DeviceRecord) {
        let doc = Arc::new(record.twin.to_json(&record.device));
        let id = &record.device.device_id;
        let mut inner = self.write();
        let old = inner.docs.insert(id.clone(), doc.clone());
        for (path, index) in &mut inner.indexes {
            if let Some(old) = &old {
                index.remove(path, id, old);
            }
            index.insert(path, id, &doc);
        }
        if let Some(observe) = self.observer.get() {
            observe(old.as_deref(), Some(&doc));
        }
    }

    /// Forgets a deleted device.
    pub(crate) fn remove(&self, device_id: &str) {
        let mut inner = self.write();
        let old = inner.docs.remove(device_id);
        if let Some(old) = &old {
            for (path, index) in &mut inner.indexes {
                index.remove(path, device_id, old);
            }
        }
        if let (Some(observe), Some(old)) = (self.observer.get(), old) {
            observe(Some(&old), None);
        }
    }

    /// The documents a query with this WHERE clause may accept: all of
    /// them, or (when the clause ANDs `path = constant` terms) the
    /// intersection of their posting lists. The flag is true when that
    /// intersection is exactly the answer (the clause has nothing else), so
    /// the caller need not evaluate the clause again.
    pub(crate) fn candidates(&self, filter: Option<&Expr>) -> (Vec<Arc<Value>>, bool) {
        let mut terms = Vec::new();
        if let Some(f) = filter {
            equality_terms(f, &mut terms);
        }
        if terms.is_empty() {
            return (self.read().docs.values().cloned().collect(), filter.is_none());
        }
        // Build missing indexes first (once per path), under the write lock.
        if terms.iter().any(|(p, _)| !self.read().indexes.contains_key(p)) {
            let mut inner = self.write();
            let Inner { docs, indexes } = &mut *inner;
            for (path, _) in &terms {
                if indexes.contains_key(path) || indexes.len() >= MAX_INDEXES {
                    continue;
                }
                let mut index = ValueIndex::default();
                for (id, doc) in docs.iter() {
                    index.insert(path, id, doc);
                }
                indexes.insert(path.clone(), index);
            }
        }
        let inner = self.read();
        let empty = HashSet::new();
        let mut lists: Vec<&HashSet<String>> = terms
            .iter()
            .filter_map(|(p, k)| inner.indexes.get(p).map(|i| i.by_value.get(k).unwrap_or(&empty)))
            .collect();
        if lists.is_empty() {
            return (inner.docs.values().cloned().collect(), false);
        }
        let covered = lists.len() == terms.len() && filter.is_some_and(only_equalities);
        lists.sort_by_key(|l| l.len());
        let (smallest, rest) = lists.split_first().map(|(s, r)| (*s, r)).unwrap_or((&empty, &[]));
        let docs = smallest
            .iter()
            .filter(|id| rest.iter().all(|l| l.contains(*id)))
            .filter_map(|id| inner.docs.get(id).cloned())
            .collect();
        (docs, covered)
    }

    /// Runs `f` over every document while no change can happen, so a
    /// recount and the deltas that follow it line up exactly.
    pub(crate) fn with_all<T>(&self, f: impl FnOnce(&mut dyn Iterator<Item = &Value>) -> T) -> T {
        let inner = self.read();
        let mut it = inner.docs.values().map(|v| v.as_ref());
        f(&mut it)
    }

    /// One device's document.
    pub(crate) fn get(&self, device_id: &str) -> Option<Arc<Value>> {
        self.read().docs.get(device_id).cloned()
    }

    /// Device ids, for a full pass.
    pub(crate) fn ids(&self) -> Vec<String> {
        self.read().docs.keys().cloned().collect()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use ferrohub_core::identity::{Device, DeviceRequest, Minted};
    use ferrohub_core::time::Timestamp;
    use ferrohub_core::twin::TwinState;
    use serde_json::json;

    fn record(id: &str, tags: Value) -> DeviceRecord {
        let now = Timestamp::from_unix_nanos(1_700_000_000_000_000_000);
        let mut key = || "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=".to_owned();
        let device = Device::create(
            id,
            DeviceRequest::default(),
            Minted { now, etag: "MQ==".into(), generation_id: "1".into(), new_key: &mut key },
        )
        .unwrap();
        let mut twin = TwinState::new(now);
        twin.apply_service_patch(&json!({ "tags": tags }), now).unwrap();
        DeviceRecord { device, twin, revision: 1 }
    }

    fn ids(index: &TwinIndex, q: &str) -> (Vec<String>, Vec<String>) {
        let query = ferrohub_query::parse_query(q).unwrap();
        let run = |docs: Vec<Arc<Value>>| {
            let mut v: Vec<String> = ferrohub_query::execute(&query, docs.iter().map(|d| d.as_ref()))
                .unwrap()
                .items
                .iter()
                .map(|r| r["deviceId"].as_str().unwrap().to_owned())
                .collect();
            v.sort();
            v
        };
        let (candidates, covered) = index.candidates(query.filter.as_ref());
        if covered {
            // The posting lists alone must be the answer.
            let mut only: Vec<String> =
                candidates.iter().map(|d| d["deviceId"].as_str().unwrap().to_owned()).collect();
            only.sort();
            assert_eq!(only, run(candidates.clone()), "{q}: covered, yet the WHERE clause removed rows");
        }
        (run(candidates), run(index.candidates(None).0))
    }

    /// The indexed answer always equals a full scan, through changes made
    /// after the index was built.
    #[test]
    fn indexed_lookups_agree_with_full_scans() {
        let index = TwinIndex::default();
        index.load(&[
            record("a", json!({"type":"chiller","n":1,"on":true})),
            record("b", json!({"type":"chiller","n":1.0})),
            record("c", json!({"type":"boiler","n":"1"})),
            record("d", json!({"other":1})),
        ]);
        let queries = [
            "SELECT deviceId FROM devices WHERE tags.type = 'chiller'",
            "SELECT deviceId FROM devices WHERE tags.n = 1",
            "SELECT deviceId FROM devices WHERE tags.n = '1' AND tags.type = 'boiler'",
            "SELECT deviceId FROM devices WHERE DeviceId = 'a'",
            "SELECT deviceId FROM devices WHERE tags.type = 'chiller' AND (tags.on = true OR tags.n = 1)",
            "SELECT deviceId FROM devices WHERE tags.type = 'chiller' OR tags.type = 'boiler'",
            "SELECT deviceId FROM devices WHERE tags.missing = null",
        ];
        for q in queries {
            let (indexed, full) = ids(&index, q);
            assert_eq!(indexed, full, "{q}");
        }
        // Changes after the indexes exist keep them right.
        index.put(&record("d", json!({"type":"chiller","n":1})));
        index.put(&record("a", json!({"type":"boiler"})));
        index.remove("b");
        for q in queries {
            let (indexed, full) = ids(&index, q);
            assert_eq!(indexed, full, "{q}");
        }
        let (chillers, _) = ids(&index, queries[0]);
        assert_eq!(chillers, ["d"]);
    }
}
