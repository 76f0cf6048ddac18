//! Bulk registry operations (`POST /devices`): up to 100 identities created,
//! updated or deleted in one request, each reported on its own.
//!
//! Decision: like Azure, the batch is not atomic — each entry commits or
//! fails by itself, and the result lists the failures. The request is
//! validated as a whole first (size, duplicates, modes), so a malformed batch
//! changes nothing.

use std::collections::HashSet;

use ferrohub_core::identity::{AuthenticationRequest, Capabilities, DeviceRequest, DeviceStatus};
use ferrohub_core::{ErrorCode, HubError, HubResult};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use super::registry::Registry;
use ferrohub_core::precondition::IfMatch;

/// Azure's limit on identities per bulk request.
pub const MAX_BULK: usize = 100;

/// One entry of a bulk request (Azure's `ExportImportDevice`).
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ExportImportDevice {
    /// The device id (Node renames `deviceId` to `id`; accept both).
    #[serde(alias = "deviceId")]
    pub id: String,
    /// Identity etag for the *IfMatchETag modes.
    #[serde(default, rename = "eTag", alias = "etag")]
    pub e_tag: Option<String>,
    /// What to do; compared case-insensitively.
    pub import_mode: String,
    /// Identity fields.
    #[serde(default)]
    pub status: Option<DeviceStatus>,
    /// Identity fields.
    #[serde(default)]
    pub status_reason: Option<String>,
    /// Identity fields.
    #[serde(default)]
    pub authentication: Option<AuthenticationRequest>,
    /// Identity fields.
    #[serde(default)]
    pub capabilities: Option<Capabilities>,
    /// Twin etag for updateTwinIfMatchETag.
    #[serde(default, rename = "twinETag")]
    pub twin_etag: Option<String>,
    /// Twin tags to apply.
    #[serde(default)]
    pub tags: Option<Value>,
    /// Twin properties (`{"desired":{...}}`) to apply.
    #[serde(default)]
    pub properties: Option<Value>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Create,
    Update,
    UpdateIfMatchETag,
    Delete,
    DeleteIfMatchETag,
    UpdateTwin,
    UpdateTwinIfMatchETag,
}

fn parse_mode(text: &str) -> Option<Mode> {
    Some(match text.to_ascii_lowercase().as_str() {
        "create" => Mode::Create,
        "update" => Mode::Update,
        "updateifmatchetag" => Mode::UpdateIfMatchETag,
        "delete" => Mode::Delete,
        "deleteifmatchetag" => Mode::DeleteIfMatchETag,
        "updatetwin" => Mode::UpdateTwin,
        "updatetwinifmatchetag" => Mode::UpdateTwinIfMatchETag,
        _ => return None,
    })
}

/// Azure's `BulkRegistryOperationResult`.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct BulkResult {
    /// True when every entry succeeded.
    pub is_successful: bool,
    /// One per failed entry.
    pub errors: Vec<Value>,
    /// Unused; always empty.
    pub warnings: Vec<Value>,
}

fn etag_precondition(etag: &Option<String>) -> HubResult<IfMatch> {
    match etag.as_deref().map(|e| e.trim_matches('"')) {
        Some(e) if !e.is_empty() => Ok(IfMatch::Etag(e.to_owned())),
        _ => Err(HubError::invalid("This import mode requires an eTag")),
    }
}

/// Validates the whole batch, then applies each entry.
pub async fn apply(registry: &Registry, items: Vec<ExportImportDevice>) -> HubResult<BulkResult> {
    if items.is_empty() {
        return Err(HubError::invalid("The bulk request holds no devices"));
    }
    if items.len() > MAX_BULK {
        return Err(HubError::new(
            ErrorCode::TooManyDevices,
            format!("A bulk request may hold at most {MAX_BULK} devices; this one holds {}", items.len()),
        ));
    }
    let mut seen = HashSet::new();
    let mut modes = Vec::with_capacity(items.len());
    for item in &items {
        ferrohub_core::identity::validate_device_id(&item.id)?;
        if !seen.insert(item.id.as_str()) {
            return Err(HubError::new(
                ErrorCode::DeviceDefinedMultipleTimes,
                format!("The device '{}' appears more than once in the request", item.id),
            ));
        }
        let mode = parse_mode(&item.import_mode)
            .ok_or_else(|| HubError::invalid(format!("Unknown importMode '{}'", item.import_mode)))?;
        modes.push(mode);
    }
    let mut errors = Vec::new();
    for (item, mode) in items.into_iter().zip(modes) {
        if let Err(e) = apply_one(registry, &item, mode).await {
            errors.push(json!({
                "deviceId": item.id,
                "errorCode": e.code.name(),
                "errorStatus": e.message,
                "operation": item.import_mode,
            }));
        }
    }
    Ok(BulkResult { is_successful: errors.is_empty(), errors, warnings: Vec::new() })
}

fn identity_request(item: &ExportImportDevice) -> DeviceRequest {
    DeviceRequest {
        device_id: Some(item.id.clone()),
        status: item.status,
        status_reason: item.status_reason.clone(),
        authentication: item.authentication.clone(),
        capabilities: item.capabilities.clone(),
    }
}

fn twin_patch(item: &ExportImportDevice) -> Option<Value> {
    let desired = item.properties.as_ref().and_then(|p| p.get("desired")).cloned();
    if item.tags.is_none() && desired.is_none() {
        return None;
    }
    let mut patch = serde_json::Map::new();
    if let Some(t) = &item.tags {
        patch.insert("tags".into(), t.clone());
    }
    if let Some(d) = desired {
        patch.insert("properties".into(), json!({ "desired": d }));
    }
    Some(Value::Object(patch))
}

async fn apply_one(registry: &Registry, item: &ExportImportDevice, mode: Mode) -> HubResult<()> {
    match mode {
        Mode::Create => {
            registry.create_device(&item.id, identity_request(item), twin_patch(item).as_ref()).await?;
        }
        Mode::Update | Mode::UpdateIfMatchETag => {
            let cond = if mode == Mode::Update { IfMatch::Any } else { etag_precondition(&item.e_tag)? };
            registry.update_device(&item.id, identity_request(item), &cond).await?;
        }
        Mode::Delete | Mode::DeleteIfMatchETag => {
            let cond = if mode == Mode::Delete { IfMatch::Any } else { etag_precondition(&item.e_tag)? };
            registry.delete_device(&item.id, &cond).await?;
        }
        Mode::UpdateTwin | Mode::UpdateTwinIfMatchETag => {
            let cond =
                if mode == Mode::UpdateTwin { IfMatch::Any } else { etag_precondition(&item.twin_etag)? };
            let patch = twin_patch(item).unwrap_or_else(|| json!({}));
            registry.patch_twin_unmetered(&item.id, &patch, &cond).await?;
        }
    }
    Ok(())
}
