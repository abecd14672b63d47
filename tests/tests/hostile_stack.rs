//! Frame pointers that lie: garbage, a frame pointing at itself, a fake chain longer than
//! any walk, each set by inline assembly the function's unwind table knows nothing of.
//! The direct caller is still named, every walk stops where the table's rule meets the
//! lie (cut, and counted), no made-up return address becomes a frame, figures stay exact.

use leakbpf_tests::{Callsite, HOSTILE_STACK, require_root, sum, trace_pid};

const LEAKBPF: &str = env!("CARGO_BIN_EXE_leakbpf-under-test");

/// The first frame that is a real call (the target inlines its helper into the caller).
fn caller(site: &Callsite) -> Option<&str> {
    site.frames
        .iter()
        .find(|frame| !frame.inlined)
        .and_then(|frame| frame.name())
}

#[test]
fn lying_frame_pointers_neither_hide_the_caller_nor_stop_the_agent() {
    require_root();
    let run = trace_pid(LEAKBPF, HOSTILE_STACK, &[], &["--top", "1000"]);
    let report = run.final_report();
    let mut lied_to = 0;
    for function in [
        "leak_with_garbage_rbp",
        "leak_with_looping_rbp",
        "leak_with_endless_chain",
    ] {
        let truth = run.truth.truth(function);
        let sites: Vec<&Callsite> = report
            .sites_where(|site| caller(site) == Some(function))
            .collect();
        assert_eq!(
            sum(sites.iter().copied()),
            (truth.bytes, truth.count),
            "(bytes, allocations) at {function}:\n{}",
            report.describe()
        );
        lied_to += truth.count;
        // The function's frame finds its caller through rbp, which the assembly set:
        // what is there is no return address of this stack, and is not reported.
        for site in sites {
            let addresses = site.frames.iter().filter(|f| !f.inlined).count();
            assert_eq!(
                addresses,
                1,
                "{function}: a frame beyond the direct caller came from a lying rbp:\n{}",
                report.describe()
            );
        }
    }
    let churned = run
        .truth
        .churn()
        .allocations
        .expect("hostile_stack's churn counts its allocations");
    assert!(
        report.counters.truncated_stacks >= lied_to + churned,
        "every walk the assembly lied to is cut and counted ({lied_to} leaks, {churned} \
         churned): {:?}",
        report.counters
    );
    let churn = sum(report.sites_where(|site| caller(site) == Some("churn")));
    assert_eq!(churn, (0, 0), "{}", report.describe());
    assert_eq!(report.counters.stack_failures, 0, "{:?}", report.counters);
}
