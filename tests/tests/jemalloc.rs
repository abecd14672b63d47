//! jemalloc, linked and preloaded: malloc and friends are jemalloc's, not libc's, and
//! jemalloc's own API (mallocx, rallocx, dallocx, sdallocx) allocates and frees too.
//! Each leak is reported once, exactly, at the function that made it.

use std::path::Path;

use leakbpf_tests::{
    JEMALLOC_LINKED, LEAKER, Report, TargetOutput, Traced, assert_allocator_run, require_root,
    trace_pid, trace_pid_with_env, trace_spawn, trace_spawn_with_env,
};

const LEAKBPF: &str = env!("CARGO_BIN_EXE_leakbpf-under-test");

/// Debian's libjemalloc2.
const LIBJEMALLOC: &str = "/usr/lib/x86_64-linux-gnu/libjemalloc.so.2";

/// jemalloc_linked.c's leaking functions.
const LINKED_FUNCTIONS: [&str; 6] = [
    "leak_malloc",
    "leak_calloc",
    "leak_realloc",
    "leak_posix_memalign",
    "leak_mallocx",
    "leak_rallocx",
];

/// leaker.c's: with jemalloc preloaded, pvalloc (which jemalloc lacks) is still libc's,
/// and libc's reallocarray calls jemalloc's realloc.
const LEAKER_FUNCTIONS: [&str; 10] = [
    "leak_malloc",
    "leak_calloc",
    "leak_realloc_grow",
    "leak_realloc_shrink",
    "leak_reallocarray",
    "leak_posix_memalign",
    "leak_aligned_alloc",
    "leak_memalign",
    "leak_valloc",
    "leak_pvalloc",
];

fn preload() -> [(&'static str, &'static str); 1] {
    assert!(
        Path::new(LIBJEMALLOC).is_file(),
        "{LIBJEMALLOC} is missing: install libjemalloc2 (`cargo xtask setup` does)"
    );
    [("LD_PRELOAD", LIBJEMALLOC)]
}

fn assert_preloaded_run(report: &Report, truth: &TargetOutput, traced: Traced) {
    assert_allocator_run(report, truth, &LEAKER_FUNCTIONS, traced);
    let failed = truth.object("churn")["failed_allocations"]
        .as_u64()
        .expect("churn.failed_allocations");
    assert!(
        report.counters.failed_allocations >= failed,
        "the overflowing calloc failed: {:?}",
        report.counters
    );
}

#[test]
fn jemalloc_linked_traced_by_pid() {
    require_root();
    let run = trace_pid(LEAKBPF, JEMALLOC_LINKED, &[], &["--top", "1000"]);
    assert_allocator_run(
        run.final_report(),
        &run.truth,
        &LINKED_FUNCTIONS,
        Traced::ByPid,
    );
}

#[test]
fn jemalloc_linked_traced_from_spawn() {
    require_root();
    let run = trace_spawn(LEAKBPF, JEMALLOC_LINKED, &[], &["--top", "1000"]);
    assert_allocator_run(
        run.final_report(),
        &run.truth,
        &LINKED_FUNCTIONS,
        Traced::FromSpawn,
    );
}

#[test]
fn jemalloc_preloaded_traced_by_pid() {
    require_root();
    let run = trace_pid_with_env(LEAKBPF, LEAKER, &[], &["--top", "1000"], &preload());
    assert_preloaded_run(run.final_report(), &run.truth, Traced::ByPid);
}

/// leakbpf runs with LD_PRELOAD set, and the command it starts inherits it.
#[test]
fn jemalloc_preloaded_traced_from_spawn() {
    require_root();
    let run = trace_spawn_with_env(LEAKBPF, LEAKER, &[], &["--top", "1000"], &preload());
    assert_preloaded_run(run.final_report(), &run.truth, Traced::FromSpawn);
}
