//! One HTTPS connection from accept to close: its place under the
//! connection caps, the TLS handshake, the client certificate, and the
//! timeouts that stop a client from holding it while doing nothing.
//!
//! hyper's own `header_read_timeout` also runs while a keep-alive
//! connection waits for its next request, so it cannot tell a client that
//! is slowly sending headers (cut after seconds) from one that keeps an idle
//! connection for reuse, as the Node SDK does (allowed minutes). So the
//! connection watches itself: [`Watched`] wraps the connection's IO and sees
//! bytes arrive, [`Tracked`] wraps the service and sees requests begin and
//! their responses end; between requests a read that waits too long fails
//! the connection. A request body that stalls is [`StallBody`]'s job, and
//! the request is answered 408; a response the client does not read fails
//! the connection after the same time. After a WebSocket upgrade none of this
//! applies: MQTT keep-alive governs the connection.

use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use axum::body::{Body, Bytes, HttpBody};
use axum::http::{header, Request, Response, StatusCode};
use axum_server::accept::Accept;
use axum_server::tls_rustls::RustlsAcceptor;
use http_body::Frame;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::time::{Instant, Sleep};
use tokio_rustls::server::TlsStream;

use crate::client_cert::PeerCertificate;
use crate::conn_limits::{ConnLimits, ConnPermit};
use crate::sync::consistent;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// How long an HTTPS client may keep the hub waiting.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct HttpTimeouts {
    /// From the end of the TLS handshake to a first request's complete
    /// headers, and from a request's first byte to its complete headers.
    pub(crate) header: Duration,
    /// With no byte of a request body arriving, or of a response taken.
    pub(crate) body: Duration,
    /// On a keep-alive connection, from a response to the next request's
    /// first byte.
    pub(crate) idle: Duration,
}

/// What a connection is waiting for, shared by its IO and its service.
#[derive(Debug)]
struct Watch {
    timeouts: HttpTimeouts,
    state: Mutex<WatchState>,
}

#[derive(Debug)]
struct WatchState {
    /// Requests handed to the router whose responses have not ended.
    in_flight: usize,
    /// The connection was upgraded (a WebSocket): no HTTP timeouts.
    upgraded: bool,
    /// A response has ended, so waiting is keep-alive idleness.
    served: bool,
    /// Since when nothing has been in flight.
    waiting_since: Instant,
    /// When the first byte of the next request arrived.
    head_since: Option<Instant>,
    /// The task blocked reading, woken when the deadline changes.
    reader: Option<Waker>,
}

impl Watch {
    fn new(timeouts: HttpTimeouts) -> Arc<Self> {
        Arc::new(Self {
            timeouts,
            state: Mutex::new(WatchState {
                in_flight: 0,
                upgraded: false,
                served: false,
                waiting_since: Instant::now(),
                head_since: None,
                reader: None,
            }),
        })
    }

    // Every critical section below is a few field updates that cannot be
    // left half-done, so a poisoned lock is still consistent.
    fn lock(&self) -> std::sync::MutexGuard<'_, WatchState> {
        consistent(self.state.lock(), "HTTPS connection watch")
    }

    /// Bytes arrived on the connection.
    fn bytes_read(&self) {
        let mut s = self.lock();
        if s.in_flight == 0 && s.head_since.is_none() {
            s.head_since = Some(Instant::now());
        }
    }

    /// A read found nothing to read: until when it may wait (`None`: as
    /// long as it likes). Remembers `waker` to re-arm when that changes.
    fn read_waits(&self, waker: &Waker) -> Option<Instant> {
        let mut s = self.lock();
        match &mut s.reader {
            Some(w) if w.will_wake(waker) => {}
            slot => *slot = Some(waker.clone()),
        }
        if s.upgraded || s.in_flight > 0 {
            // A request is being served: its body has its own timeout, and
            // a handler (a watch stream) may rightly take long.
            return None;
        }
        Some(match (s.served, s.head_since) {
            // A new connection must have sent its first request's headers
            // within the header timeout of its handshake.
            (false, _) => s.waiting_since + self.timeouts.header,
            (true, Some(first_byte)) => first_byte + self.timeouts.header,
            (true, None) => s.waiting_since + self.timeouts.idle,
        })
    }

    fn request_started(&self) {
        let mut s = self.lock();
        s.in_flight += 1;
        s.head_since = None;
    }

    fn request_finished(&self) {
        let reader = {
            let mut s = self.lock();
            s.in_flight = s.in_flight.saturating_sub(1);
            if s.in_flight == 0 {
                s.served = true;
                s.waiting_since = Instant::now();
            }
            s.reader.take()
        };
        // hyper may already be waiting for the next request with no
        // deadline armed; wake it so the idle timeout starts now.
        if let Some(w) = reader {
            w.wake();
        }
    }

    fn upgrade(&self) {
        self.lock().upgraded = true;
    }
}

/// A connection's IO that fails a read waiting past its [`Watch`]'s
/// deadline, and holds the connection's [`ConnPermit`].
pub(crate) struct Watched<S> {
    inner: S,
    watch: Arc<Watch>,
    timer: Pin<Box<Sleep>>,
    armed: Option<Instant>,
    /// Runs while writes make no progress (the client reads nothing).
    write_stall: Option<Pin<Box<Sleep>>>,
    _permit: Option<ConnPermit>,
}

impl<S> Watched<S> {
    fn new(inner: S, watch: Arc<Watch>, permit: Option<ConnPermit>) -> Self {
        Self {
            inner,
            watch,
            timer: Box::pin(tokio::time::sleep(Duration::ZERO)),
            armed: None,
            write_stall: None,
            _permit: permit,
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Watched<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        let before = buf.filled().len();
        match Pin::new(&mut this.inner).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                if buf.filled().len() > before {
                    this.watch.bytes_read();
                }
                Poll::Ready(Ok(()))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => {
                let Some(deadline) = this.watch.read_waits(cx.waker()) else {
                    this.armed = None;
                    return Poll::Pending;
                };
                if this.armed != Some(deadline) {
                    this.timer.as_mut().reset(deadline);
                    this.armed = Some(deadline);
                }
                match this.timer.as_mut().poll(cx) {
                    Poll::Ready(()) => Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        "HTTPS client sent no request in time",
                    ))),
                    Poll::Pending => Poll::Pending,
                }
            }
        }
    }
}

impl<S> Watched<S> {
    /// Passes a write's outcome through; a write that has made no progress
    /// for the body timeout fails instead, so a client that never reads its
    /// responses cannot hold the connection. After an upgrade the MQTT
    /// connection's own write timeout does this.
    fn write_outcome<T>(
        &mut self,
        cx: &mut Context<'_>,
        outcome: Poll<io::Result<T>>,
    ) -> Poll<io::Result<T>> {
        if outcome.is_ready() {
            self.write_stall = None;
            return outcome;
        }
        if self.watch.lock().upgraded {
            return outcome;
        }
        let timeout = self.watch.timeouts.body;
        let stall = self.write_stall.get_or_insert_with(|| Box::pin(tokio::time::sleep(timeout)));
        match stall.as_mut().poll(cx) {
            Poll::Ready(()) => {
                Poll::Ready(Err(io::Error::new(io::ErrorKind::TimedOut, "HTTPS client read nothing in time")))
            }
            Poll::Pending => Poll::Pending,
        }
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Watched<S> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let outcome = Pin::new(&mut self.inner).poll_write(cx, buf);
        self.write_outcome(cx, outcome)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let outcome = Pin::new(&mut self.inner).poll_flush(cx);
        self.write_outcome(cx, outcome)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let outcome = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        self.write_outcome(cx, outcome)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

/// A request body that fails when no frame arrives for `timeout`, and
/// marks its request as stalled.
pub(crate) struct StallBody<B> {
    inner: B,
    timeout: Duration,
    timer: Option<Pin<Box<Sleep>>>,
    stalled: Arc<AtomicBool>,
}

/// The error a stalled body ends with.
#[derive(Debug, thiserror::Error)]
#[error("the request body stalled")]
pub(crate) struct BodyStalled;

impl<B> StallBody<B> {
    fn new(inner: B, timeout: Duration, stalled: Arc<AtomicBool>) -> Self {
        Self { inner, timeout, timer: None, stalled }
    }
}

impl<B> HttpBody for StallBody<B>
where
    B: HttpBody<Data = Bytes> + Unpin,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(frame) => {
                // Progress: the next wait starts afresh.
                this.timer = None;
                Poll::Ready(frame.map(|f| f.map_err(Into::into)))
            }
            Poll::Pending => {
                let timeout = this.timeout;
                let timer = this.timer.get_or_insert_with(|| Box::pin(tokio::time::sleep(timeout)));
                match timer.as_mut().poll(cx) {
                    Poll::Ready(()) => {
                        this.stalled.store(true, Ordering::Release);
                        Poll::Ready(Some(Err(BodyStalled.into())))
                    }
                    Poll::Pending => Poll::Pending,
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

/// A response body that tells the [`Watch`] when the response is over
/// (written or abandoned).
pub(crate) struct Finished {
    inner: Body,
    _in_flight: InFlight,
}

struct InFlight(Arc<Watch>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.request_finished();
    }
}

impl HttpBody for Finished {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

/// The router, seen by one connection: adds the client certificate to each
/// request, times its body, and reports to the [`Watch`].
#[derive(Clone)]
pub(crate) struct Tracked<S> {
    inner: S,
    watch: Arc<Watch>,
    cert: PeerCertificate,
    max_header_bytes: usize,
}

impl<S, B> tower::Service<Request<B>> for Tracked<S>
where
    S: tower::Service<Request<Body>, Response = Response<Body>, Error = Infallible> + Clone + Send + 'static,
    S::Future: Send + 'static,
    B: HttpBody<Data = Bytes> + Unpin + Send + 'static,
    B::Error: Into<BoxError>,
{
    type Response = Response<Finished>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Response<Finished>, Infallible>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        self.watch.request_started();
        let in_flight = InFlight(self.watch.clone());
        if head_size(&req) > self.max_header_bytes {
            let res = closing(StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE);
            return Box::pin(async move { Ok(res.map(|inner| Finished { inner, _in_flight: in_flight })) });
        }
        let stalled = Arc::new(AtomicBool::new(false));
        let (parts, body) = req.into_parts();
        let body = Body::new(StallBody::new(body, self.watch.timeouts.body, stalled.clone()));
        let mut req = Request::from_parts(parts, body);
        req.extensions_mut().insert(self.cert.clone());
        // The clone is the ready one (tower's rule for services called
        // from a future); a Router is always ready.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let watch = self.watch.clone();
        Box::pin(async move {
            let Ok(mut res) = inner.call(req).await;
            if stalled.load(Ordering::Acquire) {
                // Whatever the handler made of the failed body, the client
                // stopped sending it: say so and end the connection.
                res = closing(StatusCode::REQUEST_TIMEOUT);
            }
            if res.status() == StatusCode::SWITCHING_PROTOCOLS {
                watch.upgrade();
            }
            Ok(res.map(|inner| Finished { inner, _in_flight: in_flight }))
        })
    }
}

/// An empty answer with `status` that ends the connection. IoT Hub has no
/// error code for these, so there is no Azure error body.
fn closing(status: StatusCode) -> Response<Body> {
    let mut res = Response::new(Body::empty());
    *res.status_mut() = status;
    res.headers_mut().insert(header::CONNECTION, header::HeaderValue::from_static("close"));
    res
}

/// About how many bytes the request line and headers took on the wire.
/// hyper's limit on them is its read buffer (~400 KB, which must stay that
/// large: it is what lets hyper drain a refused request's body instead of
/// resetting the connection under the client's answer), so the header
/// limit is checked here.
fn head_size<B>(req: &Request<B>) -> usize {
    let line = req.method().as_str().len() + req.uri().to_string().len() + " HTTP/1.1\r\n".len() + 1;
    let fields: usize = req.headers().iter().map(|(k, v)| k.as_str().len() + v.len() + ": \r\n".len()).sum();
    line + fields + 2
}

/// The HTTPS listener's acceptor: a place under the caps (else the socket
/// is closed before TLS), the TLS handshake (under its timeout), then the
/// watched connection.
#[derive(Clone)]
pub(crate) struct HttpsAcceptor {
    tls: RustlsAcceptor,
    limits: Arc<ConnLimits>,
    timeouts: HttpTimeouts,
    max_header_bytes: usize,
}

impl HttpsAcceptor {
    pub(crate) fn new(
        tls: RustlsAcceptor,
        limits: Arc<ConnLimits>,
        timeouts: HttpTimeouts,
        max_header_bytes: usize,
    ) -> Self {
        Self { tls, limits, timeouts, max_header_bytes }
    }
}

impl<S> Accept<TcpStream, S> for HttpsAcceptor
where
    S: Send + 'static,
{
    type Stream = Watched<TlsStream<TcpStream>>;
    type Service = Tracked<S>;
    type Future = Pin<Box<dyn Future<Output = io::Result<(Self::Stream, Self::Service)>> + Send>>;

    fn accept(&self, stream: TcpStream, service: S) -> Self::Future {
        let permit = stream
            .peer_addr()
            .map_err(|e| io::Error::new(e.kind(), e))
            .and_then(|peer| self.limits.admit(peer.ip()));
        let permit = match permit {
            Ok(p) => p,
            // Dropping the socket closes it before any TLS work.
            Err(e) => return Box::pin(async move { Err(e) }),
        };
        let accepting = self.tls.accept(stream, service);
        let timeouts = self.timeouts;
        let max_header_bytes = self.max_header_bytes;
        Box::pin(async move {
            let (stream, service) = accepting.await?;
            let cert =
                stream.get_ref().1.peer_certificates().and_then(|c| c.first()).map(|c| Arc::new(c.to_vec()));
            let watch = Watch::new(timeouts);
            let service = Tracked {
                inner: service,
                watch: watch.clone(),
                cert: PeerCertificate(cert),
                max_header_bytes,
            };
            Ok((Watched::new(stream, watch, Some(permit)), service))
        })
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    const T: HttpTimeouts = HttpTimeouts {
        header: Duration::from_secs(10),
        body: Duration::from_secs(30),
        idle: Duration::from_secs(120),
    };

    /// A watched in-memory connection and the client's end of it.
    fn conn() -> (Watched<tokio::io::DuplexStream>, tokio::io::DuplexStream, Arc<Watch>) {
        let (server, client) = tokio::io::duplex(1024);
        let watch = Watch::new(T);
        (Watched::new(server, watch.clone(), None), client, watch)
    }

    async fn read_outcome(conn: &mut Watched<tokio::io::DuplexStream>) -> (io::Result<usize>, Duration) {
        let start = Instant::now();
        let mut buf = [0u8; 64];
        let r = conn.read(&mut buf).await;
        (r, start.elapsed())
    }

    #[tokio::test(start_paused = true)]
    async fn a_new_connection_that_sends_nothing_fails_at_the_header_timeout() {
        let (mut server, _client, _) = conn();
        let (r, took) = read_outcome(&mut server).await;
        assert_eq!(r.unwrap_err().kind(), io::ErrorKind::TimedOut);
        assert_eq!(took, T.header);
    }

    #[tokio::test(start_paused = true)]
    async fn a_first_request_must_complete_its_headers_within_the_header_timeout() {
        let (mut server, mut client, _) = conn();
        tokio::time::sleep(Duration::from_secs(4)).await;
        client.write_all(b"GET / HT").await.unwrap();
        let (r, _) = read_outcome(&mut server).await;
        assert_eq!(r.unwrap(), 8);
        let (r, took) = read_outcome(&mut server).await;
        assert_eq!(r.unwrap_err().kind(), io::ErrorKind::TimedOut);
        assert_eq!(took, T.header - Duration::from_secs(4));
    }

    #[tokio::test(start_paused = true)]
    async fn on_keep_alive_the_header_timeout_runs_from_the_next_requests_first_byte() {
        let (mut server, mut client, watch) = conn();
        watch.request_started();
        watch.request_finished();
        tokio::time::sleep(Duration::from_secs(50)).await;
        client.write_all(b"GET / HT").await.unwrap();
        assert_eq!(read_outcome(&mut server).await.0.unwrap(), 8);
        let (r, took) = read_outcome(&mut server).await;
        assert_eq!(r.unwrap_err().kind(), io::ErrorKind::TimedOut);
        assert_eq!(took, T.header);
    }

    #[tokio::test(start_paused = true)]
    async fn while_a_request_is_served_reads_wait_without_deadline() {
        let (mut server, mut client, watch) = conn();
        watch.request_started();
        let read = tokio::spawn(async move { read_outcome(&mut server).await });
        tokio::time::sleep(T.idle * 3).await;
        assert!(!read.is_finished());
        client.write_all(b"x").await.unwrap();
        assert_eq!(read.await.unwrap().0.unwrap(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn after_a_response_a_waiting_read_gets_the_idle_timeout() {
        let (mut server, _client, watch) = conn();
        watch.request_started();
        // The read is already waiting, with no deadline, when the response
        // ends: it must be woken and given the idle deadline then.
        let read = tokio::spawn(async move { read_outcome(&mut server).await });
        tokio::time::sleep(Duration::from_secs(5)).await;
        watch.request_finished();
        let (r, took) = read.await.unwrap();
        assert_eq!(r.unwrap_err().kind(), io::ErrorKind::TimedOut);
        assert_eq!(took, Duration::from_secs(5) + T.idle);
    }

    #[tokio::test(start_paused = true)]
    async fn an_upgraded_connection_has_no_deadline() {
        let (mut server, mut client, watch) = conn();
        watch.request_started();
        watch.upgrade();
        watch.request_finished();
        let read = tokio::spawn(async move { read_outcome(&mut server).await });
        tokio::time::sleep(T.idle * 10).await;
        assert!(!read.is_finished());
        client.write_all(b"x").await.unwrap();
        assert_eq!(read.await.unwrap().0.unwrap(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn a_write_the_client_does_not_take_fails_after_the_body_timeout() {
        let (server, mut client) = tokio::io::duplex(16);
        let watch = Watch::new(T);
        let mut server = Watched::new(server, watch.clone(), None);
        watch.request_started();
        // A client that reads slowly is fine: each read is progress.
        let chunk = [7u8; 64];
        let reader = async {
            let mut buf = [0u8; 16];
            for _ in 0..4 {
                tokio::time::sleep(T.body - Duration::from_secs(1)).await;
                client.read_exact(&mut buf).await.unwrap();
            }
            client
        };
        let (written, client) = tokio::join!(server.write_all(&chunk), reader);
        written.unwrap();
        // One that stops reading fails the write at the body timeout.
        let start = Instant::now();
        let write = tokio::time::timeout(T.body * 2, server.write_all(&chunk));
        let err = write.await.expect("the stalled write never failed").unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
        assert_eq!(start.elapsed(), T.body);
        drop(client);
    }

    #[tokio::test(start_paused = true)]
    async fn after_an_upgrade_writes_may_wait() {
        let (server, mut client) = tokio::io::duplex(16);
        let watch = Watch::new(T);
        let mut server = Watched::new(server, watch.clone(), None);
        watch.upgrade();
        let write = tokio::spawn(async move { server.write_all(&[1u8; 64]).await });
        tokio::time::sleep(T.body * 10).await;
        assert!(!write.is_finished());
        let mut buf = [0u8; 64];
        client.read_exact(&mut buf).await.unwrap();
        write.await.unwrap().unwrap();
    }

    #[test]
    fn the_head_size_counts_the_request_line_and_every_header() {
        let req = Request::builder()
            .method("GET")
            .uri("/devices?api-version=1")
            .header("host", "localhost")
            .header("x-pad", "a".repeat(100))
            .body(())
            .unwrap();
        let wire = "GET /devices?api-version=1 HTTP/1.1\r\nhost: localhost\r\nx-pad: ".len()
            + 100
            + "\r\n\r\n".len();
        assert_eq!(head_size(&req), wire);
    }

    #[tokio::test(start_paused = true)]
    async fn a_body_that_stalls_fails_and_marks_its_request() {
        let (tx, body) = {
            let (tx, rx) = tokio::sync::mpsc::channel::<Result<Frame<Bytes>, Infallible>>(4);
            (tx, http_body_util::StreamBody::new(tokio_stream::wrappers::ReceiverStream::new(rx)))
        };
        let stalled = Arc::new(AtomicBool::new(false));
        let mut body = StallBody::new(body, T.body, stalled.clone());
        use http_body_util::BodyExt as _;
        // Frames that keep coming reset the timer.
        for _ in 0..3 {
            let send = tx.send(Ok(Frame::data(Bytes::from_static(b"ab"))));
            let ((), frame) = tokio::join!(
                async {
                    tokio::time::sleep(T.body - Duration::from_secs(1)).await;
                    send.await.unwrap();
                },
                body.frame()
            );
            assert!(frame.unwrap().is_ok());
        }
        let start = Instant::now();
        let err = body.frame().await.unwrap().unwrap_err();
        assert!(err.is::<BodyStalled>());
        assert_eq!(start.elapsed(), T.body);
        assert!(stalled.load(Ordering::Acquire));
        drop(tx);
    }
}
