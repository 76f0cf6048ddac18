//! The hub under test: `ferrohub serve` as a child process on a data dir
//! (temporary unless given) and free ports, on loopback.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use ferrohub_server::hubfile::ReadyLine;
use ferrohub_service_client::{ClientOptions, ServiceClient};
use tokio::io::{AsyncBufReadExt as _, BufReader};
use tokio::process::{Child, Command};

/// How long a start may take (a million twins load first).
const READY_CAP: Duration = Duration::from_secs(600);

/// A running hub.
pub(crate) struct BenchHub {
    child: Child,
    bin: PathBuf,
    /// Its data dir.
    pub(crate) data_dir: PathBuf,
    /// Removed on drop (a temporary data dir).
    temporary: bool,
    /// HTTPS port.
    pub(crate) https_port: u16,
    /// MQTT port.
    pub(crate) mqtt_port: u16,
    /// From spawn to the ready line.
    pub(crate) startup: Duration,
}

impl BenchHub {
    /// Starts a hub on a new temporary data dir.
    pub(crate) async fn start(bin: &Path, extra: &[&str]) -> anyhow::Result<Self> {
        let dir = std::env::temp_dir().join(format!(
            "ferrohub-bench-{}-{}",
            std::process::id(),
            rand::random::<u32>()
        ));
        Self::start_in(bin, &dir, true, extra).await
    }

    /// Starts a hub on `data_dir` (removed on drop when `temporary`).
    pub(crate) async fn start_in(
        bin: &Path,
        data_dir: &Path,
        temporary: bool,
        extra: &[&str],
    ) -> anyhow::Result<Self> {
        // Owner-only, as the hub creates its data dirs: it refuses one that
        // other users can open.
        std::os::unix::fs::DirBuilderExt::mode(std::fs::DirBuilder::new().recursive(true), 0o700)
            .create(data_dir)?;
        let log = std::fs::File::create(data_dir.join("bench-hub.log"))?;
        let started = Instant::now();
        let mut child = Command::new(bin)
            .args(["serve", "--https-port", "0", "--mqtt-port", "0", "--data-dir"])
            .arg(data_dir)
            .args(extra)
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(log))
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("starting {} serve", bin.display()))?;
        let stdout = child.stdout.take().context("the hub's stdout")?;
        let mut lines = BufReader::new(stdout).lines();
        let ready = tokio::time::timeout(READY_CAP, async {
            while let Some(line) = lines.next_line().await? {
                if let Some(ready) = ReadyLine::parse(&line) {
                    return Ok::<_, anyhow::Error>(ready);
                }
            }
            bail!("the hub exited before it was ready; see {}", data_dir.join("bench-hub.log").display())
        })
        .await
        .context("the hub was not ready in time")??;
        let startup = started.elapsed();
        // Keep draining stdout so the hub never blocks on a full pipe.
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        Ok(Self {
            https_port: ready.https_port,
            mqtt_port: ready.mqtt_port,
            child,
            bin: bin.to_owned(),
            data_dir: data_dir.to_owned(),
            temporary,
            startup,
        })
    }

    /// The hub's process id.
    pub(crate) fn pid(&self) -> u32 {
        self.child.id().unwrap_or(0)
    }

    /// The CA devices and clients must trust.
    pub(crate) fn ca_file(&self) -> PathBuf {
        self.data_dir.join("ca.pem")
    }

    /// A connection string of one of the hub's policies (e.g. `iothubowner`).
    pub(crate) async fn policy_connection_string(&self, policy: &str) -> anyhow::Result<String> {
        let out = Command::new(&self.bin)
            .args(["connection-string", "show", "--policy-name", policy, "-o", "tsv", "--data-dir"])
            .arg(&self.data_dir)
            .output()
            .await?;
        anyhow::ensure!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        Ok(String::from_utf8(out.stdout)?.trim().to_owned())
    }

    /// A REST client with the `iothubowner` policy.
    pub(crate) async fn service(&self) -> anyhow::Result<ServiceClient> {
        let cs = self.policy_connection_string("iothubowner").await?;
        let options = ClientOptions {
            port: Some(self.https_port),
            ca_file: Some(self.ca_file()),
            timeout: Some(Duration::from_secs(120)),
        };
        Ok(ServiceClient::new(&cs, options)?)
    }

    /// Stops the hub with SIGTERM and waits for it.
    pub(crate) async fn stop(mut self) -> anyhow::Result<()> {
        let pid = self.pid().to_string();
        let _ = Command::new("kill").args(["-TERM", &pid]).status().await;
        let _ = tokio::time::timeout(Duration::from_secs(60), self.child.wait()).await;
        Ok(())
    }
}

impl Drop for BenchHub {
    fn drop(&mut self) {
        let _ = self.child.start_kill();
        if self.temporary {
            let _ = std::fs::remove_dir_all(&self.data_dir);
        }
    }
}
