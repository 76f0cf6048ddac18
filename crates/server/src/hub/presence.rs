//! Which devices hold a live MQTT connection, and the one way to reach each.
//!
//! Every connection registers here after CONNECT succeeds; the registry and
//! the REST API push to a device only through [`Presence::send`], which
//! never blocks: a connection whose outbound queue is full is a slow
//! consumer and is closed rather than let it hold memory or stall a writer.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use ferrohub_mqtt::topic::Subscription;
use tokio::sync::{mpsc, Notify};

/// The subscriptions of a connection ([`Subscription`] bits), readable by
/// other tasks.
pub(crate) type Subscriptions = Arc<AtomicU8>;

/// Something the hub wants a connected device to receive.
#[derive(Debug)]
pub enum Outbound {
    /// A desired-properties notification (body includes `$version`).
    Desired { version: i64, body: Bytes },
    /// A direct method call.
    Method { name: String, rid: String, payload: Bytes },
    /// New cloud-to-device messages are queued.
    C2dAvailable,
}

/// Outcome of [`Presence::send`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Delivery {
    /// Queued for the connection.
    Queued,
    /// No live connection (or it lacks the subscription).
    NotConnected,
}

struct Conn {
    id: u64,
    tx: mpsc::Sender<Outbound>,
    subscriptions: Subscriptions,
    kick: Arc<Notify>,
}

/// The live connections of this hub node.
#[derive(Default)]
pub struct Presence {
    conns: Mutex<HashMap<String, Conn>>,
    next_id: AtomicU64,
    changed: Notify,
}

/// What a connection gets back from [`Presence::register`].
pub(crate) struct Registration {
    /// Identifies this connection for [`Presence::unregister`].
    pub(crate) id: u64,
    /// Notified when the hub wants this connection closed (takeover,
    /// disable, delete, slow consumer).
    pub(crate) kick: Arc<Notify>,
}

impl Presence {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Conn>> {
        // A panic while holding this lock cannot leave the map inconsistent:
        // each operation is one insert or remove (and a try_send).
        crate::sync::consistent(self.conns.lock(), "presence")
    }

    /// Registers a device's new connection, closing the one it replaces.
    pub(crate) fn register(
        &self,
        device_id: &str,
        tx: mpsc::Sender<Outbound>,
        subscriptions: Subscriptions,
    ) -> Registration {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let kick = Arc::new(Notify::new());
        let old =
            self.lock().insert(device_id.to_owned(), Conn { id, tx, subscriptions, kick: kick.clone() });
        if let Some(old) = old {
            tracing::info!(device_id, "new connection replaces the old one");
            old.kick.notify_one();
        }
        self.changed.notify_waiters();
        Registration { id, kick }
    }

    /// Removes a connection, unless a newer one already took its place.
    pub(crate) fn unregister(&self, device_id: &str, conn_id: u64) {
        let mut conns = self.lock();
        if conns.get(device_id).is_some_and(|c| c.id == conn_id) {
            conns.remove(device_id);
        }
        drop(conns);
        self.changed.notify_waiters();
    }

    /// Closes a device's live connection, if any.
    pub(crate) fn kick(&self, device_id: &str) {
        if let Some(c) = self.lock().remove(device_id) {
            c.kick.notify_one();
        }
        self.changed.notify_waiters();
    }

    /// Whether the device has a live connection.
    pub(crate) fn is_connected(&self, device_id: &str) -> bool {
        self.lock().contains_key(device_id)
    }

    /// Queues `msg` for the device's connection if it has `subscription`.
    /// A full queue closes the connection (slow consumer).
    pub(crate) fn send(&self, device_id: &str, subscription: Subscription, msg: Outbound) -> Delivery {
        let mut conns = self.lock();
        let Some(conn) = conns.get(device_id) else { return Delivery::NotConnected };
        if conn.subscriptions.load(Ordering::Relaxed) & subscription as u8 == 0 {
            return Delivery::NotConnected;
        }
        match conn.tx.try_send(msg) {
            Ok(()) => Delivery::Queued,
            Err(mpsc::error::TrySendError::Full(_)) => {
                tracing::warn!(device_id, "outbound queue full: closing the slow connection");
                if let Some(c) = conns.remove(device_id) {
                    c.kick.notify_one();
                }
                Delivery::NotConnected
            }
            Err(mpsc::error::TrySendError::Closed(_)) => Delivery::NotConnected,
        }
    }

    /// Live connections on this node.
    pub fn connected_count(&self) -> usize {
        self.lock().len()
    }

    /// Resolves at the next connect, disconnect or subscription change
    /// after this call (the future registers at creation, so take it before
    /// looking at the state it guards).
    pub(crate) fn changed(&self) -> tokio::sync::futures::Notified<'_> {
        self.changed.notified()
    }

    /// Wakes [`Presence::changed`] waiters (a connection subscribed).
    pub(crate) fn notify_changed(&self) {
        self.changed.notify_waiters();
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn conn(
        p: &Presence,
        id: &str,
        cap: usize,
        sub: Subscription,
    ) -> (Registration, mpsc::Receiver<Outbound>) {
        let (tx, rx) = mpsc::channel(cap);
        (p.register(id, tx, Arc::new(AtomicU8::new(sub as u8))), rx)
    }

    #[tokio::test]
    async fn a_new_connection_kicks_the_old_and_survives_its_unregister() {
        let p = Presence::default();
        let (old, _rx1) = conn(&p, "d", 4, Subscription::DesiredPatches);
        let (new, mut rx2) = conn(&p, "d", 4, Subscription::DesiredPatches);
        old.kick.notified().await;
        p.unregister("d", old.id);
        assert_eq!(p.connected_count(), 1);
        assert_eq!(p.send("d", Subscription::DesiredPatches, Outbound::C2dAvailable), Delivery::Queued);
        assert!(matches!(rx2.recv().await, Some(Outbound::C2dAvailable)));
        p.unregister("d", new.id);
        assert_eq!(p.send("d", Subscription::DesiredPatches, Outbound::C2dAvailable), Delivery::NotConnected);
    }

    #[tokio::test]
    async fn sends_need_the_subscription_and_a_full_queue_kicks() {
        let p = Presence::default();
        let (reg, _rx) = conn(&p, "d", 1, Subscription::C2d);
        assert_eq!(p.send("d", Subscription::Methods, Outbound::C2dAvailable), Delivery::NotConnected);
        assert_eq!(p.send("d", Subscription::C2d, Outbound::C2dAvailable), Delivery::Queued);
        assert_eq!(p.send("d", Subscription::C2d, Outbound::C2dAvailable), Delivery::NotConnected);
        reg.kick.notified().await;
        assert_eq!(p.connected_count(), 0);
    }
}
