//! Several processes under one agent: each gets its own reports with its own figures, its
//! final report when it exits, and the agent ends when the last one does.

use leakbpf_tests::{
    Agent, LEAKER, Report, THREADS, Target, check_reports, parse_reports, require_root,
};

const LEAKBPF: &str = env!("CARGO_BIN_EXE_leakbpf-under-test");

fn reports_of(reports: &[Report], pid: u32) -> Vec<Report> {
    reports.iter().filter(|r| r.pid == pid).cloned().collect()
}

#[test]
fn each_process_is_reported_apart_and_ends_with_its_own_final_report() {
    require_root();
    let mut leaker = Target::start(LEAKER, &[]);
    let mut threads = Target::start(THREADS, &[]);
    let pids = format!("{},{}", leaker.pid(), threads.pid());
    let mut agent = Agent::spawn(
        LEAKBPF,
        [
            "--pid",
            pids.as_str(),
            "--format",
            "json",
            "--top",
            "1000",
            "--interval",
            "300ms",
        ],
    );
    // One line per process: both must be traced before either starts.
    agent.wait_attached();
    agent.wait_attached();
    leaker.go();
    threads.go();
    let leaker_truth = leaker.read_until_done();
    let threads_truth = threads.read_until_done();
    // The leaker goes first: its final report comes while the other is still traced.
    leaker.finish();
    std::thread::sleep(std::time::Duration::from_millis(800));
    threads.finish();
    let finished = agent.wait();
    finished.assert_success();
    let reports = parse_reports(&finished.stdout);
    assert!(
        reports
            .iter()
            .all(|r| r.pid == leaker.pid() || r.pid == threads.pid()),
        "a report about a process nobody asked for"
    );

    let leaker_reports = reports_of(&reports, leaker.pid());
    let report = check_reports(&leaker_reports, leaker.pid());
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

    let threads_reports = reports_of(&reports, threads.pid());
    let report = check_reports(&threads_reports, threads.pid());
    let truth = threads_truth.truth("thread_leak");
    assert_eq!(
        report.outstanding_at("thread_leak"),
        (truth.bytes, truth.count),
        "thread_leak in the threaded target:\n{}",
        report.describe()
    );
    assert_eq!(report.outstanding_at("leak_malloc"), (0, 0));
    assert!(
        threads_reports.len() > 1 && reports.last().map(|r| r.pid) == Some(threads.pid()),
        "the threaded target, still running after the leaker's exit, is reported after it"
    );
}
