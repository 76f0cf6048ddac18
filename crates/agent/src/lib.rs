//! The device update agent behind `ferrohub agent`.
//!
//! It follows the desired `firmware` twin property (the firmware-update
//! tutorial's `{fwVersion, fwPackageURI, fwPackageCheckValue}` plus the
//! hub's signed `fwManifest`/`fwSignature`) and reports exactly the
//! tutorial's reported `firmware` properties.
//!
//! Layout of the state directory:
//!
//! - `agent.json`: the agent's durable progress (written atomically: temp
//!   file, fsync, rename, fsync of the directory). It is the source of truth
//!   after a crash.
//! - `download.part`: the image being downloaded (resumed with `Range`).
//! - `slot-a`, `slot-b`: the two image slots.
//! - `active`: the name of the active slot, replaced atomically.
//! - `hub-key.pem`: the hub's manifest-signing key, pinned on first use when
//!   no `--public-key` is given: the first update that needs it fetches
//!   `GET /firmware-key` over HTTPS (verified against the hub CA, like the
//!   downloads) with the device's own SAS token, from the connection
//!   string's host on the package URI's port when the URI names that host
//!   (else 443). Later starts read the pinned file and never fetch again; a
//!   manifest that does not verify against it is refused.
//!
//! An update runs through the phases `downloading → downloaded → verified →
//! writing → switched → rebooted`; each is recorded before the work it
//! names, so a restart at any point resumes it. Any failure switches back
//! to the previous slot (if it had switched) and reports `error`, then
//! `rolledback`; the active slot is never a half-written one. "Reboot"
//! re-executes the agent with the same arguments.
//!
//! Without `--health-check`, the check after a reboot is "reconnect and
//! report within 60 s" (`FERROHUB_AGENT_HEALTH_TIMEOUT_SECS` overrides the
//! seconds): connection attempts are retried until then; when the time is
//! up the agent switches back at once (durably), keeps trying to connect,
//! and reports `error` then `rolledback` as soon as the hub takes the
//! connection, in the same run. A rollback recorded but not yet reported is
//! reported at the next start.
//!
//! Failpoints (`FERROHUB_AGENT_FAILPOINT`, for crash tests) SIGKILL the
//! agent at `mid-download` (after about half of the image is in
//! `download.part`, fsynced), `after-download`, `after-verify`, `mid-write`,
//! `after-switch` and `after-reboot`; `refuse-reconnect` instead makes every
//! connection attempt after a reboot use a wrong key until the health check's
//! time is up, so the hub refuses them.

pub mod sim;

use std::fs::{self, File, OpenOptions};
use std::io::{Read as _, Write as _};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::Context as _;
use ed25519_dalek::pkcs8::DecodePublicKey as _;
use ed25519_dalek::VerifyingKey;
use ferrohub_core::connection_string::ConnectionString;
use ferrohub_core::time::Timestamp;
use ferrohub_device_client::{DeviceClient, DeviceOptions};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use sha2::{Digest as _, Sha256};

/// The environment variable naming a point at which the agent SIGKILLs
/// itself (for crash tests).
pub const FAILPOINT_ENV: &str = "FERROHUB_AGENT_FAILPOINT";

/// The environment variable overriding how many seconds the default health
/// check (reconnect and report after a reboot) may take (default 60).
pub const HEALTH_TIMEOUT_ENV: &str = "FERROHUB_AGENT_HEALTH_TIMEOUT_SECS";

/// How long the default health check (reconnect and report) may take.
const DEFAULT_HEALTH_TIMEOUT: Duration = Duration::from_secs(60);

/// The pinned hub signing key (trust on first use) in the state dir.
pub const PINNED_KEY_FILE: &str = "hub-key.pem";

/// The failpoint that makes the hub refuse every connection attempt after
/// a reboot until the health check's time is up (the agent signs them with
/// a wrong key); the only failpoint that does not kill.
const REFUSE_RECONNECT: &str = "refuse-reconnect";

/// How often a download is attempted (resuming) before it counts as failed.
const DOWNLOAD_ATTEMPTS: u32 = 3;

/// What the agent needs to run.
#[derive(Debug, Clone)]
pub struct AgentOptions {
    /// The device's connection string.
    pub connection_string: String,
    /// Extra CA certificate(s) (PEM) to trust for MQTT and HTTPS.
    pub ca_file: Option<PathBuf>,
    /// The hub's MQTT/TLS port (default 8883).
    pub mqtt_port: Option<u16>,
    /// Where slots, downloads and progress live.
    pub state_dir: PathBuf,
    /// The hub's manifest-signing public key (SPKI PEM).
    pub public_key: Option<PathBuf>,
    /// A shell command (`sh -c`) that must exit 0 after a reboot.
    pub health_check: Option<String>,
    /// The version reported before the first update.
    pub initial_version: String,
}

/// Where an update stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
enum Phase {
    #[default]
    Idle,
    Downloading,
    Downloaded,
    Verified,
    Writing,
    Switched,
    Rebooted,
}

/// The desired `firmware` property.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
struct Target {
    fw_version: String,
    #[serde(rename = "fwPackageURI")]
    fw_package_uri: String,
    fw_package_check_value: String,
    fw_manifest: String,
    fw_signature: String,
}

/// `agent.json`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
struct State {
    current_version: String,
    phase: Phase,
    target: Option<Target>,
    /// The slot active before the switch (set from `writing` on).
    previous_slot: Option<String>,
    /// The slot being written / switched to.
    new_slot: Option<String>,
    status: String,
    substatus: String,
    start_time: String,
    end_time: String,
    /// A target that failed; not retried until the desired value changes.
    rejected: Option<Target>,
}

fn now_iso() -> String {
    let nanos = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0);
    Timestamp::from_unix_nanos(i128::try_from(nanos).unwrap_or(0)).to_iso()
}

fn failpoint_is(point: &str) -> bool {
    std::env::var(FAILPOINT_ENV).ok().as_deref() == Some(point)
}

fn health_timeout() -> Duration {
    std::env::var(HEALTH_TIMEOUT_ENV)
        .ok()
        .and_then(|v| v.trim().parse().ok())
        .map_or(DEFAULT_HEALTH_TIMEOUT, Duration::from_secs)
}

/// SIGKILLs this process if `FERROHUB_AGENT_FAILPOINT` names `point`.
fn failpoint(point: &str) {
    if failpoint_is(point) {
        tracing::warn!(point, "failpoint: killing myself");
        let pid = std::process::id().to_string();
        let _ = std::process::Command::new("kill").args(["-KILL", &pid]).status();
        // The signal is asynchronous; never carry on past a failpoint.
        loop {
            std::thread::sleep(Duration::from_secs(1));
        }
    }
}

/// Writes `bytes` to `path` atomically: temp file, fsync, rename, fsync dir.
fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let tmp = dir.join(format!(".{name}.tmp"));
    {
        let mut f = File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
    }
    fs::rename(&tmp, path)?;
    File::open(dir)?.sync_all()
}

fn sha256_file(path: &Path) -> std::io::Result<(String, u64)> {
    let mut f = File::open(path)?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 64 * 1024];
    let mut len = 0u64;
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        len += n as u64;
    }
    Ok((hex::encode(hasher.finalize()), len))
}

fn other_slot(slot: &str) -> &'static str {
    if slot == "slot-a" {
        "slot-b"
    } else {
        "slot-a"
    }
}

/// How [`Agent::connect`] retries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Retry {
    Once,
    Until(tokio::time::Instant),
    Forever,
}

/// Why an update failed (the substatus).
type Failure = String;

/// The desired value's signed manifest must verify with `key` and vouch
/// for its version and check value (the agent and the simulator alike).
pub(crate) fn check_manifest(
    target: &Target,
    key: &VerifyingKey,
) -> Result<ferrohub_core::firmware::FirmwareManifest, Failure> {
    let manifest = ferrohub_core::firmware::verify_manifest(&target.fw_manifest, &target.fw_signature, key)
        .map_err(|e| format!("signature check failed: {e}"))?;
    if manifest.version != target.fw_version {
        return Err(format!(
            "manifest version {} does not match fwVersion {}",
            manifest.version, target.fw_version
        ));
    }
    if !manifest.sha256.eq_ignore_ascii_case(&target.fw_package_check_value) {
        return Err("manifest sha256 does not match fwPackageCheckValue".into());
    }
    Ok(manifest)
}

struct Agent {
    opts: AgentOptions,
    state: State,
    key: Option<VerifyingKey>,
    client: Option<DeviceClient>,
    http: reqwest::Client,
    /// When the default health check's time is up (set after a reboot).
    health_deadline: Option<tokio::time::Instant>,
}

impl Agent {
    fn path(&self, name: &str) -> PathBuf {
        self.opts.state_dir.join(name)
    }

    fn save(&self) -> anyhow::Result<()> {
        let bytes = serde_json::to_vec_pretty(&self.state)?;
        write_atomic(&self.path("agent.json"), &bytes).context("writing agent.json")
    }

    fn active(&self) -> anyhow::Result<String> {
        let text = fs::read_to_string(self.path("active")).context("reading the active slot")?;
        Ok(text.trim().to_owned())
    }

    fn set_active(&self, slot: &str) -> anyhow::Result<()> {
        write_atomic(&self.path("active"), slot.as_bytes()).context("switching the active slot")
    }

    /// The tutorial's reported `firmware` object for the current state.
    fn reported(&self) -> Value {
        json!({"firmware": {
            "currentFwVersion": self.state.current_version,
            "pendingFwVersion": self.state.target.as_ref().map(|t| t.fw_version.as_str()).unwrap_or(""),
            "fwUpdateStatus": self.state.status,
            "fwUpdateSubstatus": self.state.substatus,
            "lastFwUpdateStartTime": self.state.start_time,
            "lastFwUpdateEndTime": self.state.end_time,
        }})
    }

    /// Reports the current state; a failure is logged (the state file keeps
    /// the truth and is reported again on the next start).
    async fn report(&self) {
        let patch = self.reported();
        tracing::info!(firmware = %patch["firmware"], "reporting");
        if let Some(client) = &self.client {
            if let Err(e) = client.update_reported(&patch).await {
                tracing::warn!(error = %e, "reporting failed");
            }
        }
    }

    /// Reports the current state, retrying while the client is between
    /// connections (it reconnects by itself), so a rollback reaches the hub
    /// as soon as it takes a connection again.
    async fn report_until_sent(&self) {
        let patch = self.reported();
        tracing::info!(firmware = %patch["firmware"], "reporting");
        let Some(client) = &self.client else { return };
        let mut delay = Duration::from_millis(500);
        loop {
            match client.update_reported(&patch).await {
                Ok(_) => return,
                Err(e) => {
                    use ferrohub_device_client::Error as E;
                    let transient = matches!(e, E::Timeout | E::NotConnected)
                        || matches!(e, E::Hub { status, .. } if status == 429 || status >= 500);
                    tracing::warn!(error = %e, transient, "reporting failed");
                    if !transient {
                        return;
                    }
                }
            }
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(Duration::from_secs(5));
        }
    }

    async fn set_status(&mut self, status: &str, substatus: &str) -> anyhow::Result<()> {
        status.clone_into(&mut self.state.status);
        substatus.clone_into(&mut self.state.substatus);
        self.save()?;
        self.report().await;
        Ok(())
    }

    /// Handles the desired `firmware` value while idle.
    async fn on_desired(&mut self, desired: Option<&Value>) -> anyhow::Result<()> {
        let Some(desired) = desired.filter(|v| v.is_object()) else {
            // Withdrawn: offering the same update again is a retry.
            if self.state.rejected.take().is_some() {
                self.save()?;
            }
            return Ok(());
        };
        let target: Target = serde_json::from_value(desired.clone()).unwrap_or_default();
        if target.fw_version.is_empty() || self.state.rejected.as_ref() == Some(&target) {
            return Ok(());
        }
        if target.fw_version == self.state.current_version {
            if self.state.status != "current" || self.state.substatus != "Firmware already up to date" {
                self.state.target = None;
                self.set_status("current", "Firmware already up to date").await?;
            }
            return Ok(());
        }
        self.state.start_time = now_iso();
        self.state.end_time = String::new();
        if !target.fw_package_uri.starts_with("https://") {
            self.state.end_time = self.state.start_time.clone();
            self.state.target = Some(target.clone());
            self.state.rejected = Some(target);
            self.set_status("error", "URI scheme must be https").await?;
            self.state.target = None;
            return self.save();
        }
        tracing::info!(version = %target.fw_version, "starting an update");
        self.state.target = Some(target);
        self.state.phase = Phase::Downloading;
        self.state.previous_slot = None;
        self.state.new_slot = None;
        let _ = fs::remove_file(self.path("download.part"));
        self.save()?;
        self.resume().await
    }

    /// Continues the update from the recorded phase.
    async fn resume(&mut self) -> anyhow::Result<()> {
        match self.advance().await? {
            Ok(()) => Ok(()),
            Err(reason) => self.roll_back(&reason).await,
        }
    }

    /// Runs the phases; `Ok(Err(reason))` is a failed update.
    async fn advance(&mut self) -> anyhow::Result<Result<(), Failure>> {
        let Some(target) = self.state.target.clone() else {
            self.state.phase = Phase::Idle;
            self.save()?;
            return Ok(Ok(()));
        };
        if let Err(reason) = self.ensure_key(&target).await {
            return Ok(Err(reason));
        }
        loop {
            match self.state.phase {
                Phase::Idle => return Ok(Ok(())),
                Phase::Downloading => {
                    if let Err(reason) = self.check_manifest(&target) {
                        return Ok(Err(reason));
                    }
                    self.set_status("downloading", "0%").await?;
                    if let Err(reason) = self.download(&target).await {
                        return Ok(Err(reason));
                    }
                    self.state.phase = Phase::Downloaded;
                    self.save()?;
                    failpoint("after-download");
                }
                Phase::Downloaded => {
                    self.set_status("verifying", "").await?;
                    if let Err(reason) = self.verify_download(&target) {
                        return Ok(Err(reason));
                    }
                    self.state.phase = Phase::Verified;
                    self.save()?;
                    failpoint("after-verify");
                }
                Phase::Verified | Phase::Writing => {
                    // After a crash the download is checked again before
                    // anything reaches the slot.
                    if let Err(reason) = self.verify_download(&target) {
                        return Ok(Err(reason));
                    }
                    let active = self.active()?;
                    let new_slot = other_slot(&active).to_owned();
                    self.state.previous_slot = Some(active);
                    self.state.new_slot = Some(new_slot.clone());
                    self.state.phase = Phase::Writing;
                    self.set_status("applying", "").await?;
                    if let Err(reason) = self.write_slot(&target, &new_slot) {
                        return Ok(Err(reason));
                    }
                    // Recorded before the switch, so a crash in between
                    // finishes the (idempotent) switch.
                    self.state.phase = Phase::Switched;
                    self.save()?;
                    self.set_active(&new_slot)?;
                    failpoint("after-switch");
                }
                Phase::Switched => {
                    let new_slot = self.state.new_slot.clone().context("no slot recorded to switch to")?;
                    self.set_active(&new_slot)?;
                    self.set_status("rebooting", "").await?;
                    self.state.phase = Phase::Rebooted;
                    self.save()?;
                    let _ = fs::remove_file(self.path("download.part"));
                    return self.reboot().await;
                }
                Phase::Rebooted => return self.after_reboot(&target).await,
            }
        }
    }

    /// A device SAS token for the hub's HTTPS routes.
    fn sas_token(&self) -> Result<String, String> {
        let cs: ConnectionString = self.opts.connection_string.parse().map_err(|e| format!("{e}"))?;
        let expiry = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0) + 3600;
        cs.sas_token(i64::try_from(expiry).unwrap_or(i64::MAX)).map_err(|e| format!("{e}"))
    }

    /// Without `--public-key` and without a pinned key, fetches the hub's
    /// signing key once (trust on first use) and pins it in `hub-key.pem`.
    async fn ensure_key(&mut self, target: &Target) -> Result<(), Failure> {
        if self.key.is_some() || self.opts.public_key.is_some() {
            return Ok(());
        }
        let key = self
            .fetch_key(target)
            .await
            .map_err(|e| format!("no public key to verify the firmware manifest with: {e}"))?;
        self.key = Some(key);
        Ok(())
    }

    async fn fetch_key(&self, target: &Target) -> Result<VerifyingKey, String> {
        let cs: ConnectionString = self.opts.connection_string.parse().map_err(|e| format!("{e}"))?;
        let host = cs.host_name.as_str();
        // The hub's HTTPS port is the package URI's when that names the
        // hub, else 443.
        let port = reqwest::Url::parse(&target.fw_package_uri)
            .ok()
            .filter(|u| u.host_str().is_some_and(|h| h.eq_ignore_ascii_case(host)))
            .and_then(|u| u.port_or_known_default())
            .unwrap_or(443);
        let url = format!("https://{host}:{port}/firmware-key");
        tracing::info!(%url, "fetching the hub's public key (trust on first use)");
        let response = self
            .http
            .get(&url)
            .header("authorization", self.sas_token()?)
            .send()
            .await
            .map_err(|e| format!("fetching {url}: {e}"))?;
        let status = response.status();
        if !status.is_success() {
            return Err(format!("fetching {url}: HTTP {}", status.as_u16()));
        }
        let pem = response.text().await.map_err(|e| format!("fetching {url}: {e}"))?;
        let key = VerifyingKey::from_public_key_pem(pem.trim()).map_err(|e| format!("the hub's key: {e}"))?;
        write_atomic(&self.path(PINNED_KEY_FILE), pem.as_bytes())
            .map_err(|e| format!("pinning the hub's key: {e}"))?;
        tracing::info!(file = PINNED_KEY_FILE, "pinned the hub's public key");
        Ok(key)
    }

    /// The signed manifest must verify and vouch for the desired values.
    fn check_manifest(&self, target: &Target) -> Result<ferrohub_core::firmware::FirmwareManifest, Failure> {
        let key = self.key.as_ref().ok_or("no public key to verify the firmware manifest with")?;
        check_manifest(target, key)
    }

    /// Downloads (resuming `download.part`) with the device's own SAS token.
    async fn download(&mut self, target: &Target) -> Result<(), Failure> {
        let size = self.check_manifest(target)?.size;
        let part = self.path("download.part");
        let mut last_error = String::new();
        for attempt in 1..=DOWNLOAD_ATTEMPTS {
            match self.download_once(target, &part, size).await {
                Ok(()) => return Ok(()),
                Err(e) => {
                    tracing::warn!(attempt, error = %e, "download failed");
                    last_error = e;
                    tokio::time::sleep(Duration::from_millis(500 * u64::from(attempt))).await;
                }
            }
        }
        Err(format!("download failed: {last_error}"))
    }

    async fn download_once(&mut self, target: &Target, part: &Path, size: u64) -> Result<(), String> {
        let have = fs::metadata(part).map(|m| m.len()).unwrap_or(0);
        if have == size {
            return Ok(());
        }
        let have = if have > size {
            let _ = fs::remove_file(part);
            0
        } else {
            have
        };
        let token = self.sas_token()?;
        let mut request = self.http.get(&target.fw_package_uri).header("authorization", token);
        if have > 0 {
            tracing::info!(offset = have, "resuming the download");
            request = request.header("range", format!("bytes={have}-"));
        }
        let mut response = request.send().await.map_err(|e| format!("{e}"))?;
        let status = response.status().as_u16();
        tracing::info!(offset = have, status, "downloading");
        let mut file = match status {
            206 => OpenOptions::new().append(true).open(part).map_err(|e| e.to_string())?,
            200 => File::create(part).map_err(|e| e.to_string())?,
            416 if have > 0 => {
                // The part is at least as long as the image; start again.
                let _ = fs::remove_file(part);
                return Err("range not satisfiable".into());
            }
            other => return Err(format!("HTTP {other}")),
        };
        let mut got = if status == 206 { have } else { 0 };
        let mut last_pct = got * 100 / size.max(1);
        let mut midpoint_passed = got * 2 >= size;
        while let Some(chunk) = response.chunk().await.map_err(|e| format!("{e}"))? {
            file.write_all(&chunk).map_err(|e| e.to_string())?;
            got += chunk.len() as u64;
            if got > size {
                return Err("the download is larger than the manifest says".into());
            }
            if !midpoint_passed && got * 2 >= size && got < size {
                midpoint_passed = true;
                file.sync_all().map_err(|e| e.to_string())?;
                tracing::info!(bytes = got, "downloaded half");
                failpoint("mid-download");
            }
            let pct = got * 100 / size.max(1);
            if pct / 10 > last_pct / 10 {
                last_pct = pct;
                file.sync_data().map_err(|e| e.to_string())?;
                self.state.substatus = format!("{pct}%");
                self.report().await;
            }
        }
        file.sync_all().map_err(|e| e.to_string())?;
        if got != size {
            return Err(format!("download ended after {got} of {size} bytes"));
        }
        Ok(())
    }

    /// SHA-256 and size of `download.part` against the signed manifest.
    fn verify_download(&self, target: &Target) -> Result<(), Failure> {
        let manifest = self.check_manifest(target)?;
        let (sha, len) =
            sha256_file(&self.path("download.part")).map_err(|e| format!("cannot read the download: {e}"))?;
        if len != manifest.size {
            return Err(format!("size mismatch: {len} bytes, manifest says {}", manifest.size));
        }
        if !sha.eq_ignore_ascii_case(&manifest.sha256) {
            return Err(format!("checksum mismatch: got {sha}"));
        }
        Ok(())
    }

    /// Copies the verified download into the inactive slot and checks it.
    fn write_slot(&self, target: &Target, slot: &str) -> Result<(), Failure> {
        let fail = |e: std::io::Error| format!("apply failed: {e}");
        let part = self.path("download.part");
        let dest = self.path(slot);
        let total = fs::metadata(&part).map_err(fail)?.len();
        let mut src = File::open(&part).map_err(fail)?;
        let mut out = File::create(&dest).map_err(fail)?;
        let mut buf = vec![0u8; 64 * 1024];
        let mut written = 0u64;
        let mut midpoint_passed = false;
        loop {
            let n = src.read(&mut buf).map_err(fail)?;
            if n == 0 {
                break;
            }
            out.write_all(&buf[..n]).map_err(fail)?;
            written += n as u64;
            if !midpoint_passed && written * 2 >= total && written < total {
                midpoint_passed = true;
                out.sync_all().map_err(fail)?;
                failpoint("mid-write");
            }
        }
        out.sync_all().map_err(fail)?;
        drop(out);
        let (sha, _) = sha256_file(&dest).map_err(fail)?;
        if !sha.eq_ignore_ascii_case(&target.fw_package_check_value) {
            return Err("apply failed: the slot does not read back the image".into());
        }
        Ok(())
    }

    /// Re-executes the agent with the same arguments.
    async fn reboot(&mut self) -> anyhow::Result<Result<(), Failure>> {
        use std::os::unix::process::CommandExt as _;
        tracing::info!("rebooting (re-executing the agent)");
        if let Some(client) = self.client.take() {
            client.close().await;
        }
        let exe = std::env::current_exe().context("finding the agent's executable")?;
        let error = std::process::Command::new(exe).args(std::env::args_os().skip(1)).exec();
        Err(anyhow::Error::new(error).context("re-executing the agent"))
    }

    /// Runs the health check after a reboot: success makes the new version
    /// current, failure rolls back.
    async fn after_reboot(&mut self, target: &Target) -> anyhow::Result<Result<(), Failure>> {
        failpoint("after-reboot");
        let healthy = match &self.opts.health_check {
            Some(cmd) => {
                let status = tokio::process::Command::new("sh").args(["-c", cmd]).status().await;
                match status {
                    Ok(s) if s.success() => Ok(()),
                    Ok(s) => Err(format!("health check failed ({s})")),
                    Err(e) => Err(format!("health check could not run: {e}")),
                }
            }
            None => {
                let client = self.client.as_ref().context("not connected")?;
                let patch = self.reported();
                let deadline =
                    self.health_deadline.unwrap_or_else(|| tokio::time::Instant::now() + health_timeout());
                match tokio::time::timeout_at(deadline, client.update_reported(&patch)).await {
                    Ok(Ok(_)) => Ok(()),
                    Ok(Err(e)) => Err(format!("health check failed: {e}")),
                    Err(_) => {
                        Err(format!("health check failed: no report within {} s", health_timeout().as_secs()))
                    }
                }
            }
        };
        if let Err(reason) = healthy {
            return Ok(Err(reason));
        }
        self.state.current_version = target.fw_version.clone();
        self.state.target = None;
        self.state.phase = Phase::Idle;
        self.state.previous_slot = None;
        self.state.new_slot = None;
        self.state.end_time = now_iso();
        self.state.rejected = None;
        self.set_status("current", "").await?;
        tracing::info!(version = %self.state.current_version, "update complete");
        Ok(Ok(()))
    }

    /// Switches back (if it had switched), records the final state, and
    /// reports `error` then `rolledback`.
    async fn roll_back(&mut self, reason: &str) -> anyhow::Result<()> {
        tracing::warn!(reason, "update failed; rolling back");
        self.roll_back_locally(reason)?;
        self.report_roll_back().await
    }

    /// Reports a rollback recorded by [`Self::roll_back_locally`]: `error`
    /// with the reason, then `rolledback`; then forgets the target.
    async fn report_roll_back(&mut self) -> anyhow::Result<()> {
        let reason = self.state.substatus.clone();
        let reason = reason.strip_prefix("rolled back: ").unwrap_or(&reason).to_owned();
        self.state.status = "error".into();
        self.state.substatus.clone_from(&reason);
        self.report_until_sent().await;
        self.state.status = "rolledback".into();
        self.state.substatus = format!("rolled back: {reason}");
        self.save()?;
        self.report_until_sent().await;
        self.state.target = None;
        self.save()
    }

    /// Connects to the hub. `Once` is one connect (which retries transient
    /// failures for a while itself); `Until` retries until the default
    /// health check's deadline (the error is the last attempt's); `Forever`
    /// retries until the hub takes the connection.
    async fn connect(&self, retry: Retry) -> anyhow::Result<DeviceClient> {
        let deadline = match retry {
            Retry::Until(deadline) => Some(deadline),
            Retry::Once | Retry::Forever => None,
        };
        let mut delay = Duration::from_millis(250);
        loop {
            let mut options = DeviceOptions {
                mqtt_port: self.opts.mqtt_port,
                ca_file: self.opts.ca_file.clone(),
                receive_methods: false,
                receive_c2d: false,
                ..DeviceOptions::default()
            };
            let mut cs = self.opts.connection_string.clone();
            if let Some(deadline) = deadline {
                let left = deadline.saturating_duration_since(tokio::time::Instant::now());
                options.connect_timeout = options.connect_timeout.min(left);
                if failpoint_is(REFUSE_RECONNECT) {
                    cs = with_wrong_key(&cs);
                }
            }
            let attempt = match deadline {
                Some(deadline) => tokio::time::timeout_at(deadline, DeviceClient::connect(&cs, options))
                    .await
                    .unwrap_or(Err(ferrohub_device_client::Error::Timeout)),
                None => DeviceClient::connect(&cs, options).await,
            };
            match attempt {
                Ok(client) => return Ok(client),
                Err(e) => {
                    tracing::warn!(error = %e, "connecting to the hub failed");
                    if retry == Retry::Once {
                        return Err(anyhow::Error::new(e).context("connecting to the hub"));
                    }
                    match deadline {
                        Some(deadline) => {
                            // Waits at most until the deadline; an attempt
                            // then would only time out.
                            tokio::time::sleep_until(deadline.min(tokio::time::Instant::now() + delay)).await;
                            if tokio::time::Instant::now() >= deadline {
                                return Err(anyhow::Error::new(e).context("connecting to the hub"));
                            }
                        }
                        None => tokio::time::sleep(delay).await,
                    }
                }
            }
            delay = (delay * 2).min(Duration::from_secs(5));
        }
    }

    /// The durable part of a rollback: the previous slot active again, the
    /// target rejected, the final status `rolledback` recorded. Keeps
    /// `target` (for `pendingFwVersion` in the reports); the caller clears it.
    fn roll_back_locally(&mut self, reason: &str) -> anyhow::Result<()> {
        if matches!(self.state.phase, Phase::Switched | Phase::Rebooted) {
            if let Some(prev) = self.state.previous_slot.clone() {
                self.set_active(&prev)?;
            }
        }
        let _ = fs::remove_file(self.path("download.part"));
        self.state.phase = Phase::Idle;
        self.state.previous_slot = None;
        self.state.new_slot = None;
        self.state.rejected = self.state.target.clone();
        self.state.end_time = now_iso();
        self.state.status = "rolledback".into();
        self.state.substatus = reason.to_owned();
        self.save()
    }
}

/// The connection string with a key the hub will refuse (for the
/// `refuse-reconnect` failpoint).
fn with_wrong_key(cs: &str) -> String {
    cs.split(';')
        .map(|kv| match kv.split_once('=') {
            Some((k, _)) if k.eq_ignore_ascii_case("SharedAccessKey") => {
                "SharedAccessKey=AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=".to_owned()
            }
            _ => kv.to_owned(),
        })
        .collect::<Vec<_>>()
        .join(";")
}

fn http_client(ca_file: Option<&Path>) -> anyhow::Result<reqwest::Client> {
    let mut builder = reqwest::Client::builder().connect_timeout(Duration::from_secs(30));
    if let Some(ca) = ca_file {
        let pem = fs::read(ca).with_context(|| format!("reading {}", ca.display()))?;
        for cert in reqwest::Certificate::from_pem_bundle(&pem).context("parsing the CA file")? {
            builder = builder.add_root_certificate(cert);
        }
    }
    builder.build().context("building the HTTPS client")
}

/// Runs the agent until the desired-property stream ends (the connection
/// is closed for good) or a reboot re-executes it.
pub async fn run(opts: AgentOptions) -> anyhow::Result<()> {
    fs::create_dir_all(&opts.state_dir)
        .with_context(|| format!("creating the state dir {}", opts.state_dir.display()))?;
    // `--public-key`, else the key pinned on first use (fetched when the
    // first update needs it).
    let pinned = opts.state_dir.join(PINNED_KEY_FILE);
    let key_file = opts.public_key.clone().or_else(|| pinned.exists().then_some(pinned));
    let key = match &key_file {
        Some(path) => {
            let pem = fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
            Some(
                VerifyingKey::from_public_key_pem(pem.trim())
                    .with_context(|| format!("parsing the public key in {}", path.display()))?,
            )
        }
        None => None,
    };
    let state_file = opts.state_dir.join("agent.json");
    let state = match fs::read(&state_file) {
        Ok(bytes) => serde_json::from_slice(&bytes).context("parsing agent.json")?,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => State {
            current_version: opts.initial_version.clone(),
            status: "current".into(),
            ..State::default()
        },
        Err(e) => return Err(e).context("reading agent.json"),
    };
    let http = http_client(opts.ca_file.as_deref())?;
    let mut agent = Agent { opts, state, key, client: None, http, health_deadline: None };
    if !agent.path("active").exists() {
        if !agent.path("slot-a").exists() {
            write_atomic(&agent.path("slot-a"), b"")?;
        }
        agent.set_active("slot-a")?;
    }
    if agent.state.phase == Phase::Idle {
        let _ = fs::remove_file(agent.path("download.part"));
    }

    let client = if agent.state.phase == Phase::Rebooted && agent.opts.health_check.is_none() {
        // The default health check: reconnect (and report) in time.
        let deadline = tokio::time::Instant::now() + health_timeout();
        agent.health_deadline = Some(deadline);
        match agent.connect(Retry::Until(deadline)).await {
            Ok(client) => client,
            Err(e) => {
                let reason = format!(
                    "health check failed: cannot reconnect within {} s: {}",
                    health_timeout().as_secs(),
                    e.root_cause()
                );
                tracing::warn!(%reason, "update failed; rolling back");
                agent.roll_back_locally(&reason)?;
                // Reported as soon as the hub takes a connection.
                agent.connect(Retry::Forever).await?
            }
        }
    } else {
        agent.connect(Retry::Once).await?
    };
    agent.client = Some(client.clone());
    let mut updates = client.desired_updates().context("desired updates unavailable")?;

    if agent.state.phase == Phase::Idle && agent.state.status == "rolledback" && agent.state.target.is_some()
    {
        // A rollback recorded but not yet reported.
        agent.report_roll_back().await?;
    } else if agent.state.phase == Phase::Idle {
        agent.report().await;
    } else {
        tracing::info!(phase = ?agent.state.phase, "resuming an interrupted update");
        agent.resume().await?;
    }
    loop {
        let twin = client.get_twin().await.context("reading the twin")?;
        agent.on_desired(twin.desired.get("firmware")).await?;
        if updates.recv().await.is_none() {
            return Ok(());
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn atomic_writes_replace_the_file() {
        let dir = std::env::temp_dir().join(format!("ferrohub-agent-unit-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let path = dir.join("active");
        write_atomic(&path, b"slot-a").unwrap();
        write_atomic(&path, b"slot-b").unwrap();
        assert_eq!(fs::read_to_string(&path).unwrap(), "slot-b");
        assert!(!dir.join(".active.tmp").exists());
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_wrong_key_replaces_only_the_key() {
        let cs = "HostName=h;DeviceId=d;SharedAccessKey=a2V5a2V5a2V5a2V5a2V5a2V5";
        let wrong = with_wrong_key(cs);
        assert!(wrong.starts_with("HostName=h;DeviceId=d;SharedAccessKey="), "{wrong}");
        assert_ne!(wrong, cs);
    }

    #[test]
    fn slots_alternate() {
        assert_eq!(other_slot("slot-a"), "slot-b");
        assert_eq!(other_slot("slot-b"), "slot-a");
    }

    #[test]
    fn state_round_trips() {
        let state = State {
            current_version: "1.0.0".into(),
            phase: Phase::Switched,
            target: Some(Target { fw_version: "2".into(), ..Target::default() }),
            ..State::default()
        };
        let back: State = serde_json::from_slice(&serde_json::to_vec(&state).unwrap()).unwrap();
        assert_eq!(back.phase, Phase::Switched);
        assert_eq!(back.target.unwrap().fw_version, "2");
        let t: Target =
            serde_json::from_value(json!({"fwVersion": "2.8.5", "fwPackageURI": "https://x"})).unwrap();
        assert_eq!(t.fw_package_uri, "https://x");
    }
}
