//! mimalloc, linked ahead of libc: malloc and friends are mimalloc's (malloc and
//! mi_malloc are one function under two names; reallocarray and posix_memalign jump to
//! mimalloc's own). Each leak is reported once, exactly, at the function that made it.

use leakbpf_tests::{
    MIMALLOC_LINKED, Traced, assert_allocator_run, require_root, trace_pid, trace_spawn,
};

const LEAKBPF: &str = env!("CARGO_BIN_EXE_leakbpf-under-test");

/// mimalloc_linked.c's leaking functions.
const FUNCTIONS: [&str; 8] = [
    "leak_malloc",
    "leak_calloc",
    "leak_realloc",
    "leak_reallocarray",
    "leak_posix_memalign",
    "leak_aligned_alloc",
    "leak_mi_malloc",
    "leak_mi_realloc",
];

#[test]
fn mimalloc_linked_traced_by_pid() {
    require_root();
    let run = trace_pid(LEAKBPF, MIMALLOC_LINKED, &[], &["--top", "1000"]);
    assert_allocator_run(run.final_report(), &run.truth, &FUNCTIONS, Traced::ByPid);
}

#[test]
fn mimalloc_linked_traced_from_spawn() {
    require_root();
    let run = trace_spawn(LEAKBPF, MIMALLOC_LINKED, &[], &["--top", "1000"]);
    assert_allocator_run(
        run.final_report(),
        &run.truth,
        &FUNCTIONS,
        Traced::FromSpawn,
    );
}
