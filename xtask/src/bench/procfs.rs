//! What the bench reads about processes from /proc: CPU time, RSS, process trees,
//! perf-event file descriptors.

use std::{collections::HashMap, fs};

use anyhow::{Context, Result};

/// Clock ticks per second, the unit of utime and stime in /proc/PID/stat.
fn ticks_per_second() -> f64 {
    // SAFETY: sysconf has no preconditions.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if ticks > 0 { ticks as f64 } else { 100.0 }
}

/// The fields of /proc/PID/stat after the command name (field 3 onwards).
fn stat_fields(pid: u32) -> Result<Vec<String>> {
    let path = format!("/proc/{pid}/stat");
    let text = fs::read_to_string(&path).with_context(|| format!("cannot read {path}"))?;
    let after_comm = text
        .rfind(')')
        .map(|i| &text[i + 1..])
        .with_context(|| format!("{path} has no command name"))?;
    Ok(after_comm.split_whitespace().map(str::to_owned).collect())
}

/// User plus system CPU seconds of process `pid`, all its threads (utime + stime).
pub fn cpu_seconds(pid: u32) -> Result<f64> {
    let fields = stat_fields(pid)?;
    // utime and stime are fields 14 and 15; `fields` starts at field 3.
    let tick = |i: usize| -> Result<f64> {
        let value = fields.get(i - 3).context("short /proc/PID/stat")?;
        Ok(value.parse::<u64>().context("bad /proc/PID/stat")? as f64)
    };
    Ok((tick(14)? + tick(15)?) / ticks_per_second())
}

/// Peak resident set size of `pid` in KiB (VmHWM from /proc/PID/status).
pub fn peak_rss_kib(pid: u32) -> Result<u64> {
    status_kib(pid, "VmHWM")
}

/// Resident set size of `pid` now, in KiB (VmRSS from /proc/PID/status).
pub fn rss_kib(pid: u32) -> Result<u64> {
    status_kib(pid, "VmRSS")
}

/// A `FIELD: N kB` line of /proc/PID/status.
fn status_kib(pid: u32, field: &str) -> Result<u64> {
    let path = format!("/proc/{pid}/status");
    let text = fs::read_to_string(&path).with_context(|| format!("cannot read {path}"))?;
    text.lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .with_context(|| format!("no {field} in {path}"))
}

/// CPU seconds the whole machine has been busy (every CPU: all but idle and iowait).
pub fn machine_busy_seconds() -> Result<f64> {
    let text = fs::read_to_string("/proc/stat").context("cannot read /proc/stat")?;
    let line = text.lines().next().context("empty /proc/stat")?;
    let ticks: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|v| v.parse().ok())
        .collect();
    // user nice system idle iowait irq softirq steal (guest time is within user).
    let busy: u64 = ticks
        .iter()
        .take(8)
        .enumerate()
        .filter(|&(i, _)| i != 3 && i != 4)
        .map(|(_, t)| t)
        .sum();
    Ok(busy as f64 / ticks_per_second())
}

/// `root` and every live process below it.
pub fn tree(root: u32) -> Vec<u32> {
    let mut children: HashMap<u32, Vec<u32>> = HashMap::new();
    if let Ok(entries) = fs::read_dir("/proc") {
        for entry in entries.flatten() {
            let Some(pid) = entry.file_name().to_str().and_then(|n| n.parse().ok()) else {
                continue;
            };
            if let Some(ppid) = stat_fields(pid)
                .ok()
                .and_then(|f| f.get(1).and_then(|p| p.parse::<u32>().ok()))
            {
                children.entry(ppid).or_default().push(pid);
            }
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

/// How many perf-event file descriptors `pid` holds (one per uprobe for most tracers).
pub fn perf_event_fds(pid: u32) -> usize {
    let Ok(entries) = fs::read_dir(format!("/proc/{pid}/fd")) else {
        return 0;
    };
    entries
        .flatten()
        .filter(|e| {
            fs::read_link(e.path())
                .is_ok_and(|target| target.to_string_lossy() == "anon_inode:[perf_event]")
        })
        .count()
}

/// The file backing `pid`'s libc mapping (for the bpftrace script's probes).
pub fn mapped_libc(pid: u32) -> Result<String> {
    let path = format!("/proc/{pid}/maps");
    let text = fs::read_to_string(&path).with_context(|| format!("cannot read {path}"))?;
    text.lines()
        .filter_map(|l| l.split_whitespace().nth(5))
        .find(|file| {
            file.rsplit('/')
                .next()
                .is_some_and(|name| name.starts_with("libc.so") || name.starts_with("libc-"))
        })
        .map(str::to_owned)
        .with_context(|| format!("pid {pid} maps no libc"))
}
