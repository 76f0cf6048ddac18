//! The hub core: every state change and every push, whatever transport
//! asked for it.
//!
//! [`Hub`] owns identities and twins ([`registry`]), live connections and
//! sessions ([`presence`], [`sessions`]), direct methods ([`methods`]),
//! cloud-to-device queues ([`c2d`]), telemetry ([`telemetry`]), the
//! configuration engine ([`configurations`]), firmware and rollouts, and
//! IoT Hub's operation throttles ([`throttle`]). The
//! transports — the REST API (`crate::api`), the MQTT endpoint
//! (`crate::mqtt`), and later AMQP — hold an `Arc<Hub>`, translate their
//! wire format into calls on it, and depend on nothing of one another. No
//! transport touches the store.
//!
//! Inside, dependencies point one way: the registry announces every
//! committed twin change on a [`registry::ChangeFeed`] that the engine
//! reads; the engine writes through the registry; rollouts use both.

pub mod activity;
pub mod auth;
pub mod bulk;
pub mod c2d;
pub mod configurations;
pub mod daily_meter;
pub mod firmware;
pub mod methods;
pub(crate) mod mint;
pub mod presence;
pub mod registry;
pub mod rollouts;
pub mod sessions;
pub(crate) mod store_error;
pub mod telemetry;
pub mod throttle;
pub(crate) mod twin_index;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use ferrohub_core::sas::{SasToken, SharedAccessPolicy};
use ferrohub_core::{ErrorCode, HubError, HubResult};
use ferrohub_store::Store;

/// What a hub is made of; [`Hub::open`] builds the rest.
pub struct HubConfig {
    /// The data dir (firmware images, rollouts).
    pub data_dir: PathBuf,
    /// Durable state.
    pub store: Arc<dyn Store>,
    /// Shared access policies.
    pub policies: Vec<SharedAccessPolicy>,
    /// Names tokens may give the hub (`sr` host part).
    pub host_names: Vec<String>,
    /// How often the configuration engine re-evaluates everything.
    pub full_pass: Duration,
    /// Where devices fetch hosted images (`https://host[:port]`).
    pub firmware_base_uri: String,
    /// How often rollouts step.
    pub rollout_step: Duration,
    /// What the firmware image store accepts.
    pub firmware_limits: firmware::FirmwareLimits,
    /// The throttles' limits (default: none).
    pub quotas: ferrohub_core::throttle::Quotas,
    /// The daily message quota (default: none), counted in the data dir.
    pub daily_quota: Option<ferrohub_core::daily_quota::DailyQuota>,
}

/// One hub node's core. Transports hold it in an `Arc`.
pub struct Hub {
    /// Identities and twins.
    pub registry: registry::Registry,
    /// Live connections of this node.
    pub presence: Arc<presence::Presence>,
    /// `lastActivityTime`, flushed at most once a minute per device.
    pub activity: Arc<activity::Activity>,
    /// SAS verification.
    pub auth: auth::Authorizer,
    /// `policies.json`, written when a policy's keys are renewed.
    pub policy_file: crate::policies::PolicyFile,
    /// Persistent sessions and the connect/disconnect bookkeeping.
    pub sessions: sessions::Sessions,
    /// Direct-method calls waiting for devices.
    pub methods: methods::PendingMethods,
    /// Recent and live telemetry.
    pub telemetry: telemetry::Telemetry,
    /// Cloud-to-device queues and the feedback queue.
    pub c2d: Arc<c2d::CloudToDevice>,
    /// Automatic device configurations.
    pub engine: Arc<configurations::Engine>,
    /// Firmware images and the signing key.
    pub firmware: Arc<firmware::FirmwareStore>,
    /// Staged firmware rollouts.
    pub rollouts: Arc<rollouts::Rollouts>,
    /// IoT Hub's operation throttles and how often each refused.
    pub throttles: Arc<throttle::Throttles>,
    /// HTTP request counts and durations for `/metrics`.
    pub http_metrics: crate::metrics::HttpMetrics,
}

impl Hub {
    /// Builds a hub over `config.store`: loads the twins and
    /// configurations, starts the engine and the rollouts. Whatever was
    /// connected when the hub last stopped is recorded disconnected.
    pub async fn open(config: HubConfig) -> anyhow::Result<Arc<Self>> {
        let presence = Arc::new(presence::Presence::default());
        let daily = daily_meter::DailyMeter::open(&config.data_dir, config.daily_quota)?;
        let throttles = Arc::new(throttle::Throttles::new(config.quotas).with_daily(daily));
        throttle::Throttles::spawn_daily_persister(Arc::downgrade(&throttles));
        let (registry, changes) = registry::Registry::new(config.store.clone(), presence.clone());
        let registry = registry.with_throttles(throttles.clone());
        let engine = configurations::Engine::start(registry.clone(), changes, config.full_pass).await?;
        let firmware = Arc::new(firmware::FirmwareStore::open(&config.data_dir, config.firmware_limits)?);
        let rollouts = rollouts::Rollouts::start(
            &config.data_dir,
            registry.clone(),
            engine.clone(),
            firmware.clone(),
            config.firmware_base_uri,
            config.rollout_step,
        )
        .await?;
        let c2d = c2d::CloudToDevice::open(config.store.clone(), presence.clone(), throttles.clone()).await?;
        let activity = Arc::new(activity::Activity::new(registry.clone()));
        let sessions = sessions::Sessions::new(
            config.store,
            registry.clone(),
            presence.clone(),
            c2d.clone(),
            activity.clone(),
        );
        Ok(Arc::new(Self {
            sessions,
            activity,
            c2d,
            registry,
            presence,
            auth: auth::Authorizer::new(config.policies, config.host_names),
            policy_file: crate::policies::PolicyFile::new(&config.data_dir),
            methods: methods::PendingMethods::new(throttles.clone()),
            telemetry: telemetry::Telemetry::new(throttles.clone()),
            engine,
            firmware,
            rollouts,
            throttles,
            http_metrics: crate::metrics::HttpMetrics::default(),
        }))
    }
}

impl Hub {
    /// Checks a token that acts for a device — its own key, or a policy with
    /// DeviceConnect covering it — as HTTPS device calls, firmware downloads
    /// and the device HTTPS API present it. With `for_device`, the token
    /// must cover that device; without, the device is the one its `sr`
    /// names. Returns the device id. Every refusal, an unknown or disabled
    /// device included, is 401 IotHubUnauthorizedAccess, so a caller learns
    /// nothing about which ids exist.
    pub async fn authenticate_device(
        &self,
        token: Option<&str>,
        for_device: Option<&str>,
    ) -> HubResult<String> {
        let token = token.ok_or_else(|| HubError::unauthorized("A device SAS token is required"))?;
        let device_id = match for_device {
            Some(id) => id.to_owned(),
            None => {
                let parsed = SasToken::parse(token)?;
                let (id, _) = parsed
                    .device_identity()
                    .ok_or_else(|| HubError::unauthorized("The token names no device"))?;
                id.to_owned()
            }
        };
        let device = match self.registry.get_device(&device_id).await {
            Ok(d) => d,
            Err(e) if e.code == ErrorCode::DeviceNotFound => {
                return Err(HubError::unauthorized("The token does not grant access to this device"))
            }
            Err(e) => return Err(e),
        };
        self.auth.authorize_device(token, &device)?;
        Ok(device_id)
    }
}
