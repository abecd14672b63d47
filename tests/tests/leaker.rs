//! Every allocator leakbpf probes, each leaking a different amount from its own function,
//! next to millions of allocations that are all freed.

use leakbpf_tests::{LEAKER, require_root, trace_pid};

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

    assert_eq!(
        report.outstanding_at("churn"),
        (0, 0),
        "churn frees everything it allocates:\n{}",
        report.describe()
    );
    let churn = run.truth.object("churn");
    let field = |name: &str| {
        churn[name]
            .as_u64()
            .unwrap_or_else(|| panic!("churn.{name}"))
    };
    let frees = field("frees");
    assert!(frees >= 2_000_000, "the target freed too little: {churn}");
    assert!(
        report.counters.frees >= frees,
        "leakbpf counted {} frees, the target made {frees}:\n{}",
        report.counters.frees,
        report.describe()
    );
    assert!(
        report.counters.failed_allocations >= field("failed_allocations"),
        "the overflowing calloc failed: {:?}",
        report.counters
    );
}
