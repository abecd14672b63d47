//! What xtask and leakbpf-bench both need: the repository's paths, running commands,
//! finding programs, privileges, Debian packages, and a clean environment for nested
//! builds. One copy, so that the two binaries cannot drift apart.

use std::{
    env,
    ffi::{OsStr, OsString},
    path::{Path, PathBuf},
    process::{Command, ExitCode, ExitStatus},
    sync::atomic::{AtomicBool, Ordering},
};

use anyhow::{Context, Result, bail};

/// A binary's exit code for the result of its work: the error and its causes printed to
/// stderr, one a line, and failure.
pub fn exit_code_of(result: Result<ExitCode>) -> ExitCode {
    result.unwrap_or_else(|e| {
        eprintln!("error: {e}");
        for cause in e.chain().skip(1) {
            eprintln!("  caused by: {cause}");
        }
        ExitCode::FAILURE
    })
}

/// The repository root (the directory holding the workspace `Cargo.toml`).
pub fn repo_root() -> Result<PathBuf> {
    let manifest_dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    let root = manifest_dir
        .parent()
        .context("devutil's manifest directory has no parent")?;
    root.canonicalize()
        .with_context(|| format!("cannot resolve the repository root {}", root.display()))
}

/// The workspace's target directory (`CARGO_TARGET_DIR` when set, like cargo).
pub fn target_dir(root: &Path) -> PathBuf {
    match env::var_os("CARGO_TARGET_DIR") {
        Some(dir) if !dir.is_empty() => root.join(dir),
        _ => root.join("target"),
    }
}

/// A binary of the workspace's release build (`cargo build --release -p ...`).
pub fn release_binary(root: &Path, name: &str) -> PathBuf {
    target_dir(root).join("release").join(name)
}

/// How a test target is compiled (tests/targets/Makefile has both).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Build {
    /// With frame pointers, no sibling-call optimisation.
    FramePointers,
    /// As distributions build: -O2, no frame pointers.
    Distribution,
}

/// Builds the demo chat server (tests/targets/chat_server.cpp, with the test targets'
/// Makefile) into target/demo; returns its path.
pub fn build_chat_server(root: &Path, build: Build) -> Result<PathBuf> {
    header("build the demo chat server");
    let name = match build {
        Build::FramePointers => "chat_server",
        Build::Distribution => "chat_server_nofp",
    };
    let out = target_dir(root).join("demo");
    let mut out_arg = OsString::from("OUT=");
    out_arg.push(&out);
    run(Command::new("make")
        .arg("-C")
        .arg(root.join("tests/targets"))
        .arg(out_arg)
        .arg(name))?;
    Ok(out.join(name))
}

/// Prints a step header.
pub fn header(step: &str) {
    println!("==> {step}");
}

/// `program arg1 arg2 ...`, for messages.
pub fn describe(cmd: &Command) -> String {
    let mut text = cmd.get_program().to_string_lossy().into_owned();
    for arg in cmd.get_args() {
        text.push(' ');
        text.push_str(&arg.to_string_lossy());
    }
    text
}

/// Runs `cmd` with inherited stdio and returns its status.
pub fn status(cmd: &mut Command) -> Result<ExitStatus> {
    cmd.status()
        .with_context(|| format!("cannot run `{}`", describe(cmd)))
}

/// Runs `cmd` with inherited stdio and fails unless it succeeds.
pub fn run(cmd: &mut Command) -> Result<()> {
    let status = status(cmd)?;
    if !status.success() {
        bail!("`{}` failed ({status})", describe(cmd));
    }
    Ok(())
}

/// Runs `cmd` and returns its standard output, trimmed; fails unless it succeeds.
pub fn output(cmd: &mut Command) -> Result<String> {
    let out = cmd
        .output()
        .with_context(|| format!("cannot run `{}`", describe(cmd)))?;
    if !out.status.success() {
        bail!(
            "`{}` failed ({}): {}",
            describe(cmd),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    String::from_utf8(out.stdout)
        .map(|s| s.trim().to_owned())
        .with_context(|| format!("`{}` printed non-UTF-8 output", describe(cmd)))
}

/// Standard output of `cmd` if it ran and succeeded, `None` otherwise.
pub fn try_output(cmd: &mut Command) -> Option<String> {
    let out = cmd.output().ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

/// The exit code to propagate for a child's status (128 + signal when killed).
pub fn exit_code(status: ExitStatus) -> u8 {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(code), _) => u8::try_from(code).unwrap_or(1),
        (None, Some(signal)) => u8::try_from(128 + signal).unwrap_or(1),
        (None, None) => 1,
    }
}

/// Finds `program` in `PATH`.
pub fn which(program: impl AsRef<OsStr>) -> Option<PathBuf> {
    let program = program.as_ref();
    let path = env::var_os("PATH")?;
    env::split_paths(&path)
        .map(|dir| dir.join(program))
        .find(|candidate| is_executable(candidate))
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    path.metadata()
        .is_ok_and(|meta| meta.is_file() && meta.permissions().mode() & 0o111 != 0)
}

/// Whether this process runs as root.
pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// A command running `program` as root: directly when we are root, else through `sudo`
/// (keeping the environment when `keep_env`). `why` explains the need in the error.
pub fn as_root(program: impl AsRef<OsStr>, keep_env: bool, why: &str) -> Result<Command> {
    if is_root() {
        return Ok(Command::new(program));
    }
    if which("sudo").is_none() {
        bail!("{why} needs root: run this as root, or install sudo");
    }
    let mut cmd = Command::new("sudo");
    if keep_env {
        cmd.arg("-E");
    }
    cmd.arg("--").arg(program);
    Ok(cmd)
}

/// `CARGO_HOME`, defaulting to `~/.cargo` like cargo and rustup.
pub fn cargo_home() -> Result<PathBuf> {
    if let Some(home) = env::var_os("CARGO_HOME").filter(|h| !h.is_empty()) {
        return Ok(PathBuf::from(home));
    }
    let home = env::var_os("HOME")
        .filter(|h| !h.is_empty())
        .context("neither CARGO_HOME nor HOME is set")?;
    Ok(PathBuf::from(home).join(".cargo"))
}

/// `PATH` with `dir` in front (unless already listed).
pub fn path_with(dir: &Path) -> Result<OsString> {
    let current = env::var_os("PATH").unwrap_or_default();
    let mut dirs: Vec<PathBuf> = env::split_paths(&current).collect();
    if !dirs.iter().any(|d| d == dir) {
        dirs.insert(0, dir.to_owned());
    }
    env::join_paths(dirs).context("cannot build PATH")
}

/// Environment variables of the calling cargo that would change how a nested build runs.
const BUILD_ENV: &[&str] = &[
    "CARGO",
    "CARGO_ENCODED_RUSTDOCFLAGS",
    "CARGO_ENCODED_RUSTFLAGS",
    "CARGO_INCREMENTAL",
    "RUSTC",
    "RUSTC_BOOTSTRAP",
    "RUSTC_WORKSPACE_WRAPPER",
    "RUSTC_WRAPPER",
    "RUSTDOC",
    "RUSTDOCFLAGS",
    "RUSTFLAGS",
    "RUSTUP_TOOLCHAIN",
];
const BUILD_ENV_PREFIXES: &[&str] = &[
    "CARGO_BUILD_",
    "CARGO_PROFILE_",
    "CARGO_TARGET_",
    "CARGO_UNSTABLE_",
];

/// Removes the calling cargo's build settings from `cmd`'s environment, for a nested
/// build with another toolchain or other flags.
pub fn clear_build_env(cmd: &mut Command) {
    for (key, _) in env::vars_os() {
        let Some(key) = key.to_str() else { continue };
        if BUILD_ENV.contains(&key) || BUILD_ENV_PREFIXES.iter().any(|p| key.starts_with(p)) {
            cmd.env_remove(key);
        }
    }
}

/// Whether packages can be installed with apt (a Debian system with dpkg and apt-get).
pub fn is_debian() -> bool {
    Path::new("/etc/debian_version").exists()
        && which("dpkg-query").is_some()
        && which("apt-get").is_some()
}

fn is_installed(package: &str) -> bool {
    try_output(Command::new("dpkg-query").args(["-W", "-f=${Status}", package]))
        .is_some_and(|status| status.ends_with(" installed"))
}

/// Once per process: `apt-get update` before the first install.
static APT_UPDATED: AtomicBool = AtomicBool::new(false);

/// Installs the missing ones of `packages` with apt-get (through sudo when not root).
pub fn ensure_packages(packages: &[&str]) -> Result<()> {
    let missing: Vec<&str> = packages
        .iter()
        .copied()
        .filter(|p| !is_installed(p))
        .collect();
    if missing.is_empty() {
        println!("apt packages present: {}", packages.join(" "));
        return Ok(());
    }
    println!("installing apt packages: {}", missing.join(" "));
    let why = format!("installing {}", missing.join(" "));
    if !APT_UPDATED.load(Ordering::Relaxed) {
        run(apt(&why)?.arg("update"))?;
        APT_UPDATED.store(true, Ordering::Relaxed);
    }
    run(apt(&why)?.args(["install", "-y"]).args(&missing))
}

fn apt(why: &str) -> Result<Command> {
    let mut cmd = as_root("env", false, why)?;
    cmd.args(["DEBIAN_FRONTEND=noninteractive", "apt-get"]);
    Ok(cmd)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_childs_status_becomes_the_exit_code_to_propagate() {
        let code =
            |script: &str| exit_code(status(Command::new("sh").args(["-c", script])).unwrap());
        assert_eq!(code("exit 0"), 0);
        assert_eq!(code("exit 3"), 3);
        // Killed by SIGKILL (9): 128 + 9, as a shell reports it.
        assert_eq!(code("kill -9 $$"), 137);
    }

    #[test]
    fn output_is_trimmed_and_a_failure_carries_the_command_and_its_stderr() {
        let mut ok = Command::new("sh");
        ok.args(["-c", "echo '  hello '"]);
        assert_eq!(output(&mut ok).unwrap(), "hello");
        let mut failing = Command::new("sh");
        failing.args(["-c", "echo oops >&2; exit 2"]);
        let error = output(&mut failing).unwrap_err().to_string();
        assert!(
            error.starts_with("`sh -c echo oops >&2; exit 2` failed (exit status: 2): oops"),
            "{error}"
        );
        assert_eq!(try_output(&mut failing), None);
    }

    #[test]
    fn which_finds_only_executables_on_path() {
        let sh = which("sh").unwrap();
        assert!(sh.is_absolute() && sh.ends_with("sh"), "{}", sh.display());
        assert_eq!(which("no-such-program-for-devutil"), None);
    }
}
