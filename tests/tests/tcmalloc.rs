//! tcmalloc (gperftools' minimal build), linked into a C++ program: its operator new and
//! delete are its own code and call no malloc, so they must be probed themselves. Each
//! leak is reported once, exactly, at the function that said `new` (or `malloc`).

use leakbpf_tests::{
    TCMALLOC_NEW, Traced, assert_allocator_run, require_root, trace_pid, trace_spawn,
};

const LEAKBPF: &str = env!("CARGO_BIN_EXE_leakbpf-under-test");

/// tcmalloc_new.cpp's leaking functions (extern "C", so named without parameters).
const FUNCTIONS: [&str; 5] = [
    "leak_new",
    "leak_new_array",
    "leak_new_nothrow",
    "leak_new_aligned",
    "leak_malloc",
];

#[test]
fn tcmalloc_new_traced_by_pid() {
    require_root();
    let run = trace_pid(LEAKBPF, TCMALLOC_NEW, &[], &["--top", "1000"]);
    assert_allocator_run(run.final_report(), &run.truth, &FUNCTIONS, Traced::ByPid);
}

#[test]
fn tcmalloc_new_traced_from_spawn() {
    require_root();
    let run = trace_spawn(LEAKBPF, TCMALLOC_NEW, &[], &["--top", "1000"]);
    assert_allocator_run(
        run.final_report(),
        &run.truth,
        &FUNCTIONS,
        Traced::FromSpawn,
    );
}
