//! `ferrohub c2d-message`: `send` is az's `az iot device c2d-message send`;
//! `purge` and `feedback` act as the service on a device's queue and on the
//! feedback the senders' `--ack` asked for; the device's side,
//! `receive|complete|reject|abandon`, is in [`super::c2d_device`].

use std::path::PathBuf;

use anyhow::{bail, Context as _};
use clap::{Args, Subcommand, ValueEnum};
use ferrohub_core::time::Timestamp;
use ferrohub_service_client::C2dMessage;

use super::args::Common;
use super::context::Context;
use super::Outcome;

/// az's body when neither `--data` nor `--data-file-path` is given.
pub(crate) const DEFAULT_DATA: &str = "Ping from Az CLI IoT Extension";

#[derive(Debug, Subcommand)]
pub(crate) enum C2dMessageCommand {
    /// Send a cloud-to-device message to a device.
    // Boxed: its many options would make every other variant as large.
    Send(Box<C2dSendArgs>),
    /// Remove every message queued for a device.
    Purge(C2dPurgeArgs),
    /// Read the oldest delivery feedback (up to 64 records) and complete it,
    /// or put it back with --abandon.
    Feedback(C2dFeedbackArgs),
    /// As the device: receive the oldest waiting message, locked for a minute.
    Receive(super::c2d_device::C2dReceiveArgs),
    /// As the device: complete a received message.
    Complete(super::c2d_device::C2dSettleArgs),
    /// As the device: reject (dead-letter) a received message.
    Reject(super::c2d_device::C2dSettleArgs),
    /// As the device: abandon a received message (it is delivered again).
    Abandon(super::c2d_device::C2dSettleArgs),
}

/// `--ack` values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum AckArg {
    /// No feedback (the same as leaving --ack out).
    None,
    /// Feedback when the device completes the message.
    Positive,
    /// Feedback when the message is dead-lettered: rejected, expired,
    /// delivered too often or purged.
    Negative,
    /// Both.
    Full,
}

impl AckArg {
    fn as_str(self) -> &'static str {
        match self {
            Self::None => "none",
            Self::Positive => "positive",
            Self::Negative => "negative",
            Self::Full => "full",
        }
    }
}

#[derive(Debug, Args)]
pub(crate) struct C2dSendArgs {
    /// The device id.
    #[arg(long, short = 'd', value_name = "ID")]
    pub(crate) device_id: String,
    /// The message body [default: "Ping from Az CLI IoT Extension"].
    #[arg(long, visible_alias = "da", value_name = "TEXT", conflicts_with = "data_file_path")]
    pub(crate) data: Option<String>,
    /// Read the message body from this file.
    #[arg(long, visible_alias = "dfp", value_name = "FILE")]
    pub(crate) data_file_path: Option<PathBuf>,
    /// Application properties: `key=value;key2=value2`.
    #[arg(long = "properties", visible_aliases = ["props"], short = 'p', value_name = "K=V;K2=V2")]
    pub(crate) properties: Option<String>,
    /// Message id [default: none].
    #[arg(long, visible_alias = "mid", value_name = "ID")]
    pub(crate) message_id: Option<String>,
    /// Correlation id.
    #[arg(long, visible_alias = "cid", value_name = "ID")]
    pub(crate) correlation_id: Option<String>,
    /// User id.
    #[arg(long, visible_alias = "uid", value_name = "ID")]
    pub(crate) user_id: Option<String>,
    /// Content type of the body.
    #[arg(long, visible_alias = "ct", value_name = "TYPE")]
    pub(crate) content_type: Option<String>,
    /// Content encoding of the body (e.g. utf-8).
    #[arg(long, visible_alias = "ce", value_name = "ENCODING")]
    pub(crate) content_encoding: Option<String>,
    /// Absolute expiry, in milliseconds since the Unix epoch [default: the
    /// hub's TTL, one hour].
    #[arg(long, visible_alias = "expiry", value_name = "MILLISECONDS")]
    pub(crate) expiry_time_utc: Option<i64>,
    /// Delivery feedback the message asks for.
    #[arg(long, value_enum)]
    pub(crate) ack: Option<AckArg>,
    #[command(flatten)]
    pub(crate) common: Common,
}

#[derive(Debug, Args)]
pub(crate) struct C2dPurgeArgs {
    /// The device id.
    #[arg(long, short = 'd', value_name = "ID")]
    pub(crate) device_id: String,
    #[command(flatten)]
    pub(crate) common: Common,
}

#[derive(Debug, Args)]
pub(crate) struct C2dFeedbackArgs {
    /// Put the records back for the next reader instead of completing them.
    #[arg(long)]
    pub(crate) abandon: bool,
    #[command(flatten)]
    pub(crate) common: Common,
}

/// Parses az's property bag `k=v;k2=v2` (empty parts ignored; a value may
/// be empty and may contain `=`).
pub(crate) fn parse_properties(text: &str) -> anyhow::Result<Vec<(String, String)>> {
    let mut out = Vec::new();
    for part in text.split(';').map(str::trim).filter(|p| !p.is_empty()) {
        let Some((key, value)) = part.split_once('=') else {
            bail!("--properties must look like key=value;key2=value2, got {part:?}");
        };
        let key = key.trim();
        if key.is_empty() {
            bail!("--properties has a value without a key: {part:?}");
        }
        out.push((key.to_owned(), value.to_owned()));
    }
    Ok(out)
}

/// Milliseconds since the epoch as the ISO 8601 time the hub expects.
pub(crate) fn expiry_iso(millis: i64) -> anyhow::Result<String> {
    if millis <= 0 {
        bail!("--expiry-time-utc must be a positive number of milliseconds since the Unix epoch");
    }
    Ok(Timestamp::from_unix_nanos(i128::from(millis) * 1_000_000).to_iso())
}

/// Runs a `c2d-message` subcommand.
pub(crate) async fn run(command: C2dMessageCommand) -> anyhow::Result<Outcome> {
    use super::c2d_device;
    use ferrohub_service_client::Settle;
    match command {
        C2dMessageCommand::Send(args) => send(*args).await,
        C2dMessageCommand::Purge(args) => purge(args).await,
        C2dMessageCommand::Feedback(args) => feedback(args).await,
        C2dMessageCommand::Receive(args) => c2d_device::receive(args).await,
        C2dMessageCommand::Complete(args) => c2d_device::settle(args, Settle::Complete).await,
        C2dMessageCommand::Reject(args) => c2d_device::settle(args, Settle::Reject).await,
        C2dMessageCommand::Abandon(args) => c2d_device::settle(args, Settle::Abandon).await,
    }
}

/// `c2d-message purge`: prints the hub's answer,
/// `{"totalMessagesPurged": n, "deviceId": id}`.
async fn purge(args: C2dPurgeArgs) -> anyhow::Result<Outcome> {
    let ctx = Context::resolve(&args.common)?;
    let result = ctx.client()?.purge_c2d(&args.device_id).await?;
    Outcome::value(&ctx, &result)
}

/// `c2d-message feedback`: prints the records as the hub sent them (an
/// array, empty when there were none), after they were settled, so what is
/// printed is what was taken (or put back) for good.
async fn feedback(args: C2dFeedbackArgs) -> anyhow::Result<Outcome> {
    let ctx = Context::resolve(&args.common)?;
    let client = ctx.client()?;
    let Some(batch) = client.receive_feedback().await? else {
        return Outcome::value(&ctx, &[] as &[ferrohub_service_client::FeedbackRecord]);
    };
    if args.abandon {
        client.abandon_feedback(&batch.lock_token).await?;
    } else {
        client.complete_feedback(&batch.lock_token).await?;
    }
    Outcome::value(&ctx, &batch.records)
}

/// `c2d-message send`.
async fn send(args: C2dSendArgs) -> anyhow::Result<Outcome> {
    let body = match (&args.data, &args.data_file_path) {
        (Some(data), _) => data.clone().into_bytes(),
        (None, Some(path)) => {
            std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?
        }
        (None, None) => DEFAULT_DATA.as_bytes().to_vec(),
    };
    let message = C2dMessage {
        body,
        properties: args.properties.as_deref().map(parse_properties).transpose()?.unwrap_or_default(),
        message_id: args.message_id,
        correlation_id: args.correlation_id,
        user_id: args.user_id,
        expiry: args.expiry_time_utc.map(expiry_iso).transpose()?,
        content_type: args.content_type,
        content_encoding: args.content_encoding,
        ack: args.ack.map(|a| a.as_str().to_owned()),
    };
    let ctx = Context::resolve(&args.common)?;
    ctx.client()?.send_c2d(&args.device_id, &message).await?;
    Ok(Outcome::Nothing)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn pairs(items: &[(&str, &str)]) -> Vec<(String, String)> {
        items.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn property_bags_parse_like_az() {
        assert_eq!(parse_properties("a=b;c=d").unwrap(), pairs(&[("a", "b"), ("c", "d")]));
        assert_eq!(parse_properties(" a=b ; ;x=").unwrap(), pairs(&[("a", "b"), ("x", "")]));
        assert_eq!(parse_properties("k=v=w").unwrap(), pairs(&[("k", "v=w")]));
        assert!(parse_properties("").unwrap().is_empty());
        assert!(parse_properties("novalue").is_err());
        assert!(parse_properties("=v").is_err());
    }

    #[test]
    fn expiry_is_milliseconds_since_the_epoch() {
        assert_eq!(expiry_iso(1_700_000_000_000).unwrap(), "2023-11-14T22:13:20.0000000Z");
        assert!(expiry_iso(0).is_err());
    }
}
