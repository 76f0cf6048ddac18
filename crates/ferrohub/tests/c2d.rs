//! Cloud-to-device semantics end to end against a real hub: acknowledgement
//! modes and the feedback they produce, MQTT redelivery and
//! dead-lettering, expiry, purge, the feedback queue's locks, the queue
//! limit, and durability across restarts. The service side speaks HTTPS as
//! PyPI `azure-iot-hub`'s protocol layer does; devices are raw MQTT.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::{Duration, Instant};

use common::mqtt::{create_device, http, now_unix, owner_token, service, token, RawMqtt};
use common::{fails, ok, ok_json, TestHub};
use ferrohub_mqtt::v4::{Packet, PubAck, Publish};
use serde_json::Value;

/// How long a test waits for the hub to show an outcome before failing.
const DEADLINE: Duration = Duration::from_secs(20);
/// Between two looks at an outcome that has no push notification.
const POLL: Duration = Duration::from_millis(50);
const FEEDBACK_TYPE: &str = "application/vnd.microsoft.iothub.feedback.json; charset=utf-8";

struct Answer {
    status: u16,
    headers: reqwest::header::HeaderMap,
    body: Value,
}

impl Answer {
    fn header(&self, name: &str) -> &str {
        self.headers.get(name).map(|v| v.to_str().unwrap()).unwrap_or_default()
    }

    /// The Azure error name of a failed answer, from its body and header
    /// (which must agree).
    fn error_code(&self) -> String {
        let message = self.body["Message"].as_str().unwrap_or_default();
        let from_body =
            message.strip_prefix("ErrorCode:").and_then(|m| m.split(';').next()).unwrap_or_default();
        assert_eq!(from_body, self.header("iothub-errorcode"), "{}", self.body);
        from_body.to_owned()
    }
}

async fn call(
    hub: &TestHub,
    method: reqwest::Method,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> Answer {
    call_as(hub, &owner_token(hub), method, path, headers, body.as_bytes().to_vec()).await
}

async fn call_as(
    hub: &TestHub,
    authorization: &str,
    method: reqwest::Method,
    path: &str,
    headers: &[(&str, &str)],
    body: Vec<u8>,
) -> Answer {
    let mut req = http(hub)
        .request(method, format!("https://localhost:{}{path}?api-version=2021-04-12", hub.https_port()))
        .header("authorization", authorization)
        .body(body);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let res = req.send().await.unwrap();
    let status = res.status().as_u16();
    let headers = res.headers().clone();
    let text = res.text().await.unwrap();
    let body = serde_json::from_str(&text).unwrap_or(Value::String(text));
    Answer { status, headers, body }
}

async fn send(hub: &TestHub, device: &str, body: &str, headers: &[(&str, &str)]) -> Answer {
    call(hub, reqwest::Method::POST, &format!("/devices/{device}/messages/deviceBound"), headers, body).await
}

/// Sends a message with an id and an ack mode, asserting it was queued.
async fn send_acked(hub: &TestHub, device: &str, id: &str, ack: &str) {
    let a = send(hub, device, id, &[("iothub-messageid", id), ("iothub-ack", ack)]).await;
    assert_eq!(a.status, 204, "{}", a.body);
}

async fn purge(hub: &TestHub, device: &str) -> Answer {
    call(hub, reqwest::Method::DELETE, &format!("/devices/{device}/commands"), &[], "").await
}

async fn feedback(hub: &TestHub) -> Answer {
    call(hub, reqwest::Method::GET, "/messages/serviceBound/feedback", &[], "").await
}

async fn complete_feedback(hub: &TestHub, token: &str) -> Answer {
    call(hub, reqwest::Method::DELETE, &format!("/messages/serviceBound/feedback/{token}"), &[], "").await
}

async fn abandon_feedback(hub: &TestHub, token: &str) -> Answer {
    call(hub, reqwest::Method::POST, &format!("/messages/serviceBound/feedback/{token}/abandon"), &[], "")
        .await
}

/// The lock token of a feedback answer: its `ETag` without the quotes.
fn lock_token(a: &Answer) -> String {
    let etag = a.header("etag");
    assert!(etag.len() > 2 && etag.starts_with('"') && etag.ends_with('"'), "ETag {etag:?}");
    etag[1..etag.len() - 1].to_owned()
}

/// (originalMessageId, statusCode) of each record of a batch.
fn records(a: &Answer) -> Vec<(String, String)> {
    a.body
        .as_array()
        .unwrap_or_else(|| panic!("not a record array: {}", a.body))
        .iter()
        .map(|r| {
            (
                r["originalMessageId"].as_str().unwrap().to_owned(),
                r["statusCode"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

/// Reads and completes feedback batches until `expected` records (in any
/// order across batches) have arrived, and no others; fails at the
/// deadline. Feedback has no push channel, so this polls what the service
/// would read.
async fn expect_feedback(hub: &TestHub, expected: &[(&str, &str)]) {
    let mut want: Vec<(String, String)> =
        expected.iter().map(|(id, s)| ((*id).to_owned(), (*s).to_owned())).collect();
    want.sort();
    let mut got = Vec::new();
    let deadline = Instant::now() + DEADLINE;
    while got.len() < want.len() {
        let a = feedback(hub).await;
        match a.status {
            204 => {
                assert!(Instant::now() < deadline, "feedback {got:?} so far, waiting for {want:?}");
                tokio::time::sleep(POLL).await;
            }
            200 => {
                assert_eq!(a.header("content-type"), FEEDBACK_TYPE);
                got.extend(records(&a));
                assert_eq!(complete_feedback(hub, &lock_token(&a)).await.status, 204);
            }
            s => panic!("feedback receive answered {s}: {}", a.body),
        }
    }
    got.sort();
    assert_eq!(got, want);
}

fn c2d_filter(d: &str) -> String {
    format!("devices/{d}/messages/devicebound/#")
}

/// A device connected over MQTT and subscribed to its messages.
async fn subscribed(hub: &TestHub, id: &str, key: &str) -> RawMqtt {
    let (mut c, _) = RawMqtt::device(hub, id, key, true).await;
    c.subscribe(&[&c2d_filter(id)]).await;
    c
}

async fn next_body(c: &mut RawMqtt) -> (Publish, String) {
    let p = c.next_publish().await.expect("the hub closed instead of delivering");
    let body = String::from_utf8(p.payload.to_vec()).unwrap();
    (p, body)
}

/// PUBACKs and waits until the hub has read it (a PINGRESP comes after).
async fn puback(c: &mut RawMqtt, p: &Publish) {
    c.send(Packet::PubAck(PubAck::new(p.pkid))).await;
    c.send(Packet::PingReq).await;
    loop {
        match c.recv().await {
            Some(Packet::PingResp) => return,
            Some(_) => continue,
            None => panic!("closed before PINGRESP"),
        }
    }
}

async fn queued(hub: &TestHub, id: &str) -> i64 {
    service(hub).get_device(id).await.unwrap().cloud_to_device_message_count
}

#[tokio::test]
async fn positive_ack_gives_success_feedback_once_the_device_acknowledges() {
    let hub = TestHub::start();
    let key = create_device(&hub, "pos").await;
    let generation = service(&hub).get_device("pos").await.unwrap().generation_id;
    send_acked(&hub, "pos", "m-pos", "positive").await;
    let mut c = subscribed(&hub, "pos", &key).await;
    let (p, body) = next_body(&mut c).await;
    assert_eq!(body, "m-pos");
    // Delivered but not acknowledged: no feedback yet.
    assert_eq!(feedback(&hub).await.status, 204);
    puback(&mut c, &p).await;
    let deadline = Instant::now() + DEADLINE;
    let a = loop {
        let a = feedback(&hub).await;
        if a.status == 200 {
            break a;
        }
        assert!(Instant::now() < deadline, "no Success feedback");
        tokio::time::sleep(POLL).await;
    };
    assert_eq!(a.header("content-type"), FEEDBACK_TYPE);
    let record = &a.body.as_array().unwrap()[0];
    assert_eq!(record["originalMessageId"], "m-pos");
    assert_eq!(record["statusCode"], "Success");
    assert_eq!(record["description"], "Success");
    assert_eq!(record["deviceId"], "pos");
    assert_eq!(record["deviceGenerationId"], generation.as_str());
    assert!(record["enqueuedTimeUtc"].as_str().unwrap().ends_with('Z'), "{record}");
    assert_eq!(complete_feedback(&hub, &lock_token(&a)).await.status, 204);
    assert_eq!(feedback(&hub).await.status, 204);
    assert_eq!(queued(&hub, "pos").await, 0);
}

#[tokio::test]
async fn unacknowledged_messages_are_redelivered_until_dead_lettered() {
    let hub = TestHub::start();
    let key = create_device(&hub, "flaky").await;
    for (id, ack) in [("m-neg", "negative"), ("m-full", "full"), ("m-pos", "positive")] {
        send_acked(&hub, "flaky", id, ack).await;
    }
    // Ten connections each get all three and end without a PUBACK: each
    // counts one delivery (MQTT devices cannot abandon), the tenth
    // dead-letters them.
    for round in 1..=10 {
        let mut c = subscribed(&hub, "flaky", &key).await;
        let mut bodies = Vec::new();
        for _ in 0..3 {
            bodies.push(next_body(&mut c).await.1);
        }
        assert_eq!(bodies, ["m-neg", "m-full", "m-pos"], "connection {round}");
        c.send(Packet::Disconnect).await;
        assert!(c.closed().await);
    }
    // Positive asks only for Success: the dead-lettered m-pos says nothing.
    expect_feedback(&hub, &[("m-neg", "DeliveryCountExceeded"), ("m-full", "DeliveryCountExceeded")]).await;
    assert_eq!(queued(&hub, "flaky").await, 0);
    // An eleventh connection gets only what is sent next.
    send_acked(&hub, "flaky", "m-next", "none").await;
    let mut c = subscribed(&hub, "flaky", &key).await;
    let (p, body) = next_body(&mut c).await;
    assert_eq!(body, "m-next");
    puback(&mut c, &p).await;
    assert_eq!(feedback(&hub).await.status, 204, "ack none gives no feedback");
}

#[tokio::test]
async fn an_expired_message_gives_expired_feedback_and_is_never_delivered() {
    let hub = TestHub::start();
    let key = create_device(&hub, "ttl").await;
    let now_ms =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as i64;
    // Far enough ahead that it is still in the future when the hub reads it.
    let expiry = ferrohub_core::time::Timestamp::from_unix_millis(now_ms + 1_500).to_iso();
    let a = send(
        &hub,
        "ttl",
        "short",
        &[("iothub-messageid", "m-ttl"), ("iothub-ack", "negative"), ("iothub-expiry", &expiry)],
    )
    .await;
    assert_eq!(a.status, 204, "{}", a.body);
    // The feedback receive sweeps expiries itself, so the record shows up
    // once the time to live has passed.
    expect_feedback(&hub, &[("m-ttl", "Expired")]).await;
    assert_eq!(queued(&hub, "ttl").await, 0);
    send_acked(&hub, "ttl", "m-later", "none").await;
    let mut c = subscribed(&hub, "ttl", &key).await;
    assert_eq!(next_body(&mut c).await.1, "m-later");
}

#[tokio::test]
async fn purge_empties_the_queue_counts_and_reports_purged() {
    let hub = TestHub::start();
    create_device(&hub, "p").await;
    for (id, ack) in [("m1", "full"), ("m2", "negative"), ("m3", "none"), ("m4", "positive")] {
        send_acked(&hub, "p", id, ack).await;
    }
    assert_eq!(queued(&hub, "p").await, 4);
    let a = purge(&hub, "p").await;
    assert_eq!(a.status, 200, "{}", a.body);
    assert_eq!(a.body, serde_json::json!({"totalMessagesPurged": 4, "deviceId": "p"}));
    assert_eq!(queued(&hub, "p").await, 0);
    expect_feedback(&hub, &[("m1", "Purged"), ("m2", "Purged")]).await;
    let a = purge(&hub, "p").await;
    assert_eq!(a.body["totalMessagesPurged"], 0);
    let a = purge(&hub, "ghost").await;
    assert_eq!(a.status, 404);
    assert_eq!(a.error_code(), "DeviceNotFound");
}

#[tokio::test]
async fn feedback_is_completed_or_abandoned_by_its_lock_token_only() {
    let hub = TestHub::start();
    create_device(&hub, "f").await;
    send_acked(&hub, "f", "m1", "full").await;
    send_acked(&hub, "f", "m2", "negative").await;
    assert_eq!(purge(&hub, "f").await.status, 200);
    let first = feedback(&hub).await;
    assert_eq!(first.status, 200, "{}", first.body);
    let token = lock_token(&first);
    let batch = records(&first);
    assert_eq!(batch.len(), 2);
    // The batch is locked: nothing else to read.
    assert_eq!(feedback(&hub).await.status, 204);
    // A wrong token changes nothing, whichever way it is used.
    for a in [complete_feedback(&hub, "not-a-token").await, abandon_feedback(&hub, "not-a-token").await] {
        assert_eq!(a.status, 412, "{}", a.body);
        assert_eq!(a.error_code(), "DeviceMessageLockLost");
    }
    assert_eq!(feedback(&hub).await.status, 204, "still locked by the right token");
    // Abandon puts the batch back; the old token is then dead.
    assert_eq!(abandon_feedback(&hub, &token).await.status, 204);
    assert_eq!(abandon_feedback(&hub, &token).await.status, 412);
    assert_eq!(complete_feedback(&hub, &token).await.status, 412);
    let again = feedback(&hub).await;
    assert_eq!(again.status, 200);
    let token2 = lock_token(&again);
    assert_ne!(token2, token);
    assert_eq!(records(&again), batch, "the same records, in the same order");
    assert_eq!(complete_feedback(&hub, &token2).await.status, 204);
    let stale = complete_feedback(&hub, &token2).await;
    assert_eq!(stale.status, 412);
    assert_eq!(stale.error_code(), "DeviceMessageLockLost");
    assert_eq!(feedback(&hub).await.status, 204);
}

#[tokio::test]
async fn a_full_queue_refuses_with_403004_and_stores_nothing() {
    let hub = TestHub::start();
    create_device(&hub, "full").await;
    for i in 0..50 {
        assert_eq!(send(&hub, "full", &format!("m{i}"), &[]).await.status, 204, "message {i}");
    }
    let a =
        send(&hub, "full", "one too many", &[("iothub-messageid", "extra"), ("iothub-ack", "full")]).await;
    assert_eq!(a.status, 403, "{}", a.body);
    assert_eq!(a.error_code(), "DeviceMaximumQueueDepthExceeded");
    assert_eq!(queued(&hub, "full").await, 50);
    assert_eq!(purge(&hub, "full").await.body["totalMessagesPurged"], 50);
    // Had the refused message been stored, its purge would have given
    // feedback (it asked for full); the others asked for none.
    assert_eq!(feedback(&hub).await.status, 204);
}

#[tokio::test]
async fn queues_and_feedback_survive_graceful_and_hard_restarts() {
    let mut hub = TestHub::start();
    let key = create_device(&hub, "r1").await;
    create_device(&hub, "r2").await;
    send_acked(&hub, "r1", "kept", "full").await;
    send_acked(&hub, "r2", "gone", "full").await;
    assert_eq!(purge(&hub, "r2").await.body["totalMessagesPurged"], 1);

    hub.restart_gracefully();
    assert_eq!(queued(&hub, "r1").await, 1);
    // The device takes the message and the hub dies before the PUBACK.
    let mut c = subscribed(&hub, "r1", &key).await;
    assert_eq!(next_body(&mut c).await.1, "kept");
    hub.restart();
    drop(c);

    // Back after a SIGKILL: the message is queued again (the dead
    // connection's lock does not survive) and the feedback is still there.
    assert_eq!(queued(&hub, "r1").await, 1);
    let mut c = subscribed(&hub, "r1", &key).await;
    let (p, body) = next_body(&mut c).await;
    assert_eq!(body, "kept");
    puback(&mut c, &p).await;
    expect_feedback(&hub, &[("gone", "Purged"), ("kept", "Success")]).await;
}

#[tokio::test]
async fn the_cli_sends_with_an_ack_purges_and_reads_feedback() {
    let hub = TestHub::start();
    create_device(&hub, "cli-dev").await;
    for (id, ack) in [("c-full", "full"), ("c-none", "none"), ("c-neg", "negative")] {
        ok(&hub.cli(&["c2d-message", "send", "-d", "cli-dev", "--message-id", id, "--ack", ack]));
    }
    // clap refuses an unknown mode before anything is sent.
    let bad = hub.cli(&["c2d-message", "send", "-d", "cli-dev", "--ack", "sometimes"]);
    assert!(!bad.status.success() && String::from_utf8_lossy(&bad.stderr).contains("sometimes"));
    assert_eq!(queued(&hub, "cli-dev").await, 3);
    let purged = ok_json(&hub.cli(&["c2d-message", "purge", "-d", "cli-dev"]));
    assert_eq!(purged, serde_json::json!({"totalMessagesPurged": 3, "deviceId": "cli-dev"}));
    // tsv: the values in key order.
    assert_eq!(ok(&hub.cli(&["c2d-message", "purge", "-d", "cli-dev", "-o", "tsv"])), "cli-dev\t0\n");
    let line = fails(&hub.cli(&["c2d-message", "purge", "-d", "nobody"]));
    assert!(line.contains("DeviceNotFound"), "{line}");

    // --abandon prints the records and puts them back ...
    let ids = |v: &Value| -> Vec<(String, String)> {
        let mut out: Vec<_> = v
            .as_array()
            .unwrap()
            .iter()
            .map(|r| {
                (
                    r["originalMessageId"].as_str().unwrap().to_owned(),
                    r["statusCode"].as_str().unwrap().to_owned(),
                )
            })
            .collect();
        out.sort();
        out
    };
    let want = vec![("c-full".to_owned(), "Purged".to_owned()), ("c-neg".to_owned(), "Purged".to_owned())];
    let abandoned = ok_json(&hub.cli(&["c2d-message", "feedback", "--abandon"]));
    assert_eq!(ids(&abandoned), want);
    // ... so the next read gets them again, completes them, and then
    // there is nothing left.
    let table = ok(&hub.cli(&["c2d-message", "feedback", "-o", "table"]));
    assert!(table.contains("c-full") && table.contains("Purged"), "{table}");
    assert_eq!(ok_json(&hub.cli(&["c2d-message", "feedback"])), serde_json::json!([]));
    assert_eq!(feedback(&hub).await.status, 204);
}

#[tokio::test]
async fn bad_input_is_refused_and_changes_nothing() {
    let hub = TestHub::start();
    let key = create_device(&hub, "bad").await;
    send_acked(&hub, "bad", "b-1", "full").await;
    assert_eq!(purge(&hub, "bad").await.status, 200);
    send_acked(&hub, "bad", "b-2", "full").await;
    let device_token = token("bad", &key, now_unix() + 600);
    // The service routes refuse a device's own token, even for its own id.
    let refused = [
        (reqwest::Method::DELETE, "/devices/bad/commands"),
        (reqwest::Method::GET, "/messages/serviceBound/feedback"),
        (reqwest::Method::DELETE, "/messages/serviceBound/feedback/x"),
        (reqwest::Method::POST, "/messages/serviceBound/feedback/x/abandon"),
        (reqwest::Method::POST, "/devices/bad/messages/deviceBound"),
    ];
    for (method, path) in refused {
        let a = call_as(&hub, &device_token, method.clone(), path, &[], b"x".to_vec()).await;
        assert_eq!(a.status, 401, "{method} {path}: {}", a.body);
    }
    // Too large (over 64 KiB) and an unknown ack mode store nothing.
    let a = call_as(
        &hub,
        &owner_token(&hub),
        reqwest::Method::POST,
        "/devices/bad/messages/deviceBound",
        &[("iothub-ack", "full")],
        vec![b'x'; 65 * 1024],
    )
    .await;
    assert_eq!(a.status, 413, "{}", a.body);
    assert_eq!(a.error_code(), "MessageTooLarge");
    let a = send(&hub, "bad", "x", &[("iothub-ack", "sometimes")]).await;
    assert_eq!(a.status, 400, "{}", a.body);
    assert_eq!(a.error_code(), "ArgumentInvalid");
    assert_eq!(queued(&hub, "bad").await, 1, "only b-2 is queued");
    // The feedback of b-1 is still there, untouched by the refused calls.
    expect_feedback(&hub, &[("b-1", "Purged")]).await;
}
