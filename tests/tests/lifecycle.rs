//! How leakbpf stops: on SIGINT or SIGTERM, when the target exits, after --count reports;
//! always with one final report, exit 0, and nothing of its own left in the kernel (the
//! programs and links it held while attached, read from /proc/PID/fdinfo, are gone).

use leakbpf_tests::{
    Agent, CHAT_SERVER, EARLY, Finished, KernelObjects, Report, Target, TargetOutput,
    check_reports, require_root, sum,
};

const LEAKBPF: &str = env!("CARGO_BIN_EXE_leakbpf-under-test");

/// Starts leakbpf on a `--wait` target and waits until it is attached; returns what it
/// holds in the kernel.
fn attach(target: &Target, options: &[&str]) -> (Agent, KernelObjects) {
    let agent = Agent::attach(LEAKBPF, &[target.pid()], options);
    let objects = KernelObjects::of(agent.pid());
    objects.assert_probes_loaded();
    (agent, objects)
}

/// The final report of a leakbpf run that must have ended well.
fn final_report(finished: &Finished, pid: u32) -> Report {
    finished.assert_success();
    check_reports(&finished.reports(), pid).clone()
}

/// The subscribe leak of a finished chat_server, exactly, in `report`.
fn assert_chat_leak(report: &Report, truth: &TargetOutput) {
    let truth = truth.truth("EventManager::subscribe");
    assert!(truth.count > 0, "{truth:?}");
    let outstanding = sum(report.sites_where(|site| {
        site.function(0)
            .is_some_and(|f| f.contains("EventManager::subscribe"))
    }));
    assert_eq!(
        outstanding,
        (truth.bytes, truth.count),
        "the final report has the leak:\n{}",
        report.describe()
    );
}

/// Attaches to a chat_server, lets it finish its work, then sends `signal` to leakbpf
/// while the target still runs.
fn final_report_on_signal(signal: libc::c_int) {
    let mut target = Target::start(CHAT_SERVER, &["--joins", "300"]);
    let (agent, objects) = attach(&target, &["--interval", "200ms", "--top", "1000"]);
    target.go();
    let truth = target.read_until_done();
    agent.signal(signal);
    let finished = agent.wait();
    let report = final_report(&finished, target.pid());
    assert_chat_leak(&report, &truth);
    target.finish();
    objects.assert_released();
}

#[test]
fn sigint_gives_a_final_report_and_detaches() {
    require_root();
    final_report_on_signal(libc::SIGINT);
}

#[test]
fn sigterm_gives_a_final_report_and_detaches() {
    require_root();
    final_report_on_signal(libc::SIGTERM);
}

#[test]
fn stacks_first_seen_once_the_target_is_a_zombie_are_named() {
    require_root();
    // The agent, stopped, reads the target's new stacks only when the target has exited
    // and not been reaped: its memory map then reads as empty, and the one cached while
    // it ran must still name them.
    let mut target = Target::start(CHAT_SERVER, &["--joins", "300"]);
    let (agent, objects) = attach(&target, &["--interval", "200ms", "--top", "1000"]);
    agent.signal(libc::SIGSTOP);
    target.go();
    let truth = target.read_until_done();
    target.exit_unreaped();
    agent.signal(libc::SIGCONT);
    let finished = agent.wait();
    let report = final_report(&finished, target.pid());
    assert_chat_leak(&report, &truth);
    target.finish();
    objects.assert_released();
}

/// The kinds of the BPF links process `pid` holds (`link_type` in its fdinfo).
fn link_types(pid: u32) -> Vec<String> {
    let mut types: Vec<String> = std::fs::read_dir(format!("/proc/{pid}/fdinfo"))
        .expect("the agent's fdinfo")
        .flatten()
        .filter_map(|entry| std::fs::read_to_string(entry.path()).ok())
        .flat_map(|info| {
            info.lines()
                .filter_map(|line| line.strip_prefix("link_type:"))
                .map(|kind| kind.trim().to_owned())
                .collect::<Vec<_>>()
        })
        .collect();
    types.sort();
    types.dedup();
    types
}

#[test]
fn target_exit_gives_a_final_report_and_detaches() {
    require_root();
    // uprobe_multi links where the kernel has them (6.6+, as here); `--perf-links`
    // takes the path of older kernels, a perf-event link per probe.
    for (options, uprobe_links) in [(&[][..], "uprobe_multi"), (&["--perf-links"][..], "perf")] {
        let mut target = Target::start(CHAT_SERVER, &["--joins", "300"]);
        let options: Vec<&str> = ["--interval", "200ms", "--top", "1000"]
            .into_iter()
            .chain(options.iter().copied())
            .collect();
        let (agent, objects) = attach(&target, &options);
        let kinds = link_types(agent.pid());
        assert!(
            kinds.iter().any(|kind| kind == uprobe_links),
            "{options:?}: the probes are {uprobe_links} links: {kinds:?}"
        );
        target.go();
        let truth = target.read_until_done();
        target.finish();
        let finished = agent.wait();
        let report = final_report(&finished, target.pid());
        assert_chat_leak(&report, &truth);
        objects.assert_released();
    }
}

#[test]
fn count_stops_after_that_many_reports() {
    require_root();
    let mut target = Target::start(CHAT_SERVER, &["--joins", "100"]);
    let (agent, objects) = attach(&target, &["--interval", "200ms", "--count", "2"]);
    target.go();
    target.read_until_done();
    // leakbpf stops by itself while the target still runs.
    let finished = agent.wait();
    finished.assert_success();
    let reports = finished.reports();
    check_reports(&reports, target.pid());
    assert_eq!(reports.len(), 2, "--count 2 makes two reports");
    target.finish();
    objects.assert_released();
}

#[test]
fn spawn_mode_gives_a_final_report_and_detaches_when_the_command_exits() {
    require_root();
    // early inherits leakbpf's stdin and waits for its end before exiting.
    let mut agent = Agent::start_command(LEAKBPF, &["--top", "1000"], &[EARLY, "--wait"], &[]);
    let pid = agent.wait_attached_to_command();
    let objects = KernelObjects::of(agent.pid());
    objects.assert_probes_loaded();
    let truth = agent.read_target_until_done("early");
    agent.close_stdin();
    let finished = agent.wait();
    let report = final_report(&finished, pid);
    // What is leaked where is early.rs's business; here, that it was all seen.
    let leaked: u64 = truth.truths.iter().map(|truth| truth.bytes).sum();
    assert!(
        report.totals.outstanding_bytes >= leaked,
        "{}",
        report.describe()
    );
    objects.assert_released();
}

#[test]
fn sigkill_of_the_agent_leaves_nothing_attached() {
    require_root();
    // No report can survive SIGKILL, but the kernel drops the programs and links with
    // the killed process's descriptors: the target runs on untraced.
    let mut target = Target::start(CHAT_SERVER, &["--joins", "50"]);
    let (agent, objects) = attach(&target, &["--interval", "200ms"]);
    agent.signal(libc::SIGKILL);
    let finished = agent.wait();
    finished.assert_no_panic();
    objects.assert_released();
    target.go();
    let truth = target.read_until_done();
    assert!(truth.truth("EventManager::subscribe").count > 0);
    target.finish();
}
