//! An allocator exporting only prefixed names (je_malloc, je_calloc, je_realloc,
//! je_free, on memory of its own), probed with `--symbol-prefix je_`, beside libc's
//! malloc: both are reported, each leak once and exactly.

use leakbpf_tests::{PREFIXED, Traced, assert_allocator_run, require_root, trace_pid, trace_spawn};

const LEAKBPF: &str = env!("CARGO_BIN_EXE_leakbpf-under-test");

const ARGS: [&str; 4] = ["--top", "1000", "--symbol-prefix", "je_"];

/// prefixed.c's leaking functions.
const FUNCTIONS: [&str; 6] = [
    "leak_je_malloc",
    "leak_je_calloc",
    "leak_je_realloc",
    "leak_je_realloc_in_place",
    "leak_je_realloc_null",
    "leak_malloc",
];

#[test]
fn prefixed_allocator_traced_by_pid() {
    require_root();
    let run = trace_pid(LEAKBPF, PREFIXED, &[], &ARGS);
    assert_allocator_run(run.final_report(), &run.truth, &FUNCTIONS, Traced::ByPid);
}

#[test]
fn prefixed_allocator_traced_from_spawn() {
    require_root();
    let run = trace_spawn(LEAKBPF, PREFIXED, &[], &ARGS);
    assert_allocator_run(
        run.final_report(),
        &run.truth,
        &FUNCTIONS,
        Traced::FromSpawn,
    );
}
