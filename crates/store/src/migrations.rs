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
}
