//! Device sessions: what a transport calls when a device connects, and the
//! guard that records its end.
//!
//! [`Sessions::connect`] restores (or forgets) the device's persistent
//! session, registers the connection in [`Presence`] — closing the one it
//! replaces — and records `Connected`. It returns a [`DeviceConnection`]
//! whose `Drop` unregisters and records `Disconnected`: however the
//! connection ends (clean close, protocol error, keep-alive, kick, the
//! task panicking), that runs exactly once, and never marks a device
//! disconnected while a newer connection of it is live.

use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;

use ferrohub_core::HubResult;
use ferrohub_mqtt::topic::{Subscription, SubscriptionSet};
use ferrohub_store::Store;
use tokio::sync::{mpsc, Notify};

use super::activity::Activity;
use super::c2d::{CloudToDevice, Locked};
use super::presence::{Outbound, Presence};
use super::registry::Registry;
use super::store_error::{store_error, Entity};

/// Room for hub-to-device pushes before the device counts as a slow
/// consumer (the same for every transport).
pub const OUTBOUND_QUEUE: usize = 32;

/// Connect and disconnect bookkeeping, and persistent sessions.
pub struct Sessions {
    store: Arc<dyn Store>,
    registry: Registry,
    presence: Arc<Presence>,
    c2d: Arc<CloudToDevice>,
    activity: Arc<Activity>,
}

/// A live device connection. Dropping it ends the connection's presence.
pub struct DeviceConnection {
    device_id: String,
    conn_id: u64,
    /// Locks what this connection holds of the device's C2D queue.
    connection_token: String,
    persistent: bool,
    session_present: bool,
    /// Set once the end was recorded (or is being recorded).
    ended: bool,
    /// Whether this connection ever asked for C2D messages: only then does
    /// its end need the store write that releases them.
    locked_c2d: std::sync::atomic::AtomicBool,
    subscriptions: Arc<AtomicU8>,
    kick: Arc<Notify>,
    outbound: Option<mpsc::Receiver<Outbound>>,
    store: Arc<dyn Store>,
    registry: Registry,
    presence: Arc<Presence>,
    c2d: Arc<CloudToDevice>,
}

impl Sessions {
    pub(crate) fn new(
        store: Arc<dyn Store>,
        registry: Registry,
        presence: Arc<Presence>,
        c2d: Arc<CloudToDevice>,
        activity: Arc<Activity>,
    ) -> Self {
        Self { store, registry, presence, c2d, activity }
    }

    /// A device connected: a `persistent` connection (MQTT clean session 0)
    /// gets its stored subscriptions back, a clean one forgets them.
    pub async fn connect(&self, device_id: &str, persistent: bool) -> HubResult<DeviceConnection> {
        let about = Entity::Device(device_id);
        let stored = if persistent {
            self.store.load_session(device_id).await.map_err(|e| store_error(e, about))?
        } else {
            self.store.delete_session(device_id).await.map_err(|e| store_error(e, about))?;
            None
        };
        let session_present = stored.is_some();
        if persistent && !session_present {
            // A session exists from the first CONNECT on, so the next one
            // reports session-present (docs/decisions.md, Sessions).
            self.store.save_session(device_id, 0).await.map_err(|e| store_error(e, about))?;
        }
        let subscriptions = Arc::new(AtomicU8::new(stored.unwrap_or(0)));
        let (tx, rx) = mpsc::channel(OUTBOUND_QUEUE);
        let registration = self.presence.register(device_id, tx, subscriptions.clone());
        // From here on the guard owns the bookkeeping: a failure below still
        // unregisters and records the disconnect.
        let connection = DeviceConnection {
            device_id: device_id.to_owned(),
            conn_id: registration.id,
            connection_token: uuid::Uuid::new_v4().to_string(),
            persistent,
            session_present,
            ended: false,
            locked_c2d: Default::default(),
            subscriptions,
            kick: registration.kick,
            outbound: Some(rx),
            store: self.store.clone(),
            registry: self.registry.clone(),
            presence: self.presence.clone(),
            c2d: self.c2d.clone(),
        };
        self.registry.set_connection_state(device_id, true).await?;
        // That write carried `lastActivityTime`.
        self.activity.stored(device_id);
        Ok(connection)
    }
}

impl DeviceConnection {
    /// The device.
    pub fn device_id(&self) -> &str {
        &self.device_id
    }

    /// Up to `max` more of the device's C2D messages, each locked to this
    /// connection until [`complete_c2d`](Self::complete_c2d); the
    /// connection's end releases the rest (counted as a delivery).
    pub async fn lock_c2d(&self, max: usize) -> HubResult<Vec<Locked>> {
        // Marked before the store call: a task cancelled while the lock
        // commits must still release what it took.
        self.locked_c2d.store(true, Ordering::Relaxed);
        self.c2d.lock_for_connection(&self.device_id, &self.connection_token, max).await
    }

    /// The device acknowledged a message this connection holds; false when
    /// it held none (expired meanwhile, or a stray acknowledgement).
    pub async fn complete_c2d(&self, seq: i64) -> HubResult<bool> {
        self.c2d.complete_for_connection(&self.device_id, &self.connection_token, seq).await
    }

    /// Whether a stored session was restored.
    pub fn session_present(&self) -> bool {
        self.session_present
    }

    /// The current subscriptions.
    pub fn subscriptions(&self) -> SubscriptionSet {
        SubscriptionSet::from_bits(self.subscriptions.load(Ordering::Relaxed))
    }

    /// Whether the device listens for `s`.
    pub fn subscribed(&self, s: Subscription) -> bool {
        self.subscriptions().contains(s)
    }

    /// Resolves when the hub wants this connection closed (takeover,
    /// disable, delete, slow consumer).
    pub fn kicked(&self) -> tokio::sync::futures::Notified<'_> {
        self.kick.notified()
    }

    /// The pushes for this connection (once: the transport's loop owns it).
    pub fn take_outbound(&mut self) -> Option<mpsc::Receiver<Outbound>> {
        self.outbound.take()
    }

    /// Replaces the subscriptions, storing them first for a persistent
    /// session; returns the previous set. Waiters on presence changes (a
    /// method call waiting for its device) are woken.
    pub async fn set_subscriptions(&self, next: SubscriptionSet) -> HubResult<SubscriptionSet> {
        if self.persistent {
            self.store
                .save_session(&self.device_id, next.bits())
                .await
                .map_err(|e| store_error(e, Entity::Device(&self.device_id)))?;
        }
        let before = self.subscriptions.swap(next.bits(), Ordering::Relaxed);
        self.presence.notify_changed();
        Ok(SubscriptionSet::from_bits(before))
    }
}

impl DeviceConnection {
    /// Ends the connection's presence and returns once its end is recorded
    /// (the usual way out of a transport's loop; dropping does the same in
    /// the background).
    pub async fn close(mut self) {
        if let Some(end) = self.end() {
            end.await;
        }
    }

    /// Unregisters and returns the recording of the end, the first time it
    /// is called; `None` after that, which makes the end happen once.
    fn end(&mut self) -> Option<impl std::future::Future<Output = ()> + Send + 'static> {
        if self.ended {
            return None;
        }
        self.ended = true;
        self.presence.unregister(&self.device_id, self.conn_id);
        let (registry, c2d) = (self.registry.clone(), self.c2d.clone());
        let device_id = self.device_id.clone();
        let token = self.connection_token.clone();
        let locked_c2d = self.locked_c2d.load(Ordering::Relaxed);
        Some(async move {
            // What the connection held goes back to the queue (and to a
            // newer connection, if there is one).
            if locked_c2d {
                if let Err(e) = c2d.release_connection(&device_id, &token).await {
                    tracing::warn!(device_id, %e, "could not release the connection's messages");
                }
            }
            // Skipped under the device's write lock when a newer connection
            // is live (Registry::set_connection_state).
            if let Err(e) = registry.set_connection_state(&device_id, false).await {
                tracing::debug!(device_id, %e, "could not record the disconnect");
            }
        })
    }
}

impl Drop for DeviceConnection {
    fn drop(&mut self) {
        // Reached without `close` when the transport's task panicked or was
        // cancelled: record the end in the background.
        let Some(end) = self.end() else { return };
        match tokio::runtime::Handle::try_current() {
            Ok(rt) => drop(rt.spawn(end)),
            Err(_) => tracing::warn!("a connection ended outside the runtime: disconnect not recorded"),
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use ferrohub_core::identity::{ConnectionState, DeviceRequest};

    struct Fixture {
        sessions: Sessions,
        registry: Registry,
        presence: Arc<Presence>,
        _dir: tempfile::TempDir,
    }

    async fn fixture() -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let store: Arc<dyn Store> =
            Arc::new(ferrohub_store::SqliteStore::open(&dir.path().join("hub.db")).unwrap());
        let presence = Arc::new(Presence::default());
        let (registry, _changes) = Registry::new(store.clone(), presence.clone());
        let c2d = CloudToDevice::open(store.clone(), presence.clone(), Arc::default()).await.unwrap();
        registry.create_device("d", DeviceRequest::default(), None).await.unwrap();
        let activity = Arc::new(Activity::new(registry.clone()));
        let sessions = Sessions::new(store, registry.clone(), presence.clone(), c2d, activity);
        Fixture { sessions, registry, presence, _dir: dir }
    }

    async fn state(f: &Fixture) -> ConnectionState {
        f.registry.get_device("d").await.unwrap().connection_state
    }

    /// The end recorded in the background (drop): polled, with a deadline.
    async fn until_disconnected(f: &Fixture) {
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
        while state(f).await != ConnectionState::Disconnected {
            assert!(tokio::time::Instant::now() < deadline, "never recorded disconnected");
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
    }

    #[tokio::test]
    async fn close_records_the_end_and_presence_forgets_the_device() {
        let f = fixture().await;
        let conn = f.sessions.connect("d", false).await.unwrap();
        assert_eq!(state(&f).await, ConnectionState::Connected);
        assert_eq!(f.presence.connected_count(), 1);
        conn.close().await;
        assert_eq!(state(&f).await, ConnectionState::Disconnected);
        assert_eq!(f.presence.connected_count(), 0);
    }

    #[tokio::test]
    async fn a_panicking_connection_task_still_records_its_end() {
        let f = fixture().await;
        let conn = f.sessions.connect("d", true).await.unwrap();
        let task = tokio::spawn(async move {
            let _conn = conn;
            panic!("a bug in a transport");
        });
        assert!(task.await.unwrap_err().is_panic());
        assert_eq!(f.presence.connected_count(), 0, "unregistered during the unwind");
        until_disconnected(&f).await;
    }

    #[tokio::test]
    async fn the_late_end_of_a_replaced_connection_leaves_the_newer_one_connected() {
        let f = fixture().await;
        let old = f.sessions.connect("d", true).await.unwrap();
        let new = f.sessions.connect("d", true).await.unwrap();
        assert!(new.session_present(), "the first CONNECT stored the session");
        old.kicked().await;
        old.close().await;
        assert_eq!(state(&f).await, ConnectionState::Connected);
        assert_eq!(f.presence.connected_count(), 1);
        new.close().await;
        assert_eq!(state(&f).await, ConnectionState::Disconnected);
    }

    #[tokio::test]
    async fn subscriptions_of_a_persistent_session_are_stored_and_restored() {
        let f = fixture().await;
        let conn = f.sessions.connect("d", true).await.unwrap();
        let subs: SubscriptionSet = [Subscription::C2d, Subscription::Methods].into_iter().collect();
        conn.set_subscriptions(subs).await.unwrap();
        conn.close().await;
        let again = f.sessions.connect("d", true).await.unwrap();
        assert!(again.session_present());
        assert_eq!(again.subscriptions(), subs);
        again.close().await;
        let clean = f.sessions.connect("d", false).await.unwrap();
        assert!(!clean.session_present());
        assert!(clean.subscriptions().is_empty());
    }
}
