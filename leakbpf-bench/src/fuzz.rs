//! `cargo xtask bench fuzz --seconds N`: every cargo-fuzz target in `fuzz/` (the parsers
//! of what a traced process provides) for N seconds each, from a corpus seeded with real
//! inputs; reports executions and crashes. Needs rustup's nightly; installs cargo-fuzz.

use std::{
    env, fs,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::Duration,
};

use anyhow::{Context, Result, bail};
use devutil::{clear_build_env, header, try_output, which};
use serde::Serialize;

use crate::{machine::Machine, process, provenance, report, results::num};

const DOC: report::DocBlock = report::DocBlock {
    file: "docs/fuzzing.md",
    name: "fuzz-results",
    title: "Fuzzing leakbpf's parsers",
};
/// Where `cargo fuzz build` puts the targets, under fuzz/.
const BUILT: &str = "target/x86_64-unknown-linux-gnu/release";
/// An input that runs longer than this is a hang, and fails like a crash.
const INPUT_TIMEOUT_S: u32 = 10;
/// Why the nightly toolchain, in the errors when it is missing.
const NEEDS_NIGHTLY: &str =
    "fuzzing needs rustup's nightly toolchain (cargo-fuzz builds with -Z flags)";

#[derive(Debug, Serialize)]
pub struct FuzzResults {
    pub schema_version: u32,
    pub command: String,
    pub date_utc: String,
    pub machine: Machine,
    pub leakbpf_commit: Option<String>,
    pub seconds_per_target: u64,
    /// `address`, or `none` where this nightly cannot build with AddressSanitizer.
    pub sanitizer: String,
    pub targets: Vec<TargetResult>,
}

#[derive(Debug, Serialize)]
pub struct TargetResult {
    pub target: String,
    pub executions: Option<u64>,
    pub executions_per_s: Option<u64>,
    /// Inputs in its corpus after the run (kept in fuzz/corpus/ between runs).
    pub corpus: usize,
    /// The input that crashed it, saved by libFuzzer (fuzz/artifacts/), if any.
    pub crash: Option<String>,
    /// The run's output.
    pub log: String,
}

/// Runs every target for `seconds`; fails when one crashed.
pub fn run(root: &Path, seconds: u64) -> Result<()> {
    let fuzz_dir = root.join("fuzz");
    let out = devutil::target_dir(root).join("bench");
    let logs = out.join("fuzz");
    fs::create_dir_all(&logs).with_context(|| format!("cannot create {}", logs.display()))?;

    header("fuzz: nightly and cargo-fuzz");
    ensure_nightly()?;
    ensure_cargo_fuzz()?;
    let sanitizer = sanitizer()?;
    devutil::run(cargo_fuzz(&fuzz_dir).args(["build", "-s", &sanitizer]))?;
    let targets = list(&fuzz_dir)?;
    seed(&fuzz_dir).context("cannot seed the fuzz corpus")?;

    let mut results = Vec::new();
    for target in &targets {
        header(&format!("fuzz {target} for {seconds} s"));
        let result = fuzz(&fuzz_dir, target, seconds, &logs)?;
        println!(
            "  {} executions ({}/s), corpus {}, {}",
            result.executions.map_or("?".to_owned(), |n| n.to_string()),
            result
                .executions_per_s
                .map_or("?".to_owned(), |n| n.to_string()),
            result.corpus,
            result
                .crash
                .as_deref()
                .map_or("no crash".to_owned(), |c| format!("CRASH: {c}"))
        );
        results.push(result);
    }

    let results = FuzzResults {
        schema_version: 1,
        command: provenance::command_line(),
        date_utc: provenance::date_utc(),
        machine: Machine::detect(),
        leakbpf_commit: provenance::commit(root),
        seconds_per_target: seconds,
        sanitizer,
        targets: results,
    };
    header("fuzz results");
    report::write(
        root,
        &out,
        "fuzz",
        &results,
        &markdown(&results),
        Some(&DOC),
    )?;
    let crashed: Vec<&str> = results
        .targets
        .iter()
        .filter(|t| t.crash.is_some())
        .map(|t| t.target.as_str())
        .collect();
    if !crashed.is_empty() {
        bail!(
            "fuzzing crashed {}: see fuzz/artifacts/ and the logs in {}",
            crashed.join(", "),
            logs.display()
        );
    }
    Ok(())
}

/// `cargo +nightly fuzz ...` in `fuzz/`, free of the calling cargo's settings.
fn cargo_fuzz(fuzz_dir: &Path) -> Command {
    let mut cmd = Command::new("cargo");
    clear_build_env(&mut cmd);
    cmd.current_dir(fuzz_dir).args(["+nightly", "fuzz"]);
    cmd
}

/// Installs rustup's nightly when missing; fails with one line when it cannot.
fn ensure_nightly() -> Result<()> {
    if which("rustup").is_none() {
        bail!("{NEEDS_NIGHTLY}, and there is no rustup here: install rustup and its nightly");
    }
    let toolchains = devutil::output(Command::new("rustup").args(["toolchain", "list"]))?;
    if toolchains.lines().any(|l| l.starts_with("nightly")) {
        return Ok(());
    }
    let mut install = Command::new("rustup");
    install.args(["toolchain", "install", "nightly", "--profile", "minimal"]);
    println!(
        "{NEEDS_NIGHTLY}; installing it: {}",
        devutil::describe(&install)
    );
    let status = devutil::status(&mut install)?;
    if !status.success() {
        bail!(
            "{NEEDS_NIGHTLY}; it is not installed and `{}` failed ({status})",
            devutil::describe(&install)
        );
    }
    Ok(())
}

/// Installs cargo-fuzz with `cargo install` unless cargo already has it.
fn ensure_cargo_fuzz() -> Result<()> {
    let installed = devutil::cargo_home()?.join("bin").join("cargo-fuzz");
    if which("cargo-fuzz").is_some() || installed.exists() {
        return Ok(());
    }
    let mut cmd = Command::new("cargo");
    clear_build_env(&mut cmd);
    cmd.args(["install", "cargo-fuzz", "--locked"]);
    println!("installing cargo-fuzz: {}", devutil::describe(&cmd));
    let status = devutil::status(&mut cmd)?;
    if !status.success() {
        bail!(
            "fuzzing needs cargo-fuzz; it is not installed and `{}` failed ({status})",
            devutil::describe(&cmd)
        );
    }
    Ok(())
}

/// AddressSanitizer when this nightly can link a program with it, else none.
fn sanitizer() -> Result<String> {
    let scratch = tempfile::tempdir().context("cannot create a temporary directory")?;
    let source = scratch.path().join("asan_probe.rs");
    fs::write(&source, "fn main() {}\n")
        .with_context(|| format!("cannot write {}", source.display()))?;
    let mut rustc = Command::new("rustc");
    clear_build_env(&mut rustc);
    rustc
        .args(["+nightly", "-Zsanitizer=address", "-o"])
        .arg(scratch.path().join("asan_probe"))
        .arg(&source);
    if try_output(&mut rustc).is_some() {
        return Ok("address".to_owned());
    }
    println!("this nightly cannot build with -Zsanitizer=address: fuzzing without a sanitizer");
    Ok("none".to_owned())
}

/// The targets fuzz/Cargo.toml declares.
fn list(fuzz_dir: &Path) -> Result<Vec<String>> {
    let text = devutil::output(cargo_fuzz(fuzz_dir).arg("list"))?;
    let targets: Vec<String> = text.lines().map(|l| l.trim().to_owned()).collect();
    if targets.is_empty() {
        bail!("fuzz/Cargo.toml declares no fuzz target");
    }
    Ok(targets)
}

/// Real inputs to start from (libFuzzer mutates its corpus): small ELF objects from
/// `fuzz/seeds/alloc.c`, this process's memory map and its loader's library list.
fn seed(fuzz_dir: &Path) -> Result<()> {
    let corpus = |target: &str| -> Result<PathBuf> {
        let dir = fuzz_dir.join("corpus").join(target);
        fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
        Ok(dir)
    };
    let elf = corpus("elf")?;
    let source = fuzz_dir.join("seeds/alloc.c");
    for (name, flags) in [
        ("seed-executable", &["-o"][..]),
        (
            "seed-library",
            &["-shared", "-fPIC", "-Wl,-soname,libseed.so.1", "-o"][..],
        ),
    ] {
        devutil::run(
            Command::new("gcc")
                .args(["-O1", "-g0"])
                .args(flags)
                .arg(elf.join(name))
                .arg(&source),
        )?;
    }
    let maps = fs::read("/proc/self/maps").context("cannot read /proc/self/maps")?;
    fs::write(corpus("maps")?.join("seed-self"), maps)?;
    let exe = env::current_exe().context("cannot find this executable")?;
    let list = try_output(Command::new("ldd").arg(&exe).stderr(Stdio::null()))
        .context("ldd does not run")?;
    fs::write(corpus("loader_list")?.join("seed-self"), list)?;
    Ok(())
}

/// One target for `seconds`.
fn fuzz(fuzz_dir: &Path, target: &str, seconds: u64, logs: &Path) -> Result<TargetResult> {
    let log = logs.join(format!("{target}.log"));
    let (artifacts, corpus) = (
        fuzz_dir.join("artifacts").join(target),
        fuzz_dir.join("corpus").join(target),
    );
    for dir in [&artifacts, &corpus] {
        fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    // The binary `cargo fuzz build` made, run as `cargo fuzz run` would, but without a
    // rebuild: every target runs the code of that one build.
    let mut cmd = Command::new(fuzz_dir.join(BUILT).join(target));
    cmd.env("ASAN_OPTIONS", "detect_odr_violation=0")
        .arg(format!("-artifact_prefix={}/", artifacts.display()))
        .arg(&corpus)
        .arg(format!("-max_total_time={seconds}"))
        .arg(format!("-timeout={INPUT_TIMEOUT_S}"))
        .arg("-print_final_stats=1");
    println!("{}", devutil::describe(&cmd));
    let mut proc = process::spawn_logged(&mut cmd, &log, target)?;
    let limit = Duration::from_secs(seconds + 600);
    let status = proc.wait(limit)?;
    let text = fs::read_to_string(&log).unwrap_or_default();
    let stat = |name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(name)?.trim().parse::<u64>().ok())
    };
    // libFuzzer names the input it saved: `... Test unit written to PATH`.
    let crash = text.lines().find_map(|l| {
        l.split_once("Test unit written to ")
            .map(|(_, p)| p.trim().to_owned())
    });
    if !status.success() && crash.is_none() {
        bail!(
            "fuzz target {target} failed ({status}) without a crash input{}",
            process::tail(&log)
        );
    }
    Ok(TargetResult {
        target: target.to_owned(),
        executions: stat("stat::number_of_executed_units:"),
        executions_per_s: stat("stat::average_exec_per_sec:"),
        corpus: count_files(&corpus),
        crash,
        log: log.display().to_string(),
    })
}

/// How many files `dir` holds (none when it does not exist).
fn count_files(dir: &Path) -> usize {
    fs::read_dir(dir).map_or(0, |d| d.flatten().count())
}

fn markdown(results: &FuzzResults) -> String {
    let mut md = format!(
        "Command: `{}`, {} UTC, leakbpf {}, sanitizer: {}.\n\nMachine: {}.\n\n\
         | target | executions | executions/s | corpus | crash |\n|---|--:|--:|--:|---|\n",
        results.command,
        results.date_utc,
        results
            .leakbpf_commit
            .as_deref()
            .unwrap_or("unknown commit"),
        results.sanitizer,
        results.machine.summary(),
    );
    for t in &results.targets {
        let number = |n: Option<u64>| n.map_or("?".to_owned(), |n| num(n as f64));
        md.push_str(&format!(
            "| {} | {} | {} | {} | {} |\n",
            t.target,
            number(t.executions),
            number(t.executions_per_s),
            t.corpus,
            t.crash.as_deref().unwrap_or("none")
        ));
    }
    md
}
