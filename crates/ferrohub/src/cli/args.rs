//! The command line, in the shape of `az iot hub`.

use std::net::IpAddr;
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

/// A self-hosted hub that speaks Azure IoT Hub's protocols.
#[derive(Debug, Parser)]
#[command(name = "ferrohub", version, about, propagate_version = true)]
pub(crate) struct Cli {
    #[command(subcommand)]
    pub(crate) command: Command,
}

#[derive(Debug, Subcommand)]
pub(crate) enum Command {
    /// Run the hub (HTTPS service API and MQTT endpoint).
    Serve(ServeArgs),
    /// Manage device identities.
    #[command(subcommand, name = "device-identity")]
    DeviceIdentity(DeviceIdentityCommand),
    /// Manage device twins.
    #[command(subcommand, name = "device-twin")]
    DeviceTwin(DeviceTwinCommand),
    /// Show the hub's connection strings.
    #[command(subcommand, name = "connection-string")]
    ConnectionString(ConnectionStringCommand),
    /// Show a shared access policy's connection string (same as
    /// `connection-string show`).
    #[command(name = "show-connection-string")]
    ShowConnectionString(PolicyConnectionStringArgs),
    /// Generate a SAS token for a policy or a device.
    #[command(name = "generate-sas-token")]
    GenerateSasToken(GenerateSasTokenArgs),
    /// Print `export` lines that make SDKs and ferrohub commands find and
    /// trust the running hub: `eval "$(ferrohub env)"`.
    Env(Common),
    /// Exit 0 when the hub answers an authenticated request.
    Healthcheck(Common),
    /// Invoke a direct method on a device and print its answer.
    #[command(name = "invoke-device-method")]
    InvokeDeviceMethod(super::invoke_method::InvokeMethodArgs),
    /// Print the telemetry devices send, as it arrives.
    #[command(name = "monitor-events")]
    MonitorEvents(super::monitor_events::MonitorEventsArgs),
    /// Cloud-to-device messages.
    #[command(subcommand, name = "c2d-message")]
    C2dMessage(super::c2d_message::C2dMessageCommand),
    /// Automatic device configurations (az's `iot hub configuration`).
    #[command(subcommand)]
    Configuration(super::configuration::ConfigurationCommand),
    /// Manage the hub's firmware images.
    #[command(subcommand)]
    Firmware(super::firmware::FirmwareCommand),
    /// Shared access policies: list them, renew their keys.
    #[command(subcommand)]
    Policy(super::policy::PolicyCommand),
    /// Query device twins with the IoT Hub query language; prints every page.
    Query(super::query::QueryArgs),
    /// Run the device update agent: follow the desired firmware, download,
    /// verify, apply to the inactive slot, reboot, roll back on failure.
    Agent(super::agent::AgentArgs),
    /// Simulate a fleet of update agents in one process (with fault
    /// injection) against the hub.
    Simulate(super::simulate::SimulateArgs),
    /// A staged firmware rollout to 100 simulated chillers, live, in under
    /// two minutes: a temporary hub, a generated image, a failing batch of
    /// devices that halts the rollout. Exits like `firmware rollout watch`.
    Demo(super::demo::DemoArgs),
}

/// Flags of `ferrohub serve`.
#[derive(Debug, Args)]
pub(crate) struct ServeArgs {
    /// How the log on stderr is written: `text` for people, `json` (one
    /// object per line: timestamp, level, target, fields, spans) for log
    /// collectors.
    #[arg(long, env = "FERROHUB_LOG_FORMAT", value_name = "FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub(crate) log_format: LogFormat,
    /// Where the store, keys and certificates live
    /// [default: ${XDG_DATA_HOME:-$HOME/.local/share}/ferrohub].
    #[arg(long, env = "FERROHUB_DATA_DIR", value_name = "DIR")]
    pub(crate) data_dir: Option<PathBuf>,
    /// A host name clients use for the hub (repeatable); the first goes into
    /// connection strings [default: localhost].
    #[arg(long = "hostname", value_name = "NAME")]
    pub(crate) host_names: Vec<String>,
    /// HTTPS port of the service API; 0 takes a free port [default: 443,
    /// else 8443 without privilege].
    #[arg(long, env = "FERROHUB_HTTPS_PORT", value_name = "PORT")]
    pub(crate) https_port: Option<u16>,
    /// MQTT port of the device endpoint; 0 takes a free port [default: 8883].
    #[arg(long, env = "FERROHUB_MQTT_PORT", value_name = "PORT")]
    pub(crate) mqtt_port: Option<u16>,
    /// Address to listen on (repeatable) [default: loopback].
    #[arg(long, value_name = "ADDR")]
    pub(crate) bind: Vec<IpAddr>,
    /// Serve this certificate chain (PEM) instead of the generated one.
    #[arg(long, value_name = "FILE", requires = "tls_key")]
    pub(crate) tls_cert: Option<PathBuf>,
    /// Private key (PEM) of --tls-cert.
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    pub(crate) tls_key: Option<PathBuf>,
    /// Seconds between the configuration engine's full passes (it also
    /// reacts to every change at once) [default: 300].
    #[arg(long, value_name = "SECONDS", env = "FERROHUB_CONFIG_EVAL_INTERVAL", value_parser = clap::value_parser!(u64).range(1..))]
    pub(crate) config_eval_interval: Option<u64>,
    /// Largest firmware image accepted, in bytes (or with a KiB, MiB, GiB or
    /// TiB suffix) [default: 4GiB].
    #[arg(long, value_name = "BYTES", env = "FERROHUB_FIRMWARE_MAX_IMAGE_SIZE", value_parser = super::serve::parse_size)]
    pub(crate) firmware_max_image_size: Option<u64>,
    /// Most bytes all firmware images may take together; an upload that
    /// would pass it is refused (403) [default: 64GiB].
    #[arg(long, value_name = "BYTES", env = "FERROHUB_FIRMWARE_STORE_QUOTA", value_parser = super::serve::parse_size)]
    pub(crate) firmware_store_quota: Option<u64>,
    /// Most firmware uploads running at once; more are refused with 503 and
    /// Retry-After [default: 4].
    #[arg(long, value_name = "N", env = "FERROHUB_FIRMWARE_MAX_UPLOADS", value_parser = clap::value_parser!(u32).range(1..))]
    pub(crate) firmware_max_uploads: Option<u32>,
    /// Free space a firmware upload must leave on the data dir's file
    /// system; one that would leave less is refused (507) [default: 256MiB].
    #[arg(long, value_name = "BYTES", env = "FERROHUB_FIRMWARE_FREE_SPACE_RESERVE", value_parser = super::serve::parse_size)]
    pub(crate) firmware_free_space_reserve: Option<u64>,
    /// IoT Hub tier whose operation throttles to enforce: unlimited, free,
    /// s1, s2 or s3 (b1–b3 as s1–s3) [default: unlimited].
    #[arg(long, env = "FERROHUB_TIER", value_name = "TIER", default_value = "unlimited", value_parser = parse_tier)]
    pub(crate) tier: ferrohub_core::throttle::Tier,
    /// Units of --tier (IoT Hub scales most throttles by them).
    #[arg(long, env = "FERROHUB_UNITS", value_name = "N", default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=200))]
    pub(crate) units: u32,
    /// Overrides one throttle, e.g. `twin-read=10/s`, `registry=100/min`,
    /// `d2c-device=5/s`, `query=unlimited` (repeatable; the environment
    /// takes a comma-separated list). Classes: d2c, d2c-device, twin-read,
    /// twin-update, registry, query, method (4 KB steps), c2d, c2d-receive,
    /// configuration, connect.
    #[arg(long = "throttle", env = "FERROHUB_THROTTLE", value_name = "CLASS=RATE", value_delimiter = ',')]
    pub(crate) throttles: Vec<String>,
    /// Messages per UTC day (IoT Hub's daily quota: free 8,000; s1, s2, s3
    /// 400,000, 6,000,000, 300,000,000 per unit), overriding --tier's, or
    /// `unlimited`. Messages count in 4 KB chunks (0.5 KB on the free tier),
    /// twin operations and query results in 0.5 KB chunks.
    #[arg(long, env = "FERROHUB_DAILY_QUOTA", value_name = "N|unlimited", value_parser = parse_daily_quota)]
    pub(crate) daily_quota: Option<DailyQuotaArg>,
    #[command(flatten)]
    pub(crate) limits: super::serve::LimitArgs,
}

fn parse_tier(s: &str) -> Result<ferrohub_core::throttle::Tier, String> {
    s.parse()
}

/// `--daily-quota`: a message count, or none at all.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum DailyQuotaArg {
    Messages(u64),
    Unlimited,
}

fn parse_daily_quota(s: &str) -> Result<DailyQuotaArg, String> {
    match s.trim() {
        "unlimited" | "none" => Ok(DailyQuotaArg::Unlimited),
        n => match n.replace(['_', ','], "").parse::<u64>() {
            Ok(0) | Err(_) => Err(format!("`{s}`: a whole number of messages (at least 1) or `unlimited`")),
            Ok(n) => Ok(DailyQuotaArg::Messages(n)),
        },
    }
}

/// `serve --log-format`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum LogFormat {
    /// tracing's human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// Output formats, as az's `--output`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, ValueEnum)]
pub(crate) enum OutputFormat {
    /// Indented JSON.
    #[default]
    Json,
    /// Indented JSON (az's colored variant; printed plain here).
    Jsonc,
    /// A human-readable table of the scalar fields.
    Table,
    /// Tab-separated values, one line per item.
    Tsv,
    /// Nothing.
    None,
}

/// Flags every command that talks to a hub shares.
#[derive(Debug, Clone, Default, Args)]
pub(crate) struct Common {
    /// Data dir of a local hub: its policies.json gives credentials and its
    /// hub.json ports and CA [default: ${XDG_DATA_HOME:-$HOME/.local/share}/ferrohub].
    #[arg(long, env = "FERROHUB_DATA_DIR", value_name = "DIR")]
    pub(crate) data_dir: Option<PathBuf>,
    /// A hub connection string (HostName=..;SharedAccessKeyName=..;SharedAccessKey=..)
    /// to use instead of the data dir's iothubowner policy.
    #[arg(
        long,
        short = 'l',
        env = "IOTHUB_CONNECTION_STRING",
        hide_env_values = true,
        value_name = "CONNECTION_STRING"
    )]
    pub(crate) login: Option<String>,
    /// HTTPS port of the hub.
    #[arg(long, env = "FERROHUB_HTTPS_PORT", value_name = "PORT")]
    pub(crate) https_port: Option<u16>,
    /// MQTT port of the hub.
    #[arg(long, env = "FERROHUB_MQTT_PORT", value_name = "PORT")]
    pub(crate) mqtt_port: Option<u16>,
    /// A CA certificate (PEM) to trust besides the system roots.
    #[arg(long, env = "FERROHUB_CA", value_name = "FILE")]
    pub(crate) ca: Option<PathBuf>,
    /// Output format.
    #[arg(long, short = 'o', value_enum, default_value_t = OutputFormat::Json)]
    pub(crate) output: OutputFormat,
    #[command(flatten)]
    pub(crate) az: AzIgnored,
}

/// az's hub-selection flags: accepted so az command lines run unchanged, and
/// ignored because a ferrohub CLI talks to one hub.
#[derive(Debug, Clone, Default, Args)]
#[allow(dead_code)] // parsed to be accepted, never read
pub(crate) struct AzIgnored {
    /// Ignored (az's IoT Hub name).
    #[arg(long = "hub-name", short = 'n', value_name = "NAME")]
    hub_name: Option<String>,
    /// Ignored (az's resource name).
    #[arg(long = "name", value_name = "NAME")]
    name: Option<String>,
    /// Ignored (az's resource group).
    #[arg(long = "resource-group", short = 'g', value_name = "GROUP")]
    resource_group: Option<String>,
}

/// `--status` values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum StatusArg {
    /// The device may connect.
    Enabled,
    /// The device is refused.
    Disabled,
}

/// `--auth-method` values (az's names).
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
#[value(rename_all = "snake_case")]
pub(crate) enum AuthMethod {
    /// Symmetric keys.
    SharedPrivateKey,
    /// A self-signed certificate identified by thumbprint.
    X509Thumbprint,
    /// A certificate chained to a registered CA.
    X509Ca,
}

/// Which key of a pair.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, ValueEnum)]
pub(crate) enum KeyType {
    /// The primary key.
    #[default]
    Primary,
    /// The secondary key.
    Secondary,
}

/// `renew-key --key-type` values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum RenewKeyType {
    /// A new primary key.
    Primary,
    /// A new secondary key.
    Secondary,
    /// Exchange primary and secondary.
    Swap,
}

#[derive(Debug, Subcommand)]
pub(crate) enum DeviceIdentityCommand {
    /// Create a device identity.
    Create(DeviceCreateArgs),
    /// Show a device identity.
    Show(DeviceIdArgs),
    /// List device identities.
    List(DeviceListArgs),
    /// Update a device identity.
    Update(DeviceUpdateArgs),
    /// Delete a device identity.
    Delete(DeviceDeleteArgs),
    /// Device connection strings.
    #[command(subcommand, name = "connection-string")]
    ConnectionString(DeviceConnectionStringCommand),
    /// Show a device's connection string (same as `connection-string show`).
    #[command(name = "show-connection-string")]
    ShowConnectionString(DeviceConnectionStringArgs),
    /// Regenerate or swap a device's symmetric keys.
    #[command(name = "renew-key")]
    RenewKey(RenewKeyArgs),
}

#[derive(Debug, Subcommand)]
pub(crate) enum DeviceConnectionStringCommand {
    /// Show a device's connection string.
    Show(DeviceConnectionStringArgs),
}

#[derive(Debug, Args)]
pub(crate) struct DeviceIdArgs {
    /// The device id.
    #[arg(long, short = 'd', value_name = "ID")]
    pub(crate) device_id: String,
    #[command(flatten)]
    pub(crate) common: Common,
}

/// Credential flags shared by create and update.
#[derive(Debug, Default, Args)]
pub(crate) struct AuthArgs {
    /// How the device authenticates.
    #[arg(long, visible_alias = "am", value_enum)]
    pub(crate) auth_method: Option<AuthMethod>,
    /// Base64 primary key (generated by the hub when absent).
    #[arg(long, visible_alias = "pk", value_name = "KEY")]
    pub(crate) primary_key: Option<String>,
    /// Base64 secondary key (generated by the hub when absent).
    #[arg(long, visible_alias = "sk", value_name = "KEY")]
    pub(crate) secondary_key: Option<String>,
    /// Primary certificate thumbprint (hex) for x509_thumbprint.
    #[arg(long, visible_alias = "ptp", value_name = "THUMBPRINT")]
    pub(crate) primary_thumbprint: Option<String>,
    /// Secondary certificate thumbprint (hex) for x509_thumbprint.
    #[arg(long, visible_alias = "stp", value_name = "THUMBPRINT")]
    pub(crate) secondary_thumbprint: Option<String>,
}

#[derive(Debug, Args)]
pub(crate) struct DeviceCreateArgs {
    /// The device id.
    #[arg(long, short = 'd', value_name = "ID")]
    pub(crate) device_id: String,
    /// enabled or disabled.
    #[arg(long, value_enum)]
    pub(crate) status: Option<StatusArg>,
    /// Why the status is what it is.
    #[arg(long, visible_alias = "star", value_name = "TEXT")]
    pub(crate) status_reason: Option<String>,
    /// Make it an IoT Edge device.
    #[arg(long, visible_alias = "ee", num_args = 0..=1, default_missing_value = "true", value_name = "BOOL")]
    pub(crate) edge_enabled: Option<bool>,
    #[command(flatten)]
    pub(crate) auth: AuthArgs,
    #[command(flatten)]
    pub(crate) common: Common,
}

#[derive(Debug, Args)]
pub(crate) struct DeviceListArgs {
    /// At most this many devices; -1 for the hub's maximum.
    #[arg(long, allow_negative_numbers = true, value_name = "N")]
    pub(crate) top: Option<i64>,
    #[command(flatten)]
    pub(crate) common: Common,
}

#[derive(Debug, Args)]
pub(crate) struct DeviceUpdateArgs {
    /// The device id.
    #[arg(long, short = 'd', value_name = "ID")]
    pub(crate) device_id: String,
    /// az generic update: set a property by path, e.g. `status=disabled`,
    /// `capabilities.iotEdge=true` (repeatable).
    #[arg(long = "set", value_name = "PATH=VALUE")]
    pub(crate) set: Vec<String>,
    /// enabled or disabled.
    #[arg(long, value_enum)]
    pub(crate) status: Option<StatusArg>,
    /// Why the status is what it is.
    #[arg(long, visible_alias = "star", value_name = "TEXT")]
    pub(crate) status_reason: Option<String>,
    /// IoT Edge or not.
    #[arg(long, visible_alias = "ee", num_args = 0..=1, default_missing_value = "true", value_name = "BOOL")]
    pub(crate) edge_enabled: Option<bool>,
    #[command(flatten)]
    pub(crate) auth: AuthArgs,
    /// Update only if the identity's etag is this [default: *].
    #[arg(long, short = 'e', value_name = "ETAG")]
    pub(crate) etag: Option<String>,
    #[command(flatten)]
    pub(crate) common: Common,
}

#[derive(Debug, Args)]
pub(crate) struct DeviceDeleteArgs {
    /// The device id.
    #[arg(long, short = 'd', value_name = "ID")]
    pub(crate) device_id: String,
    /// Delete only if the identity's etag is this [default: *].
    #[arg(long, short = 'e', value_name = "ETAG")]
    pub(crate) etag: Option<String>,
    #[command(flatten)]
    pub(crate) common: Common,
}

#[derive(Debug, Args)]
pub(crate) struct DeviceConnectionStringArgs {
    /// The device id.
    #[arg(long, short = 'd', value_name = "ID")]
    pub(crate) device_id: String,
    /// Which key goes into the string.
    #[arg(long, visible_alias = "kt", value_enum, default_value_t = KeyType::Primary)]
    pub(crate) key_type: KeyType,
    #[command(flatten)]
    pub(crate) common: Common,
}

#[derive(Debug, Args)]
pub(crate) struct RenewKeyArgs {
    /// The device id.
    #[arg(long, short = 'd', value_name = "ID")]
    pub(crate) device_id: String,
    /// Which key to regenerate, or swap the two.
    #[arg(long, visible_alias = "kt", value_enum)]
    pub(crate) key_type: RenewKeyType,
    #[command(flatten)]
    pub(crate) common: Common,
}

#[derive(Debug, Subcommand)]
pub(crate) enum DeviceTwinCommand {
    /// Show a device twin.
    Show(DeviceIdArgs),
    /// Patch a twin's tags and desired properties.
    Update(TwinUpdateArgs),
    /// Replace a twin's tags and desired properties.
    Replace(TwinReplaceArgs),
}

#[derive(Debug, Args)]
pub(crate) struct TwinUpdateArgs {
    /// The device id.
    #[arg(long, short = 'd', value_name = "ID")]
    pub(crate) device_id: String,
    /// az generic update: `tags='{"k":"v"}'`, `properties.desired.x=1` (repeatable).
    #[arg(long = "set", value_name = "PATH=VALUE")]
    pub(crate) set: Vec<String>,
    /// Desired properties to merge (JSON object).
    #[arg(long, value_name = "JSON")]
    pub(crate) desired: Option<String>,
    /// Tags to merge (JSON object).
    #[arg(long, value_name = "JSON")]
    pub(crate) tags: Option<String>,
    /// Update only if the twin's etag is this [default: *].
    #[arg(long, short = 'e', value_name = "ETAG")]
    pub(crate) etag: Option<String>,
    #[command(flatten)]
    pub(crate) common: Common,
}

#[derive(Debug, Args)]
pub(crate) struct TwinReplaceArgs {
    /// The device id.
    #[arg(long, short = 'd', value_name = "ID")]
    pub(crate) device_id: String,
    /// The new twin: a file path or inline JSON.
    #[arg(long, short = 'j', value_name = "FILE|JSON")]
    pub(crate) json: String,
    /// Replace only if the twin's etag is this [default: *].
    #[arg(long, short = 'e', value_name = "ETAG")]
    pub(crate) etag: Option<String>,
    #[command(flatten)]
    pub(crate) common: Common,
}

#[derive(Debug, Subcommand)]
pub(crate) enum ConnectionStringCommand {
    /// Show a shared access policy's connection string.
    Show(PolicyConnectionStringArgs),
}

#[derive(Debug, Args)]
pub(crate) struct PolicyConnectionStringArgs {
    /// The shared access policy.
    #[arg(long, visible_alias = "pn", default_value = "iothubowner", value_name = "NAME")]
    pub(crate) policy_name: String,
    /// Which key goes into the string.
    #[arg(long, visible_alias = "kt", value_enum, default_value_t = KeyType::Primary)]
    pub(crate) key_type: KeyType,
    #[command(flatten)]
    pub(crate) common: Common,
}

#[derive(Debug, Args)]
pub(crate) struct GenerateSasTokenArgs {
    /// Sign a device token with this device's key (fetched from the hub).
    #[arg(long, short = 'd', value_name = "ID", conflicts_with = "policy_name")]
    pub(crate) device_id: Option<String>,
    /// Sign a service token with this shared access policy [default: iothubowner].
    #[arg(long, visible_alias = "pn", value_name = "NAME")]
    pub(crate) policy_name: Option<String>,
    /// Which key signs.
    #[arg(long, visible_alias = "kt", value_enum, default_value_t = KeyType::Primary)]
    pub(crate) key_type: KeyType,
    /// Validity in seconds.
    #[arg(long, visible_alias = "du", default_value_t = 3600, value_name = "SECONDS")]
    pub(crate) duration: u32,
    #[command(flatten)]
    pub(crate) common: Common,
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(std::iter::once("ferrohub").chain(args.iter().copied()))
    }

    #[test]
    fn the_cli_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn tutorial_commands_parse_with_az_flags() {
        let cli = parse(&[
            "device-identity",
            "create",
            "--device-id",
            "MyFirmwareUpdateDevice",
            "--hub-name",
            "myhub",
            "--resource-group",
            "tutorial-iot-hub-rg",
        ])
        .unwrap();
        let Command::DeviceIdentity(DeviceIdentityCommand::Create(args)) = cli.command else {
            panic!("wrong command");
        };
        assert_eq!(args.device_id, "MyFirmwareUpdateDevice");

        let cli = parse(&[
            "device-twin",
            "update",
            "--device-id",
            "MyFirmwareUpdateDevice",
            "--hub-name",
            "myhub",
            "--set",
            r#"tags={"devicetype":"chiller"}"#,
        ])
        .unwrap();
        let Command::DeviceTwin(DeviceTwinCommand::Update(args)) = cli.command else {
            panic!("wrong command");
        };
        assert_eq!(args.set, vec![r#"tags={"devicetype":"chiller"}"#.to_owned()]);

        let cli = parse(&[
            "device-identity",
            "show-connection-string",
            "-d",
            "MyFirmwareUpdateDevice",
            "-n",
            "h",
            "-g",
            "rg",
            "--name",
            "h2",
        ]);
        assert!(cli.is_ok(), "{cli:?}");
    }

    #[test]
    fn short_and_alias_flags_match_az() {
        let cli = parse(&[
            "device-identity",
            "create",
            "-d",
            "d1",
            "--am",
            "x509_thumbprint",
            "--ptp",
            "AA",
            "--stp",
            "BB",
            "--ee",
            "--star",
            "why",
            "-o",
            "tsv",
        ])
        .unwrap();
        let Command::DeviceIdentity(DeviceIdentityCommand::Create(args)) = cli.command else {
            panic!("wrong command");
        };
        assert_eq!(args.auth.auth_method, Some(AuthMethod::X509Thumbprint));
        assert_eq!(args.auth.primary_thumbprint.as_deref(), Some("AA"));
        assert_eq!(args.auth.secondary_thumbprint.as_deref(), Some("BB"));
        assert_eq!(args.edge_enabled, Some(true));
        assert_eq!(args.status_reason.as_deref(), Some("why"));
        assert_eq!(args.common.output, OutputFormat::Tsv);

        let cli = parse(&["device-identity", "update", "-d", "d1", "--ee", "false"]).unwrap();
        let Command::DeviceIdentity(DeviceIdentityCommand::Update(args)) = cli.command else {
            panic!("wrong command");
        };
        assert_eq!(args.edge_enabled, Some(false));
    }

    #[test]
    fn sas_token_targets_are_exclusive_and_duration_defaults_to_an_hour() {
        assert!(parse(&["generate-sas-token", "--device-id", "d", "--policy-name", "p"]).is_err());
        let cli = parse(&["generate-sas-token", "--pn", "service"]).unwrap();
        let Command::GenerateSasToken(args) = cli.command else { panic!("wrong command") };
        assert_eq!(args.duration, 3600);
        assert_eq!(args.policy_name.as_deref(), Some("service"));
    }

    #[test]
    fn connection_string_show_has_its_alias_and_default_policy() {
        for argv in [&["connection-string", "show"][..], &["show-connection-string"][..]] {
            let cli = parse(argv).unwrap();
            let args = match cli.command {
                Command::ConnectionString(ConnectionStringCommand::Show(a)) => a,
                Command::ShowConnectionString(a) => a,
                other => panic!("wrong command {other:?}"),
            };
            assert_eq!(args.policy_name, "iothubowner");
        }
    }

    #[test]
    fn renew_key_requires_a_known_key_type() {
        assert!(parse(&["device-identity", "renew-key", "-d", "d", "--key-type", "both"]).is_err());
        assert!(parse(&["device-identity", "renew-key", "-d", "d", "--kt", "swap"]).is_ok());
    }

    #[test]
    fn serve_tls_flags_go_together() {
        assert!(parse(&["serve", "--tls-cert", "c.pem"]).is_err());
        let cli = parse(&["serve", "--hostname", "a", "--hostname", "b", "--bind", "0.0.0.0"]).unwrap();
        let Command::Serve(args) = cli.command else { panic!("wrong command") };
        assert_eq!(args.host_names, ["a", "b"]);
        assert_eq!(args.bind.len(), 1);
    }
}
