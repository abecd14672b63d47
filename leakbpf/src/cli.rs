//! The command line: `leakbpf --pid PID [INTERVAL [COUNT]]`, `leakbpf [options] --
//! COMMAND ARGS...`, `leakbpf --all`, and `leakbpf report FILE` for a saved run.

use std::{
    collections::BTreeSet,
    ffi::OsString,
    fs::File,
    io::{self, BufReader},
    net::SocketAddr,
    num::{NonZeroU32, NonZeroU64, NonZeroUsize},
    path::PathBuf,
    process::ExitCode,
    time::Duration,
};

use anyhow::{Context, Result, bail};
use clap::{Args, Parser, Subcommand};
use leakbpf_common::{DEFAULT_STACK_DEPTH, MAX_SAMPLE_BYTES, MAX_STACK_DEPTH};

use crate::{
    analyze::{Plumbing, Sort, Suppressions, diff},
    kernel::{self, Capacity, Sampling},
    output::{self, Format, Output},
    serve,
    session::{self, Settings, Target, Verdicts},
    snapshot::{self, Snapshot},
};

/// The exit status when a leak check fails (`--fail-on-leak`, `--fail-on-outstanding`):
/// apart from 1, an error.
pub const LEAK_FOUND: u8 = 3;

/// `--top-processes` unless given.
const DEFAULT_TOP_PROCESSES: usize = 5;

/// `--interval` unless given.
const DEFAULT_INTERVAL: Duration = Duration::from_secs(5);

/// Permissions of a new output file unless `--output-mode` says otherwise: reports name
/// the traced program's code and files.
const DEFAULT_OUTPUT_MODE: u32 = 0o600;

const EXAMPLES: &str = "\
Examples:
  sudo leakbpf --pid 1234                      top 10 unfreed call sites every 5 s
  sudo leakbpf -p 1234 10 3                    every 10 s, 3 reports (as BCC's memleak)
  sudo leakbpf --pid 1234 --min-age 30s        only allocations older than 30 s
  sudo leakbpf --format json -o leaks.ndjson --pid 1234
  sudo leakbpf --interval 1s -- ./server --port 8080   start it traced
  sudo leakbpf --follow-forks --pid 1234       and every process it starts
  sudo leakbpf --all --top-processes 5         every process, the 5 holding most
  sudo leakbpf -p 1234 --http 9100             serve /metrics, /debug/pprof/heap,
                                               /flamegraph.svg, /report.json on 127.0.0.1
  sudo leakbpf -p 1234 -f pprof -o 'heap-{report}.pb.gz'   a pprof profile per report
  leakbpf report leaks.ndjson                  a saved run, as a table
  leakbpf report -f svg leaks.ndjson > heap.svg      its final report as a flame graph";

/// Finds the call stacks that hold unfreed memory in a live process, with eBPF uprobes
/// on its allocation functions: no restart, no rebuild, low overhead.
#[derive(Debug, Parser)]
#[command(
    name = "leakbpf",
    disable_version_flag = true,
    after_help = EXAMPLES,
    args_conflicts_with_subcommands = true,
    subcommand_negates_reqs = true
)]
pub struct Cli {
    /// Print the version, the commit it was built from, and the kernel features found
    /// (for a bug report).
    #[arg(short = 'V', long, exclusive = true)]
    pub version: bool,
    #[command(subcommand)]
    pub subcommand: Option<Command>,
    #[command(flatten)]
    pub trace: TraceArgs,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Renders a saved run (the JSON lines of `--format json`) again, as a table or JSON.
    Report(ReportArgs),
    /// Compares two saved runs: call sites new, gone, grown or shrunk, matched by their
    /// functions (never by address).
    Diff(DiffArgs),
}

#[derive(Debug, Args)]
pub struct DiffArgs {
    /// The run before (e.g. the buggy build).
    pub before: PathBuf,
    /// The run after (e.g. the fixed build).
    pub after: PathBuf,
    /// How the diff is written: a table, or one JSON object.
    #[arg(short, long, value_enum, default_value_t = DiffFormat::Table)]
    pub format: DiffFormat,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum DiffFormat {
    /// For people.
    Table,
    /// One JSON object.
    Json,
}

#[derive(Debug, Args)]
pub struct ReportArgs {
    /// The saved run; `-` for standard input.
    pub file: PathBuf,
    /// How the reports are written. pprof, folded and svg write one document: the final
    /// report of each process, or one file per report with {report} in --output.
    #[arg(short, long, value_enum, default_value_t = Format::Table)]
    pub format: Format,
    /// Write to this file instead of standard output; {report} (the report's number)
    /// and {pid} in its name make a file per report or process: heap-{report}.pb.gz.
    #[arg(short, long, value_name = "FILE")]
    pub output: Option<PathBuf>,
    /// Only the reports about this process.
    #[arg(short, long)]
    pub pid: Option<NonZeroU32>,
    /// Only each process's final report.
    #[arg(long)]
    pub final_only: bool,
    /// The table shows the allocation plumbing frames of each call site too.
    #[arg(long)]
    pub show_alloc_frames: bool,
}

#[derive(Debug, Args)]
pub struct TraceArgs {
    /// Trace this running process; repeat, or separate with commas, for several.
    #[arg(
        short,
        long,
        value_delimiter = ',',
        conflicts_with_all = ["command", "all"],
        required_unless_present_any = ["command", "all"]
    )]
    pub pid: Vec<NonZeroU32>,
    /// Also trace every process the traced ones start from now on, each with its own
    /// reports.
    #[arg(long, conflicts_with = "all")]
    pub follow_forks: bool,
    /// Trace every process on the system that uses the C library's allocator (or the
    /// C++ one): a report on each of the --top-processes holding the most.
    #[arg(long, conflicts_with = "command")]
    pub all: bool,
    /// With --all: processes reported on every interval, most outstanding bytes first
    /// (5).
    #[arg(long, conflicts_with_all = ["pid", "command"])]
    pub top_processes: Option<NonZeroUsize>,
    /// Time between reports, e.g. 5s, 500ms, 1m; a bare number is seconds (5).
    #[arg(short, long, value_parser = positive_duration, conflicts_with = "interval_seconds")]
    pub interval: Option<Duration>,
    /// Call sites per report.
    #[arg(long, default_value = "10")]
    pub top: NonZeroUsize,
    /// Which call sites come first: most outstanding bytes, fastest growing, oldest block.
    #[arg(long, value_enum, default_value_t = Sort::Bytes)]
    pub sort: Sort,
    /// Exit with status 3 if a call site's verdict is leak at the end of the run.
    #[arg(long)]
    pub fail_on_leak: bool,
    /// Exit with status 3 if more than BYTES are outstanding at the end (at the started
    /// command's exit: LeakSanitizer's view, without a rebuild).
    #[arg(long, value_name = "BYTES")]
    pub fail_on_outstanding: Option<u64>,
    /// A function of the program's own that wraps the allocator (`my_malloc`, `app_*alloc`:
    /// `*` and `?` wildcards; repeat for more): call sites are shown at its caller, as
    /// they are past the runtimes' own plumbing (Rust's alloc, libstdc++'s allocators,
    /// g_malloc, PyMem_Malloc, CRYPTO_malloc, xmalloc, …).
    #[arg(long, value_name = "PATTERN")]
    pub alloc_fn: Vec<String>,
    /// The table shows the allocation plumbing frames of each call site too.
    #[arg(long)]
    pub show_alloc_frames: bool,
    /// Known leaks, in LeakSanitizer's format (`leak:PATTERN` lines): left out of reports
    /// and checks, and listed as suppressed.
    #[arg(long, value_name = "FILE")]
    pub suppressions: Option<PathBuf>,
    /// Count only allocations at least this old, e.g. 30s; a bare number is seconds.
    #[arg(long, value_parser = duration)]
    pub min_age: Option<Duration>,
    /// Stop after this many reports (the last is the final one).
    #[arg(long, conflicts_with = "count_reports")]
    pub count: Option<NonZeroU64>,
    /// How reports are written. table and json write every report; pprof (binary, never
    /// to a terminal), folded and svg are whole documents: only the final report, unless
    /// --output names a file per report with {report}.
    #[arg(short, long, value_enum, default_value_t = Format::Table)]
    pub format: Format,
    /// Write reports to this file instead of standard output (appended to; a document
    /// format replaces it). {report} (the report's number) and {pid} in the name make one
    /// file per report or per process: 'heap-{report}.pb.gz', 'heap-{pid}-{report}.svg'.
    #[arg(short, long, value_name = "FILE")]
    pub output: Option<PathBuf>,
    /// Permissions of a new --output file, in octal.
    #[arg(long, default_value = "600", value_parser = octal_mode)]
    pub output_mode: u32,
    /// Serve the latest reports over HTTP while tracing: /metrics (Prometheus),
    /// /debug/pprof/heap (pprof), /flamegraph.svg, /report.json. A bare PORT or :PORT
    /// listens on 127.0.0.1 only; ADDRESS:PORT as given (0.0.0.0:9100, [::1]:9100).
    #[arg(long, value_name = "[ADDRESS:]PORT", value_parser = serve::address)]
    pub http: Option<SocketAddr>,
    /// Sample allocations, for long runs on hot services: a block of S bytes is recorded
    /// with probability 1 − exp(−S/BYTES) (a Poisson process over each thread's bytes,
    /// as tcmalloc and jemalloc sample), and bytes and blocks are reported as unbiased
    /// estimates with their standard error. Allocations passed over are neither walked
    /// nor stored; their probes still fire (e.g. 524288).
    #[arg(long, value_name = "BYTES", value_parser = clap::value_parser!(u64).range(1..=MAX_SAMPLE_BYTES))]
    pub sample_bytes: Option<u64>,
    /// Outstanding allocations the kernel map holds; beyond it they are counted as dropped.
    #[arg(long, default_value = "1000000")]
    pub max_allocs: NonZeroU32,
    /// Distinct stacks the kernel map holds; beyond it allocations are still counted, at
    /// call sites without frames.
    #[arg(long, default_value = "65536")]
    pub max_stacks: NonZeroU32,
    /// Frames of each stack walked at most, from the allocator's caller up (at most 127).
    #[arg(long, default_value_t = DEFAULT_STACK_DEPTH, value_parser = clap::value_parser!(u32).range(1..=MAX_STACK_DEPTH as i64))]
    pub max_depth: u32,
    /// Rows of unwind tables the kernel holds, for every object the traced processes map
    /// (8 bytes each); an object whose table does not fit is walked up to its frames.
    #[arg(long, default_value = "4194304")]
    pub max_unwind_rows: NonZeroU32,
    /// Also probe the C allocation functions under this prefix, for an allocator built
    /// with prefixed names (`je_` for `je_malloc`, `je_free`, …).
    #[arg(long, value_name = "PREFIX")]
    pub symbol_prefix: Option<String>,
    /// Show each probe attached (object, symbol, offset) and the eBPF side's diagnostics.
    #[arg(short, long)]
    pub verbose: bool,
    /// Attach empty programs at the same places instead: the cost of the probes alone,
    /// for `cargo xtask bench`. Reports stay empty.
    #[arg(long, hide = true)]
    pub floor: bool,
    /// A perf-event link per probe even where the kernel has uprobe_multi links, as
    /// before 6.6: for the tests of that path.
    #[arg(long, hide = true)]
    pub perf_links: bool,
    /// Seconds between reports, as BCC's memleak takes them: `leakbpf -p PID 5 3`.
    #[arg(value_name = "INTERVAL", value_parser = positive_duration)]
    pub interval_seconds: Option<Duration>,
    /// Reports before stopping, after INTERVAL.
    #[arg(value_name = "COUNT", requires = "interval_seconds")]
    pub count_reports: Option<NonZeroU64>,
    /// The command to start traced, after `--`.
    #[arg(last = true, value_name = "COMMAND")]
    pub command: Vec<OsString>,
}

/// A duration such as `5s`, `500ms` or `1m`, or a bare number of seconds (`5`, `0.5`).
fn duration(text: &str) -> Result<Duration, String> {
    if let Ok(seconds) = text.parse::<f64>() {
        return Duration::try_from_secs_f64(seconds)
            .map_err(|_| format!("{text:?} is not a number of seconds"));
    }
    humantime::parse_duration(text).map_err(|err| err.to_string())
}

fn positive_duration(text: &str) -> Result<Duration, String> {
    match duration(text)? {
        duration if duration.is_zero() => Err("must be longer than zero".into()),
        duration => Ok(duration),
    }
}

fn octal_mode(text: &str) -> Result<u32, String> {
    match u32::from_str_radix(text, 8) {
        Ok(mode) if mode <= 0o7777 => Ok(mode),
        _ => Err(format!("{text:?} is not an octal file mode such as 600")),
    }
}

impl TraceArgs {
    fn settings(self) -> Result<Settings> {
        let suppressions = match &self.suppressions {
            Some(path) => {
                let text = std::fs::read_to_string(path)
                    .with_context(|| format!("cannot read suppressions {}", path.display()))?;
                Suppressions::parse(&text)
                    .with_context(|| format!("bad suppressions in {}", path.display()))?
            }
            None => Suppressions::default(),
        };
        let target = if self.all {
            Target::All {
                top_processes: self
                    .top_processes
                    .map_or(DEFAULT_TOP_PROCESSES, NonZeroUsize::get),
            }
        } else if self.pid.is_empty() {
            Target::Command(self.command)
        } else {
            Target::Pids(self.pid)
        };
        Ok(Settings {
            target,
            interval: self
                .interval
                .or(self.interval_seconds)
                .unwrap_or(DEFAULT_INTERVAL),
            top: self.top.get(),
            min_age: self.min_age,
            count: self.count.or(self.count_reports).map(NonZeroU64::get),
            format: self.format,
            output: self.output,
            output_mode: self.output_mode,
            http: self.http,
            capacity: Capacity {
                allocations: self.max_allocs.get(),
                stacks: self.max_stacks.get(),
                unwind_rows: self.max_unwind_rows.get(),
            },
            stack_depth: self.max_depth,
            sampling: self.sample_bytes.map(|mean_bytes| Sampling { mean_bytes }),
            verbose: self.verbose,
            floor: self.floor,
            perf_links: self.perf_links,
            symbol_prefix: self.symbol_prefix,
            follow_forks: self.follow_forks,
            sort: self.sort,
            suppressions,
            plumbing: Plumbing::new(&self.alloc_fn).context("bad allocation function pattern")?,
            show_alloc_frames: self.show_alloc_frames,
        })
    }
}

/// `--fail-on-leak` and `--fail-on-outstanding`.
struct LeakCheck {
    fail_on_leak: bool,
    fail_on_outstanding: Option<u64>,
}

impl LeakCheck {
    /// The check's failure, if the final reports fail it.
    fn failure(&self, verdicts: &Verdicts) -> Option<String> {
        if self.fail_on_leak && !verdicts.leaks.is_empty() {
            let sites: Vec<String> = verdicts
                .leaks
                .iter()
                .map(|(pid, sites)| format!("{sites} in pid {pid}"))
                .collect();
            return Some(format!("leaking call sites: {}", sites.join(", ")));
        }
        let limit = self.fail_on_outstanding?;
        let over: Vec<String> = verdicts
            .outstanding
            .iter()
            .filter(|(_, bytes)| *bytes > limit)
            .map(|(pid, bytes)| format!("{bytes} B in pid {pid}"))
            .collect();
        (!over.is_empty())
            .then(|| format!("outstanding at the end over {limit} B: {}", over.join(", ")))
    }
}

/// Runs leakbpf with this process's arguments; errors become one line on stderr.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let level = if cli.trace.verbose {
        log::LevelFilter::Info
    } else {
        log::LevelFilter::Warn
    };
    env_logger::Builder::new().filter_level(level).init();
    if cli.version {
        print!("{}", version());
        return ExitCode::SUCCESS;
    }
    let result = match cli.subcommand {
        Some(Command::Report(args)) => report(&args).map(|()| None),
        Some(Command::Diff(args)) => diff(&args).map(|()| None),
        None => trace(cli.trace),
    };
    match result {
        Ok(None) => ExitCode::SUCCESS,
        Ok(Some(failure)) => {
            eprintln!("leakbpf: leak check failed: {failure}");
            ExitCode::from(LEAK_FOUND)
        }
        Err(err) => {
            let message = format!("{err:#}").replace('\n', " ");
            eprintln!("leakbpf: error: {message}");
            ExitCode::FAILURE
        }
    }
}

/// `leakbpf --version`: what a bug report needs to say about this build and this kernel.
fn version() -> String {
    format!(
        "leakbpf {}\ncommit: {}\nbuilt for: {}\n{}",
        env!("CARGO_PKG_VERSION"),
        env!("LEAKBPF_COMMIT"),
        env!("LEAKBPF_BUILD_TARGET"),
        kernel::features::probe()
    )
}

/// A traced run; returns the leak check's failure, if any.
fn trace(args: TraceArgs) -> Result<Option<String>> {
    let check = LeakCheck {
        fail_on_leak: args.fail_on_leak,
        fail_on_outstanding: args.fail_on_outstanding,
    };
    let verdicts = session::run(args.settings()?)?;
    Ok(check.failure(&verdicts))
}

/// A saved run's reports; `-` is standard input.
fn read_saved(path: &PathBuf) -> Result<Vec<Snapshot>> {
    let what = path.display();
    if path.as_os_str() == "-" {
        snapshot::read_run(io::stdin().lock())
    } else {
        let file = File::open(path).with_context(|| format!("cannot open {what}"))?;
        snapshot::read_run(BufReader::new(file))
    }
    .with_context(|| format!("cannot read {what}"))
}

/// `leakbpf diff`: the last final report of each run compared.
fn diff(args: &DiffArgs) -> Result<()> {
    let last_final = |path: &PathBuf| -> Result<Snapshot> {
        let mut snapshots = read_saved(path)?;
        let index = snapshots
            .iter()
            .rposition(|s| s.is_final)
            .unwrap_or(snapshots.len() - 1);
        Ok(snapshots.swap_remove(index))
    };
    let diff = diff::diff(&last_final(&args.before)?, &last_final(&args.after)?);
    let text = match args.format {
        DiffFormat::Table => output::diff_table(&diff),
        DiffFormat::Json => {
            let mut line = serde_json::to_string(&diff).context("cannot write the diff")?;
            line.push('\n');
            line
        }
    };
    io::Write::write_all(&mut io::stdout().lock(), text.as_bytes()).context("cannot write the diff")
}

/// `leakbpf report`: a saved run rendered again.
fn report(args: &ReportArgs) -> Result<()> {
    let what = args.file.display();
    let snapshots = read_saved(&args.file)?;
    let chosen: Vec<&Snapshot> = snapshots
        .iter()
        .filter(|s| args.pid.is_none_or(|pid| s.pid == pid.get()))
        .filter(|s| s.is_final || !args.final_only)
        .collect();
    if chosen.is_empty() {
        bail!("{what} holds no report that matches");
    }
    let processes: BTreeSet<u32> = chosen.iter().map(|s| s.pid).collect();
    let mut output = Output::open(
        args.format,
        args.output.as_deref(),
        DEFAULT_OUTPUT_MODE,
        processes.len() > 1,
        args.show_alloc_frames,
    )?;
    for snapshot in chosen {
        output.write(snapshot)?;
    }
    output.finish()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_pid_mode_with_defaults() {
        let cli = Cli::try_parse_from(["leakbpf", "--pid", "42"]).unwrap();
        let settings = cli.trace.settings().unwrap();
        assert!(
            matches!(&settings.target, Target::Pids(pids) if pids[..] == [NonZeroU32::new(42).unwrap()])
        );
        assert_eq!(settings.interval, Duration::from_secs(5));
        assert_eq!(settings.top, 10);
        assert_eq!(settings.output_mode, 0o600);
        assert_eq!(settings.format, Format::Table);
    }

    #[test]
    fn parses_a_command_after_the_separator() {
        let cli = Cli::try_parse_from([
            "leakbpf", "-i", "250ms", "--format", "json", "--", "ls", "-l",
        ])
        .unwrap();
        let settings = cli.trace.settings().unwrap();
        assert_eq!(settings.interval, Duration::from_millis(250));
        match settings.target {
            Target::Command(command) => assert_eq!(command, ["ls", "-l"]),
            _ => panic!("expected a command"),
        }
    }

    #[test]
    fn takes_several_pids() {
        let cli = Cli::try_parse_from(["leakbpf", "-p", "1,2", "--pid", "3"]).unwrap();
        match cli.trace.settings().unwrap().target {
            Target::Pids(pids) => {
                assert_eq!(pids.iter().map(|p| p.get()).collect::<Vec<_>>(), [1, 2, 3])
            }
            _ => panic!("expected pids"),
        }
    }

    #[test]
    fn takes_all_processes_and_following_forks() {
        let cli = Cli::try_parse_from(["leakbpf", "--all", "--top-processes", "3"]).unwrap();
        assert!(matches!(
            cli.trace.settings().unwrap().target,
            Target::All { top_processes: 3 }
        ));
        let cli = Cli::try_parse_from(["leakbpf", "--follow-forks", "--", "make"]).unwrap();
        assert!(cli.trace.settings().unwrap().follow_forks);
    }

    #[test]
    fn takes_bcc_s_interval_and_count_and_bare_seconds() {
        let cli = Cli::try_parse_from(["leakbpf", "-p", "1234", "5", "3"]).unwrap();
        let settings = cli.trace.settings().unwrap();
        assert_eq!(settings.interval, Duration::from_secs(5));
        assert_eq!(settings.count, Some(3));
        let cli =
            Cli::try_parse_from(["leakbpf", "-p", "1", "--interval", "1", "--min-age", "0.5"])
                .unwrap();
        let settings = cli.trace.settings().unwrap();
        assert_eq!(settings.interval, Duration::from_secs(1));
        assert_eq!(settings.min_age, Some(Duration::from_millis(500)));
        let cli = Cli::try_parse_from(["leakbpf", "-p", "1", "2"]).unwrap();
        let settings = cli.trace.settings().unwrap();
        assert_eq!(settings.interval, Duration::from_secs(2));
        assert_eq!(settings.count, None);
    }

    #[test]
    fn takes_the_report_subcommand() {
        let cli =
            Cli::try_parse_from(["leakbpf", "report", "run.ndjson", "--format", "json"]).unwrap();
        match cli.subcommand {
            Some(Command::Report(args)) => {
                assert_eq!(args.file, PathBuf::from("run.ndjson"));
                assert_eq!(args.format, Format::Json);
            }
            _ => panic!("expected the report subcommand"),
        }
        let cli = Cli::try_parse_from(["leakbpf", "diff", "a.ndjson", "b.ndjson"]).unwrap();
        assert!(matches!(cli.subcommand, Some(Command::Diff(_))));
    }

    #[test]
    fn checks_fail_on_leaks_and_on_what_is_left() {
        let verdicts = Verdicts {
            leaks: vec![(7, 2)],
            outstanding: vec![(7, 4096)],
        };
        let check = |fail_on_leak, fail_on_outstanding| {
            LeakCheck {
                fail_on_leak,
                fail_on_outstanding,
            }
            .failure(&verdicts)
        };
        assert_eq!(check(false, None), None);
        assert_eq!(check(true, None).unwrap(), "leaking call sites: 2 in pid 7");
        assert_eq!(check(false, Some(4096)), None);
        assert!(
            check(false, Some(4095))
                .unwrap()
                .contains("4096 B in pid 7")
        );
    }

    #[test]
    fn takes_version_alone() {
        for flag in ["--version", "-V"] {
            let cli = Cli::try_parse_from(["leakbpf", flag]).unwrap();
            assert!(cli.version);
            assert!(Cli::try_parse_from(["leakbpf", flag, "--pid", "1"]).is_err());
        }
        assert!(!Cli::try_parse_from(["leakbpf", "-p", "1"]).unwrap().version);
    }

    #[test]
    fn refuses_nonsense() {
        for args in [
            &["leakbpf"][..],
            &["leakbpf", "--pid", "0"],
            &["leakbpf", "--pid", "1", "--", "ls"],
            &["leakbpf", "--pid", "1", "--interval", "0s"],
            &["leakbpf", "--pid", "1", "--output-mode", "999"],
            &["leakbpf", "--all", "--pid", "1"],
            &["leakbpf", "--all", "--", "ls"],
            &["leakbpf", "--all", "--follow-forks"],
            &["leakbpf", "--pid", "1", "--top-processes", "3"],
            &["leakbpf", "--pid", "1", "--interval", "2s", "5"],
            &["leakbpf", "--pid", "1", "5", "3", "--count", "2"],
            &["leakbpf", "--pid", "1", "0"],
            &["leakbpf", "--pid", "1", "--interval", "-1"],
            &["leakbpf", "--pid", "1", "report", "x"],
            &["leakbpf", "report"],
        ] {
            assert!(Cli::try_parse_from(args).is_err(), "{args:?} was accepted");
        }
    }
}
