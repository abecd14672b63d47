//! The tools compared: how each is started on a workload and how the bench knows it is
//! attached.

use std::{
    fs,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context, Result};

use devutil::{try_output, which};

use crate::{
    peers::{self, BPFTRACE, HEAPTRACK, MEMLEAK, VALGRIND},
    procinfo,
};

/// One column of the comparison.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Tool {
    Baseline,
    Leakbpf,
    /// leakbpf with `--sample-bytes` [`SAMPLE_BYTES`].
    LeakbpfSampled,
    Floor,
    Memleak,
    Bpftrace,
    Heaptrack,
    Valgrind,
}

/// How a tool meets the workload.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// The workload alone.
    Bare,
    /// Started on the running workload's pid; attached once `marker` is in its output
    /// and its perf-event file descriptors (its uprobes) stop changing.
    Attach { marker: &'static str },
    /// Starts the workload itself.
    Launch,
}

/// The mean bytes between sample points of [`Tool::LeakbpfSampled`]: what the issue's
/// target for a sampled service is set at.
pub const SAMPLE_BYTES: &str = "524288";

impl Tool {
    pub const ALL: [Tool; 8] = [
        Tool::Baseline,
        Tool::Leakbpf,
        Tool::LeakbpfSampled,
        Tool::Floor,
        Tool::Memleak,
        Tool::Bpftrace,
        Tool::Heaptrack,
        Tool::Valgrind,
    ];
    /// What `--quick` compares.
    pub const QUICK: [Tool; 3] = [Tool::Baseline, Tool::Leakbpf, Tool::Floor];

    pub fn name(self) -> &'static str {
        match self {
            Tool::Baseline => "baseline",
            Tool::Leakbpf => "leakbpf",
            Tool::LeakbpfSampled => "leakbpf-sampled",
            Tool::Floor => "floor",
            Tool::Memleak => "memleak",
            Tool::Bpftrace => "bpftrace",
            Tool::Heaptrack => "heaptrack",
            Tool::Valgrind => "valgrind",
        }
    }

    pub fn parse(name: &str) -> Option<Tool> {
        Tool::ALL.into_iter().find(|t| t.name() == name)
    }

    pub fn mode(self) -> Mode {
        match self {
            Tool::Baseline => Mode::Bare,
            Tool::Leakbpf | Tool::LeakbpfSampled | Tool::Floor => Mode::Attach {
                marker: "leakbpf: attached",
            },
            // Both print this before they attach: the perf-event count tells the rest.
            Tool::Memleak => Mode::Attach {
                marker: "Attaching to pid",
            },
            Tool::Bpftrace => Mode::Attach {
                marker: "Attaching ",
            },
            Tool::Heaptrack | Tool::Valgrind => Mode::Launch,
        }
    }

    /// The command line, for the report (PID and PROGRAM stand for the workload).
    pub fn command_line(self) -> &'static str {
        match self {
            Tool::Baseline => "PROGRAM ARGS",
            Tool::Leakbpf => "target/release/leakbpf --pid PID --interval 1s --verbose",
            Tool::LeakbpfSampled => {
                "target/release/leakbpf --pid PID --interval 1s --sample-bytes 524288"
            }
            Tool::Floor => "target/release/leakbpf --floor --pid PID --interval 1s",
            Tool::Memleak => "memleak-bpfcc -p PID 1 (run by leakbpf-bench/peers/memleak_shim.py)",
            Tool::Bpftrace => {
                "bpftrace -p PID leaks.bt (leakbpf-bench/peers/leaks.bt for PID's libc)"
            }
            Tool::Heaptrack => "heaptrack -o FILE PROGRAM ARGS",
            Tool::Valgrind => {
                "valgrind --tool=memcheck --leak-check=full --log-file=FILE PROGRAM ARGS"
            }
        }
    }

    /// The Debian package that ships it, for its version in the report.
    fn package(self) -> Option<&'static str> {
        match self {
            Tool::Memleak => Some("bpfcc-tools"),
            Tool::Bpftrace => Some("bpftrace"),
            Tool::Heaptrack => Some("heaptrack"),
            Tool::Valgrind => Some("valgrind"),
            _ => None,
        }
    }
}

/// Everything needed to start the tools.
pub struct Toolbox {
    pub agent: PathBuf,
    pub bpftrace_script: PathBuf,
    pub memleak_shim: PathBuf,
}

impl Toolbox {
    /// Why `tool` cannot run here, if it cannot.
    pub fn unavailable(&self, tool: Tool) -> Option<String> {
        let setup = "run `cargo xtask bench setup-peers`";
        let program = match tool {
            Tool::Baseline | Tool::Leakbpf | Tool::LeakbpfSampled | Tool::Floor => return None,
            Tool::Memleak => MEMLEAK,
            Tool::Bpftrace => BPFTRACE,
            Tool::Heaptrack => HEAPTRACK,
            Tool::Valgrind => VALGRIND,
        };
        if which(program).is_none() {
            return Some(format!("{program} is not installed: {setup}"));
        }
        if tool == Tool::Memleak {
            let release = peers::kernel_release().unwrap_or_default();
            let build = Path::new("/lib/modules").join(&release).join("build");
            if !build.join("include").is_dir() {
                return Some(format!(
                    "BCC needs kernel headers at {} (none for kernel {release}): {setup}",
                    build.display()
                ));
            }
        }
        None
    }

    /// The tool's version, when a package tells it.
    pub fn version(&self, tool: Tool) -> Option<String> {
        if matches!(tool, Tool::Leakbpf | Tool::LeakbpfSampled | Tool::Floor) {
            // Its first line: the others tell of this machine's kernel, in the report's
            // machine line already.
            return try_output(Command::new(&self.agent).arg("--version"))
                .and_then(|v| v.lines().next().map(str::to_owned));
        }
        package_version(tool.package()?)
    }

    /// The command attaching `tool` to `pid`; `dir` takes its scratch files.
    pub fn attach(&self, tool: Tool, pid: u32, dir: &Path) -> Result<Command> {
        let pid_arg = pid.to_string();
        let cmd = match tool {
            Tool::Leakbpf | Tool::LeakbpfSampled | Tool::Floor => {
                let mut cmd = Command::new(&self.agent);
                cmd.args(["--pid", &pid_arg, "--interval", "1s"]);
                // The floor's probes are empty, and the sampled run walks the same
                // tables, so only leakbpf's are of interest: --verbose prints their
                // figures (crate::unwind_tables). It changes nothing on the probes' path.
                match tool {
                    Tool::Floor => cmd.arg("--floor"),
                    Tool::LeakbpfSampled => cmd.args(["--sample-bytes", SAMPLE_BYTES]),
                    _ => cmd.arg("--verbose"),
                };
                cmd
            }
            Tool::Memleak => {
                // Through the shim, by the interpreter the script names (see the shim).
                let script = which(MEMLEAK).context("memleak-bpfcc is not installed")?;
                let mut cmd = Command::new(interpreter(&script)?);
                cmd.arg(&self.memleak_shim).arg(script);
                // Python buffers a redirected stdout: the marker would come late.
                cmd.env("PYTHONUNBUFFERED", "1").args(["-p", &pid_arg, "1"]);
                cmd
            }
            Tool::Bpftrace => {
                let script = self.bpftrace_script_for(pid, dir)?;
                let mut cmd = Command::new(BPFTRACE);
                cmd.args(["-p", &pid_arg]).arg(script);
                cmd
            }
            _ => anyhow::bail!("{} does not attach to a pid", tool.name()),
        };
        Ok(cmd)
    }

    /// The command starting `program args` under `tool`; `dir` takes its output files.
    pub fn launch(&self, tool: Tool, program: &Path, args: &[String], dir: &Path) -> Command {
        let mut cmd = match tool {
            Tool::Heaptrack => {
                let mut cmd = Command::new(HEAPTRACK);
                cmd.arg("-o").arg(dir.join("heaptrack"));
                cmd
            }
            Tool::Valgrind => {
                let mut log = std::ffi::OsString::from("--log-file=");
                log.push(dir.join("valgrind.log"));
                let mut cmd = Command::new(VALGRIND);
                cmd.args(["--tool=memcheck", "--leak-check=full"]).arg(log);
                cmd
            }
            _ => Command::new(program),
        };
        if matches!(tool, Tool::Heaptrack | Tool::Valgrind) {
            cmd.arg(program);
        }
        cmd.args(args);
        cmd
    }

    /// `leakbpf-bench/peers/leaks.bt` for this pid and its libc, written into `dir`.
    fn bpftrace_script_for(&self, pid: u32, dir: &Path) -> Result<PathBuf> {
        let template = fs::read_to_string(&self.bpftrace_script)
            .with_context(|| format!("cannot read {}", self.bpftrace_script.display()))?;
        let libc = procinfo::mapped_libc(pid)?;
        let script = template
            .replace("LIBC", &libc.to_string_lossy())
            .replace("PID", &pid.to_string());
        let path = dir.join("leaks.bt");
        fs::write(&path, script).with_context(|| format!("cannot write {}", path.display()))?;
        Ok(path)
    }
}

/// `PACKAGE VERSION` of an installed Debian package.
pub fn package_version(package: &str) -> Option<String> {
    try_output(Command::new("dpkg-query").args(["-W", "-f=${Version}", package]))
        .filter(|v| !v.is_empty())
        .map(|v| format!("{package} {v}"))
}

/// The interpreter on a script's `#!` line.
fn interpreter(script: &Path) -> Result<PathBuf> {
    let text =
        fs::read_to_string(script).with_context(|| format!("cannot read {}", script.display()))?;
    text.lines()
        .next()
        .and_then(|line| line.strip_prefix("#!"))
        .and_then(|rest| rest.split_whitespace().next())
        .map(PathBuf::from)
        .with_context(|| format!("{} has no #! line", script.display()))
}
