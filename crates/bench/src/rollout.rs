//! `rollout`: N connected devices listen for desired updates; a
//! configuration targeting all of them (`tags.bench='rollout'`) sets
//! `properties.desired.firmware` with the tutorial's five metric queries.
//! Measured: from the create call's return until each device has its
//! desired patch, and (each device being an instant agent that reports
//! `current` on arrival) until the live watch shows `current` = N.

use std::time::{Duration, Instant};

use anyhow::bail;
use clap::Args;
use ferrohub_service_client::WatchEvent;
use serde_json::{json, Value};

use crate::fleet::{self, Command, Event, Fleet, Spec};
use crate::{procfs, report, Common};

#[derive(Debug, Clone, Args)]
pub(crate) struct RolloutArgs {
    #[command(flatten)]
    pub(crate) common: Common,
    /// Devices [default: the hub's open-files limit less 500].
    #[arg(long)]
    pub(crate) devices: Option<usize>,
    /// How long to wait for the patches and the metrics (s).
    #[arg(long, default_value_t = 120)]
    pub(crate) timeout: u64,
    /// Each agent reports `current` as soon as its patch arrives (default:
    /// all agents report at once after the last device has its patch, so
    /// the two phases are timed apart).
    #[arg(long)]
    pub(crate) report_on_arrival: bool,
}

const CONFIG_ID: &str = "bench-rollout";
const VERSION: &str = "2.0.0";

fn quantile_ms(sorted: &[i64], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let idx = ((sorted.len() as f64 * q).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[idx] as f64 / 1000.0
}

pub(crate) async fn run(args: &RolloutArgs) -> anyhow::Result<()> {
    let hub = fleet::start_hub(&args.common.hub_bin()?).await?;
    let pid = hub.pid();
    let (n, limit) = fleet::device_count(args.devices, args.common.smoke, 20, pid)?;
    let service = hub.service().await?;
    let key = fleet::random_key();
    fleet::register(&service, "fw-", n, &key, Some(&json!({"bench": "rollout"}))).await?;
    let spec = Spec {
        host: fleet::hub_host(&service),
        port: hub.mqtt_port,
        ca_file: hub.ca_file(),
        prefix: "fw-".into(),
        key,
        first: 0,
        count: n,
        desired: true,
        agent: true,
        hold_reports: !args.report_on_arrival,
        concurrency: 128,
        spread: 0,
    };
    let mut fleet = Fleet::start(&spec).await?;
    let (ok, failed, first_error) = fleet.connect().await?;
    anyhow::ensure!(failed == 0, "{failed} devices did not connect: {first_error:?}");
    // Let every connect's twin GET settle so the patch is the only news.
    tokio::time::sleep(Duration::from_secs(if args.common.smoke { 1 } else { 5 })).await;

    let config = json!({
        "id": CONFIG_ID,
        "content": {"deviceContent": {"properties.desired.firmware": {
            "fwVersion": VERSION, "fwPackageURI": "https://example.invalid/fw-2.0.0.bin",
            "fwPackageCheckValue": "0123456789abcdef"}}},
        "targetCondition": "tags.bench='rollout'",
        "priority": 10,
        "metrics": {"queries": ferrohub_core::firmware::tutorial_metric_queries(CONFIG_ID, VERSION)},
    });
    let hub_cpu = procfs::cpu_time(pid)?;
    let call = Instant::now();
    service.create_configuration(&config).await?;
    let created_us = fleet::unix_us();
    let created = Instant::now();
    let create_call = created - call;
    let timeout = Duration::from_secs(if args.common.smoke { 30 } else { args.timeout });
    let timeout_ms = u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX);

    let want = n as u64;
    let watch = async {
        let mut stream = service.watch_configuration(CONFIG_ID).await?;
        let mut last = Value::Null;
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            match tokio::time::timeout_at(deadline, stream.next()).await {
                Err(_) => return Ok::<_, anyhow::Error>((None, last)),
                Ok(None) => bail!("the watch ended"),
                Ok(Some(Err(e))) => return Err(e.into()),
                Ok(Some(Ok(WatchEvent::Deleted))) => bail!("the configuration was deleted"),
                Ok(Some(Ok(WatchEvent::Snapshot(snapshot)))) => {
                    let results = &snapshot["metrics"]["results"];
                    let count = |m: &str| results[m].as_u64().unwrap_or(0);
                    last = snapshot.clone();
                    if count("current") >= want
                        && ["applying", "rebooting", "error", "rolledback"].iter().all(|m| count(m) == 0)
                    {
                        return Ok((Some(created.elapsed()), last));
                    }
                }
            }
        }
    };
    let hold = !args.report_on_arrival;
    let arrivals = async {
        fleet.send_all(&Command::Arrivals { timeout_ms }).await?;
        let arrivals = fleet.recv_all().await?;
        let arrived = Instant::now();
        let hub_cpu_arrived = procfs::cpu_time(pid)?;
        let mut reported = None;
        if hold {
            // Every device has its patch: now all agents report at once.
            fleet.send_all(&Command::Report { timeout_ms }).await?;
            let (mut done, mut errors) = (0, 0);
            for event in fleet.recv_all().await? {
                if let Event::Reported { done: d, errors: e, .. } = event {
                    done += d;
                    errors += e;
                }
            }
            reported = Some((arrived.elapsed(), done, errors));
        }
        Ok::<_, anyhow::Error>((arrivals, arrived, hub_cpu_arrived, reported))
    };
    let (watched, arrivals) = tokio::join!(watch, arrivals);
    let (all_current, last_snapshot) = watched?;
    let (events, arrived, hub_cpu_arrived, reported) = arrivals?;
    let hub_cpu_total = procfs::cpu_time(pid)?.saturating_sub(hub_cpu);
    let hub_cpu_patches = hub_cpu_arrived.saturating_sub(hub_cpu);

    let (mut delays, mut missing, mut report_errors, mut agent_error) = (Vec::new(), 0, 0, None);
    for event in events {
        match event {
            Event::Arrivals { times_us, missing: m, report_errors: r, first_error } => {
                delays.extend(
                    times_us.iter().map(|t| i64::try_from(*t).unwrap_or(i64::MAX) - created_us as i64),
                );
                missing += m;
                report_errors += r;
                agent_error = agent_error.or(first_error);
            }
            other => bail!("unexpected worker event {other:?}"),
        }
    }
    delays.sort_unstable();
    let within_1s = delays.iter().filter(|d| **d <= 1_000_000).count();

    let mut report = report::Report::new(
        "rollout",
        json!({"devices": n, "hub_open_files_limit": limit, "configuration": CONFIG_ID, "smoke": args.common.smoke}),
    );
    report.row("devices (N)", ok);
    report.row("hub open-files limit", limit);
    report.decimal("create call (ms)", create_call.as_secs_f64() * 1000.0, 1);
    report.row("devices with the patch", delays.len() as u64);
    report.row("devices without it (timeout)", missing);
    report.row("devices with it <= 1 s after create", within_1s as u64);
    report.decimal("patch arrival p50 (ms after create)", quantile_ms(&delays, 0.5), 1);
    report.decimal("patch arrival p99 (ms after create)", quantile_ms(&delays, 0.99), 1);
    report.decimal("patch arrival max (ms after create)", quantile_ms(&delays, 1.0), 1);
    report.decimal("all patches arrived (s after create)", (arrived - created).as_secs_f64(), 2);
    report.row("agents report", if hold { "all at once after the last arrival" } else { "each on arrival" });
    if let Some((took, done, errors)) = reported {
        report.decimal("all N current reports acknowledged (s after they started)", took.as_secs_f64(), 2);
        report.row("current reports answered / failed", format!("{done} / {errors}"));
    }
    match all_current {
        Some(t) => {
            report.decimal("metrics current = N (s after create)", t.as_secs_f64(), 2);
            if hold {
                let after = t.saturating_sub(arrived - created);
                report.decimal("metrics current = N (s after reports started)", after.as_secs_f64(), 2);
            }
        }
        None => {
            report.row("metrics current = N (s after create)", format!("not within {} s", timeout.as_secs()))
        }
    }
    report.row("final metrics", last_snapshot["metrics"]["results"].clone());
    report.row("final system metrics", last_snapshot["systemMetrics"]["results"].clone());
    report.row("agent report errors", report_errors);
    if let Some(e) = agent_error {
        report.row("first agent error", e);
    }
    report.decimal("hub CPU create → all patches arrived (s)", hub_cpu_patches.as_secs_f64(), 2);
    report.decimal("hub CPU create → all current (s)", hub_cpu_total.as_secs_f64(), 2);
    report.row("generator processes (workers + parent)", (fleet.processes() + 1) as u64);
    report.finish(&args.common.out)?;
    fleet.close().await?;
    hub.stop().await
}
