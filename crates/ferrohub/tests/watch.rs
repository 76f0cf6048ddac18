//! Live watches against a real hub: `GET /configurations/{id}/watch` through
//! the service client, and `ferrohub configuration show-metric --watch` as a
//! child process whose stdout is a pipe (so it prints plain lines), with its
//! exit codes: 0 when `--until` is reached, 3 when the configuration is
//! deleted, 1 on errors.
#![allow(clippy::unwrap_used)]

mod common;

use std::io::{BufRead as _, BufReader};
use std::process::{Child, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::mqtt::service;
use common::{fails, ok, TestHub};
use ferrohub_service_client::{WatchEvent, WatchStream};

/// How long any awaited line or exit may take.
const WAIT: Duration = Duration::from_secs(30);

const METRIC: &str = r#"{"queries":{"canary":"SELECT deviceId FROM devices WHERE tags.ring = 'canary'"}}"#;

fn create_config(hub: &TestHub, id: &str) {
    ok(&hub.cli(&[
        "configuration",
        "create",
        "--config-id",
        id,
        "--content",
        r#"{"deviceContent":{"properties.desired.watched":{"v":1}}}"#,
        "--target-condition",
        "tags.ring = 'canary'",
        "--metrics",
        METRIC,
    ]));
}

fn tag_canary(hub: &TestHub, device: &str) {
    ok(&hub.cli(&["device-identity", "create", "--device-id", device]));
    ok(&hub.cli(&["device-twin", "update", "--device-id", device, "--tags", r#"{"ring":"canary"}"#]));
}

/// `ferrohub configuration show-metric ... --watch EXTRA` with stdout piped,
/// and a channel of its stdout lines (read on a thread so waits can be capped).
fn spawn_watch(hub: &TestHub, config_id: &str, extra: &[&str]) -> (Child, mpsc::Receiver<String>) {
    let mut child = hub
        .command()
        .args(["configuration", "show-metric", "--config-id", config_id, "--metric-id", "canary", "--watch"])
        .args(extra)
        .arg("--data-dir")
        .arg(hub.data_dir())
        .args(["--https-port", &hub.https_port().to_string()])
        .args(["--mqtt-port", &hub.mqtt_port().to_string()])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { return };
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    (child, rx)
}

/// Waits for a line containing `needle`; returns every line seen so far.
fn line_with(rx: &mpsc::Receiver<String>, needle: &str, seen: &mut Vec<String>) {
    let deadline = Instant::now() + WAIT;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(line) => {
                let found = line.contains(needle);
                seen.push(line);
                if found {
                    return;
                }
            }
            Err(e) => panic!("no line with {needle:?} ({e}); lines so far: {seen:?}"),
        }
    }
}

/// Waits (capped) for the child to exit.
fn exit_of(child: &mut Child) -> ExitStatus {
    let deadline = Instant::now() + WAIT;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("the watch did not exit within {WAIT:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn stderr_of(child: &mut Child) -> String {
    let mut text = String::new();
    std::io::Read::read_to_string(child.stderr.as_mut().unwrap(), &mut text).unwrap();
    text
}

#[test]
fn watch_until_exits_0_once_the_metric_reaches_the_count() {
    let hub = TestHub::start();
    create_config(&hub, "canary");
    let (mut child, rx) = spawn_watch(&hub, "canary", &["--until", "2"]);
    let mut seen = Vec::new();
    // The first snapshot is drawn before anything changes.
    line_with(&rx, "canary=0/0", &mut seen);
    tag_canary(&hub, "d1");
    line_with(&rx, "canary=1/1", &mut seen);
    tag_canary(&hub, "d2");
    line_with(&rx, "canary=2/2", &mut seen);
    let status = exit_of(&mut child);
    assert_eq!(status.code(), Some(0), "stderr: {} lines: {seen:?}", stderr_of(&mut child));
    // Plain lines: a UTC time, then the rows, the requested metric first.
    let first = &seen[0];
    assert!(first.ends_with("Z canary=0/0 appliedCount=0/0 targetedCount=0"), "{first}");
    assert_eq!(first.find(' '), Some(20), "{first}");
}

#[test]
fn deleting_the_watched_configuration_exits_3() {
    let hub = TestHub::start();
    create_config(&hub, "doomed");
    let (mut child, rx) = spawn_watch(&hub, "doomed", &[]);
    let mut seen = Vec::new();
    line_with(&rx, "canary=0/0", &mut seen);
    ok(&hub.cli(&["configuration", "delete", "--config-id", "doomed"]));
    line_with(&rx, "configuration 'doomed' was deleted", &mut seen);
    assert_eq!(exit_of(&mut child).code(), Some(3), "lines: {seen:?}");
}

#[test]
fn watch_errors_exit_1_with_a_message() {
    let hub = TestHub::start();
    let watch = ["configuration", "show-metric", "--config-id", "nope", "--metric-id", "canary", "--watch"];
    let out = hub.cli(&watch);
    assert_eq!(out.status.code(), Some(1));
    let err = fails(&out);
    assert!(err.contains("ConfigurationNotFound") || err.contains("nope"), "{err}");

    create_config(&hub, "c1");
    let out = hub.cli(&["configuration", "show-metric", "-c", "c1", "-m", "missing", "--watch"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(fails(&out).contains("'missing' is not defined"));
    let out = hub.cli(&["configuration", "show-metric", "-c", "c1", "-m", "canary", "--until", "1"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(fails(&out).contains("--until needs --watch"));
}

async fn next(s: &mut WatchStream) -> Option<Result<WatchEvent, ferrohub_service_client::Error>> {
    tokio::time::timeout(WAIT, s.next()).await.expect("no watch event in time")
}

#[tokio::test]
async fn the_watch_stream_sends_what_get_returns_then_deleted() {
    let hub = TestHub::start();
    create_config(&hub, "sse");
    let client = service(&hub);
    let mut stream = client.watch_configuration("sse").await.unwrap();
    let first = next(&mut stream).await.unwrap().unwrap();
    assert_eq!(first, WatchEvent::Snapshot(client.get_configuration("sse").await.unwrap()));
    client.delete_configuration("sse", "*").await.unwrap();
    assert_eq!(next(&mut stream).await.unwrap().unwrap(), WatchEvent::Deleted);
    assert!(next(&mut stream).await.is_none(), "the stream ends after deleted");

    let err = client.watch_configuration("sse").await.unwrap_err();
    assert_eq!(err.code(), Some("ConfigurationNotFound"), "{err}");
}
