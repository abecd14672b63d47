//! `cargo xtask test`: everything CI checks, failing fast.

use std::{
    env,
    path::Path,
    process::Command,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};

use crate::{
    ebpf, toolchain,
    util::{self, header, is_root, which},
};

type Step = fn(&Path) -> Result<()>;

const STEPS: &[(&str, Step)] = &[
    ("setup --ebpf", setup),
    ("fmt", fmt),
    ("clippy", clippy),
    ("check-ebpf", ebpf::check),
    ("test", test),
];

pub fn run(root: &Path) -> Result<()> {
    let start = Instant::now();
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
    util::run(cargo(root).args(["fmt", "--all", "--check"]))?;
    util::run(
        Command::new("rustfmt")
            .current_dir(root)
            .args(["--check", "--edition", "2024"])
            .arg(root.join("leakbpf-ebpf/src/main.rs")),
    )
}

fn clippy(root: &Path) -> Result<()> {
    util::run(cargo(root).args([
        "clippy",
        "--workspace",
        "--all-targets",
        "--",
        "-D",
        "warnings",
    ]))
}

/// The tests load eBPF programs, so the test binaries run as root: directly when we are,
/// else through `sudo -E` as cargo's runner (the build stays unprivileged).
fn test(root: &Path) -> Result<()> {
    let mut cmd = cargo(root);
    cmd.args(["test", "--workspace"]);
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
    util::run(&mut cmd)
}
