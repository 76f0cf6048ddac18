//! `ferrohub firmware rollout ...` against a real hub and `ferrohub
//! simulate`: waves advance only once the started devices reach the success
//! threshold; failures halt a rollout, and so does a device going offline
//! while soaking; retries withdraw and re-offer the update; silent devices
//! time out; pacing spaces hand-offs; devices tagged later join; rollback
//! returns devices to their earlier version; the state survives a hub
//! restart. Every wait polls under a cap; there are no fixed sleeps.
#![allow(clippy::unwrap_used)]

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::mqtt::service;
use common::sim::{upload_image, Simulator};
use common::{fails, ok, ok_json, TestHub};
use serde_json::Value;

/// The cap on every wait (debug builds on a loaded CI machine).
const WAIT: Duration = Duration::from_secs(180);

/// `ferrohub simulate` with `devices` chillers named `<prefix>-n`.
fn simulate(hub: &TestHub, dir: &Path, devices: usize, prefix: &str, failure_rate: &str) -> Simulator {
    let devices = devices.to_string();
    let extra = ["--devices", &devices, "--prefix", prefix, "--tags", r#"{"devicetype":"chiller"}"#];
    Simulator::spawn(hub, dir, prefix, &[&extra[..], &["--failure-rate", failure_rate]].concat())
}

/// Uploads a random 64 KiB image; returns its SHA-256.
fn upload(hub: &TestHub, dir: &Path, version: &str) -> String {
    upload_image(hub, dir, version, 64 * 1024)["sha256"].as_str().unwrap().to_owned()
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
    ok_json(&hub.cli(&["firmware", "rollout", action, "--rollout-id", id]))
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

/// Creates a rollout of `version` to the chillers (soak 0 unless `extra`
/// says otherwise).
fn create(
    hub: &TestHub,
    id: &str,
    version: &str,
    waves: &str,
    success: &str,
    failure: &str,
    extra: &[&str],
) -> Value {
    let base = [
        "firmware",
        "rollout",
        "create",
        "--rollout-id",
        id,
        "--version",
        version,
        "--target-condition",
        "tags.devicetype='chiller'",
        "--waves",
        waves,
        "--success-threshold",
        success,
        "--failure-threshold",
        failure,
    ];
    let soak: &[&str] = if extra.contains(&"--soak") { &[] } else { &["--soak", "0s"] };
    ok_json(&hub.cli(&[&base[..], soak, extra].concat()))
}

/// Starts `ferrohub firmware rollout watch` (stdout a pipe: plain lines);
/// await the handle for its output.
fn watch(hub: &TestHub, id: &str) -> tokio::task::JoinHandle<std::process::Output> {
    let mut cmd = hub.command();
    cmd.args(["firmware", "rollout", "watch", "--rollout-id", id, "--data-dir"])
        .arg(hub.data_dir())
        .args(["--https-port", &hub.https_port().to_string()]);
    tokio::task::spawn_blocking(move || cmd.output().unwrap())
}

/// The exit code and output of a watch, which must end within the cap.
async fn watch_result(handle: tokio::task::JoinHandle<std::process::Output>) -> (i32, String) {
    let out = tokio::time::timeout(WAIT, handle).await.expect("the watch did not end").unwrap();
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    (out.status.code().unwrap(), text)
}

fn members(rollout: &Value) -> &Vec<Value> {
    rollout["members"].as_array().unwrap()
}

fn devices(rollout: &Value) -> Vec<String> {
    members(rollout).iter().map(|m| m["deviceId"].as_str().unwrap().to_owned()).collect()
}

fn member<'a>(rollout: &'a Value, device: &str) -> &'a Value {
    members(rollout).iter().find(|m| m["deviceId"] == device).unwrap()
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
    for (waves, success, version) in [
        ("50,10,100", "90", "2.8.5"),
        ("10,50", "90", "2.8.5"),
        ("10,100", "0", "2.8.5"),
        ("100", "90", "9.9"),
    ] {
        let out = hub.cli(&[
            "firmware",
            "rollout",
            "create",
            "--rollout-id",
            "bad",
            "--version",
            version,
            "--target-condition",
            "tags.devicetype='chiller'",
            "--waves",
            waves,
            "--success-threshold",
            success,
        ]);
        fails(&out);
    }

    let created = create(&hub, "r285", "2.8.5", "20%,50%,100%", "100%", "50%", &[]);
    // The hub builds the image's address itself.
    assert!(created["packageUri"].as_str().unwrap().ends_with(&format!("/firmware/{sha}")), "{created}");
    assert_eq!(created["sha256"], sha.as_str());
    assert_eq!(created["state"], "running");
    assert_eq!(created["currentWave"], 1);
    assert_eq!(created["configurationId"], "rollout-r285");
    let order = devices(&created);
    assert_eq!(order.len(), 10);
    // Hold it at wave 1: the first two devices update, no one else is
    // handed the image.
    assert_eq!(rollout_cli(&hub, "pause", "r285")["state"], "paused");
    let paused = await_rollout(&hub, &|| sim.log(), "r285", |r| r["waveProgress"][0]["succeeded"] == 2).await;
    assert_eq!(paused["currentWave"], 1);
    assert_eq!(paused["state"], "paused");
    for device in &order[2..] {
        assert!(desired_firmware(&hub, device).await.is_null(), "{device} was handed the image early");
    }
    assert_eq!(desired_firmware(&hub, &order[0]).await["fwVersion"], "2.8.5");

    // Resumed, every wave completes; a live watch follows it to the end.
    let watcher = watch(&hub, "r285");
    assert_eq!(rollout_cli(&hub, "resume", "r285")["state"], "running");
    let (code, printed) = watch_result(watcher).await;
    assert_eq!(code, 0, "{printed}");
    assert!(printed.contains("succeeded=10/10"), "{printed}");
    assert!(printed.lines().count() >= 2, "one line per change: {printed}");
    let done = await_rollout(&hub, &|| sim.log(), "r285", |r| r["state"] == "succeeded").await;
    assert_eq!(done["currentWave"], 3);
    let succeeded: Vec<u64> =
        done["waveProgress"].as_array().unwrap().iter().map(|p| p["succeeded"].as_u64().unwrap()).collect();
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

    assert_eq!(sha.len(), 64);
    let created = create(&hub, "r300", "3.0.0", "20,50,100", "90", "50", &[]);
    let order = devices(&created);
    let (code, printed) = watch_result(watch(&hub, "r300")).await;
    assert_eq!(code, 2, "{printed}");
    assert!(printed.contains("halted"), "{printed}");
    let halted = await_rollout(&hub, &|| sim.log(), "r300", |r| r["state"] == "halted").await;
    assert_eq!(halted["currentWave"], 1, "{halted}");
    assert!(halted["totals"]["failed"].as_u64().unwrap() >= 1, "{halted}");
    let failed = members(&halted).iter().find(|m| m["phase"] == "failed").unwrap();
    let reason = failed["reason"].as_str().unwrap();
    assert!(reason.starts_with("error") || reason.starts_with("rolledback"), "{halted}");
    assert!(halted["reason"].as_str().unwrap().contains("failed"), "{halted}");
    assert_eq!(halted["waveProgress"][1]["started"], false, "{halted}");
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

    assert_eq!(sha.len(), 64);
    let created = create(&hub, "r500", "5.0.0", "50,100", "100", "50", &[]);
    let order = devices(&created);
    rollout_cli(&hub, "pause", "r500");
    let before = await_rollout(&hub, &|| sim.log(), "r500", |r| r["waveProgress"][0]["succeeded"] == 2).await;
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

/// Waits until every member of a rollout is `succeeded` or `failed`.
async fn await_settled(hub: &TestHub, log: &dyn Fn() -> String, id: &str) -> Value {
    await_rollout(hub, log, id, |r| {
        members(r).iter().all(|m| m["phase"] == "succeeded" || m["phase"] == "failed")
    })
    .await
}

#[tokio::test]
async fn going_offline_while_soaking_is_a_failure_that_halts() {
    let hub = TestHub::start();
    let dir = tempfile::tempdir().unwrap();
    upload(&hub, dir.path(), "6.0.0");
    let extra = ["--devices", "4", "--prefix", "soak", "--tags", r#"{"devicetype":"chiller"}"#];
    let sim = Simulator::spawn(
        &hub,
        dir.path(),
        "soak",
        &[&extra[..], &["--failure-rate", "0", "--offline-after-update-rate", "1.0"]].concat(),
    );
    await_fleet(&hub, &sim, "soak", 4).await;

    let created = create(&hub, "r600", "6.0.0", "50,100", "100", "50", &["--soak", "30s"]);
    let order = devices(&created);
    let halted = await_rollout(&hub, &|| sim.log(), "r600", |r| r["state"] == "halted").await;
    // The devices reached the version, then dropped off before the soak ended.
    for device in &order[..2] {
        let m = member(&halted, device);
        if m["phase"] == "failed" {
            assert_eq!(m["reason"], "went offline while soaking", "{halted}");
        }
        let twin = service(&hub).get_twin(device).await.unwrap();
        assert_eq!(twin["properties"]["reported"]["firmware"]["currentFwVersion"], "6.0.0", "{twin}");
    }
    assert_eq!(halted["totals"]["succeeded"], 0, "{halted}");
    assert_eq!(halted["currentWave"], 1, "{halted}");
}

#[tokio::test]
async fn failed_attempts_are_retried_until_the_retries_run_out() {
    let hub = TestHub::start();
    let dir = tempfile::tempdir().unwrap();
    upload(&hub, dir.path(), "7.0.0");
    let sim = simulate(&hub, dir.path(), 8, "retry", "0.5");
    await_fleet(&hub, &sim, "retry", 8).await;

    let retries = 2u32;
    create(&hub, "r700", "7.0.0", "100", "100", "100", &["--retries", "2"]);
    let settled = await_settled(&hub, &|| sim.log(), "r700").await;
    // The simulator's faults are drawn per attempt from a hash, so each
    // device's fate is known in advance.
    let mut retried = 0;
    for n in 1..=8 {
        let device = format!("retry-{n}");
        let failed_first = (1..=retries + 1)
            .take_while(|attempt| {
                let kind = if *attempt == 1 { "failure".to_owned() } else { format!("failure-{attempt}") };
                ferrohub_agent::sim::strikes(0.5, &device, "7.0.0", &kind)
            })
            .count() as u32;
        let m = member(&settled, &device);
        if failed_first > retries {
            assert_eq!(m["phase"], "failed", "{device}: {m}");
            assert_eq!(m["attempts"], retries + 1, "{device}: {m}");
        } else {
            assert_eq!(m["phase"], "succeeded", "{device}: {m}");
            assert_eq!(m["attempts"], failed_first, "{device}: {m}");
            retried += usize::from(failed_first > 0);
        }
    }
    assert!(retried > 0, "no device needed a retry: {settled}");
}

#[tokio::test]
async fn pacing_late_joiners_and_device_timeouts() {
    let hub = TestHub::start();
    let dir = tempfile::tempdir().unwrap();
    upload(&hub, dir.path(), "8.0.0");
    let sim = simulate(&hub, dir.path(), 4, "pace", "0.0");
    await_fleet(&hub, &sim, "pace", 4).await;

    // One device per second; a silent device fails after 5 s.
    let extra = ["--max-per-minute", "60", "--device-timeout", "5s"];
    let created = create(&hub, "r800", "8.0.0", "100", "100", "100", &extra);
    assert_eq!(devices(&created).len(), 4);
    // A device tagged now joins the running rollout's current wave; it has
    // no agent, so it never reports.
    ok(&hub.cli(&["device-identity", "create", "-d", "late-1"]));
    ok(&hub.cli(&["device-twin", "update", "-d", "late-1", "--tags", r#"{"devicetype":"chiller"}"#]));

    let settled = await_settled(&hub, &|| sim.log(), "r800").await;
    let late = member(&settled, "late-1");
    assert_eq!(late["wave"], 1, "{settled}");
    assert_eq!(late["phase"], "failed", "{settled}");
    assert_eq!(late["reason"], "no result within 5 s", "{settled}");
    assert_eq!(desired_firmware(&hub, "late-1").await["fwVersion"], "8.0.0");
    let mut handed: Vec<u64> = members(&settled).iter().map(|m| m["handedAt"].as_u64().unwrap()).collect();
    handed.sort_unstable();
    for pair in handed.windows(2) {
        assert!(pair[1] - pair[0] >= 900, "hand-offs closer than the pace allows: {handed:?}");
    }
    assert_eq!(settled["totals"]["succeeded"], 4, "{settled}");
    // 4 of 5 is below the 100% success threshold: it keeps running.
    assert_eq!(settled["state"], "running", "{settled}");
    let err = fails(&hub.cli(&["firmware", "rollout", "delete", "--rollout-id", "r800"]));
    assert!(err.contains("cancel it before deleting it"), "{err}");
    assert_eq!(rollout_cli(&hub, "cancel", "r800")["state"], "cancelled");
    let (code, printed) = watch_result(watch(&hub, "r800")).await;
    assert_eq!(code, 3, "{printed}");
    let (code, printed) = watch_result(watch(&hub, "no-such-rollout")).await;
    assert_eq!(code, 1, "{printed}");
    assert!(printed.contains("not found"), "{printed}");
}

#[tokio::test]
async fn rollback_returns_devices_to_the_version_they_joined_at() {
    let hub = TestHub::start();
    let dir = tempfile::tempdir().unwrap();
    upload(&hub, dir.path(), "1.0.0"); // the simulator's starting version
    upload(&hub, dir.path(), "9.0.0");
    let sim = simulate(&hub, dir.path(), 3, "back", "0.0");
    await_fleet(&hub, &sim, "back", 3).await;

    create(&hub, "r900", "9.0.0", "100", "100", "50", &[]);
    let done = await_rollout(&hub, &|| sim.log(), "r900", |r| r["state"] == "succeeded").await;
    assert!(members(&done).iter().all(|m| m["fromVersion"] == "1.0.0"), "{done}");

    let rolled = rollout_cli(&hub, "rollback", "r900");
    assert_eq!(rolled["state"], "rolledBack");
    assert_eq!(watch_result(watch(&hub, "r900")).await.0, 3);
    assert_eq!(rolled["rollback"][0]["version"], "1.0.0", "{rolled}");
    let back =
        await_rollout(&hub, &|| sim.log(), "r900", |r| r["rollbackProgress"][0]["returned"] == 3).await;
    assert_eq!(back["rollbackProgress"][0]["devices"], 3, "{back}");
    for n in 1..=3 {
        let twin = service(&hub).get_twin(&format!("back-{n}")).await.unwrap();
        assert_eq!(twin["properties"]["desired"]["firmware"]["fwVersion"], "1.0.0", "{twin}");
        assert_eq!(twin["properties"]["reported"]["firmware"]["currentFwVersion"], "1.0.0", "{twin}");
    }
    fails(&hub.cli(&["firmware", "rollout", "rollback", "--rollout-id", "r900"]));

    // Deleted, it takes its configurations and tags along; devices keep
    // the firmware they run, and the images are free to go.
    assert_eq!(ok(&hub.cli(&["firmware", "rollout", "delete", "--rollout-id", "r900"])), "");
    let err = fails(&hub.cli(&["firmware", "rollout", "show", "--rollout-id", "r900"]));
    assert!(err.contains("not found"), "{err}");
    assert!(service(&hub).get_configuration("rollout-r900").await.is_err());
    assert!(service(&hub).get_configuration("rollout-r900-back-1").await.is_err());
    let twin = service(&hub).get_twin("back-1").await.unwrap();
    assert!(twin["tags"]["ferrohubRollouts"].get("r900").is_none(), "{twin}");
    assert!(twin["tags"]["ferrohubRollbacks"].get("r900").is_none(), "{twin}");
    assert_eq!(twin["properties"]["reported"]["firmware"]["currentFwVersion"], "1.0.0", "{twin}");
    assert!(ok_json(&hub.cli(&["firmware", "rollout", "list"])).as_array().unwrap().is_empty());
}

#[tokio::test]
async fn bad_rollout_requests_get_azure_errors_and_change_nothing() {
    let hub = TestHub::start();
    let dir = tempfile::tempdir().unwrap();
    upload(&hub, dir.path(), "4.0.0");
    ok(&hub.cli(&["device-identity", "create", "-d", "x1"]));
    ok(&hub.cli(&["device-twin", "update", "-d", "x1", "--tags", r#"{"x":"y"}"#]));
    let http = common::mqtt::http(&hub);
    let auth = common::mqtt::owner_token(&hub);
    let url = |path: &str| format!("https://localhost:{}{path}", hub.https_port());
    let cases: [(&str, &str, u16); 6] = [
        ("POST", "{not json", 400),
        ("POST", r#"{"id":"r1","version":"4.0.0","targetCondition":7}"#, 400),
        ("POST", r#"{"id":"r1","version":"4.0.0","targetCondition":"tags.x='y'","bogus":1}"#, 400),
        ("POST", r#"{"id":"R 1","version":"4.0.0","targetCondition":"tags.x='y'"}"#, 400),
        (
            "POST",
            r#"{"id":"r1","version":"4.0.0","targetCondition":"tags.x='y'","packageUri":"http://x/firmware/1"}"#,
            400,
        ),
        ("POST", r#"{"id":"r1","version":"4.0.0","targetCondition":"tags.x = "}"#, 400),
    ];
    for (method, body, status) in cases {
        let response = http
            .request(method.parse().unwrap(), url("/firmware-rollouts"))
            .header("authorization", &auth)
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status().as_u16(), status, "{body}");
        assert!(response.headers().contains_key("iothub-errorcode"), "{body}");
    }
    for (method, path, status) in [
        ("GET", "/firmware-rollouts/nope", 404),
        ("GET", "/firmware-rollouts/nope/watch", 404),
        ("POST", "/firmware-rollouts/nope/pause", 404),
        ("DELETE", "/firmware-rollouts/nope", 404),
    ] {
        let response = http
            .request(method.parse().unwrap(), url(path))
            .header("authorization", &auth)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status().as_u16(), status, "{method} {path}");
    }
    // No token, no rollouts.
    let response = http.get(url("/firmware-rollouts")).send().await.unwrap();
    assert_eq!(response.status().as_u16(), 401);
    assert!(ok_json(&hub.cli(&["firmware", "rollout", "list"])).as_array().unwrap().is_empty());
    assert!(std::fs::read_dir(hub.data_dir().join("rollouts")).unwrap().next().is_none());
    // The same request, well formed, is accepted: the refusals were the input's.
    let good = r#"{"id":"r1","version":"4.0.0","targetCondition":"tags.x='y'"}"#;
    let response = http
        .post(url("/firmware-rollouts"))
        .header("authorization", &auth)
        .header("content-type", "application/json")
        .body(good)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 200);
}
