//! `cargo xtask bench ARGS`: the benchmark lives in its own crate, leakbpf-bench; this
//! builds it with the agent it measures (one release build) and runs it with ARGS.

use std::{ffi::OsString, path::Path, process::Command};

use anyhow::Result;
use devutil::header;

/// Builds the release agent and leakbpf-bench, runs the bench; returns its exit code.
pub fn run(root: &Path, args: &[OsString]) -> Result<u8> {
    header("build leakbpf and leakbpf-bench (release)");
    devutil::run(Command::new("cargo").current_dir(root).args([
        "build",
        "--release",
        "-p",
        "leakbpf",
        "-p",
        "leakbpf-bench",
    ]))?;
    let bench = devutil::release_binary(root, "leakbpf-bench");
    let status = devutil::status(Command::new(&bench).current_dir(root).args(args))?;
    Ok(devutil::exit_code(status))
}
