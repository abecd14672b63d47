//! A fully static executable: glibc's malloc is in the program itself, and there is no
//! libc.so and no dynamic loader to find it through.

use leakbpf_tests::{
    STATIC_GLIBC, Traced, assert_allocator_run, require_root, trace_pid, trace_spawn,
};

const LEAKBPF: &str = env!("CARGO_BIN_EXE_leakbpf-under-test");

/// static_glibc.c's leaking functions.
const FUNCTIONS: [&str; 5] = [
    "leak_malloc",
    "leak_calloc",
    "leak_realloc",
    "leak_posix_memalign",
    "leak_aligned_alloc",
];

#[test]
fn static_glibc_traced_by_pid() {
    require_root();
    let run = trace_pid(LEAKBPF, STATIC_GLIBC, &[], &["--top", "1000"]);
    assert_allocator_run(run.final_report(), &run.truth, &FUNCTIONS, Traced::ByPid);
}

#[test]
fn static_glibc_traced_from_spawn() {
    require_root();
    let run = trace_spawn(LEAKBPF, STATIC_GLIBC, &[], &["--top", "1000"]);
    assert_allocator_run(
        run.final_report(),
        &run.truth,
        &FUNCTIONS,
        Traced::FromSpawn,
    );
}
