//! The checks an allocator test makes of a final report against what its target said:
//! each leak exactly, at the function that made it, once; the churn freed and counted.

use crate::{
    report::{Callsite, Report, sum},
    run::Traced,
    truth::TargetOutput,
};

/// At most this many allocations outstanding beyond the leaks in a [`Traced::FromSpawn`]
/// run: a start-up keeps a few; an allocation counted twice in the churn leaves one for
/// each block churned.
pub const START_UP_ALLOCATIONS: u64 = 64;

/// The function of the targets (alloc_target.h) that allocates and frees again.
const CHURN: &str = "churn";

/// The fewest frees an allocator target's churn makes (alloc_target.h's targets make
/// hundreds of thousands): fewer, and the run proved little.
const CHURN_FREES: u64 = 500_000;

/// What every allocator test checks of its final report, against what the target said:
/// - it printed a truth for exactly `functions`, each a leak (count > 0);
/// - each function holds exactly its truth's bytes and allocations at `frames[0]`, and
///   together they hold exactly the truths' sum;
/// - nothing is counted twice: traced by pid, the whole report holds exactly the truths'
///   sum; from spawn, the call sites beyond the leaking functions hold at most
///   [`START_UP_ALLOCATIONS`];
/// - nothing `churn` allocated is outstanding, at `frames[0]` or deeper;
/// - leakbpf counted at least the frees the churn made, and the failed allocations if it
///   made some, and dropped nothing.
pub fn assert_allocator_run(
    report: &Report,
    output: &TargetOutput,
    functions: &[&str],
    traced: Traced,
) {
    let mut printed: Vec<&str> = output.truths.iter().map(|t| t.function.as_str()).collect();
    let mut expected = functions.to_vec();
    printed.sort_unstable();
    expected.sort_unstable();
    assert_eq!(
        printed, expected,
        "the target's truths are about other functions"
    );

    let (mut truth_bytes, mut truth_count) = (0, 0);
    for function in functions {
        let truth = output.truth(function);
        assert!(truth.count > 0, "the target leaked nothing from {function}");
        assert_eq!(
            report.outstanding_at(function),
            (truth.bytes, truth.count),
            "(bytes, allocations) outstanding at {function}:\n{}",
            report.describe()
        );
        truth_bytes += truth.bytes;
        truth_count += truth.count;
    }
    let at_leaks = |site: &Callsite| site.function(0).is_some_and(|f| functions.contains(&f));
    assert_eq!(
        sum(report.sites_where(at_leaks)),
        (truth_bytes, truth_count),
        "(bytes, allocations) outstanding at all the leaking functions together:\n{}",
        report.describe()
    );
    match traced {
        Traced::ByPid => assert_eq!(
            report.outstanding(),
            (truth_bytes, truth_count),
            "attached after start-up, the report holds exactly the leaks:\n{}",
            report.describe()
        ),
        Traced::FromSpawn => {
            let (_, beyond) = sum(report.sites_where(|site| !at_leaks(site)));
            assert!(
                beyond <= START_UP_ALLOCATIONS,
                "{beyond} allocations outstanding beyond the leaks, more than a start-up \
                 keeps (counted twice?):\n{}",
                report.describe()
            );
        }
    }

    assert_churn_freed(report);
    assert_eq!(
        sum(report
            .sites_where(|site| { site.frames.iter().any(|frame| frame.name() == Some(CHURN)) })),
        (0, 0),
        "nothing {CHURN} allocated is outstanding, at any depth:\n{}",
        report.describe()
    );

    assert_churn_frees_counted(report, output, CHURN_FREES);
    if let Some(failed) = output.churn().failed_allocations {
        assert!(
            report.counters.failed_allocations >= failed,
            "the churn's {failed} failed allocations (an overflowing calloc) are counted: {:?}",
            report.counters
        );
    }
    assert_nothing_dropped(report);
}

/// Nothing the target's `churn` function allocated (as the allocator's direct caller) is
/// outstanding: it frees everything.
pub fn assert_churn_freed(report: &Report) {
    assert_eq!(
        report.outstanding_at(CHURN),
        (0, 0),
        "{CHURN} frees everything it allocates:\n{}",
        report.describe()
    );
}

/// The target's churn freed at least `at_least` blocks, and leakbpf counted every one of
/// those frees.
pub fn assert_churn_frees_counted(report: &Report, output: &TargetOutput, at_least: u64) {
    let churn = output.churn();
    assert!(
        churn.frees >= at_least,
        "the target churned too little: {churn:?}"
    );
    assert!(
        report.counters.frees >= churn.frees,
        "leakbpf counted {} frees, the churn alone made {}:\n{}",
        report.counters.frees,
        churn.frees,
        report.describe()
    );
}

/// leakbpf recorded every allocation: no map overflowed.
pub fn assert_nothing_dropped(report: &Report) {
    let counters = report.counters;
    assert_eq!(
        (
            counters.dropped_allocations,
            counters.dropped_calls,
            counters.probe_errors,
            counters.lost_events
        ),
        (0, 0, 0, 0),
        "leakbpf dropped events or its probes failed: {counters:?}"
    );
}
