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
    /// Print an image's desired `firmware` property (fwVersion, fwPackageURI,
    /// fwPackageCheckValue, fwManifest, fwSignature), ready for a
    /// configuration's content or a twin patch.
    // `--version` names the firmware here, not ferrohub's own version.
    #[command(disable_version_flag = true)]
    Desired(DesiredArgs),
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

/// An image named by version (and device type) or by SHA-256.
#[derive(Debug, Args)]
pub(crate) struct ImageArgs {
    /// The image by version (see `firmware list`).
    #[arg(long = "version", id = "fw_version", value_name = "VERSION", required_unless_present = "sha256")]
    pub(crate) fw_version: Option<String>,
    /// With --version, when several images share it: the device type's.
    #[arg(long, value_name = "TYPE")]
    pub(crate) device_type: Option<String>,
    /// The image by SHA-256 instead.
    #[arg(long, value_name = "SHA256", conflicts_with = "fw_version")]
    pub(crate) sha256: Option<String>,
}

#[derive(Debug, Args)]
pub(crate) struct DesiredArgs {
    #[command(flatten)]
    pub(crate) image: ImageArgs,
    #[command(flatten)]
    pub(crate) common: Common,
}

/// The one image `args` names.
async fn select(client: &ferrohub_service_client::ServiceClient, args: &ImageArgs) -> anyhow::Result<Value> {
    if let Some(sha) = &args.sha256 {
        return Ok(client.get_firmware(sha).await?);
    }
    let version = args.fw_version.as_deref().unwrap_or_default();
    let mut found: Vec<Value> = client
        .list_firmware()
        .await?
        .into_iter()
        .filter(|r| r["version"] == version)
        .filter(|r| args.device_type.as_ref().is_none_or(|t| r["deviceType"] == t.as_str()))
        .collect();
    match found.len() {
        0 => anyhow::bail!("no firmware image has version {version}"),
        1 => Ok(found.remove(0)),
        n => anyhow::bail!("{n} images have version {version}; add --device-type or use --sha256"),
    }
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
        FirmwareCommand::Desired(args) => {
            let ctx = Context::resolve(&args.common)?;
            let client = ctx.client()?;
            let record = select(&client, &args.image).await?;
            let sha = record["sha256"].as_str().unwrap_or_default();
            let desired = serde_json::json!({
                "fwVersion": record["version"],
                "fwPackageURI": client.firmware_uri(sha),
                "fwPackageCheckValue": sha,
                "fwManifest": record["fwManifest"],
                "fwSignature": record["fwSignature"],
            });
            Outcome::value(&ctx, &desired)
        }
        FirmwareCommand::Rollout(command) => super::rollout::run(command).await,
        FirmwareCommand::PublicKey(args) => {
            let ctx = Context::resolve(&args.common)?;
            Ok(Outcome::Text(ctx.client()?.firmware_public_key().await?.trim_end().to_owned()))
        }
    }
}
