//! `ferrohub firmware upload|list|show|delete|public-key`: the hub's
//! firmware images, and `ferrohub firmware rollout ...`: staged rollouts of
//! them (ferrohub additions; az has no counterpart).

use std::path::PathBuf;

use clap::{Args, Subcommand};
use serde_json::Value;

use super::args::Common;
use super::context::Context;
use super::Outcome;

#[derive(Debug, Subcommand)]
pub(crate) enum FirmwareCommand {
    /// Upload an image; the hub stores it by SHA-256 and signs its manifest.
    // `--version` names the firmware here, not ferrohub's own version.
    #[command(disable_version_flag = true)]
    Upload(UploadArgs),
    /// List the hosted images, newest first.
    List(CommonOnly),
    /// Show one image's record.
    Show(ShaArgs),
    /// Delete an image (refused while a configuration names it).
    Delete(ShaArgs),
    /// Print the public key devices verify manifests with (PEM).
    #[command(name = "public-key")]
    PublicKey(CommonOnly),
    /// Staged rollouts of an image to a fleet, wave by wave.
    #[command(subcommand)]
    Rollout(RolloutCommand),
}

#[derive(Debug, Subcommand)]
pub(crate) enum RolloutCommand {
    /// Create a rollout and start its first wave.
    Create(RolloutCreateArgs),
    /// Show a rollout with its progress per wave.
    Show(RolloutIdArgs),
    /// List rollouts.
    List(CommonOnly),
    /// Hold a running rollout: no new wave starts.
    Pause(RolloutIdArgs),
    /// Let a paused rollout advance again.
    Resume(RolloutIdArgs),
    /// Stop a rollout for good (devices already handed the image keep it).
    Cancel(RolloutIdArgs),
}

#[derive(Debug, Args)]
pub(crate) struct RolloutCreateArgs {
    /// The rollout id (lower-case letters, digits, '-', '_').
    #[arg(long, visible_alias = "rollout-id", value_name = "ID")]
    pub(crate) id: String,
    /// The image's SHA-256 (64 hex digits).
    #[arg(long, value_name = "SHA256")]
    pub(crate) sha256: String,
    /// Which devices, e.g. `tags.devicetype='chiller'` (evaluated once, at
    /// creation).
    #[arg(long, visible_alias = "tc", value_name = "CONDITION")]
    pub(crate) target_condition: String,
    /// Cumulative percentages of the devices per wave, the last 100.
    #[arg(long, value_delimiter = ',', value_parser = parse_percent, default_value = "10,50,100")]
    pub(crate) waves: Vec<u32>,
    /// Percent of the started devices that must succeed before the next wave.
    #[arg(long, value_parser = parse_percent, default_value = "90", value_name = "PCT")]
    pub(crate) success_threshold: u32,
    /// Percent of the started devices whose failure halts the rollout.
    #[arg(long, value_parser = parse_percent, default_value = "10", value_name = "PCT")]
    pub(crate) failure_threshold: u32,
    /// Priority of the rollout's configuration.
    #[arg(long, allow_negative_numbers = true, default_value_t = 20, value_name = "N")]
    pub(crate) priority: i64,
    #[command(flatten)]
    pub(crate) common: Common,
}

#[derive(Debug, Args)]
pub(crate) struct RolloutIdArgs {
    /// The rollout id.
    #[arg(long, visible_alias = "rollout-id", value_name = "ID")]
    pub(crate) id: String,
    #[command(flatten)]
    pub(crate) common: Common,
}

/// `90` or `90%`.
fn parse_percent(text: &str) -> Result<u32, String> {
    let digits = text.trim().trim_end_matches('%');
    match digits.parse::<u32>() {
        Ok(n) if n <= 100 => Ok(n),
        _ => Err(format!("'{text}' is not a percentage from 0 to 100")),
    }
}

async fn rollout(command: RolloutCommand) -> anyhow::Result<Outcome> {
    let (common, id, action) = match command {
        RolloutCommand::Create(args) => {
            let ctx = Context::resolve(&args.common)?;
            let client = ctx.client()?;
            let body = serde_json::json!({
                "id": args.id,
                "sha256": args.sha256,
                "targetCondition": args.target_condition,
                "packageUri": client.firmware_uri(&args.sha256),
                "waves": args.waves,
                "successThreshold": args.success_threshold,
                "failureThreshold": args.failure_threshold,
                "priority": args.priority,
            });
            return Outcome::value(&ctx, &client.create_rollout(&body).await?);
        }
        RolloutCommand::List(args) => {
            let ctx = Context::resolve(&args.common)?;
            return Outcome::value(&ctx, &ctx.client()?.list_rollouts().await?);
        }
        RolloutCommand::Show(a) => (a.common, a.id, None),
        RolloutCommand::Pause(a) => (a.common, a.id, Some("pause")),
        RolloutCommand::Resume(a) => (a.common, a.id, Some("resume")),
        RolloutCommand::Cancel(a) => (a.common, a.id, Some("cancel")),
    };
    let ctx = Context::resolve(&common)?;
    let client = ctx.client()?;
    let value = match action {
        None => client.get_rollout(&id).await?,
        Some(action) => client.rollout_action(&id, action).await?,
    };
    Outcome::value(&ctx, &value)
}

#[derive(Debug, Args)]
pub(crate) struct UploadArgs {
    /// The firmware version, e.g. 2.8.5.
    #[arg(long = "version", id = "fw_version", value_name = "VERSION")]
    pub(crate) fw_version: String,
    /// The device type it is for, e.g. chiller.
    #[arg(long, value_name = "TYPE")]
    pub(crate) device_type: Option<String>,
    /// The image file.
    #[arg(value_name = "FILE")]
    pub(crate) file: PathBuf,
    #[command(flatten)]
    pub(crate) common: Common,
}

#[derive(Debug, Args)]
pub(crate) struct ShaArgs {
    /// The image's SHA-256 (64 hex digits).
    #[arg(long, value_name = "SHA256")]
    pub(crate) sha256: String,
    #[command(flatten)]
    pub(crate) common: Common,
}

#[derive(Debug, Args)]
pub(crate) struct CommonOnly {
    #[command(flatten)]
    pub(crate) common: Common,
}

/// The record plus where devices fetch it, ready for a desired `firmware`
/// property.
fn with_uri(client: &ferrohub_service_client::ServiceClient, mut record: Value) -> Value {
    if let Some(sha) = record.get("sha256").and_then(Value::as_str).map(str::to_owned) {
        record["fwPackageURI"] = Value::String(client.firmware_uri(&sha));
    }
    record
}

/// Runs one `firmware` subcommand.
pub(crate) async fn run(command: FirmwareCommand) -> anyhow::Result<Outcome> {
    match command {
        FirmwareCommand::Upload(args) => {
            let ctx = Context::resolve(&args.common)?;
            let client = ctx.client()?;
            let record =
                client.upload_firmware(&args.file, &args.fw_version, args.device_type.as_deref()).await?;
            Outcome::value(&ctx, &with_uri(&client, record))
        }
        FirmwareCommand::List(args) => {
            let ctx = Context::resolve(&args.common)?;
            let client = ctx.client()?;
            let list: Vec<Value> =
                client.list_firmware().await?.into_iter().map(|r| with_uri(&client, r)).collect();
            Outcome::value(&ctx, &list)
        }
        FirmwareCommand::Show(args) => {
            let ctx = Context::resolve(&args.common)?;
            let client = ctx.client()?;
            let record = client.get_firmware(&args.sha256).await?;
            Outcome::value(&ctx, &with_uri(&client, record))
        }
        FirmwareCommand::Delete(args) => {
            let ctx = Context::resolve(&args.common)?;
            ctx.client()?.delete_firmware(&args.sha256).await?;
            Ok(Outcome::Nothing)
        }
        FirmwareCommand::Rollout(command) => rollout(command).await,
        FirmwareCommand::PublicKey(args) => {
            let ctx = Context::resolve(&args.common)?;
            Ok(Outcome::Text(ctx.client()?.firmware_public_key().await?.trim_end().to_owned()))
        }
    }
}
