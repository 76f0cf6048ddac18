//! The client handle, the state it shares with its connection task, and
//! the application-facing streams.
//!
//! Design: one tokio task per client (see `driver.rs`) owns the rumqttc
//! event loop of the current connection and polls it; handles never wait on
//! it. Operations are recorded in [`State::ops`] (the source of truth) and
//! handed straight to the current connection's rumqttc request channel when
//! there is one; when a connection is lost, every unfinished operation is
//! sent again on the next one. A fresh rumqttc event loop is built for each
//! connection, so nothing stale (packet ids, acks) crosses connections.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use rumqttc::{AsyncClient, Publish, QoS};
use serde_json::Value;
use tokio::sync::{mpsc, oneshot, watch, Notify};

use crate::driver::{self, Config};
use crate::message::MAX_MESSAGE_SIZE;
use crate::{C2dMessage, DesiredUpdate, DeviceOptions, Error, Message, Result};
use ferrohub_mqtt::device as topic;

/// A device's twin as the device sees it: its desired and reported
/// properties, each with its `$version`.
#[derive(Debug, Clone, PartialEq)]
pub struct Twin {
    /// Desired properties (set by the back end), including `$version`.
    pub desired: Value,
    /// Reported properties (set by the device), including `$version`.
    pub reported: Value,
}

impl Twin {
    /// The desired properties' `$version`.
    pub fn desired_version(&self) -> Option<i64> {
        self.desired.get("$version").and_then(Value::as_i64)
    }

    /// The reported properties' `$version`.
    pub fn reported_version(&self) -> Option<i64> {
        self.reported.get("$version").and_then(Value::as_i64)
    }
}

/// Where the client's connection stands; watch it with
/// [`DeviceClient::status`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConnectionStatus {
    /// Before the first connection is established.
    Connecting,
    /// Connected; operations flow.
    Connected {
        /// Counts connections: 1 for the first, +1 per reconnect (including
        /// token renewals).
        generation: u64,
        /// The hub's CONNACK session-present flag: it kept this device's
        /// session (subscriptions, queued messages) from before.
        session_present: bool,
    },
    /// The connection was lost; the client is reconnecting.
    Disconnected {
        /// Why the last connection ended or the last attempt failed.
        reason: String,
    },
    /// [`DeviceClient::close`] was called or the client was dropped.
    Closed,
}

/// A direct-method call from the back end. Answer it with
/// [`MethodRequest::respond`]; the invoker waits for that answer until its
/// response timeout.
pub struct MethodRequest {
    /// The method name.
    pub name: String,
    /// The hub's request id, echoed in the response.
    pub rid: String,
    /// The invoker's payload (`Null` when the body was empty; a string
    /// holding the text if it was not JSON).
    pub payload: Value,
    shared: Arc<Shared>,
}

impl std::fmt::Debug for MethodRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MethodRequest")
            .field("name", &self.name)
            .field("rid", &self.rid)
            .field("payload", &self.payload)
            .finish_non_exhaustive()
    }
}

impl MethodRequest {
    /// Answers the call with `status` (any integer; 200 means success by
    /// convention) and `payload`, which the invoker receives unchanged.
    ///
    /// The answer goes out on the current connection. If the client is
    /// disconnected it fails with [`Error::NotConnected`]: the hub has
    /// already given up on this call.
    pub async fn respond(self, status: i32, payload: Value) -> Result<()> {
        let body = serde_json::to_vec(&payload).map_err(|e| Error::Config(e.to_string()))?;
        let client = self.shared.current_client()?;
        client
            .publish(topic::method_response(status, &self.rid), QoS::AtMostOnce, false, body)
            .await
            .map_err(|_| Error::NotConnected)
    }
}

/// The stream of direct-method calls; from [`DeviceClient::method_requests`].
/// While it is alive, calls queue here; once it is dropped, calls are
/// answered with status 501.
#[derive(Debug)]
pub struct MethodRequests {
    rx: mpsc::UnboundedReceiver<MethodRequest>,
}

impl MethodRequests {
    /// The next call; `None` once the client is closed.
    pub async fn recv(&mut self) -> Option<MethodRequest> {
        self.rx.recv().await
    }
}

/// The stream of cloud-to-device messages; from
/// [`DeviceClient::c2d_messages`]. A message is acknowledged (PUBACK, which
/// completes it at the hub) when [`C2dMessages::recv`] returns it, never
/// before; messages that never reach the application (the stream was
/// dropped, the connection was lost first) are redelivered by the hub.
#[derive(Debug)]
pub struct C2dMessages {
    rx: mpsc::UnboundedReceiver<(C2dMessage, Option<AckToken>)>,
    shared: Arc<Shared>,
}

impl C2dMessages {
    /// The next message, acknowledged as it is returned; `None` once the
    /// client is closed.
    pub async fn recv(&mut self) -> Option<C2dMessage> {
        let (msg, ack) = self.rx.recv().await?;
        if let Some(ack) = ack {
            self.shared.ack(ack);
        }
        Some(msg)
    }
}

/// The stream of desired-property updates; from
/// [`DeviceClient::desired_updates`]. After each (re)connect it starts with
/// the full desired document if it changed, then carries patches; versions
/// only go up (see [`DesiredTracker`](crate::DesiredTracker)).
#[derive(Debug)]
pub struct DesiredUpdates {
    rx: mpsc::UnboundedReceiver<DesiredUpdate>,
}

impl DesiredUpdates {
    /// The next update; `None` once the client is closed.
    pub async fn recv(&mut self) -> Option<DesiredUpdate> {
        self.rx.recv().await
    }
}

/// A connected IoT Hub device: the twin, telemetry, direct methods and
/// cloud-to-device messages over one MQTT connection that is kept up
/// (reconnects with backoff, token renewal) by one background task.
///
/// Cloning is cheap and shares the connection. The connection closes when
/// [`DeviceClient::close`] is called or the last clone is dropped.
#[derive(Clone, Debug)]
pub struct DeviceClient {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    shared: Arc<Shared>,
    methods: Mutex<Option<MethodRequests>>,
    c2d: Mutex<Option<C2dMessages>>,
    desired: Mutex<Option<DesiredUpdates>>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.shared.close();
    }
}

impl DeviceClient {
    /// Connects with a device connection string
    /// (`HostName=…;DeviceId=…;SharedAccessKey=…`, or `…;x509=true` with
    /// [`DeviceOptions::client_cert`] and [`DeviceOptions::client_key`], or
    /// `…;SharedAccessSignature=…`). Returns once the hub has accepted the
    /// first connection; subscriptions and the first twin GET follow in the
    /// background.
    ///
    /// Fails with [`Error::ConnectionRefused`] if the hub refuses the
    /// credentials, [`Error::Transport`] on TLS failures or when the hub
    /// stays unreachable for [`DeviceOptions::connect_timeout`], and
    /// [`Error::Config`] for bad strings or files. Must be called within a
    /// tokio runtime.
    pub async fn connect(connection_string: &str, options: DeviceOptions) -> Result<DeviceClient> {
        let config = Config::new(connection_string, &options)?;
        let (status_tx, _) = watch::channel(ConnectionStatus::Connecting);
        let shared = Arc::new(Shared {
            state: Mutex::new(State::default()),
            closed: AtomicBool::new(false),
            close_signal: Notify::new(),
            status: status_tx,
            device_id: config.device_id.clone(),
            operation_timeout: options.operation_timeout,
        });
        let (methods_tx, methods_rx) = mpsc::unbounded_channel();
        let (c2d_tx, c2d_rx) = mpsc::unbounded_channel();
        let (desired_tx, desired_rx) = mpsc::unbounded_channel();
        let client = DeviceClient {
            inner: Arc::new(Inner {
                shared: shared.clone(),
                methods: Mutex::new(options.receive_methods.then_some(MethodRequests { rx: methods_rx })),
                c2d: Mutex::new(
                    options.receive_c2d.then(|| C2dMessages { rx: c2d_rx, shared: shared.clone() }),
                ),
                desired: Mutex::new(options.receive_desired.then_some(DesiredUpdates { rx: desired_rx })),
            }),
        };
        let sinks = driver::Sinks { methods: methods_tx, c2d: c2d_tx, desired: desired_tx };
        let (first_tx, first_rx) = oneshot::channel();
        tokio::spawn(driver::run(shared, config, sinks, first_tx));
        match first_rx.await {
            Ok(Ok(())) => Ok(client),
            Ok(Err(e)) => Err(e),
            Err(_) => Err(Error::Disconnected),
        }
    }

    /// The device id from the connection string.
    pub fn device_id(&self) -> &str {
        &self.inner.shared.device_id
    }

    /// Reads the twin: `$iothub/twin/GET`, answered on
    /// `$iothub/twin/res/{status}`. A status of 300 or more is
    /// [`Error::Hub`].
    pub async fn get_twin(&self) -> Result<Twin> {
        let (tx, rx) = oneshot::channel();
        self.inner.shared.run(Request::TwinGet, Reply::Twin(tx), rx).await
    }

    /// Patches the reported properties (`null` deletes a key) and returns
    /// their new `$version`.
    pub async fn update_reported(&self, patch: &Value) -> Result<i64> {
        let body = serde_json::to_vec(patch).map_err(|e| Error::Config(e.to_string()))?;
        let (tx, rx) = oneshot::channel();
        self.inner.shared.run(Request::TwinPatch { body }, Reply::Version(tx), rx).await
    }

    /// Sends a telemetry message at QoS 1 and waits for the hub's PUBACK.
    /// If the connection drops first, the message is sent again after the
    /// reconnect (at least once: the back end may see it twice).
    pub async fn send_telemetry(&self, message: Message) -> Result<()> {
        let bag = message.property_bag();
        let size = message.body.len() + bag.len();
        if size > MAX_MESSAGE_SIZE {
            return Err(Error::MessageTooLarge { size, limit: MAX_MESSAGE_SIZE });
        }
        let topic = topic::telemetry(self.device_id(), &bag);
        let (tx, rx) = oneshot::channel();
        let request = Request::Telemetry { topic, payload: message.body };
        self.inner.shared.run(request, Reply::Ack(tx), rx).await
    }

    /// Takes the stream of direct-method calls. `None` if already taken or
    /// [`DeviceOptions::receive_methods`] is off.
    pub fn method_requests(&self) -> Option<MethodRequests> {
        lock(&self.inner.methods).take()
    }

    /// Takes the stream of cloud-to-device messages. `None` if already taken
    /// or [`DeviceOptions::receive_c2d`] is off. Until it is taken, messages
    /// wait in it unacknowledged.
    pub fn c2d_messages(&self) -> Option<C2dMessages> {
        lock(&self.inner.c2d).take()
    }

    /// Takes the stream of desired-property updates. `None` if already taken
    /// or [`DeviceOptions::receive_desired`] is off.
    pub fn desired_updates(&self) -> Option<DesiredUpdates> {
        lock(&self.inner.desired).take()
    }

    /// The connection status, current and future.
    pub fn status(&self) -> watch::Receiver<ConnectionStatus> {
        self.inner.shared.status.subscribe()
    }

    /// Disconnects (MQTT DISCONNECT) and stops the background task; pending
    /// operations fail with [`Error::Disconnected`]. Waits at most a few
    /// seconds for the DISCONNECT to be sent.
    pub async fn close(&self) {
        let mut status = self.status();
        self.inner.shared.close();
        let closed = status.wait_for(|s| *s == ConnectionStatus::Closed);
        let _ = tokio::time::timeout(Duration::from_secs(5), closed).await;
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding the lock cannot leave these structures half
    // updated in a way that matters more than stopping would.
    mutex.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Which connection and packet id a cloud-to-device message came with.
#[derive(Debug, Clone, Copy)]
pub(crate) struct AckToken {
    pub(crate) generation: u64,
    pub(crate) pkid: u16,
}

/// What the handles and the connection task share.
#[derive(Debug)]
pub(crate) struct Shared {
    state: Mutex<State>,
    closed: AtomicBool,
    /// Wakes the connection task to close (a stored permit, so a close
    /// between two polls is not missed).
    pub(crate) close_signal: Notify,
    pub(crate) status: watch::Sender<ConnectionStatus>,
    pub(crate) device_id: String,
    operation_timeout: Duration,
}

/// An operation the application is waiting for.
#[derive(Debug)]
pub(crate) struct Op {
    request: Request,
    /// Handed to the current connection (reset when it is lost).
    sent: bool,
    pub(crate) reply: Reply,
}

#[derive(Debug)]
pub(crate) enum Request {
    Telemetry { topic: String, payload: Vec<u8> },
    TwinGet,
    TwinPatch { body: Vec<u8> },
}

/// Who gets an operation's result.
#[derive(Debug)]
pub(crate) enum Reply {
    Ack(oneshot::Sender<Result<()>>),
    Twin(oneshot::Sender<Result<Twin>>),
    Version(oneshot::Sender<Result<i64>>),
    /// The connection task's own twin GET for desired-property continuity.
    Sync,
}

#[derive(Debug)]
struct Conn {
    generation: u64,
    client: AsyncClient,
}

#[derive(Debug, Default)]
pub(crate) struct State {
    conn: Option<Conn>,
    generation: u64,
    next_id: u64,
    /// Unfinished operations by id (ids grow, so this is send order).
    ops: BTreeMap<u64, Op>,
    /// Some unsent operation did not fit in the request channel.
    backlog: bool,
    /// QoS 1 publishes handed to rumqttc, oldest first, waiting for the
    /// packet id rumqttc assigns when it writes them.
    awaiting_pkid: VecDeque<u64>,
    /// Written QoS 1 publishes by packet id, waiting for PUBACK.
    by_pkid: HashMap<u16, u64>,
}

impl State {
    fn enqueue(&mut self, request: Request, reply: Reply) -> u64 {
        self.next_id += 1;
        let id = self.next_id;
        self.ops.insert(id, Op { request, sent: false, reply });
        if self.conn.is_some() && !self.backlog && !self.send(id) {
            self.backlog = true;
        }
        id
    }

    /// Hands operation `id` to the current connection. False if it did not
    /// fit (or there is no connection).
    fn send(&mut self, id: u64) -> bool {
        let (Some(conn), Some(op)) = (&self.conn, self.ops.get_mut(&id)) else { return false };
        let rid = id.to_string();
        let sent = match &op.request {
            Request::Telemetry { topic, payload } => {
                conn.client.try_publish(topic.as_str(), QoS::AtLeastOnce, false, payload.clone())
            }
            Request::TwinGet => {
                conn.client.try_publish(topic::twin_get(&rid), QoS::AtMostOnce, false, Vec::new())
            }
            Request::TwinPatch { body } => conn.client.try_publish(
                topic::twin_patch_reported(&rid),
                QoS::AtMostOnce,
                false,
                body.clone(),
            ),
        };
        if sent.is_err() {
            return false;
        }
        op.sent = true;
        if matches!(op.request, Request::Telemetry { .. }) {
            self.awaiting_pkid.push_back(id);
        }
        true
    }

    /// Sends unsent operations in order until the channel is full.
    pub(crate) fn flush(&mut self) {
        if self.conn.is_none() {
            return;
        }
        let unsent: Vec<u64> = self.ops.iter().filter(|(_, op)| !op.sent).map(|(id, _)| *id).collect();
        for id in unsent {
            if !self.send(id) {
                self.backlog = true;
                return;
            }
        }
        self.backlog = false;
    }

    pub(crate) fn has_backlog(&self) -> bool {
        self.backlog
    }

    /// A new connection: returns its generation.
    pub(crate) fn connected(&mut self, client: AsyncClient) -> u64 {
        self.generation += 1;
        self.conn = Some(Conn { generation: self.generation, client });
        self.awaiting_pkid.clear();
        self.by_pkid.clear();
        self.generation
    }

    /// The connection is gone: everything unfinished goes out again on the
    /// next one, except the connection task's own sync GET (it sends a new
    /// one).
    pub(crate) fn disconnected(&mut self) {
        self.conn = None;
        self.awaiting_pkid.clear();
        self.by_pkid.clear();
        self.remove_sync_gets();
        for op in self.ops.values_mut() {
            op.sent = false;
        }
        self.backlog = false;
    }

    /// Forgets the connection task's unanswered twin GETs.
    pub(crate) fn remove_sync_gets(&mut self) {
        self.ops.retain(|_, op| !matches!(op.reply, Reply::Sync));
    }

    /// Queues the connection task's own twin GET.
    pub(crate) fn enqueue_sync_get(&mut self) {
        self.enqueue(Request::TwinGet, Reply::Sync);
    }

    /// rumqttc wrote a QoS 1 publish with packet id `pkid`.
    pub(crate) fn publish_written(&mut self, pkid: u16) {
        if let Some(id) = self.awaiting_pkid.pop_front() {
            self.by_pkid.insert(pkid, id);
        }
    }

    /// The hub acknowledged packet `pkid`: the finished operation, if any.
    pub(crate) fn puback(&mut self, pkid: u16) -> Option<Op> {
        let id = self.by_pkid.remove(&pkid)?;
        self.ops.remove(&id)
    }

    /// The operation a twin response with request id `rid` finishes.
    pub(crate) fn twin_response(&mut self, rid: &str) -> Option<Op> {
        let id: u64 = rid.parse().ok()?;
        match self.ops.get(&id) {
            Some(Op { request: Request::TwinGet | Request::TwinPatch { .. }, .. }) => self.ops.remove(&id),
            _ => None,
        }
    }

    /// The current connection's client.
    pub(crate) fn client(&self) -> Option<&AsyncClient> {
        self.conn.as_ref().map(|c| &c.client)
    }

    /// Everything left, for failing at close.
    pub(crate) fn drain(&mut self) -> Vec<Op> {
        self.conn = None;
        std::mem::take(&mut self.ops).into_values().collect()
    }
}

impl Shared {
    pub(crate) fn state(&self) -> MutexGuard<'_, State> {
        lock(&self.state)
    }

    pub(crate) fn is_closed(&self) -> bool {
        self.closed.load(Ordering::SeqCst)
    }

    fn close(&self) {
        if !self.closed.swap(true, Ordering::SeqCst) {
            self.close_signal.notify_one();
        }
    }

    fn current_client(&self) -> Result<AsyncClient> {
        if self.is_closed() {
            return Err(Error::Disconnected);
        }
        self.state().client().cloned().ok_or(Error::NotConnected)
    }

    /// Records an operation, waits for its result (at most the operation
    /// timeout) and forgets it if the caller stops waiting.
    async fn run<T>(
        self: &Arc<Self>,
        request: Request,
        reply: Reply,
        rx: oneshot::Receiver<Result<T>>,
    ) -> Result<T> {
        if self.is_closed() {
            return Err(Error::Disconnected);
        }
        let id = self.state().enqueue(request, reply);
        let guard = OpGuard { shared: self, id };
        let result = match tokio::time::timeout(self.operation_timeout, rx).await {
            Ok(Ok(result)) => result,
            Ok(Err(_)) => Err(Error::Disconnected),
            Err(_) => Err(Error::Timeout),
        };
        drop(guard);
        result
    }

    /// Acknowledges a cloud-to-device message, if its connection is still
    /// the current one (otherwise the hub redelivers it).
    fn ack(&self, token: AckToken) {
        let state = self.state();
        let Some(conn) = state.conn.as_ref().filter(|c| c.generation == token.generation) else { return };
        let mut publish = Publish::new("", QoS::AtLeastOnce, Vec::new());
        publish.pkid = token.pkid;
        if conn.client.try_ack(&publish).is_err() {
            tracing::debug!(pkid = token.pkid, "could not queue a C2D PUBACK; the hub will redeliver");
        }
    }

    /// A method request for the application (it answers through `self`).
    pub(crate) fn method_request(self: &Arc<Self>, name: &str, rid: &str, payload: Value) -> MethodRequest {
        MethodRequest { name: name.to_owned(), rid: rid.to_owned(), payload, shared: self.clone() }
    }
}

/// Removes an operation its caller no longer waits for (timed out,
/// cancelled); a no-op once the operation finished.
struct OpGuard<'a> {
    shared: &'a Shared,
    id: u64,
}

impl Drop for OpGuard<'_> {
    fn drop(&mut self) {
        self.shared.state().ops.remove(&self.id);
    }
}

/// Delivers an operation's result to whoever waits for it. `Sync` results
/// are the connection task's business and are returned to it.
pub(crate) fn complete(reply: Reply, outcome: Outcome) -> Option<Result<Twin>> {
    match (reply, outcome) {
        (Reply::Ack(tx), Outcome::Acked) => {
            let _ = tx.send(Ok(()));
        }
        (Reply::Twin(tx), Outcome::Twin(r)) => {
            let _ = tx.send(r);
        }
        (Reply::Version(tx), Outcome::Version(r)) => {
            let _ = tx.send(r);
        }
        (Reply::Sync, Outcome::Twin(r)) => return Some(r),
        (reply, Outcome::Failed(e)) => fail(reply, e),
        (reply, _) => fail(reply, Error::Decode("response of the wrong kind".into())),
    }
    None
}

/// Fails an operation.
pub(crate) fn fail(reply: Reply, error: Error) {
    match reply {
        Reply::Ack(tx) => drop(tx.send(Err(error))),
        Reply::Twin(tx) => drop(tx.send(Err(error))),
        Reply::Version(tx) => drop(tx.send(Err(error))),
        Reply::Sync => {}
    }
}

/// How an operation ended.
pub(crate) enum Outcome {
    Acked,
    Twin(Result<Twin>),
    Version(Result<i64>),
    Failed(Error),
}

/// Parses a twin GET response.
pub(crate) fn parse_twin(status: u16, body: &[u8]) -> Result<Twin> {
    if status >= 300 {
        return Err(Error::from_hub_response(status, body));
    }
    let value: Value = serde_json::from_slice(body)
        .map_err(|e| Error::Decode(format!("twin GET answered with a body that is not JSON: {e}")))?;
    let section = |name: &str| match value.get(name) {
        Some(v @ Value::Object(_)) => v.clone(),
        _ => Value::Object(Default::default()),
    };
    Ok(Twin { desired: section("desired"), reported: section("reported") })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn twin_bodies_parse() {
        let twin = parse_twin(200, br#"{"desired":{"a":1,"$version":3},"reported":{"$version":1}}"#).unwrap();
        assert_eq!(twin.desired_version(), Some(3));
        assert_eq!(twin.reported_version(), Some(1));
        assert_eq!(twin.desired["a"], json!(1));
        let empty = parse_twin(200, b"{}").unwrap();
        assert_eq!(empty.desired, json!({}));
        assert!(matches!(parse_twin(200, b"nope"), Err(Error::Decode(_))));
        assert!(matches!(
            parse_twin(429, br#"{"errorCode":429001,"message":"slow down"}"#),
            Err(Error::Hub { status: 429, error_code: Some(429001), .. })
        ));
    }

    #[test]
    fn pending_operations_survive_a_lost_connection() {
        let mut state = State::default();
        let (tx, _rx) = oneshot::channel();
        let id = state.enqueue(Request::TwinGet, Reply::Twin(tx));
        assert!(!state.ops[&id].sent, "no connection yet");
        state.enqueue_sync_get();
        assert_eq!(state.ops.len(), 2);
        state.disconnected();
        assert_eq!(state.ops.len(), 1, "the sync GET is dropped, the app's GET kept");
        assert!(state.twin_response(&id.to_string()).is_some());
        assert!(state.twin_response("nope").is_none());
    }

    #[test]
    fn pubacks_find_their_operation_by_written_order() {
        let mut state = State::default();
        for _ in 0..2 {
            let (tx, _rx) = oneshot::channel();
            state.enqueue(Request::Telemetry { topic: "t".into(), payload: vec![] }, Reply::Ack(tx));
        }
        // Pretend both were handed to a connection.
        state.awaiting_pkid.extend([1, 2]);
        state.publish_written(7);
        state.publish_written(8);
        assert!(state.puback(9).is_none());
        assert!(state.puback(8).is_some());
        assert!(state.ops.contains_key(&1));
        assert!(state.puback(7).is_some());
        assert!(state.ops.is_empty());
    }
}
