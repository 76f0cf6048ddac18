//! The MQTT endpoint's edges against a real hub: will messages (published
//! as telemetry when a connection ends without DISCONNECT), protocol
//! violations that must close the connection, and the WebSocket
//! transport's limits before and after CONNACK.
//!
//! Telemetry is read from the hub's live `/events` stream. Where a test
//! shows that something was *not* published, another device sends a marker
//! afterwards: events leave the hub in order, so the marker arriving first
//! proves nothing came before it.
#![allow(clippy::unwrap_used)]

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::mqtt::{connect_packet, create_device, now_unix, service, token, RawMqtt};
use common::proxy::Proxy;
use common::TestHub;
use ferrohub_mqtt::v4::{ConnectReturnCode, LastWill, Packet, Publish, Unsubscribe};
use ferrohub_mqtt::{write_packet, BytesMut, QoS};
use ferrohub_service_client::{Event, EventStream};
use futures_util::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;

/// How long a test waits for an event before failing.
const EVENT_TIMEOUT: Duration = Duration::from_secs(20);

async fn next_event(events: &mut EventStream) -> Event {
    tokio::time::timeout(EVENT_TIMEOUT, events.next())
        .await
        .expect("no event in time")
        .expect("the event stream ended")
        .unwrap()
}

/// A device sends `marker` as telemetry; returns once it is acknowledged.
async fn send_marker(hub: &TestHub, device: &str, key: &str, marker: &str) {
    let (mut c, _) = RawMqtt::device(hub, device, key, true).await;
    c.publish(&format!("devices/{device}/messages/events/"), QoS::AtLeastOnce, marker.as_bytes()).await;
    assert!(matches!(c.recv().await, Some(Packet::PubAck(_))));
    c.send(Packet::Disconnect).await;
    assert!(c.closed().await);
}

/// The next event is the marker: nothing was published before it.
async fn expect_marker(events: &mut EventStream, marker: &str) {
    let e = next_event(events).await;
    assert_eq!(e.body_text().as_deref(), Some(marker), "expected the marker first, got {e:?}");
}

/// A raw device connection whose CONNECT carries a will on `topic`.
async fn raw_with_will(hub: &TestHub, device: &str, key: &str, topic: &str) -> RawMqtt {
    let Packet::Connect(mut connect) =
        connect_packet(device, &token(device, key, now_unix() + 3600), 60, true)
    else {
        unreachable!()
    };
    connect.last_will = Some(LastWill::new(topic, "will body", QoS::AtLeastOnce, false));
    let mut c = RawMqtt::open(hub).await;
    c.send(Packet::Connect(connect)).await;
    match c.recv().await {
        Some(Packet::ConnAck(ack)) => assert_eq!(ack.code, ConnectReturnCode::Success, "{topic}"),
        other => panic!("expected CONNACK, got {other:?}"),
    }
    c
}

/// Waits until the device shows as disconnected: the hub records it when
/// the connection's end has been handled, after deciding on the will. A
/// bounded poll, as no event announces it.
async fn wait_disconnected(hub: &TestHub, device: &str) {
    let s = service(hub);
    let deadline = std::time::Instant::now() + EVENT_TIMEOUT;
    while s.get_device(device).await.unwrap().connection_state
        != ferrohub_core::identity::ConnectionState::Disconnected
    {
        assert!(std::time::Instant::now() < deadline, "{device} still connected");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn is_will(e: &Event, device: &str) -> bool {
    e.device_id == device && e.properties.get("iothub-MessageType").and_then(|v| v.as_str()) == Some("Will")
}

/// rumqttc's options for `device` at 127.0.0.1:`port` (the hub or a
/// proxy in front of it) over TLS, with a will.
fn rumqttc_device(
    hub: &TestHub,
    device: &str,
    key: &str,
    port: u16,
    keep_alive: u64,
) -> rumqttc::MqttOptions {
    let tls = ferrohub_device_client::tls_config(Some(&hub.ca_file()), None).unwrap();
    let mut o = rumqttc::MqttOptions::new(device, "localhost", port);
    o.set_transport(rumqttc::Transport::Tls(rumqttc::TlsConfiguration::Rustls(tls)))
        .set_keep_alive(Duration::from_secs(keep_alive))
        .set_credentials(
            format!("localhost/{device}/?api-version=2021-04-12"),
            token(device, key, now_unix() + 3600),
        )
        .set_last_will(rumqttc::LastWill::new(
            format!("devices/{device}/messages/events/%24.ct=text%2Fplain&%24.mid=w-{device}&state=lost"),
            format!("{device} is gone"),
            rumqttc::QoS::AtLeastOnce,
            false,
        ));
    o
}

/// Drives a rumqttc event loop until CONNACK 0; the loop keeps running
/// (pings) in a task until the returned handle is dropped or aborted.
async fn rumqttc_connected(
    options: rumqttc::MqttOptions,
) -> (rumqttc::AsyncClient, tokio::task::JoinHandle<()>) {
    let (client, mut eventloop) = rumqttc::AsyncClient::new(options, 10);
    let (tx, rx) = tokio::sync::oneshot::channel();
    let task = tokio::spawn(async move {
        let mut tx = Some(tx);
        loop {
            match eventloop.poll().await {
                Ok(rumqttc::Event::Incoming(rumqttc::Packet::ConnAck(ack))) => {
                    if let Some(tx) = tx.take() {
                        let _ = tx.send(ack.code);
                    }
                }
                Ok(_) => {}
                // The device does not reconnect: the test cut it.
                Err(_) => return,
            }
        }
    });
    let code = tokio::time::timeout(EVENT_TIMEOUT, rx).await.unwrap().unwrap();
    assert_eq!(code, rumqttc::ConnectReturnCode::Success);
    (client, task)
}

#[tokio::test]
async fn a_lost_connection_publishes_the_will_as_telemetry_with_its_properties() {
    let hub = TestHub::start();
    let key1 = create_device(&hub, "will-ka").await;
    let key2 = create_device(&hub, "will-eof").await;
    let mut events = service(&hub).events(None, None).await.unwrap();

    // Cut on the device's side only: the hub hears nothing more and closes
    // at 1.5 × the keep-alive (5 s), without a DISCONNECT.
    let proxy = Proxy::start(hub.mqtt_port()).await;
    let (_client, task) = rumqttc_connected(rumqttc_device(&hub, "will-ka", &key1, proxy.port(), 5)).await;
    proxy.cut();
    let e = next_event(&mut events).await;
    assert!(is_will(&e, "will-ka"), "{e:?}");
    assert_eq!(e.body_text().as_deref(), Some("will-ka is gone"));
    assert_eq!(e.system_properties["content_type"], "text/plain");
    assert_eq!(e.system_properties["message_id"], "w-will-ka");
    assert_eq!(e.system_properties["iothub-connection-device-id"], "will-ka");
    assert_eq!(e.properties["state"], "lost");
    task.abort();

    // The network connection closes under the hub (the proxy goes, and
    // with it the hub's side of the cut connection): end of stream.
    let (_client, task) = rumqttc_connected(rumqttc_device(&hub, "will-eof", &key2, proxy.port(), 60)).await;
    proxy.cut();
    drop(proxy);
    let e = next_event(&mut events).await;
    assert!(is_will(&e, "will-eof"), "{e:?}");
    assert_eq!(e.properties["state"], "lost");
    task.abort();
}

#[tokio::test]
async fn a_clean_disconnect_publishes_no_will() {
    let hub = TestHub::start();
    let key = create_device(&hub, "bye").await;
    let marker_key = create_device(&hub, "marker").await;
    let mut events = service(&hub).events(None, None).await.unwrap();

    // rumqttc: DISCONNECT, then the device goes.
    let (client, task) = rumqttc_connected(rumqttc_device(&hub, "bye", &key, hub.mqtt_port(), 60)).await;
    client.disconnect().await.unwrap();
    // The event loop ends when the hub closes after the DISCONNECT.
    tokio::time::timeout(EVENT_TIMEOUT, task).await.unwrap().unwrap();
    // Raw: the same, waiting for the hub's close (the will is decided before it).
    let mut c = raw_with_will(&hub, "bye", &key, "devices/bye/messages/events/").await;
    c.send(Packet::Disconnect).await;
    assert!(c.closed().await);
    send_marker(&hub, "marker", &marker_key, "after-disconnect").await;
    expect_marker(&mut events, "after-disconnect").await;
}

#[tokio::test]
async fn a_will_on_another_topic_is_accepted_and_never_published() {
    let hub = TestHub::start();
    let key = create_device(&hub, "fw").await;
    create_device(&hub, "fw2").await;
    let marker_key = create_device(&hub, "marker").await;
    let mut events = service(&hub).events(None, None).await.unwrap();
    for topic in [
        "devices/fw2/messages/events/",
        "status/fw",
        "devices/fw/messages/devicebound/",
        "devices/fw/messages/events/#",
    ] {
        let c = raw_with_will(&hub, "fw", &key, topic).await;
        // The TLS connection goes without DISCONNECT.
        drop(c);
        wait_disconnected(&hub, "fw").await;
    }
    send_marker(&hub, "marker", &marker_key, "after-foreign-wills").await;
    expect_marker(&mut events, "after-foreign-wills").await;
}

#[tokio::test]
async fn a_takeover_publishes_the_will_and_a_disable_or_delete_does_not() {
    let hub = TestHub::start();
    let s = service(&hub);
    let key = create_device(&hub, "tk").await;
    let marker_key = create_device(&hub, "marker").await;
    let mut events = service(&hub).events(None, None).await.unwrap();

    // A newer connection of the device takes over: the old one's will goes.
    let mut old = raw_with_will(&hub, "tk", &key, "devices/tk/messages/events/n=1").await;
    let (mut new, _) = RawMqtt::device(&hub, "tk", &key, true).await;
    assert!(old.closed().await);
    let e = next_event(&mut events).await;
    assert!(is_will(&e, "tk"), "{e:?}");
    assert_eq!(e.properties["n"], "1");
    new.send(Packet::Disconnect).await;
    assert!(new.closed().await);

    // Disabled: the identity may no longer send; no will.
    let mut c = raw_with_will(&hub, "tk", &key, "devices/tk/messages/events/n=2").await;
    let mut d = s.get_device("tk").await.unwrap();
    d.status = ferrohub_core::identity::DeviceStatus::Disabled;
    s.update_device(&d, "*").await.unwrap();
    assert!(c.closed().await);
    send_marker(&hub, "marker", &marker_key, "after-disable").await;
    expect_marker(&mut events, "after-disable").await;

    // Deleted: no will either.
    let key = create_device(&hub, "tk-del").await;
    let mut c = raw_with_will(&hub, "tk-del", &key, "devices/tk-del/messages/events/").await;
    s.delete_device("tk-del", "*").await.unwrap();
    assert!(c.closed().await);
    send_marker(&hub, "marker", &marker_key, "after-delete").await;
    expect_marker(&mut events, "after-delete").await;
}

#[tokio::test]
async fn a_protocol_violation_publishes_the_will() {
    let hub = TestHub::start();
    let key = create_device(&hub, "pv").await;
    let mut events = service(&hub).events(None, None).await.unwrap();
    let mut c = raw_with_will(&hub, "pv", &key, "devices/pv/messages/events/").await;
    c.send(Packet::Subscribe(ferrohub_mqtt::v4::Subscribe::new("#", QoS::AtMostOnce))).await;
    assert!(c.closed().await);
    let e = next_event(&mut events).await;
    assert!(is_will(&e, "pv"), "{e:?}");
    assert_eq!(e.body_text().as_deref(), Some("will body"));
}

// ---- protocol violations: MQTT 3.1.1 §3.10.3 and §3.3.2 ----

#[tokio::test]
async fn an_unsubscribe_without_topics_closes_the_connection() {
    let hub = TestHub::start();
    let key = create_device(&hub, "u0").await;
    let (mut c, _) = RawMqtt::device(&hub, "u0", &key, true).await;
    c.subscribe(&["$iothub/methods/POST/#"]).await;
    // write_packet would encode it, but by hand shows the bytes: type 10
    // with flags 0b0010, remaining length 2, packet id 1, no topics.
    assert!(c.send_raw(&[0xA2, 0x02, 0x00, 0x01]).await);
    // No UNSUBACK: the hub closes.
    assert!(c.recv().await.is_none(), "the hub answered instead of closing");
    // The encoder agrees it is an UNSUBSCRIBE with no topics.
    let mut out = BytesMut::new();
    write_packet(&Packet::Unsubscribe(Unsubscribe { pkid: 1, topics: vec![] }), &mut out).unwrap();
    assert_eq!(&out[..], [0xA2, 0x02, 0x00, 0x01]);
}

#[tokio::test]
async fn a_publish_to_a_topic_with_a_wildcard_closes_the_connection() {
    let hub = TestHub::start();
    let key = create_device(&hub, "wc").await;
    let marker_key = create_device(&hub, "marker").await;
    let mut events = service(&hub).events(None, None).await.unwrap();
    for topic in
        ["devices/wc/messages/events/a=+", "devices/wc/messages/events/#", "$iothub/twin/GET/?$rid=#"]
    {
        let (mut c, _) = RawMqtt::device(&hub, "wc", &key, true).await;
        let mut p = Publish::new(topic, QoS::AtLeastOnce, "x");
        p.pkid = 1;
        c.send(Packet::Publish(p)).await;
        // No PUBACK, no twin answer: the hub closes.
        assert!(c.recv().await.is_none(), "{topic}: the hub answered instead of closing");
    }
    // Nothing reached the telemetry stream.
    send_marker(&hub, "marker", &marker_key, "after-wildcards").await;
    expect_marker(&mut events, "after-wildcards").await;
}

// ---- MQTT over WebSockets ----

type Ws = tokio_tungstenite::WebSocketStream<tokio_rustls::client::TlsStream<tokio::net::TcpStream>>;

/// Opens `wss://localhost:PORT/$iothub/websocket` with the `mqtt`
/// subprotocol, as the SDKs do.
async fn ws_open(hub: &TestHub) -> Ws {
    let tls = ferrohub_device_client::tls_config(Some(&hub.ca_file()), None).unwrap();
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", hub.https_port())).await.unwrap();
    let tls = tokio_rustls::TlsConnector::from(Arc::clone(&tls))
        .connect("localhost".try_into().unwrap(), tcp)
        .await
        .unwrap();
    let mut req =
        format!("wss://localhost:{}/$iothub/websocket", hub.https_port()).into_client_request().unwrap();
    req.headers_mut().insert("sec-websocket-protocol", "mqtt".parse().unwrap());
    let (ws, res) = tokio_tungstenite::client_async(req, tls).await.unwrap();
    assert_eq!(res.headers()["sec-websocket-protocol"], "mqtt");
    ws
}

fn encode(packets: &[Packet]) -> Vec<u8> {
    let mut out = BytesMut::new();
    for p in packets {
        write_packet(p, &mut out).unwrap();
    }
    out.to_vec()
}

/// The next MQTT packet the hub sends over the WebSocket (one per binary
/// message, as the hub writes them); `None` once it closes.
async fn ws_recv(ws: &mut Ws) -> Option<Packet> {
    loop {
        let msg = tokio::time::timeout(EVENT_TIMEOUT, ws.next()).await.expect("no message and no close");
        match msg {
            None | Some(Err(_)) | Some(Ok(Message::Close(_))) => return None,
            Some(Ok(Message::Binary(b))) => {
                let mut buf = BytesMut::from(&b[..]);
                return Some(Packet::read(&mut buf, usize::MAX).unwrap());
            }
            Some(Ok(_)) => {}
        }
    }
}

#[tokio::test]
async fn a_large_websocket_message_before_connack_closes_the_connection() {
    let hub = TestHub::start();
    let key = create_device(&hub, "wsbig").await;
    // A 100 KiB message: a valid CONNECT and PINGREQs behind it. The
    // framing alone would take each packet; the pre-CONNACK cap (8 KiB and
    // a little for WebSocket framing, as on the TLS port) stops reading
    // long before the message is complete.
    let mut bytes = encode(&[connect_packet("wsbig", &token("wsbig", &key, now_unix() + 3600), 60, true)]);
    while bytes.len() < 100 * 1024 {
        bytes.extend([0xC0, 0x00]);
    }
    let mut ws = ws_open(&hub).await;
    // The hub may close while the client is still writing.
    let _ = ws.send(Message::binary(bytes)).await;
    assert!(ws_recv(&mut ws).await.is_none(), "the hub answered a 100 KiB message before CONNACK");
    // One larger than the post-CONNACK limit is refused by the WebSocket
    // layer itself, before it is buffered whole.
    let mut ws = ws_open(&hub).await;
    let _ = ws.send(Message::binary(vec![0u8; 400 * 1024])).await;
    assert!(ws_recv(&mut ws).await.is_none());
}

#[tokio::test]
async fn a_frame_trickling_in_before_connack_is_cut_at_the_cap_not_buffered() {
    use tokio::io::AsyncWriteExt;
    let hub = TestHub::start();
    let mut ws = ws_open(&hub).await;
    // By hand, under the WebSocket client: a masked binary frame announcing
    // 100 KiB (64-bit length form), then 20 KiB of it, then nothing. A
    // limit on whole frames or messages would hold the 20 KiB and wait for
    // the rest until the CONNECT timeout (10 s); the cap on raw bytes
    // closes as soon as the 8 KiB and a little have been read.
    let mut frame = vec![0x82, 0x80 | 127];
    frame.extend((100u64 * 1024).to_be_bytes());
    frame.extend([0u8; 4]); // mask 0: the payload goes as is
    frame.extend(vec![0xC0; 20 * 1024]);
    let started = std::time::Instant::now();
    let stream = ws.get_mut();
    let _ = stream.write_all(&frame).await;
    let _ = stream.flush().await;
    assert!(ws_recv(&mut ws).await.is_none());
    assert!(started.elapsed() < Duration::from_secs(5), "closed only after {:?}", started.elapsed());
}

#[tokio::test]
async fn a_device_over_websockets_connects_and_sends_200_kib_after_connack() {
    let hub = TestHub::start();
    let key = create_device(&hub, "wsok").await;
    let mut events = service(&hub).events(None, None).await.unwrap();
    let mut ws = ws_open(&hub).await;
    ws.send(Message::binary(encode(&[connect_packet(
        "wsok",
        &token("wsok", &key, now_unix() + 3600),
        60,
        true,
    )])))
    .await
    .unwrap();
    match ws_recv(&mut ws).await {
        Some(Packet::ConnAck(ack)) => assert_eq!(ack.code, ConnectReturnCode::Success),
        other => panic!("expected CONNACK, got {other:?}"),
    }
    let body = vec![b'z'; 200 * 1024];
    let mut p = Publish::new("devices/wsok/messages/events/big=1", QoS::AtLeastOnce, body.clone());
    p.pkid = 5;
    ws.send(Message::binary(encode(&[Packet::Publish(p)]))).await.unwrap();
    match ws_recv(&mut ws).await {
        Some(Packet::PubAck(ack)) => assert_eq!(ack.pkid, 5),
        other => panic!("expected PUBACK, got {other:?}"),
    }
    let e = next_event(&mut events).await;
    assert_eq!(e.device_id, "wsok");
    assert_eq!(e.properties["big"], "1");
    assert_eq!(e.body_bytes().unwrap(), body);
}
