//! `ferrohub configuration ...` and `ferrohub query` against a real hub:
//! the firmware-update tutorial's configuration created with the CLI
//! exactly, its effect on a chiller's twin, metrics, queries across pages,
//! and the errors. The engine's periodic pass is an hour here, so every
//! change seen is event-driven; every wait is an awaited condition under a
//! cap, never a fixed sleep.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::{Duration, Instant};

use common::{fails, ok, ok_json, TestHub};
use ferrohub_device_client::{DeviceClient, DeviceOptions};
use serde_json::{json, Value};

/// How long an awaited condition may take.
const WAIT: Duration = Duration::from_secs(30);

/// The hub every test runs: no periodic full pass within a test's life.
fn hub() -> TestHub {
    TestHub::start_with(&["--config-eval-interval", "3600"])
}

/// Runs `check` until it returns `Some`, failing after [`WAIT`].
fn eventually<T>(what: &str, mut check: impl FnMut() -> Option<T>) -> T {
    let start = Instant::now();
    loop {
        if let Some(v) = check() {
            return v;
        }
        assert!(start.elapsed() < WAIT, "timed out after {WAIT:?} waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

const CONTENT: &str = r#"{"deviceContent":{"properties.desired.firmware":{"fwVersion":"2.8.5","fwPackageURI":"https://secureuri/package.bin","fwPackageCheckValue":"123456abcde"}}}"#;

fn firmware() -> Value {
    json!({
        "fwVersion": "2.8.5",
        "fwPackageURI": "https://secureuri/package.bin",
        "fwPackageCheckValue": "123456abcde"
    })
}

/// The tutorial's five metric queries.
fn metric_queries() -> Value {
    let q = |status: &str| {
        format!(
            "SELECT deviceId FROM devices WHERE configurations.[[firmware285]].status='Applied' AND {status}"
        )
    };
    let s = |v: &str| format!("properties.reported.firmware.fwUpdateStatus='{v}'");
    json!({
        "current": q(&s("current")),
        "applying": q(&format!("( {} OR {} OR {} )", s("downloading"), s("verifying"), s("applying"))),
        "rebooting": q(&s("rebooting")),
        "error": q(&s("error")),
        "rolledback": q(&s("rolledback")),
    })
}

fn create_device(hub: &TestHub, id: &str) {
    ok(&hub.cli(&["device-identity", "create", "--device-id", id, "-o", "none"]));
}

fn tag(hub: &TestHub, id: &str, tags: &str) {
    ok(&hub.cli(&[
        "device-twin",
        "update",
        "--device-id",
        id,
        "--set",
        &format!("tags={tags}"),
        "-o",
        "none",
    ]));
}

fn show(hub: &TestHub, id: &str) -> Value {
    ok_json(&hub.cli(&["configuration", "show", "--config-id", id]))
}

/// Creates the tutorial's configuration exactly, metrics from a file.
fn create_firmware285(hub: &TestHub, dir: &std::path::Path) -> Value {
    let metrics_file = dir.join("metrics.json");
    std::fs::write(&metrics_file, json!({"queries": metric_queries()}).to_string()).unwrap();
    ok_json(&hub.cli(&[
        "configuration",
        "create",
        "--config-id",
        "firmware285",
        "--content",
        CONTENT,
        "--target-condition",
        "tags.devicetype = 'chiller'",
        "--priority",
        "20",
        "--metrics",
        metrics_file.to_str().unwrap(),
        "--hub-name",
        "myhub",
        "--resource-group",
        "tutorial-iot-hub-rg",
    ]))
}

#[test]
fn the_tutorial_configuration_reaches_a_chiller_and_its_metrics() {
    let hub = hub();
    let dir = tempfile::tempdir().unwrap();
    create_device(&hub, "chiller-1");
    tag(&hub, "chiller-1", r#"{"devicetype":"chiller"}"#);
    create_device(&hub, "other-1");
    tag(&hub, "other-1", r#"{"devicetype":"other"}"#);

    let created = create_firmware285(&hub, dir.path());
    assert_eq!(created["id"], "firmware285");
    assert_eq!(created["content"], serde_json::from_str::<Value>(CONTENT).unwrap());
    assert_eq!(created["targetCondition"], "tags.devicetype = 'chiller'");
    assert_eq!(created["priority"], 20);
    assert_eq!(created["metrics"]["queries"], metric_queries());
    assert!(created["etag"].as_str().is_some_and(|e| !e.is_empty()), "{created}");

    // The chiller gets the desired firmware; the other device does not.
    eventually("the desired firmware on chiller-1", || {
        let twin = ok_json(&hub.cli(&["device-twin", "show", "--device-id", "chiller-1"]));
        (twin["properties"]["desired"]["firmware"] == firmware()).then_some(())
    });
    let other = ok_json(&hub.cli(&["device-twin", "show", "--device-id", "other-1"]));
    assert!(other["properties"]["desired"].get("firmware").is_none(), "{other}");

    // Metrics as `configuration show` prints them.
    let config = eventually("targetedCount = appliedCount = 1", || {
        let config = show(&hub, "firmware285");
        let r = &config["systemMetrics"]["results"];
        (r["targetedCount"] == 1 && r["appliedCount"] == 1).then_some(config)
    });
    for name in ["current", "applying", "rebooting", "error", "rolledback"] {
        assert_eq!(config["metrics"]["results"][name], 0, "{name}: {config}");
    }

    // show-metric runs the metric's query and lists the device ids.
    let applied = ok_json(&hub.cli(&[
        "configuration",
        "show-metric",
        "--config-id",
        "firmware285",
        "--metric-id",
        "appliedCount",
        "--metric-type",
        "system",
        "-n",
        "myhub",
    ]));
    assert_eq!(applied["metric"], "appliedCount");
    assert_eq!(applied["query"], config["systemMetrics"]["queries"]["appliedCount"]);
    assert_eq!(applied["result"], json!(["chiller-1"]));
    let targeted = ok_json(&hub.cli(&[
        "configuration",
        "show-metric",
        "-c",
        "firmware285",
        "-m",
        "targetedCount",
        "--mt",
        "system",
    ]));
    assert_eq!(targeted["result"], json!(["chiller-1"]));
    let current = ok_json(&hub.cli(&[
        "configuration",
        "show-metric",
        "--config-id",
        "firmware285",
        "--metric-id",
        "current",
        "--metric-type",
        "user",
    ]));
    assert_eq!(current, json!({"metric": "current", "query": metric_queries()["current"], "result": []}));
    let err = fails(&hub.cli(&[
        "configuration",
        "show-metric",
        "-c",
        "firmware285",
        "-m",
        "current",
        "--mt",
        "system",
    ]));
    assert!(err.contains("system metric 'current' is not defined"), "{err}");

    // The twins as a query sees them.
    let twin_query = ok_json(&hub.cli(&[
        "query",
        "-q",
        "SELECT deviceId, properties.desired.firmware.fwVersion AS fw FROM devices WHERE tags.devicetype = 'chiller'",
    ]));
    assert_eq!(twin_query, json!([{"deviceId": "chiller-1", "fw": "2.8.5"}]));

    // The chiller reports its progress over MQTT (the Rust device SDK);
    // the `current` metric and the query see it.
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let cs = ok(&hub.cli(&["device-identity", "connection-string", "show", "-d", "chiller-1", "-o", "tsv"]));
    let device = rt.block_on(async {
        let options = DeviceOptions {
            mqtt_port: Some(hub.mqtt_port()),
            ca_file: Some(hub.ca_file()),
            ..Default::default()
        };
        let client = DeviceClient::connect(cs.trim(), options).await.unwrap();
        let reported = json!({"firmware": {"currentFwVersion": "2.8.5", "fwUpdateStatus": "current"}});
        tokio::time::timeout(WAIT, client.update_reported(&reported)).await.unwrap().unwrap();
        client
    });
    eventually("the current metric at 1", || {
        let config = show(&hub, "firmware285");
        (config["metrics"]["results"]["current"] == 1).then_some(())
    });
    let current = ok_json(&hub.cli(&["configuration", "show-metric", "-c", "firmware285", "-m", "current"]));
    assert_eq!(current["result"], json!(["chiller-1"]));
    let by_status = ok_json(&hub.cli(&[
        "query",
        "-q",
        "SELECT properties.reported.firmware.fwUpdateStatus AS status, COUNT() AS n FROM devices \
         WHERE tags.devicetype = 'chiller' GROUP BY properties.reported.firmware.fwUpdateStatus",
    ]));
    assert_eq!(by_status, json!([{"status": "current", "n": 1}]));
    rt.block_on(device.close());

    // Tagging the other device brings it in at once.
    tag(&hub, "other-1", r#"{"devicetype":"chiller"}"#);
    eventually("appliedCount = 2 after tagging", || {
        let r = ok_json(&hub.cli(&[
            "configuration",
            "show-metric",
            "-c",
            "firmware285",
            "-m",
            "appliedCount",
            "--mt",
            "system",
        ]));
        let mut ids: Vec<String> =
            r["result"].as_array().unwrap().iter().map(|v| v.as_str().unwrap().to_owned()).collect();
        ids.sort();
        (ids == ["chiller-1", "other-1"]).then_some(())
    });
}

#[test]
fn configuration_crud_with_az_shapes_outputs_and_etags() {
    let hub = hub();
    let dir = tempfile::tempdir().unwrap();
    create_firmware285(&hub, dir.path());

    // The wrapped shapes of --content and --metrics, labels, an upper-case
    // id (lowercased, as az does).
    let wrapped_content = json!({"content": serde_json::from_str::<Value>(CONTENT).unwrap()}).to_string();
    let wrapped_metrics =
        json!({"metrics": {"queries": {"all": "SELECT deviceId FROM devices"}}}).to_string();
    let second = ok_json(&hub.cli(&[
        "configuration",
        "create",
        "-c",
        "Second",
        "-k",
        &wrapped_content,
        "-t",
        "tags.ring = 'early'",
        "--pri",
        "5",
        "-m",
        &wrapped_metrics,
        "--labels",
        r#"{"owner":"ops"}"#,
        "-g",
        "rg",
        "--name",
        "hub",
    ]));
    assert_eq!(second["id"], "second");
    assert_eq!(second["content"], serde_json::from_str::<Value>(CONTENT).unwrap());
    assert_eq!(second["metrics"]["queries"], json!({"all": "SELECT deviceId FROM devices"}));
    assert_eq!(second["labels"], json!({"owner": "ops"}));
    assert_eq!(second["priority"], 5);

    // Creating an existing id fails.
    let err = fails(&hub.cli(&["configuration", "create", "-c", "second", "-k", CONTENT]));
    assert!(err.contains("ConfigurationAlreadyExists"), "{err}");
    let err = fails(&hub.cli(&["configuration", "create", "-c", "bad", "-k", r#"{"modulesContent":{}}"#]));
    assert!(err.contains("deviceContent or moduleContent"), "{err}");
    let err = fails(&hub.cli(&["configuration", "create", "-c", "bad", "-k", CONTENT, "-m", r#"{"x":{}}"#]));
    assert!(err.contains("'queries'"), "{err}");

    // list, --top, table and tsv.
    let list = ok_json(&hub.cli(&["configuration", "list"]));
    let mut ids: Vec<&str> = list.as_array().unwrap().iter().map(|c| c["id"].as_str().unwrap()).collect();
    ids.sort_unstable();
    assert_eq!(ids, ["firmware285", "second"]);
    assert_eq!(ok_json(&hub.cli(&["configuration", "list", "--top", "1"])).as_array().unwrap().len(), 1);
    let table = ok(&hub.cli(&["configuration", "list", "-o", "table"]));
    let header = table.lines().next().unwrap();
    assert!(header.contains("Priority") && header.contains("TargetCondition"), "{table}");
    assert!(
        table.contains("tags.devicetype = 'chiller'") && table.contains("tags.ring = 'early'"),
        "{table}"
    );
    let tsv = ok(&hub.cli(&["configuration", "show", "-c", "second", "-o", "tsv"]));
    assert!(tsv.contains("\tsecond\t") && tsv.contains("tags.ring = 'early'"), "{tsv}");

    // update: --set and flags, etag default `*`, a stale etag refused.
    let before = show(&hub, "second");
    let updated = ok_json(&hub.cli(&[
        "configuration",
        "update",
        "--config-id",
        "second",
        "--set",
        "priority=7",
        "--set",
        "labels.team=fw",
        "--set",
        r#"metrics.queries.none=SELECT deviceId FROM devices WHERE tags.x = 'y'"#,
        "--target-condition",
        "tags.ring = 'late'",
    ]));
    assert_eq!(updated["priority"], 7);
    assert_eq!(updated["labels"], json!({"owner": "ops", "team": "fw"}));
    assert_eq!(updated["targetCondition"], "tags.ring = 'late'");
    assert_eq!(updated["metrics"]["queries"]["none"], "SELECT deviceId FROM devices WHERE tags.x = 'y'");
    assert_eq!(updated["content"], before["content"]);
    assert_ne!(updated["etag"], before["etag"]);
    let stale = before["etag"].as_str().unwrap();
    let err =
        fails(&hub.cli(&["configuration", "update", "-c", "second", "--priority", "9", "--etag", stale]));
    assert!(err.contains("PreconditionFailed"), "{err}");
    let etag = updated["etag"].as_str().unwrap();
    let again = ok_json(&hub.cli(&[
        "configuration",
        "update",
        "-c",
        "second",
        "--priority",
        "9",
        "--labels",
        r#"{"only":"this"}"#,
        "-e",
        etag,
    ]));
    assert_eq!(again["priority"], 9);
    assert_eq!(again["labels"], json!({"only": "this"}));
    let err = fails(&hub.cli(&[
        "configuration",
        "update",
        "-c",
        "second",
        "--set",
        r#"content.deviceContent={"properties.desired.other":1}"#,
    ]));
    assert!(err.contains("CannotModifyImmutableConfigurationContent"), "{err}");

    // delete: a stale etag refused, then deleted, then gone.
    let err = fails(&hub.cli(&["configuration", "delete", "-c", "second", "--etag", stale]));
    assert!(err.contains("PreconditionFailed"), "{err}");
    let current_etag = show(&hub, "second")["etag"].as_str().unwrap().to_owned();
    let out = ok(&hub.cli(&["configuration", "delete", "-c", "second", "--etag", &current_etag]));
    assert_eq!(out, "", "delete prints nothing");
    let err = fails(&hub.cli(&["configuration", "show", "--config-id", "second"]));
    assert!(err.contains("ConfigurationNotFound"), "{err}");
    let err = fails(&hub.cli(&["configuration", "delete", "--config-id", "second"]));
    assert!(err.contains("ConfigurationNotFound"), "{err}");
    let err = fails(&hub.cli(&["configuration", "show-metric", "-c", "second", "-m", "all"]));
    assert!(err.contains("ConfigurationNotFound"), "{err}");
    ok(&hub.cli(&["configuration", "delete", "-c", "firmware285"]));
    assert_eq!(ok_json(&hub.cli(&["configuration", "list"])), json!([]));
}

#[test]
fn query_prints_every_page_in_each_output_format() {
    let hub = hub();
    let ids: Vec<String> = (1..=7).map(|i| format!("dev-{i}")).collect();
    for id in &ids {
        create_device(&hub, id);
    }
    tag(&hub, "dev-1", r#"{"devicetype":"chiller"}"#);

    // COUNT, as az prints it.
    let count = ok_json(&hub.cli(&["query", "-q", "SELECT COUNT() AS n FROM devices", "--hub-name", "h"]));
    assert_eq!(count, json!([{"n": 7}]));

    // Seven rows in pages of two: the CLI follows the continuation tokens.
    let rows = ok_json(&hub.cli(&["query", "-q", "SELECT deviceId FROM devices", "--page-size", "2"]));
    let mut got: Vec<String> =
        rows.as_array().unwrap().iter().map(|r| r["deviceId"].as_str().unwrap().to_owned()).collect();
    got.sort();
    assert_eq!(got, ids);

    // Whole twins across pages; --top caps the rows, -1 means all.
    let twins = ok_json(&hub.cli(&["query", "--query-command", "SELECT * FROM devices", "--page-size", "3"]));
    assert_eq!(twins.as_array().unwrap().len(), 7);
    assert!(twins[0]["properties"]["desired"].is_object(), "{}", twins[0]);
    let top =
        ok_json(&hub.cli(&["query", "-q", "SELECT deviceId FROM devices", "--top", "3", "--page-size", "2"]));
    assert_eq!(top.as_array().unwrap().len(), 3);
    let all = ok_json(&hub.cli(&["query", "-q", "SELECT deviceId FROM devices", "--top", "-1"]));
    assert_eq!(all.as_array().unwrap().len(), 7);
    fails(&hub.cli(&["query", "-q", "SELECT deviceId FROM devices", "--top", "0"]));

    // table and tsv.
    let q = "SELECT deviceId, tags.devicetype AS kind FROM devices WHERE tags.devicetype = 'chiller'";
    assert_eq!(ok(&hub.cli(&["query", "-q", q, "-o", "tsv"])), "dev-1\tchiller\n");
    let table = ok(&hub.cli(&["query", "-q", q, "-o", "table"]));
    assert_eq!(table, "DeviceId  Kind\n--------  -------\ndev-1     chiller\n");
    assert_eq!(ok(&hub.cli(&["query", "-q", "SELECT COUNT() AS n FROM devices", "-o", "tsv"])), "7\n");

    // Errors: a syntax error names the position.
    let err = fails(&hub.cli(&["query", "-q", "SELECT * FROM devices WHERE"]));
    assert!(err.contains("position"), "{err}");
}

#[test]
fn the_service_client_follows_continuations_and_reports_the_item_type() {
    let hub = hub();
    for i in 1..=5 {
        create_device(&hub, &format!("d{i}"));
    }
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(async {
        let client = ferrohub_service_client::ServiceClient::new(
            &hub.connection_string(),
            ferrohub_service_client::ClientOptions {
                port: Some(hub.https_port()),
                ca_file: Some(hub.ca_file()),
                ..Default::default()
            },
        )
        .unwrap();
        let r = client.query("SELECT * FROM devices", Some(2)).await.unwrap();
        assert_eq!((r.items.len(), r.pages), (5, 3));
        assert_eq!(r.item_type.as_deref(), Some("Twin"));
        let r = client.query("SELECT deviceId FROM devices", Some(5)).await.unwrap();
        assert_eq!((r.items.len(), r.pages), (5, 1), "no continuation on the last page");
        assert_eq!(r.item_type.as_deref(), Some("Raw"));
        let r = client.query_limited("SELECT deviceId FROM devices", Some(2), Some(3)).await.unwrap();
        assert_eq!((r.items.len(), r.pages), (3, 2));
        let first = client.query_page("SELECT deviceId FROM devices", Some(4), None).await.unwrap();
        assert_eq!(first.items.len(), 4);
        let token = first.continuation.expect("a token when more rows exist");
        let rest = client.query_page("SELECT deviceId FROM devices", Some(4), Some(&token)).await.unwrap();
        assert_eq!((rest.items.len(), rest.continuation), (1, None));

        // testQueries: empty strings mean valid.
        let checked = client
            .test_configuration_queries(&json!({
                "targetCondition": "tags.devicetype = 'chiller'",
                "customMetricQueries": {"good": "SELECT deviceId FROM devices", "bad": "SELECT FROM"}
            }))
            .await
            .unwrap();
        assert_eq!(checked["targetConditionError"], "");
        assert_eq!(checked["customMetricQueryErrors"]["good"], "");
        assert!(
            checked["customMetricQueryErrors"]["bad"].as_str().unwrap().contains("position"),
            "{checked}"
        );

        // CRUD round trip through the client.
        let body = json!({
            "id": "c1",
            "content": {"deviceContent": {"properties.desired.x": 1}},
            "targetCondition": "*",
            "priority": 1
        });
        let created = client.create_configuration(&body).await.unwrap();
        let err = client.create_configuration(&body).await.unwrap_err();
        assert_eq!(err.code(), Some("ConfigurationAlreadyExists"));
        let mut changed = created.clone();
        changed["priority"] = json!(2);
        let updated = client.update_configuration(&changed, created["etag"].as_str().unwrap()).await.unwrap();
        assert_eq!(updated["priority"], 2);
        assert_eq!(client.get_configuration("c1").await.unwrap()["priority"], 2);
        assert_eq!(client.list_configurations(Some(10)).await.unwrap().len(), 1);
        client.delete_configuration("c1", "*").await.unwrap();
        let err = client.get_configuration("c1").await.unwrap_err();
        assert_eq!(err.code(), Some("ConfigurationNotFound"));
    });
}
