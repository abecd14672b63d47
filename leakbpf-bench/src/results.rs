//! The bench's results: samples summarised per tool and workload, ratios to the
//! baseline, and the targets checked (reported, never asserted).

use std::collections::BTreeMap;

use serde::Serialize;

use crate::{
    machine::Machine, scale::ScaleResult, session::Sample, stats::Summary, tools::Tool,
    workloads::Workload,
};

#[derive(Debug, Serialize)]
pub struct Results {
    pub schema_version: u32,
    pub command: String,
    pub date_utc: String,
    pub quick: bool,
    pub repetitions: usize,
    pub machine: Machine,
    pub leakbpf_commit: Option<String>,
    pub offered_load_msgs_per_s: f64,
    /// CPU seconds per second used by everything but the target and the tool during the
    /// timed loops, over every run: how quiet the machine was.
    pub other_cpu_per_s: Option<Summary>,
    pub workloads: Vec<WorkloadInfo>,
    pub tools: Vec<ToolResult>,
    pub agent_scale: Option<ScaleResult>,
    /// Why the scale test has no result, when it has none.
    pub agent_scale_note: Option<String>,
    pub targets: Vec<TargetCheck>,
}

#[derive(Debug, Serialize)]
pub struct WorkloadInfo {
    pub name: String,
    pub description: String,
    pub metric: String,
    pub unit: String,
    pub arguments: Vec<String>,
}

#[derive(Debug, Serialize)]
pub struct ToolResult {
    pub tool: String,
    pub command: String,
    pub version: Option<String>,
    /// Why the tool was not run at all.
    pub not_run: Option<String>,
    pub workloads: BTreeMap<String, WorkloadResult>,
}

#[derive(Debug, Default, Serialize)]
pub struct WorkloadResult {
    pub metric: String,
    pub value: Option<Summary>,
    /// median / baseline's median.
    pub ratio_to_baseline: Option<f64>,
    /// The workload's CPU seconds per second over its timed loop.
    pub target_cpu_per_s: Option<Summary>,
    /// median target_cpu_per_s − baseline's median.
    pub extra_target_cpu_per_s: Option<f64>,
    /// The tool's CPU seconds from its start to the end of the timed loop.
    pub agent_cpu_s: Option<Summary>,
    /// The tool's CPU seconds per second during the timed loop.
    pub agent_loop_cpu_per_s: Option<Summary>,
    /// The tool's peak RSS (VmHWM), MB.
    pub agent_peak_rss_mb: Option<Summary>,
    /// The errors of failed attempts, in run order (each run has up to
    /// [`ATTEMPTS`]).
    pub failed_attempts: Vec<String>,
    /// Runs whose every attempt failed; after [`MAX_FAILED_RUNS`] the tool's runs on
    /// that workload stop.
    pub failed_runs: usize,
}

/// Attempts at one run before it counts as failed.
pub const ATTEMPTS: usize = 3;
/// Failed runs of one tool on one workload after which its remaining runs are skipped.
pub const MAX_FAILED_RUNS: usize = 2;

/// What the runs produced, before summarising.
#[derive(Default)]
pub struct Collected {
    pub samples: BTreeMap<(usize, usize), Vec<Sample>>,
    pub errors: BTreeMap<(usize, usize), Vec<String>>,
    pub failed_runs: BTreeMap<(usize, usize), usize>,
}

fn key(tool: Tool, workload: Workload) -> (usize, usize) {
    let t = Tool::ALL.iter().position(|&x| x == tool).unwrap_or(0);
    let w = Workload::ALL
        .iter()
        .position(|&x| x == workload)
        .unwrap_or(0);
    (t, w)
}

impl Collected {
    pub fn add(&mut self, tool: Tool, workload: Workload, sample: Sample) {
        self.samples
            .entry(key(tool, workload))
            .or_default()
            .push(sample);
    }

    pub fn attempt_failed(&mut self, tool: Tool, workload: Workload, error: String) {
        self.errors
            .entry(key(tool, workload))
            .or_default()
            .push(error);
    }

    pub fn run_failed(&mut self, tool: Tool, workload: Workload) {
        *self.failed_runs.entry(key(tool, workload)).or_default() += 1;
    }

    /// [`Sample::other_cpu_per_s`] of every run.
    pub fn other_cpu(&self) -> Option<Summary> {
        let all: Vec<f64> = self
            .samples
            .values()
            .flatten()
            .map(|s| s.other_cpu_per_s)
            .collect();
        Summary::of(&all)
    }

    /// Whether the tool failed on the workload often enough to give up on it.
    pub fn given_up(&self, tool: Tool, workload: Workload) -> bool {
        self.failed_runs
            .get(&key(tool, workload))
            .is_some_and(|&n| n >= MAX_FAILED_RUNS)
    }

    /// One workload's results for one tool; `baseline` is the baseline's, if known.
    pub fn summarise(
        &self,
        tool: Tool,
        workload: Workload,
        baseline: Option<&WorkloadResult>,
    ) -> WorkloadResult {
        let (metric, _) = workload.metric();
        let samples = self
            .samples
            .get(&key(tool, workload))
            .map_or(&[][..], Vec::as_slice);
        let of = |f: &dyn Fn(&Sample) -> Option<f64>| {
            Summary::of(&samples.iter().filter_map(f).collect::<Vec<_>>())
        };
        let value = of(&|s| s.results.get(metric).copied());
        let target_cpu_per_s = of(&|s| Some(s.target_cpu_per_s));
        let median = |s: &Option<Summary>| s.as_ref().map(|s| s.median);
        let base_value = baseline.and_then(|b| median(&b.value));
        let base_cpu = baseline.and_then(|b| median(&b.target_cpu_per_s));
        WorkloadResult {
            metric: metric.to_owned(),
            ratio_to_baseline: median(&value).zip(base_value).map(|(v, b)| v / b),
            extra_target_cpu_per_s: median(&target_cpu_per_s).zip(base_cpu).map(|(v, b)| v - b),
            value,
            target_cpu_per_s,
            agent_cpu_s: of(&|s| s.agent.map(|a| a.cpu_s)),
            agent_loop_cpu_per_s: of(&|s| {
                let loop_s = s.results.get("seconds").copied()?;
                s.agent.map(|a| a.loop_cpu_s / loop_s)
            }),
            agent_peak_rss_mb: of(&|s| s.agent.map(|a| a.peak_rss_mb)),
            failed_attempts: self
                .errors
                .get(&key(tool, workload))
                .cloned()
                .unwrap_or_default(),
            failed_runs: self
                .failed_runs
                .get(&key(tool, workload))
                .copied()
                .unwrap_or(0),
        }
    }
}

impl ToolResult {
    pub fn median(&self, workload: Workload) -> Option<f64> {
        self.workloads
            .get(workload.name())
            .and_then(|w| w.value.as_ref())
            .map(|v| v.median)
    }
}

/// One target of the issue: PASS, MISS, or not measurable in this run.
#[derive(Debug, Serialize)]
pub struct TargetCheck {
    pub target: String,
    pub pass: Option<bool>,
    pub detail: String,
}

impl TargetCheck {
    pub fn verdict(&self) -> &'static str {
        match self.pass {
            Some(true) => "PASS",
            Some(false) => "MISS",
            None => "N/A",
        }
    }
}

/// The targets, from the tools' results and the scale test.
pub fn check_targets(tools: &[ToolResult], scale: Option<&ScaleResult>) -> Vec<TargetCheck> {
    let find = |tool: Tool| tools.iter().find(|t| t.tool == tool.name());
    let median = |tool: Tool, workload: Workload| find(tool).and_then(|t| t.median(workload));
    // Added cost per pair, ns: tool − baseline.
    let added_ns = |tool: Tool| {
        median(tool, Workload::MallocFree)
            .zip(median(Tool::Baseline, Workload::MallocFree))
            .map(|(t, b)| t - b)
    };
    // Added time per chat message, µs: 1/throughput − 1/baseline throughput.
    let added_us = |tool: Tool| {
        median(tool, Workload::Chat)
            .zip(median(Tool::Baseline, Workload::Chat))
            .map(|(t, b)| 1e6 / t - 1e6 / b)
    };
    let compare = |target: &str,
                   leak: Option<f64>,
                   peer: Option<f64>,
                   factor: f64,
                   strict: bool,
                   peer_name: &str,
                   unit: &str| {
        match (leak, peer) {
            (Some(l), Some(p)) => TargetCheck {
                target: target.to_owned(),
                pass: Some(if strict {
                    l < p * factor
                } else {
                    l <= p * factor
                }),
                detail: format!(
                    "leakbpf {} {unit} vs {peer_name} {} {unit} (limit {} {unit})",
                    num(l),
                    num(p),
                    num(p * factor)
                ),
            },
            _ => TargetCheck {
                target: target.to_owned(),
                pass: None,
                detail: format!("not measured: leakbpf or {peer_name} has no result"),
            },
        }
    };
    let mut checks = vec![
        compare(
            "malloc/free: leakbpf's added cost per pair <= 1.25 x the floor's",
            added_ns(Tool::Leakbpf),
            added_ns(Tool::Floor),
            1.25,
            false,
            "floor",
            "ns",
        ),
        compare(
            "malloc/free: leakbpf's added cost per pair <= 1/5 of memleak's",
            added_ns(Tool::Leakbpf),
            added_ns(Tool::Memleak),
            0.2,
            false,
            "memleak",
            "ns",
        ),
        compare(
            "chat: leakbpf's slowdown (added time per message) <= 1/5 of memleak's",
            added_us(Tool::Leakbpf),
            added_us(Tool::Memleak),
            0.2,
            false,
            "memleak",
            "us/msg",
        ),
        compare(
            "chat: leakbpf's slowdown (added time per message) below valgrind's",
            added_us(Tool::Leakbpf),
            added_us(Tool::Valgrind),
            1.0,
            true,
            "valgrind",
            "us/msg",
        ),
    ];
    let scale_check = |target: &str, f: &dyn Fn(&ScaleResult) -> (bool, String)| match scale {
        Some(s) => {
            let (pass, detail) = f(s);
            TargetCheck {
                target: target.to_owned(),
                pass: Some(pass),
                detail,
            }
        }
        None => TargetCheck {
            target: target.to_owned(),
            pass: None,
            detail: "the scale test did not run".to_owned(),
        },
    };
    checks.push(scale_check(
        "agent: a drain-and-report cycle at 1,000,000 allocations / 10,000 stacks < 1 s CPU",
        &|s| {
            let worst = s.max_cycle_cpu_s();
            (
                worst < 1.0,
                format!("{:.3} s (worst of {})", worst, s.cycle_cpu_s.len()),
            )
        },
    ));
    checks.push(scale_check(
        "agent: peak RSS at 1,000,000 allocations < 100 MB",
        &|s| (s.peak_rss_mb < 100.0, format!("{:.1} MB", s.peak_rss_mb)),
    ));
    checks.push(scale_check(
        "agent: tracks 1,000,000 allocations without a drop (--max-allocs 1100000)",
        &|s| {
            (
                s.dropped_allocations == 0 && s.outstanding_allocations == u64::from(s.allocations),
                format!(
                    "outstanding_allocations {}, dropped_allocations {}",
                    s.outstanding_allocations, s.dropped_allocations
                ),
            )
        },
    ));
    checks
}

/// A number with sensible precision: 5.43, 54.3, 543, 5,430.
pub fn num(x: f64) -> String {
    if !x.is_finite() {
        return "n/a".to_owned();
    }
    let abs = x.abs();
    if abs >= 1000.0 {
        let rounded = x.round() as i64;
        let digits = rounded.unsigned_abs().to_string();
        let mut grouped = String::new();
        for (i, c) in digits.chars().enumerate() {
            if i > 0 && (digits.len() - i).is_multiple_of(3) {
                grouped.push(',');
            }
            grouped.push(c);
        }
        if rounded < 0 {
            grouped.insert(0, '-');
        }
        grouped
    } else if abs >= 100.0 {
        format!("{x:.0}")
    } else if abs >= 10.0 {
        format!("{x:.1}")
    } else if abs >= 1.0 {
        format!("{x:.2}")
    } else {
        format!("{x:.3}")
    }
}

#[cfg(test)]
mod tests {
    use super::num;

    #[test]
    fn numbers_read_well() {
        assert_eq!(num(5.432), "5.43");
        assert_eq!(num(54.32), "54.3");
        assert_eq!(num(543.2), "543");
        assert_eq!(num(3_348_364.6), "3,348,365");
        assert_eq!(num(-1234.0), "-1,234");
        assert_eq!(num(0.0123), "0.012");
    }
}
