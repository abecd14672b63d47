//! Eight threads, each freeing what another allocated, each leaking from thread_leak:
//! the same figures, and stacks up to the thread's start, with or without frame pointers.

use leakbpf_tests::{THREADS, THREADS_NOFP, assert_chain, require_root, trace_pid};

const LEAKBPF: &str = env!("CARGO_BIN_EXE_leakbpf-under-test");

/// A thread's leak, from the function to glibc's start of the thread and the clone
/// that made it, the outermost frame.
const LEAK_CHAIN: [&str; 4] = ["thread_leak", "worker", "start_thread", "clone3"];

fn cross_thread_frees_and_per_thread_leaks(threads: &str) {
    require_root();
    let run = trace_pid(LEAKBPF, threads, &[], &["--top", "1000"]);
    let report = run.final_report();
    let truth = run.truth.truth("thread_leak");
    assert!(truth.count > 0, "the target leaked nothing: {truth:?}");
    assert_eq!(
        report.outstanding_at("thread_leak"),
        (truth.bytes, truth.count),
        "(bytes, allocations) outstanding at thread_leak:\n{}",
        report.describe()
    );
    assert_chain(report, "thread_leak", &LEAK_CHAIN);
    assert_eq!(
        report.counters.truncated_stacks,
        0,
        "every stack reaches its outermost frame:\n{}",
        report.describe()
    );

    let passed = run.truth.churn();
    assert_eq!(passed.function, "make_block", "{passed:?}");
    let frees = passed.frees;
    assert!(
        frees >= 100_000,
        "the target passed too few blocks: {passed:?}"
    );
    assert!(
        report.counters.frees >= frees,
        "leakbpf counted {} frees, the threads made {frees} across threads:\n{}",
        report.counters.frees,
        report.describe()
    );
    assert_eq!(
        report.outstanding_at("make_block"),
        (0, 0),
        "every block passed between threads was freed:\n{}",
        report.describe()
    );
}

#[test]
fn with_frame_pointers() {
    cross_thread_frees_and_per_thread_leaks(THREADS);
}

#[test]
fn without_frame_pointers() {
    cross_thread_frees_and_per_thread_leaks(THREADS_NOFP);
}
