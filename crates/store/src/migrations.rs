//! Versioned schema migrations for the SQLite backend.
//!
//! Each entry moves the schema from version `i` to `i + 1` inside one
//! transaction and records the new version in `PRAGMA user_version`. A
//! database written by a newer ferrohub (a higher version than we know) is
//! refused rather than guessed at.

use rusqlite::Connection;

use crate::{StoreError, StoreResult};

/// Migration `i` takes the schema from version `i` to `i + 1`.
const MIGRATIONS: &[&str] = &[
    // v1: devices hold the identity and the twin as JSON documents. `status`
    // is duplicated out of the identity so statistics need no JSON parsing.
    "CREATE TABLE devices (
        device_id TEXT PRIMARY KEY NOT NULL,
        revision  INTEGER NOT NULL,
        status    TEXT NOT NULL,
        identity  TEXT NOT NULL,
        twin      TEXT NOT NULL
    ) WITHOUT ROWID;",
    // v2: MQTT sessions that outlive a connection (clean session 0), and the
    // durable cloud-to-device queue. Both go with their device.
    "CREATE TABLE sessions (
        device_id     TEXT PRIMARY KEY NOT NULL REFERENCES devices (device_id) ON DELETE CASCADE,
        subscriptions INTEGER NOT NULL
    ) WITHOUT ROWID;
    -- AUTOINCREMENT: a seq is never reused, even after the queue empties,
    -- so a connection's delivery cursor only moves forward.
    CREATE TABLE c2d_messages (
        seq            INTEGER PRIMARY KEY AUTOINCREMENT,
        device_id      TEXT NOT NULL REFERENCES devices (device_id) ON DELETE CASCADE,
        expiry_unix    INTEGER NOT NULL,
        delivery_count INTEGER NOT NULL DEFAULT 0,
        message        TEXT NOT NULL
    );
    CREATE INDEX c2d_by_device ON c2d_messages (device_id, seq);",
    // v3: automatic device configurations, as JSON documents.
    "CREATE TABLE configurations (
        id       TEXT PRIMARY KEY NOT NULL,
        revision INTEGER NOT NULL,
        document TEXT NOT NULL
    ) WITHOUT ROWID;",
    // v4: complete cloud-to-device semantics. Queue times become
    // milliseconds (HTTPS locks last a minute; tests step time finely). Each
    // message keeps what its settlement needs to write feedback in the same
    // transaction: its id, the device generation it was sent to, the ack
    // mode. A lock is a token plus, for a receive, when it runs out; a token
    // without an end is held by an MQTT connection until it is released.
    // Existing messages migrate as ack none, unlocked. Feedback has no
    // foreign key: records outlive a deleted device.
    "ALTER TABLE c2d_messages RENAME COLUMN expiry_unix TO expiry_ms;
    UPDATE c2d_messages SET expiry_ms = expiry_ms * 1000;
    ALTER TABLE c2d_messages ADD COLUMN message_id TEXT NOT NULL DEFAULT '';
    ALTER TABLE c2d_messages ADD COLUMN generation_id TEXT NOT NULL DEFAULT '';
    ALTER TABLE c2d_messages ADD COLUMN ack TEXT NOT NULL DEFAULT 'none';
    ALTER TABLE c2d_messages ADD COLUMN lock_token TEXT;
    ALTER TABLE c2d_messages ADD COLUMN lock_until_ms INTEGER;
    UPDATE c2d_messages SET
        message_id = COALESCE(CASE WHEN json_valid(message) THEN json_extract(message, '$.messageId') END, ''),
        generation_id = COALESCE(
            (SELECT json_extract(d.identity, '$.generationId') FROM devices d WHERE d.device_id = c2d_messages.device_id),
            '');
    CREATE INDEX c2d_by_expiry ON c2d_messages (expiry_ms);
    CREATE INDEX c2d_by_lock ON c2d_messages (lock_token) WHERE lock_token IS NOT NULL;
    CREATE TABLE c2d_feedback (
        id                  INTEGER PRIMARY KEY AUTOINCREMENT,
        device_id           TEXT NOT NULL,
        original_message_id TEXT NOT NULL,
        generation_id       TEXT NOT NULL,
        status              TEXT NOT NULL,
        outcome_ms          INTEGER NOT NULL,
        expiry_ms           INTEGER NOT NULL,
        delivery_count      INTEGER NOT NULL DEFAULT 0,
        lock_token          TEXT,
        lock_until_ms       INTEGER
    );
    CREATE INDEX c2d_feedback_by_lock ON c2d_feedback (lock_token) WHERE lock_token IS NOT NULL;
    CREATE INDEX c2d_feedback_by_expiry ON c2d_feedback (expiry_ms);",
];

/// The schema version this build writes.
pub(crate) const CURRENT_VERSION: i64 = MIGRATIONS.len() as i64;

pub(crate) fn migrate(conn: &mut Connection) -> StoreResult<()> {
    let version: i64 = conn
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .map_err(|e| StoreError::Backend(e.to_string()))?;
    if version > CURRENT_VERSION {
        return Err(StoreError::Backend(format!(
            "the database has schema version {version}, newer than this ferrohub knows ({CURRENT_VERSION}); refusing to downgrade"
        )));
    }
    for (i, sql) in MIGRATIONS.iter().enumerate().skip(version as usize) {
        let tx = conn.transaction().map_err(|e| StoreError::Backend(e.to_string()))?;
        tx.execute_batch(sql).map_err(|e| StoreError::Backend(format!("migration to v{}: {e}", i + 1)))?;
        tx.pragma_update(None, "user_version", i as i64 + 1)
            .map_err(|e| StoreError::Backend(e.to_string()))?;
        tx.commit().map_err(|e| StoreError::Backend(e.to_string()))?;
        tracing::info!(version = i + 1, "migrated store schema");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn migrates_once_and_refuses_newer_schemas() {
        let mut conn = Connection::open_in_memory().unwrap();
        migrate(&mut conn).unwrap();
        migrate(&mut conn).unwrap();
        let v: i64 = conn.query_row("PRAGMA user_version", [], |r| r.get(0)).unwrap();
        assert_eq!(v, CURRENT_VERSION);
        conn.pragma_update(None, "user_version", CURRENT_VERSION + 1).unwrap();
        assert!(matches!(migrate(&mut conn), Err(StoreError::Backend(m)) if m.contains("refusing")));
    }

    #[test]
    fn v3_queues_migrate_as_ack_none_unlocked_in_milliseconds() {
        let mut conn = Connection::open_in_memory().unwrap();
        for sql in &MIGRATIONS[..3] {
            conn.execute_batch(sql).unwrap();
        }
        conn.pragma_update(None, "user_version", 3).unwrap();
        conn.execute_batch(
            r#"INSERT INTO devices VALUES ('d', 1, 'enabled', '{"deviceId":"d","generationId":"g7"}', '{}');
               INSERT INTO c2d_messages (device_id, expiry_unix, delivery_count, message)
                 VALUES ('d', 1700000000, 2, '{"messageId":"m1"}'), ('d', 1700000001, 0, 'not json');
               DELETE FROM c2d_messages WHERE seq = 2;
               INSERT INTO c2d_messages (device_id, expiry_unix, message) VALUES ('d', 1700000002, 'x');"#,
        )
        .unwrap();
        migrate(&mut conn).unwrap();
        // seq, expiry_ms, delivery_count, message_id, generation_id, ack,
        // lock_token, lock_until_ms
        type Migrated = (i64, i64, i64, String, String, String, Option<String>, Option<i64>);
        let rows: Vec<Migrated> = conn
            .prepare(
                "SELECT seq, expiry_ms, delivery_count, message_id, generation_id, ack, lock_token, lock_until_ms
                 FROM c2d_messages ORDER BY seq",
            )
            .unwrap()
            .query_map([], |r| {
                Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?, r.get(5)?, r.get(6)?, r.get(7)?))
            })
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        let none = || "none".to_owned();
        assert_eq!(
            rows,
            [
                (1, 1_700_000_000_000, 2, "m1".into(), "g7".into(), none(), None, None),
                (3, 1_700_000_002_000, 0, String::new(), "g7".into(), none(), None, None),
            ]
        );
        // Seqs keep rising after the migration (AUTOINCREMENT survives it).
        conn.execute("INSERT INTO c2d_messages (device_id, expiry_ms, message) VALUES ('d', 1, 'y')", [])
            .unwrap();
        assert_eq!(conn.last_insert_rowid(), 4);
    }
}
