//! The device HTTPS API against the real `ferrohub serve`: telemetry
//! (single and batch) into `/events`, cloud-to-device receive and
//! complete/reject/abandon with their lock, the bad-input answers, who may
//! call what, case-insensitive paths, and the CLI acting as the device.

#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use common::mqtt::{create_device, http, now_unix, owner_token, service, token};
use common::{ok, ok_json, TestHub};
use ferrohub_service_client::C2dMessage;
use reqwest::{Method, Response};
use serde_json::Value;

/// How long one awaited step may take.
const STEP: Duration = Duration::from_secs(20);

/// The URL of `path`, with IoT Hub's `api-version` unless it names one.
fn url(hub: &TestHub, path: &str) -> String {
    let version = if path.contains("api-version") {
        ""
    } else if path.contains('?') {
        "&api-version=2021-04-12"
    } else {
        "?api-version=2021-04-12"
    };
    format!("https://localhost:{}{path}{version}", hub.https_port())
}

fn device_token(id: &str, key: &str) -> String {
    token(id, key, now_unix() + 3600)
}

/// A token of the hub's shared access policy `name` (from policies.json).
fn policy_token(hub: &TestHub, name: &str) -> String {
    let text = std::fs::read_to_string(hub.data_dir().join("policies.json")).unwrap();
    let policies: Vec<Value> = serde_json::from_str(&text).unwrap();
    let policy = policies.iter().find(|p| p["keyName"] == name).unwrap();
    let key = policy["primaryKey"].as_str().unwrap();
    ferrohub_core::sas::generate_token("localhost", key, Some(name), now_unix() + 3600).unwrap()
}

async fn call(hub: &TestHub, method: Method, path: &str, auth: &str, headers: &[(&str, &str)]) -> Response {
    let mut req = http(hub).request(method, url(hub, path)).header("authorization", auth);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    tokio::time::timeout(STEP, req.send()).await.unwrap().unwrap()
}

/// Asserts an Azure error answer: the status and the `iothub-errorcode`.
async fn assert_error(res: Response, status: u16, code: &str) {
    let got = res.status().as_u16();
    let header = res.headers().get("iothub-errorcode").map(|v| v.to_str().unwrap().to_owned());
    let body = res.text().await.unwrap();
    assert_eq!(got, status, "{body}");
    assert_eq!(header.as_deref(), Some(code), "{body}");
}

/// The `n` most recent telemetry events of `device`, replayed by `/events`.
async fn recent_events(hub: &TestHub, device: &str, n: usize) -> Vec<Value> {
    let mut res =
        call(hub, Method::GET, &format!("/events?deviceId={device}&last={n}"), &owner_token(hub), &[]).await;
    assert_eq!(res.status().as_u16(), 200);
    let mut text = String::new();
    let mut events = Vec::new();
    while events.len() < n {
        let chunk = tokio::time::timeout(STEP, res.chunk()).await.unwrap().unwrap().unwrap();
        text.push_str(&String::from_utf8_lossy(&chunk));
        while let Some(end) = text.find("\n\n") {
            let block: String = text.drain(..end + 2).collect();
            if let Some(line) = block.lines().find(|l| l.starts_with("data:")) {
                events.push(serde_json::from_str(line.trim_start_matches("data:").trim()).unwrap());
            }
        }
    }
    events
}

#[tokio::test]
async fn telemetry_single_and_batch_reach_events_with_their_properties() {
    let hub = TestHub::start();
    let key = create_device(&hub, "tel").await;
    let auth = device_token("tel", &key);
    // One message, header names in mixed case, on a mixed-case path.
    let res = http(&hub)
        .post(url(&hub, "/DEVICES/tel/Messages/EVENTS?api-version=2021-04-12"))
        .header("authorization", &auth)
        .header("IoTHub-MessageId", "m-1")
        .header("IoTHub-CorrelationId", "c-1")
        .header("iothub-userid", "u-1")
        .header("iothub-to", "/devices/tel/messages/events")
        .header("iothub-contenttype", "application/json")
        .header("iothub-contentencoding", "utf-8")
        .header("iothub-interface-id", "urn:example:1")
        .header("dt-subject", "thermostat1")
        .header("iothub-app-temp", "21")
        .body(r#"{"t":21}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status().as_u16(), 204, "{}", res.text().await.unwrap());
    // A batch of two, as sendEventBatch writes it.
    let batch =
        r#"[{"body": "b25l", "properties":{"iothub-app-n":"1","iothub-messageid":"b-1"}},{"body": "dHdv"}]"#;
    let res = http(&hub)
        .post(url(&hub, "/devices/tel/messages/events?api-version=2021-04-12"))
        .header("authorization", &auth)
        .header("content-type", "application/vnd.microsoft.iothub.json")
        .body(batch)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status().as_u16(), 204, "{}", res.text().await.unwrap());

    let events = recent_events(&hub, "tel", 3).await;
    let single = &events[0];
    assert_eq!(single["body"], r#"{"t":21}"#);
    let sys = &single["systemProperties"];
    assert_eq!(sys["message_id"], "m-1");
    assert_eq!(sys["correlation_id"], "c-1");
    assert_eq!(sys["user_id"], "u-1");
    assert_eq!(sys["to"], "/devices/tel/messages/events");
    assert_eq!(sys["content_type"], "application/json");
    assert_eq!(sys["content_encoding"], "utf-8");
    assert_eq!(sys["iothub-interface-id"], "urn:example:1");
    assert_eq!(sys["dt-subject"], "thermostat1");
    assert_eq!(sys["iothub-connection-device-id"], "tel");
    assert_eq!(single["properties"], serde_json::json!({"temp": "21"}));
    assert_eq!(events[1]["body"], "one");
    assert_eq!(events[1]["properties"], serde_json::json!({"n": "1"}));
    assert_eq!(events[1]["systemProperties"]["message_id"], "b-1");
    assert_eq!(events[2]["body"], "two");
    assert_eq!(events[2]["properties"], serde_json::json!({}));

    // A malformed batch is refused whole.
    let res = http(&hub)
        .post(url(&hub, "/devices/tel/messages/events"))
        .header("authorization", &auth)
        .header("content-type", "application/vnd.microsoft.iothub.json")
        .body(r#"[{"body":"b25l"},{"body":"!"}]"#)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status().as_u16(), 400);
}

#[tokio::test]
async fn over_256_kib_is_413_message_too_large() {
    let hub = TestHub::start();
    let key = create_device(&hub, "big").await;
    let auth = device_token("big", &key);
    let post = |size: usize| {
        http(&hub)
            .post(url(&hub, "/devices/big/messages/events"))
            .header("authorization", &auth)
            .body(vec![b'x'; size])
    };
    let res = post(256 * 1024 + 1).send().await.unwrap();
    assert_error(res, 413, "MessageTooLarge").await;
    let res = post(256 * 1024).send().await.unwrap();
    assert_eq!(res.status().as_u16(), 204);
    let events = recent_events(&hub, "big", 1).await;
    assert_eq!(
        events[0]["body"].as_str().unwrap().len(),
        256 * 1024,
        "only the message within the cap went through"
    );
}

fn header<'a>(res: &'a Response, name: &str) -> &'a str {
    res.headers().get(name).unwrap_or_else(|| panic!("no {name} header")).to_str().unwrap()
}

fn lock_token(res: &Response) -> String {
    let etag = header(res, "etag");
    assert!(etag.starts_with('"') && etag.ends_with('"') && etag.len() > 2, "{etag}");
    etag[1..etag.len() - 1].to_owned()
}

#[tokio::test]
async fn c2d_receive_lock_complete_reject_abandon() {
    let hub = TestHub::start();
    let key = create_device(&hub, "rx").await;
    let auth = device_token("rx", &key);
    let svc = service(&hub);
    let mut first = C2dMessage::new("first").property("kind", "greeting");
    first.message_id = Some("m-1".into());
    first.correlation_id = Some("c-1".into());
    first.ack = Some("full".into());
    svc.send_c2d("rx", &first).await.unwrap();
    // The SDK's spelling (lower case) and its query.
    let inbox = "/devices/rx/messages/devicebound?api-version=2021-04-12";

    let res = call(&hub, Method::GET, inbox, &auth, &[]).await;
    assert_eq!(res.status().as_u16(), 200);
    let t1 = lock_token(&res);
    assert_eq!(header(&res, "iothub-messageid"), "m-1");
    assert_eq!(header(&res, "iothub-correlationid"), "c-1");
    assert_eq!(header(&res, "iothub-to"), "/devices/rx/messages/deviceBound");
    assert_eq!(header(&res, "iothub-ack"), "full");
    assert_eq!(header(&res, "iothub-deliverycount"), "0");
    assert_eq!(header(&res, "iothub-app-kind"), "greeting");
    assert!(header(&res, "iothub-sequencenumber").parse::<i64>().is_ok());
    assert!(header(&res, "iothub-expiry").ends_with('Z'));
    assert!(header(&res, "iothub-enqueuedtime").ends_with('Z'));
    assert_eq!(res.text().await.unwrap(), "first");

    // Locked: a second receive sees nothing else.
    let res = call(&hub, Method::GET, inbox, &auth, &[]).await;
    assert_eq!(res.status().as_u16(), 204);

    // If-Match naming another lock, a wrong token, a malformed one: 412 and nothing changes.
    let settle = format!("/devices/rx/messages/devicebound/{t1}?api-version=2021-04-12");
    let res = call(&hub, Method::DELETE, &settle, &auth, &[("if-match", "\"other\"")]).await;
    assert_error(res, 412, "DeviceMessageLockLost").await;
    let wrong = "/devices/rx/messages/devicebound/00000000-0000-0000-0000-000000000000";
    let res = call(&hub, Method::DELETE, wrong, &auth, &[]).await;
    assert_error(res, 412, "DeviceMessageLockLost").await;
    let res = call(&hub, Method::POST, &format!("{wrong}/abandon"), &auth, &[]).await;
    assert_error(res, 412, "DeviceMessageLockLost").await;
    let res = call(&hub, Method::GET, inbox, &auth, &[]).await;
    assert_eq!(res.status().as_u16(), 204, "still locked to t1");

    // Abandon (the SDK's way: token in the path and in If-Match): it comes back, counted.
    let abandon = format!("/devices/rx/messages/devicebound/{t1}/abandon?api-version=2021-04-12");
    let res = call(&hub, Method::POST, &abandon, &auth, &[("if-match", &t1)]).await;
    assert_eq!(res.status().as_u16(), 204, "{}", res.text().await.unwrap());
    let res = call(&hub, Method::GET, inbox, &auth, &[]).await;
    assert_eq!(res.status().as_u16(), 200);
    let t2 = lock_token(&res);
    assert_ne!(t1, t2);
    assert_eq!(header(&res, "iothub-messageid"), "m-1");
    assert_eq!(header(&res, "iothub-deliverycount"), "1");
    // The stale token does not settle it.
    let res = call(&hub, Method::DELETE, &settle, &auth, &[("if-match", &t1)]).await;
    assert_error(res, 412, "DeviceMessageLockLost").await;

    // Complete; then the queue is empty and the token is spent.
    let complete = format!("/devices/rx/messages/devicebound/{t2}?api-version=2021-04-12");
    let res = call(&hub, Method::DELETE, &complete, &auth, &[("if-match", &t2)]).await;
    assert_eq!(res.status().as_u16(), 204);
    let res = call(&hub, Method::DELETE, &complete, &auth, &[("if-match", &t2)]).await;
    assert_error(res, 412, "DeviceMessageLockLost").await;
    let res = call(&hub, Method::GET, inbox, &auth, &[]).await;
    assert_eq!(res.status().as_u16(), 204);

    // Reject, written as the SDK does (`&reject`): gone for good.
    svc.send_c2d("rx", &C2dMessage::new("second")).await.unwrap();
    svc.send_c2d("rx", &C2dMessage::new("third")).await.unwrap();
    let res = call(&hub, Method::GET, inbox, &auth, &[]).await;
    let t3 = lock_token(&res);
    assert_eq!(res.text().await.unwrap(), "second");
    // While "second" is locked, the next receive gets the next message.
    let res = call(&hub, Method::GET, inbox, &auth, &[]).await;
    let t4 = lock_token(&res);
    assert_eq!(res.text().await.unwrap(), "third");
    let reject = format!("/devices/rx/messages/devicebound/{t3}?api-version=2021-04-12&reject");
    let res = call(&hub, Method::DELETE, &reject, &auth, &[("if-match", &t3)]).await;
    assert_eq!(res.status().as_u16(), 204);
    let res =
        call(&hub, Method::DELETE, &format!("/devices/rx/messages/deviceBound/{t4}?reject=true"), &auth, &[])
            .await;
    assert_eq!(res.status().as_u16(), 204);
    let res = call(&hub, Method::GET, inbox, &auth, &[]).await;
    assert_eq!(res.status().as_u16(), 204, "rejected messages do not come back");
}

#[tokio::test]
async fn who_may_call_what() {
    let hub = TestHub::start();
    let key_a = create_device(&hub, "dev-a").await;
    create_device(&hub, "dev-b").await;
    let a = device_token("dev-a", &key_a);
    let owner = owner_token(&hub);
    let service_policy = policy_token(&hub, "service");
    let device_policy = policy_token(&hub, "device");

    // Device a's token on device b's routes: 401.
    let b_routes: [(Method, &str); 4] = [
        (Method::POST, "/devices/dev-b/messages/events"),
        (Method::GET, "/devices/dev-b/messages/devicebound"),
        (Method::DELETE, "/devices/dev-b/messages/devicebound/t"),
        (Method::POST, "/devices/dev-b/messages/devicebound/t/abandon"),
    ];
    for (m, path) in &b_routes {
        let res = call(&hub, m.clone(), path, &a, &[]).await;
        assert_error(res, 401, "IotHubUnauthorizedAccess").await;
        // No token at all, and a policy without DeviceConnect: 401 too.
        let res = http(&hub).request(m.clone(), url(&hub, path)).send().await.unwrap();
        assert_eq!(res.status().as_u16(), 401, "{m} {path} without a token");
        let res = call(&hub, m.clone(), path, &service_policy, &[]).await;
        assert_eq!(res.status().as_u16(), 401, "{m} {path} with the service policy");
    }

    // The token is checked before the body is read: an oversized body with
    // another device's token is 401, not 413.
    let res = http(&hub)
        .post(url(&hub, "/devices/dev-b/messages/events"))
        .header("authorization", &a)
        .body(vec![b'x'; 300 * 1024])
        .send()
        .await
        .unwrap();
    assert_error(res, 401, "IotHubUnauthorizedAccess").await;

    // Device tokens on service routes, the service's send on the same path included: 401.
    for (m, path) in [
        (Method::POST, "/devices/dev-a/messages/deviceBound"),
        (Method::POST, "/devices/dev-a/messages/devicebound"),
        (Method::GET, "/devices/dev-a"),
        (Method::GET, "/twins/dev-a"),
        (Method::GET, "/events?deviceId=dev-a"),
    ] {
        let res = call(&hub, m.clone(), path, &a, &[]).await;
        assert_eq!(res.status().as_u16(), 401, "{m} {path} with a device token");
    }
    // Nothing was queued by the refused sends.
    let res = call(&hub, Method::GET, "/devices/dev-a/messages/devicebound", &a, &[]).await;
    assert_eq!(res.status().as_u16(), 204);

    // A policy with DeviceConnect acts for any device (as in IoT Hub); the
    // device itself for its own id.
    for auth in [&a, &device_policy, &owner] {
        let res = call(&hub, Method::POST, "/devices/dev-a/messages/events", auth, &[]).await;
        assert_eq!(res.status().as_u16(), 204);
    }
    let res = call(&hub, Method::GET, "/devices/dev-b/messages/devicebound", &device_policy, &[]).await;
    assert_eq!(res.status().as_u16(), 204);
    // An unknown device is 401 like any refusal.
    let res = call(&hub, Method::GET, "/devices/nobody/messages/devicebound", &device_policy, &[]).await;
    assert_eq!(res.status().as_u16(), 401);
}

#[tokio::test]
async fn a_full_queue_is_403004_and_paths_ignore_case() {
    let hub = TestHub::start();
    let key = create_device(&hub, "full").await;
    let svc = service(&hub);
    for n in 0..50 {
        svc.send_c2d("full", &C2dMessage::new(format!("m{n}"))).await.unwrap();
    }
    // The 51st, sent on a differently spelled path.
    let res = call(&hub, Method::POST, "/Devices/full/MESSAGES/devicebound", &owner_token(&hub), &[]).await;
    assert_error(res, 403, "DeviceMaximumQueueDepthExceeded").await;
    let auth = device_token("full", &key);
    let res = call(&hub, Method::GET, "/DEVICES/full/messages/DeviceBound", &auth, &[]).await;
    assert_eq!(res.status().as_u16(), 200);
    assert_eq!(res.text().await.unwrap(), "m0", "the refused send changed nothing");
    // Service routes ignore case too; ids do not.
    let res = call(&hub, Method::GET, "/DEVICES/full", &owner_token(&hub), &[]).await;
    assert_eq!(res.status().as_u16(), 200);
    let res = call(&hub, Method::GET, "/devices/FULL", &owner_token(&hub), &[]).await;
    assert_eq!(res.status().as_u16(), 404);
    let res = call(&hub, Method::GET, "/Statistics/Devices", &owner_token(&hub), &[]).await;
    assert_eq!(res.status().as_u16(), 200);
}

#[tokio::test]
async fn cli_receives_and_settles_as_the_device() {
    let hub = TestHub::start();
    let key = create_device(&hub, "cli-dev").await;
    let send =
        |body: &str| ok(&hub.cli(&["c2d-message", "send", "-d", "cli-dev", "--data", body, "-p", "k=v"]));
    let receive = |extra: &[&str]| {
        let mut args = vec!["c2d-message", "receive"];
        args.extend_from_slice(extra);
        hub.cli(&args)
    };
    send("one");
    // --device-id: the device's key is read with the data dir's credentials.
    let got = ok_json(&receive(&["-d", "cli-dev"]));
    assert_eq!(got["body"], "one");
    assert_eq!(got["properties"]["k"], "v");
    assert_eq!(got["systemProperties"]["deliverycount"], "0");
    let t1 = got["lockToken"].as_str().unwrap().to_owned();
    ok(&hub.cli(&["c2d-message", "abandon", "-d", "cli-dev", "--etag", &t1]));
    // A device connection string works as well.
    let cs = format!("HostName=localhost;DeviceId=cli-dev;SharedAccessKey={key}");
    let got = ok_json(&receive(&["--device-connection-string", &cs]));
    assert_eq!(got["body"], "one");
    assert_eq!(got["systemProperties"]["deliverycount"], "1");
    let t2 = got["lockToken"].as_str().unwrap().to_owned();
    // The spent token fails with the hub's error.
    let out = hub.cli(&["c2d-message", "complete", "-d", "cli-dev", "--etag", &t1]);
    assert!(common::fails(&out).contains("DeviceMessageLockLost"));
    ok(&hub.cli(&["c2d-message", "complete", "-d", "cli-dev", "--lock-token", &t2]));
    send("two");
    let got = ok_json(&receive(&["-d", "cli-dev"]));
    assert_eq!(got["body"], "two");
    let t3 = got["lockToken"].as_str().unwrap().to_owned();
    ok(&hub.cli(&["c2d-message", "reject", "-d", "cli-dev", "-e", &t3]));
    // Empty: nothing on stdout, exit 0.
    let out = receive(&["-d", "cli-dev"]);
    assert_eq!(ok(&out), "");
    assert!(String::from_utf8_lossy(&out.stderr).contains("no cloud-to-device message"));
}

#[tokio::test]
async fn an_https_device_call_is_recorded_as_activity() {
    let hub = TestHub::start();
    let key = create_device(&hub, "busy").await;
    let s = service(&hub);
    let before = s.get_device("busy").await.unwrap().last_activity_time;
    let res =
        call(&hub, Method::GET, "/devices/busy/messages/devicebound", &device_token("busy", &key), &[]).await;
    assert_eq!(res.status().as_u16(), 204);
    // Written in the background (best effort): polled, with a deadline.
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let now = s.get_device("busy").await.unwrap().last_activity_time;
        if now != before {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "lastActivityTime never moved from {before}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // A refused call is no activity of the device's.
    create_device(&hub, "idle").await;
    let idle_before = s.get_device("idle").await.unwrap().last_activity_time;
    let res =
        call(&hub, Method::GET, "/devices/idle/messages/devicebound", &device_token("busy", &key), &[]).await;
    assert_eq!(res.status().as_u16(), 401);
    assert_eq!(s.get_device("idle").await.unwrap().last_activity_time, idle_before);
}
