//! The `ferrohub` command line: one module per command group.
//!
//! - [`args`]: the clap definitions (the az shape).
//! - [`context`]: which hub, as whom, on which port, trusting which CA.
//! - [`output`]: az's json/table/tsv rendering.
//! - [`progress`]: the live bars / plain lines of the `--watch` commands.
//! - [`serve`], [`device_identity`], [`device_twin`], [`hub`],
//!   [`invoke_method`], [`monitor_events`], [`c2d_message`],
//!   [`configuration`], [`query`], [`firmware`], [`policy`], [`agent`], [`simulate`]:
//!   the commands.

pub(crate) mod agent;
pub(crate) mod args;
pub(crate) mod c2d_device;
pub(crate) mod c2d_message;
pub(crate) mod configuration;
pub(crate) mod context;
pub(crate) mod demo;
pub(crate) mod device_identity;
pub(crate) mod device_twin;
pub(crate) mod firmware;
pub(crate) mod generic_update;
pub(crate) mod hub;
pub(crate) mod invoke_method;
pub(crate) mod monitor_events;
pub(crate) mod output;
pub(crate) mod policy;
pub(crate) mod progress;
pub(crate) mod query;
pub(crate) mod rollout;
pub(crate) mod serve;
pub(crate) mod simulate;

use std::io::Write as _;
use std::process::ExitCode;

use clap::Parser as _;
use serde::Serialize;

use args::{Cli, Command, ConnectionStringCommand};
use context::Context;

/// What a command produced.
#[derive(Debug)]
pub(crate) enum Outcome {
    /// Nothing to print (e.g. delete).
    Nothing,
    /// Text, already formatted.
    Text(String),
    /// Nothing more to print, and this exit code (a `--watch` that ended
    /// in a state a script tells apart, e.g. 3 = the object was deleted).
    Exit(u8),
}

impl Outcome {
    /// A result rendered in the context's `--output` format.
    pub(crate) fn value<T: Serialize + ?Sized>(ctx: &Context, value: &T) -> anyhow::Result<Self> {
        let value = serde_json::to_value(value)?;
        Ok(Self::Text(output::render(&value, ctx.output)))
    }
}

/// Parses the command line, runs the command, prints its result or a
/// one-line `ERROR: ...`, and returns the exit code.
pub(crate) fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            // Usage errors exit 1 like every other error (clap's own 2 would
            // read as "halted" to a script running `rollout watch`).
            return if e.use_stderr() { ExitCode::FAILURE } else { ExitCode::SUCCESS };
        }
    };
    match run(cli) {
        Ok(Outcome::Nothing) => ExitCode::SUCCESS,
        Ok(Outcome::Exit(code)) => ExitCode::from(code),
        Ok(Outcome::Text(text)) => {
            let mut stdout = std::io::stdout().lock();
            // A closed pipe (`ferrohub ... | head`) is not an error worth a message.
            let _ = stdout.write_all(text.as_bytes()).and_then(|()| stdout.flush());
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("ERROR: {}", describe(&e));
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<Outcome> {
    if let Command::Serve(args) = cli.command {
        serve::run(args)?;
        return Ok(Outcome::Nothing);
    }
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    runtime.block_on(dispatch(cli.command))
}

async fn dispatch(command: Command) -> anyhow::Result<Outcome> {
    match command {
        Command::Serve(_) => unreachable!("handled before the runtime starts"),
        Command::DeviceIdentity(c) => device_identity::run(c).await,
        Command::DeviceTwin(c) => device_twin::run(c).await,
        Command::ConnectionString(ConnectionStringCommand::Show(a)) | Command::ShowConnectionString(a) => {
            hub::connection_string(a)
        }
        Command::GenerateSasToken(a) => hub::generate_sas_token(a).await,
        Command::Env(common) => hub::env(&common),
        Command::Healthcheck(common) => hub::healthcheck(&common).await,
        Command::InvokeDeviceMethod(a) => invoke_method::run(a).await,
        Command::MonitorEvents(a) => monitor_events::run(a).await,
        Command::C2dMessage(c) => c2d_message::run(c).await,
        Command::Configuration(c) => configuration::run(c).await,
        Command::Firmware(c) => firmware::run(c).await,
        Command::Policy(c) => policy::run(c).await,
        Command::Query(a) => query::run(a).await,
        Command::Agent(a) => agent::run(a).await,
        Command::Simulate(a) => simulate::run(a).await,
        Command::Demo(a) => demo::run(a).await,
    }
}

/// One line for an error: the message chain, except that a transport
/// failure shows only its root cause (reqwest's chain repeats the URL) plus a
/// hint at the usual remedy.
fn describe(e: &anyhow::Error) -> String {
    let text = match e.downcast_ref::<ferrohub_service_client::Error>() {
        Some(transport @ ferrohub_service_client::Error::Transport { url, .. }) => {
            let mut root: &dyn std::error::Error = transport;
            while let Some(next) = root.source() {
                root = next;
            }
            let root = root.to_string();
            let hint = if root.to_lowercase().contains("certificate") {
                "trust the hub's CA with --ca FILE or FERROHUB_CA, e.g. DIR/ca.pem of a local hub"
            } else {
                "is `ferrohub serve` running? check --https-port or FERROHUB_HTTPS_PORT"
            };
            format!("cannot reach the hub at {url}: {root} ({hint})")
        }
        _ => format!("{e:#}"),
    };
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}
