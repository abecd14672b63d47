//! Code mapped after attach: a library loaded with dlopen, whose unwind table the agent
//! builds only once it hears of it (the dynamic linker's notice, or the walk's own
//! report of an address outside every mapping it knows). A stack that reaches the
//! library's frame before its table is ready is cut there, and counted, never continued
//! into wrong frames; once it is ready, stacks through it are whole. A started command is
//! held at the dynamic linker's notice until the table is in: none of its stacks is cut.

use leakbpf_tests::{
    Callsite, DLOPEN_LEAKER, Report, Session, Traced, require_root, short_name, sum, trace,
};

const LEAKBPF: &str = env!("CARGO_BIN_EXE_leakbpf-under-test");

/// The library's function that calls malloc: every leak's first frame.
const LIBRARY_FRAME: &str = "dlopened_malloc";

/// The whole stack of a leak of `function`.
fn whole(function: &str) -> [&str; 3] {
    [LIBRARY_FRAME, function, "main"]
}

/// The call sites whose stack starts in the library.
fn library_sites(report: &Report) -> Vec<&Callsite> {
    report
        .sites_where(|site| site.function(0).map(short_name) == Some(LIBRARY_FRAME))
        .collect()
}

/// Checks the run's leaks: exact in all, each site's stack either whole or cut after
/// the library's frame; returns the (bytes, allocations) whose stacks were cut.
fn check(report: &Report, run_truth: &leakbpf_tests::TargetOutput) -> (u64, u64) {
    let (at_once, later) = (
        run_truth.truth("leak_at_once"),
        run_truth.truth("leak_later"),
    );
    let sites = library_sites(report);
    assert_eq!(
        sum(sites.iter().copied()),
        (at_once.bytes + later.bytes, at_once.count + later.count),
        "every leak, at the library's frame:\n{}",
        report.describe()
    );
    let mut cut = (0, 0);
    for site in &sites {
        let names: Vec<&str> = site
            .frames
            .iter()
            .map(|frame| frame.name().map_or("?", short_name))
            .collect();
        if names == [LIBRARY_FRAME] {
            cut = (cut.0 + site.bytes, cut.1 + site.allocations);
            continue;
        }
        assert!(
            site.chain_to("main").as_deref() == Some(&whole("leak_at_once"))
                || site.chain_to("main").as_deref() == Some(&whole("leak_later")),
            "a stack through the library is whole or ends at its frame: {names:?}\n{}",
            report.describe()
        );
    }
    // Long after the library was loaded, its table is ready: every one is whole.
    let later_sites = sum(sites
        .iter()
        .copied()
        .filter(|site| site.chain_to("main").as_deref() == Some(&whole("leak_later"))));
    assert_eq!(
        later_sites,
        (later.bytes, later.count),
        "the leaks long after the dlopen have whole stacks:\n{}",
        report.describe()
    );
    cut
}

#[test]
fn a_library_loaded_after_attach_is_walked_once_its_table_is_ready() {
    require_root();
    let mut session = Session::start(
        LEAKBPF,
        Traced::ByPid,
        DLOPEN_LEAKER,
        &[],
        &["--top", "1000", "--interval", "500ms"],
        &[],
    );
    session.go();
    session.read_until("paused");
    // leak_later's stack is new an instant before the target pauses, and a traced pid
    // cannot be held at its exit: it goes on once that stack is named.
    session.wait_for_report("leak_later's stack, named", |report| {
        library_sites(report)
            .iter()
            .any(|site| site.chain_to("main").as_deref() == Some(&whole("leak_later")))
    });
    session.go();
    let run = session.finish();
    let report = run.final_report();
    let (_, cut) = check(report, &run.truth);
    // Each cut stack is counted; the agent's own reading of the mappings may have been
    // quick enough for none to be.
    assert_eq!(
        report.counters.truncated_stacks,
        cut,
        "the cut stacks, and only those, are counted: {:?}\n{}",
        report.counters,
        report.describe()
    );
}

#[test]
fn a_started_command_is_held_until_its_library_s_table_is_ready() {
    require_root();
    let run = trace(
        LEAKBPF,
        Traced::FromSpawn,
        DLOPEN_LEAKER,
        &[],
        &["--top", "1000"],
        &[],
    );
    let report = run.final_report();
    assert_eq!(
        check(report, &run.truth),
        (0, 0),
        "held at the dynamic linker's notice, no stack is cut:\n{}",
        report.describe()
    );
    assert_eq!(report.counters.truncated_stacks, 0, "{:?}", report.counters);
}
