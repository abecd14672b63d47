//! `cargo xtask demo` and `cargo xtask run`: the agent on a live process.

use std::{
    ffi::OsString,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context, Result};

use devutil::{as_root, header};

use crate::toolchain;

/// Builds the agent (release); returns its path.
pub fn build_agent(root: &Path) -> Result<PathBuf> {
    devutil::run(Command::new("cargo").current_dir(root).args([
        "build",
        "--release",
        "-p",
        "leakbpf",
    ]))?;
    let agent = devutil::release_binary(root, "leakbpf");
    if !agent.is_file() {
        anyhow::bail!("the build succeeded but {} is missing", agent.display());
    }
    Ok(agent)
}

/// `cargo xtask run -- ARGS`: the release agent, as root, with `args`; returns its exit code.
pub fn run(root: &Path, args: &[OsString]) -> Result<u8> {
    let agent = build_agent(root)?;
    let status = devutil::status(as_root(&agent, true, "leakbpf")?.args(args))?;
    Ok(devutil::exit_code(status))
}

/// `cargo xtask demo`: the agent on the leaky chat server, then on its RAII-fixed build,
/// both compiled as distributions compile (-O2, no frame pointers): the stacks are
/// walked with the unwind tables. Returns the first non-zero exit code of the two agent
/// runs, else 0.
pub fn demo(root: &Path) -> Result<u8> {
    header("setup");
    toolchain::ensure_base_packages()?;

    header("build leakbpf");
    let agent = build_agent(root)?;

    let server = devutil::build_chat_server(root, devutil::Build::Distribution)?;

    header("leakbpf on the chat server (leaks on purpose), 7 s");
    let leaky = profile(root, &agent, &server, &["--duration", "7"])?;

    header("leakbpf on the RAII-fixed build of the chat server (--fixed), 4 s");
    let fixed = profile(root, &agent, &server, &["--duration", "4", "--fixed"])?;

    Ok(if leaky != 0 { leaky } else { fixed })
}

/// Runs the agent as root on `server args`, streaming its output; returns its exit code.
fn profile(root: &Path, agent: &Path, server: &Path, args: &[&str]) -> Result<u8> {
    let mut cmd = as_root(agent, true, "the demo (leakbpf loads eBPF programs)")?;
    cmd.current_dir(root)
        .args(["--interval", "2s", "--top", "5", "--"])
        .arg(server)
        .args(args);
    println!("{}", devutil::describe(&cmd));
    let status = devutil::status(&mut cmd)
        .with_context(|| format!("cannot run the agent {}", agent.display()))?;
    let code = devutil::exit_code(status);
    if code != 0 {
        println!("leakbpf exited with {status}");
    }
    Ok(code)
}
