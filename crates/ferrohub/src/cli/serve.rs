//! `ferrohub serve`: flags → [`ServeOptions`] → [`ferrohub_server::serve`].

use std::io::IsTerminal as _;

use std::time::Duration;

use clap::Args;
use ferrohub_server::hub::firmware::FirmwareLimits;
use ferrohub_server::options::{ConnectionOptions, MIN_HTTP_MAX_HEADER_BYTES};
use ferrohub_server::ServeOptions;
use tracing_subscriber::EnvFilter;

use ferrohub_core::daily_quota::DailyQuota;
use ferrohub_core::throttle::Tier;

use super::args::{DailyQuotaArg, LogFormat, ServeArgs};
use super::context;

/// The server's options from the command line.
pub(crate) fn options(args: ServeArgs) -> anyhow::Result<ServeOptions> {
    let mut quotas = args.tier.quotas(args.units);
    for spec in &args.throttles {
        quotas.apply_override(spec).map_err(|e| anyhow::anyhow!("--throttle {e}"))?;
    }
    Ok(ServeOptions {
        data_dir: context::data_dir(args.data_dir.as_deref())?,
        host_names: args.host_names,
        https_port: args.https_port,
        mqtt_port: args.mqtt_port,
        bind: args.bind,
        tls_cert: args.tls_cert,
        tls_key: args.tls_key,
        config_eval_interval: args.config_eval_interval.map(Duration::from_secs),
        firmware_limits: firmware_limits(
            args.firmware_max_image_size,
            args.firmware_store_quota,
            args.firmware_max_uploads,
            args.firmware_free_space_reserve,
        ),
        quotas,
        daily_quota: daily_quota(args.tier, args.units, args.daily_quota),
        limits: args.limits.options(),
    })
}

/// The tier's daily quota, or `--daily-quota`'s count in the tier's message
/// size (4 KB where the tier is unlimited).
fn daily_quota(tier: Tier, units: u32, arg: Option<DailyQuotaArg>) -> Option<DailyQuota> {
    let of_tier = DailyQuota::for_tier(tier, units);
    match arg {
        None => of_tier,
        Some(DailyQuotaArg::Unlimited) => None,
        Some(DailyQuotaArg::Messages(messages)) => {
            Some(DailyQuota { messages, message_chunk: of_tier.map_or(4096, |q| q.message_chunk) })
        }
    }
}

/// The firmware store's limits: each flag given, else its default.
fn firmware_limits(
    max_image: Option<u64>,
    quota: Option<u64>,
    uploads: Option<u32>,
    reserve: Option<u64>,
) -> FirmwareLimits {
    let d = FirmwareLimits::default();
    FirmwareLimits {
        max_image: max_image.unwrap_or(d.max_image),
        quota: quota.unwrap_or(d.quota),
        max_uploads: uploads.and_then(|n| usize::try_from(n).ok()).unwrap_or(d.max_uploads),
        reserve: reserve.unwrap_or(d.reserve),
    }
}

/// A byte count: digits, optionally followed by `K`/`KiB`, `M`/`MiB`,
/// `G`/`GiB` or `T`/`TiB` (powers of 1024; case and a space before the
/// unit do not matter).
pub(crate) fn parse_size(text: &str) -> Result<u64, String> {
    let text = text.trim();
    let split = text.find(|c: char| !c.is_ascii_digit()).unwrap_or(text.len());
    let (digits, unit) = text.split_at(split);
    let n: u64 = digits.parse().map_err(|_| format!("'{text}' is not a byte count (e.g. 500MiB)"))?;
    let shift = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 0,
        "k" | "kib" => 10,
        "m" | "mib" => 20,
        "g" | "gib" => 30,
        "t" | "tib" => 40,
        _ => return Err(format!("unknown unit in '{text}': use KiB, MiB, GiB or TiB")),
    };
    n.checked_mul(1 << shift).ok_or_else(|| format!("'{text}' is too large"))
}

/// Timeouts and connection caps of `ferrohub serve` (README, "Security and
/// limits").
#[derive(Debug, Args)]
pub(crate) struct LimitArgs {
    /// Seconds a TLS handshake may take, on either port [default: 10].
    #[arg(long, value_name = "SECONDS", env = "FERROHUB_TLS_HANDSHAKE_TIMEOUT", value_parser = clap::value_parser!(u64).range(1..))]
    tls_handshake_timeout: Option<u64>,
    /// HTTPS: seconds for a request's headers — a new connection's first
    /// request from the handshake, later ones from their first byte
    /// [default: 10].
    #[arg(long, value_name = "SECONDS", env = "FERROHUB_HTTP_HEADER_TIMEOUT", value_parser = clap::value_parser!(u64).range(1..))]
    http_header_timeout: Option<u64>,
    /// HTTPS: seconds a request body may go without a byte before the
    /// request is answered 408 and the connection closed; also how long a
    /// response may wait for the client to read [default: 30].
    #[arg(long, value_name = "SECONDS", env = "FERROHUB_HTTP_BODY_TIMEOUT", value_parser = clap::value_parser!(u64).range(1..))]
    http_body_timeout: Option<u64>,
    /// HTTPS: seconds a keep-alive connection may wait for its next request
    /// (WebSocket connections are governed by MQTT keep-alive instead)
    /// [default: 120].
    #[arg(long, value_name = "SECONDS", env = "FERROHUB_HTTP_IDLE_TIMEOUT", value_parser = clap::value_parser!(u64).range(1..))]
    http_idle_timeout: Option<u64>,
    /// HTTPS: bytes of request line plus headers; larger requests get 431
    /// [default: 16384].
    #[arg(long, value_name = "BYTES", env = "FERROHUB_HTTP_MAX_HEADER_BYTES", value_parser = clap::value_parser!(u64).range(MIN_HTTP_MAX_HEADER_BYTES as u64..=16 * 1024 * 1024))]
    http_max_header_bytes: Option<u64>,
    /// Open connections on the HTTPS port; more are closed at once
    /// [default: 3/8 of the open-files limit].
    #[arg(long, value_name = "N", env = "FERROHUB_MAX_HTTPS_CONNECTIONS", value_parser = clap::value_parser!(u64).range(1..))]
    max_https_connections: Option<u64>,
    /// Open connections on the MQTT port; more are closed at once
    /// [default: 3/8 of the open-files limit].
    #[arg(long, value_name = "N", env = "FERROHUB_MAX_MQTT_CONNECTIONS", value_parser = clap::value_parser!(u64).range(1..))]
    max_mqtt_connections: Option<u64>,
    /// Open HTTPS connections from one peer address; more are closed at
    /// once [default: 256, at most half of --max-https-connections].
    #[arg(long, value_name = "N", env = "FERROHUB_MAX_CONNECTIONS_PER_PEER", value_parser = clap::value_parser!(u64).range(1..))]
    max_connections_per_peer: Option<u64>,
}

impl LimitArgs {
    fn options(&self) -> ConnectionOptions {
        let secs = |s: Option<u64>| s.map(Duration::from_secs);
        let count = |n: Option<u64>| n.map(|n| usize::try_from(n).unwrap_or(usize::MAX));
        ConnectionOptions {
            tls_handshake_timeout: secs(self.tls_handshake_timeout),
            http_header_timeout: secs(self.http_header_timeout),
            http_body_timeout: secs(self.http_body_timeout),
            http_idle_timeout: secs(self.http_idle_timeout),
            http_max_header_bytes: count(self.http_max_header_bytes),
            max_https_connections: count(self.max_https_connections),
            max_mqtt_connections: count(self.max_mqtt_connections),
            max_connections_per_peer: count(self.max_connections_per_peer),
        }
    }
}

/// Runs the hub until SIGINT/SIGTERM. Logs go to stderr (filter from
/// `RUST_LOG`, default `info`; text or JSON lines); stdout carries only the
/// ready line and the owner connection string.
pub(crate) fn run(args: ServeArgs) -> anyhow::Result<()> {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let log = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    match args.log_format {
        LogFormat::Json => log.json().with_current_span(true).with_span_list(false).init(),
        // Colours only for a person watching; not in files or journald.
        LogFormat::Text => log.with_ansi(std::io::stderr().is_terminal()).init(),
    }
    let opts = options(args)?;
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    runtime.block_on(ferrohub_server::serve(opts))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::cli::args::{Cli, Command};
    use clap::Parser;

    #[test]
    fn unset_ports_stay_none_so_the_server_picks_its_defaults() {
        let cli = Cli::try_parse_from(["ferrohub", "serve", "--data-dir", "some/dir", "--https-port", "0"])
            .unwrap();
        let Command::Serve(args) = cli.command else { panic!("wrong command") };
        let opts = options(args).unwrap();
        assert_eq!(opts.https_port, Some(0));
        assert_eq!(opts.data_dir, std::path::PathBuf::from("some/dir"));
        if std::env::var_os("FERROHUB_MQTT_PORT").is_none() {
            assert_eq!(opts.mqtt_port, None);
        }
    }

    #[test]
    fn sizes_take_binary_units() {
        assert_eq!(parse_size("0"), Ok(0));
        assert_eq!(parse_size("1500"), Ok(1500));
        assert_eq!(parse_size("20MiB"), Ok(20 << 20));
        assert_eq!(parse_size("4 GiB"), Ok(4 << 30));
        assert_eq!(parse_size("3k"), Ok(3 << 10));
        assert_eq!(parse_size("1T"), Ok(1 << 40));
        for bad in ["", "MiB", "-1", "1.5GiB", "2PB", "99999999999999999999", "16777216TiB"] {
            assert!(parse_size(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn unset_firmware_flags_keep_the_store_defaults() {
        assert_eq!(firmware_limits(None, None, None, None), FirmwareLimits::default());
        let set = firmware_limits(Some(1), Some(2), Some(3), Some(4));
        assert_eq!(set, FirmwareLimits { max_image: 1, quota: 2, max_uploads: 3, reserve: 4 });
    }

    #[test]
    fn a_tier_and_overrides_become_the_hubs_quotas() {
        use ferrohub_core::throttle::{Class, Quota, Tier};
        let parse = |extra: &[&str]| {
            let mut argv = vec!["ferrohub", "serve", "--data-dir", "d"];
            argv.extend_from_slice(extra);
            let Command::Serve(args) = Cli::try_parse_from(argv).unwrap().command else { panic!() };
            options(args)
        };
        if std::env::var_os("FERROHUB_TIER").is_none() && std::env::var_os("FERROHUB_THROTTLE").is_none() {
            assert_eq!(parse(&[]).unwrap().quotas, Tier::Unlimited.quotas(1), "unlimited by default");
        }
        let q = parse(&[
            "--tier",
            "s3",
            "--units",
            "2",
            "--throttle",
            "twin-read=7/s",
            "--throttle",
            "query=unlimited",
        ])
        .unwrap()
        .quotas;
        assert_eq!(q.get(Class::TwinRead), Some(Quota::per_second(7)));
        assert_eq!(q.get(Class::Query), None);
        assert_eq!(q.get(Class::TwinUpdate), Some(Quota::per_second(500)));
        assert!(parse(&["--throttle", "twin-read=fast"]).is_err());
        assert!(Cli::try_parse_from(["ferrohub", "serve", "--tier", "s9"]).is_err());
    }

    #[test]
    fn the_daily_quota_follows_the_tier_unless_set() {
        assert_eq!(daily_quota(Tier::Unlimited, 1, None), None);
        assert_eq!(daily_quota(Tier::S2, 3, None), DailyQuota::for_tier(Tier::S2, 3));
        assert_eq!(daily_quota(Tier::S1, 1, Some(DailyQuotaArg::Unlimited)), None);
        let free = daily_quota(Tier::Free, 1, Some(DailyQuotaArg::Messages(50))).unwrap();
        assert_eq!((free.messages, free.message_chunk), (50, 512));
        let alone = daily_quota(Tier::Unlimited, 1, Some(DailyQuotaArg::Messages(7))).unwrap();
        assert_eq!((alone.messages, alone.message_chunk), (7, 4096));
        let parse = |v: &str| {
            let argv = ["ferrohub", "serve", "--data-dir", "d", "--daily-quota", v];
            let Command::Serve(args) = Cli::try_parse_from(argv).ok()?.command else { panic!() };
            args.daily_quota
        };
        assert_eq!(parse("400_000"), Some(DailyQuotaArg::Messages(400_000)));
        assert_eq!(parse("unlimited"), Some(DailyQuotaArg::Unlimited));
        assert_eq!(parse("0"), None);
        assert_eq!(parse("lots"), None);
    }

    #[test]
    fn limit_flags_reach_the_server_options() {
        let cli = Cli::try_parse_from([
            "ferrohub",
            "serve",
            "--http-header-timeout",
            "3",
            "--http-idle-timeout",
            "7",
            "--max-connections-per-peer",
            "5",
            "--http-max-header-bytes",
            "9000",
        ])
        .unwrap();
        let Command::Serve(args) = cli.command else { panic!("wrong command") };
        let limits = args.limits.options();
        assert_eq!(limits.http_header_timeout, Some(Duration::from_secs(3)));
        assert_eq!(limits.http_idle_timeout, Some(Duration::from_secs(7)));
        assert_eq!(limits.max_connections_per_peer, Some(5));
        assert_eq!(limits.http_max_header_bytes, Some(9000));
        for bad in [["--http-max-header-bytes", "100"], ["--http-body-timeout", "0"]] {
            assert!(Cli::try_parse_from(["ferrohub", "serve", bad[0], bad[1]]).is_err(), "{bad:?}");
        }
    }
}
