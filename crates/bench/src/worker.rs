//! `ferrohub-bench worker` (hidden): one process of the load generator. It
//! reads [`Command`]s as JSON lines on stdin, holds its share of the device
//! connections through the project's device client, runs the load it is
//! told to, and answers [`Event`]s as JSON lines on stdout (nothing else is
//! written there; logs go to stderr).

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context as _;
use ferrohub_device_client::{tls_config, DeviceClient, DeviceOptions, Message};
use hdrhistogram::Histogram;
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt as _, AsyncWriteExt as _, BufReader};
use tokio::sync::{watch, Semaphore};
use tokio::task::JoinSet;
use tokio::time::Instant;

use crate::fleet::{encode_histogram, histogram, unix_us, Command, Event, Spec};

/// How long in-flight operations may take to finish after a window.
const DRAIN: Duration = Duration::from_secs(30);

/// Counters and latencies of one load window.
struct Tally {
    sent: AtomicU64,
    acked: AtomicU64,
    acked_in_window: AtomicU64,
    errors: AtomicU64,
    skipped: AtomicU64,
    histogram: Mutex<Histogram<u64>>,
    first_error: Mutex<Option<String>>,
    deadline: Instant,
}

impl Tally {
    fn new(deadline: Instant) -> Self {
        Self {
            sent: AtomicU64::new(0),
            acked: AtomicU64::new(0),
            acked_in_window: AtomicU64::new(0),
            errors: AtomicU64::new(0),
            skipped: AtomicU64::new(0),
            histogram: Mutex::new(histogram()),
            first_error: Mutex::new(None),
            deadline,
        }
    }

    fn done<E: std::fmt::Display>(&self, started: Instant, result: Result<(), E>) {
        let now = Instant::now();
        match result {
            Ok(()) => {
                self.acked.fetch_add(1, Ordering::Relaxed);
                if now <= self.deadline {
                    self.acked_in_window.fetch_add(1, Ordering::Relaxed);
                }
                let us = u64::try_from((now - started).as_micros()).unwrap_or(u64::MAX).max(1);
                lock(&self.histogram).saturating_record(us);
            }
            Err(e) => {
                self.errors.fetch_add(1, Ordering::Relaxed);
                lock(&self.first_error).get_or_insert_with(|| e.to_string());
            }
        }
    }

    fn event(&self) -> anyhow::Result<Event> {
        Ok(Event::Load {
            sent: self.sent.load(Ordering::Relaxed),
            acked: self.acked.load(Ordering::Relaxed),
            acked_in_window: self.acked_in_window.load(Ordering::Relaxed),
            errors: self.errors.load(Ordering::Relaxed),
            skipped: self.skipped.load(Ordering::Relaxed),
            histogram: encode_histogram(&lock(&self.histogram))?,
            first_error: lock(&self.first_error).clone(),
        })
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // The load generator's tallies: a panicking device task leaves at worst
    // one count short, which the run's totals would show anyway.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// One connected device and what the rollout agent saw.
struct Device {
    client: DeviceClient,
    inflight: AtomicU32,
}

/// What the instant agents record.
struct Agents {
    arrivals: Mutex<Vec<u64>>,
    report_errors: AtomicU64,
    first_error: Mutex<Option<String>>,
    /// Whether agents hold their `current` report until `go`.
    hold: bool,
    go: watch::Sender<bool>,
    /// Reports finished (acknowledged or failed).
    reports_done: watch::Sender<usize>,
}

impl Agents {
    fn new(hold: bool) -> Self {
        Self {
            arrivals: Mutex::new(Vec::new()),
            report_errors: AtomicU64::new(0),
            first_error: Mutex::new(None),
            hold,
            go: watch::channel(false).0,
            reports_done: watch::channel(0).0,
        }
    }
}

/// The worker's main loop.
pub(crate) async fn run() -> anyhow::Result<()> {
    let mut lines = BufReader::new(tokio::io::stdin()).lines();
    let mut stdout = tokio::io::stdout();
    let mut spec: Option<Spec> = None;
    let mut options = DeviceOptions::default();
    let mut devices: Vec<Arc<Device>> = Vec::new();
    let mut agents = Arc::new(Agents::new(false));
    let (arrived_tx, _) = watch::channel(0usize);
    let arrived_tx = Arc::new(arrived_tx);
    while let Some(line) = lines.next_line().await? {
        let command: Command = serde_json::from_str(&line).with_context(|| format!("bad command {line}"))?;
        let event = match command {
            Command::Setup { spec: s } => {
                options = DeviceOptions {
                    mqtt_port: Some(s.port),
                    tls_config: Some(tls_config(Some(&s.ca_file), None)?),
                    receive_desired: s.desired,
                    receive_methods: false,
                    receive_c2d: false,
                    // The hub may be slow to take 19,000 handshakes at once.
                    attempt_timeout: Duration::from_secs(60),
                    connect_timeout: Duration::from_secs(300),
                    operation_timeout: Duration::from_secs(120),
                    ..DeviceOptions::default()
                };
                agents = Arc::new(Agents::new(s.hold_reports));
                spec = Some(s);
                Event::Ready
            }
            Command::Connect => {
                let s = spec.as_ref().context("connect before setup")?;
                connect(s, &options, &mut devices, &agents, &arrived_tx).await
            }
            Command::Reported { rate, duration_ms, inflight } => {
                let window = Duration::from_millis(duration_ms);
                let tally = Arc::new(Tally::new(Instant::now() + window));
                let seq = Arc::new(AtomicU64::new(0));
                let op = move |device: Arc<Device>| {
                    let seq = seq.clone();
                    async move {
                        let n = seq.fetch_add(1, Ordering::Relaxed);
                        let patch = json!({"bench": {"seq": n, "at": unix_us()}});
                        device.client.update_reported(&patch).await.map(|_| ())
                    }
                };
                drive(&devices, rate, inflight, tally.clone(), op).await;
                tally.event()?
            }
            Command::Telemetry { rate, duration_ms, inflight } => {
                let window = Duration::from_millis(duration_ms);
                let tally = Arc::new(Tally::new(Instant::now() + window));
                let body = br#"{"temperature":21.5,"humidity":40,"bench":true}"#;
                let op = move |device: Arc<Device>| async move {
                    device.client.send_telemetry(Message::new(body.to_vec()).json()).await
                };
                drive(&devices, rate, inflight, tally.clone(), op).await;
                tally.event()?
            }
            Command::Arrivals { timeout_ms } => {
                let mut rx = arrived_tx.subscribe();
                let want = devices.len();
                let _ = tokio::time::timeout(Duration::from_millis(timeout_ms), rx.wait_for(|n| *n >= want))
                    .await;
                // The reports go out right after each arrival; let them land.
                let times_us = lock(&agents.arrivals).clone();
                Event::Arrivals {
                    missing: (want - times_us.len().min(want)) as u64,
                    times_us,
                    report_errors: agents.report_errors.load(Ordering::Relaxed),
                    first_error: lock(&agents.first_error).clone(),
                }
            }
            Command::Report { timeout_ms } => {
                agents.go.send_replace(true);
                let mut rx = agents.reports_done.subscribe();
                let want = devices.len();
                let _ = tokio::time::timeout(Duration::from_millis(timeout_ms), rx.wait_for(|n| *n >= want))
                    .await;
                let done = *agents.reports_done.borrow();
                Event::Reported {
                    done: done as u64,
                    errors: agents.report_errors.load(Ordering::Relaxed),
                    first_error: lock(&agents.first_error).clone(),
                }
            }
            Command::Close => {
                let mut closing = JoinSet::new();
                for device in devices.drain(..) {
                    closing.spawn(async move { device.client.close().await });
                }
                while closing.join_next().await.is_some() {}
                reply(&mut stdout, &Event::Closed).await?;
                return Ok(());
            }
        };
        reply(&mut stdout, &event).await?;
    }
    Ok(())
}

async fn reply(stdout: &mut tokio::io::Stdout, event: &Event) -> anyhow::Result<()> {
    let mut line = serde_json::to_vec(event)?;
    line.push(b'\n');
    stdout.write_all(&line).await?;
    stdout.flush().await?;
    Ok(())
}

/// Connects this worker's devices, `spec.concurrency` attempts at a time.
async fn connect(
    spec: &Spec,
    options: &DeviceOptions,
    devices: &mut Vec<Arc<Device>>,
    agents: &Arc<Agents>,
    arrived: &Arc<watch::Sender<usize>>,
) -> Event {
    let gate = Arc::new(Semaphore::new(spec.concurrency.max(1)));
    let mut pending = JoinSet::new();
    for i in spec.first..spec.first + spec.count {
        let cs = format!("HostName={};DeviceId={}{i};SharedAccessKey={}", spec.host, spec.prefix, spec.key);
        let options = options.clone();
        let gate = gate.clone();
        pending.spawn(async move {
            let _permit = gate.acquire_owned().await;
            DeviceClient::connect(&cs, options).await
        });
    }
    let (mut ok, mut failed, mut first_error) = (0, 0, None);
    while let Some(done) = pending.join_next().await {
        match done {
            Ok(Ok(client)) => {
                ok += 1;
                if spec.agent {
                    start_agent(&client, agents.clone(), arrived.clone());
                }
                devices.push(Arc::new(Device { client, inflight: AtomicU32::new(0) }));
            }
            Ok(Err(e)) => {
                failed += 1;
                first_error.get_or_insert_with(|| e.to_string());
            }
            Err(e) => {
                failed += 1;
                first_error.get_or_insert_with(|| e.to_string());
            }
        }
    }
    Event::Connected { ok, failed, first_error }
}

/// The instant firmware agent: on the first desired `firmware` (patch or
/// full document), record the arrival time and report
/// `fwUpdateStatus=current` with that `fwVersion`.
fn start_agent(client: &DeviceClient, agents: Arc<Agents>, arrived: Arc<watch::Sender<usize>>) {
    let Some(mut updates) = client.desired_updates() else { return };
    let client = client.clone();
    tokio::spawn(async move {
        while let Some(update) = updates.recv().await {
            let firmware = &update.body["firmware"];
            let Some(version) = firmware.get("fwVersion").and_then(Value::as_str) else { continue };
            lock(&agents.arrivals).push(unix_us());
            arrived.send_modify(|n| *n += 1);
            if agents.hold {
                let mut go = agents.go.subscribe();
                let _ = go.wait_for(|go| *go).await;
            }
            let patch = json!({"firmware": {"fwUpdateStatus": "current", "currentFwVersion": version}});
            if let Err(e) = client.update_reported(&patch).await {
                agents.report_errors.fetch_add(1, Ordering::Relaxed);
                lock(&agents.first_error).get_or_insert_with(|| e.to_string());
            }
            agents.reports_done.send_modify(|n| *n += 1);
            break;
        }
        // Keep the stream (and so the subscription's sink) alive.
        while updates.recv().await.is_some() {}
    });
}

/// Runs `op` against the devices until the tally's deadline: at `rate` per
/// second round-robin over the devices (skipping a device that already has
/// `inflight` outstanding), or with `rate` 0 as fast as `inflight`
/// outstanding per device allows. Then waits for what is in flight.
async fn drive<F, Fut, E>(devices: &[Arc<Device>], rate: f64, inflight: u32, tally: Arc<Tally>, op: F)
where
    F: Fn(Arc<Device>) -> Fut + Clone + Send + Sync + 'static,
    Fut: std::future::Future<Output = Result<(), E>> + Send,
    E: std::fmt::Display + Send,
{
    let inflight = inflight.max(1);
    let mut tasks = JoinSet::new();
    if devices.is_empty() {
        return;
    }
    if rate <= 0.0 {
        for device in devices {
            for _ in 0..inflight {
                let (device, tally, op) = (device.clone(), tally.clone(), op.clone());
                tasks.spawn(async move {
                    while Instant::now() < tally.deadline {
                        tally.sent.fetch_add(1, Ordering::Relaxed);
                        let started = Instant::now();
                        let result = op(device.clone()).await;
                        let failed = result.is_err();
                        tally.done(started, result);
                        if failed {
                            tokio::time::sleep(Duration::from_millis(100)).await;
                        }
                    }
                });
            }
        }
    } else {
        let start = Instant::now();
        let mut issued: u64 = 0;
        let mut next = 0usize;
        let mut ticker = tokio::time::interval(Duration::from_millis(1));
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        loop {
            ticker.tick().await;
            let now = Instant::now();
            if now >= tally.deadline {
                break;
            }
            let due = ((now - start).as_secs_f64() * rate) as u64;
            while issued < due {
                issued += 1;
                let device = devices[next % devices.len()].clone();
                next += 1;
                if device.inflight.load(Ordering::Relaxed) >= inflight {
                    tally.skipped.fetch_add(1, Ordering::Relaxed);
                    continue;
                }
                device.inflight.fetch_add(1, Ordering::Relaxed);
                tally.sent.fetch_add(1, Ordering::Relaxed);
                let (tally, op) = (tally.clone(), op.clone());
                tasks.spawn(async move {
                    let started = Instant::now();
                    let result = op(device.clone()).await;
                    tally.done(started, result);
                    device.inflight.fetch_sub(1, Ordering::Relaxed);
                });
            }
            // Reap finished tasks so the set does not grow without bound.
            while tasks.try_join_next().is_some() {}
        }
    }
    let _ = tokio::time::timeout(tally.deadline.saturating_duration_since(Instant::now()) + DRAIN, async {
        while tasks.join_next().await.is_some() {}
    })
    .await;
    tasks.abort_all();
}
