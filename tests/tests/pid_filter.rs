//! Two identical processes run; only the one named by --pid is reported.

use leakbpf_tests::{Agent, LEAKER, Target, check_reports, require_root};

const LEAKBPF: &str = env!("CARGO_BIN_EXE_leakbpf-under-test");

#[test]
fn only_the_traced_process_is_counted() {
    require_root();
    let mut traced = Target::start(LEAKER, &[]);
    let mut other = Target::start(LEAKER, &[]);
    let agent = Agent::attach(LEAKBPF, &[traced.pid()], &["--top", "1000"]);
    other.go();
    traced.go();
    let truth = traced.read_until_done();
    let other_truth = other.read_until_done();
    traced.finish();
    other.finish();
    let finished = agent.wait();
    finished.assert_success();
    let reports = finished.reports();
    let report = check_reports(&reports, traced.pid());

    // Both leaked the same: the figures must be one process's, not the sum of two.
    for truth in &truth.truths {
        let other = other_truth.truth(&truth.function);
        assert_eq!((other.bytes, other.count), (truth.bytes, truth.count));
        assert_eq!(
            report.outstanding_at(&truth.function),
            (truth.bytes, truth.count),
            "(bytes, allocations) outstanding at {} in the traced process only:\n{}",
            truth.function,
            report.describe()
        );
    }
    // And so must the event counts. The other process's free() calls alone would double
    // them; the traced one's reallocs (which free too) cannot.
    let frees = truth.churn().frees;
    let counted = report.counters.frees;
    assert!(
        counted >= frees && counted < 2 * frees,
        "leakbpf counted {counted} frees; the traced process made {frees}, as did the other:\n{}",
        report.describe()
    );
}
