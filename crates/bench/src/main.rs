//! `ferrohub-bench`: the load generator and benchmark scenarios.
//!
//! Each scenario is one command that starts what it measures (a release
//! `ferrohub serve` on a temporary data dir and free ports, Mosquitto for
//! the telemetry comparison), drives it, prints a result table and writes
//! the same numbers as JSON to `--out DIR/<scenario>.json`. `--smoke` runs a
//! seconds-long version of each (CI runs those to keep them working); the
//! numbers in BENCHMARKS.md come from full runs. These are measurements,
//! never pass/fail tests.

mod hub;
mod procfs;
mod query;
mod report;
mod seed;
mod soak;
mod startup;

// Load scenarios (connect, reported, rollout, telemetry) and their worker
// processes.
mod connect;
mod fleet;
mod reported;
mod rollout;
mod telemetry;
mod worker;

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(name = "ferrohub-bench", about = "Benchmarks ferrohub against the targets of BENCHMARKS.md.")]
struct Cli {
    #[command(subcommand)]
    scenario: Scenario,
}

/// Flags every scenario takes.
#[derive(Debug, Clone, Args)]
pub(crate) struct Common {
    /// The `ferrohub` binary to benchmark [default: the one next to this
    /// binary, i.e. the same build profile].
    #[arg(long, value_name = "FILE")]
    pub(crate) hub_bin: Option<PathBuf>,
    /// Where result JSON goes.
    #[arg(long, value_name = "DIR", default_value = "bench-results")]
    pub(crate) out: PathBuf,
    /// A seconds-long run at tiny sizes (keeps the scenario working in CI).
    #[arg(long)]
    pub(crate) smoke: bool,
}

impl Common {
    /// The hub binary to run.
    pub(crate) fn hub_bin(&self) -> anyhow::Result<PathBuf> {
        if let Some(bin) = &self.hub_bin {
            return Ok(bin.clone());
        }
        let me = std::env::current_exe()?;
        let sibling = me.with_file_name("ferrohub");
        anyhow::ensure!(
            sibling.exists(),
            "no ferrohub binary next to {}; build it (cargo build --release -p ferrohub) or pass --hub-bin",
            me.display()
        );
        Ok(sibling)
    }
}

#[derive(Debug, Subcommand)]
enum Scenario {
    /// Start a hub and print what a scenario would use (a self-check).
    Probe(Common),

    // --- load scenarios: connections, reported patches, rollout, telemetry ---
    /// Open and hold N TLS MQTT connections: connect rate, hub RSS per
    /// connection, hub CPU.
    Connect(connect::ConnectArgs),
    /// Reported-property patches at several offered rates: achieved durable
    /// patches/s and acknowledgement latency.
    Reported(reported::ReportedArgs),
    /// A configuration targeting N connected devices: time until each has
    /// its desired patch and until the metrics show them all `current`.
    Rollout(rollout::RolloutArgs),
    /// Device-to-cloud QoS 1 throughput through ferrohub and through
    /// Mosquitto, one consumer each.
    Telemetry(telemetry::TelemetryArgs),
    /// Mixed load (connects, patches, telemetry, methods, C2D, queries,
    /// configurations) for a long time: hub memory and files over time,
    /// errors, latencies.
    Soak(soak::SoakArgs),
    /// One load-generator process (spawned by the scenarios; JSON lines on
    /// stdin/stdout).
    #[command(hide = true)]
    Worker,
    // --- end of load scenarios ---
    // Data scenarios (seed, query, startup).
    /// Bulk-loads twins into a stopped hub's data dir through the store.
    Seed(seed::SeedArgs),
    /// Query latency (two-clause COUNT, GROUP BY) and metric freshness over M twins.
    Query(query::QueryArgs),
    /// Time from start to ready with M twins in the store.
    Startup(startup::StartupArgs),
}

fn main() -> anyhow::Result<()> {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).init();
    let cli = Cli::parse();
    if matches!(cli.scenario, Scenario::Worker) {
        // One thread per worker process: the parallelism comes from the
        // processes, and the hub needs the cores more.
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
        return runtime.block_on(worker::run());
    }
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    runtime.block_on(async {
        match cli.scenario {
            Scenario::Probe(common) => probe(&common).await,
            Scenario::Connect(args) => connect::run(&args).await,
            Scenario::Reported(args) => reported::run(&args).await,
            Scenario::Rollout(args) => rollout::run(&args).await,
            Scenario::Telemetry(args) => telemetry::run(&args).await,
            Scenario::Soak(args) => soak::run(&args).await,
            Scenario::Worker => worker::run().await,
            // Data scenarios.
            Scenario::Seed(args) => {
                let took = seed::seed(&args).await?;
                println!(
                    "seeded {} twins into {} in {:.1} s",
                    args.twins,
                    args.data_dir.display(),
                    took.as_secs_f64()
                );
                Ok(())
            }
            Scenario::Query(args) => query::run(args).await,
            Scenario::Startup(args) => startup::run(args).await,
        }
    })
}

/// Starts a hub, reads its idle footprint, stops it.
async fn probe(common: &Common) -> anyhow::Result<()> {
    let hub = hub::BenchHub::start(&common.hub_bin()?, &[]).await?;
    let mut report = report::Report::new("probe", serde_json::json!({}));
    report.row("hub pid", hub.pid());
    report.row("https port", hub.https_port);
    report.row("mqtt port", hub.mqtt_port);
    report.decimal("startup (s)", hub.startup.as_secs_f64(), 3);
    report.row("idle RSS (KiB)", procfs::rss_kib(hub.pid())?);
    report.decimal("CPU so far (s)", procfs::cpu_time(hub.pid())?.as_secs_f64(), 2);
    report.row("open files limit", procfs::open_files_limit(hub.pid())?);
    let stats = hub.service().await?.device_statistics().await?;
    report.row("devices", stats.total_device_count);
    report.row("CA", hub.ca_file().display().to_string());
    report.finish(&common.out)?;
    hub.stop().await
}
