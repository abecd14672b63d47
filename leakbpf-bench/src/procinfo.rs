//! What the bench reads about processes and the machine from /proc (with the procfs
//! crate): CPU time, RSS, process trees, perf-event file descriptors, mapped files.

use std::{collections::HashMap, path::PathBuf};

use anyhow::{Context, Result};
use procfs::{
    CurrentSI, KernelStats,
    process::{FDTarget, MMapPath, Process, all_processes},
};

fn process(pid: u32) -> Result<Process> {
    let id = i32::try_from(pid).with_context(|| format!("pid {pid} is out of range"))?;
    Process::new(id).with_context(|| format!("no process {pid}"))
}

/// Clock ticks (the unit of /proc/PID/stat's times) as seconds.
fn seconds(ticks: u64) -> f64 {
    ticks as f64 / procfs::ticks_per_second() as f64
}

/// User plus system CPU seconds of process `pid`, all its threads (utime + stime of
/// /proc/PID/stat).
pub fn cpu_seconds(pid: u32) -> Result<f64> {
    let stat = process(pid)?
        .stat()
        .with_context(|| format!("cannot read /proc/{pid}/stat"))?;
    Ok(seconds(stat.utime + stat.stime))
}

/// Peak resident set size of `pid` in KiB (VmHWM from /proc/PID/status).
pub fn peak_rss_kib(pid: u32) -> Result<u64> {
    status_kib(pid, "VmHWM", |s| s.vmhwm)
}

/// Resident set size of `pid` now, in KiB (VmRSS from /proc/PID/status).
pub fn rss_kib(pid: u32) -> Result<u64> {
    status_kib(pid, "VmRSS", |s| s.vmrss)
}

fn status_kib(
    pid: u32,
    field: &str,
    get: impl Fn(&procfs::process::Status) -> Option<u64>,
) -> Result<u64> {
    let status = process(pid)?
        .status()
        .with_context(|| format!("cannot read /proc/{pid}/status"))?;
    get(&status).with_context(|| format!("no {field} in /proc/{pid}/status"))
}

/// CPU seconds the whole machine has been busy (every CPU, from /proc/stat: user, nice,
/// system, irq, softirq and steal; not idle nor iowait; guest time is within user).
pub fn machine_busy_seconds() -> Result<f64> {
    let total = KernelStats::current()
        .context("cannot read /proc/stat")?
        .total;
    let busy = total.user
        + total.nice
        + total.system
        + total.irq.unwrap_or(0)
        + total.softirq.unwrap_or(0)
        + total.steal.unwrap_or(0);
    Ok(seconds(busy))
}

/// `root` and every live process below it.
pub fn tree(root: u32) -> Vec<u32> {
    let mut children: HashMap<u32, Vec<u32>> = HashMap::new();
    // Processes that exit while the table is read are left out, as they should be.
    for proc in all_processes().into_iter().flatten().flatten() {
        if let Ok(stat) = proc.stat()
            && let (Ok(pid), Ok(ppid)) = (u32::try_from(stat.pid), u32::try_from(stat.ppid))
        {
            children.entry(ppid).or_default().push(pid);
        }
    }
    let mut found = vec![root];
    let mut next = 0;
    while next < found.len() {
        if let Some(kids) = children.get(&found[next]) {
            found.extend(kids);
        }
        next += 1;
    }
    found
}

/// CPU seconds and summed peak RSS (KiB) of the live processes of `root`'s tree except
/// `exclude`; `None` when there are none.
pub fn tree_usage(root: u32, exclude: u32) -> Option<(f64, u64)> {
    let pids: Vec<u32> = tree(root).into_iter().filter(|&p| p != exclude).collect();
    let mut cpu = 0.0;
    let mut rss = 0;
    let mut any = false;
    for pid in pids {
        if let (Ok(c), Ok(r)) = (cpu_seconds(pid), peak_rss_kib(pid)) {
            cpu += c;
            rss += r;
            any = true;
        }
    }
    any.then_some((cpu, rss))
}

/// How many perf-event file descriptors `pid` holds (one per uprobe for most tracers);
/// 0 when its descriptors cannot be read.
pub fn perf_event_fds(pid: u32) -> usize {
    let Ok(fds) = process(pid).and_then(|p| Ok(p.fd()?)) else {
        return 0;
    };
    fds.flatten()
        .filter(|fd| matches!(&fd.target, FDTarget::AnonInode(kind) if kind == "[perf_event]"))
        .count()
}

/// The file backing `pid`'s libc mapping (for the bpftrace script's probes).
pub fn mapped_libc(pid: u32) -> Result<PathBuf> {
    mapped_object(pid, "libc", &|n| {
        n.starts_with("libc.so") || n.starts_with("libc-")
    })
}

/// The first file `pid` maps whose name `is` accepts; `what` names it in the error.
pub fn mapped_object(pid: u32, what: &str, is: &dyn Fn(&str) -> bool) -> Result<PathBuf> {
    let maps = process(pid)?
        .maps()
        .with_context(|| format!("cannot read /proc/{pid}/maps"))?;
    maps.into_iter()
        .find_map(|map| match map.pathname {
            MMapPath::Path(path) if path.file_name().and_then(|n| n.to_str()).is_some_and(is) => {
                Some(path)
            }
            _ => None,
        })
        .with_context(|| format!("pid {pid} maps no {what}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn me() -> u32 {
        std::process::id()
    }

    /// This process's user + system CPU seconds from getrusage, a source independent of
    /// /proc.
    fn rusage_seconds() -> f64 {
        // SAFETY: an all-zero rusage is a valid value of the plain C struct.
        let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
        // SAFETY: `usage` is a valid, writable rusage for the call to fill.
        assert_eq!(unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut usage) }, 0);
        let secs = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
        secs(usage.ru_utime) + secs(usage.ru_stime)
    }

    #[test]
    fn cpu_time_is_what_getrusage_says_and_the_machine_counts_it() {
        let busy_before = machine_busy_seconds().unwrap();
        let start = rusage_seconds();
        let mut x: u64 = 1;
        while rusage_seconds() - start < 0.3 {
            x = x.wrapping_mul(6364136223846793005).wrapping_add(1);
        }
        std::hint::black_box(x);
        let (low, proc_s, high) = (
            rusage_seconds(),
            cpu_seconds(me()).unwrap(),
            rusage_seconds(),
        );
        // /proc counts in clock ticks (10 ms here), getrusage in microseconds.
        assert!(
            low - 0.05 <= proc_s && proc_s <= high + 0.05,
            "/proc/self/stat: {proc_s} s, getrusage: {low}..{high} s"
        );
        let busy = machine_busy_seconds().unwrap() - busy_before;
        assert!(
            busy >= 0.25,
            "the machine was busy {busy} s while this spun 0.3 s"
        );
    }

    #[test]
    fn rss_and_its_peak_are_read_and_ordered() {
        let (rss, peak) = (rss_kib(me()).unwrap(), peak_rss_kib(me()).unwrap());
        assert!(rss > 0 && peak >= rss, "VmRSS {rss} kB, VmHWM {peak} kB");
    }

    #[test]
    fn a_child_is_in_its_parents_tree_and_maps_libc() {
        let mut child = std::process::Command::new("sleep")
            .arg("5")
            .spawn()
            .unwrap();
        let tree = tree(me());
        assert_eq!(tree[0], me());
        assert!(tree.contains(&child.id()), "{} not in {tree:?}", child.id());
        let libc = mapped_libc(me()).unwrap();
        assert!(libc.is_absolute() && libc.exists(), "{}", libc.display());
        assert_eq!(perf_event_fds(me()), 0);
        child.kill().unwrap();
        child.wait().unwrap();
    }
}
