//! `query`: M twins in the store; the latency of a two-clause COUNT, of a
//! GROUP BY over the firmware status, and of five configuration metrics
//! becoming fresh after one device reports a change.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use clap::Args;
use ferrohub_core::connection_string::ConnectionString;
use ferrohub_device_client::{DeviceClient, DeviceOptions};
use ferrohub_service_client::{ServiceClient, WatchEvent, WatchStream};
use ferrohub_store::Store as _;
use serde_json::{json, Value};

use crate::hub::BenchHub;
use crate::report::Report;
use crate::seed::{self, SeedArgs, NEW_VERSION};
use crate::{procfs, Common};

/// The two-clause COUNT of the targets table.
pub(crate) const COUNT_QUERY: &str = "SELECT COUNT() FROM devices WHERE tags.devicetype='chiller' \
     AND properties.reported.firmware.fwUpdateStatus='current'";
/// Twins per firmware status.
pub(crate) const GROUP_QUERY: &str = "SELECT properties.reported.firmware.fwUpdateStatus AS s, COUNT() AS n \
     FROM devices GROUP BY properties.reported.firmware.fwUpdateStatus";

const CONFIG_ID: &str = "bench-query";
const METRICS: [&str; 5] = ["current", "applying", "rebooting", "error", "rolledback"];
/// Statuses the measured device cycles through; each run moves a metric.
const CYCLE: [&str; 5] = ["rebooting", "error", "current", "rolledback", "applying"];

/// `query` flags.
#[derive(Debug, Clone, Args)]
pub(crate) struct QueryArgs {
    #[command(flatten)]
    pub(crate) common: Common,
    /// Twins in the store.
    #[arg(long, value_name = "M", default_value_t = 1_000_000)]
    pub(crate) twins: usize,
    /// Measured runs of each query (after one warm-up).
    #[arg(long, value_name = "K", default_value_t = 11)]
    pub(crate) runs: usize,
    /// A data dir to reuse (seeded up to M twins first if it holds fewer;
    /// kept afterwards) [default: a temporary one].
    #[arg(long, value_name = "DIR")]
    pub(crate) data_dir: Option<PathBuf>,
}

/// Median and 90th percentile of durations, in milliseconds.
pub(crate) fn median_p90(samples: &[Duration]) -> (f64, f64) {
    let mut ms: Vec<f64> = samples.iter().map(|d| d.as_secs_f64() * 1e3).collect();
    ms.sort_by(f64::total_cmp);
    if ms.is_empty() {
        return (f64::NAN, f64::NAN);
    }
    let at = |q: f64| ms[(((ms.len() - 1) as f64) * q).round() as usize];
    (at(0.5), at(0.9))
}

/// A data dir holding at least `twins` seeded twins: `(dir, temporary,
/// seconds spent seeding)`.
pub(crate) async fn prepared_dir(
    data_dir: Option<&PathBuf>,
    twins: usize,
) -> anyhow::Result<(PathBuf, bool, Option<f64>)> {
    let (dir, temporary) = match data_dir {
        Some(d) => (d.clone(), false),
        None => (
            std::env::temp_dir().join(format!(
                "ferrohub-bench-{}-{}",
                std::process::id(),
                rand::random::<u32>()
            )),
            true,
        ),
    };
    let have = {
        let store = seed::open_store(&dir)?;
        store.device_counts().await.map_err(|e| anyhow::anyhow!("{e}"))?.total as usize
    };
    let mut seeded = None;
    if have < twins {
        let args =
            SeedArgs { data_dir: dir.clone(), twins: twins - have, chiller_share: 0.5, current_share: 0.3 };
        seeded = Some(seed::seed(&args).await?.as_secs_f64());
    }
    Ok((dir, temporary, seeded))
}

/// Waits until the hub's CPU use stays below 5% for a second (its start-up
/// full pass over every twin is done), up to `cap`. Returns the wait.
pub(crate) async fn settle(pid: u32, cap: Duration) -> anyhow::Result<Duration> {
    let started = Instant::now();
    let mut last = procfs::cpu_time(pid)?;
    while started.elapsed() < cap {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let now = procfs::cpu_time(pid)?;
        let used = now.saturating_sub(last);
        last = now;
        if used < Duration::from_millis(50) {
            break;
        }
    }
    Ok(started.elapsed())
}

/// Times `runs` executions of a query after one warm-up; returns the
/// samples and the last answer.
async fn time_query(service: &ServiceClient, q: &str, runs: usize) -> anyhow::Result<(Vec<Duration>, Value)> {
    let mut samples = Vec::with_capacity(runs);
    let mut last = Value::Null;
    for run in 0..=runs {
        let started = Instant::now();
        let result = service.query(q, None).await.with_context(|| format!("query {q}"))?;
        if run > 0 {
            samples.push(started.elapsed());
        }
        last = Value::Array(result.items);
    }
    Ok((samples, last))
}

/// Which of the five metrics a firmware state counts in (the device is
/// targeted and applied).
fn metric_of(status: &str, version: &str) -> Option<&'static str> {
    match status {
        "current" if version == NEW_VERSION => Some("current"),
        "downloading" | "verifying" | "applying" => Some("applying"),
        "rebooting" => Some("rebooting"),
        "error" => Some("error"),
        "rolledback" => Some("rolledback"),
        _ => None,
    }
}

fn metric_values(config: &Value) -> Vec<i64> {
    METRICS.iter().map(|m| config["metrics"]["results"][*m].as_i64().unwrap_or(-1)).collect()
}

/// The next snapshot for which `done` holds, within `cap`.
async fn next_matching(
    watch: &mut WatchStream,
    cap: Duration,
    mut done: impl FnMut(&Value) -> bool,
) -> anyhow::Result<Value> {
    tokio::time::timeout(cap, async {
        loop {
            match watch.next().await {
                Some(Ok(WatchEvent::Snapshot(c))) if done(&c) => return Ok(c),
                Some(Ok(WatchEvent::Snapshot(_))) => continue,
                Some(Ok(WatchEvent::Deleted)) | None => anyhow::bail!("the configuration watch ended"),
                Some(Err(e)) => return Err(e.into()),
            }
        }
    })
    .await
    .context("no matching configuration snapshot in time")?
}

/// The configuration whose metrics are measured: the tutorial's firmware
/// content and five metric queries, on the chillers of wave 0 (a few
/// thousand twins at any fleet size, so applying it stays short).
fn configuration() -> Value {
    json!({
        "id": CONFIG_ID,
        "content": {"deviceContent": {"properties.desired.firmware": {
            "fwVersion": NEW_VERSION,
            "fwPackageURI": "https://example.invalid/firmware.bin",
            "fwPackageCheckValue": "0123456789abcdef"}}},
        "targetCondition": "tags.devicetype='chiller' AND tags.wave=0",
        "priority": 10,
        "metrics": {"queries": ferrohub_core::firmware::tutorial_metric_queries(CONFIG_ID, NEW_VERSION)},
    })
}

/// A seeded chiller of wave 0: its id, key and reported firmware state.
async fn measured_device(dir: &std::path::Path) -> anyhow::Result<(String, String, String, String)> {
    let store = seed::open_store(dir)?;
    for i in 0..seed::WAVE_SIZE {
        let Some(r) = store.get_device(&seed::device_id(i)).await.map_err(|e| anyhow::anyhow!("{e}"))? else {
            break;
        };
        if r.twin.tags.get("devicetype").and_then(Value::as_str) == Some("chiller") {
            let fw = r.twin.to_json(&r.device)["properties"]["reported"]["firmware"].clone();
            let text = |k: &str| fw[k].as_str().unwrap_or_default().to_owned();
            return Ok((
                r.device.device_id.clone(),
                r.device.authentication.symmetric_key.primary_key.clone(),
                text("fwUpdateStatus"),
                text("currentFwVersion"),
            ));
        }
    }
    anyhow::bail!("no seeded chiller in wave 0 (was the dir seeded by `ferrohub-bench seed`?)")
}

/// Runs the scenario.
pub(crate) async fn run(args: QueryArgs) -> anyhow::Result<()> {
    let (twins, runs) = if args.common.smoke { (2_000, 3) } else { (args.twins, args.runs.max(1)) };
    let bin = args.common.hub_bin()?;
    let (dir, temporary, seeded) = prepared_dir(args.data_dir.as_ref(), twins).await?;
    let (device_id, key, mut status, mut version) = measured_device(&dir).await?;

    let mut report = Report::new("query", json!({"twins": twins, "runs": runs, "smoke": args.common.smoke}));
    report.row("twins", twins);
    if let Some(s) = seeded {
        report.decimal("seeding (s)", s, 1);
    }
    let hub = BenchHub::start_in(&bin, &dir, temporary, &[]).await?;
    let pid = hub.pid();
    report.decimal("startup (s)", hub.startup.as_secs_f64(), 2);
    let rss_start = procfs::rss_kib(pid)?;
    report.row("RSS after start (KiB)", rss_start);
    let settled = settle(pid, Duration::from_secs(900)).await?;
    report.decimal("busy after ready (s)", settled.as_secs_f64(), 1);
    let service = hub.service().await?;

    for (name, q) in [("COUNT two clauses", COUNT_QUERY), ("GROUP BY status", GROUP_QUERY)] {
        let (samples, answer) = time_query(&service, q, runs).await?;
        let (median, p90) = median_p90(&samples);
        report.decimal(&format!("{name} median (ms)"), median, 1);
        report.decimal(&format!("{name} p90 (ms)"), p90, 1);
        report.row(&format!("{name} answer"), answer);
    }
    let rss = procfs::rss_kib(pid)?;
    report.row("RSS after queries (KiB)", rss);
    report.decimal("RSS per twin (KiB)", rss as f64 / twins.max(1) as f64, 2);

    // Five metrics fresh after one change.
    // A reused data dir may still hold it from an interrupted run.
    if service.get_configuration(CONFIG_ID).await.is_ok() {
        service.delete_configuration(CONFIG_ID, "*").await?;
        settle(pid, Duration::from_secs(900)).await?;
    }
    let created_at = Instant::now();
    service.create_configuration(&configuration()).await.context("creating the configuration")?;
    let mut watch = service.watch_configuration(CONFIG_ID).await?;
    let applied = next_matching(&mut watch, Duration::from_secs(900), |c| {
        let targeted = c["systemMetrics"]["results"]["targetedCount"].as_i64().unwrap_or(0);
        targeted > 0 && c["systemMetrics"]["results"]["appliedCount"].as_i64() == Some(targeted)
    })
    .await?;
    report.row("configuration targets", applied["systemMetrics"]["results"]["targetedCount"].clone());
    report.decimal("configuration applied (s)", created_at.elapsed().as_secs_f64(), 2);
    settle(pid, Duration::from_secs(900)).await?;

    let cs = ConnectionString::for_device("localhost", &device_id, &key).to_string();
    let options = DeviceOptions {
        mqtt_port: Some(hub.mqtt_port),
        ca_file: Some(hub.ca_file()),
        receive_methods: false,
        receive_c2d: false,
        receive_desired: false,
        ..DeviceOptions::default()
    };
    let device = DeviceClient::connect(&cs, options).await.context("connecting the measured device")?;
    let current = service.get_configuration(CONFIG_ID).await?;
    let mut values = metric_values(&current);
    let mut fresh = Vec::with_capacity(runs);
    let mut acked = Vec::with_capacity(runs);
    for run in 0..=runs {
        let next = CYCLE[run % CYCLE.len()];
        let next_version = if next == "current" { NEW_VERSION } else { "1.0.0" };
        let mut expected = values.clone();
        for (sign, m) in [(-1, metric_of(&status, &version)), (1, metric_of(next, next_version))] {
            if let Some(i) = m.and_then(|m| METRICS.iter().position(|x| *x == m)) {
                expected[i] += sign;
            }
        }
        let started = Instant::now();
        device
            .update_reported(&json!({"firmware": {"fwUpdateStatus": next, "currentFwVersion": next_version}}))
            .await
            .context("reporting the firmware state")?;
        let ack = started.elapsed();
        next_matching(&mut watch, Duration::from_secs(60), |c| metric_values(c) == expected).await?;
        if run > 0 {
            fresh.push(started.elapsed());
            acked.push(ack);
        }
        values = expected;
        status = next.to_owned();
        version = next_version.to_owned();
    }
    let (median, p90) = median_p90(&fresh);
    report.decimal("five metrics fresh median (ms)", median, 1);
    report.decimal("five metrics fresh p90 (ms)", p90, 1);
    report.decimal("reported patch acknowledged median (ms)", median_p90(&acked).0, 1);
    report.row("RSS at end (KiB)", procfs::rss_kib(pid)?);
    report.finish(&args.common.out)?;
    device.close().await;
    // Leave a reused data dir as it was (its twins lose the content again).
    service.delete_configuration(CONFIG_ID, "*").await?;
    settle(pid, Duration::from_secs(900)).await?;
    hub.stop().await
}
