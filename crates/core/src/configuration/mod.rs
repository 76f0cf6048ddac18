//! Automatic device configurations: the `Configuration` object with Azure's
//! validation and update rules, and the rule deciding which configuration
//! writes which desired property of a twin ([`apply_configurations`]).
//!
//! Query and condition syntax is checked by the caller through
//! [`QueryChecks`]; this module only knows the shapes Azure documents.
//!
//! Decisions where the reference leaves room (each pinned by a test):
//! - **Id**: 1–128 characters from lowercase ASCII letters, digits and
//!   `- : + % _ # * ? ! ( ) , = @ ; '` — the set the hub itself names in its
//!   error text; current docs name a subset, older docs a blacklist; `.` is
//!   refused (reported as invalid by the portal). 400 ArgumentInvalid.
//! - **Labels**: keys 1–128, values 0–128 ASCII letters, digits and
//!   `- : . + % _ # * ? ! ( ) , = @ ; '` (so `$` is refused); values must be
//!   strings. 400 ArgumentInvalid.
//! - **Priority**: an integer 0 ..= 2^31−1; absent or `null` is 0 (SDKs send
//!   0 when unset, so "positive" is read as "not negative"). 400
//!   ArgumentInvalid.
//! - **schemaVersion**: absent or empty becomes `"1.0"` (what the Node SDK
//!   fills in); otherwise stored as sent; never changed by an update.
//! - **Content**: exactly one of `deviceContent` / `moduleContent` must hold
//!   settings (an empty object or `null` counts as absent); a non-empty
//!   `modulesContent` (IoT Edge) is refused. Paths and values follow
//!   [`DeviceContent::parse`]. All 400 InvalidConfigurationContent. Content
//!   is stored and returned exactly as sent. `moduleContent` is validated
//!   the same way and targets nothing until module twins exist.
//! - **Target condition**: absent or empty is accepted and targets no twin
//!   (az's rule for deployments without a condition); `*` targets every
//!   device; anything else goes to [`QueryChecks::target_condition`]. A
//!   module configuration must use `FROM devices.modules …` (`*` refused);
//!   only that shape is checked. 400 InvalidConfigurationTargetCondition.
//! - **Custom metrics**: at most 5; names follow the label-key rules; each
//!   query must be a non-empty string accepted by
//!   [`QueryChecks::metric_query`]. 400 InvalidConfigurationCustomMetricsQuery.
//!   `results` sent by a client are ignored; both result maps start empty
//!   and are the engine's to fill.
//! - **systemMetrics.queries** are filled in by the hub:
//!   `targetedCount` = `select deviceId from devices where <condition>`
//!   (`select deviceId from devices` for `*`, left out for an empty
//!   condition), `appliedCount` = `select deviceId from devices where
//!   configurations.[[<id>]].status = 'Applied'` (module configurations:
//!   `select deviceId, moduleId …` over `devices.modules`). Azure's exact text
//!   is unverified.
//! - **Update**: only `targetCondition`, `priority`, `labels` and
//!   `metrics.queries` change; a field left out (or `null`) keeps its value;
//!   `content` left out is fine, a different one is 400
//!   CannotModifyImmutableConfigurationContent (compared as JSON, key order
//!   and empty/absent parts aside); `schemaVersion` and read-only fields in
//!   the body are ignored. Metric results survive for metrics whose query
//!   text is unchanged. An update that changes nothing keeps the etag and
//!   `lastUpdatedTimeUtc`. The If-Match precondition is the caller's.
//! - **Count**: at most [`MAX_CONFIGURATIONS`] (100, a paid hub's limit),
//!   checked by [`check_count`]; 413 ConfigurationCountLimitExceeded.

mod apply;
mod content;
mod rules;

#[cfg(test)]
mod tests;

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;

pub use apply::{apply_configurations, content_digest, ConfigStatus, Evaluation, TargetingConfig};
pub use content::{DeviceContent, Setting, DESIRED_PREFIX};
pub use rules::{
    validate_configuration_id, validate_labels, validate_metric_queries, validate_priority,
    MAX_CONFIGURATIONS, MAX_CUSTOM_METRICS, MAX_ID_LEN, MAX_LABEL_LEN, MAX_METRIC_NAME_LEN, MAX_PRIORITY,
};

use crate::error::{ErrorCode, HubError, HubResult};
use crate::time::Timestamp;
use crate::twin::Props;

/// The `schemaVersion` a configuration gets when none is sent.
pub const DEFAULT_SCHEMA_VERSION: &str = "1.0";

/// A configuration as stored and returned (`GET /configurations/{id}`).
/// Field names and order are Azure's.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Configuration {
    /// The id (see [`validate_configuration_id`]).
    pub id: String,
    /// As sent, `"1.0"` by default.
    pub schema_version: String,
    /// Descriptive key/value pairs; no effect on behaviour.
    pub labels: BTreeMap<String, String>,
    /// What the configuration writes, as sent.
    pub content: ConfigurationContent,
    /// Which twins it targets (empty: none; `*`: all devices).
    pub target_condition: String,
    /// When it was created; breaks priority ties (later wins).
    pub created_time_utc: Timestamp,
    /// When it last changed.
    pub last_updated_time_utc: Timestamp,
    /// Higher wins.
    pub priority: i64,
    /// `targetedCount` / `appliedCount`, computed by the hub.
    pub system_metrics: ConfigurationMetrics,
    /// Custom metrics: queries as sent, results computed by the hub.
    pub metrics: ConfigurationMetrics,
    /// Changes on every accepted change.
    pub etag: String,
}

/// `content`: exactly one of the parts holds settings.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ConfigurationContent {
    /// Device twin settings: `properties.desired.…` path → value.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device_content: Option<Props>,
    /// Module twin settings, same form (stored; targets nothing yet).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub module_content: Option<Props>,
    /// IoT Edge deployments: refused unless empty.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub modules_content: Option<Props>,
}

impl ConfigurationContent {
    /// The parts that hold something (an empty object counts as absent), for
    /// comparing contents regardless of how "nothing" was spelled.
    fn normalized(&self) -> [Option<&Props>; 3] {
        fn part(p: &Option<Props>) -> Option<&Props> {
            p.as_ref().filter(|p| !p.is_empty())
        }
        [part(&self.device_content), part(&self.module_content), part(&self.modules_content)]
    }
}

/// `metrics` / `systemMetrics`.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ConfigurationMetrics {
    /// Metric name → number of rows its query returns.
    #[serde(default)]
    pub results: Props,
    /// Metric name → query text (strings), in the order sent.
    #[serde(default)]
    pub queries: Props,
}

impl ConfigurationMetrics {
    /// The queries as `(name, text)`.
    pub fn query_iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.queries.iter().filter_map(|(k, v)| Some((k.as_str(), v.as_str()?)))
    }

    /// Sets one result.
    pub fn set_result(&mut self, name: &str, count: i64) {
        self.results.insert(name.to_owned(), Value::from(count));
    }
}

/// Whether a configuration targets device twins or module twins.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConfigurationKind {
    /// `deviceContent`: targets device twins.
    Device,
    /// `moduleContent`: targets module twins.
    Module,
}

/// The body of `PUT /configurations/{id}` as clients send it: every field
/// optional, read-only fields (`etag`, times, results, `systemMetrics`)
/// ignored.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ConfigurationRequest {
    /// Must equal the id in the path when present and non-empty.
    #[serde(default)]
    pub id: Option<String>,
    /// `"1.0"` when absent (create only).
    #[serde(default)]
    pub schema_version: Option<String>,
    /// String values only.
    #[serde(default)]
    pub labels: Option<Props>,
    /// Required on create; on update must equal the stored content if sent.
    #[serde(default)]
    pub content: Option<ConfigurationContent>,
    /// See [`QueryChecks`].
    #[serde(default)]
    pub target_condition: Option<String>,
    /// Any JSON, checked by [`validate_priority`].
    #[serde(default)]
    pub priority: Option<Value>,
    /// Only `queries` is read.
    #[serde(default)]
    pub metrics: Option<MetricsRequest>,
}

/// `metrics` as sent.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct MetricsRequest {
    /// Name → query text.
    #[serde(default)]
    pub queries: Option<Props>,
}

impl ConfigurationRequest {
    /// Reads a request body; a body of the wrong shape is 400
    /// IotHubFormatError.
    pub fn from_json(body: &Value) -> HubResult<Self> {
        if !body.is_object() {
            return Err(HubError::format("The configuration body must be a JSON object"));
        }
        serde_json::from_value(body.clone())
            .map_err(|e| HubError::format(format!("Invalid configuration: {e}")))
    }
}

/// The query-language checks this module needs; `Err` carries the parser's
/// message.
pub struct QueryChecks<'a> {
    /// A device target condition (a WHERE expression without `SELECT`/`FROM`).
    /// Never called for an empty condition or `*`.
    pub target_condition: &'a dyn Fn(&str) -> Result<(), String>,
    /// A full custom metric query (`SELECT deviceId FROM devices WHERE …`).
    pub metric_query: &'a dyn Fn(&str) -> Result<(), String>,
}

/// 404 ConfigurationNotFound.
pub fn not_found(id: &str) -> HubError {
    HubError::new(ErrorCode::ConfigurationNotFound, format!("Configuration {id} not found"))
}

/// 409 ConfigurationAlreadyExists.
pub fn already_exists(id: &str) -> HubError {
    HubError::new(ErrorCode::ConfigurationAlreadyExists, format!("Configuration {id} already exists"))
}

/// Refuses a create when the hub already holds `existing` configurations and
/// that is the limit: 413 ConfigurationCountLimitExceeded.
pub fn check_count(existing: usize) -> HubResult<()> {
    if existing >= MAX_CONFIGURATIONS {
        return Err(HubError::new(
            ErrorCode::ConfigurationCountLimitExceeded,
            format!("The hub already holds {existing} configurations; the limit is {MAX_CONFIGURATIONS}"),
        ));
    }
    Ok(())
}

fn check_body_id(path_id: &str, req: &ConfigurationRequest) -> HubResult<()> {
    match req.id.as_deref() {
        Some(body_id) if !body_id.is_empty() && body_id != path_id => Err(HubError::invalid(format!(
            "The id in the body ({body_id}) does not match the one in the path ({path_id})"
        ))),
        _ => Ok(()),
    }
}

/// Validates content for a create and says what kind of configuration it
/// makes.
fn validate_content(content: &ConfigurationContent) -> HubResult<ConfigurationKind> {
    let invalid = |m: &str| HubError::new(ErrorCode::InvalidConfigurationContent, m);
    let [device, module, modules] = content.normalized();
    if modules.is_some() {
        return Err(invalid(
            "modulesContent (IoT Edge deployments) is not supported by this hub; use deviceContent",
        ));
    }
    match (device, module) {
        (Some(device), None) => DeviceContent::parse(device).map(|_| ConfigurationKind::Device),
        (None, Some(module)) => DeviceContent::parse(module).map(|_| ConfigurationKind::Module),
        (Some(_), Some(_)) => {
            Err(invalid("A configuration has either deviceContent or moduleContent, not both"))
        }
        (None, None) => Err(invalid("The configuration content must set deviceContent (or moduleContent)")),
    }
}

fn is_module_query(condition: &str) -> bool {
    let lower = condition.trim_start().to_ascii_lowercase();
    lower.strip_prefix("from").is_some_and(|rest| {
        rest.starts_with(char::is_whitespace) && rest.trim_start().starts_with("devices.modules")
    })
}

fn validate_condition(condition: &str, kind: ConfigurationKind, checks: &QueryChecks<'_>) -> HubResult<()> {
    let invalid = |m: String| HubError::new(ErrorCode::InvalidConfigurationTargetCondition, m);
    let trimmed = condition.trim();
    if trimmed.is_empty() {
        return Ok(());
    }
    match kind {
        ConfigurationKind::Device if trimmed == "*" => Ok(()),
        ConfigurationKind::Device => (checks.target_condition)(condition)
            .map_err(|e| invalid(format!("The target condition is invalid: {e}"))),
        ConfigurationKind::Module if is_module_query(condition) => Ok(()),
        ConfigurationKind::Module => Err(invalid(
            "A module configuration's target condition must be a query 'FROM devices.modules WHERE ...'"
                .into(),
        )),
    }
}

/// The hub-filled `systemMetrics.queries`.
fn system_queries(id: &str, condition: &str, kind: ConfigurationKind) -> Props {
    let mut out = Props::new();
    let trimmed = condition.trim();
    let (select, from) = match kind {
        ConfigurationKind::Device => ("select deviceId", "from devices"),
        ConfigurationKind::Module => ("select deviceId, moduleId", "from devices.modules"),
    };
    let targeted = match kind {
        _ if trimmed.is_empty() => None,
        ConfigurationKind::Device if trimmed == "*" => Some(format!("{select} {from}")),
        ConfigurationKind::Device => Some(format!("{select} {from} where {trimmed}")),
        ConfigurationKind::Module => Some(format!("{select} {trimmed}")),
    };
    if let Some(q) = targeted {
        out.insert("targetedCount".to_owned(), Value::String(q));
    }
    out.insert(
        "appliedCount".to_owned(),
        Value::String(format!("{select} {from} where configurations.[[{id}]].status = 'Applied'")),
    );
    out
}

impl Configuration {
    /// A new configuration from a create request (`PUT` without If-Match).
    /// `now` and `etag` come from the caller; both metric result maps start
    /// empty. Existence and the count limit are the caller's checks.
    pub fn create(
        path_id: &str,
        req: ConfigurationRequest,
        now: Timestamp,
        etag: String,
        checks: &QueryChecks<'_>,
    ) -> HubResult<Self> {
        validate_configuration_id(path_id)?;
        check_body_id(path_id, &req)?;
        let labels = validate_labels(&req.labels.unwrap_or_default())?;
        let content = req.content.unwrap_or_default();
        let kind = validate_content(&content)?;
        let priority = validate_priority(req.priority.as_ref().unwrap_or(&Value::Null))?;
        let target_condition = req.target_condition.unwrap_or_default();
        validate_condition(&target_condition, kind, checks)?;
        let queries = req.metrics.and_then(|m| m.queries).unwrap_or_default();
        validate_metric_queries(&queries, checks.metric_query)?;
        let schema_version =
            req.schema_version.filter(|v| !v.is_empty()).unwrap_or_else(|| DEFAULT_SCHEMA_VERSION.to_owned());
        Ok(Self {
            system_metrics: ConfigurationMetrics {
                results: Props::new(),
                queries: system_queries(path_id, &target_condition, kind),
            },
            id: path_id.to_owned(),
            schema_version,
            labels,
            content,
            target_condition,
            created_time_utc: now,
            last_updated_time_utc: now,
            priority,
            metrics: ConfigurationMetrics { results: Props::new(), queries },
            etag,
        })
    }

    /// This configuration updated by a request (`PUT` with If-Match, checked
    /// by the caller). See the module documentation for what may change.
    pub fn updated(
        &self,
        req: ConfigurationRequest,
        now: Timestamp,
        etag: String,
        checks: &QueryChecks<'_>,
    ) -> HubResult<Self> {
        check_body_id(&self.id, &req)?;
        if let Some(content) = &req.content {
            if content.normalized() != self.content.normalized() {
                return Err(HubError::new(
                    ErrorCode::CannotModifyImmutableConfigurationContent,
                    format!(
                        "The content of configuration {} cannot be changed; create a new configuration",
                        self.id
                    ),
                ));
            }
        }
        let kind = self.kind();
        let mut next = self.clone();
        if let Some(labels) = &req.labels {
            next.labels = validate_labels(labels)?;
        }
        if let Some(priority) = &req.priority {
            next.priority = validate_priority(priority)?;
        }
        if let Some(condition) = req.target_condition {
            validate_condition(&condition, kind, checks)?;
            next.system_metrics.queries = system_queries(&self.id, &condition, kind);
            next.target_condition = condition;
        }
        if let Some(queries) = req.metrics.and_then(|m| m.queries) {
            validate_metric_queries(&queries, checks.metric_query)?;
            next.metrics.results = self
                .metrics
                .results
                .iter()
                .filter(|(name, _)| {
                    self.metrics.queries.get(*name).is_some_and(|q| queries.get(*name) == Some(q))
                })
                .map(|(name, v)| (name.clone(), v.clone()))
                .collect();
            next.metrics.queries = queries;
        }
        if next != *self {
            next.last_updated_time_utc = now;
            next.etag = etag;
        }
        Ok(next)
    }

    /// Device or module configuration (by which content part holds settings).
    pub fn kind(&self) -> ConfigurationKind {
        match self.content.normalized() {
            [None, Some(_), _] => ConfigurationKind::Module,
            _ => ConfigurationKind::Device,
        }
    }

    /// Whether the content names `needle` anywhere (e.g. a firmware image's
    /// hash in `fwPackageCheckValue` or its URI).
    pub fn content_mentions(&self, needle: &str) -> bool {
        serde_json::to_string(&self.content).is_ok_and(|s| s.contains(needle))
    }

    /// Whether the target condition is empty, so the configuration targets no
    /// twin at all.
    pub fn targets_nothing(&self) -> bool {
        self.target_condition.trim().is_empty()
    }

    /// Whether the target condition is `*` (every device).
    pub fn targets_all(&self) -> bool {
        self.target_condition.trim() == "*"
    }

    /// The parsed `deviceContent` (empty for a module configuration). Stored
    /// configurations passed validation, so this fails only on damaged data.
    pub fn device_content(&self) -> HubResult<DeviceContent> {
        match (self.kind(), &self.content.device_content) {
            (ConfigurationKind::Device, Some(content)) => DeviceContent::parse(content),
            _ => Ok(DeviceContent::default()),
        }
    }

    /// This configuration as a [`TargetingConfig`] over its parsed content.
    pub fn targeting<'a>(&'a self, content: &'a DeviceContent) -> TargetingConfig<'a> {
        TargetingConfig { id: &self.id, priority: self.priority, created: self.created_time_utc, content }
    }
}

/// The body of `POST /configurations/testQueries`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TestQueriesRequest {
    /// A device target condition.
    #[serde(default)]
    pub target_condition: Option<String>,
    /// Metric name → query.
    #[serde(default)]
    pub custom_metric_queries: Option<Props>,
}

/// The answer of `POST /configurations/testQueries`: empty strings mean
/// valid.
#[derive(Debug, Clone, PartialEq, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct TestQueriesResult {
    /// Why the condition is invalid, or `""`.
    pub target_condition_error: String,
    /// Per metric: why its query is invalid, or `""`.
    pub custom_metric_query_errors: BTreeMap<String, String>,
}

/// Checks a condition and metric queries without creating anything, by the
/// same rules as a device configuration (an empty condition and `*` are
/// valid; a metric query must be a non-empty string).
pub fn test_queries(req: &TestQueriesRequest, checks: &QueryChecks<'_>) -> TestQueriesResult {
    let condition = req.target_condition.as_deref().unwrap_or_default();
    let target_condition_error = match validate_condition(condition, ConfigurationKind::Device, checks) {
        Ok(()) => String::new(),
        Err(e) => e.message,
    };
    let custom_metric_query_errors = req
        .custom_metric_queries
        .iter()
        .flatten()
        .map(|(name, query)| {
            let error = match query.as_str() {
                Some(q) if !q.trim().is_empty() => (checks.metric_query)(q).err().unwrap_or_default(),
                _ => "The query must be a non-empty string".to_owned(),
            };
            (name.clone(), error)
        })
        .collect();
    TestQueriesResult { target_condition_error, custom_metric_query_errors }
}
