//! `connect`: open and hold N TLS MQTT connections; connect rate, the hub's
//! resident memory per connection above its idle baseline, hub CPU.

use std::time::{Duration, Instant};

use clap::Args;
use serde_json::json;

use crate::fleet::{self, Fleet, Spec};
use crate::{procfs, report, Common};

#[derive(Debug, Clone, Args)]
pub(crate) struct ConnectArgs {
    #[command(flatten)]
    pub(crate) common: Common,
    /// Devices to connect [default: the hub's open-files limit less 500].
    #[arg(long)]
    pub(crate) devices: Option<usize>,
    /// Connection attempts in flight at once per worker process.
    #[arg(long, default_value_t = 128)]
    pub(crate) concurrency: usize,
    /// How long to hold the connections before measuring memory (s).
    #[arg(long, default_value_t = 5)]
    pub(crate) settle: u64,
}

pub(crate) async fn run(args: &ConnectArgs) -> anyhow::Result<()> {
    let hub = fleet::start_hub(&args.common.hub_bin()?).await?;
    let pid = hub.pid();
    let (n, limit) = fleet::device_count(args.devices, args.common.smoke, 50, pid)?;
    let service = hub.service().await?;
    let key = fleet::random_key();
    let registering = Instant::now();
    fleet::register(&service, "conn-", n, &key, None).await?;
    let registered = registering.elapsed();
    let settle = Duration::from_secs(if args.common.smoke { 1 } else { args.settle });
    tokio::time::sleep(settle.min(Duration::from_secs(2))).await;
    let idle_rss = procfs::rss_kib(pid)?;
    let idle_fds = fleet::open_fds(pid);

    let spec = Spec {
        host: fleet::hub_host(&service),
        port: hub.mqtt_port,
        ca_file: hub.ca_file(),
        prefix: "conn-".into(),
        key,
        first: 0,
        count: n,
        desired: true,
        agent: false,
        hold_reports: false,
        concurrency: args.concurrency,
        // Smoke runs take the multi-address path too, to keep it working.
        spread: if args.common.smoke { 2 } else { 0 },
    };
    let mut fleet = Fleet::start(&spec).await?;
    let cpu_before = procfs::cpu_time(pid)?;
    let gen_cpu_before = fleet::cpu_of(&fleet.pids());
    let started = Instant::now();
    let (ok, failed, first_error) = fleet.connect().await?;
    let ramp = started.elapsed();
    let hub_cpu = procfs::cpu_time(pid)?.saturating_sub(cpu_before);
    let gen_cpu = fleet::cpu_of(&fleet.pids()).saturating_sub(gen_cpu_before);
    tokio::time::sleep(settle).await;
    let held_rss = procfs::rss_kib(pid)?;
    let held_fds = fleet::open_fds(pid);
    let gen_rss: u64 = fleet.pids().iter().filter_map(|p| procfs::rss_kib(*p).ok()).sum();

    let mut report = report::Report::new(
        "connect",
        json!({"devices": n, "hub_open_files_limit": limit, "concurrency_per_worker": args.concurrency,
               "smoke": args.common.smoke}),
    );
    report.row("devices (N)", n as u64);
    report.row("hub open-files limit", limit);
    report.row("connected", ok);
    report.row("failed", failed);
    if let Some(e) = first_error {
        report.row("first error", e);
    }
    report.decimal("registration (s, bulk REST)", registered.as_secs_f64(), 2);
    report.decimal("time to all connected (s)", ramp.as_secs_f64(), 2);
    report.decimal("connect rate (conn/s)", ok as f64 / ramp.as_secs_f64(), 0);
    report.row("hub idle RSS (KiB)", idle_rss);
    report.row("hub RSS with N connected (KiB)", held_rss);
    report.decimal(
        "hub RSS per connection (KiB)",
        (held_rss as f64 - idle_rss as f64) / (ok.max(1) as f64),
        2,
    );
    report.row("hub open fds idle / connected", format!("{idle_fds} / {held_fds}"));
    report.decimal("hub CPU during ramp (s)", hub_cpu.as_secs_f64(), 2);
    report.decimal("hub CPU per 1000 connects (s)", hub_cpu.as_secs_f64() * 1000.0 / ok.max(1) as f64, 3);
    report.decimal("generator CPU during ramp (s)", gen_cpu.as_secs_f64(), 2);
    report.row("generator processes (workers + parent)", (fleet.processes() + 1) as u64);
    report.row("loopback addresses dialled", fleet.addresses as u64);
    report.row("generator workers RSS (KiB)", gen_rss);
    report.finish(&args.common.out)?;
    fleet.close().await?;
    hub.stop().await
}
