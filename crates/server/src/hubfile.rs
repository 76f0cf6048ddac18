//! `DIR/hub.json`: how other processes on this machine find a running hub.
//!
//! Written atomically (temp file + rename) once every listener is bound and
//! removed on a clean exit, so its presence means "a hub was started here".

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// File name inside the data dir.
pub const HUB_FILE: &str = "hub.json";

/// The contents of `hub.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HubInfo {
    /// Process id of the hub.
    pub pid: u32,
    /// Every host name the hub answers to; the first is the one in
    /// connection strings.
    pub host_names: Vec<String>,
    /// Port of the HTTPS service API.
    pub https_port: u16,
    /// Port of the MQTT device endpoint.
    pub mqtt_port: u16,
    /// The CA certificate that signed the hub's server certificate.
    pub ca_file: PathBuf,
}

impl HubInfo {
    /// Reads `DIR/hub.json`, if present and well-formed.
    pub fn read(data_dir: &Path) -> Option<Self> {
        let text = std::fs::read_to_string(data_dir.join(HUB_FILE)).ok()?;
        serde_json::from_str(&text).ok()
    }

    /// Writes `DIR/hub.json` atomically.
    pub fn write(&self, data_dir: &Path) -> std::io::Result<()> {
        let tmp = data_dir.join(format!("{HUB_FILE}.tmp"));
        std::fs::write(&tmp, serde_json::to_vec_pretty(self).map_err(std::io::Error::other)?)?;
        std::fs::rename(tmp, data_dir.join(HUB_FILE))
    }

    /// Removes `DIR/hub.json`.
    pub fn remove(data_dir: &Path) {
        let _ = std::fs::remove_file(data_dir.join(HUB_FILE));
    }
}
