//! Connects many devices from one process and prints the process's memory
//! per connection: a quick check of the client's footprint (and the hub's,
//! watched from outside).
//!
//! ```text
//! cargo run --release -p ferrohub-device-client --example many_devices -- \
//!     --host localhost --key <base64 key shared by the devices> \
//!     --prefix mem- --count 1000 --ca DIR/ca.pem --mqtt-port 8883 --hold 10
//! ```
//!
//! Devices `{prefix}1` … `{prefix}{count}` must exist with that primary
//! key. `--ca` and `--mqtt-port` fall back to `FERROHUB_CA` and
//! `FERROHUB_MQTT_PORT`. Only desired-property sync is left on (one twin GET
//! per connect), as a load generator would; `--all` subscribes to
//! everything.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ferrohub_device_client::{tls_config, DeviceClient, DeviceOptions};

fn rss_kib() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let env = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
    let (mut host, mut key, mut prefix, mut count, mut hold, mut all) =
        ("localhost".to_owned(), None, "mem-".to_owned(), 100usize, 0u64, false);
    let mut ca = env("FERROHUB_CA").map(PathBuf::from);
    let mut port: Option<u16> = env("FERROHUB_MQTT_PORT").map(|p| p.parse()).transpose()?;
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        let mut value = || args.next().ok_or_else(|| format!("{flag} needs a value"));
        match flag.as_str() {
            "--host" => host = value()?,
            "--key" => key = Some(value()?),
            "--prefix" => prefix = value()?,
            "--count" => count = value()?.parse()?,
            "--ca" => ca = Some(value()?.into()),
            "--mqtt-port" => port = Some(value()?.parse()?),
            "--hold" => hold = value()?.parse()?,
            "--all" => all = true,
            other => return Err(format!("unknown argument {other}").into()),
        }
    }
    let key = key.ok_or("--key is required")?;
    let tls: Arc<_> = tls_config(ca.as_deref(), None)?;
    let options = DeviceOptions {
        mqtt_port: port,
        tls_config: Some(tls),
        receive_methods: all,
        receive_c2d: all,
        ..DeviceOptions::default()
    };

    let before = rss_kib().unwrap_or(0);
    let started = Instant::now();
    let mut clients = Vec::with_capacity(count);
    let mut pending = tokio::task::JoinSet::new();
    for i in 1..=count {
        let cs = format!("HostName={host};DeviceId={prefix}{i};SharedAccessKey={key}");
        let options = options.clone();
        pending.spawn(async move { DeviceClient::connect(&cs, options).await });
        // Keep the handshake rate civil.
        if pending.len() >= 64 {
            if let Some(done) = pending.join_next().await {
                clients.push(done??);
            }
        }
    }
    while let Some(done) = pending.join_next().await {
        clients.push(done??);
    }
    let connected = started.elapsed();
    tokio::time::sleep(Duration::from_secs(2)).await; // subscriptions and twin GETs settle
    let after = rss_kib().unwrap_or(0);
    let per = (after.saturating_sub(before) as f64) / clients.len().max(1) as f64;
    println!(
        "{} devices connected in {:.1} s; RSS {before} KiB -> {after} KiB: {per:.1} KiB per connection",
        clients.len(),
        connected.as_secs_f64()
    );
    tokio::time::sleep(Duration::from_secs(hold)).await;
    for client in &clients {
        client.close().await;
    }
    Ok(())
}
