//! An exec replaces a traced process's image: leakbpf follows it under the same pid, onto
//! the new image's allocator when it is another object (a static executable has its own
//! malloc), and drops every block the old image held: that memory is gone.
//!
//! exec_target (tests/targets/exec_target.c) leaks at leak_before_exec, pauses until a
//! report has shown it, execs, pauses until leakbpf has followed the exec, and leaks at
//! leak_after_exec.

use leakbpf_tests::{
    Agent, EXEC_TARGET, Report, Run, START_UP_ALLOCATIONS, Session, Target, TargetOutput, Traced,
    assert_churn_freed, assert_churn_frees_counted, assert_nothing_dropped, check_reports,
    require_root, sum,
};

const LEAKBPF: &str = env!("CARGO_BIN_EXE_leakbpf-under-test");

/// Several reports before the exec.
const OPTIONS: [&str; 4] = ["--interval", "250ms", "--top", "1000"];
const INTO_ITSELF: [&str; 1] = ["--pause"];
const INTO_STATIC: [&str; 2] = ["--pause", "--then-static"];

/// Traces exec_target `args` (with `--pause`) through its exec, letting it go on at each
/// pause once leakbpf has done what it waits for.
fn trace_exec(traced: Traced, args: &[&str]) -> Run {
    let mut session = Session::start(LEAKBPF, traced, EXEC_TARGET, args, &OPTIONS, &[]);
    let pid = session.pid();
    session.go();
    let before = session
        .read_until("paused")
        .truth("leak_before_exec")
        .clone();
    // The old image was traced: its leak is reported while it lives, so that its absence
    // afterwards is a drop, not a miss.
    session.wait_for_report("the leak before the exec", |report| {
        report.pid == pid
            && report.outstanding_at("leak_before_exec") == (before.bytes, before.count)
    });
    session.go();
    session.read_until("paused");
    // leakbpf drops the old image's blocks where it learns of the exec, and attaches to
    // the new image in the same step, before it drains the maps for another report: the
    // first report without them comes once the new image is probed.
    session.wait_for_report(
        "the old image's blocks dropped: leakbpf has followed the exec",
        |report| report.pid == pid && report.outstanding_at("leak_before_exec") == (0, 0),
    );
    session.go();
    session.finish()
}

/// The reports on the exec_target process `pid`, against what it said; `new_image` is the
/// program it execs (exec_target or exec_target_static).
fn assert_exec_run(reports: &[Report], output: &TargetOutput, pid: u32, new_image: &str) {
    let before = output.truth("leak_before_exec");
    let after = output.truth("leak_after_exec");
    for truth in [before, after] {
        assert_eq!(
            truth.pid(),
            pid,
            "the traced process printed it, before or after its exec: {truth:?}"
        );
        assert!(truth.count > 0, "{truth:?}");
    }
    let last = check_reports(reports, pid);

    // The old image was traced: its leak was reported while it lived, so its absence
    // afterwards is a drop, not a miss.
    let shown = reports
        .iter()
        .position(|report| {
            report.outstanding_at("leak_before_exec") == (before.bytes, before.count)
        })
        .unwrap_or_else(|| {
            panic!(
                "no report showed the {} B in {} blocks leaked before the exec:\n{}",
                before.bytes,
                before.count,
                reports.iter().map(Report::describe).collect::<String>()
            )
        });
    // Once dropped, the old image's blocks are never shown again.
    let dropped = reports[shown..]
        .iter()
        .position(|report| report.outstanding_at("leak_before_exec") == (0, 0))
        .map_or(reports.len(), |at| shown + at);
    for report in &reports[dropped..] {
        assert_eq!(
            report.outstanding_at("leak_before_exec"),
            (0, 0),
            "the old image's blocks, once dropped:\n{}",
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
    let run = trace_exec(Traced::ByPid, &INTO_ITSELF);
    assert_exec_run(&run.reports, &run.truth, run.pid, "exec_target");
}

#[test]
fn exec_from_spawn_reports_only_the_new_image() {
    require_root();
    let run = trace_exec(Traced::FromSpawn, &INTO_ITSELF);
    assert_exec_run(&run.reports, &run.truth, run.pid, "exec_target");
}

#[test]
fn exec_into_a_static_executable_by_pid_is_traced_in_it() {
    require_root();
    let run = trace_exec(Traced::ByPid, &INTO_STATIC);
    assert_exec_run(&run.reports, &run.truth, run.pid, "exec_target_static");
}

#[test]
fn exec_into_a_static_executable_from_spawn_is_traced_in_it() {
    require_root();
    let run = trace_exec(Traced::FromSpawn, &INTO_STATIC);
    assert_exec_run(&run.reports, &run.truth, run.pid, "exec_target_static");
}

/// exec_target into its static build, whose new image exits as soon as leakbpf's first
/// probe is in its malloc family, while leakbpf is still attaching the others.
fn exec_into_static_and_exit_while_probed() {
    let mut target = Target::start(
        EXEC_TARGET,
        &["--then-static", "--exit-when-probed", "--rounds", "0"],
    );
    let agent = Agent::attach(LEAKBPF, &[target.pid()], &OPTIONS);
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
    assert_eq!(truth.truth("leak_after_exec").pid(), target.pid());
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
