//! The client against a scripted in-process MQTT endpoint (see
//! `support/mod.rs`): what it sends on the wire, and how it behaves when
//! connections are refused, cut and renewed. Tests against the real hub
//! live with the ferrohub binary's tests.
#![allow(clippy::unwrap_used)]

mod support;

use std::time::Duration;

use ferrohub_core::sas::SasToken;
use ferrohub_device_client::{
    Backoff, ConnectionStatus, DesiredUpdate, DeviceClient, DeviceOptions, Error, Message,
};
use rumqttc::QoS;
use serde_json::json;
use support::{connection_string, MockHub};

fn options(hub: &MockHub) -> DeviceOptions {
    DeviceOptions {
        mqtt_port: Some(hub.port),
        ca_file: Some(hub.ca_file.clone()),
        backoff: Backoff { initial: Duration::from_millis(50), max: Duration::from_millis(400), jitter: 0.5 },
        connect_timeout: Duration::from_secs(5),
        operation_timeout: Duration::from_secs(10),
        ..DeviceOptions::default()
    }
}

async fn connect(hub: &MockHub) -> DeviceClient {
    DeviceClient::connect(&connection_string("d1"), options(hub)).await.unwrap()
}

async fn next_update(stream: &mut ferrohub_device_client::DesiredUpdates) -> DesiredUpdate {
    tokio::time::timeout(Duration::from_secs(10), stream.recv()).await.unwrap().unwrap()
}

async fn wait_connected(client: &DeviceClient, generation: u64) {
    let mut status = client.status();
    let reached = status
        .wait_for(|s| matches!(s, ConnectionStatus::Connected { generation: g, .. } if *g >= generation));
    tokio::time::timeout(Duration::from_secs(10), reached).await.unwrap().unwrap();
}

#[tokio::test]
async fn connects_like_the_azure_sdks_and_uses_the_twin_and_telemetry() {
    let hub = MockHub::start().await;
    let client = connect(&hub).await;
    hub.wait_for("subscriptions", |s| s.subscriptions.len() == 4).await;
    {
        let s = hub.state();
        let c = &s.connects[0];
        assert_eq!(c.client_id, "d1");
        let version = env!("CARGO_PKG_VERSION");
        assert_eq!(
            c.username,
            format!(
                "localhost/d1/?api-version=2021-04-12&DeviceClientType=ferrohub-device-client%2F{version}"
            )
        );
        assert!(!c.clean_session);
        assert_eq!(c.keep_alive, 60);
        let token = SasToken::parse(&c.password).unwrap();
        assert!(token.verify(support::KEY));
        assert_eq!(token.raw_resource(), "localhost%2Fdevices%2Fd1");
        let filters: Vec<(&str, QoS)> = s.subscriptions.iter().map(|(f, q)| (f.as_str(), *q)).collect();
        assert_eq!(
            filters,
            [
                ("$iothub/twin/res/#", QoS::AtMostOnce),
                ("$iothub/twin/PATCH/properties/desired/#", QoS::AtMostOnce),
                ("$iothub/methods/POST/#", QoS::AtMostOnce),
                ("devices/d1/messages/devicebound/#", QoS::AtLeastOnce),
            ]
        );
    }

    let twin = client.get_twin().await.unwrap();
    assert_eq!(twin.desired_version(), Some(1));
    assert_eq!(client.update_reported(&json!({"fw": "1.0"})).await.unwrap(), 2);
    assert_eq!(client.update_reported(&json!({"fw": null, "x": 1})).await.unwrap(), 3);
    assert_eq!(client.get_twin().await.unwrap().reported, json!({"x": 1, "$version": 3}));
    match client.update_reported(&json!(5)).await {
        Err(Error::Hub { status: 400, error_code: Some(400004), message }) => {
            assert_eq!(message, "bad patch")
        }
        other => panic!("expected a hub error, got {other:?}"),
    }

    let message = Message::new("{\"t\":1}").json().with_message_id("m 1").with_property("k", "v&w");
    client.send_telemetry(message).await.unwrap();
    client.send_telemetry(Message::new("plain")).await.unwrap();
    {
        let s = hub.state();
        assert_eq!(s.telemetry.len(), 2);
        assert_eq!(
            s.telemetry[0].0,
            "devices/d1/messages/events/%24.mid=m%201&%24.ct=application%2Fjson&%24.ce=utf-8&k=v%26w"
        );
        assert_eq!(s.telemetry[0].1, b"{\"t\":1}");
        assert_eq!(s.telemetry[1].0, "devices/d1/messages/events/");
    }
    let too_big = Message::new(vec![0u8; 256 * 1024 + 1]);
    assert!(matches!(client.send_telemetry(too_big).await, Err(Error::MessageTooLarge { .. })));

    client.close().await;
    assert_eq!(*client.status().borrow(), ConnectionStatus::Closed);
    hub.wait_for("DISCONNECT", |s| s.disconnects == 1).await;
    assert!(matches!(client.get_twin().await, Err(Error::Disconnected)));
}

#[tokio::test]
async fn refused_credentials_fail_the_first_connect_without_retrying() {
    let hub = MockHub::start().await;
    let wrong = "HostName=localhost;DeviceId=d1;SharedAccessKey=AAAAzdU8VhzSRpyjQBDs8DvN7HZeu37YRfRtwVbpGkk=";
    let err = DeviceClient::connect(wrong, options(&hub)).await.unwrap_err();
    assert_eq!(err, Error::ConnectionRefused { code: 5 });
    assert!(err.is_unauthorized());

    hub.state().refuse = Some(1);
    let err = DeviceClient::connect(&connection_string("d1"), options(&hub)).await.unwrap_err();
    assert_eq!(err, Error::ConnectionRefused { code: 1 });
    assert_eq!(hub.state().connects.len(), 2, "one attempt each");
}

#[tokio::test]
async fn an_unreachable_hub_fails_after_the_connect_timeout() {
    let port = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap().port()
    };
    let hub = MockHub::start().await;
    let opts =
        DeviceOptions { mqtt_port: Some(port), connect_timeout: Duration::from_millis(500), ..options(&hub) };
    let started = std::time::Instant::now();
    let err = DeviceClient::connect(&connection_string("d1"), opts).await.unwrap_err();
    assert!(matches!(err, Error::Transport(ref m) if m.contains("gave up")), "{err}");
    assert!(started.elapsed() < Duration::from_secs(5));
}

#[tokio::test]
async fn x509_devices_present_their_certificate_and_no_password() {
    let hub = MockHub::start().await;
    let opts = DeviceOptions {
        client_cert: Some(hub.client_cert.clone()),
        client_key: Some(hub.client_key.clone()),
        ..options(&hub)
    };
    let client = DeviceClient::connect("HostName=localhost;DeviceId=d1;x509=true", opts).await.unwrap();
    assert_eq!(client.get_twin().await.unwrap().desired_version(), Some(1));
    let s = hub.state();
    assert!(s.connects[0].client_certificate);
    assert_eq!(s.connects[0].password, "");
}

#[tokio::test]
async fn c2d_messages_are_acknowledged_only_when_the_application_takes_them() {
    let hub = MockHub::start().await;
    let client = connect(&hub).await;
    hub.wait_for("subscriptions", |s| s.subscriptions.len() == 4).await;
    hub.send_c2d(7, "%24.mid=m1&%24.to=%2Fdevices%2Fd1%2Fmessages%2FdeviceBound&color=red", "hello");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(hub.state().pubacks.is_empty(), "acknowledged before the application saw it");

    let mut c2d = client.c2d_messages().unwrap();
    assert!(client.c2d_messages().is_none(), "taken once");
    let msg = tokio::time::timeout(Duration::from_secs(5), c2d.recv()).await.unwrap().unwrap();
    assert_eq!(msg.body_text(), "hello");
    assert_eq!(msg.message_id.as_deref(), Some("m1"));
    assert_eq!(msg.to.as_deref(), Some("/devices/d1/messages/deviceBound"));
    assert_eq!(msg.properties.get("color").map(String::as_str), Some("red"));
    hub.wait_for("PUBACK 7", |s| s.pubacks == [7]).await;
}

#[tokio::test]
async fn direct_methods_are_answered_with_the_applications_status_and_payload() {
    let hub = MockHub::start().await;
    let client = connect(&hub).await;
    let mut methods = client.method_requests().unwrap();
    hub.wait_for("subscriptions", |s| s.subscriptions.len() == 4).await;
    hub.invoke("reboot", "abc-1", r#"{"delay":3}"#);
    let call = tokio::time::timeout(Duration::from_secs(5), methods.recv()).await.unwrap().unwrap();
    assert_eq!((call.name.as_str(), call.rid.as_str()), ("reboot", "abc-1"));
    assert_eq!(call.payload, json!({"delay": 3}));
    call.respond(201, json!("done")).await.unwrap();
    hub.wait_for("method response", |s| s.method_responses.len() == 1).await;
    assert_eq!(
        hub.state().method_responses[0],
        ("$iothub/methods/res/201/?$rid=abc-1".to_owned(), b"\"done\"".to_vec())
    );

    // With the stream dropped, calls are answered 501 rather than left to time out.
    drop(methods);
    hub.invoke("other", "2", "");
    hub.wait_for("501", |s| s.method_responses.len() == 2).await;
    assert_eq!(hub.state().method_responses[1].0, "$iothub/methods/res/501/?$rid=2");
}

#[tokio::test]
async fn desired_versions_stay_continuous_across_reconnects() {
    let hub = MockHub::start().await;
    let client = connect(&hub).await;
    let mut desired = client.desired_updates().unwrap();

    let first = next_update(&mut desired).await;
    assert_eq!((first.version, first.full), (1, true));
    let v2 = hub.update_desired(json!({"a": 1}), true);
    let update = next_update(&mut desired).await;
    assert_eq!(
        (update.version, update.full, update.body.clone()),
        (v2, false, json!({"a": 1, "$version": 2}))
    );

    // Changes the device never hears about, then the connection drops.
    hub.update_desired(json!({"b": 2}), false);
    let v4 = hub.update_desired(json!({"a": null}), false);
    hub.cut();
    let full = next_update(&mut desired).await;
    assert_eq!((full.version, full.full), (v4, true));
    assert_eq!(full.body, json!({"b": 2, "$version": 4}));
    wait_connected(&client, 2).await;

    // Duplicates and stale versions are dropped; newer patches flow.
    hub.push_desired_patch(4, json!({"stale": true}));
    hub.push_desired_patch(3, json!({"stale": true}));
    let v5 = hub.update_desired(json!({"c": 3}), true);
    hub.push_desired_patch(5, json!({"dup": true}));
    let v6 = hub.update_desired(json!({"d": 4}), true);
    assert_eq!(next_update(&mut desired).await.version, v5);
    let update = next_update(&mut desired).await;
    assert_eq!((update.version, update.body), (v6, json!({"d": 4, "$version": 6})));

    // A reconnect with nothing new delivers nothing.
    let gets = hub.state().twin_gets;
    hub.cut();
    hub.wait_for("the sync GET", |s| s.twin_gets > gets).await;
    let v7 = hub.update_desired(json!({"e": 5}), true);
    let update = next_update(&mut desired).await;
    assert_eq!((update.version, update.full), (v7, false));

    // A version gap within a connection triggers a GET and a full document.
    hub.update_desired(json!({"f": 6}), false);
    let v9 = hub.update_desired(json!({"g": 7}), true);
    let update = next_update(&mut desired).await;
    assert_eq!((update.version, update.full), (v9, true));
    assert_eq!(update.body["f"], json!(6));
}

#[tokio::test]
async fn an_unanswered_sync_get_is_sent_again() {
    let hub = MockHub::start().await;
    hub.state().ignore_twin_gets = 1;
    let opts = DeviceOptions {
        keep_alive: Duration::from_secs(1),
        operation_timeout: Duration::from_millis(500),
        ..options(&hub)
    };
    let client = DeviceClient::connect(&connection_string("d1"), opts).await.unwrap();
    let mut desired = client.desired_updates().unwrap();
    let v2 = hub.update_desired(json!({"held": true}), true);
    // The patch waits for the GET; the retried GET brings the full document.
    let update = next_update(&mut desired).await;
    assert_eq!((update.version, update.full), (v2, true));
    assert_eq!(hub.state().twin_gets, 1);
}

#[tokio::test]
async fn unacknowledged_telemetry_is_sent_again_after_a_reconnect() {
    let hub = MockHub::start().await;
    let client = connect(&hub).await;
    hub.state().withhold_telemetry_acks = true;
    let sender = client.clone();
    let send = tokio::spawn(async move { sender.send_telemetry(Message::new("once")).await });
    hub.wait_for("the first try", |s| s.telemetry.len() == 1).await;
    hub.state().withhold_telemetry_acks = false;
    hub.cut();
    tokio::time::timeout(Duration::from_secs(10), send).await.unwrap().unwrap().unwrap();
    let s = hub.state();
    assert_eq!(s.telemetry.len(), 2);
    assert_eq!(s.telemetry[0], s.telemetry[1]);
}

#[tokio::test]
async fn operations_wait_for_a_reconnect_and_time_out() {
    let hub = MockHub::start().await;
    let opts = DeviceOptions { operation_timeout: Duration::from_millis(700), ..options(&hub) };
    let client = DeviceClient::connect(&connection_string("d1"), opts).await.unwrap();
    hub.state().refuse = Some(5);
    hub.cut();
    // Refusals after the first connect are retried with backoff.
    assert_eq!(client.get_twin().await.unwrap_err(), Error::Timeout);
    let mut status = client.status();
    let refused = status
        .wait_for(|s| matches!(s, ConnectionStatus::Disconnected { reason } if reason.contains("code 5")));
    tokio::time::timeout(Duration::from_secs(5), refused).await.unwrap().unwrap();
    drop(status);
    client.close().await;

    // Queued while disconnected, sent once the hub takes the device back.
    hub.state().refuse = None;
    let opts = DeviceOptions { operation_timeout: Duration::from_secs(10), ..options(&hub) };
    let patient = DeviceClient::connect(&connection_string("d1"), opts).await.unwrap();
    hub.state().refuse = Some(5);
    hub.cut();
    let waiting = {
        let patient = patient.clone();
        tokio::spawn(async move { patient.update_reported(&json!({"queued": true})).await })
    };
    tokio::time::sleep(Duration::from_millis(500)).await;
    hub.state().refuse = None;
    assert_eq!(waiting.await.unwrap().unwrap(), 2);
}

#[tokio::test]
async fn tokens_are_renewed_by_reconnecting_before_they_expire() {
    let hub = MockHub::start().await;
    let opts = DeviceOptions { token_ttl: Duration::from_secs(3), ..options(&hub) };
    let client = DeviceClient::connect(&connection_string("d1"), opts).await.unwrap();
    // renew_before (900 s) exceeds the lifetime, so renewal comes halfway.
    wait_connected(&client, 2).await;
    let s = hub.state();
    assert_eq!(s.connects.len(), 2);
    assert_eq!(s.disconnects, 1, "a clean DISCONNECT before reconnecting");
    let first = SasToken::parse(&s.connects[0].password).unwrap().expiry();
    let second = SasToken::parse(&s.connects[1].password).unwrap().expiry();
    assert!(second > first, "a fresh token: {first} then {second}");
}
