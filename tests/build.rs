//! Builds the target programs with tests/targets/Makefile (the one place their compile
//! flags are written) and tells the tests where they are, as `LEAKBPF_TARGET_<NAME>`
//! (e.g. `LEAKBPF_TARGET_CHAT_SERVER`).

use std::{env, path::PathBuf, process::Command};

/// The programs the Makefile builds.
const TARGETS: [&str; 5] = ["chat_server", "leaker", "threads", "early", "rust_leaker"];

fn main() {
    let manifest_dir =
        PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").expect("CARGO_MANIFEST_DIR"));
    let sources = manifest_dir.join("targets");
    let out = PathBuf::from(env::var_os("OUT_DIR").expect("OUT_DIR")).join("targets");
    println!("cargo:rerun-if-changed={}", sources.display());
    let rust_leaker = manifest_dir.join("src/bin/rust_leaker.rs");
    println!("cargo:rerun-if-changed={}", rust_leaker.display());

    let output = Command::new("make")
        .arg("-C")
        .arg(&sources)
        .arg(format!("OUT={}", out.display()))
        .args(TARGETS)
        .output()
        .unwrap_or_else(|err| panic!("cannot run make (install make, gcc and g++): {err}"));
    if !output.status.success() {
        panic!(
            "building the test targets failed ({}):\n{}\n{}",
            output.status,
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
    }
    for name in TARGETS {
        let path = out.join(name);
        assert!(path.is_file(), "make did not produce {}", path.display());
        println!(
            "cargo:rustc-env=LEAKBPF_TARGET_{}={}",
            name.to_uppercase(),
            path.display()
        );
    }
}
