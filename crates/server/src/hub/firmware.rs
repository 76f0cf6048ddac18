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

use anyhow::Context;
use bytes::Bytes;
use ed25519_dalek::pkcs8::{DecodePrivateKey, EncodePrivateKey, EncodePublicKey};
use ed25519_dalek::SigningKey;
use ferrohub_core::firmware::{validate_version, FirmwareImage, FirmwareManifest};
use ferrohub_core::{ErrorCode, HubError, HubResult};
use futures_util::{Stream, StreamExt as _};
use sha2::Digest as _;
use tokio::io::AsyncWriteExt as _;

use crate::fsutil::write_private;

/// File name of the signing key inside the data dir.
pub const SIGNING_KEY_FILE: &str = "signing-key.pem";
/// Largest image accepted.
pub const MAX_IMAGE: u64 = 4 * 1024 * 1024 * 1024;

/// The hub's images and signing key.
pub struct FirmwareStore {
    dir: PathBuf,
    key: SigningKey,
}

fn internal(e: impl std::fmt::Display) -> HubError {
    HubError::internal(e.to_string())
}

/// A SHA-256 in the form images are addressed by: 64 lower-case hex digits.
pub fn check_sha256(sha: &str) -> HubResult<()> {
    if sha.len() == 64 && sha.chars().all(|c| c.is_ascii_digit() || ('a'..='f').contains(&c)) {
        Ok(())
    } else {
        Err(HubError::invalid("A firmware image is named by its SHA-256: 64 lower-case hex digits"))
    }
}

impl FirmwareStore {
    /// Opens the store, creating the signing key on a start where it is
    /// absent.
    pub fn open(data_dir: &Path) -> anyhow::Result<Self> {
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
        Ok(Self { dir, key })
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

    /// Stores an image streamed from `body` (any transport's byte stream),
    /// returning its signed record.
    /// The same bytes uploaded again under the same version return the
    /// existing record; under another version they are refused.
    pub async fn upload<E: std::fmt::Display>(
        &self,
        version: &str,
        device_type: &str,
        body: impl Stream<Item = Result<Bytes, E>> + Unpin,
    ) -> HubResult<FirmwareImage> {
        validate_version(version)?;
        let tmp = self.dir.join(format!(".upload-{}", uuid::Uuid::new_v4().simple()));
        let result = self.receive(&tmp, body).await;
        let (sha, size) = match result {
            Ok(r) => r,
            Err(e) => {
                let _ = tokio::fs::remove_file(&tmp).await;
                return Err(e);
            }
        };
        if let Some(existing) = self.get(&sha)? {
            let _ = tokio::fs::remove_file(&tmp).await;
            if existing.manifest.version == version && existing.manifest.device_type == device_type {
                return Ok(existing);
            }
            return Err(HubError::new(
                ErrorCode::InvalidOperation,
                format!("This image is already stored as version {}", existing.manifest.version),
            ));
        }
        let manifest = FirmwareManifest {
            version: version.to_owned(),
            size,
            sha256: sha.clone(),
            device_type: device_type.to_owned(),
            created: crate::clock::now(),
        };
        let image = FirmwareImage::sign(manifest, &self.key)?;
        tokio::fs::rename(&tmp, self.blob(&sha)).await.map_err(internal)?;
        let json = serde_json::to_vec_pretty(&image).map_err(internal)?;
        crate::fsutil::write_public(&self.meta(&sha), &json).map_err(internal)?;
        tracing::info!(version, sha, size, "firmware image stored");
        Ok(image)
    }

    async fn receive<E: std::fmt::Display>(
        &self,
        tmp: &Path,
        mut body: impl Stream<Item = Result<Bytes, E>> + Unpin,
    ) -> HubResult<(String, u64)> {
        let mut file = tokio::fs::File::create(tmp).await.map_err(internal)?;
        let mut hasher = sha2::Sha256::new();
        let mut size = 0u64;
        while let Some(data) = body.next().await {
            let data = data.map_err(|e| HubError::format(format!("The upload was cut off: {e}")))?;
            size += data.len() as u64;
            if size > MAX_IMAGE {
                return Err(HubError::new(ErrorCode::MessageTooLarge, "A firmware image is at most 4 GiB"));
            }
            hasher.update(&data);
            file.write_all(&data).await.map_err(internal)?;
        }
        if size == 0 {
            return Err(HubError::new(ErrorCode::ArgumentNull, "The firmware image is empty"));
        }
        file.sync_all().await.map_err(internal)?;
        Ok((hex::encode(hasher.finalize()), size))
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
        if self.get(sha)?.is_none() {
            return Err(not_found(sha));
        }
        std::fs::remove_file(self.meta(sha)).map_err(internal)?;
        let _ = std::fs::remove_file(self.blob(sha));
        Ok(())
    }
}

/// 404 for an unknown image.
pub fn not_found(sha: &str) -> HubError {
    HubError::new(ErrorCode::IotHubNotFound, format!("Firmware image {sha} not found"))
}
