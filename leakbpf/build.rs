//! Tells the binary which commit it is built from and for which target, for `leakbpf
//! --version` and so for every bug report: `LEAKBPF_COMMIT` (the commit's short hash,
//! `-dirty` when the sources that go into the binary differ from it, `unknown` outside a
//! git checkout or without git) and `LEAKBPF_BUILD_TARGET`. And compiles pprof's
//! `profile.proto` (vendored unchanged from github.com/google/pprof,
//! `proto/profile.proto`) into prost types for the pprof output: protox parses it in
//! Rust, so building leakbpf needs no `protoc`.

use std::{env, error::Error, path::Path, process::Command};

/// What goes into the binary, relative to this package: a change here makes it dirty.
const SOURCES: [&str; 4] = [".", "../leakbpf-common", "../Cargo.toml", "../Cargo.lock"];

/// `git ARGS` in this package's directory: its trimmed output, if it ran and succeeded.
fn git(args: &[&str]) -> Option<String> {
    let output = Command::new("git").args(args).output().ok()?;
    output
        .status
        .success()
        .then(|| String::from_utf8_lossy(&output.stdout).trim().to_owned())
}

fn main() -> Result<(), Box<dyn Error>> {
    provenance();
    let proto = Path::new("proto/profile.proto");
    println!("cargo:rerun-if-changed={}", proto.display());
    let descriptors = protox::compile([proto], ["proto"])?;
    prost_build::Config::new().compile_fds(descriptors)?;
    Ok(())
}

/// `LEAKBPF_COMMIT` and `LEAKBPF_BUILD_TARGET`.
fn provenance() {
    // Rerun when the sources change (a dirty tree, or a clean one again) and when HEAD
    // moves: HEAD itself, the branch it names, and the packed refs that may hold it.
    for source in SOURCES {
        println!("cargo:rerun-if-changed={source}");
    }
    let commit = match git(&["rev-parse", "--short=12", "HEAD"]) {
        Some(hash) => {
            let branch = git(&["symbolic-ref", "--quiet", "HEAD"]);
            for name in ["HEAD", "packed-refs"].into_iter().chain(branch.as_deref()) {
                // A path that does not exist would rerun this on every build.
                match git(&["rev-parse", "--git-path", name]) {
                    Some(path) if Path::new(&path).exists() => {
                        println!("cargo:rerun-if-changed={path}");
                    }
                    _ => {}
                }
            }
            let changes = git(&["status", "--porcelain", "--untracked-files=no", "--"]
                .into_iter()
                .chain(SOURCES)
                .collect::<Vec<_>>());
            match changes {
                Some(changes) if changes.is_empty() => hash,
                _ => format!("{hash}-dirty"),
            }
        }
        None => "unknown".to_owned(),
    };
    println!("cargo:rustc-env=LEAKBPF_COMMIT={commit}");
    let target = env::var("TARGET").unwrap_or_else(|_| "unknown".to_owned());
    println!("cargo:rustc-env=LEAKBPF_BUILD_TARGET={target}");
}
