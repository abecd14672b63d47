//! Writes reports: a table for people, or JSON lines for log pipelines.

use std::{
    borrow::Cow,
    fmt::Write as _,
    fs::OpenOptions,
    io::{self, Write},
    num::NonZeroU32,
    os::unix::fs::OpenOptionsExt,
    path::{Path, PathBuf},
};

use crate::{kernel_maps::SiteState, report::Report};

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    Table,
    Json,
}

/// Frames shown per call site in the table; JSON carries them all.
const TABLE_FRAMES: usize = 12;

#[derive(Debug, thiserror::Error)]
pub enum OutputError {
    #[error("cannot open output file {path}")]
    Open { path: PathBuf, source: io::Error },
    #[error("cannot write the report")]
    Write(#[from] io::Error),
}

pub struct Output {
    format: Format,
    sink: Box<dyn Write + Send>,
}

impl Output {
    /// Reports to `path`, created with `mode` if new, or to stdout.
    pub fn open(format: Format, path: Option<&Path>, mode: u32) -> Result<Self, OutputError> {
        let sink: Box<dyn Write + Send> = match path {
            Some(path) => Box::new(
                OpenOptions::new()
                    .create(true)
                    .append(true)
                    .mode(mode)
                    .open(path)
                    .map_err(|source| OutputError::Open {
                        path: path.to_owned(),
                        source,
                    })?,
            ),
            None => Box::new(io::stdout()),
        };
        Ok(Self { format, sink })
    }

    pub fn write(&mut self, report: &Report) -> Result<(), OutputError> {
        let text = match self.format {
            Format::Json => {
                let mut line = serde_json::to_string(report).map_err(io::Error::from)?;
                line.push('\n');
                line
            }
            Format::Table => table(report),
        };
        self.sink.write_all(text.as_bytes())?;
        self.sink.flush()?;
        Ok(())
    }
}

/// One process in the `--all` summary.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProcessSummary {
    pub pid: NonZeroU32,
    /// Its command name, as the kernel has it; empty once it is gone.
    pub comm: String,
    pub bytes: u64,
    pub allocations: u64,
    pub callsites: usize,
}

impl ProcessSummary {
    pub fn of(pid: NonZeroU32, sites: &[SiteState]) -> Self {
        let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
        Self {
            pid,
            comm: comm.trim_end().to_owned(),
            bytes: sites.iter().map(|s| s.bytes).sum(),
            allocations: sites.iter().map(|s| s.allocations).sum(),
            callsites: sites.len(),
        }
    }
}

impl Output {
    /// With `--all`, the processes reported on next, in a table; JSON lines carry the
    /// same figures in each process's report.
    pub fn write_summary(
        &mut self,
        processes: &[ProcessSummary],
        is_final: bool,
    ) -> Result<(), OutputError> {
        if self.format == Format::Json {
            return Ok(());
        }
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
                printable(&process.comm),
                process.bytes,
                process.allocations,
                process.callsites
            );
        }
        self.sink.write_all(out.as_bytes())?;
        self.sink.flush()?;
        Ok(())
    }
}

/// `text` safe for a terminal: a name from the target may hold control characters
/// (escape sequences), which are shown escaped instead of sent.
fn printable(text: &str) -> Cow<'_, str> {
    if text.chars().any(char::is_control) {
        Cow::Owned(text.escape_debug().to_string())
    } else {
        Cow::Borrowed(text)
    }
}

/// The report as a table: one block per call site, its stack under it.
pub fn table(report: &Report) -> String {
    let mut out = String::new();
    let c = &report.counters;
    let _ = writeln!(
        out,
        "leakbpf report #{}{} pid {} at {}: {} B outstanding in {} allocations at {} call sites",
        report.report,
        if report.is_final { " (final)" } else { "" },
        report.pid,
        report.timestamp,
        report.totals.outstanding_bytes,
        report.totals.outstanding_allocations,
        report.totals.callsites,
    );
    let _ = writeln!(
        out,
        "  events: {} allocations, {} frees, {} frees of unknown blocks, {} failed allocations, {} stack failures",
        c.allocations, c.frees, c.unknown_frees, c.failed_allocations, c.stack_failures
    );
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
    if report.callsites.is_empty() {
        let _ = writeln!(out, "  no outstanding allocations");
    } else {
        let _ = writeln!(
            out,
            "  {:>4}  {:>14}  {:>10}  {:>10}  {:>9}  {:>15}",
            "RANK", "BYTES", "ALLOCS", "AVG SIZE", "OLDEST", "GROWTH"
        );
    }
    for site in &report.callsites {
        let oldest = format!("{:.1}s", site.oldest_age_s);
        let _ = writeln!(
            out,
            "  {:>4}  {:>14}  {:>10}  {:>10}  {:>9}  {:>+15}",
            site.rank, site.bytes, site.allocations, site.average_size, oldest, site.growth_bytes
        );
        if site.frames.is_empty() {
            let _ = writeln!(
                out,
                "          [stack not available: unreadable, or the stack map was full (--max-stacks)]"
            );
        }
        for frame in site.frames.iter().take(TABLE_FRAMES) {
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
        if site.frames.len() > TABLE_FRAMES {
            let _ = writeln!(
                out,
                "          ... {} more frames",
                site.frames.len() - TABLE_FRAMES
            );
        }
    }
    out.push('\n');
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        kernel_maps::Counters,
        report::{SCHEMA_VERSION, Totals},
    };

    fn report_with(counters: Counters) -> Report {
        Report {
            schema_version: SCHEMA_VERSION,
            timestamp: "2026-11-25T10:00:00.000Z".into(),
            pid: 42,
            report: 1,
            is_final: false,
            interval_s: 5.0,
            totals: Totals {
                outstanding_bytes: 0,
                outstanding_allocations: 0,
                callsites: 0,
            },
            counters,
            callsites: Vec::new(),
        }
    }

    #[test]
    fn probe_errors_and_lost_events_are_warned_of_when_there_are_some() {
        let warnings = |counters| -> Vec<String> {
            table(&report_with(counters))
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
    fn control_characters_from_the_target_are_escaped() {
        assert_eq!(printable("Server::handleJoin"), "Server::handleJoin");
        assert_eq!(printable("evil\u{1b}[2Jname\n"), "evil\\u{1b}[2Jname\\n");
    }
}
