//! Building the eBPF object reproducibly, shipping it, and checking the shipped copy.
//!
//! The agent embeds `leakbpf/bpf/leakbpf.bpf.o`, so building the agent needs no eBPF
//! toolchain. `check-ebpf` proves that copy matches the sources: paths are remapped, and
//! symbol hashes made path-free (see [`rustc_wrapper`]), so that a clone at any path, with
//! any `CARGO_HOME`, produces the same bytes with the same toolchain. The toolchain that
//! produced the shipped copy is recorded next to it, and the byte comparison only applies
//! with that toolchain.

use std::{
    env, fs, io,
    path::{Path, PathBuf},
};

use anyhow::{Context, Result, bail};
use devutil::header;
use sha2::{Digest, Sha256};

use crate::{
    rustc_wrapper,
    toolchain::{EbpfToolchain, ensure_ebpf_toolchain},
};

const TARGET: &str = "bpfel-unknown-none";
/// The eBPF crate, its own workspace.
const CRATE_DIR: &str = "leakbpf-ebpf";
/// The eBPF crate's binary name, hence the object's file name.
const OBJECT_NAME: &str = "leakbpf";
/// The copy the agent embeds, relative to the repository root.
pub const SHIPPED: &str = "leakbpf/bpf/leakbpf.bpf.o";
/// The toolchain that produced [`SHIPPED`].
pub const STAMP: &str = "leakbpf/bpf/leakbpf.bpf.o.toolchain";

/// `cargo xtask build-ebpf`.
pub fn build_and_ship(root: &Path) -> Result<()> {
    header("eBPF toolchain");
    let toolchain = ensure_ebpf_toolchain()?;
    println!("eBPF toolchain: {toolchain}");
    header("build eBPF object");
    let object = build(root, &toolchain, false)?;
    let shipped = root.join(SHIPPED);
    fs::copy(&object, &shipped)
        .with_context(|| format!("cannot copy {} to {}", object.display(), shipped.display()))?;
    let stamp = root.join(STAMP);
    fs::write(&stamp, toolchain.identity()?)
        .with_context(|| format!("cannot write {}", stamp.display()))?;
    println!(
        "wrote {SHIPPED} (sha256 {}) and {STAMP}: commit both",
        sha256_file(&shipped)?
    );
    Ok(())
}

/// `cargo xtask check-ebpf`: fails unless a fresh build equals the shipped object.
pub fn check(root: &Path) -> Result<()> {
    header("eBPF toolchain");
    let toolchain = ensure_ebpf_toolchain()?;
    println!("eBPF toolchain: {toolchain}");
    header("build eBPF object");
    let object = build(root, &toolchain, true)?;

    let shipped = root.join(SHIPPED);
    if !shipped.exists() {
        bail!("{SHIPPED} is missing: run `cargo xtask build-ebpf` and commit");
    }
    let current = toolchain.identity()?;
    match fs::read_to_string(root.join(STAMP)) {
        Ok(recorded) if recorded.trim() != current.trim() => {
            println!(
                "check-ebpf: SKIPPED the byte comparison: {SHIPPED} was built with\n{}\n\
                 but this machine's eBPF toolchain is\n{}\n\
                 (the eBPF crate does build; run `cargo xtask build-ebpf` and commit to ship \
                 this toolchain's object)",
                indent(&recorded),
                indent(&current)
            );
            return Ok(());
        }
        Ok(_) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            println!("warning: {STAMP} is missing, comparing bytes anyway");
        }
        Err(e) => return Err(e).with_context(|| format!("cannot read {STAMP}")),
    }

    let built_sum = sha256_file(&object)?;
    let shipped_sum = sha256_file(&shipped)?;
    println!("built   {built_sum}  {}", object.display());
    println!("shipped {shipped_sum}  {SHIPPED}");
    if built_sum != shipped_sum {
        bail!(
            "{SHIPPED} differs from a fresh build of the eBPF sources: \
             run `cargo xtask build-ebpf` and commit"
        );
    }
    println!("check-ebpf: {SHIPPED} is byte-identical to a fresh build");
    Ok(())
}

/// `cargo xtask test`'s `clippy-ebpf` step: the eBPF crate through its toolchain's
/// clippy, warnings denied. Its own target directory: the check's flags differ from the
/// reproducible build's, and would make either rebuild all of `core` every time.
pub fn clippy(root: &Path) -> Result<()> {
    let toolchain = ensure_ebpf_toolchain()?;
    println!("eBPF toolchain: {toolchain}");
    let crate_dir = root.join(CRATE_DIR);
    let mut cmd = toolchain.cargo_clippy()?;
    cmd.current_dir(&crate_dir)
        .args(["-Z", "build-std=core", "--release", "--locked"])
        .args(["--target", TARGET, "--target-dir"])
        .arg(crate_dir.join("target").join("clippy"))
        .args(["--", "-D", "warnings"]);
    println!("{}", devutil::describe(&cmd));
    devutil::run(&mut cmd)
}

/// Builds the eBPF crate into its own target directory; returns the object's path.
fn build(root: &Path, toolchain: &EbpfToolchain, locked: bool) -> Result<PathBuf> {
    let crate_dir = root.join(CRATE_DIR);
    if !crate_dir.join("Cargo.toml").exists() {
        bail!("{} has no Cargo.toml", crate_dir.display());
    }
    let target_dir = crate_dir.join("target");
    let rustflags = rustflags(root, &crate_dir, toolchain)?;

    let wrapper = env::current_exe().context("cannot find xtask's own executable")?;

    let mut cmd = toolchain.cargo()?;
    cmd.current_dir(&crate_dir)
        .env("CARGO_ENCODED_RUSTFLAGS", rustflags.join("\x1f"))
        .env("RUSTC_WRAPPER", wrapper)
        .env(rustc_wrapper::ROOT_ENV, root)
        .args(["build", "-Z", "build-std=core", "--release"])
        .args(["--target", TARGET, "--target-dir"])
        .arg(&target_dir);
    if locked {
        cmd.arg("--locked");
    }
    println!("{}", devutil::describe(&cmd));
    devutil::run(&mut cmd)?;

    let object = target_dir.join(TARGET).join("release").join(OBJECT_NAME);
    if !object.is_file() {
        bail!("the build succeeded but {} is missing", object.display());
    }
    Ok(object)
}

/// The rustflags from the repository's cargo configs (which `CARGO_ENCODED_RUSTFLAGS`
/// replaces), then path remappings making the bytes independent of where things live.
fn rustflags(root: &Path, crate_dir: &Path, toolchain: &EbpfToolchain) -> Result<Vec<String>> {
    let mut flags = configured_rustflags(&[root, crate_dir])?;
    // Cargo's fingerprints ignore RUSTC_WRAPPER but not rustflags: this marker rebuilds
    // whatever an unwrapped build left in the target directory.
    flags.push(format!("--cfg={}", rustc_wrapper::MARKER_CFG));

    let mut remaps: Vec<(PathBuf, &str)> = Vec::new();
    let mut remap = |from: PathBuf, to: &'static str| {
        if let Ok(canonical) = from.canonicalize()
            && canonical != from
        {
            remaps.push((canonical, to));
        }
        remaps.push((from, to));
    };
    remap(toolchain.sysroot()?, "/rustc-sysroot");
    remap(devutil::cargo_home()?, "/cargo");
    remap(root.to_owned(), "/leakbpf");
    remap(crate_dir.to_owned(), "/leakbpf-ebpf");
    // rustc applies the last matching remapping: the most specific prefixes go last.
    remaps.sort_by_key(|(from, _)| from.as_os_str().len());
    for (from, to) in remaps {
        let from = from
            .to_str()
            .with_context(|| format!("{} is not UTF-8", from.display()))?;
        flags.push(format!("--remap-path-prefix={from}={to}"));
    }
    Ok(flags)
}

/// `target.bpfel-unknown-none.rustflags`, else `build.rustflags`, from the
/// `.cargo/config.toml` of each of `dirs` (outermost first, as cargo joins them).
fn configured_rustflags(dirs: &[&Path]) -> Result<Vec<String>> {
    let mut from_target = Vec::new();
    let mut from_build = Vec::new();
    for dir in dirs {
        let path = dir.join(".cargo").join("config.toml");
        let text = match fs::read_to_string(&path) {
            Ok(text) => text,
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e).with_context(|| format!("cannot read {}", path.display())),
        };
        let config: toml::Table = text
            .parse()
            .with_context(|| format!("cannot parse {}", path.display()))?;
        let target = config
            .get("target")
            .and_then(|t| t.get(TARGET))
            .and_then(|t| t.get("rustflags"));
        let build = config.get("build").and_then(|b| b.get("rustflags"));
        from_target.extend(flag_list(target, &path)?);
        from_build.extend(flag_list(build, &path)?);
    }
    Ok(if from_target.is_empty() {
        from_build
    } else {
        from_target
    })
}

fn flag_list(value: Option<&toml::Value>, path: &Path) -> Result<Vec<String>> {
    match value {
        None => Ok(Vec::new()),
        Some(toml::Value::String(s)) => Ok(s.split_whitespace().map(str::to_owned).collect()),
        Some(toml::Value::Array(items)) => items
            .iter()
            .map(|item| {
                item.as_str().map(str::to_owned).with_context(|| {
                    format!("{}: rustflags must be strings, got {item}", path.display())
                })
            })
            .collect(),
        Some(other) => bail!(
            "{}: rustflags must be a string or an array, got {other}",
            path.display()
        ),
    }
}

pub fn sha256_file(path: &Path) -> Result<String> {
    let bytes = fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    Ok(format!("{:x}", Sha256::digest(bytes)))
}

fn indent(text: &str) -> String {
    text.trim()
        .lines()
        .map(|l| format!("    {l}"))
        .collect::<Vec<_>>()
        .join("\n")
}
