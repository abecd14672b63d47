//! Several processes under one agent: each gets its own reports with its own figures, its
//! final report when it exits, and the agent ends when the last one does.

use leakbpf_tests::{Agent, LEAKER, THREADS, Target, final_report_of, require_root};

const LEAKBPF: &str = env!("CARGO_BIN_EXE_leakbpf-under-test");

#[test]
fn each_process_is_reported_apart_and_ends_with_its_own_final_report() {
    require_root();
    let mut leaker = Target::start(LEAKER, &[]);
    let mut threads = Target::start(THREADS, &[]);
    // Both traced before either starts.
    let agent = Agent::attach(
        LEAKBPF,
        &[leaker.pid(), threads.pid()],
        &["--top", "1000", "--interval", "300ms"],
    );
    leaker.go();
    threads.go();
    let leaker_truth = leaker.read_until_done();
    let threads_truth = threads.read_until_done();
    // The leaker goes first: its final report comes while the other is still traced,
    // and reported on after it.
    leaker.finish();
    agent.wait_for_report("the leaker's final report", |report| {
        report.pid == leaker.pid() && report.is_final
    });
    agent.wait_for_report(
        "a report on the threaded target, after the leaker's final one",
        |report| report.pid == threads.pid(),
    );
    threads.finish();
    let finished = agent.wait();
    finished.assert_success();
    let reports = finished.reports();
    assert!(
        reports
            .iter()
            .all(|r| r.pid == leaker.pid() || r.pid == threads.pid()),
        "a report about a process nobody asked for"
    );

    let report = final_report_of(&reports, leaker.pid());
    for truth in leaker_truth.truths.iter() {
        assert_eq!(
            report.outstanding_at(&truth.function),
            (truth.bytes, truth.count),
            "{} in the leaker:\n{}",
            truth.function,
            report.describe()
        );
    }
    assert_eq!(report.outstanding_at("thread_leak"), (0, 0));

    let report = final_report_of(&reports, threads.pid());
    let truth = threads_truth.truth("thread_leak");
    assert_eq!(
        report.outstanding_at("thread_leak"),
        (truth.bytes, truth.count),
        "thread_leak in the threaded target:\n{}",
        report.describe()
    );
    assert_eq!(report.outstanding_at("leak_malloc"), (0, 0));
    let leaker_final = reports
        .iter()
        .position(|r| r.pid == leaker.pid() && r.is_final)
        .expect("the leaker's final report");
    assert!(
        reports[leaker_final + 1..]
            .iter()
            .any(|r| r.pid == threads.pid() && !r.is_final)
            && reports.last().map(|r| r.pid) == Some(threads.pid()),
        "the threaded target, still running after the leaker's exit, is reported after it"
    );
}
