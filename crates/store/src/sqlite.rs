//! The embedded SQLite backend: one file in the data dir, nothing to install.
//!
//! SQLite allows one writer at a time, so writes go to a single connection
//! owned by one writer thread; reads go round-robin to a few reader threads
//! with their own connections, which WAL mode lets run beside the writer. `synchronous=FULL` makes a commit durable before it returns,
//! which is what lets the API acknowledge a write only after it is safe
//! (SIGKILL or power loss).
//!
//! Group commit: the writer thread takes every write queued while it was
//! busy (up to [`MAX_BATCH`]) into one transaction, each write in its own
//! savepoint (a write that fails is rolled back alone and answered with its
//! error), commits once — one fsync for the whole batch — and only then
//! answers each caller. Under load, batches grow by themselves; a lone write
//! still costs one commit.

use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use async_trait::async_trait;
use ferrohub_core::c2d::{AfterSettle, FeedbackRecord, Settlement};
use ferrohub_core::identity::Device;
use rusqlite::{params, Connection, OpenFlags, OptionalExtension};

use crate::{
    migrations, status_text, DeviceCounts, DeviceRecord, LockedC2d, NewC2d, Settled, Store, StoreError,
    StoreResult, StoredConfiguration,
};

mod c2d;
#[cfg(test)]
mod c2d_tests;

const READERS: usize = 4;

/// Most writes committed together.
pub(crate) const MAX_BATCH: usize = 1024;

/// SQLite implementation of [`Store`].
#[derive(Clone)]
pub struct SqliteStore {
    inner: Arc<Inner>,
}

struct Inner {
    writes: std::sync::mpsc::Sender<Job>,
    readers: Vec<std::sync::mpsc::Sender<ReadJob>>,
    next_reader: AtomicUsize,
}

/// Runs on a reader connection and answers its caller itself.
type ReadJob = Box<dyn FnOnce(&Connection) + Send>;

/// A reader thread: its own read-only connection, one query at a time
/// (a fixed set of threads, rather than tokio's blocking pool, keeps the
/// hub from piling hundreds of threads onto a few connections).
fn read_loop(conn: Connection, jobs: std::sync::mpsc::Receiver<ReadJob>) {
    while let Ok(job) = jobs.recv() {
        if std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| job(&conn))).is_err() {
            tracing::error!("store: a read panicked");
        }
    }
}

/// Runs once on the writer connection (inside its savepoint); tells
/// whether it succeeded and hands back what answers its caller once the
/// batch's commit is known (`None`: committed).
type Job = Box<dyn FnOnce(&Connection) -> (bool, Reply) + Send>;
type Reply = Box<dyn FnOnce(Option<StoreError>) + Send>;

/// The writer thread: batches, savepoints, one commit per batch.
fn write_loop(conn: Connection, jobs: std::sync::mpsc::Receiver<Job>) {
    while let Ok(first) = jobs.recv() {
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match jobs.try_recv() {
                Ok(job) => batch.push(job),
                Err(_) => break,
            }
        }
        if let Err(e) = conn.execute_batch("BEGIN IMMEDIATE") {
            // Not run: dropping a job answers its caller with an error.
            tracing::error!(error = %e, "store: cannot begin a transaction");
            drop(batch);
            continue;
        }
        let mut replies = Vec::with_capacity(batch.len());
        // Prepared once per connection: these run twice per write.
        let run = |sql: &str| conn.prepare_cached(sql).and_then(|mut stmt| stmt.execute([]));
        let undo = || run("ROLLBACK TO job").and_then(|_| run("RELEASE job"));
        for job in batch {
            let savepoint = run("SAVEPOINT job");
            let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| job(&conn)));
            match outcome {
                Ok((true, reply)) if savepoint.is_ok() => {
                    let _ = run("RELEASE job");
                    replies.push(reply);
                }
                Ok((_, reply)) => {
                    // Its own error (already in the reply) stands; what it
                    // wrote goes.
                    let _ = undo();
                    replies.push(reply);
                }
                Err(_) => {
                    // The caller's reply went down with the job: it gets an
                    // error from the dropped channel.
                    let _ = undo();
                    tracing::error!("store: a write panicked; rolled back");
                }
            }
        }
        let committed = conn.execute_batch("COMMIT").map_err(backend);
        if committed.is_err() {
            let _ = conn.execute_batch("ROLLBACK");
        }
        for reply in replies {
            reply(committed.as_ref().err().cloned());
        }
    }
}

/// A backend failure, told apart from a full disk: SQLite reports a write
/// that found no space (`ENOSPC` on the database or its WAL) as
/// `SQLITE_FULL`, and the hub answers that one "try again later" rather
/// than as an internal error.
fn backend<E: std::fmt::Display + 'static>(e: E) -> StoreError {
    let any: &dyn std::any::Any = &e;
    if let Some(rusqlite::Error::SqliteFailure(f, _)) = any.downcast_ref::<rusqlite::Error>() {
        if f.code == rusqlite::ErrorCode::DiskFull {
            return StoreError::Full;
        }
    }
    StoreError::Backend(e.to_string())
}

fn configure(conn: &Connection) -> StoreResult<()> {
    conn.pragma_update(None, "journal_mode", "WAL").map_err(backend)?;
    conn.pragma_update(None, "synchronous", "FULL").map_err(backend)?;
    conn.pragma_update(None, "foreign_keys", "ON").map_err(backend)?;
    conn.busy_timeout(std::time::Duration::from_secs(10)).map_err(backend)?;
    tune_reads(conn)
}

/// Pages come from a memory map and a larger page cache instead of one
/// `pread` system call per page (profiles of the write path showed those
/// copies among the top costs). Durability is unaffected: writes still go
/// through the WAL and its fsync.
fn tune_reads(conn: &Connection) -> StoreResult<()> {
    conn.pragma_update(None, "mmap_size", 1_i64 << 30).map_err(backend)?;
    // Negative: KiB rather than pages.
    conn.pragma_update(None, "cache_size", -65_536_i64).map_err(backend)?;
    Ok(())
}

impl SqliteStore {
    /// Runs SQLite's full integrity check on the database at `path` through
    /// a read-only connection (safe beside a running hub) and returns what
    /// it found wrong; empty means the file is sound.
    pub fn check_integrity(path: &Path) -> StoreResult<Vec<String>> {
        let conn = Connection::open_with_flags(path, OpenFlags::SQLITE_OPEN_READ_ONLY).map_err(backend)?;
        conn.busy_timeout(std::time::Duration::from_secs(10)).map_err(backend)?;
        let mut stmt = conn.prepare("PRAGMA integrity_check").map_err(backend)?;
        let rows = stmt.query_map([], |r| r.get::<_, String>(0)).map_err(backend)?;
        let found = rows.collect::<Result<Vec<_>, _>>().map_err(backend)?;
        Ok(found.into_iter().filter(|line| line != "ok").collect())
    }

    /// Opens (creating if needed) the database file and brings its schema up
    /// to date.
    pub fn open(path: &Path) -> StoreResult<Self> {
        let mut writer = Connection::open(path).map_err(backend)?;
        configure(&writer)?;
        migrations::migrate(&mut writer)?;
        let readers = (0..READERS)
            .map(|i| {
                let c = Connection::open_with_flags(
                    path,
                    OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
                )
                .map_err(backend)?;
                c.busy_timeout(std::time::Duration::from_secs(10)).map_err(backend)?;
                tune_reads(&c)?;
                let (tx, rx) = std::sync::mpsc::channel();
                std::thread::Builder::new()
                    .name(format!("ferrohub-store-reader-{i}"))
                    .spawn(move || read_loop(c, rx))
                    .map_err(backend)?;
                Ok(tx)
            })
            .collect::<StoreResult<Vec<_>>>()?;
        let (writes, jobs) = std::sync::mpsc::channel();
        std::thread::Builder::new()
            .name("ferrohub-store-writer".into())
            .spawn(move || write_loop(writer, jobs))
            .map_err(backend)?;
        Ok(Self { inner: Arc::new(Inner { writes, readers, next_reader: AtomicUsize::new(0) }) })
    }

    async fn read<T, F>(&self, f: F) -> StoreResult<T>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> StoreResult<T> + Send + 'static,
    {
        let (tx, rx) = tokio::sync::oneshot::channel::<StoreResult<T>>();
        let job: ReadJob = Box::new(move |conn| {
            let _ = tx.send(f(conn));
        });
        let i = self.inner.next_reader.fetch_add(1, Ordering::Relaxed) % self.inner.readers.len();
        self.inner.readers[i].send(job).map_err(|_| backend("the store reader has stopped"))?;
        rx.await.map_err(|_| backend("the store reader dropped a read"))?
    }

    /// Runs `f` in the next batch; resolves once the batch is durably
    /// committed (or failed). `f` is atomic: an error rolls back what it did.
    async fn write<T, F>(&self, f: F) -> StoreResult<T>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> StoreResult<T> + Send + 'static,
    {
        let (tx, rx) = tokio::sync::oneshot::channel::<StoreResult<T>>();
        let job: Job = Box::new(move |conn| {
            let result = f(conn);
            let ok = result.is_ok();
            let reply: Reply = Box::new(move |commit_error| {
                let _ = tx.send(match commit_error {
                    Some(e) => Err(e),
                    None => result,
                });
            });
            (ok, reply)
        });
        self.inner.writes.send(job).map_err(|_| backend("the store writer has stopped"))?;
        rx.await.map_err(|_| backend("the store writer dropped a write"))?
    }
}

/// The store reads the clock only where the trait gives it no `now`: to
/// hide expired cloud-to-device messages from the queue count `get_device`
/// and `list_devices` report. Every queue rule takes its time from the
/// caller.
fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// A write that names a missing device fails its foreign key.
fn foreign_key_or_backend(e: rusqlite::Error) -> StoreError {
    match e {
        rusqlite::Error::SqliteFailure(f, _)
            if f.extended_code == rusqlite::ffi::SQLITE_CONSTRAINT_FOREIGNKEY =>
        {
            StoreError::NotFound
        }
        e => backend(e),
    }
}

fn decode_record(identity: String, twin: String, revision: i64) -> StoreResult<DeviceRecord> {
    Ok(DeviceRecord {
        device: serde_json::from_str(&identity).map_err(backend)?,
        twin: serde_json::from_str(&twin).map_err(backend)?,
        revision,
    })
}

/// Decodes stored rows on every core (a page of a full read is thousands
/// of JSON documents), keeping their order.
fn decode_parallel(raw: Vec<(String, String, i64)>) -> StoreResult<Vec<DeviceRecord>> {
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get()).clamp(1, 8);
    if threads == 1 || raw.len() < 1_024 {
        return raw.into_iter().map(|(i, t, rev)| decode_record(i, t, rev)).collect();
    }
    let chunk = raw.len().div_ceil(threads);
    let mut parts = Vec::with_capacity(threads);
    let mut rest = raw;
    while rest.len() > chunk {
        let tail = rest.split_off(chunk);
        parts.push(std::mem::replace(&mut rest, tail));
    }
    parts.push(rest);
    std::thread::scope(|scope| {
        let handles: Vec<_> = parts
            .into_iter()
            .map(|part| {
                scope.spawn(move || {
                    part.into_iter()
                        .map(|(i, t, rev)| decode_record(i, t, rev))
                        .collect::<StoreResult<Vec<_>>>()
                })
            })
            .collect();
        let mut out = Vec::new();
        for h in handles {
            out.extend(h.join().map_err(|_| backend("a decoding thread panicked"))??);
        }
        Ok(out)
    })
}

fn encode(record: &DeviceRecord) -> StoreResult<(String, String)> {
    Ok((
        serde_json::to_string(&record.device).map_err(backend)?,
        serde_json::to_string(&record.twin).map_err(backend)?,
    ))
}

/// Why a conditional write touched no row: the row changed (conflict) or
/// is not there.
fn conflict_or_missing(c: &Connection, id: &str) -> StoreError {
    match c.query_row("SELECT 1 FROM devices WHERE device_id = ?1", params![id], |_| Ok(())).optional() {
        Ok(Some(())) => StoreError::Conflict,
        Ok(None) => StoreError::NotFound,
        Err(e) => backend(e),
    }
}

#[async_trait]
impl Store for SqliteStore {
    async fn get_device(&self, device_id: &str) -> StoreResult<Option<DeviceRecord>> {
        let id = device_id.to_owned();
        self.read(move |c| {
            let row = c
                .query_row(
                    "SELECT identity, twin, revision,
                            (SELECT COUNT(*) FROM c2d_messages m WHERE m.device_id = d.device_id AND m.expiry_ms > ?2)
                     FROM devices d WHERE device_id = ?1",
                    params![id, now_ms()],
                    |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?, r.get::<_, i64>(2)?, r.get::<_, i64>(3)?)),
                )
                .optional()
                .map_err(backend)?;
            row.map(|(i, t, rev, queued)| {
                let mut record = decode_record(i, t, rev)?;
                record.device.cloud_to_device_message_count = queued;
                Ok(record)
            })
            .transpose()
        })
        .await
    }

    async fn list_devices(&self, limit: usize) -> StoreResult<Vec<Device>> {
        self.read(move |c| {
            // The queue count is computed as in `get_device`, so a listing
            // and a single read never disagree about the same device.
            let mut stmt = c
                .prepare_cached(
                    "SELECT identity,
                            (SELECT COUNT(*) FROM c2d_messages m WHERE m.device_id = d.device_id AND m.expiry_ms > ?2)
                     FROM devices d ORDER BY device_id LIMIT ?1",
                )
                .map_err(backend)?;
            let rows = stmt
                .query_map(params![limit as i64, now_ms()], |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?)))
                .map_err(backend)?
                .collect::<Result<Vec<_>, _>>()
                .map_err(backend)?;
            rows.iter()
                .map(|(s, queued)| {
                    let mut device: Device = serde_json::from_str(s).map_err(backend)?;
                    device.cloud_to_device_message_count = *queued;
                    Ok(device)
                })
                .collect()
        })
        .await
    }

    async fn create_device(&self, record: &DeviceRecord) -> StoreResult<()> {
        let (identity, twin) = encode(record)?;
        let id = record.device.device_id.clone();
        let status = status_text(record.device.status);
        self.write(move |c| {
            let n = c
                .execute(
                    "INSERT INTO devices (device_id, revision, status, identity, twin) VALUES (?1, 1, ?2, ?3, ?4)
                     ON CONFLICT (device_id) DO NOTHING",
                    params![id, status, identity, twin],
                )
                .map_err(backend)?;
            if n == 0 {
                Err(StoreError::AlreadyExists)
            } else {
                Ok(())
            }
        })
        .await
    }

    async fn create_devices_bulk(&self, records: &[DeviceRecord]) -> StoreResult<()> {
        let rows = records
            .iter()
            .map(|r| {
                let (identity, twin) = encode(r)?;
                Ok((r.device.device_id.clone(), status_text(r.device.status), identity, twin))
            })
            .collect::<StoreResult<Vec<_>>>()?;
        // One write: its savepoint makes the batch all-or-nothing.
        self.write(move |c| {
            let mut stmt = c
                .prepare_cached(
                    "INSERT INTO devices (device_id, revision, status, identity, twin) VALUES (?1, 1, ?2, ?3, ?4)
                     ON CONFLICT (device_id) DO NOTHING",
                )
                .map_err(backend)?;
            for (id, status, identity, twin) in &rows {
                if stmt.execute(params![id, status, identity, twin]).map_err(backend)? == 0 {
                    return Err(StoreError::AlreadyExists);
                }
            }
            Ok(())
        })
        .await
    }

    async fn update_device(&self, record: &DeviceRecord) -> StoreResult<()> {
        let (identity, twin) = encode(record)?;
        let id = record.device.device_id.clone();
        let status = status_text(record.device.status);
        let expected = record.revision;
        self.write(move |c| {
            let n = c
                .prepare_cached(
                    "UPDATE devices SET revision = revision + 1, status = ?2, identity = ?3, twin = ?4
                     WHERE device_id = ?1 AND revision = ?5",
                )
                .and_then(|mut stmt| stmt.execute(params![id, status, identity, twin, expected]))
                .map_err(backend)?;
            if n == 1 {
                return Ok(());
            }
            Err(conflict_or_missing(c, &id))
        })
        .await
    }

    async fn delete_device(&self, device_id: &str, expected_revision: Option<i64>) -> StoreResult<()> {
        let id = device_id.to_owned();
        self.write(move |c| {
            let n = c
                .execute(
                    "DELETE FROM devices WHERE device_id = ?1 AND (?2 IS NULL OR revision = ?2)",
                    params![id, expected_revision],
                )
                .map_err(backend)?;
            if n == 1 {
                return Ok(());
            }
            Err(conflict_or_missing(c, &id))
        })
        .await
    }

    async fn disconnect_all(&self) -> StoreResult<()> {
        self.write(|c| {
            c.execute(
                "UPDATE devices SET revision = revision + 1,
                        identity = json_set(identity, '$.connectionState', 'Disconnected')
                 WHERE json_extract(identity, '$.connectionState') = 'Connected'",
                [],
            )
            .map_err(backend)?;
            Ok(())
        })
        .await
    }

    async fn load_session(&self, device_id: &str) -> StoreResult<Option<u8>> {
        let id = device_id.to_owned();
        self.read(move |c| {
            c.query_row("SELECT subscriptions FROM sessions WHERE device_id = ?1", params![id], |r| {
                r.get::<_, u8>(0)
            })
            .optional()
            .map_err(backend)
        })
        .await
    }

    async fn save_session(&self, device_id: &str, subscriptions: u8) -> StoreResult<()> {
        let id = device_id.to_owned();
        self.write(move |c| {
            c.execute(
                "INSERT INTO sessions (device_id, subscriptions) VALUES (?1, ?2)
                 ON CONFLICT (device_id) DO UPDATE SET subscriptions = excluded.subscriptions",
                params![id, subscriptions],
            )
            .map_err(foreign_key_or_backend)?;
            Ok(())
        })
        .await
    }

    async fn delete_session(&self, device_id: &str) -> StoreResult<()> {
        let id = device_id.to_owned();
        self.write(move |c| {
            c.execute("DELETE FROM sessions WHERE device_id = ?1", params![id]).map_err(backend)?;
            Ok(())
        })
        .await
    }

    async fn enqueue_c2d_message(
        &self,
        device_id: &str,
        message: NewC2d,
        max_depth: usize,
        now_ms: i64,
    ) -> StoreResult<i64> {
        let id = device_id.to_owned();
        self.write(move |c| c2d::enqueue(c, &id, &message, max_depth, now_ms)).await
    }

    async fn receive_c2d(
        &self,
        device_id: &str,
        lock_token: &str,
        now_ms: i64,
    ) -> StoreResult<Option<LockedC2d>> {
        let (id, token) = (device_id.to_owned(), lock_token.to_owned());
        self.write(move |c| c2d::receive(c, &id, &token, now_ms)).await
    }

    async fn settle_c2d(
        &self,
        device_id: &str,
        lock_token: &str,
        settlement: Settlement,
        max_delivery_count: u32,
        now_ms: i64,
    ) -> StoreResult<Settled<AfterSettle>> {
        let (id, token) = (device_id.to_owned(), lock_token.to_owned());
        self.write(move |c| c2d::settle(c, &id, &token, settlement, max_delivery_count, now_ms)).await
    }

    async fn lock_c2d_for_connection(
        &self,
        device_id: &str,
        connection_token: &str,
        limit: usize,
        now_ms: i64,
    ) -> StoreResult<Vec<LockedC2d>> {
        let (id, token) = (device_id.to_owned(), connection_token.to_owned());
        self.write(move |c| c2d::lock_for_connection(c, &id, &token, limit, now_ms)).await
    }

    async fn complete_c2d_for_connection(
        &self,
        device_id: &str,
        connection_token: &str,
        seq: i64,
        now_ms: i64,
    ) -> StoreResult<Settled<()>> {
        let (id, token) = (device_id.to_owned(), connection_token.to_owned());
        self.write(move |c| c2d::complete_for_connection(c, &id, &token, seq, now_ms)).await
    }

    async fn release_c2d_connection(
        &self,
        device_id: &str,
        connection_token: &str,
        max_delivery_count: u32,
        now_ms: i64,
    ) -> StoreResult<usize> {
        let (id, token) = (device_id.to_owned(), connection_token.to_owned());
        self.write(move |c| c2d::release_connection(c, &id, &token, max_delivery_count, now_ms)).await
    }

    async fn release_all_c2d_connection_locks(&self) -> StoreResult<usize> {
        self.write(c2d::release_all_connections).await
    }

    async fn purge_c2d(&self, device_id: &str, now_ms: i64) -> StoreResult<usize> {
        let id = device_id.to_owned();
        self.write(move |c| c2d::purge(c, &id, now_ms)).await
    }

    async fn expire_c2d(&self, now_ms: i64) -> StoreResult<usize> {
        self.write(move |c| c2d::expire_all(c, now_ms)).await
    }

    async fn receive_feedback(
        &self,
        lock_token: &str,
        max: usize,
        now_ms: i64,
    ) -> StoreResult<Vec<FeedbackRecord>> {
        let token = lock_token.to_owned();
        self.write(move |c| c2d::receive_feedback(c, &token, max, now_ms)).await
    }

    async fn complete_feedback(&self, lock_token: &str, now_ms: i64) -> StoreResult<Settled<usize>> {
        let token = lock_token.to_owned();
        self.write(move |c| c2d::complete_feedback(c, &token, now_ms)).await
    }

    async fn abandon_feedback(&self, lock_token: &str, now_ms: i64) -> StoreResult<Settled<usize>> {
        let token = lock_token.to_owned();
        self.write(move |c| c2d::abandon_feedback(c, &token, now_ms)).await
    }

    async fn all_devices(&self) -> StoreResult<Vec<DeviceRecord>> {
        self.read(|c| {
            let mut stmt = c
                .prepare_cached("SELECT identity, twin, revision FROM devices ORDER BY device_id")
                .map_err(backend)?;
            let rows = stmt
                .query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?, r.get::<_, i64>(2)?)))
                .map_err(backend)?
                .collect::<Result<Vec<_>, _>>()
                .map_err(backend)?;
            rows.into_iter().map(|(i, t, rev)| decode_record(i, t, rev)).collect()
        })
        .await
    }

    async fn devices_after(&self, after: Option<&str>, limit: usize) -> StoreResult<Vec<DeviceRecord>> {
        // Device ids are never empty, so "" sorts before every one of them.
        let after = after.unwrap_or_default().to_owned();
        self.read(move |c| {
            let mut stmt = c
                .prepare_cached(
                    "SELECT identity, twin, revision FROM devices WHERE device_id > ?1 ORDER BY device_id LIMIT ?2",
                )
                .map_err(backend)?;
            let raw = stmt
                .query_map(params![after, limit as i64], |r| {
                    Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?, r.get::<_, i64>(2)?))
                })
                .map_err(backend)?
                .collect::<Result<Vec<_>, _>>()
                .map_err(backend)?;
            decode_parallel(raw)
        })
        .await
    }

    async fn list_configurations(&self) -> StoreResult<Vec<StoredConfiguration>> {
        self.read(|c| {
            let mut stmt = c
                .prepare_cached("SELECT id, document, revision FROM configurations ORDER BY id")
                .map_err(backend)?;
            let rows = stmt
                .query_map([], |r| {
                    Ok(StoredConfiguration { id: r.get(0)?, document: r.get(1)?, revision: r.get(2)? })
                })
                .map_err(backend)?
                .collect::<Result<Vec<_>, _>>()
                .map_err(backend)?;
            Ok(rows)
        })
        .await
    }

    async fn get_configuration(&self, id: &str) -> StoreResult<Option<StoredConfiguration>> {
        let id = id.to_owned();
        self.read(move |c| {
            c.query_row("SELECT id, document, revision FROM configurations WHERE id = ?1", params![id], |r| {
                Ok(StoredConfiguration { id: r.get(0)?, document: r.get(1)?, revision: r.get(2)? })
            })
            .optional()
            .map_err(backend)
        })
        .await
    }

    async fn create_configuration(&self, id: &str, document: String, max: usize) -> StoreResult<()> {
        let id = id.to_owned();
        self.write(move |tx| {
            let exists = tx
                .query_row("SELECT 1 FROM configurations WHERE id = ?1", params![id], |_| Ok(()))
                .optional()
                .map_err(backend)?;
            if exists.is_some() {
                return Err(StoreError::AlreadyExists);
            }
            let count: i64 =
                tx.query_row("SELECT COUNT(*) FROM configurations", [], |r| r.get(0)).map_err(backend)?;
            if count as usize >= max {
                return Err(StoreError::LimitReached);
            }
            tx.execute(
                "INSERT INTO configurations (id, revision, document) VALUES (?1, 1, ?2)",
                params![id, document],
            )
            .map_err(backend)?;
            Ok(())
        })
        .await
    }

    async fn update_configuration(
        &self,
        id: &str,
        document: String,
        expected_revision: i64,
    ) -> StoreResult<()> {
        let id = id.to_owned();
        self.write(move |c| {
            let n = c
                .execute(
                    "UPDATE configurations SET revision = revision + 1, document = ?2 WHERE id = ?1 AND revision = ?3",
                    params![id, document, expected_revision],
                )
                .map_err(backend)?;
            if n == 1 {
                return Ok(());
            }
            let exists = c
                .query_row("SELECT 1 FROM configurations WHERE id = ?1", params![id], |_| Ok(()))
                .optional()
                .map_err(backend)?;
            Err(if exists.is_some() { StoreError::Conflict } else { StoreError::NotFound })
        })
        .await
    }

    async fn delete_configuration(&self, id: &str) -> StoreResult<()> {
        let id = id.to_owned();
        self.write(move |c| {
            let n = c.execute("DELETE FROM configurations WHERE id = ?1", params![id]).map_err(backend)?;
            if n == 1 {
                Ok(())
            } else {
                Err(StoreError::NotFound)
            }
        })
        .await
    }

    async fn device_counts(&self) -> StoreResult<DeviceCounts> {
        self.read(|c| {
            c.query_row(
                "SELECT COUNT(*), COALESCE(SUM(status = 'enabled'), 0), COALESCE(SUM(status = 'disabled'), 0) FROM devices",
                [],
                |r| {
                    Ok(DeviceCounts {
                        total: r.get::<_, i64>(0)? as u64,
                        enabled: r.get::<_, i64>(1)? as u64,
                        disabled: r.get::<_, i64>(2)? as u64,
                    })
                },
            )
            .map_err(backend)
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use ferrohub_core::identity::{DeviceRequest, DeviceStatus, Minted};
    use ferrohub_core::time::Timestamp;
    use ferrohub_core::twin::TwinState;

    #[test]
    fn a_write_that_finds_no_space_is_full_not_a_backend_failure() {
        let conn = Connection::open_in_memory().unwrap();
        // A page ceiling makes SQLite answer SQLITE_FULL exactly as it does
        // when the file system has no room left.
        conn.execute_batch("CREATE TABLE t (b BLOB); PRAGMA max_page_count = 8;").unwrap();
        let err = (0..64)
            .find_map(|_| conn.execute("INSERT INTO t VALUES (zeroblob(4096))", []).err())
            .expect("the page ceiling stops the inserts");
        assert!(matches!(backend(err), StoreError::Full));
        assert!(matches!(backend("the store writer has stopped"), StoreError::Backend(_)));
    }

    pub(super) fn record(id: &str) -> DeviceRecord {
        let now = Timestamp::from_unix_nanos(1_700_000_000_000_000_000);
        let mut key = || "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=".to_owned();
        let device = Device::create(
            id,
            DeviceRequest::default(),
            Minted { now, etag: "MQ==".into(), generation_id: "1".into(), new_key: &mut key },
        )
        .unwrap();
        DeviceRecord { device, twin: TwinState::new(now), revision: 1 }
    }

    pub(super) fn open() -> (tempfile::TempDir, SqliteStore) {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(&dir.path().join("hub.db")).unwrap();
        (dir, store)
    }

    #[tokio::test]
    async fn a_failed_write_in_a_batch_is_rolled_back_alone() {
        let (_d, s) = open();
        // Many writes queued at once share batches; every other one fails
        // after writing.
        let writes: Vec<_> = (0..200)
            .map(|i| {
                let s = s.clone();
                tokio::spawn(async move {
                    s.write(move |c| {
                        c.execute(
                            "INSERT INTO configurations (id, revision, document) VALUES (?1, 1, '{}')",
                            params![format!("c{i}")],
                        )
                        .map_err(backend)?;
                        if i % 2 == 0 {
                            Ok(i)
                        } else {
                            Err(StoreError::Conflict)
                        }
                    })
                    .await
                })
            })
            .collect();
        for (i, w) in writes.into_iter().enumerate() {
            let result = w.await.unwrap();
            assert_eq!(result.is_ok(), i % 2 == 0, "write {i}: {result:?}");
        }
        let stored = s.list_configurations().await.unwrap();
        assert_eq!(stored.len(), 100);
        assert!(stored.iter().all(|c| c.id[1..].parse::<usize>().unwrap() % 2 == 0));
    }

    #[tokio::test]
    async fn devices_after_pages_through_every_record_in_id_order() {
        let (_d, s) = open();
        let batch: Vec<_> = (0..2_500).rev().map(|i| record(&format!("d{i:04}"))).collect();
        s.create_devices_bulk(&batch).await.unwrap();
        let mut seen = Vec::new();
        let mut after: Option<String> = None;
        loop {
            let page = s.devices_after(after.as_deref(), 1_100).await.unwrap();
            assert!(page.len() <= 1_100);
            seen.extend(page.iter().map(|r| r.device.device_id.clone()));
            match page.last() {
                Some(last) if page.len() == 1_100 => after = Some(last.device.device_id.clone()),
                _ => break,
            }
        }
        let all: Vec<_> = s.all_devices().await.unwrap().into_iter().map(|r| r.device.device_id).collect();
        assert_eq!(seen, all);
        assert_eq!(seen.len(), 2_500);
        assert!(s.devices_after(Some("d2499"), 10).await.unwrap().is_empty());
        let some: Vec<_> = s
            .devices_after(Some("d0007"), 3)
            .await
            .unwrap()
            .into_iter()
            .map(|r| r.device.device_id)
            .collect();
        assert_eq!(some, ["d0008", "d0009", "d0010"]);
    }

    #[tokio::test]
    async fn bulk_create_stores_all_or_nothing() {
        let (_d, s) = open();
        let batch: Vec<_> = (0..50).map(|i| record(&format!("d{i:03}"))).collect();
        s.create_devices_bulk(&batch).await.unwrap();
        assert_eq!(s.device_counts().await.unwrap().total, 50);
        let got = s.get_device("d007").await.unwrap().unwrap();
        assert_eq!((got.device.device_id.as_str(), got.revision), ("d007", 1));
        // One existing id refuses the whole batch.
        let clash = vec![record("new1"), record("d010"), record("new2")];
        assert!(matches!(s.create_devices_bulk(&clash).await, Err(StoreError::AlreadyExists)));
        assert!(s.get_device("new1").await.unwrap().is_none());
        assert_eq!(s.device_counts().await.unwrap().total, 50);
        s.create_devices_bulk(&[]).await.unwrap();
    }

    #[tokio::test]
    async fn create_get_list_and_refuse_duplicates() {
        let (_d, s) = open();
        s.create_device(&record("b")).await.unwrap();
        s.create_device(&record("a")).await.unwrap();
        assert!(matches!(s.create_device(&record("a")).await, Err(StoreError::AlreadyExists)));
        let got = s.get_device("a").await.unwrap().unwrap();
        assert_eq!(got.device.device_id, "a");
        assert_eq!(got.revision, 1);
        let ids: Vec<_> = s.list_devices(10).await.unwrap().into_iter().map(|d| d.device_id).collect();
        assert_eq!(ids, ["a", "b"]);
        assert_eq!(s.list_devices(1).await.unwrap().len(), 1);
        assert!(s.get_device("zz").await.unwrap().is_none());
    }

    #[tokio::test]
    async fn updates_are_optimistic() {
        let (_d, s) = open();
        s.create_device(&record("a")).await.unwrap();
        let mut r = s.get_device("a").await.unwrap().unwrap();
        r.device.status = DeviceStatus::Disabled;
        s.update_device(&r).await.unwrap();
        // The same stale revision again is a conflict, and changes nothing.
        r.device.status = DeviceStatus::Enabled;
        assert!(matches!(s.update_device(&r).await, Err(StoreError::Conflict)));
        let now = s.get_device("a").await.unwrap().unwrap();
        assert_eq!(now.revision, 2);
        assert_eq!(now.device.status, DeviceStatus::Disabled);
        let counts = s.device_counts().await.unwrap();
        assert_eq!(counts, DeviceCounts { total: 1, enabled: 0, disabled: 1 });
        let mut ghost = record("ghost");
        ghost.revision = 1;
        assert!(matches!(s.update_device(&ghost).await, Err(StoreError::NotFound)));
    }

    #[tokio::test]
    async fn deletes_check_revision_and_survive_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("hub.db");
        {
            let s = SqliteStore::open(&path).unwrap();
            s.create_device(&record("a")).await.unwrap();
            s.create_device(&record("b")).await.unwrap();
            assert!(matches!(s.delete_device("a", Some(7)).await, Err(StoreError::Conflict)));
            s.delete_device("a", Some(1)).await.unwrap();
            assert!(matches!(s.delete_device("a", None).await, Err(StoreError::NotFound)));
        }
        let s = SqliteStore::open(&path).unwrap();
        assert!(s.get_device("a").await.unwrap().is_none());
        assert!(s.get_device("b").await.unwrap().is_some());
    }

    #[tokio::test]
    async fn configurations_are_unique_bounded_and_optimistic() {
        let (_d, s) = open();
        s.create_configuration("b", "{}".into(), 2).await.unwrap();
        s.create_configuration("a", "{\"x\":1}".into(), 2).await.unwrap();
        assert!(matches!(s.create_configuration("a", "{}".into(), 5).await, Err(StoreError::AlreadyExists)));
        assert!(matches!(s.create_configuration("c", "{}".into(), 2).await, Err(StoreError::LimitReached)));
        let ids: Vec<_> = s.list_configurations().await.unwrap().into_iter().map(|c| c.id).collect();
        assert_eq!(ids, ["a", "b"]);
        let a = s.get_configuration("a").await.unwrap().unwrap();
        s.update_configuration("a", "{\"x\":2}".into(), a.revision).await.unwrap();
        assert!(matches!(
            s.update_configuration("a", "{}".into(), a.revision).await,
            Err(StoreError::Conflict)
        ));
        assert_eq!(s.get_configuration("a").await.unwrap().unwrap().document, "{\"x\":2}");
        s.delete_configuration("a").await.unwrap();
        assert!(matches!(s.delete_configuration("a").await, Err(StoreError::NotFound)));
        assert!(matches!(s.update_configuration("a", "{}".into(), 1).await, Err(StoreError::NotFound)));
    }
}
