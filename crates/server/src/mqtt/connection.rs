//! One device's MQTT session, from CONNECT to close.
//!
//! The loop waits on four things: bytes from the device, pushes from the hub
//! ([`Outbound`]: desired patches, method calls, queued C2D), the keep-alive
//! deadline and the token's expiry — plus a kick (takeover, disable,
//! delete, slow consumer). Protocol violations close this one connection and
//! nothing else.

use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use ferrohub_mqtt::frame::{read_packet, write_packet, MAX_PACKET, MAX_PACKET_BEFORE_AUTH};
use ferrohub_mqtt::topic::{self, Inbound, Subscription};
use ferrohub_mqtt::v4::{ConnAck, ConnectReturnCode, Packet, PubAck, Publish, SubAck, UnsubAck};
use ferrohub_mqtt::QoS;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tracing::Instrument as _;

use super::c2d::C2dDelivery;
use super::transport::Transport;
use crate::clock;
use crate::hub::methods::MethodReply;
use crate::hub::presence::Outbound;
use crate::hub::sessions::DeviceConnection;
use crate::hub::telemetry::TelemetryEvent;
use crate::hub::Hub;

/// How long a client may take to send CONNECT.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// IoT Hub's cap on the server-side keep-alive timeout.
const MAX_KEEP_ALIVE: Duration = Duration::from_secs(1767);
/// How often `lastActivityTime` is flushed while a device is busy.
const ACTIVITY_FLUSH: Duration = Duration::from_secs(60);
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
        Ok(who) => who,
        Err(code) => {
            let _ = send(&mut transport, &Packet::ConnAck(ConnAck::new(code, false))).await;
            let _ = tokio::time::timeout(CLOSE_TIMEOUT, transport.shutdown()).await;
            return;
        }
    };
    let span = tracing::info_span!("device", device_id = %who.device_id);
    async move {
        match Session::start(state, transport, buf, connect, who).await {
            Ok(session) => {
                let end = session.run().await;
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

struct Session {
    state: Arc<Hub>,
    transport: Transport,
    buf: BytesMut,
    device_id: String,
    /// Presence and the persistent session; dropping it records the end.
    conn: DeviceConnection,
    keep_alive: Option<Duration>,
    expires: Option<Instant>,
    rx: mpsc::Receiver<Outbound>,
    c2d: C2dDelivery,
    last_flush: Instant,
}

impl Session {
    async fn start(
        state: Arc<Hub>,
        mut transport: Transport,
        buf: BytesMut,
        connect: ferrohub_mqtt::v4::Connect,
        who: super::auth::Authenticated,
    ) -> Result<Self, End> {
        let device_id = who.device_id;
        let mut conn = state.sessions.connect(&device_id, !connect.clean_session).await?;
        let rx = conn.take_outbound().ok_or_else(|| violation("outbound queue taken"))?;
        let session_present = conn.session_present();
        send(&mut transport, &Packet::ConnAck(ConnAck::new(ConnectReturnCode::Success, session_present)))
            .await?;
        tracing::info!(device_id, session_present, "device connected");
        let keep_alive = (connect.keep_alive > 0)
            .then(|| Duration::from_millis(u64::from(connect.keep_alive) * 1500).min(MAX_KEEP_ALIVE));
        let now_unix = clock::unix_seconds();
        let expires = who
            .expires
            .map(|se| Instant::now() + Duration::from_secs(se.saturating_sub(now_unix).max(0) as u64));
        let c2d = C2dDelivery::new(device_id.clone(), conn.connection_token().to_owned());
        let mut session = Self {
            state,
            transport,
            buf,
            device_id,
            conn,
            keep_alive,
            expires,
            rx,
            c2d,
            last_flush: Instant::now(),
        };
        if session.subscribed(Subscription::C2d) {
            session.deliver_c2d().await?;
        }
        Ok(session)
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

    fn subscribed(&self, s: Subscription) -> bool {
        self.conn.subscribed(s)
    }

    /// Runs the session to its end. The end is recorded before the close,
    /// which may wait on a device that stopped reading (bounded for that
    /// reason); should this task panic instead, `conn`'s drop records it.
    async fn run(mut self) -> End {
        let end = self.run_loop().await;
        let Self { conn, mut transport, .. } = self;
        conn.close().await;
        let _ = tokio::time::timeout(CLOSE_TIMEOUT, transport.shutdown()).await;
        end
    }

    async fn run_loop(&mut self) -> End {
        let mut last_read = Instant::now();
        loop {
            let keep_alive = self.keep_alive.map(|k| last_read + k);
            tokio::select! {
                biased;
                _ = self.conn.kicked() => return End::Kicked,
                _ = sleep_until(self.expires) => return End::TokenExpired,
                _ = sleep_until(keep_alive) => return End::KeepAlive,
                read = self.transport.read(&mut self.buf) => {
                    match read {
                        Ok(0) => return End::Closed,
                        Err(e) => return End::Io(e),
                        Ok(_) => {}
                    }
                    last_read = Instant::now();
                    if let Err(end) = self.drain_packets().await {
                        return end;
                    }
                    self.flush_activity();
                }
                Some(out) = self.rx.recv() => {
                    if let Err(end) = self.push(out).await {
                        return end;
                    }
                }
            }
        }
    }

    /// Handles every complete packet in the buffer.
    async fn drain_packets(&mut self) -> Result<(), End> {
        loop {
            let packet = match read_packet(&mut self.buf, MAX_PACKET) {
                Ok(Some(p)) => p,
                Ok(None) => break,
                Err(e) => return Err(violation(e.to_string())),
            };
            match packet {
                Packet::Publish(p) => self.on_publish(p).await?,
                Packet::PubAck(ack) => {
                    if self.c2d.acked(&self.state, ack.pkid).await {
                        self.deliver_c2d().await?;
                    }
                }
                Packet::Subscribe(s) => self.on_subscribe(s).await?,
                Packet::Unsubscribe(u) => self.on_unsubscribe(u).await?,
                Packet::PingReq => self.send(&Packet::PingResp).await?,
                Packet::Disconnect => return Err(End::Disconnect),
                other => return Err(violation(format!("unexpected {other:?}"))),
            }
        }
        if self.buf.is_empty() && self.buf.capacity() > KEEP_BUFFER {
            self.buf = BytesMut::new();
        }
        Ok(())
    }

    /// Best-effort `lastActivityTime`, at most once a minute while busy.
    fn flush_activity(&mut self) {
        if self.last_flush.elapsed() < ACTIVITY_FLUSH {
            return;
        }
        self.last_flush = Instant::now();
        let registry = self.state.registry.clone();
        let device_id = self.device_id.clone();
        tokio::spawn(async move {
            let _ = registry.touch_activity(&device_id, clock::now()).await;
        });
    }

    async fn on_publish(&mut self, p: Publish) -> Result<(), End> {
        if p.qos == QoS::ExactlyOnce {
            return Err(violation("QoS 2 publish"));
        }
        let inbound = topic::parse_publish(&p.topic, &self.device_id)
            .map_err(|e| violation(format!("publish to {}: {e}", p.topic)))?;
        match inbound {
            Inbound::Telemetry(bag) => {
                // The SDKs allow payloads of up to 256 KiB with properties on
                // top, so the cap is on the payload.
                if p.payload.len() > ferrohub_core::message::MAX_TELEMETRY {
                    return Err(violation("telemetry message over 256 KB"));
                }
                let mut props = bag.parse();
                if p.retain {
                    props.application.insert("mqtt-retain", Some("true".into()));
                }
                // Copy: the payload is a view into the connection's read buffer.
                let body = Bytes::copy_from_slice(&p.payload);
                self.state.telemetry.push(TelemetryEvent::from_device(
                    &self.device_id,
                    props,
                    body,
                    clock::now(),
                ));
            }
            Inbound::TwinGet { rid } => {
                let rid = rid.to_owned();
                let reply = self.state.registry.device_twin(&self.device_id).await;
                self.twin_reply(&rid, reply.map(|v| (200, None, Bytes::from(v.to_string())))).await?;
            }
            Inbound::TwinPatchReported { rid } => {
                let rid = rid.to_owned();
                let reply = match serde_json::from_slice::<serde_json::Value>(&p.payload) {
                    Ok(patch) => self.state.registry.patch_reported(&self.device_id, &patch).await,
                    Err(e) => Err(ferrohub_core::HubError::format(format!(
                        "The reported patch is not valid JSON: {e}"
                    ))),
                };
                self.twin_reply(&rid, reply.map(|v| (204, Some(v), Bytes::new()))).await?;
            }
            Inbound::MethodResponse { status, rid } => {
                let payload = if p.payload.is_empty() {
                    serde_json::Value::Null
                } else {
                    serde_json::from_slice(&p.payload).unwrap_or_else(|_| {
                        serde_json::Value::String(String::from_utf8_lossy(&p.payload).into_owned())
                    })
                };
                let rid = rid.to_owned();
                self.state.methods.complete(
                    &self.device_id,
                    &rid,
                    MethodReply { status: i64::from(status), payload },
                );
            }
        }
        if p.qos == QoS::AtLeastOnce {
            self.send(&Packet::PubAck(PubAck::new(p.pkid))).await?;
        }
        Ok(())
    }

    /// Answers a twin request on `$iothub/twin/res/{status}/?$rid=..`, with
    /// Azure's error body on failure (the Node SDK reads only the body).
    async fn twin_reply(
        &mut self,
        rid: &str,
        reply: ferrohub_core::HubResult<(u16, Option<i64>, Bytes)>,
    ) -> Result<(), End> {
        // Answered even without a `$iothub/twin/res/#` subscription: the
        // Python SDK GETs the twin after every reconnect without one.
        let (status, version, body) = match reply {
            Ok(r) => r,
            Err(e) => {
                let now = clock::now().to_iso();
                let tracking = uuid::Uuid::new_v4().simple().to_string();
                let body = ferrohub_mqtt::error_body(e.code.numeric(), &e.message, &tracking, &now);
                (e.code.http_status(), None, Bytes::from(body))
            }
        };
        let topic = topic::twin_response(status, rid, version);
        self.send(&Packet::Publish(Publish::from_bytes(topic, QoS::AtMostOnce, body))).await
    }

    async fn on_subscribe(&mut self, s: ferrohub_mqtt::v4::Subscribe) -> Result<(), End> {
        let mut codes = Vec::with_capacity(s.filters.len());
        let mut next = self.conn.subscriptions();
        for f in &s.filters {
            let sub = topic::parse_filter(&f.path, &self.device_id)
                .map_err(|e| violation(format!("subscribe to {}: {e}", f.path)))?;
            next.insert(sub);
            codes.push(topic::granted_qos(f.qos));
        }
        let before = self.conn.set_subscriptions(next).await?;
        tracing::debug!(?next, ?before, "subscribed");
        self.send(&Packet::SubAck(SubAck::new(s.pkid, codes))).await?;
        if next.contains(Subscription::C2d) && !before.contains(Subscription::C2d) {
            self.deliver_c2d().await?;
        }
        Ok(())
    }

    async fn on_unsubscribe(&mut self, u: ferrohub_mqtt::v4::Unsubscribe) -> Result<(), End> {
        let mut next = self.conn.subscriptions();
        for t in &u.topics {
            let sub = topic::parse_filter(t, &self.device_id)
                .map_err(|e| violation(format!("unsubscribe {t}: {e}")))?;
            next.remove(sub);
        }
        self.conn.set_subscriptions(next).await?;
        tracing::debug!(?next, "unsubscribed");
        self.send(&Packet::UnsubAck(UnsubAck::new(u.pkid))).await
    }

    async fn push(&mut self, out: Outbound) -> Result<(), End> {
        match out {
            Outbound::Desired { version, body } => {
                let publish = Publish::from_bytes(topic::desired_patch(version), QoS::AtMostOnce, body);
                self.send(&Packet::Publish(publish)).await
            }
            Outbound::Method { name, rid, payload } => {
                let topic = topic::method_request(&name, &rid).map_err(|e| violation(e.to_string()))?;
                // Through `self.send` like every push: the same write
                // timeout and kick.
                self.send(&Packet::Publish(Publish::from_bytes(topic, QoS::AtMostOnce, payload))).await
            }
            Outbound::C2dAvailable => self.deliver_c2d().await,
        }
    }

    async fn deliver_c2d(&mut self) -> Result<(), End> {
        if !self.subscribed(Subscription::C2d) {
            return Ok(());
        }
        for publish in self.c2d.next_batch(&self.state).await {
            self.send(&Packet::Publish(publish)).await?;
        }
        Ok(())
    }
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}
