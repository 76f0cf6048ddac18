//! A TCP proxy between a device and the hub that a test can cut and
//! re-point: it forwards bytes unchanged (TLS and WebSockets pass through),
//! so the device talks to the hub as usual until the test intervenes.
//!
//! [`Proxy::cut`] drops every open connection on the device's side only, as
//! a lost network link or a NAT that forgot the flow would: the device sees
//! its connection end, while the hub's side stays open (and unread) until
//! the proxy is dropped, so the hub learns of it only when the device comes
//! back. [`Proxy::set_upstream`] sends later connections to another port (a
//! restarted hub listens on new free ports).

use std::sync::atomic::{AtomicU16, Ordering};
use std::sync::{Arc, Mutex};

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// A running proxy on a free loopback port.
pub struct Proxy {
    port: u16,
    upstream: Arc<AtomicU16>,
    cuts: watch::Sender<u64>,
    accept: JoinHandle<()>,
}

impl Proxy {
    /// Listens on a free port of 127.0.0.1 and forwards every connection to
    /// `127.0.0.1:upstream`. A connection whose upstream refuses is closed at
    /// once (the device sees the hub as down).
    pub async fn start(upstream: u16) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let upstream = Arc::new(AtomicU16::new(upstream));
        let (cuts, _) = watch::channel(0u64);
        // Hub-side streams of cut connections, kept open until the proxy goes.
        let parked: Arc<Mutex<Vec<TcpStream>>> = Arc::default();
        let accept = {
            let (upstream, cuts) = (upstream.clone(), cuts.clone());
            tokio::spawn(async move {
                while let Ok((device, _)) = listener.accept().await {
                    // Subscribed now: only cuts made after the accept end it.
                    let cut = cuts.subscribe();
                    let to = upstream.load(Ordering::SeqCst);
                    tokio::spawn(relay(device, to, cut, parked.clone()));
                }
            })
        };
        Self { port, upstream, cuts, accept }
    }

    /// The port devices connect to.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Sends connections accepted from now on to `port`.
    pub fn set_upstream(&self, port: u16) {
        self.upstream.store(port, Ordering::SeqCst);
    }

    /// Drops every connection open now on the device's side (see the module
    /// documentation); later connections are forwarded as before.
    pub fn cut(&self) {
        self.cuts.send_modify(|n| *n += 1);
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.accept.abort();
    }
}

async fn relay(
    mut device: TcpStream,
    upstream: u16,
    mut cut: watch::Receiver<u64>,
    parked: Arc<Mutex<Vec<TcpStream>>>,
) {
    let Ok(mut hub) = TcpStream::connect(("127.0.0.1", upstream)).await else {
        return;
    };
    tokio::select! {
        _ = tokio::io::copy_bidirectional(&mut device, &mut hub) => {}
        _ = cut.changed() => {
            drop(device);
            parked.lock().unwrap().push(hub);
        }
    }
}
