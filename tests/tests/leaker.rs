//! Every allocator leakbpf probes, each leaking a different amount from its own function,
//! next to millions of allocations that are all freed.

use leakbpf_tests::{
    LEAKER, assert_churn_freed, assert_churn_frees_counted, require_root, trace_pid,
};

const LEAKBPF: &str = env!("CARGO_BIN_EXE_leakbpf-under-test");

const LEAKING_FUNCTIONS: [&str; 10] = [
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

#[test]
fn every_allocator_leak_is_reported_exactly_and_nothing_freed_is() {
    require_root();
    let run = trace_pid(LEAKBPF, LEAKER, &[], &["--top", "1000"]);
    let report = run.final_report();

    for function in LEAKING_FUNCTIONS {
        let truth = run.truth.truth(function);
        assert!(truth.count > 0, "the target leaked nothing from {function}");
        assert_eq!(
            report.outstanding_at(function),
            (truth.bytes, truth.count),
            "(bytes, allocations) outstanding at {function}:\n{}",
            report.describe()
        );
    }

    assert_churn_freed(report);
    assert_churn_frees_counted(report, &run.truth, 2_000_000);
    let failed = run.truth.object("churn")["failed_allocations"]
        .as_u64()
        .expect("churn.failed_allocations");
    assert!(
        report.counters.failed_allocations >= failed,
        "the overflowing calloc failed: {:?}",
        report.counters
    );
}
