//! xtask as cargo's `RUSTC_WRAPPER` for the eBPF build, making symbol names independent
//! of where the repository lives.
//!
//! Cargo derives each crate's `-C metadata` from its package id, which for a path
//! dependency outside the building workspace (`leakbpf-common`, seen from the
//! `leakbpf-ebpf` workspace) holds its absolute path. That value feeds the crate's
//! `StableCrateId`, so the hashes in mangled symbol names, which end up in the object's
//! BTF, would change with the clone's path. For crates inside the repository, this
//! wrapper replaces `-C metadata` with a hash of path-free facts about the crate.

use std::{
    convert::Infallible,
    env,
    ffi::{OsStr, OsString},
    os::unix::process::CommandExt,
    path::Path,
    process::Command,
};

use anyhow::{Context, Result, bail};
use sha2::{Digest, Sha256};

/// Set (to the repository root) in the environment of the eBPF build: xtask then acts as
/// the rustc wrapper instead of parsing a task.
pub const ROOT_ENV: &str = "LEAKBPF_XTASK_RUSTC_WRAPPER_ROOT";
/// A `--cfg` passed with the wrapper, so that builds without it (or with another version
/// of its hashing) are not reused. Also hashed into the metadata: bump it to change that.
pub const MARKER_CFG: &str = "leakbpf_xtask_stable_metadata_v1";

/// Runs `rustc` (the first argument) with the remaining ones, `-C metadata` rewritten
/// for crates under `root`. Only returns on error.
pub fn run(root: &OsStr) -> Result<Infallible> {
    let mut args = env::args_os().skip(1);
    let rustc = args.next().context("rustc wrapper: no rustc to run")?;
    let mut args: Vec<OsString> = args.collect();

    let in_repo = env::var_os("CARGO_MANIFEST_DIR")
        .and_then(|dir| {
            Path::new(&dir)
                .strip_prefix(root)
                .ok()
                .map(|rel| rel.to_string_lossy().into_owned())
        })
        .filter(|_| !env::var_os("CARGO_PKG_NAME").unwrap_or_default().is_empty());
    if let Some(relative_dir) = in_repo {
        let metadata = format!("metadata={}", stable_metadata(&relative_dir, &args));
        for i in 1..args.len() {
            if args[i - 1] == "-C" && args[i].to_string_lossy().starts_with("metadata=") {
                args[i] = OsString::from(&metadata);
            }
        }
    }

    let err = Command::new(&rustc).args(&args).exec();
    bail!(
        "rustc wrapper: cannot run {}: {err}",
        rustc.to_string_lossy()
    )
}

/// A hash of the crate's package, version, place in the repository, and the arguments
/// that tell its builds apart (crate name and type, target, cfgs such as features).
fn stable_metadata(relative_dir: &str, args: &[OsString]) -> String {
    let mut hasher = Sha256::new();
    let mut feed = |part: &str| {
        hasher.update(part.as_bytes());
        hasher.update([0]);
    };
    feed(MARKER_CFG);
    for var in ["CARGO_PKG_NAME", "CARGO_PKG_VERSION"] {
        feed(&env::var(var).unwrap_or_default());
    }
    feed(relative_dir);
    const KEYS: &[&str] = &["--crate-name", "--crate-type", "--target", "--cfg"];
    for pair in args.windows(2) {
        let key = pair[0].to_string_lossy();
        if KEYS.contains(&key.as_ref()) {
            feed(&key);
            feed(&pair[1].to_string_lossy());
        }
    }
    let digest = hasher.finalize();
    digest[..8].iter().map(|b| format!("{b:02x}")).collect()
}
