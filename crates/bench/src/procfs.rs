//! What the benchmarks read of a process from `/proc`: resident memory,
//! CPU time, its open-files limit.

use std::time::Duration;

use anyhow::Context as _;

/// Resident set size in KiB (`VmRSS`).
pub(crate) fn rss_kib(pid: u32) -> anyhow::Result<u64> {
    status_field(pid, "VmRSS:")
}

/// Resident memory split by what backs it, in KiB: anonymous (the heap,
/// stacks, SQLite's page cache) and file-backed (the binary and the
/// database's memory map, which the kernel may drop at any time).
pub(crate) struct RssParts {
    pub(crate) anon_kib: u64,
    pub(crate) file_kib: u64,
}

pub(crate) fn rss_parts(pid: u32) -> anyhow::Result<RssParts> {
    Ok(RssParts { anon_kib: status_field(pid, "RssAnon:")?, file_kib: status_field(pid, "RssFile:")? })
}

fn status_field(pid: u32, field: &str) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .with_context(|| format!("no {field} in /proc/{pid}/status"))
}

/// User plus system CPU time used so far.
pub(crate) fn cpu_time(pid: u32) -> anyhow::Result<Duration> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // The command name (field 2) may hold spaces; fields after its closing
    // parenthesis are plain. utime and stime are fields 14 and 15.
    let rest = stat.rsplit_once(')').map(|(_, r)| r).context("malformed /proc/PID/stat")?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| fields.get(i).and_then(|f| f.parse::<u64>().ok()).context("utime/stime");
    // Field 14 is index 11 after the state field (index 0 = field 3).
    let total = ticks(11)? + ticks(12)?;
    // Linux reports in USER_HZ, 100 on every architecture ferrohub targets.
    Ok(Duration::from_millis(total * 10))
}

/// The soft limit on open files.
pub(crate) fn open_files_limit(pid: u32) -> anyhow::Result<u64> {
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits"))?;
    limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .and_then(|l| l.split_whitespace().nth(3))
        .and_then(|n| n.parse().ok())
        .context("no open-files limit in /proc/PID/limits")
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn this_process_can_be_read() {
        let me = std::process::id();
        assert!(rss_kib(me).unwrap() > 0);
        let parts = rss_parts(me).unwrap();
        assert!(parts.anon_kib > 0 && parts.file_kib > 0);
        assert!(parts.anon_kib + parts.file_kib <= rss_kib(me).unwrap() + 1024);
        assert!(open_files_limit(me).unwrap() > 0);
        let before = cpu_time(me).unwrap();
        let mut x = 0u64;
        for i in 0..50_000_000u64 {
            x = x.wrapping_add(i * i);
        }
        assert!(x > 0);
        assert!(cpu_time(me).unwrap() > before);
    }
}
