//! MQTT over WebSockets: the upgrade of `GET /$iothub/websocket` and the
//! byte stream under the WebSocket layer.
//!
//! The upgrade is done here rather than with axum's `WebSocketUpgrade`
//! because the pre-CONNACK cap has to sit *under* the WebSocket layer:
//! tungstenite reads a whole frame (up to its fixed limit, which must fit
//! a 256 KiB message after authentication) before handing any of it up, so
//! a cap applied to messages would still let each anonymous connection make
//! the hub buffer a full frame. [`Capped`] counts the raw bytes a device
//! sends until its CONNECT is accepted, as the TLS listener's framing caps
//! the CONNECT, and fails the read beyond that; the WebSocket layer's own
//! limits (frame, message, read and write buffers) bound what follows.

use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::{Role, WebSocketConfig};
use tokio_tungstenite::WebSocketStream;

/// A device's WebSocket.
pub(crate) type Socket = WebSocketStream<Capped<TokioIo<hyper::upgrade::Upgraded>>>;

/// The largest WebSocket frame and message, either way: one whole MQTT
/// packet after authentication (remaining length up to
/// [`ferrohub_mqtt::MAX_PACKET`] plus a fixed header of at most 5 bytes).
/// The SDKs send each packet as one message.
const MAX_MESSAGE: usize = ferrohub_mqtt::MAX_PACKET + 5;
/// The read buffer's initial size, allocated per connection (the library's
/// default is 128 KiB); a larger frame grows it while it arrives.
const READ_BUFFER: usize = 8 * 1024;
/// The largest frame header a client sends (2 bytes, 8 of length, 4 of mask).
const MAX_FRAME_HEADER: usize = 14;

/// Raw bytes a device may send before its CONNECT is accepted: the largest
/// CONNECT the framing takes (`ferrohub_mqtt::MAX_PACKET_BEFORE_AUTH` and a
/// fixed header of at most 5 bytes), split over a few frames at most, and
/// a control frame or two.
pub(crate) const BEFORE_AUTH: usize = ferrohub_mqtt::MAX_PACKET_BEFORE_AUTH + 5 + 1024;

fn config() -> WebSocketConfig {
    WebSocketConfig::default()
        .read_buffer_size(READ_BUFFER)
        .max_frame_size(Some(MAX_MESSAGE))
        .max_message_size(Some(MAX_MESSAGE))
        // Each packet is written and flushed on its own, so nothing needs to
        // gather; the bound (one frame and its header) is what a write the
        // device does not read can hold.
        .write_buffer_size(0)
        .max_write_buffer_size(MAX_MESSAGE + MAX_FRAME_HEADER)
        // paho (the Python SDK) answers pings and closes with unmasked
        // frames.
        .accept_unmasked_frames(true)
}

/// An accepted upgrade request: what the `101 Switching Protocols` answer
/// needs.
pub(crate) struct Accept {
    key: HeaderValue,
    mqtt: bool,
}

/// Checks an upgrade request (RFC 6455 §4.2.1; the method is the route's).
/// `Err` says why it is not a WebSocket upgrade (answered 400).
pub(crate) fn accept(headers: &HeaderMap) -> Result<Accept, &'static str> {
    let has_token = |name: header::HeaderName, token: &str| {
        headers
            .get_all(name)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .any(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
    };
    if !has_token(header::CONNECTION, "upgrade") || !has_token(header::UPGRADE, "websocket") {
        return Err("not a WebSocket upgrade");
    }
    if headers.get(header::SEC_WEBSOCKET_VERSION).is_none_or(|v| v != "13") {
        return Err("Sec-WebSocket-Version must be 13");
    }
    let key = headers.get(header::SEC_WEBSOCKET_KEY).cloned().ok_or("no Sec-WebSocket-Key")?;
    // The Node SDK fails unless the `mqtt` subprotocol it asks for is echoed.
    let mqtt = has_token(header::SEC_WEBSOCKET_PROTOCOL, "mqtt");
    Ok(Accept { key, mqtt })
}

impl Accept {
    /// The `101` answer.
    pub(crate) fn response(&self) -> Response {
        let mut res = StatusCode::SWITCHING_PROTOCOLS.into_response();
        let h = res.headers_mut();
        h.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        if let Ok(v) = HeaderValue::from_str(&derive_accept_key(self.key.as_bytes())) {
            h.insert(header::SEC_WEBSOCKET_ACCEPT, v);
        }
        if self.mqtt {
            h.insert(header::SEC_WEBSOCKET_PROTOCOL, HeaderValue::from_static("mqtt"));
        }
        res
    }
}

/// The WebSocket over an upgraded connection, capped until [`uncap`].
pub(crate) async fn socket(upgraded: hyper::upgrade::Upgraded) -> Socket {
    let io = Capped { inner: TokioIo::new(upgraded), left: Some(BEFORE_AUTH) };
    WebSocketStream::from_raw_socket(io, Role::Server, Some(config())).await
}

/// Lifts the pre-CONNACK cap: the device is authenticated.
pub(crate) fn uncap(socket: &mut Socket) {
    socket.get_mut().left = None;
}

/// A stream that fails reads once `left` bytes have been read (no limit
/// when `None`). Writes pass through.
pub(crate) struct Capped<S> {
    inner: S,
    left: Option<usize>,
}

impl<S: AsyncRead + Unpin> AsyncRead for Capped<S> {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let Some(left) = this.left else {
            return Pin::new(&mut this.inner).poll_read(cx, buf);
        };
        if left == 0 {
            return Poll::Ready(Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("more than {BEFORE_AUTH} bytes before CONNACK"),
            )));
        }
        // Read no more than is left, through a small buffer: only the few
        // reads before CONNACK take this path.
        let mut chunk = [0u8; 1024];
        let n = left.min(buf.remaining()).min(chunk.len());
        let mut small = ReadBuf::new(&mut chunk[..n]);
        ready!(Pin::new(&mut this.inner).poll_read(cx, &mut small))?;
        let got = small.filled();
        buf.put_slice(got);
        this.left = Some(left - got.len());
        Poll::Ready(Ok(()))
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Capped<S> {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, data: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, data)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    #[tokio::test]
    async fn capped_reads_stop_at_the_limit_until_uncapped() {
        let (mut peer, inner) = tokio::io::duplex(64 * 1024);
        let mut capped = Capped { inner, left: Some(10) };
        peer.write_all(&[7u8; 25]).await.unwrap();
        let mut got = vec![0u8; 25];
        // Ten bytes, however they are asked for, then an error.
        let mut n = 0;
        while n < 10 {
            n += capped.read(&mut got[n..]).await.unwrap();
        }
        assert_eq!(n, 10);
        let err = capped.read(&mut got).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
        // Lifted: the rest flows.
        capped.left = None;
        let mut rest = vec![0u8; 15];
        capped.read_exact(&mut rest).await.unwrap();
        assert_eq!(rest, [7u8; 15]);
    }

    #[test]
    fn upgrade_requests() {
        let mut h = HeaderMap::new();
        h.insert(header::CONNECTION, HeaderValue::from_static("keep-alive, Upgrade"));
        h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        h.insert(header::SEC_WEBSOCKET_VERSION, HeaderValue::from_static("13"));
        h.insert(header::SEC_WEBSOCKET_KEY, HeaderValue::from_static("dGhlIHNhbXBsZSBub25jZQ=="));
        h.insert(header::SEC_WEBSOCKET_PROTOCOL, HeaderValue::from_static("mqttv3.1, mqtt"));
        let res = accept(&h).ok().unwrap().response();
        assert_eq!(res.status(), StatusCode::SWITCHING_PROTOCOLS);
        // RFC 6455's example key and answer.
        assert_eq!(res.headers()[header::SEC_WEBSOCKET_ACCEPT], "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=");
        assert_eq!(res.headers()[header::SEC_WEBSOCKET_PROTOCOL], "mqtt");

        let mut no_mqtt = h.clone();
        no_mqtt.remove(header::SEC_WEBSOCKET_PROTOCOL);
        let res = accept(&no_mqtt).ok().unwrap().response();
        assert!(res.headers().get(header::SEC_WEBSOCKET_PROTOCOL).is_none());

        for (name, value) in [
            (header::CONNECTION, "keep-alive"),
            (header::UPGRADE, "h2c"),
            (header::SEC_WEBSOCKET_VERSION, "8"),
        ] {
            let mut bad = h.clone();
            bad.insert(name.clone(), HeaderValue::from_static(value));
            assert!(accept(&bad).is_err(), "{name}: {value}");
        }
        let mut bad = h.clone();
        bad.remove(header::SEC_WEBSOCKET_KEY);
        assert!(accept(&bad).is_err());
    }
}
