//! `ferrohub policy list|renew-key`: the hub's shared access policies, in
//! the shape of `az iot hub policy`. They act on the running hub over
//! REST (ferrohub's `/ferrohub/policies` routes) with a policy holding every
//! permission, `iothubowner` by default; the hub saves the new keys in its
//! data dir and refuses tokens of a replaced key from then on.

use std::path::PathBuf;

use clap::{Args, Subcommand};

use super::args::{Common, OutputFormat, RenewKeyType};
use super::context::Context;
use super::Outcome;

#[derive(Debug, Subcommand)]
pub(crate) enum PolicyCommand {
    /// List the shared access policies with their keys and rights.
    List(PolicyListArgs),
    /// Regenerate a shared access policy's primary or secondary key, or
    /// swap the two.
    #[command(name = "renew-key")]
    RenewKey(PolicyRenewKeyArgs),
}

#[derive(Debug, Args)]
pub(crate) struct PolicyListArgs {
    #[command(flatten)]
    pub(crate) hub: PolicyHubArgs,
}

#[derive(Debug, Args)]
pub(crate) struct PolicyRenewKeyArgs {
    /// The shared access policy.
    #[arg(long, short = 'n', value_name = "NAME")]
    pub(crate) name: String,
    /// Which key to regenerate, or swap the two.
    #[arg(long, value_enum)]
    pub(crate) renew_key: RenewKeyType,
    #[command(flatten)]
    pub(crate) hub: PolicyHubArgs,
}

/// [`Common`]'s flags, except that `--name`/`-n` names the policy here, as
/// in az's policy commands, so az's hub-selection flags are listed apart.
#[derive(Debug, Args)]
pub(crate) struct PolicyHubArgs {
    /// Data dir of a local hub: its policies.json gives credentials and its
    /// hub.json ports and CA [default: ${XDG_DATA_HOME:-$HOME/.local/share}/ferrohub].
    #[arg(long, env = "FERROHUB_DATA_DIR", value_name = "DIR")]
    data_dir: Option<PathBuf>,
    /// A hub connection string of a policy with every permission, to use
    /// instead of the data dir's iothubowner policy.
    #[arg(
        long,
        short = 'l',
        env = "IOTHUB_CONNECTION_STRING",
        hide_env_values = true,
        value_name = "CONNECTION_STRING"
    )]
    login: Option<String>,
    /// HTTPS port of the hub.
    #[arg(long, env = "FERROHUB_HTTPS_PORT", value_name = "PORT")]
    https_port: Option<u16>,
    /// MQTT port of the hub.
    #[arg(long, env = "FERROHUB_MQTT_PORT", value_name = "PORT")]
    mqtt_port: Option<u16>,
    /// A CA certificate (PEM) to trust besides the system roots.
    #[arg(long, env = "FERROHUB_CA", value_name = "FILE")]
    ca: Option<PathBuf>,
    /// Output format.
    #[arg(long, short = 'o', value_enum, default_value_t = OutputFormat::Json)]
    output: OutputFormat,
    /// Ignored (az's IoT Hub name).
    #[arg(long = "hub-name", value_name = "NAME")]
    _hub_name: Option<String>,
    /// Ignored (az's resource group).
    #[arg(long = "resource-group", short = 'g', value_name = "GROUP")]
    _resource_group: Option<String>,
}

impl PolicyHubArgs {
    fn common(&self) -> Common {
        Common {
            data_dir: self.data_dir.clone(),
            login: self.login.clone(),
            https_port: self.https_port,
            mqtt_port: self.mqtt_port,
            ca: self.ca.clone(),
            output: self.output,
            az: Default::default(),
        }
    }
}

pub(crate) async fn run(command: PolicyCommand) -> anyhow::Result<Outcome> {
    match command {
        PolicyCommand::List(args) => {
            let ctx = Context::resolve(&args.hub.common())?;
            Outcome::value(&ctx, &ctx.client()?.list_policies().await?)
        }
        PolicyCommand::RenewKey(args) => {
            let ctx = Context::resolve(&args.hub.common())?;
            let which = match args.renew_key {
                RenewKeyType::Primary => "primary",
                RenewKeyType::Secondary => "secondary",
                RenewKeyType::Swap => "swap",
            };
            Outcome::value(&ctx, &ctx.client()?.renew_policy_key(&args.name, which).await?)
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use crate::cli::args::{Cli, Command};
    use clap::Parser as _;

    use super::*;

    #[test]
    fn renew_key_parses_azs_command_line() {
        let cli = Cli::try_parse_from([
            "ferrohub",
            "policy",
            "renew-key",
            "--hub-name",
            "h",
            "-g",
            "rg",
            "-n",
            "service",
            "--renew-key",
            "swap",
        ])
        .unwrap();
        let Command::Policy(PolicyCommand::RenewKey(args)) = cli.command else { panic!("wrong command") };
        assert_eq!(args.name, "service");
        assert_eq!(args.renew_key, RenewKeyType::Swap);
        assert!(Cli::try_parse_from(["ferrohub", "policy", "renew-key", "-n", "s", "--renew-key", "both"])
            .is_err());
    }
}
