//! Every twin's query document, in memory: what queries, target conditions
//! and metrics read, so none of them touches the store or re-renders twins.
//!
//! The registry updates it after each committed write, under the device's
//! write lock, and tells the observer (the configuration engine) the old and
//! new document, so metric counts move by deltas instead of full recounts.
//! Lock order: the index lock, then whatever the observer takes.

use std::collections::HashMap;
use std::sync::{Arc, OnceLock, RwLock};

use ferrohub_store::DeviceRecord;
use serde_json::Value;

/// Called with (old, new) documents of one device on every change.
pub(crate) type Observer = Arc<dyn Fn(Option<&Value>, Option<&Value>) + Send + Sync>;

/// The documents by device id.
#[derive(Default)]
pub(crate) struct TwinIndex {
    docs: RwLock<HashMap<String, Arc<Value>>>,
    observer: OnceLock<Observer>,
}

impl TwinIndex {
    fn write(&self) -> std::sync::RwLockWriteGuard<'_, HashMap<String, Arc<Value>>> {
        self.docs.write().unwrap_or_else(|p| p.into_inner())
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, HashMap<String, Arc<Value>>> {
        self.docs.read().unwrap_or_else(|p| p.into_inner())
    }

    /// Sets the observer (once, by the engine).
    pub(crate) fn set_observer(&self, observer: Observer) {
        let _ = self.observer.set(observer);
    }

    /// Fills the index from stored records (at start; no observer calls).
    pub(crate) fn load(&self, records: &[DeviceRecord]) {
        let mut docs = self.write();
        for r in records {
            docs.insert(r.device.device_id.clone(), Arc::new(r.twin.to_json(&r.device)));
        }
    }

    /// Records a device's current state.
    pub(crate) fn put(&self, record: &DeviceRecord) {
        let doc = Arc::new(record.twin.to_json(&record.device));
        let mut docs = self.write();
        let old = docs.insert(record.device.device_id.clone(), doc.clone());
        if let Some(observe) = self.observer.get() {
            observe(old.as_deref(), Some(&doc));
        }
    }

    /// Forgets a deleted device.
    pub(crate) fn remove(&self, device_id: &str) {
        let mut docs = self.write();
        let old = docs.remove(device_id);
        if let (Some(observe), Some(old)) = (self.observer.get(), old) {
            observe(Some(&old), None);
        }
    }

    /// Every document (cheap: reference-counted), for a query.
    pub(crate) fn snapshot(&self) -> Vec<Arc<Value>> {
        self.read().values().cloned().collect()
    }

    /// Runs `f` over every document while no change can happen, so a
    /// recount and the deltas that follow it line up exactly.
    pub(crate) fn with_all<T>(&self, f: impl FnOnce(&mut dyn Iterator<Item = &Value>) -> T) -> T {
        let docs = self.read();
        let mut it = docs.values().map(|v| v.as_ref());
        f(&mut it)
    }

    /// Device ids, for a full pass.
    pub(crate) fn ids(&self) -> Vec<String> {
        self.read().keys().cloned().collect()
    }
}
