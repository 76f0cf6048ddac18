//! A full disk: the hub's data dir lives on a small tmpfs that the test
//! fills. Writes are refused with 503 (nothing acknowledged is lost, the
//! store stays sound), reads go on, and the hub takes writes again by itself
//! once space returns.
//!
//! Mounting needs root (CI runs as root); elsewhere the test says so and
//! returns (see `common::disk`).
#![allow(clippy::unwrap_used)]

mod common;

use std::io::Write;
use std::path::Path;

use common::disk::SmallDisk;
use common::mqtt::service;
use common::TestHub;
use ferrohub_device_client::{DeviceClient, DeviceOptions};
use ferrohub_service_client::{NewDevice, ServiceClient};
use serde_json::json;

/// Writes zeros to `path` until the file system says it is full.
fn fill(path: &Path) {
    let mut f = std::fs::File::create(path).unwrap();
    let chunk = vec![0u8; 64 * 1024];
    loop {
        if let Err(e) = f.write_all(&chunk).and_then(|_| f.sync_all()) {
            assert_eq!(e.raw_os_error(), Some(libc::ENOSPC), "filling stopped for another reason: {e}");
            return;
        }
    }
}

/// A device whose twin carries a few KB, so the store needs new pages soon.
async fn write_one(c: &ServiceClient, id: &str) -> Result<(), ferrohub_service_client::Error> {
    c.create_device(&NewDevice::new(id)).await?;
    c.update_twin(id, &json!({"tags": {"pad": "x".repeat(4000)}}), "*").await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_refuses_writes_loses_nothing_and_recovers() {
    let Some(disk) = SmallDisk::mount("32m") else {
        eprintln!("skipped: mounting a tmpfs needs root");
        return;
    };
    let data_dir = disk.mount.join("data");
    let mut hub = TestHub::start_in(Some(data_dir.clone()), &[]);
    let c = service(&hub);
    write_one(&c, "before").await.unwrap();
    let device = c.create_device(&NewDevice::new("mqtt-device")).await.unwrap();
    let key = device.authentication.symmetric_key.primary_key.clone();
    let options = DeviceOptions {
        mqtt_port: Some(hub.mqtt_port()),
        ca_file: Some(hub.ca_file()),
        ..Default::default()
    };
    let cs = format!("HostName=localhost;DeviceId=mqtt-device;SharedAccessKey={key}");
    let mqtt = DeviceClient::connect(&cs, options).await.unwrap();
    let reported = mqtt.update_reported(&json!({"seq": 1})).await.unwrap();
    // A second device that connects only once the disk is full.
    let second = c.create_device(&NewDevice::new("mqtt-late")).await.unwrap();
    let second_key = second.authentication.symmetric_key.primary_key.clone();

    let filler = disk.mount.join("filler");
    fill(&filler);

    // Pages the store already owns may take a few more writes; within a
    // bounded number, one must be refused.
    let mut acked = vec!["before".to_owned()];
    let refused = 'writes: {
        for i in 0..2_000 {
            let id = format!("full-{i}");
            match write_one(&c, &id).await {
                Ok(()) => acked.push(id),
                Err(e) => break 'writes e,
            }
        }
        panic!("2,000 writes of 4 KB twins all succeeded on a full 32 MB disk");
    };
    assert_eq!(refused.status(), Some(503), "{refused}");
    assert_eq!(refused.code(), Some("ServiceUnavailable"), "{refused}");
    // A reported patch over MQTT gets the same answer on its response topic.
    let padded = json!({"pad": "y".repeat(4000)});
    match mqtt.update_reported(&padded).await {
        Err(ferrohub_device_client::Error::Hub { status, .. }) => assert_eq!(status, 503),
        other => panic!("a reported patch on a full disk: {other:?}"),
    }

    // A persistent session cannot be recorded: CONNACK 3, server
    // unavailable, which the SDKs retry.
    let password = common::mqtt::token("mqtt-late", &second_key, common::mqtt::now_unix() + 600);
    let (_late, ack) = common::mqtt::RawMqtt::connect(&hub, "mqtt-late", &password, 60, false).await;
    assert_eq!(ack.code, ferrohub_mqtt::v4::ConnectReturnCode::ServiceUnavailable);

    // Reads go on, and what was acknowledged is there.
    for id in &acked {
        c.get_twin(id).await.unwrap_or_else(|e| panic!("{id} unreadable on a full disk: {e}"));
    }

    // Space returns: the very next write succeeds, with no restart.
    std::fs::remove_file(&filler).unwrap();
    write_one(&c, "after").await.unwrap();
    acked.push("after".into());
    let after = mqtt.update_reported(&json!({"seq": 2})).await.unwrap();
    assert!(after > reported, "reported $version {after} after {reported}");
    mqtt.close().await;

    // Everything acknowledged survives a SIGKILL, and the file is sound.
    hub.restart();
    let c = service(&hub);
    for id in &acked {
        let twin = c.get_twin(id).await.unwrap_or_else(|e| panic!("{id} lost after the full disk: {e}"));
        assert_eq!(twin["tags"]["pad"].as_str().map(str::len), Some(4000), "{id}");
    }
    let twin = c.get_twin("mqtt-device").await.unwrap();
    assert_eq!(twin["properties"]["reported"]["seq"], 2);
    assert_eq!(twin["properties"]["reported"]["$version"], after);
    let problems = ferrohub_store::SqliteStore::check_integrity(&data_dir.join("hub.db")).unwrap();
    assert!(problems.is_empty(), "integrity check: {problems:?}");
    hub.sigkill();
}
