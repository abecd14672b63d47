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
    // The sampled estimate's leak: measured on the agent's report, not on its cost.
    Program {
        name: "sampled_leak",
        source: "sampled_leak.c",
        cxx: false,
        opt: "-O2",
        includes: &[PROTOCOL],
        builds: &[Build::FramePointers],
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

/// The allocator a workload's malloc and free reach: glibc's, or one preloaded by the
/// name its Debian package gives it, as a service that swaps its allocator is started.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Allocator {
    Glibc,
    Jemalloc,
    Tcmalloc,
    Mimalloc,
}

impl Allocator {
    pub const ALL: [Allocator; 4] = [
        Allocator::Glibc,
        Allocator::Jemalloc,
        Allocator::Tcmalloc,
        Allocator::Mimalloc,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Allocator::Glibc => "glibc",
            Allocator::Jemalloc => "jemalloc",
            Allocator::Tcmalloc => "tcmalloc",
            Allocator::Mimalloc => "mimalloc",
        }
    }

    /// The library in `LD_PRELOAD` (from libjemalloc2, libtcmalloc-minimal4 and
    /// libmimalloc2.0); none for glibc's, which is there anyway.
    pub fn preload(self) -> Option<&'static str> {
        match self {
            Allocator::Glibc => None,
            Allocator::Jemalloc => Some("/usr/lib/x86_64-linux-gnu/libjemalloc.so.2"),
            Allocator::Tcmalloc => Some("/usr/lib/x86_64-linux-gnu/libtcmalloc_minimal.so.4"),
            Allocator::Mimalloc => Some("/usr/lib/x86_64-linux-gnu/libmimalloc.so.2"),
        }
    }

    /// Why it cannot be preloaded here. The loader ignores a missing preload with a
    /// warning, so the workload would run on glibc's allocator under the other's name.
    pub fn unavailable(self) -> Option<String> {
        let library = self.preload()?;
        (!Path::new(library).is_file())
            .then(|| format!("{library} is not installed: run `cargo xtask bench setup-peers`"))
    }

    /// Its malloc/free workload.
    pub fn pairs(self) -> Workload {
        match self {
            Allocator::Glibc => Workload::MallocFree,
            Allocator::Jemalloc => Workload::MallocFreeJemalloc,
            Allocator::Tcmalloc => Workload::MallocFreeTcmalloc,
            Allocator::Mimalloc => Workload::MallocFreeMimalloc,
        }
    }
}

/// A workload of the comparison.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Workload {
    /// (a) malloc/free pairs of 16–256 B.
    MallocFree,
    /// The same loop on the other allocators, each preloaded.
    MallocFreeJemalloc,
    MallocFreeTcmalloc,
    MallocFreeMimalloc,
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
    pub const ALL: [Workload; 8] = [
        Workload::MallocFree,
        Workload::MallocFreeJemalloc,
        Workload::MallocFreeTcmalloc,
        Workload::MallocFreeMimalloc,
        Workload::MallocFreeDeep,
        Workload::Mixed,
        Workload::Chat,
        Workload::ChatFixedLoad,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Workload::MallocFree => "malloc_free",
            Workload::MallocFreeJemalloc => "malloc_free_jemalloc",
            Workload::MallocFreeTcmalloc => "malloc_free_tcmalloc",
            Workload::MallocFreeMimalloc => "malloc_free_mimalloc",
            Workload::MallocFreeDeep => "malloc_free_deep",
            Workload::Mixed => "mixed",
            Workload::Chat => "chat",
            Workload::ChatFixedLoad => "chat_fixed_load",
        }
    }

    /// The builds it runs on: the deep stack is the walk's cost without frame pointers,
    /// where the tables are read at every frame; the other allocators are compared with
    /// glibc's on the build of the floor's target.
    pub fn builds(self) -> &'static [Build] {
        match self {
            Workload::MallocFreeDeep => &[Build::NoFramePointers],
            Workload::MallocFreeJemalloc
            | Workload::MallocFreeTcmalloc
            | Workload::MallocFreeMimalloc => &[Build::FramePointers],
            _ => &Build::ALL,
        }
    }

    pub fn allocator(self) -> Allocator {
        match self {
            Workload::MallocFreeJemalloc => Allocator::Jemalloc,
            Workload::MallocFreeTcmalloc => Allocator::Tcmalloc,
            Workload::MallocFreeMimalloc => Allocator::Mimalloc,
            _ => Allocator::Glibc,
        }
    }

    pub fn parse(name: &str) -> Option<Workload> {
        Workload::ALL.into_iter().find(|w| w.name() == name)
    }

    fn program(self) -> &'static str {
        match self {
            Workload::MallocFree
            | Workload::MallocFreeJemalloc
            | Workload::MallocFreeTcmalloc
            | Workload::MallocFreeMimalloc
            | Workload::MallocFreeDeep => "malloc_free",
            Workload::Mixed => "mixed",
            Workload::Chat | Workload::ChatFixedLoad => "chat_bench",
        }
    }

    /// The measurement the workload prints, and its unit.
    pub fn metric(self) -> (&'static str, &'static str) {
        match self {
            Workload::MallocFree
            | Workload::MallocFreeJemalloc
            | Workload::MallocFreeTcmalloc
            | Workload::MallocFreeMimalloc
            | Workload::MallocFreeDeep => ("ns_per_pair", "ns per malloc/free pair"),
            Workload::Mixed => ("ns_per_round", "ns per round"),
            Workload::Chat | Workload::ChatFixedLoad => ("msgs_per_s", "messages per second"),
        }
    }

    /// What it does, for the report.
    pub fn description(self) -> &'static str {
        match self {
            Workload::MallocFree => "malloc/free pairs of 16-256 B in a tight loop",
            Workload::MallocFreeJemalloc => {
                "the malloc/free loop on jemalloc (LD_PRELOAD=libjemalloc.so.2)"
            }
            Workload::MallocFreeTcmalloc => {
                "the malloc/free loop on tcmalloc (LD_PRELOAD=libtcmalloc_minimal.so.4)"
            }
            Workload::MallocFreeMimalloc => {
                "the malloc/free loop on mimalloc (LD_PRELOAD=libmimalloc.so.2)"
            }
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
            Workload::MallocFree
            | Workload::MallocFreeJemalloc
            | Workload::MallocFreeTcmalloc
            | Workload::MallocFreeMimalloc
            | Workload::MallocFreeDeep => self.malloc_free,
            Workload::Mixed => self.mixed,
            Workload::Chat => self.chat,
            Workload::ChatFixedLoad => self.fixed_load,
        }
    }
}

/// How a workload is started: its program, arguments and the allocator preloaded.
pub struct Invocation {
    pub program: PathBuf,
    pub args: Vec<String>,
    /// The `LD_PRELOAD` library, if any.
    pub preload: Option<&'static str>,
}

/// The built programs, a directory per build.
pub struct Binaries {
    dir: PathBuf,
}

impl Binaries {
    /// How `workload` built as `build` is started.
    pub fn command(&self, build: Build, workload: Workload, durations: &Durations) -> Invocation {
        Invocation {
            program: self.dir.join(build.name()).join(workload.program()),
            args: arguments(workload, durations),
            preload: workload.allocator().preload(),
        }
    }

    /// The sampled estimate's program: `blocks` blocks of `size` bytes leaked at one
    /// call site among `churn` malloc/free pairs per block.
    pub fn sampled_leak(&self, blocks: u64, size: u64, churn: u64) -> (PathBuf, Vec<String>) {
        let args = [("--blocks", blocks), ("--size", size), ("--churn", churn)]
            .iter()
            .flat_map(|(name, value)| [(*name).to_owned(), value.to_string()])
            .collect();
        let build = Build::FramePointers;
        (self.dir.join(build.name()).join("sampled_leak"), args)
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
