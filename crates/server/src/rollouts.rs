//! Staged firmware rollouts (a ferrohub addition): one image handed to a
//! fleet in cumulative waves, advancing when enough devices of the waves
//! started so far report `current` at the image's version, halting itself
//! when too many report `error` or `rolledback`.
//!
//! Mechanism (scales to large fleets, unlike a target condition listing
//! device ids): the devices matching the target condition at creation are
//! fixed, sorted by id, and cut into waves. A rollout owns ONE configuration,
//! `rollout-<id>`, whose target condition is
//! `tags.ferrohubRollouts.[[<id>]] >= 1` and whose content is the image's
//! desired `firmware`; starting wave `n` sets that tag to `n` on the wave's
//! devices, so the configuration engine hands them the update. Progress is
//! counted from the in-memory twin index once a second.
//!
//! Each rollout is a JSON file `DIR/rollouts/<id>.json`, replaced atomically
//! before the devices of a new wave are tagged; at start every rollout's
//! configuration and tags are re-established, so a crash between the two
//! steps is completed on the next start.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use ferrohub_core::firmware::FirmwareImage;
use ferrohub_core::{ErrorCode, HubError, HubResult};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use tokio::sync::Mutex;

use crate::configurations::Engine;
use crate::firmware::{check_sha256, FirmwareStore};
use crate::registry::{IfMatch, Registry};

/// Where a rollout stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum RolloutState {
    /// Waves advance.
    Running,
    /// Held by an operator; no new wave starts.
    Paused,
    /// The failure threshold was reached; no new wave starts.
    Halted,
    /// Every wave reached the success threshold.
    Succeeded,
    /// Stopped by an operator.
    Cancelled,
}

impl RolloutState {
    fn is_final(self) -> bool {
        matches!(self, Self::Succeeded | Self::Cancelled)
    }
}

/// Progress of one wave (computed, not stored).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct WaveProgress {
    /// Devices in this wave.
    pub devices: u64,
    /// Whether the wave was started.
    pub started: bool,
    /// Devices at `current` on the target version.
    pub succeeded: u64,
    /// Devices at `error` or `rolledback`.
    pub failed: u64,
}

/// A stored rollout.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Rollout {
    /// The rollout id.
    pub id: String,
    /// The image.
    pub sha256: String,
    /// The image's version.
    pub version: String,
    /// Which devices it was created for.
    pub target_condition: String,
    /// Priority of its configuration.
    pub priority: i64,
    /// Cumulative shares of the devices, in percent, ascending, the last 100.
    pub waves: Vec<u32>,
    /// Percent of the started devices that must succeed before the next wave.
    pub success_threshold: u32,
    /// Percent of the started devices whose failure halts the rollout.
    pub failure_threshold: u32,
    /// Where devices fetch the image.
    pub package_uri: String,
    /// The devices, sorted by id, fixed at creation.
    pub devices: Vec<String>,
    /// The last wave started (1-based).
    pub current_wave: usize,
    /// Where it stands.
    pub state: RolloutState,
    /// Why it halted, when it did.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub reason: String,
    /// Its configuration's id.
    pub configuration_id: String,
    /// Progress per wave (filled in when shown).
    #[serde(default)]
    pub progress: Vec<WaveProgress>,
}

impl Rollout {
    /// Cumulative device counts per wave, each wave at least one device
    /// more than the last while devices remain.
    pub fn wave_ends(&self) -> Vec<usize> {
        let n = self.devices.len();
        let mut ends = Vec::with_capacity(self.waves.len());
        let mut last = 0;
        for pct in &self.waves {
            let mut end = (n * *pct as usize).div_ceil(100).min(n);
            if end <= last && last < n {
                end = last + 1;
            }
            ends.push(end);
            last = end;
        }
        ends
    }

    /// The wave (1-based) a device index belongs to.
    fn wave_of(ends: &[usize], index: usize) -> usize {
        ends.iter().position(|end| index < *end).map_or(ends.len(), |p| p + 1)
    }
}

/// What `POST /firmware-rollouts` takes.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RolloutRequest {
    /// The rollout id.
    pub id: String,
    /// The image's SHA-256.
    pub sha256: String,
    /// Which devices.
    pub target_condition: String,
    /// Where devices fetch the image (the client knows the hub's address).
    pub package_uri: String,
    /// Cumulative percentages [default 10,50,100].
    #[serde(default)]
    pub waves: Option<Vec<u32>>,
    /// [default 90].
    #[serde(default)]
    pub success_threshold: Option<u32>,
    /// [default 10].
    #[serde(default)]
    pub failure_threshold: Option<u32>,
    /// [default 20].
    #[serde(default)]
    pub priority: Option<i64>,
}

/// Checks a rollout id: 1–64 of `a-z 0-9 - _`.
pub fn check_id(id: &str) -> HubResult<()> {
    let ok = !id.is_empty()
        && id.len() <= 64
        && id.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_');
    if ok {
        Ok(())
    } else {
        Err(HubError::invalid("A rollout id is 1 to 64 lower-case letters, digits, '-' or '_'"))
    }
}

fn check_waves(waves: &[u32]) -> HubResult<()> {
    let ascending = waves.windows(2).all(|w| w[0] < w[1]);
    if waves.is_empty() || !ascending || waves[0] == 0 || waves.last() != Some(&100) {
        return Err(HubError::invalid(
            "Waves are ascending cumulative percentages from 1 to 100, the last one 100",
        ));
    }
    Ok(())
}

fn not_found(id: &str) -> HubError {
    HubError::new(ErrorCode::IotHubNotFound, format!("Rollout {id} not found"))
}

fn internal(e: impl std::fmt::Display) -> HubError {
    HubError::internal(e.to_string())
}

/// `n` percent of `of`, rounded up.
fn share(pct: u32, of: usize) -> u64 {
    (of as u64 * u64::from(pct)).div_ceil(100)
}

/// The tutorial's metric queries for a rollout's configuration.
fn metric_queries(config_id: &str, version: &str) -> Value {
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

/// The hub's rollouts and the task that advances them.
pub struct Rollouts {
    dir: PathBuf,
    registry: Registry,
    engine: Arc<Engine>,
    firmware: Arc<FirmwareStore>,
    rollouts: Mutex<BTreeMap<String, Rollout>>,
}

impl Rollouts {
    /// Loads `DIR/rollouts/*.json`, re-establishes each unfinished rollout's
    /// configuration and wave tags, and starts the task that advances them
    /// every `tick`.
    pub async fn start(
        data_dir: &Path,
        registry: Registry,
        engine: Arc<Engine>,
        firmware: Arc<FirmwareStore>,
        tick: Duration,
    ) -> anyhow::Result<Arc<Self>> {
        let dir = data_dir.join("rollouts");
        std::fs::create_dir_all(&dir)?;
        let mut rollouts = BTreeMap::new();
        for entry in std::fs::read_dir(&dir)? {
            let path = entry?.path();
            if path.extension().and_then(|e| e.to_str()) == Some("json") {
                let rollout: Rollout = serde_json::from_slice(&std::fs::read(&path)?)?;
                rollouts.insert(rollout.id.clone(), rollout);
            }
        }
        let this = Arc::new(Self { dir, registry, engine, firmware, rollouts: Mutex::new(rollouts) });
        {
            let map = this.rollouts.lock().await;
            for rollout in map.values().filter(|r| !r.state.is_final()) {
                // A rollout that cannot be re-established must not keep the
                // hub from starting; it is retried on the next start.
                if let Err(e) = this.establish(rollout).await {
                    tracing::warn!(id = rollout.id, %e, "re-establishing rollout failed");
                }
            }
        }
        let weak = Arc::downgrade(&this);
        tokio::spawn(async move {
            let mut timer = tokio::time::interval(tick);
            loop {
                timer.tick().await;
                let Some(this) = weak.upgrade() else { return };
                this.advance_all().await;
            }
        });
        Ok(this)
    }

    fn save(&self, rollout: &Rollout) -> HubResult<()> {
        let mut stored = rollout.clone();
        stored.progress.clear();
        let bytes = serde_json::to_vec_pretty(&stored).map_err(internal)?;
        crate::fsutil::write_public(&self.dir.join(format!("{}.json", rollout.id)), &bytes).map_err(internal)
    }

    /// Makes sure the configuration exists and every device of the started
    /// waves carries its wave tag (both idempotent).
    async fn establish(&self, rollout: &Rollout) -> HubResult<()> {
        if self.engine.get(&rollout.configuration_id).is_err() {
            let image = self
                .firmware
                .get(&rollout.sha256)?
                .ok_or_else(|| crate::firmware::not_found(&rollout.sha256))?;
            self.create_configuration(rollout, &image).await?;
        }
        let ends = rollout.wave_ends();
        let through = ends.get(rollout.current_wave.saturating_sub(1)).copied().unwrap_or(0);
        self.tag(rollout, &ends, 0, through).await
    }

    async fn create_configuration(&self, rollout: &Rollout, image: &FirmwareImage) -> HubResult<()> {
        let config = json!({
            "id": rollout.configuration_id,
            "content": {"deviceContent": {"properties.desired.firmware": image.desired_property(&rollout.package_uri)}},
            "targetCondition": format!("tags.ferrohubRollouts.[[{}]] >= 1", rollout.id),
            "priority": rollout.priority,
            "labels": {"ferrohubRollout": rollout.id},
            "metrics": {"queries": metric_queries(&rollout.configuration_id, &rollout.version)},
        });
        match self.engine.put(&rollout.configuration_id, &config, &IfMatch::Absent).await {
            Err(e) if e.code != ErrorCode::ConfigurationAlreadyExists => Err(e),
            _ => Ok(()),
        }
    }

    /// Sets the wave tag on devices `from..to` (sorted order).
    async fn tag(&self, rollout: &Rollout, ends: &[usize], from: usize, to: usize) -> HubResult<()> {
        for (index, device_id) in rollout.devices.iter().enumerate().take(to).skip(from) {
            let wave = Rollout::wave_of(ends, index);
            let patch = json!({"tags": {"ferrohubRollouts": {rollout.id.clone(): wave}}});
            match self.registry.patch_twin(device_id, &patch, &IfMatch::Any).await {
                Err(e) if e.code != ErrorCode::DeviceNotFound => return Err(e),
                _ => {}
            }
        }
        Ok(())
    }

    /// `POST /firmware-rollouts`.
    pub async fn create(&self, body: &Value) -> HubResult<Rollout> {
        let req: RolloutRequest = serde_json::from_value(body.clone())
            .map_err(|e| HubError::format(format!("Invalid rollout: {e}")))?;
        check_id(&req.id)?;
        check_sha256(&req.sha256)?;
        let waves = req.waves.unwrap_or_else(|| vec![10, 50, 100]);
        check_waves(&waves)?;
        let success_threshold = req.success_threshold.unwrap_or(90);
        let failure_threshold = req.failure_threshold.unwrap_or(10);
        if !(1..=100).contains(&success_threshold) || !(1..=100).contains(&failure_threshold) {
            return Err(HubError::invalid("Thresholds are percentages from 1 to 100"));
        }
        if !req.package_uri.starts_with("https://")
            || !req.package_uri.ends_with(&format!("/firmware/{}", req.sha256))
        {
            return Err(HubError::invalid("packageUri must be the hub's https URI of the image"));
        }
        let image = self.firmware.get(&req.sha256)?.ok_or_else(|| crate::firmware::not_found(&req.sha256))?;
        let condition = ferrohub_query::parse_condition(&req.target_condition)
            .map_err(|e| HubError::invalid(format!("target condition: {}", e.message)))?;
        let mut devices: Vec<String> = self.registry.index().with_all(|docs| {
            docs.filter(|d| ferrohub_query::matches(&condition, d))
                .filter_map(|d| d["deviceId"].as_str().map(str::to_owned))
                .collect()
        });
        devices.sort();
        if devices.is_empty() {
            return Err(HubError::invalid("The target condition matches no device"));
        }
        let mut map = self.rollouts.lock().await;
        if map.contains_key(&req.id) {
            return Err(HubError::new(
                ErrorCode::InvalidOperation,
                format!("Rollout {} already exists", req.id),
            ));
        }
        let configuration_id = format!("rollout-{}", req.id);
        if self.engine.get(&configuration_id).is_ok() {
            return Err(HubError::new(
                ErrorCode::InvalidOperation,
                format!("Configuration {configuration_id} already exists"),
            ));
        }
        let rollout = Rollout {
            id: req.id.clone(),
            sha256: req.sha256,
            version: image.manifest.version.clone(),
            target_condition: req.target_condition,
            priority: req.priority.unwrap_or(20),
            waves,
            success_threshold,
            failure_threshold,
            package_uri: req.package_uri,
            devices,
            current_wave: 1,
            state: RolloutState::Running,
            reason: String::new(),
            configuration_id,
            progress: Vec::new(),
        };
        self.save(&rollout)?;
        self.create_configuration(&rollout, &image).await?;
        let ends = rollout.wave_ends();
        self.tag(&rollout, &ends, 0, ends[0]).await?;
        tracing::info!(id = rollout.id, devices = rollout.devices.len(), "rollout created");
        map.insert(rollout.id.clone(), rollout.clone());
        drop(map);
        Ok(self.present(rollout))
    }

    /// Counts each wave's successes and failures from the twin index.
    fn progress(&self, rollout: &Rollout) -> Vec<WaveProgress> {
        let ends = rollout.wave_ends();
        let mut progress: Vec<WaveProgress> = ends
            .iter()
            .enumerate()
            .map(|(i, end)| WaveProgress {
                devices: (end - if i == 0 { 0 } else { ends[i - 1] }) as u64,
                started: i < rollout.current_wave,
                ..WaveProgress::default()
            })
            .collect();
        self.registry.index().with_all(|docs| {
            for doc in docs {
                let Some(wave) = doc["tags"]["ferrohubRollouts"][&rollout.id].as_u64() else { continue };
                let Some(p) = (wave as usize).checked_sub(1).and_then(|w| progress.get_mut(w)) else {
                    continue;
                };
                let fw = &doc["properties"]["reported"]["firmware"];
                match fw["fwUpdateStatus"].as_str() {
                    Some("current") if fw["currentFwVersion"] == rollout.version.as_str() => p.succeeded += 1,
                    Some("error" | "rolledback") => p.failed += 1,
                    _ => {}
                }
            }
        });
        progress
    }

    fn present(&self, mut rollout: Rollout) -> Rollout {
        rollout.progress = self.progress(&rollout);
        rollout
    }

    /// One step of every running rollout: halt on failures, else advance on
    /// successes.
    async fn advance_all(&self) {
        let mut map = self.rollouts.lock().await;
        for rollout in map.values_mut().filter(|r| r.state == RolloutState::Running) {
            if let Err(e) = self.advance(rollout).await {
                tracing::warn!(id = rollout.id, %e, "rollout step failed");
            }
        }
    }

    async fn advance(&self, rollout: &mut Rollout) -> HubResult<()> {
        let progress = self.progress(rollout);
        let ends = rollout.wave_ends();
        let started = ends[rollout.current_wave - 1];
        let succeeded: u64 = progress.iter().map(|p| p.succeeded).sum();
        let failed: u64 = progress.iter().map(|p| p.failed).sum();
        let mut next = rollout.clone();
        if failed > 0 && failed >= share(rollout.failure_threshold, started) {
            next.state = RolloutState::Halted;
            next.reason = format!(
                "{failed} of {started} started devices failed (threshold {}%)",
                rollout.failure_threshold
            );
        } else if succeeded >= share(rollout.success_threshold, started) {
            if rollout.current_wave == ends.len() {
                next.state = RolloutState::Succeeded;
            } else {
                next.current_wave += 1;
            }
        } else {
            return Ok(());
        }
        self.save(&next)?;
        tracing::info!(id = next.id, wave = next.current_wave, state = ?next.state, "rollout advanced");
        if next.current_wave > rollout.current_wave {
            self.tag(&next, &ends, started, ends[next.current_wave - 1]).await?;
        }
        *rollout = next;
        Ok(())
    }

    /// `GET /firmware-rollouts/{id}`.
    pub async fn get(&self, id: &str) -> HubResult<Rollout> {
        let rollout = self.rollouts.lock().await.get(id).cloned().ok_or_else(|| not_found(id))?;
        Ok(self.present(rollout))
    }

    /// `GET /firmware-rollouts`.
    pub async fn list(&self) -> Vec<Rollout> {
        let all: Vec<Rollout> = self.rollouts.lock().await.values().cloned().collect();
        all.into_iter().map(|r| self.present(r)).collect()
    }

    /// Whether any rollout uses an image.
    pub async fn references(&self, sha256: &str) -> Option<String> {
        self.rollouts.lock().await.values().find(|r| r.sha256 == sha256).map(|r| r.id.clone())
    }

    /// `POST /firmware-rollouts/{id}/{action}`: pause, resume or cancel.
    pub async fn act(&self, id: &str, action: &str) -> HubResult<Rollout> {
        use RolloutState::*;
        let mut map = self.rollouts.lock().await;
        let rollout = map.get_mut(id).ok_or_else(|| not_found(id))?;
        let to = match (action, rollout.state) {
            ("pause", Running | Paused) => Paused,
            ("resume", Running | Paused) => Running,
            ("cancel", Running | Paused | Halted | Cancelled) => Cancelled,
            ("pause" | "resume" | "cancel", state) => {
                return Err(HubError::new(
                    ErrorCode::InvalidOperation,
                    format!("Cannot {action} a rollout that is {state:?}").to_lowercase(),
                ))
            }
            _ => return Err(HubError::new(ErrorCode::IotHubNotFound, format!("Unknown action {action}"))),
        };
        if rollout.state != to {
            let mut next = rollout.clone();
            next.state = to;
            self.save(&next)?;
            *rollout = next;
            tracing::info!(id, state = ?to, "rollout state changed");
        }
        let rollout = rollout.clone();
        drop(map);
        Ok(self.present(rollout))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn rollout(n: usize, waves: &[u32]) -> Rollout {
        Rollout {
            id: "r".into(),
            sha256: String::new(),
            version: "1".into(),
            target_condition: String::new(),
            priority: 0,
            waves: waves.to_vec(),
            success_threshold: 90,
            failure_threshold: 10,
            package_uri: String::new(),
            devices: (0..n).map(|i| format!("d{i:03}")).collect(),
            current_wave: 1,
            state: RolloutState::Running,
            reason: String::new(),
            configuration_id: String::new(),
            progress: Vec::new(),
        }
    }

    #[test]
    fn waves_are_cumulative_and_never_empty() {
        assert_eq!(rollout(10, &[20, 50, 100]).wave_ends(), vec![2, 5, 10]);
        assert_eq!(rollout(3, &[1, 10, 50, 100]).wave_ends(), vec![1, 2, 3, 3]);
        assert_eq!(rollout(100, &[1, 10, 50, 100]).wave_ends(), vec![1, 10, 50, 100]);
        let ends = rollout(10, &[20, 50, 100]).wave_ends();
        assert_eq!(Rollout::wave_of(&ends, 0), 1);
        assert_eq!(Rollout::wave_of(&ends, 2), 2);
        assert_eq!(Rollout::wave_of(&ends, 9), 3);
    }

    #[test]
    fn inputs_are_checked() {
        assert!(check_waves(&[10, 50, 100]).is_ok());
        for bad in [&[][..], &[50, 10, 100], &[10, 50], &[0, 100], &[10, 10, 100]] {
            assert!(check_waves(bad).is_err(), "{bad:?}");
        }
        assert!(check_id("fw-285_a").is_ok());
        for bad in ["", "A", "a b", "a.b", &"a".repeat(65)] {
            assert!(check_id(bad).is_err(), "{bad}");
        }
        assert_eq!(share(90, 10), 9);
        assert_eq!(share(10, 3), 1);
    }
}
