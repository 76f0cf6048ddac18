//! The device-facing MQTT endpoint: MQTT 3.1.1 over TLS (8883) and over
//! WebSockets (`/$iothub/websocket` on 443), as IoT Hub speaks it.
//!
//! `transport` hides TLS vs WebSocket, `auth` checks CONNECT, `connection`
//! runs a session, `c2d` delivers queued messages. Packet framing, topics
//! and property bags are protocol knowledge in the pure `ferrohub-mqtt`
//! crate.

mod auth;
mod c2d;
mod connection;
mod transport;

use std::sync::Arc;

use axum::extract::ws::WebSocketUpgrade;
use axum::extract::State as AxState;
use axum::response::Response;
use bytes::Bytes;
use ferrohub_mqtt::bag::MessageProperties;
use rustls::pki_types::{CertificateDer, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{DigitallySignedStruct, DistinguishedName, SignatureScheme};
use serde_json::{Map, Value};

use crate::api::AppState;
use crate::telemetry::TelemetryEvent;
use transport::Transport;

/// How long a TLS handshake may take.
const HANDSHAKE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// Accepts TLS connections on one listener until the task is dropped.
pub(crate) async fn accept_loop(
    listener: tokio::net::TcpListener,
    tls: Arc<rustls::ServerConfig>,
    state: Arc<AppState>,
) -> anyhow::Result<()> {
    let acceptor = tokio_rustls::TlsAcceptor::from(tls);
    loop {
        let (socket, peer) = match listener.accept().await {
            Ok(s) => s,
            Err(e) => {
                // Out of file descriptors and the like: back off, keep serving.
                tracing::warn!(%e, "MQTT accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                continue;
            }
        };
        let _ = socket.set_nodelay(true);
        let acceptor = acceptor.clone();
        let state = state.clone();
        tokio::spawn(async move {
            let stream = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(socket)).await {
                Ok(Ok(s)) => s,
                Ok(Err(e)) => {
                    tracing::debug!(%peer, %e, "TLS handshake failed");
                    return;
                }
                Err(_) => return,
            };
            let cert =
                stream.get_ref().1.peer_certificates().and_then(|c| c.first()).map(|c| c.as_ref().to_vec());
            connection::serve(state, Transport::Tls(Box::new(stream)), cert).await;
        });
    }
}

/// `GET /$iothub/websocket`: MQTT over WebSockets. The `mqtt` subprotocol is
/// echoed (the Node SDK fails without it). A client certificate presented to
/// the HTTPS listener authenticates `selfSigned` devices here as on 8883.
/// Unmasked client frames are
/// accepted because paho (the Python SDK) answers pings and closes with
/// them; the hub itself never pings over the WebSocket, MQTT keep-alive does
/// that job.
pub(crate) async fn websocket(
    AxState(state): AxState<Arc<AppState>>,
    cert: Option<axum::Extension<crate::client_cert::PeerCertificate>>,
    ws: WebSocketUpgrade,
) -> Response {
    let cert = cert.and_then(|axum::Extension(c)| c.0).map(|c| c.as_ref().clone());
    ws.protocols(["mqtt"])
        .accept_unmasked_frames(true)
        .max_message_size(ferrohub_mqtt::MAX_PACKET * 2)
        .on_upgrade(move |socket| connection::serve(state, Transport::Ws(Box::new(socket)), cert))
}

/// The telemetry event for a device's publish.
fn telemetry_event(
    device_id: &str,
    props: MessageProperties,
    retain: bool,
    payload: &Bytes,
) -> TelemetryEvent {
    let mut system = match serde_json::to_value(&props.system) {
        Ok(Value::Object(m)) => m,
        _ => Map::new(),
    };
    system.insert("iothub-connection-device-id".into(), Value::String(device_id.to_owned()));
    let mut properties = match serde_json::to_value(&props.application) {
        Ok(Value::Object(m)) => m,
        _ => Map::new(),
    };
    if retain {
        properties.insert("mqtt-retain".into(), Value::String("true".into()));
    }
    TelemetryEvent {
        device_id: device_id.to_owned(),
        enqueued_time: crate::clock::now(),
        system_properties: system,
        properties,
        // Copy: the payload is a view into the connection's read buffer.
        body: Bytes::copy_from_slice(payload),
    }
}

/// Asks every TLS client for a certificate without checking its chain, so
/// that `selfSigned` devices can present theirs and a wrong one is refused
/// in MQTT (CONNACK 0x05), not by a TLS alert. The handshake signature is
/// still verified, so a client proves it holds the certificate's key.
#[derive(Debug)]
pub(crate) struct AnyClientCert {
    algorithms: rustls::crypto::WebPkiSupportedAlgorithms,
}

impl AnyClientCert {
    pub(crate) fn new() -> Self {
        Self { algorithms: rustls::crypto::ring::default_provider().signature_verification_algorithms }
    }
}

impl ClientCertVerifier for AnyClientCert {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        false
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        Ok(ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}
