//! The programs the bench measures: their sources in `leakbpf-bench/workloads/`, how they
//! are built, and how each is run. Every one follows the protocol of
//! `leakbpf-bench/workloads/bench_protocol.h`.

use std::{
    fs,
    path::{Path, PathBuf},
    process::Command,
    time::SystemTime,
};

use anyhow::{Context, Result};
use devutil::header;

/// The compilers' flags: frame pointers (every stack-walking tool needs them) and no
/// sibling calls, like tests/targets.
const COMMON_FLAGS: &[&str] = &[
    "-g",
    "-fno-omit-frame-pointer",
    "-fno-optimize-sibling-calls",
    "-Wall",
    "-Wextra",
];

/// One program: its source under `leakbpf-bench/workloads/`, compiler and optimisation level.
struct Program {
    name: &'static str,
    source: &'static str,
    cxx: bool,
    opt: &'static str,
    /// Other files it includes, relative to the repository root.
    includes: &'static [&'static str],
}

const SOURCES: &str = "leakbpf-bench/workloads";
const PROTOCOL: &str = "leakbpf-bench/workloads/bench_protocol.h";
const CHAT_SERVER: &str = "tests/targets/chat_server.cpp";

const PROGRAMS: &[Program] = &[
    Program {
        name: "malloc_free",
        source: "malloc_free.c",
        cxx: false,
        opt: "-O2",
        includes: &[PROTOCOL],
    },
    Program {
        name: "mixed",
        source: "mixed.cpp",
        cxx: true,
        opt: "-O2",
        includes: &[PROTOCOL],
    },
    Program {
        name: "chat_bench",
        source: "chat_bench.cpp",
        cxx: true,
        opt: "-O2",
        includes: &[PROTOCOL, CHAT_SERVER],
    },
    // The scale test needs -O1: one call per recursion level and call site.
    Program {
        name: "stacks",
        source: "stacks.c",
        cxx: false,
        opt: "-O1",
        includes: &[PROTOCOL],
    },
];

/// A workload of the comparison.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Workload {
    /// (a) malloc/free pairs of 16–256 B.
    MallocFree,
    /// (b) calloc, realloc, posix_memalign, operator new/new[] and their frees.
    Mixed,
    /// (c) the chat-server demo at full speed.
    Chat,
    /// The chat server at a fixed offered load: the production view.
    ChatFixedLoad,
}

impl Workload {
    pub const ALL: [Workload; 4] = [
        Workload::MallocFree,
        Workload::Mixed,
        Workload::Chat,
        Workload::ChatFixedLoad,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Workload::MallocFree => "malloc_free",
            Workload::Mixed => "mixed",
            Workload::Chat => "chat",
            Workload::ChatFixedLoad => "chat_fixed_load",
        }
    }

    fn program(self) -> &'static str {
        match self {
            Workload::MallocFree => "malloc_free",
            Workload::Mixed => "mixed",
            Workload::Chat | Workload::ChatFixedLoad => "chat_bench",
        }
    }

    /// The measurement the workload prints, and its unit.
    pub fn metric(self) -> (&'static str, &'static str) {
        match self {
            Workload::MallocFree => ("ns_per_pair", "ns per malloc/free pair"),
            Workload::Mixed => ("ns_per_round", "ns per round"),
            Workload::Chat | Workload::ChatFixedLoad => ("msgs_per_s", "messages per second"),
        }
    }

    /// What it does, for the report.
    pub fn description(self) -> &'static str {
        match self {
            Workload::MallocFree => "malloc/free pairs of 16-256 B in a tight loop",
            Workload::Mixed => {
                "rounds of calloc, malloc+realloc, posix_memalign(64), operator new, \
                 operator new[], each freed (5 allocations, 1 realloc, 5 frees)"
            }
            Workload::Chat => {
                "the chat-server demo (tests/targets/chat_server.cpp) at full speed: \
                 join, 3 messages fanned out to the room, leave"
            }
            Workload::ChatFixedLoad => "the chat-server demo at a fixed offered load",
        }
    }
}

/// How long each timed loop runs, and the offered load of the production view.
#[derive(Clone, Copy, Debug)]
pub struct Durations {
    pub malloc_free: f64,
    pub mixed: f64,
    pub chat: f64,
    pub fixed_load: f64,
    pub rate: f64,
}

/// The built programs.
pub struct Binaries {
    dir: PathBuf,
}

impl Binaries {
    /// The command line of `workload` (program and arguments).
    pub fn command(&self, workload: Workload, durations: &Durations) -> (PathBuf, Vec<String>) {
        let seconds = match workload {
            Workload::MallocFree => durations.malloc_free,
            Workload::Mixed => durations.mixed,
            Workload::Chat => durations.chat,
            Workload::ChatFixedLoad => durations.fixed_load,
        };
        let mut args = vec!["--seconds".to_owned(), seconds.to_string()];
        if workload == Workload::ChatFixedLoad {
            args.extend(["--rate".to_owned(), durations.rate.to_string()]);
        }
        (self.dir.join(workload.program()), args)
    }

    /// The scale test's program: `allocs` blocks over `stacks` distinct stacks.
    pub fn stacks(&self, allocs: u32, stacks: u32) -> (PathBuf, Vec<String>) {
        let args = vec![
            "--allocs".to_owned(),
            allocs.to_string(),
            "--stacks".to_owned(),
            stacks.to_string(),
        ];
        (self.dir.join("stacks"), args)
    }
}

/// Compiles the workloads into `out` (only those older than their sources).
pub fn build(root: &Path, out: &Path) -> Result<Binaries> {
    header("build the bench workloads");
    fs::create_dir_all(out).with_context(|| format!("cannot create {}", out.display()))?;
    let sources = root.join(SOURCES);
    for program in PROGRAMS {
        let source = sources.join(program.source);
        let binary = out.join(program.name);
        let inputs: Vec<PathBuf> = std::iter::once(source.clone())
            .chain(program.includes.iter().map(|i| root.join(i)))
            .collect();
        if is_fresh(&binary, &inputs) {
            continue;
        }
        let mut cmd = Command::new(if program.cxx { "g++" } else { "gcc" });
        if program.cxx {
            cmd.args(["-std=c++17", "-pthread"]);
        }
        cmd.arg(program.opt)
            .args(COMMON_FLAGS)
            .arg("-o")
            .arg(&binary)
            .arg(&source);
        println!("{}", devutil::describe(&cmd));
        devutil::run(&mut cmd)?;
    }
    Ok(Binaries {
        dir: out.to_owned(),
    })
}

/// Whether `binary` exists and is newer than every input.
fn is_fresh(binary: &Path, inputs: &[PathBuf]) -> bool {
    let modified = |p: &Path| fs::metadata(p).and_then(|m| m.modified()).ok();
    let Some(built) = modified(binary) else {
        return false;
    };
    inputs
        .iter()
        .all(|input| modified(input).is_some_and(|t: SystemTime| t <= built))
}
