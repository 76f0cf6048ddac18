//! Delivering a device's queued cloud-to-device messages over its
//! connection: QoS 1, a small window in flight, each locked to the
//! connection and completed by PUBACK. Un-acknowledged messages go back to
//! the queue when the connection ends, counted in their delivery count
//! (MQTT devices cannot reject or abandon).

use bytes::Bytes;
use ferrohub_core::message::CloudToDeviceMessage;
use ferrohub_mqtt::bag::{format_bag, AppProperties, SystemProperties};
use ferrohub_mqtt::topic;
use ferrohub_mqtt::v4::Publish;
use ferrohub_mqtt::QoS;

use crate::hub::Hub;

/// Messages sent and not yet acknowledged, at most.
const WINDOW: usize = 8;

pub(crate) struct C2dDelivery {
    device_id: String,
    /// The connection's lock token: what it holds is locked under it.
    connection_token: String,
    /// (packet id, queue seq) of messages in flight.
    inflight: Vec<(u16, i64)>,
    next_pkid: u16,
}

impl C2dDelivery {
    pub(crate) fn new(device_id: String, connection_token: String) -> Self {
        Self { device_id, connection_token, inflight: Vec::new(), next_pkid: 0 }
    }

    fn pkid(&mut self) -> u16 {
        // Packet ids are 1..=65535 and must not collide with one in flight.
        loop {
            self.next_pkid = self.next_pkid.wrapping_add(1).max(1);
            if !self.inflight.iter().any(|(p, _)| *p == self.next_pkid) {
                return self.next_pkid;
            }
        }
    }

    /// The next messages to send, filling the window. Each is locked to
    /// this connection until its PUBACK; the connection's end releases the
    /// rest (`DeviceConnection`'s drop).
    pub(crate) async fn next_batch(&mut self, hub: &Hub) -> Vec<Publish> {
        let room = WINDOW.saturating_sub(self.inflight.len());
        if room == 0 {
            return Vec::new();
        }
        let locked = match hub.c2d.lock_for_connection(&self.device_id, &self.connection_token, room).await {
            Ok(p) => p,
            Err(e) => {
                tracing::warn!(%e, "cannot read the cloud-to-device queue");
                return Vec::new();
            }
        };
        let mut out = Vec::with_capacity(locked.len());
        for queued in locked {
            let pkid = self.pkid();
            self.inflight.push((pkid, queued.seq));
            tracing::debug!(seq = queued.seq, pkid, "cloud-to-device message sent");
            let message = queued.message;
            let bag = format_bag(&system_properties(&self.device_id, &message), &app_properties(&message));
            let mut publish = Publish::from_bytes(
                topic::c2d(&self.device_id, &bag),
                QoS::AtLeastOnce,
                Bytes::from(message.body),
            );
            publish.pkid = pkid;
            out.push(publish);
        }
        out
    }

    /// A PUBACK: completes the message. True if it freed room in the window.
    pub(crate) async fn acked(&mut self, hub: &Hub, pkid: u16) -> bool {
        let Some(i) = self.inflight.iter().position(|(p, _)| *p == pkid) else { return false };
        let (_, seq) = self.inflight.swap_remove(i);
        tracing::debug!(seq, pkid, "cloud-to-device message acknowledged");
        match hub.c2d.complete_for_connection(&self.device_id, &self.connection_token, seq).await {
            Ok(true) => {}
            Ok(false) => tracing::debug!(seq, "acknowledged after it expired"),
            Err(e) => tracing::warn!(%e, seq, "cannot complete a delivered message"),
        }
        true
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
