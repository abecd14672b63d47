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
    exit_latency,
    machine::Machine,
    provenance, report,
    results::{self, BuildInfo, Collected, Measured, Results, ToolResult, WorkloadInfo},
    sampled_leak, scale, server, session,
    tools::{Tool, Toolbox},
    workloads::{self, Allocator, Build, Durations, Workload},
};

/// Options of the comparison.
#[derive(Args, Debug)]
pub struct CompareArgs {
    /// A smoke run (about two minutes): 1 repetition, short loops, only baseline, leakbpf
    /// and floor, no scale test, no server
    #[arg(long, visible_alias = "smoke")]
    pub quick: bool,
    /// Repetitions of every run (5 by default, 1 with --quick)
    #[arg(long, visible_alias = "repetitions", value_parser = clap::value_parser!(u32).range(1..))]
    pub reps: Option<u32>,
    /// Only these tools, comma-separated (baseline is always run): baseline, leakbpf,
    /// leakbpf-sampled, floor, memleak, bpftrace, heaptrack, valgrind
    #[arg(long, value_delimiter = ',')]
    pub tools: Vec<String>,
    /// Only these workloads of the interleaved comparison, comma-separated (`none` for
    /// only the separate tests): malloc_free, malloc_free_jemalloc, malloc_free_tcmalloc,
    /// malloc_free_mimalloc, malloc_free_deep, mixed, chat, chat_fixed_load
    #[arg(long, value_delimiter = ',')]
    pub workloads: Vec<String>,
    /// Skip the agent's scale test (1,000,000 allocations over 10,000 stacks)
    #[arg(long)]
    pub no_scale: bool,
    /// Skip the real server (redis-server under redis-benchmark); --quick skips it too
    #[arg(long)]
    pub no_server: bool,
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
    let chosen_workloads = chosen_workloads(args)?;
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
    let workloads_not_run: BTreeMap<Workload, String> = Workload::ALL
        .iter()
        .filter_map(|&w| Some((w, w.allocator().unavailable()?)))
        .collect();
    for (workload, why) in &workloads_not_run {
        println!("{}: not run: {why}", workload.name());
    }

    let mut collected = Collected::default();
    for rep in 0..reps {
        // The builds of a workload back to back: their difference is the point, so they
        // share the machine's state as closely as the interleaving allows.
        for &workload in chosen_workloads
            .iter()
            .filter(|w| !workloads_not_run.contains_key(w))
        {
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
        outcome(
            "agent scale test",
            scale::run(agent, &binaries, &runs.join("scale")),
        )
    };
    let (sampled_leak, sampled_leak_note) = outcome(
        "sampled estimate",
        sampled_leak::run(agent, &binaries, &runs.join("sampled_leak")),
    );
    // The smallest workload: one batch of pairs, then its end.
    let once = Durations {
        malloc_free: 0.0,
        ..durations
    };
    let smallest = binaries.command(Build::FramePointers, Workload::MallocFree, &once);
    let (exit_latency, exit_latency_note) = outcome(
        "exit latency",
        exit_latency::run(agent, &smallest, &runs.join("exit")),
    );
    let (server, server_note) = if args.quick || args.no_server {
        (None, Some("skipped (--quick or --no-server)".to_owned()))
    } else {
        let server_tools: Vec<Tool> = server::tools_for(&tools)
            .into_iter()
            .filter(|t| !not_run.contains_key(t.name()))
            .collect();
        outcome(
            "server",
            server::run(&toolbox, &server_tools, reps, &runs.join("server")),
        )
    };

    let tool_results = summarise(&tools, &collected, &not_run, &toolbox);
    let added_cost = results::added_costs(&tool_results);
    let targets = results::check_targets(&Measured {
        tools: &tool_results,
        added: &added_cost,
        scale: agent_scale.as_ref(),
        sampled_leak: sampled_leak.as_ref(),
        exit_latency: exit_latency.as_ref(),
        server: server.as_ref(),
    });
    let results = Results {
        schema_version: results::SCHEMA_VERSION,
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
        workloads: workload_infos(&durations, &workloads_not_run),
        tools: tool_results,
        added_cost,
        agent_scale,
        agent_scale_note,
        sampled_leak,
        sampled_leak_note,
        exit_latency,
        exit_latency_note,
        server,
        server_note,
        targets,
    };
    header("results");
    // Only a full run of every tool and workload stands for the project in the docs.
    let docs = !args.quick
        && args.tools.is_empty()
        && args.workloads.is_empty()
        && !args.no_scale
        && !args.no_server;
    report::publish(root, &out, &results, docs)?;
    println!("bench finished in {:.0} s", started.elapsed().as_secs_f64());
    Ok(())
}

/// A separate test's result, or why there is none: its failure does not end the bench.
fn outcome<T>(test: &str, result: Result<T>) -> (Option<T>, Option<String>) {
    match result {
        Ok(result) => (Some(result), None),
        Err(e) => {
            let error = format!("{e:#}").replace('\n', " ");
            println!("{test} FAILED: {error}");
            (None, Some(format!("failed: {error}")))
        }
    }
}

fn workload_infos(
    durations: &Durations,
    not_run: &BTreeMap<Workload, String>,
) -> Vec<WorkloadInfo> {
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
                allocator: w.allocator().name().to_owned(),
                preload: w.allocator().preload().map(str::to_owned),
                not_run: not_run.get(&w).cloned(),
            }
        })
        .collect()
}

/// Whether `tool` is run on `workload` built as `build`. Without frame pointers the peers
/// (leakbpf-sampled with them) are measured only where a target compares leakbpf with
/// them (malloc_free, chat): their cost there is what they cost on such programs, though
/// their stacks stop at the first frame without a frame pointer; every peer on every
/// workload of both builds would double the full run. On a preloaded allocator only
/// leakbpf's runs: the peers probe libc's malloc (memleak, bpftrace), or preload their
/// own (heaptrack) or replace it (valgrind).
fn planned(tool: Tool, build: Build, workload: Workload) -> bool {
    let leakbpf = matches!(
        tool,
        Tool::Baseline | Tool::Leakbpf | Tool::LeakbpfSampled | Tool::Floor
    );
    if workload.allocator() != Allocator::Glibc {
        return leakbpf;
    }
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
        let invocation = binaries.command(build, workload, self.durations);
        let loop_s = self.durations.of(workload);
        for attempt in 1..=results::ATTEMPTS {
            let dir = match attempt {
                1 => self.dir.clone(),
                n => self.dir.with_extension(format!("attempt{n}")),
            };
            match session::measure(toolbox, tool, &invocation, loop_s, &dir) {
                Ok(sample) => {
                    progress(tool, workload, &sample);
                    collected.add(self.key, sample);
                    return;
                }
                Err(e) => {
                    let error = format!("{e:#}").replace('\n', " ");
                    println!("  {:<15} attempt {attempt} FAILED: {error}", tool.name());
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

/// The workloads `--workloads` names, in the fixed order; all of them by default.
fn chosen_workloads(args: &CompareArgs) -> Result<Vec<Workload>> {
    if args.workloads.is_empty() {
        return Ok(Workload::ALL.to_vec());
    }
    let mut chosen = Vec::new();
    for name in &args.workloads {
        let name = name.trim();
        if name == "none" {
            continue;
        }
        let workload = Workload::parse(name).with_context(|| {
            let names: Vec<&str> = Workload::ALL.iter().map(|w| w.name()).collect();
            format!(
                "unknown workload {name:?}: one of {}, or none",
                names.join(", ")
            )
        })?;
        chosen.push(workload);
    }
    Ok(Workload::ALL
        .into_iter()
        .filter(|w| chosen.contains(w))
        .collect())
}

fn progress(tool: Tool, workload: Workload, sample: &session::Sample) {
    let (metric, _) = workload.metric();
    let value = sample.results.get(metric).copied().unwrap_or(f64::NAN);
    let mut line = format!(
        "  {:<15} {metric} {:>12}  target {:.3} CPU-s/s",
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
            let glibc = workload.allocator() == Allocator::Glibc;
            assert_eq!(
                planned(Tool::Valgrind, Build::FramePointers, workload),
                glibc
            );
        }
        assert!(planned(Tool::LeakbpfSampled, nofp, Workload::MallocFree));
        assert!(!planned(Tool::LeakbpfSampled, nofp, Workload::Mixed));
        assert!(planned(Tool::Memleak, nofp, Workload::Chat));
        assert!(planned(Tool::Bpftrace, nofp, Workload::MallocFree));
        assert!(!planned(Tool::Memleak, nofp, Workload::Mixed));
        assert!(!planned(Tool::Heaptrack, nofp, Workload::MallocFreeDeep));
    }

    #[test]
    fn only_leakbpf_and_its_floor_run_on_a_preloaded_allocator() {
        let fp = Build::FramePointers;
        for tool in [
            Tool::Baseline,
            Tool::Leakbpf,
            Tool::LeakbpfSampled,
            Tool::Floor,
        ] {
            assert!(planned(tool, fp, Workload::MallocFreeMimalloc));
        }
        for tool in [
            Tool::Memleak,
            Tool::Bpftrace,
            Tool::Heaptrack,
            Tool::Valgrind,
        ] {
            assert!(!planned(tool, fp, Workload::MallocFreeJemalloc));
            assert!(planned(tool, fp, Workload::MallocFree));
        }
    }
}
