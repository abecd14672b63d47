//! The command line: `leakbpf --pid PID` or `leakbpf [options] -- COMMAND ARGS...`.

use std::{
    ffi::OsString,
    num::{NonZeroU32, NonZeroU64, NonZeroUsize},
    path::PathBuf,
    process::ExitCode,
    time::Duration,
};

use clap::Parser;

use crate::{
    agent::{self, Settings, Target},
    output::Format,
    tracer::Capacity,
};

/// `--top-processes` unless given.
const DEFAULT_TOP_PROCESSES: usize = 5;

const EXAMPLES: &str = "\
Examples:
  sudo leakbpf --pid 1234                      top 10 unfreed call sites every 5 s
  sudo leakbpf --pid 1234 --min-age 30s        only allocations older than 30 s
  sudo leakbpf --format json -o leaks.ndjson --pid 1234
  sudo leakbpf --interval 1s -- ./server --port 8080   start it traced
  sudo leakbpf --follow-forks --pid 1234       and every process it starts
  sudo leakbpf --all --top-processes 5         every process, the 5 holding most";

/// Finds the call stacks that hold unfreed memory in a live process, with eBPF uprobes
/// on its allocation functions: no restart, no rebuild, low overhead.
#[derive(Debug, Parser)]
#[command(name = "leakbpf", version, after_help = EXAMPLES)]
pub struct Cli {
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
    /// Time between reports, e.g. 5s, 500ms, 1m.
    #[arg(short, long, default_value = "5s", value_parser = positive_duration)]
    pub interval: Duration,
    /// Call sites per report, largest outstanding bytes first.
    #[arg(long, default_value = "10")]
    pub top: NonZeroUsize,
    /// Count only allocations at least this old, e.g. 30s.
    #[arg(long, value_parser = humantime::parse_duration)]
    pub min_age: Option<Duration>,
    /// Stop after this many reports (the last is the final one).
    #[arg(long)]
    pub count: Option<NonZeroU64>,
    /// How reports are written: a table for people, or one JSON object per line.
    #[arg(short, long, value_enum, default_value_t = Format::Table)]
    pub format: Format,
    /// Append reports to this file instead of standard output.
    #[arg(short, long)]
    pub output: Option<PathBuf>,
    /// Permissions of a new --output file, in octal.
    #[arg(long, default_value = "600", value_parser = octal_mode)]
    pub output_mode: u32,
    /// Outstanding allocations the kernel map holds; beyond it they are counted as dropped.
    #[arg(long, default_value = "1000000")]
    pub max_allocs: NonZeroU32,
    /// Distinct stacks the kernel map holds; beyond it allocations are still counted, at
    /// call sites without frames.
    #[arg(long, default_value = "65536")]
    pub max_stacks: NonZeroU32,
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
    /// The command to start traced, after `--`.
    #[arg(last = true, value_name = "COMMAND")]
    pub command: Vec<OsString>,
}

fn positive_duration(text: &str) -> Result<Duration, String> {
    match humantime::parse_duration(text) {
        Ok(duration) if duration.is_zero() => Err("must be longer than zero".into()),
        Ok(duration) => Ok(duration),
        Err(err) => Err(err.to_string()),
    }
}

fn octal_mode(text: &str) -> Result<u32, String> {
    match u32::from_str_radix(text, 8) {
        Ok(mode) if mode <= 0o7777 => Ok(mode),
        _ => Err(format!("{text:?} is not an octal file mode such as 600")),
    }
}

impl Cli {
    fn settings(self) -> Settings {
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
        Settings {
            target,
            interval: self.interval,
            top: self.top.get(),
            min_age: self.min_age,
            count: self.count.map(NonZeroU64::get),
            format: self.format,
            output: self.output,
            output_mode: self.output_mode,
            capacity: Capacity {
                allocations: self.max_allocs.get(),
                stacks: self.max_stacks.get(),
            },
            verbose: self.verbose,
            floor: self.floor,
            symbol_prefix: self.symbol_prefix,
            follow_forks: self.follow_forks,
        }
    }
}

/// Runs leakbpf with this process's arguments; errors become one line on stderr.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let level = if cli.verbose {
        log::LevelFilter::Info
    } else {
        log::LevelFilter::Warn
    };
    env_logger::Builder::new().filter_level(level).init();
    match agent::run(cli.settings()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            let message = format!("{err:#}").replace('\n', " ");
            eprintln!("leakbpf: error: {message}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_pid_mode_with_defaults() {
        let cli = Cli::try_parse_from(["leakbpf", "--pid", "42"]).unwrap();
        let settings = cli.settings();
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
        let settings = cli.settings();
        assert_eq!(settings.interval, Duration::from_millis(250));
        match settings.target {
            Target::Command(command) => assert_eq!(command, ["ls", "-l"]),
            _ => panic!("expected a command"),
        }
    }

    #[test]
    fn takes_several_pids() {
        let cli = Cli::try_parse_from(["leakbpf", "-p", "1,2", "--pid", "3"]).unwrap();
        match cli.settings().target {
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
            cli.settings().target,
            Target::All { top_processes: 3 }
        ));
        let cli = Cli::try_parse_from(["leakbpf", "--follow-forks", "--", "make"]).unwrap();
        assert!(cli.settings().follow_forks);
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
        ] {
            assert!(Cli::try_parse_from(args).is_err(), "{args:?} was accepted");
        }
    }
}
