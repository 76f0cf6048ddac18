//! Carrying out the session's cloud-to-device actions against the hub's
//! queue. The window, packet ids and "only while subscribed" are the
//! session's (`ferrohub_mqtt::session`); here a fetch locks messages to the
//! connection and a PUBACK completes one. Un-acknowledged messages go back
//! to the queue when the connection ends, counted in their delivery count
//! (MQTT devices cannot reject or abandon).

use bytes::Bytes;
use ferrohub_core::message::CloudToDeviceMessage;
use ferrohub_mqtt::bag::{format_bag, AppProperties, SystemProperties};
use ferrohub_mqtt::C2dMessage;

use crate::hub::sessions::DeviceConnection;

/// Up to `max` more messages, each locked to this connection until its
/// PUBACK; the connection's end releases the rest (`DeviceConnection`'s
/// drop). A queue that cannot be read sends nothing now: the next PUBACK
/// or queued message tries again.
pub(crate) async fn fetch(conn: &DeviceConnection, max: usize) -> Vec<C2dMessage> {
    let device_id = conn.device_id();
    let locked = match conn.lock_c2d(max).await {
        Ok(l) => l,
        Err(e) => {
            tracing::warn!(%e, "cannot read the cloud-to-device queue");
            return Vec::new();
        }
    };
    locked
        .into_iter()
        .map(|queued| {
            tracing::debug!(seq = queued.seq, "cloud-to-device message sent");
            let m = queued.message;
            let bag = format_bag(&system_properties(device_id, &m), &app_properties(&m));
            C2dMessage { seq: queued.seq, bag, body: Bytes::from(m.body) }
        })
        .collect()
}

/// A PUBACK: completes the message.
pub(crate) async fn complete(conn: &DeviceConnection, seq: i64) {
    tracing::debug!(seq, "cloud-to-device message acknowledged");
    match conn.complete_c2d(seq).await {
        Ok(true) => {}
        Ok(false) => tracing::debug!(seq, "acknowledged after it expired"),
        Err(e) => tracing::warn!(%e, seq, "cannot complete a delivered message"),
    }
}

fn system_properties(device_id: &str, m: &CloudToDeviceMessage) -> SystemProperties {
    SystemProperties {
        message_id: Some(m.message_id.clone()),
        correlation_id: m.correlation_id.clone(),
        user_id: m.user_id.clone(),
        to: Some(format!("/devices/{device_id}/messages/deviceBound")),
        absolute_expiry_time: Some(m.expiry.to_iso()),
        content_type: m.content_type.clone(),
        content_encoding: m.content_encoding.clone(),
        ..Default::default()
    }
}

fn app_properties(m: &CloudToDeviceMessage) -> AppProperties {
    m.properties.iter().map(|(k, v)| (k.clone(), Some(v.clone()))).collect()
}
