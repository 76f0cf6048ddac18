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
//! the documents in the intersection of the posting lists. Values are read
//! with the query crate's own evaluator, so the index agrees with it on
//! case, types and missing properties. Devices live in numbered slots, so
//! posting lists are sets of small integers, and a `COUNT()` that the
//! posting lists decide never reads a document
//! ([`TwinIndex::count_covered`]).

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

/// A hasher for slot numbers (dense `u32`s): one multiply, no SipHash.
#[derive(Default, Clone, Copy)]
struct SlotHasher(u64);

impl std::hash::Hasher for SlotHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 = (self.0.rotate_left(8) ^ u64::from(*b)).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        }
    }
    fn write_u32(&mut self, n: u32) {
        self.0 = u64::from(n).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    }
}

type SlotSet = HashSet<u32, std::hash::BuildHasherDefault<SlotHasher>>;

/// Slots by value key, for one path.
#[derive(Default)]
struct ValueIndex {
    by_value: HashMap<String, SlotSet>,
}

impl ValueIndex {
    fn key_of(path: &Path, doc: &Value) -> Option<String> {
        ferrohub_query::evaluate(&Expr::Path(path.clone()), doc).as_ref().and_then(value_key)
    }

    fn insert(&mut self, path: &Path, slot: u32, doc: &Value) {
        if let Some(k) = Self::key_of(path, doc) {
            self.by_value.entry(k).or_default().insert(slot);
        }
    }

    fn remove(&mut self, path: &Path, slot: u32, doc: &Value) {
        if let Some(k) = Self::key_of(path, doc) {
            if let Some(set) = self.by_value.get_mut(&k) {
                set.remove(&slot);
                if set.is_empty() {
                    self.by_value.remove(&k);
                }
            }
        }
    }
}

/// One device: its id and current document.
struct Entry {
    id: String,
    doc: Arc<Value>,
}

/// Devices live in numbered slots (reused after deletes), so posting lists
/// hold small integers instead of id strings.
#[derive(Default)]
struct Inner {
    slot_of: HashMap<String, u32>,
    slots: Vec<Option<Entry>>,
    free: Vec<u32>,
    indexes: HashMap<Path, ValueIndex>,
}

impl Inner {
    fn docs(&self) -> impl Iterator<Item = &Arc<Value>> {
        self.slots.iter().flatten().map(|e| &e.doc)
    }

    fn doc(&self, slot: u32) -> Option<&Arc<Value>> {
        self.slots.get(slot as usize).and_then(Option::as_ref).map(|e| &e.doc)
    }

    /// Stores `doc` for `id`; returns its slot and the document it replaced.
    fn put(&mut self, id: &str, doc: Arc<Value>) -> (u32, Option<Arc<Value>>) {
        if let Some(&slot) = self.slot_of.get(id) {
            if let Some(Some(entry)) = self.slots.get_mut(slot as usize) {
                return (slot, Some(std::mem::replace(&mut entry.doc, doc)));
            }
        }
        let entry = Entry { id: id.to_owned(), doc };
        let slot = match self.free.pop() {
            Some(slot) => {
                self.slots[slot as usize] = Some(entry);
                slot
            }
            None => {
                self.slots.push(Some(entry));
                u32::try_from(self.slots.len() - 1).unwrap_or(u32::MAX)
            }
        };
        self.slot_of.insert(id.to_owned(), slot);
        (slot, None)
    }

    fn remove(&mut self, id: &str) -> Option<(u32, Arc<Value>)> {
        let slot = self.slot_of.remove(id)?;
        let entry = self.slots.get_mut(slot as usize)?.take()?;
        self.free.push(slot);
        Some((slot, entry.doc))
    }
}

/// Called with (old, new) documents of one device on every change.
/// A thread rendering stored twins into the index failed (panicked).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("a thread rendering stored twins into the query index failed")]
pub(crate) struct LoadFailed;

pub(crate) type Observer = Arc<dyn Fn(Option<&Value>, Option<&Value>) + Send + Sync>;

/// What the posting lists say about a WHERE clause.
enum Lookup {
    /// No usable `path = constant` term: every document is a candidate.
    All,
    /// The slots in the intersection of the terms' posting lists; `covered`
    /// when that intersection is exactly the answer.
    Slots { slots: Vec<u32>, covered: bool },
}

/// The documents by device id.
#[derive(Default)]
pub(crate) struct TwinIndex {
    inner: RwLock<Inner>,
    observer: OnceLock<Observer>,
}

impl TwinIndex {
    fn write(&self) -> std::sync::RwLockWriteGuard<'_, Inner> {
        crate::sync::or_stop(self.inner.write(), "twin index")
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Inner> {
        crate::sync::or_stop(self.inner.read(), "twin index")
    }

    /// Sets the observer (once, by the engine).
    pub(crate) fn set_observer(&self, observer: Observer) {
        let _ = self.observer.set(observer);
    }

    /// Fills the index from stored records (at start; no observer calls).
    /// Documents are rendered on every core, taking the records apart. A
    /// rendering thread that fails fails the load: a hub that started with
    /// twins missing from its index would answer queries and metrics wrong.
    pub(crate) fn load(&self, records: Vec<DeviceRecord>) -> Result<(), LoadFailed> {
        let threads = std::thread::available_parallelism().map_or(1, |n| n.get()).clamp(1, 8);
        let chunk = records.len().div_ceil(threads).max(1);
        let mut parts = Vec::with_capacity(threads);
        let mut records = records;
        while records.len() > chunk {
            let rest = records.split_off(chunk);
            parts.push(std::mem::replace(&mut records, rest));
        }
        parts.push(records);
        let rendered: Vec<Vec<(String, Arc<Value>)>> = std::thread::scope(|scope| {
            let handles: Vec<_> = parts
                .into_iter()
                .map(|part| {
                    scope.spawn(move || {
                        part.into_iter()
                            .map(|r| {
                                let DeviceRecord { device, twin, .. } = r;
                                let doc = Arc::new(twin.into_json(&device));
                                (device.device_id, doc)
                            })
                            .collect()
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().map_err(|_| LoadFailed)).collect::<Result<_, _>>()
        })?;
        let mut inner = self.write();
        for (id, doc) in rendered.into_iter().flatten() {
            inner.put(&id, doc);
        }
        Ok(())
    }

    /// Records a device's current state.
    pub(crate) fn put(&self, record: &DeviceRecord) {
        let doc = Arc::new(record.twin.to_json(&record.device));
        let id = &record.device.device_id;
        let mut inner = self.write();
        let (slot, old) = inner.put(id, doc.clone());
        for (path, index) in &mut inner.indexes {
            if let Some(old) = &old {
                index.remove(path, slot, old);
            }
            index.insert(path, slot, &doc);
        }
        if let Some(observe) = self.observer.get() {
            observe(old.as_deref(), Some(&doc));
        }
    }

    /// Forgets a deleted device.
    pub(crate) fn remove(&self, device_id: &str) {
        let mut inner = self.write();
        let old = inner.remove(device_id);
        if let Some((slot, old)) = &old {
            for (path, index) in &mut inner.indexes {
                index.remove(path, *slot, old);
            }
        }
        if let (Some(observe), Some((_, old))) = (self.observer.get(), old) {
            observe(Some(&old), None);
        }
    }

    /// Intersects the posting lists of the clause's `path = constant`
    /// terms (building missing indexes first), under `inner`.
    fn lookup(&self, filter: Option<&Expr>) -> Lookup {
        let mut terms = Vec::new();
        if let Some(f) = filter {
            equality_terms(f, &mut terms);
        }
        if terms.is_empty() {
            return Lookup::All;
        }
        // Build missing indexes first (once per path), under the write lock.
        if terms.iter().any(|(p, _)| !self.read().indexes.contains_key(p)) {
            let mut inner = self.write();
            let Inner { slots, indexes, .. } = &mut *inner;
            for (path, _) in &terms {
                if indexes.contains_key(path) || indexes.len() >= MAX_INDEXES {
                    continue;
                }
                let mut index = ValueIndex::default();
                for (slot, entry) in slots.iter().enumerate() {
                    if let Some(entry) = entry {
                        index.insert(path, slot as u32, &entry.doc);
                    }
                }
                indexes.insert(path.clone(), index);
            }
        }
        let inner = self.read();
        let empty = SlotSet::default();
        let mut lists: Vec<&SlotSet> = terms
            .iter()
            .filter_map(|(p, k)| inner.indexes.get(p).map(|i| i.by_value.get(k).unwrap_or(&empty)))
            .collect();
        if lists.is_empty() {
            return Lookup::All;
        }
        let covered = lists.len() == terms.len() && filter.is_some_and(only_equalities);
        lists.sort_by_key(|l| l.len());
        let (smallest, rest) = lists.split_first().map(|(s, r)| (*s, r)).unwrap_or((&empty, &[]));
        let mut slots: Vec<u32> =
            smallest.iter().copied().filter(|slot| rest.iter().all(|l| l.contains(slot))).collect();
        // Slot order is load order (the store's id order) for a stable
        // answer, as a full scan gives.
        slots.sort_unstable();
        Lookup::Slots { slots, covered }
    }

    /// The documents a query with this WHERE clause may accept: all of
    /// them, or (when the clause ANDs `path = constant` terms) the
    /// intersection of their posting lists. The flag is true when that
    /// intersection is exactly the answer (the clause has nothing else), so
    /// the caller need not evaluate the clause again.
    pub(crate) fn candidates(&self, filter: Option<&Expr>) -> (Vec<Arc<Value>>, bool) {
        match self.lookup(filter) {
            Lookup::All => (self.read().docs().cloned().collect(), filter.is_none()),
            Lookup::Slots { slots, covered } => {
                let inner = self.read();
                (slots.iter().filter_map(|s| inner.doc(*s).cloned()).collect(), covered)
            }
        }
    }

    /// How many documents satisfy the clause, when the posting lists alone
    /// decide it (`None` otherwise): answers COUNT without touching any
    /// document.
    pub(crate) fn count_covered(&self, filter: Option<&Expr>) -> Option<usize> {
        match filter {
            None => Some(self.read().slot_of.len()),
            Some(_) => match self.lookup(filter) {
                Lookup::Slots { slots, covered: true } => Some(slots.len()),
                _ => None,
            },
        }
    }

    /// Runs `f` over every document while no change can happen, so a
    /// recount and the deltas that follow it line up exactly.
    pub(crate) fn with_all<T>(&self, f: impl FnOnce(&mut dyn Iterator<Item = &Value>) -> T) -> T {
        let inner = self.read();
        let mut it = inner.docs().map(|v| v.as_ref());
        f(&mut it)
    }

    /// One device's document.
    pub(crate) fn get(&self, device_id: &str) -> Option<Arc<Value>> {
        let inner = self.read();
        inner.slot_of.get(device_id).and_then(|s| inner.doc(*s)).cloned()
    }

    /// Device ids, for a full pass.
    pub(crate) fn ids(&self) -> Vec<String> {
        self.read().slots.iter().flatten().map(|e| e.id.clone()).collect()
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
        index
            .load(vec![
                record("a", json!({"type":"chiller","n":1,"on":true})),
                record("b", json!({"type":"chiller","n":1.0})),
                record("c", json!({"type":"boiler","n":"1"})),
                record("d", json!({"other":1})),
            ])
            .unwrap();
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

    /// Counts from the posting lists alone equal a full scan's, wherever
    /// the index says it covers the clause, through deletes and slot reuse.
    #[test]
    fn covered_counts_agree_with_full_scans() {
        let index = TwinIndex::default();
        let tags = |i: usize| json!({"type": if i.is_multiple_of(3) { "chiller" } else { "boiler" }, "n": i % 2, "s": "x"});
        index.load((0..30).map(|i| record(&format!("d{i:02}"), tags(i))).collect()).unwrap();
        let conditions = [
            None,
            Some("tags.type = 'chiller'"),
            Some("tags.type = 'chiller' AND tags.n = 1"),
            Some("tags.n = 0 AND tags.s = 'x' AND tags.type = 'boiler'"),
            Some("tags.type = 'none'"),
            Some("tags.type = 'chiller' AND tags.n > 0"),
            Some("tags.type = 'chiller' OR tags.n = 1"),
        ];
        let check = |index: &TwinIndex| {
            for c in conditions {
                let filter = c.map(|c| ferrohub_query::parse_condition(c).unwrap());
                let full = index
                    .candidates(None)
                    .0
                    .iter()
                    .filter(|d| filter.as_ref().is_none_or(|f| ferrohub_query::matches(f, d)))
                    .count();
                let covered = index.count_covered(filter.as_ref());
                let exact = c.is_none() || c.is_some_and(|c| !c.contains('>') && !c.contains("OR"));
                assert_eq!(covered.is_some(), exact, "{c:?}");
                if let Some(n) = covered {
                    assert_eq!(n, full, "{c:?}");
                }
            }
        };
        check(&index);
        for i in (0..30).step_by(4) {
            index.remove(&format!("d{i:02}"));
        }
        // New devices take the freed slots; a removed one comes back changed.
        for i in 30..40 {
            index.put(&record(&format!("d{i:02}"), tags(i)));
        }
        index.put(&record("d00", tags(1)));
        index.put(&record("d03", tags(2)));
        check(&index);
        assert_eq!(index.count_covered(None), Some(30 - 8 + 10 + 1));
        assert_eq!(index.ids().len(), 33);
        assert!(index.get("d04").is_none());
        assert_eq!(index.get("d00").unwrap()["tags"]["type"], "boiler");
    }
}
