//! --follow-forks: the processes a traced one creates after attach are traced too, down to
//! grandchildren and through an exec, each with its own reports, its own final report
//! and its own figures, counters included; without it, only the named process is.
//!
//! forker (tests/targets/forker.c) leaks at leak_in_parent, then forks 3 children and a
//! child that execs, and starts one more with posix_spawn; child 1 forks a grandchild.
//! Each child forks after its parent's leak, so it holds a copy of those blocks: none of
//! them is its own.

use std::collections::BTreeSet;

use leakbpf_tests::{
    FORKER, FORKER_NOFP, Report, Run, START_UP_ALLOCATIONS, Session, TargetOutput, Traced, Truth,
    assert_churn_freed, assert_nothing_dropped, check_reports, final_report_of, require_root, sum,
    trace_pid, trace_spawn,
};

const LEAKBPF: &str = env!("CARGO_BIN_EXE_leakbpf-under-test");

const CHILDREN: usize = 3;
const FORKER_ARGS: [&str; 2] = ["--children", "3"];
const OPTIONS: [&str; 5] = ["--follow-forks", "--interval", "300ms", "--top", "1000"];

/// Every leaking function of forker, at none of which a process holds another's blocks.
const FUNCTIONS: [&str; 4] = [
    "leak_in_parent",
    "leak_in_child",
    "leak_before_exec",
    "leak_after_exec",
];

/// What forker's processes said about themselves.
struct Tree {
    parent: Truth,
    /// The children's and the grandchild's leak_in_child.
    leakers: Vec<Truth>,
    grandchild: u32,
    /// The exec child's leaks, before and after its exec.
    before_exec: Truth,
    after_exec: Truth,
    /// The posix_spawn'd child's leak.
    spawned: Truth,
}

impl Tree {
    /// Reads the truths, checking they describe the tree forker makes.
    fn of(output: &TargetOutput) -> Self {
        let with = |function: &str| -> Vec<Truth> {
            output
                .truths
                .iter()
                .filter(|truth| truth.function == function)
                .cloned()
                .collect()
        };
        let [parent] = <[Truth; 1]>::try_from(with("leak_in_parent"))
            .unwrap_or_else(|t| panic!("one leak_in_parent truth expected: {t:?}"));
        let leakers = with("leak_in_child");
        assert_eq!(
            leakers.len(),
            CHILDREN + 1,
            "a truth from each child and the grandchild: {output:?}"
        );
        let pids: BTreeSet<u32> = leakers.iter().map(Truth::pid).collect();
        assert_eq!(
            pids.len(),
            leakers.len(),
            "one truth per process: {output:?}"
        );
        let grandchildren: Vec<&Truth> = leakers
            .iter()
            .filter(|truth| truth.ppid() != parent.pid())
            .collect();
        assert_eq!(grandchildren.len(), 1, "one grandchild: {output:?}");
        let grandchild = grandchildren[0].pid();
        assert!(
            pids.contains(&grandchildren[0].ppid()),
            "the grandchild's parent is a child: {output:?}"
        );
        let [before_exec] = <[Truth; 1]>::try_from(with("leak_before_exec"))
            .unwrap_or_else(|t| panic!("one leak_before_exec truth expected: {t:?}"));
        // The exec'd child's, under the pid it had before its exec (an exec keeps it), and
        // the spawned child's.
        let (after_exec, spawned): (Vec<Truth>, Vec<Truth>) = with("leak_after_exec")
            .into_iter()
            .partition(|truth| truth.pid() == before_exec.pid());
        let [after_exec] = <[Truth; 1]>::try_from(after_exec)
            .unwrap_or_else(|t| panic!("one leak_after_exec truth from the exec'd child: {t:?}"));
        let [spawned] = <[Truth; 1]>::try_from(spawned)
            .unwrap_or_else(|t| panic!("one leak_after_exec truth from the spawned child: {t:?}"));
        for truth in [&before_exec, &spawned] {
            assert_eq!(truth.ppid(), parent.pid(), "{output:?}");
        }
        for truth in leakers
            .iter()
            .chain([&parent, &before_exec, &after_exec, &spawned])
        {
            assert!(truth.count > 0, "{truth:?}");
        }
        Self {
            parent,
            leakers,
            grandchild,
            before_exec,
            after_exec,
            spawned,
        }
    }

    /// The fewest blocks a child's (or the grandchild's) churn freed.
    fn least_churn_frees(&self, output: &TargetOutput) -> u64 {
        self.leakers
            .iter()
            .map(|truth| churn_of(output, truth.pid()).1)
            .min()
            .expect("children")
    }

    fn pids(&self) -> BTreeSet<u32> {
        self.leakers
            .iter()
            .chain([&self.parent, &self.before_exec, &self.spawned])
            .map(Truth::pid)
            .collect()
    }
}

/// The churn line of process `pid`: (allocations, frees).
fn churn_of(output: &TargetOutput, pid: u32) -> (u64, u64) {
    let churn = output.churn_of(pid);
    let allocations = churn
        .allocations
        .unwrap_or_else(|| panic!("forker's churn counts its allocations: {churn:?}"));
    (allocations, churn.frees)
}

/// `report` holds exactly `truth` at its function, and nothing at forker's other leaking
/// functions.
fn assert_holds_only(report: &Report, truth: &Truth, role: &str) {
    for function in FUNCTIONS {
        let expected = if function == truth.function {
            (truth.bytes, truth.count)
        } else {
            (0, 0)
        };
        assert_eq!(
            report.outstanding_at(function),
            expected,
            "(bytes, allocations) at {function} in the {role}'s final report:\n{}",
            report.describe()
        );
    }
}

/// What every process of the tree must show in its final report.
fn assert_tree(reports: &[Report], output: &TargetOutput, traced: Traced) {
    let tree = Tree::of(output);
    let reported: BTreeSet<u32> = reports.iter().map(|report| report.pid).collect();
    assert_eq!(
        reported,
        tree.pids(),
        "exactly the parent, its children, the grandchild (pid {}), the exec'd child and the \
         spawned child are reported",
        tree.grandchild
    );

    // The parent: its own leak, none of its children's, and its own counters. Its
    // children's churns freed tens of thousands of blocks; the parent frees none after
    // its start-up.
    let parent = final_report_of(reports, tree.parent.pid());
    assert_holds_only(&parent, &tree.parent, "parent");
    let least_churn = tree.least_churn_frees(output);
    match traced {
        Traced::ByPid => {
            assert_eq!(
                parent.outstanding(),
                (tree.parent.bytes, tree.parent.count),
                "attached after start-up, the parent holds exactly its leak:\n{}",
                parent.describe()
            );
            assert_eq!(
                (parent.counters.allocations, parent.counters.frees),
                (tree.parent.count, 0),
                "the parent's counters count its own calls since attach, its leak alone:\n{}",
                parent.describe()
            );
        }
        Traced::FromSpawn => {
            let (_, beyond) =
                sum(parent.sites_where(|site| site.function(0) != Some("leak_in_parent")));
            assert!(
                beyond <= START_UP_ALLOCATIONS,
                "{beyond} allocations beyond the parent's leak, more than a start-up keeps:\n{}",
                parent.describe()
            );
            assert!(
                parent.counters.frees < least_churn,
                "the parent's counters are its own, not its children's (each freed at least \
                 {least_churn}):\n{}",
                parent.describe()
            );
        }
    }
    assert_nothing_dropped(&parent);

    // Each child and the grandchild: exactly its leak (a fork comes after the start-up,
    // however it was traced), its churn freed, its own counters.
    for truth in &tree.leakers {
        let pid = truth.pid();
        let role = if pid == tree.grandchild {
            format!("grandchild (pid {pid})")
        } else {
            format!("child (pid {pid})")
        };
        let report = final_report_of(reports, pid);
        assert_holds_only(&report, truth, &role);
        assert_eq!(
            report.outstanding(),
            (truth.bytes, truth.count),
            "the {role} holds exactly its leak:\n{}",
            report.describe()
        );
        let (allocations, frees) = churn_of(output, pid);
        let counters = report.counters;
        // Every churn round frees 4 blocks with free() (and moves one with realloc, which
        // leakbpf may count as frees too): the counts of all the processes together
        // would be several times these.
        assert!(
            counters.frees >= frees && counters.frees < 2 * frees,
            "the {role} freed {frees} blocks, leakbpf counted {}:\n{}",
            counters.frees,
            report.describe()
        );
        assert!(
            counters.allocations >= frees + truth.count
                && counters.allocations <= allocations + truth.count,
            "the {role} made {} allocations ({frees} of them by malloc, calloc or \
             posix_memalign), leakbpf counted {}:\n{}",
            allocations + truth.count,
            counters.allocations,
            report.describe()
        );
        assert_nothing_dropped(&report);
    }

    // The exec'd child: only what its new image holds; the blocks of the image it had
    // before are gone with it.
    let pid = tree.after_exec.pid();
    let role = format!("exec'd child (pid {pid})");
    let report = final_report_of(reports, pid);
    assert_new_image(&report, output, &tree.after_exec, &role);
    let beyond = report.totals.outstanding_bytes - tree.after_exec.bytes;
    assert!(
        beyond < tree.before_exec.bytes,
        "beyond its leak, the {role} holds {beyond} B: {} B were leaked before the exec:\n{}",
        tree.before_exec.bytes,
        report.describe()
    );
    // The spawned child, started by a clone that shares its parent's memory until it
    // execs.
    let pid = tree.spawned.pid();
    let role = format!("spawned child (pid {pid})");
    assert_new_image(&final_report_of(reports, pid), output, &tree.spawned, &role);
}

/// The final report of a process that runs forker as a new image (`--after-exec`): its
/// leak, its new image's start-up, its churn freed and counted.
fn assert_new_image(report: &Report, output: &TargetOutput, truth: &Truth, role: &str) {
    assert_holds_only(report, truth, role);
    let (_, beyond) = sum(report.sites_where(|site| site.function(0) != Some(&truth.function)));
    assert!(
        beyond <= START_UP_ALLOCATIONS,
        "beyond its leak, the {role} holds {beyond} allocations: more than its image's \
         start-up keeps:\n{}",
        report.describe()
    );
    assert_churn_freed(report);
    let (_, frees) = churn_of(output, truth.pid());
    assert!(
        report.counters.frees >= frees && report.counters.frees < 2 * frees,
        "the {role} freed {frees} blocks (none before its exec), leakbpf counted {}:\n{}",
        report.counters.frees,
        report.describe()
    );
    assert_nothing_dropped(report);
}

/// forker traced by pid. leakbpf cannot hold a process it did not start: a new image
/// (the exec'd and the spawned child) is named only if the agent reads its memory map
/// while it runs, and a loaded agent may be busy symbolizing meanwhile. They run until
/// stdin closes, so the run ends once the agent has reported each one's leak.
fn trace_tree_by_pid(program: &str) -> Run {
    let mut session = Session::start(LEAKBPF, Traced::ByPid, program, &FORKER_ARGS, &OPTIONS, &[]);
    session.go();
    let tree = Tree::of(session.read_until("done"));
    for truth in [&tree.after_exec, &tree.spawned] {
        let pid = truth.pid();
        session.wait_for_report(
            &format!("pid {pid}'s leak at {}", truth.function),
            |report| {
                report.pid == pid
                    && report.outstanding_at(&truth.function) == (truth.bytes, truth.count)
            },
        );
    }
    session.finish()
}

#[test]
fn follow_forks_by_pid_reports_each_descendant_apart() {
    require_root();
    let run = trace_tree_by_pid(FORKER);
    assert_eq!(Tree::of(&run.truth).parent.pid(), run.pid);
    assert_tree(&run.reports, &run.truth, Traced::ByPid);
}

#[test]
fn follow_forks_from_spawn_reports_each_descendant_apart() {
    require_root();
    let run = trace_spawn(LEAKBPF, FORKER, &FORKER_ARGS, &OPTIONS);
    assert_tree(&run.reports, &run.truth, Traced::FromSpawn);
}

/// The same tree built without frame pointers: each process's stacks from the unwind
/// tables of its own image (the exec'd children's new one included).
#[test]
fn follow_forks_without_frame_pointers_reports_each_descendant_apart() {
    require_root();
    let run = trace_spawn(LEAKBPF, FORKER_NOFP, &FORKER_ARGS, &OPTIONS);
    assert_tree(&run.reports, &run.truth, Traced::FromSpawn);
    let run = trace_tree_by_pid(FORKER_NOFP);
    assert_tree(&run.reports, &run.truth, Traced::ByPid);
}

/// Without --follow-forks: reports on the parent alone, with its figures alone.
fn assert_parent_only(reports: &[Report], output: &TargetOutput, traced: Traced) {
    let tree = Tree::of(output);
    let pid = tree.parent.pid();
    let report = check_reports(reports, pid);
    assert_holds_only(report, &tree.parent, "parent");
    // Each child freed tens of thousands of blocks; the parent none after its start-up.
    let least_churn = tree.least_churn_frees(output);
    assert!(
        report.counters.frees < least_churn,
        "the children's frees are not counted:\n{}",
        report.describe()
    );
    if traced == Traced::ByPid {
        assert_eq!(
            (
                report.totals.outstanding_bytes,
                report.totals.outstanding_allocations,
                report.counters.allocations
            ),
            (tree.parent.bytes, tree.parent.count, tree.parent.count),
            "the parent's figures alone:\n{}",
            report.describe()
        );
    }
}

#[test]
fn without_follow_forks_no_child_is_reported_by_pid() {
    require_root();
    let run = trace_pid(
        LEAKBPF,
        FORKER,
        &FORKER_ARGS,
        &["--interval", "300ms", "--top", "1000"],
    );
    assert_eq!(Tree::of(&run.truth).parent.pid(), run.pid);
    assert_parent_only(&run.reports, &run.truth, Traced::ByPid);
}

#[test]
fn without_follow_forks_no_child_is_reported_from_spawn() {
    require_root();
    let run = trace_spawn(
        LEAKBPF,
        FORKER,
        &FORKER_ARGS,
        &["--interval", "300ms", "--top", "1000"],
    );
    assert_parent_only(&run.reports, &run.truth, Traced::FromSpawn);
}

#[test]
fn follow_forks_from_spawn_names_the_leaks_of_processes_that_exit_at_once() {
    require_root();
    // No churn: each process leaks, prints its truth and exits at once, before the
    // agent has read its memory map. A forked child's map is a copy of its parent's,
    // which the agent has: its stacks are named with it. (One that execs and exits at
    // once is not: its new map is gone before the agent can read it; see the README.)
    let run = trace_spawn(
        LEAKBPF,
        FORKER,
        &["--children", "3", "--rounds", "0"],
        &OPTIONS,
    );
    let tree = Tree::of(&run.truth);
    for truth in &tree.leakers {
        let pid = truth.pid();
        let report = final_report_of(&run.reports, pid);
        assert_eq!(
            report.outstanding_at(&truth.function),
            (truth.bytes, truth.count),
            "(bytes, allocations) at {} in the final report of pid {pid}, which exited at \
             once:\n{}",
            truth.function,
            report.describe()
        );
    }
}
