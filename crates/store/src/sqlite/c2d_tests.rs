//! The cloud-to-device and feedback queues against a real SQLite file.

#![allow(clippy::unwrap_used)]

use ferrohub_core::c2d::{
    AckMode, AfterSettle, FeedbackStatus, Outcome, Settlement, DEFAULT_MAX_DELIVERY_COUNT,
    FEEDBACK_LOCK_DURATION_MS, FEEDBACK_MAX_DELIVERY_COUNT, FEEDBACK_TTL_MS, LOCK_DURATION_MS,
};
use ferrohub_core::message::MAX_C2D_QUEUE;

use super::tests::{open, record};
use super::SqliteStore;
use crate::{NewC2d, Settled, Store, StoreError};

const T0: i64 = 1_700_000_000_000;
const HOUR: i64 = 3_600_000;
const MAX: u32 = DEFAULT_MAX_DELIVERY_COUNT;

fn msg(id: &str, ack: AckMode) -> NewC2d {
    NewC2d {
        message_id: id.into(),
        ack,
        expiry_ms: T0 + HOUR,
        message: format!("{{\"messageId\":\"{id}\"}}"),
    }
}

async fn with_device(id: &str) -> (tempfile::TempDir, SqliteStore) {
    let (d, s) = open();
    s.create_device(&record(id)).await.unwrap();
    (d, s)
}

/// Every queued row as (seq, delivery_count, lock_token, lock_until_ms):
/// what "nothing stored changes" compares.
async fn rows(s: &SqliteStore) -> Vec<(i64, i64, Option<String>, Option<i64>)> {
    s.read(|c| {
        let mut st = c
            .prepare("SELECT seq, delivery_count, lock_token, lock_until_ms FROM c2d_messages ORDER BY seq")
            .unwrap();
        let rows = st.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?))).unwrap();
        Ok(rows.collect::<Result<Vec<_>, _>>().unwrap())
    })
    .await
    .unwrap()
}

async fn feedback_rows(s: &SqliteStore) -> i64 {
    s.read(|c| Ok(c.query_row("SELECT COUNT(*) FROM c2d_feedback", [], |r| r.get(0)).unwrap())).await.unwrap()
}

/// Every feedback record available at `now`, as (message id, status),
/// completed so the next call starts empty.
async fn drain_feedback(s: &SqliteStore, now: i64) -> Vec<(String, FeedbackStatus)> {
    let batch = s.receive_feedback("drain", 1_000, now).await.unwrap();
    if !batch.is_empty() {
        assert!(matches!(s.complete_feedback("drain", now).await.unwrap(), Settled::Done(_)));
    }
    batch.into_iter().map(|r| (r.original_message_id, r.status_code)).collect()
}

#[tokio::test]
async fn a_receive_locks_the_oldest_message_for_a_minute_and_a_lapsed_lock_counts_nothing() {
    let (_d, s) = with_device("d").await;
    let first = s.enqueue_c2d_message("d", msg("m1", AckMode::None), MAX_C2D_QUEUE, T0).await.unwrap();
    let second = s.enqueue_c2d_message("d", msg("m2", AckMode::None), MAX_C2D_QUEUE, T0).await.unwrap();
    let a = s.receive_c2d("d", "tok-a", T0).await.unwrap().unwrap();
    assert_eq!((a.seq, a.delivery_count, a.lock_token.as_str()), (first, 0, "tok-a"));
    assert_eq!(a.message, "{\"messageId\":\"m1\"}");
    // The locked message is invisible: the next receive gets the next one.
    let b = s.receive_c2d("d", "tok-b", T0 + 1).await.unwrap().unwrap();
    assert_eq!(b.seq, second);
    assert!(s.receive_c2d("d", "tok-c", T0 + 2).await.unwrap().is_none());
    // One minute later the first lock has lapsed: the message is back with
    // its delivery count unchanged, under a new token; the old one is dead.
    let again = s.receive_c2d("d", "tok-d", T0 + LOCK_DURATION_MS).await.unwrap().unwrap();
    assert_eq!((again.seq, again.delivery_count), (first, 0));
    let before = rows(&s).await;
    let stale = s.settle_c2d("d", "tok-a", Settlement::Complete, MAX, T0 + LOCK_DURATION_MS).await.unwrap();
    assert_eq!(stale, Settled::LockLost);
    assert_eq!(rows(&s).await, before);
    let done = s.settle_c2d("d", "tok-d", Settlement::Complete, MAX, T0 + LOCK_DURATION_MS).await.unwrap();
    assert_eq!(done, Settled::Done(AfterSettle::Removed(Outcome::Completed)));
    assert_eq!(rows(&s).await.len(), 1);
}

#[tokio::test]
async fn abandons_count_deliveries_and_the_last_one_dead_letters_with_feedback() {
    let (_d, s) = with_device("d").await;
    s.enqueue_c2d_message("d", msg("m1", AckMode::Negative), MAX_C2D_QUEUE, T0).await.unwrap();
    for n in 0..3u32 {
        let now = T0 + i64::from(n);
        let m = s.receive_c2d("d", &format!("t{n}"), now).await.unwrap().unwrap();
        assert_eq!(m.delivery_count, n, "counted abandons so far");
        let after = s.settle_c2d("d", &format!("t{n}"), Settlement::Abandon, 3, now).await.unwrap();
        let expected = if n < 2 {
            AfterSettle::Requeued { delivery_count: n + 1 }
        } else {
            AfterSettle::Removed(Outcome::DeliveryCountExceeded)
        };
        assert_eq!(after, Settled::Done(expected));
    }
    assert!(s.receive_c2d("d", "t9", T0 + 10).await.unwrap().is_none());
    assert_eq!(drain_feedback(&s, T0 + 10).await, [("m1".to_owned(), FeedbackStatus::DeliveryCountExceeded)]);
}

#[tokio::test]
async fn settlements_write_the_feedback_the_ack_mode_asks_for() {
    let (_d, s) = with_device("d").await;
    let mut r = record("g");
    r.device.generation_id = "gen-42".into();
    s.create_device(&r).await.unwrap();
    let cases = [
        ("none-c", AckMode::None, Settlement::Complete, None),
        ("pos-c", AckMode::Positive, Settlement::Complete, Some(FeedbackStatus::Success)),
        ("pos-r", AckMode::Positive, Settlement::Reject, None),
        ("neg-c", AckMode::Negative, Settlement::Complete, None),
        ("neg-r", AckMode::Negative, Settlement::Reject, Some(FeedbackStatus::Rejected)),
        ("full-c", AckMode::Full, Settlement::Complete, Some(FeedbackStatus::Success)),
        ("full-r", AckMode::Full, Settlement::Reject, Some(FeedbackStatus::Rejected)),
    ];
    for (id, ack, _, _) in cases {
        s.enqueue_c2d_message("g", msg(id, ack), MAX_C2D_QUEUE, T0).await.unwrap();
    }
    for (i, (id, ack, settlement, _)) in cases.into_iter().enumerate() {
        let now = T0 + 1_000 * i as i64;
        let m = s.receive_c2d("g", id, now).await.unwrap().unwrap();
        assert_eq!(m.ack, ack, "{id}: the ack mode comes back with the message");
        assert!(matches!(s.settle_c2d("g", id, settlement, MAX, now).await.unwrap(), Settled::Done(_)));
    }
    let batch = s.receive_feedback("fb", 100, T0 + 10_000).await.unwrap();
    let expected: Vec<_> =
        cases.iter().filter_map(|(id, _, _, status)| status.map(|st| (id.to_string(), st))).collect();
    let got: Vec<_> = batch.iter().map(|r| (r.original_message_id.clone(), r.status_code)).collect();
    assert_eq!(got, expected);
    let success = &batch[0];
    assert_eq!((success.device_id.as_str(), success.device_generation_id.as_str()), ("g", "gen-42"));
    assert_eq!(success.enqueued_time_utc.unix_millis(), T0 + 1_000, "dated when the device completed it");
    assert_eq!(success.description, "Success");
}

#[tokio::test]
async fn a_wrong_or_stale_lock_token_changes_nothing() {
    let (_d, s) = with_device("d").await;
    s.create_device(&record("other")).await.unwrap();
    s.enqueue_c2d_message("d", msg("m1", AckMode::Full), MAX_C2D_QUEUE, T0).await.unwrap();
    s.enqueue_c2d_message("d", msg("m2", AckMode::Full), MAX_C2D_QUEUE, T0).await.unwrap();
    s.receive_c2d("d", "held", T0).await.unwrap().unwrap();
    s.lock_c2d_for_connection("d", "conn", 1, T0).await.unwrap();
    let before = rows(&s).await;
    for settlement in [Settlement::Complete, Settlement::Reject, Settlement::Abandon] {
        for (device, token, now) in [
            ("d", "unknown", T0),
            ("other", "held", T0),                // another device's message
            ("d", "conn", T0),                    // a connection's lock settles only by PUBACK
            ("d", "held", T0 + LOCK_DURATION_MS), // the lock ran out
            ("ghost", "held", T0),                // no such device
        ] {
            let got = s.settle_c2d(device, token, settlement, MAX, now).await.unwrap();
            assert_eq!(got, Settled::LockLost, "{settlement:?} {device} {token} at {now}");
        }
    }
    assert_eq!(s.complete_c2d_for_connection("d", "held", 1, T0).await.unwrap(), Settled::LockLost);
    assert_eq!(rows(&s).await, before);
    assert_eq!(feedback_rows(&s).await, 0);
    // Settled once, the token is spent.
    assert!(matches!(
        s.settle_c2d("d", "held", Settlement::Reject, MAX, T0).await.unwrap(),
        Settled::Done(_)
    ));
    assert_eq!(s.settle_c2d("d", "held", Settlement::Complete, MAX, T0).await.unwrap(), Settled::LockLost);
    assert_eq!(feedback_rows(&s).await, 1, "only the reject's");
}

#[tokio::test]
async fn a_connection_holds_its_messages_until_puback_or_release_and_release_counts() {
    let (_d, s) = with_device("d").await;
    let seqs: Vec<_> = futures_seq(&s, &["m1", "m2", "m3"], AckMode::Full).await;
    let first = s.lock_c2d_for_connection("d", "c1", 2, T0).await.unwrap();
    assert_eq!(first.iter().map(|m| m.seq).collect::<Vec<_>>(), seqs[..2]);
    assert!(first.iter().all(|m| m.lock_token == "c1" && m.delivery_count == 0));
    // Held messages are not handed out again, to it or to anyone.
    let more = s.lock_c2d_for_connection("d", "c1", 8, T0).await.unwrap();
    assert_eq!(more.iter().map(|m| m.seq).collect::<Vec<_>>(), seqs[2..]);
    assert!(s.receive_c2d("d", "https", T0).await.unwrap().is_none());
    // A connection lock has no end: a minute later it still holds.
    assert!(s.receive_c2d("d", "https", T0 + 10 * LOCK_DURATION_MS).await.unwrap().is_none());
    assert_eq!(s.complete_c2d_for_connection("d", "c1", seqs[0], T0).await.unwrap(), Settled::Done(()));
    assert_eq!(s.complete_c2d_for_connection("d", "c1", seqs[0], T0).await.unwrap(), Settled::LockLost);
    assert_eq!(s.complete_c2d_for_connection("d", "c2", seqs[1], T0).await.unwrap(), Settled::LockLost);
    // The connection ends: the two it held go back, one delivery counted.
    assert_eq!(s.release_c2d_connection("d", "c1", MAX, T0).await.unwrap(), 2);
    assert_eq!(s.release_c2d_connection("d", "c1", MAX, T0).await.unwrap(), 0);
    let back = s.lock_c2d_for_connection("d", "c2", 8, T0).await.unwrap();
    assert_eq!(
        back.iter().map(|m| (m.seq, m.delivery_count)).collect::<Vec<_>>(),
        [(seqs[1], 1), (seqs[2], 1)]
    );
    // A message that never gets acknowledged is dead-lettered on the
    // connection end that brings it to the maximum.
    for n in 2..=MAX {
        s.release_c2d_connection("d", &format!("c{n}"), MAX, T0).await.unwrap();
        s.lock_c2d_for_connection("d", &format!("c{}", n + 1), 8, T0).await.unwrap();
    }
    assert!(rows(&s).await.is_empty());
    let fb = drain_feedback(&s, T0).await;
    assert_eq!(
        fb,
        [
            ("m1".to_owned(), FeedbackStatus::Success),
            ("m2".to_owned(), FeedbackStatus::DeliveryCountExceeded),
            ("m3".to_owned(), FeedbackStatus::DeliveryCountExceeded),
        ]
    );
}

async fn futures_seq(s: &SqliteStore, ids: &[&str], ack: AckMode) -> Vec<i64> {
    let mut seqs = Vec::new();
    for id in ids {
        seqs.push(s.enqueue_c2d_message("d", msg(id, ack), MAX_C2D_QUEUE, T0).await.unwrap());
    }
    seqs
}

#[tokio::test]
async fn a_restart_drops_connection_locks_without_counting_and_keeps_receive_locks() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("hub.db");
    {
        let s = SqliteStore::open(&path).unwrap();
        s.create_device(&record("d")).await.unwrap();
        futures_seq(&s, &["m1", "m2"], AckMode::None).await;
        s.lock_c2d_for_connection("d", "c1", 1, T0).await.unwrap();
        s.receive_c2d("d", "https", T0).await.unwrap().unwrap();
    }
    let s = SqliteStore::open(&path).unwrap();
    assert_eq!(s.release_all_c2d_connection_locks().await.unwrap(), 1);
    let m = s.lock_c2d_for_connection("d", "c2", 8, T0 + 1).await.unwrap();
    assert_eq!(m.iter().map(|m| (m.message_id(), m.delivery_count)).collect::<Vec<_>>(), [("m1", 0)]);
    // The receive lock survived the restart and still settles.
    let done = s.settle_c2d("d", "https", Settlement::Complete, MAX, T0 + 2).await.unwrap();
    assert_eq!(done, Settled::Done(AfterSettle::Removed(Outcome::Completed)));
}

trait MessageId {
    fn message_id(&self) -> &str;
}

impl MessageId for crate::LockedC2d {
    fn message_id(&self) -> &str {
        // The tests' messages are `{"messageId":"<id>"}`.
        self.message.trim_start_matches("{\"messageId\":\"").trim_end_matches("\"}")
    }
}

#[tokio::test]
async fn expired_messages_leave_with_feedback_and_stop_counting() {
    let (_d, s) = with_device("d").await;
    let short = |id: &str, ack| NewC2d { expiry_ms: T0 + 1_000, ..msg(id, ack) };
    s.enqueue_c2d_message("d", short("e-full", AckMode::Full), 3, T0).await.unwrap();
    s.enqueue_c2d_message("d", short("e-pos", AckMode::Positive), 3, T0).await.unwrap();
    s.enqueue_c2d_message("d", msg("live", AckMode::Full), 3, T0).await.unwrap();
    assert!(matches!(
        s.enqueue_c2d_message("d", msg("x", AckMode::None), 3, T0 + 999).await,
        Err(StoreError::QueueFull)
    ));
    // Held locks do not save a message from expiring.
    s.receive_c2d("d", "tok", T0).await.unwrap().unwrap();
    assert_eq!(
        s.settle_c2d("d", "tok", Settlement::Complete, MAX, T0 + 1_000).await.unwrap(),
        Settled::LockLost
    );
    // At its expiry the queue has room again.
    s.enqueue_c2d_message("d", msg("x", AckMode::None), 3, T0 + 1_000).await.unwrap();
    assert_eq!(rows(&s).await.len(), 2);
    let fb = s.receive_feedback("fb", 10, T0 + 5_000).await.unwrap();
    assert_eq!(fb.len(), 1, "positive asks for no expiry feedback");
    assert_eq!((fb[0].original_message_id.as_str(), fb[0].status_code), ("e-full", FeedbackStatus::Expired));
    assert_eq!(fb[0].enqueued_time_utc.unix_millis(), T0 + 1_000, "dated at the expiry, not the sweep");
    // The periodic sweep needs no other traffic on the queue.
    let (_d2, s2) = with_device("d").await;
    s2.enqueue_c2d_message("d", short("a", AckMode::None), 3, T0).await.unwrap();
    s2.enqueue_c2d_message("d", msg("b", AckMode::None), 3, T0).await.unwrap();
    assert_eq!(s2.expire_c2d(T0 + 999).await.unwrap(), 0);
    assert_eq!(s2.expire_c2d(T0 + 1_000).await.unwrap(), 1);
    assert_eq!(rows(&s2).await.len(), 1);
}

#[tokio::test]
async fn a_full_queue_refuses_and_stores_nothing() {
    let (_d, s) = with_device("d").await;
    for n in 0..MAX_C2D_QUEUE {
        s.enqueue_c2d_message("d", msg(&format!("m{n}"), AckMode::Full), MAX_C2D_QUEUE, T0).await.unwrap();
    }
    // Locked messages still count toward the depth.
    s.lock_c2d_for_connection("d", "c", 8, T0).await.unwrap();
    let before = rows(&s).await;
    assert!(matches!(
        s.enqueue_c2d_message("d", msg("over", AckMode::Full), MAX_C2D_QUEUE, T0).await,
        Err(StoreError::QueueFull)
    ));
    assert_eq!(rows(&s).await, before);
    assert!(matches!(
        s.enqueue_c2d_message("ghost", msg("x", AckMode::None), MAX_C2D_QUEUE, T0).await,
        Err(StoreError::NotFound)
    ));
}

#[tokio::test]
async fn cloud_to_device_message_count_means_queued_and_unexpired() {
    let (_d, s) = with_device("d").await;
    // get_device reads the real clock: use expiries far from it.
    let now = super::now_ms();
    let at = |id: &str, expiry_ms| NewC2d { expiry_ms, ..msg(id, AckMode::None) };
    s.enqueue_c2d_message("d", at("gone", now - 1), 50, now - 10_000).await.unwrap();
    s.enqueue_c2d_message("d", at("locked", now + HOUR), 50, now).await.unwrap();
    s.enqueue_c2d_message("d", at("queued", now + HOUR), 50, now).await.unwrap();
    s.receive_c2d("d", "tok", now).await.unwrap().unwrap();
    assert_eq!(s.get_device("d").await.unwrap().unwrap().device.cloud_to_device_message_count, 2);
    // A listing says the same, device by device.
    s.create_device(&record("e")).await.unwrap();
    let listed = s.list_devices(10).await.unwrap();
    let counts: Vec<_> =
        listed.iter().map(|d| (d.device_id.as_str(), d.cloud_to_device_message_count)).collect();
    assert_eq!(counts, [("d", 2), ("e", 0)]);
}

#[tokio::test]
async fn purge_empties_the_queue_with_purged_feedback() {
    let (_d, s) = with_device("d").await;
    s.enqueue_c2d_message("d", NewC2d { expiry_ms: T0 + 10, ..msg("old", AckMode::Full) }, 50, T0)
        .await
        .unwrap();
    for (id, ack) in [("none", AckMode::None), ("pos", AckMode::Positive), ("neg", AckMode::Negative)] {
        s.enqueue_c2d_message("d", msg(id, ack), 50, T0).await.unwrap();
    }
    s.enqueue_c2d_message("d", msg("full", AckMode::Full), 50, T0).await.unwrap();
    s.receive_c2d("d", "held", T0).await.unwrap().unwrap();
    assert_eq!(s.purge_c2d("d", T0 + 100).await.unwrap(), 4, "the expired one is not counted as purged");
    assert!(rows(&s).await.is_empty());
    assert_eq!(s.purge_c2d("d", T0 + 100).await.unwrap(), 0);
    assert!(matches!(s.purge_c2d("ghost", T0).await, Err(StoreError::NotFound)));
    assert_eq!(
        s.settle_c2d("d", "held", Settlement::Complete, MAX, T0 + 100).await.unwrap(),
        Settled::LockLost
    );
    assert_eq!(
        drain_feedback(&s, T0 + 100).await,
        [
            ("old".to_owned(), FeedbackStatus::Expired),
            ("neg".to_owned(), FeedbackStatus::Purged),
            ("full".to_owned(), FeedbackStatus::Purged),
        ]
    );
}

/// `n` records of Rejected feedback for device `d`.
async fn rejected_feedback(s: &SqliteStore, n: usize) {
    for i in 0..n {
        let id = format!("r{i:02}");
        s.enqueue_c2d_message("d", msg(&id, AckMode::Negative), 100, T0).await.unwrap();
        s.receive_c2d("d", &id, T0).await.unwrap().unwrap();
        assert!(matches!(
            s.settle_c2d("d", &id, Settlement::Reject, MAX, T0).await.unwrap(),
            Settled::Done(_)
        ));
    }
}

#[tokio::test]
async fn feedback_is_read_in_locked_batches_completed_or_abandoned_by_token() {
    let (_d, s) = with_device("d").await;
    assert!(s.receive_feedback("empty", 64, T0).await.unwrap().is_empty());
    rejected_feedback(&s, 5).await;
    let ids = |b: &[ferrohub_core::c2d::FeedbackRecord]| {
        b.iter().map(|r| r.original_message_id.clone()).collect::<Vec<_>>()
    };
    let a = s.receive_feedback("a", 3, T0).await.unwrap();
    assert_eq!(ids(&a), ["r00", "r01", "r02"]);
    let b = s.receive_feedback("b", 3, T0).await.unwrap();
    assert_eq!(ids(&b), ["r03", "r04"], "a locked batch is invisible");
    assert!(s.receive_feedback("c", 3, T0).await.unwrap().is_empty());
    // Abandon puts a batch back at once; complete removes it.
    assert_eq!(s.abandon_feedback("a", T0).await.unwrap(), Settled::Done(3));
    assert_eq!(s.complete_feedback("b", T0).await.unwrap(), Settled::Done(2));
    for spent in ["a", "b", "unknown"] {
        assert_eq!(s.complete_feedback(spent, T0).await.unwrap(), Settled::LockLost, "{spent}");
        assert_eq!(s.abandon_feedback(spent, T0).await.unwrap(), Settled::LockLost, "{spent}");
    }
    let again = s.receive_feedback("d", 10, T0).await.unwrap();
    assert_eq!(ids(&again), ["r00", "r01", "r02"]);
    // A feedback lock lasts a minute; after it the batch is back and the old
    // token settles nothing.
    let later = T0 + FEEDBACK_LOCK_DURATION_MS;
    assert_eq!(ids(&s.receive_feedback("e", 10, later).await.unwrap()), ["r00", "r01", "r02"]);
    assert_eq!(s.complete_feedback("d", later).await.unwrap(), Settled::LockLost);
    assert_eq!(feedback_rows(&s).await, 3);
    assert_eq!(s.complete_feedback("e", later).await.unwrap(), Settled::Done(3));
    assert_eq!(feedback_rows(&s).await, 0);
}

#[tokio::test]
async fn feedback_is_dropped_after_too_many_abandons_or_its_time_to_live() {
    let (_d, s) = with_device("d").await;
    rejected_feedback(&s, 1).await;
    for n in 1..FEEDBACK_MAX_DELIVERY_COUNT {
        assert_eq!(s.receive_feedback("t", 10, T0).await.unwrap().len(), 1, "abandon {n}");
        assert_eq!(s.abandon_feedback("t", T0).await.unwrap(), Settled::Done(1));
    }
    s.receive_feedback("t", 10, T0).await.unwrap();
    assert_eq!(s.abandon_feedback("t", T0).await.unwrap(), Settled::Done(1));
    assert_eq!(feedback_rows(&s).await, 0, "the tenth abandon drops it");
    rejected_feedback(&s, 1).await;
    assert_eq!(s.expire_c2d(T0 + FEEDBACK_TTL_MS - 1).await.unwrap(), 0);
    assert_eq!(feedback_rows(&s).await, 1);
    assert!(s.receive_feedback("t", 10, T0 + FEEDBACK_TTL_MS).await.unwrap().is_empty());
    assert_eq!(feedback_rows(&s).await, 0);
}

#[tokio::test]
async fn feedback_outlives_its_device_and_the_hub() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("hub.db");
    {
        let s = SqliteStore::open(&path).unwrap();
        s.create_device(&record("d")).await.unwrap();
        rejected_feedback(&s, 1).await;
        s.enqueue_c2d_message("d", msg("queued", AckMode::Full), 50, T0).await.unwrap();
        s.delete_device("d", None).await.unwrap();
        assert!(rows(&s).await.is_empty(), "the queue went with the device, without feedback");
    }
    let s = SqliteStore::open(&path).unwrap();
    assert_eq!(drain_feedback(&s, T0).await, [("r00".to_owned(), FeedbackStatus::Rejected)]);
}

#[tokio::test]
async fn the_queue_is_ordered_never_reuses_seqs_and_goes_with_its_device() {
    let (_d, s) = with_device("d").await;
    assert!(matches!(
        s.enqueue_c2d_message("ghost", msg("x", AckMode::None), MAX_C2D_QUEUE, T0).await,
        Err(StoreError::NotFound)
    ));
    let seqs = futures_seq(&s, &["m0", "m1", "m2"], AckMode::None).await;
    let locked = s.lock_c2d_for_connection("d", "conn", 10, T0).await.unwrap();
    assert_eq!(locked.iter().map(|m| m.seq).collect::<Vec<_>>(), seqs, "oldest first");
    // A queue that empties does not reuse its seqs: a connection's PUBACK
    // names a seq, and a late one must not complete a newer message.
    for seq in &seqs {
        assert!(s.complete_c2d_for_connection("d", "conn", *seq, T0).await.unwrap().done().is_some());
    }
    assert!(rows(&s).await.is_empty());
    let next = s.enqueue_c2d_message("d", msg("m3", AckMode::None), MAX_C2D_QUEUE, T0).await.unwrap();
    assert!(next > seqs[2], "seq {next} after {}", seqs[2]);
    s.save_session("d", 0b101).await.unwrap();
    assert_eq!(s.load_session("d").await.unwrap(), Some(0b101));
    s.delete_device("d", None).await.unwrap();
    s.create_device(&record("d")).await.unwrap();
    assert!(rows(&s).await.is_empty(), "the queue went with the device");
    assert!(s.receive_c2d("d", "tok", T0).await.unwrap().is_none());
    assert_eq!(s.load_session("d").await.unwrap(), None, "so did the session");
    assert!(matches!(s.save_session("ghost", 1).await, Err(StoreError::NotFound)));
}
