//! The results as markdown tables and JSON: printed, written under target/bench, and
//! copied into the docs (the comparison's into docs/benchmarks.md).

use std::{fmt::Write as _, fs, path::Path};

use anyhow::{Context, Result};
use serde::Serialize;

use crate::{
    results::{Results, ToolResult, num},
    stats::Summary,
    tools::Tool,
    workloads::{Allocator, Build, Workload},
};

/// A part of the docs that a run's results replace: the text between two markers.
pub struct DocBlock {
    /// Relative to the repository root.
    pub file: &'static str,
    /// The markers are `<!-- NAME:begin ... -->` and `<!-- NAME:end -->`.
    pub name: &'static str,
    /// The heading of the file, when the run creates it.
    pub title: &'static str,
}

const BENCHMARKS: DocBlock = DocBlock {
    file: "docs/benchmarks.md",
    name: "bench-results",
    title: "leakbpf benchmarks",
};

/// The markdown report: machine, the cost per build, each build's tables, targets,
/// tools not run.
pub fn markdown(results: &Results) -> String {
    let mut md = String::new();
    let runs = if results.repetitions == 1 {
        "1 repetition".to_owned()
    } else {
        format!("{} repetitions, interleaved", results.repetitions)
    };
    let _ = writeln!(
        md,
        "Command: `{}` ({}, {runs}; median (min–max)), {} UTC, leakbpf {}.\n",
        results.command,
        if results.quick {
            "smoke run"
        } else {
            "full run"
        },
        results.date_utc,
        results
            .leakbpf_commit
            .as_deref()
            .unwrap_or("unknown commit")
    );
    let _ = writeln!(md, "Machine: {}.\n", results.machine.summary());
    if let Some(other) = &results.other_cpu_per_s {
        let _ = writeln!(
            md,
            "Noise: the rest of the machine used {} CPU-s/s during the median timed loop, {} \
             at most (of {} cores).\n",
            num(other.median),
            num(other.max),
            results.machine.cores
        );
    }
    md.push_str("Builds, each workload compiled twice from the same source at -O2:\n\n");
    for build in &results.builds {
        let _ = writeln!(
            md,
            "- {}: {}, `{}`",
            build.name, build.description, build.flags
        );
    }
    md.push_str(
        "\nOn nofp the peers run on malloc/free and chat only; malloc_free_deep runs on nofp \
         only.\n\n",
    );
    cost_table(&mut md, results);
    allocator_table(&mut md, results);
    unwind_table(&mut md, results);
    for build in Build::ALL {
        let _ = writeln!(md, "### {} build ({})\n", build.name(), build.description());
        main_table(&mut md, results, build);
        fixed_load_table(&mut md, results, build);
        agent_table(&mut md, results, build);
    }
    scale_table(&mut md, results);
    sampled_leak_table(&mut md, results);
    exit_latency_line(&mut md, results);
    server_table(&mut md, results);
    targets(&mut md, results);
    tools(&mut md, results);
    md
}

fn cell(summary: Option<&Summary>) -> String {
    match summary {
        Some(s) if s.samples.len() > 1 => {
            format!("{} ({}–{})", num(s.median), num(s.min), num(s.max))
        }
        Some(s) => num(s.median),
        None => "—".to_owned(),
    }
}

fn ratio(r: Option<f64>) -> String {
    r.map_or("—".to_owned(), |r| format!("×{}", num(r)))
}

/// A whole number, with [`num`]'s grouping.
fn count(x: f64) -> String {
    if x.abs() >= 1000.0 {
        num(x)
    } else {
        format!("{x:.0}")
    }
}

fn figure(x: Option<f64>) -> String {
    x.map_or("—".to_owned(), num)
}

/// What a tool with no number for `w` of `build` shows instead.
fn missing(tool: &ToolResult, build: Build, w: Workload) -> Option<&'static str> {
    if tool.not_run.is_some() {
        Some("not run")
    } else if tool
        .result(build, w)
        .is_some_and(|r| r.value.is_none() && r.failed_runs > 0)
    {
        Some("failed")
    } else {
        None
    }
}

/// Whether `tool` was run on anything of `build`.
fn ran_on(tool: &ToolResult, build: Build) -> bool {
    tool.not_run.is_some() || tool.builds.contains_key(build.name())
}

/// Each tool's added cost on each build: what the targets are about.
fn cost_table(md: &mut String, results: &Results) {
    md.push_str(
        "Added cost per build (the tool's median minus that build's baseline's, same run):\n\n\
         | tool | build | ns per malloc/free pair | ns per pair, 64-deep stack | chat µs per \
         message |\n|---|---|--:|--:|--:|\n",
    );
    for cost in &results.added_cost {
        let _ = writeln!(
            md,
            "| {} | {} | {} | {} | {} |",
            cost.tool,
            cost.build,
            figure(cost.ns_per_pair),
            figure(cost.deep_stack_ns_per_pair),
            figure(cost.chat_us_per_msg),
        );
    }
    md.push('\n');
}

/// The malloc/free loop on each allocator: each tool's added cost next to its floor's on
/// the same allocator, what the floor's targets are about.
fn allocator_table(md: &mut String, results: &Results) {
    let build = Build::FramePointers;
    let tool = |t: Tool| results.tools.iter().find(|r| r.tool == t.name());
    let added = |t: Tool, a: Allocator| {
        results
            .added_cost
            .iter()
            .find(|c| c.tool == t.name() && c.build == build.name())
            .and_then(|c| c.per_pair(a))
    };
    md.push_str(
        "Allocators (fp build): the malloc/free loop on glibc's allocator and on each one \
         preloaded; added cost per pair over the baseline on the same allocator, ns.\n\n\
         | allocator | baseline ns per pair | leakbpf | floor | leakbpf ÷ floor | \
         leakbpf-sampled |\n|---|--:|--:|--:|--:|--:|\n",
    );
    for allocator in Allocator::ALL {
        let workload = allocator.pairs();
        let not_run = results
            .workloads
            .iter()
            .find(|w| w.name == workload.name())
            .and_then(|w| w.not_run.as_deref());
        if let Some(why) = not_run {
            let _ = writeln!(md, "| {} | not run: {why} | | | | |", allocator.name());
            continue;
        }
        let baseline = tool(Tool::Baseline).and_then(|t| t.result(build, workload));
        let (leakbpf, floor) = (
            added(Tool::Leakbpf, allocator),
            added(Tool::Floor, allocator),
        );
        let _ = writeln!(
            md,
            "| {} | {} | {} | {} | {} | {} |",
            allocator.name(),
            cell(baseline.and_then(|r| r.value.as_ref())),
            figure(leakbpf),
            figure(floor),
            ratio(leakbpf.zip(floor).map(|(l, f)| l / f)),
            figure(added(Tool::LeakbpfSampled, allocator)),
        );
    }
    md.push('\n');
}

/// leakbpf's unwind tables for each workload's process, as its --verbose says.
fn unwind_table(md: &mut String, results: &Results) {
    let Some(leakbpf) = results.tools.iter().find(|t| t.tool == "leakbpf") else {
        return;
    };
    md.push_str(
        "leakbpf's unwind tables for the workload's process, from its `--verbose` line: \
         objects tabled, their rows, the time from reading its mappings to the kernel knowing \
         them, and the kernel memory of the unwind arrays (allocated whole at load).\n\n\
         | build | workload | objects | rows | built in ms | kernel map MiB |\n\
         |---|---|--:|--:|--:|--:|\n",
    );
    for (build, workloads) in &leakbpf.builds {
        for (workload, result) in workloads {
            let Some(t) = &result.unwind_tables else {
                continue;
            };
            let _ = writeln!(
                md,
                "| {build} | {workload} | {} | {} | {} | {} |",
                count(t.objects.median),
                count(t.rows.median),
                cell(Some(&t.build_ms)),
                num(t.kernel_map_mib.median),
            );
        }
    }
    md.push('\n');
}

fn main_table(md: &mut String, results: &Results, build: Build) {
    md.push_str(
        "| tool | malloc/free ns per pair | × baseline | mixed ns per round | × baseline \
         | chat messages/s | × baseline | agent CPU s | agent peak RSS MB |\n\
         |---|--:|--:|--:|--:|--:|--:|--:|--:|\n",
    );
    for tool in results.tools.iter().filter(|t| ran_on(t, build)) {
        let mut row = format!("| {} ", tool.tool);
        for w in [Workload::MallocFree, Workload::Mixed, Workload::Chat] {
            match missing(tool, build, w) {
                Some(why) => {
                    let _ = write!(row, "| {why} | ");
                }
                None => {
                    let r = tool.result(build, w);
                    let _ = write!(
                        row,
                        "| {} | {} ",
                        cell(r.and_then(|r| r.value.as_ref())),
                        ratio(r.and_then(|r| r.ratio_to_baseline))
                    );
                }
            }
        }
        let chat = tool.result(build, Workload::Chat);
        let _ = writeln!(
            row,
            "| {} | {} |",
            agent_cell(tool, chat.and_then(|r| r.agent_cpu_s.as_ref())),
            agent_cell(tool, chat.and_then(|r| r.agent_peak_rss_mb.as_ref())),
        );
        md.push_str(&row);
    }
    md.push_str(
        "\nAgent CPU s and peak RSS: the tool's own processes on the chat run, from its start \
         (BCC's compile, bpftrace's and leakbpf's load and attach included) to the end of the \
         timed loop; peak RSS is VmHWM. heaptrack: its interpreter (the preloaded library's \
         cost is in the target's numbers). valgrind runs inside the target: its cost is all in \
         the target's numbers.\n\n",
    );
}

fn agent_cell(tool: &ToolResult, summary: Option<&Summary>) -> String {
    match (tool.tool.as_str(), summary) {
        ("baseline", _) => "—".to_owned(),
        ("valgrind", None) => "in target".to_owned(),
        _ => cell(summary),
    }
}

fn fixed_load_table(md: &mut String, results: &Results, build: Build) {
    let _ = writeln!(
        md,
        "Production view: the chat server at a fixed offered load of {} messages/s. Target \
         CPU is its utime + stime (/proc/PID/stat) over the timed loop per wall second; extra \
         is that minus the baseline's.\n",
        num(results.offered_load_msgs_per_s)
    );
    md.push_str(
        "| tool | achieved messages/s | target CPU-s/s | extra target CPU-s/s | agent CPU-s/s |\n\
         |---|--:|--:|--:|--:|\n",
    );
    let w = Workload::ChatFixedLoad;
    for tool in &results.tools {
        if let Some(why) = missing(tool, build, w) {
            let _ = writeln!(md, "| {} | {why} | | | |", tool.tool);
            continue;
        }
        let Some(r) = tool.result(build, w) else {
            continue;
        };
        let _ = writeln!(
            md,
            "| {} | {} | {} | {} | {} |",
            tool.tool,
            cell(r.value.as_ref()),
            cell(r.target_cpu_per_s.as_ref()),
            r.extra_target_cpu_per_s
                .map_or("—".to_owned(), |e| format!("{e:+.3}")),
            agent_cell(tool, r.agent_loop_cpu_per_s.as_ref()),
        );
    }
    md.push('\n');
}

fn agent_table(md: &mut String, results: &Results, build: Build) {
    const COLUMNS: [Workload; 4] = [
        Workload::MallocFree,
        Workload::Mixed,
        Workload::Chat,
        Workload::ChatFixedLoad,
    ];
    md.push_str(
        "Agent cost per workload: CPU s from the tool's start to the end of the timed loop / \
         peak RSS MB (medians).\n\n| tool | malloc/free | mixed | chat | chat, fixed load |\n\
         |---|--:|--:|--:|--:|\n",
    );
    for tool in results
        .tools
        .iter()
        .filter(|t| t.tool != "baseline" && ran_on(t, build))
    {
        let mut row = format!("| {} ", tool.tool);
        for w in COLUMNS {
            let r = tool.result(build, w);
            let median = |s: Option<&Summary>| s.map(|s| num(s.median));
            let text = match (
                median(r.and_then(|r| r.agent_cpu_s.as_ref())),
                median(r.and_then(|r| r.agent_peak_rss_mb.as_ref())),
            ) {
                (Some(cpu), Some(rss)) => format!("{cpu} s / {rss} MB"),
                _ => missing(tool, build, w)
                    .unwrap_or(if tool.tool == "valgrind" && r.is_some() {
                        "in target"
                    } else {
                        "—"
                    })
                    .to_owned(),
            };
            let _ = write!(row, "| {text} ");
        }
        row.push_str("|\n");
        md.push_str(&row);
    }
    md.push('\n');
}

fn scale_table(md: &mut String, results: &Results) {
    let Some(s) = &results.agent_scale else {
        let _ = writeln!(
            md,
            "Agent at scale: {}.\n",
            results.agent_scale_note.as_deref().unwrap_or("not run")
        );
        return;
    };
    let cycles: Vec<String> = s.cycle_cpu_s.iter().map(|c| format!("{c:.3}")).collect();
    let _ = writeln!(
        md,
        "Agent at scale: `{}` on {} outstanding allocations over {} distinct stacks \
         (leakbpf-bench/workloads/stacks.c).\n\n\
         | allocating under leakbpf | drain-and-report cycle, agent CPU s | agent peak RSS MB \
         | outstanding_allocations | dropped_allocations | call sites |\n\
         |--:|--:|--:|--:|--:|--:|\n\
         | {:.2} s | {} | {:.1} | {} | {} | {} |\n",
        s.command,
        num(f64::from(s.allocations)),
        num(f64::from(s.stacks)),
        s.allocate_s,
        cycles.join(", "),
        s.peak_rss_mb,
        s.outstanding_allocations,
        s.dropped_allocations,
        s.callsites,
    );
}

fn sampled_leak_table(md: &mut String, results: &Results) {
    let Some(l) = &results.sampled_leak else {
        let _ = writeln!(
            md,
            "Sampled estimate: {}.\n",
            results.sampled_leak_note.as_deref().unwrap_or("not run")
        );
        return;
    };
    let _ = writeln!(
        md,
        "Sampled estimate: `{}` on {} bytes leaked in {} blocks at one call site \
         (leakbpf-bench/workloads/sampled_leak.c), among malloc/free churn; the final \
         report's figures for that site against the truth. One standard error is said by \
         the report and expected as √(bytes · N).\n\n\
         | true bytes | estimated bytes | ± said | ± expected | error | blocks recorded | \
         leaking took |\n|--:|--:|--:|--:|--:|--:|--:|\n\
         | {} | {} | {} | {} | {:+.2} % | {} of {} | {:.2} s |\n",
        l.command,
        num(l.true_bytes as f64),
        num(l.true_allocations as f64),
        num(l.true_bytes as f64),
        num(l.estimated_bytes as f64),
        num(l.bytes_error as f64),
        num(l.expected_bytes_error),
        l.relative_error * 100.0,
        num(l.sampled_allocations as f64),
        num(l.true_allocations as f64),
        l.leak_s,
    );
}

fn exit_latency_line(md: &mut String, results: &Results) {
    let text = match &results.exit_latency {
        Some(e) => format!(
            "`{}`: {} s from the command's end to leakbpf's exit",
            e.command,
            cell(Some(&e.seconds))
        ),
        None => results
            .exit_latency_note
            .clone()
            .unwrap_or_else(|| "not run".to_owned()),
    };
    let _ = writeln!(md, "leakbpf's exit after the command it started: {text}.\n");
}

fn server_table(md: &mut String, results: &Results) {
    let Some(server) = &results.server else {
        let _ = writeln!(
            md,
            "Real server: {}.\n",
            results.server_note.as_deref().unwrap_or("not run")
        );
        return;
    };
    let _ = writeln!(
        md,
        "Real server: Debian's redis-server ({}), no persistence, under `{}`, alone and under \
         each tool attached to its pid; requests per second over both tests.\n\n\
         | tool | requests/s | × alone | per test |\n|---|--:|--:|---|",
        server.server, server.load
    );
    for tool in &server.tools {
        let tests: Vec<String> = tool
            .tests
            .iter()
            .map(|(test, rate)| format!("{test} {}", num(rate.median)))
            .collect();
        let (rate, times) = match (&tool.requests_per_s, tool.failed_runs.last()) {
            (None, Some(error)) => (format!("failed: {error}"), "—".to_owned()),
            (rate, _) => (cell(rate.as_ref()), ratio(tool.ratio_to_alone)),
        };
        let _ = writeln!(
            md,
            "| {} | {rate} | {times} | {} |",
            tool.tool,
            tests.join(", ")
        );
    }
    md.push('\n');
}

fn targets(md: &mut String, results: &Results) {
    md.push_str("Targets (added cost = the tool's median minus the baseline's):\n\n");
    for check in &results.targets {
        let _ = writeln!(
            md,
            "- {} {}: {}",
            check.verdict(),
            check.target,
            check.detail
        );
    }
    md.push('\n');
}

fn tools(md: &mut String, results: &Results) {
    md.push_str("Tools:\n\n");
    for tool in &results.tools {
        let version = tool
            .version
            .as_deref()
            .map_or(String::new(), |v| format!(" ({v})"));
        let status = match &tool.not_run {
            Some(why) => format!(" — **not run**: {why}"),
            None => String::new(),
        };
        let _ = writeln!(md, "- {}: `{}`{version}{status}", tool.tool, tool.command);
        for (build, workloads) in &tool.builds {
            for (name, w) in workloads {
                if let Some(last) = w.failed_attempts.last() {
                    let _ = writeln!(
                        md,
                        "  - on {name} ({build}): **{} failed attempt(s)**, {} run(s) lost; the \
                         last error: {last}",
                        w.failed_attempts.len(),
                        w.failed_runs
                    );
                }
            }
        }
    }
}

/// Writes target/bench/results.{json,md}, prints both, and with `docs` replaces the
/// results in docs/benchmarks.md.
pub fn publish(root: &Path, out: &Path, results: &Results, docs: bool) -> Result<()> {
    let md = markdown(results);
    write(
        root,
        out,
        "results",
        results,
        &md,
        docs.then_some(&BENCHMARKS),
    )
}

/// Writes `out/STEM.json` and `out/STEM.md`, prints both, and with `doc` replaces that
/// block of the docs with `md`.
pub fn write(
    root: &Path,
    out: &Path,
    stem: &str,
    results: &impl Serialize,
    md: &str,
    doc: Option<&DocBlock>,
) -> Result<()> {
    let json = serde_json::to_string_pretty(results).context("cannot serialise the results")?;
    fs::create_dir_all(out).with_context(|| format!("cannot create {}", out.display()))?;
    let json_path = out.join(format!("{stem}.json"));
    fs::write(&json_path, format!("{json}\n"))
        .with_context(|| format!("cannot write {}", json_path.display()))?;
    let md_path = out.join(format!("{stem}.md"));
    fs::write(&md_path, md).with_context(|| format!("cannot write {}", md_path.display()))?;
    println!("{json}\n");
    println!("{md}");
    println!("written: {} and {}", json_path.display(), md_path.display());
    if let Some(doc) = doc {
        let path = root.join(doc.file);
        update_docs(&path, doc, md)?;
        println!("updated {}", path.display());
    }
    Ok(())
}

/// Replaces the text between the markers of `doc` in `path` (or creates the file).
fn update_docs(path: &Path, doc: &DocBlock, md: &str) -> Result<()> {
    let begin = format!(
        "<!-- {}:begin (written by `cargo xtask bench`) -->",
        doc.name
    );
    let end = format!("<!-- {}:end -->", doc.name);
    let block = format!("{begin}\n{md}{end}");
    let old = fs::read_to_string(path).unwrap_or_default();
    let new = match (old.find(&begin), old.find(&end)) {
        (Some(start), Some(stop)) if start < stop => {
            format!("{}{block}{}", &old[..start], &old[stop + end.len()..])
        }
        _ if old.trim().is_empty() => format!("# {}\n\n{block}\n", doc.title),
        _ => format!("{}\n\n{block}\n", old.trim_end()),
    };
    if let Some(dir) = path.parent() {
        fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    fs::write(path, new).with_context(|| format!("cannot write {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    const DOC: DocBlock = DocBlock {
        file: "docs/x.md",
        name: "x-results",
        title: "X",
    };

    #[test]
    fn the_results_replace_what_is_between_the_markers_and_nothing_else() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("docs/x.md");
        // No file yet: created with its title.
        update_docs(&path, &DOC, "first\n").unwrap();
        let begin = "<!-- x-results:begin (written by `cargo xtask bench`) -->";
        let end = "<!-- x-results:end -->";
        assert_eq!(
            fs::read_to_string(&path).unwrap(),
            format!("# X\n\n{begin}\nfirst\n{end}\n")
        );
        // Text around the block stays as it is.
        fs::write(&path, format!("intro\n{begin}\nold\n{end}\noutro\n")).unwrap();
        update_docs(&path, &DOC, "second\n").unwrap();
        assert_eq!(
            fs::read_to_string(&path).unwrap(),
            format!("intro\n{begin}\nsecond\n{end}\noutro\n")
        );
        // A file without the markers gets the block at its end.
        fs::write(&path, "notes\n\n").unwrap();
        update_docs(&path, &DOC, "third\n").unwrap();
        assert_eq!(
            fs::read_to_string(&path).unwrap(),
            format!("notes\n\n{begin}\nthird\n{end}\n")
        );
    }
}
