//! The load generator's parent side: bulk registration of the simulated
//! devices, and a fleet of worker processes (`ferrohub-bench worker`) that
//! hold the device connections and run the load, talking JSON lines over
//! their stdin (commands) and stdout (events).
//!
//! Why processes: this machine's hard limit on open files is 20,000 per
//! process, so one process cannot hold the ~19,000 connections a hub at the
//! same limit accepts. Each worker holds at most [`PER_WORKER`].
//!
//! Addresses: a connection's local port comes from the ephemeral range,
//! which is per destination address. The device client (rumqttc) cannot
//! bind a source address, so instead of spreading sources the fleet spreads
//! its *destinations* over 127.0.0.0/8: the hub under test listens on
//! [`LOOPBACK_ADDRESSES`] loopback addresses (with a certificate naming
//! them, see [`hub_args`]) and, when one address's port range cannot hold
//! the fleet (less a margin for everything else on the machine), each
//! worker dials one of them. At this machine's file limit (~19,000
//! connections) one address suffices; four hold the 100,000-connection
//! design target. [`Fleet::start`] fails with an error rather than let
//! connects fail one by one with `EADDRNOTAVAIL`.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use anyhow::{bail, Context as _};
use base64::Engine as _;
use ferrohub_service_client::ServiceClient;
use hdrhistogram::serialization::{Deserializer, Serializer as _, V2Serializer};
use hdrhistogram::Histogram;
use rand::RngCore as _;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt as _, AsyncWriteExt as _, BufReader, Lines};
use tokio::process::{Child, ChildStdin, ChildStdout, Command as Process};

/// Most connections one worker process holds.
pub(crate) const PER_WORKER: usize = 5_000;
/// Devices per bulk registration request.
const BULK: usize = 100;
/// Ephemeral ports left for everything else on the machine.
const PORT_MARGIN: usize = 2_000;
/// Loopback addresses the hub under test listens on (127.0.0.1 and up).
pub(crate) const LOOPBACK_ADDRESSES: usize = 4;

/// `ferrohub serve` flags that make the hub listen on every loopback
/// address the fleet may dial, with a certificate (and SAS audiences) for
/// each; `localhost` stays the first host name.
pub(crate) fn hub_args() -> Vec<String> {
    let mut args = vec!["--hostname".to_owned(), "localhost".to_owned()];
    for k in 1..=LOOPBACK_ADDRESSES {
        args.extend(["--bind".to_owned(), format!("127.0.0.{k}")]);
        if k > 1 {
            args.extend(["--hostname".to_owned(), format!("127.0.0.{k}")]);
        }
    }
    args
}

/// Starts the hub under test listening on every loopback address a fleet
/// may dial.
pub(crate) async fn start_hub(bin: &std::path::Path) -> anyhow::Result<crate::hub::BenchHub> {
    let args = hub_args();
    let extra: Vec<&str> = args.iter().map(String::as_str).collect();
    crate::hub::BenchHub::start(bin, &extra).await
}

/// The destination addresses a fleet of `count` needs (at least
/// `at_least`), given `ports` ephemeral ports per address.
fn addresses_needed(count: usize, ports: usize, at_least: usize) -> usize {
    let per_address = ports.saturating_sub(PORT_MARGIN).max(1);
    count.div_ceil(per_address).max(at_least).max(1)
}

/// What a worker needs to connect its share of devices.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct Spec {
    /// `HostName` in the connection strings (the name the TLS certificate
    /// carries; also the address dialled).
    pub(crate) host: String,
    /// The MQTT/TLS port.
    pub(crate) port: u16,
    /// The CA to trust.
    pub(crate) ca_file: PathBuf,
    /// Device ids are `{prefix}{i}`.
    pub(crate) prefix: String,
    /// The primary key every device was registered with.
    pub(crate) key: String,
    /// This worker's devices: `first..first + count`.
    pub(crate) first: usize,
    pub(crate) count: usize,
    /// Keep desired-property sync on (one twin GET per connect); off for
    /// the Mosquitto comparison, where nothing answers it.
    pub(crate) desired: bool,
    /// Act as an instant firmware agent: on the first desired `firmware`
    /// report `fwUpdateStatus=current` with its `fwVersion` at once.
    pub(crate) agent: bool,
    /// Agents hold their `current` report until [`Command::Report`].
    #[serde(default)]
    pub(crate) hold_reports: bool,
    /// Connection attempts in flight at once in this worker.
    pub(crate) concurrency: usize,
    /// Spread over at least this many loopback destinations even when one
    /// would do (exercises the spreading in smoke runs).
    #[serde(default)]
    pub(crate) spread: usize,
}

/// Parent → worker.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "cmd", rename_all = "snake_case")]
pub(crate) enum Command {
    /// Read the spec and build the TLS configuration; answers `Ready`.
    Setup { spec: Spec },
    /// Connect every device; answers `Connected`.
    Connect,
    /// Reported-property patches at `rate` per second from this worker's
    /// devices (0 = as fast as `inflight` per device allows) for
    /// `duration_ms`; answers `Load`.
    Reported { rate: f64, duration_ms: u64, inflight: u32 },
    /// QoS 1 telemetry at `rate` messages/s from this worker's devices (0 =
    /// as fast as `inflight` per device allows) for `duration_ms`; answers
    /// `Load`.
    Telemetry {
        #[serde(default)]
        rate: f64,
        duration_ms: u64,
        inflight: u32,
    },
    /// Wait (at most `timeout_ms`) until every device has its desired
    /// firmware; answers `Arrivals`.
    Arrivals { timeout_ms: u64 },
    /// Let held agents report `current` now and wait (at most
    /// `timeout_ms`) until every report is answered; answers `Reported`.
    Report { timeout_ms: u64 },
    /// Disconnect everything and exit; answers `Closed`.
    Close,
}

/// Worker → parent.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub(crate) enum Event {
    Ready,
    Connected {
        ok: u64,
        failed: u64,
        first_error: Option<String>,
    },
    Load {
        /// Operations started.
        sent: u64,
        /// Operations acknowledged (within the window or while draining).
        acked: u64,
        /// Operations acknowledged before the window closed.
        acked_in_window: u64,
        errors: u64,
        /// Offered operations not started because the device already had
        /// its in-flight limit outstanding.
        skipped: u64,
        /// Acknowledgement latencies in µs, hdrhistogram V2, base64.
        histogram: String,
        first_error: Option<String>,
    },
    Arrivals {
        /// Unix time in µs at which each device got its desired firmware.
        times_us: Vec<u64>,
        /// Devices that did not get it in time.
        missing: u64,
        /// Devices whose `current` report failed.
        report_errors: u64,
        first_error: Option<String>,
    },
    Reported {
        /// Reports answered (acknowledged or failed).
        done: u64,
        errors: u64,
        first_error: Option<String>,
    },
    Closed,
}

/// A latency histogram in µs (1 µs .. 10 min, 3 significant digits).
pub(crate) fn histogram() -> Histogram<u64> {
    #[allow(clippy::unwrap_used)] // constant, valid bounds
    Histogram::new_with_bounds(1, 600_000_000, 3).unwrap()
}

pub(crate) fn encode_histogram(h: &Histogram<u64>) -> anyhow::Result<String> {
    let mut bytes = Vec::new();
    V2Serializer::new().serialize(h, &mut bytes).map_err(|e| anyhow::anyhow!("histogram: {e:?}"))?;
    Ok(base64::engine::general_purpose::STANDARD.encode(bytes))
}

pub(crate) fn decode_histogram(text: &str) -> anyhow::Result<Histogram<u64>> {
    let bytes = base64::engine::general_purpose::STANDARD.decode(text)?;
    let h: Histogram<u64> = Deserializer::new()
        .deserialize(&mut bytes.as_slice())
        .map_err(|e| anyhow::anyhow!("histogram: {e:?}"))?;
    Ok(h)
}

/// Microseconds since the Unix epoch (comparable across the processes).
pub(crate) fn unix_us() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// A fresh random SAS key (base64 of 32 bytes).
pub(crate) fn random_key() -> String {
    let mut bytes = [0u8; 32];
    rand::thread_rng().fill_bytes(&mut bytes);
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// Registers `{prefix}0 .. {prefix}{count-1}` through the bulk REST API,
/// [`BULK`] per request, all with primary key `key` (so workers can build
/// connection strings without reading keys back), with `tags` if given.
pub(crate) async fn register(
    service: &ServiceClient,
    prefix: &str,
    count: usize,
    key: &str,
    tags: Option<&Value>,
) -> anyhow::Result<()> {
    let mut start = 0;
    while start < count {
        let end = (start + BULK).min(count);
        let ops: Vec<Value> = (start..end)
            .map(|i| {
                let mut op = json!({
                    "id": format!("{prefix}{i}"),
                    "importMode": "create",
                    "authentication": {"type": "sas", "symmetricKey": {"primaryKey": key, "secondaryKey": random_key()}},
                });
                if let Some(tags) = tags {
                    op["tags"] = tags.clone();
                }
                op
            })
            .collect();
        let result = service.bulk(&Value::Array(ops)).await.context("registering devices")?;
        if let Some(errors) = result.get("errors").and_then(Value::as_array).filter(|e| !e.is_empty()) {
            bail!("registering devices {prefix}{start}..{end} failed: {}", Value::Array(errors.clone()));
        }
        start = end;
    }
    Ok(())
}

/// The size of the ephemeral port range.
pub(crate) fn ephemeral_ports() -> anyhow::Result<usize> {
    let text = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")?;
    let mut parts = text.split_whitespace().map(str::parse::<usize>);
    match (parts.next(), parts.next()) {
        (Some(Ok(low)), Some(Ok(high))) if high >= low => Ok(high - low + 1),
        _ => bail!("unexpected ip_local_port_range: {text}"),
    }
}

struct Worker {
    child: Child,
    stdin: ChildStdin,
    lines: Lines<BufReader<ChildStdout>>,
}

/// Worker processes holding a fleet of connected devices.
pub(crate) struct Fleet {
    workers: Vec<Worker>,
    /// Devices in the fleet.
    pub(crate) devices: usize,
    /// Loopback destinations the workers dial.
    pub(crate) addresses: usize,
}

impl Fleet {
    /// Spawns enough workers for `spec.count` devices (each gets
    /// `first..first+count` of its own) and sets them up; does not connect.
    /// Fails if the fleet would not fit in the ephemeral port range (see
    /// the module docs).
    pub(crate) async fn start(spec: &Spec) -> anyhow::Result<Self> {
        let ports = ephemeral_ports()?;
        let addresses = addresses_needed(spec.count, ports, spec.spread);
        if addresses > LOOPBACK_ADDRESSES {
            bail!(
                "{} connections need {addresses} loopback addresses ({ports} ephemeral ports each, \
                 {PORT_MARGIN} kept free); the hub listens on {LOOPBACK_ADDRESSES}",
                spec.count
            );
        }
        // Every address gets at least one worker, and no address more
        // devices than its port range holds.
        let processes = spec.count.div_ceil(PER_WORKER).max(addresses).max(1);
        let me = std::env::current_exe()?;
        let mut workers = Vec::with_capacity(processes);
        for w in 0..processes {
            let first = spec.first + spec.count * w / processes;
            let end = spec.first + spec.count * (w + 1) / processes;
            let mut child = Process::new(&me)
                .arg("worker")
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::inherit())
                .kill_on_drop(true)
                .spawn()
                .context("spawning a worker")?;
            let stdin = child.stdin.take().context("worker stdin")?;
            let lines = BufReader::new(child.stdout.take().context("worker stdout")?).lines();
            let mut worker = Worker { child, stdin, lines };
            // Workers take the addresses in turn; the first is the hub's
            // own host name (the certificate carries every address).
            let host = match w % addresses {
                0 => spec.host.clone(),
                k => format!("127.0.0.{}", k + 1),
            };
            let mine = Spec { first, count: end - first, host, ..spec.clone() };
            send(&mut worker, &Command::Setup { spec: mine }).await?;
            workers.push(worker);
        }
        let mut fleet = Self { workers, devices: spec.count, addresses };
        for event in fleet.recv_all().await? {
            anyhow::ensure!(matches!(event, Event::Ready), "unexpected worker event {event:?}");
        }
        Ok(fleet)
    }

    /// Worker processes.
    pub(crate) fn processes(&self) -> usize {
        self.workers.len()
    }

    /// The workers' process ids.
    pub(crate) fn pids(&self) -> Vec<u32> {
        self.workers.iter().filter_map(|w| w.child.id()).collect()
    }

    /// Sends one command to every worker.
    pub(crate) async fn send_all(&mut self, command: &Command) -> anyhow::Result<()> {
        for worker in &mut self.workers {
            send(worker, command).await?;
        }
        Ok(())
    }

    /// Sends a command to each worker, built from its share of the fleet
    /// (its device count).
    pub(crate) async fn send_each(&mut self, make: impl Fn(usize) -> Command) -> anyhow::Result<()> {
        let n = self.workers.len();
        for (w, worker) in self.workers.iter_mut().enumerate() {
            let share = self.devices * (w + 1) / n - self.devices * w / n;
            send(worker, &make(share)).await?;
        }
        Ok(())
    }

    /// One event from every worker (in worker order).
    pub(crate) async fn recv_all(&mut self) -> anyhow::Result<Vec<Event>> {
        let futures = self.workers.iter_mut().map(|w| async move {
            let line = w.lines.next_line().await?.context("a worker exited")?;
            serde_json::from_str::<Event>(&line).with_context(|| format!("worker said: {line}"))
        });
        let results = futures_join(futures).await;
        results.into_iter().collect()
    }

    /// Connects every device; returns (connected, failed, first error).
    pub(crate) async fn connect(&mut self) -> anyhow::Result<(u64, u64, Option<String>)> {
        self.send_all(&Command::Connect).await?;
        let (mut ok, mut failed, mut first) = (0, 0, None);
        for event in self.recv_all().await? {
            match event {
                Event::Connected { ok: o, failed: f, first_error } => {
                    ok += o;
                    failed += f;
                    first = first.or(first_error);
                }
                other => bail!("unexpected worker event {other:?}"),
            }
        }
        Ok((ok, failed, first))
    }

    /// Collects `Load` events into one summary.
    pub(crate) async fn recv_load(&mut self) -> anyhow::Result<LoadSummary> {
        let mut sum = LoadSummary::default();
        for event in self.recv_all().await? {
            match event {
                Event::Load { sent, acked, acked_in_window, errors, skipped, histogram, first_error } => {
                    sum.sent += sent;
                    sum.acked += acked;
                    sum.acked_in_window += acked_in_window;
                    sum.errors += errors;
                    sum.skipped += skipped;
                    sum.histogram.add(decode_histogram(&histogram)?).map_err(|e| anyhow::anyhow!("{e:?}"))?;
                    sum.first_error = sum.first_error.or(first_error);
                }
                other => bail!("unexpected worker event {other:?}"),
            }
        }
        Ok(sum)
    }

    /// Disconnects everything and waits for the workers to exit.
    pub(crate) async fn close(mut self) -> anyhow::Result<()> {
        self.send_all(&Command::Close).await?;
        let _ = tokio::time::timeout(Duration::from_secs(60), self.recv_all()).await;
        for worker in &mut self.workers {
            let _ = tokio::time::timeout(Duration::from_secs(10), worker.child.wait()).await;
        }
        Ok(())
    }
}

/// Sum of the workers' `Load` events.
#[derive(Debug)]
pub(crate) struct LoadSummary {
    pub(crate) sent: u64,
    pub(crate) acked: u64,
    pub(crate) acked_in_window: u64,
    pub(crate) errors: u64,
    pub(crate) skipped: u64,
    pub(crate) histogram: Histogram<u64>,
    pub(crate) first_error: Option<String>,
}

impl LoadSummary {
    /// A latency quantile in milliseconds.
    pub(crate) fn ms(&self, quantile: f64) -> f64 {
        self.histogram.value_at_quantile(quantile) as f64 / 1000.0
    }
}

impl Default for LoadSummary {
    fn default() -> Self {
        Self {
            sent: 0,
            acked: 0,
            acked_in_window: 0,
            errors: 0,
            skipped: 0,
            histogram: histogram(),
            first_error: None,
        }
    }
}

async fn send(worker: &mut Worker, command: &Command) -> anyhow::Result<()> {
    let mut line = serde_json::to_vec(command)?;
    line.push(b'\n');
    worker.stdin.write_all(&line).await?;
    worker.stdin.flush().await?;
    Ok(())
}

/// Runs futures concurrently and returns their outputs in order.
async fn futures_join<F: std::future::Future>(futures: impl Iterator<Item = F>) -> Vec<F::Output> {
    let mut handles: Vec<std::pin::Pin<Box<F>>> = futures.map(Box::pin).collect();
    let mut outputs: Vec<Option<F::Output>> = handles.iter().map(|_| None).collect();
    std::future::poll_fn(|cx| {
        let mut pending = false;
        for (i, handle) in handles.iter_mut().enumerate() {
            if outputs[i].is_none() {
                match handle.as_mut().poll(cx) {
                    std::task::Poll::Ready(out) => outputs[i] = Some(out),
                    std::task::Poll::Pending => pending = true,
                }
            }
        }
        if pending {
            std::task::Poll::Pending
        } else {
            std::task::Poll::Ready(())
        }
    })
    .await;
    outputs.into_iter().flatten().collect()
}

/// Sum of user + system CPU of the given processes (those still alive).
pub(crate) fn cpu_of(pids: &[u32]) -> Duration {
    pids.iter().filter_map(|p| crate::procfs::cpu_time(*p).ok()).sum()
}

/// Open file descriptors of a process.
pub(crate) fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map(|d| d.count()).unwrap_or(0)
}

/// File descriptors the hub keeps for itself (database, listeners, REST
/// clients, watch streams) below its limit.
pub(crate) const HUB_FD_HEADROOM: u64 = 500;

/// The device count for a scenario: `requested`, or (smoke) `smoke`, or
/// the hub's open-files limit less [`HUB_FD_HEADROOM`]. Returns it with the
/// limit; refuses counts the limit cannot hold.
pub(crate) fn device_count(
    requested: Option<usize>,
    smoke: bool,
    smoke_n: usize,
    hub_pid: u32,
) -> anyhow::Result<(usize, u64)> {
    let limit = crate::procfs::open_files_limit(hub_pid)?;
    let most = usize::try_from(limit.saturating_sub(HUB_FD_HEADROOM)).unwrap_or(usize::MAX);
    let n = match requested {
        Some(n) => n,
        None if smoke => smoke_n,
        None => most,
    };
    if n > most {
        bail!("{n} devices exceed what the hub's open-files limit ({limit}, less {HUB_FD_HEADROOM} headroom) allows: at most {most}");
    }
    Ok((n, limit))
}

/// The host name devices put in their connection strings (the hub's
/// certificate is made for it).
pub(crate) fn hub_host(service: &ServiceClient) -> String {
    service.host_name().to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fleets_spread_over_loopback_addresses_only_when_needed() {
        assert_eq!(addresses_needed(19_500, 28_232, 0), 1);
        assert_eq!(addresses_needed(19_500, 28_232, 2), 2);
        assert_eq!(addresses_needed(100_000, 28_232, 0), 4);
        assert_eq!(addresses_needed(30_000, 28_232, 0), 2);
        let args = hub_args().join(" ");
        assert!(
            args.starts_with("--hostname localhost --bind 127.0.0.1 --bind 127.0.0.2 --hostname 127.0.0.2"),
            "{args}"
        );
    }
}
