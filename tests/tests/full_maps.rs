//! Maps too small for the target: what does not fit is counted as dropped, in every report
//! and JSON line, and never reported as freed or as leaked where it was not.

use leakbpf_tests::{LEAKER, assert_churn_freed, require_root, trace_pid};

const LEAKBPF: &str = env!("CARGO_BIN_EXE_leakbpf-under-test");

#[test]
fn a_full_allocation_map_counts_drops_and_reports_no_more_than_the_truth() {
    require_root();
    let run = trace_pid(
        LEAKBPF,
        LEAKER,
        &[],
        &["--top", "1000", "--max-allocs", "16", "--interval", "300ms"],
    );
    let report = run.final_report();
    assert!(
        report.counters.dropped_allocations > 0,
        "16 slots cannot hold the leaker's 55 leaks:\n{}",
        report.describe()
    );
    for reported in &run.reports {
        assert!(
            reported.totals.outstanding_allocations <= 16,
            "more outstanding than the map holds:\n{}",
            reported.describe()
        );
    }
    // A dropped block is unknown, not freed: whatever is reported at a leak function
    // is at most what the target leaked there.
    for truth in run
        .truth
        .truths
        .iter()
        .filter(|t| t.function.starts_with("leak_"))
    {
        let (bytes, count) = report.outstanding_at(&truth.function);
        assert!(
            bytes <= truth.bytes && count <= truth.count,
            "{} reported {bytes} B in {count}, the target leaked {} B in {}:\n{}",
            truth.function,
            truth.bytes,
            truth.count,
            report.describe()
        );
    }
    assert_churn_freed(report);
}

#[test]
fn a_full_stack_map_counts_stack_failures_and_keeps_counting_bytes() {
    require_root();
    let run = trace_pid(
        LEAKBPF,
        LEAKER,
        &[],
        &["--top", "1000", "--max-stacks", "4"],
    );
    let report = run.final_report();
    assert!(
        report.counters.stack_failures > 0,
        "4 stacks cannot hold the leaker's call sites:\n{}",
        report.describe()
    );
    // Stacks that did not fit lose their frames, never their blocks: every leak is still
    // counted, at a site of its own.
    assert!(
        report.callsites.iter().any(|site| site.frames.is_empty()),
        "{}",
        report.describe()
    );
    let leaked = run
        .truth
        .truths
        .iter()
        .filter(|t| t.function.starts_with("leak_"))
        .fold((0, 0), |(bytes, count), t| {
            (bytes + t.bytes, count + t.count)
        });
    let reported = report.outstanding();
    assert!(
        reported.0 >= leaked.0 && reported.1 >= leaked.1,
        "the target leaked {leaked:?}, the report holds {reported:?}:\n{}",
        report.describe()
    );
    assert_churn_freed(report);
}
