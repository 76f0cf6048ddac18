//! `startup`: time from spawning the hub to its ready line with M twins in
//! the store (median of several starts), and its memory once started.

use std::path::PathBuf;
use std::time::Duration;

use clap::Args;
use serde_json::json;

use crate::hub::BenchHub;
use crate::query::{median_p90, prepared_dir, settle};
use crate::report::Report;
use crate::{procfs, Common};

/// `startup` flags.
#[derive(Debug, Clone, Args)]
pub(crate) struct StartupArgs {
    #[command(flatten)]
    pub(crate) common: Common,
    /// Twins in the store.
    #[arg(long, value_name = "M", default_value_t = 1_000_000)]
    pub(crate) twins: usize,
    /// How many starts (the median is reported).
    #[arg(long, value_name = "K", default_value_t = 3)]
    pub(crate) runs: usize,
    /// A data dir to reuse (seeded up to M twins first if it holds fewer;
    /// kept afterwards) [default: a temporary one].
    #[arg(long, value_name = "DIR")]
    pub(crate) data_dir: Option<PathBuf>,
}

/// Runs the scenario.
pub(crate) async fn run(args: StartupArgs) -> anyhow::Result<()> {
    let (twins, runs) = if args.common.smoke { (2_000, 2) } else { (args.twins, args.runs.max(1)) };
    let bin = args.common.hub_bin()?;
    let (dir, temporary, seeded) = prepared_dir(args.data_dir.as_ref(), twins).await?;
    let mut report =
        Report::new("startup", json!({"twins": twins, "runs": runs, "smoke": args.common.smoke}));
    report.row("twins", twins);
    if let Some(s) = seeded {
        report.decimal("seeding (s)", s, 1);
    }
    let mut samples = Vec::with_capacity(runs);
    let (mut rss, mut busy) = (0, Duration::ZERO);
    for run in 0..runs {
        // Only the last start removes a temporary dir.
        let hub = BenchHub::start_in(&bin, &dir, temporary && run + 1 == runs, &[]).await?;
        samples.push(hub.startup);
        rss = procfs::rss_kib(hub.pid())?;
        if run + 1 == runs {
            busy = settle(hub.pid(), Duration::from_secs(900)).await?;
        }
        hub.stop().await?;
    }
    let (median, _) = median_p90(&samples);
    report.decimal("startup median (s)", median / 1e3, 2);
    report.row(
        "startups (s)",
        samples.iter().map(|d| (d.as_secs_f64() * 100.0).round() / 100.0).collect::<Vec<_>>(),
    );
    report.row("RSS after start (KiB)", rss);
    report.decimal("RSS per twin (KiB)", rss as f64 / twins.max(1) as f64, 2);
    report.decimal("busy after ready (s)", busy.as_secs_f64(), 1);
    report.finish(&args.common.out)
}
