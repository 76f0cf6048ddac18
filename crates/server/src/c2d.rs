//! Cloud-to-device messages: queued durably per device, delivered over MQTT.

use ferrohub_core::message::{CloudToDeviceMessage, MAX_C2D_QUEUE};
use ferrohub_core::{HubError, HubResult};
use ferrohub_store::StoreError;

use crate::clock;
use crate::presence::Outbound;
use crate::registry::Registry;
use ferrohub_mqtt::topic::Subscription;

/// Queues a message for a device (403 when 50 are already waiting) and
/// tells its connection, if any.
pub async fn send(registry: &Registry, device_id: &str, message: &CloudToDeviceMessage) -> HubResult<()> {
    let text = serde_json::to_string(message).map_err(|e| HubError::internal(e.to_string()))?;
    let now = clock::unix_seconds();
    registry
        .store()
        .enqueue_c2d(device_id, message.expiry.unix_seconds(), text, MAX_C2D_QUEUE, now)
        .await
        .map_err(|e| match e {
            StoreError::NotFound => HubError::device_not_found(device_id),
            e => crate::registry::store_error(e, device_id),
        })?;
    let delivery = registry.presence().send(device_id, Subscription::C2d, Outbound::C2dAvailable);
    tracing::debug!(device_id, ?delivery, "cloud-to-device message queued");
    Ok(())
}
