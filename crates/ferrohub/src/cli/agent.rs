//! `ferrohub agent`: the device update agent (see [`ferrohub_agent`]).

use std::io::IsTerminal as _;
use std::path::PathBuf;

use clap::Args;
use tracing_subscriber::EnvFilter;

use super::Outcome;

#[derive(Debug, Args)]
pub(crate) struct AgentArgs {
    /// The device's connection string.
    #[arg(long, env = "FERROHUB_DEVICE_CONNECTION_STRING", value_name = "CS", hide_env_values = true)]
    pub(crate) connection_string: String,
    /// Trust this CA certificate (PEM), e.g. DIR/ca.pem of a local hub.
    #[arg(long, value_name = "FILE")]
    pub(crate) ca: Option<PathBuf>,
    /// The hub's MQTT/TLS port [default: 8883].
    #[arg(long, value_name = "N")]
    pub(crate) mqtt_port: Option<u16>,
    /// Where the slots, downloads and the agent's progress live.
    #[arg(long, value_name = "DIR")]
    pub(crate) state_dir: PathBuf,
    /// The hub's manifest-signing key (`ferrohub firmware public-key`).
    /// Without it the agent trusts on first use: the first update fetches
    /// the key from the hub (GET /firmware-key over HTTPS verified against
    /// the hub CA, with the device's own SAS token) and pins it in
    /// DIR/hub-key.pem; later starts use the pinned file and never fetch
    /// again (delete it to trust a new key).
    #[arg(long, value_name = "FILE")]
    pub(crate) public_key: Option<PathBuf>,
    /// Run after a reboot with `sh -c`; exit 0 = healthy
    /// [default: reconnect and report within 60 s, or
    /// FERROHUB_AGENT_HEALTH_TIMEOUT_SECS; on failure the agent switches
    /// back and reports error, then rolledback, once it can connect].
    #[arg(long, value_name = "CMD")]
    pub(crate) health_check: Option<String>,
    /// The firmware version to report before the first update.
    #[arg(long, value_name = "VERSION", default_value = "1.0.0")]
    pub(crate) initial_version: String,
}

/// Runs the agent; logs go to stderr (filter from `RUST_LOG`, default `info`).
pub(crate) async fn run(args: AgentArgs) -> anyhow::Result<Outcome> {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .try_init();
    ferrohub_agent::run(ferrohub_agent::AgentOptions {
        connection_string: args.connection_string,
        ca_file: args.ca,
        mqtt_port: args.mqtt_port,
        state_dir: args.state_dir,
        public_key: args.public_key,
        health_check: args.health_check,
        initial_version: args.initial_version,
    })
    .await?;
    Ok(Outcome::Nothing)
}
