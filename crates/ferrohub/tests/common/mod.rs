//! A real `ferrohub serve` for integration tests: its own temporary data dir,
//! free ports (port 0), and helpers to run the CLI against it.
//!
//! Start-up waits for the `ready https=.. mqtt=..` line on the hub's stdout
//! (an event, not a sleep). The hub's stderr goes to `serve.log` beside the
//! data dir and is quoted when the hub fails to start. The child is killed
//! when the [`TestHub`] is dropped.
//!
//! Every process started here has the `FERROHUB_*` and `IOTHUB_*`
//! environment variables removed, so tests running in parallel (or a
//! developer's shell after `eval "$(ferrohub env)"`) cannot leak into each
//! other.
#![allow(dead_code, unreachable_pub, clippy::unwrap_used)] // each test crate uses a different part

pub mod disk;
pub mod mqtt;
pub mod proxy;
pub mod sim;

use std::fs::OpenOptions;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

/// The binary under test.
pub const BIN: &str = env!("CARGO_BIN_EXE_ferrohub");

/// How long a hub may take to print its ready line (debug build, loaded CI).
const READY_TIMEOUT: Duration = Duration::from_secs(120);

/// Removes every `FERROHUB_*` and `IOTHUB_*` variable from `cmd`'s
/// environment.
pub fn clear_hub_env(cmd: &mut Command) -> &mut Command {
    for (key, _) in std::env::vars_os() {
        let k = key.to_string_lossy();
        if k.starts_with("FERROHUB_") || k.starts_with("IOTHUB_") {
            cmd.env_remove(&key);
        }
    }
    cmd
}

/// A running hub.
pub struct TestHub {
    /// Holds the temporary directory (data dir and log) until drop.
    root: tempfile::TempDir,
    data_dir: PathBuf,
    extra_args: Vec<String>,
    /// Environment variables set for the hub (e.g. `RUST_LOG`).
    envs: Vec<(String, String)>,
    child: Option<Child>,
    https_port: u16,
    mqtt_port: u16,
    connection_string: String,
    /// Lines the hub printed on stdout after its connection string.
    stdout: Option<Receiver<String>>,
    /// The open-files limit (soft and hard) the hub runs under, if lowered.
    open_files: Option<u64>,
}

impl TestHub {
    /// Starts a hub on free ports with a fresh data dir.
    pub fn start() -> Self {
        Self::start_with(&[])
    }

    /// Starts a hub with extra `serve` arguments (e.g. `--hostname`).
    pub fn start_with(extra_args: &[&str]) -> Self {
        Self::start_in(None, extra_args)
    }

    /// Starts a hub whose data dir is `data_dir` (default: a fresh one in
    /// the test's temporary directory, which also holds the log).
    pub fn start_in(data_dir: Option<PathBuf>, extra_args: &[&str]) -> Self {
        Self::start_full(data_dir, &[], extra_args, None)
    }

    /// Starts a hub with environment variables set for it.
    pub fn start_with_env(envs: &[(&str, &str)], extra_args: &[&str]) -> Self {
        Self::start_full(None, envs, extra_args, None)
    }

    /// Starts a hub whose soft and hard open-files limits are `open_files`
    /// (set by `sh`'s `ulimit` before it execs the hub, as a service
    /// manager would).
    pub fn start_with_open_files(extra_args: &[&str], open_files: u64) -> Self {
        Self::start_full(None, &[], extra_args, Some(open_files))
    }

    fn start_full(
        data_dir: Option<PathBuf>,
        envs: &[(&str, &str)],
        extra_args: &[&str],
        open_files: Option<u64>,
    ) -> Self {
        let root = tempfile::Builder::new().prefix("ferrohub-test-").tempdir().unwrap();
        let data_dir = data_dir.unwrap_or_else(|| root.path().join("data"));
        let mut hub = Self {
            root,
            data_dir,
            extra_args: extra_args.iter().map(|s| s.to_string()).collect(),
            envs: envs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
            child: None,
            https_port: 0,
            mqtt_port: 0,
            connection_string: String::new(),
            stdout: None,
            open_files,
        };
        hub.spawn();
        hub
    }

    fn spawn(&mut self) {
        let log = OpenOptions::new().create(true).append(true).open(self.log_file()).unwrap();
        let mut cmd = match self.open_files {
            None => Command::new(BIN),
            Some(n) => {
                let mut sh = Command::new("sh");
                sh.args(["-c", r#"ulimit -n "$0" && exec "$@""#, &n.to_string(), BIN]);
                sh
            }
        };
        clear_hub_env(&mut cmd)
            .arg("serve")
            .arg("--data-dir")
            .arg(&self.data_dir)
            .args(["--https-port", "0", "--mqtt-port", "0"])
            .args(&self.extra_args)
            .envs(self.envs.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(log));
        let mut child = cmd.spawn().unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = mpsc::channel();
        // Keeps draining stdout so the hub never blocks on a full pipe.
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    // Nobody listens any more; keep reading to drain.
                    continue;
                }
            }
        });
        self.child = Some(child);
        let deadline = Instant::now() + READY_TIMEOUT;
        let line = self.next_line(&rx, deadline, |l| l.starts_with("ready "));
        let ready = ferrohub_server::hubfile::ReadyLine::parse(&line)
            .unwrap_or_else(|| panic!("malformed ready line: {line}"));
        self.https_port = ready.https_port;
        self.mqtt_port = ready.mqtt_port;
        let cs = self.next_line(&rx, deadline, |l| l.contains("HostName="));
        self.connection_string = cs[cs.find("HostName=").unwrap_or(0)..].trim().to_owned();
        self.stdout = Some(rx);
    }

    /// Waits for a stdout line matching `pred`; panics with the hub's log if
    /// the hub exits or the deadline passes.
    fn next_line(&mut self, rx: &Receiver<String>, deadline: Instant, pred: impl Fn(&str) -> bool) -> String {
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok(line) if pred(&line) => return line,
                Ok(_) => continue,
                Err(RecvTimeoutError::Timeout) => {
                    panic!("hub not ready after {READY_TIMEOUT:?}; its log:\n{}", self.log())
                }
                Err(RecvTimeoutError::Disconnected) => {
                    let status = self.child.as_mut().and_then(|c| c.wait().ok());
                    panic!("hub exited ({status:?}) before it was ready; its log:\n{}", self.log())
                }
            }
        }
    }

    /// The hub's data dir.
    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    /// Where the hub's stderr goes.
    pub fn log_file(&self) -> PathBuf {
        self.root.path().join("serve.log")
    }

    /// What the hub has logged so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_file()).unwrap_or_default()
    }

    /// The HTTPS port of the current run.
    pub fn https_port(&self) -> u16 {
        self.https_port
    }

    /// The MQTT port of the current run.
    pub fn mqtt_port(&self) -> u16 {
        self.mqtt_port
    }

    /// The hub's CA certificate (`DIR/ca.pem`).
    pub fn ca_file(&self) -> PathBuf {
        self.data_dir.join("ca.pem")
    }

    /// The system roots plus the hub's CA (`DIR/ca-bundle.pem`).
    pub fn ca_bundle_file(&self) -> PathBuf {
        self.data_dir.join("ca-bundle.pem")
    }

    /// The `iothubowner` connection string the hub printed.
    pub fn connection_string(&self) -> String {
        self.connection_string.clone()
    }

    /// The hub's process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// `DIR/hub.json` as JSON, if present.
    pub fn hub_json(&self) -> Option<serde_json::Value> {
        let text = std::fs::read_to_string(self.data_dir.join("hub.json")).ok()?;
        serde_json::from_str(&text).ok()
    }

    /// The binary with a clean environment and nothing else set: for tests
    /// that choose every flag and variable themselves.
    pub fn command(&self) -> Command {
        let mut cmd = Command::new(BIN);
        clear_hub_env(&mut cmd).stdin(Stdio::null());
        cmd
    }

    /// Runs `ferrohub ARGS --data-dir DIR --https-port P --mqtt-port M`.
    pub fn cli(&self, args: &[&str]) -> Output {
        self.command()
            .args(args)
            .arg("--data-dir")
            .arg(&self.data_dir)
            .args(["--https-port", &self.https_port.to_string()])
            .args(["--mqtt-port", &self.mqtt_port.to_string()])
            .output()
            .unwrap()
    }

    /// Kills the hub with SIGKILL (no clean shutdown) and reaps it.
    pub fn sigkill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Sends SIGTERM and waits for the hub to exit.
    pub fn stop(&mut self) -> Option<ExitStatus> {
        let mut child = self.child.take()?;
        let status = Command::new("kill").args(["-TERM", &child.id().to_string()]).status().unwrap();
        assert!(status.success(), "kill -TERM failed");
        child.wait().ok()
    }

    /// Starts the hub again on the same data dir (killing it first if it
    /// still runs). The ports are new free ones.
    pub fn restart(&mut self) {
        self.sigkill();
        self.spawn();
    }

    /// Stops the hub with SIGTERM (asserting a clean exit) and starts it
    /// again on the same data dir, on new free ports.
    pub fn restart_gracefully(&mut self) {
        let status = self.stop();
        assert!(status.is_some_and(|s| s.success()), "hub exited with {status:?}; its log:\n{}", self.log());
        self.spawn();
    }
}

impl Drop for TestHub {
    fn drop(&mut self) {
        self.sigkill();
    }
}

/// A rustls client configuration that trusts only the hub's CA, waiting
/// for the client-certificate choice (`with_no_client_auth` or
/// `with_client_auth_cert`).
pub fn hub_tls(
    hub: &TestHub,
) -> rustls::ConfigBuilder<rustls::ClientConfig, rustls::client::WantsClientCert> {
    let ca = std::fs::read(hub.ca_file()).unwrap();
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls_pemfile::certs(&mut ca.as_slice()) {
        roots.add(cert.unwrap()).unwrap();
    }
    rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
}

/// Asserts that a CLI run succeeded and returns its stdout.
pub fn ok(out: &Output) -> String {
    assert!(
        out.status.success(),
        "command failed ({}): stderr: {} stdout: {}",
        out.status,
        String::from_utf8_lossy(&out.stderr),
        String::from_utf8_lossy(&out.stdout)
    );
    String::from_utf8(out.stdout.clone()).unwrap()
}

/// Asserts that a CLI run succeeded and parses its stdout as JSON.
pub fn ok_json(out: &Output) -> serde_json::Value {
    let text = ok(out);
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("stdout is not JSON ({e}): {text}"))
}

/// Asserts that a CLI run failed with a non-zero exit code and a one-line
/// `ERROR: ...` on stderr, and returns that line.
pub fn fails(out: &Output) -> String {
    assert!(
        !out.status.success(),
        "command succeeded but should have failed: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert_ne!(out.status.code(), Some(0));
    let stderr = String::from_utf8(out.stderr.clone()).unwrap();
    let line = stderr.trim_end();
    assert!(line.starts_with("ERROR: "), "stderr: {stderr}");
    assert!(!line.contains('\n'), "error must be one line: {stderr}");
    line.to_owned()
}
