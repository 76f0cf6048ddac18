//! The firmware artifact store: images in `DIR/firmware/<sha256>`, content
//! addressed, each with a signed manifest beside it (`<sha256>.json`), and
//! the hub's Ed25519 signing key in `DIR/signing-key.pem` (0600).
//!
//! Uploads stream to a temporary file while being hashed, so no image is
//! ever held in memory; downloads stream from disk with `Range` support.
//! Metadata lives next to the blobs rather than in the database: the images
//! are files in the data dir anyway, and a blob and its manifest then come
//! and go together.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use anyhow::Context;
use bytes::Bytes;
use ed25519_dalek::pkcs8::{DecodePrivateKey, EncodePrivateKey, EncodePublicKey};
use ed25519_dalek::SigningKey;
use ferrohub_core::firmware::{validate_version, FirmwareImage, FirmwareManifest};
use ferrohub_core::{ErrorCode, HubError, HubResult};
use futures_util::{Stream, StreamExt as _};
use sha2::Digest as _;
use tokio::sync::Semaphore;

use crate::fsutil::write_private;

/// File name of the signing key inside the data dir.
pub const SIGNING_KEY_FILE: &str = "signing-key.pem";
/// Name prefix of an upload's temporary file; whatever carries it when the
/// store opens belongs to an upload that never finished.
const UPLOAD_PREFIX: &str = ".upload-";
/// How many bytes an upload writes on the strength of one free-space
/// measurement: the check is a syscall, so it runs once per interval, and
/// each measurement must leave room for the whole interval above the
/// reserve so the reserve is never eaten into.
const FREE_SPACE_INTERVAL: u64 = 256 * 1024;

const GIB: u64 = 1024 * 1024 * 1024;

/// What the image store accepts; `serve` flags set each one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FirmwareLimits {
    /// Largest image, in bytes.
    pub max_image: u64,
    /// Most bytes all stored images may take together.
    pub quota: u64,
    /// Most uploads running at once.
    pub max_uploads: usize,
    /// Free space an upload must leave on the data dir's file system (the
    /// database and its WAL need it too).
    pub reserve: u64,
}

impl Default for FirmwareLimits {
    fn default() -> Self {
        Self { max_image: 4 * GIB, quota: 64 * GIB, max_uploads: 4, reserve: GIB / 4 }
    }
}

/// The hub's images and signing key.
pub struct FirmwareStore {
    dir: PathBuf,
    key: SigningKey,
    limits: FirmwareLimits,
    /// One permit per upload that may run.
    uploads: Semaphore,
    /// Bytes written so far by the uploads running now: they count against
    /// the quota before they are stored, so concurrent uploads cannot
    /// overshoot it together.
    in_flight: AtomicU64,
    /// Sizes of the stored images, summed.
    stored: AtomicU64,
    /// Serialises what changes the set of stored images (an upload's last
    /// step, a delete), so a quota check and the store it allows are one
    /// step and two uploads of the same bytes store them once.
    commit: Mutex<()>,
}

fn internal(e: impl std::fmt::Display) -> HubError {
    HubError::internal(e.to_string())
}

/// A write error: a full disk is the caller's 507, anything else ours.
fn write_error(e: std::io::Error) -> HubError {
    if e.raw_os_error() == Some(libc::ENOSPC) {
        insufficient_storage()
    } else {
        internal(e)
    }
}

fn insufficient_storage() -> HubError {
    HubError::new(
        ErrorCode::InsufficientStorage,
        "The hub's disk has too little free space for this image; nothing was stored \
         (the hub keeps --firmware-free-space-reserve free)",
    )
}

/// A SHA-256 in the form images are addressed by: 64 lower-case hex digits.
pub fn check_sha256(sha: &str) -> HubResult<()> {
    if sha.len() == 64 && sha.chars().all(|c| c.is_ascii_digit() || ('a'..='f').contains(&c)) {
        Ok(())
    } else {
        Err(HubError::invalid("A firmware image is named by its SHA-256: 64 lower-case hex digits"))
    }
}

/// Bytes of an upload counted in [`FirmwareStore::in_flight`], given back
/// when the upload ends, however it ends.
struct InFlight<'a> {
    total: &'a AtomicU64,
    mine: u64,
}

impl InFlight<'_> {
    fn add(&mut self, n: u64) {
        self.total.fetch_add(n, Ordering::SeqCst);
        self.mine += n;
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.total.fetch_sub(self.mine, Ordering::SeqCst);
    }
}

/// What an upload received: the temporary file (removed when dropped, so an
/// upload that ends early — an error, a client gone, a cancelled request, a
/// hub shutting down — leaves nothing behind), its hash and size.
struct Received {
    file: tempfile::TempPath,
    sha: String,
    size: u64,
}

impl FirmwareStore {
    /// Opens the store, creating the signing key on a start where it is
    /// absent, and removes what unfinished uploads left (see [`Self::sweep`]).
    pub fn open(data_dir: &Path, limits: FirmwareLimits) -> anyhow::Result<Self> {
        let dir = data_dir.join("firmware");
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let key_path = data_dir.join(SIGNING_KEY_FILE);
        let key = if key_path.exists() {
            let pem = std::fs::read_to_string(&key_path)?;
            SigningKey::from_pkcs8_pem(&pem)
                .map_err(|e| anyhow::anyhow!("reading {}: {e}", key_path.display()))?
        } else {
            let key = SigningKey::generate(&mut rand::rngs::OsRng);
            let pem = key.to_pkcs8_pem(Default::default()).map_err(|e| anyhow::anyhow!("{e}"))?;
            write_private(&key_path, pem.as_bytes())?;
            tracing::info!(path = %key_path.display(), "created firmware signing key");
            key
        };
        let store = Self {
            dir,
            key,
            limits,
            uploads: Semaphore::new(limits.max_uploads),
            in_flight: AtomicU64::new(0),
            stored: AtomicU64::new(0),
            commit: Mutex::new(()),
        };
        store.sweep().with_context(|| format!("cleaning {}", store.dir.display()))?;
        Ok(store)
    }

    /// Removes what a hub killed mid-write left: upload temporaries, a
    /// record's unrenamed `.tmp`, and image bytes without a record (renamed
    /// into place, but killed before the record was written, so never
    /// acknowledged). Then sums the stored images for the quota.
    fn sweep(&self) -> anyhow::Result<()> {
        let (mut removed, mut freed, mut stored) = (0u32, 0u64, 0u64);
        for entry in std::fs::read_dir(&self.dir)? {
            let entry = entry?;
            let name = entry.file_name();
            let name = name.to_string_lossy();
            let orphan_blob = check_sha256(&name).is_ok() && !self.meta(&name).exists();
            if name.starts_with(UPLOAD_PREFIX) || name.ends_with(".tmp") || orphan_blob {
                freed += entry.metadata().map(|m| m.len()).unwrap_or(0);
                std::fs::remove_file(entry.path())?;
                removed += 1;
            } else if let Some(image) = name.strip_suffix(".json").map(|sha| self.get(sha)).transpose()? {
                stored += image.map_or(0, |i| i.manifest.size);
            }
        }
        if removed > 0 {
            tracing::warn!(files = removed, bytes = freed, "removed what unfinished firmware uploads left");
        }
        self.stored.store(stored, Ordering::SeqCst);
        Ok(())
    }

    /// The limits this store enforces.
    pub fn limits(&self) -> FirmwareLimits {
        self.limits
    }

    /// The public key devices are provisioned with (SPKI PEM).
    pub fn public_key_pem(&self) -> HubResult<String> {
        self.key.verifying_key().to_public_key_pem(Default::default()).map_err(internal)
    }

    /// Path of an image's bytes.
    pub fn blob(&self, sha: &str) -> PathBuf {
        self.dir.join(sha)
    }

    fn meta(&self, sha: &str) -> PathBuf {
        self.dir.join(format!("{sha}.json"))
    }

    /// Bytes the store's file system has free for an unprivileged writer.
    fn free_space(&self) -> HubResult<u64> {
        let s = rustix::fs::statvfs(&self.dir).map_err(internal)?;
        Ok(s.f_bavail.saturating_mul(s.f_frsize))
    }

    /// Refuses an image of `size` bytes that the store could not take:
    /// over the per-image limit (413), or over the quota with what is
    /// stored and what other uploads have written so far (403, Azure's
    /// code for a used-up quota). `own` is what this upload has already
    /// counted in flight.
    fn check_quota(&self, size: u64, own: u64) -> HubResult<()> {
        let FirmwareLimits { max_image, quota, .. } = self.limits;
        if size > max_image {
            return Err(HubError::new(
                ErrorCode::MessageTooLarge,
                format!("A firmware image is at most {max_image} bytes (--firmware-max-image-size)"),
            ));
        }
        let others = self.in_flight.load(Ordering::SeqCst).saturating_sub(own);
        let used = self.stored.load(Ordering::SeqCst).saturating_add(others);
        if used.saturating_add(size) > quota {
            return Err(HubError::new(
                ErrorCode::IotHubQuotaExceeded,
                format!(
                    "The firmware store's quota is {quota} bytes and {used} are taken; this image does not \
                     fit and was not stored. Delete images or raise --firmware-store-quota"
                ),
            ));
        }
        Ok(())
    }

    /// Stores an image streamed from `body` (any transport's byte stream),
    /// returning its signed record. `declared` is the size the client
    /// announced (Content-Length), checked against the limits before any
    /// byte is read; the limits hold while writing either way.
    /// The same bytes uploaded again under the same version return the
    /// existing record; under another version they are refused.
    pub async fn upload<E: std::fmt::Display>(
        &self,
        version: &str,
        device_type: &str,
        declared: Option<u64>,
        body: impl Stream<Item = Result<Bytes, E>> + Unpin,
    ) -> HubResult<FirmwareImage> {
        validate_version(version)?;
        if let Some(size) = declared {
            self.check_quota(size, 0)?;
            if self.free_space()? < size.saturating_add(self.limits.reserve) {
                return Err(insufficient_storage());
            }
        }
        // Refused at once rather than queued: a waiting upload would hold
        // its connection and buffers all the same.
        let _permit = self.uploads.try_acquire().map_err(|_| {
            HubError::new(
                ErrorCode::ServiceUnavailable,
                format!(
                    "The hub runs at most {} firmware uploads at once (--firmware-max-uploads); retry later",
                    self.limits.max_uploads
                ),
            )
        })?;
        let mut in_flight = InFlight { total: &self.in_flight, mine: 0 };
        let received = self.receive(body, &mut in_flight).await?;
        let _commit = crate::sync::consistent(self.commit.lock(), "firmware commit");
        if let Some(existing) = self.get(&received.sha)? {
            if existing.manifest.version == version && existing.manifest.device_type == device_type {
                return Ok(existing);
            }
            return Err(HubError::new(
                ErrorCode::InvalidOperation,
                format!("This image is already stored as version {}", existing.manifest.version),
            ));
        }
        // Another upload may have been stored since this one last checked.
        self.check_quota(received.size, in_flight.mine)?;
        let Received { file, sha, size } = received;
        let manifest = FirmwareManifest {
            version: version.to_owned(),
            size,
            sha256: sha.clone(),
            device_type: device_type.to_owned(),
            created: crate::clock::now(),
        };
        let image = FirmwareImage::sign(manifest, &self.key)?;
        file.persist(self.blob(&sha)).map_err(|e| internal(e.error))?;
        let json = serde_json::to_vec_pretty(&image).map_err(internal)?;
        if let Err(e) = crate::fsutil::write_public(&self.meta(&sha), &json) {
            let _ = std::fs::remove_file(self.blob(&sha));
            return Err(write_error(e));
        }
        // Both renames survive a power loss before the upload is answered.
        std::fs::File::open(&self.dir).and_then(|d| d.sync_all()).map_err(internal)?;
        self.stored.fetch_add(size, Ordering::SeqCst);
        tracing::info!(version, sha, size, "firmware image stored");
        Ok(image)
    }

    async fn receive<E: std::fmt::Display>(
        &self,
        mut body: impl Stream<Item = Result<Bytes, E>> + Unpin,
        in_flight: &mut InFlight<'_>,
    ) -> HubResult<Received> {
        let (file, path) = tempfile::Builder::new()
            .prefix(UPLOAD_PREFIX)
            .tempfile_in(&self.dir)
            .map_err(write_error)?
            .into_parts();
        let mut file = tokio::io::BufWriter::new(tokio::fs::File::from_std(file));
        let mut hasher = sha2::Sha256::new();
        let mut size = 0u64;
        // Bytes the last free-space measurement allows without another.
        let mut room = 0u64;
        while let Some(data) = body.next().await {
            let data = data.map_err(|e| HubError::format(format!("The upload was cut off: {e}")))?;
            let len = data.len() as u64;
            size += len;
            self.check_quota(size, in_flight.mine)?;
            if len > room {
                let free = self.free_space()?;
                let above_reserve = free.saturating_sub(self.limits.reserve);
                if above_reserve < len {
                    return Err(insufficient_storage());
                }
                room = above_reserve.min(len + FREE_SPACE_INTERVAL);
            }
            room -= len;
            in_flight.add(len);
            hasher.update(&data);
            tokio::io::AsyncWriteExt::write_all(&mut file, &data).await.map_err(write_error)?;
        }
        if size == 0 {
            return Err(HubError::new(ErrorCode::ArgumentNull, "The firmware image is empty"));
        }
        tokio::io::AsyncWriteExt::flush(&mut file).await.map_err(write_error)?;
        file.into_inner().sync_all().await.map_err(write_error)?;
        Ok(Received { file: path, sha: hex::encode(hasher.finalize()), size })
    }

    /// One image's record.
    pub fn get(&self, sha: &str) -> HubResult<Option<FirmwareImage>> {
        match std::fs::read(self.meta(sha)) {
            Ok(bytes) => serde_json::from_slice(&bytes).map(Some).map_err(internal),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(internal(e)),
        }
    }

    /// Every image, newest first.
    pub fn list(&self) -> HubResult<Vec<FirmwareImage>> {
        let mut images = Vec::new();
        for entry in std::fs::read_dir(&self.dir).map_err(internal)? {
            let name = entry.map_err(internal)?.file_name();
            let name = name.to_string_lossy();
            if let Some(sha) = name.strip_suffix(".json") {
                if let Some(image) = self.get(sha)? {
                    images.push(image);
                }
            }
        }
        images.sort_by_key(|i| std::cmp::Reverse(i.manifest.created));
        Ok(images)
    }

    /// Removes an image and its record.
    pub fn delete(&self, sha: &str) -> HubResult<()> {
        let _commit = crate::sync::consistent(self.commit.lock(), "firmware commit");
        let image = self.get(sha)?.ok_or_else(|| not_found(sha))?;
        std::fs::remove_file(self.meta(sha)).map_err(internal)?;
        let _ = std::fs::remove_file(self.blob(sha));
        self.stored.fetch_sub(image.manifest.size, Ordering::SeqCst);
        Ok(())
    }
}

/// 404 for an unknown image.
pub fn not_found(sha: &str) -> HubError {
    HubError::new(ErrorCode::IotHubNotFound, format!("Firmware image {sha} not found"))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::sync::Arc;

    use super::*;

    const MIB: usize = 1024 * 1024;

    fn chunks(n: usize, size: usize) -> impl Stream<Item = Result<Bytes, std::io::Error>> + Unpin {
        futures_util::stream::iter((0..n).map(move |i| Ok(Bytes::from(vec![i as u8; size]))))
    }

    fn limits() -> FirmwareLimits {
        FirmwareLimits { reserve: 0, ..FirmwareLimits::default() }
    }

    fn names(dir: &Path) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(dir.join("firmware"))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    }

    #[tokio::test]
    async fn opening_sweeps_what_unfinished_uploads_left_and_counts_what_is_stored() {
        let dir = tempfile::tempdir().unwrap();
        let store = FirmwareStore::open(dir.path(), limits()).unwrap();
        let image = store.upload("1.0.0", "", None, chunks(2, 1000)).await.unwrap();
        let sha = image.manifest.sha256.clone();
        let fw = dir.path().join("firmware");
        std::fs::write(fw.join(".upload-left-by-a-kill"), b"partial").unwrap();
        std::fs::write(fw.join(format!("{}.tmp", "a".repeat(64))), b"{").unwrap();
        std::fs::write(fw.join("b".repeat(64)), b"renamed, never recorded").unwrap();
        drop(store);

        let store = FirmwareStore::open(dir.path(), limits()).unwrap();
        assert_eq!(names(dir.path()), vec![sha.clone(), format!("{sha}.json")]);
        assert_eq!(store.stored.load(Ordering::SeqCst), 2000);
        store.delete(&sha).unwrap();
        assert_eq!(store.stored.load(Ordering::SeqCst), 0);
    }

    #[tokio::test]
    async fn an_upload_dropped_mid_body_removes_its_temp_file() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(FirmwareStore::open(dir.path(), limits()).unwrap());
        let (tx, rx) = tokio::sync::mpsc::channel::<Result<Bytes, std::io::Error>>(1);
        let body = futures_util::stream::unfold(rx, |mut rx| async { rx.recv().await.map(|c| (c, rx)) });
        let task = {
            let store = store.clone();
            tokio::spawn(async move { store.upload("1.0.0", "", None, Box::pin(body)).await })
        };
        // With room for one chunk, the third send returns only once the
        // upload took the second, so the first is written by then.
        for _ in 0..3 {
            tx.send(Ok(Bytes::from(vec![1u8; 64 * 1024]))).await.unwrap();
        }
        assert_eq!(names(dir.path()).len(), 1, "the temporary file exists mid-upload");
        assert_eq!(store.in_flight.load(Ordering::SeqCst), 128 * 1024);
        task.abort();
        assert!(task.await.unwrap_err().is_cancelled());
        assert_eq!(names(dir.path()), Vec::<String>::new());
        assert_eq!(store.in_flight.load(Ordering::SeqCst), 0, "its bytes no longer count");
    }

    #[tokio::test]
    async fn uploads_over_a_limit_store_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let tight =
            FirmwareLimits { max_image: 3 * MIB as u64, quota: 4 * MIB as u64, max_uploads: 1, reserve: 0 };
        let store = FirmwareStore::open(dir.path(), tight).unwrap();
        let e = store.upload("1.0.0", "", Some(3 * MIB as u64 + 1), chunks(0, 0)).await.unwrap_err();
        assert_eq!(e.code, ErrorCode::MessageTooLarge);
        let e = store.upload("1.0.0", "", None, chunks(4, MIB)).await.unwrap_err();
        assert_eq!(e.code, ErrorCode::MessageTooLarge, "enforced while writing too");
        store.upload("1.0.0", "", None, chunks(3, MIB)).await.unwrap();
        let e = store.upload("1.0.1", "", Some(2 * MIB as u64), chunks(0, 0)).await.unwrap_err();
        assert_eq!(e.code, ErrorCode::IotHubQuotaExceeded);
        let e = store.upload("1.0.1", "", None, chunks(2, MIB)).await.unwrap_err();
        assert_eq!(e.code, ErrorCode::IotHubQuotaExceeded);
        let e = store.upload("1.0.1", "", None, chunks(0, 0)).await.unwrap_err();
        assert_eq!(e.code, ErrorCode::ArgumentNull, "an empty image");
        assert_eq!(names(dir.path()).len(), 2, "one image and its record, nothing else");

        // A reserve larger than any disk: refused before and while writing.
        let dir = tempfile::tempdir().unwrap();
        let greedy = FirmwareLimits { reserve: u64::MAX / 2, ..FirmwareLimits::default() };
        let store = FirmwareStore::open(dir.path(), greedy).unwrap();
        let e = store.upload("1.0.0", "", Some(10), chunks(1, 10)).await.unwrap_err();
        assert_eq!((e.code, e.code.http_status()), (ErrorCode::InsufficientStorage, 507));
        let e = store.upload("1.0.0", "", None, chunks(1, 10)).await.unwrap_err();
        assert_eq!(e.code, ErrorCode::InsufficientStorage);
        assert_eq!(names(dir.path()), Vec::<String>::new());
    }

    #[tokio::test]
    async fn the_upload_slots_are_taken_and_given_back() {
        let dir = tempfile::tempdir().unwrap();
        let one = FirmwareLimits { max_uploads: 1, ..limits() };
        let store = FirmwareStore::open(dir.path(), one).unwrap();
        let held = store.uploads.try_acquire().unwrap();
        let e = store.upload("1.0.0", "", None, chunks(1, 10)).await.unwrap_err();
        assert_eq!((e.code, e.code.http_status()), (ErrorCode::ServiceUnavailable, 503));
        drop(held);
        store.upload("1.0.0", "", None, chunks(1, 10)).await.unwrap();
        assert_eq!(store.uploads.available_permits(), 1);
    }
}
