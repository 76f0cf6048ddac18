//! The twin's wire forms: the REST document (`GET /twins/{id}`, query rows)
//! and the MQTT `$iothub/twin/GET` body.

use serde_json::{json, Value};

use super::{Props, TwinState};
use crate::identity::{AuthenticationType, ConnectionState, Device, DeviceStatus};

impl TwinState {
    /// The full REST twin. Identity fields are copies from `device`; field
    /// names and order follow Azure's twin (note `statusUpdateTime`, without
    /// the "d" the identity's field has). `statusReason` appears only when
    /// set, `configurations` only when non-empty, `tags` always.
    pub fn to_json(&self, device: &Device) -> Value {
        render(
            device,
            self.etag(),
            self.version,
            self.tags.clone(),
            json!({"desired": self.desired.to_json(true), "reported": self.reported.to_json(true)}),
            self.configurations.clone(),
        )
    }

    /// The same document as [`TwinState::to_json`], built by moving the
    /// twin's trees instead of copying them (for loading many twins).
    pub fn into_json(self, device: &Device) -> Value {
        let etag = self.etag();
        let properties =
            json!({"desired": self.desired.into_json(true), "reported": self.reported.into_json(true)});
        render(device, etag, self.version, self.tags, properties, self.configurations)
    }
}

/// The REST twin from its parts (see [`TwinState::to_json`]).
fn render(
    device: &Device,
    etag: String,
    version: i64,
    tags: Props,
    properties: Value,
    configurations: Props,
) -> Value {
    let thumbs = &device.authentication.x509_thumbprint;
    let mut out = Props::new();
    let mut put = |key: &str, value: Value| {
        out.insert(key.to_owned(), value);
    };
    put("deviceId", json!(device.device_id));
    put("modelId", json!(""));
    put("etag", json!(etag));
    put("deviceEtag", json!(device.etag));
    put("status", json!(status_name(device.status)));
    if let Some(reason) = &device.status_reason {
        put("statusReason", json!(reason));
    }
    put("statusUpdateTime", json!(device.status_updated_time));
    put("connectionState", json!(connection_state_name(device.connection_state)));
    put("lastActivityTime", json!(device.last_activity_time));
    put("cloudToDeviceMessageCount", json!(device.cloud_to_device_message_count));
    put("authenticationType", json!(authentication_type_name(device.authentication.kind)));
    put(
        "x509Thumbprint",
        json!({
            "primaryThumbprint": thumbs.primary_thumbprint,
            "secondaryThumbprint": thumbs.secondary_thumbprint,
        }),
    );
    put("version", json!(version));
    put("tags", Value::Object(tags));
    put("properties", properties);
    put("capabilities", json!({"iotEdge": device.capabilities.iot_edge}));
    if !configurations.is_empty() {
        put("configurations", Value::Object(configurations));
    }
    Value::Object(out)
}

impl TwinState {
    /// The body a device gets for `$iothub/twin/GET`: both sections with their
    /// `$version` and without `$metadata`.
    pub fn to_device_json(&self) -> Value {
        json!({"desired": self.desired.to_json(false), "reported": self.reported.to_json(false)})
    }
}

// The identity enums' serde names, spelled out so rendering cannot fail.
fn status_name(status: DeviceStatus) -> &'static str {
    match status {
        DeviceStatus::Enabled => "enabled",
        DeviceStatus::Disabled => "disabled",
    }
}

fn connection_state_name(state: ConnectionState) -> &'static str {
    match state {
        ConnectionState::Disconnected => "Disconnected",
        ConnectionState::Connected => "Connected",
    }
}

fn authentication_type_name(kind: AuthenticationType) -> &'static str {
    match kind {
        AuthenticationType::Sas => "sas",
        AuthenticationType::SelfSigned => "selfSigned",
        AuthenticationType::CertificateAuthority => "certificateAuthority",
        AuthenticationType::None => "none",
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use crate::identity::{Authentication, Capabilities, SymmetricKey, X509Thumbprint};
    use crate::time::{Timestamp, UNSET_TIME};

    fn t0() -> Timestamp {
        Timestamp::from_unix_nanos(1_545_338_240_327_520_700)
    }

    fn device() -> Device {
        Device {
            device_id: "dev1".into(),
            generation_id: "g".into(),
            etag: "MQ==".into(),
            connection_state: ConnectionState::Disconnected,
            status: DeviceStatus::Enabled,
            status_reason: None,
            connection_state_updated_time: UNSET_TIME.into(),
            status_updated_time: UNSET_TIME.into(),
            last_activity_time: UNSET_TIME.into(),
            cloud_to_device_message_count: 0,
            authentication: Authentication {
                kind: AuthenticationType::Sas,
                symmetric_key: SymmetricKey::default(),
                x509_thumbprint: X509Thumbprint::default(),
            },
            capabilities: Capabilities::default(),
        }
    }

    fn keys(v: &Value) -> Vec<String> {
        v.as_object().unwrap().keys().cloned().collect()
    }

    #[test]
    fn rest_twin_has_azures_fields_in_order() {
        let twin = TwinState::new(t0());
        let j = twin.to_json(&device());
        assert_eq!(
            keys(&j),
            [
                "deviceId",
                "modelId",
                "etag",
                "deviceEtag",
                "status",
                "statusUpdateTime",
                "connectionState",
                "lastActivityTime",
                "cloudToDeviceMessageCount",
                "authenticationType",
                "x509Thumbprint",
                "version",
                "tags",
                "properties",
                "capabilities",
            ]
        );
        let now = t0().to_iso();
        assert_eq!(
            j,
            json!({
                "deviceId": "dev1", "modelId": "", "etag": "AAAAAAAAAAE=", "deviceEtag": "MQ==",
                "status": "enabled", "statusUpdateTime": UNSET_TIME, "connectionState": "Disconnected",
                "lastActivityTime": UNSET_TIME, "cloudToDeviceMessageCount": 0, "authenticationType": "sas",
                "x509Thumbprint": {"primaryThumbprint": null, "secondaryThumbprint": null},
                "version": 1, "tags": {},
                "properties": {
                    "desired": {"$metadata": {"$lastUpdated": now, "$lastUpdatedVersion": 1}, "$version": 1},
                    "reported": {"$metadata": {"$lastUpdated": now}, "$version": 1},
                },
                "capabilities": {"iotEdge": false},
            })
        );
    }

    #[test]
    fn optional_fields_appear_when_set_in_their_place() {
        let mut twin = TwinState::new(t0());
        twin.configurations.insert("cfg1".into(), json!({"status": "Applied"}));
        let mut d = device();
        d.status = DeviceStatus::Disabled;
        d.status_reason = Some("stolen".into());
        d.connection_state = ConnectionState::Connected;
        d.authentication.kind = AuthenticationType::SelfSigned;
        d.authentication.x509_thumbprint.primary_thumbprint = Some("AB".into());
        d.capabilities.iot_edge = true;
        let j = twin.to_json(&d);
        let k = keys(&j);
        assert_eq!(&k[4..7], ["status", "statusReason", "statusUpdateTime"]);
        assert_eq!(k.last().unwrap(), "configurations");
        assert_eq!(j["statusReason"], "stolen");
        assert_eq!(j["status"], "disabled");
        assert_eq!(j["connectionState"], "Connected");
        assert_eq!(j["authenticationType"], "selfSigned");
        assert_eq!(j["x509Thumbprint"]["primaryThumbprint"], "AB");
        assert_eq!(j["capabilities"]["iotEdge"], true);
        assert_eq!(j["configurations"], json!({"cfg1": {"status": "Applied"}}));
    }

    #[test]
    fn identity_enum_names_match_their_serde_names() {
        use AuthenticationType as A;
        for kind in [A::Sas, A::SelfSigned, A::CertificateAuthority, A::None] {
            assert_eq!(json!(authentication_type_name(kind)), serde_json::to_value(kind).unwrap());
        }
        for s in [DeviceStatus::Enabled, DeviceStatus::Disabled] {
            assert_eq!(json!(status_name(s)), serde_json::to_value(s).unwrap());
        }
        for c in [ConnectionState::Connected, ConnectionState::Disconnected] {
            assert_eq!(json!(connection_state_name(c)), serde_json::to_value(c).unwrap());
        }
    }

    #[test]
    fn device_twin_has_versions_and_no_metadata() {
        let mut twin = TwinState::new(t0());
        twin.apply_service_patch(&json!({"properties": {"desired": {"a": {"b": 1}}}}), t0()).unwrap();
        twin.apply_reported_patch(&json!({"r": true}), t0()).unwrap();
        let j = twin.to_device_json();
        assert_eq!(
            j,
            json!({"desired": {"a": {"b": 1}, "$version": 2}, "reported": {"r": true, "$version": 2}})
        );
        assert!(!j.to_string().contains("$metadata"));
    }
}
