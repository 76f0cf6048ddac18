//! A small tmpfs for tests that need a file system that fills up.
//!
//! Mounting needs root (CI runs as root); [`SmallDisk::mount`] answers
//! `None` elsewhere so the test can say it was skipped.

use std::path::PathBuf;
use std::process::Command;

/// A tmpfs mounted for one test, unmounted (lazily, in case a hub still
/// holds files) when dropped.
pub struct SmallDisk {
    _root: tempfile::TempDir,
    /// Where it is mounted.
    pub mount: PathBuf,
}

impl SmallDisk {
    /// Mounts a tmpfs of `size` (mount's syntax, e.g. `32m`), if permitted.
    pub fn mount(size: &str) -> Option<Self> {
        if euid() != 0 {
            return None;
        }
        let root = tempfile::Builder::new().prefix("ferrohub-disk-").tempdir().unwrap();
        let mount = root.path().join("mnt");
        std::fs::create_dir(&mount).unwrap();
        let status = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size},mode=0700"), "tmpfs"])
            .arg(&mount)
            .status()
            .ok()?;
        status.success().then_some(Self { _root: root, mount })
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.mount).status();
    }
}

fn euid() -> u32 {
    // `id -u` keeps the test free of unsafe code (the workspace forbids it).
    let out = Command::new("id").arg("-u").output().unwrap();
    String::from_utf8_lossy(&out.stdout).trim().parse().unwrap_or(u32::MAX)
}
