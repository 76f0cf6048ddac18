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
    /// Delete an image (refused while a configuration or rollout names it).
    Delete(ShaArgs),
    /// Print the public key devices verify manifests with (PEM).
    #[command(name = "public-key")]
    PublicKey(CommonOnly),
    /// Staged rollouts of an image to a fleet, wave by wave.
    #[command(subcommand)]
    Rollout(super::rollout::RolloutCommand),
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
        FirmwareCommand::Rollout(command) => super::rollout::run(command).await,
        FirmwareCommand::PublicKey(args) => {
            let ctx = Context::resolve(&args.common)?;
            Ok(Outcome::Text(ctx.client()?.firmware_public_key().await?.trim_end().to_owned()))
        }
    }
}
