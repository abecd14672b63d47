//! `cargo xtask bench soak --minutes N`: the chat-server demo started under leakbpf and kept
//! busy for N minutes. Samples the agent's RSS and the call sites it reports, checks that
//! both stay flat once warmed up, and that the final report's figures at
//! `EventManager::subscribe` are the target's own count of what it leaked.
//! See docs/soak.md.

use std::{
    fs,
    path::Path,
    process::Command,
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};
use serde::Serialize;
use serde_json::Value;

use devutil::header;

use crate::{
    machine::Machine,
    process::{self, Proc},
    procinfo, provenance, report,
    results::{TargetCheck, num},
};

const DOC: report::DocBlock = report::DocBlock {
    file: "docs/soak.md",
    name: "soak-results",
    title: "leakbpf soak run",
};
/// Between reports, and between samples of the agent.
const INTERVAL_S: u64 = 5;
/// Messages each user posts: with 300, the server's work (about 12 ms per join under
/// leakbpf here) fills its time and the demo's pause of 1 ms per join is a small part of
/// it (full load), while the leak (one callback per join) stays within the agent's
/// default --max-allocs for hours.
const MESSAGES: u32 = 300;
/// The warm-up, when the working set of stacks is first seen: this share of the run,
/// and at least [`MIN_WARMUP_S`].
const WARMUP_SHARE: f64 = 0.2;
const MIN_WARMUP_S: f64 = 30.0;
/// Flat: the maximum over the second half of the samples after the warm-up is at most
/// the first half's times this, plus a constant (below).
const ALLOWED_GROWTH: f64 = 1.10;
const RSS_SLACK_MB: f64 = 1.0;
const CALLSITES_SLACK: f64 = 2.0;
/// Beyond the run: the agent's start and the target's end.
const SLACK: Duration = Duration::from_secs(180);
/// Where the leak is, as the first frame of its stack names it.
const LEAK_FUNCTION: &str = "EventManager::subscribe";
/// Rows of the series in the markdown (all of them are in the JSON).
const TABLE_ROWS: usize = 30;

#[derive(Debug, Serialize)]
pub struct SoakResults {
    pub schema_version: u32,
    pub command: String,
    pub date_utc: String,
    pub machine: Machine,
    pub leakbpf_commit: Option<String>,
    pub minutes: u64,
    /// The agent and the target, as run.
    pub run: String,
    /// The target's CPU seconds per wall second: 1.0 is one core fully busy.
    pub target_cpu_per_s: Option<f64>,
    pub warmup_s: f64,
    pub samples: Vec<Sample>,
    pub rss_flat: Option<Flatness>,
    pub callsites_flat: Option<Flatness>,
    /// What the target printed at its end.
    pub truth: Truth,
    /// The call site at `EventManager::subscribe` in the final report.
    pub reported: Option<Reported>,
    /// The final report's `counters.dropped_*`, summed.
    pub dropped: u64,
    pub checks: Vec<TargetCheck>,
}

/// The agent, every [`INTERVAL_S`] seconds.
#[derive(Debug, Serialize)]
pub struct Sample {
    pub t_s: f64,
    /// VmRSS.
    pub agent_rss_mb: f64,
    /// From the newest report at the time, when there is one.
    pub report: Option<u64>,
    pub callsites: Option<u64>,
    pub outstanding_mb: Option<f64>,
}

/// Whether a series stays flat after the warm-up.
#[derive(Debug, PartialEq, Serialize)]
pub struct Flatness {
    pub first_half_max: f64,
    pub second_half_max: f64,
    /// first_half_max × [`ALLOWED_GROWTH`] + the series' slack.
    pub limit: f64,
    pub pass: bool,
}

#[derive(Debug, Default, Serialize)]
pub struct Truth {
    pub joins: u64,
    pub count: u64,
    pub bytes: u64,
    pub sizeof: u64,
}

#[derive(Debug, Serialize)]
pub struct Reported {
    pub allocations: u64,
    pub bytes: u64,
    pub rank: u64,
}

/// The agent and the command it started; the command is killed with the agent when
/// dropped early (a started command outlives a killed agent).
struct Traced(Proc);

impl Drop for Traced {
    fn drop(&mut self) {
        if self.0.exited().ok().flatten().is_none() {
            for pid in procinfo::tree(self.0.pid()).into_iter().skip(1) {
                let pid = libc::pid_t::try_from(pid).unwrap_or(libc::pid_t::MAX);
                // SAFETY: kill has no memory-safety preconditions; `pid` is a descendant
                // of our unreaped child, so not reused.
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
        }
    }
}

/// Runs the soak of `agent`; fails when a check fails.
pub fn run(root: &Path, agent: &Path, minutes: u64) -> Result<()> {
    let server = devutil::build_chat_server(root, devutil::Build::FramePointers)?;
    let out = devutil::target_dir(root).join("bench");
    let dir = out.join("soak");
    if dir.exists() {
        fs::remove_dir_all(&dir).with_context(|| format!("cannot clear {}", dir.display()))?;
    }
    fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let reports = dir.join("reports.ndjson");
    // The agent's messages and the target's output (its truth) together.
    let log = dir.join("output.log");

    let seconds = minutes * 60;
    let interval = format!("{INTERVAL_S}s");
    let server_args = [
        "--duration".to_owned(),
        seconds.to_string(),
        "--messages".to_owned(),
        MESSAGES.to_string(),
    ];
    let mut cmd = Command::new(agent);
    cmd.args(["--interval", &interval, "--format", "json", "--top", "20"])
        .arg("--output")
        .arg(&reports)
        .arg("--")
        .arg(&server)
        .args(&server_args)
        .current_dir(&dir);
    let run = format!(
        "target/release/leakbpf --interval {interval} --format json --top 20 --output FILE \
         -- target/demo/chat_server {}",
        server_args.join(" ")
    );
    header(&format!("soak: {run}, {minutes} min"));
    let mut traced = Traced(process::spawn_logged(&mut cmd, &log, "leakbpf")?);
    let samples = sample(&mut traced, &reports, &log, seconds)?;
    let status = traced.0.wait(Duration::from_secs(30))?;
    if !status.success() {
        bail!("leakbpf exited with {status}{}", process::tail(&log));
    }

    let target_cpu_per_s = samples.target_cpu_per_s;
    let samples = samples.samples;
    let warmup_s = (seconds as f64 * WARMUP_SHARE).max(MIN_WARMUP_S);
    let rss: Vec<(f64, f64)> = samples.iter().map(|s| (s.t_s, s.agent_rss_mb)).collect();
    let callsites: Vec<(f64, f64)> = samples
        .iter()
        .filter_map(|s| Some((s.t_s, s.callsites? as f64)))
        .collect();
    let rss_flat = flatness(&rss, warmup_s, RSS_SLACK_MB);
    let callsites_flat = flatness(&callsites, warmup_s, CALLSITES_SLACK);
    let truth = truth(&log)?;
    let last = final_report(&reports)?;
    let reported = leak_site(&last);
    let dropped = last["counters"]
        .as_object()
        .context("the final report has no counters")?
        .iter()
        .filter(|(name, _)| name.starts_with("dropped_"))
        .map(|(_, count)| count.as_u64().unwrap_or(u64::MAX))
        .fold(0u64, u64::saturating_add);

    let checks = vec![
        flat_check("agent RSS (VmRSS, MB)", rss_flat.as_ref(), RSS_SLACK_MB),
        flat_check(
            "call sites (totals.callsites)",
            callsites_flat.as_ref(),
            CALLSITES_SLACK,
        ),
        truth_check(&truth, reported.as_ref()),
        TargetCheck {
            target: "no allocation, call site or call dropped".to_owned(),
            pass: Some(dropped == 0),
            detail: format!("counters.dropped_* of the final report: {dropped}"),
            ratio: None,
        },
    ];
    let results = SoakResults {
        schema_version: 1,
        command: provenance::command_line(),
        date_utc: provenance::date_utc(),
        machine: Machine::detect(),
        leakbpf_commit: provenance::commit(root),
        minutes,
        run,
        target_cpu_per_s,
        warmup_s,
        samples,
        rss_flat,
        callsites_flat,
        truth,
        reported,
        dropped,
        checks,
    };
    header("soak results");
    report::write(
        root,
        &out,
        "soak",
        &results,
        &markdown(&results),
        Some(&DOC),
    )?;
    let failed: Vec<&str> = results
        .checks
        .iter()
        .filter(|c| c.pass != Some(true))
        .map(|c| c.target.as_str())
        .collect();
    if !failed.is_empty() {
        bail!("the soak failed: {}", failed.join("; "));
    }
    Ok(())
}

struct Sampled {
    samples: Vec<Sample>,
    target_cpu_per_s: Option<f64>,
}

/// Samples the agent every [`INTERVAL_S`] until it exits (after the target's final
/// report); prints each sample.
fn sample(traced: &mut Traced, reports: &Path, log: &Path, seconds: u64) -> Result<Sampled> {
    let agent = traced.0.pid();
    let started = Instant::now();
    let deadline = Duration::from_secs(seconds) + SLACK;
    let mut samples = Vec::new();
    let mut target_cpu_per_s = None;
    println!("   time  agent RSS MB  report  call sites  outstanding MB");
    loop {
        let tick = Instant::now();
        while tick.elapsed() < Duration::from_secs(INTERVAL_S) {
            if traced.0.exited()?.is_some() {
                return Ok(Sampled {
                    samples,
                    target_cpu_per_s,
                });
            }
            if started.elapsed() > deadline {
                bail!(
                    "the run did not end within {deadline:?}{}",
                    process::tail(log)
                );
            }
            thread::sleep(Duration::from_millis(100));
        }
        let t_s = started.elapsed().as_secs_f64();
        let Ok(rss_kib) = procinfo::rss_kib(agent) else {
            continue; // it is exiting
        };
        // The started target is the agent's only descendant.
        if let Some((cpu_s, _)) = procinfo::tree_usage(agent, agent) {
            target_cpu_per_s = Some(cpu_s / t_s);
        }
        let newest = last_line(reports).and_then(|l| serde_json::from_str::<Value>(&l).ok());
        let field = |path: &str| newest.as_ref().and_then(|r| r.pointer(path)?.as_u64());
        let sample = Sample {
            t_s,
            agent_rss_mb: rss_kib as f64 * 1024.0 / 1e6,
            report: field("/report"),
            callsites: field("/totals/callsites"),
            outstanding_mb: field("/totals/outstanding_bytes").map(|b| b as f64 / 1e6),
        };
        println!("{}", row(&sample));
        samples.push(sample);
    }
}

fn row(s: &Sample) -> String {
    let opt = |v: Option<String>| v.unwrap_or_else(|| "-".to_owned());
    format!(
        "{:>6.0}s  {:>12.1}  {:>6}  {:>10}  {:>14}",
        s.t_s,
        s.agent_rss_mb,
        opt(s.report.map(|r| r.to_string())),
        opt(s.callsites.map(|c| c.to_string())),
        opt(s.outstanding_mb.map(|m| format!("{m:.1}"))),
    )
}

fn last_line(path: &Path) -> Option<String> {
    let text = fs::read_to_string(path).ok()?;
    text.lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .map(str::to_owned)
}

/// Whether `series` (time, value) is flat after `warmup_s`: the samples after it are
/// split in two halves, and the second half's maximum may exceed the first half's by
/// [`ALLOWED_GROWTH`] and `slack`. `None` with fewer than two samples after the warm-up.
fn flatness(series: &[(f64, f64)], warmup_s: f64, slack: f64) -> Option<Flatness> {
    let after: Vec<f64> = series
        .iter()
        .filter(|&&(t, _)| t >= warmup_s)
        .map(|&(_, v)| v)
        .collect();
    if after.len() < 2 {
        return None;
    }
    let (first, second) = after.split_at(after.len() / 2);
    let max = |values: &[f64]| values.iter().copied().fold(f64::MIN, f64::max);
    let (first_half_max, second_half_max) = (max(first), max(second));
    let limit = first_half_max * ALLOWED_GROWTH + slack;
    Some(Flatness {
        first_half_max,
        second_half_max,
        limit,
        pass: second_half_max <= limit,
    })
}

fn flat_check(what: &str, flat: Option<&Flatness>, slack: f64) -> TargetCheck {
    let target = format!(
        "{what} flat after the warm-up: second half's max <= first half's max x \
         {ALLOWED_GROWTH} + {slack}"
    );
    match flat {
        Some(f) => TargetCheck {
            target,
            pass: Some(f.pass),
            detail: format!(
                "{} vs {} (limit {})",
                num(f.second_half_max),
                num(f.first_half_max),
                num(f.limit)
            ),
            ratio: None,
        },
        None => TargetCheck {
            target,
            pass: None,
            detail: "fewer than two samples after the warm-up".to_owned(),
            ratio: None,
        },
    }
}

/// The target's `{"truth":{...}}` line (tests/targets/chat_server.cpp).
fn truth(log: &Path) -> Result<Truth> {
    let text = fs::read_to_string(log).with_context(|| format!("cannot read {}", log.display()))?;
    let line = text
        .lines()
        .find(|l| l.starts_with("{\"truth\":"))
        .with_context(|| format!("the chat server printed no truth{}", process::tail(log)))?;
    let value: Value = serde_json::from_str(line).context("the chat server's truth is not JSON")?;
    let field = |name: &str| value["truth"][name].as_u64().unwrap_or(0);
    Ok(Truth {
        joins: field("joins"),
        count: field("count"),
        bytes: field("bytes"),
        sizeof: field("sizeof"),
    })
}

fn final_report(reports: &Path) -> Result<Value> {
    let line = last_line(reports).context("the agent wrote no report")?;
    let report: Value = serde_json::from_str(&line).context("the last report is not JSON")?;
    if report["final"] != Value::Bool(true) {
        bail!("the agent's last report is not its final one");
    }
    Ok(report)
}

/// The call site whose first frame is in [`LEAK_FUNCTION`].
fn leak_site(report: &Value) -> Option<Reported> {
    let site = report["callsites"].as_array()?.iter().find(|site| {
        site["frames"][0]["function"]
            .as_str()
            .is_some_and(|f| f.contains(LEAK_FUNCTION))
    })?;
    Some(Reported {
        allocations: site["allocations"].as_u64()?,
        bytes: site["bytes"].as_u64()?,
        rank: site["rank"].as_u64()?,
    })
}

fn truth_check(truth: &Truth, reported: Option<&Reported>) -> TargetCheck {
    let target = format!(
        "final report at {LEAK_FUNCTION} = the target's truth (joins x sizeof(EventCallback))"
    );
    let own = format!(
        "target: {} joins, {} callbacks alive x {} B = {} B",
        truth.joins, truth.count, truth.sizeof, truth.bytes
    );
    match reported {
        Some(r) => TargetCheck {
            target,
            pass: Some(
                truth.joins > 0
                    && truth.count == truth.joins
                    && truth.bytes == truth.joins * truth.sizeof
                    && (r.allocations, r.bytes) == (truth.count, truth.bytes),
            ),
            detail: format!(
                "leakbpf: {} allocations, {} B (rank {}); {own}",
                r.allocations, r.bytes, r.rank
            ),
            ratio: None,
        },
        None => TargetCheck {
            target,
            pass: Some(false),
            detail: format!("no call site at {LEAK_FUNCTION} in the final report; {own}"),
            ratio: None,
        },
    }
}

fn markdown(results: &SoakResults) -> String {
    let mut md = format!(
        "Command: `{}` ({} min), {} UTC, leakbpf {}.\n\nMachine: {}.\n\n\
         Run: `{}`; the target used {} CPU-s/s. Warm-up: the first {} s.\n\n",
        results.command,
        results.minutes,
        results.date_utc,
        results
            .leakbpf_commit
            .as_deref()
            .unwrap_or("unknown commit"),
        results.machine.summary(),
        results.run,
        results.target_cpu_per_s.map_or("?".to_owned(), num),
        num(results.warmup_s),
    );
    for check in &results.checks {
        md.push_str(&format!(
            "- {} {}: {}\n",
            check.verdict(),
            check.target,
            check.detail
        ));
    }
    md.push_str(
        "\n| time s | agent RSS MB | report | call sites | outstanding MB |\n\
         |--:|--:|--:|--:|--:|\n",
    );
    let step = results.samples.len().div_ceil(TABLE_ROWS).max(1);
    let last = results.samples.len().saturating_sub(1);
    for (i, s) in results.samples.iter().enumerate() {
        if i % step == 0 || i == last {
            let cells: Vec<String> = row(s)
                .split_whitespace()
                // The time cell has its unit, which the header names.
                .map(|c| c.trim_end_matches('s').to_owned())
                .collect();
            md.push_str(&format!("| {} |\n", cells.join(" | ")));
        }
    }
    md
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flat_means_no_more_than_the_allowed_growth_after_the_warm_up() {
        // A climb during the warm-up does not count.
        let steady = [
            (0.0, 5.0),
            (10.0, 20.0),
            (30.0, 25.0),
            (40.0, 25.5),
            (50.0, 25.2),
        ];
        let flat = flatness(&steady, 30.0, 1.0).unwrap();
        assert_eq!((flat.first_half_max, flat.second_half_max), (25.0, 25.5));
        assert!(flat.pass);
        let growing = [(30.0, 25.0), (40.0, 27.0), (50.0, 30.0), (60.0, 33.0)];
        assert!(!flatness(&growing, 30.0, 1.0).unwrap().pass);
        assert!(flatness(&growing, 55.0, 1.0).is_none());
    }
}
