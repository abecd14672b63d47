//! Builds the target programs with tests/targets/Makefile (the one place their compile
//! flags are written) and tells the tests where they are, as `LEAKBPF_TARGET_<NAME>`
//! (e.g. `LEAKBPF_TARGET_CHAT_SERVER`).

use std::{env, path::PathBuf, process::Command};

/// The programs the Makefile builds.
const TARGETS: [&str; 10] = [
    "chat_server",
    "containers_growth",
    "leaker",
    "threads",
    "early",
    "rust_leaker",
    "rust_jemalloc",
    "rust_mimalloc",
    "patterns",
    "wrappers",
];
/// Process trees and new images: forks (a grandchild, an exec among them), an exec into
/// the same program or into its static build, gigabytes leaked for `--all`.
const LIFE_TARGETS: [&str; 4] = ["forker", "exec_target", "exec_target_static", "big_leaker"];
/// The targets built on alloc_target.h: jemalloc, tcmalloc and mimalloc from Debian's
/// packages, a prefixed allocator of our own, static glibc, and lying frame pointers.
const ALLOC_TARGETS: [&str; 6] = [
    "jemalloc_linked",
    "tcmalloc_new",
    "mimalloc_linked",
    "prefixed",
    "static_glibc",
    "hostile_stack",
];
/// stripped.c stripped: alone, with a debug link, with a build-id debug file; and the
/// unstripped build they come from.
const STRIPPED_TARGETS: [&str; 4] = [
    "stripped_full",
    "stripped",
    "stripped_debuglink",
    "stripped_buildid",
];
/// Names and objects no compiler writes, patched in after linking: hostile symbol names,
/// and a library broken in ways only a symbolizer notices (its copies are next to it, in
/// broken_elf.libs).
const HOSTILE_TARGETS: [&str; 2] = ["hostile_names", "broken_elf"];
/// Code mapped after attach: a program that loads a library with dlopen and leaks
/// through it (libdlopened.so, next to it).
const DLOPEN_TARGETS: [&str; 1] = ["dlopen_leaker"];
/// The same programs as distributions build them: without frame pointers; and a chain of
/// functions, and sampling's leaks and churn, built only that way.
const NOFP_TARGETS: [&str; 12] = [
    "leaker_nofp",
    "threads_nofp",
    "forker_nofp",
    "big_leaker_nofp",
    "chat_server_nofp",
    "rust_leaker_nofp",
    "static_glibc_nofp",
    "jemalloc_linked_nofp",
    "tcmalloc_new_nofp",
    "call_chain",
    "glib_strings",
    "sampling",
];
/// rust_leaker built for musl, statically, with and without frame pointers: only when
/// rustc has that target's standard library. Without it `LEAKBPF_TARGET_RUST_LEAKER_MUSL`
/// (and `_NOFP`) are empty, and the tests that need them fail saying what to install.
const MUSL_TARGETS: [&str; 2] = ["rust_leaker_musl", "rust_leaker_musl_nofp"];
const MUSL_TRIPLE: &str = "x86_64-unknown-linux-musl";

fn main() {
    let manifest_dir =
        PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").expect("CARGO_MANIFEST_DIR"));
    let sources = manifest_dir.join("targets");
    let out = PathBuf::from(env::var_os("OUT_DIR").expect("OUT_DIR")).join("targets");
    println!("cargo:rerun-if-changed={}", sources.display());
    let rust_leaker = manifest_dir.join("src/bin/rust_leaker.rs");
    println!("cargo:rerun-if-changed={}", rust_leaker.display());

    let musl = has_musl_std();
    let targets: Vec<&str> = TARGETS
        .iter()
        .chain(&LIFE_TARGETS)
        .chain(&ALLOC_TARGETS)
        .chain(&HOSTILE_TARGETS)
        .chain(&DLOPEN_TARGETS)
        .chain(&STRIPPED_TARGETS)
        .chain(&NOFP_TARGETS)
        .chain(MUSL_TARGETS.iter().filter(|_| musl))
        .copied()
        .collect();

    let output = Command::new("make")
        .arg("-C")
        .arg(&sources)
        .arg(format!("OUT={}", out.display()))
        .args(&targets)
        .output()
        .unwrap_or_else(|err| panic!("cannot run make (install make, gcc and g++): {err}"));
    if !output.status.success() {
        panic!(
            "building the test targets failed ({}; the allocator targets need Debian's \
             libjemalloc-dev, libtcmalloc-minimal4 and libmimalloc-dev, which \
             `cargo xtask setup` installs):\n{}\n{}",
            output.status,
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
    }
    if !musl {
        for name in MUSL_TARGETS {
            println!("cargo:rustc-env=LEAKBPF_TARGET_{}=", name.to_uppercase());
        }
    }
    for name in targets {
        let path = out.join(name);
        assert!(path.is_file(), "make did not produce {}", path.display());
        println!(
            "cargo:rustc-env=LEAKBPF_TARGET_{}={}",
            name.to_uppercase(),
            path.display()
        );
    }
}

/// Whether the rustc cargo builds with has the musl target's standard library. Reruns
/// when rustup adds or removes a target (its `components` list changes).
fn has_musl_std() -> bool {
    let rustc = env::var_os("RUSTC").unwrap_or_else(|| "rustc".into());
    let print = |what: &[&str]| {
        Command::new(&rustc)
            .args(what)
            .output()
            .ok()
            .filter(|output| output.status.success())
            .map(|output| PathBuf::from(String::from_utf8_lossy(&output.stdout).trim()))
    };
    if let Some(sysroot) = print(&["--print", "sysroot"]) {
        let components = sysroot.join("lib/rustlib/components");
        if components.is_file() {
            println!("cargo:rerun-if-changed={}", components.display());
        }
    }
    let Some(libdir) = print(&["--print", "target-libdir", "--target", MUSL_TRIPLE]) else {
        return false;
    };
    std::fs::read_dir(libdir).is_ok_and(|entries| {
        entries.flatten().any(|entry| {
            let name = entry.file_name();
            let name = name.to_string_lossy();
            name.starts_with("libstd-") && name.ends_with(".rlib")
        })
    })
}
