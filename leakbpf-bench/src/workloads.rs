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

/// The compilers' flags for both builds. No sibling calls, like tests/targets: a tail call
/// would take its caller's frame off the stack, and the two builds' stacks would differ in
/// depth, not only in how they are walked.
const COMMON_FLAGS: &[&str] = &["-g", "-fno-optimize-sibling-calls", "-Wall", "-Wextra"];

/// How a workload is compiled: with frame pointers, which every stack-walking tool can
/// follow, or without, as distributions build, where only leakbpf's unwind tables give
/// whole stacks (the others' stacks are cut at the first frame without one).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Build {
    FramePointers,
    NoFramePointers,
}

impl Build {
    pub const ALL: [Build; 2] = [Build::FramePointers, Build::NoFramePointers];

    /// Its name in the results and its directory under target/bench/bin.
    pub fn name(self) -> &'static str {
        match self {
            Build::FramePointers => "fp",
            Build::NoFramePointers => "nofp",
        }
    }

    /// The flag that makes the difference; the rest are [`COMMON_FLAGS`].
    fn flag(self) -> &'static str {
        match self {
            Build::FramePointers => "-fno-omit-frame-pointer",
            Build::NoFramePointers => "-fomit-frame-pointer",
        }
    }

    /// Its compiler flags but the optimisation level (-O2 for the compared workloads),
    /// for the report.
    pub fn flags(self) -> String {
        std::iter::once(self.flag())
            .chain(COMMON_FLAGS.iter().copied())
            .collect::<Vec<_>>()
            .join(" ")
    }

    pub fn description(self) -> &'static str {
        match self {
            Build::FramePointers => "with frame pointers",
            Build::NoFramePointers => "without frame pointers",
        }
    }
}

/// One program: its source under `leakbpf-bench/workloads/`, compiler and optimisation level.
struct Program {
    name: &'static str,
    source: &'static str,
    cxx: bool,
    opt: &'static str,
    /// Other files it includes, relative to the repository root.
    includes: &'static [&'static str],
    builds: &'static [Build],
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
        builds: &Build::ALL,
    },
    Program {
        name: "mixed",
        source: "mixed.cpp",
        cxx: true,
        opt: "-O2",
        includes: &[PROTOCOL],
        builds: &Build::ALL,
    },
    Program {
        name: "chat_bench",
        source: "chat_bench.cpp",
        cxx: true,
        opt: "-O2",
        includes: &[PROTOCOL, CHAT_SERVER],
        builds: &Build::ALL,
    },
    // The scale test needs -O1: one call per recursion level and call site. It measures
    // the agent's own work per stack, which does not depend on how stacks are walked.
    Program {
        name: "stacks",
        source: "stacks.c",
        cxx: false,
        opt: "-O1",
        includes: &[PROTOCOL],
        builds: &[Build::FramePointers],
    },
];

/// The recursion depth of [`Workload::MallocFreeDeep`]: leakbpf's default `--max-depth`,
/// so its walk goes as deep as it goes by default.
pub const DEEP_STACK: u32 = 64;

/// A workload of the comparison.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Workload {
    /// (a) malloc/free pairs of 16–256 B.
    MallocFree,
    /// The same loop [`DEEP_STACK`] calls deep: what a deep stack costs the walk.
    MallocFreeDeep,
    /// (b) calloc, realloc, posix_memalign, operator new/new[] and their frees.
    Mixed,
    /// (c) the chat-server demo at full speed.
    Chat,
    /// The chat server at a fixed offered load: the production view.
    ChatFixedLoad,
}

impl Workload {
    pub const ALL: [Workload; 5] = [
        Workload::MallocFree,
        Workload::MallocFreeDeep,
        Workload::Mixed,
        Workload::Chat,
        Workload::ChatFixedLoad,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Workload::MallocFree => "malloc_free",
            Workload::MallocFreeDeep => "malloc_free_deep",
            Workload::Mixed => "mixed",
            Workload::Chat => "chat",
            Workload::ChatFixedLoad => "chat_fixed_load",
        }
    }

    /// The builds it runs on: the deep stack is the walk's cost without frame pointers,
    /// where the tables are read at every frame.
    pub fn builds(self) -> &'static [Build] {
        match self {
            Workload::MallocFreeDeep => &[Build::NoFramePointers],
            _ => &Build::ALL,
        }
    }

    fn program(self) -> &'static str {
        match self {
            Workload::MallocFree | Workload::MallocFreeDeep => "malloc_free",
            Workload::Mixed => "mixed",
            Workload::Chat | Workload::ChatFixedLoad => "chat_bench",
        }
    }

    /// The measurement the workload prints, and its unit.
    pub fn metric(self) -> (&'static str, &'static str) {
        match self {
            Workload::MallocFree | Workload::MallocFreeDeep => {
                ("ns_per_pair", "ns per malloc/free pair")
            }
            Workload::Mixed => ("ns_per_round", "ns per round"),
            Workload::Chat | Workload::ChatFixedLoad => ("msgs_per_s", "messages per second"),
        }
    }

    /// What it does, for the report.
    pub fn description(self) -> &'static str {
        match self {
            Workload::MallocFree => "malloc/free pairs of 16-256 B in a tight loop",
            Workload::MallocFreeDeep => {
                "the malloc/free loop at the bottom of a 64-deep recursion: 64-frame stacks"
            }
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

impl Durations {
    /// The timed loop of `workload`, seconds.
    pub fn of(&self, workload: Workload) -> f64 {
        match workload {
            Workload::MallocFree | Workload::MallocFreeDeep => self.malloc_free,
            Workload::Mixed => self.mixed,
            Workload::Chat => self.chat,
            Workload::ChatFixedLoad => self.fixed_load,
        }
    }
}

/// The built programs, a directory per build.
pub struct Binaries {
    dir: PathBuf,
}

impl Binaries {
    /// The command line of `workload` built as `build` (program and arguments).
    pub fn command(
        &self,
        build: Build,
        workload: Workload,
        durations: &Durations,
    ) -> (PathBuf, Vec<String>) {
        (
            self.dir.join(build.name()).join(workload.program()),
            arguments(workload, durations),
        )
    }

    /// The scale test's program: `allocs` blocks over `stacks` distinct stacks.
    pub fn stacks(&self, allocs: u32, stacks: u32) -> (PathBuf, Vec<String>) {
        let args = vec![
            "--allocs".to_owned(),
            allocs.to_string(),
            "--stacks".to_owned(),
            stacks.to_string(),
        ];
        let build = Build::FramePointers;
        (self.dir.join(build.name()).join("stacks"), args)
    }
}

/// The arguments of `workload`'s program.
pub fn arguments(workload: Workload, durations: &Durations) -> Vec<String> {
    let mut args = vec!["--seconds".to_owned(), durations.of(workload).to_string()];
    match workload {
        Workload::ChatFixedLoad => args.extend(["--rate".to_owned(), durations.rate.to_string()]),
        Workload::MallocFreeDeep => args.extend(["--depth".to_owned(), DEEP_STACK.to_string()]),
        _ => {}
    }
    args
}

/// Compiles the workloads into `out/BUILD/` for each of their builds (only those older
/// than their sources).
pub fn build(root: &Path, out: &Path) -> Result<Binaries> {
    header("build the bench workloads");
    let sources = root.join(SOURCES);
    for build in Build::ALL {
        let dir = out.join(build.name());
        fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
        for program in PROGRAMS.iter().filter(|p| p.builds.contains(&build)) {
            let source = sources.join(program.source);
            let binary = dir.join(program.name);
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
                .arg(build.flag())
                .args(COMMON_FLAGS)
                .arg("-o")
                .arg(&binary)
                .arg(&source);
            println!("{}", devutil::describe(&cmd));
            devutil::run(&mut cmd)?;
        }
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
