//! `cargo xtask test`: everything CI checks, failing fast.

use std::{
    env,
    io::{BufRead, BufReader},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    sync::{Mutex, OnceLock, PoisonError},
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};

use devutil::{header, is_root, which};

use crate::{ebpf, toolchain};

type Step = fn(&Path) -> Result<()>;

const STEPS: &[(&str, Step)] = &[
    ("setup --ebpf", setup),
    ("fmt", fmt),
    ("clippy", clippy),
    ("clippy-ebpf", ebpf::clippy),
    ("check-ebpf", ebpf::check),
    ("dist", dist),
    ("test", test),
];

/// The tests of the static build (tests/tests/dist.rs) read its path from this variable.
const DIST_ENV: &str = "LEAKBPF_DIST";

/// The static binary the `dist` step built.
static DIST: OnceLock<PathBuf> = OnceLock::new();

/// Test counts summed over every test binary of the `test` step.
static TALLY: Mutex<Tally> = Mutex::new(Tally {
    passed: 0,
    failed: 0,
});

#[derive(Clone, Copy)]
struct Tally {
    passed: u64,
    failed: u64,
}

pub fn run(root: &Path) -> Result<()> {
    let start = Instant::now();
    let result = run_steps(root, start);
    // The last line CI reads: one sum over all test binaries (cargo's own last line
    // is that of whichever binary ran last, often one with no tests at all).
    let tally = *TALLY.lock().unwrap_or_else(PoisonError::into_inner);
    println!("tests: {} passed, {} failed", tally.passed, tally.failed);
    result
}

fn run_steps(root: &Path, start: Instant) -> Result<()> {
    for (done, (name, step)) in STEPS.iter().enumerate() {
        header(name);
        if let Err(e) = step(root) {
            let passed: Vec<&str> = STEPS[..done].iter().map(|(n, _)| *n).collect();
            println!(
                "==> xtask test: FAILED at step `{name}` after {} (passed: {})",
                secs(start.elapsed()),
                if passed.is_empty() {
                    "none".to_owned()
                } else {
                    passed.join(", ")
                }
            );
            return Err(e.context(format!("step `{name}` failed")));
        }
    }
    let names: Vec<&str> = STEPS.iter().map(|(n, _)| *n).collect();
    println!(
        "==> xtask test: all {} steps passed in {} ({})",
        STEPS.len(),
        secs(start.elapsed()),
        names.join(", ")
    );
    Ok(())
}

fn secs(elapsed: Duration) -> String {
    format!("{:.0}s", elapsed.as_secs_f64())
}

fn setup(_root: &Path) -> Result<()> {
    toolchain::setup(true)
}

fn cargo(root: &Path) -> Command {
    let mut cmd = Command::new("cargo");
    cmd.current_dir(root);
    cmd
}

/// The workspace, and the eBPF crate (its own workspace) through rustfmt directly.
fn fmt(root: &Path) -> Result<()> {
    devutil::run(cargo(root).args(["fmt", "--all", "--check"]))?;
    devutil::run(
        Command::new("rustfmt")
            .current_dir(root)
            .args(["--check", "--edition", "2024"])
            .arg(root.join("leakbpf-ebpf/src/main.rs")),
    )
}

fn clippy(root: &Path) -> Result<()> {
    devutil::run(cargo(root).args([
        "clippy",
        "--workspace",
        "--all-targets",
        "--",
        "-D",
        "warnings",
    ]))
}

/// `cargo xtask dist` as anyone runs it, once for every test that needs it: a release
/// build for musl costs minutes, and here it is built unprivileged, outside the tests'
/// deadlines. Its last line, the static binary's path, is what the tests get.
fn dist(root: &Path) -> Result<()> {
    let xtask = env::current_exe().context("cannot find xtask's own executable")?;
    let mut cmd = Command::new(xtask);
    cmd.current_dir(root).arg("dist");
    let mut last = String::new();
    stream(&mut cmd, |line| last = line.to_owned())?;
    let binary = PathBuf::from(last);
    if !binary.is_file() {
        bail!(
            "`cargo xtask dist` printed {} last, which is no file",
            binary.display()
        );
    }
    DIST.set(binary)
        .map_err(|_| anyhow::anyhow!("the dist step ran twice"))
}

/// Runs `cmd`, printing its stdout line by line and handing each line to `each`; fails
/// unless it succeeds.
fn stream(cmd: &mut Command, mut each: impl FnMut(&str)) -> Result<()> {
    cmd.stdout(Stdio::piped());
    let mut child = cmd
        .spawn()
        .with_context(|| format!("cannot run {}", devutil::describe(cmd)))?;
    let stdout = child.stdout.take().context("no stdout")?;
    for line in BufReader::new(stdout).lines() {
        let line = line.with_context(|| format!("cannot read {}", devutil::describe(cmd)))?;
        println!("{line}");
        each(&line);
    }
    let status = child.wait().context("cannot wait for it")?;
    if !status.success() {
        bail!("{} failed ({status})", devutil::describe(cmd));
    }
    Ok(())
}

/// The tests load eBPF programs, so the test binaries run as root: directly when we are,
/// else through `sudo -E` as cargo's runner (the build stays unprivileged).
fn test(root: &Path) -> Result<()> {
    let mut cmd = cargo(root);
    cmd.args(["test", "--workspace"]);
    if let Some(binary) = DIST.get() {
        cmd.env(DIST_ENV, binary);
    }
    if !is_root() {
        if which("sudo").is_none() {
            bail!("the tests load eBPF programs and need root: run as root, or install sudo");
        }
        let path = env::var("PATH").context("PATH is not set or not UTF-8")?;
        let runner = toml::Value::Array(
            ["sudo", "-E", "env", &format!("PATH={path}")]
                .into_iter()
                .map(|s| toml::Value::String(s.to_owned()))
                .collect(),
        );
        println!("not root: running the test binaries through sudo");
        cmd.arg("--config")
            .arg(format!("target.'cfg(all())'.runner = {runner}"));
    }
    stream(&mut cmd, |line| {
        if let Some((passed, failed)) = counts(line) {
            let mut tally = TALLY.lock().unwrap_or_else(PoisonError::into_inner);
            tally.passed += passed;
            tally.failed += failed;
        }
    })?;
    let tally = *TALLY.lock().unwrap_or_else(PoisonError::into_inner);
    if tally.passed == 0 {
        bail!("cargo test ran no test");
    }
    Ok(())
}

/// Passed and failed counts from a `test result: ok. 3 passed; 0 failed; ...` line.
fn counts(line: &str) -> Option<(u64, u64)> {
    let rest = line.strip_prefix("test result: ")?;
    let number = |word: &str| {
        rest.split(';').find_map(|part| {
            part.trim()
                .strip_suffix(word)?
                .split_whitespace()
                .last()?
                .parse()
                .ok()
        })
    };
    Some((number(" passed")?, number(" failed")?))
}

#[cfg(test)]
mod tests {
    use super::counts;

    #[test]
    fn reads_cargo_test_summaries() {
        assert_eq!(
            counts(
                "test result: ok. 27 passed; 0 failed; 1 ignored; 0 measured; 0 filtered out; finished in 0.09s"
            ),
            Some((27, 0))
        );
        assert_eq!(
            counts("test result: FAILED. 3 passed; 2 failed; 0 ignored"),
            Some((3, 2))
        );
        assert_eq!(counts("running 3 tests"), None);
    }
}
