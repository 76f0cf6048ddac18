//! Identities and twins: the registry every transport writes through.
//!
//! Every write is read → compute with the pure core → conditional store
//! write; a concurrent writer makes the store answer `Conflict` and the
//! operation is recomputed from fresh state. Nothing is acknowledged before
//! the store has committed it.

use std::sync::Arc;

use ferrohub_core::identity::{Device, DeviceRequest};
use ferrohub_core::precondition::IfMatch;
use ferrohub_core::time::Timestamp;
use ferrohub_core::twin::{TwinChange, TwinState};
use ferrohub_core::{HubError, HubResult};
use ferrohub_store::{DeviceCounts, DeviceRecord, Store, StoreError};
use serde_json::Value;

use super::mint::{minted, new_key};
use super::presence::{Outbound, Presence};
use super::store_error::Entity;
use super::throttle::Throttles;
use crate::clock;
use ferrohub_core::daily_quota::Metered;
use ferrohub_core::throttle::Class;
use ferrohub_mqtt::topic::Subscription;

/// Writes to one device are serialised by one of these locks (chosen by a
/// hash of the id), so desired-property notifications leave in `$version`
/// order and concurrent writers rarely lose an optimistic race. The store's
/// revision check still guards against other hub nodes. The count also
/// bounds how many writes can wait in one group commit of the store, so it
/// is large (a lock is a few dozen bytes).
const STRIPES: usize = 4096;

/// Records kept per stripe for the next write (see [`Stripe`]).
const CACHED_PER_STRIPE: usize = 64;

/// One write lock and the records most recently written under it.
///
/// A write reads the record, changes it and stores it with a revision
/// check. The read is served from here when this hub wrote the record last
/// (the cache is only touched under the lock, so it is never older than the
/// store for writes made by this hub); another writer — another hub node —
/// makes the revision check fail, which drops the entry and re-reads. Plain
/// reads (REST GETs, twin GETs) always go to the store.
type Stripe = tokio::sync::Mutex<std::collections::HashMap<String, DeviceRecord>>;

fn remember(cache: &mut std::collections::HashMap<String, DeviceRecord>, record: &DeviceRecord) {
    if cache.len() >= CACHED_PER_STRIPE && !cache.contains_key(&record.device.device_id) {
        // Any entry will do: the next write of that device reads the store.
        if let Some(victim) = cache.keys().next().cloned() {
            cache.remove(&victim);
        }
    }
    cache.insert(record.device.device_id.clone(), record.clone());
}

/// How many times a write is recomputed after losing a race.
const MAX_ATTEMPTS: usize = 16;

/// The registry and twins of one hub.
#[derive(Clone)]
pub struct Registry {
    store: Arc<dyn Store>,
    presence: Arc<Presence>,
    stripes: Arc<Vec<Stripe>>,
    /// Where committed changes are announced ([`ChangeFeed`]).
    changes: tokio::sync::mpsc::UnboundedSender<DeviceChanged>,
    /// Every twin's query document, kept current by every write here.
    index: Arc<super::twin_index::TwinIndex>,
    /// The twin read and update throttles, checked by the functions the
    /// transports call (not by the hub's own writes: engine, rollouts, bulk).
    throttles: Arc<Throttles>,
}

/// A committed change to a device that may alter which configurations
/// target it, or a metric: announced on the [`ChangeFeed`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceChanged(pub String);

/// The receiving end of the registry's announcements. The configuration
/// engine reads it; the registry never names its readers.
pub type ChangeFeed = tokio::sync::mpsc::UnboundedReceiver<DeviceChanged>;

fn store_error(e: StoreError, device_id: &str) -> HubError {
    super::store_error::store_error(e, Entity::Device(device_id))
}

impl Registry {
    /// A registry over a store, pushing changes to `presence`'s connections,
    /// and the feed on which it announces every committed device change.
    pub fn new(store: Arc<dyn Store>, presence: Arc<Presence>) -> (Self, ChangeFeed) {
        let stripes = Arc::new((0..STRIPES).map(|_| Stripe::default()).collect());
        let (changes, feed) = tokio::sync::mpsc::unbounded_channel();
        (Self { store, presence, stripes, changes, index: Arc::default(), throttles: Arc::default() }, feed)
    }

    /// The same registry, checking twin reads and updates against `throttles`.
    pub fn with_throttles(mut self, throttles: Arc<Throttles>) -> Self {
        self.throttles = throttles;
        self
    }

    /// The in-memory query documents.
    pub(crate) fn index(&self) -> &Arc<super::twin_index::TwinIndex> {
        &self.index
    }

    /// Announces that a device changed in a way that may alter which
    /// configurations target it (or a metric). Nobody listening is fine.
    fn changed(&self, device_id: &str) {
        let _ = self.changes.send(DeviceChanged(device_id.to_owned()));
    }

    /// Runs a configuration evaluation on a twin under the device's write
    /// lock, storing and pushing its change. Not announced as a change (it
    /// is the engine's own write).
    pub(crate) async fn evaluate_twin(
        &self,
        device_id: &str,
        evaluate: impl Fn(&mut TwinState, &Device) -> HubResult<TwinChange>,
    ) -> HubResult<()> {
        let notification = std::sync::Mutex::new(None);
        self.modify_then(
            device_id,
            |record| {
                let change = evaluate(&mut record.twin, &record.device)?;
                *crate::sync::consistent(notification.lock(), "desired notification") = change.desired_patch;
                Ok(change.changed)
            },
            |record| {
                let patch = crate::sync::consistent(notification.lock(), "desired notification").take();
                self.notify_desired(device_id, record, patch)
            },
        )
        .await
        .map(drop)
    }

    /// The store behind this registry.
    pub(crate) fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }

    /// The live connections.
    pub fn presence(&self) -> &Arc<Presence> {
        &self.presence
    }

    fn stripe(&self, device_id: &str) -> &Stripe {
        use std::hash::{Hash, Hasher};
        let mut h = std::collections::hash_map::DefaultHasher::new();
        device_id.hash(&mut h);
        &self.stripes[(h.finish() as usize) % self.stripes.len()]
    }

    async fn load(&self, device_id: &str) -> HubResult<DeviceRecord> {
        self.store
            .get_device(device_id)
            .await
            .map_err(|e| store_error(e, device_id))?
            .ok_or_else(|| HubError::device_not_found(device_id))
    }

    /// Creates a device, with an optional initial twin patch (bulk import)
    /// applied before anything is stored, so a bad patch creates nothing.
    /// 409 DeviceAlreadyExists if the id is taken.
    pub async fn create_device(
        &self,
        device_id: &str,
        req: DeviceRequest,
        twin_patch: Option<&Value>,
    ) -> HubResult<Device> {
        let now = clock::now();
        let device = Device::create(device_id, req, minted(now, &mut new_key))?;
        let mut twin = TwinState::new(now);
        if let Some(patch) = twin_patch {
            twin.apply_service_patch(patch, now)?;
        }
        let mut record = DeviceRecord { device, twin, revision: 0 };
        {
            let mut cache = self.stripe(device_id).lock().await;
            self.store.create_device(&record).await.map_err(|e| store_error(e, device_id))?;
            // The store starts revisions at 1.
            record.revision = 1;
            self.index.put(&record);
            remember(&mut cache, &record);
        }
        tracing::info!(device_id, "device created");
        self.changed(device_id);
        Ok(record.device)
    }

    /// One device.
    pub async fn get_device(&self, device_id: &str) -> HubResult<Device> {
        Ok(self.load(device_id).await?.device)
    }

    /// Up to `top` devices (1–1000; anything else means 1000, as in Azure).
    pub async fn list_devices(&self, top: Option<i64>) -> HubResult<Vec<Device>> {
        let top = match top {
            Some(n) if (1..=1000).contains(&n) => n as usize,
            _ => 1000,
        };
        self.store.list_devices(top).await.map_err(|e| super::store_error::store_error(e, Entity::Hub))
    }

    /// Updates a device's identity under an If-Match precondition.
    pub async fn update_device(
        &self,
        device_id: &str,
        req: DeviceRequest,
        if_match: &IfMatch,
    ) -> HubResult<Device> {
        // The identity PUT answers with the current cloud-to-device queue
        // count, which the store computes on reads: no cached record here.
        self.stripe(device_id).lock().await.remove(device_id);
        let device = self
            .modify(device_id, |record| {
                if_match.check(&record.device.etag)?;
                let next = record.device.updated(req.clone(), minted(clock::now(), &mut new_key))?;
                let changed = next != record.device;
                record.device = next;
                Ok(changed)
            })
            .await?
            .device;
        // A disabled device loses its live connection at once. New keys do
        // not end a connection made with the old ones: as in Azure, its
        // token stays valid until it expires.
        if device.status == ferrohub_core::identity::DeviceStatus::Disabled {
            self.presence.kick(device_id);
        }
        self.changed(device_id);
        Ok(device)
    }

    /// Deletes a device (and its twin) under an If-Match precondition.
    pub async fn delete_device(&self, device_id: &str, if_match: &IfMatch) -> HubResult<()> {
        let mut cache = self.stripe(device_id).lock().await;
        // Deleting checks the revision read from the store itself.
        cache.remove(device_id);
        for _ in 0..MAX_ATTEMPTS {
            let record = self.load(device_id).await?;
            if_match.check(&record.device.etag)?;
            match self.store.delete_device(device_id, Some(record.revision)).await {
                Ok(()) => {
                    tracing::info!(device_id, "device deleted");
                    self.index.remove(device_id);
                    self.presence.kick(device_id);
                    self.changed(device_id);
                    return Ok(());
                }
                Err(StoreError::Conflict) => continue,
                Err(e) => return Err(store_error(e, device_id)),
            }
        }
        Err(HubError::new(
            ferrohub_core::ErrorCode::ThrottlingException,
            "Too much contention on this device",
        ))
    }

    /// The twin as REST returns it.
    pub async fn get_twin(&self, device_id: &str) -> HubResult<Value> {
        self.throttles.check(Class::TwinRead, 1)?;
        self.throttles.meter(Metered::Twin, 0)?;
        let r = self.load(device_id).await?;
        let twin = r.twin.to_json(&r.device);
        self.throttles.meter_rest(Metered::Twin, || twin.to_string().len());
        Ok(twin)
    }

    /// `PATCH /twins/{id}`: merges tags and desired properties.
    pub async fn patch_twin(&self, device_id: &str, body: &Value, if_match: &IfMatch) -> HubResult<Value> {
        self.throttles.check(Class::TwinUpdate, 1)?;
        self.throttles.meter_with(Metered::Twin, || body.to_string().len())?;
        self.patch_twin_unmetered(device_id, body, if_match).await
    }

    /// [`patch_twin`](Self::patch_twin) for the hub's own writes (rollouts,
    /// a bulk request's twins), which no twin throttle meters: a bulk
    /// request is one registry operation.
    pub(crate) async fn patch_twin_unmetered(
        &self,
        device_id: &str,
        body: &Value,
        if_match: &IfMatch,
    ) -> HubResult<Value> {
        self.change_twin(device_id, if_match, |twin, now| twin.apply_service_patch(body, now)).await
    }

    /// `PUT /twins/{id}`: replaces tags and desired properties.
    pub async fn replace_twin(&self, device_id: &str, body: &Value, if_match: &IfMatch) -> HubResult<Value> {
        self.throttles.check(Class::TwinUpdate, 1)?;
        self.throttles.meter_with(Metered::Twin, || body.to_string().len())?;
        self.change_twin(device_id, if_match, |twin, now| twin.replace(body, now)).await
    }

    async fn change_twin(
        &self,
        device_id: &str,
        if_match: &IfMatch,
        apply: impl Fn(&mut TwinState, Timestamp) -> HubResult<TwinChange>,
    ) -> HubResult<Value> {
        // Both closures below need the notification; a Mutex keeps the
        // future Send (a RefCell would not).
        let notification = std::sync::Mutex::new(None);
        let record = self
            .modify_then(
                device_id,
                |record| {
                    if_match.check(&record.twin.etag())?;
                    let change = apply(&mut record.twin, clock::now())?;
                    *crate::sync::consistent(notification.lock(), "desired notification") =
                        change.desired_patch;
                    Ok(change.changed)
                },
                |record| {
                    let patch = crate::sync::consistent(notification.lock(), "desired notification").take();
                    self.notify_desired(device_id, record, patch)
                },
            )
            .await?;
        // Tags decide targeting, and a service write to a path a
        // configuration owns is overwritten by the next evaluation.
        self.changed(device_id);
        Ok(record.twin.to_json(&record.device))
    }

    /// Pushes a desired-properties change to the device, if it listens.
    /// Called with the device's write lock held, so notifications leave in
    /// `$version` order.
    fn notify_desired(&self, device_id: &str, record: &DeviceRecord, patch: Option<Value>) {
        if let Some(body) = patch {
            let version = record.twin.desired.version;
            let body = bytes::Bytes::from(body.to_string());
            self.presence.send(device_id, Subscription::DesiredPatches, Outbound::Desired { version, body });
        }
    }

    /// A device's own view of its twin (MQTT `$iothub/twin/GET`).
    pub async fn device_twin(&self, device_id: &str) -> HubResult<Value> {
        self.throttles.check(Class::TwinRead, 1)?;
        self.throttles.meter(Metered::Twin, 0)?;
        let twin = self.load(device_id).await?.twin.to_device_json();
        self.throttles.meter_rest(Metered::Twin, || twin.to_string().len());
        Ok(twin)
    }

    /// A device's reported-properties patch; returns the new reported
    /// `$version` once the change is durably stored.
    pub async fn patch_reported(&self, device_id: &str, patch: &Value) -> HubResult<i64> {
        self.throttles.check(Class::TwinUpdate, 1)?;
        self.throttles.meter_with(Metered::Twin, || patch.to_string().len())?;
        let record = self
            .modify(device_id, |record| Ok(record.twin.apply_reported_patch(patch, clock::now())?.changed))
            .await?;
        self.changed(device_id);
        Ok(record.twin.reported.version)
    }

    /// Records that a device connected or disconnected (identity fields;
    /// the twin renders them from the identity). Not an identity update:
    /// the etag stays.
    pub async fn set_connection_state(&self, device_id: &str, connected: bool) -> HubResult<()> {
        use ferrohub_core::identity::ConnectionState;
        let state = if connected { ConnectionState::Connected } else { ConnectionState::Disconnected };
        self.modify(device_id, |record| {
            // A connection that was replaced must not mark its successor's
            // device disconnected. Checked under the device's write lock,
            // which the successor's "connected" write also takes.
            if !connected && self.presence.is_connected(device_id) {
                return Ok(false);
            }
            let now = clock::now().to_iso();
            record.device.connection_state = state;
            record.device.connection_state_updated_time = now.clone();
            record.device.last_activity_time = now;
            Ok(true)
        })
        .await
        .map(drop)
    }

    /// Flushes a device's `lastActivityTime` (best effort, not acknowledged).
    pub async fn touch_activity(&self, device_id: &str, at: Timestamp) -> HubResult<()> {
        self.modify(device_id, |record| {
            record.device.last_activity_time = at.to_iso();
            Ok(true)
        })
        .await
        .map(drop)
    }

    /// Read → `change` → conditional write, retried on lost races. `change`
    /// returns whether it changed anything; unchanged records are not written.
    async fn modify(
        &self,
        device_id: &str,
        change: impl FnMut(&mut DeviceRecord) -> HubResult<bool>,
    ) -> HubResult<DeviceRecord> {
        self.modify_then(device_id, change, |_| ()).await
    }

    /// [`Registry::modify`], then `committed` on the stored record while the
    /// device's write lock is still held.
    async fn modify_then(
        &self,
        device_id: &str,
        mut change: impl FnMut(&mut DeviceRecord) -> HubResult<bool>,
        mut committed: impl FnMut(&DeviceRecord),
    ) -> HubResult<DeviceRecord> {
        let mut cache = self.stripe(device_id).lock().await;
        for _ in 0..MAX_ATTEMPTS {
            let mut record = match cache.get(device_id) {
                Some(cached) => cached.clone(),
                None => self.load(device_id).await?,
            };
            if !change(&mut record)? {
                return Ok(record);
            }
            match self.store.update_device(&record).await {
                Ok(()) => {
                    record.revision += 1;
                    self.index.put(&record);
                    remember(&mut cache, &record);
                    committed(&record);
                    return Ok(record);
                }
                Err(StoreError::Conflict) => {
                    cache.remove(device_id);
                    continue;
                }
                Err(StoreError::NotFound) => {
                    cache.remove(device_id);
                    return Err(HubError::device_not_found(device_id));
                }
                Err(e) => return Err(store_error(e, device_id)),
            }
        }
        Err(HubError::new(
            ferrohub_core::ErrorCode::ThrottlingException,
            "Too much contention on this device",
        ))
    }

    /// Registry statistics.
    pub async fn device_counts(&self) -> HubResult<DeviceCounts> {
        self.store.device_counts().await.map_err(|e| super::store_error::store_error(e, Entity::Hub))
    }
}
