//! The MQTT device endpoint against a real hub, byte for byte: who may
//! connect, one connection per device, keep-alive and token expiry,
//! sessions, twins, desired pushes, direct methods, telemetry, the
//! cloud-to-device queue, and misbehaving clients.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use common::mqtt::{connect_packet, create_device, http, now_unix, owner_token, service, token, RawMqtt};
use common::TestHub;
use ferrohub_mqtt::v4::{ConnectReturnCode, Packet, PubAck};
use ferrohub_mqtt::QoS;
use serde_json::{json, Value};

const DESIRED: &str = "$iothub/twin/PATCH/properties/desired/#";
const TWIN_RES: &str = "$iothub/twin/res/#";
const METHODS: &str = "$iothub/methods/POST/#";

fn c2d_filter(d: &str) -> String {
    format!("devices/{d}/messages/devicebound/#")
}

async fn post(hub: &TestHub, path: &str, body: Vec<u8>, headers: &[(&str, &str)]) -> (u16, Value) {
    let mut req = http(hub)
        .post(format!("https://localhost:{}{path}?api-version=2021-04-12", hub.https_port()))
        .header("authorization", owner_token(hub))
        .body(body);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let res = req.send().await.unwrap();
    let status = res.status().as_u16();
    let text = res.text().await.unwrap();
    (status, serde_json::from_str(&text).unwrap_or(Value::String(text)))
}

async fn send_c2d(hub: &TestHub, device: &str, body: &str, headers: &[(&str, &str)]) -> u16 {
    post(hub, &format!("/devices/{device}/messages/deviceBound"), body.as_bytes().to_vec(), headers).await.0
}

#[tokio::test]
async fn connect_is_refused_for_bad_credentials_and_protocols() {
    let hub = TestHub::start();
    let key = create_device(&hub, "d1").await;
    let other_key = create_device(&hub, "d2").await;
    let cases = [
        ("d1", token("d1", &other_key, now_unix() + 600), "wrong key"),
        ("d1", token("d1", &key, now_unix() - 1), "expired token"),
        ("ghost", token("ghost", &key, now_unix() + 600), "unknown device"),
        ("d2", token("d1", &key, now_unix() + 600), "token for another device"),
        ("d1", String::new(), "no password, not an x509 device"),
    ];
    for (id, password, why) in cases {
        let (_c, ack) = RawMqtt::connect(&hub, id, &password, 60, false).await;
        assert_eq!(ack.code, ConnectReturnCode::NotAuthorized, "{why}");
    }
    // The client id must match the username's device.
    let mut c = RawMqtt::open(&hub).await;
    let mut p = connect_packet("d1", &token("d1", &key, now_unix() + 600), 60, false);
    if let Packet::Connect(connect) = &mut p {
        connect.client_id = "d2".into();
    }
    c.send(p).await;
    assert!(matches!(c.recv().await, Some(Packet::ConnAck(a)) if a.code == ConnectReturnCode::NotAuthorized));
    // MQTT 3.1 (protocol level 3): 0x01.
    let mut c = RawMqtt::open(&hub).await;
    let v31 = [
        0x10, 0x11, 0x00, 0x06, b'M', b'Q', b'I', b's', b'd', b'p', 0x03, 0x02, 0x00, 0x3c, 0x00, 0x03, b'a',
        b'b', b'c',
    ];
    c.send_raw(&v31).await;
    assert!(
        matches!(c.recv().await, Some(Packet::ConnAck(a)) if a.code == ConnectReturnCode::RefusedProtocolVersion)
    );
    // Anything before CONNECT closes the connection.
    let mut c = RawMqtt::open(&hub).await;
    c.send(Packet::PingReq).await;
    assert!(c.recv().await.is_none());
    // A disabled device is refused.
    let s = service(&hub);
    let mut d = s.get_device("d1").await.unwrap();
    d.status = ferrohub_core::identity::DeviceStatus::Disabled;
    s.update_device(&d, "*").await.unwrap();
    let (_c, ack) = RawMqtt::connect(&hub, "d1", &token("d1", &key, now_unix() + 600), 60, false).await;
    assert_eq!(ack.code, ConnectReturnCode::NotAuthorized);
}

#[tokio::test]
async fn a_policy_token_with_device_connect_may_act_for_a_device() {
    let hub = TestHub::start();
    create_device(&hub, "gw1").await;
    let policies: Value =
        serde_json::from_slice(&std::fs::read(hub.data_dir().join("policies.json")).unwrap()).unwrap();
    let key = |name: &str| {
        policies.as_array().unwrap().iter().find(|p| p["keyName"] == name).unwrap()["primaryKey"]
            .as_str()
            .unwrap()
            .to_owned()
    };
    let device_policy = ferrohub_core::sas::generate_token(
        "localhost/devices",
        &key("device"),
        Some("device"),
        now_unix() + 600,
    )
    .unwrap();
    let (_c, ack) = RawMqtt::connect(&hub, "gw1", &device_policy, 60, false).await;
    assert_eq!(ack.code, ConnectReturnCode::Success);
    let service_policy = ferrohub_core::sas::generate_token(
        "localhost/devices",
        &key("service"),
        Some("service"),
        now_unix() + 600,
    )
    .unwrap();
    let (_c, ack) = RawMqtt::connect(&hub, "gw1", &service_policy, 60, false).await;
    assert_eq!(ack.code, ConnectReturnCode::NotAuthorized, "ServiceConnect is not DeviceConnect");
}

#[tokio::test]
async fn a_new_connection_replaces_the_old_and_state_follows() {
    let hub = TestHub::start();
    let key = create_device(&hub, "t1").await;
    let s = service(&hub);
    let (mut first, _) = RawMqtt::device(&hub, "t1", &key, true).await;
    assert_eq!(
        s.get_device("t1").await.unwrap().connection_state,
        ferrohub_core::identity::ConnectionState::Connected
    );
    let (mut second, _) = RawMqtt::device(&hub, "t1", &key, true).await;
    assert!(first.closed().await);
    // The replaced connection's end does not mark the device disconnected.
    second.send(Packet::PingReq).await;
    assert!(matches!(second.recv().await, Some(Packet::PingResp)));
    let twin = s.get_twin("t1").await.unwrap();
    assert_eq!(twin["connectionState"], "Connected");
    second.send(Packet::Disconnect).await;
    assert!(second.closed().await);
    // Disconnected is recorded once the session has ended: poll the
    // registry until it says so (the hub writes it after closing).
    let mut state = String::new();
    for _ in 0..100 {
        state = s.get_twin("t1").await.unwrap()["connectionState"].as_str().unwrap().to_owned();
        if state == "Disconnected" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(state, "Disconnected");
}

#[tokio::test]
async fn disabling_or_deleting_a_device_closes_its_connection() {
    let hub = TestHub::start();
    let s = service(&hub);
    let key = create_device(&hub, "x1").await;
    let (mut c, _) = RawMqtt::device(&hub, "x1", &key, true).await;
    let mut d = s.get_device("x1").await.unwrap();
    d.status = ferrohub_core::identity::DeviceStatus::Disabled;
    s.update_device(&d, "*").await.unwrap();
    assert!(c.closed().await);

    let key = create_device(&hub, "x2").await;
    let (mut c, _) = RawMqtt::device(&hub, "x2", &key, true).await;
    s.delete_device("x2", "*").await.unwrap();
    assert!(c.closed().await);
}

#[tokio::test]
async fn keep_alive_and_token_expiry_close_the_connection() {
    let hub = TestHub::start();
    let key = create_device(&hub, "k1").await;
    // keep-alive 1 s: silence for 1.5 s ends it.
    let (mut c, ack) = RawMqtt::connect(&hub, "k1", &token("k1", &key, now_unix() + 600), 1, true).await;
    assert_eq!(ack.code, ConnectReturnCode::Success);
    let started = std::time::Instant::now();
    assert!(c.closed().await);
    assert!(started.elapsed() >= Duration::from_millis(1400), "closed too early: {:?}", started.elapsed());
    // A token that expires in 2 s ends the connection when it does, even
    // though the client keeps pinging.
    let (mut c, ack) = RawMqtt::connect(&hub, "k1", &token("k1", &key, now_unix() + 2), 60, true).await;
    assert_eq!(ack.code, ConnectReturnCode::Success);
    let mut closed = false;
    for _ in 0..40 {
        c.send(Packet::PingReq).await;
        if c.recv().await.is_none() {
            closed = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert!(closed, "the expired token's connection stayed open");
}

#[tokio::test]
async fn twin_get_and_reported_patch_over_mqtt() {
    let hub = TestHub::start();
    let key = create_device(&hub, "tw").await;
    service(&hub).update_twin("tw", &json!({"properties":{"desired":{"fw":{"v":"1"}}}}), "*").await.unwrap();
    let (mut c, _) = RawMqtt::device(&hub, "tw", &key, true).await;
    c.subscribe(&[TWIN_RES]).await;
    c.publish("$iothub/twin/GET/?$rid=7", QoS::AtMostOnce, b" ").await;
    let p = c.next_publish().await.unwrap();
    assert_eq!(p.topic, "$iothub/twin/res/200/?$rid=7");
    let body: Value = serde_json::from_slice(&p.payload).unwrap();
    assert_eq!(body["desired"]["fw"]["v"], "1");
    assert_eq!(body["desired"]["$version"], 2);
    assert_eq!(body["reported"]["$version"], 1);
    assert!(body["desired"].get("$metadata").is_none());

    // Python sends twin requests at QoS 1: PUBACK plus the response.
    c.publish(
        "$iothub/twin/PATCH/properties/reported/?$rid=abc-1",
        QoS::AtLeastOnce,
        br#"{"fwUpdateStatus":"current","gone":null}"#,
    )
    .await;
    let mut saw_ack = false;
    let mut response = None;
    while response.is_none() || !saw_ack {
        match c.recv().await.unwrap() {
            Packet::PubAck(PubAck { pkid: 1, .. }) => saw_ack = true,
            Packet::Publish(p) => response = Some(p),
            other => panic!("unexpected {other:?}"),
        }
    }
    assert!(saw_ack);
    assert_eq!(response.unwrap().topic, "$iothub/twin/res/204/?$rid=abc-1&$version=2");
    let twin = service(&hub).get_twin("tw").await.unwrap();
    assert_eq!(twin["properties"]["reported"]["fwUpdateStatus"], "current");

    // Bad JSON: status in the topic, Azure's body.
    c.publish("$iothub/twin/PATCH/properties/reported/?$rid=9", QoS::AtMostOnce, b"{nope").await;
    let p = c.next_publish().await.unwrap();
    assert_eq!(p.topic, "$iothub/twin/res/400/?$rid=9");
    let err: Value = serde_json::from_slice(&p.payload).unwrap();
    assert_eq!(err["errorCode"], 400006);
    assert!(err["message"].as_str().unwrap().contains("JSON"));
    // Over the limits: 400 and nothing stored.
    let big = json!({"big": "x".repeat(5000)}).to_string();
    c.publish("$iothub/twin/PATCH/properties/reported/?$rid=10", QoS::AtMostOnce, big.as_bytes()).await;
    assert_eq!(c.next_publish().await.unwrap().topic, "$iothub/twin/res/400/?$rid=10");
    assert_eq!(service(&hub).get_twin("tw").await.unwrap()["properties"]["reported"]["$version"], 2);
}

#[tokio::test]
async fn desired_changes_are_pushed_in_version_order() {
    let hub = TestHub::start();
    let key = create_device(&hub, "dp").await;
    let s = service(&hub);
    let (mut c, _) = RawMqtt::device(&hub, "dp", &key, true).await;
    c.subscribe(&[DESIRED]).await;
    let writers: Vec<_> = (0..10)
        .map(|i| {
            let s = s.clone();
            tokio::spawn(async move {
                s.update_twin("dp", &json!({"properties":{"desired":{"n":i}}}), "*").await.unwrap()
            })
        })
        .collect();
    for w in writers {
        w.await.unwrap();
    }
    let mut versions = Vec::new();
    while versions.len() < 10 {
        let p = c.next_publish().await.unwrap();
        let body: Value = serde_json::from_slice(&p.payload).unwrap();
        let v = body["$version"].as_i64().unwrap();
        assert_eq!(p.topic, format!("$iothub/twin/PATCH/properties/desired/?$version={v}"));
        versions.push(v);
    }
    assert_eq!(versions, (2..12).collect::<Vec<_>>(), "each change once, +1 each, in order");
    // A replace lists removed keys as null.
    s.replace_twin("dp", &json!({"properties":{"desired":{"other":1}}}), "*").await.unwrap();
    let body: Value = serde_json::from_slice(&c.next_publish().await.unwrap().payload).unwrap();
    assert_eq!(body, json!({"other":1,"n":null,"$version":12}));
}

/// A back end that writes desired properties and then waits at the device
/// for the next `$version` must get it even when the values are the ones
/// already set (docs/decisions.md, "Every accepted update counts"); the
/// raw client sees exactly what the hub pushes, with no SDK in between.
#[tokio::test]
async fn a_connected_device_gets_a_desired_patch_that_repeats_the_current_values() {
    let hub = TestHub::start();
    let key = create_device(&hub, "same").await;
    let s = service(&hub);
    let (mut c, _) = RawMqtt::device(&hub, "same", &key, true).await;
    c.subscribe(&[DESIRED, TWIN_RES]).await;
    let patch = json!({"properties":{"desired":{"foo":1}}});
    let first = s.update_twin("same", &patch, "*").await.unwrap();
    let p = c.next_publish().await.unwrap();
    assert_eq!(p.topic, "$iothub/twin/PATCH/properties/desired/?$version=2");

    // The same values again, with the etag just read: accepted, and an update.
    let etag = first["etag"].as_str().unwrap();
    let again = s.update_twin("same", &patch, etag).await.unwrap();
    assert_eq!(again["properties"]["desired"]["$version"], 3);
    assert_eq!(again["version"], first["version"].as_i64().unwrap() + 1);
    assert_ne!(again["etag"], first["etag"]);
    let last_updated = |t: &Value| t["properties"]["desired"]["$metadata"]["$lastUpdated"].clone();
    assert_ne!(last_updated(&again), last_updated(&first));
    let p = c.next_publish().await.unwrap();
    assert_eq!(p.topic, "$iothub/twin/PATCH/properties/desired/?$version=3");
    assert_eq!(serde_json::from_slice::<Value>(&p.payload).unwrap(), json!({"foo":1,"$version":3}));

    // A reported patch repeating its values is acknowledged with a new $version.
    for (rid, version) in [(1, 2), (2, 3)] {
        c.publish(
            &format!("$iothub/twin/PATCH/properties/reported/?$rid={rid}"),
            QoS::AtMostOnce,
            br#"{"r":1}"#,
        )
        .await;
        let p = c.next_publish().await.unwrap();
        assert_eq!(p.topic, format!("$iothub/twin/res/204/?$rid={rid}&$version={version}"));
    }
    let twin = s.get_twin("same").await.unwrap();
    assert_eq!(twin["properties"]["reported"]["$version"], 3);
    // A tags-only PATCH that changes no tag is no update (and nothing is pushed
    // for tags): the twin version stays.
    let version = twin["version"].clone();
    s.update_twin("same", &json!({"tags":{}}), "*").await.unwrap();
    assert_eq!(s.get_twin("same").await.unwrap()["version"], version);
}

#[tokio::test]
async fn direct_methods_round_trip_and_time_out() {
    let hub = TestHub::start();
    let key = create_device(&hub, "m1").await;
    // Not connected: 404 DeviceNotOnline.
    let call = |payload: Value, timeout: u64| {
        let body = json!({"methodName":"reboot","payload":payload,"responseTimeoutInSeconds":timeout,"connectTimeoutInSeconds":0});
        post(
            &hub,
            "/twins/m1/methods",
            body.to_string().into_bytes(),
            &[("content-type", "application/json")],
        )
    };
    let (status, body) = call(json!(null), 5).await;
    assert_eq!(status, 404, "{body}");
    assert!(body["Message"].as_str().unwrap().starts_with("ErrorCode:DeviceNotOnline;"));

    let (mut c, _) = RawMqtt::device(&hub, "m1", &key, true).await;
    c.subscribe(&[METHODS]).await;
    for payload in [json!({"delay":5}), json!(null), json!(""), json!("text")] {
        let invoke = tokio::spawn({
            let body = json!({"methodName":"reboot","payload":payload,"responseTimeoutInSeconds":30});
            let hub_https = hub.https_port();
            let client = http(&hub);
            let token = owner_token(&hub);
            async move {
                let res = client
                    .post(format!("https://localhost:{hub_https}/twins/m1/methods?api-version=2021-04-12"))
                    .header("authorization", token)
                    .header("content-type", "application/json")
                    .body(body.to_string())
                    .send()
                    .await
                    .unwrap();
                (res.status().as_u16(), res.json::<Value>().await.unwrap())
            }
        });
        let req = c.next_publish().await.unwrap();
        let rid = req.topic.strip_prefix("$iothub/methods/POST/reboot/?$rid=").unwrap().to_owned();
        assert_eq!(serde_json::from_slice::<Value>(&req.payload).unwrap(), payload);
        // The device answers with the payload it got, unchanged.
        c.publish(&format!("$iothub/methods/res/201/?$rid={rid}"), QoS::AtMostOnce, &req.payload).await;
        let (status, reply) = invoke.await.unwrap();
        assert_eq!(status, 200);
        assert_eq!(reply, json!({"status":201,"payload":payload}));
    }
    // No reply in time: 504 GatewayTimeout.
    let (status, body) = call(json!(1), 5).await;
    assert_eq!(status, 504, "{body}");
}

#[tokio::test]
async fn telemetry_reaches_event_readers_with_its_properties() {
    let hub = TestHub::start();
    let key = create_device(&hub, "tel").await;
    let (mut c, _) = RawMqtt::device(&hub, "tel", &key, true).await;
    c.publish(
        "devices/tel/messages/events/%24.mid=m-1&%24.ct=application%2Fjson&temp%20unit=C&flag",
        QoS::AtLeastOnce,
        br#"{"t":21}"#,
    )
    .await;
    assert!(matches!(c.recv().await, Some(Packet::PubAck(_))));
    // Replay through /events?last=1 and read the first event.
    let res = http(&hub)
        .get(format!("https://localhost:{}/events?deviceId=tel&last=1", hub.https_port()))
        .header("authorization", owner_token(&hub))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status().as_u16(), 200);
    assert!(res.headers()["content-type"].to_str().unwrap().starts_with("text/event-stream"));
    let mut res = res;
    let mut text = String::new();
    while !text.contains("\n\n") {
        let chunk =
            tokio::time::timeout(Duration::from_secs(20), res.chunk()).await.unwrap().unwrap().unwrap();
        text.push_str(&String::from_utf8_lossy(&chunk));
    }
    let line = text.lines().find(|l| l.starts_with("data:")).unwrap();
    let event: Value = serde_json::from_str(line.trim_start_matches("data:").trim()).unwrap();
    assert_eq!(event["deviceId"], "tel");
    assert_eq!(event["body"], r#"{"t":21}"#);
    assert_eq!(event["systemProperties"]["message_id"], "m-1");
    assert_eq!(event["systemProperties"]["content_type"], "application/json");
    assert_eq!(event["properties"]["temp unit"], "C");
    assert_eq!(event["properties"]["flag"], Value::Null);
    // Telemetry over 256 KB closes the connection.
    c.publish("devices/tel/messages/events/", QoS::AtMostOnce, &vec![b'x'; 300 * 1024]).await;
    assert!(c.closed().await);
}

#[tokio::test]
async fn c2d_messages_queue_durably_survive_restart_and_respect_limits() {
    let mut hub = TestHub::start();
    let key = create_device(&hub, "c1").await;
    // Subscribe with a persistent session, then go away.
    let (mut c, ack) = RawMqtt::device(&hub, "c1", &key, false).await;
    assert!(!ack.session_present);
    c.subscribe(&[&c2d_filter("c1")]).await;
    c.send(Packet::Disconnect).await;
    assert!(c.closed().await);
    assert_eq!(
        send_c2d(&hub, "c1", "hello", &[("iothub-app-color", "red"), ("iothub-messageid", "msg-1")]).await,
        204
    );
    assert_eq!(service(&hub).get_device("c1").await.unwrap().cloud_to_device_message_count, 1);

    // The queue and the session survive a hub restart; the device reconnects
    // without subscribing again and still gets the message.
    hub.restart();
    let (mut c, ack) = RawMqtt::device(&hub, "c1", &key, false).await;
    assert!(ack.session_present);
    let p = c.next_publish().await.unwrap();
    assert_eq!(p.qos, QoS::AtLeastOnce);
    assert!(p.topic.starts_with("devices/c1/messages/devicebound/"), "{}", p.topic);
    assert!(p.topic.contains("%24.mid=msg-1") && p.topic.contains("color=red"), "{}", p.topic);
    assert_eq!(&p.payload[..], b"hello");
    // Not acknowledged yet: still counted.
    assert_eq!(service(&hub).get_device("c1").await.unwrap().cloud_to_device_message_count, 1);
    c.send(Packet::PubAck(PubAck::new(p.pkid))).await;
    c.send(Packet::PingReq).await;
    assert!(matches!(c.recv().await, Some(Packet::PingResp)));
    assert_eq!(service(&hub).get_device("c1").await.unwrap().cloud_to_device_message_count, 0);
    c.send(Packet::Disconnect).await;
    assert!(c.closed().await);

    // At most 50 queued: the 51st is refused.
    for i in 0..50 {
        assert_eq!(send_c2d(&hub, "c1", &format!("m{i}"), &[]).await, 204, "message {i}");
    }
    let (status, body) = post(&hub, "/devices/c1/messages/deviceBound", b"one too many".to_vec(), &[]).await;
    assert_eq!(status, 403, "{body}");
    assert!(body["Message"].as_str().unwrap().starts_with("ErrorCode:DeviceMaximumQueueDepthExceeded;"));
    assert_eq!(send_c2d(&hub, "ghost", "x", &[]).await, 404);
    assert_eq!(post(&hub, "/devices/c1/messages/deviceBound", vec![b'x'; 65 * 1024], &[]).await.0, 413);
}

#[tokio::test]
async fn expired_c2d_messages_are_not_delivered() {
    let hub = TestHub::start();
    let key = create_device(&hub, "ttl").await;
    // A millisecond expiry 1.5 s ahead: still in the future when the hub
    // reads it (a whole-second one could already be past).
    let now_ms =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as i64;
    let soon = ferrohub_core::time::Timestamp::from_unix_millis(now_ms + 1_500).to_iso();
    assert_eq!(send_c2d(&hub, "ttl", "short-lived", &[("iothub-expiry", &soon)]).await, 204);
    assert_eq!(send_c2d(&hub, "ttl", "lasting", &[]).await, 204);
    // Wait out the first message's time to live (time must pass here):
    // until a moment past the expiry, measured on the same clock.
    let left = (now_ms + 1_600)
        - std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as i64;
    if left > 0 {
        tokio::time::sleep(Duration::from_millis(left as u64)).await;
    }
    let (mut c, _) = RawMqtt::device(&hub, "ttl", &key, true).await;
    c.subscribe(&[&c2d_filter("ttl")]).await;
    let p = c.next_publish().await.unwrap();
    assert_eq!(&p.payload[..], b"lasting");
    assert_eq!(service(&hub).get_device("ttl").await.unwrap().cloud_to_device_message_count, 1);
}

#[tokio::test]
async fn foreign_topics_qos2_and_malformed_packets_close_only_that_connection() {
    let hub = TestHub::start();
    let key = create_device(&hub, "r1").await;
    let bystander_key = create_device(&hub, "r2").await;
    let (mut bystander, _) = RawMqtt::device(&hub, "r2", &bystander_key, true).await;
    let bad: Vec<(&str, Packet)> = vec![
        ("subscribe to another device", sub("devices/r2/messages/devicebound/#")),
        ("subscribe with a wildcard", sub("#")),
        ("publish to another device", pubp("devices/r2/messages/events/", QoS::AtMostOnce)),
        ("publish at QoS 2", pubp("devices/r1/messages/events/", QoS::ExactlyOnce)),
        ("second CONNECT", connect_packet("r1", "x", 60, true)),
    ];
    for (why, packet) in bad {
        let (mut c, _) = RawMqtt::device(&hub, "r1", &key, true).await;
        let mut out = ferrohub_mqtt::BytesMut::new();
        // write_packet refuses QoS 2, so encode that one by hand.
        let p = packet;
        if let Packet::Publish(p) = &p {
            if p.qos == QoS::ExactlyOnce {
                out.extend_from_slice(&[0x34, 0x1f, 0x00, 0x1b]);
                out.extend_from_slice(b"devices/r1/messages/events/");
                out.extend_from_slice(&[0x00, 0x01]);
            }
        }
        if out.is_empty() {
            ferrohub_mqtt::write_packet(&p, &mut out).unwrap();
        }
        c.send_raw(&out).await;
        assert!(c.closed().await, "{why}");
    }
    let raw: [(&str, &[u8]); 5] = [
        ("remaining length longer than the packet", &[0x30, 0x7f, 0x00, 0x01, b'a']),
        ("zero-length topic", &[0x30, 0x02, 0x00, 0x00]),
        ("five-byte remaining length", &[0x30, 0xff, 0xff, 0xff, 0xff, 0x7f]),
        ("reserved packet type", &[0xf0, 0x00]),
        ("announces 200 MB", &[0x30, 0x80, 0x80, 0x80, 0x60]),
    ];
    for (why, bytes) in raw {
        let (mut c, _) = RawMqtt::device(&hub, "r1", &key, true).await;
        c.send_raw(bytes).await;
        // The truncated one waits for bytes that never come: end it.
        if why.starts_with("remaining length longer") {
            drop(c);
            continue;
        }
        assert!(c.closed().await, "{why}");
    }
    // Before authentication a huge length field is refused at once.
    let mut c = RawMqtt::open(&hub).await;
    c.send_raw(&[0x10, 0xff, 0xff, 0xff, 0x7f]).await;
    assert!(c.closed().await);
    // The bystander never noticed.
    bystander.send(Packet::PingReq).await;
    assert!(matches!(bystander.recv().await, Some(Packet::PingResp)));
    let (mut c, _) = RawMqtt::device(&hub, "r1", &key, true).await;
    c.send(Packet::PingReq).await;
    assert!(matches!(c.recv().await, Some(Packet::PingResp)));
}

#[tokio::test]
async fn a_client_that_never_sends_connect_is_dropped() {
    let hub = TestHub::start();
    let mut c = RawMqtt::open(&hub).await;
    let started = std::time::Instant::now();
    assert!(c.closed().await);
    assert!(started.elapsed() >= Duration::from_secs(5));
}

#[tokio::test]
async fn a_slow_consumer_is_closed_and_others_carry_on() {
    let hub = TestHub::start();
    let key = create_device(&hub, "slow").await;
    let s = service(&hub);
    let fast_key = create_device(&hub, "fast").await;
    let (mut fast, _) = RawMqtt::device(&hub, "fast", &fast_key, true).await;
    let (mut c, _) = RawMqtt::device(&hub, "slow", &key, true).await;
    c.subscribe(&[DESIRED]).await;
    // The device reads nothing while desired patches pile up. Large patches
    // fill the socket buffers, then the hub's queue; then it gives up on the
    // connection instead of holding memory for it.
    let chunk = "y".repeat(4000);
    let patch = |i: usize| {
        let desired: serde_json::Map<String, Value> =
            (0..7).map(|k| (format!("k{k}"), json!(format!("{i}{chunk}")))).collect();
        json!({"properties":{"desired":desired}})
    };
    // Far more than the socket buffers and the hub's queue hold.
    for i in 0..300 {
        s.update_twin("slow", &patch(i), "*").await.unwrap();
    }
    // The hub gives up on the connection; its session ends and the device
    // is recorded as disconnected (polled: the registry is the only view).
    let mut kicked = false;
    for _ in 0..600 {
        if s.get_twin("slow").await.unwrap()["connectionState"] == "Disconnected" {
            kicked = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(kicked, "the slow consumer was never closed");
    fast.send(Packet::PingReq).await;
    assert!(matches!(fast.recv().await, Some(Packet::PingResp)));
}

fn sub(filter: &str) -> Packet {
    Packet::Subscribe(ferrohub_mqtt::v4::Subscribe::new(filter, QoS::AtMostOnce))
}

fn pubp(topic: &str, qos: QoS) -> Packet {
    let mut p = ferrohub_mqtt::v4::Publish::new(topic, qos, b"x".to_vec());
    p.pkid = 1;
    Packet::Publish(p)
}

#[tokio::test]
async fn self_signed_devices_connect_with_their_certificate_only() {
    let hub = TestHub::start();
    let dir = tempfile::tempdir().unwrap();
    let (cert, key, thumb) = common::mqtt::self_signed(dir.path(), "x509dev", "sha1");
    let (other_cert, other_key, _) = common::mqtt::self_signed(dir.path(), "intruder", "sha1");
    let body = json!({"deviceId":"x509dev","authentication":{"type":"selfSigned","x509Thumbprint":{"primaryThumbprint":thumb.to_lowercase()}}});
    let res = http(&hub)
        .put(format!("https://localhost:{}/devices/x509dev?api-version=2021-04-12", hub.https_port()))
        .header("authorization", owner_token(&hub))
        .header("content-type", "application/json")
        .body(body.to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(res.status().as_u16(), 200);
    let attempt = |chain: std::path::PathBuf, key: std::path::PathBuf| {
        let hub = &hub;
        async move {
            let mut c = RawMqtt::open_with_cert(hub, Some((&chain, &key))).await;
            c.send(connect_packet("x509dev", "", 60, true)).await;
            match c.recv().await {
                Some(Packet::ConnAck(a)) => a.code,
                other => panic!("expected CONNACK, got {other:?}"),
            }
        }
    };
    let code = attempt(cert.clone(), key.clone()).await;
    assert_eq!(code, ConnectReturnCode::Success, "{}", hub.log());
    assert_eq!(attempt(other_cert, other_key).await, ConnectReturnCode::NotAuthorized);
    // Without a certificate at all.
    let (_c, ack) = RawMqtt::connect(&hub, "x509dev", "", 60, true).await;
    assert_eq!(ack.code, ConnectReturnCode::NotAuthorized);
}
