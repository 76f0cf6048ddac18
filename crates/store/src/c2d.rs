//! The types of the cloud-to-device queue and the feedback queue as the
//! [`Store`](crate::Store) trait hands them out. The rules (what a
//! settlement does, which feedback it yields) are `ferrohub_core::c2d`'s;
//! the store applies them inside the transaction that settles the message,
//! so a settled message and its feedback record commit together.

use ferrohub_core::c2d::AckMode;

/// A message to append to a device's queue.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewC2d {
    /// The message id (`originalMessageId` of its feedback).
    pub message_id: String,
    /// The feedback the sender asked for.
    pub ack: AckMode,
    /// When it expires (Unix milliseconds).
    pub expiry_ms: i64,
    /// The message, serialised by the caller; opaque to the store.
    pub message: String,
}

/// A message locked to one receiver.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LockedC2d {
    /// Its sequence number: increasing per hub, never reused
    /// (`iothub-sequencenumber`).
    pub seq: i64,
    /// The token that settles it: the receive's own token (HTTPS) or the
    /// connection's (MQTT).
    pub lock_token: String,
    /// Deliveries counted so far (explicit abandons, MQTT connections that
    /// ended without a PUBACK): 0 on the first receive.
    pub delivery_count: u32,
    /// The sender's ack mode (`iothub-ack`).
    pub ack: AckMode,
    /// When it expires (Unix milliseconds).
    pub expiry_ms: i64,
    /// The message as the caller stored it.
    pub message: String,
}

/// What a settlement by lock token did. A token that does not hold what it
/// names (unknown, expired, already settled) is an answer here rather than
/// a [`StoreError`](crate::StoreError) variant: the server maps store
/// errors in exhaustive matches that this phase must not edit. Map
/// [`Settled::LockLost`] to `HubError::lock_lost` (412
/// `DeviceMessageLockLost`). Nothing stored changes when the lock is lost.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[must_use]
pub enum Settled<T> {
    /// The settlement was applied (and committed).
    Done(T),
    /// The lock token does not hold the message or batch; nothing changed.
    LockLost,
}

impl<T> Settled<T> {
    /// The value, or `None` when the lock was lost.
    pub fn done(self) -> Option<T> {
        match self {
            Self::Done(v) => Some(v),
            Self::LockLost => None,
        }
    }
}
