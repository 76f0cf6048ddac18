//! `reported`: N connected devices send reported-property patches at
//! several total offered rates; achieved durable patches/s and the
//! acknowledgement latency (send → the hub's 204 on `$iothub/twin/res/`,
//! which it sends only after the store's commit) per rate.

use std::time::{Duration, Instant};

use anyhow::Context as _;
use clap::Args;
use serde_json::json;

use crate::fleet::{self, Command, Fleet, Spec};
use crate::{procfs, report, Common};

#[derive(Debug, Clone, Args)]
pub(crate) struct ReportedArgs {
    #[command(flatten)]
    pub(crate) common: Common,
    /// Devices [default: the hub's open-files limit less 500].
    #[arg(long)]
    pub(crate) devices: Option<usize>,
    /// Total offered rates in patches/s, in order; `max` = as fast as
    /// `--max-inflight` outstanding patches per device allow.
    #[arg(long, value_delimiter = ',', default_value = "500,1000,2000,25000,50000,max")]
    pub(crate) rates: Vec<String>,
    /// Seconds per rate.
    #[arg(long, default_value_t = 10)]
    pub(crate) duration: u64,
    /// Outstanding patches per device at a fixed rate (an offered patch for
    /// a device at this limit is skipped and counted).
    #[arg(long, default_value_t = 1)]
    pub(crate) inflight: u32,
    /// Outstanding patches per device in the `max` step.
    #[arg(long, default_value_t = 1)]
    pub(crate) max_inflight: u32,
}

pub(crate) async fn run(args: &ReportedArgs) -> anyhow::Result<()> {
    let hub = fleet::start_hub(&args.common.hub_bin()?).await?;
    let pid = hub.pid();
    let (n, limit) = fleet::device_count(args.devices, args.common.smoke, 20, pid)?;
    let (rates, duration) = if args.common.smoke && args.rates.len() > 2 {
        (vec!["200".to_owned(), "max".to_owned()], Duration::from_secs(2))
    } else if args.common.smoke {
        (args.rates.clone(), Duration::from_secs(2))
    } else {
        (args.rates.clone(), Duration::from_secs(args.duration))
    };
    let service = hub.service().await?;
    let key = fleet::random_key();
    fleet::register(&service, "rep-", n, &key, None).await?;
    let spec = Spec {
        host: fleet::hub_host(&service),
        port: hub.mqtt_port,
        ca_file: hub.ca_file(),
        prefix: "rep-".into(),
        key,
        first: 0,
        count: n,
        desired: true,
        agent: false,
        hold_reports: false,
        concurrency: 128,
        spread: 0,
    };
    let mut fleet = Fleet::start(&spec).await?;
    let (ok, failed, first_error) = fleet.connect().await?;
    anyhow::ensure!(failed == 0, "{failed} devices did not connect: {first_error:?}");
    tokio::time::sleep(Duration::from_secs(2)).await;

    let mut report = report::Report::new(
        "reported",
        json!({"devices": n, "hub_open_files_limit": limit, "rates": rates, "duration_s": duration.as_secs(),
               "inflight_per_device": args.inflight, "max_step_inflight_per_device": args.max_inflight,
               "smoke": args.common.smoke}),
    );
    report.row("devices (N)", ok);
    report.row("hub open-files limit", limit);
    report.row("seconds per rate", duration.as_secs());
    let mut best: f64 = 0.0;
    for rate in &rates {
        let total: f64 =
            if rate == "max" { 0.0 } else { rate.parse().with_context(|| format!("rate {rate}"))? };
        let inflight = if rate == "max" { args.max_inflight } else { args.inflight };
        let hub_cpu = procfs::cpu_time(pid)?;
        let gen_cpu = fleet::cpu_of(&fleet.pids());
        let started = Instant::now();
        let duration_ms = u64::try_from(duration.as_millis()).unwrap_or(u64::MAX);
        fleet
            .send_each(|share| Command::Reported {
                rate: total * share as f64 / n.max(1) as f64,
                duration_ms,
                inflight,
            })
            .await?;
        let sum = fleet.recv_load().await?;
        let elapsed = started.elapsed().as_secs_f64();
        let hub_cpu = procfs::cpu_time(pid)?.saturating_sub(hub_cpu).as_secs_f64();
        let gen_cpu = fleet::cpu_of(&fleet.pids()).saturating_sub(gen_cpu).as_secs_f64();
        let achieved = sum.acked_in_window as f64 / duration.as_secs_f64();
        best = best.max(achieved);
        let label = if rate == "max" { "max".to_owned() } else { format!("{rate}/s") };
        report.row(&format!("[{label}] offered"), sum.sent + sum.skipped);
        report.row(
            &format!("[{label}] sent / acked / errors / skipped"),
            format!("{} / {} / {} / {}", sum.sent, sum.acked, sum.errors, sum.skipped),
        );
        report.decimal(&format!("[{label}] achieved (acked patches/s)"), achieved, 0);
        report.decimal(&format!("[{label}] ack p50 (ms)"), sum.ms(0.5), 2);
        report.decimal(&format!("[{label}] ack p99 (ms)"), sum.ms(0.99), 2);
        report.decimal(&format!("[{label}] ack p999 (ms)"), sum.ms(0.999), 2);
        report.decimal(&format!("[{label}] ack max (ms)"), sum.histogram.max() as f64 / 1000.0, 2);
        report.decimal(&format!("[{label}] hub CPU (% of one core)"), hub_cpu * 100.0 / elapsed, 0);
        report.decimal(&format!("[{label}] generator CPU (% of one core)"), gen_cpu * 100.0 / elapsed, 0);
        if let Some(e) = sum.first_error {
            report.row(&format!("[{label}] first error"), e);
        }
    }
    report.decimal("best achieved (patches/s)", best, 0);
    report.row("generator processes (workers + parent)", (fleet.processes() + 1) as u64);
    report.finish(&args.common.out)?;
    fleet.close().await?;
    hub.stop().await
}
