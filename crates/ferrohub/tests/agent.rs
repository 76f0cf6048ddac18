//! `ferrohub agent` against a real hub, as real processes: the happy path,
//! refused images (tampered bytes, bad signature), the hub's key pinned on
//! first use (and a pinned key that does not match), a failing health check
//! and a failed reconnect after the reboot, and a SIGKILL at each failpoint
//! (mid-download included) followed by a restart. Every wait polls
//! the twin (or the process) under a cap; there are no fixed sleeps.
#![allow(clippy::unwrap_used)]

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use common::mqtt::{create_device, service};
use common::{ok, ok_json, TestHub};
use rand::RngCore;
use serde_json::{json, Value};

/// The cap on every wait (debug builds on a loaded CI machine).
const WAIT: Duration = Duration::from_secs(90);

/// A device with its own agent state dir and the hub's public key.
struct Device {
    id: String,
    cs: String,
    dir: tempfile::TempDir,
    public_key: PathBuf,
}

impl Device {
    async fn new(hub: &TestHub, id: &str) -> Self {
        let key = create_device(hub, id).await;
        let hub_cs = hub.connection_string();
        let host = hub_cs.split(';').find_map(|kv| kv.strip_prefix("HostName=")).unwrap().to_owned();
        let dir = tempfile::Builder::new().prefix("ferrohub-agent-").tempdir().unwrap();
        let public_key = dir.path().join("firmware-key.pem");
        std::fs::write(&public_key, ok(&hub.cli(&["firmware", "public-key"]))).unwrap();
        Self {
            id: id.into(),
            cs: format!("HostName={host};DeviceId={id};SharedAccessKey={key}"),
            dir,
            public_key,
        }
    }

    fn state(&self) -> PathBuf {
        self.dir.path().join("state")
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("agent.log")).unwrap_or_default()
    }

    fn active(&self) -> String {
        std::fs::read_to_string(self.state().join("active")).unwrap().trim().to_owned()
    }

    fn active_bytes(&self) -> Vec<u8> {
        std::fs::read(self.state().join(self.active())).unwrap()
    }

    /// Starts the agent with `--public-key` (stderr appended to `agent.log`).
    fn spawn(&self, hub: &TestHub, failpoint: Option<&str>, health_check: Option<&str>) -> Agent {
        self.spawn_with(hub, failpoint, health_check, true, &[])
    }

    /// Starts the agent, with or without `--public-key`, with extra
    /// environment variables.
    fn spawn_with(
        &self,
        hub: &TestHub,
        failpoint: Option<&str>,
        health_check: Option<&str>,
        public_key: bool,
        env: &[(&str, &str)],
    ) -> Agent {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("agent.log"))
            .unwrap();
        let mut cmd = hub.command();
        cmd.args(["agent", "--connection-string", &self.cs])
            .arg("--ca")
            .arg(hub.ca_file())
            .args(["--mqtt-port", &hub.mqtt_port().to_string()])
            .arg("--state-dir")
            .arg(self.state())
            .envs(env.iter().copied())
            .stdout(Stdio::null())
            .stderr(Stdio::from(log));
        if public_key {
            cmd.arg("--public-key").arg(&self.public_key);
        }
        if let Some(cmd_line) = health_check {
            cmd.args(["--health-check", cmd_line]);
        }
        if let Some(point) = failpoint {
            cmd.env("FERROHUB_AGENT_FAILPOINT", point);
        }
        Agent(cmd.spawn().unwrap())
    }

    /// Waits until the reported `firmware` satisfies `pred`.
    async fn wait_reported(&self, hub: &TestHub, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
        let client = service(hub);
        let start = Instant::now();
        loop {
            let twin = client.get_twin(&self.id).await.unwrap();
            let fw = &twin["properties"]["reported"]["firmware"];
            if pred(fw) {
                return fw.clone();
            }
            assert!(
                start.elapsed() < WAIT,
                "timed out waiting for {what}; reported firmware: {fw}\nagent log:\n{}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    async fn set_desired(&self, hub: &TestHub, firmware: &Value) {
        let patch = json!({"properties": {"desired": {"firmware": firmware}}});
        service(hub).update_twin(&self.id, &patch, "*").await.unwrap();
    }

    /// The statuses the agent reported, in order (from its log).
    fn reported_statuses(&self) -> Vec<String> {
        self.log()
            .lines()
            .filter(|l| l.contains("reporting"))
            .filter_map(|l| {
                let rest = &l[l.find("\"fwUpdateStatus\":\"")? + 18..];
                Some(rest[..rest.find('"')?].to_owned())
            })
            .collect()
    }
}

/// A running agent, killed on drop.
struct Agent(Child);

impl Agent {
    /// Waits for the process to end by SIGKILL (after a failpoint).
    async fn wait_killed(&mut self, log: impl Fn() -> String) {
        use std::os::unix::process::ExitStatusExt as _;
        let start = Instant::now();
        loop {
            if let Some(status) = self.0.try_wait().unwrap() {
                assert_eq!(
                    status.signal(),
                    Some(libc::SIGKILL),
                    "the agent was not killed: {status}\n{}",
                    log()
                );
                return;
            }
            assert!(start.elapsed() < WAIT, "the agent did not die at its failpoint; log:\n{}", log());
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Uploads a random image of `len` bytes; returns its bytes and the desired
/// `firmware` value for it.
fn upload(hub: &TestHub, dir: &Path, version: &str, len: usize) -> (Vec<u8>, Value) {
    let mut image = vec![0u8; len];
    rand::thread_rng().fill_bytes(&mut image);
    let file = dir.join(format!("image-{version}.bin"));
    std::fs::write(&file, &image).unwrap();
    let record = ok_json(&hub.cli(&["firmware", "upload", "--version", version, file.to_str().unwrap()]));
    let desired = json!({
        "fwVersion": record["version"],
        "fwPackageURI": record["fwPackageURI"],
        "fwPackageCheckValue": record["sha256"],
        "fwManifest": record["fwManifest"],
        "fwSignature": record["fwSignature"],
    });
    (image, desired)
}

fn is_status(status: &'static str) -> impl Fn(&Value) -> bool {
    move |fw: &Value| fw["fwUpdateStatus"] == status
}

#[tokio::test]
async fn updates_to_the_desired_image_and_follows_the_tutorial_rules() {
    let hub = TestHub::start();
    let dev = Device::new(&hub, "chiller-happy").await;
    let (image, desired) = upload(&hub, dev.dir.path(), "2.0.0", 1024 * 1024 + 5);
    let _agent = dev.spawn(&hub, None, None);
    dev.wait_reported(&hub, "the initial report", |fw| {
        fw["currentFwVersion"] == "1.0.0" && fw["fwUpdateStatus"] == "current"
    })
    .await;
    assert_eq!(dev.active(), "slot-a");

    dev.set_desired(&hub, &desired).await;
    let fw = dev
        .wait_reported(&hub, "current at 2.0.0", |fw| {
            fw["currentFwVersion"] == "2.0.0" && fw["fwUpdateStatus"] == "current"
        })
        .await;
    assert_eq!(fw["pendingFwVersion"], "");
    assert!(fw["lastFwUpdateStartTime"].as_str().unwrap().len() > 10, "{fw}");
    assert!(fw["lastFwUpdateEndTime"].as_str().unwrap().len() > 10, "{fw}");
    assert_eq!(dev.active(), "slot-b");
    assert!(dev.active_bytes() == image, "the active slot does not hold the image");
    let statuses = dev.reported_statuses();
    let order = ["downloading", "verifying", "applying", "rebooting", "current"];
    let mut at = 0;
    for s in order {
        at += statuses[at..].iter().position(|x| x == s).unwrap_or_else(|| panic!("no {s} in {statuses:?}"));
    }

    // After the reboot the same desired value is "already up to date".
    dev.wait_reported(&hub, "already up to date", |fw| {
        fw["fwUpdateStatus"] == "current"
            && fw["fwUpdateSubstatus"].as_str().unwrap_or("").contains("already up to date")
    })
    .await;

    // A non-https URI is an error, and nothing changes.
    let mut plain = desired.clone();
    plain["fwVersion"] = json!("3.0.0");
    plain["fwPackageURI"] = json!(desired["fwPackageURI"].as_str().unwrap().replace("https://", "http://"));
    dev.set_desired(&hub, &plain).await;
    let fw = dev.wait_reported(&hub, "error for http", is_status("error")).await;
    assert!(fw["fwUpdateSubstatus"].as_str().unwrap().contains("https"), "{fw}");
    assert_eq!(fw["currentFwVersion"], "2.0.0");
    assert_eq!(dev.active(), "slot-b");
}

#[tokio::test]
async fn tampered_images_and_bad_signatures_are_never_applied() {
    let hub = TestHub::start();
    let dev = Device::new(&hub, "chiller-tamper").await;
    let (_a, desired_a) = upload(&hub, dev.dir.path(), "2.0.0", 300 * 1024);
    let (_b, desired_b) = upload(&hub, dev.dir.path(), "2.0.1", 300 * 1024);
    let _agent = dev.spawn(&hub, None, None);
    dev.wait_reported(&hub, "the initial report", is_status("current")).await;

    // A's signed manifest, but the URI serves other bytes.
    let mut tampered = desired_a.clone();
    tampered["fwPackageURI"] = desired_b["fwPackageURI"].clone();
    dev.set_desired(&hub, &tampered).await;
    let fw = dev.wait_reported(&hub, "rolledback (tampered)", is_status("rolledback")).await;
    assert!(fw["fwUpdateSubstatus"].as_str().unwrap().contains("checksum"), "{fw}");
    assert_eq!(fw["currentFwVersion"], "1.0.0");
    assert_eq!(dev.active(), "slot-a");
    assert!(dev.active_bytes().is_empty());
    assert!(!dev.state().join("slot-b").exists(), "a refused image reached a slot");
    let statuses = dev.reported_statuses();
    let error = statuses.iter().position(|s| s == "error").unwrap();
    assert!(statuses[error..].iter().any(|s| s == "rolledback"), "{statuses:?}");

    // B's image and manifest with A's signature.
    let mut forged = desired_b.clone();
    forged["fwSignature"] = desired_a["fwSignature"].clone();
    dev.set_desired(&hub, &forged).await;
    let fw = dev
        .wait_reported(&hub, "rolledback (signature)", |fw| {
            fw["fwUpdateStatus"] == "rolledback"
                && fw["fwUpdateSubstatus"].as_str().unwrap().contains("signature")
        })
        .await;
    assert_eq!(fw["currentFwVersion"], "1.0.0");
    assert_eq!(dev.active(), "slot-a");
    assert!(!dev.state().join("slot-b").exists(), "a refused image reached a slot");
    let statuses = dev.reported_statuses();
    assert_eq!(statuses.iter().filter(|s| *s == "error").count(), 2, "{statuses:?}");
    assert_eq!(statuses.last().unwrap(), "rolledback", "{statuses:?}");
}

#[tokio::test]
async fn a_failing_health_check_rolls_back() {
    let hub = TestHub::start();
    let dev = Device::new(&hub, "chiller-unhealthy").await;
    let (_image, desired) = upload(&hub, dev.dir.path(), "2.0.0", 200 * 1024);
    let _agent = dev.spawn(&hub, None, Some("exit 3"));
    dev.wait_reported(&hub, "the initial report", is_status("current")).await;
    dev.set_desired(&hub, &desired).await;
    let fw = dev.wait_reported(&hub, "rolledback", is_status("rolledback")).await;
    assert!(fw["fwUpdateSubstatus"].as_str().unwrap().contains("health check"), "{fw}");
    assert_eq!(fw["currentFwVersion"], "1.0.0");
    assert_eq!(dev.active(), "slot-a");
    let statuses = dev.reported_statuses();
    let rebooting = statuses.iter().position(|s| s == "rebooting").unwrap();
    let error = rebooting + statuses[rebooting..].iter().position(|s| s == "error").unwrap();
    assert!(statuses[error..].iter().any(|s| s == "rolledback"), "{statuses:?}");
}

/// Kills the agent at `point`, restarts it, and expects the update to end
/// `current` with the image in the active slot.
async fn killed_at_then_restarted(point: &str) {
    let hub = TestHub::start();
    let dev = Device::new(&hub, &format!("chiller-{point}")).await;
    let (image, desired) = upload(&hub, dev.dir.path(), "2.0.0", 1024 * 1024 + 3);
    let mut agent = dev.spawn(&hub, Some(point), None);
    dev.wait_reported(&hub, "the initial report", is_status("current")).await;
    dev.set_desired(&hub, &desired).await;
    agent.wait_killed(|| dev.log()).await;
    assert!(dev.log().contains("failpoint"), "{}", dev.log());
    drop(agent);
    // Until the switch, the old slot stays active.
    if matches!(point, "after-download" | "after-verify" | "mid-write") {
        assert_eq!(dev.active(), "slot-a");
        assert!(dev.active_bytes().is_empty());
    }

    let _agent = dev.spawn(&hub, None, None);
    dev.wait_reported(&hub, "current at 2.0.0 after the restart", |fw| {
        fw["currentFwVersion"] == "2.0.0" && fw["fwUpdateStatus"] == "current"
    })
    .await;
    assert_eq!(dev.active(), "slot-b");
    assert!(dev.active_bytes() == image, "the active slot does not hold the image");
    assert!(!dev.state().join("download.part").exists());
}

#[tokio::test]
async fn killed_mid_download_resumes_with_range() {
    let hub = TestHub::start();
    let dev = Device::new(&hub, "chiller-range").await;
    let (image, desired) = upload(&hub, dev.dir.path(), "2.0.0", 6 * 1024 * 1024 + 11);
    let mut agent = dev.spawn(&hub, Some("mid-download"), None);
    dev.wait_reported(&hub, "the initial report", is_status("current")).await;
    dev.set_desired(&hub, &desired).await;
    agent.wait_killed(|| dev.log()).await;
    drop(agent);
    // Killed in the middle of the download: part of the bytes on disk, the
    // phase still `downloading`, the old slot active.
    let have = std::fs::metadata(dev.state().join("download.part")).unwrap().len();
    assert!(have > 0 && have < image.len() as u64, "download.part holds {have} bytes");
    let state: Value =
        serde_json::from_slice(&std::fs::read(dev.state().join("agent.json")).unwrap()).unwrap();
    assert_eq!(state["phase"], "downloading");
    assert_eq!(dev.active(), "slot-a");

    let _agent = dev.spawn(&hub, None, None);
    dev.wait_reported(&hub, "current at 2.0.0 after the restart", |fw| {
        fw["currentFwVersion"] == "2.0.0" && fw["fwUpdateStatus"] == "current"
    })
    .await;
    let log = dev.log();
    assert!(log.contains(&format!("resuming the download offset={have}")), "{log}");
    assert!(log.contains(&format!("offset={have} status=206")), "{log}");
    assert_eq!(dev.active(), "slot-b");
    assert!(dev.active_bytes() == image, "the active slot does not hold the image");
    assert!(!dev.state().join("download.part").exists());
}

/// Another valid Ed25519 public key (RFC 8032's first test vector).
const OTHER_KEY_PEM: &str =
    "-----BEGIN PUBLIC KEY-----\nMCowBQYDK2VwAyEA11qYAYKxCrfVS/7TyWQHOg7hcvPapiMlrwIaaPcHURo=\n-----END PUBLIC KEY-----\n";

#[tokio::test]
async fn without_a_public_key_the_hub_key_is_pinned_on_first_use() {
    let hub = TestHub::start();
    let dev = Device::new(&hub, "chiller-tofu").await;
    let (image, desired) = upload(&hub, dev.dir.path(), "2.0.0", 300 * 1024);
    let _agent = dev.spawn_with(&hub, None, None, false, &[]);
    dev.wait_reported(&hub, "the initial report", is_status("current")).await;
    assert!(!dev.state().join("hub-key.pem").exists(), "fetched before an update needed it");
    dev.set_desired(&hub, &desired).await;
    dev.wait_reported(&hub, "current at 2.0.0", |fw| {
        fw["currentFwVersion"] == "2.0.0" && fw["fwUpdateStatus"] == "current"
    })
    .await;
    assert!(dev.active_bytes() == image, "the active slot does not hold the image");
    let pinned = std::fs::read_to_string(dev.state().join("hub-key.pem")).unwrap();
    assert_eq!(pinned.trim_end(), ok(&hub.cli(&["firmware", "public-key"])).trim_end());
    // The reboot was a later start: it used the pinned key, fetching nothing.
    let log = dev.log();
    assert_eq!(log.matches("fetching the hub's public key").count(), 1, "{log}");
    assert_eq!(log.matches("rebooting (re-executing the agent)").count(), 1, "{log}");
}

#[tokio::test]
async fn a_pinned_key_that_does_not_match_refuses_updates() {
    let hub = TestHub::start();
    let dev = Device::new(&hub, "chiller-pinned").await;
    let (_image, desired) = upload(&hub, dev.dir.path(), "2.0.0", 100 * 1024);
    std::fs::create_dir_all(dev.state()).unwrap();
    std::fs::write(dev.state().join("hub-key.pem"), OTHER_KEY_PEM).unwrap();
    let _agent = dev.spawn_with(&hub, None, None, false, &[]);
    dev.wait_reported(&hub, "the initial report", is_status("current")).await;
    dev.set_desired(&hub, &desired).await;
    let fw = dev.wait_reported(&hub, "rolledback", is_status("rolledback")).await;
    assert!(fw["fwUpdateSubstatus"].as_str().unwrap().contains("signature"), "{fw}");
    assert_eq!(fw["currentFwVersion"], "1.0.0");
    assert_eq!(dev.active(), "slot-a");
    assert!(!dev.state().join("slot-b").exists(), "a refused image reached a slot");
    let statuses = dev.reported_statuses();
    let error = statuses.iter().position(|s| s == "error").unwrap_or_else(|| panic!("{statuses:?}"));
    assert!(statuses[error..].iter().any(|s| s == "rolledback"), "{statuses:?}");
    // The pinned key is kept, never replaced by a fetch.
    assert_eq!(std::fs::read_to_string(dev.state().join("hub-key.pem")).unwrap(), OTHER_KEY_PEM);
    assert!(!dev.log().contains("fetching the hub's public key"), "{}", dev.log());
}

#[tokio::test]
async fn no_reconnect_after_the_reboot_rolls_back_in_the_same_run() {
    let hub = TestHub::start();
    let dev = Device::new(&hub, "chiller-offline").await;
    let (_image, desired) = upload(&hub, dev.dir.path(), "2.0.0", 200 * 1024);
    // After the reboot the hub refuses every connection until the health
    // check's 3 s are up.
    let env = [("FERROHUB_AGENT_FAILPOINT", "refuse-reconnect"), ("FERROHUB_AGENT_HEALTH_TIMEOUT_SECS", "3")];
    let mut agent = dev.spawn_with(&hub, None, None, true, &env);
    dev.wait_reported(&hub, "the initial report", is_status("current")).await;
    dev.set_desired(&hub, &desired).await;
    let fw = dev.wait_reported(&hub, "rolledback", is_status("rolledback")).await;
    assert!(fw["fwUpdateSubstatus"].as_str().unwrap().contains("cannot reconnect"), "{fw}");
    assert_eq!(fw["currentFwVersion"], "1.0.0");
    assert_eq!(fw["pendingFwVersion"], "2.0.0");
    assert_eq!(dev.active(), "slot-a");
    // The same run: the agent is still up, and the hub refused connections.
    assert!(agent.0.try_wait().unwrap().is_none(), "the agent exited; log:\n{}", dev.log());
    assert!(dev.log().contains("connecting to the hub failed"), "{}", dev.log());
    let statuses = dev.reported_statuses();
    let rebooting = statuses.iter().position(|s| s == "rebooting").unwrap();
    let error = rebooting + statuses[rebooting..].iter().position(|s| s == "error").unwrap();
    assert_eq!(statuses[error + 1..], ["rolledback"], "{statuses:?}");
    let state: Value =
        serde_json::from_slice(&std::fs::read(dev.state().join("agent.json")).unwrap()).unwrap();
    assert_eq!(state["phase"], "idle");
    assert_eq!(state["currentVersion"], "1.0.0");
}

#[tokio::test]
async fn killed_after_download_resumes() {
    killed_at_then_restarted("after-download").await;
}

#[tokio::test]
async fn killed_after_verify_resumes() {
    killed_at_then_restarted("after-verify").await;
}

#[tokio::test]
async fn killed_mid_write_resumes() {
    killed_at_then_restarted("mid-write").await;
}

#[tokio::test]
async fn killed_after_switch_resumes() {
    killed_at_then_restarted("after-switch").await;
}

#[tokio::test]
async fn killed_after_reboot_resumes() {
    killed_at_then_restarted("after-reboot").await;
}
