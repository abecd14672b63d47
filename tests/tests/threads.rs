//! Eight threads, each freeing what another allocated, each leaking from thread_leak.

use leakbpf_tests::{THREADS, require_root, trace_pid};

const LEAKBPF: &str = env!("CARGO_BIN_EXE_leakbpf-under-test");

#[test]
fn cross_thread_frees_and_per_thread_leaks() {
    require_root();
    let run = trace_pid(LEAKBPF, THREADS, &[], &["--top", "1000"]);
    let report = run.final_report();
    let truth = run.truth.truth("thread_leak");
    assert!(truth.count > 0, "the target leaked nothing: {truth:?}");
    assert_eq!(
        report.outstanding_at("thread_leak"),
        (truth.bytes, truth.count),
        "(bytes, allocations) outstanding at thread_leak:\n{}",
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
