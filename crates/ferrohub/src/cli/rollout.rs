//! `ferrohub firmware rollout create|show|list|pause|resume|cancel|rollback`:
//! staged rollouts of a hosted image (a ferrohub addition).

use anyhow::Context as _;
use clap::{Args, Subcommand};
use ferrohub_service_client::{ServiceClient, WatchEvent, WatchStream};
use serde_json::{json, Value};

use super::progress::{ProgressView, Row};

use super::args::Common;
use super::context::Context;
use super::firmware::{CommonOnly, ImageArgs};
use super::Outcome;

#[derive(Debug, Subcommand)]
pub(crate) enum RolloutCommand {
    /// Create a rollout and hand its first wave the update.
    // `--version` names the firmware here, not ferrohub's own version.
    #[command(disable_version_flag = true)]
    Create(Box<RolloutCreateArgs>),
    /// Show a rollout: state, counts per wave and each device's phase.
    Show(RolloutShowArgs),
    /// List rollouts (without their devices).
    List(CommonOnly),
    /// Hold a rollout: nobody new is handed the update.
    Pause(RolloutIdArgs),
    /// Let a paused rollout go on.
    Resume(RolloutIdArgs),
    /// Stop a rollout for good (devices already handed the image keep it).
    Cancel(RolloutIdArgs),
    /// Stop a rollout and offer every device handed the update the version
    /// it reported when it joined.
    Rollback(RolloutIdArgs),
    /// Delete a rollout that is not running or paused, with its
    /// configurations and tags (devices keep the firmware they run).
    Delete(RolloutIdArgs),
    /// Follow a rollout live: bars per state and per wave on a terminal,
    /// plain lines otherwise. Exits 0 when it succeeded, 2 when it halted,
    /// 3 when it was cancelled or rolled back, 1 on any error.
    Watch(RolloutIdArgs),
}

#[derive(Debug, Args)]
pub(crate) struct RolloutCreateArgs {
    /// The rollout id (lower-case letters, digits, '-', '_').
    #[arg(long = "rollout-id", visible_alias = "id", value_name = "ID")]
    pub(crate) id: String,
    #[command(flatten)]
    pub(crate) image: ImageArgs,
    /// Which devices, e.g. `tags.devicetype='chiller'`. Devices matching
    /// later join the current wave.
    #[arg(long, visible_alias = "tc", value_name = "CONDITION")]
    pub(crate) target_condition: String,
    /// Priority of the rollout's configuration.
    #[arg(long, allow_negative_numbers = true, default_value_t = 20, value_name = "N")]
    pub(crate) priority: i64,
    /// Cumulative percentages of the devices per wave, the last 100.
    #[arg(long, value_delimiter = ',', value_parser = parse_percent, default_value = "10,50,100")]
    pub(crate) waves: Vec<u32>,
    /// Most devices handed the update per minute [default: no limit].
    #[arg(long, value_name = "N")]
    pub(crate) max_per_minute: Option<u32>,
    /// Percent of a wave's devices (with the earlier waves') that must
    /// succeed before the next wave starts.
    #[arg(long, value_parser = parse_percent, default_value = "90", value_name = "PCT")]
    pub(crate) success_threshold: u32,
    /// Percent of the devices handed the update whose failure halts it.
    #[arg(long, value_parser = parse_percent, default_value = "10", value_name = "PCT")]
    pub(crate) failure_threshold: u32,
    /// How long a device may take from hand-off to a result (e.g. 30m, 90s).
    #[arg(long, value_parser = parse_duration, default_value = "30m", value_name = "DURATION")]
    pub(crate) device_timeout: u64,
    /// Attempts after a device's first failed one.
    #[arg(long, default_value_t = 0, value_name = "N")]
    pub(crate) retries: u32,
    /// How long an updated device must stay connected at `current` to count
    /// as a success (e.g. 5m, 0s).
    #[arg(long, value_parser = parse_duration, default_value = "60s", value_name = "DURATION")]
    pub(crate) soak: u64,
    /// Where devices fetch the image [default: the hub's own address].
    #[arg(long, value_name = "URI")]
    pub(crate) package_uri: Option<String>,
    #[command(flatten)]
    pub(crate) common: Common,
}

#[derive(Debug, Args)]
pub(crate) struct RolloutIdArgs {
    /// The rollout id.
    #[arg(long = "rollout-id", visible_alias = "id", value_name = "ID")]
    pub(crate) id: String,
    #[command(flatten)]
    pub(crate) common: Common,
}

#[derive(Debug, Args)]
pub(crate) struct RolloutShowArgs {
    /// The rollout id.
    #[arg(long = "rollout-id", visible_alias = "id", value_name = "ID")]
    pub(crate) id: String,
    /// Leave out the per-device list.
    #[arg(long)]
    pub(crate) no_devices: bool,
    #[command(flatten)]
    pub(crate) common: Common,
}

/// `90` or `90%`.
pub(crate) fn parse_percent(text: &str) -> Result<u32, String> {
    let digits = text.trim().trim_end_matches('%');
    match digits.parse::<u32>() {
        Ok(n) if n <= 100 => Ok(n),
        _ => Err(format!("'{text}' is not a percentage from 0 to 100")),
    }
}

/// `90`, `90s`, `5m` or `2h`, in seconds.
pub(crate) fn parse_duration(text: &str) -> Result<u64, String> {
    let t = text.trim();
    let (digits, unit) = match t.find(|c: char| !c.is_ascii_digit()) {
        Some(i) => t.split_at(i),
        None => (t, "s"),
    };
    let scale = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        _ => return Err(format!("'{text}' is not a duration like 90s, 5m or 2h")),
    };
    digits
        .parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(scale))
        .ok_or_else(|| format!("'{text}' is not a duration like 90s, 5m or 2h"))
}

/// Runs one `firmware rollout` subcommand.
pub(crate) async fn run(command: RolloutCommand) -> anyhow::Result<Outcome> {
    let (common, id, action) = match command {
        RolloutCommand::Create(args) => {
            let ctx = Context::resolve(&args.common)?;
            let client = ctx.client()?;
            let mut body = json!({
                "id": args.id,
                "targetCondition": args.target_condition,
                "waves": args.waves,
                "successThreshold": args.success_threshold,
                "failureThreshold": args.failure_threshold,
                "priority": args.priority,
                "deviceTimeoutSeconds": args.device_timeout,
                "retries": args.retries,
                "soakSeconds": args.soak,
            });
            let optional = [
                ("version", args.image.fw_version.map(|v| json!(v))),
                ("deviceType", args.image.device_type.map(|v| json!(v))),
                ("sha256", args.image.sha256.map(|v| json!(v))),
                ("maxPerMinute", args.max_per_minute.map(|v| json!(v))),
                ("packageUri", args.package_uri.map(|v| json!(v))),
            ];
            for (key, value) in optional {
                if let Some(value) = value {
                    body[key] = value;
                }
            }
            return Outcome::value(&ctx, &client.create_rollout(&body).await?);
        }
        RolloutCommand::List(args) => {
            let ctx = Context::resolve(&args.common)?;
            return Outcome::value(&ctx, &ctx.client()?.list_rollouts().await?);
        }
        RolloutCommand::Show(a) => {
            let ctx = Context::resolve(&a.common)?;
            return Outcome::value(&ctx, &ctx.client()?.get_rollout_with(&a.id, !a.no_devices).await?);
        }
        RolloutCommand::Watch(a) => {
            let ctx = Context::resolve(&a.common)?;
            return Ok(Outcome::Exit(watch(&ctx.client()?, &a.id).await?));
        }
        RolloutCommand::Delete(a) => {
            let ctx = Context::resolve(&a.common)?;
            ctx.client()?.delete_rollout(&a.id).await?;
            return Ok(Outcome::Nothing);
        }
        RolloutCommand::Pause(a) => (a.common, a.id, "pause"),
        RolloutCommand::Resume(a) => (a.common, a.id, "resume"),
        RolloutCommand::Cancel(a) => (a.common, a.id, "cancel"),
        RolloutCommand::Rollback(a) => (a.common, a.id, "rollback"),
    };
    let ctx = Context::resolve(&common)?;
    Outcome::value(&ctx, &ctx.client()?.rollout_action(&id, action).await?)
}

/// Follows a rollout until it ends; returns the exit code its end calls
/// for (0 succeeded, 2 halted, 3 cancelled or rolled back). Ctrl-C stops
/// watching with 1 (nothing ended).
pub(crate) async fn watch(client: &ServiceClient, id: &str) -> anyhow::Result<u8> {
    let mut stream = client.watch_rollout(id).await?;
    let mut view = ProgressView::for_stdout();
    let code = follow(&mut stream, &mut view, id).await;
    view.finish();
    code
}

async fn follow(stream: &mut WatchStream, view: &mut ProgressView, id: &str) -> anyhow::Result<u8> {
    loop {
        let event = tokio::select! {
            _ = tokio::signal::ctrl_c() => return Ok(1),
            event = stream.next() => event,
        };
        let rollout = match event.with_context(|| format!("the hub ended the watch of rollout '{id}'"))?? {
            WatchEvent::Deleted => anyhow::bail!("rollout '{id}' no longer exists"),
            WatchEvent::Snapshot(rollout) => rollout,
        };
        view.update(&rows(&rollout));
        let state = rollout["state"].as_str().unwrap_or_default();
        let code = match state {
            "succeeded" => 0,
            "halted" => 2,
            "cancelled" | "rolledBack" => 3,
            _ => continue,
        };
        let reason = rollout["reason"].as_str().unwrap_or_default();
        view.println(&format!("rollout '{id}' {state}: {reason}"));
        return Ok(code);
    }
}

/// One row per member phase (out of all members), then one per wave
/// (succeeded out of the wave's devices, with where the wave stands).
fn rows(rollout: &Value) -> Vec<Row> {
    let n = |v: &Value| v.as_u64().unwrap_or(0);
    let totals = &rollout["totals"];
    let devices = n(&totals["devices"]);
    let mut rows: Vec<Row> = ["succeeded", "soaking", "updating", "failed", "waiting"]
        .iter()
        .map(|phase| Row::new(*phase, n(&totals[*phase]), Some(devices)))
        .collect();
    rows[0].highlight = true;
    rows[0].note = Some(format!(
        "{} wave {}/{}",
        rollout["state"].as_str().unwrap_or_default(),
        n(&rollout["currentWave"]),
        rollout["waves"].as_array().map_or(0, Vec::len)
    ));
    for wave in rollout["waveProgress"].as_array().into_iter().flatten() {
        let mut row =
            Row::new(format!("wave{}", n(&wave["wave"])), n(&wave["succeeded"]), Some(n(&wave["devices"])));
        let failed = n(&wave["failed"]);
        row.note = Some(match (wave["started"].as_bool().unwrap_or(false), failed) {
            (false, _) => "not started".to_owned(),
            (true, 0) => "started".to_owned(),
            (true, f) => format!("started, {f} failed"),
        });
        rows.push(row);
    }
    rows
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_and_percentages_parse() {
        assert_eq!(parse_duration("90"), Ok(90));
        assert_eq!(parse_duration("90s"), Ok(90));
        assert_eq!(parse_duration("5m"), Ok(300));
        assert_eq!(parse_duration("2h"), Ok(7200));
        for bad in ["", "m", "5d", "-1s", "1.5m"] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
        assert_eq!(parse_percent("95%"), Ok(95));
        assert!(parse_percent("101").is_err());
    }
}

#[cfg(test)]
mod watch_tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::cli::progress::plain_line;

    #[test]
    fn rows_show_phases_then_waves() {
        let rollout = json!({
            "state": "running", "currentWave": 2, "waves": [50, 100],
            "totals": {"devices": 4, "succeeded": 2, "soaking": 0, "updating": 1, "failed": 0, "waiting": 1},
            "waveProgress": [
                {"wave": 1, "devices": 2, "succeeded": 2, "failed": 0, "started": true},
                {"wave": 2, "devices": 2, "succeeded": 0, "failed": 1, "started": true},
            ],
        });
        let line = plain_line(&rows(&rollout));
        assert!(line.contains("succeeded=2/4"), "{line}");
        assert!(line.contains("waiting=1/4"), "{line}");
        assert!(line.contains("wave2=0/2"), "{line}");
        assert!(line.contains("running wave 2/2"), "{line}");
        assert!(line.contains("1 failed"), "{line}");
    }
}
