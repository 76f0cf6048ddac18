//! `ferrohub c2d-message receive|complete|reject|abandon`: az's
//! `az iot device c2d-message receive/complete/reject/abandon`, acting as
//! the device through the device HTTPS API.
//!
//! Who the command acts as: `--device-connection-string` (or
//! FERROHUB_DEVICE_CONNECTION_STRING, as `ferrohub agent` takes it) signs as
//! the device itself; otherwise `--device-id` is looked up with the hub
//! credentials (data dir or `--login`, like `generate-sas-token
//! --device-id`) and the device's own primary key signs — so the hub sees
//! exactly what a device would send.

use anyhow::Context as _;
use clap::Args;
use ferrohub_core::connection_string::ConnectionString;
use ferrohub_core::message::render_body;
use ferrohub_server::hubfile::HubInfo;
use ferrohub_service_client::{AuthenticationType, ClientOptions, DeviceHttpClient, Settle};
use serde_json::json;

use super::args::Common;
use super::context::{self, Context, EndpointFlags};
use super::output;
use super::Outcome;

/// Which device, and with which credentials.
#[derive(Debug, Args)]
pub(crate) struct DeviceSelect {
    /// The device id (its key is read from the hub with the hub credentials).
    #[arg(long, short = 'd', value_name = "ID", required_unless_present = "device_connection_string")]
    pub(crate) device_id: Option<String>,
    /// The device's connection string, instead of --device-id.
    #[arg(
        long,
        env = "FERROHUB_DEVICE_CONNECTION_STRING",
        hide_env_values = true,
        value_name = "CS",
        conflicts_with = "device_id"
    )]
    pub(crate) device_connection_string: Option<String>,
    #[command(flatten)]
    pub(crate) common: Common,
}

#[derive(Debug, Args)]
pub(crate) struct C2dReceiveArgs {
    #[command(flatten)]
    pub(crate) device: DeviceSelect,
}

#[derive(Debug, Args)]
pub(crate) struct C2dSettleArgs {
    /// The lock token (the ETag `receive` printed as `lockToken`).
    #[arg(long, short = 'e', visible_alias = "lock-token", value_name = "ETAG")]
    pub(crate) etag: String,
    #[command(flatten)]
    pub(crate) device: DeviceSelect,
}

/// A device client for the selected device, with the endpoint the shared
/// flags (or the data dir's hub.json) give for its host.
async fn device_client(select: &DeviceSelect) -> anyhow::Result<DeviceHttpClient> {
    let common = &select.common;
    let cs = match (&select.device_connection_string, &select.device_id) {
        (Some(cs), _) => {
            let cs: ConnectionString =
                cs.parse().map_err(|e| anyhow::anyhow!("invalid device connection string: {e}"))?;
            anyhow::ensure!(
                cs.is_device(),
                "--device-connection-string must be a device connection string (with DeviceId)"
            );
            cs
        }
        (None, Some(id)) => {
            let ctx = Context::resolve(common)?;
            let device = ctx.client()?.get_device(id).await?;
            anyhow::ensure!(
                device.authentication.kind == AuthenticationType::Sas,
                "device '{id}' does not use symmetric keys; pass --device-connection-string"
            );
            ConnectionString::for_device(ctx.host(), id, &device.authentication.symmetric_key.primary_key)
        }
        (None, None) => anyhow::bail!("pass --device-id or --device-connection-string"),
    };
    let data_dir = context::data_dir(common.data_dir.as_deref())?;
    let hub = HubInfo::read(&data_dir);
    let flags =
        EndpointFlags { https_port: common.https_port, mqtt_port: common.mqtt_port, ca: common.ca.clone() };
    let endpoint = context::resolve_endpoint(&cs.host_name, flags, hub.as_ref(), &data_dir);
    let options = ClientOptions { port: Some(endpoint.https_port), ca_file: endpoint.ca, timeout: None };
    DeviceHttpClient::new(&cs.to_string(), None, options).context("setting up the device HTTPS client")
}

/// `c2d-message receive`: prints the message, locked for a minute, with
/// the `lockToken` that settles it; prints nothing when none waits.
pub(crate) async fn receive(args: C2dReceiveArgs) -> anyhow::Result<Outcome> {
    let client = device_client(&args.device).await?;
    let Some(message) = client.receive().await? else {
        eprintln!("no cloud-to-device message is waiting for {}", client.device_id());
        return Ok(Outcome::Nothing);
    };
    let (body, encoding) = render_body(&message.body);
    let value = json!({
        "lockToken": message.lock_token,
        "body": body,
        "bodyEncoding": encoding,
        "systemProperties": message.system_properties,
        "properties": message.properties,
    });
    Ok(Outcome::Text(output::render(&value, args.device.common.output)))
}

/// `c2d-message complete|reject|abandon`.
pub(crate) async fn settle(args: C2dSettleArgs, how: Settle) -> anyhow::Result<Outcome> {
    let client = device_client(&args.device).await?;
    client.settle(&args.etag, how).await?;
    Ok(Outcome::Nothing)
}
