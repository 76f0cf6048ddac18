//! `ferrohub simulate`: a fleet of simulated update agents in one process
//! (see [`ferrohub_agent::sim`]).
//!
//! It finds the hub like every client command, registers the devices
//! `<prefix>-<n>` in bulk (100 per request) or reuses existing ones, sets
//! their tags, fetches the hub's manifest-signing key once, and runs one
//! task per device on this process's runtime. A status line is printed
//! every few seconds and a summary on Ctrl-C or SIGTERM.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context as _};
use base64::Engine as _;
use clap::Args;
use rand::RngCore as _;
use serde_json::{json, Value};

use super::args::Common;
use super::context::Context;
use super::Outcome;
use ferrohub_agent::sim::{Faults, Fleet};
use ferrohub_service_client::ServiceClient;

/// Devices per bulk registry request (the hub's limit).
const BULK: usize = 100;
/// How often a status line is printed.
const STATUS_EVERY: Duration = Duration::from_secs(5);
/// One simulated step at 1x.
pub(crate) const STEP: Duration = Duration::from_secs(2);

#[derive(Debug, Args)]
pub(crate) struct SimulateArgs {
    /// How many devices to simulate.
    #[arg(long, value_name = "N")]
    pub(crate) devices: usize,
    /// Device ids are `<prefix>-<n>` (n from 1).
    #[arg(long, value_name = "PREFIX", default_value = "sim")]
    pub(crate) prefix: String,
    /// Tags (a JSON object) set on every simulated device.
    #[arg(long, value_name = "JSON")]
    pub(crate) tags: Option<String>,
    /// Share of updates failing to download or with a bad checksum.
    #[arg(long, value_name = "RATE", default_value_t = 0.05, value_parser = parse_rate)]
    pub(crate) failure_rate: f64,
    /// Share of updates crashing while applying (they come back and roll back).
    #[arg(long, value_name = "RATE", default_value_t = 0.0, value_parser = parse_rate)]
    pub(crate) crash_rate: f64,
    /// Share of updates after which the device goes offline for good.
    #[arg(long, value_name = "RATE", default_value_t = 0.0, value_parser = parse_rate)]
    pub(crate) offline_after_update_rate: f64,
    /// Speed-up of the simulated step delays, e.g. 10x.
    #[arg(long, value_name = "FACTOR", default_value = "1x", value_parser = parse_speed)]
    pub(crate) speed: f64,
    #[command(flatten)]
    pub(crate) common: Common,
}

fn parse_rate(text: &str) -> Result<f64, String> {
    let rate: f64 = text.trim().parse().map_err(|_| format!("'{text}' is not a number"))?;
    if (0.0..=1.0).contains(&rate) {
        Ok(rate)
    } else {
        Err(format!("{rate} is not between 0 and 1"))
    }
}

fn parse_speed(text: &str) -> Result<f64, String> {
    let t = text.trim();
    let t = t.strip_suffix('x').or_else(|| t.strip_suffix('X')).unwrap_or(t);
    let speed: f64 = t.parse().map_err(|_| format!("'{text}' is not a speed like 10x"))?;
    if speed.is_finite() && speed > 0.0 {
        Ok(speed)
    } else {
        Err(format!("the speed must be positive, not {text}"))
    }
}

fn random_key() -> String {
    let mut bytes = [0u8; 32];
    rand::thread_rng().fill_bytes(&mut bytes);
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// Registers (or reuses) the devices; returns `(id, primary key)` each.
async fn register(
    client: &ServiceClient,
    prefix: &str,
    count: usize,
    tags: Option<&Value>,
) -> anyhow::Result<Vec<(String, String)>> {
    let mut devices = Vec::with_capacity(count);
    let ids: Vec<String> = (1..=count).map(|n| format!("{prefix}-{n}")).collect();
    for batch in ids.chunks(BULK) {
        let keys: Vec<String> = batch.iter().map(|_| random_key()).collect();
        let ops: Vec<Value> = batch
            .iter()
            .zip(&keys)
            .map(|(id, key)| {
                let mut op = json!({
                    "id": id,
                    "importMode": "create",
                    "authentication": {"type": "sas", "symmetricKey": {"primaryKey": key, "secondaryKey": random_key()}},
                });
                if let Some(tags) = tags {
                    op["tags"] = tags.clone();
                }
                op
            })
            .collect();
        let result = client.bulk(&Value::Array(ops)).await.context("registering devices")?;
        let mut existing = Vec::new();
        for error in result.get("errors").and_then(Value::as_array).into_iter().flatten() {
            let id = error.get("deviceId").and_then(Value::as_str).unwrap_or_default();
            let code = error.get("errorCode").and_then(Value::as_str).unwrap_or_default();
            if code == "DeviceAlreadyExists" {
                existing.push(id.to_owned());
            } else {
                bail!("registering {id} failed: {code} {}", error.get("errorStatus").unwrap_or(&Value::Null));
            }
        }
        if let (Some(tags), false) = (tags, existing.is_empty()) {
            let ops: Vec<Value> = existing
                .iter()
                .map(|id| json!({"id": id, "importMode": "updateTwin", "tags": tags}))
                .collect();
            let result = client.bulk(&Value::Array(ops)).await.context("tagging existing devices")?;
            if result.get("isSuccessful") != Some(&Value::Bool(true)) {
                bail!("tagging existing devices failed: {}", result.get("errors").unwrap_or(&Value::Null));
            }
        }
        for (id, key) in batch.iter().zip(keys) {
            let key = if existing.contains(id) {
                let device = client.get_device(id).await.with_context(|| format!("reading {id}"))?;
                device.authentication.symmetric_key.primary_key
            } else {
                key
            };
            devices.push((id.clone(), key));
        }
    }
    Ok(devices)
}

/// One group of simulated devices: `<prefix>-1..<prefix>-<devices>`.
pub(crate) struct Group<'a> {
    pub(crate) prefix: &'a str,
    pub(crate) devices: usize,
    pub(crate) tags: Option<&'a Value>,
    pub(crate) faults: Faults,
}

/// Registers (or reuses) a group's devices and starts one simulated agent
/// task each; the tasks run until aborted.
pub(crate) async fn start(
    ctx: &Context,
    client: &ServiceClient,
    pem: &str,
    group: &Group<'_>,
    step: Duration,
) -> anyhow::Result<(Arc<Fleet>, tokio::task::JoinSet<()>)> {
    let devices = register(client, group.prefix, group.devices, group.tags).await?;
    let fleet = Arc::new(Fleet::new(
        ctx.host().to_owned(),
        Some(ctx.endpoint.mqtt_port),
        ctx.endpoint.ca.as_deref(),
        pem,
        group.faults,
        step,
        devices.len(),
    )?);
    let mut tasks = tokio::task::JoinSet::new();
    for (index, (id, key)) in devices.into_iter().enumerate() {
        tasks.spawn(ferrohub_agent::sim::run_device(fleet.clone(), index, id, key));
    }
    Ok((fleet, tasks))
}

/// Runs the simulator until Ctrl-C or SIGTERM.
pub(crate) async fn run(args: SimulateArgs) -> anyhow::Result<Outcome> {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    let _ = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).try_init();
    if args.devices == 0 {
        bail!("--devices must be at least 1");
    }
    let tags = match &args.tags {
        Some(text) => {
            let v: Value = serde_json::from_str(text).context("--tags is not JSON")?;
            if !v.is_object() {
                bail!("--tags must be a JSON object");
            }
            Some(v)
        }
        None => None,
    };
    let ctx = Context::resolve(&args.common)?;
    let client = ctx.client()?;
    let pem = client.firmware_public_key().await.context("fetching the hub's firmware key")?;
    let faults = Faults {
        failure_rate: args.failure_rate,
        crash_rate: args.crash_rate,
        offline_after_update_rate: args.offline_after_update_rate,
    };
    let group = Group { prefix: &args.prefix, devices: args.devices, tags: tags.as_ref(), faults };
    let (fleet, mut tasks) = start(&ctx, &client, &pem, &group, STEP.div_f64(args.speed)).await?;
    println!(
        "simulating {} devices ({}-1..{}-{}) on {}",
        args.devices,
        args.prefix,
        args.prefix,
        args.devices,
        ctx.host()
    );
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let mut ticker = tokio::time::interval(STATUS_EVERY);
    ticker.tick().await;
    loop {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => break,
            _ = term.recv() => break,
            _ = ticker.tick() => println!("status {}", fleet.counts()),
        }
    }
    tasks.abort_all();
    Ok(Outcome::Text(format!("summary {}\n", fleet.counts())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn speeds_and_rates_parse() {
        assert_eq!(parse_speed("10x"), Ok(10.0));
        assert_eq!(parse_speed("2.5"), Ok(2.5));
        assert!(parse_speed("0x").is_err());
        assert_eq!(parse_rate("0.05"), Ok(0.05));
        assert!(parse_rate("1.5").is_err());
    }
}
