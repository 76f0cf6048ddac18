//! The SQL of the cloud-to-device queue and the feedback queue.
//!
//! Every function runs inside one write (one savepoint of the writer's
//! batch, see the parent module), so a settlement, the feedback it yields
//! and any expiry swept on the way commit together or not at all. Each
//! checks a lock before it writes anything: a lost lock answers
//! [`Settled::LockLost`] with nothing changed.
//!
//! A row is *available* when it has no lock, or a receive lock whose end
//! has passed (an expired lock puts the message back without counting a
//! delivery). A lock with no end (`lock_until_ms IS NULL`) belongs to an
//! MQTT connection and lasts until that connection releases it. Expiry wins
//! over every lock: an expired message is swept (with its feedback) before
//! anything else touches the device's queue, and cannot be settled.

use ferrohub_core::c2d::{
    self, AckMode, AfterSettle, FeedbackRecord, FeedbackStatus, Outcome, Settlement,
    FEEDBACK_LOCK_DURATION_MS, FEEDBACK_MAX_DELIVERY_COUNT, FEEDBACK_TTL_MS, LOCK_DURATION_MS,
};
use ferrohub_core::time::Timestamp;
use rusqlite::{params, Connection, OptionalExtension, Row};

use super::{backend, foreign_key_or_backend};
use crate::{LockedC2d, NewC2d, Settled, StoreError, StoreResult};

/// The part of a queued message its settlement needs.
struct Queued {
    seq: i64,
    device_id: String,
    message_id: String,
    generation_id: String,
    ack: AckMode,
    delivery_count: u32,
    expiry_ms: i64,
}

const QUEUED_COLUMNS: &str = "seq, device_id, message_id, generation_id, ack, delivery_count, expiry_ms";

fn queued(r: &Row<'_>) -> rusqlite::Result<(Queued, String)> {
    Ok((
        Queued {
            seq: r.get(0)?,
            device_id: r.get(1)?,
            message_id: r.get(2)?,
            generation_id: r.get(3)?,
            // Decoded below: a bad value is a store error, not a panic.
            ack: AckMode::None,
            delivery_count: r.get(5)?,
            expiry_ms: r.get(6)?,
        },
        r.get(4)?,
    ))
}

fn select_queued(
    c: &Connection,
    where_clause: &str,
    args: impl rusqlite::Params,
) -> StoreResult<Vec<Queued>> {
    let sql = format!("SELECT {QUEUED_COLUMNS} FROM c2d_messages WHERE {where_clause} ORDER BY seq");
    let mut stmt = c.prepare_cached(&sql).map_err(backend)?;
    let rows =
        stmt.query_map(args, queued).map_err(backend)?.collect::<Result<Vec<_>, _>>().map_err(backend)?;
    rows.into_iter()
        .map(|(mut q, ack)| {
            q.ack = AckMode::from_name(&ack).ok_or_else(|| backend(format!("stored ack mode '{ack}'")))?;
            Ok(q)
        })
        .collect()
}

/// Removes a message for good, writing the feedback its ack mode asks for
/// (the rule is core's `feedback_status`).
fn finish(c: &Connection, q: &Queued, outcome: Outcome, outcome_ms: i64, now_ms: i64) -> StoreResult<()> {
    if let Some(status) = c2d::feedback_status(q.ack, outcome) {
        c.prepare_cached(
            "INSERT INTO c2d_feedback (device_id, original_message_id, generation_id, status, outcome_ms, expiry_ms)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
        )
        .and_then(|mut s| {
            s.execute(params![
                q.device_id,
                q.message_id,
                q.generation_id,
                status.as_str(),
                outcome_ms,
                now_ms + FEEDBACK_TTL_MS
            ])
        })
        .map_err(backend)?;
    }
    c.prepare_cached("DELETE FROM c2d_messages WHERE seq = ?1")
        .and_then(|mut s| s.execute(params![q.seq]))
        .map_err(backend)?;
    Ok(())
}

/// Applies what a settlement decided: requeue (unlocked, counted) or remove.
fn apply(c: &Connection, q: &Queued, after: AfterSettle, now_ms: i64) -> StoreResult<()> {
    match after {
        AfterSettle::Removed(outcome) => finish(c, q, outcome, now_ms, now_ms),
        AfterSettle::Requeued { delivery_count } => {
            c.prepare_cached(
                "UPDATE c2d_messages SET lock_token = NULL, lock_until_ms = NULL, delivery_count = ?2 WHERE seq = ?1",
            )
            .and_then(|mut s| s.execute(params![q.seq, delivery_count]))
            .map_err(backend)?;
            Ok(())
        }
    }
}

/// Expires one device's messages whose time to live has passed (feedback
/// dated at their expiry). Returns how many.
fn sweep_device(c: &Connection, device_id: &str, now_ms: i64) -> StoreResult<usize> {
    let expired = select_queued(c, "device_id = ?1 AND expiry_ms <= ?2", params![device_id, now_ms])?;
    for q in &expired {
        finish(c, q, Outcome::Expired, q.expiry_ms, now_ms)?;
    }
    Ok(expired.len())
}

/// Expires every device's messages past their time to live, and drops
/// feedback past its own (unless a reader holds it). Returns how many
/// messages expired.
pub(super) fn expire_all(c: &Connection, now_ms: i64) -> StoreResult<usize> {
    let expired = select_queued(c, "expiry_ms <= ?1", params![now_ms])?;
    for q in &expired {
        finish(c, q, Outcome::Expired, q.expiry_ms, now_ms)?;
    }
    c.prepare_cached(
        "DELETE FROM c2d_feedback WHERE expiry_ms <= ?1 AND (lock_token IS NULL OR lock_until_ms <= ?1)",
    )
    .and_then(|mut s| s.execute(params![now_ms]))
    .map_err(backend)?;
    Ok(expired.len())
}

fn device_exists(c: &Connection, device_id: &str) -> StoreResult<bool> {
    c.prepare_cached("SELECT 1 FROM devices WHERE device_id = ?1")
        .and_then(|mut s| s.query_row(params![device_id], |_| Ok(())).optional())
        .map(|found| found.is_some())
        .map_err(backend)
}

pub(super) fn enqueue(
    c: &Connection,
    device_id: &str,
    m: &NewC2d,
    max_depth: usize,
    now_ms: i64,
) -> StoreResult<i64> {
    sweep_device(c, device_id, now_ms)?;
    // Expired messages are gone now, so every row left counts: enqueued
    // and locked alike (a locked message is still the device's to settle).
    let depth: i64 = c
        .prepare_cached("SELECT COUNT(*) FROM c2d_messages WHERE device_id = ?1")
        .and_then(|mut s| s.query_row(params![device_id], |r| r.get(0)))
        .map_err(backend)?;
    if depth as usize >= max_depth {
        // A missing device has depth 0, so this is never NotFound in disguise.
        return Err(StoreError::QueueFull);
    }
    // The generation is read here, not passed in, so feedback always names
    // the device the message was queued for.
    let n = c
        .prepare_cached(
            "INSERT INTO c2d_messages (device_id, expiry_ms, message, message_id, generation_id, ack)
             SELECT device_id, ?2, ?3, ?4, COALESCE(json_extract(identity, '$.generationId'), ''), ?5
             FROM devices WHERE device_id = ?1",
        )
        .and_then(|mut s| s.execute(params![device_id, m.expiry_ms, m.message, m.message_id, m.ack.as_str()]))
        .map_err(foreign_key_or_backend)?;
    if n == 0 {
        return Err(StoreError::NotFound);
    }
    Ok(c.last_insert_rowid())
}

/// Locks up to `limit` available messages, oldest first, with `token`; a
/// receive lock ends at `lock_until_ms`, a connection lock (`None`) when
/// released.
fn lock_available(
    c: &Connection,
    device_id: &str,
    token: &str,
    lock_until_ms: Option<i64>,
    limit: usize,
    now_ms: i64,
) -> StoreResult<Vec<LockedC2d>> {
    sweep_device(c, device_id, now_ms)?;
    let mut stmt = c
        .prepare_cached(
            "UPDATE c2d_messages SET lock_token = ?2, lock_until_ms = ?3
             WHERE seq IN (
                SELECT seq FROM c2d_messages
                WHERE device_id = ?1 AND expiry_ms > ?4
                  AND (lock_token IS NULL OR lock_until_ms <= ?4)
                ORDER BY seq LIMIT ?5)
             RETURNING seq, delivery_count, ack, expiry_ms, message",
        )
        .map_err(backend)?;
    let rows = stmt
        .query_map(params![device_id, token, lock_until_ms, now_ms, limit as i64], |r| {
            Ok((
                r.get::<_, i64>(0)?,
                r.get::<_, u32>(1)?,
                r.get::<_, String>(2)?,
                r.get::<_, i64>(3)?,
                r.get(4)?,
            ))
        })
        .map_err(backend)?
        .collect::<Result<Vec<_>, _>>()
        .map_err(backend)?;
    let mut locked = rows
        .into_iter()
        .map(|(seq, delivery_count, ack, expiry_ms, message)| {
            Ok(LockedC2d {
                seq,
                lock_token: token.to_owned(),
                delivery_count,
                ack: AckMode::from_name(&ack).ok_or_else(|| backend(format!("stored ack mode '{ack}'")))?,
                expiry_ms,
                message,
            })
        })
        .collect::<StoreResult<Vec<_>>>()?;
    // RETURNING gives no order guarantee.
    locked.sort_by_key(|m| m.seq);
    Ok(locked)
}

pub(super) fn receive(
    c: &Connection,
    device_id: &str,
    token: &str,
    now_ms: i64,
) -> StoreResult<Option<LockedC2d>> {
    Ok(lock_available(c, device_id, token, Some(now_ms + LOCK_DURATION_MS), 1, now_ms)?.pop())
}

pub(super) fn settle(
    c: &Connection,
    device_id: &str,
    token: &str,
    settlement: Settlement,
    max_delivery_count: u32,
    now_ms: i64,
) -> StoreResult<Settled<AfterSettle>> {
    // Only a receive lock still running: `lock_until_ms > now` is false for
    // a connection's lock (NULL) and for one that ran out.
    let held = select_queued(
        c,
        "device_id = ?1 AND lock_token = ?2 AND lock_until_ms > ?3 AND expiry_ms > ?3",
        params![device_id, token, now_ms],
    )?;
    let [q] = held.as_slice() else { return Ok(Settled::LockLost) };
    let after = c2d::settle(settlement, q.delivery_count, max_delivery_count);
    apply(c, q, after, now_ms)?;
    sweep_device(c, device_id, now_ms)?;
    Ok(Settled::Done(after))
}

pub(super) fn lock_for_connection(
    c: &Connection,
    device_id: &str,
    connection: &str,
    limit: usize,
    now_ms: i64,
) -> StoreResult<Vec<LockedC2d>> {
    lock_available(c, device_id, connection, None, limit, now_ms)
}

pub(super) fn complete_for_connection(
    c: &Connection,
    device_id: &str,
    connection: &str,
    seq: i64,
    now_ms: i64,
) -> StoreResult<Settled<()>> {
    let held = select_queued(
        c,
        "device_id = ?1 AND lock_token = ?2 AND lock_until_ms IS NULL AND seq = ?3 AND expiry_ms > ?4",
        params![device_id, connection, seq, now_ms],
    )?;
    let [q] = held.as_slice() else { return Ok(Settled::LockLost) };
    finish(c, q, Outcome::Completed, now_ms, now_ms)?;
    Ok(Settled::Done(()))
}

pub(super) fn release_connection(
    c: &Connection,
    device_id: &str,
    connection: &str,
    max_delivery_count: u32,
    now_ms: i64,
) -> StoreResult<usize> {
    sweep_device(c, device_id, now_ms)?;
    let held = select_queued(
        c,
        "device_id = ?1 AND lock_token = ?2 AND lock_until_ms IS NULL",
        params![device_id, connection],
    )?;
    for q in &held {
        apply(c, q, c2d::release_unacknowledged(q.delivery_count, max_delivery_count), now_ms)?;
    }
    Ok(held.len())
}

pub(super) fn release_all_connections(c: &Connection) -> StoreResult<usize> {
    c.execute(
        "UPDATE c2d_messages SET lock_token = NULL WHERE lock_token IS NOT NULL AND lock_until_ms IS NULL",
        [],
    )
    .map_err(backend)
}

pub(super) fn purge(c: &Connection, device_id: &str, now_ms: i64) -> StoreResult<usize> {
    if !device_exists(c, device_id)? {
        return Err(StoreError::NotFound);
    }
    // What had already expired is reported as expired, not purged.
    sweep_device(c, device_id, now_ms)?;
    let all = select_queued(c, "device_id = ?1", params![device_id])?;
    for q in &all {
        finish(c, q, Outcome::Purged, now_ms, now_ms)?;
    }
    Ok(all.len())
}

pub(super) fn receive_feedback(
    c: &Connection,
    token: &str,
    max: usize,
    now_ms: i64,
) -> StoreResult<Vec<FeedbackRecord>> {
    // Expiries become feedback even when no one touched the device's queue.
    expire_all(c, now_ms)?;
    let mut stmt = c
        .prepare_cached(
            "UPDATE c2d_feedback SET lock_token = ?1, lock_until_ms = ?2
             WHERE id IN (
                SELECT id FROM c2d_feedback
                WHERE lock_token IS NULL OR lock_until_ms <= ?3
                ORDER BY id LIMIT ?4)
             RETURNING id, status, original_message_id, device_id, generation_id, outcome_ms",
        )
        .map_err(backend)?;
    let mut rows = stmt
        .query_map(params![token, now_ms + FEEDBACK_LOCK_DURATION_MS, now_ms, max as i64], |r| {
            Ok((
                r.get::<_, i64>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, String>(2)?,
                r.get::<_, String>(3)?,
                r.get::<_, String>(4)?,
                r.get::<_, i64>(5)?,
            ))
        })
        .map_err(backend)?
        .collect::<Result<Vec<_>, _>>()
        .map_err(backend)?;
    rows.sort_by_key(|r| r.0);
    rows.into_iter()
        .map(|(_, status, message_id, device_id, generation_id, at)| {
            let status = FeedbackStatus::from_name(&status)
                .ok_or_else(|| backend(format!("stored feedback '{status}'")))?;
            Ok(FeedbackRecord::new(
                status,
                message_id,
                device_id,
                generation_id,
                Timestamp::from_unix_millis(at),
            ))
        })
        .collect()
}

pub(super) fn complete_feedback(c: &Connection, token: &str, now_ms: i64) -> StoreResult<Settled<usize>> {
    let n = c
        .prepare_cached("DELETE FROM c2d_feedback WHERE lock_token = ?1 AND lock_until_ms > ?2")
        .and_then(|mut s| s.execute(params![token, now_ms]))
        .map_err(backend)?;
    Ok(if n == 0 { Settled::LockLost } else { Settled::Done(n) })
}

pub(super) fn abandon_feedback(c: &Connection, token: &str, now_ms: i64) -> StoreResult<Settled<usize>> {
    let held: Vec<(i64, u32)> = c
        .prepare_cached(
            "SELECT id, delivery_count FROM c2d_feedback WHERE lock_token = ?1 AND lock_until_ms > ?2",
        )
        .and_then(|mut s| {
            s.query_map(params![token, now_ms], |r| Ok((r.get(0)?, r.get(1)?)))?
                .collect::<Result<Vec<_>, _>>()
        })
        .map_err(backend)?;
    if held.is_empty() {
        return Ok(Settled::LockLost);
    }
    // Feedback is received like a message: an abandon counts a delivery and
    // the last one allowed drops the record.
    for (id, count) in &held {
        match c2d::settle(Settlement::Abandon, *count, FEEDBACK_MAX_DELIVERY_COUNT) {
            AfterSettle::Requeued { delivery_count } => c.execute(
                "UPDATE c2d_feedback SET lock_token = NULL, lock_until_ms = NULL, delivery_count = ?2 WHERE id = ?1",
                params![id, delivery_count],
            ),
            AfterSettle::Removed(_) => c.execute("DELETE FROM c2d_feedback WHERE id = ?1", params![id]),
        }
        .map_err(backend)?;
    }
    Ok(Settled::Done(held.len()))
}
