//! Direct methods: a service call waits here for the device's reply.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use ferrohub_core::{ErrorCode, HubError, HubResult};
use serde_json::Value;
use tokio::sync::oneshot;

use super::presence::{Delivery, Outbound, Presence};
use super::throttle::Throttles;
use ferrohub_core::daily_quota::Metered;
use ferrohub_core::throttle::{method_cost, Class};
use ferrohub_mqtt::topic::Subscription;

/// A device's answer: its status and payload (any JSON, or null).
#[derive(Debug, Clone, PartialEq)]
pub struct MethodReply {
    /// The status the device chose.
    pub status: i64,
    /// The device's payload, passed through unchanged.
    pub payload: Value,
}

/// Calls in flight, by device and request id.
#[derive(Default)]
pub struct PendingMethods {
    waiting: Mutex<HashMap<(String, String), oneshot::Sender<MethodReply>>>,
    next_rid: AtomicU64,
    /// The direct-method throttle, metered in 4 KB steps of payload.
    throttles: Arc<Throttles>,
}

/// Azure's bounds on the two timeouts of a method call, in seconds.
pub const RESPONSE_TIMEOUT_RANGE: (u64, u64) = (5, 300);
/// Connect timeout bounds.
pub const CONNECT_TIMEOUT_RANGE: (u64, u64) = (0, 300);

fn not_online(device_id: &str) -> HubError {
    HubError::new(ErrorCode::DeviceNotOnline, format!("The device {device_id} is not online"))
}

impl PendingMethods {
    /// No calls yet; each call is checked against `throttles`.
    pub fn new(throttles: Arc<Throttles>) -> Self {
        Self { throttles, ..Self::default() }
    }

    /// Delivers a device's reply; false if nobody waits for it (late or
    /// unknown rid).
    pub fn complete(&self, device_id: &str, rid: &str, reply: MethodReply) -> bool {
        let waiter = self.lock().remove(&(device_id.to_owned(), rid.to_owned()));
        waiter.is_some_and(|tx| tx.send(reply).is_ok())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<(String, String), oneshot::Sender<MethodReply>>> {
        // One insert or remove per section.
        crate::sync::consistent(self.waiting.lock(), "pending method calls")
    }

    /// Invokes `name` on the device: waits up to `connect_timeout` for it to
    /// be online with a method subscription, then up to `response_timeout`
    /// for its reply.
    pub async fn invoke(
        &self,
        presence: &Presence,
        device_id: &str,
        name: &str,
        payload: &Value,
        response_timeout: Duration,
        connect_timeout: Duration,
    ) -> HubResult<MethodReply> {
        let body = Bytes::from(payload.to_string());
        self.throttles.check(Class::Method, method_cost(body.len()))?;
        self.throttles.meter(Metered::Message, body.len())?;
        let rid = format!("{:x}", self.next_rid.fetch_add(1, Ordering::Relaxed) + 1);
        let (tx, rx) = oneshot::channel();
        let key = (device_id.to_owned(), rid.clone());
        self.lock().insert(key.clone(), tx);
        let result =
            self.call(presence, device_id, name, &rid, body, rx, response_timeout, connect_timeout).await;
        self.lock().remove(&key);
        // The response counts as messages of its own.
        if let Ok(reply) = &result {
            self.throttles.meter_done(Metered::Message, reply.payload.to_string().len());
        }
        result
    }

    #[allow(clippy::too_many_arguments)]
    async fn call(
        &self,
        presence: &Presence,
        device_id: &str,
        name: &str,
        rid: &str,
        body: Bytes,
        rx: oneshot::Receiver<MethodReply>,
        response_timeout: Duration,
        connect_timeout: Duration,
    ) -> HubResult<MethodReply> {
        let deadline = tokio::time::Instant::now() + connect_timeout;
        loop {
            // Register interest before looking, so a connect in between is
            // not missed.
            let changed = presence.changed();
            let msg = Outbound::Method { name: name.to_owned(), rid: rid.to_owned(), payload: body.clone() };
            if presence.send(device_id, Subscription::Methods, msg) == Delivery::Queued {
                break;
            }
            if tokio::time::timeout_at(deadline, changed).await.is_err() {
                return Err(not_online(device_id));
            }
        }
        match tokio::time::timeout(response_timeout, rx).await {
            Ok(Ok(reply)) => Ok(reply),
            Ok(Err(_)) => Err(not_online(device_id)),
            Err(_) => Err(HubError::new(
                ErrorCode::GatewayTimeout,
                format!("The device {device_id} did not answer the method {name} in time"),
            )),
        }
    }
}
