//! `ferrohub simulate` against a real hub: simulated chillers follow a
//! configuration carrying a real, signed image to `current`; with
//! `--failure-rate 1.0` every one ends `rolledback`. Every wait polls under
//! a cap; there are no fixed sleeps.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::{Duration, Instant};

use common::mqtt::service;
use common::sim::{upload_image, Simulator};
use common::{ok_json, TestHub};
use serde_json::{json, Value};

/// The cap on every wait (debug builds on a loaded CI machine).
const WAIT: Duration = Duration::from_secs(120);

/// Uploads a random 200 KiB image; returns its desired `firmware`.
fn upload(hub: &TestHub, dir: &std::path::Path, version: &str) -> Value {
    upload_image(hub, dir, version, 200 * 1024);
    ok_json(&hub.cli(&["firmware", "desired", "--version", version]))
}

/// Creates a configuration for chillers with `desired` and a custom metric
/// `name` counting devices at `status`.
async fn configure(hub: &TestHub, id: &str, desired: &Value, name: &str, condition: &str) {
    let query = format!(
        "SELECT deviceId FROM devices WHERE configurations.[[{id}]].status='Applied' AND {condition}"
    );
    let config = json!({
        "id": id,
        "content": {"deviceContent": {"properties.desired.firmware": desired}},
        "targetCondition": "tags.devicetype='chiller'",
        "priority": 20,
        "metrics": {"queries": {name: query}},
    });
    service(hub).create_configuration(&config).await.unwrap();
}

/// Polls the configuration's custom metric `name` until it reaches `want`.
async fn await_metric(hub: &TestHub, sim: &Simulator, id: &str, name: &str, want: u64) {
    let client = service(hub);
    let start = Instant::now();
    loop {
        let config = client.get_configuration(id).await.unwrap();
        let got = config["metrics"]["results"][name].as_u64().unwrap_or(0);
        if got == want {
            return;
        }
        assert!(
            start.elapsed() < WAIT,
            "metric {name} is {got}, not {want}; configuration: {config}\nsimulator log:\n{}",
            sim.log()
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

#[tokio::test]
async fn twenty_simulated_chillers_update_to_a_real_image() {
    let hub = TestHub::start();
    let dir = tempfile::tempdir().unwrap();
    let desired = upload(&hub, dir.path(), "2.8.5");
    let sim = Simulator::spawn(
        &hub,
        dir.path(),
        "sim",
        &[
            "--devices",
            "20",
            "--prefix",
            "sim",
            "--tags",
            r#"{"devicetype":"chiller"}"#,
            "--failure-rate",
            "0.0",
        ],
    );
    configure(
        &hub,
        "fw-285",
        &desired,
        "current",
        "properties.reported.firmware.fwUpdateStatus='current' \
         AND properties.reported.firmware.currentFwVersion='2.8.5'",
    )
    .await;
    await_metric(&hub, &sim, "fw-285", "current", 20).await;

    let twin = service(&hub).get_twin("sim-7").await.unwrap();
    assert_eq!(twin["tags"]["devicetype"], "chiller");
    let fw = &twin["properties"]["reported"]["firmware"];
    assert_eq!(fw["pendingFwVersion"], "", "{fw}");
    assert!(fw["lastFwUpdateEndTime"].as_str().unwrap().len() > 10, "{fw}");

    let log = sim.stop(WAIT);
    let summary = log.lines().find(|l| l.starts_with("summary ")).unwrap_or_else(|| panic!("{log}"));
    assert!(summary.contains("devices=20") && summary.contains("updated=20"), "{summary}");
}

#[tokio::test]
async fn failing_downloads_end_rolled_back() {
    let hub = TestHub::start();
    let dir = tempfile::tempdir().unwrap();
    let desired = upload(&hub, dir.path(), "3.0.0");
    let sim = Simulator::spawn(
        &hub,
        dir.path(),
        "bad",
        &[
            "--devices",
            "4",
            "--prefix",
            "bad",
            "--tags",
            r#"{"devicetype":"chiller"}"#,
            "--failure-rate",
            "1.0",
        ],
    );
    configure(
        &hub,
        "fw-300",
        &desired,
        "rolledback",
        "properties.reported.firmware.fwUpdateStatus='rolledback'",
    )
    .await;
    await_metric(&hub, &sim, "fw-300", "rolledback", 4).await;
    for n in 1..=4 {
        let twin = service(&hub).get_twin(&format!("bad-{n}")).await.unwrap();
        let fw = &twin["properties"]["reported"]["firmware"];
        assert_eq!(fw["currentFwVersion"], "1.0.0", "{fw}");
        let sub = fw["fwUpdateSubstatus"].as_str().unwrap();
        assert!(sub.contains("checksum") || sub.contains("download failed"), "{fw}");
    }
    let log = sim.stop(WAIT);
    assert!(log.lines().any(|l| l.starts_with("summary ") && l.contains("rolledback=4")), "{log}");
}

#[tokio::test]
async fn crashes_while_applying_roll_back_and_offline_devices_disconnect() {
    let hub = TestHub::start();
    let dir = tempfile::tempdir().unwrap();
    let desired = upload(&hub, dir.path(), "4.0.0");
    let crashing = Simulator::spawn(
        &hub,
        dir.path(),
        "crash",
        &[
            "--devices",
            "3",
            "--prefix",
            "crash",
            "--tags",
            r#"{"devicetype":"chiller"}"#,
            "--failure-rate",
            "0",
            "--crash-rate",
            "1.0",
        ],
    );
    let offline_dir = dir.path().join("offline");
    std::fs::create_dir_all(&offline_dir).unwrap();
    let offline = Simulator::spawn(
        &hub,
        &offline_dir,
        "gone",
        &[
            "--devices",
            "3",
            "--prefix",
            "gone",
            "--tags",
            r#"{"devicetype":"chiller"}"#,
            "--failure-rate",
            "0",
            "--offline-after-update-rate",
            "1.0",
        ],
    );
    configure(
        &hub,
        "fw-400",
        &desired,
        "rolledback",
        "properties.reported.firmware.fwUpdateStatus='rolledback'",
    )
    .await;
    await_metric(&hub, &crashing, "fw-400", "rolledback", 3).await;
    let client = service(&hub);
    for n in 1..=3 {
        let twin = client.get_twin(&format!("crash-{n}")).await.unwrap();
        let fw = &twin["properties"]["reported"]["firmware"];
        assert_eq!(fw["currentFwVersion"], "1.0.0", "{fw}");
        assert!(fw["fwUpdateSubstatus"].as_str().unwrap().contains("crashed"), "{fw}");
    }
    // The offline devices report current at 4.0.0, then disconnect.
    let start = Instant::now();
    for n in 1..=3 {
        loop {
            let twin = client.get_twin(&format!("gone-{n}")).await.unwrap();
            let fw = &twin["properties"]["reported"]["firmware"];
            if fw["currentFwVersion"] == "4.0.0" && twin["connectionState"] == "Disconnected" {
                break;
            }
            assert!(start.elapsed() < WAIT, "gone-{n}: {twin}\nsimulator log:\n{}", offline.log());
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
    }
    let log = offline.stop(WAIT);
    assert!(log.lines().any(|l| l.starts_with("summary ") && l.contains("offline=3")), "{log}");
    let log = crashing.stop(WAIT);
    assert!(log.lines().any(|l| l.starts_with("summary ") && l.contains("crashes=3")), "{log}");
}
