//! Frame pointers that lie: garbage, a frame pointing at itself, a fake chain longer than
//! any walk. The direct caller is still named, every walk stops, figures stay exact.

use leakbpf_tests::{Callsite, HOSTILE_STACK, require_root, sum, trace_pid};

const LEAKBPF: &str = env!("CARGO_BIN_EXE_leakbpf-under-test");
/// The deepest stack the eBPF side walks, in return addresses.
const MAX_STACK_DEPTH: usize = 64;

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
        for site in sites {
            let addresses = site.frames.iter().filter(|f| !f.inlined).count();
            assert!(
                addresses <= MAX_STACK_DEPTH,
                "{function}: a walk of {addresses} frames went past the limit"
            );
        }
    }
    let deep = report
        .sites_where(|site| caller(site) == Some("leak_with_endless_chain"))
        .next()
        .expect("the endless chain's site");
    assert_eq!(
        deep.frames.iter().filter(|f| !f.inlined).count(),
        MAX_STACK_DEPTH,
        "a 200-frame chain is walked to the limit, no further"
    );
    let churn = sum(report.sites_where(|site| caller(site) == Some("churn")));
    assert_eq!(churn, (0, 0), "{}", report.describe());
    assert_eq!(report.counters.stack_failures, 0, "{:?}", report.counters);
}
