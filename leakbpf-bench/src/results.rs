//! The bench's results: samples summarised per tool and workload, ratios to the
//! baseline, and the targets checked (reported, never asserted).

use std::collections::BTreeMap;

use serde::Serialize;

use crate::{
    machine::Machine,
    scale::ScaleResult,
    session::Sample,
    stats::Summary,
    tools::Tool,
    workloads::{Build, Workload},
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
    /// How the workloads are compiled: each is measured on every build it lists.
    pub builds: Vec<BuildInfo>,
    pub workloads: Vec<WorkloadInfo>,
    pub tools: Vec<ToolResult>,
    /// Each tool's added cost per build, from the medians in `tools`.
    pub added_cost: Vec<AddedCost>,
    pub agent_scale: Option<ScaleResult>,
    /// Why the scale test has no result, when it has none.
    pub agent_scale_note: Option<String>,
    pub targets: Vec<TargetCheck>,
}

#[derive(Debug, Serialize)]
pub struct BuildInfo {
    pub name: String,
    pub description: String,
    /// Besides the program's optimisation level (-O2 for the compared workloads).
    pub flags: String,
}

#[derive(Debug, Serialize)]
pub struct WorkloadInfo {
    pub name: String,
    pub description: String,
    pub metric: String,
    pub unit: String,
    pub arguments: Vec<String>,
    /// The builds it is measured on.
    pub builds: Vec<String>,
}

#[derive(Debug, Serialize)]
pub struct ToolResult {
    pub tool: String,
    pub command: String,
    pub version: Option<String>,
    /// Why the tool was not run at all.
    pub not_run: Option<String>,
    /// By build name, then by workload name: only what the tool was run on.
    pub builds: BTreeMap<String, BTreeMap<String, WorkloadResult>>,
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
    /// leakbpf's unwind tables for the workload's process.
    pub unwind_tables: Option<UnwindSummary>,
    /// The errors of failed attempts, in run order (each run has up to
    /// [`ATTEMPTS`]).
    pub failed_attempts: Vec<String>,
    /// Runs whose every attempt failed; after [`MAX_FAILED_RUNS`] the tool's runs on
    /// that workload stop.
    pub failed_runs: usize,
}

/// leakbpf's figures for the tables of one workload's process, over its runs
/// (crate::unwind_tables).
#[derive(Debug, Serialize)]
pub struct UnwindSummary {
    /// Objects tabled for the process.
    pub objects: Summary,
    pub rows: Summary,
    /// From reading its mappings to the kernel knowing them, ms.
    pub build_ms: Summary,
    /// The unwind arrays' kernel memory, MiB.
    pub kernel_map_mib: Summary,
}

/// What a tool adds to the workloads of one build, over that build's baseline in the
/// same run: the tool's median minus the baseline's.
#[derive(Debug, Serialize)]
pub struct AddedCost {
    pub build: String,
    pub tool: String,
    /// malloc_free: ns per malloc/free pair.
    pub ns_per_pair: Option<f64>,
    /// malloc_free_deep, the same loop under a 64-deep stack: ns per pair.
    pub deep_stack_ns_per_pair: Option<f64>,
    /// chat: the slowdown, µs per message (1/throughput − 1/the baseline's).
    pub chat_us_per_msg: Option<f64>,
}

/// Attempts at one run before it counts as failed.
pub const ATTEMPTS: usize = 3;
/// Failed runs of one tool on one workload after which its remaining runs are skipped.
pub const MAX_FAILED_RUNS: usize = 2;

/// One tool on one workload of one build.
pub type Key = (Tool, Build, Workload);

/// What the runs produced, before summarising.
#[derive(Default)]
pub struct Collected {
    samples: BTreeMap<Key, Vec<Sample>>,
    errors: BTreeMap<Key, Vec<String>>,
    failed_runs: BTreeMap<Key, usize>,
}

impl Collected {
    pub fn add(&mut self, key: Key, sample: Sample) {
        self.samples.entry(key).or_default().push(sample);
    }

    pub fn attempt_failed(&mut self, key: Key, error: String) {
        self.errors.entry(key).or_default().push(error);
    }

    pub fn run_failed(&mut self, key: Key) {
        *self.failed_runs.entry(key).or_default() += 1;
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
    pub fn given_up(&self, key: Key) -> bool {
        self.failed_runs
            .get(&key)
            .is_some_and(|&n| n >= MAX_FAILED_RUNS)
    }

    /// One workload's results for one tool, if it was run there; `baseline` is the
    /// baseline's on the same build, if known.
    pub fn summarise(&self, key: Key, baseline: Option<&WorkloadResult>) -> Option<WorkloadResult> {
        let (metric, _) = key.2.metric();
        let samples = self.samples.get(&key);
        let errors = self.errors.get(&key);
        let failed_runs = self.failed_runs.get(&key).copied().unwrap_or(0);
        if samples.is_none() && errors.is_none() && failed_runs == 0 {
            return None;
        }
        let samples = samples.map_or(&[][..], Vec::as_slice);
        let of = |f: &dyn Fn(&Sample) -> Option<f64>| {
            Summary::of(&samples.iter().filter_map(f).collect::<Vec<_>>())
        };
        let value = of(&|s| s.results.get(metric).copied());
        let target_cpu_per_s = of(&|s| Some(s.target_cpu_per_s));
        let median = |s: &Option<Summary>| s.as_ref().map(|s| s.median);
        let base_value = baseline.and_then(|b| median(&b.value));
        let base_cpu = baseline.and_then(|b| median(&b.target_cpu_per_s));
        let unwind = |f: &dyn Fn(&crate::unwind_tables::UnwindTables) -> f64| {
            of(&|s| s.unwind_tables.as_ref().map(f))
        };
        let unwind_tables = match (
            unwind(&|u| u.objects as f64),
            unwind(&|u| u.rows as f64),
            unwind(&|u| u.build_ms),
            unwind(&|u| u.kernel_map_mib),
        ) {
            (Some(objects), Some(rows), Some(build_ms), Some(kernel_map_mib)) => {
                Some(UnwindSummary {
                    objects,
                    rows,
                    build_ms,
                    kernel_map_mib,
                })
            }
            _ => None,
        };
        Some(WorkloadResult {
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
            unwind_tables,
            failed_attempts: errors.cloned().unwrap_or_default(),
            failed_runs,
        })
    }
}

impl ToolResult {
    pub fn result(&self, build: Build, workload: Workload) -> Option<&WorkloadResult> {
        self.builds.get(build.name())?.get(workload.name())
    }

    pub fn median(&self, build: Build, workload: Workload) -> Option<f64> {
        self.result(build, workload)
            .and_then(|w| w.value.as_ref())
            .map(|v| v.median)
    }
}

/// Every tool's added cost on every build, where it and the baseline have medians.
pub fn added_costs(tools: &[ToolResult]) -> Vec<AddedCost> {
    let Some(baseline) = tools.iter().find(|t| t.tool == Tool::Baseline.name()) else {
        return Vec::new();
    };
    let mut costs = Vec::new();
    for build in Build::ALL {
        for tool in tools.iter().filter(|t| t.tool != baseline.tool) {
            let minus = |w: Workload, f: &dyn Fn(f64, f64) -> f64| {
                tool.median(build, w)
                    .zip(baseline.median(build, w))
                    .map(|(t, b)| f(t, b))
            };
            let cost = AddedCost {
                build: build.name().to_owned(),
                tool: tool.tool.clone(),
                ns_per_pair: minus(Workload::MallocFree, &|t, b| t - b),
                deep_stack_ns_per_pair: minus(Workload::MallocFreeDeep, &|t, b| t - b),
                chat_us_per_msg: minus(Workload::Chat, &|t, b| 1e6 / t - 1e6 / b),
            };
            let any = [
                cost.ns_per_pair,
                cost.deep_stack_ns_per_pair,
                cost.chat_us_per_msg,
            ]
            .iter()
            .any(Option::is_some);
            if any {
                costs.push(cost);
            }
        }
    }
    costs
}

/// One target of the issue: PASS, MISS, or not measurable in this run.
#[derive(Debug, Serialize)]
pub struct TargetCheck {
    pub target: String,
    pub pass: Option<bool>,
    pub detail: String,
    /// For a target on a ratio of two figures, that ratio (its limit is in `target`).
    pub ratio: Option<f64>,
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

/// A figure of one tool on one build, for a target.
struct Figure<'a> {
    who: &'a str,
    build: Build,
    value: Option<f64>,
}

/// `subject / reference <= limit` (`< limit` when `strict`), in `unit`.
fn ratio_check(
    target: &str,
    subject: Figure,
    reference: Figure,
    limit: f64,
    strict: bool,
    unit: &str,
) -> TargetCheck {
    let name = |f: &Figure| format!("{} ({})", f.who, f.build.name());
    match (subject.value, reference.value) {
        (Some(s), Some(r)) => {
            let ratio = s / r;
            TargetCheck {
                target: target.to_owned(),
                pass: Some(if strict {
                    ratio < limit
                } else {
                    ratio <= limit
                }),
                detail: format!(
                    // Three decimals: a ratio just over its limit must not print as it.
                    "{} {} {unit} vs {} {} {unit}: ratio {ratio:.3} (limit {limit})",
                    name(&subject),
                    num(s),
                    name(&reference),
                    num(r),
                ),
                ratio: Some(ratio),
            }
        }
        _ => TargetCheck {
            target: target.to_owned(),
            pass: None,
            detail: format!(
                "not measured: {} or {} has no result",
                name(&subject),
                name(&reference)
            ),
            ratio: None,
        },
    }
}

/// The figure for building the tables of a process, and for their kernel memory.
const TABLES_BUILT_MS: f64 = 1000.0;
const TABLES_KERNEL_MIB: f64 = 64.0;

/// The targets, from the tools' results, their added costs and the scale test.
pub fn check_targets(
    tools: &[ToolResult],
    added: &[AddedCost],
    scale: Option<&ScaleResult>,
) -> Vec<TargetCheck> {
    let cost = |tool: Tool, build: Build| {
        added
            .iter()
            .find(|c| c.tool == tool.name() && c.build == build.name())
    };
    let per_pair = |who: Tool, build: Build| Figure {
        who: who.name(),
        build,
        value: cost(who, build).and_then(|c| c.ns_per_pair),
    };
    let chat = |who: Tool, build: Build| Figure {
        who: who.name(),
        build,
        value: cost(who, build).and_then(|c| c.chat_us_per_msg),
    };
    let (fp, nofp) = (Build::FramePointers, Build::NoFramePointers);
    let leakbpf = Tool::Leakbpf;
    let mut checks = vec![
        ratio_check(
            "fp build, malloc/free: leakbpf's added cost per pair <= 1.25 x the floor's",
            per_pair(leakbpf, fp),
            per_pair(Tool::Floor, fp),
            1.25,
            false,
            "ns",
        ),
        ratio_check(
            "fp build, malloc/free: leakbpf's added cost per pair <= 1/5 of memleak's",
            per_pair(leakbpf, fp),
            per_pair(Tool::Memleak, fp),
            0.2,
            false,
            "ns",
        ),
        ratio_check(
            "fp build, chat: leakbpf's slowdown (added time per message) <= 1/5 of memleak's",
            chat(leakbpf, fp),
            chat(Tool::Memleak, fp),
            0.2,
            false,
            "us/msg",
        ),
        ratio_check(
            "fp build, chat: leakbpf's slowdown (added time per message) below valgrind's",
            chat(leakbpf, fp),
            chat(Tool::Valgrind, fp),
            1.0,
            true,
            "us/msg",
        ),
        ratio_check(
            "malloc/free: leakbpf's added cost per pair on the nofp build <= 1.3 x on the fp \
             build",
            per_pair(leakbpf, nofp),
            per_pair(leakbpf, fp),
            1.3,
            false,
            "ns",
        ),
        ratio_check(
            "nofp build, chat: leakbpf's slowdown (added time per message) <= 1/5 of \
             memleak's",
            chat(leakbpf, nofp),
            chat(Tool::Memleak, nofp),
            0.2,
            false,
            "us/msg",
        ),
    ];
    checks.extend(table_checks(tools));
    checks.extend(scale_checks(scale));
    checks
}

/// The figures for leakbpf's unwind tables: the worst of every run on the chat
/// server without frame pointers, the workload that maps the most objects.
fn table_checks(tools: &[ToolResult]) -> [TargetCheck; 2] {
    let tables = tools
        .iter()
        .find(|t| t.tool == Tool::Leakbpf.name())
        .and_then(|t| t.result(Build::NoFramePointers, Workload::Chat))
        .and_then(|r| r.unwind_tables.as_ref());
    let check = |target: &str, f: &dyn Fn(&UnwindSummary) -> (bool, String)| match tables {
        Some(tables) => {
            let (pass, detail) = f(tables);
            TargetCheck {
                target: target.to_owned(),
                pass: Some(pass),
                detail,
                ratio: None,
            }
        }
        None => TargetCheck {
            target: target.to_owned(),
            pass: None,
            detail: "not measured: leakbpf has no unwind-table figures for chat (nofp)".to_owned(),
            ratio: None,
        },
    };
    [
        check(
            "agent: unwind tables for the chat server's objects built < 1 s",
            &|t| {
                (
                    t.build_ms.max < TABLES_BUILT_MS,
                    format!(
                        "{} ms at most, for {:.0} objects, {} rows",
                        num(t.build_ms.max),
                        t.objects.max,
                        num(t.rows.max)
                    ),
                )
            },
        ),
        check(
            "agent: the unwind tables' kernel map memory < 64 MiB",
            &|t| {
                (
                    t.kernel_map_mib.max < TABLES_KERNEL_MIB,
                    format!("{} MiB", num(t.kernel_map_mib.max)),
                )
            },
        ),
    ]
}

fn scale_checks(scale: Option<&ScaleResult>) -> [TargetCheck; 3] {
    let scale_check = |target: &str, f: &dyn Fn(&ScaleResult) -> (bool, String)| match scale {
        Some(s) => {
            let (pass, detail) = f(s);
            TargetCheck {
                target: target.to_owned(),
                pass: Some(pass),
                detail,
                ratio: None,
            }
        }
        None => TargetCheck {
            target: target.to_owned(),
            pass: None,
            detail: "the scale test did not run".to_owned(),
            ratio: None,
        },
    };
    [
        scale_check(
            "agent: a drain-and-report cycle at 1,000,000 allocations / 10,000 stacks < 1 s CPU",
            &|s| {
                let worst = s.max_cycle_cpu_s();
                (
                    worst < 1.0,
                    format!("{:.3} s (worst of {})", worst, s.cycle_cpu_s.len()),
                )
            },
        ),
        scale_check("agent: peak RSS at 1,000,000 allocations < 100 MB", &|s| {
            (s.peak_rss_mb < 100.0, format!("{:.1} MB", s.peak_rss_mb))
        }),
        scale_check(
            "agent: tracks 1,000,000 allocations without a drop (--max-allocs 1100000)",
            &|s| {
                (
                    s.dropped_allocations == 0
                        && s.outstanding_allocations == u64::from(s.allocations),
                    format!(
                        "outstanding_allocations {}, dropped_allocations {}",
                        s.outstanding_allocations, s.dropped_allocations
                    ),
                )
            },
        ),
    ]
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
    use super::*;

    /// A tool's result with these medians of (build, workload).
    fn tool(tool: Tool, medians: &[(Build, Workload, f64)]) -> ToolResult {
        let mut builds: BTreeMap<String, BTreeMap<String, WorkloadResult>> = BTreeMap::new();
        for &(build, workload, median) in medians {
            builds.entry(build.name().to_owned()).or_default().insert(
                workload.name().to_owned(),
                WorkloadResult {
                    value: Summary::of(&[median]),
                    ..WorkloadResult::default()
                },
            );
        }
        ToolResult {
            tool: tool.name().to_owned(),
            command: String::new(),
            version: None,
            not_run: None,
            builds,
        }
    }

    fn check<'a>(checks: &'a [TargetCheck], starts: &str) -> &'a TargetCheck {
        checks
            .iter()
            .find(|c| c.target.starts_with(starts))
            .unwrap_or_else(|| panic!("no target {starts:?}"))
    }

    #[test]
    fn each_build_is_against_its_own_baseline_and_the_builds_are_compared() {
        let (fp, nofp) = (Build::FramePointers, Build::NoFramePointers);
        let (pairs, deep, chat) = (
            Workload::MallocFree,
            Workload::MallocFreeDeep,
            Workload::Chat,
        );
        let tools = [
            tool(
                Tool::Baseline,
                &[
                    (fp, pairs, 6.0),
                    (nofp, pairs, 5.0),
                    (nofp, deep, 5.0),
                    (fp, chat, 400_000.0),
                    (nofp, chat, 500_000.0),
                ],
            ),
            tool(
                Tool::Leakbpf,
                &[
                    (fp, pairs, 1006.0),
                    (nofp, pairs, 1305.0),
                    (nofp, deep, 2005.0),
                    (fp, chat, 50_000.0),
                    (nofp, chat, 62_500.0),
                ],
            ),
            tool(
                Tool::Memleak,
                &[(nofp, pairs, 10_005.0), (nofp, chat, 10_000.0)],
            ),
        ];
        let added = added_costs(&tools);
        let leakbpf_nofp = added
            .iter()
            .find(|c| c.tool == "leakbpf" && c.build == "nofp")
            .unwrap();
        assert_eq!(leakbpf_nofp.ns_per_pair, Some(1300.0));
        assert_eq!(leakbpf_nofp.deep_stack_ns_per_pair, Some(2000.0));
        // 1/62,500 − 1/500,000 s = 16 − 2 µs.
        assert!((leakbpf_nofp.chat_us_per_msg.unwrap() - 14.0).abs() < 1e-9);
        // Memleak ran on nofp only: it has no fp line.
        assert!(!added.iter().any(|c| c.tool == "memleak" && c.build == "fp"));

        let checks = check_targets(&tools, &added, None);
        let builds = check(
            &checks,
            "malloc/free: leakbpf's added cost per pair on the nofp",
        );
        assert_eq!((builds.pass, builds.ratio), (Some(true), Some(1.3)));
        // 14 µs vs 1/10,000 − 1/500,000 s = 98 µs: 1/7.
        let peers = check(&checks, "nofp build, chat: leakbpf's slowdown");
        assert_eq!(peers.pass, Some(true));
        assert!((peers.ratio.unwrap() - 1.0 / 7.0).abs() < 1e-9);
        // No memleak on fp: not measured, neither passed nor missed.
        let fp_peer = check(
            &checks,
            "fp build, chat: leakbpf's slowdown (added time per message) <= 1/5",
        );
        assert_eq!((fp_peer.pass, fp_peer.ratio), (None, None));
    }

    #[test]
    fn a_ratio_over_its_limit_misses() {
        let (fp, nofp) = (Build::FramePointers, Build::NoFramePointers);
        let pairs = Workload::MallocFree;
        let tools = [
            tool(Tool::Baseline, &[(fp, pairs, 5.0), (nofp, pairs, 5.0)]),
            tool(Tool::Leakbpf, &[(fp, pairs, 1005.0), (nofp, pairs, 1405.0)]),
        ];
        let checks = check_targets(&tools, &added_costs(&tools), None);
        let builds = check(
            &checks,
            "malloc/free: leakbpf's added cost per pair on the nofp",
        );
        assert_eq!((builds.pass, builds.ratio), (Some(false), Some(1.4)));
    }

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
