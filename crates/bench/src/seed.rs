//! `seed`: bulk-loads twins straight into a stopped hub's store (a
//! benchmark tool only: no hub runs, nothing is announced).
//!
//! Records are built the way the registry builds them (identity create
//! rules with fresh SAS keys, a twin with the tags applied as a service
//! patch and the firmware section applied as a device's reported patch),
//! so the hub loads them as ordinary twins.

use std::os::unix::fs::{DirBuilderExt as _, OpenOptionsExt as _};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use base64::Engine as _;
use clap::Args;
use ferrohub_core::identity::{Device, DeviceRequest, Minted};
use ferrohub_core::time::Timestamp;
use ferrohub_core::twin::TwinState;
use ferrohub_store::{DeviceRecord, SqliteStore, Store as _};
use rand::{Rng as _, SeedableRng as _};
use serde_json::json;

/// The database file inside a data dir (the hub's `DB_FILE`).
pub(crate) const DB_FILE: &str = "hub.db";

/// Rows per transaction.
const BATCH: usize = 10_000;

/// Twins per `tags.wave`: configurations in the scenarios target one wave,
/// so applying them stays a few thousand twin writes at any fleet size.
pub(crate) const WAVE_SIZE: usize = 5_000;

/// The version `current` twins report (and the query scenario's
/// configuration names).
pub(crate) const NEW_VERSION: &str = "2.0.0";

/// Statuses other than `current`, spread evenly.
const OTHER_STATUSES: [&str; 4] = ["downloading", "applying", "error", "rolledback"];

/// `seed` flags.
#[derive(Debug, Clone, Args)]
pub(crate) struct SeedArgs {
    /// The hub's data dir (created if missing; the hub must not be running).
    #[arg(long, value_name = "DIR")]
    pub(crate) data_dir: PathBuf,
    /// How many twins to add.
    #[arg(long, value_name = "M")]
    pub(crate) twins: usize,
    /// Share of twins tagged `devicetype = 'chiller'` (others: `other`).
    #[arg(long, default_value_t = 0.5)]
    pub(crate) chiller_share: f64,
    /// Share of twins reporting `fwUpdateStatus = 'current'`.
    #[arg(long, default_value_t = 0.3)]
    pub(crate) current_share: f64,
}

/// The id of the `i`-th seeded device.
pub(crate) fn device_id(i: usize) -> String {
    format!("bench-{i:08}")
}

/// Whether the `i`-th device is a chiller (deterministic, evenly spread).
fn is_chiller(i: usize, share: f64) -> bool {
    // A low-discrepancy sequence: shares hold in every prefix and wave.
    ((i as f64 + 0.5) * 0.618_033_988_749_895).fract() < share
}

/// The firmware status of the `i`-th device.
fn status_of(i: usize, current_share: f64) -> &'static str {
    let u = ((i as f64 + 0.5) * 0.754_877_666_246_692_7).fract();
    if u < current_share {
        "current"
    } else {
        let rest = (u - current_share) / (1.0 - current_share).max(f64::EPSILON);
        OTHER_STATUSES[((rest * OTHER_STATUSES.len() as f64) as usize).min(OTHER_STATUSES.len() - 1)]
    }
}

fn now() -> Timestamp {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as i128)
        .unwrap_or(0);
    Timestamp::from_unix_nanos(nanos)
}

/// The `i`-th device's record.
fn record(i: usize, args: &SeedArgs, rng: &mut rand::rngs::StdRng) -> anyhow::Result<DeviceRecord> {
    let now = now();
    let b64 = base64::engine::general_purpose::STANDARD;
    let mut keys = [rng.gen::<[u8; 32]>(), rng.gen::<[u8; 32]>()].into_iter();
    let mut new_key = || b64.encode(keys.next().unwrap_or_default());
    let etag = b64.encode(rng.gen_range(100_000_000u64..u64::MAX / 2).to_string());
    let generation_id = rng.gen_range(100_000_000_000_000_000u64..1_000_000_000_000_000_000).to_string();
    let id = device_id(i);
    let device = Device::create(
        &id,
        DeviceRequest::default(),
        Minted { now, etag, generation_id, new_key: &mut new_key },
    )
    .map_err(|e| anyhow::anyhow!("{}", e.message))?;
    let mut twin = TwinState::new(now);
    let devicetype = if is_chiller(i, args.chiller_share) { "chiller" } else { "other" };
    let tags = json!({"tags": {
        "devicetype": devicetype,
        "wave": i / WAVE_SIZE,
        "location": {"building": format!("b{}", i % 97), "floor": i % 13},
    }});
    twin.apply_service_patch(&tags, now).map_err(|e| anyhow::anyhow!("{}", e.message))?;
    let status = status_of(i, args.current_share);
    let version = if status == "current" { NEW_VERSION } else { "1.0.0" };
    let reported = json!({"firmware": {
        "fwUpdateStatus": status,
        "currentFwVersion": version,
        "lastFwUpdateStartTime": now.to_iso(),
    }});
    twin.apply_reported_patch(&reported, now).map_err(|e| anyhow::anyhow!("{}", e.message))?;
    Ok(DeviceRecord { device, twin, revision: 1 })
}

/// Opens a data dir's store the way the hub does (dir 0700, database file
/// 0600 before SQLite creates it).
pub(crate) fn open_store(dir: &Path) -> anyhow::Result<SqliteStore> {
    std::fs::DirBuilder::new().recursive(true).mode(0o700).create(dir)?;
    let db = dir.join(DB_FILE);
    match std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(&db) {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(e).with_context(|| format!("creating {}", db.display())),
    }
    SqliteStore::open(&db).map_err(|e| anyhow::anyhow!("opening {}: {e}", db.display()))
}

/// Adds `args.twins` devices (ids from the current count on, so seeding
/// twice grows the fleet). Returns how long it took.
pub(crate) async fn seed(args: &SeedArgs) -> anyhow::Result<Duration> {
    let started = Instant::now();
    let store = open_store(&args.data_dir)?;
    let first = store.device_counts().await.map_err(|e| anyhow::anyhow!("{e}"))?.total as usize;
    let end = first + args.twins;
    // Build batches on a blocking thread while the previous one commits.
    let (tx, mut rx) = tokio::sync::mpsc::channel::<anyhow::Result<Vec<DeviceRecord>>>(2);
    let builder_args = args.clone();
    let builder = tokio::task::spawn_blocking(move || {
        let mut rng = rand::rngs::StdRng::from_entropy();
        let mut i = first;
        while i < end {
            let stop = (i + BATCH).min(end);
            let batch = (i..stop).map(|n| record(n, &builder_args, &mut rng)).collect();
            if tx.blocking_send(batch).is_err() {
                return;
            }
            i = stop;
        }
    });
    let mut done = 0usize;
    let mut last_note = Instant::now();
    while let Some(batch) = rx.recv().await {
        let batch = batch?;
        store.create_devices_bulk(&batch).await.map_err(|e| anyhow::anyhow!("storing twins: {e}"))?;
        done += batch.len();
        if last_note.elapsed() > Duration::from_secs(10) {
            last_note = Instant::now();
            eprintln!("seeded {done}/{} twins in {:.0} s", args.twins, started.elapsed().as_secs_f64());
        }
    }
    builder.await?;
    anyhow::ensure!(done == args.twins, "seeded {done} of {} twins", args.twins);
    Ok(started.elapsed())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shares_hold() {
        let n = 10_000;
        let chillers = (0..n).filter(|&i| is_chiller(i, 0.5)).count();
        let current = (0..n).filter(|&i| status_of(i, 0.3) == "current").count();
        assert!((4_900..=5_100).contains(&chillers), "{chillers}");
        assert!((2_900..=3_100).contains(&current), "{current}");
        for s in OTHER_STATUSES {
            let k = (0..n).filter(|&i| status_of(i, 0.3) == s).count();
            assert!((1_650..=1_850).contains(&k), "{s}: {k}");
        }
    }
}
