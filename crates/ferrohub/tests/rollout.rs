//! `ferrohub firmware rollout ...` against a real hub and `ferrohub
//! simulate`: waves advance only once the started devices reach the success
//! threshold; a failing fleet halts the rollout after its first wave; the
//! rollout's state survives a hub restart. Every wait polls under a cap;
//! there are no fixed sleeps.
#![allow(clippy::unwrap_used)]

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::mqtt::service;
use common::sim::Simulator;
use common::{fails, ok_json, TestHub};
use rand::RngCore;
use serde_json::Value;

/// The cap on every wait (debug builds on a loaded CI machine).
const WAIT: Duration = Duration::from_secs(180);

/// `ferrohub simulate` with `devices` chillers named `<prefix>-n`.
fn simulate(hub: &TestHub, dir: &Path, devices: usize, prefix: &str, failure_rate: &str) -> Simulator {
    let devices = devices.to_string();
    let extra = ["--devices", &devices, "--prefix", prefix, "--tags", r#"{"devicetype":"chiller"}"#];
    Simulator::spawn(hub, dir, prefix, &[&extra[..], &["--failure-rate", failure_rate]].concat())
}

/// Uploads a random image; returns its SHA-256.
fn upload(hub: &TestHub, dir: &Path, version: &str) -> String {
    let mut image = vec![0u8; 64 * 1024];
    rand::thread_rng().fill_bytes(&mut image);
    let file = dir.join(format!("image-{version}.bin"));
    std::fs::write(&file, &image).unwrap();
    let record = ok_json(&hub.cli(&[
        "firmware",
        "upload",
        "--version",
        version,
        "--device-type",
        "chiller",
        file.to_str().unwrap(),
    ]));
    record["sha256"].as_str().unwrap().to_owned()
}

/// Waits until every `<prefix>-<n>` has reported its firmware (it is
/// registered, tagged and connected).
async fn await_fleet(hub: &TestHub, sim: &Simulator, prefix: &str, devices: usize) {
    let client = service(hub);
    let start = Instant::now();
    for n in 1..=devices {
        loop {
            if let Ok(twin) = client.get_twin(&format!("{prefix}-{n}")).await {
                if twin["tags"]["devicetype"] == "chiller"
                    && twin["properties"]["reported"]["firmware"]["fwUpdateStatus"].is_string()
                {
                    break;
                }
            }
            assert!(start.elapsed() < WAIT, "{prefix}-{n} never appeared\nsimulator log:\n{}", sim.log());
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
    }
}

fn rollout_cli(hub: &TestHub, action: &str, id: &str) -> Value {
    ok_json(&hub.cli(&["firmware", "rollout", action, "--id", id]))
}

/// Polls `rollout show` until `pred` holds; returns the rollout.
async fn await_rollout(
    hub: &TestHub,
    log: &dyn Fn() -> String,
    id: &str,
    pred: impl Fn(&Value) -> bool,
) -> Value {
    let start = Instant::now();
    loop {
        let rollout = rollout_cli(hub, "show", id);
        if pred(&rollout) {
            return rollout;
        }
        assert!(start.elapsed() < WAIT, "rollout: {rollout}\nlog:\n{}", log());
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

fn create(hub: &TestHub, id: &str, sha: &str, waves: &str, success: &str, failure: &str) -> Value {
    ok_json(&hub.cli(&[
        "firmware",
        "rollout",
        "create",
        "--id",
        id,
        "--sha256",
        sha,
        "--target-condition",
        "tags.devicetype='chiller'",
        "--waves",
        waves,
        "--success-threshold",
        success,
        "--failure-threshold",
        failure,
    ]))
}

fn devices(rollout: &Value) -> Vec<String> {
    rollout["devices"].as_array().unwrap().iter().map(|d| d.as_str().unwrap().to_owned()).collect()
}

async fn desired_firmware(hub: &TestHub, device: &str) -> Value {
    service(hub).get_twin(device).await.unwrap()["properties"]["desired"]["firmware"].clone()
}

#[tokio::test]
async fn waves_advance_on_the_success_threshold_until_the_rollout_succeeds() {
    let hub = TestHub::start();
    let dir = tempfile::tempdir().unwrap();
    let sha = upload(&hub, dir.path(), "2.8.5");
    let sim = simulate(&hub, dir.path(), 10, "ok", "0.0");
    await_fleet(&hub, &sim, "ok", 10).await;

    // Bad inputs are refused with one-line errors.
    for (waves, success) in [("50,10,100", "90"), ("10,50", "90"), ("10,100", "0")] {
        let out = hub.cli(&[
            "firmware",
            "rollout",
            "create",
            "--id",
            "bad",
            "--sha256",
            &sha,
            "--target-condition",
            "tags.devicetype='chiller'",
            "--waves",
            waves,
            "--success-threshold",
            success,
        ]);
        fails(&out);
    }

    let created = create(&hub, "r285", &sha, "20%,50%,100%", "100%", "50%");
    assert_eq!(created["state"], "running");
    assert_eq!(created["currentWave"], 1);
    assert_eq!(created["configurationId"], "rollout-r285");
    let order = devices(&created);
    assert_eq!(order.len(), 10);
    // Hold it at wave 1: the first two devices update, no one else is
    // handed the image.
    assert_eq!(rollout_cli(&hub, "pause", "r285")["state"], "paused");
    let paused = await_rollout(&hub, &|| sim.log(), "r285", |r| r["progress"][0]["succeeded"] == 2).await;
    assert_eq!(paused["currentWave"], 1);
    assert_eq!(paused["state"], "paused");
    for device in &order[2..] {
        assert!(desired_firmware(&hub, device).await.is_null(), "{device} was handed the image early");
    }
    assert_eq!(desired_firmware(&hub, &order[0]).await["fwVersion"], "2.8.5");

    // Resumed, every wave completes.
    assert_eq!(rollout_cli(&hub, "resume", "r285")["state"], "running");
    let done = await_rollout(&hub, &|| sim.log(), "r285", |r| r["state"] == "succeeded").await;
    assert_eq!(done["currentWave"], 3);
    let succeeded: Vec<u64> =
        done["progress"].as_array().unwrap().iter().map(|p| p["succeeded"].as_u64().unwrap()).collect();
    assert_eq!(succeeded, vec![2, 3, 5], "{done}");
    for n in 1..=10 {
        let twin = service(&hub).get_twin(&format!("ok-{n}")).await.unwrap();
        assert_eq!(twin["properties"]["reported"]["firmware"]["currentFwVersion"], "2.8.5", "{twin}");
    }
    // The tutorial's metrics on the rollout's configuration.
    let config = service(&hub).get_configuration("rollout-r285").await.unwrap();
    assert_eq!(config["metrics"]["results"]["current"], 10, "{config}");
    assert_eq!(config["metrics"]["results"]["rolledback"], 0, "{config}");

    // Listed; a finished rollout cannot be resumed; its image cannot be deleted.
    let list = ok_json(&hub.cli(&["firmware", "rollout", "list"]));
    assert_eq!(list.as_array().unwrap().len(), 1);
    fails(&hub.cli(&["firmware", "rollout", "resume", "--id", "r285"]));
    fails(&hub.cli(&["firmware", "delete", "--sha256", &sha]));
}

#[tokio::test]
async fn a_failing_fleet_halts_after_the_first_wave() {
    let hub = TestHub::start();
    let dir = tempfile::tempdir().unwrap();
    let sha = upload(&hub, dir.path(), "3.0.0");
    let sim = simulate(&hub, dir.path(), 10, "bad", "1.0");
    await_fleet(&hub, &sim, "bad", 10).await;

    let created = create(&hub, "r300", &sha, "20,50,100", "90", "50");
    let order = devices(&created);
    let halted = await_rollout(&hub, &|| sim.log(), "r300", |r| r["state"] == "halted").await;
    assert_eq!(halted["currentWave"], 1, "{halted}");
    assert!(halted["reason"].as_str().unwrap().contains("failed"), "{halted}");
    assert_eq!(halted["progress"][1]["started"], false, "{halted}");
    // Later waves were never started.
    for device in &order[2..] {
        assert!(desired_firmware(&hub, device).await.is_null(), "{device} was handed the image");
        let twin = service(&hub).get_twin(device).await.unwrap();
        assert!(twin["tags"]["ferrohubRollouts"].is_null(), "{twin}");
    }
    // Halted rollouts do not resume; they can be cancelled.
    fails(&hub.cli(&["firmware", "rollout", "resume", "--id", "r300"]));
    assert_eq!(rollout_cli(&hub, "cancel", "r300")["state"], "cancelled");
}

#[tokio::test]
async fn rollout_state_survives_a_hub_restart() {
    let mut hub = TestHub::start();
    let dir = tempfile::tempdir().unwrap();
    let sha = upload(&hub, dir.path(), "5.0.0");
    let sim = simulate(&hub, dir.path(), 4, "keep", "0.0");
    await_fleet(&hub, &sim, "keep", 4).await;

    let created = create(&hub, "r500", &sha, "50,100", "100", "50");
    let order = devices(&created);
    rollout_cli(&hub, "pause", "r500");
    let before = await_rollout(&hub, &|| sim.log(), "r500", |r| r["progress"][0]["succeeded"] == 2).await;
    drop(sim);

    hub.restart();
    let after = rollout_cli(&hub, "show", "r500");
    for key in ["state", "currentWave", "devices", "sha256", "waves", "successThreshold", "progress"] {
        assert_eq!(after[key], before[key], "{key}: {after}");
    }
    assert_eq!(after["state"], "paused");
    for device in &order[2..] {
        assert!(desired_firmware(&hub, device).await.is_null(), "{device}");
    }

    // Resumed after the restart, it starts the second wave (the first
    // reached its threshold before the restart).
    rollout_cli(&hub, "resume", "r500");
    let log = hub.log_file();
    let read_log = move || std::fs::read_to_string(&log).unwrap_or_default();
    let next = await_rollout(&hub, &read_log, "r500", |r| r["currentWave"] == 2).await;
    assert_eq!(next["state"], "running");
    for device in &order[2..] {
        assert_eq!(desired_firmware(&hub, device).await["fwVersion"], "5.0.0", "{device}");
    }
}
