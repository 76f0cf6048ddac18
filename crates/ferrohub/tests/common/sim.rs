//! A running `ferrohub simulate` against a [`TestHub`], killed on drop; its
//! output goes to a log file in the given directory.

use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use rand::RngCore as _;

use super::{ok_json, TestHub};

/// Uploads `size` random bytes as chiller firmware `version` with the CLI;
/// returns the image's record.
pub fn upload_image(hub: &TestHub, dir: &Path, version: &str, size: usize) -> serde_json::Value {
    let mut image = vec![0u8; size];
    rand::thread_rng().fill_bytes(&mut image);
    let file = dir.join(format!("image-{version}.bin"));
    std::fs::write(&file, &image).unwrap();
    let args = ["firmware", "upload", "--version", version, "--device-type", "chiller"];
    ok_json(&hub.cli(&[&args[..], &[file.to_str().unwrap()]].concat()))
}

/// One simulator process.
pub struct Simulator {
    child: Child,
    log: PathBuf,
}

impl Simulator {
    /// Starts `ferrohub simulate <extra> --speed 20x` against `hub`, logging
    /// to `dir/simulate-<name>.log`.
    pub fn spawn(hub: &TestHub, dir: &Path, name: &str, extra: &[&str]) -> Self {
        let log = dir.join(format!("simulate-{name}.log"));
        let file = std::fs::File::create(&log).unwrap();
        let err = file.try_clone().unwrap();
        let child = hub
            .command()
            .arg("simulate")
            .args(extra)
            .args(["--speed", "20x"])
            .arg("--data-dir")
            .arg(hub.data_dir())
            .args(["--https-port", &hub.https_port().to_string()])
            .args(["--mqtt-port", &hub.mqtt_port().to_string()])
            .stdout(Stdio::from(file))
            .stderr(Stdio::from(err))
            .spawn()
            .unwrap();
        Self { child, log }
    }

    /// What it printed so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// SIGTERM, then waits (under `cap`) for it to exit; returns its output.
    pub fn stop(mut self, cap: Duration) -> String {
        let pid = self.child.id().to_string();
        std::process::Command::new("kill").args(["-TERM", &pid]).status().unwrap();
        let start = Instant::now();
        while self.child.try_wait().unwrap().is_none() {
            assert!(start.elapsed() < cap, "the simulator did not stop on SIGTERM");
            std::thread::sleep(Duration::from_millis(100));
        }
        self.log()
    }
}

impl Drop for Simulator {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
