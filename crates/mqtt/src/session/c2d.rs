//! The cloud-to-device messages a session has in flight: packet ids and the
//! window. The messages themselves stay locked in the hub's queue; the
//! session only remembers which packet id carries which queue entry.

use bytes::Bytes;

/// Messages sent and not yet acknowledged, at most. Small, because each
/// one is locked to this connection until its PUBACK and redelivered (and
/// counted) if the connection ends first.
pub const C2D_WINDOW: usize = 8;

/// A queued message locked to this connection, ready to be sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct C2dMessage {
    /// Its sequence number in the device's queue (what completes it).
    pub seq: i64,
    /// Its property bag, formatted (`crate::format_bag`).
    pub bag: String,
    /// Its body.
    pub body: Bytes,
}

#[derive(Debug, Default)]
pub(super) struct Window {
    /// (packet id, queue seq) of messages in flight.
    pub(super) inflight: Vec<(u16, i64)>,
    /// Slots asked for and not answered yet, so a second request cannot
    /// overfill the window.
    pub(super) requested: usize,
    pub(super) next_pkid: u16,
}

impl Window {
    /// Reserves the free room for a fetch; `None` when there is none.
    pub(super) fn request(&mut self) -> Option<usize> {
        let room = C2D_WINDOW.saturating_sub(self.inflight.len() + self.requested);
        (room > 0).then(|| {
            self.requested += room;
            room
        })
    }

    /// A fetch was answered: the reservation ends.
    pub(super) fn fetched(&mut self) {
        self.requested = 0;
    }

    /// Puts the message with queue `seq` in flight; returns its packet id.
    pub(super) fn send(&mut self, seq: i64) -> u16 {
        let pkid = self.pkid();
        self.inflight.push((pkid, seq));
        pkid
    }

    /// A PUBACK: the queue seq it acknowledges, if `pkid` is in flight.
    pub(super) fn acked(&mut self, pkid: u16) -> Option<i64> {
        let i = self.inflight.iter().position(|(p, _)| *p == pkid)?;
        Some(self.inflight.swap_remove(i).1)
    }

    fn pkid(&mut self) -> u16 {
        // Packet ids are 1..=65535 and must not collide with one in flight;
        // at most C2D_WINDOW are, so this ends.
        loop {
            self.next_pkid = self.next_pkid.wrapping_add(1).max(1);
            if !self.inflight.iter().any(|(p, _)| *p == self.next_pkid) {
                return self.next_pkid;
            }
        }
    }
}
