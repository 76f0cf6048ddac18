//! The byte pipe under an MQTT connection: TLS over TCP, or binary frames of
//! a WebSocket (`/$iothub/websocket` on the HTTPS port). The session loop
//! sees only this, so both behave the same.

use std::io;

use axum::extract::ws::{Message, WebSocket};
use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::server::TlsStream;

/// How much free room a read needs; the buffer grows past this only while a
/// large packet is arriving, and is dropped again when idle.
const READ_CHUNK: usize = 2048;

/// What the read buffer may hold before CONNACK: the largest CONNECT the
/// framing takes ([`ferrohub_mqtt::MAX_PACKET_BEFORE_AUTH`] plus a fixed
/// header of at most 5 bytes). Over TLS the framing enforces it as the
/// length field arrives; a WebSocket message arrives whole, so a message
/// that would take the buffer past it closes the connection.
pub(crate) const BEFORE_AUTH: usize = ferrohub_mqtt::MAX_PACKET_BEFORE_AUTH + 5;

/// One device connection's stream.
pub(crate) enum Transport {
    /// MQTT over TLS (port 8883).
    Tls(Box<TlsStream<TcpStream>>),
    /// MQTT over WebSockets (port 443).
    Ws(Box<WebSocket>),
}

impl Transport {
    /// Appends received bytes to `buf`; 0 means the peer closed. Cancel-safe.
    /// A WebSocket message that would make `buf` longer than `cap` is an
    /// error (see [`BEFORE_AUTH`]); over TLS the framing caps what is kept.
    pub(crate) async fn read(&mut self, buf: &mut BytesMut, cap: usize) -> io::Result<usize> {
        match self {
            Self::Tls(s) => {
                if buf.capacity() - buf.len() < READ_CHUNK / 4 {
                    buf.reserve(READ_CHUNK);
                }
                s.read_buf(buf).await
            }
            Self::Ws(ws) => loop {
                match ws.recv().await {
                    None | Some(Ok(Message::Close(_))) => return Ok(0),
                    Some(Err(e)) => return Err(io::Error::other(e)),
                    Some(Ok(Message::Binary(b))) => {
                        if buf.len().saturating_add(b.len()) > cap {
                            return Err(io::Error::new(
                                io::ErrorKind::InvalidData,
                                format!("{} bytes from the device exceed the limit of {cap}", b.len()),
                            ));
                        }
                        buf.extend_from_slice(&b);
                        // An empty frame is not a close.
                        if !b.is_empty() {
                            return Ok(b.len());
                        }
                    }
                    // Pings are answered by the WebSocket layer; text frames
                    // carry no MQTT.
                    Some(Ok(_)) => {}
                }
            },
        }
    }

    /// Sends bytes (whole packets).
    pub(crate) async fn write(&mut self, data: Bytes) -> io::Result<()> {
        match self {
            Self::Tls(s) => {
                s.write_all(&data).await?;
                s.flush().await
            }
            Self::Ws(ws) => ws.send(Message::Binary(data)).await.map_err(io::Error::other),
        }
    }

    /// Closes politely (errors are irrelevant at this point).
    pub(crate) async fn shutdown(&mut self) {
        match self {
            Self::Tls(s) => {
                let _ = s.shutdown().await;
            }
            Self::Ws(ws) => {
                let _ = ws.send(Message::Close(None)).await;
            }
        }
    }
}
