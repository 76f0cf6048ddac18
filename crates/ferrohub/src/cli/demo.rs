//! `ferrohub demo`: a staged firmware rollout to a simulated fleet, start
//! to finish, in one command and under two minutes.
//!
//! It starts a hub (this same binary, `serve`) on a temporary data dir and
//! free ports, uploads a generated image, simulates chillers of three
//! hardware revisions — A and C reliable, B with a bad flash chip that
//! fails half of its updates — and runs a staged rollout whose waves reach
//! the B chillers third. The rollout halts itself there and the C chillers
//! are never handed the image. Its progress is drawn live, as
//! `ferrohub firmware rollout watch` draws it; the exit code is the
//! watch's (2: halted, as intended).

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use clap::Args;
use rand::RngCore as _;
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt as _, BufReader};

use super::args::{AzIgnored, Common, OutputFormat};
use super::context::Context;
use super::simulate::{self, Group};
use super::Outcome;
use ferrohub_agent::sim::Faults;
use ferrohub_server::hubfile::ReadyLine;

/// How long the fleet may take to come online.
const ONLINE_CAP: Duration = Duration::from_secs(90);

#[derive(Debug, Args)]
pub(crate) struct DemoArgs {
    /// Simulated chillers (at least 10): 40% rev A, 30% rev B (failing),
    /// 30% rev C.
    #[arg(long, default_value_t = 100, value_name = "N")]
    pub(crate) devices: usize,
    /// Keep the demo hub's data dir (its path is printed) instead of
    /// deleting it.
    #[arg(long)]
    pub(crate) keep: bool,
}

/// The hub child process; killed (and its data dir removed unless kept)
/// on drop, whatever ends the demo.
struct DemoHub {
    child: tokio::process::Child,
    dir: PathBuf,
    keep: bool,
}

impl Drop for DemoHub {
    fn drop(&mut self) {
        // The demo's data are throwaway; acknowledged writes are durable
        // anyway, so a kill is as good as a clean stop here.
        let _ = self.child.start_kill();
        if !self.keep {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

/// Starts `ferrohub serve` on free ports; returns it with its ports once it
/// printed its ready line.
async fn start_hub(dir: &Path, keep: bool) -> anyhow::Result<(DemoHub, u16, u16)> {
    // Owner-only, as the hub creates its data dirs: it refuses one that
    // other users can open.
    std::os::unix::fs::DirBuilderExt::mode(std::fs::DirBuilder::new().recursive(true), 0o700).create(dir)?;
    let log = std::fs::File::create(dir.join("demo-hub.log"))?;
    let exe = std::env::current_exe().context("finding the ferrohub binary")?;
    let mut child = tokio::process::Command::new(exe)
        .args(["serve", "--https-port", "0", "--mqtt-port", "0", "--data-dir"])
        .arg(dir)
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::from(log))
        .kill_on_drop(true)
        .spawn()
        .context("starting ferrohub serve")?;
    let stdout = child.stdout.take().context("the hub's stdout")?;
    let hub = DemoHub { child, dir: dir.to_owned(), keep };
    let mut lines = BufReader::new(stdout).lines();
    let ready = tokio::time::timeout(Duration::from_secs(60), async {
        while let Some(line) = lines.next_line().await? {
            if let Some(ready) = ReadyLine::parse(&line) {
                return Ok::<_, anyhow::Error>(Some(ready));
            }
        }
        Ok(None)
    })
    .await
    .context("the hub did not start within 60 s")??
    .with_context(|| format!("the hub exited; see {}", dir.join("demo-hub.log").display()))?;
    let (https, mqtt) = (ready.https_port, ready.mqtt_port);
    // Keep draining the hub's stdout so it never blocks on a full pipe.
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    Ok((hub, https, mqtt))
}

/// Waits until every chiller reported its firmware (they are online).
async fn await_online(client: &ferrohub_service_client::ServiceClient, devices: usize) -> anyhow::Result<()> {
    let query = "SELECT COUNT() AS n FROM devices WHERE tags.devicetype = 'chiller' \
                 AND is_defined(properties.reported.firmware.fwUpdateStatus)";
    let start = Instant::now();
    loop {
        let rows = client.query(query, None).await?.items;
        let online = rows.first().and_then(|r| r["n"].as_u64()).unwrap_or(0);
        if online >= devices as u64 {
            return Ok(());
        }
        if start.elapsed() > ONLINE_CAP {
            bail!("only {online} of {devices} chillers came online");
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// Runs the demo; the exit code is the rollout watch's.
pub(crate) async fn run(args: DemoArgs) -> anyhow::Result<Outcome> {
    if args.devices < 10 {
        bail!("--devices must be at least 10");
    }
    let dir = std::env::temp_dir().join(format!("ferrohub-demo-{}", std::process::id()));
    let (hub, https_port, mqtt_port) = start_hub(&dir, args.keep).await?;
    let common = Common {
        data_dir: Some(dir.clone()),
        login: None,
        https_port: Some(https_port),
        mqtt_port: Some(mqtt_port),
        ca: None,
        output: OutputFormat::Json,
        az: AzIgnored::default(),
    };
    let ctx = Context::resolve(&common)?;
    let client = ctx.client()?;
    println!(
        "ferrohub demo: a hub on https://{}:{https_port} (MQTT {mqtt_port}), data in {}",
        ctx.host(),
        dir.display()
    );

    let image = dir.join("chiller-2.8.5.bin");
    let mut bytes = vec![0u8; 2 * 1024 * 1024];
    rand::thread_rng().fill_bytes(&mut bytes);
    std::fs::write(&image, &bytes)?;
    let record = client.upload_firmware(&image, "2.8.5", Some("chiller")).await?;
    println!(
        "uploaded firmware 2.8.5 for chillers: 2 MiB, sha256 {}, manifest signed by the hub",
        record["sha256"].as_str().unwrap_or_default()
    );

    let pem = client.firmware_public_key().await?;
    let tags = json!({"devicetype": "chiller"});
    let b = args.devices * 3 / 10;
    let c = args.devices * 3 / 10;
    let a = args.devices - b - c;
    let groups = [
        Group { prefix: "chiller-a", devices: a, tags: Some(&tags), faults: Faults::default() },
        Group {
            prefix: "chiller-b",
            devices: b,
            tags: Some(&tags),
            faults: Faults { failure_rate: 0.5, ..Faults::default() },
        },
        Group { prefix: "chiller-c", devices: c, tags: Some(&tags), faults: Faults::default() },
    ];
    let step = simulate::STEP.div_f64(10.0);
    let mut fleets = Vec::new();
    for group in &groups {
        fleets.push(simulate::start(&ctx, &client, &pem, group, step).await?);
    }
    println!(
        "simulating {} chillers over MQTT/TLS: {a} rev A, {b} rev B (a bad flash chip fails half their updates), {c} rev C",
        args.devices
    );
    await_online(&client, args.devices).await?;

    let rollout = json!({
        "id": "fw-2-8-5",
        "version": "2.8.5",
        "targetCondition": "tags.devicetype = 'chiller'",
        "waves": [10, 40, 70, 100],
        "successThreshold": 90,
        "failureThreshold": 10,
        "maxPerMinute": 1200,
        "deviceTimeoutSeconds": 60,
        "soakSeconds": 5,
    });
    client.create_rollout(&rollout).await?;
    println!(
        "rollout fw-2-8-5: waves 10%, 40%, 70%, 100% of the chillers (sorted by id: A, then B, then C), \
         20 per second; a wave starts at 90% success, the rollout halts at 10% failures; \
         a device succeeds after 5 s online at 2.8.5"
    );
    let code = super::rollout::watch(&client, "fw-2-8-5").await?;
    let done = client.get_rollout("fw-2-8-5").await?;
    print!("{}", summary(&done));
    for (_, tasks) in &mut fleets {
        tasks.abort_all();
    }
    if args.keep {
        println!("kept the data dir {}; `ferrohub serve --data-dir` it to look around", dir.display());
    }
    drop(hub);
    Ok(Outcome::Exit(code))
}

/// Where the rollout ended, in words: failures by reason, waves never
/// started.
fn summary(rollout: &Value) -> String {
    let mut text = String::new();
    let mut reasons: std::collections::BTreeMap<&str, u64> = std::collections::BTreeMap::new();
    for m in rollout["members"].as_array().into_iter().flatten() {
        if m["phase"] == "failed" {
            *reasons.entry(m["reason"].as_str().unwrap_or("unknown")).or_default() += 1;
        }
    }
    for (reason, n) in reasons {
        text.push_str(&format!("  {n} failed: {reason}\n"));
    }
    for wave in rollout["waveProgress"].as_array().into_iter().flatten() {
        if wave["started"] == false {
            text.push_str(&format!(
                "  wave {} ({} devices) was never started: none of them was handed the image\n",
                wave["wave"], wave["devices"]
            ));
        }
    }
    text
}
