//! Firmware images as the hub hosts and signs them, and the desired
//! `firmware` property that points devices at one.
//!
//! The signature covers the *exact bytes* of a small JSON manifest
//! (`{version, size, sha256, deviceType, created}`); the twin carries those
//! bytes base64-encoded (`fwManifest`) next to the signature
//! (`fwSignature`), so re-serialisation by the twin store cannot break it.

use base64::Engine as _;
use ed25519_dalek::{Signature, Signer, SigningKey, Verifier, VerifyingKey};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::error::{HubError, HubResult};
use crate::time::Timestamp;

/// What is signed, in this field order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct FirmwareManifest {
    /// The firmware version (e.g. `2.8.5`).
    pub version: String,
    /// Image size in bytes.
    pub size: u64,
    /// Lower-case hex SHA-256 of the image.
    pub sha256: String,
    /// The device type it is for (may be empty).
    pub device_type: String,
    /// When it was uploaded.
    pub created: Timestamp,
}

/// A hosted image: its manifest, the signed bytes and the signature.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct FirmwareImage {
    /// The manifest.
    #[serde(flatten)]
    pub manifest: FirmwareManifest,
    /// Base64 of the exact signed bytes.
    pub fw_manifest: String,
    /// Base64 Ed25519 signature over those bytes.
    pub fw_signature: String,
}

/// Checks a version string: 1–64 characters of letters, digits, `. - + _`.
pub fn validate_version(version: &str) -> HubResult<()> {
    let ok = !version.is_empty()
        && version.len() <= 64
        && version.chars().all(|c| c.is_ascii_alphanumeric() || ".-+_".contains(c));
    if ok {
        Ok(())
    } else {
        Err(HubError::invalid("A firmware version is 1 to 64 letters, digits, '.', '-', '+' or '_'"))
    }
}

impl FirmwareImage {
    /// Signs a manifest.
    pub fn sign(manifest: FirmwareManifest, key: &SigningKey) -> HubResult<Self> {
        let bytes = serde_json::to_vec(&manifest).map_err(|e| HubError::internal(e.to_string()))?;
        let signature = key.sign(&bytes);
        let b64 = base64::engine::general_purpose::STANDARD;
        Ok(Self { manifest, fw_manifest: b64.encode(&bytes), fw_signature: b64.encode(signature.to_bytes()) })
    }

    /// The desired `firmware` property for this image: the tutorial's three
    /// fields plus the signed manifest.
    pub fn desired_property(&self, package_uri: &str) -> Value {
        json!({
            "fwVersion": self.manifest.version,
            "fwPackageURI": package_uri,
            "fwPackageCheckValue": self.manifest.sha256,
            "fwManifest": self.fw_manifest,
            "fwSignature": self.fw_signature,
        })
    }
}

/// The five metric queries of Azure's firmware-update tutorial for
/// configuration `config_id`, `current` counting only devices at `version`
/// (staged rollouts and the benchmarks use these).
pub fn tutorial_metric_queries(config_id: &str, version: &str) -> Value {
    let base = format!("SELECT deviceId FROM devices WHERE configurations.[[{config_id}]].status='Applied'");
    let status = |s: &str| format!("{base} AND properties.reported.firmware.fwUpdateStatus='{s}'");
    json!({
        "current": format!("{} AND properties.reported.firmware.currentFwVersion='{version}'", status("current")),
        "applying": format!("{base} AND (properties.reported.firmware.fwUpdateStatus='downloading' \
            OR properties.reported.firmware.fwUpdateStatus='verifying' \
            OR properties.reported.firmware.fwUpdateStatus='applying')"),
        "rebooting": status("rebooting"),
        "error": status("error"),
        "rolledback": status("rolledback"),
    })
}

/// Verifies a desired `firmware` property's manifest and signature with the
/// hub's public key, returning the manifest it vouches for.
pub fn verify_manifest(
    fw_manifest: &str,
    fw_signature: &str,
    key: &VerifyingKey,
) -> HubResult<FirmwareManifest> {
    let b64 = base64::engine::general_purpose::STANDARD;
    let bad = |what: &str| HubError::invalid(format!("firmware manifest: {what}"));
    let bytes = b64.decode(fw_manifest).map_err(|_| bad("not base64"))?;
    let sig = b64.decode(fw_signature).map_err(|_| bad("signature not base64"))?;
    let sig = Signature::from_slice(&sig).map_err(|_| bad("signature has the wrong length"))?;
    key.verify(&bytes, &sig).map_err(|_| bad("signature does not verify"))?;
    serde_json::from_slice(&bytes).map_err(|_| bad("not a manifest"))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn manifest() -> FirmwareManifest {
        FirmwareManifest {
            version: "2.8.5".into(),
            size: 3,
            sha256: "ab".repeat(32),
            device_type: "chiller".into(),
            created: Timestamp::from_unix_nanos(1_700_000_000_000_000_000),
        }
    }

    #[test]
    fn signatures_verify_and_tampering_is_caught() {
        let key = SigningKey::from_bytes(&[7; 32]);
        let image = FirmwareImage::sign(manifest(), &key).unwrap();
        let verified =
            verify_manifest(&image.fw_manifest, &image.fw_signature, &key.verifying_key()).unwrap();
        assert_eq!(verified, manifest());
        let desired = image.desired_property("https://hub/firmware/x");
        assert_eq!(desired["fwPackageCheckValue"], "ab".repeat(32));
        // A manifest changed after signing, or another key, fails.
        let mut other = manifest();
        other.size = 4;
        let forged = base64::engine::general_purpose::STANDARD.encode(serde_json::to_vec(&other).unwrap());
        assert!(verify_manifest(&forged, &image.fw_signature, &key.verifying_key()).is_err());
        let stranger = SigningKey::from_bytes(&[9; 32]).verifying_key();
        assert!(verify_manifest(&image.fw_manifest, &image.fw_signature, &stranger).is_err());
        assert!(verify_manifest("%%%", &image.fw_signature, &key.verifying_key()).is_err());
    }

    #[test]
    fn versions_are_checked() {
        assert!(validate_version("2.8.5-rc1+build_7").is_ok());
        for bad in ["", "a b", "1/2", &"9".repeat(65)] {
            assert!(validate_version(bad).is_err(), "{bad}");
        }
    }
}
