//! Durability on every write path: the hub is SIGKILLed while clients
//! write through each of them at once; after every restart each write it
//! acknowledged is there, versions never go back, no half-written firmware
//! image is served, and SQLite's integrity check is clean.
//!
//! The paths: identities and twin tags (REST), desired patches (REST),
//! reported patches (MQTT), cloud-to-device messages (REST send, read back
//! over the device HTTPS API), their feedback (a completion acknowledged
//! over HTTPS owes a record), configurations, the configuration engine's
//! own writes (a configuration applied to twins whose tags flip in and out
//! of its target: after a restart the engine finishes what it was doing and
//! its metrics match the twins) and firmware uploads. Rollout state has its
//! own SIGKILL test (`rollout.rs`).
//!
//! `FERROHUB_DURABILITY_CYCLES` sets the number of kill/restart cycles
//! (default 3, which CI runs; a long run takes 20 or more).
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::mqtt::{http, now_unix, service, token};
use common::TestHub;
use ferrohub_device_client::{DeviceClient, DeviceOptions};
use ferrohub_service_client::{
    C2dMessage, ClientOptions, DeviceHttpClient, NewDevice, ServiceClient, Settle,
};
use serde_json::json;
use sha2::Digest;
use tokio::sync::Notify;

/// Every write the hub acknowledged, by path.
#[derive(Debug, Default, Clone)]
struct Acks {
    /// Device id and, once tagged, the highest acknowledged `tags.seq`.
    registry: BTreeMap<String, u64>,
    /// Highest acknowledged desired `seq` and desired `$version`.
    desired: (u64, i64),
    /// Highest acknowledged reported `seq` and reported `$version`.
    reported: (u64, i64),
    /// Message ids acknowledged per device.
    c2d: BTreeMap<String, BTreeSet<String>>,
    /// Configurations created and not yet checked (checked ones are
    /// deleted, so the 100-configuration limit never gets in the way).
    configurations: Vec<String>,
    /// SHA-256 of each acknowledged firmware image.
    firmware: BTreeSet<String>,
    /// Message ids whose completion (with `iothub-ack: full`) the device
    /// HTTPS API acknowledged: each owes a feedback record.
    feedback: BTreeSet<String>,
    /// The configuration the engine path created this cycle, and each
    /// engine device's last acknowledged `tags.engine` (`on` or `off`).
    engine: (Option<String>, BTreeMap<String, bool>),
    /// Acknowledgements per path in the current cycle.
    this_cycle: BTreeMap<&'static str, usize>,
    /// Acknowledgements per path over the whole run.
    total: BTreeMap<&'static str, usize>,
}

/// The acknowledgements, and a signal for each new one.
#[derive(Clone, Default)]
struct Ledger {
    acks: Arc<Mutex<Acks>>,
    progress: Arc<Notify>,
}

impl Ledger {
    fn record(&self, path: &'static str, f: impl FnOnce(&mut Acks)) {
        let mut acks = self.acks.lock().unwrap();
        f(&mut acks);
        *acks.this_cycle.entry(path).or_default() += 1;
        *acks.total.entry(path).or_default() += 1;
        drop(acks);
        self.progress.notify_waiters();
    }

    /// Waits until every path has at least `n` acknowledgements this cycle.
    async fn every_path_has(&self, n: usize) {
        loop {
            let notified = self.progress.notified();
            {
                let acks = self.acks.lock().unwrap();
                if PATHS.iter().all(|p| acks.this_cycle.get(p).copied().unwrap_or(0) >= n) {
                    return;
                }
            }
            tokio::time::timeout(Duration::from_secs(60), notified).await.unwrap_or_else(|_| {
                panic!("no write acknowledged for 60 s: {:?}", self.acks.lock().unwrap())
            });
        }
    }
}

const PATHS: [&str; 8] =
    ["registry", "desired", "reported", "c2d", "configurations", "firmware", "feedback", "engine"];

/// Devices the engine path's configuration targets while tagged `on`.
const ENGINE_DEVICES: usize = 60;

fn options(hub: &TestHub) -> ClientOptions {
    ClientOptions { port: Some(hub.https_port()), ca_file: Some(hub.ca_file()), ..Default::default() }
}

/// Identities and twin tags, until the first error (the kill).
async fn registry(c: ServiceClient, cycle: usize, ledger: Ledger) {
    for i in 0u64.. {
        let id = format!("c{cycle}-dev-{i}");
        if c.create_device(&NewDevice::new(&id)).await.is_err() {
            return;
        }
        ledger.record("registry", |a| {
            a.registry.insert(id.clone(), 0);
        });
        for seq in 1..=2u64 {
            if c.update_twin(&id, &json!({"tags": {"seq": seq}}), "*").await.is_err() {
                return;
            }
            ledger.record("registry", |a| {
                a.registry.insert(id.clone(), seq);
            });
        }
    }
}

/// Desired patches on one device.
async fn desired(c: ServiceClient, ledger: Ledger) {
    let mut seq = ledger.acks.lock().unwrap().desired.0;
    loop {
        seq += 1;
        let Ok(twin) =
            c.update_twin("durable-desired", &json!({"properties": {"desired": {"seq": seq}}}), "*").await
        else {
            return;
        };
        let version = twin["properties"]["desired"]["$version"].as_i64().unwrap();
        ledger.record("desired", |a| a.desired = (seq, version));
    }
}

/// Reported patches over MQTT from one device.
async fn reported(hub_port: u16, ca: std::path::PathBuf, key: String, ledger: Ledger) {
    let options = DeviceOptions {
        mqtt_port: Some(hub_port),
        ca_file: Some(ca),
        operation_timeout: Duration::from_secs(3),
        connect_timeout: Duration::from_secs(3),
        receive_c2d: false,
        receive_methods: false,
        receive_desired: false,
        ..Default::default()
    };
    let cs = format!("HostName=localhost;DeviceId=durable-reported;SharedAccessKey={key}");
    let Ok(device) = DeviceClient::connect(&cs, options).await else { return };
    let mut seq = ledger.acks.lock().unwrap().reported.0;
    loop {
        seq += 1;
        let Ok(version) = device.update_reported(&json!({"seq": seq})).await else { break };
        ledger.record("reported", |a| a.reported = (seq, version));
    }
    device.close().await;
}

/// Cloud-to-device messages, 40 to a device (IoT Hub queues at most 50).
async fn c2d(c: ServiceClient, cycle: usize, ledger: Ledger) {
    for d in 0.. {
        let device = format!("c{cycle}-c2d-{d}");
        if c.create_device(&NewDevice::new(&device)).await.is_err() {
            return;
        }
        for m in 0..40 {
            let id = format!("{device}-m{m}");
            if c.send_c2d(&device, &C2dMessage::new(id.clone()).message_id(id.clone())).await.is_err() {
                return;
            }
            ledger.record("c2d", |a| {
                a.c2d.entry(device.clone()).or_default().insert(id.clone());
            });
        }
    }
}

/// Cloud-to-device messages asking for full feedback, received and
/// completed over the device HTTPS API: each acknowledged completion owes a
/// `success` feedback record.
async fn feedback(hub_cs: String, opts: ClientOptions, c: ServiceClient, cycle: usize, ledger: Ledger) {
    let device = format!("c{cycle}-feedback");
    if c.create_device(&NewDevice::new(&device)).await.is_err() {
        return;
    }
    let receiver = DeviceHttpClient::new(&hub_cs, Some(&device), opts).unwrap();
    for m in 0.. {
        let id = format!("{device}-m{m}");
        let mut message = C2dMessage::new(id.clone()).message_id(id.clone());
        message.ack = Some("full".into());
        if c.send_c2d(&device, &message).await.is_err() {
            return;
        }
        let Ok(Some(received)) = receiver.receive().await else { return };
        if receiver.settle(&received.lock_token, Settle::Complete).await.is_err() {
            return;
        }
        ledger.record("feedback", |a| {
            a.feedback.insert(id.clone());
        });
    }
}

/// Configurations.
async fn configurations(c: ServiceClient, cycle: usize, ledger: Ledger) {
    for i in 0.. {
        let id = format!("c{cycle}-cfg-{i}");
        let body = json!({
            "id": id,
            "content": {"deviceContent": {"properties.desired.cfg": i}},
            "targetCondition": "tags.never = 'matched'",
            "priority": 1
        });
        if c.create_configuration(&body).await.is_err() {
            return;
        }
        ledger.record("configurations", |a| a.configurations.push(id.clone()));
    }
}

/// The configuration engine's writes: a configuration setting
/// `desired.engine` on twins tagged `engine = 'on'`, then tags flipped on
/// and off across the engine devices, each flip making the engine apply
/// (or stop counting) the configuration on that twin.
async fn engine(c: ServiceClient, cycle: usize, ledger: Ledger) {
    let id = format!("c{cycle}-engine");
    let body = json!({
        "id": id,
        "content": {"deviceContent": {"properties.desired.engine": cycle}},
        "targetCondition": "tags.engine = 'on'",
        "priority": cycle + 10
    });
    if c.create_configuration(&body).await.is_err() {
        return;
    }
    ledger.record("engine", |a| a.engine.0 = Some(id.clone()));
    for flip in 0usize.. {
        let device = format!("engine-{}", flip % ENGINE_DEVICES);
        // Most flips turn a twin on, so most of the fleet is targeted.
        let on = flip % 3 != 0;
        let tag = if on { "on" } else { "off" };
        if c.update_twin(&device, &json!({"tags": {"engine": tag}}), "*").await.is_err() {
            return;
        }
        ledger.record("engine", |a| {
            a.engine.1.insert(device.clone(), on);
        });
    }
}

/// Waits (up to a minute) until the engine's configuration counts every
/// twin tagged on as targeted and applied, then checks the twins: each one
/// on holds the configuration's value, and no desired `$version` went back.
async fn verify_engine(c: &ServiceClient, acks: &Acks, versions: &mut BTreeMap<String, i64>) {
    let Some(id) = &acks.engine.0 else { return };
    let on: BTreeSet<&String> = acks.engine.1.iter().filter(|(_, on)| **on).map(|(d, _)| d).collect();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    let cfg = loop {
        let cfg = c.get_configuration(id).await.unwrap_or_else(|e| panic!("configuration {id} lost: {e}"));
        let metric = |m: &str| cfg["systemMetrics"]["results"][m].as_u64().unwrap_or(0);
        // Un-acknowledged flips may have landed too, so the counts are at
        // least the acknowledged ones and equal to each other.
        if metric("targetedCount") >= on.len() as u64 && metric("appliedCount") == metric("targetedCount") {
            break cfg;
        }
        assert!(tokio::time::Instant::now() < deadline, "the engine never caught up after restart: {cfg}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let value = cfg["content"]["deviceContent"]["properties.desired.engine"].clone();
    for i in 0..ENGINE_DEVICES {
        let device = format!("engine-{i}");
        let twin = c.get_twin(&device).await.unwrap();
        let desired = &twin["properties"]["desired"];
        if on.contains(&device) {
            assert_eq!(desired["engine"], value, "{device} is tagged on but lacks {id}'s content: {twin}");
        }
        let v = desired["$version"].as_i64().unwrap();
        let before = versions.insert(device.clone(), v).unwrap_or(0);
        assert!(v >= before, "{device}: desired $version went back from {before} to {v}");
    }
    c.delete_configuration(id, cfg["etag"].as_str().unwrap()).await.unwrap();
}

/// Firmware uploads of 256 KiB images, each different.
async fn firmware(c: ServiceClient, cycle: usize, dir: std::path::PathBuf, ledger: Ledger) {
    for i in 0u32.. {
        let mut image = vec![0u8; 256 * 1024];
        for (n, b) in image.iter_mut().enumerate() {
            *b = (n as u32).wrapping_mul(31).wrapping_add(i * 7 + cycle as u32) as u8;
        }
        image[..8].copy_from_slice(&(((cycle as u64) << 32) | u64::from(i)).to_le_bytes());
        let file = dir.join(format!("fw-{cycle}-{i}.bin"));
        std::fs::write(&file, &image).unwrap();
        let Ok(record) = c.upload_firmware(&file, &format!("{cycle}.{i}"), Some("chiller")).await else {
            return;
        };
        let sha = hex::encode(sha2::Sha256::digest(&image));
        assert_eq!(record["sha256"], sha.as_str());
        ledger.record("firmware", |a| {
            a.firmware.insert(sha.clone());
        });
    }
}

/// Checks every acknowledged write against the restarted hub.
async fn verify(
    hub: &TestHub,
    ledger: &Ledger,
    device_key: &str,
    versions: &mut (i64, i64),
    engine_versions: &mut BTreeMap<String, i64>,
) {
    let c = service(hub);
    let mut acks = ledger.acks.lock().unwrap().clone();

    for (id, seq) in &acks.registry {
        let twin = c.get_twin(id).await.unwrap_or_else(|e| panic!("{id} lost: {e}"));
        let stored = twin["tags"]["seq"].as_u64().unwrap_or(0);
        assert!(stored >= *seq, "{id}: acknowledged seq {seq}, stored {stored}");
    }

    let twin = c.get_twin("durable-desired").await.unwrap();
    let desired = &twin["properties"]["desired"];
    assert!(desired["seq"].as_u64().unwrap_or(0) >= acks.desired.0, "desired {desired} < {:?}", acks.desired);
    let dv = desired["$version"].as_i64().unwrap();
    assert!(dv >= acks.desired.1 && dv >= versions.0, "desired $version {dv} went back");
    let twin = c.get_twin("durable-reported").await.unwrap();
    let reported = &twin["properties"]["reported"];
    assert!(
        reported["seq"].as_u64().unwrap_or(0) >= acks.reported.0,
        "reported {reported} < {:?}",
        acks.reported
    );
    let rv = reported["$version"].as_i64().unwrap();
    assert!(rv >= acks.reported.1 && rv >= versions.1, "reported $version {rv} went back");
    *versions = (dv, rv);

    // Every acknowledged message is in its device's queue; reading it back
    // completes it, so the next cycle checks only its own.
    for (device, ids) in std::mem::take(&mut acks.c2d) {
        let receiver = DeviceHttpClient::new(&hub.connection_string(), Some(&device), options(hub)).unwrap();
        let mut seen = BTreeSet::new();
        while let Some(m) = receiver.receive().await.unwrap() {
            seen.insert(m.system_properties.get("messageid").cloned().unwrap_or_default());
            receiver.settle(&m.lock_token, Settle::Complete).await.unwrap();
        }
        let lost: Vec<_> = ids.difference(&seen).collect();
        assert!(lost.is_empty(), "{device}: acknowledged messages lost: {lost:?}");
    }

    for id in std::mem::take(&mut acks.configurations) {
        let cfg = c.get_configuration(&id).await.unwrap_or_else(|e| panic!("configuration {id} lost: {e}"));
        c.delete_configuration(&id, cfg["etag"].as_str().unwrap()).await.unwrap();
    }

    verify_engine(&c, &acks, engine_versions).await;

    // Acknowledged images are listed; every listed image is whole.
    let listed: BTreeSet<String> =
        c.list_firmware().await.unwrap().iter().map(|r| r["sha256"].as_str().unwrap().to_owned()).collect();
    let missing: Vec<_> = acks.firmware.difference(&listed).collect();
    assert!(missing.is_empty(), "acknowledged images lost: {missing:?}");
    let web = http(hub);
    for sha in &listed {
        let body = web
            .get(c.firmware_uri(sha))
            // Images are fetched as a device does.
            .header("Authorization", token("durable-reported", device_key, now_unix() + 600))
            .send()
            .await
            .unwrap()
            .error_for_status()
            .unwrap()
            .bytes()
            .await
            .unwrap();
        assert_eq!(&hex::encode(sha2::Sha256::digest(&body)), sha, "image {sha} is served partial or wrong");
    }

    // Every acknowledged completion has its feedback record; reading the
    // batches completes them, so the next cycle checks only its own.
    let mut recorded = BTreeSet::new();
    while let Some(batch) = c.receive_feedback().await.unwrap() {
        recorded.extend(batch.records.iter().map(|r| r.original_message_id.clone()));
        c.complete_feedback(&batch.lock_token).await.unwrap();
    }
    let lost: Vec<_> = acks.feedback.difference(&recorded).collect();
    assert!(lost.is_empty(), "feedback of acknowledged completions lost: {lost:?}");

    let problems = ferrohub_store::SqliteStore::check_integrity(&hub.data_dir().join("hub.db")).unwrap();
    assert!(problems.is_empty(), "integrity check: {problems:?}");

    let mut live = ledger.acks.lock().unwrap();
    live.c2d.clear();
    live.configurations.clear();
    live.feedback.clear();
    live.engine.0 = None;
    live.this_cycle.clear();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn acknowledged_writes_survive_sigkill_on_every_path() {
    let cycles: usize =
        std::env::var("FERROHUB_DURABILITY_CYCLES").ok().and_then(|v| v.parse().ok()).unwrap_or(3);
    let images = tempfile::tempdir().unwrap();
    let mut hub = TestHub::start();
    let c = service(&hub);
    c.create_device(&NewDevice::new("durable-desired")).await.unwrap();
    let device = c.create_device(&NewDevice::new("durable-reported")).await.unwrap();
    let key = device.authentication.symmetric_key.primary_key.clone();
    for i in 0..ENGINE_DEVICES {
        c.create_device(&NewDevice::new(format!("engine-{i}"))).await.unwrap();
    }

    let ledger = Ledger::default();
    let mut versions = (0, 0);
    let mut engine_versions = BTreeMap::new();
    for cycle in 0..cycles {
        let c = service(&hub);
        let writers = vec![
            tokio::spawn(registry(c.clone(), cycle, ledger.clone())),
            tokio::spawn(desired(c.clone(), ledger.clone())),
            tokio::spawn(reported(hub.mqtt_port(), hub.ca_file(), key.clone(), ledger.clone())),
            tokio::spawn(c2d(c.clone(), cycle, ledger.clone())),
            tokio::spawn(configurations(c.clone(), cycle, ledger.clone())),
            tokio::spawn(engine(c.clone(), cycle, ledger.clone())),
            tokio::spawn(firmware(c.clone(), cycle, images.path().to_owned(), ledger.clone())),
            tokio::spawn(feedback(hub.connection_string(), options(&hub), c.clone(), cycle, ledger.clone())),
        ];
        // Kill with every path mid-stream.
        ledger.every_path_has(3).await;
        hub.sigkill();
        for w in writers {
            w.await.unwrap();
        }
        hub.restart();
        verify(&hub, &ledger, &key, &mut versions, &mut engine_versions).await;
    }
    let acks = ledger.acks.lock().unwrap();
    eprintln!("{cycles} SIGKILL cycles; acknowledged writes checked: {:?}", acks.total);
    assert!(acks.registry.len() >= cycles, "{acks:?}");
    assert!(acks.firmware.len() >= 3 * cycles, "{acks:?}");
}
