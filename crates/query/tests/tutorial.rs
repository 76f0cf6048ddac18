//! The queries of Azure's "Implement a device firmware update process"
//! tutorial, exactly as its back end sends them, over a fleet caught in the
//! middle of a rollout.

#![allow(clippy::unwrap_used)]

mod common;

use common::{desired_firmware, firmware, twin};
use ferrohub_query::{execute, matches, parse_condition, parse_query, ItemType};
use serde_json::{json, Value};

const TARGET_CONDITION: &str = "tags.devicetype = 'chiller'";

fn metric_query(status_clause: &str) -> String {
    format!("SELECT deviceId FROM devices WHERE configurations.[[firmware285]].status='Applied' AND {status_clause}")
}

fn metric_queries() -> Vec<(&'static str, String)> {
    vec![
        ("current", metric_query("properties.reported.firmware.fwUpdateStatus='current'")),
        (
            "applying",
            metric_query(
                "( properties.reported.firmware.fwUpdateStatus='downloading' OR \
                 properties.reported.firmware.fwUpdateStatus='verifying' OR \
                 properties.reported.firmware.fwUpdateStatus='applying')",
            ),
        ),
        ("rebooting", metric_query("properties.reported.firmware.fwUpdateStatus='rebooting'")),
        ("error", metric_query("properties.reported.firmware.fwUpdateStatus='error'")),
        ("rolledback", metric_query("properties.reported.firmware.fwUpdateStatus='rolledback'")),
    ]
}

fn fleet() -> Vec<Value> {
    let chiller = json!({"devicetype": "chiller"});
    let mut twins = Vec::new();
    for (id, status) in [
        ("c1", "current"),
        ("c2", "downloading"),
        ("c3", "verifying"),
        ("c4", "applying"),
        ("c5", "rebooting"),
        ("c6", "error"),
        ("c7", "rolledback"),
    ] {
        let version = if status == "current" { "2.8.5" } else { "1.0.0" };
        twins.push(
            twin(id)
                .tags(chiller.clone())
                .desired(desired_firmware())
                .reported(firmware(status, version))
                .config("firmware285", "Applied"),
        );
    }
    // Targeted by firmware285, but a higher-priority configuration won.
    twins.push(
        twin("c8")
            .tags(chiller.clone())
            .reported(firmware("current", "3.0.0"))
            .config("firmware285", "Targeted"),
    );
    // Not a chiller.
    twins.push(twin("s1").tags(json!({"devicetype": "sensor"})).reported(firmware("current", "1.0.0")));
    // Just targeted, has not reported anything yet.
    twins.push(twin("c9").tags(chiller).desired(desired_firmware()).config("firmware285", "Applied"));
    twins.iter().map(|t| t.render()).collect()
}

fn ids(items: &[Value]) -> Vec<&str> {
    items.iter().map(|i| i["deviceId"].as_str().unwrap()).collect()
}

#[test]
fn the_five_metric_queries_count_each_state() {
    let rows = fleet();
    let expected: [(&str, &[&str]); 5] = [
        ("current", &["c1"]),
        ("applying", &["c2", "c3", "c4"]),
        ("rebooting", &["c5"]),
        ("error", &["c6"]),
        ("rolledback", &["c7"]),
    ];
    for ((name, text), (expected_name, expected_ids)) in metric_queries().iter().zip(expected) {
        assert_eq!(*name, expected_name);
        let query = parse_query(text).unwrap();
        let result = execute(&query, rows.iter()).unwrap();
        assert_eq!(result.item_type, ItemType::Raw);
        assert_eq!(ids(&result.items), expected_ids, "{name}");
        // Each row is exactly {"deviceId": …}.
        assert!(result.items.iter().all(|i| i.as_object().unwrap().len() == 1));
        // The streaming form the configuration engine uses gives the same count.
        let filter = query.filter.as_ref().unwrap();
        assert_eq!(rows.iter().filter(|r| matches(filter, r)).count(), expected_ids.len(), "{name}");
    }
}

#[test]
fn the_exact_tutorial_texts_parse() {
    let current = "SELECT deviceId FROM devices WHERE configurations.[[firmware285]].status='Applied' AND properties.reported.firmware.fwUpdateStatus='current'";
    let applying = "SELECT deviceId FROM devices WHERE configurations.[[firmware285]].status='Applied' AND ( properties.reported.firmware.fwUpdateStatus='downloading' OR properties.reported.firmware.fwUpdateStatus='verifying' OR properties.reported.firmware.fwUpdateStatus='applying')";
    let rows = fleet();
    assert_eq!(ids(&execute(&parse_query(current).unwrap(), rows.iter()).unwrap().items), ["c1"]);
    assert_eq!(
        ids(&execute(&parse_query(applying).unwrap(), rows.iter()).unwrap().items),
        ["c2", "c3", "c4"]
    );
}

#[test]
fn target_condition_and_system_metrics() {
    let rows = fleet();
    let target = parse_condition(TARGET_CONDITION).unwrap();
    let targeted: Vec<&str> =
        rows.iter().filter(|r| matches(&target, r)).map(|r| r["deviceId"].as_str().unwrap()).collect();
    assert_eq!(targeted, ["c1", "c2", "c3", "c4", "c5", "c6", "c7", "c8", "c9"]);
    let applied = parse_condition("configurations.[[firmware285]].status = 'Applied'").unwrap();
    assert_eq!(rows.iter().filter(|r| matches(&applied, r)).count(), 8);
    // `*` targets everything.
    let all = parse_condition("*").unwrap();
    assert!(rows.iter().all(|r| matches(&all, r)));
    // The same counts as queries.
    let count = |q: &str| execute(&parse_query(q).unwrap(), rows.iter()).unwrap().items;
    assert_eq!(
        count(&format!("SELECT COUNT() AS targetedCount FROM devices WHERE {TARGET_CONDITION}")),
        [json!({"targetedCount": 9})]
    );
    assert_eq!(
        count("SELECT COUNT() AS appliedCount FROM devices WHERE configurations.[[firmware285]].status = 'Applied'"),
        [json!({"appliedCount": 8})]
    );
}

#[test]
fn grouping_the_rollout_by_status() {
    let rows = fleet();
    let q = parse_query(
        "SELECT properties.reported.firmware.fwUpdateStatus AS status, COUNT() AS n FROM devices \
         GROUP BY properties.reported.firmware.fwUpdateStatus",
    )
    .unwrap();
    let result = execute(&q, rows.iter()).unwrap();
    assert_eq!(result.item_type, ItemType::Raw);
    assert_eq!(
        Value::Array(result.items),
        json!([
            {"status": "current", "n": 3},
            {"status": "downloading", "n": 1},
            {"status": "verifying", "n": 1},
            {"status": "applying", "n": 1},
            {"status": "rebooting", "n": 1},
            {"status": "error", "n": 1},
            {"status": "rolledback", "n": 1},
            {"n": 1},
        ])
    );
    // Restricted to the configuration's devices.
    let q = parse_query(
        "SELECT properties.reported.firmware.fwUpdateStatus AS status, COUNT() AS n FROM devices \
         WHERE configurations.[[firmware285]].status = 'Applied' AND IS_DEFINED(properties.reported.firmware) \
         GROUP BY properties.reported.firmware.fwUpdateStatus",
    )
    .unwrap();
    let total: u64 = execute(&q, rows.iter()).unwrap().items.iter().map(|r| r["n"].as_u64().unwrap()).sum();
    assert_eq!(total, 7);
}
