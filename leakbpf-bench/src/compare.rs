//! `cargo xtask bench [compare]`: leakbpf against no tool, its floor (the same probes with
//! empty programs) and peer tools, on the same workloads in one invocation, interleaved.
//! See docs/benchmarks.md.

use std::{
    collections::BTreeMap,
    fs,
    path::{Path, PathBuf},
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context, Result};
use clap::Args;
use devutil::header;

use crate::{
    machine::Machine,
    provenance, report,
    results::{self, BuildInfo, Collected, Results, ToolResult, WorkloadInfo},
    scale, session,
    tools::{Tool, Toolbox},
    workloads::{self, Build, Durations, Workload},
};

/// Options of the comparison.
#[derive(Args, Debug)]
pub struct CompareArgs {
    /// A smoke run (about a minute, most of it leakbpf detaching): 1 repetition, short
    /// loops, only baseline, leakbpf and floor, no scale test
    #[arg(long, visible_alias = "smoke")]
    pub quick: bool,
    /// Repetitions of every run (5 by default, 1 with --quick)
    #[arg(long, visible_alias = "repetitions", value_parser = clap::value_parser!(u32).range(1..))]
    pub reps: Option<u32>,
    /// Only these tools, comma-separated (baseline is always run): baseline, leakbpf,
    /// floor, memleak, bpftrace, heaptrack, valgrind
    #[arg(long, value_delimiter = ',')]
    pub tools: Vec<String>,
    /// Skip the agent's scale test (1,000,000 allocations over 10,000 stacks)
    #[arg(long)]
    pub no_scale: bool,
    /// Offered load of the production view, in chat messages per second
    #[arg(long, default_value_t = 20_000.0)]
    pub rate: f64,
}

/// Before another attempt at a failed run: a peer's attach can fail while another
/// tracer holds a uprobe at the same place (BCC, see docs/benchmarks.md).
const RETRY_PAUSE: Duration = Duration::from_secs(2);

const FULL: Durations = Durations {
    malloc_free: 1.0,
    mixed: 1.0,
    chat: 2.0,
    fixed_load: 3.0,
    rate: 0.0,
};
const QUICK: Durations = Durations {
    malloc_free: 0.2,
    mixed: 0.2,
    chat: 0.3,
    fixed_load: 0.5,
    rate: 0.0,
};

/// The comparison of `agent` and the peers. Results go to target/bench and, for a full
/// run of every tool, into docs/benchmarks.md.
pub fn run(root: &Path, agent: &Path, args: &CompareArgs) -> Result<()> {
    let started = Instant::now();
    let tools = chosen_tools(args)?;
    let reps = args.reps.unwrap_or(if args.quick { 1 } else { 5 }) as usize;
    let durations = Durations {
        rate: args.rate,
        ..if args.quick { QUICK } else { FULL }
    };
    let out = devutil::target_dir(root).join("bench");
    let runs = out.join("runs");
    if runs.exists() {
        fs::remove_dir_all(&runs).with_context(|| format!("cannot clear {}", runs.display()))?;
    }

    let binaries = workloads::build(root, &out.join("bin"))?;
    let toolbox = Toolbox {
        agent: agent.to_owned(),
        bpftrace_script: root.join("leakbpf-bench/peers/leaks.bt"),
        memleak_shim: root.join("leakbpf-bench/peers/memleak_shim.py"),
    };
    let not_run: BTreeMap<&str, String> = tools
        .iter()
        .filter_map(|&t| toolbox.unavailable(t).map(|why| (t.name(), why)))
        .collect();
    for (tool, why) in &not_run {
        println!("{tool}: not run: {why}");
    }

    let mut collected = Collected::default();
    for rep in 0..reps {
        // The builds of a workload back to back: their difference is the point, so they
        // share the machine's state as closely as the interleaving allows.
        for workload in Workload::ALL {
            for &build in workload.builds() {
                header(&format!(
                    "repetition {}/{reps}: {} ({})",
                    rep + 1,
                    workload.name(),
                    build.name()
                ));
                for &tool in &tools {
                    let key = (tool, build, workload);
                    if !planned(tool, build, workload)
                        || not_run.contains_key(tool.name())
                        || collected.given_up(key)
                    {
                        continue;
                    }
                    let dir = runs.join(format!(
                        "{}-{}-{}-{}",
                        rep + 1,
                        build.name(),
                        workload.name(),
                        tool.name()
                    ));
                    let plan = Run {
                        key,
                        durations: &durations,
                        dir,
                    };
                    plan.run(&toolbox, &binaries, &mut collected);
                }
            }
        }
    }

    let (agent_scale, agent_scale_note) = if args.quick || args.no_scale {
        (None, Some("skipped (--quick or --no-scale)".to_owned()))
    } else {
        scale_test(agent, &binaries, &runs.join("scale"))
    };

    let tool_results = summarise(&tools, &collected, &not_run, &toolbox);
    let added_cost = results::added_costs(&tool_results);
    let targets = results::check_targets(&tool_results, &added_cost, agent_scale.as_ref());
    let results = Results {
        schema_version: 2,
        command: provenance::command_line(),
        date_utc: provenance::date_utc(),
        quick: args.quick,
        repetitions: reps,
        machine: Machine::detect(),
        leakbpf_commit: provenance::commit(root),
        offered_load_msgs_per_s: durations.rate,
        other_cpu_per_s: collected.other_cpu(),
        builds: Build::ALL
            .iter()
            .map(|b| BuildInfo {
                name: b.name().to_owned(),
                description: b.description().to_owned(),
                flags: b.flags(),
            })
            .collect(),
        workloads: workload_infos(&durations),
        tools: tool_results,
        added_cost,
        agent_scale,
        agent_scale_note,
        targets,
    };
    header("results");
    // Only a full run of every tool stands for the project in the docs.
    let docs = !args.quick && args.tools.is_empty() && !args.no_scale;
    report::publish(root, &out, &results, docs)?;
    println!("bench finished in {:.0} s", started.elapsed().as_secs_f64());
    Ok(())
}

/// The scale test's result, or why there is none.
fn scale_test(
    agent: &Path,
    binaries: &workloads::Binaries,
    dir: &Path,
) -> (Option<scale::ScaleResult>, Option<String>) {
    match scale::run(agent, binaries, dir) {
        Ok(result) => (Some(result), None),
        Err(e) => {
            let error = format!("{e:#}").replace('\n', " ");
            println!("agent scale test FAILED: {error}");
            (None, Some(format!("failed: {error}")))
        }
    }
}

fn workload_infos(durations: &Durations) -> Vec<WorkloadInfo> {
    Workload::ALL
        .iter()
        .map(|&w| {
            let (metric, unit) = w.metric();
            WorkloadInfo {
                name: w.name().to_owned(),
                description: w.description().to_owned(),
                metric: metric.to_owned(),
                unit: unit.to_owned(),
                arguments: workloads::arguments(w, durations),
                builds: w.builds().iter().map(|b| b.name().to_owned()).collect(),
            }
        })
        .collect()
}

/// Whether `tool` is run on `workload` built as `build`. Without frame pointers the peers
/// are measured only where a target compares leakbpf with them (malloc_free, chat): their
/// cost there is what they cost on such programs, though their stacks stop at the first
/// frame without a frame pointer; every peer on every workload of both builds would double
/// the full run.
fn planned(tool: Tool, build: Build, workload: Workload) -> bool {
    build == Build::FramePointers
        || matches!(tool, Tool::Baseline | Tool::Leakbpf | Tool::Floor)
        || matches!(workload, Workload::MallocFree | Workload::Chat)
}

/// One run of the interleaving: a tool on a workload of a build, its files in `dir`.
struct Run<'a> {
    key: results::Key,
    durations: &'a Durations,
    dir: PathBuf,
}

impl Run<'_> {
    /// Measures, with up to [`results::ATTEMPTS`] attempts, into `collected`.
    fn run(&self, toolbox: &Toolbox, binaries: &workloads::Binaries, collected: &mut Collected) {
        let (tool, build, workload) = self.key;
        let (program, args) = binaries.command(build, workload, self.durations);
        let loop_s = self.durations.of(workload);
        for attempt in 1..=results::ATTEMPTS {
            let dir = match attempt {
                1 => self.dir.clone(),
                n => self.dir.with_extension(format!("attempt{n}")),
            };
            match session::measure(toolbox, tool, &program, &args, loop_s, &dir) {
                Ok(sample) => {
                    progress(tool, workload, &sample);
                    collected.add(self.key, sample);
                    return;
                }
                Err(e) => {
                    let error = format!("{e:#}").replace('\n', " ");
                    println!("  {:<10} attempt {attempt} FAILED: {error}", tool.name());
                    collected.attempt_failed(self.key, error);
                    if attempt < results::ATTEMPTS {
                        thread::sleep(RETRY_PAUSE);
                    }
                }
            }
        }
        collected.run_failed(self.key);
    }
}

fn chosen_tools(args: &CompareArgs) -> Result<Vec<Tool>> {
    let all: &[Tool] = if args.quick { &Tool::QUICK } else { &Tool::ALL };
    if args.tools.is_empty() {
        return Ok(all.to_vec());
    }
    let mut chosen = vec![Tool::Baseline];
    for name in &args.tools {
        let tool = Tool::parse(name.trim()).with_context(|| {
            let names: Vec<&str> = Tool::ALL.iter().map(|t| t.name()).collect();
            format!("unknown tool {name:?}: one of {}", names.join(", "))
        })?;
        if !chosen.contains(&tool) {
            chosen.push(tool);
        }
    }
    // In the fixed order, so the interleaving and the table read the same every time.
    Ok(Tool::ALL
        .into_iter()
        .filter(|t| chosen.contains(t))
        .collect())
}

fn progress(tool: Tool, workload: Workload, sample: &session::Sample) {
    let (metric, _) = workload.metric();
    let value = sample.results.get(metric).copied().unwrap_or(f64::NAN);
    let mut line = format!(
        "  {:<10} {metric} {:>12}  target {:.3} CPU-s/s",
        tool.name(),
        results::num(value),
        sample.target_cpu_per_s
    );
    if let Some(agent) = sample.agent {
        line.push_str(&format!(
            "  agent {:.2} CPU-s, {:.1} MB",
            agent.cpu_s, agent.peak_rss_mb
        ));
    }
    if let Some(tables) = sample.unwind_tables {
        line.push_str(&format!(
            "  tables: {} objects, {} rows in {} ms, {} MiB",
            tables.objects, tables.rows, tables.build_ms, tables.kernel_map_mib
        ));
    }
    println!("{line}");
}

fn summarise(
    tools: &[Tool],
    collected: &Collected,
    not_run: &BTreeMap<&str, String>,
    toolbox: &Toolbox,
) -> Vec<ToolResult> {
    let cases: Vec<(Build, Workload)> = Workload::ALL
        .iter()
        .flat_map(|&w| w.builds().iter().map(move |&b| (b, w)))
        .collect();
    let baselines: BTreeMap<(Build, Workload), _> = cases
        .iter()
        .filter_map(|&(b, w)| Some(((b, w), collected.summarise((Tool::Baseline, b, w), None)?)))
        .collect();
    tools
        .iter()
        .map(|&tool| {
            let mut builds: BTreeMap<String, BTreeMap<String, _>> = BTreeMap::new();
            for &(b, w) in &cases {
                if let Some(result) = collected.summarise((tool, b, w), baselines.get(&(b, w))) {
                    builds
                        .entry(b.name().to_owned())
                        .or_default()
                        .insert(w.name().to_owned(), result);
                }
            }
            ToolResult {
                tool: tool.name().to_owned(),
                command: tool.command_line().to_owned(),
                version: toolbox.version(tool),
                not_run: not_run.get(tool.name()).cloned(),
                builds,
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peers_run_without_frame_pointers_only_where_a_target_needs_them() {
        let nofp = Build::NoFramePointers;
        for workload in Workload::ALL {
            assert!(planned(Tool::Leakbpf, nofp, workload));
            assert!(planned(Tool::Floor, nofp, workload));
            assert!(planned(Tool::Valgrind, Build::FramePointers, workload));
        }
        assert!(planned(Tool::Memleak, nofp, Workload::Chat));
        assert!(planned(Tool::Bpftrace, nofp, Workload::MallocFree));
        assert!(!planned(Tool::Memleak, nofp, Workload::Mixed));
        assert!(!planned(Tool::Heaptrack, nofp, Workload::MallocFreeDeep));
    }
}
