//! IoT Hub's throttles against the real `ferrohub serve`, each on a hub
//! with a deliberately small limit: REST answers 429 ThrottlingException
//! with `Retry-After` (and passes again after it), MQTT twin requests get
//! status 429, MQTT telemetry is paced by holding PUBACKs (none lost),
//! connects beyond the rate get CONNACK 3; and a device that floods
//! `/events` does not push out another device's history; and the daily
//! message quota refuses metered operations with 403 once used, across a
//! restart.

#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use common::mqtt::{create_device, http, now_unix, owner_token, token, RawMqtt};
use common::TestHub;
use ferrohub_mqtt::v4::{ConnectReturnCode, Packet, Publish};
use ferrohub_mqtt::QoS;
use reqwest::{Method, Response};
use serde_json::Value;

/// How long one awaited step may take.
const STEP: Duration = Duration::from_secs(20);

fn url(hub: &TestHub, path: &str) -> String {
    format!("https://localhost:{}{path}", hub.https_port())
}

async fn call(
    hub: &TestHub,
    method: Method,
    path: &str,
    auth: &str,
    body: Option<(&str, String)>,
) -> Response {
    let mut req = http(hub).request(method, url(hub, path)).header("authorization", auth);
    if let Some((content_type, body)) = body {
        req = req.header("content-type", content_type).body(body);
    }
    tokio::time::timeout(STEP, req.send()).await.unwrap().unwrap()
}

/// `/statistics/service`'s count of operations `class` throttled.
async fn throttled(hub: &TestHub, class: &str) -> u64 {
    let res =
        call(hub, Method::GET, "/statistics/service?api-version=2021-04-12", &owner_token(hub), None).await;
    assert_eq!(res.status().as_u16(), 200);
    let stats: Value = res.json().await.unwrap();
    stats["throttles"][class]["throttled"].as_u64().unwrap_or_else(|| panic!("no {class} count in {stats}"))
}

/// Asserts a throttle's answer: 429, Azure's code in the header and the
/// legacy body, and a `Retry-After` in whole seconds, which it returns.
async fn assert_throttled(res: Response) -> u64 {
    let status = res.status().as_u16();
    let code = res.headers().get("iothub-errorcode").map(|v| v.to_str().unwrap().to_owned());
    let retry = res.headers().get("retry-after").map(|v| v.to_str().unwrap().to_owned());
    let body: Value = res.json().await.unwrap();
    assert_eq!(status, 429, "{body}");
    assert_eq!(code.as_deref(), Some("ThrottlingException"));
    assert!(body["Message"].as_str().unwrap().starts_with("ErrorCode:ThrottlingException;"), "{body}");
    let retry: u64 = retry.expect("Retry-After").parse().unwrap();
    assert!(retry >= 1);
    retry
}

/// The `n` most recent events of `device` replayed by `/events`.
async fn recent_events(hub: &TestHub, device: &str, n: usize) -> Vec<Value> {
    let mut res =
        call(hub, Method::GET, &format!("/events?deviceId={device}&last={n}"), &owner_token(hub), None).await;
    assert_eq!(res.status().as_u16(), 200);
    let mut text = String::new();
    let mut events = Vec::new();
    // One deadline for the whole replay: keep-alive comments would renew a
    // per-chunk timeout forever.
    let replay = async {
        while events.len() < n {
            let chunk = res.chunk().await.unwrap().unwrap();
            text.push_str(&String::from_utf8_lossy(&chunk));
            while let Some(end) = text.find("\n\n") {
                let block: String = text.drain(..end + 2).collect();
                if let Some(line) = block.lines().find(|l| l.starts_with("data:")) {
                    events.push(
                        serde_json::from_str::<Value>(line.trim_start_matches("data:").trim()).unwrap(),
                    );
                }
            }
        }
    };
    if tokio::time::timeout(STEP, replay).await.is_err() {
        panic!("fewer than {n} events of {device} replayed");
    }
    events
}

#[tokio::test]
async fn rest_twin_reads_over_the_rate_get_429_with_retry_after_and_pass_after_it() {
    let hub = TestHub::start_with(&["--throttle", "twin-read=1/s"]);
    create_device(&hub, "d").await;
    let auth = owner_token(&hub);
    let path = "/twins/d?api-version=2021-04-12";
    let mut refused = None;
    for _ in 0..20 {
        let res = call(&hub, Method::GET, path, &auth, None).await;
        if res.status().as_u16() == 429 {
            refused = Some(res);
            break;
        }
        assert_eq!(res.status().as_u16(), 200);
    }
    let retry = assert_throttled(refused.expect("no read was throttled")).await;
    assert!(retry <= 1, "a 1/s bucket refills within a second, not {retry}");
    // Waiting as told is enough.
    tokio::time::sleep(Duration::from_secs(retry)).await;
    let res = call(&hub, Method::GET, path, &auth, None).await;
    assert_eq!(res.status().as_u16(), 200);
    assert!(throttled(&hub, "twin-read").await >= 1);
    // Other classes are not affected.
    assert_eq!(
        call(&hub, Method::GET, "/devices/d?api-version=2021-04-12", &auth, None).await.status().as_u16(),
        200
    );
}

#[tokio::test]
async fn mqtt_twin_requests_over_the_rate_get_status_429() {
    let hub = TestHub::start_with(&["--throttle", "twin-read=1/min", "--throttle", "twin-update=1/min"]);
    let key = create_device(&hub, "d").await;
    let (mut c, _) = RawMqtt::device(&hub, "d", &key, true).await;
    c.subscribe(&["$iothub/twin/res/#"]).await;
    let status = |p: Publish| (p.topic.split('/').nth(3).unwrap().to_owned(), p.payload);
    for (rid, expect) in [("1", "200"), ("2", "429")] {
        c.publish(&format!("$iothub/twin/GET/?$rid={rid}"), QoS::AtMostOnce, b"").await;
        let (got, body) = status(c.next_publish().await.unwrap());
        assert_eq!(got, expect, "GET {rid}: {}", String::from_utf8_lossy(&body));
        if expect == "429" {
            let err: Value = serde_json::from_slice(&body).unwrap();
            assert_eq!(err["errorCode"], 429001, "{err}");
        }
    }
    for (rid, expect) in [("3", "204"), ("4", "429")] {
        c.publish(
            &format!("$iothub/twin/PATCH/properties/reported/?$rid={rid}"),
            QoS::AtMostOnce,
            br#"{"a":1}"#,
        )
        .await;
        let (got, _) = status(c.next_publish().await.unwrap());
        assert_eq!(got, expect, "PATCH {rid}");
    }
    assert_eq!((throttled(&hub, "twin-read").await, throttled(&hub, "twin-update").await), (1, 1));
}

#[tokio::test]
async fn mqtt_telemetry_over_the_device_rate_is_paced_and_none_is_lost() {
    const SENT: u16 = 40;
    let hub = TestHub::start_with(&["--throttle", "d2c-device=10/s"]);
    let key = create_device(&hub, "fast").await;
    let (mut c, _) = RawMqtt::device(&hub, "fast", &key, true).await;
    // All at once, each with its own packet id, without waiting for acks.
    for i in 1..=SENT {
        let mut p =
            Publish::new("devices/fast/messages/events/", QoS::AtLeastOnce, i.to_string().into_bytes());
        p.pkid = i;
        c.send(Packet::Publish(p)).await;
    }
    let mut acked = Vec::new();
    while acked.len() < usize::from(SENT) {
        match c.recv().await.expect("the hub closed the connection") {
            Packet::PubAck(a) => acked.push(a.pkid),
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(acked, (1..=SENT).collect::<Vec<_>>(), "every message acknowledged, in order");
    // The bucket holds ten: the rest were held back, not dropped.
    let paced = throttled(&hub, "d2c-device").await;
    assert!(paced >= 1 && paced < u64::from(SENT), "{paced} messages paced");
    let events = recent_events(&hub, "fast", usize::from(SENT)).await;
    let bodies: Vec<String> = events.iter().map(|e| e["body"].as_str().unwrap().to_owned()).collect();
    assert_eq!(bodies, (1..=SENT).map(|i| i.to_string()).collect::<Vec<_>>());
    assert_eq!(throttled(&hub, "d2c").await, 0, "no hub-wide limit was set");
}

#[tokio::test]
async fn https_telemetry_over_the_rate_is_429_and_a_batch_is_refused_whole() {
    let hub = TestHub::start_with(&["--throttle", "d2c-device=5/min"]);
    let key = create_device(&hub, "h").await;
    let auth = token("h", &key, now_unix() + 3600);
    let path = "/devices/h/messages/events?api-version=2021-04-12";
    let batch = r#"[{"body":"YQ=="},{"body":"Yg=="},{"body":"Yw=="}]"#;
    let send_batch = || {
        call(&hub, Method::POST, path, &auth, Some(("application/vnd.microsoft.iothub.json", batch.into())))
    };
    assert_eq!(send_batch().await.status().as_u16(), 204);
    // Two of five left: the next batch of three is refused, all of it.
    assert!(assert_throttled(send_batch().await).await > 5, "a 5/min bucket refills every 12 s");
    for body in ["one", "two"] {
        let res = call(&hub, Method::POST, path, &auth, Some(("text/plain", body.into()))).await;
        assert_eq!(res.status().as_u16(), 204);
    }
    let res = call(&hub, Method::POST, path, &auth, Some(("text/plain", "three".into()))).await;
    assert_throttled(res).await;
    let events = recent_events(&hub, "h", 5).await;
    let bodies: Vec<_> = events.iter().map(|e| e["body"].as_str().unwrap()).collect();
    assert_eq!(bodies, ["a", "b", "c", "one", "two"]);
    assert_eq!(throttled(&hub, "d2c-device").await, 2);
}

#[tokio::test]
async fn connects_beyond_the_rate_get_connack_3() {
    let hub = TestHub::start_with(&["--throttle", "connect=1/min"]);
    let a = create_device(&hub, "a").await;
    let b = create_device(&hub, "b").await;
    let (_first, _) = RawMqtt::device(&hub, "a", &a, true).await;
    let (mut second, ack) = RawMqtt::connect(&hub, "b", &token("b", &b, now_unix() + 3600), 60, true).await;
    assert_eq!(ack.code, ConnectReturnCode::ServiceUnavailable);
    assert!(second.closed().await);
    // A refused CONNECT with bad credentials is not a connect and uses nothing.
    let (_, ack) = RawMqtt::connect(&hub, "b", "SharedAccessSignature sr=x&sig=y&se=1", 60, true).await;
    assert_eq!(ack.code, ConnectReturnCode::NotAuthorized);
    assert_eq!(throttled(&hub, "connect").await, 1);
}

#[tokio::test]
async fn a_flooding_device_does_not_evict_a_quiet_devices_events() {
    let hub = TestHub::start();
    let quiet = token("quiet", &create_device(&hub, "quiet").await, now_unix() + 3600);
    let noisy = token("noisy", &create_device(&hub, "noisy").await, now_unix() + 3600);
    for body in ["q1", "q2", "q3"] {
        let res = call(
            &hub,
            Method::POST,
            "/devices/quiet/messages/events?api-version=2021-04-12",
            &quiet,
            Some(("text/plain", body.into())),
        )
        .await;
        assert_eq!(res.status().as_u16(), 204);
    }
    // More than the whole buffer (10,000 events), in batches of 500.
    let batch = format!("[{}]", vec![r#"{"body":"bm9pc2U="}"#; 500].join(","));
    for _ in 0..21 {
        let res = call(
            &hub,
            Method::POST,
            "/devices/noisy/messages/events?api-version=2021-04-12",
            &noisy,
            Some(("application/vnd.microsoft.iothub.json", batch.clone())),
        )
        .await;
        assert_eq!(res.status().as_u16(), 204);
    }
    // A reader that comes late still finds the quiet device's history.
    let events = recent_events(&hub, "quiet", 3).await;
    let bodies: Vec<_> = events.iter().map(|e| e["body"].as_str().unwrap()).collect();
    assert_eq!(bodies, ["q1", "q2", "q3"]);
    // And the noisy one's most recent events are there too.
    assert_eq!(recent_events(&hub, "noisy", 1).await[0]["body"], "noise");
}

#[tokio::test]
async fn https_c2d_receives_and_configuration_calls_have_their_own_throttles() {
    let hub = TestHub::start_with(&["--throttle", "c2d-receive=1/min", "--throttle", "configuration=1/min"]);
    let key = create_device(&hub, "r").await;
    let device = token("r", &key, now_unix() + 3600);
    let path = "/devices/r/messages/deviceBound?api-version=2021-04-12";
    // Nothing queued: 204, then the bucket is empty.
    assert_eq!(call(&hub, Method::GET, path, &device, None).await.status().as_u16(), 204);
    assert!(assert_throttled(call(&hub, Method::GET, path, &device, None).await).await > 30);
    let owner = owner_token(&hub);
    let list = "/configurations?api-version=2021-04-12";
    assert_eq!(call(&hub, Method::GET, list, &owner, None).await.status().as_u16(), 200);
    assert_throttled(call(&hub, Method::GET, list, &owner, None).await).await;
    assert_eq!((throttled(&hub, "c2d-receive").await, throttled(&hub, "configuration").await), (1, 1));
}

/// `/statistics/service`'s daily quota: messages counted today.
async fn used_today(hub: &TestHub) -> u64 {
    let res =
        call(hub, Method::GET, "/statistics/service?api-version=2021-04-12", &owner_token(hub), None).await;
    let stats: Value = res.json().await.unwrap();
    stats["dailyQuota"]["used"].as_u64().unwrap_or_else(|| panic!("no daily quota in {stats}"))
}

/// One HTTPS telemetry send of `device`.
async fn send_event(hub: &TestHub, device: &str, key: &str, content_type: &str, body: String) -> Response {
    let path = format!("/devices/{device}/messages/events?api-version=2021-04-12");
    let auth = token(device, key, now_unix() + 3600);
    call(hub, Method::POST, &path, &auth, Some((content_type, body))).await
}

async fn assert_over_quota(res: Response) {
    let status = res.status().as_u16();
    let code = res.headers().get("iothub-errorcode").map(|v| v.to_str().unwrap().to_owned());
    let body: Value = res.json().await.unwrap();
    assert_eq!(status, 403, "{body}");
    assert_eq!(code.as_deref(), Some("IotHubQuotaExceeded"));
    assert!(body["Message"].as_str().unwrap().starts_with("ErrorCode:IotHubQuotaExceeded;"), "{body}");
}

#[tokio::test]
async fn the_daily_quota_counts_chunks_refuses_with_403_and_survives_a_restart() {
    let mut hub = TestHub::start_with(&["--daily-quota", "6"]);
    let key = create_device(&hub, "q").await;

    // One byte over 4 KB is two messages; a batch of three is three.
    assert_eq!(send_event(&hub, "q", &key, "text/plain", "x".repeat(4097)).await.status().as_u16(), 204);
    assert_eq!(used_today(&hub).await, 2);
    let batch = |n: usize| format!("[{}]", vec![r#"{"body":"YQ=="}"#; n].join(","));
    assert_eq!(
        send_event(&hub, "q", &key, "application/vnd.microsoft.iothub.json", batch(3))
            .await
            .status()
            .as_u16(),
        204
    );
    assert_eq!(used_today(&hub).await, 5);
    // Two do not fit in the one left: refused whole, nothing counted.
    assert_over_quota(send_event(&hub, "q", &key, "application/vnd.microsoft.iothub.json", batch(2)).await)
        .await;
    assert_eq!(used_today(&hub).await, 5);
    assert_eq!(send_event(&hub, "q", &key, "text/plain", "last".into()).await.status().as_u16(), 204);
    // Twin reads are metered too; registry operations are not.
    let twin = call(&hub, Method::GET, "/twins/q?api-version=2021-04-12", &owner_token(&hub), None).await;
    assert_over_quota(twin).await;
    create_device(&hub, "still-allowed").await;

    // Over MQTT the connect is allowed and the first message ends the
    // connection, unacknowledged, as IoT Hub does.
    let (mut c, ack) = RawMqtt::device(&hub, "q", &key, true).await;
    assert_eq!(ack.code, ConnectReturnCode::Success);
    let mut p = Publish::new("devices/q/messages/events/", QoS::AtLeastOnce, b"over".to_vec());
    p.pkid = 1;
    c.send(Packet::Publish(p)).await;
    assert!(c.closed().await, "the hub kept the connection of a device over the quota");
    let events = recent_events(&hub, "q", 5).await;
    assert_eq!(events[4]["body"], "last", "the refused MQTT message was delivered");

    // A restart does not hand out a new allowance.
    hub.restart_gracefully();
    assert_eq!(used_today(&hub).await, 6);
    assert_over_quota(send_event(&hub, "q", &key, "text/plain", "again".into()).await).await;
}

#[tokio::test]
async fn a_throttled_registry_or_query_call_is_refused_before_its_body_is_read() {
    let hub = TestHub::start_with(&["--throttle", "registry=1/min", "--throttle", "query=1/min"]);
    let owner = owner_token(&hub);
    create_device(&hub, "first").await;
    // Bad JSON would be 400 if the body were parsed: the throttle answers first.
    let bad = Some(("application/json", "{not json".to_owned()));
    let res = call(&hub, Method::PUT, "/devices/second?api-version=2021-04-12", &owner, bad.clone()).await;
    assert_throttled(res).await;
    let query = Some(("application/json", r#"{"query":"SELECT * FROM devices"}"#.to_owned()));
    let res = call(&hub, Method::POST, "/devices/query?api-version=2021-04-12", &owner, query).await;
    assert_eq!(res.status().as_u16(), 200);
    let res = call(&hub, Method::POST, "/devices/query?api-version=2021-04-12", &owner, bad).await;
    assert_throttled(res).await;
    assert_eq!((throttled(&hub, "registry").await, throttled(&hub, "query").await), (1, 1));
}
