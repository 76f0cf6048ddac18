//! The configuration engine: automatic device configurations applied the
//! moment something changes, with their metrics kept current.
//!
//! - Configuration writes (create, update, delete) store the configuration,
//!   then re-evaluate every twin (a configuration can gain or lose any twin).
//! - Twin and registry changes (tags, reported properties, service writes to
//!   desired, device created) re-evaluate only that twin: the registry sends
//!   the device id on a channel, and one worker task drains it.
//! - An evaluation is `core::configuration::apply_configurations` under the
//!   device's write lock: only values that differ are written, ownership is
//!   kept in the twin's `$metadata` (`$lastUpdatedBy`), so evaluating twice,
//!   or again after a restart, changes nothing. A configuration that was
//!   half-applied when the process died is completed by the full pass at
//!   start.
//! - Metrics (targeted, applied, custom queries) are counted over all twins
//!   after each batch of evaluations and served from memory.
//! - A periodic full pass (default 5 minutes) catches anything missed.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use ferrohub_core::configuration::{
    self, apply_configurations, Configuration, ConfigurationRequest, DeviceContent, QueryChecks,
    TestQueriesRequest, TestQueriesResult,
};
use ferrohub_core::identity::ConnectionState;
use ferrohub_core::{HubError, HubResult};
use ferrohub_query::{Expr, Query};
use ferrohub_store::StoreError;
use futures_util::StreamExt as _;
use serde_json::Value;
use tokio::sync::{mpsc, watch};

use super::mint::new_etag;
use super::registry::{ChangeFeed, DeviceChanged, Registry};
use super::store_error::Entity;
use crate::clock;
use ferrohub_core::precondition::IfMatch;

/// What the worker is asked to do.
#[derive(Debug)]
pub(crate) enum Work {
    /// Re-evaluate one device.
    Device(String),
    /// Re-evaluate every device.
    All,
}

/// How a configuration selects twins.
enum Target {
    Nothing,
    All,
    Where(Expr),
}

/// A configuration with its parsed parts.
struct Loaded {
    config: Configuration,
    revision: i64,
    content: DeviceContent,
    target: Target,
    metrics: Vec<(String, Query)>,
}

impl Loaded {
    fn new(config: Configuration, revision: i64) -> HubResult<Self> {
        let content = config.device_content()?;
        let target = if config.kind() != configuration::ConfigurationKind::Device || config.targets_nothing()
        {
            Target::Nothing
        } else if config.targets_all() {
            Target::All
        } else {
            Target::Where(
                ferrohub_query::parse_condition(&config.target_condition)
                    .map_err(|e| HubError::internal(format!("stored target condition: {e}")))?,
            )
        };
        let metrics = config
            .metrics
            .query_iter()
            .filter_map(|(name, q)| ferrohub_query::parse_query(q).ok().map(|q| (name.to_owned(), q)))
            .collect();
        Ok(Self { config, revision, content, target, metrics })
    }

    fn targets(&self, twin: &Value) -> bool {
        match &self.target {
            Target::Nothing => false,
            Target::All => true,
            Target::Where(e) => ferrohub_query::matches(e, twin),
        }
    }
}

/// Metric results of one configuration.
#[derive(Debug, Clone, Default)]
struct Counts {
    targeted: i64,
    applied: i64,
    custom: BTreeMap<String, i64>,
}

impl Counts {
    /// Adds (`sign` 1) or removes (`sign` -1) one twin's contribution.
    fn add(&mut self, c: &Loaded, doc: &Value, sign: i64) {
        if c.targets(doc) {
            self.targeted += sign;
        }
        if doc["configurations"][&c.config.id]["status"] == "Applied" {
            self.applied += sign;
        }
        for (name, query) in &c.metrics {
            if query.row_matches(doc) {
                *self.custom.entry(name.clone()).or_default() += sign;
            }
        }
    }
}

/// Devices evaluated at the same time in one burst.
const EVALUATE_CONCURRENTLY: usize = 512;

/// The engine of one hub.
pub struct Engine {
    registry: Registry,
    configs: RwLock<BTreeMap<String, Arc<Loaded>>>,
    counts: RwLock<HashMap<String, Counts>>,
    work: mpsc::UnboundedSender<Work>,
    /// Bumped whenever metric counts or the set of configurations may have
    /// changed, so live views (`GET /configurations/{id}/watch`) re-render
    /// instead of polling. A watch channel: bumping never blocks and slow
    /// readers only ever see the latest value.
    generation: watch::Sender<u64>,
}

/// Records per page when the index is filled at start.
const LOAD_PAGE: usize = 16_384;

/// Fills the twin index from the store page by page: one task reads and
/// decodes the next page while the current one is rendered (on every core),
/// and no more than a few pages of records are held at once.
///
/// Devices stored as connected (the hub stopped while they were) are
/// loaded as disconnected, and only then are their stored states reset:
/// the common case (none) costs no second pass over the table.
async fn load_index(registry: &Registry) -> anyhow::Result<()> {
    let (tx, mut rx) = mpsc::channel(2);
    let store = registry.store().clone();
    let reader = tokio::spawn(async move {
        let mut after: Option<String> = None;
        loop {
            let page = store.devices_after(after.as_deref(), LOAD_PAGE).await;
            let last = match &page {
                Ok(p) if p.len() == LOAD_PAGE => p.last().map(|r| r.device.device_id.clone()),
                _ => None,
            };
            if tx.send(page).await.is_err() {
                return;
            }
            match last {
                Some(id) => after = Some(id),
                None => return,
            }
        }
    });
    let started = std::time::Instant::now();
    let (mut twins, mut connected) = (0, 0);
    while let Some(page) = rx.recv().await {
        let mut page = page.map_err(|e| anyhow::anyhow!("loading twins: {e}"))?;
        twins += page.len();
        for r in &mut page {
            if r.device.connection_state == ConnectionState::Connected {
                r.device.connection_state = ConnectionState::Disconnected;
                connected += 1;
            }
        }
        let index = registry.index().clone();
        tokio::task::spawn_blocking(move || index.load(page)).await??;
    }
    reader.await?;
    if connected > 0 {
        registry
            .store()
            .disconnect_all()
            .await
            .map_err(|e| anyhow::anyhow!("resetting connection states: {e}"))?;
    }
    tracing::info!(twins, connected, ms = started.elapsed().as_millis() as u64, "twin index loaded");
    Ok(())
}

/// Runs `f` with the query language's syntax checks. A plain function, so
/// the (non-Send) checker references never live across an await.
fn with_checks<T>(f: impl FnOnce(&QueryChecks<'_>) -> T) -> T {
    let condition = |c: &str| ferrohub_query::parse_condition(c).map(drop).map_err(|e| e.message);
    let metric = |q: &str| ferrohub_query::parse_query(q).map(drop).map_err(|e| e.message);
    f(&QueryChecks { target_condition: &condition, metric_query: &metric })
}

fn store_error(e: StoreError, id: &str) -> HubError {
    super::store_error::store_error(e, Entity::Configuration(id))
}

impl Engine {
    /// Loads the stored configurations and starts the worker, which first
    /// runs a full pass (completing anything half-applied before a crash)
    /// and then one every `full_pass`.
    pub async fn start(
        registry: Registry,
        changes: ChangeFeed,
        full_pass: Duration,
    ) -> anyhow::Result<Arc<Self>> {
        let (tx, rx) = mpsc::unbounded_channel();
        let engine = Arc::new(Self {
            registry: registry.clone(),
            configs: RwLock::new(BTreeMap::new()),
            counts: RwLock::new(HashMap::new()),
            work: tx.clone(),
            generation: watch::Sender::new(0),
        });
        for stored in registry.store().list_configurations().await.map_err(|e| anyhow::anyhow!("{e}"))? {
            let config: Configuration = serde_json::from_str(&stored.document)?;
            let loaded =
                Loaded::new(config, stored.revision).map_err(|e| anyhow::anyhow!("{}", e.message))?;
            engine.configs_mut().insert(stored.id.clone(), Arc::new(loaded));
        }
        load_index(&registry).await?;
        let weak = Arc::downgrade(&engine);
        registry.index().set_observer(Arc::new(move |old, new| {
            if let Some(engine) = weak.upgrade() {
                engine.observe(old, new);
            }
        }));
        engine.recount();
        let _ = tx.send(Work::All);
        tokio::spawn(engine.clone().run(rx, changes, full_pass));
        Ok(engine)
    }

    fn configs_mut(&self) -> std::sync::RwLockWriteGuard<'_, BTreeMap<String, Arc<Loaded>>> {
        crate::sync::or_stop(self.configs.write(), "configurations")
    }

    fn snapshot(&self) -> Vec<Arc<Loaded>> {
        crate::sync::or_stop(self.configs.read(), "configurations").values().cloned().collect()
    }

    async fn run(
        self: Arc<Self>,
        mut rx: mpsc::UnboundedReceiver<Work>,
        mut changes: ChangeFeed,
        full_pass: Duration,
    ) {
        let mut timer = tokio::time::interval_at(tokio::time::Instant::now() + full_pass, full_pass);
        loop {
            let first = tokio::select! {
                w = rx.recv() => match w { Some(w) => w, None => return },
                Some(DeviceChanged(d)) = changes.recv() => Work::Device(d),
                _ = timer.tick() => Work::All,
            };
            // Take everything queued so far: one pass per burst.
            let mut all = matches!(first, Work::All);
            let mut devices = BTreeSet::new();
            if let Work::Device(d) = first {
                devices.insert(d);
            }
            while let Ok(w) = rx.try_recv() {
                match w {
                    Work::All => all = true,
                    Work::Device(d) => {
                        devices.insert(d);
                    }
                }
            }
            while let Ok(DeviceChanged(d)) = changes.try_recv() {
                devices.insert(d);
            }
            if all {
                devices.extend(self.registry.index().ids());
            }
            let configs = self.snapshot();
            // Many devices at once: their writes share the store's group
            // commits (one at a time, each would wait for its own fsync).
            futures_util::stream::iter(&devices)
                .for_each_concurrent(EVALUATE_CONCURRENTLY, |device_id| {
                    let (engine, configs) = (&*self, &configs);
                    async move {
                        if let Err(e) = engine.evaluate(device_id, configs).await {
                            if e.code != ferrohub_core::ErrorCode::DeviceNotFound {
                                tracing::warn!(device_id, %e, "configuration evaluation failed");
                            }
                        }
                    }
                })
                .await;
            if all {
                // Deltas keep the counts current; a full pass also recounts,
                // as a safety net.
                self.recount();
            }
        }
    }

    /// Applies the configurations that target one twin.
    async fn evaluate(&self, device_id: &str, configs: &[Arc<Loaded>]) -> HubResult<()> {
        self.registry
            .evaluate_twin(device_id, |twin, device| {
                let doc = twin.to_json(device);
                let targeting: Vec<_> = configs
                    .iter()
                    .filter(|c| c.targets(&doc))
                    .map(|c| c.config.targeting(&c.content))
                    .collect();
                Ok(apply_configurations(twin, &targeting, clock::now())?.change)
            })
            .await
    }

    /// Counts every configuration's metrics over all twins, with no twin
    /// changing meanwhile (so the deltas that follow line up).
    fn recount(&self) {
        let configs = self.snapshot();
        self.registry.index().with_all(|docs| {
            let mut counts: HashMap<String, Counts> = configs
                .iter()
                .map(|c| {
                    // Every metric starts at 0, so a configuration that
                    // targets nothing still shows each of its metrics.
                    let custom = c.metrics.iter().map(|(name, _)| (name.clone(), 0)).collect();
                    (c.config.id.clone(), Counts { custom, ..Counts::default() })
                })
                .collect();
            for doc in docs {
                for c in &configs {
                    if let Some(n) = counts.get_mut(&c.config.id) {
                        n.add(c, doc, 1);
                    }
                }
            }
            *crate::sync::or_stop(self.counts.write(), "configuration metrics") = counts;
        });
        self.changed();
    }

    /// Tells live views that counts or configurations may have changed.
    fn changed(&self) {
        // send_modify notifies even with no receiver and never waits.
        self.generation.send_modify(|g| *g = g.wrapping_add(1));
    }

    /// A receiver that wakes whenever metric counts or the configurations
    /// may have changed (its value is only a counter).
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.generation.subscribe()
    }

    /// One twin changed from `old` to `new` (either may be absent): move the
    /// counts by the difference. Called under the index lock.
    fn observe(&self, old: Option<&Value>, new: Option<&Value>) {
        let configs = self.snapshot();
        let mut counts = crate::sync::or_stop(self.counts.write(), "configuration metrics");
        for c in &configs {
            if let Some(n) = counts.get_mut(&c.config.id) {
                if let Some(old) = old {
                    n.add(c, old, -1);
                }
                if let Some(new) = new {
                    n.add(c, new, 1);
                }
            }
        }
        drop(counts);
        self.changed();
    }

    /// A configuration with its current metric results.
    fn present(&self, loaded: &Loaded) -> Configuration {
        let mut config = loaded.config.clone();
        if let Some(n) = crate::sync::or_stop(self.counts.read(), "configuration metrics").get(&config.id) {
            config.system_metrics.set_result("targetedCount", n.targeted);
            config.system_metrics.set_result("appliedCount", n.applied);
            for (name, count) in &n.custom {
                config.metrics.set_result(name, *count);
            }
        }
        config
    }

    fn loaded(&self, id: &str) -> HubResult<Arc<Loaded>> {
        crate::sync::or_stop(self.configs.read(), "configurations")
            .get(id)
            .cloned()
            .ok_or_else(|| configuration::not_found(id))
    }

    /// `GET /configurations/{id}`.
    pub fn get(&self, id: &str) -> HubResult<Configuration> {
        let loaded = self.loaded(id)?;
        Ok(self.present(&loaded))
    }

    /// `GET /configurations[?top=n]`.
    pub fn list(&self, top: Option<i64>) -> Vec<Configuration> {
        let top = match top {
            Some(n) if n > 0 => n as usize,
            _ => usize::MAX,
        };
        self.snapshot().iter().take(top).map(|l| self.present(l)).collect()
    }

    /// Creates (no If-Match) or updates a configuration, then re-evaluates
    /// every twin.
    pub async fn put(&self, id: &str, body: &Value, if_match: &IfMatch) -> HubResult<Configuration> {
        let req = ConfigurationRequest::from_json(body)?;
        let store = self.registry.store();
        let loaded = match if_match {
            IfMatch::Absent => {
                let config =
                    with_checks(|checks| Configuration::create(id, req, clock::now(), new_etag(), checks))?;
                let doc = serde_json::to_string(&config).map_err(|e| HubError::internal(e.to_string()))?;
                store
                    .create_configuration(id, doc, configuration::MAX_CONFIGURATIONS)
                    .await
                    .map_err(|e| store_error(e, id))?;
                Loaded::new(config, 1)?
            }
            cond => {
                let current = self.loaded(id)?;
                if let IfMatch::Etag(e) = cond {
                    if *e != current.config.etag {
                        return Err(HubError::precondition_failed());
                    }
                }
                let config =
                    with_checks(|checks| current.config.updated(req, clock::now(), new_etag(), checks))?;
                if config == current.config {
                    return Ok(self.present(&current));
                }
                let doc = serde_json::to_string(&config).map_err(|e| HubError::internal(e.to_string()))?;
                store
                    .update_configuration(id, doc, current.revision)
                    .await
                    .map_err(|e| store_error(e, id))?;
                Loaded::new(config, current.revision + 1)?
            }
        };
        let loaded = Arc::new(loaded);
        self.configs_mut().insert(id.to_owned(), loaded.clone());
        self.recount();
        let _ = self.work.send(Work::All);
        tracing::info!(id, "configuration stored");
        Ok(self.present(&loaded))
    }

    /// Deletes a configuration; its settings leave the twins it held and the
    /// next-priority configuration takes over.
    pub async fn delete(&self, id: &str, if_match: &IfMatch) -> HubResult<()> {
        let current = self.loaded(id)?;
        if let IfMatch::Etag(e) = if_match {
            if *e != current.config.etag {
                return Err(HubError::precondition_failed());
            }
        }
        self.registry.store().delete_configuration(id).await.map_err(|e| store_error(e, id))?;
        self.configs_mut().remove(id);
        crate::sync::or_stop(self.counts.write(), "configuration metrics").remove(id);
        self.changed();
        let _ = self.work.send(Work::All);
        tracing::info!(id, "configuration deleted");
        Ok(())
    }

    /// `POST /configurations/testQueries`.
    pub fn test_queries(&self, body: &Value) -> HubResult<TestQueriesResult> {
        let req: TestQueriesRequest = serde_json::from_value(body.clone())
            .map_err(|e| HubError::format(format!("Invalid body: {e}")))?;
        Ok(with_checks(|checks| configuration::test_queries(&req, checks)))
    }

    /// Rows of a query over every twin (for `POST /devices/query`), from
    /// the in-memory documents.
    pub fn query(&self, query: &Query) -> HubResult<ferrohub_query::QueryResult> {
        if counts_only(query) {
            if let Some(n) = self.registry.index().count_covered(query.filter.as_ref()) {
                // The posting lists decide the WHERE clause and the rows
                // themselves are never read: count without touching them.
                let unfiltered = Query { filter: None, ..query.clone() };
                let blank = Value::Null;
                return ferrohub_query::execute(&unfiltered, std::iter::repeat_n(&blank, n))
                    .map_err(|e| HubError::invalid(e.message));
            }
        }
        let (docs, covered) = self.registry.index().candidates(query.filter.as_ref());
        let result = if covered {
            // The index answered the WHERE clause exactly: don't evaluate it
            // again (this is what keeps a COUNT over a large fleet cheap).
            let unfiltered = Query { filter: None, ..query.clone() };
            ferrohub_query::execute(&unfiltered, docs.iter().map(|d| d.as_ref()))
        } else {
            ferrohub_query::execute(query, docs.iter().map(|d| d.as_ref()))
        };
        result.map_err(|e| HubError::invalid(e.message))
    }
}

/// True for `SELECT COUNT() [, COUNT() …] FROM devices [WHERE …]` without
/// GROUP BY: its answer depends only on how many rows pass the WHERE clause.
fn counts_only(query: &Query) -> bool {
    use ferrohub_query::{Aggregate, Collection, Select, SelectExpr};
    query.from == Collection::Devices
        && query.group_by.is_empty()
        && matches!(&query.select, Select::Items(items) if !items.is_empty()
            && items.iter().all(|i| matches!(i.expr, SelectExpr::Aggregate(Aggregate::Count))))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use ferrohub_core::identity::{Device, DeviceRequest, Minted};
    use ferrohub_core::time::Timestamp;
    use ferrohub_core::twin::TwinState;
    use ferrohub_store::{DeviceRecord, SqliteStore, Store};

    fn record(id: &str, state: ConnectionState) -> DeviceRecord {
        let now = Timestamp::from_unix_nanos(1_700_000_000_000_000_000);
        let mut key = || "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=".to_owned();
        let mut device = Device::create(
            id,
            DeviceRequest::default(),
            Minted { now, etag: "MQ==".into(), generation_id: "1".into(), new_key: &mut key },
        )
        .unwrap();
        device.connection_state = state;
        DeviceRecord { device, twin: TwinState::new(now), revision: 1 }
    }

    /// Devices stored as connected start disconnected, in the store and in
    /// the index; every stored twin is loaded.
    #[tokio::test]
    async fn start_loads_every_twin_and_resets_connection_states() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(&dir.path().join("hub.db")).unwrap();
        let mut records: Vec<_> =
            (0..LOAD_PAGE + 10).map(|i| record(&format!("d{i:06}"), ConnectionState::Disconnected)).collect();
        records[3] = record("d000003", ConnectionState::Connected);
        records[LOAD_PAGE + 5] = record(&format!("d{:06}", LOAD_PAGE + 5), ConnectionState::Connected);
        store.create_devices_bulk(&records).await.unwrap();
        let (registry, changes) = Registry::new(Arc::new(store.clone()), Arc::default());
        let _engine = Engine::start(registry.clone(), changes, Duration::from_secs(3600)).await.unwrap();
        assert_eq!(registry.index().ids().len(), LOAD_PAGE + 10);
        for id in ["d000003".to_owned(), format!("d{:06}", LOAD_PAGE + 5), "d000004".to_owned()] {
            assert_eq!(registry.index().get(&id).unwrap()["connectionState"], "Disconnected", "{id}");
            let stored = store.get_device(&id).await.unwrap().unwrap();
            assert_eq!(stored.device.connection_state, ConnectionState::Disconnected, "{id}");
        }
    }
}
