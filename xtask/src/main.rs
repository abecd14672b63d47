//! leakbpf's development tasks: `cargo xtask <task>` (see `cargo xtask --help`).

mod bench;
mod demo;
mod dist;
mod ebpf;
mod rustc_wrapper;
mod test;
mod toolchain;

use std::{env, ffi::OsString, process::ExitCode};

use anyhow::Result;
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "cargo xtask",
    bin_name = "cargo xtask",
    about = "leakbpf development tasks"
)]
struct Cli {
    #[command(subcommand)]
    task: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Install what the tests, the demo and dist need (apt packages: g++, make, bpftool,
    /// util-linux, file, the allocators, and the output tests' readers: golang-go,
    /// prometheus, chromium; valgrind, perl, python3.11 for the unwinding tests; the musl
    /// target; cargo-deb)
    Setup {
        /// Also the eBPF toolchain (nightly + rust-src, or Debian's rustc-web + LLVM 22;
        /// and bpf-linker)
        #[arg(long)]
        ebpf: bool,
    },
    /// Build the eBPF object and ship it as leakbpf/bpf/leakbpf.bpf.o (with its toolchain stamp)
    BuildEbpf,
    /// Fail unless a fresh eBPF build is byte-identical to leakbpf/bpf/leakbpf.bpf.o
    CheckEbpf,
    /// Profile the demo chat server: the leaky build, then the RAII-fixed one
    Demo,
    /// Build the release agent and run it as root: `cargo xtask run -- ARGS`
    Run {
        /// Arguments for leakbpf
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<OsString>,
    },
    /// Build leakbpf-bench and run it: `cargo xtask bench [compare|soak|fuzz|setup-peers]
    /// [OPTIONS]` (docs/benchmarks.md; `cargo xtask bench --help` lists them)
    #[command(disable_help_flag = true)]
    Bench {
        /// Arguments for leakbpf-bench
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<OsString>,
    },
    /// Build leakbpf for production hosts: one static executable (x86_64 musl), its
    /// SHA-256 and a .deb of it, in target/leakbpf-dist; prints the executable's path last
    Dist,
    /// Everything CI checks: setup --ebpf, fmt, clippy, clippy-ebpf, check-ebpf, dist, tests
    Test,
}

fn main() -> ExitCode {
    devutil::exit_code_of(try_main())
}

fn try_main() -> Result<ExitCode> {
    if let Some(root) = env::var_os(rustc_wrapper::ROOT_ENV) {
        match rustc_wrapper::run(&root)? {}
    }
    let cli = Cli::parse();
    let root = devutil::repo_root()?;
    match cli.task {
        Task::Setup { ebpf } => toolchain::setup(ebpf)?,
        Task::BuildEbpf => ebpf::build_and_ship(&root)?,
        Task::CheckEbpf => ebpf::check(&root)?,
        Task::Demo => return Ok(ExitCode::from(demo::demo(&root)?)),
        Task::Run { args } => return Ok(ExitCode::from(demo::run(&root, &args)?)),
        Task::Dist => dist::dist(&root)?,
        Task::Test => test::run(&root)?,
        Task::Bench { args } => return Ok(ExitCode::from(bench::run(&root, &args)?)),
    }
    Ok(ExitCode::SUCCESS)
}
