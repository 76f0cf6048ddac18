//! The connection task: one per client. It connects, subscribes, keeps the
//! desired properties continuous, dispatches what the hub sends, renews the
//! token by reconnecting, and reconnects with backoff when the connection
//! is lost.
//!
//! The rumqttc event loop is polled only here, and a poll is abandoned
//! (its future dropped) only when the connection is being torn down anyway
//! (close, token renewal), so rumqttc's internal state is never left half
//! updated on a connection that continues.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use ferrohub_core::connection_string::ConnectionString;
use ferrohub_core::sas::SasToken;
use rumqttc::{
    AsyncClient, ConnectReturnCode, ConnectionError, Event, EventLoop, Incoming, MqttOptions, NetworkOptions,
    Outgoing, Publish, QoS, SubscribeFilter, SubscribeReasonCode, TlsConfiguration,
};
use serde_json::Value;
use tokio::sync::{mpsc, oneshot};
use tokio::time::{sleep, sleep_until, Instant};

use crate::client::{complete, fail, parse_twin, AckToken, ConnectionStatus, Outcome, Shared, State};
use crate::options::Transport;
use crate::{
    tls_config, Backoff, C2dMessage, DesiredTracker, DesiredUpdate, DeviceOptions, Error, MethodRequest,
};
use ferrohub_mqtt::device::{self as topic, HubPublish as Inbound};
use ferrohub_mqtt::topic::{Subscription, DESIRED_PATCHES, METHOD_REQUESTS, TWIN_RESPONSES};

/// The `api-version` in the MQTT username (the one the Node and .NET SDKs
/// send).
pub(crate) const API_VERSION: &str = "2021-04-12";

/// The `DeviceClientType` in the MQTT username.
pub(crate) const USER_AGENT: &str = concat!("ferrohub-device-client/", env!("CARGO_PKG_VERSION"));

/// QoS 1 publishes in flight per connection (rumqttc keeps a slot per
/// possible one, so this stays small).
const INFLIGHT: u16 = 16;
/// Requests queued towards rumqttc per connection (its channel grows on
/// demand; this only bounds it).
const REQUEST_CHANNEL: usize = 256;
/// Initial room for events rumqttc buffers between polls.
const EVENT_QUEUE: usize = 4;
/// Largest packet either way: 256 KiB of telemetry plus topic and headers.
const MAX_PACKET: usize = 300 * 1024;
/// How long a graceful DISCONNECT may take.
const DISCONNECT_WAIT: Duration = Duration::from_secs(2);
/// Delay before retrying a failed twin GET for desired-property sync.
const SYNC_RETRY: Duration = Duration::from_secs(5);

/// Where the connection task delivers to the application.
pub(crate) struct Sinks {
    pub(crate) methods: mpsc::UnboundedSender<MethodRequest>,
    pub(crate) c2d: mpsc::UnboundedSender<(C2dMessage, Option<AckToken>)>,
    pub(crate) desired: mpsc::UnboundedSender<DesiredUpdate>,
}

/// How the device authenticates.
enum Credentials {
    /// Signs a fresh token per connection; renewable.
    Key(ConnectionString),
    /// A ready-made token; not renewable.
    Fixed(String),
    /// A TLS client certificate; no password.
    X509,
}

/// Everything a connection attempt needs, resolved once at connect.
pub(crate) struct Config {
    pub(crate) device_id: String,
    username: String,
    host: String,
    port: u16,
    websocket: bool,
    tls: Arc<rustls::ClientConfig>,
    credentials: Credentials,
    keep_alive: Duration,
    attempt_timeout: Duration,
    connect_timeout: Duration,
    token_ttl: Duration,
    renew_before: Duration,
    backoff: Backoff,
    /// How long a sync GET may go unanswered.
    sync_timeout: Duration,
    methods: bool,
    c2d: bool,
    desired: bool,
}

impl Config {
    pub(crate) fn new(connection_string: &str, options: &DeviceOptions) -> Result<Self, Error> {
        let cs: ConnectionString = connection_string.parse().map_err(|e: ferrohub_core::HubError| {
            Error::Config(format!("invalid connection string: {}", e.message))
        })?;
        let Some(device_id) = cs.device_id.clone() else {
            return Err(Error::Config("not a device connection string (it has no DeviceId)".into()));
        };
        if cs.is_module() {
            return Err(Error::Config("module identities are not supported by this client".into()));
        }
        if device_id.trim().is_empty() {
            return Err(Error::Config("the connection string's DeviceId is empty".into()));
        }
        if options.keep_alive < Duration::from_secs(1) || options.keep_alive > Duration::from_secs(65535) {
            return Err(Error::Config("keep_alive must be between 1 and 65535 seconds".into()));
        }
        if options.token_ttl < Duration::from_secs(1) {
            return Err(Error::Config("token_ttl must be at least 1 second".into()));
        }
        let credentials = if cs.x509 {
            Credentials::X509
        } else if let Some(token) = &cs.shared_access_signature {
            Credentials::Fixed(token.clone())
        } else {
            Credentials::Key(cs.clone())
        };
        let tls = match (&options.tls_config, &credentials) {
            (Some(config), _) => config.clone(),
            (None, Credentials::X509) => {
                let (Some(cert), Some(key)) = (&options.client_cert, &options.client_key) else {
                    return Err(Error::Config(
                        "an x509=true connection string needs client_cert and client_key".into(),
                    ));
                };
                tls_config(options.ca_file.as_deref(), Some((cert, key)))?
            }
            (None, _) => tls_config(options.ca_file.as_deref(), None)?,
        };
        let (port, websocket) = match options.transport {
            Transport::Tcp => (options.mqtt_port.unwrap_or(8883), false),
            Transport::WebSocket { https_port } => (https_port.unwrap_or(443), true),
        };
        Ok(Self {
            username: username(&cs.host_name, &device_id, options.model_id.as_deref()),
            device_id,
            host: cs.dial_host().to_owned(),
            port,
            websocket,
            tls,
            credentials,
            keep_alive: options.keep_alive,
            attempt_timeout: options.attempt_timeout,
            connect_timeout: options.connect_timeout,
            token_ttl: options.token_ttl,
            renew_before: options.renew_before,
            backoff: options.backoff,
            sync_timeout: options.operation_timeout,
            methods: options.receive_methods,
            c2d: options.receive_c2d,
            desired: options.receive_desired,
        })
    }

    /// The password for a new connection and when to renew it.
    fn password(&self) -> Result<(String, Option<Instant>), Error> {
        match &self.credentials {
            Credentials::X509 => Ok((String::new(), None)),
            Credentials::Fixed(token) => Ok((token.clone(), None)),
            Credentials::Key(cs) => {
                let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
                let ttl = self.token_ttl.as_secs().max(1);
                let expiry = now.as_secs().saturating_add(ttl);
                let token = cs
                    .sas_token(i64::try_from(expiry).unwrap_or(i64::MAX))
                    .map_err(|e| Error::Config(format!("cannot sign a token: {}", e.message)))?;
                Ok((token, Some(Instant::now() + renew_after(self.token_ttl, self.renew_before))))
            }
        }
    }

    /// When a fixed token expires (for messages only).
    fn fixed_token_expiry(&self) -> Option<i64> {
        match &self.credentials {
            Credentials::Fixed(token) => SasToken::parse(token).ok().map(|t| t.expiry()),
            _ => None,
        }
    }

    fn mqtt_options(&self, password: String) -> MqttOptions {
        let tls = TlsConfiguration::Rustls(self.tls.clone());
        let (address, transport) = if self.websocket {
            let host = if self.host.contains(':') { format!("[{}]", self.host) } else { self.host.clone() };
            (format!("wss://{host}:{}/$iothub/websocket", self.port), rumqttc::Transport::Wss(tls))
        } else {
            (self.host.clone(), rumqttc::Transport::Tls(tls))
        };
        let mut options = MqttOptions::new(self.device_id.clone(), address, self.port);
        options
            .set_transport(transport)
            .set_keep_alive(self.keep_alive)
            .set_clean_session(false)
            .set_credentials(self.username.clone(), password)
            .set_manual_acks(true)
            .set_inflight(INFLIGHT)
            .set_request_channel_capacity(REQUEST_CHANNEL)
            .set_max_packet_size(MAX_PACKET, MAX_PACKET);
        options
    }

    fn filters(&self) -> Vec<SubscribeFilter> {
        // Desired first: the sync GET goes out after this SUBSCRIBE.
        let mut filters = vec![SubscribeFilter::new(TWIN_RESPONSES.into(), QoS::AtMostOnce)];
        if self.desired {
            filters.push(SubscribeFilter::new(DESIRED_PATCHES.into(), QoS::AtMostOnce));
        }
        if self.methods {
            filters.push(SubscribeFilter::new(METHOD_REQUESTS.into(), QoS::AtMostOnce));
        }
        if self.c2d {
            filters.push(SubscribeFilter::new(Subscription::C2d.filter(&self.device_id), QoS::AtLeastOnce));
        }
        filters
    }
}

/// `{HostName}/{deviceId}/?api-version=…&DeviceClientType=…[&model-id=…]`.
pub(crate) fn username(host_name: &str, device_id: &str, model_id: Option<&str>) -> String {
    let mut username = format!(
        "{host_name}/{device_id}/?api-version={API_VERSION}&DeviceClientType={}",
        topic::encode(USER_AGENT)
    );
    if let Some(model) = model_id {
        username.push_str("&model-id=");
        username.push_str(&topic::encode(model));
    }
    username
}

/// How long after connecting a token of lifetime `ttl` is renewed.
pub(crate) fn renew_after(ttl: Duration, renew_before: Duration) -> Duration {
    match ttl.checked_sub(renew_before) {
        Some(d) if !d.is_zero() => d,
        _ => ttl / 2,
    }
}

/// What went wrong with a connection attempt.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Failure {
    /// CONNACK with a refusal code.
    Refused(u8),
    /// Retrying will not help: a TLS failure, a bad host name, a failed
    /// WebSocket upgrade.
    Fatal(String),
    /// Worth retrying: connection refused, reset, timed out, CONNACK 3.
    Transient(String),
}

fn classify(error: &ConnectionError) -> Failure {
    let text = error.to_string();
    match error {
        ConnectionError::ConnectionRefused(ConnectReturnCode::ServiceUnavailable) => Failure::Transient(text),
        ConnectionError::ConnectionRefused(code) => Failure::Refused(*code as u8),
        _ if is_tls_failure(error) => Failure::Fatal(describe(error)),
        ConnectionError::Tls(_) | ConnectionError::InvalidUrl(_) | ConnectionError::ResponseValidation(_) => {
            Failure::Fatal(describe(error))
        }
        ConnectionError::Websocket(_) | ConnectionError::WsConnect(_) if !has_io_cause(error) => {
            Failure::Fatal(describe(error))
        }
        _ => Failure::Transient(describe(error)),
    }
}

/// The error and its causes on one line.
fn describe(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let more = cause.to_string();
        if !text.contains(&more) {
            text.push_str(": ");
            text.push_str(&more);
        }
        source = cause.source();
    }
    text
}

/// Whether a rustls error (a certificate problem) is in the error's causes.
fn is_tls_failure(error: &(dyn std::error::Error + 'static)) -> bool {
    let mut current = Some(error);
    while let Some(e) = current {
        if e.is::<rustls::Error>() {
            return true;
        }
        // io::Error::source skips the error it wraps; look inside.
        if let Some(inner) = e.downcast_ref::<std::io::Error>().and_then(|io| io.get_ref()) {
            if is_tls_failure(inner) {
                return true;
            }
        }
        current = e.source();
    }
    false
}

fn has_io_cause(error: &(dyn std::error::Error + 'static)) -> bool {
    let mut current = Some(error);
    while let Some(e) = current {
        if e.is::<std::io::Error>() {
            return true;
        }
        current = e.source();
    }
    false
}

/// How a connection ended.
enum Ended {
    Closed,
    Renew,
    Lost(String),
}

/// The connection task.
pub(crate) async fn run(
    shared: Arc<Shared>,
    config: Config,
    sinks: Sinks,
    first: oneshot::Sender<Result<(), Error>>,
) {
    let mut first = Some(first);
    let mut task = Task {
        shared: shared.clone(),
        config,
        sinks,
        tracker: DesiredTracker::new(),
        sync_retry_at: None,
        sync_deadline: None,
    };
    let started = Instant::now();
    let mut failures: u32 = 0;
    while !shared.is_closed() {
        let attempt = tokio::select! {
            biased;
            _ = shared.close_signal.notified() => break,
            attempt = task.connect() => attempt,
        };
        match attempt {
            Ok((client, eventloop, session_present, renew_at)) => {
                failures = 0;
                match task.session(client, eventloop, session_present, renew_at, &mut first).await {
                    Ended::Closed => break,
                    Ended::Renew => {
                        tracing::debug!(device = %task.config.device_id, "reconnecting to renew the token");
                        continue;
                    }
                    Ended::Lost(reason) => {
                        tracing::debug!(device = %task.config.device_id, %reason, "connection lost");
                        shared.status.send_replace(ConnectionStatus::Disconnected { reason });
                    }
                }
            }
            Err(failure) => {
                let reason = match &failure {
                    Failure::Refused(code) => {
                        let mut reason = format!("{}", Error::ConnectionRefused { code: *code });
                        if let Some(expiry) = task.config.fixed_token_expiry() {
                            reason.push_str(&format!(" (the connection string's token expires at {expiry})"));
                        }
                        reason
                    }
                    Failure::Fatal(m) | Failure::Transient(m) => m.clone(),
                };
                if let Some(tx) = first.take() {
                    let delay = task.config.backoff.delay(failures, 0.0);
                    let give_up = match &failure {
                        Failure::Refused(code) => Some(Error::ConnectionRefused { code: *code }),
                        Failure::Fatal(m) => Some(Error::Transport(m.clone())),
                        Failure::Transient(m) if started.elapsed() + delay > task.config.connect_timeout => {
                            Some(Error::Transport(format!(
                                "gave up after {} s: {m}",
                                started.elapsed().as_secs()
                            )))
                        }
                        Failure::Transient(_) => None,
                    };
                    if let Some(error) = give_up {
                        let _ = tx.send(Err(error));
                        break;
                    }
                    first = Some(tx);
                }
                tracing::debug!(device = %task.config.device_id, %reason, "connection attempt failed");
                shared.status.send_replace(ConnectionStatus::Disconnected { reason });
            }
        }
        let delay = task.config.backoff.delay_random(failures);
        failures = failures.saturating_add(1);
        tokio::select! {
            biased;
            _ = shared.close_signal.notified() => break,
            _ = sleep(delay) => {}
        }
    }
    for op in shared.state().drain() {
        fail(op.reply, Error::Disconnected);
    }
    shared.status.send_replace(ConnectionStatus::Closed);
}

struct Task {
    shared: Arc<Shared>,
    config: Config,
    sinks: Sinks,
    tracker: DesiredTracker,
    sync_retry_at: Option<Instant>,
    /// When an unanswered sync GET is given up (and sent again).
    sync_deadline: Option<Instant>,
}

impl Task {
    /// One connection attempt: TCP, TLS, (WebSocket), CONNECT, CONNACK.
    async fn connect(&self) -> Result<(AsyncClient, EventLoop, bool, Option<Instant>), Failure> {
        let (password, renew_at) = self.config.password().map_err(|e| Failure::Fatal(e.to_string()))?;
        let (client, mut eventloop) = AsyncClient::new(self.config.mqtt_options(password), REQUEST_CHANNEL);
        let mut network = NetworkOptions::new();
        network.set_connection_timeout(self.config.attempt_timeout.as_secs().max(1));
        network.set_tcp_nodelay(true);
        eventloop.set_network_options(network);
        // rumqttc reserves room for 100 buffered events (about 14 KiB) per
        // connection; a handful is plenty when the task polls promptly, and
        // the queue still grows if a burst needs it.
        eventloop.state.events = VecDeque::with_capacity(EVENT_QUEUE);
        match eventloop.poll().await {
            Ok(Event::Incoming(Incoming::ConnAck(ack))) => {
                Ok((client, eventloop, ack.session_present, renew_at))
            }
            Ok(other) => Err(Failure::Transient(format!("expected CONNACK, got {other:?}"))),
            Err(e) => Err(classify(&e)),
        }
    }

    /// Runs one accepted connection until it ends.
    async fn session(
        &mut self,
        client: AsyncClient,
        mut eventloop: EventLoop,
        session_present: bool,
        renew_at: Option<Instant>,
        first: &mut Option<oneshot::Sender<Result<(), Error>>>,
    ) -> Ended {
        let generation = {
            let shared = self.shared.clone();
            let mut state = shared.state();
            let generation = state.connected(client.clone());
            if let Err(e) = client.try_subscribe_many(self.config.filters()) {
                tracing::warn!(error = %e, "could not queue the SUBSCRIBE");
            }
            if self.config.desired {
                self.start_sync(&mut state);
            }
            state.flush();
            generation
        };
        self.shared.status.send_replace(ConnectionStatus::Connected { generation, session_present });
        if let Some(first) = first.take() {
            let _ = first.send(Ok(()));
        }
        tracing::debug!(device = %self.config.device_id, generation, session_present, "connected");

        // Far in the future stands for "never" (fixed tokens, X.509).
        let renew =
            sleep_until(renew_at.unwrap_or_else(|| Instant::now() + Duration::from_secs(100 * 365 * 86400)));
        tokio::pin!(renew);
        let ended = loop {
            tokio::select! {
                biased;
                _ = self.shared.close_signal.notified() => {
                    self.disconnect(&client, &mut eventloop, generation).await;
                    break Ended::Closed;
                }
                _ = &mut renew, if renew_at.is_some() => {
                    self.disconnect(&client, &mut eventloop, generation).await;
                    break Ended::Renew;
                }
                event = eventloop.poll() => match event {
                    Ok(event) => self.on_event(event, &client, generation),
                    Err(e) => break Ended::Lost(describe(&e)),
                }
            }
            self.after_event();
        };
        self.shared.state().disconnected();
        self.tracker.on_disconnect();
        ended
    }

    /// Sends DISCONNECT (after whatever is queued) and waits briefly for it
    /// to be written, still handling what arrives meanwhile.
    async fn disconnect(&mut self, client: &AsyncClient, eventloop: &mut EventLoop, generation: u64) {
        if client.try_disconnect().is_err() {
            return;
        }
        let _ = tokio::time::timeout(DISCONNECT_WAIT, async {
            loop {
                match eventloop.poll().await {
                    Ok(Event::Outgoing(Outgoing::Disconnect)) | Err(_) => break,
                    Ok(event) => self.on_event(event, client, generation),
                }
            }
        })
        .await;
    }

    fn on_event(&mut self, event: Event, client: &AsyncClient, generation: u64) {
        match event {
            Event::Incoming(Incoming::Publish(publish)) => self.on_publish(publish, client, generation),
            Event::Incoming(Incoming::PubAck(ack)) => {
                let op = self.shared.state().puback(ack.pkid);
                if let Some(op) = op {
                    complete(op.reply, Outcome::Acked);
                }
            }
            Event::Incoming(Incoming::SubAck(ack))
                if ack.return_codes.iter().any(|c| matches!(c, SubscribeReasonCode::Failure)) =>
            {
                tracing::warn!(device = %self.config.device_id, codes = ?ack.return_codes, "the hub refused a subscription");
            }
            Event::Outgoing(Outgoing::Publish(pkid)) if pkid != 0 => {
                self.shared.state().publish_written(pkid)
            }
            _ => {}
        }
    }

    /// Housekeeping after each event: operations that did not fit in the
    /// request channel, and a wanted desired-property resync.
    fn after_event(&mut self) {
        let shared = self.shared.clone();
        let mut state = shared.state();
        if state.has_backlog() {
            state.flush();
        }
        if !self.config.desired {
            return;
        }
        if self.tracker.is_syncing() && self.sync_deadline.is_some_and(|at| Instant::now() >= at) {
            tracing::warn!(device = %self.config.device_id, "twin GET for desired properties unanswered; retrying");
            state.remove_sync_gets();
            self.tracker.on_get_failed();
            self.sync_retry_at = None;
        }
        if self.tracker.wants_get() && self.sync_retry_at.is_none_or_past() {
            self.start_sync(&mut state);
        }
    }

    /// Sends a twin GET for desired-property continuity.
    fn start_sync(&mut self, state: &mut State) {
        self.tracker.begin_sync();
        self.sync_retry_at = None;
        self.sync_deadline = Some(Instant::now() + self.config.sync_timeout);
        state.enqueue_sync_get();
    }

    fn on_publish(&mut self, publish: Publish, client: &AsyncClient, generation: u64) {
        let mut acked = false;
        match topic::classify(&publish.topic) {
            Inbound::TwinResponse { status, rid, version } => {
                let op = self.shared.state().twin_response(rid);
                let Some(op) = op else {
                    tracing::debug!(rid, "twin response for no pending request");
                    return self.ack_now(&publish, client);
                };
                let outcome = match &op.reply {
                    crate::client::Reply::Version(_) if status >= 300 => {
                        Outcome::Failed(Error::from_hub_response(status, &publish.payload))
                    }
                    crate::client::Reply::Version(_) => Outcome::Version(version.ok_or_else(|| {
                        Error::Decode("the reported-properties response has no $version".into())
                    })),
                    _ => Outcome::Twin(parse_twin(status, &publish.payload)),
                };
                if let Some(sync) = complete(op.reply, outcome) {
                    self.on_sync_get(sync);
                }
            }
            Inbound::DesiredPatch { version } => self.on_desired_patch(version, &publish.payload),
            Inbound::MethodRequest { name, rid } => {
                let payload = json_or_text(&publish.payload);
                let request = self.shared.method_request(name, rid, payload);
                if let Err(mpsc::error::SendError(request)) = self.sinks.methods.send(request) {
                    // Nobody listens: answer rather than let the invoker time out.
                    let body = br#"{"message":"this device does not handle direct methods"}"#.to_vec();
                    let _ = client.try_publish(
                        topic::method_response(501, &request.rid),
                        QoS::AtMostOnce,
                        false,
                        body,
                    );
                }
            }
            Inbound::CloudToDevice { bag } => {
                let msg = C2dMessage::from_bag(bag, publish.payload.to_vec());
                let ack =
                    (publish.qos == QoS::AtLeastOnce).then_some(AckToken { generation, pkid: publish.pkid });
                // Acknowledged when the application takes it; if the stream
                // is gone the hub keeps the message for a later session.
                let _ = self.sinks.c2d.send((msg, ack));
                acked = true;
            }
            Inbound::Unknown => {
                tracing::debug!(topic = %publish.topic, "publish on an unexpected topic ignored");
            }
        }
        if !acked {
            self.ack_now(&publish, client);
        }
    }

    fn ack_now(&self, publish: &Publish, client: &AsyncClient) {
        if publish.qos != QoS::AtMostOnce {
            let _ = client.try_ack(publish);
        }
    }

    fn on_sync_get(&mut self, result: Result<crate::Twin, Error>) {
        let twin = match result {
            Ok(twin) => twin,
            Err(e) => {
                tracing::warn!(device = %self.config.device_id, error = %e, "twin GET for desired properties failed");
                self.tracker.on_get_failed();
                self.sync_retry_at = Some(Instant::now() + SYNC_RETRY);
                return;
            }
        };
        let Some(version) = twin.desired_version() else {
            tracing::warn!(device = %self.config.device_id, "twin GET answered without a desired $version");
            self.tracker.on_get_failed();
            self.sync_retry_at = Some(Instant::now() + SYNC_RETRY);
            return;
        };
        for update in self.tracker.on_get(version, twin.desired) {
            let _ = self.sinks.desired.send(update);
        }
    }

    fn on_desired_patch(&mut self, topic_version: Option<i64>, payload: &[u8]) {
        let body: Value = match serde_json::from_slice(payload) {
            Ok(body) => body,
            Err(e) => {
                tracing::warn!(device = %self.config.device_id, error = %e, "desired patch is not JSON; ignored");
                return;
            }
        };
        let Some(version) = topic_version.or_else(|| body.get("$version").and_then(Value::as_i64)) else {
            tracing::warn!(device = %self.config.device_id, "desired patch without a $version; ignored");
            return;
        };
        if let Some(update) = self.tracker.on_patch(version, body) {
            let _ = self.sinks.desired.send(update);
        }
    }
}

/// A method payload: JSON, `Null` for an empty body, else the text.
fn json_or_text(payload: &[u8]) -> Value {
    if payload.iter().all(u8::is_ascii_whitespace) {
        return Value::Null;
    }
    serde_json::from_slice(payload)
        .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(payload).into_owned()))
}

trait DeadlineExt {
    fn is_none_or_past(&self) -> bool;
}

impl DeadlineExt for Option<Instant> {
    fn is_none_or_past(&self) -> bool {
        match self {
            Some(at) => Instant::now() >= *at,
            None => true,
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use serde_json::json;

    const KEY: &str = "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=";

    #[test]
    fn username_follows_the_node_form() {
        let version = env!("CARGO_PKG_VERSION");
        assert_eq!(
            username("hub.example", "d1", None),
            format!(
                "hub.example/d1/?api-version=2021-04-12&DeviceClientType=ferrohub-device-client%2F{version}"
            )
        );
        assert!(username("h", "d1", Some("dtmi:com:example:T;1"))
            .ends_with("&model-id=dtmi%3Acom%3Aexample%3AT%3B1"));
    }

    #[test]
    fn renewal_comes_before_expiry() {
        let s = Duration::from_secs;
        assert_eq!(renew_after(s(3600), s(900)), s(2700));
        assert_eq!(renew_after(s(10), s(900)), s(5));
        assert_eq!(renew_after(s(10), s(10)), s(5));
    }

    #[test]
    fn config_reads_the_connection_string() {
        let cs = format!("HostName=hub.example;DeviceId=d1;SharedAccessKey={KEY};GatewayHostName=gw.example");
        let config = Config::new(&cs, &DeviceOptions::default()).unwrap();
        assert_eq!(config.device_id, "d1");
        assert_eq!(config.host, "gw.example");
        assert_eq!(config.port, 8883);
        assert!(config.username.starts_with("hub.example/d1/?"));
        let (token, renew) = config.password().unwrap();
        assert!(token.starts_with("SharedAccessSignature sr=hub.example%2Fdevices%2Fd1&"));
        assert!(renew.is_some());

        let ws = DeviceOptions {
            transport: Transport::WebSocket { https_port: Some(8443) },
            receive_methods: false,
            receive_c2d: false,
            ..DeviceOptions::default()
        };
        let config = Config::new(&cs, &ws).unwrap();
        assert!(config.websocket);
        assert_eq!(config.port, 8443);
        let filters: Vec<String> = config.filters().into_iter().map(|f| f.path).collect();
        assert_eq!(filters, ["$iothub/twin/res/#", "$iothub/twin/PATCH/properties/desired/#"]);
    }

    #[test]
    fn config_subscribes_to_everything_by_default() {
        let cs = format!("HostName=h;DeviceId=a+b;SharedAccessKey={KEY}");
        let config = Config::new(&cs, &DeviceOptions::default()).unwrap();
        let filters: Vec<(String, QoS)> = config.filters().into_iter().map(|f| (f.path, f.qos)).collect();
        assert_eq!(
            filters,
            [
                ("$iothub/twin/res/#".to_owned(), QoS::AtMostOnce),
                ("$iothub/twin/PATCH/properties/desired/#".to_owned(), QoS::AtMostOnce),
                ("$iothub/methods/POST/#".to_owned(), QoS::AtMostOnce),
                ("devices/a%2Bb/messages/devicebound/#".to_owned(), QoS::AtLeastOnce),
            ]
        );
    }

    #[test]
    fn config_refuses_what_cannot_work() {
        let err = |cs: &str, options: DeviceOptions| match Config::new(cs, &options) {
            Err(Error::Config(m)) => m,
            Err(other) => panic!("unexpected error {other:?}"),
            Ok(_) => panic!("accepted {cs}"),
        };
        let key = format!("HostName=h;DeviceId=d1;SharedAccessKey={KEY}");
        assert!(err("garbage", DeviceOptions::default()).contains("invalid connection string"));
        assert!(err(
            &format!("HostName=h;SharedAccessKeyName=p;SharedAccessKey={KEY}"),
            DeviceOptions::default()
        )
        .contains("DeviceId"));
        assert!(err(
            &format!("HostName=h;DeviceId=d;ModuleId=m;SharedAccessKey={KEY}"),
            DeviceOptions::default()
        )
        .contains("module"));
        assert!(err("HostName=h;DeviceId=d1;x509=true", DeviceOptions::default()).contains("client_cert"));
        let short = DeviceOptions { keep_alive: Duration::from_millis(10), ..DeviceOptions::default() };
        assert!(err(&key, short).contains("keep_alive"));
    }

    #[test]
    fn fixed_tokens_are_not_renewed() {
        let token = ferrohub_core::sas::generate_token("h/devices/d1", KEY, None, 1_700_000_000).unwrap();
        let cs = format!("HostName=h;DeviceId=d1;SharedAccessSignature={token}");
        let config = Config::new(&cs, &DeviceOptions::default()).unwrap();
        let (token, renew) = config.password().unwrap();
        assert!(token.starts_with("SharedAccessSignature sr="));
        assert!(renew.is_none());
        assert_eq!(config.fixed_token_expiry(), Some(1_700_000_000));
    }

    #[test]
    fn refusals_are_classified() {
        assert_eq!(
            classify(&ConnectionError::ConnectionRefused(ConnectReturnCode::NotAuthorized)),
            Failure::Refused(5)
        );
        assert_eq!(
            classify(&ConnectionError::ConnectionRefused(ConnectReturnCode::RefusedProtocolVersion)),
            Failure::Refused(1)
        );
        assert!(matches!(
            classify(&ConnectionError::ConnectionRefused(ConnectReturnCode::ServiceUnavailable)),
            Failure::Transient(_)
        ));
        let refused = std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "refused");
        assert!(matches!(classify(&ConnectionError::Io(refused)), Failure::Transient(_)));
        let cert = std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            rustls::Error::InvalidCertificate(rustls::CertificateError::UnknownIssuer),
        );
        assert!(matches!(classify(&ConnectionError::Io(cert)), Failure::Fatal(_)));
        assert!(matches!(classify(&ConnectionError::NetworkTimeout), Failure::Transient(_)));
    }

    #[test]
    fn method_payloads() {
        assert_eq!(json_or_text(b""), Value::Null);
        assert_eq!(json_or_text(b" "), Value::Null);
        assert_eq!(json_or_text(b"null"), Value::Null);
        assert_eq!(json_or_text(br#"{"a":1}"#), json!({"a": 1}));
        assert_eq!(json_or_text(br#""""#), json!(""));
        assert_eq!(json_or_text(b"not json"), json!("not json"));
    }
}
