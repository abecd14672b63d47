//! The table: a report for people, one block per call site with its stack under it.

use std::{
    borrow::Cow,
    fmt::Write as _,
    io::{self, Write},
};

use super::{ProcessSummary, Render};
use crate::snapshot::{Pattern, Snapshot, Verdict};

/// Frames shown per call site; JSON carries them all.
const TABLE_FRAMES: usize = 12;

/// With `all_frames`, allocation plumbing frames are shown too.
pub struct Table {
    pub all_frames: bool,
}

impl Render for Table {
    fn snapshot(&mut self, snapshot: &Snapshot, out: &mut dyn Write) -> io::Result<()> {
        out.write_all(table(snapshot, self.all_frames).as_bytes())
    }

    /// The processes reported on next, in a table; JSON lines carry the same figures in
    /// each process's report.
    fn summary(
        &mut self,
        processes: &[ProcessSummary],
        is_final: bool,
        sink: &mut dyn Write,
    ) -> io::Result<()> {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "leakbpf: the {} processes holding the most{}",
            processes.len(),
            if is_final { " (final)" } else { "" }
        );
        let _ = writeln!(
            out,
            "  {:>8}  {:<16}  {:>14}  {:>10}  {:>6}",
            "PID", "COMMAND", "BYTES", "ALLOCS", "SITES"
        );
        for process in processes {
            let _ = writeln!(
                out,
                "  {:>8}  {:<16}  {:>14}  {:>10}  {:>6}",
                process.pid,
                printable(&process.command),
                process.bytes,
                process.allocations,
                process.callsites
            );
        }
        sink.write_all(out.as_bytes())
    }
}

/// `text` safe for a terminal: a name from the target may hold control characters
/// (escape sequences), which are shown escaped instead of sent.
pub(super) fn printable(text: &str) -> Cow<'_, str> {
    if text.chars().any(char::is_control) {
        Cow::Owned(text.escape_debug().to_string())
    } else {
        Cow::Borrowed(text)
    }
}

/// The snapshot as a table: one block per call site, its stack under it from the call
/// site's frame (from the allocator's side with `all_frames`).
pub fn table(report: &Snapshot, all_frames: bool) -> String {
    let mut out = String::new();
    let c = &report.counters;
    let command = report
        .process
        .command
        .as_deref()
        .map(|command| format!(" ({})", printable(command)))
        .unwrap_or_default();
    let _ = writeln!(
        out,
        "leakbpf report #{}{} pid {}{command} at {}: {} B outstanding in {} allocations at {} call sites",
        report.report,
        if report.is_final { " (final)" } else { "" },
        report.pid,
        report.timestamp,
        report.totals.outstanding_bytes,
        report.totals.outstanding_allocations,
        report.totals.callsites,
    );
    match &report.sampling {
        None => {
            let _ = writeln!(
                out,
                "  events: {} allocations, {} frees, {} frees of unknown blocks, {} failed allocations, {} stack failures, {} truncated stacks",
                c.allocations,
                c.frees,
                c.unknown_frees,
                c.failed_allocations,
                c.stack_failures,
                c.truncated_stacks
            );
        }
        Some(sampling) => {
            let _ = writeln!(
                out,
                "  sampled, one point per {} B on average: bytes and allocations are estimates \
                 from the {} outstanding blocks recorded, ±{} B and ±{} allocations in total \
                 (one standard error)",
                sampling.mean_bytes,
                sampling.sampled_allocations,
                sampling.bytes_error,
                sampling.allocations_error
            );
            let _ = writeln!(
                out,
                "  events: {} allocations sampled, {} of them freed, {} failed allocations, {} stack failures, {} truncated stacks",
                c.allocations, c.frees, c.failed_allocations, c.stack_failures, c.truncated_stacks
            );
        }
    }
    for (count, what) in [
        (
            c.dropped_allocations,
            "allocations were not recorded: the allocation map is full (raise --max-allocs)",
        ),
        (
            c.dropped_calls,
            "allocation calls were missed: too many threads allocating at once",
        ),
        (
            c.probe_errors,
            "probe errors: calls or process events the eBPF programs could not read were not \
             recorded (a bug: please report it)",
        ),
        (
            c.lost_events,
            "events were lost: the event ring was full (a stack may be named late; a fork, \
             exec or exit may be missed)",
        ),
    ] {
        if count > 0 {
            let _ = writeln!(out, "  WARNING: {count} {what}");
        }
    }
    if let Some(memory) = &report.memory {
        let _ = writeln!(
            out,
            "  memory: RSS {} (anonymous {}), {}/s; the tracked heap is {:.0}% of it, {}/s",
            mib(memory.rss_bytes as f64),
            mib(memory.anon_rss_bytes as f64),
            signed_mib(memory.rss_bytes_per_s),
            memory.heap_share * 100.0,
            signed_mib(memory.heap_bytes_per_s),
        );
        if memory.growth_elsewhere {
            let _ = writeln!(
                out,
                "  WARNING: RSS grows and the tracked heap does not explain it: the memory is \
                 elsewhere (mmap outside malloc, fragmentation, or an allocator leakbpf does not see)"
            );
        }
    }
    for suppressed in &report.suppressed {
        let _ = writeln!(
            out,
            "  suppressed by leak:{}: {} B in {} allocations at {} call sites",
            printable(&suppressed.pattern),
            suppressed.bytes,
            suppressed.allocations,
            suppressed.callsites
        );
    }
    let totals = &report.totals;
    if totals.leak_callsites + totals.suspect_callsites > 0 {
        let _ = writeln!(
            out,
            "  verdicts: {} call sites leak, {} suspect",
            totals.leak_callsites, totals.suspect_callsites
        );
    }
    if report.callsites.is_empty() {
        let _ = writeln!(out, "  no outstanding allocations");
    } else {
        let _ = writeln!(
            out,
            "  {:>4}  {:>14}  {:>10}  {:>10}  {:>9}  {:>15}  {:>13}  VERDICT",
            "RANK", "BYTES", "ALLOCS", "AVG SIZE", "OLDEST", "GROWTH", "RATE B/S"
        );
    }
    for site in &report.callsites {
        let oldest = format!("{:.1}s", site.oldest_age_s);
        let trend = &site.trend;
        let _ = writeln!(
            out,
            "  {:>4}  {:>14}  {:>10}  {:>10}  {:>9}  {:>+15}  {:>+13.0}  {}",
            site.rank,
            site.bytes,
            site.allocations,
            site.average_size,
            oldest,
            site.growth_bytes,
            trend.bytes_per_s,
            verdict(trend.verdict)
        );
        if let Some(estimate) = &site.estimate {
            let _ = writeln!(
                out,
                "          estimated from {} sampled blocks: ±{} B, ±{} allocations",
                estimate.sampled_allocations, estimate.bytes_error, estimate.allocations_error
            );
        }
        if trend.verdict != Verdict::NoLeak {
            let old_share = trend.old_allocations as f64 / site.allocations.max(1) as f64;
            let _ = writeln!(
                out,
                "          {}: {}, fit {:.2} over {} reports; {:.0}% of its blocks older than {:.0}s",
                verdict(trend.verdict),
                pattern(trend.pattern),
                trend.fit,
                trend.samples,
                old_share * 100.0,
                trend.old_after_s
            );
        }
        if site.frames.is_empty() {
            let _ = writeln!(
                out,
                "          [stack not available: unreadable, or the stack map was full (--max-stacks)]"
            );
        }
        let first = if all_frames { 0 } else { site.site_frame };
        if first > 0 {
            // The plumbing's outermost frame (the call the site made) and how deep it is.
            let name = |frame: &crate::symbolize::Frame| {
                printable(frame.function.as_deref().unwrap_or("[unknown]")).into_owned()
            };
            let via = match first {
                1 => name(&site.frames[0]),
                _ => format!("{} and {} more", name(&site.frames[first - 1]), first - 1),
            };
            let _ = writeln!(
                out,
                "          via {via} (allocation plumbing; --show-alloc-frames shows it)"
            );
        }
        for frame in site.frames.iter().skip(first).take(TABLE_FRAMES) {
            let name = printable(frame.function.as_deref().unwrap_or("[unknown]"));
            let marker = if frame.inlined { " [inlined]" } else { "" };
            let place = match (&frame.file, frame.line, &frame.module, frame.offset) {
                (Some(file), Some(line), _, _) => format!("{}:{line}", printable(file)),
                (Some(file), None, _, _) => printable(file).into_owned(),
                (None, _, Some(module), Some(offset)) => {
                    format!("{}+{offset:#x}", printable(module))
                }
                _ => format!("{:#x}", frame.address),
            };
            let _ = writeln!(out, "          {name}{marker}  {place}");
        }
        if site.frames.len() > first + TABLE_FRAMES {
            let _ = writeln!(
                out,
                "          ... {} more frames",
                site.frames.len() - first - TABLE_FRAMES
            );
        }
    }
    out.push('\n');
    out
}

fn verdict(verdict: Verdict) -> &'static str {
    match verdict {
        Verdict::Leak => "LEAK",
        Verdict::Suspect => "suspect",
        Verdict::NoLeak => "-",
    }
}

fn pattern(pattern: Pattern) -> &'static str {
    match pattern {
        Pattern::SteadyGrowth => "steady growth",
        Pattern::SteppedGrowth => "stepped growth",
        Pattern::GrowsThenHolds => "grew, then holds",
        Pattern::Shrinking => "shrinking",
        Pattern::Transient => "transient",
        Pattern::Stable => "stable",
    }
}

fn mib(bytes: f64) -> String {
    format!("{:.1} MiB", bytes / f64::from(1 << 20))
}

fn signed_mib(bytes: f64) -> String {
    format!("{:+.2} MiB", bytes / f64::from(1 << 20))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernel::Counters;

    #[test]
    fn shows_verdicts_with_their_evidence_and_the_memory() {
        let text = table(&crate::snapshot::example(), false);
        assert!(text.contains("pid 42 (chat_server)"), "{text}");
        assert!(text.contains("LEAK"), "{text}");
        assert!(
            text.contains(
                "steady growth, fit 0.99 over 6 reports; 100% of its blocks older than 15s"
            ),
            "{text}"
        );
        assert!(
            text.contains("memory: RSS 8.0 MiB (anonymous 2.0 MiB)"),
            "{text}"
        );
        assert!(
            text.contains("verdicts: 1 call sites leak, 0 suspect"),
            "{text}"
        );
    }

    #[test]
    fn probe_errors_and_lost_events_are_warned_of_when_there_are_some() {
        let warnings = |counters| -> Vec<String> {
            let mut snapshot = crate::snapshot::example();
            snapshot.counters = counters;
            table(&snapshot, false)
                .lines()
                .filter(|line| line.contains("WARNING"))
                .map(str::to_owned)
                .collect()
        };
        assert_eq!(warnings(Counters::default()), Vec::<String>::new());
        let errors = warnings(Counters {
            probe_errors: 3,
            ..Counters::default()
        });
        assert_eq!(errors.len(), 1, "{errors:?}");
        assert!(
            errors[0].starts_with("  WARNING: 3 probe errors: "),
            "{errors:?}"
        );
        let lost = warnings(Counters {
            lost_events: 2,
            ..Counters::default()
        });
        assert_eq!(lost.len(), 1, "{lost:?}");
        assert!(
            lost[0].starts_with("  WARNING: 2 events were lost: "),
            "{lost:?}"
        );
    }

    #[test]
    fn a_sampled_report_says_its_figures_are_estimates_and_how_close() {
        let mut snapshot = crate::snapshot::example();
        snapshot.sampling = Some(crate::snapshot::Sampled {
            mean_bytes: 524288,
            sampled_allocations: 120,
            bytes_error: 4000,
            allocations_error: 30,
        });
        snapshot.callsites[0].estimate = Some(crate::snapshot::SiteEstimate {
            sampled_allocations: 2,
            bytes_error: 300,
            allocations_error: 1,
        });
        let text = table(&snapshot, false);
        assert!(
            text.contains(
                "sampled, one point per 524288 B on average: bytes and allocations are \
                 estimates from the 120 outstanding blocks recorded, ±4000 B and ±30 \
                 allocations in total"
            ),
            "{text}"
        );
        assert!(
            text.contains("estimated from 2 sampled blocks: ±300 B, ±1 allocations"),
            "{text}"
        );
        assert!(!text.contains("frees of unknown blocks"), "{text}");
    }

    #[test]
    fn control_characters_from_the_target_are_escaped() {
        assert_eq!(printable("Server::handleJoin"), "Server::handleJoin");
        assert_eq!(printable("evil\u{1b}[2Jname\n"), "evil\\u{1b}[2Jname\\n");
    }
}
