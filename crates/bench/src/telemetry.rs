//! `telemetry`: device-to-cloud QoS 1 messages from N devices (bounded
//! in-flight each) with one consumer reading every message, first against
//! ferrohub (`GET /events`), then the same generator against Mosquitto
//! (Debian's `/usr/sbin/mosquitto`, started here on a free port with a TLS
//! listener on the hub's own certificate, `allow_anonymous true`,
//! `persistence false`) with one subscriber on
//! `devices/+/messages/events/#`. Compares messages delivered per second.
//!
//! The devices run with desired-property sync, methods and C2D off (the
//! device client then only subscribes to `$iothub/twin/res/#`, which
//! Mosquitto grants like any topic, and never waits for an answer there),
//! the same against both brokers.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use clap::Args;
use rumqttc::{AsyncClient, Event as MqttEvent, MqttOptions, Packet, QoS, TlsConfiguration, Transport};
use serde_json::json;
use tokio::process::{Child, Command as Process};

use crate::fleet::{self, Command, Fleet, LoadSummary, Spec};
use crate::{procfs, report, Common};

#[derive(Debug, Clone, Args)]
pub(crate) struct TelemetryArgs {
    #[command(flatten)]
    pub(crate) common: Common,
    /// Devices [default: the hub's open-files limit less 500].
    #[arg(long)]
    pub(crate) devices: Option<usize>,
    /// Seconds of sending per broker.
    #[arg(long, default_value_t = 15)]
    pub(crate) duration: u64,
    /// QoS 1 messages outstanding per device.
    #[arg(long, default_value_t = 1)]
    pub(crate) inflight: u32,
    /// Total offered messages/s (0 = as fast as `--inflight` per device
    /// allows).
    #[arg(long, default_value_t = 0.0)]
    pub(crate) rate: f64,
    /// QoS of Mosquitto's one subscriber. 0 by default: the hub's
    /// `/events` reader does not acknowledge either, and at QoS 1 Mosquitto
    /// sends a single subscriber at most 20 unacknowledged messages
    /// (`max_inflight_messages`) and drops beyond 1,000 queued.
    #[arg(long, default_value_t = 0, value_parser = clap::value_parser!(u8).range(0..=1))]
    pub(crate) subscriber_qos: u8,
    /// The Mosquitto binary.
    #[arg(long, default_value = "/usr/sbin/mosquitto")]
    pub(crate) mosquitto: PathBuf,
}

/// One broker's numbers.
struct Run {
    load: LoadSummary,
    /// Consumer count during the send window.
    delivered_in_window: u64,
    /// Consumer count after a drain.
    delivered_total: u64,
    broker_cpu: f64,
    generator_cpu: f64,
    connect_s: f64,
}

pub(crate) async fn run(args: &TelemetryArgs) -> anyhow::Result<()> {
    let hub = fleet::start_hub(&args.common.hub_bin()?).await?;
    let pid = hub.pid();
    let (n, limit) = fleet::device_count(args.devices, args.common.smoke, 20, pid)?;
    let duration = Duration::from_secs(if args.common.smoke { 2 } else { args.duration });
    let service = hub.service().await?;
    let key = fleet::random_key();
    fleet::register(&service, "tel-", n, &key, None).await?;
    let host = fleet::hub_host(&service);
    // Mosquitto gets copies of the hub's certificate (the data dir goes
    // away with the hub).
    let dir = std::env::temp_dir().join(format!("ferrohub-bench-mosquitto-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    for file in ["server.pem", "server-key.pem", "ca.pem"] {
        std::fs::copy(hub.data_dir.join(file), dir.join(file)).with_context(|| format!("copying {file}"))?;
    }
    let ca = dir.join("ca.pem");
    let spec = Spec {
        host: host.clone(),
        port: hub.mqtt_port,
        ca_file: ca.clone(),
        prefix: "tel-".into(),
        key,
        first: 0,
        count: n,
        desired: false,
        agent: false,
        hold_reports: false,
        concurrency: 128,
        spread: 0,
    };

    // ferrohub, read through GET /events.
    let counter = Arc::new(AtomicU64::new(0));
    let mut events = service.events(None, None).await?;
    let consumer = {
        let counter = counter.clone();
        tokio::spawn(async move {
            while let Some(event) = events.next().await {
                if event.is_ok() {
                    counter.fetch_add(1, Ordering::Relaxed);
                }
            }
        })
    };
    let hub_run = drive(&spec, duration, args, &counter, pid).await?;
    consumer.abort();
    hub.stop().await?;

    // Mosquitto, read by one MQTT subscriber.
    let mosquitto = Mosquitto::start(&args.mosquitto, &dir).await?;
    let counter = Arc::new(AtomicU64::new(0));
    let qos = if args.subscriber_qos == 1 { QoS::AtLeastOnce } else { QoS::AtMostOnce };
    let subscriber = subscribe(&host, mosquitto.port, &ca, qos, counter.clone()).await?;
    let mosq_pid = mosquitto.child.id().unwrap_or(0);
    let mosq_run =
        drive(&Spec { port: mosquitto.port, ..spec.clone() }, duration, args, &counter, mosq_pid).await?;
    subscriber.abort();
    mosquitto.stop().await;
    let _ = std::fs::remove_dir_all(&dir);

    let mut report = report::Report::new(
        "telemetry",
        json!({"devices": n, "hub_open_files_limit": limit, "duration_s": duration.as_secs(),
               "inflight_per_device": args.inflight, "qos": 1, "offered_rate": args.rate,
               "mosquitto_subscriber_qos": args.subscriber_qos, "smoke": args.common.smoke}),
    );
    report.row("devices (N)", n as u64);
    report.row("hub open-files limit", limit);
    let secs = duration.as_secs_f64();
    for (name, run) in [("ferrohub", &hub_run), ("mosquitto", &mosq_run)] {
        report.decimal(&format!("[{name}] connect all (s)"), run.connect_s, 2);
        report.row(
            &format!("[{name}] sent / acked / errors"),
            format!("{} / {} / {}", run.load.sent, run.load.acked, run.load.errors),
        );
        report.decimal(&format!("[{name}] acked (msg/s)"), run.load.acked_in_window as f64 / secs, 0);
        report.decimal(
            &format!("[{name}] delivered to the consumer (msg/s)"),
            run.delivered_in_window as f64 / secs,
            0,
        );
        report.row(&format!("[{name}] delivered total"), run.delivered_total);
        report.row(
            &format!("[{name}] acked but not delivered"),
            run.load.acked.saturating_sub(run.delivered_total),
        );
        report.decimal(&format!("[{name}] PUBACK p50 (ms)"), run.load.ms(0.5), 2);
        report.decimal(&format!("[{name}] PUBACK p99 (ms)"), run.load.ms(0.99), 2);
        report.decimal(&format!("[{name}] broker CPU (% of one core)"), run.broker_cpu * 100.0 / secs, 0);
        report.decimal(
            &format!("[{name}] generator CPU (% of one core)"),
            run.generator_cpu * 100.0 / secs,
            0,
        );
        if let Some(e) = &run.load.first_error {
            report.row(&format!("[{name}] first error"), e.clone());
        }
    }
    let ratio = hub_run.delivered_in_window as f64 / (mosq_run.delivered_in_window.max(1) as f64);
    report.decimal("delivered ratio ferrohub / mosquitto", ratio, 3);
    report.finish(&args.common.out)
}

/// Connects the fleet to `spec.port`, sends for `duration`, counts what
/// `counter` (the consumer) saw.
async fn drive(
    spec: &Spec,
    duration: Duration,
    args: &TelemetryArgs,
    counter: &AtomicU64,
    broker: u32,
) -> anyhow::Result<Run> {
    let mut fleet = Fleet::start(spec).await?;
    let connecting = Instant::now();
    let (_, failed, first_error) = fleet.connect().await?;
    anyhow::ensure!(failed == 0, "{failed} devices did not connect: {first_error:?}");
    let connect_s = connecting.elapsed().as_secs_f64();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let duration_ms = u64::try_from(duration.as_millis()).unwrap_or(u64::MAX);
    let broker_cpu = procfs::cpu_time(broker)?;
    let gen_cpu = fleet::cpu_of(&fleet.pids());
    let before = counter.load(Ordering::Relaxed);
    let (total, n) = (args.rate, spec.count.max(1) as f64);
    let inflight = args.inflight;
    fleet
        .send_each(|share| Command::Telemetry { rate: total * share as f64 / n, duration_ms, inflight })
        .await?;
    tokio::time::sleep(duration).await;
    let in_window = counter.load(Ordering::Relaxed) - before;
    let broker_cpu = procfs::cpu_time(broker)?.saturating_sub(broker_cpu).as_secs_f64();
    let generator_cpu = fleet::cpu_of(&fleet.pids()).saturating_sub(gen_cpu).as_secs_f64();
    let load = fleet.recv_load().await?;
    // Let the consumer catch up with what was acknowledged.
    let drain = Instant::now() + Duration::from_secs(5);
    while counter.load(Ordering::Relaxed) - before < load.acked && Instant::now() < drain {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let delivered_total = counter.load(Ordering::Relaxed) - before;
    fleet.close().await?;
    Ok(Run { load, delivered_in_window: in_window, delivered_total, broker_cpu, generator_cpu, connect_s })
}

/// One MQTT subscriber on `devices/+/messages/events/#` at `qos` counting
/// messages; returns once the subscription is granted.
async fn subscribe(
    host: &str,
    port: u16,
    ca: &Path,
    qos: QoS,
    counter: Arc<AtomicU64>,
) -> anyhow::Result<tokio::task::JoinHandle<()>> {
    let tls = ferrohub_device_client::tls_config(Some(ca), None)?;
    let mut options = MqttOptions::new(format!("bench-subscriber-{}", std::process::id()), host, port);
    options
        .set_transport(Transport::Tls(TlsConfiguration::Rustls(tls)))
        .set_keep_alive(Duration::from_secs(60))
        .set_clean_session(true)
        .set_max_packet_size(300 * 1024, 300 * 1024);
    let (client, mut eventloop) = AsyncClient::new(options, 1024);
    client.subscribe("devices/+/messages/events/#", qos).await?;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let event = tokio::time::timeout(Duration::from_secs(10), eventloop.poll())
            .await
            .context("subscribing")??;
        if let MqttEvent::Incoming(Packet::SubAck(_)) = event {
            break;
        }
        if Instant::now() > deadline {
            bail!("no SUBACK from mosquitto");
        }
    }
    Ok(tokio::spawn(async move {
        let _client = client;
        loop {
            match eventloop.poll().await {
                Ok(MqttEvent::Incoming(Packet::Publish(_))) => {
                    counter.fetch_add(1, Ordering::Relaxed);
                }
                Ok(_) => {}
                Err(e) => {
                    tracing::warn!(error = %e, "subscriber connection lost");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
    }))
}

/// Mosquitto as a child process.
struct Mosquitto {
    child: Child,
    port: u16,
}

impl Mosquitto {
    async fn start(bin: &Path, dir: &Path) -> anyhow::Result<Self> {
        anyhow::ensure!(
            bin.exists(),
            "{} is missing; install Debian's mosquitto package (apt-get install -y mosquitto)",
            bin.display()
        );
        let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        let config = dir.join("mosquitto.conf");
        // Run as whoever we are (root would otherwise switch to the
        // mosquitto user, which cannot read the 0600 key).
        let user = if is_root() { "user root\n" } else { "" };
        std::fs::write(
            &config,
            format!(
                "{user}listener {port} 127.0.0.1\n\
                 certfile {cert}\nkeyfile {key}\n\
                 allow_anonymous true\npersistence false\n\
                 set_tcp_nodelay true\n\
                 log_dest stderr\nlog_type error\nlog_type warning\n",
                cert = dir.join("server.pem").display(),
                key = dir.join("server-key.pem").display(),
            ),
        )?;
        let log = std::fs::File::create(dir.join("mosquitto.log"))?;
        let child = Process::new(bin)
            .arg("-c")
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::from(log))
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("starting {}", bin.display()))?;
        let deadline = Instant::now() + Duration::from_secs(10);
        while tokio::net::TcpStream::connect(("127.0.0.1", port)).await.is_err() {
            if Instant::now() > deadline {
                bail!(
                    "mosquitto did not listen on {port}: {}",
                    std::fs::read_to_string(dir.join("mosquitto.log")).unwrap_or_default()
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Ok(Self { child, port })
    }

    async fn stop(mut self) {
        if let Some(pid) = self.child.id() {
            let _ = Process::new("kill").args(["-TERM", &pid.to_string()]).status().await;
        }
        let _ = tokio::time::timeout(Duration::from_secs(10), self.child.wait()).await;
    }
}

fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines().find(|l| l.starts_with("Uid:")).map(|l| l.split_whitespace().nth(1) == Some("0"))
        })
        .unwrap_or(false)
}
