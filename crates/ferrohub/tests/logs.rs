//! `serve --log-format json`: every line the hub logs is one JSON object a
//! log collector can read, with its time, level, target and message.
#![allow(clippy::unwrap_used)]

mod common;

use common::mqtt::create_device;
use common::TestHub;
use serde_json::Value;

#[tokio::test]
async fn json_logs_are_one_object_per_line() {
    let mut hub = TestHub::start_with(&["--log-format", "json"]);
    create_device(&hub, "logged").await;
    // A clean stop logs "shutting down" last, so the whole log is written.
    assert!(hub.stop().is_some_and(|s| s.success()), "{}", hub.log());
    let log = hub.log();
    let lines: Vec<&str> = log.lines().filter(|l| !l.trim().is_empty()).collect();
    assert!(lines.len() >= 3, "{log}");
    let records: Vec<Value> =
        lines.iter().map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}"))).collect();
    for r in &records {
        assert!(r["timestamp"].is_string() && r["level"].is_string() && r["target"].is_string(), "{r}");
        assert!(r["fields"]["message"].is_string(), "{r}");
    }
    let messages: Vec<&str> = records.iter().map(|r| r["fields"]["message"].as_str().unwrap()).collect();
    assert!(messages.contains(&"hub ready"), "{messages:?}");
    assert_eq!(messages.last(), Some(&"shutting down"), "{messages:?}");
    let ready = records.iter().find(|r| r["fields"]["message"] == "hub ready").unwrap();
    assert!(ready["fields"]["https"].as_u64().is_some(), "fields stay typed: {ready}");
}
