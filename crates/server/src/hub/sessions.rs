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

use super::c2d::CloudToDevice;
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
}

/// A live device connection. Dropping it ends the connection's presence.
pub struct DeviceConnection {
    device_id: String,
    conn_id: u64,
    /// Locks what this connection holds of the device's C2D queue.
    connection_token: String,
    persistent: bool,
    session_present: bool,
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
    ) -> Self {
        Self { store, registry, presence, c2d }
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
            subscriptions,
            kick: registration.kick,
            outbound: Some(rx),
            store: self.store.clone(),
            registry: self.registry.clone(),
            presence: self.presence.clone(),
            c2d: self.c2d.clone(),
        };
        self.registry.set_connection_state(device_id, true).await?;
        Ok(connection)
    }
}

impl DeviceConnection {
    /// The device.
    pub fn device_id(&self) -> &str {
        &self.device_id
    }

    /// The token this connection's C2D locks are held under.
    pub fn connection_token(&self) -> &str {
        &self.connection_token
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

impl Drop for DeviceConnection {
    fn drop(&mut self) {
        self.presence.unregister(&self.device_id, self.conn_id);
        let (registry, c2d) = (self.registry.clone(), self.c2d.clone());
        let device_id = std::mem::take(&mut self.device_id);
        let token = std::mem::take(&mut self.connection_token);
        let record = async move {
            // What the connection held goes back to the queue (and to a
            // newer connection, if there is one).
            if let Err(e) = c2d.release_connection(&device_id, &token).await {
                tracing::warn!(device_id, %e, "could not release the connection's messages");
            }
            // Skipped under the device's write lock when a newer connection
            // is live (Registry::set_connection_state).
            if let Err(e) = registry.set_connection_state(&device_id, false).await {
                tracing::debug!(device_id, %e, "could not record the disconnect");
            }
        };
        match tokio::runtime::Handle::try_current() {
            Ok(rt) => drop(rt.spawn(record)),
            Err(_) => tracing::warn!("a connection ended outside the runtime: disconnect not recorded"),
        }
    }
}
