//! `soak`: mixed load for a long time, watching whether the hub's memory
//! and file descriptors stay flat.
//!
//! One process drives it all through the Rust SDKs: steady devices that
//! send reported patches and telemetry, answer methods and take C2D and
//! desired patches; churning devices that connect, patch and leave; and a
//! back end that sends desired patches, invokes methods, sends C2D,
//! queries, and creates, updates and deletes a configuration targeting the
//! steady fleet. Every interval it samples the hub's RSS, open files and
//! CPU; at the end it reports those over time, every error by operation,
//! and p50/p99 latencies.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use clap::Args;
use ferrohub_device_client::{DeviceClient, DeviceOptions, Message};
use ferrohub_service_client::{C2dMessage, ServiceClient};
use hdrhistogram::Histogram;
use serde_json::json;

use crate::report::Report;
use crate::{fleet, procfs, Common};

#[derive(Debug, Clone, Args)]
pub(crate) struct SoakArgs {
    #[command(flatten)]
    pub(crate) common: Common,
    /// How long the load runs, in minutes.
    #[arg(long, default_value_t = 60)]
    pub(crate) minutes: u64,
    /// Devices that stay connected.
    #[arg(long, default_value_t = 500)]
    pub(crate) devices: usize,
    /// Reported patches per second across the steady devices (with as many
    /// telemetry messages).
    #[arg(long, default_value_t = 2_000)]
    pub(crate) patches_per_second: u64,
    /// Devices connecting and leaving at any moment.
    #[arg(long, default_value_t = 20)]
    pub(crate) churners: usize,
    /// Seconds between samples of the hub's memory and files.
    #[arg(long, default_value_t = 60)]
    pub(crate) sample_seconds: u64,
}

/// Latencies and errors per operation.
#[derive(Default)]
struct Tally {
    latency: BTreeMap<&'static str, Histogram<u64>>,
    errors: BTreeMap<&'static str, u64>,
}

type Shared = Arc<Mutex<Tally>>;

fn record(tally: &Shared, op: &'static str, started: Instant, ok: bool) {
    // A poisoned tally only means another task panicked mid-update of
    // counters; the numbers are still worth reporting.
    let mut t = tally.lock().unwrap_or_else(|p| p.into_inner());
    if ok {
        let us = started.elapsed().as_micros() as u64;
        let _ = t.latency.entry(op).or_insert_with(fleet::histogram).record(us.max(1));
    } else {
        *t.errors.entry(op).or_default() += 1;
    }
}

fn device_options(hub: &crate::hub::BenchHub) -> DeviceOptions {
    DeviceOptions {
        mqtt_port: Some(hub.mqtt_port),
        ca_file: Some(hub.ca_file()),
        operation_timeout: Duration::from_secs(30),
        ..Default::default()
    }
}

/// A steady device: patches and telemetry at its share of the rate, method
/// answers, C2D and desired updates drained.
async fn steady(client: DeviceClient, interval: Duration, until: Instant, tally: Shared) {
    if let Some(mut methods) = client.method_requests() {
        tokio::spawn(async move {
            while let Some(m) = methods.recv().await {
                let _ = m.respond(200, json!({"ok": true})).await;
            }
        });
    }
    if let Some(mut c2d) = client.c2d_messages() {
        tokio::spawn(async move { while c2d.recv().await.is_some() {} });
    }
    if let Some(mut desired) = client.desired_updates() {
        tokio::spawn(async move { while desired.recv().await.is_some() {} });
    }
    let mut tick = tokio::time::interval(interval);
    let mut seq = 0u64;
    while Instant::now() < until {
        tick.tick().await;
        seq += 1;
        let t = Instant::now();
        let ok = client.update_reported(&json!({"seq": seq, "fwUpdateStatus": "current"})).await.is_ok();
        record(&tally, "reported patch (MQTT)", t, ok);
        let t = Instant::now();
        let ok = client.send_telemetry(Message::new(format!("{{\"seq\":{seq}}}").into_bytes())).await.is_ok();
        record(&tally, "telemetry (MQTT)", t, ok);
    }
    client.close().await;
}

/// A churning device: connect, one patch, a few seconds, leave; again.
async fn churn(cs: String, options: DeviceOptions, until: Instant, tally: Shared) {
    while Instant::now() < until {
        let t = Instant::now();
        match DeviceClient::connect(&cs, options.clone()).await {
            Ok(client) => {
                record(&tally, "connect (MQTT TLS)", t, true);
                let t = Instant::now();
                let ok = client.update_reported(&json!({"churn": fleet::unix_us()})).await.is_ok();
                record(&tally, "reported patch (MQTT)", t, ok);
                tokio::time::sleep(Duration::from_secs(3)).await;
                client.close().await;
            }
            Err(_) => {
                record(&tally, "connect (MQTT TLS)", t, false);
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    }
}

/// The back end: each second a desired patch, a method, a C2D message and a
/// query; each minute a configuration created, updated and deleted.
async fn back_end(s: ServiceClient, devices: usize, until: Instant, tally: Shared) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    let mut n = 0usize;
    while Instant::now() < until {
        tick.tick().await;
        n += 1;
        let id = format!("soak-{}", n % devices);
        let t = Instant::now();
        let ok = s.update_twin(&id, &json!({"properties": {"desired": {"n": n}}}), "*").await.is_ok();
        record(&tally, "desired patch (REST)", t, ok);
        let t = Instant::now();
        let ok = s
            .invoke_method(&id, "ping", &json!({}), Duration::from_secs(10), Duration::from_secs(0))
            .await
            .is_ok_and(|r| r.status == 200);
        record(&tally, "direct method (REST→MQTT)", t, ok);
        let t = Instant::now();
        let ok = s.send_c2d(&id, &C2dMessage::new(format!("c2d {n}"))).await.is_ok();
        record(&tally, "C2D send (REST)", t, ok);
        let t = Instant::now();
        let ok = s
            .query(
                "SELECT COUNT() AS n FROM devices WHERE properties.reported.fwUpdateStatus = 'current'",
                None,
            )
            .await
            .is_ok();
        record(&tally, "query (REST)", t, ok);
        if n.is_multiple_of(60) {
            let t = Instant::now();
            let ok = configuration_cycle(&s, n).await.is_ok();
            record(&tally, "configuration create/update/delete", t, ok);
        }
    }
}

/// The database file and its write-ahead log: the store's memory map and
/// page cache grow with them, so RSS is read beside them.
fn database_bytes(data_dir: &std::path::Path) -> u64 {
    let db = data_dir.join(ferrohub_server::DB_FILE);
    let wal = data_dir.join(format!("{}-wal", ferrohub_server::DB_FILE));
    [db, wal].iter().filter_map(|p| std::fs::metadata(p).ok()).map(|m| m.len()).sum()
}

async fn configuration_cycle(s: &ServiceClient, n: usize) -> anyhow::Result<()> {
    let id = format!("soak-cfg-{n}");
    let created = s
        .create_configuration(&json!({
            "id": id,
            "content": {"deviceContent": {"properties.desired.soak": n}},
            "targetCondition": "tags.soak = 'steady'",
            "priority": 1,
            "metrics": {"queries": {"current": "SELECT deviceId FROM devices WHERE properties.reported.fwUpdateStatus = 'current'"}}
        }))
        .await?;
    let mut updated = created.clone();
    updated["priority"] = json!(2);
    let etag = created["etag"].as_str().unwrap_or("*").to_owned();
    let updated = s.update_configuration(&updated, &etag).await?;
    s.delete_configuration(&id, updated["etag"].as_str().unwrap_or("*")).await?;
    Ok(())
}

pub(crate) async fn run(args: &SoakArgs) -> anyhow::Result<()> {
    let (minutes, devices, rate, churners, sample) = if args.common.smoke {
        (0, 10, 20, 2, 5)
    } else {
        (args.minutes, args.devices, args.patches_per_second, args.churners, args.sample_seconds)
    };
    let run_for = if args.common.smoke { Duration::from_secs(20) } else { Duration::from_secs(minutes * 60) };
    let hub = crate::hub::BenchHub::start(&args.common.hub_bin()?, &[]).await?;
    let s = hub.service().await?;
    let key = fleet::random_key();
    fleet::register(&s, "soak-", devices, &key, Some(&json!({"soak": "steady"}))).await?;
    fleet::register(&s, "churn-", churners, &key, None).await?;
    let host = fleet::hub_host(&s);
    let cs = |id: String| format!("HostName={host};DeviceId={id};SharedAccessKey={key}");

    let tally: Shared = Arc::default();
    let started = Instant::now();
    let until = started + run_for;
    let per_device = Duration::from_secs_f64(devices as f64 / rate.max(1) as f64);
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..devices {
        let client = DeviceClient::connect(&cs(format!("soak-{i}")), device_options(&hub)).await?;
        tasks.spawn(steady(client, per_device, until, tally.clone()));
    }
    for i in 0..churners {
        tasks.spawn(churn(cs(format!("churn-{i}")), device_options(&hub), until, tally.clone()));
    }
    // The back end stops first, so no method is invoked on a device that is
    // closing at the end.
    let back_end_until = until.checked_sub(Duration::from_secs(3)).unwrap_or(until);
    tasks.spawn(back_end(s.clone(), devices, back_end_until, tally.clone()));

    // Samples of the hub, every `sample` seconds until the load ends.
    let pid = hub.pid();
    let mut samples = Vec::new();
    let mut cpu_before = procfs::cpu_time(pid)?;
    let mut at = Instant::now();
    loop {
        let rss = procfs::rss_kib(pid)?;
        let parts = procfs::rss_parts(pid)?;
        let fds = fleet::open_fds(pid);
        let cpu = procfs::cpu_time(pid)?;
        let busy = (cpu - cpu_before).as_secs_f64() / at.elapsed().as_secs_f64().max(0.001);
        (cpu_before, at) = (cpu, Instant::now());
        samples.push(json!({
            "s": started.elapsed().as_secs(),
            "rss_mib": rss / 1024,
            "anon_mib": parts.anon_kib / 1024,
            "file_mib": parts.file_kib / 1024,
            "db_mib": database_bytes(&hub.data_dir) / (1024 * 1024),
            "fds": fds,
            "cpu_cores": (busy * 100.0).round() / 100.0,
        }));
        if Instant::now() >= until {
            break;
        }
        tokio::time::sleep(Duration::from_secs(sample).min(until - Instant::now())).await;
    }
    while tasks.join_next().await.is_some() {}

    let mut report = Report::new(
        "soak",
        json!({"minutes": run_for.as_secs() / 60, "devices": devices, "patches_per_second": rate, "churners": churners, "smoke": args.common.smoke}),
    );
    let first = &samples[0];
    let last = &samples[samples.len() - 1];
    report.row("hub RSS MiB, first / last sample", format!("{} / {}", first["rss_mib"], last["rss_mib"]));
    report.row("hub open files, first / last sample", format!("{} / {}", first["fds"], last["fds"]));
    let peak = samples.iter().filter_map(|s| s["rss_mib"].as_u64()).max().unwrap_or(0);
    report.row("hub RSS MiB, peak", peak);
    report.row(
        "hub anonymous RSS MiB, first / last sample",
        format!("{} / {}", first["anon_mib"], last["anon_mib"]),
    );
    report.row(
        "hub file-backed RSS MiB, first / last sample",
        format!("{} / {}", first["file_mib"], last["file_mib"]),
    );
    report
        .row("database + WAL MiB, first / last sample", format!("{} / {}", first["db_mib"], last["db_mib"]));
    let t = std::mem::take(&mut *tally.lock().unwrap_or_else(|p| p.into_inner()));
    for (op, h) in &t.latency {
        let ms = |q: f64| h.value_at_quantile(q) as f64 / 1000.0;
        report.row(
            &format!("{op}: count, p50 / p99 ms"),
            format!("{}, {:.1} / {:.1}", h.len(), ms(0.5), ms(0.99)),
        );
    }
    let errors: u64 = t.errors.values().sum();
    report.row("errors", errors);
    for (op, n) in &t.errors {
        report.row(&format!("errors: {op}"), *n);
    }
    report.row("samples", serde_json::Value::Array(samples));
    report.finish(&args.common.out)?;
    hub.stop().await
}
