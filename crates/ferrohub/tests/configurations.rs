//! Configurations and queries against a real hub: the engine applies the
//! winning configuration the moment something changes (the periodic pass is
//! an hour here), keeps metrics current, hands paths back when a
//! configuration goes, overwrites drift, and survives SIGKILL.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::{Duration, Instant};

use common::mqtt::{create_device, http, owner_token, service};
use common::TestHub;
use serde_json::{json, Value};

/// How long an awaited condition may take.
const WAIT: Duration = Duration::from_secs(30);

async fn call(
    hub: &TestHub,
    method: reqwest::Method,
    path: &str,
    body: Option<Value>,
    headers: &[(&str, &str)],
) -> (u16, reqwest::header::HeaderMap, Value) {
    let mut req = http(hub)
        .request(method, format!("https://localhost:{}{path}", hub.https_port()))
        .query(&[("api-version", "2021-04-12")])
        .header("authorization", owner_token(hub));
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    if let Some(b) = body {
        req = req.header("content-type", "application/json").body(b.to_string());
    }
    let res = req.send().await.unwrap();
    let status = res.status().as_u16();
    let headers = res.headers().clone();
    let text = res.text().await.unwrap();
    (status, headers, serde_json::from_str(&text).unwrap_or(Value::Null))
}

fn firmware_config(id: &str, version: &str, condition: &str, priority: i64) -> Value {
    json!({
        "id": id,
        "content": {"deviceContent": {"properties.desired.firmware": {
            "fwVersion": version, "fwPackageURI": "https://secureuri/package.bin", "fwPackageCheckValue": "123456abcde"}}},
        "targetCondition": condition,
        "priority": priority,
        "metrics": {"queries": {
            "current": format!("SELECT deviceId FROM devices WHERE configurations.[[{id}]].status='Applied' AND properties.reported.firmware.fwUpdateStatus='current'")
        }}
    })
}

/// Polls `f` until it returns `Some`, failing after [`WAIT`].
async fn eventually<T, F, Fut>(what: &str, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let start = Instant::now();
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(start.elapsed() < WAIT, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn desired_fw(hub: &TestHub, device: &str) -> Value {
    service(hub).get_twin(device).await.unwrap()["properties"]["desired"]["firmware"]["fwVersion"].clone()
}

async fn tag(hub: &TestHub, device: &str, tags: Value) {
    service(hub).update_twin(device, &json!({"tags": tags}), "*").await.unwrap();
}

#[tokio::test]
async fn configurations_apply_on_every_change_and_hand_paths_back() {
    let mut hub = TestHub::start_with(&["--config-eval-interval", "3600"]);
    for d in ["c1", "c2", "o1"] {
        create_device(&hub, d).await;
    }
    tag(&hub, "c1", json!({"devicetype":"chiller","ring":"early"})).await;
    tag(&hub, "c2", json!({"devicetype":"chiller"})).await;
    tag(&hub, "o1", json!({"devicetype":"other"})).await;

    let body = firmware_config("firmware285", "2.8.5", "tags.devicetype = 'chiller'", 20);
    let (status, _, created) =
        call(&hub, reqwest::Method::PUT, "/configurations/firmware285", Some(body.clone()), &[]).await;
    assert_eq!(status, 200, "{created}");
    assert_eq!(created["content"], body["content"], "content is returned exactly as sent");
    assert_eq!(created["metrics"]["queries"], body["metrics"]["queries"]);
    for d in ["c1", "c2"] {
        eventually("firmware on a chiller", || async {
            (desired_fw(&hub, d).await == "2.8.5").then_some(())
        })
        .await;
    }
    assert!(desired_fw(&hub, "o1").await.is_null());
    let metrics = eventually("system metrics", || async {
        let (_, _, c) = call(&hub, reqwest::Method::GET, "/configurations/firmware285", None, &[]).await;
        let r = c["systemMetrics"]["results"].clone();
        (r["targetedCount"] == 2 && r["appliedCount"] == 2).then_some(c)
    })
    .await;
    assert_eq!(metrics["metrics"]["results"]["current"], 0);

    // A tag change brings the third device in at once.
    tag(&hub, "o1", json!({"devicetype":"chiller"})).await;
    eventually("firmware on the newly tagged device", || async {
        (desired_fw(&hub, "o1").await == "2.8.5").then_some(())
    })
    .await;

    // Drift: a service write to an owned path is overwritten.
    service(&hub)
        .update_twin("c2", &json!({"properties":{"desired":{"firmware":{"fwVersion":"9.9.9"}}}}), "*")
        .await
        .unwrap();
    eventually("drift overwritten", || async { (desired_fw(&hub, "c2").await == "2.8.5").then_some(()) })
        .await;

    // A higher-priority configuration takes over where it targets...
    let (status, _, _) = call(
        &hub,
        reqwest::Method::PUT,
        "/configurations/firmware290",
        Some(firmware_config(
            "firmware290",
            "2.9.0",
            "tags.devicetype = 'chiller' AND tags.ring = 'early'",
            30,
        )),
        &[],
    )
    .await;
    assert_eq!(status, 200);
    eventually("takeover", || async { (desired_fw(&hub, "c1").await == "2.9.0").then_some(()) }).await;
    assert_eq!(desired_fw(&hub, "c2").await, "2.8.5");
    let twin = service(&hub).get_twin("c1").await.unwrap();
    assert_eq!(twin["configurations"]["firmware290"]["status"], "Applied");
    assert_eq!(twin["configurations"]["firmware285"]["status"], "Targeted");
    assert_eq!(
        twin["properties"]["desired"]["$metadata"]["firmware"]["fwVersion"]["$lastUpdatedBy"],
        "firmware290"
    );
    // ...and deleting it hands the path back.
    let (status, _, _) =
        call(&hub, reqwest::Method::DELETE, "/configurations/firmware290", None, &[("if-match", "*")]).await;
    assert_eq!(status, 204);
    eventually("hand-back", || async { (desired_fw(&hub, "c1").await == "2.8.5").then_some(()) }).await;
    // A device that stops matching loses the configuration's settings.
    tag(&hub, "o1", json!({"devicetype":"other"})).await;
    eventually("settings removed", || async { desired_fw(&hub, "o1").await.is_null().then_some(()) }).await;

    // The counts kept by deltas through all of the above equal a recount
    // from scratch (a restart recounts).
    let metrics = |c: &Value| (c["systemMetrics"]["results"].clone(), c["metrics"]["results"].clone());
    let expected = (json!({"targetedCount": 2, "appliedCount": 2}), json!({"current": 0}));
    let before = eventually("settled metrics", || async {
        let (_, _, c) = call(&hub, reqwest::Method::GET, "/configurations/firmware285", None, &[]).await;
        (metrics(&c) == expected).then_some(metrics(&c))
    })
    .await;
    hub.restart();
    let (_, _, after) = call(&hub, reqwest::Method::GET, "/configurations/firmware285", None, &[]).await;
    assert_eq!(metrics(&after), before);
}

#[tokio::test]
async fn configuration_crud_follows_azure() {
    let hub = TestHub::start_with(&["--config-eval-interval", "3600"]);
    let body = firmware_config("cfg", "1.0", "tags.x = 1", 5);
    let (s, _, created) =
        call(&hub, reqwest::Method::PUT, "/configurations/cfg", Some(body.clone()), &[]).await;
    assert_eq!(s, 200);
    // No twin at all: every metric still shows, at 0.
    eventually("zero metrics", || async {
        let (_, _, c) = call(&hub, reqwest::Method::GET, "/configurations/cfg", None, &[]).await;
        (c["metrics"]["results"]["current"] == 0 && c["systemMetrics"]["results"]["targetedCount"] == 0)
            .then_some(())
    })
    .await;
    let (s, h, _) = call(&hub, reqwest::Method::PUT, "/configurations/cfg", Some(body.clone()), &[]).await;
    assert_eq!(s, 409);
    assert_eq!(h["iothub-errorcode"], "ConfigurationAlreadyExists");
    // Content is immutable.
    let mut changed = created.clone();
    changed["content"]["deviceContent"]["properties.desired.firmware"]["fwVersion"] = json!("2.0");
    let (s, h, _) =
        call(&hub, reqwest::Method::PUT, "/configurations/cfg", Some(changed), &[("if-match", "*")]).await;
    assert_eq!(s, 400);
    assert_eq!(h["iothub-errorcode"], "CannotModifyImmutableConfigurationContent");
    // Updates need the current etag.
    let mut update = created.clone();
    update["priority"] = json!(7);
    let (s, _, _) = call(
        &hub,
        reqwest::Method::PUT,
        "/configurations/cfg",
        Some(update.clone()),
        &[("if-match", "\"stale\"")],
    )
    .await;
    assert_eq!(s, 412);
    let etag = format!("\"{}\"", created["etag"].as_str().unwrap());
    let (s, _, updated) =
        call(&hub, reqwest::Method::PUT, "/configurations/cfg", Some(update), &[("if-match", &etag)]).await;
    assert_eq!(s, 200);
    assert_eq!(updated["priority"], 7);
    assert_ne!(updated["etag"], created["etag"]);
    let (_, _, list) = call(&hub, reqwest::Method::GET, "/configurations", None, &[]).await;
    assert_eq!(list.as_array().unwrap().len(), 1);
    // testQueries validates without creating.
    let (s, _, tq) = call(&hub, reqwest::Method::POST, "/configurations/testQueries", Some(json!({"targetCondition":"tags.x =", "customMetricQueries":{"ok":"SELECT deviceId FROM devices","bad":"SELEC"}})), &[]).await;
    assert_eq!(s, 200);
    assert!(tq["targetConditionError"].as_str().unwrap().contains("position"), "{tq}");
    assert_eq!(tq["customMetricQueryErrors"]["ok"], "");
    assert_ne!(tq["customMetricQueryErrors"]["bad"], "");
    // Bad conditions and IoT Edge content are refused.
    let mut bad = firmware_config("bad1", "1", "tags.x = ", 1);
    let (s, h, _) = call(&hub, reqwest::Method::PUT, "/configurations/bad1", Some(bad.clone()), &[]).await;
    assert_eq!((s, h["iothub-errorcode"].to_str().unwrap()), (400, "InvalidConfigurationTargetCondition"));
    bad["targetCondition"] = json!("*");
    bad["content"] = json!({"modulesContent": {"$edgeAgent": {}}});
    let (s, _, _) = call(&hub, reqwest::Method::PUT, "/configurations/bad1", Some(bad), &[]).await;
    assert_eq!(s, 400);
    let (s, _, _) = call(&hub, reqwest::Method::DELETE, "/configurations/cfg", None, &[]).await;
    assert_eq!(s, 204);
    let (s, h, _) = call(&hub, reqwest::Method::GET, "/configurations/cfg", None, &[]).await;
    assert_eq!((s, h["iothub-errorcode"].to_str().unwrap()), (404, "ConfigurationNotFound"));
}

#[tokio::test]
async fn queries_page_with_continuations() {
    let hub = TestHub::start();
    for i in 0..7 {
        create_device(&hub, &format!("q{i}")).await;
        tag(&hub, &format!("q{i}"), json!({"n": i, "kind": if i % 2 == 0 { "even" } else { "odd" }})).await;
    }
    let q = json!({"query": "SELECT deviceId, tags.n FROM devices WHERE tags.n >= 1"});
    let mut ids = Vec::new();
    let mut continuation: Option<String> = None;
    let mut pages = 0;
    loop {
        let mut headers = vec![("x-ms-max-item-count", "4".to_owned())];
        if let Some(c) = &continuation {
            headers.push(("x-ms-continuation", c.clone()));
        }
        let h: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let (s, resp_headers, page) =
            call(&hub, reqwest::Method::POST, "/devices/query", Some(q.clone()), &h).await;
        assert_eq!(s, 200);
        assert_eq!(resp_headers["x-ms-item-type"], "Raw");
        pages += 1;
        for row in page.as_array().unwrap() {
            ids.push(row["deviceId"].as_str().unwrap().to_owned());
        }
        match resp_headers.get("x-ms-continuation") {
            Some(c) => continuation = Some(c.to_str().unwrap().to_owned()),
            None => break,
        }
    }
    ids.sort();
    assert_eq!(ids, ["q1", "q2", "q3", "q4", "q5", "q6"]);
    assert_eq!(pages, 2);
    let (_, h, groups) = call(
        &hub,
        reqwest::Method::POST,
        "/devices/query",
        Some(json!({"query":"SELECT tags.kind AS kind, COUNT() AS n FROM devices GROUP BY tags.kind"})),
        &[],
    )
    .await;
    assert_eq!(h["x-ms-item-type"], "Raw");
    let mut groups: Vec<(String, i64)> = groups
        .as_array()
        .unwrap()
        .iter()
        .map(|g| (g["kind"].as_str().unwrap().to_owned(), g["n"].as_i64().unwrap()))
        .collect();
    groups.sort();
    assert_eq!(groups, [("even".to_owned(), 4), ("odd".to_owned(), 3)]);
    let (_, h, twins) = call(
        &hub,
        reqwest::Method::POST,
        "/devices/query",
        Some(json!({"query":"select * from devices where tags.kind = 'odd'"})),
        &[],
    )
    .await;
    assert_eq!(h["x-ms-item-type"], "Twin");
    assert_eq!(twins.as_array().unwrap().len(), 3);
    let (s, h, err) = call(
        &hub,
        reqwest::Method::POST,
        "/devices/query",
        Some(json!({"query":"SELECT * FROM devices WHERE"})),
        &[],
    )
    .await;
    assert_eq!((s, h["iothub-errorcode"].to_str().unwrap()), (400, "ArgumentInvalid"));
    assert!(err["Message"].as_str().unwrap().contains("position"), "{err}");
}

#[tokio::test]
async fn a_configuration_half_applied_at_sigkill_is_completed_after_restart() {
    let mut hub = TestHub::start_with(&["--config-eval-interval", "3600"]);
    for i in 0..40 {
        let d = format!("k{i}");
        create_device(&hub, &d).await;
        tag(&hub, &d, json!({"devicetype":"chiller"})).await;
    }
    let (s, _, _) = call(
        &hub,
        reqwest::Method::PUT,
        "/configurations/fw",
        Some(firmware_config("fw", "3.0", "tags.devicetype = 'chiller'", 1)),
        &[],
    )
    .await;
    assert_eq!(s, 200);
    // Kill while the engine is (probably) mid-way; the stored configuration
    // is acknowledged, so after the restart every twin must get it.
    hub.sigkill();
    hub.restart();
    for i in 0..40 {
        let d = format!("k{i}");
        eventually("firmware after restart", || async {
            (desired_fw(&hub, &d).await == "3.0").then_some(())
        })
        .await;
    }
    let (_, _, c) = call(&hub, reqwest::Method::GET, "/configurations/fw", None, &[]).await;
    assert_eq!(c["id"], "fw");
    // Applying again changed nothing: desired $version is 2 on every twin
    // (created at 1, the configuration wrote once).
    for i in 0..40 {
        let twin = service(&hub).get_twin(&format!("k{i}")).await.unwrap();
        assert_eq!(twin["properties"]["desired"]["$version"], 2, "k{i}");
    }
}

#[tokio::test]
async fn a_hub_holds_at_most_100_configurations() {
    let hub = TestHub::start_with(&["--config-eval-interval", "3600"]);
    for i in 0..100 {
        let id = format!("c{i}");
        let (s, _, body) = call(
            &hub,
            reqwest::Method::PUT,
            &format!("/configurations/{id}"),
            Some(firmware_config(&id, "1", "*", 1)),
            &[],
        )
        .await;
        assert_eq!(s, 200, "{id}: {body}");
    }
    let (s, h, _) = call(
        &hub,
        reqwest::Method::PUT,
        "/configurations/c100",
        Some(firmware_config("c100", "1", "*", 1)),
        &[],
    )
    .await;
    assert_eq!((s, h["iothub-errorcode"].to_str().unwrap()), (413, "ConfigurationCountLimitExceeded"));
    let (_, _, list) = call(&hub, reqwest::Method::GET, "/configurations", None, &[]).await;
    assert_eq!(list.as_array().unwrap().len(), 100);
}
