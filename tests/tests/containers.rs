//! A process in its own mount namespace, whose libc is a different file from the host's:
//! leakbpf must probe the file the process runs, reached through /proc/PID/root.

use std::{
    fs,
    os::unix::fs::{MetadataExt, PermissionsExt},
    path::{Path, PathBuf},
};

use leakbpf_tests::{LEAKER, LEAKER_NOFP, Target, assert_churn_freed, require_root, trace_pid};
use tempfile::TempDir;

const LEAKBPF: &str = env!("CARGO_BIN_EXE_leakbpf-under-test");
const HOST_LIBC: &str = "/lib/x86_64-linux-gnu/libc.so.6";

/// A scratch directory, removed at the end.
fn scratch() -> TempDir {
    tempfile::Builder::new()
        .prefix("leakbpf-ns.")
        .tempdir()
        .expect("a temporary directory")
}

/// A script that runs `leaker` in a new mount namespace where a copy of libc is bind
/// mounted over the host's path: same path, another file.
fn namespaced_leaker(scratch: &Path, leaker: &str) -> PathBuf {
    let copy = scratch.join("libc.so.6");
    fs::copy(HOST_LIBC, &copy)
        .unwrap_or_else(|err| panic!("copy libc to {}: {err}", copy.display()));
    let script = scratch.join("in-namespace.sh");
    fs::write(
        &script,
        format!(
            "#!/bin/sh\nexec unshare --mount --propagation private sh -c \
             'target=\"$1\"; shift; mount --bind \"$0\" {HOST_LIBC} && exec \"$target\" \"$@\"' \
             {copy} {leaker} \"$@\"\n",
            copy = copy.display()
        ),
    )
    .expect("write script");
    fs::set_permissions(&script, fs::Permissions::from_mode(0o755)).expect("chmod script");
    script
}

/// The inode of the libc the process `pid` has mapped.
fn mapped_libc_inode(pid: u32) -> u64 {
    let maps = fs::read_to_string(format!("/proc/{pid}/maps")).expect("target maps");
    maps.lines()
        .find(|line| line.ends_with("/libc.so.6"))
        .and_then(|line| line.split_whitespace().nth(4))
        .and_then(|inode| inode.parse().ok())
        .expect("the target maps libc")
}

#[test]
fn a_process_with_its_own_libc_file_is_probed_in_that_file() {
    assert_namespaced_leaks(LEAKER);
}

/// Without frame pointers, the stacks through the namespace's libc come from its own
/// file's unwind table, read through the process's root.
#[test]
fn a_process_with_its_own_libc_file_is_unwound_through_that_file() {
    assert_namespaced_leaks(LEAKER_NOFP);
}

fn assert_namespaced_leaks(leaker: &str) {
    require_root();
    let scratch = scratch();
    let script = namespaced_leaker(scratch.path(), leaker);

    let run = trace_pid(LEAKBPF, script.to_str().unwrap(), &[], &["--top", "1000"]);
    let report = run.final_report();

    for truth in run
        .truth
        .truths
        .iter()
        .filter(|t| t.function.starts_with("leak_"))
    {
        assert_eq!(
            report.outstanding_at(&truth.function),
            (truth.bytes, truth.count),
            "(bytes, allocations) outstanding at {} in the namespaced process:\n{}",
            truth.function,
            report.describe()
        );
        // Whole stacks, each walked up to main.
        for site in report.sites_where(|site| site.function(0) == Some(truth.function.as_str())) {
            assert!(
                site.chain_to("main").is_some(),
                "{}'s stack stops before main: {:?}",
                truth.function,
                site.names()
            );
        }
    }
    assert!(run.truth.truths.len() >= 10, "{:?}", run.truth.truths);
    assert_churn_freed(report);
}

#[test]
fn the_namespace_really_swaps_the_libc_file() {
    // Guards the test above: if the bind mount did nothing, it would prove nothing.
    require_root();
    let scratch = scratch();
    let script = namespaced_leaker(scratch.path(), LEAKER);
    let target = Target::start(&script, &[]);
    let host = fs::metadata(HOST_LIBC).expect("host libc").ino();
    assert_ne!(mapped_libc_inode(target.pid()), host);
}
