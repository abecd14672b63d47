//! A leak four calls below `main` in a program built without frame pointers, where two
//! of the frames use rbp as a register of their own and one addresses its frame from
//! rbp: leakbpf walks the whole chain with the unwind tables, and the figures stay exact.

use leakbpf_tests::{
    CALL_CHAIN, Run, Traced, assert_chain, assert_nothing_dropped, require_root, trace,
};

const LEAKBPF: &str = env!("CARGO_BIN_EXE_leakbpf-under-test");

/// The leak's stack, from the function that called malloc up to `main`.
const LEAK_CHAIN: [&str; 5] = [
    "make_record",
    "store_record",
    "handle_request",
    "serve",
    "main",
];

fn check(run: &Run) {
    let report = run.final_report();
    let truth = run.truth.truth("make_record");
    assert_eq!(truth.count, 700, "{truth:?}");
    assert_eq!(
        report.outstanding_at("make_record"),
        (truth.bytes, truth.count),
        "(bytes, allocations) outstanding at make_record:\n{}",
        report.describe()
    );
    assert_chain(report, "make_record", &LEAK_CHAIN);
    assert_eq!(
        report.counters.truncated_stacks,
        0,
        "every stack reaches its outermost frame:\n{}",
        report.describe()
    );
    // The churn went through the same chain, and freed all it made.
    let churn = run.truth.churn();
    assert_eq!(churn.frees, 7000, "{churn:?}");
    assert!(
        report.counters.frees >= churn.frees,
        "leakbpf counted {} frees, the churn alone made {}:\n{}",
        report.counters.frees,
        churn.frees,
        report.describe()
    );
    assert_nothing_dropped(report);
}

#[test]
fn traced_by_pid() {
    require_root();
    check(&trace(
        LEAKBPF,
        Traced::ByPid,
        CALL_CHAIN,
        &["--requests", "700"],
        &["--top", "1000"],
        &[],
    ));
}

#[test]
fn traced_from_spawn() {
    require_root();
    check(&trace(
        LEAKBPF,
        Traced::FromSpawn,
        CALL_CHAIN,
        &["--requests", "700"],
        &["--top", "1000"],
        &[],
    ));
}
