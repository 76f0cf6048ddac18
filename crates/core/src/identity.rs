//! Device identities: the registry's records, their validation and the rules
//! for creating and updating them.

use base64::Engine as _;
use serde::{Deserialize, Serialize};

use crate::error::{HubError, HubResult};
use crate::time::{Timestamp, UNSET_TIME};

/// Longest device id IoT Hub accepts.
pub const MAX_DEVICE_ID_LEN: usize = 128;
/// Longest `statusReason`.
pub const MAX_STATUS_REASON_LEN: usize = 128;

/// Whether a device may connect.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum DeviceStatus {
    /// The device may connect.
    #[default]
    Enabled,
    /// The device is refused.
    Disabled,
}

/// Whether the device holds a live connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
pub enum ConnectionState {
    /// No live connection.
    #[default]
    Disconnected,
    /// A live connection.
    Connected,
}

/// How a device proves who it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "camelCase")]
pub enum AuthenticationType {
    /// Symmetric keys (SAS tokens).
    #[default]
    Sas,
    /// A self-signed client certificate identified by its thumbprint.
    SelfSigned,
    /// A client certificate chained to a registered CA.
    CertificateAuthority,
    /// Authenticated by someone else (modules managed by IoT Edge).
    None,
}

/// A device's two symmetric keys.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "camelCase")]
pub struct SymmetricKey {
    /// Base64 primary key.
    #[serde(default, deserialize_with = "null_as_empty")]
    pub primary_key: String,
    /// Base64 secondary key.
    #[serde(default, deserialize_with = "null_as_empty")]
    pub secondary_key: String,
}

/// A device's two certificate thumbprints (hex).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "camelCase")]
pub struct X509Thumbprint {
    /// Hex SHA-1 or SHA-256 thumbprint, or null.
    #[serde(default)]
    pub primary_thumbprint: Option<String>,
    /// Hex SHA-1 or SHA-256 thumbprint, or null.
    #[serde(default)]
    pub secondary_thumbprint: Option<String>,
}

/// The `authentication` block of a device.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "camelCase")]
pub struct Authentication {
    /// Which mechanism applies.
    #[serde(rename = "type")]
    pub kind: AuthenticationType,
    /// Keys (for `sas`); empty strings otherwise.
    pub symmetric_key: SymmetricKey,
    /// Thumbprints (for `selfSigned`).
    pub x509_thumbprint: X509Thumbprint,
}

/// The `capabilities` block of a device.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "camelCase")]
pub struct Capabilities {
    /// Whether the device is an IoT Edge device.
    #[serde(default)]
    pub iot_edge: bool,
}

/// A device identity as the registry stores and returns it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Device {
    /// The case-sensitive id.
    pub device_id: String,
    /// Distinguishes a re-created device from an earlier one of the same id.
    pub generation_id: String,
    /// Changes on every update of the identity.
    pub etag: String,
    /// Live connection or not.
    pub connection_state: ConnectionState,
    /// Enabled or disabled.
    pub status: DeviceStatus,
    /// Why the status was set.
    pub status_reason: Option<String>,
    /// When `connectionState` last changed.
    pub connection_state_updated_time: String,
    /// When `status` last changed.
    pub status_updated_time: String,
    /// Last time the device was seen.
    pub last_activity_time: String,
    /// Cloud-to-device messages queued for the device.
    pub cloud_to_device_message_count: i64,
    /// How the device authenticates.
    pub authentication: Authentication,
    /// What the device is.
    pub capabilities: Capabilities,
}

/// The body of `PUT /devices/{id}` as clients send it: every field optional,
/// read-only fields ignored.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DeviceRequest {
    /// Must equal the id in the path when present.
    #[serde(default)]
    pub device_id: Option<String>,
    /// Desired status.
    #[serde(default)]
    pub status: Option<DeviceStatus>,
    /// Why.
    #[serde(default)]
    pub status_reason: Option<String>,
    /// Credentials; keys generated where empty.
    #[serde(default)]
    pub authentication: Option<AuthenticationRequest>,
    /// Capabilities.
    #[serde(default)]
    pub capabilities: Option<Capabilities>,
}

/// The `authentication` block as clients send it.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AuthenticationRequest {
    /// Mechanism; inferred from the thumbprints when absent (as the Node SDK does).
    #[serde(default, rename = "type")]
    pub kind: Option<AuthenticationType>,
    /// Keys, possibly empty.
    #[serde(default)]
    pub symmetric_key: Option<SymmetricKey>,
    /// Thumbprints.
    #[serde(default)]
    pub x509_thumbprint: Option<X509Thumbprint>,
}

fn null_as_empty<'de, D: serde::Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    Ok(Option::<String>::deserialize(d)?.unwrap_or_default())
}

/// Checks a device id against IoT Hub's rules: 1–128 ASCII letters, digits
/// and `- . % _ * ? ! ( ) , : = @ $ '`.
pub fn validate_device_id(id: &str) -> HubResult<()> {
    const EXTRA: &str = "-.%_*?!(),:=@$'";
    if id.is_empty() || id.len() > MAX_DEVICE_ID_LEN {
        return Err(HubError::invalid(format!("DeviceId must be 1 to {MAX_DEVICE_ID_LEN} characters long")));
    }
    if let Some(bad) = id.chars().find(|c| !(c.is_ascii_alphanumeric() || EXTRA.contains(*c))) {
        return Err(HubError::invalid(format!(
            "DeviceId '{}' contains the character '{}', which is not allowed",
            id.escape_default(),
            bad.escape_default()
        )));
    }
    Ok(())
}

/// Checks a symmetric key: base64 of 16 to 64 bytes.
pub fn validate_key(name: &str, key: &str) -> HubResult<()> {
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(key)
        .map_err(|_| HubError::invalid(format!("The {name} is not valid base64")))?;
    if !(16..=64).contains(&bytes.len()) {
        return Err(HubError::invalid(format!("The {name} must be between 16 and 64 bytes long")));
    }
    Ok(())
}

fn validate_thumbprint(name: &str, t: &str) -> HubResult<()> {
    let ok = (t.len() == 40 || t.len() == 64) && t.chars().all(|c| c.is_ascii_hexdigit());
    if ok {
        Ok(())
    } else {
        Err(HubError::invalid(format!(
            "The {name} must be a 40- or 64-digit hex SHA-1 or SHA-256 thumbprint"
        )))
    }
}

/// What the hub supplies when it creates or updates an identity; kept out of
/// the core so the core needs neither a clock nor a random source.
pub struct Minted<'a> {
    /// The current time.
    pub now: Timestamp,
    /// A fresh etag for the identity.
    pub etag: String,
    /// A fresh generation id (used on create only).
    pub generation_id: String,
    /// Makes a new random base64 key.
    pub new_key: &'a mut dyn FnMut() -> String,
}

fn resolve_authentication(
    req: Option<AuthenticationRequest>,
    current: Option<&Authentication>,
    new_key: &mut dyn FnMut() -> String,
) -> HubResult<Authentication> {
    let req = req.unwrap_or_default();
    let thumbs = req.x509_thumbprint.unwrap_or_default();
    let has_thumb = thumbs.primary_thumbprint.as_deref().is_some_and(|t| !t.is_empty());
    let kind =
        req.kind.unwrap_or(if has_thumb { AuthenticationType::SelfSigned } else { AuthenticationType::Sas });
    match kind {
        AuthenticationType::Sas => {
            let given = req.symmetric_key.unwrap_or_default();
            let keep = current.filter(|c| c.kind == AuthenticationType::Sas).map(|c| &c.symmetric_key);
            let pick = |given: String, kept: Option<&String>, new_key: &mut dyn FnMut() -> String| {
                if !given.is_empty() {
                    given
                } else {
                    kept.cloned().unwrap_or_else(new_key)
                }
            };
            let primary = pick(given.primary_key, keep.map(|k| &k.primary_key), new_key);
            let secondary = pick(given.secondary_key, keep.map(|k| &k.secondary_key), new_key);
            validate_key("primary key", &primary)?;
            validate_key("secondary key", &secondary)?;
            Ok(Authentication {
                kind,
                symmetric_key: SymmetricKey { primary_key: primary, secondary_key: secondary },
                x509_thumbprint: X509Thumbprint::default(),
            })
        }
        AuthenticationType::SelfSigned => {
            let primary = thumbs
                .primary_thumbprint
                .filter(|t| !t.is_empty())
                .ok_or_else(|| HubError::invalid("A selfSigned device needs a primary thumbprint"))?;
            validate_thumbprint("primary thumbprint", &primary)?;
            let secondary = thumbs.secondary_thumbprint.filter(|t| !t.is_empty());
            if let Some(s) = &secondary {
                validate_thumbprint("secondary thumbprint", s)?;
            }
            Ok(Authentication {
                kind,
                symmetric_key: SymmetricKey::default(),
                x509_thumbprint: X509Thumbprint {
                    primary_thumbprint: Some(primary.to_ascii_uppercase()),
                    secondary_thumbprint: secondary.map(|s| s.to_ascii_uppercase()),
                },
            })
        }
        // Decision: CA-chained device authentication needs hub-level CA
        // registration and proof of possession, which ferrohub does not have
        // yet; refusing the identity is better than accepting one that can
        // never connect.
        AuthenticationType::CertificateAuthority => Err(HubError::invalid(
            "certificateAuthority authentication is not supported by this hub yet; use sas or selfSigned",
        )),
        AuthenticationType::None => {
            Err(HubError::invalid("authentication type 'none' is only valid for modules"))
        }
    }
}

fn validate_status_reason(reason: &Option<String>) -> HubResult<()> {
    match reason {
        Some(r) if r.len() > MAX_STATUS_REASON_LEN => {
            Err(HubError::invalid(format!("statusReason is longer than {MAX_STATUS_REASON_LEN} characters")))
        }
        _ => Ok(()),
    }
}

fn check_body_id(path_id: &str, req: &DeviceRequest) -> HubResult<()> {
    match req.device_id.as_deref() {
        Some(body_id) if !body_id.is_empty() && body_id != path_id => Err(HubError::invalid(format!(
            "The deviceId in the body ({body_id}) does not match the one in the path ({path_id})"
        ))),
        _ => Ok(()),
    }
}

impl Device {
    /// A new identity from a create request; keys are generated where absent
    /// or empty.
    pub fn create(path_id: &str, req: DeviceRequest, minted: Minted<'_>) -> HubResult<Self> {
        validate_device_id(path_id)?;
        check_body_id(path_id, &req)?;
        validate_status_reason(&req.status_reason)?;
        let authentication = resolve_authentication(req.authentication, None, minted.new_key)?;
        let status = req.status.unwrap_or_default();
        Ok(Self {
            device_id: path_id.to_owned(),
            generation_id: minted.generation_id,
            etag: minted.etag,
            connection_state: ConnectionState::Disconnected,
            status,
            status_reason: req.status_reason,
            connection_state_updated_time: UNSET_TIME.to_owned(),
            status_updated_time: UNSET_TIME.to_owned(),
            last_activity_time: UNSET_TIME.to_owned(),
            cloud_to_device_message_count: 0,
            authentication,
            capabilities: req.capabilities.unwrap_or_default(),
        })
    }

    /// This identity updated by a request. Read-only fields are kept; keys
    /// sent empty are kept (the Node SDK sends the device it read back).
    pub fn updated(&self, req: DeviceRequest, minted: Minted<'_>) -> HubResult<Self> {
        check_body_id(&self.device_id, &req)?;
        validate_status_reason(&req.status_reason)?;
        let authentication = match req.authentication {
            Some(a) => resolve_authentication(Some(a), Some(&self.authentication), minted.new_key)?,
            None => self.authentication.clone(),
        };
        let mut next = self.clone();
        let status = req.status.unwrap_or(self.status);
        if status != self.status {
            next.status_updated_time = minted.now.to_iso();
        }
        next.status = status;
        next.status_reason = req.status_reason;
        next.authentication = authentication;
        if let Some(c) = req.capabilities {
            next.capabilities = c;
        }
        if next != *self {
            next.etag = minted.etag;
        }
        Ok(next)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn minted(keys: &mut dyn FnMut() -> String) -> Minted<'_> {
        Minted {
            now: Timestamp::from_unix_nanos(1_700_000_000_000_000_000),
            etag: "MQ==".into(),
            generation_id: "638000000000000000".into(),
            new_key: keys,
        }
    }

    fn key(n: u8) -> String {
        base64::engine::general_purpose::STANDARD.encode([n; 32])
    }

    #[test]
    fn device_ids_follow_azure_rules() {
        for ok in ["a", "MyFirmwareUpdateDevice", "dev-1.2%_*?!(),:=@$'", &"x".repeat(128)] {
            assert!(validate_device_id(ok).is_ok(), "{ok}");
        }
        for bad in ["", "has space", "slash/", "hash#", "ü", &"x".repeat(129)] {
            assert!(validate_device_id(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn create_generates_missing_and_empty_keys() {
        let mut n = 0;
        let mut gen = || {
            n += 1;
            key(n)
        };
        let req: DeviceRequest = serde_json::from_str(
            r#"{"deviceId":"d1","authentication":{"symmetricKey":{"primaryKey":"","secondaryKey":null}}}"#,
        )
        .unwrap();
        let d = Device::create("d1", req, minted(&mut gen)).unwrap();
        assert_eq!(d.authentication.kind, AuthenticationType::Sas);
        assert_eq!(d.authentication.symmetric_key.primary_key, key(1));
        assert_eq!(d.authentication.symmetric_key.secondary_key, key(2));
        assert_eq!(d.status, DeviceStatus::Enabled);
        assert_eq!(d.last_activity_time, UNSET_TIME);
    }

    #[test]
    fn create_rejects_mismatched_body_id_and_bad_keys() {
        let mut gen = || key(1);
        let req = DeviceRequest { device_id: Some("other".into()), ..Default::default() };
        assert!(Device::create("d1", req, minted(&mut gen)).is_err());
        let req: DeviceRequest =
            serde_json::from_str(r#"{"authentication":{"symmetricKey":{"primaryKey":"short"}}}"#).unwrap();
        assert!(Device::create("d1", req, minted(&mut gen)).is_err());
    }

    #[test]
    fn thumbprint_implies_self_signed_and_ca_is_refused() {
        let mut gen = || key(1);
        let req: DeviceRequest = serde_json::from_str(
            r#"{"authentication":{"x509Thumbprint":{"primaryThumbprint":"aabbccddeeff00112233445566778899aabbccdd"}}}"#,
        )
        .unwrap();
        let d = Device::create("d1", req, minted(&mut gen)).unwrap();
        assert_eq!(d.authentication.kind, AuthenticationType::SelfSigned);
        let req: DeviceRequest =
            serde_json::from_str(r#"{"authentication":{"type":"certificateAuthority"}}"#).unwrap();
        assert_eq!(Device::create("d1", req, minted(&mut gen)).unwrap_err().code.http_status(), 400);
    }

    #[test]
    fn update_keeps_keys_sent_empty_and_changes_etag_only_on_change() {
        let mut gen = || key(7);
        let d = Device::create("d1", DeviceRequest::default(), minted(&mut gen)).unwrap();
        let mut gen2 = || key(9);
        let same = d
            .updated(
                serde_json::from_str(
                    r#"{"deviceId":"d1","authentication":{"symmetricKey":{"primaryKey":""}}}"#,
                )
                .unwrap(),
                Minted { etag: "Mg==".into(), ..minted(&mut gen2) },
            )
            .unwrap();
        assert_eq!(same, d, "nothing changed, so not even the etag");
        let mut gen3 = || key(9);
        let disabled = d
            .updated(
                serde_json::from_str(r#"{"status":"disabled","statusReason":"stolen"}"#).unwrap(),
                Minted { etag: "Mg==".into(), ..minted(&mut gen3) },
            )
            .unwrap();
        assert_eq!(disabled.status, DeviceStatus::Disabled);
        assert_eq!(disabled.etag, "Mg==");
        assert_eq!(disabled.authentication, d.authentication);
        assert_ne!(disabled.status_updated_time, UNSET_TIME);
    }
}
