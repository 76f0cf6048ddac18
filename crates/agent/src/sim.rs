//! Many simulated update agents in one process (behind `ferrohub simulate`).
//!
//! A simulated device behaves like the real agent as seen from the hub: it
//! connects over MQTT/TLS with its own key, reports the tutorial's
//! `firmware` properties, and on a new desired `firmware` value downloads
//! the image with its own SAS token, checks the signed manifest and the
//! SHA-256 and "applies" it. It keeps its state in memory (a few strings
//! per device), hashes the download as it streams instead of storing it,
//! and "reboots" by closing its connection and connecting again.
//!
//! Faults are injected per device and update attempt, decided by a hash of
//! the device id, the target version, the fault's name and (from the second
//! attempt on) the attempt number, so a run is reproducible and a retried
//! update can succeed: [`Faults::failure_rate`] (a download failure or a bad
//! checksum → `error`, then `rolledback`), [`Faults::crash_rate`] (the
//! device drops off while applying, comes back and rolls back) and
//! [`Faults::offline_after_update_rate`] (after updating it reports
//! `current`, then disconnects for good).

use std::path::Path;
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::Context as _;
use ed25519_dalek::pkcs8::DecodePublicKey as _;
use ed25519_dalek::VerifyingKey;
use ferrohub_core::connection_string::ConnectionString;
use ferrohub_device_client::{rustls, DeviceClient, DeviceOptions};
use serde_json::{json, Value};
use sha2::{Digest as _, Sha256};
use tokio::sync::Semaphore;

use crate::{now_iso, Target};

/// Fault injection rates, each in `0.0..=1.0`.
#[derive(Debug, Clone, Copy, Default)]
pub struct Faults {
    /// Share of updates that fail to download or download a bad checksum.
    pub failure_rate: f64,
    /// Share of updates during which the device crashes while applying.
    pub crash_rate: f64,
    /// Share of updates after which the device goes offline for good.
    pub offline_after_update_rate: f64,
}

/// Where a simulated device stands (one byte per device in [`Fleet`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum SimStatus {
    /// Not connected yet (or reconnecting).
    Connecting = 0,
    /// `current`.
    Current,
    /// `downloading`.
    Downloading,
    /// `verifying`.
    Verifying,
    /// `applying`.
    Applying,
    /// `rebooting` (disconnected on purpose).
    Rebooting,
    /// `error`.
    Error,
    /// `rolledback`.
    RolledBack,
    /// Offline for good (fault injection).
    Offline,
    /// Stopped by an unrecoverable error (e.g. refused credentials).
    Failed,
}

impl SimStatus {
    /// Every status, in display order.
    pub const ALL: [SimStatus; 10] = [
        SimStatus::Connecting,
        SimStatus::Current,
        SimStatus::Downloading,
        SimStatus::Verifying,
        SimStatus::Applying,
        SimStatus::Rebooting,
        SimStatus::Error,
        SimStatus::RolledBack,
        SimStatus::Offline,
        SimStatus::Failed,
    ];

    /// The name used in status lines.
    pub fn name(self) -> &'static str {
        match self {
            SimStatus::Connecting => "connecting",
            SimStatus::Current => "current",
            SimStatus::Downloading => "downloading",
            SimStatus::Verifying => "verifying",
            SimStatus::Applying => "applying",
            SimStatus::Rebooting => "rebooting",
            SimStatus::Error => "error",
            SimStatus::RolledBack => "rolledback",
            SimStatus::Offline => "offline",
            SimStatus::Failed => "stopped",
        }
    }

    fn from_u8(v: u8) -> Self {
        Self::ALL.get(usize::from(v)).copied().unwrap_or(SimStatus::Failed)
    }
}

/// What every simulated device shares.
#[derive(Debug)]
pub struct Fleet {
    /// The hub's host name (as in connection strings).
    pub host: String,
    /// The hub's MQTT/TLS port.
    pub mqtt_port: Option<u16>,
    /// One TLS configuration for every MQTT connection.
    pub tls: Arc<rustls::ClientConfig>,
    /// One HTTPS client (connection pool) for every download.
    pub http: reqwest::Client,
    /// The hub's manifest-signing key.
    pub key: VerifyingKey,
    /// The version devices report before their first update.
    pub initial_version: String,
    /// Fault injection.
    pub faults: Faults,
    /// Duration of one simulated step (status change); `--speed` divides it.
    pub step: Duration,
    /// Limits concurrent connection attempts (avoids a connect storm).
    pub connect_gate: Semaphore,
    /// Limits concurrent downloads.
    pub download_gate: Semaphore,
    status: Vec<AtomicU8>,
    updated: AtomicU64,
    failed_updates: AtomicU64,
    crashes: AtomicU64,
}

/// Counters for status lines and the summary.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FleetCounts {
    /// Devices per status, in [`SimStatus::ALL`] order.
    pub by_status: Vec<(SimStatus, u64)>,
    /// Updates that ended `current` at a new version.
    pub updated: u64,
    /// Updates that ended `rolledback`.
    pub failed_updates: u64,
    /// Injected crashes.
    pub crashes: u64,
}

impl std::fmt::Display for FleetCounts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let total: u64 = self.by_status.iter().map(|(_, n)| n).sum();
        write!(f, "devices={total}")?;
        for (status, n) in &self.by_status {
            write!(f, " {}={n}", status.name())?;
        }
        write!(f, " updated={} failed-updates={} crashes={}", self.updated, self.failed_updates, self.crashes)
    }
}

impl Fleet {
    /// A fleet of `devices` devices (statuses start at `connecting`),
    /// trusting `ca_file` besides the system roots for MQTT and HTTPS and
    /// verifying manifests with the hub's key (SPKI PEM).
    pub fn new(
        host: String,
        mqtt_port: Option<u16>,
        ca_file: Option<&Path>,
        public_key_pem: &str,
        faults: Faults,
        step: Duration,
        devices: usize,
    ) -> anyhow::Result<Self> {
        let key = VerifyingKey::from_public_key_pem(public_key_pem.trim())
            .context("parsing the hub's firmware key")?;
        let tls = ferrohub_device_client::tls_config(ca_file, None)?;
        let http = crate::http_client(ca_file)?;
        Ok(Self {
            host,
            mqtt_port,
            tls,
            http,
            key,
            initial_version: "1.0.0".into(),
            faults,
            step,
            connect_gate: Semaphore::new(64),
            download_gate: Semaphore::new(64),
            status: (0..devices).map(|_| AtomicU8::new(SimStatus::Connecting as u8)).collect(),
            updated: AtomicU64::new(0),
            failed_updates: AtomicU64::new(0),
            crashes: AtomicU64::new(0),
        })
    }

    /// The current counters.
    pub fn counts(&self) -> FleetCounts {
        let mut by_status: Vec<(SimStatus, u64)> = SimStatus::ALL.iter().map(|s| (*s, 0)).collect();
        for s in &self.status {
            let s = SimStatus::from_u8(s.load(Ordering::Relaxed));
            if let Some(entry) = by_status.iter_mut().find(|(k, _)| *k == s) {
                entry.1 += 1;
            }
        }
        FleetCounts {
            by_status,
            updated: self.updated.load(Ordering::Relaxed),
            failed_updates: self.failed_updates.load(Ordering::Relaxed),
            crashes: self.crashes.load(Ordering::Relaxed),
        }
    }

    fn set(&self, index: usize, status: SimStatus) {
        if let Some(s) = self.status.get(index) {
            s.store(status as u8, Ordering::Relaxed);
        }
    }
}

/// Whether the fault `kind` strikes `device` updating to `version` at `rate`
/// (deterministic: a hash of the three mapped to `[0, 1)`).
pub fn strikes(rate: f64, device: &str, version: &str, kind: &str) -> bool {
    if rate <= 0.0 {
        return false;
    }
    if rate >= 1.0 {
        return true;
    }
    let digest = Sha256::new()
        .chain_update(device.as_bytes())
        .chain_update([0])
        .chain_update(version.as_bytes())
        .chain_update([0])
        .chain_update(kind.as_bytes())
        .finalize();
    let mut first = [0u8; 8];
    first.copy_from_slice(&digest[..8]);
    #[allow(clippy::cast_precision_loss)]
    let unit = (u64::from_be_bytes(first) >> 11) as f64 / (1u64 << 53) as f64;
    unit < rate
}

/// What ends one connection of a simulated device.
enum Next {
    /// Reconnect after a reboot (the update is applied).
    Reboot,
    /// Reconnect after a crash while applying (the update rolls back).
    Crash,
    /// Stay offline.
    Offline,
    /// The connection ended (the hub closed it); reconnect.
    Lost,
}

/// One simulated device's in-memory state.
struct SimDevice {
    index: usize,
    id: String,
    key: String,
    current_version: String,
    status: &'static str,
    substatus: String,
    start_time: String,
    end_time: String,
    /// The update in progress (reported as `pendingFwVersion`).
    target: Option<Target>,
    /// A target that failed; not retried until the desired value changes
    /// or is withdrawn.
    rejected: Option<Target>,
    /// The version last attempted and how many times: faults are drawn per
    /// attempt, so a retry of a failed update may succeed.
    attempts: (String, u32),
}

impl SimDevice {
    fn connection_string(&self, host: &str) -> String {
        format!("HostName={host};DeviceId={};SharedAccessKey={}", self.id, self.key)
    }

    fn reported(&self) -> Value {
        json!({"firmware": {
            "currentFwVersion": self.current_version,
            "pendingFwVersion": self.target.as_ref().map(|t| t.fw_version.as_str()).unwrap_or(""),
            "fwUpdateStatus": self.status,
            "fwUpdateSubstatus": self.substatus,
            "lastFwUpdateStartTime": self.start_time,
            "lastFwUpdateEndTime": self.end_time,
        }})
    }

    async fn set(&mut self, fleet: &Fleet, client: &DeviceClient, status: SimStatus, substatus: &str) {
        self.status = status.name();
        substatus.clone_into(&mut self.substatus);
        fleet.set(self.index, status);
        self.report(client).await;
    }

    async fn report(&self, client: &DeviceClient) {
        if let Err(e) = client.update_reported(&self.reported()).await {
            tracing::debug!(device = %self.id, error = %e, "reporting failed");
        }
    }

    /// Reports `error`, then `rolledback` (the previous image stays active).
    async fn roll_back(&mut self, fleet: &Fleet, client: &DeviceClient, reason: &str) {
        self.end_time = now_iso();
        self.set(fleet, client, SimStatus::Error, reason).await;
        self.set(fleet, client, SimStatus::RolledBack, &format!("rolled back: {reason}")).await;
        self.rejected = self.target.take();
        fleet.failed_updates.fetch_add(1, Ordering::Relaxed);
    }

    /// Handles the desired `firmware` value; `Some` ends the connection.
    async fn on_desired(
        &mut self,
        fleet: &Fleet,
        client: &DeviceClient,
        desired: Option<&Value>,
    ) -> Option<Next> {
        let Some(desired) = desired.filter(|v| v.is_object()) else {
            // Withdrawn: offering the same update again is a retry.
            self.rejected = None;
            return None;
        };
        let target: Target = serde_json::from_value(desired.clone()).unwrap_or_default();
        if target.fw_version.is_empty() || self.rejected.as_ref() == Some(&target) {
            return None;
        }
        if target.fw_version == self.current_version {
            if self.status != "current" || self.substatus != "Firmware already up to date" {
                self.target = None;
                self.set(fleet, client, SimStatus::Current, "Firmware already up to date").await;
            }
            return None;
        }
        self.start_time = now_iso();
        self.end_time = String::new();
        self.target = Some(target.clone());
        if !target.fw_package_uri.starts_with("https://") {
            self.end_time = self.start_time.clone();
            self.set(fleet, client, SimStatus::Error, "URI scheme must be https").await;
            self.rejected = self.target.take();
            return None;
        }
        let faults = fleet.faults;
        if self.attempts.0 == target.fw_version {
            self.attempts.1 += 1;
        } else {
            self.attempts = (target.fw_version.clone(), 1);
        }
        let attempt = self.attempts.1;
        let kind = |fault: &str| match attempt {
            1 => fault.to_owned(),
            n => format!("{fault}-{n}"),
        };
        let fail = strikes(faults.failure_rate, &self.id, &target.fw_version, &kind("failure"));
        self.set(fleet, client, SimStatus::Downloading, "0%").await;
        tokio::time::sleep(fleet.step).await;
        let downloaded = if fail && strikes(0.5, &self.id, &target.fw_version, "failure-kind") {
            Err("download failed: simulated network error".to_owned())
        } else {
            self.download(fleet, &target).await
        };
        let sha = match downloaded {
            Ok(sha) => sha,
            Err(reason) => {
                self.roll_back(fleet, client, &reason).await;
                return None;
            }
        };
        self.set(fleet, client, SimStatus::Verifying, "").await;
        tokio::time::sleep(fleet.step).await;
        let sha = if fail { format!("{sha}0") } else { sha };
        if let Err(reason) = self.verify(fleet, &target, &sha) {
            self.roll_back(fleet, client, &reason).await;
            return None;
        }
        self.set(fleet, client, SimStatus::Applying, "").await;
        tokio::time::sleep(fleet.step).await;
        if strikes(faults.crash_rate, &self.id, &target.fw_version, &kind("crash")) {
            fleet.crashes.fetch_add(1, Ordering::Relaxed);
            return Some(Next::Crash);
        }
        self.set(fleet, client, SimStatus::Rebooting, "").await;
        Some(Next::Reboot)
    }

    /// Streams the image with the device's own SAS token, hashing it.
    async fn download(&mut self, fleet: &Fleet, target: &Target) -> Result<String, String> {
        let _permit = fleet.download_gate.acquire().await.map_err(|e| e.to_string())?;
        let cs: ConnectionString =
            self.connection_string(&fleet.host).parse().map_err(|e| format!("download failed: {e}"))?;
        let expiry = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0) + 3600;
        let token = cs
            .sas_token(i64::try_from(expiry).unwrap_or(i64::MAX))
            .map_err(|e| format!("download failed: {e}"))?;
        let mut response = fleet
            .http
            .get(&target.fw_package_uri)
            .header("authorization", token)
            .send()
            .await
            .map_err(|e| format!("download failed: {e}"))?;
        if response.status().as_u16() != 200 {
            return Err(format!("download failed: HTTP {}", response.status().as_u16()));
        }
        let mut hasher = Sha256::new();
        while let Some(chunk) = response.chunk().await.map_err(|e| format!("download failed: {e}"))? {
            hasher.update(&chunk);
        }
        Ok(hex::encode(hasher.finalize()))
    }

    /// The signed manifest must verify and vouch for the downloaded bytes.
    fn verify(&self, fleet: &Fleet, target: &Target, sha: &str) -> Result<(), String> {
        let manifest = crate::check_manifest(target, &fleet.key)?;
        if !sha.eq_ignore_ascii_case(&manifest.sha256) {
            return Err(format!("checksum mismatch: got {sha}"));
        }
        Ok(())
    }

    /// One connection: report, follow the desired value, until something
    /// ends it.
    async fn session(
        &mut self,
        fleet: &Fleet,
        after: &mut Option<Next>,
    ) -> Result<Next, ferrohub_device_client::Error> {
        let options = DeviceOptions {
            mqtt_port: fleet.mqtt_port,
            tls_config: Some(fleet.tls.clone()),
            receive_methods: false,
            receive_c2d: false,
            ..DeviceOptions::default()
        };
        let client = {
            let _permit = fleet
                .connect_gate
                .acquire()
                .await
                .map_err(|_| ferrohub_device_client::Error::Disconnected)?;
            DeviceClient::connect(&self.connection_string(&fleet.host), options).await?
        };
        let mut updates = client.desired_updates().ok_or(ferrohub_device_client::Error::Disconnected)?;
        // Taken only once connected: a failed connect keeps the outcome
        // of the reboot or crash for the next attempt.
        match after.take() {
            Some(Next::Reboot) => {
                // The default health check: reconnected and reporting.
                if let Some(target) = self.target.take() {
                    self.current_version = target.fw_version;
                    self.end_time = now_iso();
                    self.rejected = None;
                    fleet.updated.fetch_add(1, Ordering::Relaxed);
                }
                self.set(fleet, &client, SimStatus::Current, "").await;
                let version = self.current_version.clone();
                if strikes(fleet.faults.offline_after_update_rate, &self.id, &version, "offline") {
                    client.close().await;
                    return Ok(Next::Offline);
                }
            }
            Some(Next::Crash) => {
                self.roll_back(fleet, &client, "crashed while applying").await;
            }
            _ => {
                fleet.set(self.index, SimStatus::from_name(self.status));
                self.report(&client).await;
            }
        }
        loop {
            let twin = client.get_twin().await?;
            if let Some(next) = self.on_desired(fleet, &client, twin.desired.get("firmware")).await {
                client.close().await;
                return Ok(next);
            }
            if updates.recv().await.is_none() {
                client.close().await;
                return Ok(Next::Lost);
            }
        }
    }
}

impl SimStatus {
    fn from_name(name: &str) -> Self {
        Self::ALL.iter().copied().find(|s| s.name() == name).unwrap_or(SimStatus::Current)
    }
}

/// Runs simulated device number `index` (`id`, primary key `key`) until
/// the task is dropped, or for good offline.
pub async fn run_device(fleet: Arc<Fleet>, index: usize, id: String, key: String) {
    let mut device = SimDevice {
        index,
        id,
        key,
        current_version: fleet.initial_version.clone(),
        status: "current",
        substatus: String::new(),
        start_time: String::new(),
        end_time: String::new(),
        target: None,
        rejected: None,
        attempts: (String::new(), 0),
    };
    let mut after: Option<Next> = None;
    let mut failures = 0u32;
    loop {
        match device.session(&fleet, &mut after).await {
            Ok(Next::Offline) => {
                fleet.set(index, SimStatus::Offline);
                return;
            }
            Ok(Next::Lost) => {
                failures = 0;
                fleet.set(index, SimStatus::Connecting);
                tokio::time::sleep(fleet.step).await;
            }
            Ok(next) => {
                failures = 0;
                if matches!(next, Next::Crash) {
                    fleet.set(index, SimStatus::Connecting);
                }
                // A reboot or crash takes one step before the device is back.
                tokio::time::sleep(fleet.step).await;
                after = Some(next);
            }
            Err(e) if e.is_unauthorized() => {
                tracing::warn!(device = %device.id, error = %e, "the hub refused the device");
                fleet.set(index, SimStatus::Failed);
                return;
            }
            Err(e) => {
                failures += 1;
                tracing::debug!(device = %device.id, error = %e, "connection failed; retrying");
                fleet.set(index, SimStatus::Connecting);
                let backoff = Duration::from_secs(u64::from(failures.min(6)) * 5);
                tokio::time::sleep(backoff).await;
                // A pending reboot/crash outcome is kept for the next session.
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strikes_follows_the_rate() {
        assert!(!strikes(0.0, "d", "1", "x"));
        assert!(strikes(1.0, "d", "1", "x"));
        let hits = (0..10_000).filter(|i| strikes(0.1, &format!("sim-{i}"), "2.0.0", "failure")).count();
        assert!((800..1200).contains(&hits), "{hits}");
        assert_eq!(strikes(0.5, "sim-1", "2", "x"), strikes(0.5, "sim-1", "2", "x"));
    }

    #[test]
    fn status_bytes_round_trip() {
        for s in SimStatus::ALL {
            assert_eq!(SimStatus::from_u8(s as u8), s);
            assert_eq!(SimStatus::from_name(s.name()), s);
        }
    }
}
