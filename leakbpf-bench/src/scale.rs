//! The agent at scale: 1,000,000 outstanding allocations over 10,000 stacks. Measures a
//! drain-and-report cycle's agent CPU time and the agent's peak RSS, and checks that the
//! agent, sized for them, tracks every allocation.

use std::{
    fs,
    path::Path,
    process::Command,
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};
use serde::Serialize;

use devutil::header;

use crate::{
    process::{self, WorkloadProc},
    procinfo,
    workloads::Binaries,
};

pub const ALLOCS: u32 = 1_000_000;
pub const STACKS: u32 = 10_000;
const MAX_ALLOCS: &str = "1100000";
const MAX_STACKS: &str = "20000";
const INTERVAL_S: u64 = 3;
/// Cycles measured once the agent is idle between reports.
const CYCLES: usize = 2;
const LIMIT: Duration = Duration::from_secs(300);

#[derive(Clone, Debug, Serialize)]
pub struct ScaleResult {
    pub command: String,
    pub allocations: u32,
    pub stacks: u32,
    /// How long the workload took to make the allocations under the agent.
    pub allocate_s: f64,
    /// Agent CPU seconds of each measured drain-and-report cycle.
    pub cycle_cpu_s: Vec<f64>,
    pub peak_rss_mb: f64,
    /// From the agent's final JSON report.
    pub outstanding_allocations: u64,
    pub dropped_allocations: u64,
    pub dropped_sites: u64,
    pub callsites: u64,
}

impl ScaleResult {
    pub fn max_cycle_cpu_s(&self) -> f64 {
        self.cycle_cpu_s.iter().copied().fold(0.0, f64::max)
    }
}

pub fn run(agent: &Path, binaries: &Binaries, dir: &Path) -> Result<ScaleResult> {
    header(&format!(
        "agent scale: {ALLOCS} outstanding allocations over {STACKS} stacks"
    ));
    fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let reports = dir.join("reports.ndjson");
    let agent_log = dir.join("agent.log");
    let workload_log = dir.join("workload.log");

    let (program, args) = binaries.stacks(ALLOCS, STACKS);
    let mut workload = WorkloadProc::start(
        Command::new(&program).args(&args).current_dir(dir),
        &workload_log,
        LIMIT,
    )?;
    let interval = format!("{INTERVAL_S}s");
    let pid = workload.pid.to_string();
    let agent_args = [
        "--pid",
        &pid,
        "--interval",
        &interval,
        "--format",
        "json",
        "--max-allocs",
        MAX_ALLOCS,
        "--max-stacks",
        MAX_STACKS,
    ];
    let (mut proc, command) =
        process::attach_agent(agent, &agent_args, &pid, &reports, &agent_log, LIMIT)?;

    workload.go()?;
    let results = workload
        .results(LIMIT, &workload_log)
        .context("the scale workload did not finish allocating")?;
    let allocate_s = results.get("seconds").copied().unwrap_or(f64::NAN);
    println!("allocated {ALLOCS} blocks in {allocate_s:.1} s; waiting for the agent to settle");

    // One report after the allocations, then until the agent is idle (symbolizing the
    // new stacks is done); from there each further report is a cycle on its own.
    let agent_pid = proc.pid();
    wait_lines(&reports, count_lines(&reports) + 1, agent_pid)?;
    wait_idle(agent_pid)?;
    let mut seen = count_lines(&reports);
    let mut before = procinfo::cpu_seconds(agent_pid)?;
    let mut cycle_cpu_s = Vec::new();
    for _ in 0..CYCLES {
        seen = wait_lines(&reports, seen + 1, agent_pid)?;
        // The line is out; let the cycle's last bookkeeping finish.
        thread::sleep(Duration::from_millis(100));
        let after = procinfo::cpu_seconds(agent_pid)?;
        println!("drain-and-report cycle: {:.3} s agent CPU", after - before);
        cycle_cpu_s.push(after - before);
        before = after;
    }
    let peak_rss_mb = procinfo::peak_rss_kib(agent_pid)? as f64 * 1024.0 / 1e6;
    proc.interrupt(LIMIT)?;
    workload.finish(LIMIT)?;

    let last = fs::read_to_string(&reports)?
        .lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .map(str::to_owned)
        .context("the agent wrote no report")?;
    let report: serde_json::Value =
        serde_json::from_str(&last).context("the agent's last report is not JSON")?;
    let number = |path: &str| -> u64 {
        report
            .pointer(path)
            .and_then(serde_json::Value::as_u64)
            .unwrap_or(u64::MAX)
    };
    Ok(ScaleResult {
        command,
        allocations: ALLOCS,
        stacks: STACKS,
        allocate_s,
        cycle_cpu_s,
        peak_rss_mb,
        outstanding_allocations: number("/totals/outstanding_allocations"),
        dropped_allocations: number("/counters/dropped_allocations"),
        dropped_sites: number("/counters/dropped_sites"),
        callsites: number("/totals/callsites"),
    })
}

fn count_lines(path: &Path) -> usize {
    fs::read_to_string(path).map_or(0, |t| t.lines().count())
}

/// Waits until `path` has `lines` lines; returns the count.
fn wait_lines(path: &Path, lines: usize, pid: u32) -> Result<usize> {
    let start = Instant::now();
    let limit = Duration::from_secs(INTERVAL_S * 4 + 60);
    loop {
        let count = count_lines(path);
        if count >= lines {
            return Ok(count);
        }
        if start.elapsed() > limit || !Path::new(&format!("/proc/{pid}")).exists() {
            bail!("the agent wrote no report within {limit:?}");
        }
        thread::sleep(Duration::from_millis(10));
    }
}

/// Waits until `pid` uses no CPU for half a second (at most a minute).
fn wait_idle(pid: u32) -> Result<()> {
    let start = Instant::now();
    let mut last = procinfo::cpu_seconds(pid)?;
    while start.elapsed() < Duration::from_secs(60) {
        thread::sleep(Duration::from_millis(500));
        let now = procinfo::cpu_seconds(pid)?;
        if now - last < 0.015 {
            return Ok(());
        }
        last = now;
    }
    bail!("the agent stayed busy for a minute after the allocations")
}
