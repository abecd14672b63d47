//! leakbpf's benchmark, run as `cargo xtask bench [SUBCOMMAND] [OPTIONS]` (xtask builds it
//! in release mode with the agent it measures):
//! - `compare`, the default: leakbpf against no tool, its floor (the same probes with
//!   empty programs) and peer tools, on the same workloads, interleaved, and the separate
//!   tests: the agent at scale, a sampled estimate, leakbpf's exit, a real server
//!   (docs/benchmarks.md);
//! - `soak`: the chat-server demo under leakbpf for minutes (docs/soak.md);
//! - `fuzz`: the cargo-fuzz targets in fuzz/ (docs/fuzzing.md);
//! - `setup-peers`: installs and prepares the peer tools.

mod compare;
mod exit_latency;
mod fuzz;
mod machine;
mod peers;
mod process;
mod procinfo;
mod provenance;
mod report;
mod results;
mod sampled_leak;
mod scale;
mod server;
mod session;
mod soak;
mod stats;
mod tools;
mod unwind_tables;
mod workloads;

use std::{path::PathBuf, process::ExitCode};

use anyhow::{Result, bail};
use clap::{Parser, Subcommand};

#[derive(Parser, Debug)]
#[command(
    name = "cargo xtask bench",
    bin_name = "cargo xtask bench",
    about = "leakbpf's benchmark: without a subcommand, `compare` with the options given",
    args_conflicts_with_subcommands = true
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    compare: compare::CompareArgs,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// leakbpf against no tool, its floor and peer tools, interleaved (the default); a
    /// full run of every tool replaces the results in docs/benchmarks.md. As root
    Compare(compare::CompareArgs),
    /// The chat-server demo under leakbpf at full load; fails unless the agent's RSS and
    /// call sites stay flat and the final figures match the target's own
    /// (docs/soak.md). As root
    Soak {
        /// How long
        #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..))]
        minutes: u64,
    },
    /// Every fuzz target in fuzz/ (cargo-fuzz, rustup's nightly) for the given seconds
    /// each; fails on a crash (docs/fuzzing.md)
    Fuzz {
        /// Seconds per target
        #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
        seconds: u64,
    },
    /// Install and prepare the peer tools (apt packages, kernel headers for BCC,
    /// tracefs)
    SetupPeers,
}

fn main() -> ExitCode {
    devutil::exit_code_of(try_main())
}

fn try_main() -> Result<ExitCode> {
    let cli = Cli::parse();
    let root = devutil::repo_root()?;
    match cli.command.unwrap_or(Command::Compare(cli.compare)) {
        Command::Compare(args) => {
            require_root()?;
            compare::run(&root, &agent(&root)?, &args)?;
        }
        Command::Soak { minutes } => {
            require_root()?;
            soak::run(&root, &agent(&root)?, minutes)?;
        }
        // No root needed: the fuzz targets call the parsers, nothing is traced.
        Command::Fuzz { seconds } => fuzz::run(&root, seconds)?,
        Command::SetupPeers => peers::setup()?,
    }
    Ok(ExitCode::SUCCESS)
}

/// The release agent that `cargo xtask bench` builds beside this binary.
fn agent(root: &std::path::Path) -> Result<PathBuf> {
    let agent = devutil::release_binary(root, "leakbpf");
    if !agent.is_file() {
        bail!(
            "no release agent at {}: run the bench with `cargo xtask bench`, which builds it",
            agent.display()
        );
    }
    Ok(agent)
}

fn require_root() -> Result<()> {
    if !devutil::is_root() {
        bail!(
            "cargo xtask bench needs root: the tools load eBPF programs and the bench reads \
             their /proc entries; run it as root"
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    use super::*;

    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(std::iter::once("leakbpf-bench").chain(args.iter().copied()))
    }

    #[test]
    fn the_cli_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn no_subcommand_is_the_comparison_with_its_options() {
        let cli = parse(&["--quick", "--tools", "leakbpf,memleak"]).unwrap();
        assert!(cli.command.is_none());
        assert!(cli.compare.quick);
        assert_eq!(cli.compare.tools, ["leakbpf", "memleak"]);
        let cli = parse(&["compare", "--repetitions", "2", "--no-scale"]).unwrap();
        let Some(Command::Compare(args)) = cli.command else {
            panic!("not compare: {cli:?}");
        };
        assert_eq!(
            (args.reps, args.no_scale, args.quick, args.no_server),
            (Some(2), true, false, false)
        );
        let cli = parse(&["--workloads", "malloc_free_jemalloc,none", "--no-server"]).unwrap();
        assert_eq!(cli.compare.workloads, ["malloc_free_jemalloc", "none"]);
        assert!(cli.compare.no_server);
    }

    #[test]
    fn soak_and_fuzz_are_subcommands_that_take_no_comparison_option() {
        let cli = parse(&["soak"]).unwrap();
        assert!(matches!(cli.command, Some(Command::Soak { minutes: 10 })));
        let cli = parse(&["soak", "--minutes", "2"]).unwrap();
        assert!(matches!(cli.command, Some(Command::Soak { minutes: 2 })));
        let cli = parse(&["fuzz", "--seconds", "30"]).unwrap();
        assert!(matches!(cli.command, Some(Command::Fuzz { seconds: 30 })));
        assert!(parse(&["fuzz"]).is_err(), "fuzz needs --seconds");
        assert!(parse(&["fuzz", "--seconds", "0"]).is_err());
        assert!(parse(&["--quick", "soak"]).is_err());
        assert!(parse(&["soak", "--quick"]).is_err());
    }
}
