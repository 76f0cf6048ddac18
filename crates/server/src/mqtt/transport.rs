//! The byte pipe under an MQTT connection: TLS over TCP, or binary frames of
//! a WebSocket (`/$iothub/websocket` on the HTTPS port). The session loop
//! sees only this, so both behave the same.

use std::io;

use bytes::{Bytes, BytesMut};
use futures_util::{SinkExt as _, StreamExt as _};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::server::TlsStream;
use tokio_tungstenite::tungstenite::Message;

use super::websocket::{self, Socket};

/// How much free room a read needs; the buffer grows past this only while a
/// large packet is arriving, and is dropped again when idle.
const READ_CHUNK: usize = 2048;

/// One device connection's stream.
pub(crate) enum Transport {
    /// MQTT over TLS (port 8883).
    Tls(Box<TlsStream<TcpStream>>),
    /// MQTT over WebSockets (port 443), capped until [`authenticated`](Self::authenticated).
    Ws(Box<Socket>),
}

impl Transport {
    /// The device's CONNECT was accepted: lift the pre-CONNACK cap. (Over
    /// TLS the framing caps the CONNECT; a WebSocket is capped underneath,
    /// see `websocket`.)
    pub(crate) fn authenticated(&mut self) {
        if let Self::Ws(ws) = self {
            websocket::uncap(ws);
        }
    }

    /// Appends received bytes to `buf`; 0 means the peer closed. Cancel-safe.
    pub(crate) async fn read(&mut self, buf: &mut BytesMut) -> io::Result<usize> {
        match self {
            Self::Tls(s) => {
                if buf.capacity() - buf.len() < READ_CHUNK / 4 {
                    buf.reserve(READ_CHUNK);
                }
                s.read_buf(buf).await
            }
            Self::Ws(ws) => loop {
                match ws.next().await {
                    None | Some(Ok(Message::Close(_))) => return Ok(0),
                    Some(Err(e)) => return Err(io::Error::other(e)),
                    Some(Ok(Message::Binary(b))) => {
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
