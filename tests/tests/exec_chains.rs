//! A started command that reaches the program through launchers: `env VAR=… prog`, a
//! `#!` script ending in `exec`, two of them, a pyenv-style shim found in `PATH`. Each
//! image is planned at its exec, before it runs, from its own environment: the final
//! program's allocator (even one only its launcher preloads) is probed from its first
//! instruction, and its leaks are reported exactly.

use std::{fs, os::unix::fs::PermissionsExt, path::Path};

use leakbpf_tests::{
    LEAKER, LEAKER_FUNCTIONS, Run, Traced, assert_allocator_run, require_root, trace, trace_spawn,
};

const LEAKBPF: &str = env!("CARGO_BIN_EXE_leakbpf-under-test");

/// Debian's libjemalloc2, by its path, and gperftools' tcmalloc by the name people
/// preload it with (a symlink to the versioned file the process maps).
const LIBJEMALLOC: &str = "/usr/lib/x86_64-linux-gnu/libjemalloc.so.2";
const LIBTCMALLOC: &str = "libtcmalloc_minimal.so.4";

const ARGS: [&str; 2] = ["--top", "1000"];
/// A shorter churn than the leaker's own (540,000 frees, enough for the allocator checks):
/// these tests are about who is probed, and jemalloc's `free` is probed on an instruction
/// the kernel single-steps.
const ROUNDS: [&str; 2] = ["--rounds", "90000"];

/// An executable file `name` in `dir` holding `text`.
fn script(dir: &Path, name: &str, text: &str) -> String {
    let path = dir.join(name);
    fs::write(&path, text).unwrap_or_else(|err| panic!("write {}: {err}", path.display()));
    fs::set_permissions(&path, fs::Permissions::from_mode(0o755)).expect("chmod");
    path.to_string_lossy().into_owned()
}

/// The run's leaks are exact, and leakbpf attached to `object` on the way.
fn assert_exact_with(run: &Run, object: &str) {
    assert_allocator_run(
        run.final_report(),
        &run.truth,
        &LEAKER_FUNCTIONS,
        Traced::FromSpawn,
    );
    assert!(
        run.finished
            .stderr
            .lines()
            .any(|line| line.starts_with("leakbpf: attached") && line.contains(object)),
        "no probe in {object}:\n{}",
        run.finished.stderr
    );
}

#[test]
fn env_preloading_jemalloc_for_the_program_alone() {
    require_root();
    assert!(
        Path::new(LIBJEMALLOC).is_file(),
        "cargo xtask setup installs libjemalloc2"
    );
    let preload = format!("LD_PRELOAD={LIBJEMALLOC}");
    let run = trace_spawn(
        LEAKBPF,
        "env",
        &[&preload, LEAKER, ROUNDS[0], ROUNDS[1]],
        &ARGS,
    );
    assert_exact_with(&run, "libjemalloc.so.2");
}

#[test]
fn env_preloading_tcmalloc_by_its_symlink() {
    require_root();
    let preload = format!("LD_PRELOAD={LIBTCMALLOC}");
    let run = trace_spawn(
        LEAKBPF,
        "env",
        &[&preload, LEAKER, ROUNDS[0], ROUNDS[1]],
        &ARGS,
    );
    assert_exact_with(&run, "libtcmalloc_minimal.so.4");
}

#[test]
fn a_shebang_launcher_that_execs_the_program() {
    require_root();
    let dir = tempfile::tempdir().expect("a temporary directory");
    let launcher = script(dir.path(), "launch", "#!/bin/sh\nexec nice -n 1 \"$@\"\n");
    let run = trace_spawn(LEAKBPF, &launcher, &[LEAKER, ROUNDS[0], ROUNDS[1]], &ARGS);
    assert_exact_with(&run, "libc.so.6");
}

#[test]
fn two_launchers_deep_the_inner_one_preloading() {
    require_root();
    let dir = tempfile::tempdir().expect("a temporary directory");
    script(
        dir.path(),
        "inner",
        &format!("#!/bin/bash\nexport LD_PRELOAD={LIBJEMALLOC}\nexec \"$@\"\n"),
    );
    let outer = script(
        dir.path(),
        "outer",
        "#!/bin/sh\nexec \"$(dirname \"$0\")/inner\" env LEAKBPF_LAUNCHED=1 \"$@\"\n",
    );
    let run = trace_spawn(LEAKBPF, &outer, &[LEAKER, ROUNDS[0], ROUNDS[1]], &ARGS);
    assert_exact_with(&run, "libjemalloc.so.2");
}

/// As pyenv installs them: `shims/NAME` runs `#!/usr/bin/env bash`, which execs the
/// manager's own script, which finds the real program and execs it.
#[test]
fn a_pyenv_style_shim_found_in_path() {
    require_root();
    let root = tempfile::tempdir().expect("a temporary directory");
    let versions = root.path().join("versions/1.0/bin");
    fs::create_dir_all(&versions).expect("mkdir");
    fs::copy(LEAKER, versions.join("leaker")).expect("copy the leaker");
    let libexec = root.path().join("libexec");
    fs::create_dir_all(&libexec).expect("mkdir");
    script(
        &libexec,
        "manager",
        "#!/usr/bin/env bash\nset -e\nprogram=\"$1\"; shift\n\
         exec \"$MANAGER_ROOT/versions/1.0/bin/$program\" \"$@\"\n",
    );
    let shims = root.path().join("shims");
    fs::create_dir_all(&shims).expect("mkdir");
    script(
        &shims,
        "leaker",
        "#!/usr/bin/env bash\nset -e\nprogram=\"${0##*/}\"\n\
         exec \"$MANAGER_ROOT/libexec/manager\" \"$program\" \"$@\"\n",
    );
    let path = format!(
        "{}:{}",
        shims.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let manager_root = root.path().to_string_lossy().into_owned();
    let run = trace(
        LEAKBPF,
        Traced::FromSpawn,
        "leaker",
        &ROUNDS,
        &ARGS,
        &[("PATH", &path), ("MANAGER_ROOT", &manager_root)],
    );
    assert_exact_with(&run, "libc.so.6");
}
