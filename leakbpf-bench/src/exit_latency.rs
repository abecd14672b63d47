//! leakbpf's exit: the wall time from the end of the command it started
//! (`leakbpf -- PROGRAM`) to its own exit, what a user waits for the final report.

use std::{
    fs,
    path::Path,
    process::Command,
    time::{Duration, Instant},
};

use anyhow::{Context, Result};
use devutil::header;
use serde::Serialize;

use crate::{
    process::{self, WorkloadProc},
    stats::Summary,
    workloads::Invocation,
};

/// Runs; the median is the figure.
const RUNS: usize = 3;
const LIMIT: Duration = Duration::from_secs(120);

#[derive(Clone, Debug, Serialize)]
pub struct ExitLatency {
    pub command: String,
    /// Seconds from the traced command's end to leakbpf's exit, each run.
    pub seconds: Summary,
}

/// `agent -- workload` [`RUNS`] times, its files in `dir`. The workload inherits leakbpf's
/// stdin and stdout, so its protocol tells the moment it ends: it exits as soon as its
/// stdin closes, and leakbpf, which holds no writing end of it, exits after.
pub fn run(agent: &Path, workload: &Invocation, dir: &Path) -> Result<ExitLatency> {
    header("leakbpf's exit after the command it started");
    fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let mut seconds = Vec::new();
    for run in 1..=RUNS {
        let log = dir.join(format!("{run}.log"));
        // Reports into a file: the pipe carries the workload's lines alone.
        let mut cmd = Command::new(agent);
        cmd.arg("--output")
            .arg(dir.join(format!("{run}.report")))
            .arg("--")
            .arg(&workload.program)
            .args(&workload.args)
            .current_dir(dir);
        let mut traced = WorkloadProc::start(&mut cmd, &log, LIMIT)
            .context("leakbpf did not start the workload")?;
        traced.go()?;
        traced.results(LIMIT, &log)?;
        let end = Instant::now();
        let status = traced.finish(LIMIT)?;
        let took = end.elapsed().as_secs_f64();
        if !status.success() {
            anyhow::bail!("leakbpf exited with {status}{}", process::tail(&log));
        }
        println!("  run {run}: leakbpf exited {took:.3} s after the command");
        seconds.push(took);
    }
    Ok(ExitLatency {
        command: format!(
            "target/release/leakbpf --output FILE -- {} {}",
            workload
                .program
                .file_name()
                .map_or_else(String::new, |n| n.to_string_lossy().into_owned()),
            workload.args.join(" ")
        ),
        seconds: Summary::of(&seconds).context("no run")?,
    })
}
