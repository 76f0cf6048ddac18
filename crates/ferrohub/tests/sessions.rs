//! Persistent sessions with the Rust device SDK (`ferrohub-device-client`,
//! which connects with CleanSession=0): a device that received desired
//! patches is interrupted — it closes and reconnects, its TCP connection is
//! dropped, a second connection takes it over, the hub restarts on the same
//! data dir — and every later desired patch must still arrive, each
//! `$version` exactly once and in order, over MQTT/TLS and MQTT/WebSockets.
//!
//! Every device talks to the hub through a [`Proxy`], so a test can cut its
//! TCP connection and, after a hub restart (which picks new free ports),
//! point the same device client at the hub's new port. The Node suite
//! (`compat/node/test/sessions.test.js`) covers the same interruptions with
//! the official SDK, except the restart: its hub is shared and started
//! outside the tests.
//!
//! The SDK drops versions it already delivered and resynchronises with a
//! twin GET when it sees a gap, so a stream that goes `v`, `v + 1`, ... here
//! also means the hub neither lost a patch nor pushed one out of order.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use common::mqtt::{create_device, service};
use common::proxy::Proxy;
use common::TestHub;
use ferrohub_device_client::{
    Backoff, ConnectionStatus, DesiredUpdate, DesiredUpdates, DeviceClient, DeviceOptions, Transport,
};
use serde_json::json;

/// The longest any awaited event may take before the test fails.
const WAIT: Duration = Duration::from_secs(30);

/// Desired patches written before and after each interruption.
const PATCHES: i64 = 3;

async fn within<T>(what: &str, f: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(WAIT, f).await.unwrap_or_else(|_| panic!("timed out waiting for {what}"))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Interruption {
    /// The device closes (MQTT DISCONNECT) and a new client connects.
    CloseAndReconnect,
    /// The TCP connection is lost; the same client reconnects by itself.
    TcpDropped,
    /// A second client connects while the first is still connected.
    TakenOver,
    /// The hub stops (SIGTERM) and starts again on the same data dir; the
    /// same client reconnects by itself.
    HubRestart,
}

/// A device under test: its hub, the proxy in front, and what it has seen.
struct Device {
    hub: TestHub,
    proxy: Proxy,
    websocket: bool,
    id: String,
    key: String,
    /// The last desired `$version` delivered to the device.
    version: i64,
    /// The value of `n` in the last desired patch written.
    n: i64,
}

impl Device {
    async fn create(id: &str, websocket: bool) -> Self {
        let hub = TestHub::start();
        let proxy = Proxy::start(Self::upstream(&hub, websocket)).await;
        let key = create_device(&hub, id).await;
        Self { hub, proxy, websocket, id: id.to_owned(), key, version: 0, n: 0 }
    }

    /// The hub port the proxy forwards to: MQTT/TLS or HTTPS (WebSockets).
    fn upstream(hub: &TestHub, websocket: bool) -> u16 {
        if websocket {
            hub.https_port()
        } else {
            hub.mqtt_port()
        }
    }

    /// Quick reconnects (the interruptions are deliberate), or effectively
    /// none with `reconnect: false`.
    fn options(&self, reconnect: bool) -> DeviceOptions {
        let delay = if reconnect { Duration::from_millis(100) } else { Duration::from_secs(3600) };
        DeviceOptions {
            mqtt_port: Some(self.proxy.port()),
            ca_file: Some(self.hub.ca_file()),
            transport: if self.websocket {
                Transport::WebSocket { https_port: Some(self.proxy.port()) }
            } else {
                Transport::Tcp
            },
            backoff: Backoff { initial: delay, max: delay * 10, jitter: 0.5 },
            ..Default::default()
        }
    }

    async fn connect(&self, reconnect: bool) -> (DeviceClient, DesiredUpdates) {
        let cs = format!("HostName=localhost;DeviceId={};SharedAccessKey={}", self.id, self.key);
        let client = within("connect", DeviceClient::connect(&cs, self.options(reconnect))).await.unwrap();
        let desired = client.desired_updates().unwrap();
        (client, desired)
    }

    /// A new client's first delivery: the whole desired document at exactly
    /// the version the device last saw (nothing was written meanwhile).
    async fn expect_resync(&mut self, desired: &mut DesiredUpdates) {
        let u = within("the desired document after connecting", desired.recv()).await.unwrap();
        assert!(u.full, "{u:?}");
        let expected = if self.version == 0 { 1 } else { self.version };
        assert_eq!(u.version, expected, "{u:?}");
        if self.n > 0 {
            assert_eq!(u.body["n"], self.n, "{u:?}");
        }
        self.version = u.version;
    }

    /// Writes the next desired patch and expects it at the device with the
    /// next `$version`. A patch that races the SDK's resynchronising GET
    /// after a reconnect may come inside that GET's full document instead of
    /// as a patch; either way the version must be the next one and the
    /// value the one written.
    async fn write_and_receive(&mut self, desired: &mut DesiredUpdates) {
        self.n += 1;
        let patch = json!({"properties": {"desired": {"n": self.n}}});
        service(&self.hub).update_twin(&self.id, &patch, "*").await.unwrap();
        let u: DesiredUpdate = within(&format!("desired n={}", self.n), desired.recv()).await.unwrap();
        assert_eq!(u.version, self.version + 1, "no gap, no repeat, in order: {u:?}");
        assert_eq!(u.body["n"], self.n, "{u:?}");
        self.version = u.version;
    }

    /// After a reported-patch round trip (the hub answers in order on the
    /// connection), nothing more may be waiting: no late duplicate.
    async fn expect_nothing_more(&self, client: &DeviceClient, desired: &mut DesiredUpdates) {
        within("a reported patch", client.update_reported(&json!({"seen": self.version}))).await.unwrap();
        let extra = tokio::time::timeout(Duration::ZERO, desired.recv()).await;
        assert!(extra.is_err(), "an update after the last write: {extra:?}");
        let twin = service(&self.hub).get_twin(&self.id).await.unwrap();
        assert_eq!(twin["properties"]["desired"]["$version"], self.version);
    }
}

/// Waits until `client` is connected again after its connection number
/// `after`, and says whether the hub kept its session.
async fn reconnected(client: &DeviceClient, after: u64) -> bool {
    let mut status = client.status();
    let st = within(
        "the reconnect",
        status.wait_for(
            |st| matches!(st, ConnectionStatus::Connected { generation, .. } if *generation > after),
        ),
    )
    .await
    .unwrap()
    .clone();
    matches!(st, ConnectionStatus::Connected { session_present: true, .. })
}

async fn desired_patches_stay_continuous_after(interruption: Interruption, websocket: bool) {
    let transport = if websocket { "ws" } else { "tls" };
    let mut dev = Device::create(&format!("{interruption:?}-{transport}").to_lowercase(), websocket).await;
    // A device taken over must stay off: its own reconnect would take the
    // connection back from the second client.
    let (first, mut desired) = dev.connect(interruption != Interruption::TakenOver).await;
    dev.expect_resync(&mut desired).await;
    for _ in 0..PATCHES {
        dev.write_and_receive(&mut desired).await;
    }

    // The client that carries on, its stream, and (after a takeover) the
    // first client, kept open (and off) until the end.
    let (client, mut desired, _taken_over) = match interruption {
        Interruption::CloseAndReconnect => {
            first.close().await;
            let (client, mut desired) = dev.connect(true).await;
            assert!(reconnected(&client, 0).await, "the hub dropped the session");
            dev.expect_resync(&mut desired).await;
            (client, desired, None)
        }
        Interruption::TcpDropped => {
            dev.proxy.cut();
            assert!(reconnected(&first, 1).await, "the hub dropped the session");
            (first, desired, None)
        }
        Interruption::TakenOver => {
            let mut old = first.status();
            let (client, mut desired) = dev.connect(true).await;
            assert!(reconnected(&client, 0).await, "the hub dropped the session");
            within(
                "the first connection to be closed",
                old.wait_for(|st| matches!(st, ConnectionStatus::Disconnected { .. })),
            )
            .await
            .unwrap();
            dev.expect_resync(&mut desired).await;
            (client, desired, Some(first))
        }
        Interruption::HubRestart => {
            dev.hub.restart_gracefully();
            dev.proxy.set_upstream(Device::upstream(&dev.hub, websocket));
            assert!(reconnected(&first, 1).await, "the hub lost the session in the restart");
            (first, desired, None)
        }
    };
    for _ in 0..PATCHES {
        dev.write_and_receive(&mut desired).await;
    }
    dev.expect_nothing_more(&client, &mut desired).await;
}

#[tokio::test]
async fn desired_patches_stay_continuous_after_close_and_reconnect_over_tls() {
    desired_patches_stay_continuous_after(Interruption::CloseAndReconnect, false).await;
}

#[tokio::test]
async fn desired_patches_stay_continuous_after_close_and_reconnect_over_websockets() {
    desired_patches_stay_continuous_after(Interruption::CloseAndReconnect, true).await;
}

#[tokio::test]
async fn desired_patches_stay_continuous_after_a_dropped_tcp_connection_over_tls() {
    desired_patches_stay_continuous_after(Interruption::TcpDropped, false).await;
}

#[tokio::test]
async fn desired_patches_stay_continuous_after_a_dropped_tcp_connection_over_websockets() {
    desired_patches_stay_continuous_after(Interruption::TcpDropped, true).await;
}

#[tokio::test]
async fn desired_patches_stay_continuous_after_a_takeover_over_tls() {
    desired_patches_stay_continuous_after(Interruption::TakenOver, false).await;
}

#[tokio::test]
async fn desired_patches_stay_continuous_after_a_takeover_over_websockets() {
    desired_patches_stay_continuous_after(Interruption::TakenOver, true).await;
}

#[tokio::test]
async fn desired_patches_stay_continuous_after_a_hub_restart_over_tls() {
    desired_patches_stay_continuous_after(Interruption::HubRestart, false).await;
}

#[tokio::test]
async fn desired_patches_stay_continuous_after_a_hub_restart_over_websockets() {
    desired_patches_stay_continuous_after(Interruption::HubRestart, true).await;
}
