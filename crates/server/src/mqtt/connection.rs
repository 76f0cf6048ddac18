//! One device's MQTT connection, from CONNECT to close: the IO around the
//! pure session of `ferrohub_mqtt::session`.
//!
//! The loop waits on four things: bytes from the device, pushes from the hub
//! ([`Outbound`]: desired patches, method calls, queued C2D), the session's
//! next deadline (keep-alive or token expiry) and a kick (takeover,
//! disable, delete, slow consumer). Each becomes an [`Input`] to the
//! session; the [`Action`]s it returns are carried out here, in order,
//! against the [`Hub`] and the transport. What is a violation, which
//! subscriptions hold, packet ids and the C2D window are the session's
//! decisions; write timeouts, kicks during writes and the close are this
//! loop's. Protocol violations close this one connection and nothing else.
//! When the connection ends, the loop tells the session how ([`Ending`];
//! for a kick it asks the registry whether the device was disabled or
//! deleted) and publishes the will if the session returns it, through the
//! same telemetry action as a PUBLISH.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use ferrohub_core::identity::DeviceStatus;
use ferrohub_core::throttle::Class;
use ferrohub_core::ErrorCode;
use ferrohub_mqtt::frame::{read_packet, write_packet, MAX_PACKET, MAX_PACKET_BEFORE_AUTH};
use ferrohub_mqtt::session::{Accepted, Action, Close, Ending, Input, Kick, Session};
use ferrohub_mqtt::v4::{ConnAck, ConnectReturnCode, Packet};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tracing::Instrument as _;

use super::transport::Transport;
use crate::clock;
use crate::hub::methods::MethodReply;
use crate::hub::presence::Outbound;
use crate::hub::sessions::DeviceConnection;
use crate::hub::telemetry::TelemetryEvent;
use crate::hub::Hub;

/// How long a client may take to send CONNECT.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long one write may wait for the device to read.
const WRITE_TIMEOUT: Duration = Duration::from_secs(30);
/// How long closing may wait for the device to take the close.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(5);
/// Idle read buffers above this are released.
const KEEP_BUFFER: usize = 4096;

/// Why a session ended. Only logged (through Debug), which the dead-code
/// lint does not count as reading the fields.
#[derive(Debug)]
#[allow(dead_code)]
enum End {
    Closed,
    Disconnect,
    Kicked,
    KeepAlive,
    TokenExpired,
    SlowConsumer,
    Violation(String),
    /// The hub could not do what the device asked (a store failure).
    Hub(ferrohub_core::HubError),
    Io(std::io::Error),
}

impl From<ferrohub_core::HubError> for End {
    fn from(e: ferrohub_core::HubError) -> Self {
        Self::Hub(e)
    }
}

impl From<std::io::Error> for End {
    fn from(e: std::io::Error) -> Self {
        Self::Io(e)
    }
}

impl From<Close> for End {
    fn from(c: Close) -> Self {
        match c {
            Close::Disconnect => Self::Disconnect,
            Close::Kicked => Self::Kicked,
            Close::KeepAlive => Self::KeepAlive,
            Close::TokenExpired => Self::TokenExpired,
            Close::Violation(what) => Self::Violation(what),
        }
    }
}

fn violation(what: impl Into<String>) -> End {
    End::Violation(what.into())
}

/// Serves one connection to its end.
pub(crate) async fn serve(state: Arc<Hub>, mut transport: Transport, client_cert: Option<Vec<u8>>) {
    let mut buf = BytesMut::new();
    let connect = match tokio::time::timeout(CONNECT_TIMEOUT, read_connect(&mut transport, &mut buf)).await {
        Ok(Ok(c)) => c,
        Ok(Err(code)) => {
            if let Some(code) = code {
                let _ = send(&mut transport, &Packet::ConnAck(ConnAck::new(code, false))).await;
            }
            let _ = tokio::time::timeout(CLOSE_TIMEOUT, transport.shutdown()).await;
            return;
        }
        Err(_) => {
            tracing::debug!("no CONNECT in time");
            return;
        }
    };
    let who = match super::auth::authenticate(&state, &connect, client_cert.as_deref()).await {
        Ok(who) => {
            transport.authenticated();
            who
        }
        Err(code) => {
            let _ = send(&mut transport, &Packet::ConnAck(ConnAck::new(code, false))).await;
            let _ = tokio::time::timeout(CLOSE_TIMEOUT, transport.shutdown()).await;
            return;
        }
    };
    // Throttle: beyond the hub's rate of new connections, CONNACK 3 (server
    // unavailable), which SDKs retry; counted after authentication, so
    // clients without credentials cannot use up the devices' rate.
    if let Err(e) = state.throttles.check(Class::Connect, 1) {
        tracing::debug!(%e, device_id = %who.device_id, "connect throttled");
        let refused = ConnAck::new(ConnectReturnCode::ServiceUnavailable, false);
        let _ = send(&mut transport, &Packet::ConnAck(refused)).await;
        let _ = tokio::time::timeout(CLOSE_TIMEOUT, transport.shutdown()).await;
        return;
    }
    let span = tracing::info_span!("device", device_id = %who.device_id);
    async move {
        // The session is recorded before anything is accepted; when the
        // store cannot take that write (a full disk, a failing store) the
        // device gets CONNACK 3, server unavailable, which the SDKs retry,
        // rather than a connection closed without an answer.
        let conn = match state.sessions.connect(&who.device_id, !connect.clean_session).await {
            Ok(conn) => conn,
            Err(e) => {
                tracing::warn!(%e, "session could not be recorded; CONNACK 3");
                let refused = ConnAck::new(ConnectReturnCode::ServiceUnavailable, false);
                let _ = send(&mut transport, &Packet::ConnAck(refused)).await;
                let _ = tokio::time::timeout(CLOSE_TIMEOUT, transport.shutdown()).await;
                return;
            }
        };
        match Link::start(state, conn, transport, buf, connect, who).await {
            Ok((link, first)) => {
                let end = link.run(first).await;
                tracing::info!(?end, "device disconnected");
            }
            Err(e) => tracing::warn!(?e, "session start failed"),
        }
    }
    .instrument(span)
    .await;
}

/// Reads until a CONNECT arrives. Anything else first closes the
/// connection (`None`); a CONNECT for another protocol level gets 0x01.
async fn read_connect(
    transport: &mut Transport,
    buf: &mut BytesMut,
) -> Result<ferrohub_mqtt::v4::Connect, Option<ConnectReturnCode>> {
    loop {
        match read_packet(buf, MAX_PACKET_BEFORE_AUTH) {
            Ok(Some(Packet::Connect(c))) => return Ok(c),
            Ok(Some(_)) => return Err(None),
            Ok(None) => {}
            Err(e) => return Err(e.connack_code()),
        }
        match transport.read(buf).await {
            Ok(0) | Err(_) => return Err(None),
            Ok(_) => {}
        }
    }
}

async fn send(transport: &mut Transport, packet: &Packet) -> Result<(), End> {
    let mut out = BytesMut::new();
    write_packet(packet, &mut out).map_err(|e| violation(format!("cannot encode: {e}")))?;
    transport.write(out.freeze()).await?;
    Ok(())
}

/// The connection: its transport, its hub-side guard and its session.
struct Link {
    state: Arc<Hub>,
    transport: Transport,
    buf: BytesMut,
    /// Presence and the persistent session; dropping it records the end.
    conn: DeviceConnection,
    session: Session,
    rx: mpsc::Receiver<Outbound>,
}

impl Link {
    /// Registers the connection with the hub and accepts the session; the
    /// returned actions (CONNACK, a first C2D fetch) are carried out by
    /// [`run`](Self::run).
    async fn start(
        state: Arc<Hub>,
        mut conn: crate::hub::sessions::DeviceConnection,
        transport: Transport,
        buf: BytesMut,
        mut connect: ferrohub_mqtt::v4::Connect,
        who: super::auth::Authenticated,
    ) -> Result<(Self, Vec<Action>), End> {
        let device_id = who.device_id;
        let will = connect.last_will.take();
        let will_topic = will.as_ref().map(|w| w.topic.clone());
        let rx = conn.take_outbound().ok_or_else(|| violation("outbound queue taken"))?;
        let session_present = conn.session_present();
        let now_unix = clock::unix_seconds();
        let token_lifetime =
            who.expires.map(|se| Duration::from_secs(se.saturating_sub(now_unix).max(0) as u64));
        let accepted = Accepted {
            device_id,
            keep_alive_secs: connect.keep_alive,
            token_lifetime,
            subscriptions: conn.subscriptions(),
            session_present,
            will,
        };
        let now = Instant::now();
        let (session, first) = Session::accept(accepted, now);
        tracing::info!(device_id = session.device_id(), session_present, "device connected");
        if let Some(topic) = will_topic.filter(|_| !session.has_will()) {
            tracing::info!(%topic, "will ignored: not the device's telemetry topic");
        }
        Ok((Self { state, transport, buf, conn, session, rx }, first))
    }

    /// Writes a packet. A write the device does not take within
    /// [`WRITE_TIMEOUT`], or a kick while waiting, ends the session: a
    /// device that stops reading must not hold the hub's memory.
    async fn send(&mut self, packet: &Packet) -> Result<(), End> {
        let mut out = BytesMut::new();
        write_packet(packet, &mut out).map_err(|e| violation(format!("cannot encode: {e}")))?;
        tokio::select! {
            r = tokio::time::timeout(WRITE_TIMEOUT, self.transport.write(out.freeze())) => match r {
                Ok(r) => r.map_err(End::Io),
                Err(_) => Err(End::SlowConsumer),
            },
            _ = self.conn.kicked() => Err(End::Kicked),
        }
    }

    /// Holds a paced telemetry message for `wait` (a kick still ends the
    /// connection). The hub is the one not reading meanwhile, so the hold
    /// does not count against the device's keep-alive.
    async fn hold(&mut self, wait: Duration) -> Result<(), End> {
        tokio::select! {
            () = tokio::time::sleep(wait) => {}
            _ = self.conn.kicked() => return Err(End::Kicked),
        }
        self.session.bytes_received(Instant::now());
        Ok(())
    }

    /// Runs the connection to its end. The end is recorded before the
    /// close, which may wait on a device that stopped reading (bounded for
    /// that reason); should this task panic instead, `conn`'s drop records it.
    async fn run(mut self, first: Vec<Action>) -> End {
        let end = match self.carry_out(first).await {
            Ok(()) => self.run_loop().await,
            Err(end) => end,
        };
        let ending = ending(&self.state, self.session.device_id(), &end).await;
        if let Some(will) = self.session.end(ending) {
            tracing::info!("publishing the will");
            // Only a telemetry action comes back, which cannot fail.
            let _ = self.act(will).await;
        }
        let Self { conn, mut transport, .. } = self;
        conn.close().await;
        let _ = tokio::time::timeout(CLOSE_TIMEOUT, transport.shutdown()).await;
        end
    }

    async fn run_loop(&mut self) -> End {
        loop {
            let deadline = self.session.next_deadline();
            let input = tokio::select! {
                biased;
                _ = self.conn.kicked() => Input::Kicked,
                _ = sleep_until(deadline) => Input::Tick,
                read = self.transport.read(&mut self.buf) => {
                    match read {
                        Ok(0) => return End::Closed,
                        Err(e) => return End::Io(e),
                        Ok(_) => {}
                    }
                    self.session.bytes_received(Instant::now());
                    if let Err(end) = self.drain_packets().await {
                        return end;
                    }
                    self.state.activity.seen(self.session.device_id());
                    continue;
                }
                Some(out) = self.rx.recv() => match out {
                    Outbound::Desired { version, body } => Input::Desired { version, body },
                    Outbound::Method { name, rid, payload } => Input::Method { name, rid, payload },
                    Outbound::C2dAvailable => Input::C2dAvailable,
                },
            };
            if let Err(end) = self.feed(input).await {
                return end;
            }
        }
    }

    /// Feeds every complete packet in the buffer to the session.
    async fn drain_packets(&mut self) -> Result<(), End> {
        loop {
            match read_packet(&mut self.buf, MAX_PACKET) {
                Ok(Some(p)) => self.feed(Input::Packet(p)).await?,
                Ok(None) => break,
                Err(e) => return Err(violation(e.to_string())),
            }
        }
        if self.buf.is_empty() && self.buf.capacity() > KEEP_BUFFER {
            self.buf = BytesMut::new();
        }
        Ok(())
    }

    async fn feed(&mut self, input: Input) -> Result<(), End> {
        let actions = self.session.handle(Instant::now(), input);
        self.carry_out(actions).await
    }

    /// Carries out the session's actions in order. An action that asks the
    /// hub something feeds the answer back, and what the session makes of
    /// it goes first: a twin response is written before the PUBACK of its
    /// request.
    async fn carry_out(&mut self, actions: Vec<Action>) -> Result<(), End> {
        let mut work = VecDeque::from(actions);
        while let Some(action) = work.pop_front() {
            let Some(answer) = self.act(action).await? else { continue };
            let more = self.session.handle(Instant::now(), answer);
            for a in more.into_iter().rev() {
                work.push_front(a);
            }
        }
        Ok(())
    }

    /// One action; `Some` is the hub's answer for the session.
    async fn act(&mut self, action: Action) -> Result<Option<Input>, End> {
        let device_id = self.session.device_id();
        Ok(match action {
            Action::Write(p) => {
                self.send(&p).await?;
                None
            }
            Action::Close(c) => return Err(c.into()),
            Action::Telemetry { properties, payload } => {
                // Throttle: over the telemetry rate the message, and with
                // it its PUBACK (the session's next action), waits. Past
                // the daily quota the connection ends, as on IoT Hub.
                let wait = self.state.telemetry.pace(device_id, payload.len())?;
                if !wait.is_zero() {
                    self.hold(wait).await?;
                }
                // Copy: the payload is a view into the connection's read buffer.
                let body = Bytes::copy_from_slice(&payload);
                let event =
                    TelemetryEvent::from_device(self.session.device_id(), properties, body, clock::now());
                self.state.telemetry.push(event);
                None
            }
            Action::TwinGet { rid } => {
                let reply = self.state.registry.device_twin(device_id).await;
                Some(twin_result(rid, reply.map(|v| (200, None, Bytes::from(v.to_string())))))
            }
            Action::ReportedPatch { rid, payload } => {
                let reply = match serde_json::from_slice::<serde_json::Value>(&payload) {
                    Ok(patch) => self.state.registry.patch_reported(device_id, &patch).await,
                    Err(e) => Err(ferrohub_core::HubError::format(format!(
                        "The reported patch is not valid JSON: {e}"
                    ))),
                };
                Some(twin_result(rid, reply.map(|v| (204, Some(v), Bytes::new()))))
            }
            Action::MethodResponse { rid, status, payload } => {
                let payload = if payload.is_empty() {
                    serde_json::Value::Null
                } else {
                    serde_json::from_slice(&payload).unwrap_or_else(|_| {
                        serde_json::Value::String(String::from_utf8_lossy(&payload).into_owned())
                    })
                };
                let reply = MethodReply { status: i64::from(status), payload };
                self.state.methods.complete(device_id, &rid, reply);
                None
            }
            Action::StoreSubscriptions(next) => {
                let before = self.conn.set_subscriptions(next).await?;
                tracing::debug!(?next, ?before, "subscriptions changed");
                None
            }
            Action::FetchC2d { max } => Some(Input::C2dFetched(super::c2d::fetch(&self.conn, max).await)),
            Action::CompleteC2d { seq } => {
                super::c2d::complete(&self.conn, seq).await;
                None
            }
        })
    }
}

/// How the session ended, for the will: the session's own closes as they
/// were, a kick with its reason, everything else a lost connection.
async fn ending(state: &Hub, device_id: &str, end: &End) -> Ending {
    match end {
        End::Disconnect => Ending::Closed(Close::Disconnect),
        End::KeepAlive => Ending::Closed(Close::KeepAlive),
        End::TokenExpired => Ending::Closed(Close::TokenExpired),
        End::Violation(what) => Ending::Closed(Close::Violation(what.clone())),
        End::Kicked => Ending::Kicked(kick_reason(state, device_id).await),
        End::Closed | End::SlowConsumer | End::Hub(_) | End::Io(_) => Ending::Lost,
    }
}

/// Presence does not say why it kicked, but the registry commits a disable
/// or delete before kicking: a device that is gone or disabled now was
/// revoked; anything else (a takeover, a slow consumer, a store failure on
/// this lookup) is not.
async fn kick_reason(state: &Hub, device_id: &str) -> Kick {
    match state.registry.get_device(device_id).await {
        Err(e) if e.code == ErrorCode::DeviceNotFound => Kick::Revoked,
        Ok(d) if d.status == DeviceStatus::Disabled => Kick::Revoked,
        _ => Kick::Other,
    }
}

/// A twin request's answer, with Azure's error body on failure (the Node
/// SDK reads only the body).
fn twin_result(rid: String, reply: ferrohub_core::HubResult<(u16, Option<i64>, Bytes)>) -> Input {
    let (status, version, body) = match reply {
        Ok(r) => r,
        Err(e) => {
            let now = clock::now().to_iso();
            let tracking = uuid::Uuid::new_v4().simple().to_string();
            let body = ferrohub_mqtt::error_body(e.code.numeric(), &e.message, &tracking, &now);
            (e.code.http_status(), None, Bytes::from(body))
        }
    };
    Input::TwinResult { rid, status, version, body }
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}
