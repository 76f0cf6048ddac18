//! Desired-property continuity: which full documents and patches reach the
//! application, so that a version is never delivered twice and never goes
//! backwards, across reconnects.
//!
//! The protocol gives no backlog: a patch made while the device is offline
//! is never sent to it. So after every (re)connect the client subscribes to
//! desired patches first and then GETs the twin. Patches that arrive while
//! that GET is outstanding are held; when it answers, the full desired
//! document is delivered if its `$version` is newer than the last one
//! delivered, then the held patches newer than that. From then on a patch
//! is delivered if it is newer than the last delivery; older or equal ones
//! are duplicates and are dropped. A patch that skips versions (IoT Hub
//! raises `$version` by exactly one per change) means one was missed, so
//! the tracker asks for another GET rather than deliver a gap.

use serde_json::Value;

/// Held patches beyond this many (while a GET is outstanding) are dropped;
/// the GET's full document covers whatever they changed up to its version.
const MAX_HELD: usize = 256;

/// One delivery on the desired-properties stream.
#[derive(Debug, Clone, PartialEq)]
pub struct DesiredUpdate {
    /// The desired `$version` this update brings the device to.
    pub version: i64,
    /// `true`: `body` is the whole desired document (from a twin GET after a
    /// connect, or after a missed version), replacing whatever the device
    /// knew. `false`: `body` is a patch (JSON merge semantics: `null`
    /// deletes a key).
    pub full: bool,
    /// The document or patch as the hub sent it, including `$version`.
    pub body: Value,
}

/// The continuity rules as a pure state machine (no IO, no clock), driven
/// by the client's connection task and usable on its own.
///
/// ```
/// use ferrohub_device_client::DesiredTracker;
/// use serde_json::json;
///
/// let mut t = DesiredTracker::new();
/// t.begin_sync(); // connected: subscribed, GET sent
/// assert_eq!(t.on_patch(4, json!({"a": 1, "$version": 4})), None); // held
/// let out = t.on_get(3, json!({"$version": 3}));
/// assert!(out[0].full && out[0].version == 3);
/// assert_eq!((out[1].full, out[1].version), (false, 4));
/// assert_eq!(t.on_patch(4, json!({"$version": 4})), None); // duplicate
/// ```
#[derive(Debug, Default, Clone)]
pub struct DesiredTracker {
    last: Option<i64>,
    syncing: bool,
    wants_get: bool,
    held: Vec<(i64, Value)>,
}

impl DesiredTracker {
    /// A tracker that has delivered nothing yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// The last version delivered, if any.
    pub fn last_delivered(&self) -> Option<i64> {
        self.last
    }

    /// Whether a GET is outstanding (patches are being held).
    pub fn is_syncing(&self) -> bool {
        self.syncing
    }

    /// Called when the client sends a twin GET to (re)synchronise: after
    /// subscribing on a new connection, or when [`Self::wants_get`] said so.
    /// Until [`Self::on_get`], patches are held.
    pub fn begin_sync(&mut self) {
        self.syncing = true;
        self.wants_get = false;
    }

    /// Whether the tracker needs a twin GET that has not been sent yet
    /// (after a version gap or a failed GET). The caller sends one and calls
    /// [`Self::begin_sync`].
    pub fn wants_get(&self) -> bool {
        self.wants_get
    }

    /// The GET answered with desired `$version` `version` and document
    /// `desired`. Returns what to deliver, in order: the full document if it
    /// is newer than the last delivery, then held patches newer than that.
    pub fn on_get(&mut self, version: i64, desired: Value) -> Vec<DesiredUpdate> {
        self.syncing = false;
        self.wants_get = false;
        let mut out = Vec::new();
        if self.is_new(version) {
            self.last = Some(version);
            out.push(DesiredUpdate { version, full: true, body: desired });
        }
        let mut held = std::mem::take(&mut self.held);
        held.sort_by_key(|(v, _)| *v);
        for (v, body) in held {
            if self.is_new(v) {
                self.last = Some(v);
                out.push(DesiredUpdate { version: v, full: false, body });
            }
        }
        out
    }

    /// The GET failed (the hub answered an error, or the answer had no
    /// desired `$version`). Patches stay held and another GET is wanted.
    pub fn on_get_failed(&mut self) {
        self.syncing = false;
        self.wants_get = true;
    }

    /// The connection was lost: an outstanding GET will not be answered.
    /// Held patches are kept (the next GET decides about them).
    pub fn on_disconnect(&mut self) {
        self.syncing = false;
        self.wants_get = false;
    }

    /// A desired patch with `$version` `version` arrived. Returns it if it is
    /// to be delivered now.
    pub fn on_patch(&mut self, version: i64, body: Value) -> Option<DesiredUpdate> {
        if !self.is_new(version) {
            return None;
        }
        if self.syncing || self.wants_get {
            self.hold(version, body);
            return None;
        }
        match self.last {
            Some(last) if version > last.saturating_add(1) => {
                // A version was missed: hold this one and resynchronise.
                self.hold(version, body);
                self.wants_get = true;
                None
            }
            _ => {
                self.last = Some(version);
                Some(DesiredUpdate { version, full: false, body })
            }
        }
    }

    fn is_new(&self, version: i64) -> bool {
        match self.last {
            Some(last) => version > last,
            None => true,
        }
    }

    fn hold(&mut self, version: i64, body: Value) {
        if self.held.len() < MAX_HELD {
            self.held.push((version, body));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn versions(updates: &[DesiredUpdate]) -> Vec<(i64, bool)> {
        updates.iter().map(|u| (u.version, u.full)).collect()
    }

    #[test]
    fn first_connect_delivers_the_full_document_then_patches() {
        let mut t = DesiredTracker::new();
        t.begin_sync();
        let out = t.on_get(5, json!({"a": 1, "$version": 5}));
        assert_eq!(versions(&out), [(5, true)]);
        assert_eq!(out[0].body, json!({"a": 1, "$version": 5}));
        assert_eq!(t.on_patch(6, json!({"b": 2})).map(|u| (u.version, u.full)), Some((6, false)));
        assert_eq!(t.on_patch(7, json!({})).map(|u| u.version), Some(7));
        assert_eq!(t.last_delivered(), Some(7));
    }

    #[test]
    fn a_fresh_twin_at_version_one_is_delivered() {
        let mut t = DesiredTracker::new();
        t.begin_sync();
        assert_eq!(versions(&t.on_get(1, json!({"$version": 1}))), [(1, true)]);
    }

    #[test]
    fn patches_during_the_get_are_held_and_filtered() {
        let mut t = DesiredTracker::new();
        t.begin_sync();
        // Between SUBSCRIBE and the GET's answer: 5 is already in the GET,
        // 7 arrives before 6 only in this test (order is restored).
        assert_eq!(t.on_patch(5, json!({"v": 5})), None);
        assert_eq!(t.on_patch(7, json!({"v": 7})), None);
        assert_eq!(t.on_patch(6, json!({"v": 6})), None);
        let out = t.on_get(5, json!({"$version": 5}));
        assert_eq!(versions(&out), [(5, true), (6, false), (7, false)]);
        assert_eq!(out[2].body, json!({"v": 7}));
        assert!(!t.is_syncing());
    }

    #[test]
    fn reconnect_without_changes_delivers_nothing() {
        let mut t = DesiredTracker::new();
        t.begin_sync();
        t.on_get(3, json!({}));
        assert!(t.on_patch(4, json!({})).is_some());
        t.on_disconnect();
        t.begin_sync();
        assert!(t.on_get(4, json!({})).is_empty());
        assert_eq!(t.last_delivered(), Some(4));
    }

    #[test]
    fn reconnect_after_missed_changes_delivers_the_newer_full_document() {
        let mut t = DesiredTracker::new();
        t.begin_sync();
        t.on_get(3, json!({}));
        t.on_disconnect();
        // 4 and 5 happened while offline; 6 arrives before the GET answers.
        t.begin_sync();
        assert_eq!(t.on_patch(6, json!({"x": 6})), None);
        let out = t.on_get(5, json!({"x": 5}));
        assert_eq!(versions(&out), [(5, true), (6, false)]);
    }

    #[test]
    fn versions_never_repeat_or_go_backwards() {
        let mut t = DesiredTracker::new();
        t.begin_sync();
        t.on_get(10, json!({}));
        assert_eq!(t.on_patch(10, json!({})), None);
        assert_eq!(t.on_patch(9, json!({})), None);
        // A GET answering an older version (a stale replica, a lagging hub)
        // delivers nothing.
        t.begin_sync();
        assert!(t.on_get(8, json!({})).is_empty());
        assert_eq!(t.on_patch(11, json!({})).map(|u| u.version), Some(11));
        assert_eq!(t.on_patch(11, json!({})), None);
        assert_eq!(t.last_delivered(), Some(11));
    }

    #[test]
    fn a_version_gap_holds_the_patch_and_asks_for_a_get() {
        let mut t = DesiredTracker::new();
        t.begin_sync();
        t.on_get(2, json!({}));
        assert_eq!(t.on_patch(4, json!({"v": 4})), None);
        assert!(t.wants_get());
        // Patches keep being held until the resync GET answers.
        assert_eq!(t.on_patch(5, json!({"v": 5})), None);
        t.begin_sync();
        assert!(!t.wants_get());
        let out = t.on_get(4, json!({"full": 4}));
        assert_eq!(versions(&out), [(4, true), (5, false)]);
    }

    #[test]
    fn a_failed_get_keeps_holding_and_asks_again() {
        let mut t = DesiredTracker::new();
        t.begin_sync();
        assert_eq!(t.on_patch(1, json!({})), None);
        t.on_get_failed();
        assert!(t.wants_get() && !t.is_syncing());
        assert_eq!(t.on_patch(2, json!({})), None);
        t.begin_sync();
        assert_eq!(versions(&t.on_get(1, json!({}))), [(1, true), (2, false)]);
    }

    #[test]
    fn patches_before_any_sync_are_delivered() {
        // Used without a GET (e.g. desired GET disabled): the first patch
        // sets the baseline.
        let mut t = DesiredTracker::new();
        assert_eq!(t.on_patch(9, json!({})).map(|u| u.version), Some(9));
        assert_eq!(t.on_patch(10, json!({})).map(|u| u.version), Some(10));
    }

    #[test]
    fn held_patches_are_bounded() {
        let mut t = DesiredTracker::new();
        t.begin_sync();
        for v in 1..=(MAX_HELD as i64 + 10) {
            t.on_patch(v, json!({}));
        }
        assert_eq!(t.held.len(), MAX_HELD);
        let out = t.on_get(MAX_HELD as i64 + 10, json!({}));
        assert_eq!(versions(&out), [(MAX_HELD as i64 + 10, true)]);
        assert!(t.held.is_empty());
    }
}
