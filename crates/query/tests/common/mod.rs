//! Twin documents in the exact shape `TwinState::to_json` renders (field
//! names and order, `$metadata` mirroring every node, `$version`s).

#![allow(dead_code)]

use serde_json::{json, Map, Value};

pub(crate) const T0: &str = "2024-05-01T10:00:00.0000000Z";
pub(crate) const UNSET: &str = "0001-01-01T00:00:00Z";

/// A twin to render; fields not set keep a fresh twin's values.
#[derive(Clone)]
pub(crate) struct Twin {
    pub(crate) id: String,
    pub(crate) status: &'static str,
    pub(crate) connection: &'static str,
    pub(crate) c2d: u64,
    pub(crate) tags: Value,
    pub(crate) desired: Value,
    pub(crate) reported: Value,
    pub(crate) configurations: Value,
}

pub(crate) fn twin(id: &str) -> Twin {
    Twin {
        id: id.into(),
        status: "enabled",
        connection: "Disconnected",
        c2d: 0,
        tags: json!({}),
        desired: json!({}),
        reported: json!({}),
        configurations: json!({}),
    }
}

impl Twin {
    pub(crate) fn tags(mut self, tags: Value) -> Self {
        self.tags = tags;
        self
    }
    pub(crate) fn desired(mut self, desired: Value) -> Self {
        self.desired = desired;
        self
    }
    pub(crate) fn reported(mut self, reported: Value) -> Self {
        self.reported = reported;
        self
    }
    pub(crate) fn config(mut self, id: &str, status: &str) -> Self {
        self.configurations[id] = json!({ "status": status });
        self
    }
    pub(crate) fn status(mut self, status: &'static str) -> Self {
        self.status = status;
        self
    }
    pub(crate) fn connected(mut self) -> Self {
        self.connection = "Connected";
        self
    }
    pub(crate) fn c2d(mut self, n: u64) -> Self {
        self.c2d = n;
        self
    }

    /// The REST twin document.
    pub(crate) fn render(&self) -> Value {
        let mut desired = self.desired.as_object().cloned().unwrap_or_default();
        let mut desired_meta = metadata(&desired);
        desired_meta.insert("$lastUpdatedVersion".into(), json!(2));
        desired.insert("$metadata".into(), Value::Object(desired_meta));
        desired.insert("$version".into(), json!(2));
        let mut reported = self.reported.as_object().cloned().unwrap_or_default();
        reported.insert(
            "$metadata".into(),
            Value::Object(metadata(&self.reported.as_object().cloned().unwrap_or_default())),
        );
        reported.insert("$version".into(), json!(3));
        let mut out = json!({
            "deviceId": self.id,
            "modelId": "",
            "etag": "AAAAAAAAAAM=",
            "deviceEtag": "MQ==",
            "status": self.status,
            "statusUpdateTime": UNSET,
            "connectionState": self.connection,
            "lastActivityTime": UNSET,
            "cloudToDeviceMessageCount": self.c2d,
            "authenticationType": "sas",
            "x509Thumbprint": {"primaryThumbprint": null, "secondaryThumbprint": null},
            "version": 4,
            "tags": self.tags,
            "properties": {"desired": desired, "reported": reported},
            "capabilities": {"iotEdge": false},
        });
        if self.configurations.as_object().is_some_and(|c| !c.is_empty()) {
            out["configurations"] = self.configurations.clone();
        }
        out
    }
}

/// `$metadata` for a section: `$lastUpdated` on the section and every node.
fn metadata(props: &Map<String, Value>) -> Map<String, Value> {
    let mut out = Map::new();
    out.insert("$lastUpdated".into(), json!(T0));
    for (key, value) in props {
        let node = match value {
            Value::Object(inner) => Value::Object(metadata(inner)),
            _ => json!({ "$lastUpdated": T0 }),
        };
        out.insert(key.clone(), node);
    }
    out
}

/// The tutorial's reported `firmware` object in a given state.
pub(crate) fn firmware(status: &str, current: &str) -> Value {
    json!({"firmware": {
        "currentFwVersion": current, "pendingFwVersion": "", "fwUpdateStatus": status,
        "fwUpdateSubstatus": "", "lastFwUpdateStartTime": "", "lastFwUpdateEndTime": ""
    }})
}

pub(crate) fn desired_firmware() -> Value {
    json!({"firmware": {
        "fwVersion": "2.8.5", "fwPackageURI": "https://secureuri/package.bin", "fwPackageCheckValue": "123456abcde"
    }})
}
