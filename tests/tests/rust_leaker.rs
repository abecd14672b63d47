//! A Rust program: its allocations go through the standard library's allocation
//! functions before malloc, and are still attributed to the function that made them.

use leakbpf_tests::{RUST_LEAKER, require_root, sum, trace_pid};

const LEAKBPF: &str = env!("CARGO_BIN_EXE_leakbpf-under-test");

#[test]
fn rust_boxes_and_vec_leaks_are_reported_exactly() {
    require_root();
    let run = trace_pid(LEAKBPF, RUST_LEAKER, &[], &["--top", "1000"]);
    let report = run.final_report();
    for (function, suffix) in [
        ("rust_leaker::leak_boxes", "leak_boxes"),
        ("rust_leaker::leak_vec", "leak_vec"),
    ] {
        let truth = run.truth.truth(function);
        let outstanding = sum(report.sites_where(|site| {
            site.rust_caller()
                .is_some_and(|caller| caller.ends_with(suffix))
        }));
        assert_eq!(
            outstanding,
            (truth.bytes, truth.count),
            "(bytes, allocations) outstanding at {function}:\n{}",
            report.describe()
        );
    }
    let churned = sum(report.sites_where(|site| {
        site.rust_caller()
            .is_some_and(|caller| caller.ends_with("churn"))
    }));
    assert_eq!(
        churned,
        (0, 0),
        "churn frees everything:\n{}",
        report.describe()
    );
    let frees = run.truth.object("churn")["frees"]
        .as_u64()
        .expect("churn.frees");
    assert!(frees >= 500_000, "the target churned too little");
    assert!(
        report.counters.frees >= frees,
        "leakbpf counted {} frees, the churn alone made {frees}",
        report.counters.frees
    );
}
