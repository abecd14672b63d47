//! Without --follow-forks, the processes a traced one creates are not traced, and leakbpf
//! says how many there were when the traced process gets its final report; with it, they
//! are traced and nothing is said.
//!
//! forker (tests/targets/forker.c) forks 3 children and a child that execs, and starts one
//! more with posix_spawn: 5 processes of its own. Child 1 forks a grandchild, which is
//! not the traced process's.

use std::collections::BTreeSet;

use leakbpf_tests::{
    FORKER, Run, TargetOutput, assert_nothing_dropped, check_reports, require_root, trace_pid,
    trace_spawn,
};

const LEAKBPF: &str = env!("CARGO_BIN_EXE_leakbpf-under-test");

const FORKER_ARGS: [&str; 2] = ["--children", "3"];
const OPTIONS: [&str; 2] = ["--interval", "300ms"];
/// What the notice says after its count.
const NOTICE: &str = "processes that were not traced (--follow-forks traces them)";

/// The pid of forker's parent process, and the processes it created itself, from what
/// each process printed about itself.
fn parent_and_children(output: &TargetOutput) -> (u32, BTreeSet<u32>) {
    let parent = output.truth("leak_in_parent").pid();
    let children: BTreeSet<u32> = output
        .truths
        .iter()
        .filter(|truth| truth.ppid() == parent)
        .map(|truth| truth.pid())
        .collect();
    // 3 children, the exec child and the spawned one; not the grandchild.
    assert_eq!(children.len(), 5, "forker's own processes: {output:?}");
    (parent, children)
}

/// leakbpf's notices about untraced processes.
fn notices(stderr: &str) -> Vec<&str> {
    stderr
        .lines()
        .filter(|line| line.contains(NOTICE))
        .collect()
}

/// The run's one notice counts the traced process's own children.
fn assert_children_counted(run: &Run) {
    let (parent, children) = parent_and_children(&run.truth);
    assert_eq!(parent, run.pid);
    assert_nothing_dropped(check_reports(&run.reports, parent));
    assert_eq!(
        notices(&run.finished.stderr),
        [format!(
            "leakbpf: pid {parent} started {} {NOTICE}",
            children.len()
        )],
        "stderr:\n{}",
        run.finished.stderr
    );
}

#[test]
fn without_follow_forks_the_untraced_children_are_counted_by_pid() {
    require_root();
    assert_children_counted(&trace_pid(LEAKBPF, FORKER, &FORKER_ARGS, &OPTIONS));
}

#[test]
fn without_follow_forks_the_untraced_children_are_counted_from_spawn() {
    require_root();
    assert_children_counted(&trace_spawn(LEAKBPF, FORKER, &FORKER_ARGS, &OPTIONS));
}

#[test]
fn with_follow_forks_nothing_is_said_of_untraced_children() {
    require_root();
    let run = trace_pid(
        LEAKBPF,
        FORKER,
        &FORKER_ARGS,
        &["--follow-forks", "--interval", "300ms"],
    );
    let (parent, children) = parent_and_children(&run.truth);
    let followed = run
        .finished
        .stderr
        .lines()
        .filter(|line| line.starts_with("leakbpf: following pid"))
        .count();
    // The grandchild is followed too.
    assert_eq!(
        followed,
        children.len() + 1,
        "stderr:\n{}",
        run.finished.stderr
    );
    assert!(
        notices(&run.finished.stderr).is_empty(),
        "pid {parent}'s children were traced; stderr:\n{}",
        run.finished.stderr
    );
}
