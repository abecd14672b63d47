//! An exec replaces a traced process's image: leakbpf follows it under the same pid, onto
//! the new image's allocator when it is another object (a static executable has its own
//! malloc), and drops every block the old image held: that memory is gone.
//!
//! exec_target (tests/targets/exec_target.c) leaks at leak_before_exec, pauses so that
//! reports show it, execs, and leaks at leak_after_exec.

use leakbpf_tests::{
    Agent, EXEC_TARGET, Report, START_UP_ALLOCATIONS, Target, TargetOutput, assert_churn_freed,
    assert_churn_frees_counted, assert_nothing_dropped, check_reports, require_root, sum,
    trace_pid, trace_spawn,
};

const LEAKBPF: &str = env!("CARGO_BIN_EXE_leakbpf-under-test");

/// Several reports before the exec.
const OPTIONS: [&str; 4] = ["--interval", "250ms", "--top", "1000"];
const INTO_ITSELF: [&str; 2] = ["--pause-ms", "1500"];
const INTO_STATIC: [&str; 3] = ["--pause-ms", "1500", "--then-static"];

/// The reports on the exec_target process `pid`, against what it said; `new_image` is the
/// program it execs (exec_target or exec_target_static).
fn assert_exec_run(reports: &[Report], output: &TargetOutput, pid: u32, new_image: &str) {
    let before = output.truth("leak_before_exec");
    let after = output.truth("leak_after_exec");
    for truth in [before, after] {
        assert_eq!(
            truth.extra_u64("pid"),
            u64::from(pid),
            "the traced process printed it, before or after its exec: {truth:?}"
        );
        assert!(truth.count > 0, "{truth:?}");
    }
    let last = check_reports(reports, pid);

    // The old image was traced: its leak was reported while it lived, so its absence
    // afterwards is a drop, not a miss.
    assert!(
        reports
            .iter()
            .any(|report| report.outstanding_at("leak_before_exec") == (before.bytes, before.count)),
        "no report showed the {} B in {} blocks leaked before the exec:\n{}",
        before.bytes,
        before.count,
        reports.iter().map(Report::describe).collect::<String>()
    );
    // Once the new image has leaked, the old one's blocks are never shown again.
    let first_after = reports
        .iter()
        .position(|report| report.outstanding_at("leak_after_exec") != (0, 0))
        .unwrap_or(reports.len());
    for report in &reports[first_after..] {
        assert_eq!(
            report.outstanding_at("leak_before_exec"),
            (0, 0),
            "the old image's blocks, after the new image's leak:\n{}",
            report.describe()
        );
    }

    assert_eq!(
        last.outstanding_at("leak_after_exec"),
        (after.bytes, after.count),
        "(bytes, allocations) leaked after the exec:\n{}",
        last.describe()
    );
    // Its allocator is the new image's: in the static executable, its own malloc.
    for site in last.sites_where(|site| site.function(0) == Some("leak_after_exec")) {
        let module = site.frames[0].module.as_deref().unwrap_or_default();
        assert!(
            module.rsplit('/').next() == Some(new_image),
            "leak_after_exec is in {module:?}, not in {new_image}:\n{}",
            last.describe()
        );
    }
    assert_eq!(
        last.outstanding_at("leak_before_exec"),
        (0, 0),
        "nothing of the old image at leak_before_exec:\n{}",
        last.describe()
    );
    // Nor under any other name: beyond its leak, the new image holds only what its
    // start-up keeps (stdout's buffer...), far less than the old image leaked.
    let (bytes, allocations) =
        sum(last.sites_where(|site| site.function(0) != Some("leak_after_exec")));
    assert!(
        allocations <= START_UP_ALLOCATIONS && bytes < before.bytes,
        "beyond its leak, the new image holds {bytes} B in {allocations} allocations ({} B \
         were leaked before the exec):\n{}",
        before.bytes,
        last.describe()
    );
    assert_churn_freed(last);
    assert_churn_frees_counted(last, output, 80_000);
    assert_nothing_dropped(last);
}

#[test]
fn exec_by_pid_reports_only_the_new_image() {
    require_root();
    let run = trace_pid(LEAKBPF, EXEC_TARGET, &INTO_ITSELF, &OPTIONS);
    assert_exec_run(&run.reports, &run.truth, run.pid, "exec_target");
}

#[test]
fn exec_from_spawn_reports_only_the_new_image() {
    require_root();
    let run = trace_spawn(LEAKBPF, EXEC_TARGET, &INTO_ITSELF, &OPTIONS);
    assert_exec_run(&run.reports, &run.truth, run.pid, "exec_target");
}

#[test]
fn exec_into_a_static_executable_by_pid_is_traced_in_it() {
    require_root();
    let run = trace_pid(LEAKBPF, EXEC_TARGET, &INTO_STATIC, &OPTIONS);
    assert_exec_run(&run.reports, &run.truth, run.pid, "exec_target_static");
}

#[test]
fn exec_into_a_static_executable_from_spawn_is_traced_in_it() {
    require_root();
    let run = trace_spawn(LEAKBPF, EXEC_TARGET, &INTO_STATIC, &OPTIONS);
    assert_exec_run(&run.reports, &run.truth, run.pid, "exec_target_static");
}

/// exec_target into its static build, whose new image exits as soon as leakbpf's first
/// probe is in its malloc family, while leakbpf is still attaching the others.
fn exec_into_static_and_exit_while_probed() {
    let mut target = Target::start(
        EXEC_TARGET,
        &["--then-static", "--exit-when-probed", "--rounds", "0"],
    );
    let pid = target.pid().to_string();
    let mut agent = Agent::spawn(
        LEAKBPF,
        ["--pid", pid.as_str(), "--format", "json"]
            .iter()
            .chain(&OPTIONS),
    );
    agent.wait_attached();
    target.go();
    let truth = target.read_until_done();
    target.finish();
    let finished = agent.wait();
    assert!(
        finished.status.success(),
        "leakbpf ended with {} when the process exited while it attached to its new \
         image; stderr:\n{}",
        finished.status,
        finished.stderr
    );
    finished.assert_no_panic();
    let reports = finished.reports();
    let last = check_reports(&reports, target.pid());
    assert_eq!(
        truth.truth("leak_after_exec").extra_u64("pid"),
        u64::from(target.pid())
    );
    assert_eq!(
        last.outstanding_at("leak_before_exec"),
        (0, 0),
        "the old image's blocks are gone with it:\n{}",
        last.describe()
    );
}

#[test]
fn a_process_gone_while_its_new_image_is_probed_keeps_its_final_report() {
    require_root();
    // A process may exit at any time, even while leakbpf attaches to its new image after
    // an exec: what that image allocated until the attach is missed (README, Limits), but
    // the run goes on and ends as every run does, with a final report. The exit comes
    // within microseconds of the first probe; a few runs, for the instants when the other
    // probes are attached.
    for _ in 0..5 {
        exec_into_static_and_exit_while_probed();
    }
}
