//! `ferrohub demo` end to end: its own hub, 100 simulated chillers, a
//! staged rollout that halts itself when the failing batch's wave starts,
//! the later wave never handed the image, exit code 2 (halted), and nothing
//! left behind.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

/// The demo promises to end within two minutes; debug builds on a loaded
/// CI machine get some slack.
const CAP: Duration = Duration::from_secs(240);

#[tokio::test]
async fn the_demo_halts_a_rollout_at_the_failing_wave() {
    let tmp = tempfile::tempdir().unwrap();
    let mut cmd = std::process::Command::new(common::BIN);
    common::clear_hub_env(&mut cmd).arg("demo").env("TMPDIR", tmp.path());
    let run = tokio::task::spawn_blocking(move || cmd.output().unwrap());
    let out = tokio::time::timeout(CAP, run).await.expect("the demo did not end").unwrap();
    let printed = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert_eq!(out.status.code(), Some(2), "{printed}");
    assert!(printed.contains("rollout 'fw-2-8-5' halted"), "{printed}");
    assert!(printed.contains("wave 4 (30 devices) was never started"), "{printed}");
    // Waves 1 and 2 (the reliable rev A chillers) finished first.
    assert!(printed.contains("wave2=30/30"), "{printed}");
    // The temporary hub's data dir is gone.
    let left: Vec<_> = std::fs::read_dir(tmp.path()).unwrap().collect();
    assert!(left.is_empty(), "left behind: {left:?}");
}
