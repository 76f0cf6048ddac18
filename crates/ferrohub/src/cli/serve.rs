//! `ferrohub serve`: flags → [`ServeOptions`] → [`ferrohub_server::serve`].

use std::io::IsTerminal as _;

use ferrohub_server::ServeOptions;
use tracing_subscriber::EnvFilter;

use super::args::ServeArgs;
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
        config_eval_interval: args.config_eval_interval.map(std::time::Duration::from_secs),
        quotas,
    })
}

/// Runs the hub until SIGINT/SIGTERM. Logs go to stderr (filter from
/// `RUST_LOG`, default `info`); stdout carries only the ready line and the
/// owner connection string.
pub(crate) fn run(args: ServeArgs) -> anyhow::Result<()> {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    // Colours only for a person watching; not in files or journald.
    let ansi = std::io::stderr().is_terminal();
    tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).with_ansi(ansi).init();
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
}
