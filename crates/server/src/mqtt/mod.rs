//! The device-facing MQTT endpoint: MQTT 3.1.1 over TLS (8883) and over
//! WebSockets (`/$iothub/websocket` on 443), as IoT Hub speaks it.
//!
//! It knows MQTT and the [`Hub`] core, nothing of the REST API.
//! `transport` hides TLS vs WebSocket, `auth` checks CONNECT, `connection`
//! runs a session, `c2d` delivers queued messages. Packet framing, topics
//! and property bags are protocol knowledge in the pure `ferrohub-mqtt`
//! crate.

mod auth;
mod c2d;
mod connection;
mod transport;
mod websocket;

use std::sync::Arc;

use axum::extract::State as AxState;
use axum::response::{IntoResponse as _, Response};

use crate::hub::Hub;
use transport::Transport;

/// The route the HTTPS listener serves MQTT over WebSockets on; merged
/// into the HTTPS router by `serve`, so the REST API never names MQTT.
pub(crate) fn websocket_routes(hub: Arc<Hub>) -> axum::Router {
    axum::Router::new().route("/$iothub/websocket", axum::routing::get(websocket)).with_state(hub)
}

/// Accepts TLS connections on one listener until the task is dropped. A
/// connection over the port's cap is closed before TLS; the permit it gets
/// otherwise lives as long as its task.
pub(crate) async fn accept_loop(
    listener: tokio::net::TcpListener,
    tls: Arc<rustls::ServerConfig>,
    state: Arc<Hub>,
    limits: Arc<crate::conn_limits::ConnLimits>,
    handshake_timeout: std::time::Duration,
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
        let Ok(permit) = limits.admit(peer.ip()) else {
            drop(socket);
            continue;
        };
        let _ = socket.set_nodelay(true);
        let acceptor = acceptor.clone();
        let state = state.clone();
        tokio::spawn(async move {
            let _permit = permit;
            let stream = match tokio::time::timeout(handshake_timeout, acceptor.accept(socket)).await {
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
/// The hub never pings over the WebSocket; MQTT keep-alive does that job.
/// See `websocket` for the limits and why the upgrade is done there.
async fn websocket(
    AxState(state): AxState<Arc<Hub>>,
    cert: Option<axum::Extension<crate::client_cert::PeerCertificate>>,
    mut req: axum::extract::Request,
) -> Response {
    let cert = cert.and_then(|axum::Extension(c)| c.0).map(|c| c.as_ref().clone());
    let accept = match websocket::accept(req.headers()) {
        Ok(a) => a,
        Err(why) => return (axum::http::StatusCode::BAD_REQUEST, why).into_response(),
    };
    // Without it (not HTTP/1.1) `on` would fail only after the 101 went out.
    if req.extensions().get::<hyper::upgrade::OnUpgrade>().is_none() {
        return (axum::http::StatusCode::BAD_REQUEST, "the connection cannot be upgraded").into_response();
    }
    let upgrade = hyper::upgrade::on(&mut req);
    tokio::spawn(async move {
        match upgrade.await {
            Ok(upgraded) => {
                let socket = websocket::socket(upgraded).await;
                connection::serve(state, Transport::Ws(Box::new(socket)), cert).await;
            }
            Err(e) => tracing::debug!(%e, "WebSocket upgrade failed"),
        }
    });
    accept.response()
}
