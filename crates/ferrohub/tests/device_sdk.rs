//! The Rust device SDK (`ferrohub-device-client`) against a real hub: every
//! device feature end to end, over TLS and WebSockets, and the SDK's
//! promises across takeovers, token renewals and hub restarts.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use common::mqtt::{create_device, http, owner_token, service};
use common::TestHub;
use ferrohub_device_client::{ConnectionStatus, DeviceClient, DeviceOptions, Message, Transport};
use serde_json::{json, Value};

/// The longest any awaited event may take before the test fails.
const WAIT: Duration = Duration::from_secs(30);

async fn within<T>(what: &str, f: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(WAIT, f).await.unwrap_or_else(|_| panic!("timed out waiting for {what}"))
}

fn options(hub: &TestHub, websocket: bool) -> DeviceOptions {
    DeviceOptions {
        mqtt_port: Some(hub.mqtt_port()),
        ca_file: Some(hub.ca_file()),
        transport: if websocket {
            Transport::WebSocket { https_port: Some(hub.https_port()) }
        } else {
            Transport::Tcp
        },
        ..Default::default()
    }
}

fn device_cs(id: &str, key: &str) -> String {
    format!("HostName=localhost;DeviceId={id};SharedAccessKey={key}")
}

async fn connect(hub: &TestHub, id: &str, key: &str, websocket: bool) -> DeviceClient {
    within("connect", DeviceClient::connect(&device_cs(id, key), options(hub, websocket))).await.unwrap()
}

async fn every_feature(websocket: bool) {
    let hub = TestHub::start();
    let id = if websocket { "sdk-ws" } else { "sdk-tcp" };
    let key = create_device(&hub, id).await;
    let s = service(&hub);
    let client = connect(&hub, id, &key, websocket).await;
    let mut desired = client.desired_updates().unwrap();
    let mut methods = client.method_requests().unwrap();
    let mut c2d = client.c2d_messages().unwrap();

    // The first update is the full desired document after connecting.
    let first = within("initial desired", desired.recv()).await.unwrap();
    assert!(first.full);
    assert_eq!(first.version, 1);

    // Twin: reported patch, visible to the service.
    let v = within("reported", client.update_reported(&json!({"fwUpdateStatus":"current"}))).await.unwrap();
    assert_eq!(v, 2);
    assert_eq!(s.get_twin(id).await.unwrap()["properties"]["reported"]["fwUpdateStatus"], "current");

    // Desired: a service patch arrives as a patch with the next version.
    s.update_twin(id, &json!({"properties":{"desired":{"firmware":{"fwVersion":"2.8.5"}}}}), "*")
        .await
        .unwrap();
    let update = within("desired patch", desired.recv()).await.unwrap();
    assert!(!update.full);
    assert_eq!(update.version, 2);
    assert_eq!(update.body["firmware"]["fwVersion"], "2.8.5");
    let twin = within("twin", client.get_twin()).await.unwrap();
    assert_eq!(twin.desired_version(), Some(2));

    // Direct method through the REST API.
    let answer = tokio::spawn(async move {
        let call = within("method", methods.recv()).await.unwrap();
        assert_eq!(call.name, "reboot");
        let payload = call.payload.clone();
        call.respond(200, json!({"echo": payload})).await.unwrap();
    });
    let res = http(&hub)
        .post(format!("https://localhost:{}/twins/{id}/methods?api-version=2021-04-12", hub.https_port()))
        .header("authorization", owner_token(&hub))
        .header("content-type", "application/json")
        .body(json!({"methodName":"reboot","payload":{"in":5},"responseTimeoutInSeconds":30}).to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(res.status().as_u16(), 200);
    assert_eq!(res.json::<Value>().await.unwrap(), json!({"status":200,"payload":{"echo":{"in":5}}}));
    answer.await.unwrap();

    // Telemetry with properties, read back from /events.
    within(
        "telemetry",
        client.send_telemetry(
            Message::new(r#"{"t":1}"#).json().with_property("alert", "yes").with_message_id("m-7"),
        ),
    )
    .await
    .unwrap();
    let event = first_event(&hub, id).await;
    assert_eq!(event["body"], r#"{"t":1}"#);
    assert_eq!(event["properties"]["alert"], "yes");
    assert_eq!(event["systemProperties"]["message_id"], "m-7");
    assert_eq!(event["systemProperties"]["content_type"], "application/json");

    // Cloud-to-device with properties.
    let res = http(&hub)
        .post(format!(
            "https://localhost:{}/devices/{id}/messages/deviceBound?api-version=2021-04-12",
            hub.https_port()
        ))
        .header("authorization", owner_token(&hub))
        .header("iothub-app-color", "blue sky/1")
        .header("iothub-messageid", "c-1")
        .body("do it")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status().as_u16(), 204);
    let msg = within("c2d", c2d.recv()).await.unwrap();
    assert_eq!(msg.body_text(), "do it");
    assert_eq!(msg.properties.get("color").map(String::as_str), Some("blue sky/1"));
    assert_eq!(msg.message_id.as_deref(), Some("c-1"));
    assert_eq!(msg.to.as_deref(), Some(format!("/devices/{id}/messages/deviceBound").as_str()));
    // A second message, queued after the first was taken, arrives too.
    let res = http(&hub)
        .post(format!(
            "https://localhost:{}/devices/{id}/messages/deviceBound?api-version=2021-04-12",
            hub.https_port()
        ))
        .header("authorization", owner_token(&hub))
        .body("again")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status().as_u16(), 204);
    assert_eq!(within("second c2d", c2d.recv()).await.unwrap().body_text(), "again");
    client.close().await;
}

#[tokio::test]
async fn every_device_feature_over_tls() {
    every_feature(false).await;
}

#[tokio::test]
async fn every_device_feature_over_websockets() {
    every_feature(true).await;
}

/// Desired versions never repeat and never go backwards, though another
/// connection of the same device keeps taking over.
#[tokio::test]
async fn desired_versions_stay_continuous_across_takeovers() {
    let hub = TestHub::start();
    let key = create_device(&hub, "cont").await;
    let s = service(&hub);
    let client = connect(&hub, "cont", &key, false).await;
    let mut desired = client.desired_updates().unwrap();
    let mut status = client.status();
    let mut seen: Vec<i64> = vec![within("initial", desired.recv()).await.unwrap().version];
    let mut doc = json!({});
    for round in 0..4 {
        // An intruder with the same identity takes the connection over; the
        // SDK reconnects (its generation counter moves on).
        let (mut intruder, _) = common::mqtt::RawMqtt::device(&hub, "cont", &key, true).await;
        s.update_twin("cont", &json!({"properties":{"desired":{"round":round}}}), "*").await.unwrap();
        intruder.send(ferrohub_mqtt::v4::Packet::Disconnect).await;
        within(
            "reconnect",
            status.wait_for(
                |st| matches!(st, ConnectionStatus::Connected { generation, .. } if *generation >= round + 2),
            ),
        )
        .await
        .unwrap();
        s.update_twin("cont", &json!({"properties":{"desired":{"after":round}}}), "*").await.unwrap();
        // Collect until the device knows both writes of this round.
        while doc.get("after") != Some(&json!(round)) {
            let u = within("desired", desired.recv()).await.unwrap();
            assert!(
                u.version > *seen.last().unwrap(),
                "version went {} -> {}",
                seen.last().unwrap(),
                u.version
            );
            seen.push(u.version);
            if u.full {
                doc = u.body.clone();
            } else {
                merge(&mut doc, &u.body);
            }
        }
        assert_eq!(doc["round"], json!(round), "a write made while disconnected was lost");
    }
    let twin = s.get_twin("cont").await.unwrap();
    assert_eq!(seen.last().copied(), twin["properties"]["desired"]["$version"].as_i64());
}

/// A short token forces renewals (disconnect + reconnect); the session is
/// kept (session-present) and pushes keep arriving.
#[tokio::test]
async fn token_renewal_keeps_the_session() {
    let hub = TestHub::start();
    let key = create_device(&hub, "renew").await;
    let opts = DeviceOptions {
        token_ttl: Duration::from_secs(4),
        renew_before: Duration::from_secs(2),
        ..options(&hub, false)
    };
    let client = within("connect", DeviceClient::connect(&device_cs("renew", &key), opts)).await.unwrap();
    let mut desired = client.desired_updates().unwrap();
    let mut status = client.status();
    within("initial", desired.recv()).await.unwrap();
    let renewed = within(
        "a renewal",
        status
            .wait_for(|st| matches!(st, ConnectionStatus::Connected { generation, .. } if *generation >= 2)),
    )
    .await
    .unwrap()
    .clone();
    assert!(matches!(renewed, ConnectionStatus::Connected { session_present: true, .. }), "{renewed:?}");
    service(&hub).update_twin("renew", &json!({"properties":{"desired":{"x":1}}}), "*").await.unwrap();
    let u = within("desired after renewal", desired.recv()).await.unwrap();
    assert_eq!(u.body["x"], 1);
}

/// The hub restarts (new ports: a new client is needed for the new port,
/// but the session and queued messages survive in the store).
#[tokio::test]
async fn queued_c2d_reaches_a_device_after_a_hub_restart() {
    let mut hub = TestHub::start();
    let key = create_device(&hub, "rs").await;
    let client = connect(&hub, "rs", &key, false).await;
    client.close().await;
    let res = http(&hub)
        .post(format!(
            "https://localhost:{}/devices/rs/messages/deviceBound?api-version=2021-04-12",
            hub.https_port()
        ))
        .header("authorization", owner_token(&hub))
        .body("kept")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status().as_u16(), 204);
    hub.restart();
    let client = connect(&hub, "rs", &key, false).await;
    let mut c2d = client.c2d_messages().unwrap();
    assert_eq!(within("queued message", c2d.recv()).await.unwrap().body_text(), "kept");
}

#[tokio::test]
async fn bad_credentials_fail_the_first_connect_at_once() {
    let hub = TestHub::start();
    create_device(&hub, "bad").await;
    let wrong = "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=";
    let err = within("refusal", DeviceClient::connect(&device_cs("bad", wrong), options(&hub, false)))
        .await
        .unwrap_err();
    assert!(err.is_unauthorized(), "{err}");
}

fn merge(doc: &mut Value, patch: &Value) {
    if let (Some(d), Some(p)) = (doc.as_object_mut(), patch.as_object()) {
        for (k, v) in p {
            if v.is_null() {
                d.remove(k);
            } else if v.is_object() && d.get(k).is_some_and(Value::is_object) {
                merge(d.get_mut(k).unwrap(), v);
            } else {
                d.insert(k.clone(), v.clone());
            }
        }
    }
}

async fn first_event(hub: &TestHub, device: &str) -> Value {
    let mut res = http(hub)
        .get(format!("https://localhost:{}/events?deviceId={device}&last=1", hub.https_port()))
        .header("authorization", owner_token(hub))
        .send()
        .await
        .unwrap();
    let mut text = String::new();
    while !text.contains("\n\n") {
        let chunk = within("event", res.chunk()).await.unwrap().unwrap();
        text.push_str(&String::from_utf8_lossy(&chunk));
    }
    let line = text.lines().find(|l| l.starts_with("data:")).unwrap();
    serde_json::from_str(line.trim_start_matches("data:").trim()).unwrap()
}

#[tokio::test]
async fn an_unreachable_hub_fails_the_first_connect() {
    let hub = TestHub::start();
    let unused = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let opts = DeviceOptions {
        mqtt_port: Some(unused),
        connect_timeout: Duration::from_secs(2),
        ..options(&hub, false)
    };
    let key = "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=";
    assert!(within("give up", DeviceClient::connect(&device_cs("nowhere", key), opts)).await.is_err());
}

#[tokio::test]
async fn x509_devices_connect_with_their_certificate() {
    let hub = TestHub::start();
    let dir = tempfile::tempdir().unwrap();
    let (cert, key, thumb) = common::mqtt::self_signed(dir.path(), "xdev", "sha256");
    let body = json!({"deviceId":"xdev","authentication":{"type":"selfSigned","x509Thumbprint":{"primaryThumbprint":thumb}}});
    let res = http(&hub)
        .put(format!("https://localhost:{}/devices/xdev?api-version=2021-04-12", hub.https_port()))
        .header("authorization", owner_token(&hub))
        .header("content-type", "application/json")
        .body(body.to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(res.status().as_u16(), 200);
    // Over TLS on the MQTT port, then over WebSockets on the HTTPS port.
    for (websocket, version) in [(false, 2), (true, 3)] {
        let opts = DeviceOptions {
            client_cert: Some(cert.clone()),
            client_key: Some(key.clone()),
            ..options(&hub, websocket)
        };
        let client =
            within("connect", DeviceClient::connect("HostName=localhost;DeviceId=xdev;x509=true", opts))
                .await
                .unwrap();
        let v = within("reported", client.update_reported(&json!({"websocket": websocket}))).await.unwrap();
        assert_eq!(v, version);
        client.close().await;
    }
}
