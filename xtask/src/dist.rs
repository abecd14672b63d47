//! `cargo xtask dist`: leakbpf for a production host. One statically linked executable
//! for x86_64-unknown-linux-musl (the eBPF object is in it already), its SHA-256 beside it
//! in `sha256sum -c` format, and a Debian package of that same file (cargo-deb, with the
//! metadata in leakbpf/Cargo.toml), all in `target/leakbpf-dist/`.
//!
//! What the binary keeps to report its own crashes, and why, the `dist` profile says
//! (Cargo.toml): its symbols, not its debug info.

use std::{
    fs,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context, Result, bail};
use devutil::{header, target_dir};

use crate::{ebpf::sha256_file, toolchain};

/// The Cargo profile of the build.
const PROFILE: &str = "dist";
/// The package and its binary.
const PACKAGE: &str = "leakbpf";
/// Where the files for a production host go, under the target directory.
const OUT_DIR: &str = "leakbpf-dist";

/// Builds everything; prints the static binary's path as the last line (what `cargo
/// xtask test` hands the tests).
pub fn dist(root: &Path) -> Result<()> {
    header("toolchain for the static build and the package");
    toolchain::ensure_musl_target()?;
    toolchain::ensure_cargo_deb()?;

    header("build leakbpf for x86_64-unknown-linux-musl, statically (profile dist)");
    let target = toolchain::MUSL_TARGET;
    devutil::run(
        cargo(root)
            .args(["build", "--locked", "-p", PACKAGE])
            .args(["--profile", PROFILE, "--target", target]),
    )?;
    let built = target_dir(root).join(target).join(PROFILE).join(PACKAGE);

    let out = target_dir(root).join(OUT_DIR);
    // Only this build's files: `apt install ./leakbpf_*.deb` must match one package.
    if out.exists() {
        fs::remove_dir_all(&out).with_context(|| format!("cannot empty {}", out.display()))?;
    }
    fs::create_dir_all(&out).with_context(|| format!("cannot create {}", out.display()))?;
    let binary = out.join(PACKAGE);
    fs::copy(&built, &binary)
        .with_context(|| format!("cannot copy {} to {}", built.display(), binary.display()))?;
    write_sha256(&binary)?;

    header("build the Debian package (cargo-deb)");
    // The package's binary is this build's, as built: --no-strip, since cargo-deb's own
    // stripping would drop the symbols the profile keeps.
    devutil::run(
        cargo(root)
            .args([
                "deb",
                "--package",
                PACKAGE,
                "--no-build",
                "--no-strip",
                "--locked",
            ])
            .args(["--profile", PROFILE, "--target", target, "--output"])
            .arg(&out),
    )?;
    let deb = the_deb(&out)?;
    write_sha256(&deb)?;

    println!("{}", binary.display());
    Ok(())
}

fn cargo(root: &Path) -> Command {
    let mut cmd = Command::new("cargo");
    cmd.current_dir(root);
    cmd
}

/// Writes `FILE.sha256` beside `file`, as `sha256sum FILE` prints it: `sha256sum -c
/// FILE.sha256` in that directory checks it.
fn write_sha256(file: &Path) -> Result<()> {
    let name = file
        .file_name()
        .and_then(|name| name.to_str())
        .with_context(|| format!("{} has no UTF-8 file name", file.display()))?;
    let sums = file.with_file_name(format!("{name}.sha256"));
    let line = format!("{}  {name}\n", sha256_file(file)?);
    fs::write(&sums, line).with_context(|| format!("cannot write {}", sums.display()))?;
    println!("wrote {}", sums.display());
    Ok(())
}

/// The one `.deb` cargo-deb wrote into `out`.
fn the_deb(out: &Path) -> Result<PathBuf> {
    let debs: Vec<PathBuf> = fs::read_dir(out)
        .with_context(|| format!("cannot list {}", out.display()))?
        .filter_map(|entry| entry.ok().map(|entry| entry.path()))
        .filter(|path| path.extension().is_some_and(|ext| ext == "deb"))
        .collect();
    match &debs[..] {
        [deb] => Ok(deb.clone()),
        _ => bail!(
            "cargo-deb should have written one .deb into {}, found {debs:?}",
            out.display()
        ),
    }
}
