//! The device-facing CLI commands against a real `ferrohub serve`, with a
//! device connected through the Rust device SDK (`ferrohub-device-client`):
//! `invoke-device-method`, `monitor-events` and `c2d-message send`, with
//! az's flags and output shapes.
//!
//! The CLI runs as a child process on the test thread; the device runs on a
//! tokio runtime of its own. Every wait is for an event (a line, a message,
//! an exit) under a timeout.
#![allow(clippy::unwrap_used)]

mod common;

use std::io::{BufRead, BufReader, Read};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::{fails, ok, TestHub};
use ferrohub_device_client::{DeviceClient, DeviceOptions, Message};
use ferrohub_service_client::{C2dMessage, ClientOptions, NewDevice, ServiceClient};
use serde_json::{json, Value};

/// How long any one awaited event may take.
const STEP: Duration = Duration::from_secs(20);

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap()
}

fn service(hub: &TestHub) -> ServiceClient {
    ServiceClient::new(
        &hub.connection_string(),
        ClientOptions { port: Some(hub.https_port()), ca_file: Some(hub.ca_file()), ..Default::default() },
    )
    .unwrap()
}

/// Creates `id` and connects it with the device SDK over MQTT/TLS. Returns
/// once its subscriptions are in place (the first twin GET answers after
/// the SUBSCRIBE sent before it).
fn connect_device(rt: &tokio::runtime::Runtime, hub: &TestHub, id: &str) -> DeviceClient {
    rt.block_on(async {
        let device = service(hub).create_device(&NewDevice::new(id)).await.unwrap();
        let key = device.authentication.symmetric_key.primary_key;
        let cs = format!("HostName=localhost;DeviceId={id};SharedAccessKey={key}");
        let options = DeviceOptions {
            mqtt_port: Some(hub.mqtt_port()),
            ca_file: Some(hub.ca_file()),
            ..Default::default()
        };
        let client = DeviceClient::connect(&cs, options).await.unwrap();
        tokio::time::timeout(STEP, client.get_twin()).await.unwrap().unwrap();
        client
    })
}

/// A CLI child with stdout and stderr piped; stderr lines arrive on a channel.
struct Running {
    child: Child,
    stderr: mpsc::Receiver<String>,
    stderr_seen: Vec<String>,
}

impl Running {
    fn start(hub: &TestHub, args: &[&str]) -> Self {
        let mut child = hub
            .command()
            .args(args)
            .arg("--data-dir")
            .arg(hub.data_dir())
            .args(["--https-port", &hub.https_port().to_string()])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stderr = child.stderr.take().unwrap();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Self { child, stderr: rx, stderr_seen: Vec::new() }
    }

    /// Waits for a stderr line containing `needle`.
    fn wait_stderr(&mut self, needle: &str) {
        let deadline = Instant::now() + STEP;
        loop {
            match self.stderr.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
                Ok(line) if line.contains(needle) => return,
                Ok(line) => self.stderr_seen.push(line),
                Err(e) => {
                    panic!("no stderr line with {needle:?} ({e}); stderr so far: {:?}", self.stderr_seen)
                }
            }
        }
    }

    /// Waits for the exit (at most `limit`) and returns (success, stdout).
    fn finish(mut self, limit: Duration) -> (bool, String) {
        let mut stdout = self.child.stdout.take().unwrap();
        let reader = std::thread::spawn(move || {
            let mut text = String::new();
            stdout.read_to_string(&mut text).unwrap();
            text
        });
        let pid = self.child.id();
        let mut child = self.child;
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let _ = tx.send(child.wait());
        });
        let status = match rx.recv_timeout(limit) {
            Ok(status) => status.unwrap(),
            Err(_) => {
                let _ = Command::new("kill").args(["-KILL", &pid.to_string()]).status();
                panic!("the command did not exit within {limit:?}");
            }
        };
        (status.success(), reader.join().unwrap())
    }
}

/// The next cloud-to-device message; panics with the hub's log after [`STEP`].
fn next_c2d(
    rt: &tokio::runtime::Runtime,
    hub: &TestHub,
    inbox: &mut ferrohub_device_client::C2dMessages,
) -> ferrohub_device_client::C2dMessage {
    match rt.block_on(async { tokio::time::timeout(STEP, inbox.recv()).await }) {
        Ok(Some(msg)) => msg,
        Ok(None) => panic!("the device client closed; hub log:\n{}", hub.log()),
        Err(_) => panic!("no cloud-to-device message within {STEP:?}; hub log:\n{}", hub.log()),
    }
}

/// Splits concatenated pretty-printed JSON values.
fn json_values(text: &str) -> Vec<Value> {
    serde_json::Deserializer::from_str(text).into_iter::<Value>().map(Result::unwrap).collect()
}

#[test]
fn invoke_device_method_prints_azs_result_shape() {
    let hub = TestHub::start();
    let rt = runtime();
    let device = connect_device(&rt, &hub, "method-dev");
    let mut calls = device.method_requests().unwrap();
    let seen = rt.spawn(async move {
        let call = calls.recv().await.unwrap();
        let (name, payload) = (call.name.clone(), call.payload.clone());
        call.respond(200, json!({"echo": payload, "done": true})).await.unwrap();
        (name, payload)
    });

    let out = hub.cli(&[
        "invoke-device-method",
        "--device-id",
        "method-dev",
        "--method-name",
        "reboot",
        "--method-payload",
        r#"{"delay":1}"#,
        "--timeout",
        "10",
        "--hub-name",
        "my-hub",
        "--resource-group",
        "rg",
    ]);
    let text = ok(&out);
    assert!(text.trim_start().starts_with("{\n  \"payload\""), "az prints payload before status: {text}");
    assert_eq!(
        serde_json::from_str::<Value>(&text).unwrap(),
        json!({"payload": {"echo": {"delay": 1}, "done": true}, "status": 200})
    );
    let (name, payload) = rt.block_on(async { tokio::time::timeout(STEP, seen).await.unwrap().unwrap() });
    assert_eq!(name, "reboot");
    assert_eq!(payload, json!({"delay": 1}));
    rt.block_on(device.close());
}

#[test]
fn invoke_device_method_errors_are_the_hubs() {
    let hub = TestHub::start();
    let rt = runtime();
    // Not connected, no connect wait: DeviceNotOnline at once.
    rt.block_on(service(&hub).create_device(&NewDevice::new("offline-dev"))).unwrap();
    let line = fails(&hub.cli(&["invoke-device-method", "-d", "offline-dev", "--mn", "m", "--mct", "0"]));
    assert!(line.contains("DeviceNotOnline"), "{line}");

    // Connected but never answering: GatewayTimeout after the response timeout.
    let device = connect_device(&rt, &hub, "silent-dev");
    let calls = device.method_requests().unwrap();
    let started = Instant::now();
    let line = fails(&hub.cli(&[
        "invoke-device-method",
        "-d",
        "silent-dev",
        "--mn",
        "m",
        "--mrt",
        "5",
        "--mct",
        "0",
    ]));
    assert!(line.contains("GatewayTimeout"), "{line}");
    assert!(started.elapsed() >= Duration::from_secs(5), "gave up after {:?}", started.elapsed());
    drop(calls);

    // The payload must be JSON (or a file of JSON).
    let line = fails(&hub.cli(&["invoke-device-method", "-d", "silent-dev", "--mn", "m", "--mp", "{oops"]));
    assert!(line.contains("--method-payload"), "{line}");
    rt.block_on(device.close());
}

#[test]
fn monitor_events_prints_telemetry_in_azs_shape_and_exits_after_the_timeout() {
    let hub = TestHub::start();
    let rt = runtime();
    let device = connect_device(&rt, &hub, "telemetry-dev");
    let other = connect_device(&rt, &hub, "other-dev");

    let mut monitor = Running::start(
        &hub,
        &[
            "monitor-events",
            "--device-id",
            "telemetry-dev",
            "--properties",
            "all",
            "--timeout",
            "3",
            "-n",
            "hub",
        ],
    );
    monitor.wait_stderr("Starting event monitor");
    rt.block_on(async {
        let other_msg = Message::new(r#"{"from":"other"}"#).json();
        other.send_telemetry(other_msg).await.unwrap();
        let msg = Message::new(r#"{"temperature":21.5}"#)
            .json()
            .with_property("alert", "high")
            .with_message_id("m-1");
        device.send_telemetry(msg).await.unwrap();
        device.send_telemetry(Message::new("plain text")).await.unwrap();
    });
    let started = Instant::now();
    let (success, stdout) = monitor.finish(STEP);
    assert!(success, "monitor-events failed; stdout: {stdout}");
    assert!(started.elapsed() < Duration::from_secs(15), "idle timeout of 3 s took {:?}", started.elapsed());
    let events = json_values(&stdout);
    assert_eq!(events.len(), 2, "only telemetry-dev's two events: {stdout}");
    let first = &events[0]["event"];
    assert_eq!(first["origin"], "telemetry-dev");
    assert_eq!(first["payload"], json!({"temperature": 21.5}));
    assert_eq!(first["properties"]["application"], json!({"alert": "high"}));
    let system = &first["properties"]["system"];
    assert!(system.to_string().contains("m-1"), "message id among system properties: {system}");
    assert_eq!(system["iothub-connection-device-id"], "telemetry-dev");
    assert_eq!(events[1]["event"]["payload"], "plain text");

    // Without --properties: no properties; --last replays what was sent.
    let replay = Running::start(&hub, &["monitor-events", "--last", "10", "--timeout", "1"]);
    let (success, stdout) = replay.finish(STEP);
    assert!(success, "{stdout}");
    let events = json_values(&stdout);
    assert_eq!(events.len(), 3, "all devices' recent events: {stdout}");
    assert!(events.iter().all(|e| e["event"].get("properties").is_none()), "{stdout}");
    assert_eq!(events[0]["event"], json!({"origin": "other-dev", "payload": {"from": "other"}}));
    rt.block_on(async {
        device.close().await;
        other.close().await;
    });
}

#[test]
fn monitor_events_fails_cleanly_without_a_hub() {
    let mut hub = TestHub::start();
    hub.stop();
    let line = fails(&hub.cli(&["monitor-events", "--timeout", "1"]));
    assert!(line.contains("cannot reach the hub"), "{line}");
}

#[test]
fn c2d_message_send_reaches_the_device_with_properties() {
    let hub = TestHub::start();
    let rt = runtime();
    let device = connect_device(&rt, &hub, "c2d-dev");
    let mut inbox = device.c2d_messages().unwrap();

    let out = hub.cli(&[
        "c2d-message",
        "send",
        "--device-id",
        "c2d-dev",
        "--data",
        "hello device",
        "--props",
        "color=blue;size=XL",
        "--message-id",
        "msg-1",
        "--correlation-id",
        "corr-1",
        "--hub-name",
        "my-hub",
    ]);
    assert_eq!(ok(&out), "", "az prints nothing for a sent message");
    let msg = next_c2d(&rt, &hub, &mut inbox);
    assert_eq!(msg.body_text(), "hello device");
    assert_eq!(msg.message_id.as_deref(), Some("msg-1"));
    assert_eq!(msg.correlation_id.as_deref(), Some("corr-1"));
    assert_eq!(msg.properties.get("color").map(String::as_str), Some("blue"));
    assert_eq!(msg.properties.get("size").map(String::as_str), Some("XL"));

    // Defaults as az: a ping text, no properties.
    ok(&hub.cli(&["c2d-message", "send", "-d", "c2d-dev"]));
    let msg = next_c2d(&rt, &hub, &mut inbox);
    assert_eq!(msg.body_text(), "Ping from Az CLI IoT Extension");
    rt.block_on(device.close());
}

#[test]
fn c2d_message_send_reports_the_hubs_refusals() {
    let hub = TestHub::start();
    let rt = runtime();
    let line = fails(&hub.cli(&["c2d-message", "send", "-d", "nobody", "--data", "x"]));
    assert!(line.contains("DeviceNotFound"), "{line}");

    let line = fails(&hub.cli(&["c2d-message", "send", "-d", "nobody", "--props", "novalue"]));
    assert!(line.contains("--properties"), "{line}");

    // An offline device's queue holds 50; the CLI reports the 51st refusal.
    let client = service(&hub);
    rt.block_on(async {
        client.create_device(&NewDevice::new("full-dev")).await.unwrap();
        for i in 0..50 {
            client.send_c2d("full-dev", &C2dMessage::new(format!("m{i}"))).await.unwrap();
        }
    });
    let line = fails(&hub.cli(&["c2d-message", "send", "-d", "full-dev", "--data", "one too many"]));
    assert!(line.contains("DeviceMaximumQueueDepthExceeded"), "{line}");
}

#[test]
fn the_service_client_streams_events_and_sends_c2d() {
    let hub = TestHub::start();
    let rt = runtime();
    let device = connect_device(&rt, &hub, "sdk-dev");
    let mut inbox = device.c2d_messages().unwrap();
    rt.block_on(async {
        let client = service(&hub);
        let mut events = client.events(Some("sdk-dev"), None).await.unwrap();
        device
            .send_telemetry(Message::new(vec![0xff, 0x00, 0x01]).with_property("kind", "binary"))
            .await
            .unwrap();
        let event = tokio::time::timeout(STEP, events.next()).await.unwrap().unwrap().unwrap();
        assert_eq!(event.device_id, "sdk-dev");
        assert_eq!(event.body_bytes().unwrap(), vec![0xff, 0x00, 0x01]);
        assert_eq!(event.properties["kind"], "binary");

        let message =
            C2dMessage::new("typed").property("k", "v").message_id("mid").expiry("2099-01-01T00:00:00Z");
        client.send_c2d("sdk-dev", &message).await.unwrap();
        let got = tokio::time::timeout(STEP, inbox.recv()).await.unwrap().unwrap();
        assert_eq!(got.body_text(), "typed");
        assert_eq!(got.properties.get("k").map(String::as_str), Some("v"));
        assert_eq!(got.message_id.as_deref(), Some("mid"));
        device.close().await;
    });
}
