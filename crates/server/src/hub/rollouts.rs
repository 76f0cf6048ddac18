//! Staged firmware rollouts (a ferrohub addition): the service around the
//! pure rules in `ferrohub_core::rollout`.
//!
//! Mechanism (scales to large fleets, unlike a target condition listing
//! device ids): a rollout owns ONE configuration, `rollout-<id>`, whose
//! target condition is `tags.ferrohubRollouts.[[<id>]] >= 1` and whose
//! content is the image's desired `firmware`. Handing a device the update
//! sets that tag to the device's wave; withdrawing it (for a retry) clears
//! the tag, and the configuration engine hands the property back. A
//! rollback creates one more configuration per version to return to
//! (`rollout-<id>-back-<k>`, one priority higher, targeting
//! `tags.ferrohubRollbacks.[[<id>]] = <k>`).
//!
//! Once a second (the tick) each unfinished rollout observes its members in
//! the in-memory twin index and the live connections, lets devices that
//! started matching its target condition join the current wave, and asks
//! the rules what to do next. Each rollout is a JSON file
//! `DIR/rollouts/<id>.json`, replaced atomically *before* twins are tagged;
//! at start every rollout's configurations and tags are re-established
//! (idempotent), so a crash between the two steps is completed.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use ferrohub_core::firmware::{tutorial_metric_queries, FirmwareImage};
use ferrohub_core::rollout::{Observation, Pacer, Phase, Policy, Progress, RolloutState, Tally};
use ferrohub_core::{ErrorCode, HubError, HubResult};
use ferrohub_query::Expr;
use futures_util::StreamExt as _;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use tokio::sync::{watch, Mutex};

use super::configurations::Engine;
use super::firmware::{check_sha256, FirmwareStore};
use super::registry::Registry;
use ferrohub_core::precondition::IfMatch;

/// Twins tagged at the same time (their writes share group commits).
const TAG_CONCURRENTLY: usize = 256;

/// A group of devices returned to one earlier version.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RollbackGroup {
    /// The version they reported when they joined.
    pub version: String,
    /// Its image, when the hub has one.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub sha256: String,
    /// The configuration that offers it (empty without an image).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub configuration_id: String,
    /// How many devices.
    pub devices: u64,
}

/// In-memory helpers of a loaded rollout (not stored).
#[derive(Clone, Default)]
struct Cache {
    pacer: Option<Pacer>,
    condition: Option<Arc<Expr>>,
}

/// A stored rollout.
#[derive(Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Rollout {
    /// The rollout id.
    pub id: String,
    /// The image.
    pub sha256: String,
    /// The image's version.
    pub version: String,
    /// Which devices.
    pub target_condition: String,
    /// Priority of its configuration.
    pub priority: i64,
    /// Where devices fetch the image (fixed at creation).
    pub package_uri: String,
    /// When it was created (ISO 8601).
    pub created_time: String,
    /// Its configuration's id.
    pub configuration_id: String,
    /// Waves, thresholds, pacing, timeouts, soak.
    #[serde(flatten)]
    pub policy: Policy,
    /// State, current wave and members.
    #[serde(flatten)]
    pub progress: Progress,
    /// Set by a rollback.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub rollback: Vec<RollbackGroup>,
    #[serde(skip)]
    cache: Cache,
}

/// What `POST /firmware-rollouts` takes.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RolloutRequest {
    /// The rollout id.
    pub id: String,
    /// The image by version (with `deviceType` when several images share it).
    #[serde(default)]
    pub version: Option<String>,
    /// Narrows `version` to one device type's image.
    #[serde(default)]
    pub device_type: Option<String>,
    /// The image by SHA-256.
    #[serde(default)]
    pub sha256: Option<String>,
    /// Which devices.
    pub target_condition: String,
    /// Where devices fetch the image [default: the hub's own address].
    #[serde(default)]
    pub package_uri: Option<String>,
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
    /// [default: no limit].
    #[serde(default)]
    pub max_per_minute: Option<u32>,
    /// [default 1800].
    #[serde(default)]
    pub device_timeout_seconds: Option<u64>,
    /// [default 0].
    #[serde(default)]
    pub retries: Option<u32>,
    /// [default 60].
    #[serde(default)]
    pub soak_seconds: Option<u64>,
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

/// 404 for an unknown rollout.
pub(crate) fn not_found(id: &str) -> HubError {
    HubError::new(ErrorCode::IotHubNotFound, format!("Rollout {id} not found"))
}

fn internal(e: impl std::fmt::Display) -> HubError {
    HubError::internal(e.to_string())
}

/// The hub's clock, in the milliseconds `core::rollout` counts in.
fn now_ms() -> u64 {
    u64::try_from(crate::clock::now().unix_millis()).unwrap_or(0)
}

/// What the index and the live connections say about one device.
fn observe(doc: &Value, config_id: &str, connected: bool) -> Observation {
    let reported = &doc["properties"]["reported"];
    let fw = &reported["firmware"];
    let text = |v: &Value| v.as_str().map(str::to_owned);
    Observation {
        connected,
        reported_version: reported["$version"].as_i64().unwrap_or(0),
        status: text(&fw["fwUpdateStatus"]),
        substatus: text(&fw["fwUpdateSubstatus"]),
        current_version: text(&fw["currentFwVersion"]),
        applied: doc["configurations"][config_id]["status"] == "Applied",
    }
}

fn current_version(doc: &Value) -> Option<String> {
    doc["properties"]["reported"]["firmware"]["currentFwVersion"].as_str().map(str::to_owned)
}

/// The hub's rollouts and the task that moves them.
pub struct Rollouts {
    dir: PathBuf,
    registry: Registry,
    engine: Arc<Engine>,
    firmware: Arc<FirmwareStore>,
    /// `https://<host>[:<port>]`, where devices reach the hub.
    base_uri: String,
    rollouts: Mutex<BTreeMap<String, Rollout>>,
    /// Each rollout as `present(_, false)` shows it, refreshed on every
    /// save: readable without the async lock (live watchers render from it).
    summaries: std::sync::RwLock<HashMap<String, Value>>,
    /// Bumped whenever a rollout changes (for live watchers).
    changes: watch::Sender<u64>,
}

impl Rollouts {
    /// Loads `DIR/rollouts/*.json`, re-establishes each rollout's
    /// configurations and tags, and starts the tick.
    pub async fn start(
        data_dir: &Path,
        registry: Registry,
        engine: Arc<Engine>,
        firmware: Arc<FirmwareStore>,
        base_uri: String,
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
        let this = Arc::new(Self {
            dir,
            registry,
            engine,
            firmware,
            base_uri,
            rollouts: Mutex::new(BTreeMap::new()),
            summaries: std::sync::RwLock::new(HashMap::new()),
            changes: watch::Sender::new(0),
        });
        for rollout in rollouts.values() {
            this.publish(rollout);
        }
        *this.rollouts.lock().await = rollouts;
        {
            let map = this.rollouts.lock().await;
            for rollout in map.values().filter(|r| r.progress.state != RolloutState::Succeeded) {
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
                this.tick_all().await;
            }
        });
        Ok(this)
    }

    /// A receiver that sees a new value whenever any rollout changed.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.changes.subscribe()
    }

    fn save(&self, rollout: &Rollout) -> HubResult<()> {
        let bytes = serde_json::to_vec(rollout).map_err(internal)?;
        crate::fsutil::write_public(&self.dir.join(format!("{}.json", rollout.id)), &bytes)
            .map_err(internal)?;
        self.publish(rollout);
        Ok(())
    }

    fn publish(&self, rollout: &Rollout) {
        let summary = self.present(rollout, false);
        crate::sync::or_stop(self.summaries.write(), "rollout summaries").insert(rollout.id.clone(), summary);
        self.changes.send_modify(|n| *n = n.wrapping_add(1));
    }

    /// The latest summary of a rollout (no members), without waiting for a
    /// step in progress.
    pub fn summary(&self, id: &str) -> Option<Value> {
        crate::sync::or_stop(self.summaries.read(), "rollout summaries").get(id).cloned()
    }

    /// Makes sure the configurations exist and every member carries the tag
    /// its phase calls for (all idempotent).
    async fn establish(&self, rollout: &Rollout) -> HubResult<()> {
        if self.engine.get(&rollout.configuration_id).is_err() {
            let image = self.image(&rollout.sha256)?;
            self.create_configuration(rollout, &image).await?;
        }
        let tags = rollout.progress.members.iter().filter(|m| m.phase != Phase::Waiting).map(|m| {
            let wave = if m.phase == Phase::Retrying { None } else { Some(m.wave) };
            (m.device_id.clone(), wave)
        });
        self.tag_all(rollout, tags).await?;
        if rollout.progress.state == RolloutState::RolledBack {
            self.establish_rollback(rollout).await?;
        }
        Ok(())
    }

    fn image(&self, sha256: &str) -> HubResult<FirmwareImage> {
        self.firmware.get(sha256)?.ok_or_else(|| super::firmware::not_found(sha256))
    }

    async fn put_configuration(&self, id: &str, config: &Value) -> HubResult<()> {
        match self.engine.put(id, config, &IfMatch::Absent).await {
            Err(e) if e.code != ErrorCode::ConfigurationAlreadyExists => Err(e),
            _ => Ok(()),
        }
    }

    async fn create_configuration(&self, rollout: &Rollout, image: &FirmwareImage) -> HubResult<()> {
        let config = json!({
            "id": rollout.configuration_id,
            "content": {"deviceContent": {"properties.desired.firmware": image.desired_property(&rollout.package_uri)}},
            "targetCondition": format!("tags.ferrohubRollouts.[[{}]] >= 1", rollout.id),
            "priority": rollout.priority,
            "labels": {"ferrohubRollout": rollout.id},
            "metrics": {"queries": tutorial_metric_queries(&rollout.configuration_id, &rollout.version)},
        });
        self.put_configuration(&rollout.configuration_id, &config).await
    }

    /// Sets (`Some(wave)`) or clears a device's rollout tag.
    async fn tag(&self, rollout: &Rollout, device_id: &str, wave: Option<usize>) -> HubResult<()> {
        let patch = json!({"tags": {"ferrohubRollouts": {rollout.id.clone(): wave}}});
        self.patch_tags(device_id, &patch).await
    }

    /// Tags many devices at once, so their writes share group commits.
    async fn tag_all(
        &self,
        rollout: &Rollout,
        tags: impl Iterator<Item = (String, Option<usize>)>,
    ) -> HubResult<()> {
        let results: Vec<HubResult<()>> = futures_util::stream::iter(tags)
            .map(|(id, wave)| async move { self.tag(rollout, &id, wave).await })
            .buffer_unordered(TAG_CONCURRENTLY)
            .collect()
            .await;
        results.into_iter().collect()
    }

    async fn patch_tags(&self, device_id: &str, patch: &Value) -> HubResult<()> {
        match self.registry.patch_twin_unmetered(device_id, patch, &IfMatch::Any).await {
            Err(e) if e.code != ErrorCode::DeviceNotFound => Err(e),
            _ => Ok(()),
        }
    }

    /// The image a request names, by SHA-256 or by version (and type).
    fn select_image(&self, req: &RolloutRequest) -> HubResult<FirmwareImage> {
        if let Some(sha) = &req.sha256 {
            check_sha256(sha)?;
            return self.image(sha);
        }
        let Some(version) = &req.version else {
            return Err(HubError::invalid("Name the image by version or sha256"));
        };
        let found: Vec<FirmwareImage> = self
            .firmware
            .list()?
            .into_iter()
            .filter(|i| &i.manifest.version == version)
            .filter(|i| req.device_type.as_ref().is_none_or(|t| &i.manifest.device_type == t))
            .collect();
        match found.len() {
            0 => Err(HubError::new(
                ErrorCode::IotHubNotFound,
                format!("No firmware image has version {version}"),
            )),
            1 => Ok(found.into_iter().next().unwrap_or_else(|| unreachable!())),
            n => Err(HubError::invalid(format!(
                "{n} firmware images have version {version}; name the device type or the sha256"
            ))),
        }
    }

    /// `POST /firmware-rollouts`.
    pub async fn create(&self, body: &Value) -> HubResult<Value> {
        let req: RolloutRequest = serde_json::from_value(body.clone())
            .map_err(|e| HubError::format(format!("Invalid rollout: {e}")))?;
        check_id(&req.id)?;
        let policy = Policy {
            waves: req.waves.clone().unwrap_or_else(|| vec![10, 50, 100]),
            success_threshold: req.success_threshold.unwrap_or(90),
            failure_threshold: req.failure_threshold.unwrap_or(10),
            max_per_minute: req.max_per_minute.unwrap_or(0),
            device_timeout_seconds: req.device_timeout_seconds.unwrap_or(1800),
            retries: req.retries.unwrap_or(0),
            soak_seconds: req.soak_seconds.unwrap_or(60),
        };
        policy.validate()?;
        let image = self.select_image(&req)?;
        let sha256 = image.manifest.sha256.clone();
        let package_uri =
            req.package_uri.clone().unwrap_or_else(|| format!("{}/firmware/{sha256}", self.base_uri));
        if !package_uri.starts_with("https://") || !package_uri.ends_with(&format!("/firmware/{sha256}")) {
            return Err(HubError::invalid("packageUri must be an https URI ending in /firmware/<sha256>"));
        }
        let condition = Arc::new(
            ferrohub_query::parse_condition(&req.target_condition)
                .map_err(|e| HubError::invalid(format!("target condition: {}", e.message)))?,
        );
        let devices = self.matching(&condition, |_| true);
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
        let progress = Progress::new(&policy, devices);
        let mut rollout = Rollout {
            id: req.id.clone(),
            sha256,
            version: image.manifest.version.clone(),
            target_condition: req.target_condition,
            priority: req.priority.unwrap_or(20),
            package_uri,
            created_time: crate::clock::now().to_iso(),
            configuration_id,
            policy,
            progress,
            rollback: Vec::new(),
            cache: Cache { pacer: None, condition: Some(condition) },
        };
        self.save(&rollout)?;
        self.create_configuration(&rollout, &image).await?;
        tracing::info!(id = rollout.id, devices = rollout.progress.members.len(), "rollout created");
        // The first wave starts now rather than at the next tick.
        self.step(&mut rollout).await?;
        map.insert(rollout.id.clone(), rollout.clone());
        drop(map);
        Ok(self.present(&rollout, true))
    }

    /// `(device id, currentFwVersion)` of the twins matching a condition
    /// that `keep` accepts.
    fn matching(&self, condition: &Expr, keep: impl Fn(&str) -> bool) -> Vec<(String, Option<String>)> {
        let (docs, covered) = self.registry.index().candidates(Some(condition));
        docs.iter()
            .filter(|d| covered || ferrohub_query::matches(condition, d))
            .filter_map(|d| {
                d["deviceId"].as_str().filter(|id| keep(id)).map(|id| (id.to_owned(), current_version(d)))
            })
            .collect()
    }

    async fn tick_all(&self) {
        let mut map = self.rollouts.lock().await;
        for rollout in map.values_mut().filter(|r| r.progress.state.observes()) {
            if let Err(e) = self.step(rollout).await {
                tracing::warn!(id = rollout.id, %e, "rollout step failed");
            }
        }
    }

    /// One step: observe members, take in late joiners, decide, save, then
    /// tag and untag twins.
    async fn step(&self, rollout: &mut Rollout) -> HubResult<()> {
        let now = now_ms();
        let index = self.registry.index();
        let presence = self.registry.presence();
        let mut seen: HashMap<String, Observation> = HashMap::new();
        let mut changed = false;
        let mut withdraw = Vec::new();
        for i in 0..rollout.progress.members.len() {
            let id = rollout.progress.members[i].device_id.clone();
            let doc = index.get(&id);
            let o = doc.map(|d| observe(&d, &rollout.configuration_id, presence.is_connected(&id)));
            let (c, w) = rollout.progress.observe(i, o.as_ref(), &rollout.version, &rollout.policy, now);
            changed |= c;
            if w {
                withdraw.push(id.clone());
            }
            if let Some(o) = o {
                seen.insert(id, o);
            }
        }
        if matches!(rollout.progress.state, RolloutState::Running | RolloutState::Paused) {
            let condition = match &rollout.cache.condition {
                Some(c) => c.clone(),
                None => {
                    let c = Arc::new(
                        ferrohub_query::parse_condition(&rollout.target_condition)
                            .map_err(|e| HubError::invalid(e.message))?,
                    );
                    rollout.cache.condition = Some(c.clone());
                    c
                }
            };
            let members: std::collections::HashSet<&str> =
                rollout.progress.members.iter().map(|m| m.device_id.as_str()).collect();
            let joiners = self.matching(&condition, |id| !members.contains(id));
            drop(members);
            for (id, version) in joiners {
                tracing::info!(rollout = rollout.id, device = id, "device joined the rollout");
                if let Some(d) = index.get(&id) {
                    seen.insert(
                        id.clone(),
                        observe(&d, &rollout.configuration_id, presence.is_connected(&id)),
                    );
                }
                rollout.progress.join(id, version);
                changed = true;
            }
        }
        let policy = rollout.policy.clone();
        let pacer = rollout.cache.pacer.get_or_insert_with(|| Pacer::new(policy.max_per_minute));
        let step = rollout.progress.decide(&policy, pacer, now, &|id| seen.get(id).cloned());
        if changed || step.changed {
            let before = rollout.progress.state;
            self.save(rollout)?;
            if before != rollout.progress.state || step.changed {
                tracing::info!(id = rollout.id, wave = rollout.progress.current_wave, state = ?rollout.progress.state, "rollout stepped");
            }
        }
        let tags = withdraw
            .into_iter()
            .map(|id| (id, None))
            .chain(step.hand.into_iter().map(|(id, w)| (id, Some(w))));
        self.tag_all(rollout, tags).await
    }

    /// A rollout as the API shows it: its stored form plus counts per wave
    /// and in total; members only when asked for.
    fn present(&self, rollout: &Rollout, with_members: bool) -> Value {
        let (per_wave, total) = rollout.progress.tally(rollout.policy.waves.len());
        let mut v = serde_json::to_value(rollout).unwrap_or_default();
        let waves: Vec<Value> = per_wave
            .iter()
            .enumerate()
            .map(|(i, t)| {
                let mut w = serde_json::to_value(t).unwrap_or_default();
                w["wave"] = json!(i + 1);
                w["percent"] = json!(rollout.policy.waves[i]);
                w["started"] = json!(i < rollout.progress.current_wave);
                w
            })
            .collect();
        v["waveProgress"] = Value::Array(waves);
        v["totals"] = serde_json::to_value::<&Tally>(&total).unwrap_or_default();
        if !rollout.rollback.is_empty() {
            v["rollbackProgress"] = self.rollback_progress(rollout);
        }
        if let Some(obj) = v.as_object_mut() {
            if !with_members {
                obj.remove("members");
            }
        }
        v
    }

    /// Devices of each rollback group back at their version.
    fn rollback_progress(&self, rollout: &Rollout) -> Value {
        let index = self.registry.index();
        let mut done: BTreeMap<&str, u64> = BTreeMap::new();
        for m in &rollout.progress.members {
            let (Some(from), Some(doc)) = (&m.from_version, index.get(&m.device_id)) else { continue };
            let fw = &doc["properties"]["reported"]["firmware"];
            if m.phase != Phase::Waiting
                && fw["fwUpdateStatus"] == "current"
                && fw["currentFwVersion"] == from.as_str()
            {
                *done.entry(from.as_str()).or_default() += 1;
            }
        }
        rollout
            .rollback
            .iter()
            .map(|g| json!({"version": g.version, "devices": g.devices, "returned": done.get(g.version.as_str()).copied().unwrap_or(0)}))
            .collect()
    }

    /// `GET /firmware-rollouts/{id}`.
    pub async fn get(&self, id: &str, with_members: bool) -> HubResult<Value> {
        let map = self.rollouts.lock().await;
        let rollout = map.get(id).ok_or_else(|| not_found(id))?;
        Ok(self.present(rollout, with_members))
    }

    /// `GET /firmware-rollouts`.
    pub async fn list(&self) -> Vec<Value> {
        let map = self.rollouts.lock().await;
        map.values().map(|r| self.present(r, false)).collect()
    }

    /// The rollout using an image, if any (including rollback images).
    pub async fn references(&self, sha256: &str) -> Option<String> {
        let map = self.rollouts.lock().await;
        map.values()
            .find(|r| r.sha256 == sha256 || r.rollback.iter().any(|g| g.sha256 == sha256))
            .map(|r| r.id.clone())
    }

    /// `POST /firmware-rollouts/{id}/{action}`: pause, resume, cancel or
    /// rollback.
    pub async fn act(&self, id: &str, action: &str) -> HubResult<Value> {
        use RolloutState::*;
        let mut map = self.rollouts.lock().await;
        let rollout = map.get_mut(id).ok_or_else(|| not_found(id))?;
        let state = rollout.progress.state;
        let to = match (action, state) {
            ("pause", Running | Paused) => Paused,
            ("resume", Running | Paused) => Running,
            ("cancel", Running | Paused | Halted | Cancelled) => Cancelled,
            ("rollback", Running | Paused | Halted | Cancelled | Succeeded) => RolledBack,
            ("pause" | "resume" | "cancel" | "rollback", state) => {
                return Err(HubError::new(
                    ErrorCode::InvalidOperation,
                    format!("Cannot {action} a rollout that is {state:?}").to_lowercase(),
                ))
            }
            _ => return Err(HubError::new(ErrorCode::IotHubNotFound, format!("Unknown action {action}"))),
        };
        if state != to {
            let mut next = rollout.clone();
            next.progress.state = to;
            next.progress.reason = format!("{action} by an operator");
            if to == RolledBack {
                next.rollback = self.plan_rollback(&next)?;
            }
            self.save(&next)?;
            if to == RolledBack {
                self.establish_rollback(&next).await?;
            }
            *rollout = next;
            tracing::info!(id, state = ?to, "rollout state changed");
        }
        Ok(self.present(rollout, false))
    }

    /// `DELETE /firmware-rollouts/{id}`: a rollout that is not running or
    /// paused goes with its configurations and its tags. Devices keep the
    /// firmware they run; their desired `firmware` is handed back as for
    /// any deleted configuration. The file goes last, so a crash midway
    /// leaves a rollout that can be deleted again.
    pub async fn delete(&self, id: &str) -> HubResult<()> {
        let mut map = self.rollouts.lock().await;
        let rollout = map.get(id).ok_or_else(|| not_found(id))?;
        if matches!(rollout.progress.state, RolloutState::Running | RolloutState::Paused) {
            return Err(HubError::new(
                ErrorCode::InvalidOperation,
                format!("Rollout {id} is still going; cancel it before deleting it"),
            ));
        }
        let configs = std::iter::once(rollout.configuration_id.as_str())
            .chain(rollout.rollback.iter().map(|g| g.configuration_id.as_str()).filter(|c| !c.is_empty()));
        for config in configs {
            match self.engine.delete(config, &IfMatch::Any).await {
                Err(e) if e.code != ErrorCode::ConfigurationNotFound => return Err(e),
                _ => {}
            }
        }
        for m in rollout.progress.members.iter().filter(|m| m.phase != Phase::Waiting) {
            let patch = json!({"tags": {"ferrohubRollouts": {id: null}, "ferrohubRollbacks": {id: null}}});
            self.patch_tags(&m.device_id, &patch).await?;
        }
        match std::fs::remove_file(self.dir.join(format!("{id}.json"))) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(internal(e)),
            _ => {}
        }
        map.remove(id);
        crate::sync::or_stop(self.summaries.write(), "rollout summaries").remove(id);
        self.changes.send_modify(|n| *n = n.wrapping_add(1));
        tracing::info!(id, "rollout deleted");
        Ok(())
    }

    /// Groups the devices handed the update by the version they joined at,
    /// each with the image of that version (same device type preferred).
    fn plan_rollback(&self, rollout: &Rollout) -> HubResult<Vec<RollbackGroup>> {
        let mut counts: BTreeMap<&str, u64> = BTreeMap::new();
        for m in &rollout.progress.members {
            if let (true, Some(v)) = (m.phase != Phase::Waiting, m.from_version.as_deref()) {
                if v != rollout.version {
                    *counts.entry(v).or_default() += 1;
                }
            }
        }
        let images = self.firmware.list()?;
        let device_type = images
            .iter()
            .find(|i| i.manifest.sha256 == rollout.sha256)
            .map(|i| i.manifest.device_type.clone());
        Ok(counts
            .into_iter()
            .enumerate()
            .map(|(k, (version, devices))| {
                let mut same: Vec<&FirmwareImage> =
                    images.iter().filter(|i| i.manifest.version == version).collect();
                same.sort_by_key(|i| Some(&i.manifest.device_type) != device_type.as_ref());
                let sha256 = same.first().map(|i| i.manifest.sha256.clone()).unwrap_or_default();
                let configuration_id = if sha256.is_empty() {
                    String::new()
                } else {
                    format!("{}-back-{}", rollout.configuration_id, k + 1)
                };
                RollbackGroup { version: version.to_owned(), sha256, configuration_id, devices }
            })
            .collect())
    }

    /// Creates each rollback configuration and tags its devices.
    async fn establish_rollback(&self, rollout: &Rollout) -> HubResult<()> {
        for (k, group) in rollout.rollback.iter().enumerate() {
            if group.configuration_id.is_empty() {
                continue;
            }
            let image = self.image(&group.sha256)?;
            let uri = format!("{}/firmware/{}", self.base_uri, group.sha256);
            let config = json!({
                "id": group.configuration_id,
                "content": {"deviceContent": {"properties.desired.firmware": image.desired_property(&uri)}},
                "targetCondition": format!("tags.ferrohubRollbacks.[[{}]] = {}", rollout.id, k + 1),
                "priority": rollout.priority.saturating_add(1),
                "labels": {"ferrohubRollout": rollout.id},
                "metrics": {"queries": tutorial_metric_queries(&group.configuration_id, &group.version)},
            });
            self.put_configuration(&group.configuration_id, &config).await?;
            for m in &rollout.progress.members {
                if m.phase != Phase::Waiting && m.from_version.as_deref() == Some(group.version.as_str()) {
                    let patch = json!({"tags": {"ferrohubRollbacks": {rollout.id.clone(): k + 1}}});
                    self.patch_tags(&m.device_id, &patch).await?;
                }
            }
        }
        Ok(())
    }
}
