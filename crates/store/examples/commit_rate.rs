//! Durable device writes per second through the `Store` trait: `TASKS`
//! concurrent writers each update their own device in a loop for a few
//! seconds; every update returns only after its commit is on disk.
//!
//! `cargo run --release -p ferrohub-store --example commit_rate [TASKS] [SECONDS]`
//!
//! A measurement, not a test: it prints updates/s and latency percentiles.
#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use ferrohub_core::identity::{Device, DeviceRequest, Minted};
use ferrohub_core::time::Timestamp;
use ferrohub_core::twin::TwinState;
use ferrohub_store::{DeviceRecord, SqliteStore, Store};

fn record(id: &str) -> DeviceRecord {
    let now = Timestamp::from_unix_nanos(1_700_000_000_000_000_000);
    let mut key = || "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=".to_owned();
    let device = Device::create(
        id,
        DeviceRequest::default(),
        Minted { now, etag: "MQ==".into(), generation_id: "1".into(), new_key: &mut key },
    )
    .unwrap();
    DeviceRecord { device, twin: TwinState::new(now), revision: 1 }
}

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let tasks: usize = args.get(1).and_then(|a| a.parse().ok()).unwrap_or(256);
    let seconds: u64 = args.get(2).and_then(|a| a.parse().ok()).unwrap_or(5);
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(SqliteStore::open(&dir.path().join("hub.db")).unwrap());
    for t in 0..tasks {
        store.create_device(&record(&format!("d{t}"))).await.unwrap();
    }
    let deadline = Instant::now() + Duration::from_secs(seconds);
    let mut handles = Vec::new();
    for t in 0..tasks {
        let store = store.clone();
        handles.push(tokio::spawn(async move {
            let mut r = record(&format!("d{t}"));
            let mut latencies = Vec::new();
            while Instant::now() < deadline {
                let started = Instant::now();
                store.update_device(&r).await.unwrap();
                latencies.push(started.elapsed());
                r.revision += 1;
            }
            latencies
        }));
    }
    let mut all = Vec::new();
    for h in handles {
        all.extend(h.await.unwrap());
    }
    all.sort();
    let pct = |p: f64| all[((all.len() as f64 * p) as usize).min(all.len() - 1)];
    println!(
        "{tasks} writers, {seconds} s: {:.0} durable updates/s; latency p50 {:?} p99 {:?} p99.9 {:?}",
        all.len() as f64 / seconds as f64,
        pct(0.5),
        pct(0.99),
        pct(0.999)
    );
}
