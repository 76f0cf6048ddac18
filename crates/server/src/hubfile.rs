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

/// The line `serve` prints on stdout once every listener is bound:
/// `ready https=<port> mqtt=<port>`. Processes that start a hub (the demo,
/// the benchmarks, tests) wait for it and read the ports from it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReadyLine {
    /// Port of the HTTPS listener.
    pub https_port: u16,
    /// Port of the MQTT listener.
    pub mqtt_port: u16,
}

impl ReadyLine {
    /// The ports of a ready line; `None` for any other line.
    pub fn parse(line: &str) -> Option<Self> {
        let rest = line.trim_end().strip_prefix("ready ")?;
        let port = |key: &str| rest.split_whitespace().find_map(|kv| kv.strip_prefix(key))?.parse().ok();
        Some(Self { https_port: port("https=")?, mqtt_port: port("mqtt=")? })
    }
}

impl std::fmt::Display for ReadyLine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ready https={} mqtt={}", self.https_port, self.mqtt_port)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_ready_line_round_trips_and_nothing_else_parses() {
        let line = ReadyLine { https_port: 8443, mqtt_port: 8883 };
        assert_eq!(line.to_string(), "ready https=8443 mqtt=8883");
        assert_eq!(ReadyLine::parse(&line.to_string()), Some(line));
        for other in ["HostName=x", "ready https=1", "ready https=x mqtt=2", "readyhttps=1 mqtt=2"] {
            assert_eq!(ReadyLine::parse(other), None, "{other}");
        }
    }
}
