//! One measurement: a workload under a tool, from start to stop.

use std::{collections::BTreeMap, fs, path::Path, process::Command, time::Duration};

use anyhow::{Context, Result};

use crate::{
    process::{self, WorkloadProc},
    procinfo,
    tools::{Mode, Tool, Toolbox},
    unwind_tables::{self, UnwindTables},
    workloads::Invocation,
};

/// Time limits: start-up (BCC compiles its program), and the end of a run beyond its
/// timed loop (heaptrack and valgrind finish their analysis at exit).
const START_LIMIT: Duration = Duration::from_secs(180);
const LOOP_SLACK: Duration = Duration::from_secs(300);
const STOP_LIMIT: Duration = Duration::from_secs(120);

/// The tool's own processes (not the workload) at one moment.
#[derive(Clone, Copy, Debug)]
pub struct AgentUse {
    /// CPU seconds since it started (start-up included).
    pub cpu_s: f64,
    /// CPU seconds during the timed loop.
    pub loop_cpu_s: f64,
    /// Peak RSS (VmHWM), summed over its processes, MB.
    pub peak_rss_mb: f64,
}

/// What one run measured.
#[derive(Clone, Debug)]
pub struct Sample {
    /// The workload's own `KEY VALUE` lines.
    pub results: BTreeMap<String, f64>,
    /// The workload's CPU seconds (utime + stime) over its timed loop, per wall second.
    pub target_cpu_per_s: f64,
    /// `None` for no tool, or a tool living inside the workload's process (valgrind).
    pub agent: Option<AgentUse>,
    /// CPU seconds per second the rest of the machine used during the timed loop: the
    /// noise, other processes and the kernel's work on behalf of none of the two.
    pub other_cpu_per_s: f64,
    /// leakbpf's unwind tables for the workload, from its `--verbose` log.
    pub unwind_tables: Option<UnwindTables>,
}

/// Runs `invocation` under `tool`, its files in `dir`; `loop_s` is the timed loop. The run
/// ends when the tool and the workload have exited.
pub fn measure(
    toolbox: &Toolbox,
    tool: Tool,
    invocation: &Invocation,
    loop_s: f64,
    dir: &Path,
) -> Result<Sample> {
    fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let workload_log = dir.join("workload.log");
    let tool_log = dir.join("tool.log");
    let mut cmd = match tool.mode() {
        Mode::Launch => toolbox.launch(tool, &invocation.program, &invocation.args, dir),
        Mode::Bare | Mode::Attach { .. } => {
            let mut cmd = Command::new(&invocation.program);
            cmd.args(&invocation.args);
            cmd
        }
    };
    if let Some(library) = invocation.preload {
        cmd.env("LD_PRELOAD", library);
    }
    cmd.current_dir(dir);
    let mut workload = WorkloadProc::start(&mut cmd, &workload_log, START_LIMIT)?;

    let mut agent = None;
    if let Mode::Attach { marker } = tool.mode() {
        let mut attach = toolbox.attach(tool, workload.pid, dir)?;
        attach.current_dir(dir);
        let mut proc = process::spawn_logged(&mut attach, &tool_log, tool.name())?;
        process::wait_attached(&mut proc, &tool_log, marker, START_LIMIT)?;
        agent = Some(proc);
    }
    // The tool's processes: the attached agent, or what the launcher runs beside the
    // workload (heaptrack's interpreter); none when the tool is the workload's process.
    let agent_root = match &agent {
        Some(proc) => Some(proc.pid()),
        None if tool.mode() == Mode::Launch => Some(workload.proc.pid()),
        None => None,
    };
    let target = workload.pid;
    let agent_usage = || agent_root.and_then(|root| procinfo::tree_usage(root, target));

    let agent_before = agent_usage();
    let busy_before = procinfo::machine_busy_seconds()?;
    let cpu_before = procinfo::cpu_seconds(target)?;
    let started = std::time::Instant::now();
    workload.go()?;
    let limit = Duration::from_secs_f64(loop_s) + LOOP_SLACK;
    let results = workload
        .results(limit, &workload_log)
        .context("the workload did not finish its timed loop")?;
    let wall = started.elapsed().as_secs_f64();
    let cpu_after = procinfo::cpu_seconds(target)?;
    let agent_after = agent_usage();
    let busy_after = procinfo::machine_busy_seconds()?;

    if let Some(mut proc) = agent {
        // leakbpf's detach takes about 2 s: the kernel waits ~100 ms per uprobe.
        let status = proc.interrupt(STOP_LIMIT)?;
        if !status.success() {
            anyhow::bail!(
                "{} exited with {status} when stopped{}",
                tool.name(),
                process::tail(&tool_log)
            );
        }
    }
    let status = workload.finish(STOP_LIMIT)?;
    if !status.success() {
        anyhow::bail!(
            "the workload exited with {status}{}",
            process::tail(&workload_log)
        );
    }

    let agent = match (agent_before, agent_after) {
        (Some((cpu0, _)), Some((cpu1, rss))) => Some(AgentUse {
            cpu_s: cpu1,
            loop_cpu_s: cpu1 - cpu0,
            peak_rss_mb: rss as f64 * 1024.0 / 1e6,
        }),
        _ => None,
    };
    let unwind_tables = if tool == Tool::Leakbpf {
        let log = fs::read_to_string(&tool_log)
            .with_context(|| format!("cannot read {}", tool_log.display()))?;
        Some(unwind_tables::first_in(&log)?)
    } else {
        None
    };
    let agent_loop = agent.map_or(0.0, |a| a.loop_cpu_s);
    let other = busy_after - busy_before - (cpu_after - cpu_before) - agent_loop;
    Ok(Sample {
        results,
        target_cpu_per_s: (cpu_after - cpu_before) / wall,
        agent,
        other_cpu_per_s: (other / wall).max(0.0),
        unwind_tables,
    })
}
