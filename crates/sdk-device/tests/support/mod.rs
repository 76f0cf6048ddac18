//! A scripted, in-process stand-in for the hub's MQTT endpoint, so the
//! client's connection task can be tested without the ferrohub binary:
//! TLS (a fresh CA and a `localhost` certificate), CONNECT with a SAS token
//! checked against one device key (or a client certificate), twin GET and
//! reported PATCH, telemetry PUBACKs, and hooks to push desired patches,
//! cloud-to-device messages and method calls, to refuse connections and to
//! cut them.
//!
//! Packets are parsed and written with rumqttc's own MQTT 3.1.1 codec.
#![allow(dead_code, unreachable_pub, clippy::unwrap_used)] // each test uses a different part

use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::BytesMut;
use ferrohub_core::sas::SasToken;
use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair};
use rumqttc::{ConnAck, ConnectReturnCode, Packet, PubAck, Publish, QoS, SubAck, SubscribeReasonCode};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use serde_json::{json, Value};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::mpsc;

/// The device key every test device uses.
pub const KEY: &str = "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=";

/// What a CONNECT carried.
#[derive(Debug, Clone)]
pub struct ConnectInfo {
    pub client_id: String,
    pub username: String,
    pub password: String,
    pub clean_session: bool,
    pub keep_alive: u16,
    pub client_certificate: bool,
}

/// Everything the mock saw and will do.
#[derive(Default)]
pub struct HubState {
    pub connects: Vec<ConnectInfo>,
    /// DISCONNECT packets received.
    pub disconnects: usize,
    pub subscriptions: Vec<(String, QoS)>,
    /// (topic, payload) of every telemetry PUBLISH, resends included.
    pub telemetry: Vec<(String, Vec<u8>)>,
    /// Twin GETs answered.
    pub twin_gets: usize,
    /// Leave this many twin GETs unanswered.
    pub ignore_twin_gets: usize,
    /// Packet ids the device PUBACKed.
    pub pubacks: Vec<u16>,
    /// (topic, payload) of method responses.
    pub method_responses: Vec<(String, Vec<u8>)>,
    /// Answer CONNECT with this code instead of checking credentials.
    pub refuse: Option<u8>,
    /// Do not PUBACK telemetry.
    pub withhold_telemetry_acks: bool,
    pub desired: Value,
    pub reported: Value,
    current: Option<mpsc::UnboundedSender<Command>>,
}

enum Command {
    Send(Packet),
    Cut,
}

/// A running mock hub; stops with the test's runtime.
pub struct MockHub {
    pub port: u16,
    pub ca_file: PathBuf,
    /// A client certificate and key (PEM files) signed by the mock's CA.
    pub client_cert: PathBuf,
    pub client_key: PathBuf,
    state: Arc<Mutex<HubState>>,
    _dir: tempfile::TempDir,
}

impl MockHub {
    pub async fn start() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let ca_key = KeyPair::generate().unwrap();
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let ca = ca_params.self_signed(&ca_key).unwrap();
        let server_key = KeyPair::generate().unwrap();
        let server = CertificateParams::new(vec!["localhost".to_owned()])
            .unwrap()
            .signed_by(&server_key, &ca, &ca_key)
            .unwrap();
        let client_key = KeyPair::generate().unwrap();
        let client = CertificateParams::new(vec!["d1".to_owned()])
            .unwrap()
            .signed_by(&client_key, &ca, &ca_key)
            .unwrap();

        let ca_file = dir.path().join("ca.pem");
        std::fs::write(&ca_file, ca.pem()).unwrap();
        let client_cert = dir.path().join("client.pem");
        std::fs::write(&client_cert, client.pem()).unwrap();
        let client_key_file = dir.path().join("client-key.pem");
        std::fs::write(&client_key_file, client_key.serialize_pem()).unwrap();

        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut roots = rustls::RootCertStore::empty();
        roots.add(ca.der().clone()).unwrap();
        let verifier =
            rustls::server::WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
                .allow_unauthenticated()
                .build()
                .unwrap();
        let config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_client_cert_verifier(verifier)
            .with_single_cert(
                vec![CertificateDer::from(server.der().to_vec())],
                PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(server_key.serialize_der())),
            )
            .unwrap();
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));

        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let state = Arc::new(Mutex::new(HubState {
            desired: json!({"$version": 1}),
            reported: json!({"$version": 1}),
            ..HubState::default()
        }));
        let accept_state = state.clone();
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let acceptor = acceptor.clone();
                let state = accept_state.clone();
                tokio::spawn(async move {
                    if let Ok(tls) = acceptor.accept(tcp).await {
                        let client_certificate = tls.get_ref().1.peer_certificates().is_some();
                        serve(tls, state, client_certificate).await;
                    }
                });
            }
        });
        MockHub { port, ca_file, client_cert, client_key: client_key_file, state, _dir: dir }
    }

    pub fn state(&self) -> MutexGuard<'_, HubState> {
        self.state.lock().unwrap()
    }

    /// Waits (up to 10 s) until `check` holds.
    pub async fn wait_for(&self, what: &str, check: impl Fn(&HubState) -> bool) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while !check(&self.state()) {
            assert!(tokio::time::Instant::now() < deadline, "timed out waiting for {what}");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    fn send(&self, packet: Packet) {
        let state = self.state();
        let tx = state.current.as_ref().expect("a device is connected");
        tx.send(Command::Send(packet)).unwrap();
    }

    /// Closes the device's connection without a word.
    pub fn cut(&self) {
        if let Some(tx) = self.state().current.take() {
            let _ = tx.send(Command::Cut);
        }
    }

    /// Changes desired properties as a service would; `push` sends the
    /// notification to the connected device.
    pub fn update_desired(&self, patch: Value, push: bool) -> i64 {
        let version = {
            let mut state = self.state();
            let version = state.desired["$version"].as_i64().unwrap() + 1;
            merge(&mut state.desired, &patch);
            state.desired["$version"] = json!(version);
            version
        };
        if push {
            self.push_desired_patch(version, patch);
        }
        version
    }

    /// Sends a desired notification with any version (duplicates too).
    pub fn push_desired_patch(&self, version: i64, mut patch: Value) {
        patch["$version"] = json!(version);
        let topic = format!("$iothub/twin/PATCH/properties/desired/?$version={version}");
        self.send(Packet::Publish(Publish::new(topic, QoS::AtMostOnce, patch.to_string())));
    }

    /// Delivers a cloud-to-device message at QoS 1 with packet id `pkid`.
    pub fn send_c2d(&self, pkid: u16, bag: &str, body: &str) {
        let mut publish =
            Publish::new(format!("devices/d1/messages/devicebound/{bag}"), QoS::AtLeastOnce, body);
        publish.pkid = pkid;
        self.send(Packet::Publish(publish));
    }

    /// Calls a direct method.
    pub fn invoke(&self, name: &str, rid: &str, payload: &str) {
        let topic = format!("$iothub/methods/POST/{name}/?$rid={rid}");
        self.send(Packet::Publish(Publish::new(topic, QoS::AtMostOnce, payload)));
    }
}

/// A device connection string for the mock hub.
pub fn connection_string(device_id: &str) -> String {
    format!("HostName=localhost;DeviceId={device_id};SharedAccessKey={KEY}")
}

fn merge(target: &mut Value, patch: &Value) {
    if let (Some(target), Some(patch)) = (target.as_object_mut(), patch.as_object()) {
        for (k, v) in patch {
            if v.is_null() {
                target.remove(k);
            } else {
                target.insert(k.clone(), v.clone());
            }
        }
    }
}

async fn read_packet<R: AsyncRead + Unpin>(reader: &mut R, buf: &mut BytesMut) -> Option<Packet> {
    loop {
        match Packet::read(buf, 1 << 20) {
            Ok(packet) => return Some(packet),
            Err(rumqttc::Error::InsufficientBytes(_)) => {}
            Err(_) => return None,
        }
        if reader.read_buf(buf).await.ok()? == 0 {
            return None;
        }
    }
}

async fn write_packet<W: AsyncWrite + Unpin>(writer: &mut W, packet: &Packet) -> bool {
    let mut out = BytesMut::new();
    packet.write(&mut out, 1 << 20).unwrap();
    writer.write_all(&out).await.is_ok() && writer.flush().await.is_ok()
}

fn now() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs() as i64
}

async fn serve<S: AsyncRead + AsyncWrite + Unpin>(
    stream: S,
    state: Arc<Mutex<HubState>>,
    client_certificate: bool,
) {
    let (mut reader, mut writer) = tokio::io::split(stream);
    let mut buf = BytesMut::new();
    let Some(Packet::Connect(connect)) = read_packet(&mut reader, &mut buf).await else { return };
    let login = connect.login.clone().unwrap_or_else(|| rumqttc::Login::new("", ""));
    let info = ConnectInfo {
        client_id: connect.client_id.clone(),
        username: login.username.clone(),
        password: login.password.clone(),
        clean_session: connect.clean_session,
        keep_alive: connect.keep_alive,
        client_certificate,
    };
    let (tx, mut rx) = mpsc::unbounded_channel();
    let code = {
        let mut s = state.lock().unwrap();
        s.connects.push(info.clone());
        let authorized = if info.password.is_empty() {
            client_certificate
        } else {
            SasToken::parse(&info.password)
                .map(|t| {
                    t.verify(KEY) && !t.is_expired(now()) && t.raw_resource() == "localhost%2Fdevices%2Fd1"
                })
                .unwrap_or(false)
        };
        match s.refuse {
            Some(code) => code,
            None if authorized => 0,
            None => 5,
        }
    };
    let code = match code {
        0 => ConnectReturnCode::Success,
        1 => ConnectReturnCode::RefusedProtocolVersion,
        2 => ConnectReturnCode::BadClientId,
        3 => ConnectReturnCode::ServiceUnavailable,
        4 => ConnectReturnCode::BadUserNamePassword,
        _ => ConnectReturnCode::NotAuthorized,
    };
    let accepted = code == ConnectReturnCode::Success;
    if !write_packet(&mut writer, &Packet::ConnAck(ConnAck::new(code, accepted))).await || !accepted {
        return;
    }
    if let Some(old) = state.lock().unwrap().current.replace(tx) {
        let _ = old.send(Command::Cut);
    }

    loop {
        let packet = tokio::select! {
            packet = read_packet(&mut reader, &mut buf) => match packet {
                Some(packet) => packet,
                None => return,
            },
            command = rx.recv() => match command {
                Some(Command::Send(packet)) => {
                    if !write_packet(&mut writer, &packet).await {
                        return;
                    }
                    continue;
                }
                Some(Command::Cut) | None => return,
            },
        };
        let replies = handle(&state, packet);
        for reply in replies {
            if matches!(reply, Packet::Disconnect) {
                return;
            }
            if !write_packet(&mut writer, &reply).await {
                return;
            }
        }
    }
}

/// What the mock answers to one packet (`Disconnect` = close).
fn handle(state: &Mutex<HubState>, packet: Packet) -> Vec<Packet> {
    let mut s = state.lock().unwrap();
    match packet {
        Packet::Subscribe(sub) => {
            let codes = sub
                .filters
                .iter()
                .map(|f| {
                    s.subscriptions.push((f.path.clone(), f.qos));
                    SubscribeReasonCode::Success(f.qos)
                })
                .collect();
            vec![Packet::SubAck(SubAck::new(sub.pkid, codes))]
        }
        Packet::PubAck(ack) => {
            s.pubacks.push(ack.pkid);
            vec![]
        }
        Packet::PingReq => vec![Packet::PingResp],
        Packet::Disconnect => {
            s.disconnects += 1;
            vec![Packet::Disconnect]
        }
        Packet::Publish(p) => {
            let payload = p.payload.to_vec();
            let mut out = Vec::new();
            if p.topic.starts_with("devices/d1/messages/events/") {
                s.telemetry.push((p.topic.clone(), payload));
                if p.qos == QoS::AtLeastOnce && !s.withhold_telemetry_acks {
                    out.push(Packet::PubAck(PubAck::new(p.pkid)));
                }
                return out;
            }
            if p.qos == QoS::AtLeastOnce {
                out.push(Packet::PubAck(PubAck::new(p.pkid)));
            }
            if p.topic.starts_with("$iothub/twin/GET/") && s.ignore_twin_gets > 0 {
                s.ignore_twin_gets -= 1;
            } else if let Some(rid) = p.topic.strip_prefix("$iothub/twin/GET/?$rid=") {
                s.twin_gets += 1;
                let body = json!({"desired": s.desired, "reported": s.reported}).to_string();
                let topic = format!("$iothub/twin/res/200/?$rid={rid}");
                out.push(Packet::Publish(Publish::new(topic, QoS::AtMostOnce, body)));
            } else if let Some(rid) = p.topic.strip_prefix("$iothub/twin/PATCH/properties/reported/?$rid=") {
                match serde_json::from_slice::<Value>(&payload) {
                    Ok(patch) if patch.is_object() => {
                        let version = s.reported["$version"].as_i64().unwrap() + 1;
                        merge(&mut s.reported, &patch);
                        s.reported["$version"] = json!(version);
                        let topic = format!("$iothub/twin/res/204/?$rid={rid}&$version={version}");
                        out.push(Packet::Publish(Publish::new(topic, QoS::AtMostOnce, Vec::new())));
                    }
                    _ => {
                        let body = json!({"errorCode": 400004, "message": "bad patch"}).to_string();
                        let topic = format!("$iothub/twin/res/400/?$rid={rid}");
                        out.push(Packet::Publish(Publish::new(topic, QoS::AtMostOnce, body)));
                    }
                }
            } else if p.topic.starts_with("$iothub/methods/res/") {
                s.method_responses.push((p.topic.clone(), payload));
            }
            out
        }
        _ => vec![],
    }
}
